//! VXLAN overlay across two "hypervisors": namespaces hv1 and hv2 joined by an underlay veth,
//! each applying its own spec, with one guest namespace behind each.

mod common;
use common::*;

/// VM names differ between the hosts: derived MACs come from them, and the overlay is one L2.
fn spec(vm: &str, peer: &str, guest: &str, ip: &str) -> String {
    format!(
        r#"version: 1
networks:
  ov:
    mode: vxlan
    vni: 4242
    underlay: under0
    remotes: [{peer}]
vms:
  {vm}:
    ports: [ {{ network: ov, name: vxg0, kind: veth, netns: {guest}, ipv4: {ip}/24 }} ]
"#
    )
}

fn changes(ns: &Namespaces, spec: &str, host: &str) -> Vec<serde_json::Value> {
    let out = ns.kvmnet_ok(&["plan", spec, "--netns", host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["changes"].as_array().unwrap().clone()
}

fn world(hv: &str, guest: &str) -> String {
    let mut s = fingerprint(hv, &[]);
    s.push_str(&ok(&format!(
        "bridge -n {hv} fdb show | grep -v permanent || true"
    )));
    for g in namespaces_with(guest) {
        s.push_str(&format!("== netns {g}\n{}", fingerprint(&g, &[])));
    }
    s
}

#[test]
fn overlay_between_two_hosts() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let hv1 = ns.add("hv1");
    let hv2 = ns.add("hv2");
    let g1 = ns.reserve("vxg1");
    let g2 = ns.reserve("vxg2");
    ok(&format!(
        "ip link add under0 netns {hv1} type veth peer name under0 netns {hv2} && \
         ip -n {hv1} addr add 192.0.2.1/24 dev under0 && ip -n {hv1} link set under0 up && \
         ip -n {hv2} addr add 192.0.2.2/24 dev under0 && ip -n {hv2} link set under0 up"
    ));
    let before1 = fingerprint(&hv1, &[]);
    let before2 = fingerprint(&hv2, &[]);
    let s1 = SpecFile::new(&spec("web1", "192.0.2.2", &g1, "10.70.0.11"));
    let s2 = SpecFile::new(&spec("web2", "192.0.2.1", &g2, "10.70.0.12"));
    ns.kvmnet_ok(&["apply", s1.path(), "--netns", &hv1]);
    ns.kvmnet_ok(&["apply", s2.path(), "--netns", &hv2]);

    // The device as the kernel has it.
    let d = ok(&format!("ip -n {hv1} -d link show vx-ov"));
    for want in [
        "vxlan id 4242",
        "local 192.0.2.1",
        "dev under0",
        "dstport 4789",
        "mtu 1450",
        "master kvbr-ov",
    ] {
        assert!(d.contains(want), "missing '{want}' in:\n{d}");
    }
    let fdb = ok(&format!("bridge -n {hv1} fdb show dev vx-ov"));
    assert!(
        fdb.contains("00:00:00:00:00:00 dst 192.0.2.2"),
        "no flood entry:\n{fdb}"
    );

    // Guests reach each other over the overlay, with full-size frames at the derived MTU.
    assert!(pings(&g1, "10.70.0.12"), "guests cannot reach each other");
    let big = in_ns(&g1, "ping -c1 -W2 -M do -s 1422 10.70.0.12");
    assert!(
        big.status.success(),
        "a 1450-byte packet does not cross: {}",
        String::from_utf8_lossy(&big.stderr)
    );
    let too_big = in_ns(&g1, "ping -c1 -W1 -M do -s 1423 10.70.0.12");
    assert!(!too_big.status.success(), "a 1451-byte packet crossed");
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&too_big.stdout),
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(
        msg.contains("message too long") || msg.contains("100% packet loss"),
        "{msg}"
    );

    // Converged: nothing to do.
    assert_eq!(
        changes(&ns, s1.path(), &hv1),
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        changes(&ns, s2.path(), &hv2),
        Vec::<serde_json::Value>::new()
    );

    // Drift: a flood entry deleted by hand is planned back and repaired.
    ok(&format!(
        "bridge -n {hv1} fdb del 00:00:00:00:00:00 dev vx-ov dst 192.0.2.2"
    ));
    let c = changes(&ns, s1.path(), &hv1);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0]["kind"], "fdb");
    assert_eq!(c[0]["op"], "add");
    ns.kvmnet_ok(&["apply", s1.path(), "--netns", &hv1]);
    assert!(changes(&ns, s1.path(), &hv1).is_empty());
    assert!(pings(&g1, "10.70.0.12"), "no traffic after the repair");

    // Drift: the device deleted by hand comes back, enslaved, with its entry.
    ok(&format!("ip -n {hv2} link del vx-ov"));
    let c = changes(&ns, s2.path(), &hv2);
    assert_eq!(c.len(), 2, "{c:?}");
    ns.kvmnet_ok(&["apply", s2.path(), "--netns", &hv2]);
    assert!(changes(&ns, s2.path(), &hv2).is_empty());
    assert!(
        pings(&g2, "10.70.0.11"),
        "no traffic after re-creating vx-ov"
    );

    // Destroy leaves both hosts as they were.
    ns.kvmnet_ok(&["destroy", "--netns", &hv1]);
    ns.kvmnet_ok(&["destroy", "--netns", &hv2]);
    assert_eq!(fingerprint(&hv1, &[]), before1);
    assert_eq!(fingerprint(&hv2, &[]), before2);
    assert!(namespaces_with(&g1).is_empty() && namespaces_with(&g2).is_empty());
}

#[test]
fn vxlan_apply_rolls_back_at_every_step() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let hv = ns.add("hvrb");
    let guest = ns.reserve("vxrbg");
    ok(&format!(
        "ip -n {hv} link add under0 type veth peer name under1 && \
         ip -n {hv} addr add 192.0.2.1/24 dev under0 && ip -n {hv} link set under0 up && \
         ip -n {hv} link set under1 up"
    ));
    // Two remotes: two flood entries.
    let s = SpecFile::new(&format!(
        r#"version: 1
networks:
  ov:
    mode: vxlan
    vni: 77
    underlay: under0
    remotes: [192.0.2.2, 192.0.2.3]
    port: 8472
    ipv4: 10.70.0.1/24
vms:
  g:
    ports: [ {{ network: ov, name: vxr0, kind: veth, netns: {guest}, ipv4: 10.70.0.11 }} ]
"#
    ));
    let n = changes(&ns, s.path(), &hv).len();
    assert!(n >= 6, "plan too short: {n}");
    let before = world(&hv, &guest);
    for k in 1..=n {
        let ks = k.to_string();
        let o = ns.kvmnet_env(
            &["apply", s.path(), "--netns", &hv],
            &[("KVMNET_FAIL_AFTER", ks.as_str())],
        );
        assert_eq!(o.status.code(), Some(1), "K={k}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("ROLLBACK INCOMPLETE"), "K={k}: {stderr}");
        assert_eq!(world(&hv, &guest), before, "K={k} of {n}");
    }
    ns.kvmnet_ok(&["apply", s.path(), "--netns", &hv]);
    assert!(changes(&ns, s.path(), &hv).is_empty());
    let fdb = ok(&format!("bridge -n {hv} fdb show dev vx-ov"));
    assert!(
        fdb.contains("dst 192.0.2.2") && fdb.contains("dst 192.0.2.3"),
        "{fdb}"
    );
    ns.kvmnet_ok(&["destroy", "--netns", &hv]);
    assert_eq!(world(&hv, &guest), before);
}

/// A VXLAN network with DHCP and no `mtu`: its MTU comes from the underlay (1450 here), and
/// the daemon tells guests so (option 26); without it they would assume 1500 and the bridge
/// would drop their full-size frames.
#[test]
fn dhcp_tells_guests_the_derived_mtu() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let hv = ns.add("hvm");
    let g = ns.reserve("vxm");
    ok(&format!(
        "ip -n {hv} link add under0 type veth peer name under0p && \
         ip -n {hv} addr add 192.0.2.1/24 dev under0 && ip -n {hv} link set under0 up && \
         ip -n {hv} link set under0p up"
    ));
    let spec = SpecFile::new(&format!(
        "version: 1\nnetworks:\n  ov:\n    mode: vxlan\n    vni: 4243\n    underlay: under0\n    \
         remotes: [192.0.2.2]\n    ipv4: 10.71.0.1/24\n    dhcp: {{ range: 10.71.0.100-10.71.0.110 }}\n\
         vms:\n  a:\n    ports: [ {{ network: ov, kind: veth, netns: {g}, dhcp_client: true }} ]\n"
    ));
    let daemon = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec.path(), "--netns", &hv])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(daemon);
    // udhcpc hands the options to its script as variables: the script prints them.
    let script = std::env::temp_dir().join(format!("{}.sh", unique("vxm")));
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] && env\ntrue\n").unwrap();
    ok(&format!("chmod +x {}", script.display()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut out = String::new();
    while std::time::Instant::now() < deadline && !out.contains("ip=") {
        let o = in_ns(
            &g,
            &format!(
                "busybox udhcpc -i eth0 -n -q -t 3 -T 1 -O mtu -s {}",
                script.display()
            ),
        );
        out = String::from_utf8_lossy(&o.stdout).into_owned();
    }
    let _ = std::fs::remove_file(&script);
    assert!(out.lines().any(|l| l == "mtu=1450"), "{out}");
}
