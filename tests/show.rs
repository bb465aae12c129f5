//! `kvmnet show`: the spec last applied in a scope, checked against the live host. Planning
//! what it shows changes nothing, for every example (applied in a sandbox namespace as
//! tests/examples.rs applies them); after a destroy it shows an empty spec; drift is noted.

mod common;
use common::*;

/// Whether this kernel can make 802.1Q VLAN devices (8021q built in or loadable).
fn has_8021q() -> bool {
    std::path::Path::new("/proc/net/vlan").exists() || sh("modprobe -q 8021q").status.success()
}

#[test]
fn planning_the_shown_spec_of_every_example_changes_nothing() {
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
        // An OVN spec needs real OVN daemons: tests/ovn_backend.rs applies one on a lab.
        if f.file_name().is_some_and(|n| n == "ovn.yaml") {
            continue;
        }
        if f.file_name().is_some_and(|n| n == "vlan.yaml") && !has_8021q() {
            eprintln!("{}: no 8021q in this kernel, not applied", f.display());
            continue;
        }
        let mut ns = Namespaces::new();
        let host = ns.add("sh");
        ok(&format!(
            "ip -n {host} link add eth0 type veth peer name eth0p && ip -n {host} link set eth0 up && \
             ip -n {host} addr add 203.0.113.2/24 dev eth0 && ip -n {host} route add default via 203.0.113.1"
        ));
        ns.names.push("kvmnet-demo-guest".into());
        let spec = f.to_str().unwrap();
        ns.kvmnet_ok(&["apply", spec, "--netns", &host]);
        let shown = ns.kvmnet_ok(&["show", "--netns", &host]);
        let file = SpecFile::new(&shown);
        let plan = ns.kvmnet_ok(&["plan", file.path(), "--netns", &host, "--json"]);
        assert!(plan.contains(r#""changes":[]"#), "{spec}: {plan}\n{shown}");
        ns.kvmnet_ok(&["destroy", "--netns", &host]);
        let o = ns.kvmnet(&["show", "--netns", &host]);
        assert!(o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stdout), "version: 1\n", "{spec}");
        assert!(
            o.stderr.is_empty(),
            "{spec}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn show_notes_a_host_that_drifted_from_the_spec() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("shd");
    let spec = SpecFile::new(
        "version: 1\nnetworks:\n  n:\n    mode: isolated\n    bridge: sh-br\n    ipv4: 10.97.0.1/24\n\
         vms:\n  a:\n    ports: [ { network: n, name: sh-tap } ]\n",
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let o = ns.kvmnet(&["show", "--netns", &host]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        std::fs::read_to_string(spec.path()).unwrap()
    );
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok(&format!("ip -n {host} link del sh-tap"));
    let o = ns.kvmnet(&["show", "--netns", &host]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the host does not match this spec"), "{err}");
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    // A namespace that does not exist is refused, as by status.
    assert_eq!(
        ns.kvmnet(&["show", "--netns", "kvmnet-no-such-ns"])
            .status
            .code(),
        Some(2)
    );
}
