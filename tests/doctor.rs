//! `kvmnet doctor`: each check, broken by hand in a sandbox namespace after an apply, says
//! fail or warn with its id (and the exit status follows failures); put back, it says ok.
//! Foreign objects a test makes to trip a check are removed by the test itself.

mod common;
use common::*;

/// doctor --json in `host`: its exit status and its checks.
fn doctor(ns: &Namespaces, host: &str) -> (i32, Vec<serde_json::Value>) {
    let o = ns.kvmnet(&["doctor", "--netns", host, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let checks = v["checks"].as_array().cloned().unwrap_or_default();
    for c in &checks {
        for k in ["id", "status", "subject", "message", "fix"] {
            assert!(c[k].is_string(), "{k} in {c}");
        }
    }
    (o.status.code().unwrap_or(-1), checks)
}

/// The statuses of the checks with `id`.
fn statuses(checks: &[serde_json::Value], id: &str) -> Vec<String> {
    checks
        .iter()
        .filter(|c| c["id"] == id)
        .map(|c| c["status"].as_str().unwrap().to_string())
        .collect()
}

/// A namespace with an uplink and a default route, as a host has.
fn host_ns(ns: &mut Namespaces, tag: &str) -> String {
    let host = ns.add(tag);
    ok(&format!(
        "ip -n {host} link add eth0 type veth peer name eth0p && ip -n {host} link set eth0 up && \
         ip -n {host} link set eth0p up && ip -n {host} addr add 203.0.113.2/24 dev eth0 && \
         ip -n {host} route add default via 203.0.113.1"
    ));
    host
}

const NAT: &str = "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: dr-br\n    ipv4: 10.98.0.1/24\n\
vms:\n  a:\n    ports: [ { network: n, name: dr-tap } ]\n";

#[test]
fn forwarding_off_under_a_nat_network_fails() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dfw");
    let spec = SpecFile::new(NAT);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "forwarding"), ["ok"], "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");

    ok_in(&host, "sysctl -qw net.ipv4.ip_forward=0");
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "forwarding"), ["fail"], "{checks:?}");
    assert_eq!(code, 1);
    let text =
        String::from_utf8_lossy(&ns.kvmnet(&["doctor", "--netns", &host]).stdout).into_owned();
    assert!(text.contains("fail  forwarding"), "{text}");
    assert!(text.contains("sysctl -w net.ipv4.ip_forward=1"), "{text}");

    ok_in(&host, "sysctl -qw net.ipv4.ip_forward=1");
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "forwarding"), ["ok"], "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");

    // A nat network tracks connections; this namespace's few are far from the (host-wide,
    // here read-only) limit, which the unit tests take past nine tenths.
    assert_eq!(statuses(&checks, "conntrack"), ["ok"], "{checks:?}");
    let c = checks.iter().find(|c| c["id"] == "conntrack").unwrap();
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("connections tracked"),
        "{c}"
    );
}

const FIREWALLED: &str = "version: 1\nnetworks:\n  n:\n    mode: isolated\n    bridge: dr-br\n    ipv4: 10.98.0.1/24\n\
vms:\n  a:\n    ports:\n      - network: n\n        name: dr-tap\n        firewall: { inbound: { policy: drop } }\n";

#[test]
fn bridge_netfilter_off_under_a_port_firewall_fails() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dbn");
    let spec = SpecFile::new(FIREWALLED);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "br_netfilter"), ["ok"], "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");

    ok_in(&host, "sysctl -qw net.bridge.bridge-nf-call-iptables=0");
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "br_netfilter"), ["fail"], "{checks:?}");
    assert_eq!(code, 1);
    let c = checks.iter().find(|c| c["id"] == "br_netfilter").unwrap();
    assert!(c["message"].as_str().unwrap().contains("dr-tap"), "{c}");

    ok_in(&host, "sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "br_netfilter"), ["ok"], "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");
}

#[test]
fn a_foreign_forward_chain_dropping_by_policy_warns() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dfd");
    let spec = SpecFile::new(NAT);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(
        statuses(&checks, "foreign_forward_drop"),
        ["ok"],
        "{checks:?}"
    );

    ok_in(
        &host,
        "nft add table ip docker_like && \
         nft add chain ip docker_like fwd_drop '{ type filter hook forward priority 0; policy drop; }'",
    );
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(
        statuses(&checks, "foreign_forward_drop"),
        ["warn"],
        "{checks:?}"
    );
    let c = checks
        .iter()
        .find(|c| c["id"] == "foreign_forward_drop")
        .unwrap();
    assert_eq!(c["subject"], "ip docker_like fwd_drop", "{c}");
    assert!(c["fix"].as_str().unwrap().contains("dr-br"), "{c}");
    // A warning is no failure.
    assert_eq!(code, 0, "{checks:?}");
    // doctor changes nothing, foreign objects least of all.
    assert!(ok_in(&host, "nft list table ip docker_like").contains("policy drop"));

    ok_in(&host, "nft delete table ip docker_like");
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(
        statuses(&checks, "foreign_forward_drop"),
        ["ok"],
        "{checks:?}"
    );
}

#[test]
fn strict_rp_filter_under_a_routed_network_warns() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "drp");
    let spec = SpecFile::new(&NAT.replace("mode: nat", "mode: routed"));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    ok_in(
        &host,
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.dr-br.rp_filter=0",
    );
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "rp_filter"), ["ok"], "{checks:?}");

    for key in ["all", "dr-br"] {
        ok_in(
            &host,
            &format!("sysctl -qw net.ipv4.conf.{key}.rp_filter=1"),
        );
        let (code, checks) = doctor(&ns, &host);
        assert_eq!(statuses(&checks, "rp_filter"), ["warn"], "{checks:?}");
        let c = checks.iter().find(|c| c["id"] == "rp_filter").unwrap();
        assert_eq!(
            c["subject"],
            format!("net.ipv4.conf.{key}.rp_filter"),
            "{c}"
        );
        assert_eq!(code, 0, "{checks:?}");
        ok_in(
            &host,
            &format!("sysctl -qw net.ipv4.conf.{key}.rp_filter=0"),
        );
    }
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "rp_filter"), ["ok"], "{checks:?}");
}

#[test]
fn an_uplink_without_carrier_fails_and_a_tap_without_its_vm_warns() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dca");
    let spec = SpecFile::new(
        "version: 1\nnetworks:\n  lan:\n    mode: bridge\n    bridge: dr-br\n    uplink: eth0\n\
         vms:\n  a:\n    ports: [ { network: lan, name: dr-tap } ]\n",
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let carrier = |checks: &[serde_json::Value]| -> Vec<(String, String)> {
        checks
            .iter()
            .filter(|c| c["id"] == "carrier")
            .map(|c| {
                (
                    c["subject"].as_str().unwrap().into(),
                    c["status"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    // Nothing holds the tap open: no VM runs, so it has no carrier.
    let (code, checks) = doctor(&ns, &host);
    let want = |uplink: &str| {
        vec![
            ("eth0".to_string(), uplink.to_string()),
            ("dr-tap".into(), "warn".into()),
        ]
    };
    assert_eq!(carrier(&checks), want("ok"), "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");

    ok(&format!("ip -n {host} link set eth0p down"));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(carrier(&checks), want("fail"), "{checks:?}");
    assert_eq!(code, 1);

    ok(&format!("ip -n {host} link set eth0p up"));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(carrier(&checks), want("ok"), "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");
}

#[test]
fn mtu_above_the_bridge_warns_and_a_small_underlay_fails() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dmt");
    let spec = SpecFile::new(
        "version: 1\nnetworks:\n  n:\n    mode: isolated\n    bridge: dr-br\n    ipv4: 10.98.0.1/24\n  \
         ovl:\n    mode: vxlan\n    bridge: dr-ovl\n    vni: 42\n    underlay: eth0\n    remotes: [203.0.113.9]\n\
         vms:\n  a:\n    ports: [ { network: n, name: dr-tap } ]\n",
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let mtu = |checks: &[serde_json::Value]| -> Vec<(String, String)> {
        checks
            .iter()
            .filter(|c| c["id"] == "mtu")
            .map(|c| {
                (
                    c["subject"].as_str().unwrap().into(),
                    c["status"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    let fine = vec![("mtu".to_string(), "ok".to_string())];
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(mtu(&checks), fine, "{checks:?}");

    ok(&format!("ip -n {host} link set dr-br mtu 1400"));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(
        mtu(&checks),
        [("dr-tap".to_string(), "warn".to_string())],
        "{checks:?}"
    );
    assert_eq!(code, 0, "{checks:?}");
    ok(&format!("ip -n {host} link set dr-br mtu 1500"));

    ok(&format!("ip -n {host} link set eth0 mtu 1400"));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(
        mtu(&checks),
        [("eth0".to_string(), "fail".to_string())],
        "{checks:?}"
    );
    assert_eq!(code, 1);
    ok(&format!("ip -n {host} link set eth0 mtu 1500"));

    let (code, checks) = doctor(&ns, &host);
    assert_eq!(mtu(&checks), fine, "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");
}

#[test]
fn dhcp_without_a_daemon_fails_and_passes_once_one_runs() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "ddm");
    let spec = SpecFile::new(&NAT.replace(
        "    ipv4: 10.98.0.1/24\n",
        "    ipv4: 10.98.0.1/24\n    dhcp: { range: 10.98.0.100-10.98.0.110 }\n",
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "daemon"), ["fail"], "{checks:?}");
    assert_eq!(code, 1);
    let c = checks.iter().find(|c| c["id"] == "daemon").unwrap();
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("kvmnet daemon --spec FILE --netns {host}")),
        "{c}"
    );

    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec.path(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, checks) = doctor(&ns, &host);
        if statuses(&checks, "daemon") == ["ok"] && statuses(&checks, "dhcp_probe") == ["ok"] {
            assert_eq!(code, 0, "{checks:?}");
            let c = checks.iter().find(|c| c["id"] == "dhcp_probe").unwrap();
            assert!(
                c["message"]
                    .as_str()
                    .unwrap()
                    .contains("offer of 10.98.0.10"),
                "{c}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{checks:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The probe leaves nothing: its offer given back (released: the address is free), no
    // link, no namespace.
    let leases = ns.kvmnet_ok(&["leases", "--netns", &host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&leases).unwrap();
    for l in v["leases"].as_array().unwrap() {
        assert_eq!(l["state"], "released", "{leases}");
    }
    assert!(!ok(&format!("ip -n {host} -o link")).contains("kvp"));
    assert!(namespaces_with("kvmnet-probe").is_empty());

    // A foreign table drops DHCP on its way to the host: the daemon runs, but nobody gets
    // an answer.
    let (_, before) = doctor(&ns, &host);
    ok(&format!(
        "ip netns exec {host} nft add table inet blockdhcp && ip netns exec {host} nft add chain inet blockdhcp in          '{{ type filter hook input priority -500; policy accept; }}' &&          ip netns exec {host} nft add rule inet blockdhcp in udp dport 67 drop"
    ));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "dhcp_probe"), ["fail"], "{checks:?}");
    assert_eq!(others(&checks, "dhcp_probe"), others(&before, "dhcp_probe"));
    assert_eq!(code, 1);
    ok(&format!(
        "ip netns exec {host} nft delete table inet blockdhcp"
    ));
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "dhcp_probe"), ["ok"], "{checks:?}");
}

/// Every result but those of check `id`, as `(id, subject, status)`.
fn others(checks: &[serde_json::Value], id: &str) -> Vec<(String, String, String)> {
    checks
        .iter()
        .filter(|c| c["id"] != id)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("id"), s("subject"), s("status"))
        })
        .collect()
}

/// A uid no user has, so the test can own a tap by it: a user deleted after apply, which is
/// what a user-name owner that is gone looks like, cannot be made without touching the host's
/// accounts (that case is unit-tested).
const NO_USER_UID: u32 = 4_000_123;

#[test]
fn a_tap_owned_by_a_uid_without_a_user_warns() {
    if !privileged() {
        return;
    }
    if sh(&format!("getent passwd {NO_USER_UID}")).status.success() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dto");
    let spec = SpecFile::new(NAT);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (_, before) = doctor(&ns, &host);
    assert_eq!(statuses(&before, "tap_owner"), ["ok"], "{before:?}");

    let owned = SpecFile::new(&NAT.replace(
        "name: dr-tap }",
        &format!("name: dr-tap, owner: {NO_USER_UID} }}"),
    ));
    ns.kvmnet_ok(&["apply", owned.path(), "--netns", &host]);
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "tap_owner"), ["warn"], "{checks:?}");
    let c = checks.iter().find(|c| c["id"] == "tap_owner").unwrap();
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("uid {NO_USER_UID} has no user")),
        "{c}"
    );
    assert_eq!(others(&checks, "tap_owner"), others(&before, "tap_owner"));
    assert_eq!(code, 0, "{checks:?}");

    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "tap_owner"), ["ok"], "{checks:?}");
}

#[test]
fn devices_report_what_the_host_has() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "ddv");
    let (_, checks) = doctor(&ns, &host);
    let seen: Vec<(String, String)> = checks
        .iter()
        .filter(|c| c["id"] == "devices")
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("subject"), s("status"))
        })
        .collect();
    // Root opens whatever exists, so the check can only say what exists.
    let want: Vec<(String, String)> = ["/dev/kvm", "/dev/vhost-net"]
        .iter()
        .map(|p| {
            let status = match std::path::Path::new(p).exists() {
                true => "ok",
                false => "warn",
            };
            (p.to_string(), status.to_string())
        })
        .collect();
    assert_eq!(seen, want, "{checks:?}");
}

#[test]
fn lro_is_off_on_a_veth_uplink() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dlr");
    let spec = SpecFile::new(
        "version: 1\nnetworks:\n  lan:\n    mode: bridge\n    bridge: dr-br\n    uplink: eth0\n",
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    // veth cannot turn LRO on (the unit tests cover the warning).
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "lro"), ["ok"], "{checks:?}");
    let c = checks.iter().find(|c| c["id"] == "lro").unwrap();
    assert!(c["message"].as_str().unwrap().contains("eth0"), "{c}");
}

/// Pings the network's broadcast address from guest `g` every `interval` seconds for about
/// two seconds, in the background: broadcast, so each ping leaves with the guest's source
/// MAC at once, whatever the neighbours know (a unicast ping waits on the host's stale
/// neighbour entry for a while, and sends nothing meanwhile).
fn ping_from(g: &str, interval: &str, count: &str) -> std::process::Child {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", g, "ping", "-q", "-b", "-w", "2", "-c", count, "-i", interval,
        ])
        .arg("10.98.0.255")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn one_mac_on_two_ports_of_a_bridge_fails() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "ddu");
    let g = ns.reserve("ddg");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone()]);
    let spec = SpecFile::new(&format!(
        "version: 1\nnetworks:\n  n:\n    mode: isolated\n    bridge: dr-br\n    ipv4: 10.98.0.1/24\n\
         vms:\n  a: {{ ports: [ {{ network: n, name: dr-a, kind: veth, netns: {a}, mac: \"52:54:00:98:00:0a\", ipv4: 10.98.0.10 }} ] }}\n  \
         b: {{ ports: [ {{ network: n, name: dr-b, kind: veth, netns: {b}, mac: \"52:54:00:98:00:0b\", ipv4: 10.98.0.11, antispoof: false }} ] }}\n"
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(pings(&a, "10.98.0.1") && pings(&b, "10.98.0.1"));
    let (_, before) = doctor(&ns, &host);
    assert_eq!(statuses(&before, "duplicate_mac"), ["ok"], "{before:?}");

    // Anti-spoofing (on by default) drops b's frames from a's MAC at its port, so the
    // bridge never learns it there: the duplicate the check finds needs it off.
    ok_in(&b, "ip link set eth0 address 52:54:00:98:00:0a");
    // At different rates, so that the port the bridge has the MAC on changes at no fixed
    // phase with doctor's reads.
    let (mut pa, mut pb) = (ping_from(&a, "0.1", "20"), ping_from(&b, "0.07", "28"));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (code, checks) = doctor(&ns, &host);
    // Nothing answers a broadcast ping (the host ignores them): only the frames matter.
    pa.wait().unwrap();
    pb.wait().unwrap();
    assert_eq!(statuses(&checks, "duplicate_mac"), ["fail"], "{checks:?}");
    let c = checks.iter().find(|c| c["id"] == "duplicate_mac").unwrap();
    assert_eq!(c["subject"], "dr-br 52:54:00:98:00:0a", "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(msg.contains("dr-a") && msg.contains("dr-b"), "{c}");
    assert_eq!(code, 1);
    assert_eq!(
        others(&checks, "duplicate_mac"),
        others(&before, "duplicate_mac")
    );

    ok_in(&b, "ip link set eth0 address 52:54:00:98:00:0b");
    assert!(pings(&b, "10.98.0.1"));
    // Fixed as an operator would see it: a sends again, so the bridge learns its MAC back on
    // its own port (if b's frames were the last with it, the entry would still name dr-b
    // and move once when a next speaks, in the middle of doctor's reads).
    assert!(pings(&a, "10.98.0.1"));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "duplicate_mac"), ["ok"], "{checks:?}");
    assert_eq!(code, 0, "{checks:?}");
}

#[test]
fn a_guest_answering_arp_for_the_gateway_fails_unless_the_guard_stops_it() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dga");
    let (ga, gb) = (ns.reserve("dgaa"), ns.reserve("dgab"));
    let spec = SpecFile::new(&format!(
        "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: dg-br\n    ipv4: 10.96.0.1/24\n\
         vms:\n  a:\n    ports: [ {{ network: n, kind: veth, netns: {ga}, ipv4: 10.96.0.10 }} ]\n  \
         b:\n    ports: [ {{ network: n, kind: veth, netns: {gb}, ipv4: 10.96.0.11, antispoof: false }} ]\n"
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (_, before) = doctor(&ns, &host);
    assert_eq!(statuses(&before, "gateway_arp"), ["ok"], "{before:?}");
    // A guarded guest claims the gateway: the guard drops its ARP about an address not its
    // own, so nobody else is heard answering.
    ok(&format!("ip -n {ga} addr add 10.96.0.1/32 dev eth0"));
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "gateway_arp"), ["ok"], "{checks:?}");
    // An unguarded one is heard: fail, naming its MAC, and the exit status says so.
    ok(&format!("ip -n {gb} addr add 10.96.0.1/32 dev eth0"));
    let mac = ok_in(&gb, "cat /sys/class/net/eth0/address");
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "gateway_arp"), ["fail"], "{checks:?}");
    assert_eq!(code, 1);
    let c = checks.iter().find(|c| c["id"] == "gateway_arp").unwrap();
    assert!(c["message"].as_str().unwrap().contains(mac.trim()), "{c}");
    assert_eq!(
        others(&checks, "gateway_arp"),
        others(&before, "gateway_arp")
    );
    ok(&format!("ip -n {gb} addr del 10.96.0.1/32 dev eth0"));
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "gateway_arp"), ["ok"], "{checks:?}");
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn firewalld_or_ufw_rules_warn_with_the_commands_that_let_the_bridges_through() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dff");
    let spec = SpecFile::new(NAT);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (_, before) = doctor(&ns, &host);
    assert_eq!(statuses(&before, "foreign_firewall"), ["ok"], "{before:?}");
    // firewalld's table, as it makes it (its forward chain accepts by policy and rejects
    // what no zone allows in its rules).
    ok(&format!(
        "ip netns exec {host} nft add table inet firewalld && ip netns exec {host} nft add chain inet firewalld \
         filter_FORWARD '{{ type filter hook forward priority 10; policy accept; }}'"
    ));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(
        statuses(&checks, "foreign_firewall"),
        ["warn"],
        "{checks:?}"
    );
    assert_eq!(code, 0, "a warning is no failure");
    let c = checks
        .iter()
        .find(|c| c["id"] == "foreign_firewall")
        .unwrap();
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("--zone=trusted --add-interface=dr-br"),
        "{c}"
    );
    assert_eq!(
        others(&checks, "foreign_firewall"),
        others(&before, "foreign_firewall")
    );
    ok(&format!(
        "ip netns exec {host} nft delete table inet firewalld"
    ));
    // ufw's chains, as iptables-nft keeps them.
    ok(&format!(
        "ip netns exec {host} nft add table ip filter && ip netns exec {host} nft add chain ip filter ufw-before-forward"
    ));
    let (_, checks) = doctor(&ns, &host);
    let c = checks
        .iter()
        .find(|c| c["id"] == "foreign_firewall")
        .unwrap();
    assert_eq!(c["status"], "warn", "{c}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("ufw route allow in on dr-br"),
        "{c}"
    );
    assert_eq!(
        others(&checks, "foreign_firewall"),
        others(&before, "foreign_firewall")
    );
    ok(&format!("ip netns exec {host} nft delete table ip filter"));
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "foreign_firewall"), ["ok"], "{checks:?}");
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn a_bridge_held_below_the_mtu_dhcp_tells_guests_fails() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "ddm");
    let g = ns.reserve("ddmg");
    let spec = SpecFile::new(&format!(
        "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: dm-br\n    ipv4: 10.95.0.1/24\n    mtu: 1400\n    \
         dhcp: {{ range: 10.95.0.100-10.95.0.110 }}\n\
         vms:\n  a:\n    ports: [ {{ network: n, name: dm-a, kind: veth, netns: {g}, ipv4: 10.95.0.10 }} ]\n"
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let (_, before) = doctor(&ns, &host);
    assert_eq!(statuses(&before, "dhcp_mtu"), ["ok"], "{before:?}");
    // Something else joins the bridge with a smaller MTU: the bridge takes it.
    ok(&format!(
        "ip -n {host} link add dm-x type veth peer name dm-xp && ip -n {host} link set dm-x mtu 1200 && \
         ip -n {host} link set dm-x master dm-br"
    ));
    let (code, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "dhcp_mtu"), ["fail"], "{checks:?}");
    assert_eq!(code, 1);
    let c = checks.iter().find(|c| c["id"] == "dhcp_mtu").unwrap();
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("dm-x holds it down"),
        "{c}"
    );
    // The port now sits above its bridge too, which `mtu` says; the rest stay as they were.
    assert_eq!(statuses(&checks, "mtu"), ["warn"], "{checks:?}");
    let rest = |c: &[serde_json::Value]| {
        let mut o = others(c, "dhcp_mtu");
        o.retain(|(id, _, _)| id != "mtu");
        o
    };
    assert_eq!(rest(&checks), rest(&before));
    ok(&format!("ip -n {host} link del dm-x"));
    let (_, checks) = doctor(&ns, &host);
    assert_eq!(statuses(&checks, "dhcp_mtu"), ["ok"], "{checks:?}");
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

/// `doctor` on a host with 1,000 ports: a measurement, not a test (it asserts nothing about
/// time). Run it with `cargo test --release --test doctor -- --ignored --nocapture at_1000`.
#[test]
#[ignore]
fn doctor_at_1000_ports() {
    if !privileged() {
        return;
    }
    use std::fmt::Write as _;
    let mut ns = Namespaces::new();
    let host = host_ns(&mut ns, "dk");
    let mut text = String::from(
        "version: 1\nnetworks:\n  n: { mode: nat, bridge: dk-n, ipv4: 10.162.0.1/16, dhcp: { range: 10.162.200.1-10.162.250.250 } }\nvms:\n",
    );
    for i in 0..1000 {
        let _ = writeln!(
            text,
            "  k{i}: {{ ports: [ {{ network: n, name: dk{i}, ipv4: 10.162.{}.{}, firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: tcp, ports: [22] }} ] }} }} }} ] }}",
            1 + i / 250,
            2 + i % 250
        );
    }
    let spec = SpecFile::new(&text);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let mut times = Vec::new();
    for _ in 0..7 {
        let t = std::time::Instant::now();
        let (_, checks) = doctor(&ns, &host);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(checks.len() > 10);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    eprintln!(
        "doctor at 1,000 ports: median {:.0} ms, min {:.0} ms, max {:.0} ms (7 runs)",
        times[3], times[0], times[6]
    );
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
