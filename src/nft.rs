//! kvmnet's nftables ruleset: what the networks and ports of a spec need, as plain values,
//! and the nft scripts that make the live tables match them.
//!
//! kvmnet owns exactly two tables, `inet kvmnet` (forwarding policy, NAT, firewalls) and
//! `bridge kvmnet` (anti-spoofing at the bridge), and never lists, changes or deletes any other.
//! A table is kvmnet's when its comment is [`OWNER_COMMENT`]. Every rule carries a comment
//! with a hash of its own text, so a later run sees which rules are still what kvmnet wrote
//! without reading them back as text: a rule deleted, added or replaced by hand changes the
//! chain's list of hashes. When the tables are kvmnet's, a change touches only the chains,
//! sets and set elements that differ (adding a port adds its own chains and elements, nothing
//! else); when they are missing or not recognisable, both are replaced together. Either way it
//! is one nft transaction, so a half-written firewall is never visible.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::spec::naming::fnv1a;
use crate::spec::{FirewallDirection, Mode, Port, RuleAction, RuleProto, Spec};

pub const FAMILY: &str = "inet";
pub const BRIDGE_FAMILY: &str = "bridge";
pub const TABLE: &str = "kvmnet";
/// The comment of both tables: how kvmnet recognises them. Table comments cannot change after
/// creation, so it carries no hash; tables from older versions (`kvmnet <hash>`) are not
/// recognised and get replaced whole.
pub const OWNER_COMMENT: &str = "kvmnet v2";

/// One rule: its text as nft reads it and the hash kept in its comment. Observed rules have
/// an empty text unless it was read back (only when the rule has to be restored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRule {
    pub hash: String,
    pub text: String,
}

impl NftRule {
    pub fn new(text: String) -> NftRule {
        NftRule {
            hash: rule_hash(&text),
            text,
        }
    }
}

pub fn rule_hash(text: &str) -> String {
    format!("{:016x}", fnv1a(text.as_bytes()))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftChain {
    pub family: String,
    pub name: String,
    /// Base chains: `type filter hook forward priority 0; policy accept;`. Regular chains
    /// (jump targets) have none.
    pub hook: Option<String>,
    pub rules: Vec<NftRule>,
}

impl NftChain {
    /// Same hook and the same rules in the same order (by hash: observed text may be absent).
    pub fn same(&self, other: &NftChain) -> bool {
        self.hook == other.hook
            && self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .zip(&other.rules)
                .all(|(a, b)| a.hash == b.hash)
    }
}

/// A named set or verdict map with its elements, as nft writes them (`"port"`,
/// `"port" . 52:54:00:aa:00:10`, `192.0.2.10 : jump in-port`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftSet {
    pub family: String,
    pub name: String,
    /// `ifname . ether_addr`, `ipv4_addr : verdict`, ...
    pub ty: String,
    pub elements: BTreeSet<String>,
}

impl NftSet {
    fn keyword(&self) -> &'static str {
        if self.ty.contains(" : ") {
            "map"
        } else {
            "set"
        }
    }
}

/// kvmnet's ruleset: both tables, keyed by `family name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    /// Families whose table exists (observed) or is needed (desired).
    pub families: BTreeSet<String>,
    pub chains: BTreeMap<String, NftChain>,
    pub sets: BTreeMap<String, NftSet>,
    /// Observed: every table carries kvmnet's mark and holds only objects kvmnet could read
    /// (nothing hidden, such as a chain emptied by hand): safe to change in place.
    #[serde(default = "yes")]
    pub intact: bool,
    /// Observed: nft's own listing of the tables when it was read (whole-table changes need
    /// it to put the tables back exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<String>,
}

fn yes() -> bool {
    true
}

fn key(family: &str, name: &str) -> String {
    concat(&[family, " ", name])
}

/// The parts joined, without the formatting machinery: a table holds a few strings per
/// port, and a host may have thousands of ports.
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// An address in dotted decimal, as `Display` writes it, by hand (see [`concat`]).
fn ipv4_text(a: std::net::Ipv4Addr) -> String {
    let mut s = String::with_capacity(15);
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

impl NftTable {
    /// No family, no chain, no set; intact.
    pub fn empty() -> NftTable {
        NftTable {
            families: BTreeSet::new(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            intact: true,
            listing: None,
        }
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// The tables as one nft script: nft's listing when it was read, else rendered.
    pub fn text(&self) -> String {
        if let Some(l) = &self.listing {
            return l.clone();
        }
        let mut t = String::new();
        for fam in [FAMILY, BRIDGE_FAMILY] {
            if !self.families.contains(fam) {
                continue;
            }
            let _ = writeln!(t, "table {fam} {TABLE} {{\n\tcomment \"{OWNER_COMMENT}\"");
            let chains: Vec<&NftChain> = self.chains.values().filter(|c| c.family == fam).collect();
            // Jump targets first, then the maps that name them, then the hooks that use them.
            for c in chains.iter().filter(|c| c.hook.is_none()) {
                render_chain(&mut t, c);
            }
            for s in self.sets.values().filter(|s| s.family == fam) {
                let _ = writeln!(t, "\t{} {} {{\n\t\ttype {}", s.keyword(), s.name, s.ty);
                if !s.elements.is_empty() {
                    let e: Vec<&str> = s.elements.iter().map(String::as_str).collect();
                    let _ = writeln!(t, "\t\telements = {{ {} }}", e.join(", "));
                }
                let _ = writeln!(t, "\t}}");
            }
            for c in chains.iter().filter(|c| c.hook.is_some()) {
                render_chain(&mut t, c);
            }
            t.push_str("}\n");
        }
        t
    }
}

fn rule_line(r: &NftRule) -> String {
    format!("{} comment \"{}\"", r.text, r.hash)
}

fn render_chain(t: &mut String, c: &NftChain) {
    let _ = writeln!(t, "\tchain {} {{", c.name);
    if let Some(h) = &c.hook {
        let _ = writeln!(t, "\t\t{h}");
    }
    for r in &c.rules {
        let _ = writeln!(t, "\t\t{}", rule_line(r));
    }
    let _ = writeln!(t, "\t}}");
}

/// A chain being built: rules as text until they get their hashes.
struct Chain {
    name: String,
    hook: Option<String>,
    rules: Vec<String>,
}

impl Chain {
    fn base(name: &'static str, ty: &str, hook: &str, priority: i32) -> Chain {
        Chain {
            name: name.to_string(),
            hook: Some(hook_line(ty, hook, priority, true)),
            rules: Vec::new(),
        }
    }
    fn regular(name: String) -> Chain {
        Chain {
            name,
            hook: None,
            rules: Vec::new(),
        }
    }
}

/// A base chain's header as kvmnet writes it, and as observation rebuilds it from the kernel.
pub fn hook_line(ty: &str, hook: &str, priority: i32, accept: bool) -> String {
    let policy = if accept { "accept" } else { "drop" };
    format!("type {ty} hook {hook} priority {priority}; policy {policy};")
}

/// A named set with its type and elements.
struct Set {
    name: std::borrow::Cow<'static, str>,
    ty: &'static str,
    elements: Vec<String>,
}

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

fn rule_matches(r: &crate::spec::FirewallRule) -> String {
    let mut m = Vec::new();
    if let Some(f) = r.from {
        m.push(format!("ip saddr {f}"));
    }
    if let Some(t) = r.to {
        m.push(format!("ip daddr {t}"));
    }
    let l4 = match r.proto {
        RuleProto::Tcp => Some("tcp"),
        RuleProto::Udp => Some("udp"),
        RuleProto::Icmp => None,
        RuleProto::Any => None,
    };
    if let Some(p) = l4 {
        if r.ports.is_empty() {
            m.push(format!("meta l4proto {p}"));
        } else {
            if let Some((set, _)) = port_set(p, &r.ports) {
                m.push(format!("{p} dport @{set}"));
            } else {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                m.push(format!("{p} dport {{ {} }}", ports.join(", ")));
            }
        }
    }
    if r.proto == RuleProto::Icmp {
        if r.icmp_types.is_empty() {
            m.push("meta l4proto icmp".into());
        } else {
            m.push(format!("icmp type {{ {} }}", r.icmp_types.join(", ")));
        }
    }
    m.join(" ")
}

/// One direction of one port's firewall, as a chain jumped to from the hooks. Allowing is
/// `return`, not `accept`: the network's own policy still applies afterwards.
fn firewall_chain(name: String, port: &Port, dir: &FirewallDirection, inbound: bool) -> Chain {
    let mut c = Chain::regular(name);
    let r = &mut c.rules;
    // ICMP has no connections to speak of (every echo of one ping is "established"), so its
    // rate limits apply to all matching packets; for tcp/udp they limit new connections.
    for rule in dir.rules.iter().filter(|x| x.proto == RuleProto::Icmp) {
        if let Some((n, unit)) = &rule.rate {
            r.push(format!(
                "{} limit rate over {n}/{unit} burst {n} packets counter drop",
                rule_matches(rule)
            ));
        }
    }
    r.push("ct state established,related return".into());
    r.push("ct state invalid drop".into());
    if !inbound {
        // The VM must always be able to ask for (and renew) its address.
        r.push("udp dport 67 return".into());
    }
    let word = if inbound { "in" } else { "out" };
    for rule in &dir.rules {
        let m = rule_matches(rule);
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
        let verdict = match rule.action {
            RuleAction::Accept => "return",
            RuleAction::Drop => "drop",
            RuleAction::Reject => "reject",
        };
        r.push(format!("{m}{sep}counter {verdict}"));
    }
    if !dir.accept_by_default {
        r.push("counter drop".into());
    }
    c
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

/// Per-port firewalls: a chain per policy and direction, found through maps keyed by the
/// VM's address (anti-spoofing makes the source address a reliable name for the port), so
/// the per-packet cost is one lookup however many ports there are. Ports with the same
/// policy share its chain (`fw-in-HASH`): adding such a port adds one map element and no
/// rule, and the ruleset does not grow a chain per port. A policy whose rules keep state
/// per port (connection limits, rate limits, log prefixes) gets the port's own chain
/// (`in-PORT`, `out-PORT`).
fn firewall_parts(spec: &Spec) -> (Vec<Set>, Vec<Chain>) {
    let mut fw_in = Set {
        name: "fw_in".into(),
        ty: "ipv4_addr : verdict",
        elements: Vec::new(),
    };
    let mut fw_out = Set {
        name: "fw_out".into(),
        ty: "ipv4_addr : verdict",
        elements: Vec::new(),
    };
    let mut port_sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen: Vec<&FirewallDirection> = Vec::new();
    let mut chains = Vec::new();
    // Shared chains: the names made so far, and the last few policies met with the chain
    // each jumps to (most ports of a host share a few policies, met again and again).
    let mut shared: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut recent: Vec<(&FirewallDirection, bool, String)> = Vec::new();
    for vm in spec.vms.values() {
        for p in &vm.ports {
            let (Some(fw), Some(addr)) = (&p.firewall, p.ipv4) else {
                continue;
            };
            for d in fw.inbound.iter().chain(&fw.outbound) {
                // Ports of a host share a few policies: the recent ones are not looked at
                // again (a set found twice is the same set).
                if seen.contains(&d) {
                    continue;
                }
                if seen.len() == 8 {
                    seen.remove(0);
                }
                seen.push(d);
                for r in &d.rules {
                    let proto = match r.proto {
                        RuleProto::Tcp => "tcp",
                        RuleProto::Udp => "udp",
                        RuleProto::Icmp | RuleProto::Any => continue,
                    };
                    if let Some((name, elements)) = port_set(proto, &r.ports)
                        && !port_sets.contains_key(&name)
                    {
                        port_sets.insert(name, elements);
                    }
                }
            }
            for (d, inbound) in [(&fw.inbound, true), (&fw.outbound, false)] {
                let Some(d) = d else { continue };
                let (map, own) = if inbound {
                    (&mut fw_in, "in-")
                } else {
                    (&mut fw_out, "out-")
                };
                let target = if !shareable(d) {
                    let name = concat(&[own, &p.name]);
                    chains.push(firewall_chain(name.clone(), p, d, inbound));
                    name
                } else if let Some(r) = recent.iter().find(|r| r.1 == inbound && r.0 == d) {
                    r.2.clone()
                } else {
                    let mut c = firewall_chain(String::new(), p, d, inbound);
                    c.name = shared_chain_name(inbound, &c.rules);
                    let name = c.name.clone();
                    match shared.get(&name) {
                        None => {
                            shared.insert(name.clone(), c.rules.clone());
                            chains.push(c);
                        }
                        Some(rules) if *rules == c.rules => {}
                        // Two policies whose rules hash alike: this one keeps its own chain.
                        Some(_) => {
                            c.name = concat(&[own, &p.name]);
                            let name = c.name.clone();
                            chains.push(c);
                            map.elements
                                .push(concat(&[&ipv4_text(addr.addr), " : jump ", &name]));
                            continue;
                        }
                    }
                    if recent.len() == 8 {
                        recent.remove(0);
                    }
                    recent.push((d, inbound, name.clone()));
                    name
                };
                map.elements
                    .push(concat(&[&ipv4_text(addr.addr), " : jump ", &target]));
            }
        }
    }
    if chains.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut input = Chain::base("input", "filter", "input", 0);
    input.rules.push("ip saddr vmap @fw_out".into());
    let mut output = Chain::base("output-filter", "filter", "output", 0);
    output.rules.push("ip daddr vmap @fw_in".into());
    chains.push(input);
    chains.push(output);
    let mut sets = vec![fw_in, fw_out];
    sets.extend(port_sets.into_iter().map(|(name, elements)| Set {
        name: name.into(),
        ty: "inet_service",
        elements,
    }));
    (sets, chains)
}

/// The inet table: per-port firewalls, then forwarding policy and NAT of each network.
fn inet_parts(spec: &Spec) -> (Vec<Set>, Vec<Chain>) {
    let (sets, mut chains) = firewall_parts(spec);
    let mut forward = Chain::base("forward", "filter", "forward", 0);
    if !sets.is_empty() {
        forward.rules.push("ip saddr vmap @fw_out".into());
        forward.rules.push("ip daddr vmap @fw_in".into());
    }
    let mut postrouting = Chain::base("postrouting", "nat", "postrouting", 100);
    let mut prerouting = Chain::base("prerouting", "nat", "prerouting", -100);
    let mut output = Chain::base("output", "nat", "output", -100);
    for net in spec.networks.values() {
        if matches!(net.mode, Mode::Vxlan | Mode::Direct | Mode::Vlan) {
            // L2 segments (an overlay across hosts, an uplink's LAN, a VLAN): no routing, NAT
            // or forwarding rules of their own.
            continue;
        }
        let Some(gw) = net.ipv4 else { continue };
        let br = &net.bridge;
        let subnet = gw.network();
        let f = &mut forward.rules;
        // With br_netfilter, traffic between two ports of one bridge also passes this hook
        // with the bridge as both iif and oif; it must pass in every mode.
        f.push(format!(r#"iifname "{br}" oifname "{br}" accept"#));
        match net.mode {
            Mode::Nat => {
                let egress_out = match &net.nat_egress {
                    Some(e) => format!(r#" oifname "{e}""#),
                    None => String::new(),
                };
                let egress_in = match &net.nat_egress {
                    Some(e) => format!(r#"iifname "{e}" "#),
                    None => String::new(),
                };
                f.push(format!(
                    r#"iifname "{br}" ip saddr {subnet}{egress_out} accept"#
                ));
                f.push(format!(
                    r#"{egress_in}oifname "{br}" ip daddr {subnet} ct state established,related accept"#
                ));
            }
            Mode::Routed => {
                f.push(format!(r#"iifname "{br}" ip saddr {subnet} accept"#));
                f.push(format!(r#"oifname "{br}" ip daddr {subnet} accept"#));
            }
            Mode::Isolated | Mode::Bridge | Mode::Vxlan | Mode::Direct | Mode::Vlan => {}
        }
        if !net.forwards.is_empty() {
            // Forwarded ports: connections translated towards a guest may come in.
            f.push(format!(
                r#"oifname "{br}" ip daddr {subnet} ct status dnat accept"#
            ));
        }
        for fw in &net.forwards {
            // To any of the host's own addresses, from outside and from the host itself.
            let rule = format!(
                "fib daddr type local {} dport {} dnat ip to {}:{}",
                fw.proto.as_str(),
                fw.port,
                fw.to_ip,
                fw.to_port
            );
            prerouting.rules.push(rule.clone());
            output.rules.push(rule);
        }
        f.push(format!(r#"iifname "{br}" reject"#));
        f.push(format!(r#"oifname "{br}" reject"#));

        if net.mode == Mode::Nat {
            let p = &mut postrouting.rules;
            // No translation towards local multicast and broadcast (DHCP, mDNS, ...).
            p.push(format!("ip saddr {subnet} ip daddr 224.0.0.0/24 return"));
            p.push(format!("ip saddr {subnet} ip daddr 255.255.255.255 return"));
            let out = match &net.nat_egress {
                Some(e) => format!(r#"oifname "{e}""#),
                None => format!(r#"oifname != "{br}""#),
            };
            p.push(format!(
                "ip saddr {subnet} ip daddr != {subnet} {out} masquerade"
            ));
            if !net.forwards.is_empty() {
                // A guest reaching a forward of its own network (hairpin): the answer
                // must come back through the host, not straight from the other guest.
                p.push(format!(
                    r#"ip saddr {subnet} oifname "{br}" ct status dnat masquerade"#
                ));
            }
        }
    }
    chains.extend([forward, postrouting, prerouting, output]);
    (sets, chains)
}

/// The bridge table: anti-spoofing at the bridge, before the bridge learns or forwards
/// anything. Per-port data lives in sets, so the per-packet cost does not grow with the
/// number of ports.
fn bridge_parts(spec: &Spec) -> (Vec<Set>, Vec<Chain>) {
    let mut guarded = Set {
        name: "guarded".into(),
        ty: "ifname",
        elements: Vec::new(),
    };
    let mut port_mac = Set {
        name: "port_mac".into(),
        ty: "ifname . ether_addr",
        elements: Vec::new(),
    };
    let mut ip_guarded = Set {
        name: "ip_guarded".into(),
        ty: "ifname",
        elements: Vec::new(),
    };
    let mut port_ip = Set {
        name: "port_ip".into(),
        ty: "ifname . ipv4_addr",
        elements: Vec::new(),
    };
    for vm in spec.vms.values() {
        for p in vm.ports.iter().filter(|p| p.antispoof) {
            // A trunk port's VLANs reach their bridges through its sub-interfaces: the VM's
            // MAC holds on every one of them, its address on the one of its own network.
            let ifaces =
                std::iter::once(p.name.as_str()).chain(p.trunk.iter().map(|t| t.device.as_str()));
            let mac = p.mac.to_string();
            for i in ifaces {
                guarded.elements.push(concat(&["\"", i, "\""]));
                port_mac.elements.push(concat(&["\"", i, "\" . ", &mac]));
            }
            if let Some(a) = p.ipv4 {
                let own = p.own_interface();
                ip_guarded.elements.push(concat(&["\"", own, "\""]));
                port_ip
                    .elements
                    .push(concat(&["\"", own, "\" . ", &ipv4_text(a.addr)]));
            }
        }
    }
    if guarded.elements.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut pre = Chain::base("prerouting", "filter", "prerouting", -300);
    pre.rules.push("iifname @guarded jump antispoof".into());
    let mut a = Chain::regular("antispoof".to_string());
    a.rules.extend(
        [
            // Only the port's own MAC, in the frame and in ARP.
            "iifname . ether saddr != @port_mac counter drop",
            "ether type arp iifname . arp saddr ether != @port_mac counter drop",
            // ARP probes (sender 0.0.0.0) are how a guest checks an address is free.
            "ether type arp arp saddr ip 0.0.0.0 accept",
            "ether type arp iifname @ip_guarded iifname . arp saddr ip != @port_ip counter drop",
            // A VM never answers as a DHCP server, nor advertises itself as an IPv6 router.
            "ether type ip udp sport 67 udp dport 68 counter drop",
            "ether type ip6 icmpv6 type nd-router-advert counter drop",
            // DHCP from an unconfigured client, then only the port's own address.
            "ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept",
            "ether type ip iifname @ip_guarded iifname . ip saddr != @port_ip counter drop",
        ]
        .map(String::from),
    );
    if spec.networks.values().any(|n| n.mode == Mode::Vlan) {
        // Without VLAN filtering a bridge forwards tagged frames as they are: a VM could
        // reach another VLAN (a trunk port's sub-interface on this bridge, or a double tag
        // on the wire) and would bypass the address checks above. A guarded port's VLANs
        // reach their bridges untagged (trunk sub-interfaces pop the tag first), so any tag
        // seen here is a VM trying to leave its VLAN.
        a.rules
            .insert(0, "ether type { vlan, 8021ad } counter drop".to_string());
    }
    (vec![guarded, port_mac, ip_guarded, port_ip], vec![pre, a])
}

fn build_chains(family: &str, chains: Vec<Chain>) -> impl Iterator<Item = (String, NftChain)> {
    chains.into_iter().map(move |c| {
        (
            key(family, &c.name),
            NftChain {
                family: family.to_string(),
                name: c.name,
                hook: c.hook,
                rules: c.rules.into_iter().map(NftRule::new).collect(),
            },
        )
    })
}

fn build_sets(family: &str, sets: Vec<Set>) -> impl Iterator<Item = (String, NftSet)> {
    sets.into_iter().map(move |s| {
        (
            key(family, &s.name),
            NftSet {
                family: family.to_string(),
                name: s.name.to_string(),
                ty: s.ty.to_string(),
                elements: s.elements.into_iter().collect(),
            },
        )
    })
}

/// kvmnet's whole ruleset (its `inet` and `bridge` tables) for a spec, or `None` when the
/// spec needs no rule.
pub fn table_for(spec: &Spec) -> Option<NftTable> {
    let (isets, ichains) = inet_parts(spec);
    let inet: Vec<Chain> = ichains
        .into_iter()
        .filter(|c| !c.rules.is_empty())
        .collect();
    let (bsets, bchains) = bridge_parts(spec);
    if inet.is_empty() && bchains.is_empty() {
        return None;
    }
    let mut t = NftTable::empty();
    // Collected rather than inserted one by one: a map built from a list is built in one
    // pass (a later duplicate key would win either way).
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    if !inet.is_empty() {
        t.families.insert(FAMILY.to_string());
        chains.extend(build_chains(FAMILY, inet));
        sets.extend(build_sets(FAMILY, isets));
    }
    if !bchains.is_empty() {
        t.families.insert(BRIDGE_FAMILY.to_string());
        chains.extend(build_chains(BRIDGE_FAMILY, bchains));
        sets.extend(build_sets(BRIDGE_FAMILY, bsets));
    }
    t.chains = chains.into_iter().collect();
    t.sets = sets.into_iter().collect();
    Some(t)
}

/// The nft script that turns whatever tables are live into `to` (or removes them), in one
/// transaction. `add` first so `delete` cannot fail on a missing table.
pub fn replace_script(to: Option<&NftTable>) -> String {
    let mut s = String::new();
    for fam in [FAMILY, BRIDGE_FAMILY] {
        s.push_str(&format!(
            "add table {fam} {TABLE}\ndelete table {fam} {TABLE}\n"
        ));
    }
    if let Some(t) = to {
        s.push_str(&t.text());
    }
    s
}

/// One change to one object of kvmnet's tables, when the tables are kvmnet's and only part
/// of them differs. Sets are made and removed empty; their elements are changes of their own,
/// so every change has an exact inverse and the order in [`diff`] holds both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NftChange {
    AddChain(NftChain),
    DelChain(NftChain),
    /// Same chain, other rules (or another hook): its rules are replaced.
    UpdateChain {
        from: NftChain,
        to: NftChain,
    },
    AddSet(NftSet),
    DelSet(NftSet),
    AddElement {
        family: String,
        set: String,
        element: String,
    },
    DelElement {
        family: String,
        set: String,
        element: String,
    },
}

impl NftChange {
    pub fn inverse(&self) -> NftChange {
        use NftChange::*;
        match self.clone() {
            AddChain(c) => DelChain(c),
            DelChain(c) => AddChain(c),
            UpdateChain { from, to } => UpdateChain { from: to, to: from },
            AddSet(s) => DelSet(s),
            DelSet(s) => AddSet(s),
            AddElement {
                family,
                set,
                element,
            } => DelElement {
                family,
                set,
                element,
            },
            DelElement {
                family,
                set,
                element,
            } => AddElement {
                family,
                set,
                element,
            },
        }
    }

    pub fn op(&self) -> &'static str {
        use NftChange::*;
        match self {
            AddChain(_) | AddSet(_) => "create",
            DelChain(_) | DelSet(_) => "delete",
            UpdateChain { .. } => "update",
            AddElement { .. } => "add",
            DelElement { .. } => "remove",
        }
    }

    pub fn object(&self) -> &'static str {
        use NftChange::*;
        match self {
            AddChain(_) | DelChain(_) | UpdateChain { .. } => "chain",
            AddSet(s) | DelSet(s) => s.keyword(),
            AddElement { .. } | DelElement { .. } => "element",
        }
    }

    pub fn family(&self) -> &str {
        use NftChange::*;
        match self {
            AddChain(c) | DelChain(c) | UpdateChain { to: c, .. } => &c.family,
            AddSet(s) | DelSet(s) => &s.family,
            AddElement { family, .. } | DelElement { family, .. } => family,
        }
    }

    /// `chain inet in-web1`, `map inet fw_in`, `element bridge guarded "web1"`.
    pub fn name(&self) -> String {
        use NftChange::*;
        let what = match self {
            AddChain(c) | DelChain(c) | UpdateChain { to: c, .. } => c.name.clone(),
            AddSet(s) | DelSet(s) => s.name.clone(),
            AddElement { set, element, .. } | DelElement { set, element, .. } => {
                format!("{set} {element}")
            }
        };
        format!("{} {} {what}", self.object(), self.family())
    }

    /// What the plan line adds after the name.
    pub fn detail(&self) -> String {
        use NftChange::*;
        match self {
            AddChain(c) => format!(" ({} rules)", c.rules.len()),
            UpdateChain { from, to } => {
                format!(": {} -> {} rules", from.rules.len(), to.rules.len())
            }
            AddSet(s) => format!(" (type {})", s.ty),
            _ => String::new(),
        }
    }

    /// The fields a JSON plan shows besides op, kind and name.
    pub fn json_fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        use NftChange::*;
        use serde_json::json;
        let rules =
            |c: &NftChain| json!(c.rules.iter().map(|r| r.text.clone()).collect::<Vec<_>>());
        let mut v = vec![
            ("object", json!(self.object())),
            ("family", json!(self.family())),
        ];
        match self {
            AddChain(c) | DelChain(c) => {
                v.push(("chain", json!(c.name)));
                v.push(("hook", json!(c.hook)));
                v.push(("rules", rules(c)));
            }
            UpdateChain { from, to } => {
                v.push(("chain", json!(to.name)));
                v.push(("hook", json!(to.hook)));
                v.push(("rules", rules(to)));
                v.push(("previous_rules", json!(from.rules.len())));
            }
            AddSet(s) | DelSet(s) => {
                v.push(("set", json!(s.name)));
                v.push(("type", json!(s.ty)));
            }
            AddElement { set, element, .. } | DelElement { set, element, .. } => {
                v.push(("set", json!(set)));
                v.push(("element", json!(element)));
            }
        }
        v
    }

    /// This change as nft commands. Adding a chain empties it first and removing one makes
    /// sure it exists, so a change retried after a failed transaction does not double rules.
    pub fn script(&self, s: &mut String) {
        use NftChange::*;
        let add_rules = |s: &mut String, c: &NftChain| {
            for r in &c.rules {
                let _ = writeln!(
                    s,
                    "add rule {} {TABLE} {} {}",
                    c.family,
                    c.name,
                    rule_line(r)
                );
            }
        };
        let add_chain = |s: &mut String, c: &NftChain| {
            match &c.hook {
                Some(h) => {
                    let _ = writeln!(s, "add chain {} {TABLE} {} {{ {h} }}", c.family, c.name);
                }
                None => {
                    let _ = writeln!(s, "add chain {} {TABLE} {}", c.family, c.name);
                }
            }
            let _ = writeln!(s, "flush chain {} {TABLE} {}", c.family, c.name);
            add_rules(s, c);
        };
        let del_chain = |s: &mut String, c: &NftChain| {
            let _ = writeln!(s, "add chain {} {TABLE} {}", c.family, c.name);
            let _ = writeln!(s, "flush chain {} {TABLE} {}", c.family, c.name);
            let _ = writeln!(s, "delete chain {} {TABLE} {}", c.family, c.name);
        };
        match self {
            AddChain(c) => add_chain(s, c),
            DelChain(c) => del_chain(s, c),
            UpdateChain { from, to } if from.hook == to.hook => {
                let _ = writeln!(s, "flush chain {} {TABLE} {}", to.family, to.name);
                add_rules(s, to);
            }
            UpdateChain { from, to } => {
                del_chain(s, from);
                add_chain(s, to);
            }
            AddSet(set) => {
                let _ = writeln!(
                    s,
                    "add {} {} {TABLE} {} {{ type {}; }}",
                    set.keyword(),
                    set.family,
                    set.name,
                    set.ty
                );
                if !set.elements.is_empty() {
                    let e: Vec<&str> = set.elements.iter().map(String::as_str).collect();
                    let _ = writeln!(
                        s,
                        "add element {} {TABLE} {} {{ {} }}",
                        set.family,
                        set.name,
                        e.join(", ")
                    );
                }
            }
            DelSet(set) => {
                let _ = writeln!(
                    s,
                    "delete {} {} {TABLE} {}",
                    set.keyword(),
                    set.family,
                    set.name
                );
            }
            AddElement {
                family,
                set,
                element,
            } => {
                let _ = writeln!(s, "add element {family} {TABLE} {set} {{ {element} }}");
            }
            DelElement {
                family,
                set,
                element,
            } => {
                // A map element is named by its key alone.
                let k = element.split(" : ").next().unwrap_or(element);
                let _ = writeln!(s, "delete element {family} {TABLE} {set} {{ {k} }}");
            }
        }
    }
}

impl std::fmt::Display for NftChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name(), self.detail())
    }
}

/// How the live tables become the wanted ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftPlan {
    Nothing,
    /// Replace both tables whole: they are missing, not kvmnet's, or go away.
    Replace,
    /// Change only what differs.
    Changes(Vec<NftChange>),
}

/// Whether `have` can be changed in place into `want`.
fn incremental(want: &NftTable, have: &NftTable) -> bool {
    have.intact
        && want.families == have.families
        && want
            .sets
            .iter()
            .all(|(k, s)| have.sets.get(k).is_none_or(|h| h.ty == s.ty))
}

pub fn diff(want: Option<&NftTable>, have: Option<&NftTable>) -> NftPlan {
    let (want, have) = match (want, have) {
        (None, None) => return NftPlan::Nothing,
        (Some(w), Some(h)) if incremental(w, h) => (w, h),
        _ => return NftPlan::Replace,
    };
    let empty = BTreeSet::new();
    let mut del_elements = Vec::new();
    let mut add_elements = Vec::new();
    let keys: BTreeSet<&String> = want.sets.keys().chain(have.sets.keys()).collect();
    for k in &keys {
        let (w, h) = (want.sets.get(*k), have.sets.get(*k));
        let set = w.or(h).expect("in one of them");
        let we = w.map_or(&empty, |s| &s.elements);
        let he = h.map_or(&empty, |s| &s.elements);
        for e in he.difference(we) {
            del_elements.push(NftChange::DelElement {
                family: set.family.clone(),
                set: set.name.clone(),
                element: e.clone(),
            });
        }
        for e in we.difference(he) {
            add_elements.push(NftChange::AddElement {
                family: set.family.clone(),
                set: set.name.clone(),
                element: e.clone(),
            });
        }
    }
    let bare = |s: &NftSet| NftSet {
        elements: BTreeSet::new(),
        ..s.clone()
    };
    let add_sets = want
        .sets
        .iter()
        .filter(|(k, _)| !have.sets.contains_key(*k))
        .map(|(_, s)| NftChange::AddSet(bare(s)));
    let del_sets = have
        .sets
        .iter()
        .filter(|(k, _)| !want.sets.contains_key(*k))
        .map(|(_, s)| NftChange::DelSet(bare(s)));
    let mut add_chains: Vec<&NftChain> = want
        .chains
        .iter()
        .filter(|(k, _)| !have.chains.contains_key(*k))
        .map(|(_, c)| c)
        .collect();
    // Jump targets before the chains that jump; removed in the opposite order.
    add_chains.sort_by_key(|c| c.hook.is_some());
    let mut del_chains: Vec<&NftChain> = have
        .chains
        .iter()
        .filter(|(k, _)| !want.chains.contains_key(*k))
        .map(|(_, c)| c)
        .collect();
    del_chains.sort_by_key(|c| c.hook.is_none());
    let updates = want.chains.iter().filter_map(|(k, w)| {
        let h = have.chains.get(k)?;
        (!w.same(h)).then(|| NftChange::UpdateChain {
            from: h.clone(),
            to: w.clone(),
        })
    });
    let mut out = del_elements;
    out.extend(add_sets);
    out.extend(add_chains.into_iter().cloned().map(NftChange::AddChain));
    out.extend(updates);
    out.extend(del_chains.into_iter().cloned().map(NftChange::DelChain));
    out.extend(del_sets);
    out.extend(add_elements);
    if out.is_empty() {
        NftPlan::Nothing
    } else {
        NftPlan::Changes(out)
    }
}

/// Which observed chains must be read back as text, for `want` to be reachable and every
/// change undoable: all of them when the tables get replaced whole (`None`), else the ones
/// that change or go away.
pub fn chains_to_read(want: Option<&NftTable>, have: &NftTable) -> Option<Vec<String>> {
    let want = want.filter(|w| incremental(w, have))?;
    Some(
        have.chains
            .iter()
            .filter(|(k, h)| want.chains.get(*k).is_none_or(|w| !w.same(h)))
            .map(|(k, _)| k.clone())
            .collect(),
    )
}

/// The rules of each chain in nft's listing of one table, with the hashes their comments
/// carry (empty for a rule without one).
pub fn parse_listing(text: &str) -> BTreeMap<String, Vec<NftRule>> {
    let mut out: BTreeMap<String, Vec<NftRule>> = BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            out.entry(name.clone()).or_default();
            chain = Some(name);
        } else if t == "}" {
            chain = None;
        } else if let Some(c) = &chain
            && !t.is_empty()
            && !t.starts_with("type ")
            && !t.starts_with("policy ")
            && !t.starts_with("comment ")
        {
            let rule = match t.rfind(" comment \"") {
                Some(i) if t.ends_with('"') => NftRule {
                    hash: t[i + 10..t.len() - 1].to_string(),
                    text: t[..i].to_string(),
                },
                _ => NftRule {
                    hash: String::new(),
                    text: t.to_string(),
                },
            };
            out.entry(c.clone()).or_default().push(rule);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_texts_match_display() {
        for a in ["0.0.0.0", "10.160.1.2", "192.168.100.255", "1.22.100.9"] {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            assert_eq!(ipv4_text(ip), ip.to_string());
        }
        assert_eq!(concat(&["a", "", "bc"]), "abc");
    }

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

    #[test]
    fn listing_rules_and_hashes() {
        let listing = "table inet kvmnet {\n\tcomment \"kvmnet v2\"\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"b\" accept comment \"00aa\"\n\t\toifname \"b\" reject\n\t}\n\tmap fw_in {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 10.0.0.2 : jump in-x }\n\t}\n}\n";
        let rules = parse_listing(listing);
        assert_eq!(
            rules["forward"],
            vec![
                NftRule {
                    hash: "00aa".into(),
                    text: "iifname \"b\" accept".into()
                },
                NftRule {
                    hash: String::new(),
                    text: "oifname \"b\" reject".into()
                }
            ]
        );
        assert_eq!(rules.len(), 1);
    }

    fn chain(name: &str, rules: &[&str]) -> NftChain {
        NftChain {
            family: FAMILY.into(),
            name: name.into(),
            hook: None,
            rules: rules.iter().map(|r| NftRule::new(r.to_string())).collect(),
        }
    }

    #[test]
    fn diff_touches_only_what_differs() {
        let mut t = NftTable {
            families: [FAMILY.to_string()].into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            intact: true,
            listing: None,
        };
        t.chains
            .insert("inet in-a".into(), chain("in-a", &["counter drop"]));
        t.sets.insert(
            "inet fw_in".into(),
            NftSet {
                family: FAMILY.into(),
                name: "fw_in".into(),
                ty: "ipv4_addr : verdict".into(),
                elements: ["10.0.0.2 : jump in-a".to_string()].into(),
            },
        );
        let mut w = t.clone();
        w.chains
            .insert("inet in-b".into(), chain("in-b", &["counter drop"]));
        w.sets
            .get_mut("inet fw_in")
            .unwrap()
            .elements
            .insert("10.0.0.3 : jump in-b".into());
        let NftPlan::Changes(c) = diff(Some(&w), Some(&t)) else {
            panic!("expected changes");
        };
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[0], NftChange::AddChain(x) if x.name == "in-b"));
        assert!(matches!(&c[1], NftChange::AddElement { element, .. } if element.contains("in-b")));
        let mut s = String::new();
        c[0].script(&mut s);
        assert!(s.contains("add rule inet kvmnet in-b counter drop comment"));
        assert_eq!(diff(Some(&t), Some(&t)), NftPlan::Nothing);
        let mut broken = t.clone();
        broken.intact = false;
        assert_eq!(diff(Some(&t), Some(&broken)), NftPlan::Replace);
    }
}
