//! The example specs work as the README says: each applies in a sandbox namespace, a second
//! apply changes nothing, and destroy leaves the sandbox as it was.
//!
//! Examples that need kernel modules a test host may lack are only planned here: their
//! behaviour is tested where those modules exist (QEMU guests, see tests/vlan.rs). The OVN
//! example needs an OVN deployment: it is validated here and its backend tested on a lab.

mod common;
use common::*;

#[test]
fn every_example_applies_idempotently_and_destroys_cleanly() {
    if !privileged() {
        return;
    }
    let dir = manifest_dir().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for f in files {
        let mut ns = Namespaces::new();
        let host = ns.add("ex");
        // The bridge example enslaves eth0: give the sandbox one, with an address and a
        // default route that must survive the round trip.
        ok(&format!(
            "ip -n {host} link add eth0 type veth peer name eth0p && ip -n {host} link set eth0 up && \
             ip -n {host} addr add 203.0.113.2/24 dev eth0 && ip -n {host} route add default via 203.0.113.1"
        ));
        // Guest namespaces the examples name are fixed names: make sure none is left over.
        ns.names.push("kvmnet-demo-guest".into());
        let before = fingerprint(
            &host,
            &["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"],
        );
        let spec = f.to_str().unwrap();
        ns.kvmnet_ok(&["validate", spec]);
        if f.file_name().is_some_and(|n| n == "ovn.yaml") {
            // An OVN deployment (databases, northd, chassis) is no sandbox's: the OVN backend
            // is applied on a lab of real OVN daemons in tests/ovn_backend.rs and
            // tests/ovn_ops.rs. Validated only.
            continue;
        }
        if f.file_name().is_some_and(|n| n == "vlan.yaml") && !has_8021q() {
            // 802.1Q devices cannot be made on a kernel without 8021q: plan only.
            eprintln!("{spec}: no 8021q in this kernel, planned but not applied");
            let plan = ns.kvmnet_ok(&["plan", spec, "--netns", &host]);
            assert!(plan.contains("+ vlan eth0.10 (network office"), "{plan}");
            assert!(
                plan.contains("+ vlan router-trunk.20 (network lab"),
                "{plan}"
            );
            continue;
        }
        ns.kvmnet_ok(&["apply", spec, "--netns", &host]);
        let again = ns.kvmnet_ok(&["plan", spec, "--netns", &host, "--json"]);
        assert!(again.contains(r#""changes":[]"#), "{spec}: {again}");
        let st = ns.kvmnet_ok(&["status", "--netns", &host]);
        assert!(st.contains("NETWORK"), "{spec}: {st}");
        ns.kvmnet_ok(&["destroy", "--netns", &host]);
        assert_eq!(
            fingerprint(
                &host,
                &["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"]
            ),
            before,
            "{spec}: destroy did not restore the sandbox"
        );
    }
}

/// Whether this kernel can make 802.1Q VLAN devices (8021q built in or loadable).
fn has_8021q() -> bool {
    std::path::Path::new("/proc/net/vlan").exists() || sh("modprobe -q 8021q").status.success()
}
