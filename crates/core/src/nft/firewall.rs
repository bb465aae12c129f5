//! Per-port stateful firewalls (`firewall: { inbound, outbound }`), for IPv4 and IPv6 alike.
//!
//! A port is found by its interface, not by an address, so a port without `ipv4` has a
//! firewall too. The bridge knows the interface; the stateful checks need conntrack, which
//! runs in the inet hooks. A mark carries the port across: every firewalled port has a mark
//! of its own (`0x4b` in the top byte, the port's id below), in both directions.
//!
//! - from a port: the bridge's prerouting hook marks the frame with the port's mark
//!   (`out_mark`, by input interface); inet prerouting (after conntrack and DNAT, for routed
//!   traffic and, through br_netfilter, for bridged traffic) jumps through `out_policy`, which
//!   sends each port's mark to the port's outbound chain, and clears the mark. Everything a
//!   VM sends, to the host included, passes its outbound chain.
//! - to a port over the bridge: the bridge's forward hook marks the frame with the output
//!   port's mark (`in_mark`, by output interface) before br_netfilter's inet forward hook
//!   (bridge priority -1), which jumps through `in_policy`.
//! - to a port through the host's routing (from another network, from outside, from the
//!   host itself): the output port is chosen by the bridge only after the inet hooks, so the
//!   port is found by its destination address (`in_policy4`, `in_policy6`: its `ipv4`, the
//!   EUI-64 link-local address of its MAC and its SLAAC addresses). The guard makes those
//!   addresses the port's own. The packet's mark is left alone (it may be the host's own).
//!
//! kvmnet clears its marks once used, and the bridge's postrouting hook clears any left (a
//! host without br_netfilter never reaches the inet hooks with bridged traffic). Without
//! br_netfilter, traffic between two ports of one bridge is not firewalled (README says so).
//!
//! Ports with the same rules in one direction share one chain (`fw-in-HASH`); a direction
//! whose rules keep per-port state (log prefix, connection or rate limit) gets the port's own
//! chain (`in-PORT`). Adding a port of a known policy adds map elements only.
//!
//! Every drop and reject of a firewall chain goes to its direction's drop or reject chain
//! (`fw-in-drop`, `fw-out-reject`, ...), where the port is looked up in a counting set (each
//! element with a counter) before the packet is dropped or rejected: by its mark
//! (`fw_in_drops`), or for traffic routed to it, which carries no mark of ours, by its
//! destination address (`fw_in_drops4`, `fw_in_drops6`). That counts drops and rejects per
//! port, shared chain or not, for one hash lookup per *dropped* packet; packets let through
//! never reach those chains. They end in a plain drop or reject, so a packet whose port is
//! in no counting set is still dropped, only not counted (as the guard's drop chains do).

use std::collections::BTreeMap;

use super::{BRIDGE_FAMILY, Base, FAMILY, Parts, Set, concat, ipv4_text};
use crate::spec::naming::fnv1a;
use crate::spec::{
    FirewallDirection, FirewallRule, Port, PortKind, RuleAction, RuleProto, Spec,
    icmpv6_counterpart,
};

/// The top byte of every mark kvmnet sets.
pub(crate) const MARK_TAG: u32 = 0x4b00_0000;
const MARK_MASK: &str = "0xff000000";

/// IPv6 cannot work without neighbour discovery (its ARP) and multicast listener reports:
/// a firewall lets them through whatever its policy, as an IPv4 firewall never sees ARP.
/// What a guest may say in them is the guard's business.
pub(crate) const IPV6_PLUMBING: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, mld-listener-query, mld-listener-report, mld-listener-reduction, mld2-listener-report } return";

/// The named set a rule's list of single ports lives in, with its elements: one set for every
/// rule with that list (on any port), where an anonymous set would be one per rule. That
/// keeps a 1,000-port table to a handful of sets, which matters because `nft` reads every
/// set of the ruleset before it changes anything. Lists with ranges keep anonymous sets.
fn port_set(proto: &str, ports: &[(u16, u16)]) -> Option<(String, Vec<String>)> {
    if ports.len() < 2 || ports.iter().any(|(a, b)| a != b) {
        return None;
    }
    let mut list: Vec<u16> = ports.iter().map(|(a, _)| *a).collect();
    list.sort_unstable();
    list.dedup();
    let elements: Vec<String> = list.iter().map(u16::to_string).collect();
    let name = format!(
        "{proto}_ports_{:016x}",
        fnv1a(elements.join(",").as_bytes())
    );
    Some((name, elements))
}

fn l4_word(p: RuleProto) -> Option<&'static str> {
    match p {
        RuleProto::Tcp => Some("tcp"),
        RuleProto::Udp => Some("udp"),
        RuleProto::Icmp | RuleProto::Any => None,
    }
}

/// Port ranges as nft and the spec write them: `22`, `8000-8100`.
pub(crate) fn port_ranges(ports: &[(u16, u16)]) -> Vec<String> {
    ports
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect()
}

/// The match parts of one rule, once per family it covers: a rule with a `from`/`to` covers
/// that address's family only; an ICMP rule is written for ICMP and for ICMPv6 (with the
/// types that have an ICMPv6 counterpart); anything else is one match for both families.
pub(crate) fn rule_matches(r: &FirewallRule) -> Vec<String> {
    let mut m = Vec::new();
    if let Some(f) = r.from {
        m.push(format!("{} saddr {f}", f.nft_header()));
    }
    if let Some(t) = r.to {
        m.push(format!("{} daddr {t}", t.nft_header()));
    }
    // The validator refuses a rule whose from and to are of two families.
    let family_v6 = r.from.or(r.to).map(|c| c.is_v6());
    if let Some(p) = l4_word(r.proto) {
        if r.ports.is_empty() {
            m.push(format!("meta l4proto {p}"));
        } else if let Some((set, _)) = port_set(p, &r.ports) {
            m.push(format!("{p} dport @{set}"));
        } else {
            let ports = port_ranges(&r.ports);
            m.push(format!("{p} dport {{ {} }}", ports.join(", ")));
        }
    }
    if r.proto != RuleProto::Icmp {
        return vec![m.join(" ")];
    }
    let base = m.join(" ");
    let with = |extra: String| {
        if base.is_empty() {
            extra
        } else {
            format!("{base} {extra}")
        }
    };
    let (v4, v6) = (family_v6 != Some(true), family_v6 != Some(false));
    if r.icmp_types.is_empty() {
        return match (v4, v6) {
            (true, false) => vec![with("meta l4proto icmp".into())],
            (false, true) => vec![with("meta l4proto ipv6-icmp".into())],
            _ => vec![with("meta l4proto { icmp, ipv6-icmp }".into())],
        };
    }
    let mut out = Vec::new();
    if v4 {
        out.push(with(format!("icmp type {{ {} }}", r.icmp_types.join(", "))));
    }
    let types6: Vec<&str> = r
        .icmp_types
        .iter()
        .filter_map(|t| icmpv6_counterpart(t))
        .collect();
    if v6 && !types6.is_empty() {
        out.push(with(format!("icmpv6 type {{ {} }}", types6.join(", "))));
    }
    out
}

/// The chain every drop of a direction's firewall chains goes to: it counts the drop for the
/// port and drops.
fn drop_chain(inbound: bool) -> &'static str {
    if inbound { "fw-in-drop" } else { "fw-out-drop" }
}

/// The chain every reject of a direction goes to.
fn reject_chain(inbound: bool) -> &'static str {
    if inbound {
        "fw-in-reject"
    } else {
        "fw-out-reject"
    }
}

/// A rule's action as a verdict inside a firewall chain: allowing is `return`, so the
/// network's own policy still applies afterwards; dropping and rejecting go to the counting
/// chains.
pub(crate) fn verdict(a: RuleAction, inbound: bool) -> String {
    match a {
        RuleAction::Accept => "return".into(),
        RuleAction::Drop => concat(&["goto ", drop_chain(inbound)]),
        RuleAction::Reject => concat(&["goto ", reject_chain(inbound)]),
    }
}

/// The rules of one direction of one port's firewall.
/// A DHCPv6 client message as it leaves a guest: link-local source, to ff02::1:2, 546 -> 547.
pub(super) const DHCP6_CLIENT: &str =
    "ip6 saddr fe80::/10 ip6 daddr ff02::1:2 udp sport 546 udp dport 547 return";

fn firewall_rules(port: &Port, dir: &FirewallDirection, inbound: bool) -> Vec<String> {
    let mut r = Vec::new();
    let drop = verdict(RuleAction::Drop, inbound);
    let reject = verdict(RuleAction::Reject, inbound);
    // ICMP has no connections to speak of (every echo of one ping is "established"), so its
    // rate limits apply to all matching packets; for tcp/udp they limit new connections.
    for rule in dir.rules.iter().filter(|x| x.proto == RuleProto::Icmp) {
        if let Some((n, unit)) = &rule.rate {
            for m in rule_matches(rule) {
                r.push(format!(
                    "{m} limit rate over {n}/{unit} burst {n} packets counter {drop}"
                ));
            }
        }
    }
    r.push("ct state established,related return".into());
    r.push(format!("ct state invalid {drop}"));
    r.push(IPV6_PLUMBING.into());
    if !inbound {
        // The VM must always be able to ask for (and renew) its address: from the DHCP
        // client port to the server port of the host (or broadcast), nowhere else, so a
        // drop policy is no tunnel to the outside.
        r.push("udp sport 68 udp dport 67 fib daddr type { local, broadcast } return".into());
        // DHCPv6 likewise: from its link-local address to the servers' group on its link
        // (the host's DHCPv6 server answers there), client port to server port only.
        r.push(DHCP6_CLIENT.into());
    }
    let word = if inbound { "in" } else { "out" };
    for rule in &dir.rules {
        for m in rule_matches(rule) {
            let sep = if m.is_empty() { "" } else { " " };
            if let Some(n) = rule.connlimit {
                r.push(format!(
                    "{m}{sep}ct state new ct count over {n} counter {reject}"
                ));
            }
            if let Some((n, unit)) = &rule.rate
                && rule.proto != RuleProto::Icmp
            {
                r.push(format!(
                    "{m}{sep}ct state new limit rate over {n}/{unit} burst {n} packets counter {drop}"
                ));
            }
            if rule.log {
                let prefix: String = format!("kvmnet {}/{} {word}: ", port.vm, port.name)
                    .chars()
                    .take(120)
                    .collect();
                r.push(format!(
                    r#"{m}{sep}limit rate 10/second burst 20 packets log prefix "{prefix}" level info"#
                ));
            }
            r.push(format!("{m}{sep}counter {}", verdict(rule.action, inbound)));
        }
    }
    if !dir.accept_by_default {
        r.push(format!("counter {drop}"));
    }
    r
}

/// Whether a direction's chain can serve every port with the same policy: its rules hold no
/// state of their own (a connection limit, a rate limit or a log prefix is per port).
fn shareable(d: &FirewallDirection) -> bool {
    d.rules
        .iter()
        .all(|r| !r.log && r.connlimit.is_none() && r.rate.is_none())
}

/// The name of a chain shared by the ports of one policy: named by its rules, so a changed
/// policy is a new chain and the ports move to it in one transaction. No port's own chain
/// can have this name (`in-`/`out-` and a port name).
fn shared_chain_name(inbound: bool, rules: &[String]) -> String {
    let word = if inbound { "fw-in-" } else { "fw-out-" };
    format!("{word}{:016x}", fnv1a(rules.join("\n").as_bytes()))
}

/// The chains of one direction, and which chain each port's interface uses.
#[derive(Default)]
struct Direction {
    /// Chain name -> rules.
    chains: BTreeMap<String, Vec<String>>,
    /// Port interface -> chain name.
    ports: Vec<(String, String)>,
    /// Port addresses (IPv4 and IPv6, as nft writes them) -> chain name.
    addrs4: Vec<(String, String)>,
    addrs6: Vec<(String, String)>,
}

impl Direction {
    /// The chain `port` jumps to for `d`: a shared one (made on first use) or its own.
    /// `recent` remembers the last few policies met (most ports share a few).
    fn chain_for<'a>(
        &mut self,
        port: &Port,
        d: &'a FirewallDirection,
        inbound: bool,
        recent: &mut Vec<(&'a FirewallDirection, String)>,
    ) -> String {
        let own = concat(&[if inbound { "in-" } else { "out-" }, &port.name]);
        if !shareable(d) {
            self.chains
                .insert(own.clone(), firewall_rules(port, d, inbound));
            return own;
        }
        if let Some((_, name)) = recent.iter().find(|(p, _)| *p == d) {
            return name.clone();
        }
        let rules = firewall_rules(port, d, inbound);
        let shared = shared_chain_name(inbound, &rules);
        let name = match self.chains.get(&shared) {
            None => {
                self.chains.insert(shared.clone(), rules);
                shared
            }
            Some(existing) if *existing == rules => shared,
            // Two policies whose rules hash alike: this one keeps its own chain.
            Some(_) => {
                self.chains.insert(own.clone(), rules);
                return own;
            }
        };
        if recent.len() == 8 {
            recent.remove(0);
        }
        recent.push((d, name.clone()));
        name
    }
}

/// Each firewalled port's mark, by interface: the interface name's hash in the low 24 bits,
/// the next free value on a collision (interfaces in name order), so a port keeps its mark
/// when others come and go.
fn port_ids<'a>(ifaces: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, u32> {
    let sorted: std::collections::BTreeSet<&str> = ifaces.collect();
    let mut taken = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in sorted {
        let mut id = (fnv1a(name.as_bytes()) as u32) & 0x00ff_ffff;
        while !taken.insert(id) {
            id = (id + 1) & 0x00ff_ffff;
        }
        out.insert(name, MARK_TAG | id);
    }
    out
}

/// The addresses traffic routed to `p` is addressed to: its IPv4 address, the link-local
/// address of its MAC, its SLAAC address in each of its network's IPv6 prefixes (its own
/// and the LAN's) and its declared `ipv6`.
fn port_addresses(spec: &Spec, p: &Port) -> (Option<String>, Vec<String>) {
    let v4 = p.ipv4.map(|a| ipv4_text(a.addr));
    let v6 = p
        .ipv6_addresses(spec)
        .into_iter()
        .map(|a| a.to_string())
        .collect();
    (v4, v6)
}

fn mark_text(m: u32) -> String {
    format!("0x{m:08x}")
}

pub(super) fn parts(spec: &Spec) -> Parts {
    let mut out = Parts::default();
    let mut inbound = Direction::default();
    let mut outbound = Direction::default();
    let mut port_sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut recent_in = Vec::new();
    let mut recent_out = Vec::new();
    let mut seen: Vec<&FirewallDirection> = Vec::new();
    for p in spec.vms.values().flat_map(|vm| vm.ports.iter()) {
        // Direct ports are macvtap devices: their traffic never crosses the host's hooks.
        let Some(fw) = p.firewall.as_ref().filter(|_| p.kind != PortKind::Macvtap) else {
            continue;
        };
        for d in fw.inbound.iter().chain(&fw.outbound) {
            if seen.contains(&d) {
                continue;
            }
            if seen.len() == 8 {
                seen.remove(0);
            }
            seen.push(d);
            for r in &d.rules {
                if let Some(proto) = l4_word(r.proto)
                    && let Some((name, elements)) = port_set(proto, &r.ports)
                {
                    port_sets.entry(name).or_insert(elements);
                }
            }
        }
        let iface = p.own_interface().to_string();
        if let Some(d) = &fw.outbound {
            let chain = outbound.chain_for(p, d, false, &mut recent_out);
            outbound.ports.push((iface.clone(), chain));
        }
        if let Some(d) = &fw.inbound {
            let chain = inbound.chain_for(p, d, true, &mut recent_in);
            let (v4, v6) = port_addresses(spec, p);
            inbound.addrs4.extend(v4.map(|a| (a, chain.clone())));
            inbound
                .addrs6
                .extend(v6.into_iter().map(|a| (a, chain.clone())));
            inbound.ports.push((iface, chain));
        }
    }
    if inbound.chains.is_empty() && outbound.chains.is_empty() {
        return out;
    }
    for (name, elements) in port_sets {
        out.set(FAMILY, Set::named(name, "inet_service", elements));
    }
    let ids = port_ids(
        outbound
            .ports
            .iter()
            .chain(&inbound.ports)
            .map(|(i, _)| i.as_str()),
    );
    direction_parts(&mut out, &outbound, false, &ids);
    direction_parts(&mut out, &inbound, true, &ids);
    // Marks that no inet hook consumed (bridged traffic on a host without br_netfilter)
    // do not leave the bridge.
    out.hook(
        Base::BridgePost,
        format!(
            "meta mark and {MARK_MASK} == {} meta mark set 0x0",
            mark_text(MARK_TAG)
        ),
    );
    out
}

/// The counting sets of one direction's drops or rejects, by what they look the port up by.
/// Names are `fw_in_drops`, `fw_in_drops4`, `fw_in_drops6`, `fw_out_rejects`, ...
pub fn counting_set(inbound: bool, reject: bool, key: CountedBy) -> &'static str {
    match (inbound, reject, key) {
        (false, false, _) => "fw_out_drops",
        (false, true, _) => "fw_out_rejects",
        (true, false, CountedBy::Mark) => "fw_in_drops",
        (true, false, CountedBy::Ipv4) => "fw_in_drops4",
        (true, false, CountedBy::Ipv6) => "fw_in_drops6",
        (true, true, CountedBy::Mark) => "fw_in_rejects",
        (true, true, CountedBy::Ipv4) => "fw_in_rejects4",
        (true, true, CountedBy::Ipv6) => "fw_in_rejects6",
    }
}

/// What a counting set looks a port up by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountedBy {
    Mark,
    Ipv4,
    Ipv6,
}

impl CountedBy {
    /// The counting set's type as kvmnet declares it (and reads keys back by).
    pub fn ty(self) -> &'static str {
        match self {
            CountedBy::Mark => "typeof meta mark; counter",
            CountedBy::Ipv4 => "typeof ip daddr; counter",
            CountedBy::Ipv6 => "typeof ip6 daddr; counter",
        }
    }

    fn lookup(self) -> &'static str {
        match self {
            CountedBy::Mark => "meta mark @",
            CountedBy::Ipv4 => "ip daddr @",
            CountedBy::Ipv6 => "ip6 daddr @",
        }
    }
}

/// Where the firewall counts one port's drops and rejects: its keys in the counting sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallCounted {
    /// The port's mark, its key in the sets counted by mark.
    pub mark: u32,
    pub inbound: bool,
    pub outbound: bool,
    /// Its IPv4 address, if it has one, and its IPv6 addresses: keys of inbound traffic
    /// routed to it.
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Vec<std::net::Ipv6Addr>,
}

/// Every firewalled port's counting keys, by interface.
pub fn counted(spec: &Spec) -> BTreeMap<String, FirewallCounted> {
    let ports: Vec<&Port> = spec
        .vms
        .values()
        .flat_map(|vm| vm.ports.iter())
        .filter(|p| p.kind != PortKind::Macvtap)
        .filter(|p| {
            p.firewall
                .as_ref()
                .is_some_and(|f| f.inbound.is_some() || f.outbound.is_some())
        })
        .collect();
    let ids = port_ids(ports.iter().map(|p| p.own_interface()));
    ports
        .iter()
        .map(|p| {
            let fw = p.firewall.as_ref().expect("filtered on");
            let inbound = fw.inbound.is_some();
            // As `port_addresses` writes them into the sets.
            let ipv6 = if inbound {
                p.ipv6_addresses(spec)
            } else {
                Vec::new()
            };
            let c = FirewallCounted {
                mark: ids[p.own_interface()],
                inbound,
                outbound: fw.outbound.is_some(),
                ipv4: p.ipv4.map(|a| a.addr).filter(|_| inbound),
                ipv6,
            };
            (p.own_interface().to_string(), c)
        })
        .collect()
}

/// A drop or reject chain of one direction and its counting sets: the port is looked up by
/// its mark, then (inbound, for routed traffic) by its address; a plain verdict ends it.
fn counting_parts(out: &mut Parts, d: &Direction, inbound: bool, reject: bool, ids: &Ids) {
    let keys: &[CountedBy] = if inbound {
        &[CountedBy::Mark, CountedBy::Ipv4, CountedBy::Ipv6]
    } else {
        &[CountedBy::Mark]
    };
    let word = if reject { "reject" } else { "drop" };
    let mut rules = Vec::new();
    for &key in keys {
        let name = counting_set(inbound, reject, key);
        let mut set = Set::new(name, key.ty());
        set.elements = match key {
            CountedBy::Mark => d
                .ports
                .iter()
                .map(|(iface, _)| mark_text(ids[iface.as_str()]))
                .collect(),
            CountedBy::Ipv4 => d.addrs4.iter().map(|(a, _)| a.clone()).collect(),
            CountedBy::Ipv6 => d.addrs6.iter().map(|(a, _)| a.clone()).collect(),
        };
        out.set(FAMILY, set);
        rules.push(concat(&[key.lookup(), name, " ", word]));
    }
    rules.push(word.to_string());
    let chain = if reject {
        reject_chain(inbound)
    } else {
        drop_chain(inbound)
    };
    out.chain(FAMILY, chain.to_string(), rules);
}

type Ids<'a> = BTreeMap<&'a str, u32>;

/// The chains, maps and hook rules of one direction.
fn direction_parts(out: &mut Parts, d: &Direction, inbound: bool, ids: &Ids) {
    if d.chains.is_empty() {
        return;
    }
    let jump = |chain: &str| concat(&[" : jump ", chain]);
    let (mark_map, policy) = if inbound {
        ("in_mark", "in_policy")
    } else {
        ("out_mark", "out_policy")
    };
    let mut marks = Set::new(mark_map, "ifname : mark");
    marks.elements = d
        .ports
        .iter()
        .map(|(iface, _)| concat(&["\"", iface, "\" : ", &mark_text(ids[iface.as_str()])]))
        .collect();
    out.set(BRIDGE_FAMILY, marks);
    let mut by_id = Set::new(policy, "mark : verdict");
    by_id.elements = d
        .ports
        .iter()
        .map(|(iface, chain)| concat(&[&mark_text(ids[iface.as_str()]), &jump(chain)]))
        .collect();
    out.set(FAMILY, by_id);
    for (name, rules) in &d.chains {
        out.chain(FAMILY, name.clone(), rules.clone());
    }
    counting_parts(out, d, inbound, false, ids);
    // The reject chain and its sets only where some rule of the direction rejects.
    let goto_reject = verdict(RuleAction::Reject, inbound);
    if d.chains
        .values()
        .flatten()
        .any(|r| r.ends_with(&goto_reject))
    {
        counting_parts(out, d, inbound, true, ids);
    }
    let clear = format!(
        "meta mark and {MARK_MASK} == {} meta mark set 0x0",
        mark_text(MARK_TAG)
    );
    if !inbound {
        out.hook(
            Base::BridgePre,
            format!("meta mark set iifname map @{mark_map}"),
        );
        out.hook(Base::InetPreFilter, format!("meta mark vmap @{policy}"));
        out.hook(Base::InetPreFilter, clear);
        return;
    }
    let mut v4 = Set::new("in_policy4", "ipv4_addr : verdict");
    v4.elements = d
        .addrs4
        .iter()
        .map(|(a, c)| concat(&[a, &jump(c)]))
        .collect();
    let mut v6 = Set::new("in_policy6", "ipv6_addr : verdict");
    v6.elements = d
        .addrs6
        .iter()
        .map(|(a, c)| concat(&[a, &jump(c)]))
        .collect();
    out.set(FAMILY, v4);
    out.set(FAMILY, v6);
    out.hook(
        Base::BridgeForward,
        format!("meta mark set oifname map @{mark_map}"),
    );
    let routed = format!("meta mark and {MARK_MASK} != {}", mark_text(MARK_TAG));
    out.hook(Base::InetForward, format!("meta mark vmap @{policy}"));
    out.hook(
        Base::InetForward,
        format!("{routed} ip daddr vmap @in_policy4"),
    );
    out.hook(
        Base::InetForward,
        format!("{routed} ip6 daddr vmap @in_policy6"),
    );
    out.hook(Base::InetForward, clear);
    out.hook(Base::InetOutput, "ip daddr vmap @in_policy4");
    out.hook(Base::InetOutput, "ip6 daddr vmap @in_policy6");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_of_single_ports_share_a_named_set() {
        let (a, elements) = port_set("tcp", &[(5201, 5201), (22, 22)]).unwrap();
        assert_eq!(elements, ["22", "5201"]);
        assert!(a.starts_with("tcp_ports_"));
        // The same list in another order is the same set; another protocol is not.
        assert_eq!(port_set("tcp", &[(22, 22), (5201, 5201)]).unwrap().0, a);
        assert_ne!(port_set("udp", &[(22, 22), (5201, 5201)]).unwrap().0, a);
        // One port, or a range in the list: no named set.
        assert!(port_set("tcp", &[(22, 22)]).is_none());
        assert!(port_set("tcp", &[(22, 22), (8000, 8100)]).is_none());
    }

    fn rule(proto: RuleProto) -> FirewallRule {
        FirewallRule {
            proto,
            ports: vec![],
            from: None,
            to: None,
            icmp_types: vec![],
            connlimit: None,
            rate: None,
            action: RuleAction::Accept,
            log: false,
        }
    }

    #[test]
    fn rules_cover_both_families_unless_a_prefix_says_otherwise() {
        let mut tcp = rule(RuleProto::Tcp);
        tcp.ports = vec![(22, 22)];
        assert_eq!(rule_matches(&tcp), ["tcp dport { 22 }"]);
        let mut ping = rule(RuleProto::Icmp);
        ping.icmp_types = vec!["echo-request".into(), "timestamp-request".into()];
        assert_eq!(
            rule_matches(&ping),
            [
                "icmp type { echo-request, timestamp-request }",
                "icmpv6 type { echo-request }"
            ]
        );
        ping.from = Some(crate::types::IpCidr::V4("10.0.0.0/8".parse().unwrap()));
        assert_eq!(
            rule_matches(&ping),
            ["ip saddr 10.0.0.0/8 icmp type { echo-request, timestamp-request }"]
        );
        assert_eq!(
            rule_matches(&rule(RuleProto::Icmp)),
            ["meta l4proto { icmp, ipv6-icmp }"]
        );
        assert_eq!(rule_matches(&rule(RuleProto::Any)), [""]);
        // An IPv6 prefix: IPv6 only, ICMP types by their ICMPv6 names.
        ping.from = Some(crate::types::IpCidr::V6("2001:db8::/32".parse().unwrap()));
        assert_eq!(
            rule_matches(&ping),
            ["ip6 saddr 2001:db8::/32 icmpv6 type { echo-request }"]
        );
        let mut any6 = rule(RuleProto::Icmp);
        any6.to = Some(crate::types::IpCidr::V6("fd00::/8".parse().unwrap()));
        assert_eq!(
            rule_matches(&any6),
            ["ip6 daddr fd00::/8 meta l4proto ipv6-icmp"]
        );
        tcp.to = any6.to;
        assert_eq!(rule_matches(&tcp), ["ip6 daddr fd00::/8 tcp dport { 22 }"]);
    }

    #[test]
    fn port_marks_are_stable_and_distinct() {
        let ids = port_ids(["vm-a", "vm-b"].into_iter());
        assert_ne!(ids["vm-a"], ids["vm-b"]);
        assert!(ids.values().all(|i| i & 0xff00_0000 == MARK_TAG));
        let before = ids["vm-a"];
        assert_eq!(
            port_ids(["vm-c", "vm-a", "vm-b"].into_iter())["vm-a"],
            before
        );
    }

    /// Two ports sharing one inbound policy, one with an outbound rule that rejects: each has
    /// its own mark, in the maps and in the counting sets, and `counted` (what metrics read
    /// by) names exactly those elements.
    #[test]
    fn ports_of_a_shared_policy_are_counted_apart() {
        const SPEC: &str = r#"version: 1
networks:
  n: { mode: bridge, bridge: fc-n, uplink: fc-up, ipv6_prefixes: [2001:db8:1::/64] }
vms:
  a: { ports: [ { network: n, name: fc-a, ipv4: 192.0.2.10/24, firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22] } ] } } } ] }
  b:
    ports:
      - network: n
        name: fc-b
        ipv4: 192.0.2.11/24
        ipv6: 2001:db8:1::b
        firewall:
          inbound: { policy: drop, rules: [ { proto: tcp, ports: [22] } ] }
          outbound: { rules: [ { proto: tcp, ports: [25], action: reject } ] }
"#;
        let id =
            crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000002", "h")
                .unwrap();
        let spec = crate::spec::parse(SPEC, &id).unwrap();
        let t = super::super::table_for(&spec).unwrap();
        let set = |name: &str| &t.sets[&format!("inet {name}")].elements;
        let c = counted(&spec);
        let (a, b) = (&c["fc-a"], &c["fc-b"]);
        assert_ne!(a.mark, b.mark);
        assert!(!a.outbound && a.inbound && b.outbound && b.inbound);
        for p in [a, b] {
            let m = mark_text(p.mark);
            assert!(set("fw_in_drops").contains(&m));
            assert!(
                set("in_policy")
                    .iter()
                    .any(|e| e.starts_with(&format!("{m} : jump fw-in-")))
            );
            assert!(set("fw_in_drops4").contains(&p.ipv4.unwrap().to_string()));
            for v6 in &p.ipv6 {
                assert!(set("fw_in_drops6").contains(&v6.to_string()), "{v6}");
            }
        }
        // Link-local and SLAAC each, and b's declared address: every element of the set
        // is a port's, so a drop routed to any of them is counted on its port.
        assert_eq!((a.ipv6.len(), b.ipv6.len()), (2, 3));
        let keys: std::collections::BTreeSet<String> = a
            .ipv6
            .iter()
            .chain(&b.ipv6)
            .map(ToString::to_string)
            .collect();
        let elements: std::collections::BTreeSet<String> =
            set("fw_in_drops6").iter().cloned().collect();
        assert_eq!(keys, elements);
        // Both inbound policies are one chain.
        let chain = |m: u32| {
            set("in_policy")
                .iter()
                .find_map(|e| e.strip_prefix(&format!("{} : jump ", mark_text(m))))
                .unwrap()
                .to_string()
        };
        assert_eq!(chain(a.mark), chain(b.mark));
        // Only b rejects, outbound; its rule goes to the counting chain.
        assert_eq!(set("fw_out_rejects").len(), 1);
        assert!(set("fw_out_rejects").contains(&mark_text(b.mark)));
        assert!(!t.sets.contains_key("inet fw_in_rejects"));
        let reject = &t.chains["inet fw-out-reject"].rules;
        assert_eq!(reject.last().unwrap().text, "reject");
        let drop = &t.chains["inet fw-in-drop"].rules;
        let texts: Vec<&str> = drop.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "meta mark @fw_in_drops drop",
                "ip daddr @fw_in_drops4 drop",
                "ip6 daddr @fw_in_drops6 drop",
                "drop"
            ]
        );
    }
}
