//! A failed apply leaves the host exactly as it was: for every K, `KVMNET_FAIL_AFTER=K`
//! fails right after step K and everything done must be undone.

mod common;
use common::*;

const SYSCTLS: &[&str] = &["net.ipv4.ip_forward", "net.core.somaxconn"];

fn spec_new(guest: &str) -> String {
    format!(
        r#"version: 1
host:
  sysctl:
    net.core.somaxconn: "1234"
networks:
  default:
    mode: nat
    bridge: rbr0
    ipv4: 10.71.0.1/24
  iso:
    mode: isolated
    ipv4: 10.72.0.1/24
    mtu: 9000
    bandwidth: 50mbit
vms:
  a:
    ports:
      - {{ network: default, name: ra0, queues: 2, mirror: rb0, qos: {{ inbound: {{ rate: 10mbit }}, outbound: {{ rate: 5mbit }} }} }}
      - {{ network: iso, name: ra1, kind: veth, netns: {guest}, ipv4: 10.72.0.10, qos: {{ floor: 20mbit }} }}
  b:
    ports:
      - {{ network: default, name: rb0, kind: veth, netns: {guest}b, ipv4: 10.71.0.11 }}
"#
    )
}

fn spec_old(guest: &str) -> String {
    format!(
        r#"version: 1
networks:
  default:
    mode: nat
    bridge: rbr0
    ipv4: 10.71.0.1/24
    mtu: 1400
    bandwidth: 30mbit
  gone:
    mode: routed
    ipv4: 10.73.0.1/24
vms:
  a:
    ports:
      - {{ network: default, name: ra0, qos: {{ floor: 10mbit }} }}
      - {{ network: gone, name: rg0, kind: veth, netns: {guest}, ipv4: 10.73.0.10 }}
  old:
    ports:
      - {{ network: gone, name: rold }}
"#
    )
}

fn world(host: &str, guest: &str) -> String {
    let mut s = fingerprint(host, SYSCTLS);
    for g in namespaces_with(guest) {
        s.push_str(&format!("== netns {g}\n{}", fingerprint(&g, &[])));
    }
    s
}

fn steps(ns: &Namespaces, spec: &str, host: &str) -> usize {
    let out = ns.kvmnet_ok(&["plan", spec, "--netns", host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["changes"].as_array().unwrap().len()
}

fn check_every_k(ns: &Namespaces, spec: &str, host: &str, guest: &str) {
    let n = steps(ns, spec, host);
    assert!(n >= 8, "plan too short to test rollback: {n}");
    let before = world(host, guest);
    for k in 1..=n {
        let ks = k.to_string();
        let o = ns.kvmnet_env(
            &["apply", spec, "--netns", host],
            &[("KVMNET_FAIL_AFTER", ks.as_str())],
        );
        assert_eq!(
            o.status.code(),
            Some(1),
            "K={k}: apply should fail\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("ROLLBACK INCOMPLETE"), "K={k}: {stderr}");
        let after = world(host, guest);
        if after != before {
            let diff: Vec<String> = before
                .lines()
                .zip(after.lines())
                .filter(|(a, b)| a != b)
                .take(10)
                .map(|(a, b)| format!("- {a}\n+ {b}"))
                .collect();
            panic!(
                "K={k} of {n}: host differs after rollback:\n{}",
                diff.join("\n")
            );
        }
    }
    // And without the failure the same plan goes through.
    ns.kvmnet_ok(&["apply", spec, "--netns", host]);
    assert_eq!(steps(ns, spec, host), 0);
}

#[test]
fn rollback_from_empty_and_from_older_spec() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("rbhost");
    let guest = ns.reserve("rbg");
    ns.names.push(format!("{guest}b"));
    // A foreign bridge and table that must come through untouched.
    ok(&format!(
        "ip -n {host} link add docker0 type bridge && ip -n {host} addr add 172.17.0.1/16 dev docker0 && \
         ip netns exec {host} nft add table ip filter && \
         ip netns exec {host} nft add chain ip filter FORWARD '{{ type filter hook forward priority 0; policy accept; }}'"
    ));

    let new = SpecFile::new(&spec_new(&guest));
    check_every_k(&ns, new.path(), &host, &guest);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);

    let old = SpecFile::new(&spec_old(&guest));
    ns.kvmnet_ok(&["apply", old.path(), "--netns", &host]);
    check_every_k(&ns, new.path(), &host, &guest);

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert!(
        namespaces_with(&guest).is_empty(),
        "guest namespaces left behind"
    );
}

/// A failed apply says why in its kind, not only in its message: `nft` not installed is
/// `tool_missing`, a refused step `kernel_refused`; both are rolled back (exit 1).
#[test]
fn a_missing_nft_is_told_from_a_refused_step() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("rbnft");
    let spec = SpecFile::new(
        "version: 1\nnetworks:\n  n: { mode: nat, bridge: rn0, ipv4: 10.74.0.1/24 }\n\
         vms:\n  a: { ports: [ { network: n, name: rn-a } ] }\n",
    );
    let before = fingerprint(&host, &[]);
    let apply = ["apply", spec.path(), "--netns", &host, "--json"];
    for (env, kind) in [
        (("PATH", "/nonexistent"), "tool_missing"),
        (("KVMNET_FAIL_AFTER", "2"), "kernel_refused"),
    ] {
        let o = ns.kvmnet_env(&apply, &[env]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{kind}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["kind"], kind, "{v}");
        assert!(stderr.contains("rolled back"), "{stderr}");
        assert_eq!(fingerprint(&host, &[]), before, "{kind}");
    }
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
