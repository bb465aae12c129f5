//! What each routed network (nat, routed, isolated) lets in and out, what its guests may
//! reach on the host, and its NAT.
//!
//! Forwarded traffic passes two checks, through maps keyed by interface: what may leave the
//! network it comes from (`net_from` -> `from-NET`) and what may enter the network it goes
//! to (`net_to` -> `to-NET`). Each check ends in a reject, and only traffic that both let
//! through goes on, so no network's accept can open another network: the result does not
//! depend on the order of names. Traffic between two ports of one bridge (seen here through
//! br_netfilter, or routed back by the host) is decided by `from-NET` alone.
//!
//! Guests reach the host (`input`, through `host_in` -> `host-NET`) only for DHCP, ICMP
//! echo to the gateway, the IPv6 neighbour discovery the bridge needs, and what the
//! network's `host_access` lists. Bridge, vlan, vxlan and direct networks are L2 segments
//! of a LAN: none of this applies to them.

use super::firewall::rule_matches;
use super::{Base, FAMILY, Parts, Set, concat};
use crate::spec::{FirewallRule, Mode, Network, RuleAction, RuleProto};

fn q(name: &str) -> String {
    concat(&["\"", name, "\""])
}

/// What may leave `net` through the host: rules of `from-NET`.
fn from_rules(net: &Network) -> Vec<String> {
    let br = q(&net.bridge);
    let mut r = Vec::new();
    if net.isolate_ports {
        // Ports of an isolated bridge cannot reach each other at L2; a guest that sends
        // another guest's packets to the gateway's MAC would have the host route them back
        // onto the bridge. Only a port forward (DNAT) to a guest of the same network may.
        r.push(format!("oifname {br} ct status dnat return"));
        r.push(format!("oifname {br} counter drop"));
    } else {
        r.push(format!("oifname {br} return"));
    }
    if let Some(gw) = net.ipv4 {
        let subnet = gw.network();
        match net.mode {
            Mode::Nat => {
                let egress = net
                    .nat_egress
                    .as_ref()
                    .map_or(String::new(), |e| format!(" oifname {}", q(e)));
                r.push(format!("ip saddr {subnet}{egress} return"));
            }
            Mode::Routed => r.push(format!("ip saddr {subnet} return")),
            _ => {}
        }
    }
    r.push("counter reject".into());
    r
}

/// What may enter `net` through the host: rules of `to-NET`.
fn to_rules(net: &Network) -> Vec<String> {
    let br = q(&net.bridge);
    let mut r = vec![format!("iifname {br} return")];
    if let Some(gw) = net.ipv4 {
        let subnet = gw.network();
        match net.mode {
            Mode::Nat => {
                let egress = net
                    .nat_egress
                    .as_ref()
                    .map_or(String::new(), |e| format!("iifname {} ", q(e)));
                r.push(format!(
                    "{egress}ip daddr {subnet} ct state established,related return"
                ));
                if !net.forwards.is_empty() {
                    // Forwarded ports: connections translated towards a guest may come in.
                    r.push(format!("ip daddr {subnet} ct status dnat return"));
                }
            }
            Mode::Routed => r.push(format!("ip daddr {subnet} return")),
            _ => {}
        }
    }
    r.push("counter reject".into());
    r
}

fn host_verdict(a: RuleAction) -> &'static str {
    match a {
        RuleAction::Accept => "accept",
        RuleAction::Drop => "drop",
        RuleAction::Reject => "reject",
    }
}

/// One `host_access` rule, as the rules of `host-NET` (one per family it covers).
fn host_access_rules(rule: &FirewallRule) -> Vec<String> {
    let mut out = Vec::new();
    for m in rule_matches(rule) {
        let sep = if m.is_empty() { "" } else { " " };
        if let Some(n) = rule.connlimit {
            out.push(format!(
                "{m}{sep}ct state new ct count over {n} counter reject"
            ));
        }
        if let Some((n, unit)) = &rule.rate {
            let new = if rule.proto == RuleProto::Icmp {
                ""
            } else {
                "ct state new "
            };
            out.push(format!(
                "{m}{sep}{new}limit rate over {n}/{unit} burst {n} packets counter drop"
            ));
        }
        if rule.log {
            out.push(format!(
                r#"{m}{sep}limit rate 10/second burst 20 packets log prefix "kvmnet host: " level info"#
            ));
        }
        out.push(format!("{m}{sep}counter {}", host_verdict(rule.action)));
    }
    out
}

/// What guests of `net` may reach on the host: rules of `host-NET`.
fn host_rules(net: &Network) -> Vec<String> {
    let mut r = vec![
        "ct state established,related accept".to_string(),
        "ct state invalid drop".to_string(),
        // The bridge's IPv6 needs neighbour discovery and listener reports like any link.
        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, mld-listener-report, mld-listener-reduction, mld2-listener-report } accept".to_string(),
    ];
    if net.dhcp.is_some() {
        r.push("udp sport 68 udp dport 67 accept".into());
    }
    if let Some(gw) = net.ipv4 {
        r.push(format!(
            "ip daddr {} icmp type echo-request accept",
            gw.addr
        ));
    }
    // The gateway's IPv6 address is the bridge's link-local one.
    r.push("ip6 daddr fe80::/64 icmpv6 type echo-request accept".into());
    for rule in &net.host_access {
        r.extend(host_access_rules(rule));
    }
    r.push("counter drop".into());
    r
}

fn nat_rules(net: &Network, out: &mut Parts) {
    let Some(gw) = net.ipv4 else { return };
    let br = &net.bridge;
    let subnet = gw.network();
    for fw in &net.forwards {
        // To any of the host's own addresses, from outside and from the host itself.
        let rule = format!(
            "fib daddr type local {} dport {} dnat ip to {}:{}",
            fw.proto.as_str(),
            fw.port,
            fw.to_ip,
            fw.to_port
        );
        out.hook(Base::NatPre, rule.clone());
        out.hook(Base::NatOutput, rule);
    }
    // No translation towards local multicast and broadcast (DHCP, mDNS, ...).
    out.hook(
        Base::NatPost,
        format!("ip saddr {subnet} ip daddr 224.0.0.0/24 return"),
    );
    out.hook(
        Base::NatPost,
        format!("ip saddr {subnet} ip daddr 255.255.255.255 return"),
    );
    let egress = match &net.nat_egress {
        Some(e) => format!("oifname {}", q(e)),
        None => format!("oifname != {}", q(br)),
    };
    out.hook(
        Base::NatPost,
        format!("ip saddr {subnet} ip daddr != {subnet} {egress} masquerade"),
    );
    if !net.forwards.is_empty() {
        // A guest reaching a forward of its own network (hairpin): the answer must come back
        // through the host, not straight from the other guest.
        out.hook(
            Base::NatPost,
            format!(
                "ip saddr {subnet} oifname {} ct status dnat masquerade",
                q(br)
            ),
        );
    }
}

pub(super) fn parts(spec: &crate::spec::Spec) -> Parts {
    let mut out = Parts::default();
    let mut from = Set::new("net_from", "ifname : verdict");
    let mut to = Set::new("net_to", "ifname : verdict");
    let mut host = Set::new("host_in", "ifname : verdict");
    for (name, net) in &spec.networks {
        // L2 segments of a LAN (an uplink's, a VLAN, an overlay): no routing of their own.
        if !matches!(net.mode, Mode::Nat | Mode::Routed | Mode::Isolated) {
            continue;
        }
        let br = q(&net.bridge);
        for (set, word, rules) in [
            (&mut from, "from-", from_rules(net)),
            (&mut to, "to-", to_rules(net)),
            (&mut host, "host-", host_rules(net)),
        ] {
            let chain = concat(&[word, name]);
            set.elements.push(concat(&[&br, " : jump ", &chain]));
            out.chain(FAMILY, chain, rules);
        }
        if net.mode == Mode::Nat {
            nat_rules(net, &mut out);
        }
    }
    if from.elements.is_empty() {
        return out;
    }
    out.hook(Base::InetForward, "iifname vmap @net_from");
    out.hook(Base::InetForward, "oifname vmap @net_to");
    out.hook(Base::InetInput, "iifname vmap @host_in");
    for s in [from, to, host] {
        out.set(FAMILY, s);
    }
    out
}
