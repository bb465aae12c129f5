//! A small deterministic mutator, for the smoke test: what libFuzzer does, in miniature and
//! without coverage feedback, so CI on stable runs each target over thousands of inputs near
//! the corpus in a second or two.

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0), near enough.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Bytes that matter to the formats fuzzed: YAML structure, HTTP framing, DHCP option codes
/// and lengths.
const INTERESTING: &[u8] = b"\0\x01\x02\x03\x04\x06\x0c\x32\x34\x35\x36\x37\x3d\x52\x79\x7f\x80\xfe\xff \n\r\t:-{}[],'\"#&*!|>%@`?=";

/// One to four random edits of `base`, sometimes splicing in part of `other`.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                v.drain(i..i + n);
            }
            4 if len > 0 => {
                // Duplicate a run: repeated keys, options, headers.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let run = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, run);
            }
            5 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(256));
                let at = rng.below(len + 1);
                let cut = at + rng.below((len - at).min(256) + 1);
                v.splice(at..cut, other[i..i + n].iter().copied());
            }
            6 if len > 0 => v.truncate(rng.below(len)),
            _ if len > 0 => {
                // An ASCII digit run changed: numbers, lengths, prefixes.
                let i = rng.below(len);
                if v[i].is_ascii_digit() {
                    v[i] = b'0' + rng.below(10) as u8;
                } else {
                    v[i] = v[i].wrapping_add(1);
                }
            }
            _ => v.push(INTERESTING[rng.below(INTERESTING.len())]),
        }
    }
    v
}
