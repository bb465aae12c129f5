//! `kvmnet import libvirt` against libvirt's own test XML: every network either imports to
//! a spec that validates and plans (and agrees with what libvirt itself makes of the same
//! file), or is refused with exit 2 and a message naming the element and FILE:LINE:COL.
//! And a guest keeps its address: the lease it gets from a libvirt-style dnsmasq equals the
//! one it gets from kvmnet after the import.
//!
//! The corpus is read where `KVMNET_CORPORA` says (default `../shared/corpora` next to the
//! repository); it is never copied here. Without it the corpus test skips, except under CI.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn corpora() -> Option<PathBuf> {
    let dir = std::env::var_os("KVMNET_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../shared/corpora"));
    if dir.join("libvirt/tests/networkxml2xmlin").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the libvirt corpus is missing at {} (set KVMNET_CORPORA), and CI must not skip",
        dir.display()
    );
    eprintln!("skipping: no libvirt corpus at {}", dir.display());
    None
}

fn kvmnet(args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmnet"));
    c.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("kvmnet runs");
    let text = stdin.unwrap_or("").to_string();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = pipe.write_all(text.as_bytes());
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    o
}

/// What libvirt's own output (networkxml2xmlout) says the imported spec must carry.
fn expected_facts(out_xml: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(out_xml).unwrap();
    let mut facts = Vec::new();
    for n in doc.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "bridge" if n.attribute("name").is_some() => {
                facts.push(format!("bridge: \"{}\"", n.attribute("name").unwrap()));
            }
            "mtu" => facts.push(format!("mtu: {}", n.attribute("size").unwrap())),
            "ip" if n.attribute("family") != Some("ipv6") => {
                let mask: std::net::Ipv4Addr = n.attribute("netmask").unwrap().parse().unwrap();
                facts.push(format!(
                    "ipv4: {}/{}",
                    n.attribute("address").unwrap(),
                    u32::from(mask).leading_ones()
                ));
            }
            "range" => facts.push(format!(
                "range: {}-{}",
                n.attribute("start").unwrap(),
                n.attribute("end").unwrap()
            )),
            "host" if n.attribute("mac").is_some() => {
                facts.push(format!(
                    "mac: {}",
                    n.attribute("mac").unwrap().to_lowercase()
                ));
                facts.push(format!("ipv4: {}", n.attribute("ip").unwrap()));
            }
            "interface" if n.parent().is_some_and(|p| p.has_tag_name("forward")) => {
                let dev = n.attribute("dev").unwrap();
                facts.push(match n.parent().unwrap().attribute("mode") {
                    None | Some("nat") => format!("nat: {{ egress: \"{dev}\" }}"),
                    Some(_) => format!("uplink: \"{dev}\""),
                });
            }
            _ => {}
        }
    }
    facts
}

/// A sandbox with the uplinks the corpus names, for plans that look them up (veths: a
/// kernel may lack the dummy module).
fn sandbox(ns: &mut Namespaces) -> String {
    let host = ns.add("imp");
    for dev in ["eth0", "eth1", "eth10"] {
        ok(&format!(
            "ip -n {host} link add {dev} type veth peer name {dev}p && ip -n {host} link set {dev} up"
        ));
    }
    host
}

#[test]
fn every_libvirt_test_network_imports_or_is_refused_with_its_place() {
    let Some(corpora) = corpora() else { return };
    let tests = corpora.join("libvirt/tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(tests.join("networkxml2xmlin"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 40, "{}", files.len());
    let root = privileged();
    let mut ns = Namespaces::new();
    let host = root.then(|| sandbox(&mut ns));
    let mut table = Vec::new();
    let mut imported = Vec::new();
    for f in &files {
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let o = kvmnet(&["import", "libvirt", f.to_str().unwrap()], None);
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        if o.status.code() == Some(2) {
            assert!(stdout.is_empty(), "{name}: refused, yet printed {stdout}");
            let first = stderr.lines().next().unwrap_or("");
            let place = format!("{}:", f.display());
            assert!(
                first.starts_with(&place)
                    && first[place.len()..]
                        .split(':')
                        .take(2)
                        .all(|n| n.parse::<u32>().is_ok())
                    && first.contains(": <"),
                "{name}: the refusal names no FILE:LINE:COL and element: {stderr}"
            );
            let reason = first[place.len()..].split(": ").nth(1).unwrap_or("");
            table.push(format!("| {name} | refused | {} |", reason.trim()));
            continue;
        }
        assert!(
            o.status.success(),
            "{name}: exit {:?}: {stderr}",
            o.status.code()
        );
        let v = kvmnet(&["validate", "-"], Some(&stdout));
        assert!(
            v.status.success(),
            "{name}: {stdout}\n{}",
            String::from_utf8_lossy(&v.stderr)
        );
        if let Some(h) = &host {
            let p = plan_stdin(&ns, h, &stdout);
            assert!(
                p.status.success(),
                "{name}: plan: {stdout}\n{}",
                String::from_utf8_lossy(&p.stderr)
            );
        }
        let out_xml = std::fs::read_to_string(tests.join("networkxml2xmlout").join(&name)).unwrap();
        for fact in expected_facts(&out_xml) {
            assert!(
                stdout.contains(&fact),
                "{name}: libvirt says {fact}, the import: {stdout}"
            );
        }
        table.push(format!("| {name} | imported | |"));
        imported.push(name);
    }
    println!(
        "| file | result | reason |\n|---|---|---|\n{}",
        table.join("\n")
    );
    println!(
        "{} imported, {} refused",
        imported.len(),
        files.len() - imported.len()
    );
    for must in [
        "isolated-network.xml",
        "set-mtu.xml",
        "nat-network-dns-forward-plain.xml",
        "direct-net.xml",
    ] {
        assert!(
            imported.iter().any(|i| i == must),
            "{must} must import: {imported:?}"
        );
    }
}

/// `kvmnet plan -` with the spec on stdin, in the test's state directory.
fn plan_stdin(ns: &Namespaces, host: &str, spec: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmnet"));
    c.args(["plan", "-", "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(spec.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn have(tool: &str) -> bool {
    let found = sh(&format!("command -v {tool}")).status.success();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "{tool} is missing, and CI must not skip"
    );
    if !found {
        eprintln!("skipping: {tool} is missing");
    }
    found
}

/// busybox udhcpc on eth0 of `ns`: the address it was given.
fn udhcpc(ns: &str, work: &Path, tag: &str) -> String {
    let script = work.join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"$ip\" > {}/{tag}.ip\nexit 0\n",
            work.display()
        ),
    )
    .unwrap();
    ok(&format!("chmod 755 {}", script.display()));
    let _ = std::fs::remove_file(work.join(format!("{tag}.ip")));
    let o = in_ns(
        ns,
        &format!(
            "busybox udhcpc -f -q -n -t 8 -T 1 -i eth0 -s {}",
            script.display()
        ),
    );
    assert!(
        o.status.success(),
        "udhcpc in {ns}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(work.join(format!("{tag}.ip")))
        .unwrap()
        .trim()
        .to_string()
}

const LEASE_NET: &str = "<network>\n  <name>lease</name>\n  <bridge name='lvbr0' stp='on' delay='0'/>\n  <ip address='10.77.0.1' netmask='255.255.255.0'>\n    <dhcp>\n      <range start='10.77.0.100' end='10.77.0.200'/>\n      <host mac='52:54:00:77:00:10' name='resv' ip='10.77.0.10'/>\n    </dhcp>\n  </ip>\n</network>\n";
const LEASE_DOMAIN: &str = "<domain type='kvm'>\n  <name>dyn</name>\n  <devices>\n    <interface type='network'>\n      <mac address='52:54:00:77:00:99'/>\n      <source network='lease'/>\n      <model type='virtio'/>\n      <filterref filter='clean-traffic'/>\n    </interface>\n  </devices>\n</domain>\n";

/// The network as libvirt runs it: a bridge with the gateway address, and dnsmasq started
/// as libvirt starts it (`--conf-file` in libvirt's format, `--leasefile-ro`), with the
/// reservation in a hosts file. Two guests behind veths: the reserved MAC and a dynamic one.
fn leases_under_libvirt(ns: &mut Namespaces, work: &Path) -> (String, String) {
    let host = ns.add("lvh");
    ok(&format!(
        "ip -n {host} link add lvbr0 type bridge && ip -n {host} addr add 10.77.0.1/24 dev lvbr0 && ip -n {host} link set lvbr0 up"
    ));
    let mut guests = Vec::new();
    for (tag, mac) in [("r", "52:54:00:77:00:10"), ("d", "52:54:00:77:00:99")] {
        let g = ns.add(&format!("lvg{tag}"));
        ok(&format!(
            "ip -n {host} link add lv{tag} type veth peer name eth0 netns {g} && \
             ip -n {g} link set eth0 address {mac} && ip -n {g} link set eth0 up && \
             ip -n {host} link set lv{tag} master lvbr0 && ip -n {host} link set lv{tag} up"
        ));
        guests.push(g);
    }
    let d = work.display();
    std::fs::write(
        work.join("lease.hostsfile"),
        "52:54:00:77:00:10,10.77.0.10,resv\n",
    )
    .unwrap();
    std::fs::write(work.join("lease.addnhosts"), "").unwrap();
    std::fs::write(
        work.join("lease.conf"),
        format!(
            "## dnsmasq conf file as libvirt writes it\nstrict-order\nexcept-interface=lo\nbind-dynamic\ninterface=lvbr0\n\
             dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0\ndhcp-no-override\ndhcp-authoritative\ndhcp-lease-max=101\n\
             dhcp-hostsfile={d}/lease.hostsfile\naddn-hosts={d}/lease.addnhosts\n"
        ),
    )
    .unwrap();
    let dnsmasq = Daemon(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &host,
                "dnsmasq",
                "--keep-in-foreground",
                "--user=root",
                "--group=root",
                "--pid-file",
            ])
            .arg(format!("--conf-file={d}/lease.conf"))
            .arg("--leasefile-ro")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs"),
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = udhcpc(&guests[0], work, "libvirt-r");
    let dyn_ = udhcpc(&guests[1], work, "libvirt-d");
    drop(dnsmasq);
    for g in guests.iter().chain([&host]) {
        ok(&format!("ip netns del {g}"));
    }
    ns.names.retain(|n| *n != host && !guests.contains(n));
    (r, dyn_)
}

/// The imported spec, with each VM's tap port stood in for by a veth whose far end is in a
/// namespace of its own and left to a DHCP client (no QEMU here).
fn as_veth_guests(spec: &str, guests: &[(&str, &str)]) -> String {
    let mut out = spec.to_string();
    for (vm, netns) in guests {
        let at = format!("  \"{vm}\":\n    ports:\n      - network: \"lease\"\n");
        assert!(out.contains(&at), "{vm} in {spec}");
        out = out.replace(
            &at,
            &format!("{at}        kind: veth\n        netns: {netns}\n        dhcp_client: true\n"),
        );
    }
    out
}

#[test]
fn a_guest_keeps_its_libvirt_address_under_kvmnet() {
    if !privileged() || !have("dnsmasq") || !have("busybox") {
        return;
    }
    let mut ns = Namespaces::new();
    let work = std::env::temp_dir().join(unique("lease"));
    std::fs::create_dir_all(&work).unwrap();
    let (libvirt_r, libvirt_d) = leases_under_libvirt(&mut ns, &work);
    assert_eq!(libvirt_r, "10.77.0.10", "dnsmasq gave the reservation");

    std::fs::write(work.join("lease.xml"), LEASE_NET).unwrap();
    std::fs::write(work.join("dyn.xml"), LEASE_DOMAIN).unwrap();
    let o = kvmnet(
        &[
            "import",
            "libvirt",
            work.join("lease.xml").to_str().unwrap(),
            "--domain",
            work.join("dyn.xml").to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let host = ns.reserve("kvh");
    let (gr, gd) = (ns.reserve("kvgr"), ns.reserve("kvgd"));
    let spec = SpecFile::new(&as_veth_guests(
        &String::from_utf8_lossy(&o.stdout),
        &[("resv", &gr), ("dyn", &gd)],
    ));
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["daemon", "--spec", spec.path(), "--netns", &host])
            .env("KVMNET_STATE_DIR", &ns.state_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sock.exists(), "the daemon did not start");
    let kvmnet_r = udhcpc(&gr, &work, "kvmnet-r");
    let kvmnet_d = udhcpc(&gd, &work, "kvmnet-d");
    drop(daemon);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    let _ = std::fs::remove_dir_all(&work);
    assert_eq!(kvmnet_r, libvirt_r, "the reserved guest's address");
    // A pool address is the server's choice (dnsmasq hashes the MAC, kvmnet takes the first
    // free one): both lie in the range libvirt gave.
    let in_range = |ip: &str| {
        let a: std::net::Ipv4Addr = ip.parse().unwrap();
        (std::net::Ipv4Addr::new(10, 77, 0, 100)..=std::net::Ipv4Addr::new(10, 77, 0, 200))
            .contains(&a)
    };
    assert!(
        in_range(&libvirt_d) && in_range(&kvmnet_d),
        "{libvirt_d} {kvmnet_d}"
    );
}
