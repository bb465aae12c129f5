//! End to end, on a real kernel: a "host" namespace managed by kvmnet, a "wan" namespace
//! behind its uplink, and guest namespaces standing in for VMs.

mod common;
use common::*;

fn foreign_objects(host: &str) -> String {
    ok(&format!(
        "ip -n {host} -d link show docker0; ip -n {host} addr show docker0; ip netns exec {host} nft list table ip filter"
    ))
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn nat_routed_isolated_networks() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("host");
    let wan = ns.add("wan");
    let g = ns.reserve("g");
    let (n1, r1, i1, i2) = (
        format!("{g}n1"),
        format!("{g}r1"),
        format!("{g}i1"),
        format!("{g}i2"),
    );
    ns.names
        .extend([n1.clone(), r1.clone(), i1.clone(), i2.clone()]);
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 203.0.113.1/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 203.0.113.2/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 203.0.113.2 && \
         ip -n {host} link add docker0 type bridge && ip -n {host} addr add 172.17.0.1/16 dev docker0 && \
         ip netns exec {host} nft add table ip filter && \
         ip netns exec {host} nft add chain ip filter FORWARD '{{ type filter hook forward priority 0; policy accept; }}' && \
         ip netns exec {host} nft add rule ip filter FORWARD ip saddr 172.17.0.0/16 counter accept"
    ));
    let initial = fingerprint(&host, &["net.ipv4.ip_forward"]);
    let foreign = foreign_objects(&host);

    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  nat:
    mode: nat
    bridge: e2e-nat
    ipv4: 10.81.0.1/24
  rt:
    mode: routed
    bridge: e2e-rt
    ipv4: 198.51.100.1/24
  iso:
    mode: isolated
    bridge: e2e-iso
    ipv4: 10.82.0.1/24
vms:
  n1:
    ports: [ {{ network: nat, name: e2e-n1, kind: veth, netns: {n1}, ipv4: 10.81.0.10 }} ]
  r1:
    ports: [ {{ network: rt, name: e2e-r1, kind: veth, netns: {r1}, ipv4: 198.51.100.10 }} ]
  i1:
    ports: [ {{ network: iso, name: e2e-i1, kind: veth, netns: {i1}, ipv4: 10.82.0.10 }} ]
  i2:
    ports: [ {{ network: iso, name: e2e-i2, kind: veth, netns: {i2}, ipv4: 10.82.0.11 }} ]
  vm:
    ports: [ {{ network: nat, name: e2e-tap, kind: tap, queues: 2 }} ]
"#
    ));
    let out = ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["changes"].as_array().unwrap().len() > 10);

    // NAT: the guest reaches the wan, which sees the host's uplink address.
    assert!(pings(&n1, "203.0.113.2"), "nat guest cannot reach the wan");
    assert_eq!(source_seen(&wan, "203.0.113.2", &n1), "203.0.113.1");
    // ...but the wan cannot open connections to it.
    ok_in(&wan, "ip route add 10.81.0.0/24 via 203.0.113.1");
    assert!(
        !pings(&wan, "10.81.0.10"),
        "nat guest reachable from the wan"
    );

    // Routed: reachable from the wan by a route, no translation either way.
    ok_in(&wan, "ip route add 198.51.100.0/24 via 203.0.113.1");
    assert!(
        pings(&wan, "198.51.100.10"),
        "routed guest unreachable from the wan"
    );
    assert_eq!(source_seen(&r1, "198.51.100.10", &wan), "203.0.113.2");
    assert_eq!(source_seen(&wan, "203.0.113.2", &r1), "198.51.100.10");

    // Isolated: each other and the gateway, nothing beyond.
    assert!(
        pings(&i1, "10.82.0.11"),
        "isolated guests cannot reach each other"
    );
    assert!(
        pings(&i1, "10.82.0.1"),
        "isolated guest cannot reach its gateway"
    );
    assert!(!pings(&i1, "203.0.113.2"), "isolated guest reaches the wan");
    assert!(
        !pings(&i1, "10.81.0.10"),
        "isolated guest reaches another network"
    );

    // Tap port: persistent, multiqueue, on its bridge, up.
    let tap = ok(&format!("ip -n {host} -d link show e2e-tap"));
    assert!(
        tap.contains("tun type tap") && tap.contains("multi_queue"),
        "{tap}"
    );
    assert!(tap.contains("master e2e-nat"), "{tap}");
    // Bridge ports carry frames, not host addresses: no IPv6 of their own (no link-local
    // address, no routes), while the bridges keep theirs.
    let v6 = |dev: &str| {
        ok(&format!(
            "ip netns exec {host} cat /proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
        ))
        .trim()
        .to_string()
    };
    for port in ["e2e-tap", "e2e-n1", "e2e-r1", "e2e-i1"] {
        assert_eq!(v6(port), "1", "IPv6 on bridge port {port}");
    }
    assert_eq!(v6("e2e-nat"), "0", "IPv6 turned off on a bridge");
    let local = ok(&format!("ip -n {host} -6 route show table all dev e2e-n1"));
    assert!(local.trim().is_empty(), "routes through a port: {local}");

    // Idempotent.
    let again = ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host, "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap()["changes"],
        serde_json::json!([])
    );

    // Drift: a port deleted by hand shows in plan and apply repairs it.
    ok(&format!("ip -n {host} link del e2e-n1"));
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host, "--json"]);
    let pv: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert!(
        pv["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "e2e-n1" && c["op"] == "create"),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(
        pings(&n1, "203.0.113.2"),
        "repaired nat guest cannot reach the wan"
    );

    // Status shows networks and ports with live counters.
    let st: serde_json::Value =
        serde_json::from_str(&ns.kvmnet_ok(&["status", "--netns", &host, "--json"])).unwrap();
    assert_eq!(st["networks"].as_array().unwrap().len(), 3);
    let n1port = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == "e2e-n1")
        .unwrap()
        .clone();
    assert_eq!(n1port["guest"]["ipv4"][0], "10.81.0.10/24");
    assert!(n1port["counters"]["rx_packets"].as_u64().unwrap() > 0);
    let text = ns.kvmnet_ok(&["status", "--netns", &host]);
    assert!(
        text.contains("e2e-i2") && text.contains("NETWORK"),
        "{text}"
    );

    // Destroy: the namespace as found, foreign objects byte-identical, guests gone.
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(foreign_objects(&host), foreign);
    assert_eq!(fingerprint(&host, &["net.ipv4.ip_forward"]), initial);
    assert!(
        namespaces_with(&g).is_empty(),
        "guest namespaces left: {:?}",
        namespaces_with(&g)
    );
    let again = ns.kvmnet_ok(&["destroy", "--netns", &host, "--json"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap()["changes"],
        serde_json::json!([])
    );
}

#[test]
fn bridged_guest_joins_the_uplink_segment() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("bhost");
    let wan = ns.add("bwan");
    let guest = ns.reserve("bg");
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 192.0.2.2/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 192.0.2.1/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 192.0.2.1 metric 50 && \
         ip -n {host} route add 10.99.0.0/16 via 192.0.2.1"
    ));
    let initial = fingerprint(&host, &["net.ipv4.ip_forward"]);
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  lan:
    mode: bridge
    bridge: br-lan
    uplink: up0
vms:
  b1:
    ports: [ {{ network: lan, kind: veth, netns: {guest}, ipv4: 192.0.2.10/24 }} ]
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    // The host keeps its address and routes, now on the bridge.
    let addrs = ok(&format!("ip -n {host} -4 addr show br-lan"));
    assert!(addrs.contains("192.0.2.2/24"), "{addrs}");
    let routes = ok(&format!("ip -n {host} route"));
    assert!(
        routes.contains("default via 192.0.2.1 dev br-lan"),
        "{routes}"
    );
    assert!(
        routes.contains("10.99.0.0/16 via 192.0.2.1 dev br-lan"),
        "{routes}"
    );
    assert!(ok(&format!("ip -n {host} link show up0")).contains("master br-lan"));
    assert!(pings(&host, "192.0.2.1"), "host lost its connectivity");
    // The guest sits on the wan's segment: same subnet, reached directly both ways.
    assert!(
        pings(&guest, "192.0.2.1"),
        "bridged guest cannot reach the wan"
    );
    assert!(
        pings(&wan, "192.0.2.10"),
        "wan cannot reach the bridged guest"
    );
    let neigh = ok_in(&wan, "ip neigh show 192.0.2.10");
    let guest_mac = ok_in(&guest, "cat /sys/class/net/eth0/address");
    assert!(
        neigh.contains(guest_mac.trim()),
        "guest MAC {guest_mac} not learnt on the wan segment: {neigh}"
    );

    assert_eq!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .trim(),
        "No changes: the host matches the spec."
    );
    // A moved route deleted by hand is drift too.
    ok(&format!("ip -n {host} route del 10.99.0.0/16"));
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(
        plan.contains("+ route 10.99.0.0/16 via 192.0.2.1 dev br-lan"),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(ok(&format!("ip -n {host} route")).contains("10.99.0.0/16 via 192.0.2.1 dev br-lan"));
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(fingerprint(&host, &["net.ipv4.ip_forward"]), initial);
    assert!(
        pings(&host, "192.0.2.1"),
        "host lost its connectivity after destroy"
    );
    assert!(namespaces_with(&guest).is_empty());
}
