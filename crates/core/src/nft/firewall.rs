//! Per-port stateful firewalls (`firewall: { inbound, outbound }`), for IPv4 and IPv6 alike.
//!
//! A port is found by its interface, not by an address, so a port without `ipv4` has a
//! firewall too. The bridge knows the interface; the stateful checks need conntrack, which
//! runs in the inet hooks. A mark carries the port across:
//!
//! - from a port: the bridge's prerouting hook marks the frame with the id of the port's
//!   outbound chain (`out_mark`, by input interface); inet prerouting (after conntrack and
//!   DNAT, for routed traffic and, through br_netfilter, for bridged traffic) jumps through
//!   `out_policy` by that mark and clears it. Everything a VM sends, to the host included,
//!   passes its outbound chain.
//! - to a port over the bridge: the bridge's forward hook marks the frame with the id of the
//!   output port's inbound chain (`in_mark`, by output interface) before br_netfilter's inet
//!   forward hook (bridge priority -1), which jumps through `in_policy`.
//! - to a port through the host's routing (from another network, from outside, from the
//!   host itself): the output port is chosen by the bridge only after the inet hooks, so the
//!   port is found by its destination address (`in_policy4`, `in_policy6`: its `ipv4`, the
//!   EUI-64 link-local address of its MAC and its SLAAC addresses). The guard makes those
//!   addresses the port's own.
//!
//! Marks are `0x4b` in the top byte and a chain id below; kvmnet clears such marks once
//! used, and the bridge's postrouting hook clears any left (a host without br_netfilter never
//! reaches the inet hooks with bridged traffic). Without br_netfilter, traffic between two
//! ports of one bridge is not firewalled (README says so).
//!
//! Ports with the same rules in one direction share one chain (`fw-in-HASH`); a direction
//! whose rules keep per-port state (log prefix, connection or rate limit) gets the port's own
//! chain (`in-PORT`). Adding a port of a known policy adds map elements only.

use std::collections::BTreeMap;

use super::{BRIDGE_FAMILY, Base, FAMILY, Parts, Set, concat, ipv4_text};
use crate::spec::naming::fnv1a;
use crate::spec::{FirewallDirection, FirewallRule, Port, PortKind, RuleAction, RuleProto, Spec};

/// The top byte of every mark kvmnet sets.
pub(crate) const MARK_TAG: u32 = 0x4b00_0000;
const MARK_MASK: &str = "0xff000000";

/// ICMP type names with an ICMPv6 counterpart: a rule about them covers both families.
const ICMP_V6: &[(&str, &str)] = &[
    ("echo-reply", "echo-reply"),
    ("destination-unreachable", "destination-unreachable"),
    ("echo-request", "echo-request"),
    ("time-exceeded", "time-exceeded"),
    ("parameter-problem", "parameter-problem"),
    ("router-advertisement", "nd-router-advert"),
    ("router-solicitation", "nd-router-solicit"),
    ("redirect", "nd-redirect"),
];

/// IPv6 cannot work without neighbour discovery (its ARP) and multicast listener reports:
/// a firewall lets them through whatever its policy, as an IPv4 firewall never sees ARP.
/// What a guest may say in them is the guard's business.
const IPV6_PLUMBING: &str = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, mld-listener-query, mld-listener-report, mld-listener-reduction, mld2-listener-report } return";

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

/// The match parts of one rule, once per family it covers: a rule with an IPv4 `from`/`to`
/// is IPv4 only; an ICMP rule is written for ICMP and for ICMPv6 (with the types that have
/// an ICMPv6 counterpart); anything else is one match for both families.
pub(crate) fn rule_matches(r: &FirewallRule) -> Vec<String> {
    let mut m = Vec::new();
    if let Some(f) = r.from {
        m.push(format!("ip saddr {f}"));
    }
    if let Some(t) = r.to {
        m.push(format!("ip daddr {t}"));
    }
    let v4_only = r.from.is_some() || r.to.is_some();
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
    if r.icmp_types.is_empty() {
        if v4_only {
            return vec![with("meta l4proto icmp".into())];
        }
        return vec![with("meta l4proto { icmp, ipv6-icmp }".into())];
    }
    let mut out = vec![with(format!("icmp type {{ {} }}", r.icmp_types.join(", ")))];
    let v6: Vec<&str> = r
        .icmp_types
        .iter()
        .filter_map(|t| ICMP_V6.iter().find(|(v4, _)| v4 == t).map(|(_, v6)| *v6))
        .collect();
    if !v4_only && !v6.is_empty() {
        out.push(with(format!("icmpv6 type {{ {} }}", v6.join(", "))));
    }
    out
}

/// A rule's action as a verdict inside a firewall chain: allowing is `return`, so the
/// network's own policy still applies afterwards.
fn verdict(a: RuleAction) -> &'static str {
    match a {
        RuleAction::Accept => "return",
        RuleAction::Drop => "drop",
        RuleAction::Reject => "reject",
    }
}

/// The rules of one direction of one port's firewall.
/// A DHCPv6 client message as it leaves a guest: link-local source, to ff02::1:2, 546 -> 547.
pub(super) const DHCP6_CLIENT: &str =
    "ip6 saddr fe80::/10 ip6 daddr ff02::1:2 udp sport 546 udp dport 547 return";

fn firewall_rules(port: &Port, dir: &FirewallDirection, inbound: bool) -> Vec<String> {
    let mut r = Vec::new();
    // ICMP has no connections to speak of (every echo of one ping is "established"), so its
    // rate limits apply to all matching packets; for tcp/udp they limit new connections.
    for rule in dir.rules.iter().filter(|x| x.proto == RuleProto::Icmp) {
        if let Some((n, unit)) = &rule.rate {
            for m in rule_matches(rule) {
                r.push(format!(
                    "{m} limit rate over {n}/{unit} burst {n} packets counter drop"
                ));
            }
        }
    }
    r.push("ct state established,related return".into());
    r.push("ct state invalid drop".into());
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
                    "{m}{sep}ct state new ct count over {n} counter reject"
                ));
            }
            if let Some((n, unit)) = &rule.rate
                && rule.proto != RuleProto::Icmp
            {
                r.push(format!(
                    "{m}{sep}ct state new limit rate over {n}/{unit} burst {n} packets counter drop"
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
            r.push(format!("{m}{sep}counter {}", verdict(rule.action)));
        }
    }
    if !dir.accept_by_default {
        r.push("counter drop".into());
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

    /// Mark ids for the chains: the chain name's hash in the low 24 bits, the next free
    /// value on a collision (chains in name order), so a chain keeps its id when others
    /// come and go.
    fn ids(&self) -> BTreeMap<&str, u32> {
        let mut taken = std::collections::BTreeSet::new();
        let mut out = BTreeMap::new();
        for name in self.chains.keys() {
            let mut id = (fnv1a(name.as_bytes()) as u32) & 0x00ff_ffff;
            while !taken.insert(id) {
                id = (id + 1) & 0x00ff_ffff;
            }
            out.insert(name.as_str(), MARK_TAG | id);
        }
        out
    }
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
    direction_parts(&mut out, &outbound, false);
    direction_parts(&mut out, &inbound, true);
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

/// The chains, maps and hook rules of one direction.
fn direction_parts(out: &mut Parts, d: &Direction, inbound: bool) {
    if d.chains.is_empty() {
        return;
    }
    let ids = d.ids();
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
        .map(|(iface, chain)| concat(&["\"", iface, "\" : ", &mark_text(ids[chain.as_str()])]))
        .collect();
    out.set(BRIDGE_FAMILY, marks);
    let mut by_id = Set::new(policy, "mark : verdict");
    by_id.elements = ids
        .iter()
        .map(|(chain, id)| concat(&[&mark_text(*id), &jump(chain)]))
        .collect();
    out.set(FAMILY, by_id);
    for (name, rules) in &d.chains {
        out.chain(FAMILY, name.clone(), rules.clone());
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
    fn rules_cover_both_families_unless_an_ipv4_prefix_says_otherwise() {
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
        ping.from = Some("10.0.0.0/8".parse().unwrap());
        assert_eq!(
            rule_matches(&ping),
            ["ip saddr 10.0.0.0/8 icmp type { echo-request, timestamp-request }"]
        );
        assert_eq!(
            rule_matches(&rule(RuleProto::Icmp)),
            ["meta l4proto { icmp, ipv6-icmp }"]
        );
        assert_eq!(rule_matches(&rule(RuleProto::Any)), [""]);
    }

    #[test]
    fn chain_ids_are_stable_and_distinct() {
        let mut d = Direction::default();
        d.chains.insert("fw-in-a".into(), vec![]);
        d.chains.insert("fw-in-b".into(), vec![]);
        let ids = d.ids();
        assert_ne!(ids["fw-in-a"], ids["fw-in-b"]);
        assert!(ids.values().all(|i| i & 0xff00_0000 == MARK_TAG));
        let before = ids["fw-in-a"];
        d.chains.insert("fw-in-c".into(), vec![]);
        assert_eq!(d.ids()["fw-in-a"], before);
    }
}
