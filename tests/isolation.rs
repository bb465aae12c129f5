//! What each network lets in and out does not depend on the names of the networks, and
//! `isolate_ports` holds even for traffic the host would route back onto the bridge.

mod common;
use common::*;

/// Pings from `ns` to `ip`: one probe, no retries (a blocked ping is rejected at once).
fn reaches(ns: &str, ip: &str) -> bool {
    in_ns(
        ns,
        &format!("ping -c1 -W1 {ip} >/dev/null 2>&1 || ping -c1 -W2 {ip} >/dev/null 2>&1"),
    )
    .status
    .success()
}

/// One of each routed mode, named so that their alphabetical order is `names`' order, with a
/// guest each, and a wan namespace behind the host's `wan0`.
fn spec(names: [&str; 3], guests: [&str; 3]) -> String {
    let [n, r, i] = names;
    let [gn, gr, gi] = guests;
    format!(
        r#"version: 1
networks:
  {n}: {{ mode: nat, bridge: m-nat, ipv4: 10.81.0.1/24 }}
  {r}: {{ mode: routed, bridge: m-rt, ipv4: 10.82.0.1/24 }}
  {i}: {{ mode: isolated, bridge: m-iso, ipv4: 10.83.0.1/24 }}
vms:
  gn: {{ ports: [ {{ network: {n}, name: m-gn, kind: veth, netns: {gn}, ipv4: 10.81.0.10 }} ] }}
  gr: {{ ports: [ {{ network: {r}, name: m-gr, kind: veth, netns: {gr}, ipv4: 10.82.0.10 }} ] }}
  gi: {{ ports: [ {{ network: {i}, name: m-gi, kind: veth, netns: {gi}, ipv4: 10.83.0.10 }} ] }}
"#
    )
}

#[test]
fn every_pair_of_routed_modes_under_both_name_orders() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("mh");
    let wan = ns.add("mw");
    let g = ns.reserve("mg");
    let guests = [format!("{g}n"), format!("{g}r"), format!("{g}i")];
    ns.names.extend(guests.iter().cloned());
    ok(&format!(
        "ip -n {host} link add wan0 type veth peer name eth0 netns {wan} && ip -n {host} addr add 198.51.100.1/24 dev wan0 && ip -n {host} link set wan0 up && ip -n {wan} addr add 198.51.100.2/24 dev eth0 && ip -n {wan} link set eth0 up && ip -n {wan} route add 10.80.0.0/14 via 198.51.100.1"
    ));
    let [gn, gr, gi] = [&guests[0], &guests[1], &guests[2]];
    let gs = [gn.as_str(), gr.as_str(), gi.as_str()];
    // (from, to address, expected): every ordered pair of networks, and each with the wan.
    let expect: [(&str, &str, bool); 12] = [
        (gn, "10.82.0.10", true),   // nat -> routed: out of nat, into routed
        (gn, "10.83.0.10", false),  // nat -> isolated
        (gr, "10.81.0.10", false),  // routed -> nat: only replies enter a nat network
        (gr, "10.83.0.10", false),  // routed -> isolated
        (gi, "10.81.0.10", false),  // isolated -> nat
        (gi, "10.82.0.10", false),  // isolated -> routed
        (gn, "198.51.100.2", true), // nat -> outside (masqueraded)
        (gr, "198.51.100.2", true), // routed -> outside
        (gi, "198.51.100.2", false),
        (&wan, "10.81.0.10", false), // outside -> nat
        (&wan, "10.82.0.10", true),  // outside -> routed
        (&wan, "10.83.0.10", false), // outside -> isolated
    ];
    for names in [["aaa", "mmm", "zzz"], ["zzz", "mmm", "aaa"]] {
        let s = SpecFile::new(&spec(names, gs));
        ns.kvmnet_ok(&["apply", s.path(), "--netns", &host]);
        for (g, gw) in [(gn, "10.81.0.1"), (gr, "10.82.0.1"), (gi, "10.83.0.1")] {
            assert!(reaches(g, gw), "{names:?}: {g} cannot reach its gateway");
        }
        for (from, to, want) in expect {
            assert_eq!(
                reaches(from, to),
                want,
                "names {names:?}: {from} -> {to} should be {}",
                if want { "reached" } else { "blocked" }
            );
        }
        let again = ns.kvmnet_ok(&["plan", s.path(), "--netns", &host]);
        assert!(again.contains("No changes"), "{again}");
    }
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn isolate_ports_holds_for_traffic_routed_back_onto_the_bridge() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("ph");
    let wan = ns.add("pw");
    ok(&format!(
        "ip -n {host} link add wan0 type veth peer name eth0 netns {wan} && ip -n {host} addr add 198.51.100.1/24 dev wan0 && ip -n {host} link set wan0 up && ip -n {wan} addr add 198.51.100.2/24 dev eth0 && ip -n {wan} link set eth0 up"
    ));
    let g = ns.reserve("pg");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone()]);
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  n:
    mode: nat
    bridge: p-n
    ipv4: 10.84.0.1/24
    isolate_ports: true
    forwards: [ {{ proto: tcp, port: 2222, to: b, to_port: 22 }} ]
vms:
  a: {{ ports: [ {{ network: n, name: p-a, kind: veth, netns: {a}, ipv4: 10.84.0.10 }} ] }}
  b: {{ ports: [ {{ network: n, name: p-b, kind: veth, netns: {b}, ipv4: 10.84.0.11 }} ] }}
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(reaches(&a, "10.84.0.1") && reaches(&b, "10.84.0.1"));
    assert!(
        !reaches(&a, "10.84.0.11"),
        "isolated ports reach each other"
    );
    // a sends b's packets to the gateway's MAC: the host would route them back to b.
    let gw_mac = ok(&format!("ip -n {host} -br link show p-n"))
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    ok_in(
        &a,
        &format!("ip neigh replace 10.84.0.11 lladdr {gw_mac} dev eth0 nud permanent"),
    );
    assert!(
        !reaches(&a, "10.84.0.11"),
        "the host routed a's packets to b"
    );
    assert!(
        tcp_source_seen(&b, 22, &a, "10.84.0.11", 22).is_empty(),
        "a reached b's service through the host"
    );
    // The port forward to b still works, from outside and from the host itself. (From a
    // neighbour it does only without br_netfilter: with it, the kernel bridges a forward
    // that comes back onto its own bridge, and port isolation stops it at L2.)
    assert_eq!(
        tcp_source_seen(&b, 22, &wan, "198.51.100.1", 2222),
        "198.51.100.2",
        "the port forward from outside broke"
    );
    assert!(
        !tcp_source_seen(&b, 22, &host, "198.51.100.1", 2222).is_empty(),
        "the port forward from the host broke"
    );
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
