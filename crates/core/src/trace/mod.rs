//! `kvmnet trace`: would one packet from a VM's port get to its destination, and if not,
//! which rule stops it. A pure walk over the spec that follows kvmnet's ruleset in the order
//! the kernel evaluates it:
//!
//! 1. bridge prerouting: the source port's guard (`antispoof`);
//! 2. inet nat prerouting: port forwards (DNAT) to one of the host's addresses;
//! 3. inet prerouting filter: the source port's outbound firewall;
//! 4. the forwarding decision: to the host itself, onto the same bridge (where
//!    `isolate_ports` stops it at L2), into another network, or out of the host;
//! 5. inet forward: the destination port's inbound firewall, then what may leave the source
//!    network (`from-NET`) and enter the destination network (`to-NET`);
//! 6. inet nat postrouting: masquerade;
//! 7. or, for traffic to the host, inet input: what the network's guests may reach there
//!    (`host-NET`: DHCP, DNS and ping of the gateway, `host_access`).
//!
//! IPv6 packets take the same stages: the guard's `guard-ip6` (what a guarded port may send
//! from, neighbour discovery only about its own addresses, no RAs or DHCPv6 server
//! messages), the firewalls' IPv6 rules (a rule with an IPv4 `from`/`to` never matches
//! them), the networks' IPv6 prefixes, NAT66 and the host's IPv6 input rules.
//!
//! The packet is the first of a new connection (conntrack state `new`): replies and the rest
//! of an accepted connection always pass every chain. Rate and connection limits are taken as
//! not exceeded (a first packet is under them). The rule text each hop names is the rule as
//! kvmnet writes it, so it can be looked up in `nft list table`; a unit test checks that every
//! cited rule is in the generated ruleset.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::Serialize;

use crate::spec::{Loc, Port, Spec};

mod stages;
#[cfg(test)]
mod tests;
mod v6;
#[cfg(test)]
mod v6_tests;

pub use stages::walk;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("no VM '{0}' in the spec")]
    UnknownVm(String),
    #[error("VM '{vm}' has no port '{port}' (give its name or its index)")]
    UnknownPort { vm: String, port: String },
    #[error("VM '{0}' has no ports")]
    NoPorts(String),
    #[error(
        "{0} has no {1} in the spec, so what it sends from is not known (trace needs a pinned address, or one given with --source)"
    )]
    NoAddress(String, &'static str),
    #[error("'{0}' is not a destination: give VM[/PORT], an IPv4 or IPv6 address, or host")]
    BadDestination(String),
    #[error("{0} has no {1} in the spec: give its address instead, if it has one")]
    DestinationWithoutAddress(String, &'static str),
    #[error(
        "'{0}' is not a protocol: give icmp, tcp/PORT, udp/PORT, icmpv6 or icmpv6/TYPE (TYPE one of {types})",
        types = ICMP6_TYPES.join(", ")
    )]
    BadProtocol(String),
    #[error("host: network '{0}' has no {1} gateway address; give one of the host's addresses")]
    NoGateway(String, &'static str),
    #[error("the source {0} and the destination {1} are of two address families")]
    TwoFamilies(String, String),
    #[error("{0} is IPv6 only: give an IPv6 destination, or -6")]
    Icmp6OverIpv4(String),
}

/// The ICMPv6 types trace takes (`icmpv6/TYPE`), by their nftables names: echo and the
/// neighbour discovery messages the guard and the firewalls decide on.
pub const ICMP6_TYPES: [&str; 9] = [
    "echo-request",
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
    "router-renumbering",
    "mld-listener-report",
    "mld2-listener-report",
];

/// What the packet carries above IP. ICMP is an echo request (a ping); TCP a SYN; ICMPv6
/// one of [`ICMP6_TYPES`] (a neighbour discovery message is about its sender's own address:
/// its target is the source address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "proto", content = "port")]
pub enum L4 {
    Icmp,
    Tcp(u16),
    Udp(u16),
    Icmpv6(&'static str),
}

impl L4 {
    /// `icmp`, `tcp/22`, `udp/53`.
    pub fn parse(s: &str) -> Result<L4, TraceError> {
        let bad = || TraceError::BadProtocol(s.to_string());
        if s == "icmpv6" {
            return Ok(L4::Icmpv6("echo-request"));
        }
        if let Some(t) = s.strip_prefix("icmpv6/") {
            return ICMP6_TYPES
                .into_iter()
                .find(|x| *x == t)
                .map(L4::Icmpv6)
                .ok_or_else(bad);
        }
        let (word, port) = match s.split_once('/') {
            Some((w, p)) => (
                w,
                Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            ),
            None => (s, None),
        };
        match (word, port) {
            ("icmp", None) => Ok(L4::Icmp),
            ("tcp", Some(p)) => Ok(L4::Tcp(p)),
            ("udp", Some(p)) => Ok(L4::Udp(p)),
            _ => Err(bad()),
        }
    }

    pub fn dport(&self) -> Option<u16> {
        match self {
            L4::Icmp | L4::Icmpv6(_) => None,
            L4::Tcp(p) | L4::Udp(p) => Some(*p),
        }
    }

    fn with_dport(self, port: u16) -> L4 {
        match self {
            L4::Icmp | L4::Icmpv6(_) => self,
            L4::Tcp(_) => L4::Tcp(port),
            L4::Udp(_) => L4::Udp(port),
        }
    }

    /// The same packet in `v6`'s family: a ping over IPv6 is an ICMPv6 echo request.
    fn for_family(self, v6: bool) -> L4 {
        match self {
            L4::Icmp if v6 => L4::Icmpv6("echo-request"),
            l4 => l4,
        }
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L4::Icmp => write!(f, "icmp echo-request"),
            L4::Tcp(p) => write!(f, "tcp/{p}"),
            L4::Udp(p) => write!(f, "udp/{p}"),
            L4::Icmpv6(t) => write!(f, "icmpv6 {t}"),
        }
    }
}

/// Where the packet is addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest<'a> {
    /// A VM's port, at its address of the packet's family.
    Port(&'a Port, IpAddr),
    /// One of the host's own addresses (a gateway).
    Host(IpAddr),
    /// Any other address: outside the host, or in a network's subnet with no port there.
    Addr(IpAddr),
}

impl Dest<'_> {
    pub fn addr(&self) -> IpAddr {
        match self {
            Dest::Port(_, a) | Dest::Host(a) | Dest::Addr(a) => *a,
        }
    }
}

/// One packet to trace: the first of a new connection.
#[derive(Clone, Debug)]
pub struct Packet<'a> {
    pub src: &'a Port,
    /// The source address it carries: the port's own, or one given (`--source`) to see
    /// what a guest sending from another address meets.
    pub saddr: IpAddr,
    pub dest: Dest<'a>,
    pub l4: L4,
}

impl Packet<'_> {
    pub fn v6(&self) -> bool {
        self.saddr.is_ipv6()
    }
}

/// How the packet is chosen beyond source, destination and protocol.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// IPv6 where the destination (a VM or `host`) leaves the family open.
    pub ipv6: bool,
    /// The source address the packet carries, instead of the port's own.
    pub source: Option<IpAddr>,
}

/// A port's address in one family: its `ipv4`; its `ipv6`, else the SLAAC address of its
/// MAC in its network's prefix (what the guest forms by itself).
pub fn port_addr(spec: &Spec, p: &Port, v6: bool) -> Option<IpAddr> {
    if !v6 {
        return p.ipv4.map(|a| IpAddr::V4(a.addr));
    }
    let slaac = || {
        let net = spec.networks.get(&p.network)?;
        let c = net.slaac_prefixes().next()?;
        Some(p.mac.slaac(c.addr))
    };
    p.ipv6.or_else(slaac).map(IpAddr::V6)
}

fn family(v6: bool) -> &'static str {
    if v6 { "ipv6" } else { "ipv4" }
}

/// The packet `kvmnet trace FROM TO PROTO` means. Its family: that of `--source` or of an
/// address given as destination, else IPv6 with `-6`, for `icmpv6`, or from a port with
/// no `ipv4`; IPv4 otherwise.
pub fn packet<'a>(
    spec: &'a Spec,
    from: &str,
    to: &str,
    proto: &str,
    opts: Options,
) -> Result<Packet<'a>, TraceError> {
    let src = source(spec, from)?;
    let l4 = L4::parse(proto)?;
    let literal = to.parse::<IpAddr>().ok();
    if let (Some(s), Some(d)) = (opts.source, literal)
        && s.is_ipv6() != d.is_ipv6()
    {
        return Err(TraceError::TwoFamilies(s.to_string(), d.to_string()));
    }
    let v6 = opts
        .source
        .or(literal)
        .map(|a| a.is_ipv6())
        .unwrap_or(opts.ipv6 || matches!(l4, L4::Icmpv6(_)) || src.ipv4.is_none());
    if !v6 && matches!(l4, L4::Icmpv6(_)) {
        return Err(TraceError::Icmp6OverIpv4(l4.to_string()));
    }
    let saddr = match opts.source {
        Some(a) => a,
        None => port_addr(spec, src, v6)
            .ok_or_else(|| TraceError::NoAddress(port_label(src), family(v6)))?,
    };
    let dest = destination(spec, src, to, v6)?;
    Ok(Packet {
        src,
        saddr,
        dest,
        l4: l4.for_family(v6),
    })
}

/// `VM` (its first port) or `VM/PORT` (the port's name or index).
pub fn source<'a>(spec: &'a Spec, arg: &str) -> Result<&'a Port, TraceError> {
    let (vm, port) = match arg.split_once('/') {
        Some((v, p)) => (v, Some(p)),
        None => (arg, None),
    };
    let v = spec
        .vms
        .get(vm)
        .ok_or_else(|| TraceError::UnknownVm(vm.to_string()))?;
    let p = match port {
        None => v
            .ports
            .first()
            .ok_or_else(|| TraceError::NoPorts(vm.to_string()))?,
        Some(p) => v
            .ports
            .iter()
            .find(|x| x.name == p || x.index.to_string() == p)
            .ok_or_else(|| TraceError::UnknownPort {
                vm: vm.to_string(),
                port: p.to_string(),
            })?,
    };
    Ok(p)
}

/// `VM[/PORT]`, an address, or `host` (the gateway of the source's network), in the family
/// `v6` says. A VM without `/PORT` is reached at its port on the source's network if it
/// has an address there, else at its first port with an address.
pub fn destination<'a>(
    spec: &'a Spec,
    from: &Port,
    arg: &str,
    v6: bool,
) -> Result<Dest<'a>, TraceError> {
    if arg == "host" {
        let net = spec.networks.get(&from.network);
        let gw = net.and_then(|n| match v6 {
            false => n.ipv4.map(|g| IpAddr::V4(g.addr)),
            true => n.ipv6.map(|g| IpAddr::V6(g.gateway.addr)),
        });
        return gw
            .map(Dest::Host)
            .ok_or_else(|| TraceError::NoGateway(from.network.clone(), family(v6)));
    }
    if let Ok(ip) = arg.parse::<IpAddr>() {
        return Ok(by_address(spec, ip));
    }
    let looks_like_vm = arg
        .split('/')
        .next()
        .is_some_and(|v| spec.vms.contains_key(v));
    if !looks_like_vm {
        return Err(TraceError::BadDestination(arg.to_string()));
    }
    let (p, a) = match arg.split_once('/') {
        Some(_) => {
            let p = source(spec, arg)?;
            let a = port_addr(spec, p, v6)
                .ok_or_else(|| TraceError::DestinationWithoutAddress(port_label(p), family(v6)))?;
            (p, a)
        }
        None => {
            let vm = &spec.vms[arg];
            let with_addr = || {
                vm.ports
                    .iter()
                    .filter_map(|p| port_addr(spec, p, v6).map(|a| (p, a)))
            };
            with_addr()
                .find(|(p, _)| p.network == from.network)
                .or_else(|| with_addr().next())
                .ok_or_else(|| {
                    TraceError::DestinationWithoutAddress(format!("VM '{arg}'"), family(v6))
                })?
        }
    };
    Ok(Dest::Port(p, a))
}

/// What an address is to the spec: a port's (its `ipv4`, its `ipv6` or its SLAAC address),
/// a gateway's, or neither.
pub fn by_address(spec: &Spec, ip: IpAddr) -> Dest<'_> {
    if let Some(p) = spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .find(|p| port_addr(spec, p, ip.is_ipv6()) == Some(ip))
    {
        return Dest::Port(p, ip);
    }
    let gateway = |n: &crate::spec::Network| match ip {
        IpAddr::V4(a) => n.ipv4.is_some_and(|g| g.addr == a),
        IpAddr::V6(a) => n.ipv6.is_some_and(|g| g.gateway.addr == a),
    };
    if spec.networks.values().any(gateway) {
        return Dest::Host(ip);
    }
    Dest::Addr(ip)
}

/// Whether `a` is in the prefix `c`.
pub(crate) fn in_prefix6(c: crate::types::Ipv6Cidr, a: Ipv6Addr) -> bool {
    crate::types::Ipv6Cidr {
        addr: a,
        prefix: c.prefix,
    }
    .network()
        == c.network()
}

/// `web1/0 (w-web1)`.
pub fn port_label(p: &Port) -> String {
    format!("{}/{} ({})", p.vm, p.index, p.name)
}

/// A hop's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let through by this stage; later stages still look at it.
    Accept,
    Drop,
    Reject,
    /// Changed (translated) or not decided here.
    Continue,
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
            Verdict::Continue => "continue",
        }
    }

    pub fn stops(&self) -> bool {
        matches!(self, Verdict::Drop | Verdict::Reject)
    }
}

/// Where a packet is looked at, in the order the kernel does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The source port's guard, at the bridge (bridge prerouting).
    Guard,
    /// Port forwards (inet nat prerouting) and masquerade (inet nat postrouting).
    Nat,
    /// The source port's outbound firewall (inet prerouting).
    FirewallOut,
    /// Where the host sends it: the host, the same bridge, another network, outside.
    Routing,
    /// Bridge port isolation (`isolate_ports`): an L2 decision, not a rule.
    IsolatePorts,
    /// The destination port's inbound firewall (inet forward).
    FirewallIn,
    /// What may leave the source network (`from-NET`, inet forward).
    Leaving,
    /// What may enter the destination network (`to-NET`, inet forward).
    Entering,
    /// What guests may reach on the host (`host-NET`, inet input).
    HostAccess,
    /// Where it ends up.
    Arrive,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Guard => "guard",
            Stage::Nat => "nat",
            Stage::FirewallOut => "firewall-out",
            Stage::Routing => "routing",
            Stage::IsolatePorts => "isolate-ports",
            Stage::FirewallIn => "firewall-in",
            Stage::Leaving => "leaving",
            Stage::Entering => "entering",
            Stage::HostAccess => "host-access",
            Stage::Arrive => "arrive",
        }
    }
}

/// One step of the walk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub stage: Stage,
    pub verdict: Verdict,
    /// What decided it, in words.
    pub rule: String,
    /// The nftables chain (`inet from-nat`, `bridge guard-ip4`) and the rule in it as kvmnet
    /// writes it, when an nft rule (or a chain's end) decided it.
    pub chain: Option<String>,
    pub nft: Option<String>,
    /// The spec field the rule came from (`vms.a.ports[0].firewall.inbound.rules[1]`) and
    /// where it is written.
    pub field: Option<String>,
    #[serde(skip)]
    pub loc: Option<Loc>,
}

/// The walk's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub hops: Vec<Hop>,
}

impl Trace {
    /// `accept` when the packet gets there, else the verdict of the hop that stopped it.
    pub fn verdict(&self) -> Verdict {
        self.stopped_by().map_or(Verdict::Accept, |h| h.verdict)
    }

    pub fn stopped_by(&self) -> Option<&Hop> {
        self.hops.iter().find(|h| h.verdict.stops())
    }

    /// What kvmnet's nftables rules alone decide: the stopping hop's verdict when an nft
    /// rule stopped it, else accept (it was stopped, if at all, outside nftables: at L2 or
    /// for want of a route).
    pub fn nft_verdict(&self) -> Verdict {
        match self.stopped_by() {
            Some(h) if h.chain.is_some() => h.verdict,
            _ => Verdict::Accept,
        }
    }
}
