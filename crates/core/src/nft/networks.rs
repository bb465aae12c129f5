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
//! Guests reach the host (`input`, through `host_in` -> `host-NET`) only for DHCP, DNS to
//! the gateway where the network has `dns`, ICMP echo to the gateway, the IPv6 neighbour discovery the bridge needs, and what the
//! network's `host_access` lists. Bridge, vlan, vxlan and direct networks are L2 segments
//! of a LAN: none of this applies to them.

use super::firewall::rule_matches;
use super::{Base, FAMILY, Parts, Set, concat};
use crate::spec::{FirewallRule, Network, RuleAction, RuleProto};

use super::quoted as q;

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
        r.extend(net.mode.behaviour().leaving(net, gw.network()));
    }
    if let Some(v6) = net.ipv6 {
        r.extend(net.mode.behaviour().leaving6(net, v6.prefix()));
    }
    r.push("counter reject".into());
    r
}

/// What may enter `net` through the host: rules of `to-NET`.
fn to_rules(net: &Network) -> Vec<String> {
    let br = q(&net.bridge);
    let mut r = vec![format!("iifname {br} return")];
    if let Some(gw) = net.ipv4 {
        r.extend(net.mode.behaviour().entering(net, gw.network()));
    }
    if let Some(v6) = net.ipv6 {
        r.extend(net.mode.behaviour().entering6(net, v6.prefix()));
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

/// DNS to the gateway's addresses (UDP and TCP 53), only where kvmnet answers it (`dns`):
/// elsewhere nothing listens, and a guest has no business with the host's port 53.
fn dns_rules(net: &Network) -> Vec<String> {
    if net.dns.is_none() {
        return Vec::new();
    }
    crate::spec::dns::listen_addrs(net)
        .iter()
        .map(|a| {
            let family = if a.is_ipv4() { "ip" } else { "ip6" };
            format!("{family} daddr {a} meta l4proto {{ tcp, udp }} th dport 53 accept")
        })
        .collect()
}

/// Whether the daemon's DHCPv6 server serves `net` (see `kvmnet::dhcp::v6::scopes`).
fn serves_dhcp6(net: &Network) -> bool {
    net.ipv6
        .is_some_and(|v6| net.dhcp.is_some() || v6.ra.mode.managed())
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
    if serves_dhcp6(net) {
        // The DHCPv6 server's clients: link-local to the servers' group, 546 -> 547.
        r.push("ip6 saddr fe80::/10 ip6 daddr ff02::1:2 udp sport 546 udp dport 547 accept".into());
    }
    if let Some(gw) = net.ipv4 {
        r.push(format!(
            "ip daddr {} icmp type echo-request accept",
            gw.addr
        ));
    }
    r.extend(dns_rules(net));
    // The gateway's IPv6 addresses: the bridge's link-local one, and its `ipv6`.
    r.push("ip6 daddr fe80::/64 icmpv6 type echo-request accept".into());
    if let Some(v6) = net.ipv6 {
        r.push(format!(
            "ip6 daddr {} icmpv6 type echo-request accept",
            v6.gateway.addr
        ));
    }
    for rule in &net.host_access {
        r.extend(host_access_rules(rule));
    }
    r.push("counter drop".into());
    r
}

pub(super) fn parts(spec: &crate::spec::Spec) -> Parts {
    let mut out = Parts::default();
    let mut from = Set::new("net_from", "ifname : verdict");
    let mut to = Set::new("net_to", "ifname : verdict");
    let mut host = Set::new("host_in", "ifname : verdict");
    for (name, net) in &spec.networks {
        // L2 segments of a LAN (an uplink's, a VLAN, an overlay): no routing of their own.
        if !net.mode.routed_by_host() {
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
        if let Some(gw) = net.ipv4 {
            net.mode
                .behaviour()
                .translation(net, gw.network(), &mut out);
        }
        if let Some(v6) = net.ipv6 {
            net.mode
                .behaviour()
                .translation6(net, v6.prefix(), &mut out);
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
