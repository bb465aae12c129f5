//! One network's authoritative names: forward (`VM.DOMAIN`, records) and reverse
//! (in-addr.arpa for the network's subnet, ip6.arpa for the IPv6 addresses it names), and
//! the answers to questions about them. Pure.

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::Zone;
use crate::spec::Ipv4Cidr;

/// TTL of local answers: VMs come and go with the spec, and guests should notice soon.
pub const LOCAL_TTL: u32 = 60;

/// What the zone says about a question, if the name is its to answer.
pub struct LocalAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA of a negative answer (RFC 2308), when the name is under an apex.
    pub authority: Vec<Record>,
}

pub struct ZoneData {
    /// Fully qualified lower-case domain; `None`: names are single labels.
    apex: Option<Name>,
    forward: HashMap<Name, Vec<IpAddr>>,
    reverse: HashMap<Name, Vec<Name>>,
    /// The IPv4 subnets whose reverse names are this zone's (every address in them is
    /// answered here, NXDOMAIN when no one has it, so private addresses never leak out).
    subnets: Vec<Ipv4Cidr>,
    serial: u32,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

/// The reverse zone of `a` in `net`: the longest octet boundary at or below the prefix
/// (rounded up, so the zone stays inside the subnet; a /25 gets its /24's name).
fn reverse_apex(a: std::net::Ipv4Addr, net: Ipv4Cidr) -> Name {
    let octets = usize::from(net.prefix.div_ceil(8).clamp(1, 3));
    let o = a.octets();
    let labels: Vec<String> = o[..octets].iter().rev().map(|b| b.to_string()).collect();
    name(&format!("{}.in-addr.arpa.", labels.join("."))).unwrap_or_else(Name::root)
}

impl ZoneData {
    pub fn new(z: &Zone, serial: u32) -> ZoneData {
        let mut forward: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        let mut reverse: HashMap<Name, Vec<Name>> = HashMap::new();
        for (n, a) in &z.names {
            let Some(n) = name(n) else { continue };
            let addrs = forward.entry(n.clone()).or_default();
            if !addrs.contains(a) {
                addrs.push(*a);
            }
            let r = reverse.entry(Name::from(*a)).or_default();
            if !r.contains(&n) {
                r.push(n);
            }
        }
        ZoneData {
            apex: z.domain.as_deref().and_then(|d| name(&format!("{d}."))),
            forward,
            reverse,
            subnets: z.subnets.clone(),
            serial,
        }
    }

    fn soa(&self, apex: &Name) -> Record {
        let host = Name::from_ascii("hostmaster").expect("label");
        let rname = host.append_domain(apex).unwrap_or_else(|_| apex.clone());
        let soa = SOA::new(
            apex.clone(),
            rname,
            self.serial,
            3600,
            600,
            86400,
            LOCAL_TTL,
        );
        Record::from_rdata(apex.clone(), LOCAL_TTL, RData::SOA(soa))
    }

    /// The apex whose authority `q` falls under, if this zone answers for it: `Some(None)`
    /// for a single-label name of a zone without a domain (no SOA to give).
    fn owner(&self, q: &Name) -> Option<Option<Name>> {
        if let Some(apex) = &self.apex {
            if apex.zone_of(q) {
                return Some(Some(apex.clone()));
            }
        } else if q.num_labels() == 1 {
            return Some(None);
        }
        if self.reverse.contains_key(q) {
            return Some(reverse_owner(q));
        }
        let v4 = reverse_v4(q)?;
        let net = self.subnets.iter().find(|n| n.contains(v4))?;
        Some(Some(reverse_apex(v4, *net)))
    }

    /// The answer to `qname`/`qtype` if the name is this zone's; `None` to forward it.
    pub fn answer(&self, qname: &Name, qtype: RecordType) -> Option<LocalAnswer> {
        let apex = self.owner(qname)?;
        let ttl = LOCAL_TTL;
        let mut answers = Vec::new();
        let addrs = self.forward.get(qname);
        let ptrs = self.reverse.get(qname);
        for a in addrs.into_iter().flatten() {
            let rdata = match (a, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            answers.push(Record::from_rdata(qname.clone(), ttl, rdata));
        }
        if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            for p in ptrs.into_iter().flatten() {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::PTR(PTR(p.clone())),
                ));
            }
        }
        let at_apex = apex.as_ref().is_some_and(|a| a == qname);
        if at_apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            answers.push(self.soa(apex.as_ref().expect("apex")));
        }
        let exists = addrs.is_some() || ptrs.is_some() || at_apex || self.has_below(qname);
        let rcode = if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        let authority = match &apex {
            Some(a) if answers.is_empty() => vec![self.soa(a)],
            _ => Vec::new(),
        };
        Some(LocalAnswer {
            rcode,
            answers,
            authority,
        })
    }

    /// A name with names below it exists (an empty non-terminal, RFC 8020): NODATA, not
    /// NXDOMAIN.
    fn has_below(&self, q: &Name) -> bool {
        self.forward
            .keys()
            .chain(self.reverse.keys())
            .any(|n| n != q && q.zone_of(n))
    }
}

/// The address a `d.c.b.a.in-addr.arpa.` name stands for.
fn reverse_v4(q: &Name) -> Option<std::net::Ipv4Addr> {
    let s = q.to_ascii().to_ascii_lowercase();
    let rest = s.strip_suffix(".in-addr.arpa.")?;
    let parts: Vec<u8> = rest
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [d, c, b, a] = parts.as_slice() else {
        return None;
    };
    Some(std::net::Ipv4Addr::new(*a, *b, *c, *d))
}

/// The apex of a reverse name a record gave (the /24 or the /64 it sits in).
fn reverse_owner(q: &Name) -> Option<Name> {
    let labels = usize::from(q.num_labels());
    // in-addr.arpa: 4 address labels, keep 3; ip6.arpa: 32 nibbles, keep 16.
    let drop = if labels > 6 { 16 } else { 1 };
    let mut n = q.clone();
    for _ in 0..drop {
        n = n.base_name();
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> ZoneData {
        let z = Zone {
            network: "n".into(),
            interface: "br".into(),
            listen: vec!["10.0.0.1".parse().unwrap()],
            domain: Some("vm.test".into()),
            names: vec![
                ("web1.vm.test.".into(), "10.0.0.10".parse().unwrap()),
                ("api6.vm.test.".into(), "fd00::50".parse().unwrap()),
                ("a.b.vm.test.".into(), "10.0.0.11".parse().unwrap()),
            ],
            subnets: vec!["10.0.0.1/24".parse().unwrap()],
            forwarders: None,
            rate_limit: 10,
        };
        ZoneData::new(&z, 1)
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn answers_forward_reverse_and_negative() {
        let z = zone();
        let a = z.answer(&n("WEB1.vm.test."), RecordType::A).unwrap();
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        let nodata = z.answer(&n("web1.vm.test."), RecordType::AAAA).unwrap();
        assert_eq!(
            (nodata.rcode, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(nodata.authority.len(), 1, "SOA with NODATA");
        let nx = z.answer(&n("nope.vm.test."), RecordType::A).unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authority[0].record_type(), RecordType::SOA);
        let ent = z.answer(&n("b.vm.test."), RecordType::A).unwrap();
        assert_eq!(ent.rcode, ResponseCode::NoError, "empty non-terminal");
        let ptr = z
            .answer(&n("10.0.0.10.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(ptr.answers.len(), 1);
        let nx = z
            .answer(&n("99.0.0.10.in-addr.arpa."), RecordType::PTR)
            .unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authority[0].name, n("0.0.10.in-addr.arpa."));
        let v6: std::net::Ipv6Addr = "fd00::50".parse().unwrap();
        let ptr6 = z.answer(&Name::from(v6), RecordType::PTR).unwrap();
        assert_eq!(ptr6.answers.len(), 1);
        assert!(z.answer(&n("www.example.test."), RecordType::A).is_none());
        assert!(
            z.answer(&n("1.2.0.192.in-addr.arpa."), RecordType::PTR)
                .is_none()
        );
    }
}
