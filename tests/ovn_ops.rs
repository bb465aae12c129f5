//! Operating the OVN backend on a real two-chassis OVN (tests/common/ovn_lab.rs): `status`
//! shows where each port is bound, whether it is up and how many logical flows each network
//! has (the count `ovn-sbctl lflow-list` shows), on a chassis and on a host that is none
//! (from the Southbound database its apply recorded); `doctor` passes on healthy chassis and
//! names a stopped ovn-controller with the service to start; daemons on both chassis (one
//! told its chassis, one finding it where the last apply recorded it) repair Northbound rows
//! edited or deleted by hand and a port taken off br-int, and `apply --chassis` through a
//! daemon reaches it.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

use std::time::{Duration, Instant};

fn spec(lab: &OvnLab, a_ns: &str, b_ns: &str) -> String {
    format!(
        r#"{head}networks:
  opsnet:
    backend: ovn
    mode: routed
    ipv4: 10.81.0.1/24
vms:
  a:
    host: hv1
    ports:
      - {{ network: opsnet, name: opa, kind: veth, netns: {a_ns}, mac: "52:54:00:81:00:0a", ipv4: 10.81.0.10 }}
  b:
    host: hv2
    ports:
      - {{ network: opsnet, name: opb, kind: veth, netns: {b_ns}, mac: "52:54:00:81:00:0b", ipv4: 10.81.0.11 }}
"#,
        head = lab.spec_head(2, &[], ""),
    )
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `kvmnet doctor --json` on chassis `i`, with OVN's run directory where the lab's
/// ovn-controller keeps its pid file: (exit code, checks by id).
fn doctor(lab: &OvnLab, i: usize) -> (i32, Vec<serde_json::Value>) {
    let ns = lab.chassis[i - 1].ns.clone();
    let rundir = lab.chassis[i - 1].dir.display().to_string();
    let etc = lab.sysconfdir(i);
    let o = lab.ns.kvmnet_env(
        &["doctor", "--netns", &ns, "--json"],
        &[
            ("OVN_RUNDIR", &rundir),
            ("OVS_RUNDIR", &rundir),
            ("OVS_SYSCONFDIR", &etc),
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| {
        panic!(
            "doctor's JSON: {e}: {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let checks = v["checks"].as_array().cloned().unwrap_or_default();
    (o.status.code().unwrap_or(-1), checks)
}

fn ovn_checks(checks: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    checks
        .iter()
        .filter(|c| c["id"].as_str().unwrap_or("").starts_with("ovn-"))
        .collect()
}

/// The logical flows of switch `ls` as ovn-sbctl counts them (datapath groups' included).
fn lflows(lab: &OvnLab, ls: &str) -> u64 {
    lab.sbctl(&format!("lflow-list {ls}"))
        .lines()
        .filter(|l| l.trim_start().starts_with("table="))
        .count() as u64
}

#[test]
fn status_doctor_and_daemon_on_two_chassis() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(2);
    lab.start_controller(1);
    lab.start_controller(2);
    let a_ns = lab.ns.reserve("opa");
    let b_ns = lab.ns.reserve("opb");
    let file = SpecFile::new(&spec(&lab, &a_ns, &b_ns));
    okk(&lab, 1, &["apply", file.path()]);
    okk(&lab, 2, &["apply", file.path()]);
    for ns in [&a_ns, &b_ns] {
        ok_in(ns, "ethtool -K eth0 tx off >/dev/null");
    }
    lab.wait_up("opa");
    lab.wait_up("opb");
    wait_ping(&b_ns, "10.81.0.10");

    check_status(&lab);
    status_on_no_chassis(&mut lab, file.path());
    doctor_healthy(&lab);
    let _d1 = lab.start_daemon(1, file.path(), Some("hv1"));
    let _d2 = lab.start_daemon(2, file.path(), None);
    daemons_repair(&lab, file.path(), &b_ns);
    doctor_names_stopped_controller(&mut lab);
}

/// status: each port's chassis and up, the network's logical flows as OVN counts them.
fn check_status(lab: &OvnLab) {
    let v: serde_json::Value = serde_json::from_str(&okk(lab, 1, &["status", "--json"])).unwrap();
    let o = &v["ovn"];
    assert_eq!(o["chassis"], "hv1", "{v}");
    let net = o["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["network"] == "opsnet")
        .unwrap_or_else(|| panic!("opsnet in {v}"));
    let flows = net["flows"].as_u64().unwrap();
    assert!(flows > 0);
    assert_eq!(flows, lflows(lab, "opsnet"), "{v}");
    let port = |name: &str| {
        net["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    assert_eq!(port("opa")["chassis"], "hv1");
    assert_eq!(port("opb")["chassis"], "hv2");
    assert_eq!(port("opa")["up"], true);
    assert_eq!(port("opb")["up"], true);
    assert_eq!(o["port_errors"], serde_json::json!([]));
    assert_eq!(o["errors"], serde_json::json!([]), "{v}");
    assert_eq!(
        v["networks"],
        serde_json::json!([]),
        "no kernel network here"
    );
    let text = okk(lab, 2, &["status"]);
    assert!(
        text.contains("OVN NETWORK")
            && text
                .lines()
                .any(|l| l.starts_with("opb ") && l.contains("hv2") && l.contains("true")),
        "{text}"
    );
}

/// A host that is no chassis (one that only writes the Northbound rows) shows, without the
/// spec, each port's chassis and `up` and the flows, from the Southbound database its last
/// apply recorded.
fn status_on_no_chassis(lab: &mut OvnLab, file: &str) {
    let ns = lab.ns.add("opn");
    lab.ns
        .kvmnet_ok(&["apply", file, "--netns", &ns, "--chassis", "nobody"]);
    let out = lab.ns.kvmnet_ok(&["status", "--json", "--netns", &ns]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let net = v["ovn"]["networks"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["network"] == "opsnet"))
        .unwrap_or_else(|| panic!("opsnet in {v}"));
    assert!(net["flows"].as_u64().is_some_and(|f| f > 0), "{v}");
    let opa = net["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["port"] == "opa"))
        .unwrap_or_else(|| panic!("opa in {v}"));
    assert_eq!(opa["chassis"], "hv1", "{v}");
    assert_eq!(opa["up"], true, "{v}");
}

/// doctor: healthy chassis pass every OVN check.
fn doctor_healthy(lab: &OvnLab) {
    for i in [1, 2] {
        let (_, checks) = doctor(lab, i);
        let ovn = ovn_checks(&checks);
        for id in [
            "ovn-nb",
            "ovn-sb",
            "ovn-ovs",
            "ovn-controller",
            "ovn-vswitchd",
            "ovn-system-id",
            "ovn-chassis",
            "ovn-ports",
            "ovn-encap-ip",
        ] {
            assert!(
                ovn.iter().any(|c| c["id"] == id),
                "{id} checked on hv{i}: {checks:?}"
            );
        }
        assert!(ovn.iter().all(|c| c["status"] == "ok"), "hv{i}: {ovn:?}");
    }
}

/// Daemons (hv1's told its chassis, hv2's finding it in what the last apply recorded)
/// take `apply --chassis` and repair drift.
fn daemons_repair(lab: &OvnLab, file: &str, b_ns: &str) {
    // `apply --chassis` reaches the daemon: another chassis than its own is refused.
    let o = kvm(lab, 1, &["apply", file], Some("hv2"));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("this daemon is OVN chassis hv1, not hv2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    okk(lab, 1, &["apply", file]);
    // status through the daemon shows the OVN part too.
    let v: serde_json::Value = serde_json::from_str(&okk(lab, 2, &["status", "--json"])).unwrap();
    assert_eq!(v["ovn"]["chassis"], "hv2", "{v}");

    // A row edited by hand is repaired within the reconcile interval...
    lab.nbctl("lsp-set-port-security opa");
    wait_until("the daemon to restore opa's port security", 15, || {
        lab.nbctl("get Logical_Switch_Port opa port_security")
            .contains("10.81.0.10")
    });
    // ... a row deleted by hand is made again, and the port binds and carries traffic.
    lab.nbctl("lsp-del opb");
    wait_until("the daemon to make opb again", 15, || {
        lab.nbctl("--bare --columns=name find Logical_Switch_Port name=opb")
            .trim()
            == "opb"
    });
    lab.wait_up("opb");
    wait_ping(b_ns, "10.81.0.10");
    // ... and hv2's daemon, chassis hv2, puts its port back on br-int.
    lab.vsctl(2, "del-port br-int opb");
    wait_until("the daemon to put opb back on br-int", 15, || {
        lab.vsctl(2, "list-ports br-int")
            .lines()
            .any(|l| l == "opb")
    });
    lab.wait_up("opb");
    wait_ping(b_ns, "10.81.0.10");
}

/// doctor names a stopped ovn-controller, and the service to start.
fn doctor_names_stopped_controller(lab: &mut OvnLab) {
    // Open vSwitch's service would set another system-id at its next start: a warning.
    let conf = format!("{}/openvswitch/system-id.conf", lab.sysconfdir(2));
    std::fs::write(&conf, "0b7c1f9e-5d2e-4a7b-9c1e-2f3a4b5c6d7e\n").unwrap();
    let (code, checks) = doctor(lab, 2);
    let c = checks
        .iter()
        .find(|c| c["id"] == "ovn-system-id")
        .unwrap_or_else(|| panic!("{checks:?}"));
    assert_eq!((code, &c["status"]), (0, &serde_json::json!("warn")), "{c}");
    assert_eq!(c["fix"], format!("echo hv2 > {conf}"), "{c}");
    std::fs::write(&conf, "hv2\n").unwrap();
    lab.stop_controller(2);
    let (code, checks) = doctor(lab, 2);
    assert_eq!(code, 1, "{checks:?}");
    let c = checks
        .iter()
        .find(|c| c["id"] == "ovn-controller")
        .unwrap_or_else(|| panic!("{checks:?}"));
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["message"].as_str().unwrap().contains("hv2"), "{c}");
    assert!(
        c["fix"].as_str().unwrap().contains("systemctl start"),
        "{c}"
    );
    let (_, checks) = doctor(lab, 1);
    assert!(
        ovn_checks(&checks).iter().all(|c| c["status"] == "ok"),
        "{checks:?}"
    );
}

/// kvmnet on chassis `i` with `--chassis hvI`, which must succeed; its stdout.
fn okk(lab: &OvnLab, i: usize, args: &[&str]) -> String {
    let o = kvm(lab, i, args, Some(&format!("hv{i}")));
    assert!(
        o.status.success(),
        "kvmnet {args:?} on hv{i}: {}\n{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(&o)
}

fn kvm(lab: &OvnLab, i: usize, args: &[&str], chassis: Option<&str>) -> std::process::Output {
    let mut a: Vec<&str> = args.to_vec();
    let ns = lab.chassis[i - 1].ns.clone();
    a.extend(["--netns", &ns]);
    if let Some(c) = chassis {
        a.extend(["--chassis", c]);
    }
    lab.ns.kvmnet(&a)
}
