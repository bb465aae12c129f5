//! ethtool settings: offloads and channels on veth ports, applied through SIOCETHTOOL and
//! read back with ethtool(8); drift repaired; settings a device cannot take refused (at plan
//! time when the device exists, with a rollback when it does not yet); and a foreign
//! interface's settings, set through the engine as a host uplink section will, given back by
//! destroy from the originals in the state directory; and an offload key taking the whole
//! group of features ethtool(8) names by it.

mod common;
use common::*;

fn spec(guest: &str, extra: &str) -> String {
    format!(
        r#"version: 1
networks:
  n: {{ mode: isolated, bridge: etbr, ipv4: 10.78.0.1/24 }}
vms:
  a:
    ports:
      - network: n
        name: et0
        kind: veth
        netns: {guest}
        ethtool:
          offloads: {{ tso: false, gro: true, tx_checksum: false }}
          channels: {{ rx: 1, tx: 1 }}
{extra}"#
    )
}

fn feature(ns: &str, dev: &str, name: &str) -> String {
    let out = ok_in(ns, &format!("ethtool -k {dev}"));
    out.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("{name} not in ethtool -k {dev}:\n{out}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// (rx, tx) channel counts currently set.
fn channels(ns: &str, dev: &str) -> (String, String) {
    let out = ok_in(ns, &format!("ethtool -l {dev}"));
    let cur = out.split("Current hardware settings:").nth(1).unwrap();
    let get = |k: &str| {
        cur.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap()
            .trim()
            .to_string()
    };
    (get("RX"), get("TX"))
}

fn plan_len(ns: &Namespaces, spec: &str, host: &str) -> usize {
    let out = ns.kvmnet_ok(&["plan", spec, "--netns", host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["changes"].as_array().unwrap().len()
}

#[test]
fn ethtool_on_ports_and_foreign_interfaces() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("eh");
    let guest = ns.reserve("eg");

    // Ports: applied, read back with ethtool(8), idempotent.
    let s = SpecFile::new(&spec(&guest, ""));
    ns.kvmnet_ok(&["apply", s.path(), "--netns", &host]);
    assert_eq!(feature(&host, "et0", "tx-tcp-segmentation"), "off");
    assert_eq!(feature(&host, "et0", "tx-tcp6-segmentation"), "off");
    assert_eq!(feature(&host, "et0", "generic-receive-offload"), "on");
    assert_eq!(feature(&host, "et0", "tx-checksumming"), "off");
    assert_eq!(channels(&host, "et0"), ("1".into(), "1".into()));
    assert_eq!(plan_len(&ns, s.path(), &host), 0);

    // Drift: changed by hand, shown by plan, repaired by apply.
    ok_in(&host, "ethtool -K et0 gro off && ethtool -L et0 rx 2");
    let p = ns.kvmnet_ok(&["plan", s.path(), "--netns", &host]);
    assert!(
        p.contains("~ ethtool et0: channels.rx 2 -> 1, gro off -> on"),
        "{p}"
    );
    ns.kvmnet_ok(&["apply", s.path(), "--netns", &host]);
    assert_eq!(feature(&host, "et0", "generic-receive-offload"), "on");
    assert_eq!(channels(&host, "et0"), ("1".into(), "1".into()));

    // A setting the existing device cannot take: refused at plan time, naming the field.
    let rings = SpecFile::new(&spec(&guest, "").replace(
        "channels: { rx: 1, tx: 1 }",
        "channels: { rx: 1, tx: 1 }\n          rings: { rx: 512 }",
    ));
    let o = ns.kvmnet(&["apply", rings.path(), "--netns", &host]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("vms.a.ports[0].ethtool.rings.rx: 'et0' does not support rings"),
        "{err}"
    );

    // The same on a port that does not exist yet: the kernel refuses it during apply, the
    // error names port and setting, and everything is rolled back.
    let before = fingerprint(&host, &[]);
    let new_port = SpecFile::new(&spec(
        &guest,
        &format!(
            "  b:\n    ports:\n      - {{ network: n, name: et1, kind: veth, netns: {guest}b, ethtool: {{ rings: {{ rx: 512 }} }} }}\n"
        ),
    ));
    ns.names.push(format!("{guest}b"));
    let o = ns.kvmnet(&["apply", new_port.path(), "--netns", &host]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ethtool rings.rx on et1: the device does not support changing it"),
        "{err}"
    );
    assert!(!err.contains("ROLLBACK INCOMPLETE"), "{err}");
    assert_eq!(fingerprint(&host, &[]), before, "not rolled back");

    // A foreign interface (the stand-in for a host uplink): settings from host.uplinks,
    // originals recorded, and destroy gives them back.
    ok(&format!(
        "ip -n {host} link add up0 numtxqueues 4 numrxqueues 4 type veth peer name up0p \
         numtxqueues 4 numrxqueues 4 && ip -n {host} link set up0 up"
    ));
    let k_before = ok_in(&host, "ethtool -k up0");
    let l_before = ok_in(&host, "ethtool -l up0");
    assert_eq!(feature(&host, "up0", "generic-receive-offload"), "off");
    // Through the spec: host.uplinks names the interface and its ethtool settings.
    let text = format!(
        "host:\n  uplinks:\n    up0:\n      ethtool: {{ offloads: {{ gro: true, tso: false }}, channels: {{ rx: 1 }} }}\n{}",
        std::fs::read_to_string(s.path()).unwrap()
    );
    let up = SpecFile::new(&text);
    let planned = ns.kvmnet_ok(&["plan", up.path(), "--netns", &host]);
    assert!(
        planned.contains("~ ethtool up0: channels.rx 4 -> 1, gro off -> on, tso on -> off"),
        "{planned}"
    );
    ns.kvmnet_ok(&["apply", up.path(), "--netns", &host]);
    assert!(
        ns.kvmnet_ok(&["plan", up.path(), "--netns", &host])
            .starts_with("No changes")
    );
    assert_eq!(feature(&host, "up0", "generic-receive-offload"), "on");
    assert_eq!(feature(&host, "up0", "tx-tcp-segmentation"), "off");
    assert_eq!(channels(&host, "up0").0, "1");
    let saved =
        std::fs::read_to_string(ns.state_dir.join(format!("netns-{host}/state.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        v["ethtool_originals"]["up0"],
        serde_json::json!({ "channels.rx": 4, "gro": 0, "tso": 1 }),
        "{saved}"
    );
    // Destroy (no spec at all) finds the originals in the state directory.
    let d = ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert!(d.contains("~ ethtool up0"), "{d}");
    assert_eq!(ok_in(&host, "ethtool -k up0"), k_before);
    assert_eq!(ok_in(&host, "ethtool -l up0"), l_before);
    let saved =
        std::fs::read_to_string(ns.state_dir.join(format!("netns-{host}/state.json"))).unwrap();
    assert!(
        !saved.contains("up0"),
        "originals kept after restore: {saved}"
    );
}

/// `tso: false` means what `ethtool -K DEV tso off` does: every feature ethtool(8) counts as
/// TSO goes off, the newer ones outside the kernel's legacy TSO mask (AccECN's) included, so
/// its summary line says off. Destroy gives every one of them back.
#[test]
fn tso_off_is_the_whole_group_ethtool_names_tso() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("tso");
    ok(&format!(
        "ip -n {host} link add name tg0 type veth peer name tg1"
    ));
    let before = ok_in(&host, "ethtool -k tg0");
    assert_eq!(feature(&host, "tg0", "tcp-segmentation-offload"), "on");
    let s = SpecFile::new(
        "version: 1\nhost: { uplinks: { tg0: { ethtool: { offloads: { tso: false } } } } }\n",
    );
    ns.kvmnet_ok(&["apply", s.path(), "--netns", &host]);

    let after = ok_in(&host, "ethtool -k tg0");
    assert_eq!(feature(&host, "tg0", "tcp-segmentation-offload"), "off");
    let tso: Vec<&str> = after
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("tx-tcp") && l.contains("-segmentation:"))
        .collect();
    assert!(tso.len() >= 4, "{after}");
    assert!(
        tso.iter()
            .all(|l| l.split(": ").nth(1).unwrap().starts_with("off")),
        "{after}"
    );
    // Read back as ethtool(8) reads it: nothing left to change.
    assert_eq!(plan_len(&ns, s.path(), &host), 0);

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(ok_in(&host, "ethtool -k tg0"), before);
}
