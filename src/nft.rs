//! kvmnet's nftables ruleset: what the networks and ports of a spec need, as an nft script.
//!
//! kvmnet owns exactly two tables, `inet kvmnet` (forwarding policy, NAT) and `bridge kvmnet`
//! (anti-spoofing at the bridge), and never lists, changes or deletes any other. Both are
//! replaced together in one nft transaction (`add; delete; define`), so a half-written
//! firewall is never visible. Their comments carry a hash of the definition, which is how a
//! later run tells whether the live tables still are what kvmnet wrote.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::spec::naming::fnv1a;
use crate::spec::{FirewallDirection, Mode, Port, RuleAction, RuleProto, Spec};

pub const FAMILY: &str = "inet";
pub const BRIDGE_FAMILY: &str = "bridge";
pub const TABLE: &str = "kvmnet";

/// A table definition with the rule count of each chain. `shape` lets observation notice a
/// table whose comment survived but whose rules were flushed by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    pub hash: String,
    pub shape: Vec<(String, usize)>,
    /// The full `table inet kvmnet { ... }` text: ours when desired, nft's listing when observed.
    pub text: String,
}

impl NftTable {
    /// Whether the live table matches this one. Text is not compared: nft rewrites rules in
    /// its own canonical form when listing them.
    pub fn same(&self, other: &NftTable) -> bool {
        self.hash == other.hash && self.shape == other.shape
    }
}

struct Chain {
    name: String,
    /// Base chains have a hook line; regular chains (jump targets) none.
    header: Option<&'static str>,
    rules: Vec<String>,
}

impl Chain {
    fn base(name: &'static str, header: &'static str) -> Chain {
        Chain {
            name: name.to_string(),
            header: Some(header),
            rules: Vec::new(),
        }
    }
    fn regular(name: String) -> Chain {
        Chain {
            name,
            header: None,
            rules: Vec::new(),
        }
    }
}

/// A named set with its type and elements, written inline in its table.
struct Set {
    name: &'static str,
    ty: &'static str,
    elements: Vec<String>,
}

fn render_table(family: &str, sets: &[Set], chains: &[Chain], hash: &str) -> String {
    let mut t = format!("table {family} {TABLE} {{\n\tcomment \"{TABLE} {hash}\"\n");
    // Jump targets first, then the maps that name them, then the hooks that use the maps.
    let (regular, base): (Vec<&Chain>, Vec<&Chain>) =
        chains.iter().partition(|c| c.header.is_none());
    let chain = |t: &mut String, c: &Chain| {
        let _ = writeln!(t, "\tchain {} {{", c.name);
        if let Some(h) = c.header {
            let _ = writeln!(t, "\t\t{h}");
        }
        for r in &c.rules {
            let _ = writeln!(t, "\t\t{r}");
        }
        let _ = writeln!(t, "\t}}");
    };
    for c in &regular {
        chain(&mut t, c);
    }
    for s in sets {
        let keyword = if s.ty.contains(" : ") { "map" } else { "set" };
        let _ = writeln!(t, "\t{keyword} {} {{\n\t\ttype {}", s.name, s.ty);
        if !s.elements.is_empty() {
            let _ = writeln!(t, "\t\telements = {{ {} }}", s.elements.join(", "));
        }
        let _ = writeln!(t, "\t}}");
    }
    for c in &base {
        chain(&mut t, c);
    }
    t.push_str("}\n");
    t
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

/// Per-port firewalls: a chain per port and direction, found through maps keyed by the VM's
/// address (anti-spoofing makes the source address a reliable name for the port), so the
/// per-packet cost is one lookup however many ports there are.
fn firewall_parts(spec: &Spec) -> (Vec<Set>, Vec<Chain>) {
    let mut fw_in = Set {
        name: "fw_in",
        ty: "ipv4_addr : verdict",
        elements: Vec::new(),
    };
    let mut fw_out = Set {
        name: "fw_out",
        ty: "ipv4_addr : verdict",
        elements: Vec::new(),
    };
    let mut chains = Vec::new();
    for vm in spec.vms.values() {
        for p in &vm.ports {
            let (Some(fw), Some(addr)) = (&p.firewall, p.ipv4) else {
                continue;
            };
            if let Some(d) = &fw.inbound {
                let name = format!("in-{}", p.name);
                fw_in.elements.push(format!("{} : jump {name}", addr.addr));
                chains.push(firewall_chain(name, p, d, true));
            }
            if let Some(d) = &fw.outbound {
                let name = format!("out-{}", p.name);
                fw_out.elements.push(format!("{} : jump {name}", addr.addr));
                chains.push(firewall_chain(name, p, d, false));
            }
        }
    }
    if chains.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut input = Chain::base(
        "input",
        "type filter hook input priority filter; policy accept;",
    );
    input.rules.push("ip saddr vmap @fw_out".into());
    let mut output = Chain::base(
        "output-filter",
        "type filter hook output priority filter; policy accept;",
    );
    output.rules.push("ip daddr vmap @fw_in".into());
    chains.push(input);
    chains.push(output);
    (vec![fw_in, fw_out], chains)
}

/// The inet table: per-port firewalls, then forwarding policy and NAT of each network.
fn inet_parts(spec: &Spec) -> (Vec<Set>, Vec<Chain>) {
    let (sets, mut chains) = firewall_parts(spec);
    let mut forward = Chain::base(
        "forward",
        "type filter hook forward priority filter; policy accept;",
    );
    if !sets.is_empty() {
        forward.rules.push("ip saddr vmap @fw_out".into());
        forward.rules.push("ip daddr vmap @fw_in".into());
    }
    let mut postrouting = Chain::base(
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    );
    let mut prerouting = Chain::base(
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    );
    let mut output = Chain::base(
        "output",
        "type nat hook output priority -100; policy accept;",
    );
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
        name: "guarded",
        ty: "ifname",
        elements: Vec::new(),
    };
    let mut port_mac = Set {
        name: "port_mac",
        ty: "ifname . ether_addr",
        elements: Vec::new(),
    };
    let mut ip_guarded = Set {
        name: "ip_guarded",
        ty: "ifname",
        elements: Vec::new(),
    };
    let mut port_ip = Set {
        name: "port_ip",
        ty: "ifname . ipv4_addr",
        elements: Vec::new(),
    };
    for vm in spec.vms.values() {
        for p in vm.ports.iter().filter(|p| p.antispoof) {
            // A trunk port's VLANs reach their bridges through its sub-interfaces: the VM's
            // MAC holds on every one of them, its address on the one of its own network.
            let ifaces =
                std::iter::once(p.name.as_str()).chain(p.trunk.iter().map(|t| t.device.as_str()));
            for i in ifaces {
                guarded.elements.push(format!(r#""{i}""#));
                port_mac.elements.push(format!(r#""{i}" . {}"#, p.mac));
            }
            if let Some(a) = p.ipv4 {
                let own = p.own_interface();
                ip_guarded.elements.push(format!(r#""{own}""#));
                port_ip.elements.push(format!(r#""{own}" . {}"#, a.addr));
            }
        }
    }
    if guarded.elements.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let mut pre = Chain::base(
        "prerouting",
        "type filter hook prerouting priority -300; policy accept;",
    );
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

/// kvmnet's whole ruleset (its `inet` and `bridge` tables) for a spec, or `None` when the
/// spec needs no rule. Both tables carry the same hash in their comment.
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
    // The hash covers everything but itself: render once with a placeholder.
    let mut body = String::new();
    if !inet.is_empty() {
        body.push_str(&render_table(FAMILY, &isets, &inet, ""));
    }
    if !bchains.is_empty() {
        body.push_str(&render_table(BRIDGE_FAMILY, &bsets, &bchains, ""));
    }
    let hash = format!("{:016x}", fnv1a(body.as_bytes()));
    let mut text = String::new();
    let mut shape = Vec::new();
    if !inet.is_empty() {
        text.push_str(&render_table(FAMILY, &isets, &inet, &hash));
        shape.extend(
            inet.iter()
                .map(|c| (format!("{FAMILY} {}", c.name), c.rules.len())),
        );
    }
    if !bchains.is_empty() {
        text.push_str(&render_table(BRIDGE_FAMILY, &bsets, &bchains, &hash));
        shape.extend(
            bchains
                .iter()
                .map(|c| (format!("{BRIDGE_FAMILY} {}", c.name), c.rules.len())),
        );
    }
    shape.sort();
    Some(NftTable { hash, shape, text })
}

/// The nft script that turns whatever table is live into `to` (or removes it), in one
/// transaction. `add` first so `delete` cannot fail on a missing table.
pub fn replace_script(to: Option<&NftTable>) -> String {
    let mut s = String::new();
    for fam in [FAMILY, BRIDGE_FAMILY] {
        s.push_str(&format!(
            "add table {fam} {TABLE}\ndelete table {fam} {TABLE}\n"
        ));
    }
    if let Some(t) = to {
        s.push_str(&t.text);
    }
    s
}

/// Reads nft's listing of one of our tables back. Tolerant: anything it cannot recognise
/// makes the table look different, which only causes a rewrite.
pub fn parse_listing(text: &str) -> NftTable {
    let mut hash = String::new();
    let mut shape: Vec<(String, usize)> = Vec::new();
    let mut in_chain = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("comment \"") {
            if !in_chain
                && let Some(h) = rest
                    .trim_end_matches('"')
                    .strip_prefix(&format!("{TABLE} "))
            {
                hash = h.to_string();
            }
        } else if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            shape.push((name, 0));
            in_chain = true;
        } else if t == "}" {
            in_chain = false;
        } else if in_chain
            && !t.is_empty()
            && !t.starts_with("type ")
            && !t.starts_with("policy ")
            && !t.starts_with("comment ")
            && let Some(last) = shape.last_mut()
        {
            last.1 += 1;
        }
    }
    NftTable {
        hash,
        shape,
        text: text.to_string(),
    }
}

/// Combines the listings of our tables (by family) into one observed ruleset; `None` when
/// none of them exists. Tables whose hashes disagree were not written together: the result
/// then matches nothing and gets rewritten.
pub fn parse_listings(listings: &[(&str, String)]) -> Option<NftTable> {
    if listings.is_empty() {
        return None;
    }
    let mut hash: Option<String> = None;
    let mut shape = Vec::new();
    let mut text = String::new();
    for (family, listing) in listings {
        let t = parse_listing(listing);
        hash = match hash {
            None => Some(t.hash.clone()),
            Some(h) if h == t.hash => Some(h),
            Some(_) => Some(String::from("(mismatch)")),
        };
        shape.extend(
            t.shape
                .into_iter()
                .map(|(c, n)| (format!("{family} {c}"), n)),
        );
        text.push_str(listing);
    }
    shape.sort();
    Some(NftTable {
        hash: hash.unwrap_or_default(),
        shape,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_round_trip_shape() {
        let listing = "table inet kvmnet {\n\tcomment \"kvmnet abc\"\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"b\" accept\n\t\toifname \"b\" reject\n\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n";
        let t = parse_listing(listing);
        assert_eq!(t.hash, "abc");
        assert_eq!(
            t.shape,
            vec![("forward".to_string(), 2), ("postrouting".to_string(), 0)]
        );
    }
}
