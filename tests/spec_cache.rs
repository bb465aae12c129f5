//! `SpecCache` must return exactly what `spec::parse_bytes` returns (the spec with every
//! location, or every error), whatever it parsed before; and it must really reuse work when
//! only some VMs changed. Pure: needs no root.

use std::fmt::Write as _;
use std::path::Path;

use kvmnet::spec::{self, HostIdentity, SpecCache};

/// The host identity derived MACs are made for here.
fn id() -> HostIdentity {
    HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host").unwrap()
}

/// Parses `text` through the cache and on its own, and insists both agree.
fn check(cache: &mut SpecCache, text: &str, what: &str) {
    let got = cache.parse_bytes(text.as_bytes(), &id());
    let want = spec::parse_bytes(text.as_bytes(), &id());
    assert!(
        got == want,
        "{what}: cache and full parse differ for:\n{text}\n-- cache\n{got:?}\n-- full\n{want:?}"
    );
}

/// Like `check`, and the cache read exactly `read` VM entries from scratch (`None`: it had to
/// fall back to the full parse).
fn check_read(cache: &mut SpecCache, text: &str, read: Option<usize>, what: &str) {
    check(cache, text, what);
    assert_eq!(cache.last_read(), read, "{what}: VM entries read");
}

fn files(dir: &str, name: Option<&str>) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        let p = match name {
            Some(n) => p.join(n),
            None => p,
        };
        if p.extension().is_some_and(|x| x == "yaml") && p.is_file() {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no files under {dir}");
    out
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut all = files("tests/invalid", None);
    all.extend(files("tests/golden", Some("spec.yaml")));
    all.extend(files("examples", None));
    all
}

#[test]
fn every_catalogued_spec_parses_the_same() {
    let all = corpus();
    // Fresh, then with every other file cached before it, then in reverse order.
    for (name, bytes) in &all {
        let mut fresh = SpecCache::default();
        assert!(
            fresh.parse_bytes(bytes, &id()) == spec::parse_bytes(bytes, &id()),
            "{name}"
        );
    }
    let mut cache = SpecCache::default();
    for (name, bytes) in all.iter().chain(all.iter().rev()).chain(all.iter()) {
        assert!(
            cache.parse_bytes(bytes, &id()) == spec::parse_bytes(bytes, &id()),
            "{name}"
        );
    }
    // The valid examples go through the fast path: otherwise this test proves little.
    let mut fast = 0;
    for (_, bytes) in &all {
        let mut c = SpecCache::default();
        if c.parse_bytes(bytes, &id()).is_ok() && c.last_read().is_some() {
            fast += 1;
        }
    }
    assert!(fast >= 10, "only {fast} specs took the fast path");
}

const FW: &str =
    "firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22, 5201] } ] } }";
const QOS: &str = "qos: { inbound: { rate: 5gbit }, outbound: { rate: 5gbit } }";
const HEAD: &str =
    "version: 1\nnetworks:\n  n: { mode: nat, bridge: bp-n, ipv4: 10.160.0.1/16 }\nvms:\n";

fn vm(i: usize) -> String {
    format!(
        "  o{i}: {{ ports: [ {{ network: n, name: bpo{i}, ipv4: 10.160.{}.{}, {FW}, {QOS} }} ] }}\n",
        1 + i / 250,
        2 + i % 250
    )
}

/// The same VM in block style, with comments and blank lines inside.
fn vm_block(i: usize) -> String {
    format!(
        "  o{i}:\n    # port of o{i}\n    ports:\n      - network: n\n        name: bpo{i}\n\n        ipv4: 10.160.{}.{}\n        {FW}\n        qos:\n          inbound: {{ rate: 5gbit }}\n",
        1 + i / 250,
        2 + i % 250
    )
}

fn build(head: &str, vms: &[String], tail: &str) -> String {
    let mut s = head.to_string();
    for v in vms {
        s.push_str(v);
    }
    s.push_str(tail);
    s
}

#[test]
fn edits_of_a_large_spec() {
    let n = 1000;
    let mut vms: Vec<String> = (0..n).map(vm).collect();
    let mut cache = SpecCache::default();
    let mut text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(n), "first parse");
    check_read(&mut cache, &text, Some(0), "same text again");

    vms.push(vm(n));
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(1), "add at the end");

    vms.insert(500, vm(n + 1));
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(1), "add in the middle");

    vms.insert(0, vm(n + 2));
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(1), "add at the start");

    vms.remove(700);
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(0), "remove one");

    vms[300] = vms[300].replace("name: bpo", "mac: '52:54:00:00:00:01', name: bpo");
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(1), "change one");

    vms.swap(10, 900);
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(0), "reorder");

    vms[400].push_str("  # a comment after o400\n\n");
    vms[401].insert_str(0, "# a comment at column 0\n");
    text = build(HEAD, &vms, "");
    // A comment at column 0 belongs to the entry above it: only o400's text changed.
    check_read(&mut cache, &text, Some(1), "comments");

    // The head changes in a way VMs do not see: the chunks stay.
    let head_mtu = HEAD.replace("ipv4: 10.160.0.1/16", "ipv4: 10.160.0.1/16, mtu: 9000");
    text = build(&head_mtu, &vms, "");
    check_read(&mut cache, &text, Some(0), "head: mtu");
    // The head changes what the VMs read as (their prefix): all are read again.
    let head_prefix = HEAD.replace("10.160.0.1/16", "10.160.0.1/15");
    text = build(&head_prefix, &vms, "");
    check_read(&mut cache, &text, Some(vms.len()), "head: prefix");
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(vms.len()), "head: back");

    // An error in one VM: the full parse's errors, then a fix reads only that VM.
    let good = vms[200].clone();
    vms[200] = good.replace("ipv4: 10.160.", "ipv4: 10.161.");
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, None, "error in a VM");
    assert!(cache.parse_bytes(text.as_bytes(), &id()).is_err());
    vms[200] = good;
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(1), "error fixed");

    // A typo in the head: the full parse's errors, and the VMs stay cached for the fix.
    text = build(&HEAD.replace("version: 1", "version: one"), &vms, "");
    check_read(&mut cache, &text, None, "error in the head");
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(0), "head fixed");

    // An error across VMs (the same address twice) is the full parse's too.
    let dup = vms[5]
        .replace("o", "dup")
        .replace("name: bpdup", "name: bpx");
    vms.push(dup);
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, None, "duplicate address");
    vms.pop();

    // A VM key twice: the YAML loader's complaint, not the cache's.
    let mut twice = vms.clone();
    twice.push(vms[7].clone());
    text = build(HEAD, &twice, "");
    check_read(&mut cache, &text, None, "duplicate VM");

    // Another indentation: every entry is new text.
    let deeper: Vec<String> = vms
        .iter()
        .map(|v| v.lines().map(|l| format!("  {l}\n")).collect())
        .collect();
    text = build(HEAD, &deeper, "");
    check_read(&mut cache, &text, Some(vms.len()), "indentation");

    // Fields after the vms block keep their line numbers in the head.
    let tail = "host:\n  sysctl: { net.ipv4.ip_forward: 1 }\n";
    text = build(HEAD, &vms, tail);
    check_read(&mut cache, &text, Some(vms.len()), "tail");
    vms.insert(3, vm(n + 3));
    text = build(HEAD, &vms, tail);
    check_read(&mut cache, &text, Some(1), "tail, one added");
    let bad_tail = "host:\n  sysctl: { net.ipv4.ip_forward: 0 }\n";
    text = build(HEAD, &vms, bad_tail);
    check_read(&mut cache, &text, None, "tail error");

    // The cache holds only what the latest text has.
    text = build(HEAD, &vms[..3], "");
    check_read(&mut cache, &text, Some(0), "shrunk");
    text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(vms.len() - 3), "grown back");
}

#[test]
fn block_style_and_mixed_entries() {
    let mut vms: Vec<String> = (0..60)
        .map(|i| if i % 3 == 0 { vm_block(i) } else { vm(i) })
        .collect();
    let mut cache = SpecCache::default();
    let text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(60), "mixed");
    vms.insert(30, vm_block(100));
    let text = build(HEAD, &vms, "");
    check_read(&mut cache, &text, Some(1), "block added");
    // Edge layouts: empty port lists, a null port list, a comment before the first VM, a
    // flow collection spread over lines.
    let odd = [
        "  e1: { ports: [] }\n".to_string(),
        "  e2:\n    ports:\n".to_string(),
        "  e3: { ports: [\n    { network: n, ipv4: 10.160.9.9 } ] }\n".to_string(),
    ];
    let mut with_odd = vms.clone();
    with_odd.extend(odd.iter().cloned());
    let text = build(&format!("{HEAD}  # the VMs\n\n"), &with_odd, "");
    check(&mut cache, &text, "odd layouts");
    assert!(
        cache.last_read().is_some(),
        "odd layouts took the fast path"
    );
    // A flow collection whose continuation sits at the VM indentation falls back.
    let text = build(
        HEAD,
        &["  f: { ports: [\n  { network: n } ] }\n".to_string()],
        "",
    );
    check_read(&mut cache, &text, None, "flow at entry indentation");
}

/// Random small edits of specs (characters YAML cares about inserted, deleted, swapped;
/// lines duplicated or dropped): the cache, warm with earlier versions, agrees every time.
#[test]
fn random_edits_agree() {
    let mut base_vms: Vec<String> = (0..24)
        .map(|i| if i % 4 == 0 { vm_block(i) } else { vm(i) })
        .collect();
    base_vms.insert(5, "  # spacer\n\n".to_string());
    let mut seeds: Vec<String> = vec![
        build(HEAD, &base_vms, ""),
        build(HEAD, &base_vms, "host:\n  tuning: throughput\n"),
    ];
    for (_, bytes) in corpus() {
        if let Ok(t) = String::from_utf8(bytes) {
            seeds.push(t);
        }
    }
    let alphabet = [
        " ",
        "  ",
        ":",
        "#",
        "\n",
        "-",
        "{",
        "}",
        "[",
        "]",
        ",",
        "\"",
        "'",
        "&a ",
        "*a",
        "!t ",
        "|\n",
        "x",
        "0",
        "\t",
        "---\n",
        "vms:\n",
        "  o1: { ports: [] }\n",
    ];
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % m as u64) as usize
    };
    let mut cache = SpecCache::default();
    let mut fast = 0;
    for round in 0..3000 {
        // Mostly the generated specs, which are valid before the edit.
        let seed = if round % 3 == 0 {
            &seeds[2 + (round / 3) % (seeds.len() - 2)]
        } else {
            &seeds[round % 2]
        };
        let mut text = seed.clone();
        for _ in 0..1 + next(3) {
            if text.is_empty() {
                text.push_str(seed);
            }
            let mut at = next(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match next(4) {
                0 => text.insert_str(at, alphabet[next(alphabet.len())]),
                1 => {
                    let mut end = (at + 1 + next(4)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, "");
                }
                2 => {
                    let lines: Vec<&str> = text.split_inclusive('\n').collect();
                    let i = next(lines.len());
                    let mut v: Vec<&str> = lines.clone();
                    v.insert(i, lines[i]);
                    text = v.concat();
                }
                _ => {
                    let lines: Vec<&str> = text.split_inclusive('\n').collect();
                    let i = next(lines.len());
                    let mut v = lines.clone();
                    v.remove(i);
                    text = v.concat();
                }
            }
        }
        check(&mut cache, &text, &format!("round {round}"));
        if cache.last_read().is_some() {
            fast += 1;
        }
        // And the unedited seed right after, with the edit's chunks cached.
        check(&mut cache, seed, &format!("round {round}, seed"));
    }
    assert!(fast > 100, "only {fast} edits took the fast path");
}

#[test]
fn generated_sizes() {
    let mut cache = SpecCache::default();
    let mut before = 0;
    for n in [1usize, 2, 10, 250, 251] {
        let mut s = String::from(HEAD);
        for i in 0..n {
            let _ = write!(s, "{}", vm(i));
        }
        check_read(&mut cache, &s, Some(n - before), &format!("{n} VMs"));
        before = n;
    }
}

/// Layouts at the edge of what the cache splits: each must read exactly as the full parse
/// reads it, whether or not the cache takes its fast path.
#[test]
fn layout_edge_cases() {
    let vms: Vec<String> = (0..5).map(vm).collect();
    let body: String = vms.concat();
    let cases: Vec<(String, bool)> = vec![
        // (text, whether the fast path must be taken)
        (format!("{HEAD}{body}"), true),
        (
            format!("{}{body}", HEAD.replace("vms:\n", "vms:   # the guests\n")),
            true,
        ),
        (
            format!("{HEAD}{body}# the end\n\nhost:\n  tuning: latency\n"),
            true,
        ),
        (format!("{HEAD}{}", body.trim_end()), true),
        (format!("{HEAD}  # none yet\n"), false),
        (format!("\u{feff}{HEAD}{body}"), false),
        (format!("{HEAD}{body}").replace('\n', "\r\n"), false),
        (format!("{HEAD}  web.1: {{ ports: [] }}\n{body}"), false),
        (format!("{HEAD}  web_1: {{ ports: [] }}\n{body}"), true),
        (
            format!(
                "{HEAD}  t1:\n    ports:\n      - network: n\n        owner: |\n          qemu\n{body}"
            ),
            false,
        ),
        (
            format!(
                "{HEAD}  t2:\n    ports:\n      - network: n\n        owner: >-\n          qemu\n{body}"
            ),
            true,
        ),
        (
            format!("{HEAD}  t3: {{ ports: [ {{ network: n, owner: \"qemu\" }} ] }}\n{body}"),
            true,
        ),
        (
            format!(
                "{HEAD}  t4: {{ ports: [ {{ network: n, ipv4: \"10.160.9.\n    9\" }} ] }}\n{body}"
            ),
            false,
        ),
        (
            format!("{HEAD}  t5: &x {{ ports: [] }}\n  t6: *x\n{body}"),
            false,
        ),
        (format!("{HEAD}  t7: !!map {{ ports: [] }}\n{body}"), false),
        (
            format!("{HEAD}  t8: {{ ports: [], <<: {{}} }}\n{body}"),
            false,
        ),
        (format!("{HEAD}{body}...\n"), false),
        (format!("%YAML 1.2\n---\n{HEAD}{body}"), false),
        (format!("{HEAD}{body}vms:\n  z: {{ ports: [] }}\n"), false),
        (format!("{HEAD}{body}  o0: {{ ports: [] }}\n"), false),
        (format!("{HEAD}{body}").replace("vms:\n", "vms: \n"), true),
        (
            format!(
                "version: 1\nvms:\n{body}networks:\n  n: {{ mode: nat, bridge: bp-n, ipv4: 10.160.0.1/16 }}\n"
            ),
            true,
        ),
    ];
    for (i, (text, fast)) in cases.iter().enumerate() {
        let mut cache = SpecCache::default();
        check(&mut cache, text, &format!("case {i}"));
        let full_ok = spec::parse(text, &id()).is_ok();
        if *fast {
            assert!(full_ok, "case {i} should be a valid spec");
            assert!(cache.last_read().is_some(), "case {i}: fast path expected");
        }
        // Warm, with the plain spec cached before.
        let mut warm = SpecCache::default();
        check(&mut warm, &format!("{HEAD}{body}"), "warm-up");
        check(&mut warm, text, &format!("case {i}, warm"));
    }
}

/// A field OVN ports refuse, written in a VM entry the cache reads on its own (the only error
/// of the spec, so no other error sends the cache to the full parse): refused all the same.
#[test]
fn ovn_refusals_inside_cached_entries() {
    let head = "version: 1\novn:\n  nb: unix:/run/ovn/ovnnb_db.sock\n  sb: unix:/run/ovn/ovnsb_db.sock\n  \
                chassis:\n    hv1: { encap_ip: 172.31.0.1 }\nnetworks:\n  w: { backend: ovn, mode: isolated, ipv4: 10.170.0.1/16 }\nvms:\n";
    let vm = |i: usize, extra: &str| {
        format!(
            "  v{i}:\n    host: hv1\n    ports:\n      - {{ network: w, ipv4: 10.170.{}.{}{extra} }}\n",
            1 + i / 250,
            2 + i % 250
        )
    };
    let vms: Vec<String> = (0..50).map(|i| vm(i, "")).collect();
    let mut cache = SpecCache::default();
    check_read(&mut cache, &build(head, &vms, ""), Some(50), "valid");
    for extra in [
        ", ethtool: { channels: { combined: 2 } }",
        ", qos: { inbound: { rate: 10mbit, ceil: 20mbit } }",
        ", qos: { outbound: { rate: 10mbit, ceil: 20mbit } }",
    ] {
        let mut edited = vms.clone();
        edited[25] = vm(25, extra);
        let text = build(head, &edited, "");
        check(&mut cache, &text, extra);
        assert!(
            spec::parse_bytes(text.as_bytes(), &id()).is_err(),
            "{extra} is refused"
        );
    }
}

/// Entries the cache holds passed the OVN port checks under one set of chassis and OVN
/// networks; when the head changes either, they are checked again: a VM whose chassis left
/// `ovn.chassis`, and a field OVN refuses on a network that moved to OVN, are refused as a
/// full parse refuses them.
#[test]
fn cached_ovn_ports_are_checked_again_when_the_head_changes() {
    let head = |chassis: &str, k_backend: &str| {
        format!(
            "version: 1\novn:\n  nb: unix:/run/ovn/ovnnb_db.sock\n  sb: unix:/run/ovn/ovnsb_db.sock\n  \
             chassis:\n{chassis}networks:\n  w: {{ backend: ovn, mode: isolated, ipv4: 10.171.0.1/16 }}\n  \
             k: {{ backend: {k_backend}, mode: isolated, ipv4: 10.172.0.1/16 }}\nvms:\n"
        )
    };
    let both = "    hv1: { encap_ip: 172.31.0.1 }\n    hv2: { encap_ip: 172.31.0.2 }\n";
    let one = "    hv1: { encap_ip: 172.31.0.1 }\n";
    let mut vms: Vec<String> = (0..40)
        .map(|i| {
            format!(
                "  v{i}:\n    host: hv{}\n    ports:\n      - {{ network: w, ipv4: 10.171.1.{} }}\n",
                1 + i % 2,
                i + 2
            )
        })
        .collect();
    vms.push(
        "  q:\n    host: hv1\n    ports:\n      - { network: k, ipv4: 10.172.1.2, qos: { inbound: { rate: 10mbit, ceil: 20mbit } } }\n"
            .into(),
    );
    let mut cache = SpecCache::default();
    let valid = build(&head(both, "kernel"), &vms, "");
    check_read(&mut cache, &valid, Some(41), "valid");
    check_read(&mut cache, &valid, Some(0), "again, all cached");
    for (text, what) in [
        (
            build(&head(one, "kernel"), &vms, ""),
            "hv2 left ovn.chassis",
        ),
        (build(&head(both, "ovn"), &vms, ""), "k moved to OVN"),
    ] {
        check(&mut cache, &text, what);
        assert!(
            spec::parse_bytes(text.as_bytes(), &id()).is_err(),
            "{what}: refused"
        );
        // And back: valid again, from the cache.
        check(&mut cache, &valid, what);
    }
}

/// A trunk's VLANs are the head's: when a VLAN id moves to another network, the cached
/// entry is not read again (the networks' names, modes and subnets are as they were), but
/// its port is built again, its trunk now joining the other network.
#[test]
fn cached_trunks_follow_the_vlans_of_the_head() {
    let head = |lab: u16, dmz: u16| {
        format!(
            "version: 1\nnetworks:\n  office: {{ mode: vlan, uplink: eth0, vlan: 10, ipv4: 10.10.0.1/24 }}\n  \
             lab: {{ mode: vlan, uplink: eth0, vlan: {lab} }}\n  dmz: {{ mode: vlan, uplink: eth0, vlan: {dmz} }}\nvms:\n"
        )
    };
    let vms = vec![
        "  router:\n    ports:\n      - { network: office, name: rt, ipv4: 10.10.0.2, vlans: [20] }\n"
            .to_string(),
        "  desk:\n    ports:\n      - { network: office, ipv4: 10.10.0.11 }\n".to_string(),
    ];
    let mut cache = SpecCache::default();
    let trunk_of = |text: &str, cache: &mut SpecCache| {
        let s = cache.parse_bytes(text.as_bytes(), &id()).unwrap();
        s.vms["router"].ports[0].trunk[0].network.clone()
    };
    let before = build(&head(20, 30), &vms, "");
    check_read(&mut cache, &before, Some(2), "first");
    assert_eq!(trunk_of(&before, &mut cache), "lab");
    let swapped = build(&head(30, 20), &vms, "");
    check_read(&mut cache, &swapped, Some(0), "VLAN ids swapped");
    assert_eq!(trunk_of(&swapped, &mut cache), "dmz");
    check_read(&mut cache, &before, Some(0), "and back");
    assert_eq!(trunk_of(&before, &mut cache), "lab");
}

/// A text seen again is read from the cache alone, even when a call that failed between
/// dropped from the cache the entries the last good layout still had. (Found by fuzzing:
/// an entry taken over from that layout, but gone from the cache, was read again.)
#[test]
fn a_failed_call_between_costs_no_entry_later() {
    let head = "version: 1\nnetworks:\n  n:\n    mode: isolated\n    ipv4: 10.0.0.1/24\nvms:\n";
    let entry = |name: &str, port: &str| {
        format!("  {name}:\n    ports: [ {{ network: n, name: {port} }} ]\n")
    };
    let (r, w, x) = (entry("r", "pr"), entry("w", "pw"), entry("x", "px"));
    let bad = "  b:\n    ports: [ { network: n, nme: pb } ]\n";
    let mut cache = SpecCache::default();
    check_read(&mut cache, &format!("{head}{r}{w}{x}"), Some(3), "first");
    // Another head and a bad entry: every entry looked up (r not among them), then refused.
    let failed = format!("# another head\n{head}{w}{bad}");
    assert!(cache.parse_bytes(failed.as_bytes(), &id()).is_err());
    // Worked out from the first text's layout: r is taken over from it.
    let text = format!("{head}{r}{w}");
    check_read(&mut cache, &text, Some(0), "x removed");
    check_read(&mut cache, &text, Some(0), "the same text again");
}
