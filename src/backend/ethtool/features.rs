//! The pure half of the kernel's named feature interface: the request buffers of
//! ETHTOOL_GSSET_INFO, ETHTOOL_GSTRINGS (string set ETH_SS_FEATURES), ETHTOOL_GFEATURES and
//! ETHTOOL_SFEATURES, their answers decoded, and which feature bits make up each of kvmnet's
//! offload keys.
//!
//! The legacy per-feature commands (ETHTOOL_STSO and the like) act on a mask fixed in the
//! kernel, which newer features do not always join: `tx-tcp-accecn-segmentation` is outside
//! the legacy TSO mask, so ETHTOOL_STSO leaves it on and ethtool(8) still reports TSO on. An
//! operator's `tso: false` means what `ethtool -K DEV tso off` does, and ethtool(8) resolves
//! its names by pattern over the device's named features; so does this module.

use std::collections::BTreeMap;

pub(super) const ETHTOOL_GSTRINGS: u32 = 0x1b;
pub(super) const ETHTOOL_GSSET_INFO: u32 = 0x37;
pub(super) const ETHTOOL_GFEATURES: u32 = 0x3a;
pub(super) const ETHTOOL_SFEATURES: u32 = 0x3b;
/// The string set naming the netdev feature bits, by bit position.
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// Each offload key and the pattern of feature names ethtool(8) puts under the same name (the
/// kernel name column of its `off_flag_def` table). The patterns do not overlap, so a feature
/// belongs to at most one key, as it does in ethtool(8), which takes the first match.
const GROUPS: &[(&str, &str)] = &[
    ("rx_checksum", "rx-checksum"),
    ("tx_checksum", "tx-checksum-*"),
    ("tso", "tx-tcp*-segmentation"),
    ("gso", "tx-generic-segmentation"),
    ("gro", "rx-gro"),
    ("lro", "rx-lro"),
];

/// The offload keys, in the order of [`GROUPS`].
pub(super) fn offload_keys() -> impl Iterator<Item = &'static str> {
    GROUPS.iter().map(|(k, _)| *k)
}

fn pattern(key: &str) -> Option<&'static str> {
    GROUPS.iter().find(|(k, _)| *k == key).map(|(_, p)| *p)
}

/// ethtool(8)'s match of a feature name against a pattern: at most one `*`, standing for any
/// run of characters, none included (`tx-tcp*-segmentation` takes `tx-tcp-segmentation`).
fn matches(name: &str, pattern: &str) -> bool {
    match pattern.split_once('*') {
        None => name == pattern,
        Some((head, tail)) => {
            name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail)
        }
    }
}

fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at + 4)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// struct ethtool_sset_info asking for the size of ETH_SS_FEATURES: cmd, reserved, a u64
/// mask of string sets, then one count per set the kernel knows.
pub(super) fn sset_info_request() -> Vec<u8> {
    let mut b = vec![0u8; 20];
    put_u32(&mut b, 0, ETHTOOL_GSSET_INFO);
    b[8..16].copy_from_slice(&(1u64 << ETH_SS_FEATURES).to_ne_bytes());
    b
}

/// The number of named features, or None when the kernel left the set out of its answer.
pub(super) fn sset_count(reply: &[u8]) -> Option<usize> {
    let mask = u64::from_ne_bytes(reply.get(8..16)?.try_into().ok()?);
    if mask & (1u64 << ETH_SS_FEATURES) == 0 {
        return None;
    }
    usize::try_from(get_u32(reply, 16)?).ok()
}

/// struct ethtool_gstrings for the feature names: cmd, string_set, len, then `count` names
/// of ETH_GSTRING_LEN bytes each.
pub(super) fn strings_request(count: usize) -> Vec<u8> {
    let mut b = vec![0u8; 12 + count * ETH_GSTRING_LEN];
    put_u32(&mut b, 0, ETHTOOL_GSTRINGS);
    put_u32(&mut b, 4, ETH_SS_FEATURES);
    put_u32(&mut b, 8, u32::try_from(count).unwrap_or(u32::MAX));
    b
}

/// The names in a GSTRINGS answer, by bit position; an unused bit has an empty name. None
/// when the answer claims more names than its buffer holds.
pub(super) fn parse_strings(reply: &[u8]) -> Option<Vec<String>> {
    let len = usize::try_from(get_u32(reply, 8)?).ok()?;
    let data = reply.get(12..12 + len.checked_mul(ETH_GSTRING_LEN)?)?;
    Some(
        data.chunks(ETH_GSTRING_LEN)
            .map(|s| {
                let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
                String::from_utf8_lossy(&s[..end]).into_owned()
            })
            .collect(),
    )
}

/// One word of struct ethtool_get_features_block: 32 feature bits in each field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Block {
    /// Bits the device lets change (hw_features).
    pub available: u32,
    pub requested: u32,
    pub active: u32,
    /// Bits no one may change, whatever the device says.
    pub never_changed: u32,
}

/// struct ethtool_gfeatures with room for `words` blocks: cmd, size, blocks.
pub(super) fn features_request(words: usize) -> Vec<u8> {
    let mut b = vec![0u8; 8 + words * 16];
    put_u32(&mut b, 0, ETHTOOL_GFEATURES);
    put_u32(&mut b, 4, u32::try_from(words).unwrap_or(u32::MAX));
    b
}

/// A GFEATURES answer: the number of words the kernel has (it fills no more than asked for,
/// so a larger number means ask again), and the blocks it filled.
pub(super) fn parse_features(reply: &[u8]) -> Option<(usize, Vec<Block>)> {
    let size = usize::try_from(get_u32(reply, 4)?).ok()?;
    let blocks = reply
        .get(8..)?
        .chunks_exact(16)
        .take(size)
        .map(|c| Block {
            available: get_u32(c, 0).unwrap_or(0),
            requested: get_u32(c, 4).unwrap_or(0),
            active: get_u32(c, 8).unwrap_or(0),
            never_changed: get_u32(c, 12).unwrap_or(0),
        })
        .collect();
    Some((size, blocks))
}

/// struct ethtool_sfeatures: cmd, size, then (valid, requested) per word. The kernel takes
/// only a size equal to its own number of words, the one GFEATURES reports.
pub(super) fn set_request(words: &[(u32, u32)]) -> Vec<u8> {
    let mut b = vec![0u8; 8 + words.len() * 8];
    put_u32(&mut b, 0, ETHTOOL_SFEATURES);
    put_u32(&mut b, 4, u32::try_from(words.len()).unwrap_or(u32::MAX));
    for (i, (valid, requested)) in words.iter().enumerate() {
        put_u32(&mut b, 8 + i * 8, *valid);
        put_u32(&mut b, 12 + i * 8, *requested);
    }
    b
}

/// What setting some offload keys takes: the (valid, requested) words of ETHTOOL_SFEATURES,
/// and the keys left for the legacy commands (those of which the kernel names no feature).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Request<'a> {
    pub words: Vec<(u32, u32)>,
    pub legacy: Vec<&'a str>,
}

/// A device's named features: each bit's name and its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Features {
    pub names: Vec<String>,
    pub blocks: Vec<Block>,
}

impl Features {
    fn block(&self, bit: usize) -> (Block, u32) {
        let b = self.blocks.get(bit / 32).copied().unwrap_or_default();
        (b, 1 << (bit % 32))
    }

    /// The bit positions of a key's group: the features whose names match its pattern (none
    /// for a key that is not an offload, or one this kernel names no feature of).
    pub fn group(&self, key: &str) -> Vec<usize> {
        let Some(p) = pattern(key) else {
            return Vec::new();
        };
        (0..self.names.len().min(self.blocks.len() * 32))
            .filter(|&i| !self.names[i].is_empty() && matches(&self.names[i], p))
            .collect()
    }

    fn active(&self, bit: usize) -> bool {
        let (b, m) = self.block(bit);
        b.active & m != 0
    }

    /// What `ethtool -K` may change: a bit the device offers and the kernel does not pin.
    fn changeable(&self, bit: usize) -> bool {
        let (b, m) = self.block(bit);
        b.available & m != 0 && b.never_changed & m == 0
    }

    /// A key's value as ethtool(8)'s summary line reports it: 1 when any feature of its group
    /// is active. None when the kernel names no feature of the group.
    pub fn value(&self, key: &str) -> Option<u32> {
        let g = self.group(key);
        (!g.is_empty()).then(|| u32::from(g.iter().any(|&i| self.active(i))))
    }

    /// The request that sets every changeable bit of each key's group to its value. A key whose group the device cannot change at all is `Err(key)` when it is not already
    /// as wanted; one that already is asks for nothing, as ETHTOOL_SFLAGS takes a no-op.
    pub fn request<'a>(&self, want: &'a BTreeMap<String, u32>) -> Result<Request<'a>, &'a str> {
        let mut words = vec![(0u32, 0u32); self.blocks.len()];
        let mut legacy = Vec::new();
        for (key, &v) in want {
            let g = self.group(key);
            if g.is_empty() {
                legacy.push(key.as_str());
                continue;
            }
            let bits: Vec<usize> = g.into_iter().filter(|&i| self.changeable(i)).collect();
            if bits.is_empty() {
                if self.value(key) != Some(u32::from(v != 0)) {
                    return Err(key);
                }
                continue;
            }
            for i in bits {
                let (valid, requested) = &mut words[i / 32];
                *valid |= 1 << (i % 32);
                if v != 0 {
                    *requested |= 1 << (i % 32);
                }
            }
        }
        Ok(Request { words, legacy })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GSTRINGS answer holding `names`, as the kernel writes it.
    fn strings_reply(names: &[&str]) -> Vec<u8> {
        let mut b = strings_request(names.len());
        for (i, n) in names.iter().enumerate() {
            b[12 + i * ETH_GSTRING_LEN..][..n.len()].copy_from_slice(n.as_bytes());
        }
        b
    }

    /// Bit positions as a kernel might number them; the AccECN bit lies in the second word,
    /// as newer bits do, and bit 3 is unused.
    fn sample() -> Features {
        let mut names = vec![
            "tx-scatter-gather",
            "tx-checksum-ipv4",
            "tx-checksum-ip-generic",
            "",
            "tx-tcp-segmentation",
            "tx-tcp-ecn-segmentation",
            "tx-tcp-mangleid-segmentation",
            "tx-tcp6-segmentation",
            "rx-gro",
            "rx-gro-hw",
            "rx-lro",
            "rx-checksum",
            "tx-generic-segmentation",
            "tx-udp-segmentation",
            "tx-gre-segmentation",
        ];
        names.resize(40, "");
        names.push("tx-tcp-accecn-segmentation");
        let names = parse_strings(&strings_reply(&names)).unwrap();
        let all = |bits: &[usize], word: usize| {
            bits.iter()
                .filter(|&&b| b / 32 == word)
                .fold(0u32, |m, b| m | 1 << (b % 32))
        };
        // TSO and GRO on, everything changeable but the IPv4 checksum and LRO.
        let on = [0, 2, 4, 5, 6, 7, 8, 11, 12, 13, 14, 40];
        let fixed = [1, 9, 10];
        let blocks = (0..2)
            .map(|w| Block {
                available: !all(&fixed, w),
                requested: all(&on, w),
                active: all(&on, w),
                never_changed: 0,
            })
            .collect();
        Features { names, blocks }
    }

    #[test]
    fn patterns_match_as_ethtool_does() {
        assert!(matches("tx-tcp-segmentation", "tx-tcp*-segmentation"));
        assert!(matches("tx-tcp6-segmentation", "tx-tcp*-segmentation"));
        assert!(matches(
            "tx-tcp-accecn-segmentation",
            "tx-tcp*-segmentation"
        ));
        assert!(!matches("tx-udp-segmentation", "tx-tcp*-segmentation"));
        // The star stands for a run, not for the overlap of head and tail.
        assert!(!matches("tx-tcp-segmentatio", "tx-tcp*-segmentation"));
        assert!(matches("rx-gro", "rx-gro"));
        assert!(!matches("rx-gro-hw", "rx-gro"));
        assert!(matches("tx-checksum-sctp", "tx-checksum-*"));
        assert!(!matches("tx-checksumming", "tx-checksum-*"));
    }

    #[test]
    fn strings_are_read_by_position_up_to_their_nul() {
        let names = parse_strings(&strings_reply(&["rx-gro", "", "tx-tcp6-segmentation"]));
        assert_eq!(names.unwrap(), vec!["rx-gro", "", "tx-tcp6-segmentation"]);
        // A name filling its whole slot has no NUL.
        let long = "x".repeat(ETH_GSTRING_LEN);
        assert_eq!(parse_strings(&strings_reply(&[&long])).unwrap(), vec![long]);
        // A length beyond the buffer is refused, not read past.
        let mut short = strings_reply(&["rx-gro"]);
        put_u32(&mut short, 8, 2);
        assert_eq!(parse_strings(&short), None);
    }

    #[test]
    fn sset_info_answers() {
        let mut r = sset_info_request();
        assert_eq!(get_u32(&r, 0), Some(ETHTOOL_GSSET_INFO));
        put_u32(&mut r, 16, 66);
        assert_eq!(sset_count(&r), Some(66));
        // The kernel clears the bit of a set it does not know.
        r[8..16].copy_from_slice(&0u64.to_ne_bytes());
        assert_eq!(sset_count(&r), None);
    }

    #[test]
    fn features_answers_and_set_requests() {
        let mut r = features_request(2);
        put_u32(&mut r, 8 + 16 + 8, 0x8000_0000);
        assert_eq!(
            parse_features(&r).unwrap(),
            (
                2,
                vec![
                    Block::default(),
                    Block {
                        active: 0x8000_0000,
                        ..Block::default()
                    }
                ]
            )
        );
        // The kernel has three words but filled the two asked for.
        put_u32(&mut r, 4, 3);
        assert_eq!(parse_features(&r).unwrap().0, 3);
        assert_eq!(parse_features(&r).unwrap().1.len(), 2);
        let s = set_request(&[(1, 0), (2, 2)]);
        let words: Vec<u32> = (0..6).map(|i| get_u32(&s, i * 4).unwrap()).collect();
        assert_eq!(words, vec![ETHTOOL_SFEATURES, 2, 1, 0, 2, 2]);
    }

    #[test]
    fn groups_span_every_feature_of_the_name() {
        let f = sample();
        assert_eq!(f.group("tso"), vec![4, 5, 6, 7, 40]);
        assert_eq!(f.group("tx_checksum"), vec![1, 2]);
        assert_eq!(f.group("gro"), vec![8]);
        assert_eq!(f.group("rings.rx"), Vec::<usize>::new());
        assert_eq!(f.value("tso"), Some(1));
        assert_eq!(f.value("lro"), Some(0));
        // A kernel that names no feature of a group leaves the key to the legacy commands.
        let bare = Features {
            names: vec!["rx-gro".into()],
            blocks: vec![Block::default()],
        };
        assert_eq!(bare.value("tso"), None);
    }

    #[test]
    fn summary_is_on_while_any_bit_of_the_group_is() {
        let mut f = sample();
        // The legacy TSO toggle's leftover: every TSO bit off but AccECN's.
        f.blocks[0].active &= !0xf0;
        assert_eq!(f.value("tso"), Some(1));
        f.blocks[1].active = 0;
        assert_eq!(f.value("tso"), Some(0));
    }

    #[test]
    fn requests_set_every_changeable_bit_of_the_group() {
        let f = sample();
        let want = BTreeMap::from([("tso".to_string(), 0), ("tx_checksum".to_string(), 1)]);
        let r = f.request(&want).unwrap();
        // TSO's five bits cleared; of the checksums only the changeable one requested.
        assert_eq!(r.words, vec![(0xf0 | 0b100, 0b100), (1 << 8, 0)]);
        assert!(r.legacy.is_empty());
    }

    #[test]
    fn a_group_the_device_cannot_change_is_refused_unless_already_so() {
        let f = sample();
        let on = BTreeMap::from([("lro".to_string(), 1)]);
        assert_eq!(f.request(&on), Err("lro"));
        let off = BTreeMap::from([("lro".to_string(), 0)]);
        let nothing = Request {
            words: vec![(0, 0), (0, 0)],
            legacy: vec![],
        };
        assert_eq!(f.request(&off), Ok(nothing));
        // Bits the kernel pins count as fixed even where the device offers them.
        let mut pinned = sample();
        pinned.blocks[0].never_changed = 1 << 8;
        let gro = BTreeMap::from([("gro".to_string(), 0)]);
        assert_eq!(pinned.request(&gro), Err("gro"));
    }

    #[test]
    fn keys_the_kernel_does_not_name_go_to_the_legacy_commands() {
        let f = Features {
            names: vec!["rx-gro".into()],
            blocks: vec![Block {
                available: 1,
                ..Block::default()
            }],
        };
        let want = BTreeMap::from([("gro".to_string(), 1), ("tso".to_string(), 0)]);
        let r = Request {
            words: vec![(1, 1)],
            legacy: vec!["tso"],
        };
        assert_eq!(f.request(&want), Ok(r));
    }
}
