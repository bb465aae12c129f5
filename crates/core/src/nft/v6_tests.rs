//! IPv6 of nat, routed and isolated networks in the ruleset: what leaves and enters per mode,
//! NAT66 and its switch, port forwards over IPv6, and the addresses the guard and the
//! firewall know for a port.

use super::*;

fn table(yaml: &str) -> NftTable {
    let id = crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host")
        .unwrap();
    let spec = crate::spec::parse(yaml, &id).unwrap_or_else(|e| panic!("{e:?}"));
    table_for(&spec).expect("a table")
}

fn text(yaml: &str) -> String {
    table(yaml).text()
}

fn spec(mode: &str, extra: &str) -> String {
    format!(
        "version: 1\nnetworks:\n  n:\n    mode: {mode}\n    bridge: br6\n    ipv4: 10.9.0.1/24\n    ipv6: fd00:9::1/64\n{extra}vms:\n  a:\n    ports:\n      - {{ network: n, name: a0, mac: \"52:54:00:00:00:0a\", ipv4: 10.9.0.10, ipv6: \"fd00:9::10\", firewall: {{ inbound: {{ policy: drop }} }} }}\n"
    )
}

/// The rules of chain `name` in the listing.
fn chain<'a>(t: &'a str, name: &str) -> Vec<&'a str> {
    let start = t
        .find(&format!("chain {name} {{"))
        .unwrap_or_else(|| panic!("no chain {name} in\n{t}"));
    t[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim() != "}")
        .map(|l| l.trim().split(" comment \"").next().unwrap_or(""))
        .collect()
}

#[test]
fn nat_lets_its_prefix_out_masqueraded_and_only_answers_in() {
    let t = text(&spec("nat", ""));
    assert!(chain(&t, "from-n").contains(&"ip6 saddr fd00:9::/64 return"));
    assert!(
        chain(&t, "to-n").contains(&"ip6 daddr fd00:9::/64 ct state established,related return")
    );
    assert!(t.contains(
        "ip6 saddr fd00:9::/64 ip6 daddr != fd00:9::/64 ip6 daddr != ff00::/8 oifname != \"br6\" masquerade"
    ));
}

#[test]
fn nat_ipv6_false_routes_the_prefix_without_translation() {
    let t = text(&spec("nat", "    nat: { ipv6: false }\n"));
    assert!(chain(&t, "from-n").contains(&"ip6 saddr fd00:9::/64 return"));
    assert!(
        !t.contains("ip6 saddr fd00:9::/64 ip6 daddr != fd00:9::/64"),
        "{t}"
    );
    // IPv4 is still masqueraded.
    assert!(t.contains("ip saddr 10.9.0.0/24 ip daddr != 10.9.0.0/24"));
}

#[test]
fn routed_forwards_both_ways_without_translation() {
    let t = text(&spec("routed", ""));
    assert!(chain(&t, "from-n").contains(&"ip6 saddr fd00:9::/64 return"));
    assert!(chain(&t, "to-n").contains(&"ip6 daddr fd00:9::/64 return"));
    assert!(!t.contains("masquerade"));
}

#[test]
fn isolated_forwards_nothing() {
    let t = text(&spec("isolated", ""));
    for c in ["from-n", "to-n"] {
        assert!(!chain(&t, c).iter().any(|r| r.contains("fd00:9::")), "{c}");
        assert_eq!(chain(&t, c).last(), Some(&"counter reject"));
    }
    // Echo to the gateway's IPv6 address, as to its IPv4 one.
    assert!(chain(&t, "host-n").contains(&"ip6 daddr fd00:9::1 icmpv6 type echo-request accept"));
}

#[test]
fn forwards_reach_a_guest_with_ipv6_over_both_families() {
    let t = text(&spec(
        "nat",
        "    forwards: [ { proto: tcp, port: 8080, to: a, to_port: 80 } ]\n",
    ));
    assert!(t.contains("fib daddr type local tcp dport 8080 dnat ip to 10.9.0.10:80"));
    assert!(t.contains("fib daddr type local tcp dport 8080 dnat ip6 to [fd00:9::10]:80"));
    assert!(chain(&t, "to-n").contains(&"ip6 daddr fd00:9::/64 ct status dnat return"));
}

#[test]
fn the_guard_and_the_firewall_know_the_ports_ipv6_addresses() {
    let t = text(&spec("nat", ""));
    let mac: crate::spec::Mac = crate::spec::Mac([0x52, 0x54, 0, 0, 0, 0x0a]);
    let slaac = mac.slaac("fd00:9::".parse().unwrap()).to_string();
    let ll = mac.link_local().to_string();
    for a in [&slaac, &ll, &"fd00:9::10".to_string()] {
        assert!(t.contains(&format!("\"a0\" . {a}")), "guard lacks {a}");
        assert!(t.contains(&format!("{a} : jump")), "in_policy6 lacks {a}");
    }
    // Nothing else of the prefix.
    assert!(!t.contains("\"a0\" . fd00:9::11"));
}

/// A port without `ipv6` may use the DHCPv6 pool the server hands out, by source and as
/// neighbour discovery target; a port that declares one may not, and neither may any port
/// where RAs send guests to SLAAC only (the server hands out no pool there).
#[test]
fn the_guard_allows_the_dhcpv6_pool_to_ports_without_ipv6() {
    let pool = "    ra: { mode: dhcpv6 }\n    dhcp: { range6: fd00:9::1000-fd00:9::1fff }\n";
    let b = "      - { network: n, name: b0, mac: \"52:54:00:00:00:0b\" }\n";
    let t = text(&format!("{}{b}", spec("nat", pool)));
    assert!(t.contains("\"b0\" . fd00:9::1000-fd00:9::1fff"), "{t}");
    assert!(
        t.contains(
            "\"b0\" . 0xfd000009000000000000000000001000-0xfd000009000000000000000000001fff"
        ),
        "{t}"
    );
    assert!(
        !t.contains("\"a0\" . fd00:9::1000-"),
        "a0 declares its ipv6: {t}"
    );
    assert!(t.contains("typeof iifname . ip6 saddr; flags interval"));
    let g = chain(&t, "guard-ip6");
    assert!(g.contains(&"iifname . ip6 saddr != @port_ip6 iifname . ip6 saddr != @pool_ip6 counter goto guard-drop-ip"));
    assert!(g.contains(
        &"ip6 saddr :: icmpv6 type nd-neighbor-solicit iifname . @th,64,128 @pool_nd_target return"
    ));
    // Where RAs say SLAAC only, there is no pool to allow.
    let slaac = text(&format!(
        "{}{b}",
        spec("nat", "    dhcp: { pool: false }\n")
    ));
    assert!(!slaac.contains("\"b0\" . fd00:9::1000"), "{slaac}");
    // Adding such a port adds set elements, nothing else.
    let (one, two) = (
        table(&spec("nat", pool)),
        table(&format!("{}{b}", spec("nat", pool))),
    );
    let NftPlan::Changes(c) = diff(Some(&two), Some(&one)) else {
        panic!("changes expected")
    };
    assert!(
        c.iter().all(|c| matches!(c, NftChange::AddElement { .. })),
        "{c:?}"
    );
    assert!(
        c.iter()
            .any(|c| matches!(c, NftChange::AddElement { set, .. } if set == "pool_ip6"))
    );
}
