//! `kvmnet show`: the spec last applied in a scope, checked against the live host. Planning
//! what it shows changes nothing, for every example (applied in a sandbox namespace as
//! tests/examples.rs applies them); after a destroy it shows an empty spec; drift is noted.

mod common;
use common::*;

/// Whether this kernel can make 802.1Q VLAN devices (8021q built in or loadable).
fn has_8021q() -> bool {
    std::path::Path::new("/proc/net/vlan").exists() || sh("modprobe -q 8021q").status.success()
}

/// Whether this kernel can make bonds (bonding built in or loadable).
fn has_bonding() -> bool {
    std::path::Path::new("/sys/class/net/bonding_masters").exists()
        || sh("modprobe -q bonding").status.success()
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

/// The host interfaces a golden spec expects to exist (uplinks, bond members, underlays),
/// the namespaces its veth ports ask for, and whether it needs 802.1Q.
fn golden_needs(text: &str) -> (Vec<String>, Vec<String>, Vec<String>, bool, bool) {
    use yaml_rust2::{Yaml, YamlLoader};
    let doc = &YamlLoader::load_from_str(text).unwrap()[0];
    let s = |y: &Yaml| y.as_str().map(str::to_string);
    let (mut ifaces, mut bonds, mut underlays, mut netns) = (vec![], vec![], vec![], vec![]);
    if let Some(h) = doc["host"]["uplinks"].as_hash() {
        for (name, u) in h {
            match u["members"].as_vec() {
                Some(m) => {
                    bonds.extend(s(name));
                    ifaces.extend(m.iter().filter_map(s));
                }
                None => ifaces.extend(s(name)),
            }
        }
    }
    let mut vlan = false;
    let mut bridges = vec![];
    if let Some(nets) = doc["networks"].as_hash() {
        for (name, n) in nets {
            vlan |= n["mode"].as_str() == Some("vlan");
            bridges.extend(s(&n["bridge"]));
            bridges.push(format!("kvbr-{}", name.as_str().unwrap_or("")));
            ifaces.extend(s(&n["uplink"]));
            underlays.extend(s(&n["underlay"]));
        }
    }
    if let Some(vms) = doc["vms"].as_hash() {
        for vm in vms.values() {
            for p in vm["ports"].as_vec().into_iter().flatten() {
                netns.extend(s(&p["netns"]));
            }
        }
    }
    ifaces.extend(underlays.iter().cloned());
    ifaces.retain(|i| !bonds.contains(i) && !bridges.contains(i));
    ifaces.sort();
    ifaces.dedup();
    netns.sort();
    netns.dedup();
    let bond = !bonds.is_empty();
    (ifaces, underlays, netns, vlan, bond)
}

/// Applies every golden case's spec (those that validate) in a namespace holding the host
/// interfaces it names, then plans what `show` prints from standard input: no changes.
/// A case whose expected plan is a conflict and that is refused here too shows nothing.
/// Cases with VLANs or bonds need a kernel with 8021q and bonding (tests/vlan.rs and
/// tests/bond.rs run those in a guest where the host's kernel has neither); a case that sets
/// NIC features a veth lacks is not applied.
#[test]
fn planning_the_shown_spec_of_every_golden_case_changes_nothing() {
    if !privileged() {
        return;
    }
    let dir = manifest_dir().join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path().join("spec.yaml"))
        .collect();
    cases.sort();
    let (mut shown_cases, mut refused) = (0, 0);
    for spec in cases {
        let text = std::fs::read_to_string(&spec).unwrap();
        let name = spec
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let mut ns = Namespaces::new();
        if !ns
            .kvmnet(&["validate", spec.to_str().unwrap()])
            .status
            .success()
        {
            continue;
        }
        let (ifaces, underlays, netns, vlan, bond) = golden_needs(&text);
        if (vlan && !has_8021q()) || (bond && !has_bonding()) {
            eprintln!("{name}: no 8021q or bonding in this kernel, not applied");
            continue;
        }
        for n in &netns {
            assert!(
                !std::path::Path::new("/run/netns").join(n).exists(),
                "{name}: a namespace {n} exists already; not touching it"
            );
            ns.names.push(n.clone());
        }
        let host = ns.add("shg");
        let snap = golden_snapshot(&spec.with_file_name("snapshot.json"));
        for (i, ifname) in ifaces.iter().enumerate() {
            make_host_interface(&host, ifname, i, &snap, underlays.contains(ifname));
        }
        let applied = ns.kvmnet(&["apply", spec.to_str().unwrap(), "--netns", &host]);
        let expected = std::fs::read_to_string(spec.with_file_name("plan.txt")).unwrap();
        if expected.starts_with("conflict") && !applied.status.success() {
            // The case is a spec its host refuses, and this one refused it too (a case whose
            // conflict is a property of its host only, like a missing br_netfilter, may
            // apply here): nothing is recorded.
            assert_eq!(
                ns.kvmnet_ok(&["show", "--netns", &host]),
                "version: 1\n",
                "{name}"
            );
            refused += 1;
            continue;
        }
        if !applied.status.success() && text.contains("ethtool:") {
            eprintln!(
                "{name}: the veth standing in for its NIC cannot take these ethtool settings"
            );
            continue;
        }
        assert!(
            applied.status.success(),
            "{name}: apply failed: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let shown = ns.kvmnet_ok(&["show", "--netns", &host]);
        assert_eq!(shown, text, "{name}");
        let plan = kvmnet_stdin(&ns, &["plan", "-", "--netns", &host, "--json"], &shown);
        assert!(plan.contains(r#""changes":[]"#), "{name}: {plan}");
        ns.kvmnet_ok(&["destroy", "--netns", &host]);
        shown_cases += 1;
    }
    eprintln!(
        "{shown_cases} golden cases applied and shown, {refused} refused as their case expects"
    );
    assert!(
        shown_cases >= 18 && refused >= 3,
        "{shown_cases} applied, {refused} refused"
    );
}

/// A golden case's host as observed (`{"links": [...], "addrs": [...]}`), or nothing.
fn golden_snapshot(path: &std::path::Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_default()
}

/// One host interface a golden case names, as a veth with the MTU and addresses its
/// snapshot gives it (an underlay without one gets an address: VXLAN needs a local one).
fn make_host_interface(
    host: &str,
    ifname: &str,
    i: usize,
    snap: &serde_json::Value,
    underlay: bool,
) {
    ok(&format!(
        "ip -n {host} link add {ifname} type veth peer name gpeer{i}"
    ));
    let links = snap["links"].as_array().cloned().unwrap_or_default();
    if let Some(mtu) = links
        .iter()
        .find(|l| l["name"] == ifname)
        .and_then(|l| l["mtu"].as_u64())
    {
        ok(&format!(
            "ip -n {host} link set {ifname} mtu {mtu} && ip -n {host} link set gpeer{i} mtu {mtu}"
        ));
    }
    ok(&format!(
        "ip -n {host} link set {ifname} up && ip -n {host} link set gpeer{i} up"
    ));
    let addrs: Vec<String> = snap["addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["dev"] == ifname)
        .filter_map(|a| a["addr"].as_str().map(str::to_string))
        .collect();
    for a in &addrs {
        ok(&format!("ip -n {host} addr add {a} dev {ifname}"));
    }
    if underlay && addrs.is_empty() {
        ok(&format!(
            "ip -n {host} addr add 203.0.113.{}/24 dev {ifname}",
            i + 2
        ));
    }
}

/// kvmnet with `input` on standard input, as `kvmnet show | kvmnet plan -` runs it.
fn kvmnet_stdin(ns: &Namespaces, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(args)
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
