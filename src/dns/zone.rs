//! One network's authoritative names: forward (`VM.DOMAIN`, records) and reverse
//! (in-addr.arpa for the network's subnet, ip6.arpa for the IPv6 addresses it names), and
//! the answers to questions about them, with the names VM ports' leases give (see "Leased
//! names" in the module above). Pure: time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::Zone;
use crate::spec::{Ipv4Cidr, Ipv6Cidr, Mac};

/// TTL of local answers: VMs come and go with the spec, and guests should notice soon.
pub const LOCAL_TTL: u32 = 60;

/// A bound lease as the engine keeps it: its expiry on the engine's clock (`None`:
/// infinite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAt {
    pub network: String,
    pub mac: Mac,
    pub ip: IpAddr,
    pub until: Option<Instant>,
}

/// A leased name's value and when it stops being true.
type Until<T> = Vec<(T, Option<Instant>)>;

fn live(until: Option<Instant>, now: Instant) -> bool {
    until.is_none_or(|u| u > now)
}

/// The leased values still live at `now`, with their TTLs.
fn live_with_ttl<T: Clone>(
    v: Option<&Until<T>>,
    now: Instant,
) -> impl Iterator<Item = (T, u32)> + '_ {
    v.into_iter()
        .flatten()
        .filter(move |(_, u)| live(*u, now))
        .map(move |(x, u)| (x.clone(), lease_ttl(*u, now)))
}

/// The TTL of a leased name: what is left of the lease, at most [`LOCAL_TTL`], at least
/// 1 (0 would forbid caching the answer even for the query that asked).
fn lease_ttl(until: Option<Instant>, now: Instant) -> u32 {
    until.map_or(LOCAL_TTL, |u| {
        let left = u.saturating_duration_since(now).as_secs();
        u32::try_from(left).unwrap_or(LOCAL_TTL).clamp(1, LOCAL_TTL)
    })
}

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
    /// Names and reverse names from leases; never one the spec already gives.
    leased: HashMap<Name, Until<IpAddr>>,
    leased_reverse: HashMap<Name, Until<Name>>,
    /// The IPv4 subnets whose reverse names are this zone's (every address in them is
    /// answered here, NXDOMAIN when no one has it, so private addresses never leak out).
    subnets: Vec<Ipv4Cidr>,
    subnets6: Vec<Ipv6Cidr>,
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
    /// `leases`: every bound lease the DHCP servers hold (those of other networks and of
    /// MACs that are not `z`'s VM ports are passed over).
    pub fn new(z: &Zone, serial: u32, leases: &[LeaseAt]) -> ZoneData {
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
        let mut data = ZoneData {
            apex: z.domain.as_deref().and_then(|d| name(&format!("{d}."))),
            forward,
            reverse,
            leased: HashMap::new(),
            leased_reverse: HashMap::new(),
            subnets: z.subnets.clone(),
            subnets6: z.subnets6.clone(),
            serial,
        };
        data.add_leases(z, leases);
        data
    }

    /// The names `leases` give `z`'s VM ports: only by the spec's MAC of a port on this
    /// network, only for a family the VM declares no address of, never an address the
    /// spec names.
    fn add_leases(&mut self, z: &Zone, leases: &[LeaseAt]) {
        for l in leases.iter().filter(|l| l.network == z.network) {
            let Some(p) = z.lease_ports.iter().find(|p| p.mac == l.mac) else {
                continue;
            };
            let declared = match l.ip {
                IpAddr::V4(_) => p.v4_declared,
                IpAddr::V6(_) => p.v6_declared,
            };
            let rev = Name::from(l.ip);
            if declared || self.reverse.contains_key(&rev) {
                continue;
            }
            let Some(n) = name(&p.name) else { continue };
            let addrs = self.leased.entry(n.clone()).or_default();
            if !addrs.iter().any(|(a, _)| *a == l.ip) {
                addrs.push((l.ip, l.until));
            }
            let r = self.leased_reverse.entry(rev).or_default();
            if !r.iter().any(|(x, _)| *x == n) {
                r.push((n, l.until));
            }
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
        if self.reverse.contains_key(q) || self.leased_reverse.contains_key(q) {
            return Some(reverse_owner(q));
        }
        if let Some(v6) = reverse_v6(q) {
            let net = self.subnets6.iter().find(|n| in_prefix(**n, v6))?;
            return Some(Some(reverse_apex6(v6, *net)));
        }
        let v4 = reverse_v4(q)?;
        let net = self.subnets.iter().find(|n| n.contains(v4))?;
        Some(Some(reverse_apex(v4, *net)))
    }

    /// The answer to `qname`/`qtype` if the name is this zone's; `None` to forward it.
    pub fn answer(&self, qname: &Name, qtype: RecordType, now: Instant) -> Option<LocalAnswer> {
        let apex = self.owner(qname)?;
        let mut answers = Vec::new();
        let addrs: Vec<(IpAddr, u32)> = (self.forward.get(qname).into_iter().flatten())
            .map(|a| (*a, LOCAL_TTL))
            .chain(live_with_ttl(self.leased.get(qname), now))
            .collect();
        let ptrs: Vec<(Name, u32)> = (self.reverse.get(qname).into_iter().flatten())
            .map(|n| (n.clone(), LOCAL_TTL))
            .chain(live_with_ttl(self.leased_reverse.get(qname), now))
            .collect();
        for (a, ttl) in &addrs {
            let rdata = match (a, qtype) {
                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            answers.push(Record::from_rdata(qname.clone(), *ttl, rdata));
        }
        if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            for (p, ttl) in &ptrs {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    *ttl,
                    RData::PTR(PTR(p.clone())),
                ));
            }
        }
        let at_apex = apex.as_ref().is_some_and(|a| a == qname);
        if at_apex && matches!(qtype, RecordType::SOA | RecordType::ANY) {
            answers.push(self.soa(apex.as_ref().expect("apex")));
        }
        let exists = !addrs.is_empty() || !ptrs.is_empty() || at_apex || self.has_below(qname);
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
            .chain(self.leased.keys())
            .chain(self.leased_reverse.keys())
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

/// The address a 32-nibble `...ip6.arpa.` name stands for.
fn reverse_v6(q: &Name) -> Option<std::net::Ipv6Addr> {
    let s = q.to_ascii().to_ascii_lowercase();
    let rest = s.strip_suffix(".ip6.arpa.")?;
    let nibbles: Vec<u32> = rest
        .split('.')
        .map(|p| (p.len() == 1).then(|| p.chars().next()?.to_digit(16))?)
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let bits = nibbles
        .iter()
        .rev()
        .fold(0u128, |acc, n| (acc << 4) | u128::from(*n));
    Some(std::net::Ipv6Addr::from(bits))
}

fn in_prefix(net: Ipv6Cidr, a: std::net::Ipv6Addr) -> bool {
    Ipv6Cidr {
        addr: a,
        prefix: net.prefix,
    }
    .network()
        == net.network()
}

/// The reverse zone of `a` in `net`: its nibbles down to the prefix (rounded up, so the
/// zone stays inside the prefix).
fn reverse_apex6(a: std::net::Ipv6Addr, net: Ipv6Cidr) -> Name {
    let mut n = Name::from(a);
    let drop = 32 - usize::from(net.prefix.div_ceil(4).clamp(1, 31));
    for _ in 0..drop {
        n = n.base_name();
    }
    n
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
            subnets6: vec!["fd00::/64".parse().unwrap()],
            forwarders: None,
            rate_limit: 10,
            lease_ports: Vec::new(),
        };
        ZoneData::new(&z, 1, &[])
    }

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    #[test]
    fn answers_forward_reverse_and_negative() {
        let z = zone();
        let now = Instant::now();
        let a = z.answer(&n("WEB1.vm.test."), RecordType::A, now).unwrap();
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 1);
        let nodata = z
            .answer(&n("web1.vm.test."), RecordType::AAAA, now)
            .unwrap();
        assert_eq!(
            (nodata.rcode, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(nodata.authority.len(), 1, "SOA with NODATA");
        let nx = z.answer(&n("nope.vm.test."), RecordType::A, now).unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authority[0].record_type(), RecordType::SOA);
        let ent = z.answer(&n("b.vm.test."), RecordType::A, now).unwrap();
        assert_eq!(ent.rcode, ResponseCode::NoError, "empty non-terminal");
        let ptr = z
            .answer(&n("10.0.0.10.in-addr.arpa."), RecordType::PTR, now)
            .unwrap();
        assert_eq!(ptr.answers.len(), 1);
        let nx = z
            .answer(&n("99.0.0.10.in-addr.arpa."), RecordType::PTR, now)
            .unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert_eq!(nx.authority[0].name, n("0.0.10.in-addr.arpa."));
        let v6: std::net::Ipv6Addr = "fd00::50".parse().unwrap();
        let ptr6 = z.answer(&Name::from(v6), RecordType::PTR, now).unwrap();
        assert_eq!(ptr6.answers.len(), 1);
        // Unknown addresses of the IPv6 prefix are NXDOMAIN under the prefix's reverse
        // zone; others are not this zone's.
        let v6: std::net::Ipv6Addr = "fd00::99".parse().unwrap();
        let nx6 = z.answer(&Name::from(v6), RecordType::PTR, now).unwrap();
        assert_eq!(nx6.rcode, ResponseCode::NXDomain);
        assert_eq!(
            nx6.authority[0].name,
            n("0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.")
        );
        let out6: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert!(z.answer(&Name::from(out6), RecordType::PTR, now).is_none());
        assert!(z.answer(&n("1.ip6.arpa."), RecordType::PTR, now).is_none());
        assert!(
            z.answer(&n("www.example.test."), RecordType::A, now)
                .is_none()
        );
        assert!(
            z.answer(&n("1.2.0.192.in-addr.arpa."), RecordType::PTR, now)
                .is_none()
        );
    }

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    /// web1 declares 10.0.0.10 and no IPv6; pool1 declares nothing; both have one port.
    fn lease_zone(leases: &[LeaseAt]) -> ZoneData {
        let port = |m, name: &str, v4| super::super::LeasePort {
            mac: mac(m),
            name: name.into(),
            v4_declared: v4,
            v6_declared: false,
        };
        let z = Zone {
            network: "n".into(),
            interface: "br".into(),
            listen: vec!["10.0.0.1".parse().unwrap()],
            domain: Some("vm.test".into()),
            names: vec![("web1.vm.test.".into(), "10.0.0.10".parse().unwrap())],
            subnets: vec!["10.0.0.1/24".parse().unwrap()],
            subnets6: vec!["fd00::/64".parse().unwrap()],
            forwarders: None,
            rate_limit: 10,
            lease_ports: vec![
                port(1, "web1.vm.test.", true),
                port(2, "pool1.vm.test.", false),
            ],
        };
        ZoneData::new(&z, 1, leases)
    }

    fn lease(m: u8, ip: &str, until: Option<Instant>) -> LeaseAt {
        LeaseAt {
            network: "n".into(),
            mac: mac(m),
            ip: ip.parse().unwrap(),
            until,
        }
    }

    fn rdata(a: &LocalAnswer) -> Vec<(String, u32)> {
        a.answers
            .iter()
            .map(|r| (r.data.to_string(), r.ttl))
            .collect()
    }

    /// A pool lease names its port's VM (A, AAAA, PTR) with the lease's remaining time as
    /// TTL, capped; it stops at its expiry; declared addresses win; a MAC that is no VM
    /// port of this network, or a lease of another network, names nothing.
    #[test]
    fn leases_name_their_vm_until_they_end() {
        let now = Instant::now();
        let soon = Some(now + std::time::Duration::from_secs(20));
        let later = Some(now + std::time::Duration::from_secs(3600));
        let mut other_net = lease(2, "10.0.0.102", later);
        other_net.network = "m".into();
        let z = lease_zone(&[
            lease(2, "10.0.0.101", soon),
            lease(2, "fd00::1001", later),
            lease(1, "10.0.0.150", later),
            lease(1, "fd00::1010", None),
            lease(9, "10.0.0.199", later),
            other_net,
        ]);
        let a = z.answer(&n("pool1.vm.test."), RecordType::A, now).unwrap();
        assert_eq!(rdata(&a), [("10.0.0.101".to_string(), 20)]);
        let aaaa = z
            .answer(&n("pool1.vm.test."), RecordType::AAAA, now)
            .unwrap();
        assert_eq!(rdata(&aaaa), [("fd00::1001".to_string(), LOCAL_TTL)]);
        let ptr = z
            .answer(&n("101.0.0.10.in-addr.arpa."), RecordType::PTR, now)
            .unwrap();
        assert_eq!(rdata(&ptr), [("pool1.vm.test.".to_string(), 20)]);
        let v6: std::net::Ipv6Addr = "fd00::1001".parse().unwrap();
        let ptr6 = z.answer(&Name::from(v6), RecordType::PTR, now).unwrap();
        assert_eq!(rdata(&ptr6), [("pool1.vm.test.".to_string(), LOCAL_TTL)]);
        // web1's declared IPv4 wins over its lease; its IPv6 lease (none declared) counts.
        let web = z.answer(&n("web1.vm.test."), RecordType::A, now).unwrap();
        assert_eq!(rdata(&web), [("10.0.0.10".to_string(), LOCAL_TTL)]);
        let nx = z
            .answer(&n("150.0.0.10.in-addr.arpa."), RecordType::PTR, now)
            .unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        let web6 = z
            .answer(&n("web1.vm.test."), RecordType::AAAA, now)
            .unwrap();
        assert_eq!(rdata(&web6), [("fd00::1010".to_string(), LOCAL_TTL)]);
        // A MAC that is no VM's port names nothing.
        let stranger = z
            .answer(&n("199.0.0.10.in-addr.arpa."), RecordType::PTR, now)
            .unwrap();
        assert_eq!(stranger.rcode, ResponseCode::NXDomain);
        // Past the lease's end, the name and its reverse are gone (NXDOMAIN for A: the
        // name has no other address; AAAA still there).
        let after = now + std::time::Duration::from_secs(21);
        let a = z
            .answer(&n("pool1.vm.test."), RecordType::A, after)
            .unwrap();
        assert_eq!((a.rcode, a.answers.len()), (ResponseCode::NoError, 0));
        let ptr = z
            .answer(&n("101.0.0.10.in-addr.arpa."), RecordType::PTR, after)
            .unwrap();
        assert_eq!(ptr.rcode, ResponseCode::NXDomain);
        let gone6 = lease_zone(&[lease(2, "fd00::1001", soon)]);
        let v6: std::net::Ipv6Addr = "fd00::1001".parse().unwrap();
        let ptr6 = gone6
            .answer(&Name::from(v6), RecordType::PTR, after)
            .unwrap();
        assert_eq!(ptr6.rcode, ResponseCode::NXDomain);
        let only_v4 = lease_zone(&[lease(2, "10.0.0.101", soon)]);
        let gone = only_v4
            .answer(&n("pool1.vm.test."), RecordType::A, after)
            .unwrap();
        assert_eq!(gone.rcode, ResponseCode::NXDomain);
    }
}
