//! Derived MACs on a real kernel: unique per host (two "hypervisors" with the same VM on one
//! overlay), kept across an upgrade and a reboot, and unique among many ports.

mod common;
use common::*;

use kvmnet::spec::macs::Candidates;
use kvmnet::spec::{Mac, naming};

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &str, dev: &str) -> Mac {
    let out = ok(&format!("ip -n {ns} -br link show dev {dev}"));
    out.split_whitespace()
        .nth(2)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MAC in: {out}"))
}

/// The first MAC this host derives for `vm`'s port `port` in `scope`, as kvmnet does.
fn first_candidate(scope: &str, vm: &str, port: &str) -> Mac {
    let (id, _) = kvmnet::host_macs::host_identity(scope);
    Candidates::new(&id, vm, port).get(0)
}

fn plan_changes(ns: &Namespaces, spec: &str, scope: &str) -> Vec<serde_json::Value> {
    let out = ns.kvmnet_ok(&["plan", spec, "--netns", scope, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["changes"].as_array().unwrap().clone()
}

/// The VM `g` on both ends of a VXLAN overlay, same VM and port names on both hosts: on main
/// both got one MAC, and the guests could not reach each other (their IPv6 link-locals showed
/// `dadfailed`). Each host now derives its own.
#[test]
fn one_vm_name_on_two_hosts_of_one_overlay() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let hv1 = ns.add("mhv1");
    let hv2 = ns.add("mhv2");
    let g1 = ns.reserve("mg1");
    let g2 = ns.reserve("mg2");
    ok(&format!(
        "ip link add under0 netns {hv1} type veth peer name under0 netns {hv2} && \
         ip -n {hv1} addr add 192.0.2.1/24 dev under0 && ip -n {hv1} link set under0 up && \
         ip -n {hv2} addr add 192.0.2.2/24 dev under0 && ip -n {hv2} link set under0 up"
    ));
    let spec = |peer: &str, guest: &str, ip: &str| {
        SpecFile::new(&format!(
            "version: 1
networks:
  ov: {{ mode: vxlan, vni: 4343, underlay: under0, remotes: [{peer}] }}
vms:
  g:
    ports: [ {{ network: ov, kind: veth, netns: {guest}, ipv4: {ip}/24 }} ]
"
        ))
    };
    let s1 = spec("192.0.2.2", &g1, "10.71.0.11");
    let s2 = spec("192.0.2.1", &g2, "10.71.0.12");
    ns.kvmnet_ok(&["apply", s1.path(), "--netns", &hv1]);
    ns.kvmnet_ok(&["apply", s2.path(), "--netns", &hv2]);

    let (m1, m2) = (mac_of(&g1, "eth0"), mac_of(&g2, "eth0"));
    assert_ne!(m1, m2, "both hosts gave VM g one MAC");
    assert_eq!(m1, first_candidate(&hv1, "g", "kv-g-0"));
    assert_eq!(m2, first_candidate(&hv2, "g", "kv-g-0"));
    assert_eq!(mac_of(&hv1, "kv-g-0"), naming::host_end_mac(m1));

    assert!(pings(&g1, "10.71.0.12"), "guests cannot reach each other");
    // Both link-locals pass duplicate address detection and reach each other.
    let link_local = |g: &str| {
        for _ in 0..50 {
            let a = ok_in(g, "ip -6 addr show dev eth0 scope link");
            assert!(!a.contains("dadfailed"), "{g}: {a}");
            if a.contains("fe80::") && !a.contains("tentative") {
                let addr = a.split_whitespace().skip_while(|w| *w != "inet6").nth(1);
                return addr.unwrap().split('/').next().unwrap().to_string();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{g}: no usable link-local address");
    };
    let (ll1, _) = (link_local(&g1), link_local(&g2));
    let six = in_ns(&g2, &format!("ping -6 -c1 -W2 {ll1}%eth0"));
    assert!(
        six.status.success(),
        "no IPv6 between the guests: {}",
        String::from_utf8_lossy(&six.stdout)
    );

    ns.kvmnet_ok(&["destroy", "--netns", &hv1]);
    ns.kvmnet_ok(&["destroy", "--netns", &hv2]);
}

/// A host upgraded from the derivation of VM and port name only: the port that exists keeps
/// its MAC, a port added gets one of the new form, and both survive a reboot (every link
/// gone, the state directory kept) through the record of the MACs given out.
#[test]
fn upgrade_and_reboot_keep_macs() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let hv = ns.reserve("mup");
    let old = naming::legacy_vm_mac("web1", "kv-web1-0");
    let spec = |web1_mac: &str, more: &str| {
        SpecFile::new(&format!(
            "version: 1
networks:
  n: {{ mode: isolated, ipv4: 10.72.0.1/24 }}
vms:
  web1: {{ ports: [ {{ network: n, ipv4: 10.72.0.10{web1_mac} }} ] }}
{more}"
        ))
    };
    // What an earlier version made: web1's port with the MAC it derived.
    let before = spec(&format!(", mac: \"{old}\""), "");
    ns.kvmnet_ok(&["apply", before.path(), "--netns", &hv]);
    assert_eq!(mac_of(&hv, "kv-web1-0"), naming::host_end_mac(old));

    // This version, with a VM added: web1 keeps its MAC; nothing else of it changes.
    let after = spec(
        "",
        "  new1: { ports: [ { network: n, ipv4: 10.72.0.11 } ] }\n",
    );
    let changes = plan_changes(&ns, after.path(), &hv);
    assert!(
        changes.iter().all(|c| !c.to_string().contains("kv-web1-0")),
        "{changes:#?}"
    );
    ns.kvmnet_ok(&["apply", after.path(), "--netns", &hv]);
    assert_eq!(mac_of(&hv, "kv-web1-0"), naming::host_end_mac(old));
    let new1 = first_candidate(&hv, "new1", "kv-new1-0");
    assert_eq!(mac_of(&hv, "kv-new1-0"), naming::host_end_mac(new1));
    assert_ne!(new1.0[1..3], [0x54, 0x00]);
    let set = ok(&format!(
        "ip netns exec {hv} nft list set bridge kvmnet port_mac"
    ));
    assert!(set.contains(&old.to_string()), "{set}");
    assert!(plan_changes(&ns, after.path(), &hv).is_empty());

    // The record is the root's alone.
    let record = ns.state_dir.join(format!("netns-{hv}")).join("macs.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&record).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A reboot: every link goes. The next apply gives web1 its MAC back.
    ok(&format!("ip netns del {hv}"));
    ns.kvmnet_ok(&["apply", after.path(), "--netns", &hv]);
    assert_eq!(mac_of(&hv, "kv-web1-0"), naming::host_end_mac(old));
    assert_eq!(mac_of(&hv, "kv-new1-0"), naming::host_end_mac(new1));
    ns.kvmnet_ok(&["destroy", "--netns", &hv]);
}

/// 1,000 ports on two bridges, none with `mac`: applied, every MAC (and host end) unique and
/// of the derived form, and a second plan is empty.
#[test]
fn a_thousand_ports_without_mac() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let hv = ns.reserve("mmany");
    let mut text = String::from(
        "version: 1
networks:
  a: { mode: isolated, ipv4: 10.73.0.1/22 }
  b: { mode: isolated, ipv4: 10.74.0.1/22 }
vms:
",
    );
    for i in 0..1000 {
        let net = if i % 2 == 0 { "a" } else { "b" };
        text.push_str(&format!("  m{i}: {{ ports: [ {{ network: {net} }} ] }}\n"));
    }
    let spec = SpecFile::new(&text);
    let start = std::time::Instant::now();
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &hv]);
    eprintln!("applied 1,000 ports in {:?}", start.elapsed());
    let links = ok(&format!("ip -n {hv} -br link show"));
    let macs: Vec<&str> = links
        .lines()
        .filter(|l| l.starts_with("kv-m"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(macs.len(), 1000, "{links}");
    let unique: std::collections::BTreeSet<&str> = macs.iter().copied().collect();
    assert_eq!(unique.len(), 1000, "two ports share a host end");
    assert!(
        macs.iter()
            .all(|m| m.starts_with("fe:") && !m.starts_with("fe:54:00:"))
    );
    assert!(plan_changes(&ns, spec.path(), &hv).is_empty());
    ns.kvmnet_ok(&["destroy", "--netns", &hv]);
}

/// The daemon enforces the settled MACs everywhere: a port that kept an earlier version's
/// MAC gets its DHCP reservation (keyed on that MAC) from a daemon whose spec has no `mac`,
/// also after a VM is added through its API.
#[test]
fn daemon_serves_the_kept_mac() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("mdd");
    let guest = ns.reserve("mdg");
    let old = naming::legacy_vm_mac("a", "h-a");
    let spec = |mac: &str, more: &str| {
        SpecFile::new(&format!(
            "version: 1
networks:
  n: {{ mode: nat, bridge: h-n, ipv4: 10.94.0.1/24, dhcp: {{ pool: false }} }}
vms:
  a: {{ ports: [ {{ network: n, name: h-a, kind: veth, netns: {guest}, ipv4: 10.94.0.10, dhcp_client: true{mac} }} ] }}
{more}"
        ))
    };
    let earlier = spec(&format!(", mac: \"{old}\""), "");
    ns.kvmnet_ok(&["apply", earlier.path(), "--netns", &host]);
    assert_eq!(mac_of(&guest, "eth0"), old);

    let now = spec("", "");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", now.path(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_RECONCILE_MS", "300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(sock.exists(), "the daemon did not start");
    let lease = || {
        ok_in(
            &guest,
            "busybox udhcpc -i eth0 -n -q -t 4 -T 1 -s /bin/true 2>&1 || true",
        )
    };
    let got = lease();
    assert!(got.contains("10.94.0.10"), "no reserved lease: {got}");
    assert_eq!(mac_of(&guest, "eth0"), old);

    // A VM added through the daemon's API: the port keeps its MAC and its reservation.
    let more = spec("", "  b: { ports: [ { network: n, name: h-b } ] }\n");
    ns.kvmnet_ok(&["apply", more.path(), "--netns", &host]);
    assert!(mac_of(&host, "h-b").0[0] == 0xfe);
    assert_eq!(mac_of(&guest, "eth0"), old);
    let got = lease();
    assert!(got.contains("10.94.0.10"), "no reserved lease: {got}");
}
