//! Router advertisements and solicitations on the wire (RFC 4861 4.1, 4.2, 4.6; RFC 8106
//! for RDNSS and DNSSL). The ICMPv6 checksum is the kernel's: a raw ICMPv6 socket fills it
//! in on send and checks it on receive.

use std::net::Ipv6Addr;

use crate::spec::{Ipv6Cidr, Mac};

pub const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;
const OPT_SOURCE_LLA: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;
const OPT_RDNSS: u8 = 25;
const OPT_DNSSL: u8 = 31;
/// Hop limit guests use for their own packets (RFC 4861's AdvCurHopLimit, as radvd sends).
const CUR_HOP_LIMIT: u8 = 64;

/// Everything one RA says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// M flag: addresses from DHCPv6.
    pub managed: bool,
    /// O flag: other configuration from DHCPv6.
    pub other: bool,
    pub router_lifetime_secs: u16,
    /// The bridge's MAC (source link-layer address option).
    pub source_mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub prefixes: Vec<PrefixInfo>,
    /// RDNSS servers with their lifetime; empty: no option.
    pub rdnss: Vec<Ipv6Addr>,
    /// DNSSL domains; empty: no option.
    pub dnssl: Vec<String>,
    /// Lifetime of the RDNSS and DNSSL entries (RFC 8106 5.1: at least MaxRtrAdvInterval).
    pub dns_lifetime_secs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixInfo {
    pub prefix: Ipv6Cidr,
    /// L flag: the prefix is on this link.
    pub on_link: bool,
    /// A flag: guests form SLAAC addresses in it.
    pub autonomous: bool,
    pub valid_secs: u32,
    pub preferred_secs: u32,
}

impl Advert {
    /// The ICMPv6 message (type 134), checksum left zero for the kernel.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        let flags = (u8::from(self.managed) << 7) | (u8::from(self.other) << 6);
        b.extend_from_slice(&[ROUTER_ADVERTISEMENT, 0, 0, 0, CUR_HOP_LIMIT, flags]);
        b.extend_from_slice(&self.router_lifetime_secs.to_be_bytes());
        // Reachable time and retrans timer: unspecified, the guests' defaults hold.
        b.extend_from_slice(&[0; 8]);
        if let Some(m) = self.source_mac {
            b.extend_from_slice(&[OPT_SOURCE_LLA, 1]);
            b.extend_from_slice(&m.0);
        }
        if let Some(mtu) = self.mtu {
            b.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
            b.extend_from_slice(&mtu.to_be_bytes());
        }
        for p in &self.prefixes {
            let flags = (u8::from(p.on_link) << 7) | (u8::from(p.autonomous) << 6);
            b.extend_from_slice(&[OPT_PREFIX_INFO, 4, p.prefix.prefix, flags]);
            b.extend_from_slice(&p.valid_secs.to_be_bytes());
            b.extend_from_slice(&p.preferred_secs.to_be_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&p.prefix.network().addr.octets());
        }
        if !self.rdnss.is_empty() {
            let len = 1 + 2 * self.rdnss.len();
            b.extend_from_slice(&[OPT_RDNSS, u8::try_from(len).unwrap_or(u8::MAX), 0, 0]);
            b.extend_from_slice(&self.dns_lifetime_secs.to_be_bytes());
            for a in &self.rdnss {
                b.extend_from_slice(&a.octets());
            }
        }
        if !self.dnssl.is_empty() {
            let mut names = Vec::new();
            for d in &self.dnssl {
                for label in d.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
                    names.push(u8::try_from(label.len().min(63)).unwrap_or(63));
                    names.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
                }
                names.push(0);
            }
            // Padded with zeros to a multiple of 8 octets (RFC 8106 5.2).
            let total = (8 + names.len()).div_ceil(8) * 8;
            names.resize(total - 8, 0);
            b.extend_from_slice(&[OPT_DNSSL, u8::try_from(total / 8).unwrap_or(u8::MAX), 0, 0]);
            b.extend_from_slice(&self.dns_lifetime_secs.to_be_bytes());
            b.extend_from_slice(&names);
        }
        b
    }
}

/// A router solicitation as received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Solicitation {
    /// The source link-layer address option, if present.
    pub source_mac: Option<Mac>,
}

/// Why a message is not a valid router solicitation (RFC 4861 6.1.1).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RsError {
    #[error("shorter than 8 octets")]
    Short,
    #[error("ICMPv6 type {0} is not a router solicitation")]
    NotRs(u8),
    #[error("ICMPv6 code {0} is not 0")]
    Code(u8),
    #[error("an option has length zero or runs past the message")]
    BadOption,
    #[error("from the unspecified address with a source link-layer address option")]
    UnspecifiedWithLla,
}

/// Checks and reads a router solicitation (the ICMPv6 message, after the IPv6 header);
/// `from_unspecified` says whether its source was `::`. The hop limit of 255 is checked by
/// the socket layer, which sees the IPv6 header.
pub fn parse_rs(m: &[u8], from_unspecified: bool) -> Result<Solicitation, RsError> {
    if m.len() < 8 {
        return Err(RsError::Short);
    }
    if m[0] != ROUTER_SOLICITATION {
        return Err(RsError::NotRs(m[0]));
    }
    if m[1] != 0 {
        return Err(RsError::Code(m[1]));
    }
    let mut opts = &m[8..];
    let mut source_mac = None;
    while !opts.is_empty() {
        if opts.len() < 2 || opts[1] == 0 {
            return Err(RsError::BadOption);
        }
        let len = usize::from(opts[1]) * 8;
        if len > opts.len() {
            return Err(RsError::BadOption);
        }
        if opts[0] == OPT_SOURCE_LLA && len >= 8 {
            let mut mac = [0; 6];
            mac.copy_from_slice(&opts[2..8]);
            source_mac = Some(Mac(mac));
        }
        opts = &opts[len..];
    }
    if from_unspecified && source_mac.is_some() {
        return Err(RsError::UnspecifiedWithLla);
    }
    Ok(Solicitation { source_mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> Advert {
        Advert {
            managed: false,
            other: false,
            router_lifetime_secs: 1800,
            source_mac: Some(Mac([0x52, 0x54, 0, 1, 2, 3])),
            mtu: Some(1500),
            prefixes: vec![PrefixInfo {
                prefix: "fd00:122::1/64".parse().unwrap(),
                on_link: true,
                autonomous: true,
                valid_secs: 86400,
                preferred_secs: 14400,
            }],
            rdnss: vec![],
            dnssl: vec![],
            dns_lifetime_secs: 1200,
        }
    }

    #[test]
    fn an_ra_has_the_header_slla_mtu_and_prefix() {
        let b = advert().encode();
        assert_eq!(b.len(), 16 + 8 + 8 + 32);
        assert_eq!(&b[..8], &[134, 0, 0, 0, 64, 0, 0x07, 0x08]);
        assert_eq!(&b[16..24], &[1, 1, 0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(&b[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0xdc]);
        assert_eq!(&b[32..36], &[3, 4, 64, 0xc0]);
        assert_eq!(&b[36..40], &86400u32.to_be_bytes());
        assert_eq!(&b[40..44], &14400u32.to_be_bytes());
        // The prefix is sent without the gateway's host bits.
        let p: Ipv6Addr = "fd00:122::".parse().unwrap();
        assert_eq!(&b[48..64], &p.octets());
    }

    #[test]
    fn flags_follow_managed_other_and_autonomous() {
        let mut a = advert();
        a.managed = true;
        a.other = true;
        a.prefixes[0].autonomous = false;
        let b = a.encode();
        assert_eq!(b[5], 0xc0);
        assert_eq!(b[35], 0x80);
    }

    #[test]
    fn rdnss_and_dnssl_only_when_given() {
        let plain = advert().encode();
        assert!(!plain.chunks(8).any(|c| c[0] == 25 || c[0] == 31));
        let mut a = advert();
        a.rdnss = vec!["fd00:122::1".parse().unwrap()];
        a.dnssl = vec!["vm.test".into()];
        let b = a.encode();
        let rd = &b[64..88];
        assert_eq!(&rd[..8], &[25, 3, 0, 0, 0, 0, 0x04, 0xb0]);
        assert_eq!(
            &rd[8..24],
            &"fd00:122::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        let dl = &b[88..];
        assert_eq!(dl[0], 31);
        assert_eq!(usize::from(dl[1]) * 8, dl.len());
        assert_eq!(&dl[8..17], b"\x02vm\x04test\x00");
        assert!(dl[17..].iter().all(|x| *x == 0));
    }

    #[test]
    fn solicitations_are_checked() {
        assert_eq!(
            parse_rs(&[133, 0, 0, 0, 0, 0, 0, 0], true),
            Ok(Solicitation { source_mac: None })
        );
        let with = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 9];
        assert_eq!(
            parse_rs(&with, false).unwrap().source_mac,
            Some(Mac([2, 0, 0, 0, 0, 9]))
        );
        assert_eq!(parse_rs(&with, true), Err(RsError::UnspecifiedWithLla));
        assert_eq!(parse_rs(&[133, 0, 0], false), Err(RsError::Short));
        assert_eq!(
            parse_rs(&[134, 0, 0, 0, 0, 0, 0, 0], false),
            Err(RsError::NotRs(134))
        );
        assert_eq!(
            parse_rs(&[133, 1, 0, 0, 0, 0, 0, 0], false),
            Err(RsError::Code(1))
        );
        let zero = [133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_rs(&zero, false), Err(RsError::BadOption));
        let long = [133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_rs(&long, false), Err(RsError::BadOption));
    }
}
