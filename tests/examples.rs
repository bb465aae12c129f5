//! The example specs work as the README says: each applies in a sandbox namespace, a second
//! apply changes nothing, and destroy leaves the sandbox as it was.

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
