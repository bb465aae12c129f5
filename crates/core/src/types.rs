//! Small value types every layer shares: addresses with prefixes and Ethernet addresses. They
//! depend on nothing of kvmnet's, so the spec, the planner and the kernel backends can all use
//! them without depending on each other.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// An IPv4 address with a prefix length (`192.168.122.1/24`). The address keeps its host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        Ipv4Cidr { addr, prefix }
    }
    pub fn netmask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }
    /// The subnet this address belongs to, host bits cleared.
    pub fn network(&self) -> Ipv4Cidr {
        Ipv4Cidr::new(
            Ipv4Addr::from(u32::from(self.addr) & self.netmask()),
            self.prefix,
        )
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.netmask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.netmask() == u32::from(self.addr) & self.netmask()
    }
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Ipv4Cidr::new(self.addr, p).netmask();
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not an address with a prefix (like 10.0.0.1/24)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let digits = !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit());
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|_| digits && !(p.len() > 1 && p.starts_with('0')))
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("'{p}' is not a prefix length between 0 and 32"))?;
        Ok(Ipv4Cidr { addr, prefix })
    }
}

/// An address match of either family (a firewall rule's `from`/`to`): `10.0.0.0/8`,
/// `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpCidr {
    V4(Ipv4Cidr),
    V6(Ipv6Cidr),
}

impl IpCidr {
    pub fn is_v6(&self) -> bool {
        matches!(self, IpCidr::V6(_))
    }

    /// Whether an IPv4 address is inside (never, for an IPv6 prefix).
    pub fn contains_v4(&self, a: Ipv4Addr) -> bool {
        match self {
            IpCidr::V4(c) => c.contains(a),
            IpCidr::V6(_) => false,
        }
    }

    /// nftables' word for the family's header: `ip` or `ip6`.
    pub fn nft_header(&self) -> &'static str {
        match self {
            IpCidr::V4(_) => "ip",
            IpCidr::V6(_) => "ip6",
        }
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpCidr::V4(c) => c.fmt(f),
            IpCidr::V6(c) => c.fmt(f),
        }
    }
}

/// An IPv6 prefix (`2001:db8:7::/64`): the address keeps its host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv6Cidr {
    pub addr: Ipv6Addr,
    pub prefix: u8,
}

impl Ipv6Cidr {
    /// Whether `a` lies in the prefix.
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        self.network()
            == Ipv6Cidr {
                addr: a,
                prefix: self.prefix,
            }
            .network()
    }

    /// The prefix with its host bits cleared.
    pub fn network(&self) -> Ipv6Cidr {
        let bits = u128::from(self.addr);
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        Ipv6Cidr {
            addr: Ipv6Addr::from(bits & mask),
            prefix: self.prefix,
        }
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv6Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not an IPv6 prefix (like 2001:db8:7::/64)"))?;
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv6 address"))?;
        let digits = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|_| digits && !(p.len() > 1 && p.starts_with('0')))
            .filter(|p| *p <= 128)
            .ok_or_else(|| format!("'{p}' is not a prefix length between 0 and 128"))?;
        Ok(Ipv6Cidr { addr, prefix })
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The modified EUI-64 interface identifier of this MAC (RFC 4291 appendix A): the
    /// universal/local bit flipped, ff:fe in the middle.
    pub fn eui64(&self) -> [u8; 8] {
        let m = self.0;
        [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]
    }

    /// The address SLAAC gives this MAC in a /64 `prefix` (its host bits are ignored).
    pub fn slaac(&self, prefix: Ipv6Addr) -> Ipv6Addr {
        let mut o = prefix.octets();
        o[8..].copy_from_slice(&self.eui64());
        Ipv6Addr::from(o)
    }

    /// The link-local address (fe80::/64) a guest forms from this MAC by EUI-64.
    pub fn link_local(&self) -> Ipv6Addr {
        self.slaac(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: MACs are written out per port, thousands of times per plan on a big host.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b':'; 17];
        for (i, b) in self.0.iter().enumerate() {
            out[3 * i] = HEX[usize::from(b >> 4)];
            out[3 * i + 1] = HEX[usize::from(b & 15)];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a MAC address (like 52:54:00:12:34:56)");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            out[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eui64_addresses() {
        let m: Mac = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(m.link_local().to_string(), "fe80::5054:ff:fe12:3456");
        let p: Ipv6Addr = "2001:db8:7::".parse().unwrap();
        assert_eq!(m.slaac(p).to_string(), "2001:db8:7:0:5054:ff:fe12:3456");
        let c: Ipv6Cidr = "2001:db8:7::1/64".parse().unwrap();
        assert_eq!(c.network().to_string(), "2001:db8:7::/64");
        for bad in [
            "2001:db8::/129",
            "2001:db8::",
            "2001:db8::/064",
            "10.0.0.0/8",
        ] {
            assert!(bad.parse::<Ipv6Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_text() {
        let m = Mac([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(m.to_string().parse::<Mac>(), Ok(m));
    }

    #[test]
    fn strict_address_forms() {
        assert!("10.0.0.1/24".parse::<Ipv4Cidr>().is_ok());
        for bad in [
            "10.0.0.1/+24",
            "10.0.0.1/024",
            "10.0.0.1/33",
            "10.0.0.1/",
            "10.0.0.1",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        assert!("52:54:00:aa:bb:cc".parse::<Mac>().is_ok());
        for bad in ["52:54:00:aa:bb:+c", "52:54:00:aa:bb", "52-54-00-aa-bb-cc"] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let c: Ipv4Cidr = "192.168.122.77/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "192.168.122.0/24");
        assert_eq!(c.broadcast().to_string(), "192.168.122.255");
        assert!(c.overlaps(&"192.168.0.0/16".parse().unwrap()));
    }
}
