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
//! The packet is the first of a new connection (conntrack state `new`): replies and the rest
//! of an accepted connection always pass every chain. Rate and connection limits are taken as
//! not exceeded (a first packet is under them). The rule text each hop names is the rule as
//! kvmnet writes it, so it can be looked up in `nft list table`; a unit test checks that every
//! cited rule is in the generated ruleset.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::spec::{Loc, Port, Spec};

mod stages;
#[cfg(test)]
mod tests;

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
        "{0} has no ipv4 in the spec, so what it sends from is not known (trace needs a pinned address)"
    )]
    NoAddress(String),
    #[error("'{0}' is not a destination: give VM[/PORT], an IPv4 address, or host")]
    BadDestination(String),
    #[error("{0} has no ipv4 in the spec: give its address instead, if it has one")]
    DestinationWithoutAddress(String),
    #[error("'{0}' is not a protocol: give icmp, tcp/PORT or udp/PORT")]
    BadProtocol(String),
    #[error("host: network '{0}' has no gateway address; give one of the host's addresses")]
    NoGateway(String),
}

/// What the packet carries above IPv4. ICMP is an echo request (a ping); TCP a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "proto", content = "port")]
pub enum L4 {
    Icmp,
    Tcp(u16),
    Udp(u16),
}

impl L4 {
    /// `icmp`, `tcp/22`, `udp/53`.
    pub fn parse(s: &str) -> Result<L4, TraceError> {
        let bad = || TraceError::BadProtocol(s.to_string());
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
            L4::Icmp => None,
            L4::Tcp(p) | L4::Udp(p) => Some(*p),
        }
    }

    fn with_dport(self, port: u16) -> L4 {
        match self {
            L4::Icmp => L4::Icmp,
            L4::Tcp(_) => L4::Tcp(port),
            L4::Udp(_) => L4::Udp(port),
        }
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L4::Icmp => write!(f, "icmp echo-request"),
            L4::Tcp(p) => write!(f, "tcp/{p}"),
            L4::Udp(p) => write!(f, "udp/{p}"),
        }
    }
}

/// Where the packet is addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest<'a> {
    /// A VM's port (its `ipv4`).
    Port(&'a Port),
    /// One of the host's own addresses (a gateway).
    Host(Ipv4Addr),
    /// Any other address: outside the host, or in a network's subnet with no port there.
    Addr(Ipv4Addr),
}

impl Dest<'_> {
    pub fn addr(&self) -> Ipv4Addr {
        match self {
            Dest::Port(p) => p.ipv4.map_or(Ipv4Addr::UNSPECIFIED, |a| a.addr),
            Dest::Host(a) | Dest::Addr(a) => *a,
        }
    }
}

/// One packet to trace: the first of a new connection.
#[derive(Clone, Debug)]
pub struct Packet<'a> {
    pub src: &'a Port,
    pub dest: Dest<'a>,
    pub l4: L4,
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
    if p.ipv4.is_none() {
        return Err(TraceError::NoAddress(port_label(p)));
    }
    Ok(p)
}

/// `VM[/PORT]`, an IPv4 address, or `host` (the gateway of the source's network). A VM
/// without `/PORT` is reached at its port on the source's network if it has one, else at its
/// first port with an address.
pub fn destination<'a>(spec: &'a Spec, from: &Port, arg: &str) -> Result<Dest<'a>, TraceError> {
    if arg == "host" {
        let net = spec.networks.get(&from.network);
        return net
            .and_then(|n| n.ipv4)
            .map(|g| Dest::Host(g.addr))
            .ok_or_else(|| TraceError::NoGateway(from.network.clone()));
    }
    if let Ok(ip) = arg.parse::<Ipv4Addr>() {
        return Ok(by_address(spec, ip));
    }
    let looks_like_vm = arg
        .split('/')
        .next()
        .is_some_and(|v| spec.vms.contains_key(v));
    if !looks_like_vm {
        return Err(TraceError::BadDestination(arg.to_string()));
    }
    let p = match arg.split_once('/') {
        Some(_) => match source(spec, arg) {
            Err(TraceError::NoAddress(p)) => {
                return Err(TraceError::DestinationWithoutAddress(p));
            }
            r => r?,
        },
        None => {
            let vm = &spec.vms[arg];
            let with_addr = || vm.ports.iter().filter(|p| p.ipv4.is_some());
            with_addr()
                .find(|p| p.network == from.network)
                .or_else(|| with_addr().next())
                .ok_or_else(|| TraceError::DestinationWithoutAddress(format!("VM '{arg}'")))?
        }
    };
    Ok(Dest::Port(p))
}

/// What an address is to the spec: a port's, a gateway's, or neither.
pub fn by_address(spec: &Spec, ip: Ipv4Addr) -> Dest<'_> {
    if let Some(p) = spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .find(|p| p.ipv4.is_some_and(|a| a.addr == ip))
    {
        return Dest::Port(p);
    }
    if spec
        .networks
        .values()
        .any(|n| n.ipv4.is_some_and(|g| g.addr == ip))
    {
        return Dest::Host(ip);
    }
    Dest::Addr(ip)
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
