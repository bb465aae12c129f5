//! IPv6 on nat, routed and isolated networks with real peers: the kernel's SLAAC in guest
//! namespaces from the daemon's router advertisements, `rdisc6` reading them, NAT66 and a
//! routed prefix towards a host in a wan namespace, an isolated network that forwards
//! nothing, guard attacks with thc-ipv6 (ND spoofing, a rogue router) and a forged source
//! failing while the same guest's own IPv6 flows, an inbound `drop` policy over IPv6, and
//! rollback and destroy leaving IPv6 exactly as it was.

mod common;
use common::*;

use std::time::{Duration, Instant};

const A_MAC: &str = "52:54:00:61:00:0a";
const B_MAC: &str = "52:54:00:61:00:0b";
const R_MAC: &str = "52:54:00:62:00:0a";
const R2_MAC: &str = "52:54:00:62:00:0b";
const I_MAC: &str = "52:54:00:63:00:0a";
const WAN: &str = "2001:db8:99::2";

/// The SLAAC (EUI-64) address of `mac` in the /64 `prefix` (like `fd00:61::`).
fn slaac(prefix: &str, mac: &str) -> String {
    let m: kvmnet::spec::Mac = mac_of(mac);
    m.slaac(prefix.parse().unwrap()).to_string()
}

fn mac_of(mac: &str) -> kvmnet::spec::Mac {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    kvmnet::spec::Mac([b[0], b[1], b[2], b[3], b[4], b[5]])
}

fn spec_text(g: &str) -> String {
    format!(
        r#"version: 1
networks:
  nat6:
    mode: nat
    bridge: v6nat
    ipv4: 10.61.0.1/24
    ipv6: fd00:61::1/64
    ra: {{ mode: slaac, lifetime: 30m }}
    dhcp: {{ pool: false, domain: vm.test }}
    dns: {{ domain: vm.test, forwarders: [2001:db8:99::2] }}
  rt6:
    mode: routed
    bridge: v6rt
    ipv4: 10.62.0.1/24
    ipv6: 2001:db8:62::1/64
  iso6:
    mode: isolated
    bridge: v6iso
    ipv4: 10.63.0.1/24
    ipv6: fd00:63::1/64
vms:
  a: {{ ports: [ {{ network: nat6, name: v6a, kind: veth, netns: {g}a, mac: "{A_MAC}", ipv4: 10.61.0.10, ipv6: "fd00:61::10" }} ] }}
  b: {{ ports: [ {{ network: nat6, name: v6b, kind: veth, netns: {g}b, mac: "{B_MAC}", ipv4: 10.61.0.11 }} ] }}
  r: {{ ports: [ {{ network: rt6, name: v6r, kind: veth, netns: {g}r, mac: "{R_MAC}", ipv4: 10.62.0.10, firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: icmp, from: "2001:db8:99::3" }} ] }} }} }} ] }}
  r2: {{ ports: [ {{ network: rt6, name: v6r2, kind: veth, netns: {g}s, mac: "{R2_MAC}", ipv4: 10.62.0.11 }} ] }}
  i: {{ ports: [ {{ network: iso6, name: v6i, kind: veth, netns: {g}i, mac: "{I_MAC}", ipv4: 10.63.0.10 }} ] }}
"#
    )
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

fn pings6(ns: &str, ip: &str, from: Option<&str>) -> bool {
    let src = from.map_or(String::new(), |s| format!("-I {s} "));
    in_ns(
        ns,
        &format!("ping -6 -c1 -W1 {src}{ip} >/dev/null 2>&1 || ping -6 -c2 -W1 {src}{ip}"),
    )
    .status
    .success()
}

/// The IPv6 source the wan namespace sees for a ping from `client` (with source `from`).
fn source_seen6(wan: &str, client: &str, from: Option<&str>) -> String {
    let dump = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            wan,
            "timeout",
            "6",
            "tcpdump",
            "-lnni",
            "eth0",
            "-c",
            "1",
            "icmp6 and ip6[40] == 128",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    pings6(client, WAN, from);
    let out = dump.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "12:00:00.000 IP6 SRC > DST: ICMP6, echo request, ..."
    text.split_whitespace()
        .skip_while(|w| *w != "IP6")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// A host (`host`) with an uplink to a wan namespace (`wan`) that has 2001:db8:99::2 and,
/// as an upstream router would, a route to the routed network's prefix through the host.
fn uplink(host: &str, wan: &str) {
    ok(&format!(
        "ip link add v6up netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} link set v6up up && ip -n {wan} link set eth0 up && \
         ip -n {host} addr add 2001:db8:99::1/64 dev v6up nodad && \
         ip -n {wan} addr add {WAN}/64 dev eth0 nodad && \
         ip -n {wan} -6 route add 2001:db8:62::/64 via 2001:db8:99::1"
    ));
    // The uplink's link-local address settles (DAD) before anyone takes a fingerprint.
    wait_for("the uplink's link-local address", 10, || {
        sh(&format!("ip -n {host} -6 addr show dev v6up tentative"))
            .stdout
            .is_empty()
    });
}

fn has_addr(ns: &str, addr: &str) -> bool {
    String::from_utf8_lossy(&in_ns(ns, "ip -6 addr show dev eth0").stdout)
        .contains(&format!("{addr}/64"))
}

fn bridge_link_local(host: &str, bridge: &str) -> String {
    let mac = ok(&format!(
        "ip netns exec {host} cat /sys/class/net/{bridge}/address"
    ));
    mac_of(mac.trim()).link_local().to_string()
}

#[test]
fn ipv6_networks_with_real_peers() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("v6h");
    let wan = ns.add("v6w");
    let g = ns.reserve("v6g");
    for s in ["a", "b", "r", "s", "i"] {
        ns.names.push(format!("{g}{s}"));
    }
    uplink(&host, &wan);
    // So that only the host's rules keep the wan from the isolated network.
    ok(&format!(
        "ip -n {wan} -6 route add fd00:63::/64 via 2001:db8:99::1"
    ));
    let spec = SpecFile::new(&spec_text(&g));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let _d = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["daemon", "--spec", spec.path(), "--netns", &host])
            .env("KVMNET_STATE_DIR", &ns.state_dir)
            .env("KVMNET_RECONCILE_MS", "300")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (ga, gb, gr, gs, gi) = (
        format!("{g}a"),
        format!("{g}b"),
        format!("{g}r"),
        format!("{g}s"),
        format!("{g}i"),
    );

    // Kernel SLAAC in every guest, from the daemon's RAs.
    let a6 = slaac("fd00:61::", A_MAC);
    let b6 = slaac("fd00:61::", B_MAC);
    let r6 = slaac("2001:db8:62::", R_MAC);
    let s6 = slaac("2001:db8:62::", R2_MAC);
    let i6 = slaac("fd00:63::", I_MAC);
    for (guest, addr) in [(&ga, &a6), (&gb, &b6), (&gr, &r6), (&gs, &s6), (&gi, &i6)] {
        wait_for(&format!("SLAAC {addr} in {guest}"), 30, || {
            has_addr(guest, addr)
        });
    }
    // The default route points at the gateway's link-local address.
    let ll = bridge_link_local(&host, "v6nat");
    let routes = ok_in(&ga, "ip -6 route show default");
    assert!(routes.contains(&format!("via {ll} dev eth0")), "{routes}");

    ra_and_dns(&ga, &gb, &ll);

    // NAT66: the wan host sees the host's address; the routed network is seen as it is.
    assert_eq!(source_seen6(&wan, &ga, None), "2001:db8:99::1");
    assert_eq!(source_seen6(&wan, &gr, None), r6);
    // The declared static address is the guest's to use (kvmnet sets it on a veth far end,
    // as a tap guest's own configuration would).
    assert!(has_addr(&ga, "fd00:61::10"));
    assert!(pings6(&ga, WAN, Some("fd00:61::10")));

    // Isolated: the gateway answers, nothing is forwarded.
    assert!(pings6(&gi, "fd00:63::1", None));
    assert!(!pings6(&gi, WAN, None));
    assert!(!pings6(&wan, &i6, None));

    // An inbound drop policy over IPv6: the wan host reaches r2 but not r, while r's own
    // traffic out is answered. r's one rule lets ICMP in from one IPv6 address (`from`):
    // the wan host's second address gets through, its first still does not.
    assert!(pings6(&wan, &s6, None));
    assert!(!pings6(&wan, &r6, None));
    assert!(pings6(&gr, WAN, None));
    ok(&format!(
        "ip -n {wan} addr add 2001:db8:99::3/64 dev eth0 nodad"
    ));
    assert!(pings6(&wan, &r6, Some("2001:db8:99::3")));
    assert!(!pings6(&wan, &r6, Some(WAN)));

    guard_attacks(&host, &ga, &gb, &a6, &b6, &ll);

    // Drift: the gateway's address and IPv6 forwarding changed by hand come back.
    ok(&format!("ip -n {host} addr del fd00:61::1/64 dev v6nat"));
    ok(&format!(
        "ip netns exec {host} sysctl -qw net.ipv6.conf.all.forwarding=0"
    ));
    wait_for("the gateway's IPv6 address repaired", 20, || {
        ok(&format!("ip -n {host} -6 addr show dev v6nat")).contains("fd00:61::1/64")
    });
    wait_for("IPv6 forwarding repaired", 20, || {
        ok(&format!(
            "ip netns exec {host} sysctl -n net.ipv6.conf.all.forwarding"
        ))
        .trim()
            == "1"
    });
    assert!(pings6(&ga, WAN, None));
}

/// Guest b attacks a's and the gateway's IPv6 and fails, while its own IPv6 flows.
/// What guests learn from the RAs (rdisc6), and the DNS service they name, over IPv6.
fn ra_and_dns(ga: &str, gb: &str, ll: &str) {
    // rdisc6 reads the prefix, the MTU and the DNS search list (DHCP's domain).
    let ra = ok_in(ga, "rdisc6 -1 -w 3000 eth0");
    assert!(
        ra.contains("Prefix                   : fd00:61::/64"),
        "{ra}"
    );
    assert!(
        ra.contains("Autonomous address conf.:          Yes"),
        "{ra}"
    );
    assert!(
        ra.contains("MTU                      :         1500 bytes"),
        "{ra}"
    );
    assert!(
        ra.contains("Stateful address conf.    :           No"),
        "{ra}"
    );
    assert!(ra.contains("DNS search list          : vm.test"), "{ra}");
    assert!(ra.contains(&format!("from {ll}")), "{ra}");
    // With `dns:`, the RAs name the gateway's IPv6 address as the resolver (RDNSS), and the
    // service answers there: a VM's declared IPv6 address as AAAA, over IPv6.
    assert!(ra.contains("Recursive DNS server     : fd00:61::1"), "{ra}");
    let aaaa = ok_in(ga, "dig +short +time=2 +tries=2 @fd00:61::1 a.vm.test AAAA");
    assert_eq!(aaaa.trim(), "fd00:61::10");
    let a = ok_in(gb, "dig +short +time=2 +tries=2 @fd00:61::1 b.vm.test A");
    assert_eq!(a.trim(), "10.61.0.11");
}

fn guard_attacks(host: &str, ga: &str, gb: &str, a6: &str, b6: &str, ll: &str) {
    // A forged source: another guest's address, and an undeclared one. With lifetimes, as
    // SLAAC and DHCPv6 set theirs: the far end's permanent addresses are kvmnet's, and the
    // daemon would put them back as the spec has them.
    let lft = "valid_lft 600 preferred_lft 600 nodad";
    ok_in(gb, &format!("ip -6 addr add {a6}/128 dev eth0 {lft}"));
    ok_in(gb, &format!("ip -6 addr add fd00:61::99/64 dev eth0 {lft}"));
    assert!(!pings6(gb, WAN, Some(a6)));
    assert!(!pings6(gb, WAN, Some("fd00:61::99")));
    assert!(pings6(gb, WAN, Some(b6)));
    ok_in(gb, &format!("ip -6 addr del {a6}/128 dev eth0"));
    ok_in(gb, "ip -6 addr del fd00:61::99/64 dev eth0");

    // ND spoofing: parasite6 answers every solicitation with b's MAC. a and the host keep
    // their true neighbours.
    let mut parasite = std::process::Command::new("ip")
        .args(["netns", "exec", gb, "atk6-parasite6", "-R", "eth0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _ = in_ns(ga, "ip -6 neigh flush dev eth0");
    let _ = sh(&format!("ip -n {host} -6 neigh flush dev v6nat"));
    assert!(pings6(ga, "fd00:61::1", None));
    assert!(pings6(ga, ll, None) || pings6(ga, &format!("{ll}%eth0"), None));
    assert!(pings6(host, a6, None));
    std::thread::sleep(Duration::from_secs(2));
    let _ = parasite.kill();
    let _ = parasite.wait();
    let a_neigh = ok_in(ga, "ip -6 neigh show dev eth0");
    assert!(
        !a_neigh.to_lowercase().contains(B_MAC),
        "a learned b's MAC for someone: {a_neigh}"
    );
    let h_neigh = ok(&format!("ip -n {host} -6 neigh show dev v6nat"));
    assert!(
        !h_neigh.to_lowercase().contains(B_MAC) || !h_neigh.contains(a6),
        "the host learned b's MAC for a: {h_neigh}"
    );
    for line in h_neigh.lines().filter(|l| l.contains(a6)) {
        assert!(line.to_lowercase().contains(A_MAC), "{line}");
    }

    // A rogue router: fake_router6 from b announces another prefix and itself as router.
    let mut rogue = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            gb,
            "atk6-fake_router6",
            "eth0",
            "2001:db8:bad::/64",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    let _ = rogue.kill();
    let _ = rogue.wait();
    let addrs = ok_in(ga, "ip -6 addr show dev eth0");
    assert!(!addrs.contains("2001:db8:bad:"), "{addrs}");
    let routes = ok_in(ga, "ip -6 route show");
    let b_ll = mac_of(B_MAC).link_local().to_string();
    assert!(!routes.contains(&b_ll), "{routes}");
    assert!(!routes.contains("2001:db8:bad:"), "{routes}");
    // And the real router still serves a.
    assert!(pings6(ga, WAN, None));
}

#[test]
fn ipv6_rollback_and_destroy_leave_the_host_as_it_was() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("v6rb");
    let wan = ns.add("v6rw");
    let g = ns.reserve("v6rg");
    for s in ["a", "b", "r", "s", "i"] {
        ns.names.push(format!("{g}{s}"));
    }
    uplink(&host, &wan);
    let world = || {
        format!(
            "{}\n{}",
            fingerprint(&host, &["net.ipv4.ip_forward"]),
            fingerprint6(&host)
        )
    };
    let before = world();
    let spec = SpecFile::new(&spec_text(&g));
    let out = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = v["changes"].as_array().unwrap().len();
    assert!(out.contains("fd00:61::1/64") && out.contains("net.ipv6.conf.all.forwarding"));
    for k in 1..=n {
        let ks = k.to_string();
        let o = ns.kvmnet_env(
            &["apply", spec.path(), "--netns", &host],
            &[("KVMNET_FAIL_AFTER", ks.as_str())],
        );
        assert_eq!(o.status.code(), Some(1), "K={k}");
        assert_eq!(world(), before, "K={k} of {n}: host differs after rollback");
    }
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let applied = fingerprint6(&host);
    assert!(applied.contains("fd00:61::1"), "{applied}");
    assert!(applied.contains("forwarding6 1"), "{applied}");

    // Drift: the gateway's address removed by hand comes back on the next apply.
    ok(&format!("ip -n {host} addr del fd00:61::1/64 dev v6nat"));
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(plan.contains("+ address fd00:61::1/64 dev v6nat"), "{plan}");
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(fingerprint6(&host), applied);

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(world(), before);
}

/// Two veth ports of one VM in guest namespace `g` (made by the test, so destroy leaves it):
/// one on a nat network, one on an isolated one; each declares `ipv6` when `v6` is set.
fn veth_spec(g: &str, v6: bool) -> String {
    let (a6, b6) = if v6 {
        (", ipv6: \"fd00:64::10\"", ", ipv6: \"fd00:65::10\"")
    } else {
        ("", "")
    };
    format!(
        r#"version: 1
networks:
  n:
    mode: nat
    bridge: v6vn
    ipv4: 10.64.0.1/24
    ipv6: fd00:64::1/64
  q:
    mode: isolated
    bridge: v6vq
    ipv4: 10.65.0.1/24
    ipv6: fd00:65::1/64
vms:
  a:
    ports:
      - {{ network: n, name: v6va, kind: veth, netns: {g}, mac: "52:54:00:64:00:0a", ipv4: 10.64.0.10{a6} }}
      - {{ network: q, name: v6vb, kind: veth, netns: {g}, mac: "52:54:00:64:00:0b"{b6} }}
"#
    )
}

fn default_routes6(ns: &str) -> String {
    ok_in(ns, "ip -6 route show default")
}

/// A veth port's declared `ipv6` is set on its far end: the address with the network's
/// prefix length (usable at once: no DAD), and the namespace's IPv6 default route via the
/// gateway (once per namespace, like IPv4's). No daemon runs, so no RA teaches the guest
/// anything: what it has is kvmnet's. A failed apply takes it back exactly; deleted by hand,
/// the next apply repairs it; destroy removes it.
#[test]
fn veth_guests_get_their_declared_ipv6() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("v6vh");
    let g = ns.add("v6vg");
    let plain = SpecFile::new(&veth_spec(&g, false));
    let spec = SpecFile::new(&veth_spec(&g, true));
    ns.kvmnet_ok(&["apply", plain.path(), "--netns", &host]);
    assert!(!default_routes6(&g).contains("fd00:64::1"));
    let before = fingerprint6(&g);

    // Every failure on the way to the IPv6 spec leaves the guest as it was.
    let out = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let n = v["changes"].as_array().unwrap().len();
    assert!(
        out.contains("ipv6 fd00:64::10/64 gateway6 fd00:64::1"),
        "{out}"
    );
    for k in 1..=n {
        let ks = k.to_string();
        let o = ns.kvmnet_env(
            &["apply", spec.path(), "--netns", &host],
            &[("KVMNET_FAIL_AFTER", ks.as_str())],
        );
        assert_eq!(o.status.code(), Some(1), "K={k}");
        assert_eq!(fingerprint6(&g), before, "K={k} of {n}: guest differs");
    }

    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let addrs = ok_in(&g, "ip -6 addr show scope global");
    assert!(addrs.contains("inet6 fd00:64::10/64"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:65::10/64"), "{addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");
    let routes = default_routes6(&g);
    assert!(
        routes.contains("default via fd00:64::1 dev eth0"),
        "{routes}"
    );
    // One default route per namespace: the isolated port has its address only.
    assert!(!routes.contains("eth1"), "{routes}");
    assert!(pings6(&g, "fd00:64::1", None));
    assert!(pings6(&g, "fd00:65::1", None));
    assert!(pings6(&host, "fd00:64::10", None));
    let applied = fingerprint6(&g);

    // Drift: the address and the default route deleted in the guest come back.
    ok_in(&g, "ip -6 route del default via fd00:64::1 dev eth0");
    ok_in(&g, "ip -6 addr del fd00:64::10/64 dev eth0");
    assert!(!pings6(&g, "fd00:64::1", None));
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(plan.contains("~ veth v6va: guest"), "{plan}");
    assert!(
        plan.contains("gateway 10.64.0.1 -> mac")
            && plan.contains("ipv6 fd00:64::10/64 gateway6 fd00:64::1"),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(fingerprint6(&g), applied);
    assert!(pings6(&g, "fd00:64::1", None));
    let again = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(again.starts_with("No changes"), "{again}");

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert!(ok_in(&g, "ip -6 addr show scope global").is_empty());
    assert!(default_routes6(&g).is_empty());
}
