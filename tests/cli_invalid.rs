//! Every spec in the invalid catalogue (tests/invalid) is refused by the CLI the way an
//! operator needs: exit status 2, each error as FILE:LINE:COL: PATH: MESSAGE, and nothing
//! changed on the host — not by validate, plan or apply. Specs that are valid on paper but
//! clash with objects kvmnet does not own are refused the same way.

mod common;
use common::*;

struct Expect {
    path: String,
    loc: String,
    text: String,
}

fn expectations(text: &str) -> Vec<Expect> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect:"))
        .map(|rest| {
            let (path, rest) = rest.split_once(" @ ").expect("PATH @ L:C ~ TEXT");
            let (loc, text) = rest.split_once(" ~ ").expect("PATH @ L:C ~ TEXT");
            Expect {
                path: path.trim().to_string(),
                loc: loc.trim().to_string(),
                text: text.trim().to_string(),
            }
        })
        .collect()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn catalogue_is_refused_with_exit_2_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("inv");
    ok(&format!(
        "ip -n {host} link add eth0 type veth peer name eth0p && ip -n {host} link add virbr0 type bridge \
         && ip -n {host} link add eth0.10 type bridge \
         && ip -n {host} link add br0p type veth peer name br0q && ip -n {host} link set br0p master virbr0"
    ));
    let before = fingerprint(&host, &["net.ipv4.ip_forward"]);

    let dir = manifest_dir().join("tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the catalogue needs at least 30 cases");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let exp = expectations(&String::from_utf8_lossy(&bytes));
        assert!(!exp.is_empty(), "{f:?} has no expectations");
        let fname = f.to_str().unwrap();
        for args in [
            vec!["validate", fname],
            vec!["plan", fname, "--netns", &host],
            vec!["apply", fname, "--netns", &host],
        ] {
            let o = ns.kvmnet(&args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{args:?}: exit status\n{err}");
            for e in &exp {
                let head = format!("{fname}:{}: {}: ", e.loc, e.path);
                assert!(
                    err.lines()
                        .any(|l| l.starts_with(&head) && l.contains(&e.text)),
                    "{args:?}: expected a line starting {head:?} containing {:?}, got:\n{err}",
                    e.text
                );
            }
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // --json gives the errors as data too.
    let o = ns.kvmnet(&[
        "apply",
        files[0].to_str().unwrap(),
        "--netns",
        &host,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["changes"], serde_json::json!([]));
    assert!(v["errors"][0]["line"].as_u64().unwrap() > 0);

    // Valid specs that clash with foreign objects: refused before anything changes.
    let clashes = [
        (
            "networks:\n  n:\n    mode: nat\n    bridge: virbr0\n    ipv4: 10.0.5.1/24\n",
            "networks.n.bridge",
            "not managed by kvmnet",
        ),
        (
            "networks:\n  n:\n    mode: nat\n    ipv4: 10.0.5.1/24\nvms:\n  v:\n    ports: [ { network: n, name: eth0 } ]\n",
            "vms.v.ports[0].name",
            "not managed by kvmnet",
        ),
        (
            "networks:\n  lan:\n    mode: bridge\n    uplink: eth7\n",
            "networks.lan.uplink",
            "does not exist",
        ),
        (
            "networks:\n  v10:\n    mode: vlan\n    uplink: eth7\n    vlan: 10\n",
            "networks.v10.uplink",
            "uplink 'eth7' does not exist",
        ),
        (
            // A foreign interface already has the name of the VLAN sub-interface.
            "networks:\n  v10:\n    mode: vlan\n    uplink: eth0\n    vlan: 10\n",
            "networks.v10.vlan",
            "'eth0.10' (the VLAN 10 sub-interface of uplink 'eth0') already exists",
        ),
        (
            "networks:\n  n:\n    mode: nat\n    ipv4: 10.0.5.1/24\nvms:\n  v:\n    ports: [ { network: n, owner: no-such-user-here } ]\n",
            "vms.v.ports[0].owner",
            "no user",
        ),
        (
            "host:\n  sysctl:\n    kernel.pid_max: \"99999\"\n",
            "host.sysctl.\"kernel.pid_max\"",
            "--netns",
        ),
        (
            "host:\n  sysctl:\n    net.ipv4.no_such_knob: \"1\"\n",
            "host.sysctl.\"net.ipv4.no_such_knob\"",
            "no sysctl",
        ),
        (
            "host:\n  uplinks:\n    bond0:\n      mode: 802.3ad\n      members: [eth0, eth8]\n",
            "host.uplinks.bond0.members[1]",
            "member 'eth8' does not exist",
        ),
        (
            "host:\n  uplinks:\n    bond0:\n      mode: active-backup\n      members: [eth0, br0p]\n",
            "host.uplinks.bond0.members[1]",
            "already enslaved to 'virbr0'",
        ),
        (
            "host:\n  uplinks:\n    virbr0:\n      mode: active-backup\n      members: [eth0]\n",
            "host.uplinks.virbr0",
            "not a bond managed by kvmnet",
        ),
        (
            "host:\n  uplinks:\n    eth6:\n      mtu: 9000\n",
            "host.uplinks.eth6",
            "does not exist",
        ),
    ];
    for (body, path, text) in clashes {
        let spec = SpecFile::new(&format!("version: 1\n{body}"));
        for cmd in ["plan", "apply"] {
            let o = ns.kvmnet(&[cmd, spec.path(), "--netns", &host]);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{cmd} {body}\n{err}");
            assert!(
                err.contains(&format!(": {path}: ")) && err.contains(text),
                "{cmd}: {err}"
            );
        }
    }
    // Usage errors are exit 2 as well.
    assert_eq!(ns.kvmnet(&["apply"]).status.code(), Some(2));
    assert_eq!(ns.kvmnet(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        ns.kvmnet(&["validate", "/nonexistent/spec.yaml"])
            .status
            .code(),
        Some(2)
    );

    assert_eq!(
        fingerprint(&host, &["net.ipv4.ip_forward"]),
        before,
        "something changed"
    );
}
