//! Set types and set elements as nft writes them, from what the kernel keeps: type numbers
//! and raw bytes. kvmnet compares the sets it wants with the sets it reads in these words,
//! so both sides must spell them alike (`"port" . 52:54:00:aa:00:10`, `0x4b000001 : jump x`).
//!
//! The kernel keeps a set's type as numbers; a key read from raw packet bytes (`typeof
//! iifname . @th,208,48`) is kept only as `integer` of some width, so kvmnet writes such a
//! type as the set's comment too, and reads it back from there.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::netlink::attr_string;

/// nft data types (nftables' `datatype.h`) of the keys and values kvmnet uses.
const TYPE_MARK: u32 = 19;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_ETHERADDR: u32 = 9;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_IFNAME: u32 = 41;
/// Concatenated types are packed `TYPE_BITS` to a field.
pub(crate) const TYPE_BITS: u32 = 6;
/// The data type nft gives verdict maps' values.
pub(crate) const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// libnftnl's user data of a set: (type, length, value) triples; type 7 is the comment.
const UDATA_SET_COMMENT: u8 = 7;

fn type_names(mut ty: u32) -> Option<Vec<u32>> {
    let mut v = Vec::new();
    while ty != 0 {
        v.push(ty & ((1 << TYPE_BITS) - 1));
        ty >>= TYPE_BITS;
    }
    v.reverse();
    (!v.is_empty()).then_some(v)
}

fn type_word(t: u32) -> Option<&'static str> {
    match t {
        TYPE_IPADDR => Some("ipv4_addr"),
        TYPE_IP6ADDR => Some("ipv6_addr"),
        TYPE_ETHERADDR => Some("ether_addr"),
        TYPE_IFNAME => Some("ifname"),
        TYPE_INET_SERVICE => Some("inet_service"),
        TYPE_MARK => Some("mark"),
        _ => None,
    }
}

/// A set's type in nft's words; `type N` for types kvmnet does not use.
pub(crate) fn set_type(key: u32, data: Option<u32>) -> String {
    let k = match type_names(key) {
        Some(parts) => parts
            .iter()
            .map(|t| type_word(*t).map_or(format!("type {t}"), str::to_string))
            .collect::<Vec<_>>()
            .join(" . "),
        None => format!("type {key}"),
    };
    match data {
        Some(NFT_DATA_VERDICT) => format!("{k} : verdict"),
        Some(TYPE_MARK) => format!("{k} : mark"),
        Some(d) => format!("{k} : type {d}"),
        None => k,
    }
}

/// The `typeof` type a set's comment holds, if it holds one.
pub(crate) fn typeof_comment(udata: &[u8]) -> Option<String> {
    let mut p = udata;
    while p.len() >= 2 {
        let (ty, len) = (p[0], p[1] as usize);
        let v = p.get(2..2 + len)?;
        if ty == UDATA_SET_COMMENT {
            let c = attr_string(v);
            return c.starts_with("typeof ").then_some(c);
        }
        p = &p[2 + len..];
    }
    None
}

/// One field of a key, or a map's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Ifname,
    Ipv4,
    Ipv6,
    Ether,
    Service,
    /// Host byte order, as nft keeps marks.
    Mark,
    /// Raw packet bytes of this length, written as one hex number.
    Raw(usize),
}

impl Field {
    fn parse(word: &str) -> Option<Field> {
        Some(match word {
            "ifname" | "iifname" | "oifname" => Field::Ifname,
            "ipv4_addr" | "ip daddr" => Field::Ipv4,
            "ipv6_addr" | "ip6 daddr" | "ip6 saddr" => Field::Ipv6,
            "ether_addr" => Field::Ether,
            "inet_service" => Field::Service,
            "mark" | "meta mark" => Field::Mark,
            raw if raw.starts_with('@') => {
                let bits: usize = raw.rsplit(',').next()?.parse().ok()?;
                (bits.is_multiple_of(8) && bits > 0).then_some(Field::Raw(bits / 8))?
            }
            _ => return None,
        })
    }

    fn len(self) -> usize {
        match self {
            Field::Ifname | Field::Ipv6 => 16,
            Field::Ipv4 | Field::Mark => 4,
            Field::Ether => 6,
            Field::Service => 2,
            Field::Raw(n) => n,
        }
    }

    fn text(self, f: &[u8]) -> String {
        match self {
            Field::Ipv4 => Ipv4Addr::new(f[0], f[1], f[2], f[3]).to_string(),
            Field::Ipv6 => {
                let o: [u8; 16] = f.try_into().expect("16 bytes");
                Ipv6Addr::from(o).to_string()
            }
            Field::Service => u16::from_be_bytes([f[0], f[1]]).to_string(),
            Field::Ether => f
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
            Field::Mark => format!("0x{:08x}", u32::from_ne_bytes([f[0], f[1], f[2], f[3]])),
            Field::Raw(_) => {
                let mut s = String::from("0x");
                for b in f {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }
            Field::Ifname => format!("\"{}\"", attr_string(f)),
        }
    }
}

/// The fields of a set type's key and, for a map, of its value (`None` for a verdict).
fn layout(ty: &str) -> Option<(Vec<Field>, Option<Field>)> {
    let (key, data) = match ty.split_once(" : ") {
        Some((k, d)) => (k, Some(d)),
        None => (ty, None),
    };
    let key = key.strip_prefix("typeof ").unwrap_or(key);
    // A set with counters on its elements, or of ranges: neither is part of the key.
    let key = key.strip_suffix("; counter").unwrap_or(key);
    let key = key.strip_suffix("; flags interval").unwrap_or(key);
    let fields = key
        .split(" . ")
        .map(Field::parse)
        .collect::<Option<Vec<_>>>()?;
    let value = match data {
        None | Some("verdict") => None,
        Some(d) => Some(Field::parse(d)?),
    };
    Some((fields, value))
}

fn hex(v: &[u8]) -> String {
    v.iter().map(|b| format!("{b:02x}")).collect()
}

/// A key of a set of type `ty`, in nft's words, field by field; hex when the type is not
/// one kvmnet uses or the bytes do not fit it.
pub(crate) fn key_text(ty: &str, v: &[u8]) -> String {
    range_text(ty, v, None)
}

/// An element of an interval set with a concatenated key (the kernel keeps its first and
/// last key): each field as one value where both keys agree, else as `FIRST-LAST`, the way
/// kvmnet writes it (`"vm1" . fd00::1000-fd00::1fff`). An element of one value has a last
/// key equal to its first.
pub(crate) fn range_text(ty: &str, v: &[u8], end: Option<&[u8]>) -> String {
    let Some((fields, _)) = layout(ty) else {
        return hex(v);
    };
    let end = end.filter(|e| e.len() == v.len()).unwrap_or(v);
    let single = fields.len() == 1;
    let mut out = Vec::with_capacity(fields.len());
    let mut at = 0;
    for f in fields {
        let (Some(bytes), Some(last)) = (v.get(at..at + f.len()), end.get(at..at + f.len())) else {
            return hex(v);
        };
        if bytes == last {
            out.push(f.text(bytes));
        } else {
            out.push(format!("{}-{}", f.text(bytes), f.text(last)));
        }
        // Fields of a concatenation are padded to 4 bytes; a key of one field is not.
        at += if single {
            f.len()
        } else {
            f.len().div_ceil(4) * 4
        };
    }
    if at != v.len() {
        return hex(v);
    }
    out.join(" . ")
}

/// A map's value (not a verdict) in nft's words, or hex.
pub(crate) fn value_text(ty: &str, v: &[u8]) -> String {
    match layout(ty) {
        Some((_, Some(f))) if v.len() == f.len() => f.text(v),
        _ => hex(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_nft_words() {
        let ifname_ether = (TYPE_IFNAME << TYPE_BITS) | TYPE_ETHERADDR;
        assert_eq!(set_type(ifname_ether, None), "ifname . ether_addr");
        assert_eq!(
            set_type(TYPE_IPADDR, Some(NFT_DATA_VERDICT)),
            "ipv4_addr : verdict"
        );
        assert_eq!(set_type(TYPE_IFNAME, Some(TYPE_MARK)), "ifname : mark");
        let mut k = vec![0u8; 24];
        k[..3].copy_from_slice(b"vm1");
        k[16..22].copy_from_slice(&[0x52, 0x54, 0, 0xaa, 0, 0x10]);
        assert_eq!(
            key_text("ifname . ether_addr", &k),
            "\"vm1\" . 52:54:00:aa:00:10"
        );
        // The same bytes read as raw packet bytes (a MAC from a DHCP chaddr).
        assert_eq!(
            key_text("typeof iifname . @ih,224,48", &k),
            "\"vm1\" . 0x525400aa0010"
        );
        assert_eq!(
            key_text("ipv4_addr : verdict", &[192, 0, 2, 1]),
            "192.0.2.1"
        );
        // A key of one field is not padded: a port is two bytes.
        assert_eq!(key_text("inet_service", &[0x14, 0x51]), "5201");
        let ll: Ipv6Addr = "fe80::5054:ff:feaa:10".parse().unwrap();
        assert_eq!(
            key_text("ipv6_addr : verdict", &ll.octets()),
            "fe80::5054:ff:feaa:10"
        );
        assert_eq!(
            value_text("ifname : mark", &0x4b00_0001u32.to_ne_bytes()),
            "0x4b000001"
        );
        assert_eq!(key_text("type 99", &[1, 2]), "0102");
        // The firewall's counting sets, typed by the expressions they are looked up by.
        let mark = 0x4b00_0001u32.to_ne_bytes();
        assert_eq!(key_text("typeof meta mark; counter", &mark), "0x4b000001");
        assert_eq!(
            key_text("typeof ip daddr; counter", &[192, 0, 2, 1]),
            "192.0.2.1"
        );
        assert_eq!(
            key_text("typeof ip6 daddr; counter", &ll.octets()),
            "fe80::5054:ff:feaa:10"
        );
    }

    #[test]
    fn ranges_of_concatenated_interval_sets() {
        let ty = "typeof iifname . ip6 saddr; flags interval";
        let lo: Ipv6Addr = "fd00:122::1000".parse().unwrap();
        let hi: Ipv6Addr = "fd00:122::1fff".parse().unwrap();
        let key = |a: Ipv6Addr| {
            let mut k = vec![0u8; 32];
            k[..3].copy_from_slice(b"vm1");
            k[16..].copy_from_slice(&a.octets());
            k
        };
        assert_eq!(
            range_text(ty, &key(lo), Some(&key(hi))),
            "\"vm1\" . fd00:122::1000-fd00:122::1fff"
        );
        // One address: its last key is its first.
        assert_eq!(
            range_text(ty, &key(lo), Some(&key(lo))),
            "\"vm1\" . fd00:122::1000"
        );
        assert_eq!(range_text(ty, &key(lo), None), "\"vm1\" . fd00:122::1000");
        let raw = "typeof iifname . @th,64,128; flags interval";
        assert_eq!(
            range_text(raw, &key(lo), Some(&key(hi))),
            "\"vm1\" . 0xfd000122000000000000000000001000-0xfd000122000000000000000000001fff"
        );
    }

    #[test]
    fn set_comments_carry_typeof_types() {
        let c = b"typeof iifname . @th,208,48";
        let mut udata = vec![0u8, 1, 1, UDATA_SET_COMMENT, c.len() as u8 + 1];
        udata.extend_from_slice(c);
        udata.push(0);
        assert_eq!(
            typeof_comment(&udata).as_deref(),
            Some("typeof iifname . @th,208,48")
        );
        assert_eq!(typeof_comment(&[UDATA_SET_COMMENT, 2, b'x', 0]), None);
    }
}
