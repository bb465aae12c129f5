//! `kvmnet export`: the QEMU arguments boot a real guest on a kvmnet tap that gets its DHCP
//! lease with the exported (derived, settled) MAC; the libvirt interfaces validate against
//! libvirt's domain schema; the cloud-init config is read by cloud-init's own parser.

mod common;
use common::*;

#[path = "common/guest.rs"]
mod guest;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = r#"version: 1
networks:
  default:
    mode: nat
    bridge: ex-br
    ipv4: 10.96.0.1/24
    ipv6: fd00:96::1/64
    ra: { mode: slaac+dhcpv6 }
    mtu: 1400
    dhcp:
      range: 10.96.0.100-10.96.0.150
      range6: fd00:96::1000-fd00:96::1fff
      dns: [10.96.0.1]
      domain: example.test
      routes: [ { to: 10.9.0.0/16, via: 10.96.0.5 } ]
    dns: { domain: vm.test }
  lan:
    mode: direct
    uplink: eth9
vms:
  guest:
    ports: [ { network: default, name: ex-tap } ]
  web:
    ports:
      - { network: default, name: web-eth0, ipv4: 10.96.0.10, ipv6: "fd00:96::10", queues: 4 }
      - { network: default, name: web-veth, kind: veth, netns: webns }
      - { network: lan, name: web-mv }
      - { network: default, name: web-eth3 }
  box:
    ports: [ { network: default, kind: veth, netns: boxns } ]
"#;

fn export(spec: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .arg("export")
        .args(args)
        .arg(spec)
        .env("KVMNET_STATE_DIR", std::env::temp_dir().join(unique("st")))
        .output()
        .unwrap()
}

fn export_ok(spec: &str, args: &[&str]) -> (String, String) {
    let o = export(spec, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "export {args:?}: {out}\n{err}");
    (out, err)
}

/// A MAC as `export` prints it in `mac=...` (the QEMU device's).
fn mac_in(qemu_args: &str) -> String {
    let at = qemu_args.find("mac=").expect("a mac") + 4;
    qemu_args[at..at + 17].to_string()
}

#[test]
fn qemu_arguments_per_kind_of_port() {
    let spec = SpecFile::new(SPEC);
    let (out, err) = export_ok(spec.path(), &["web", "--format", "qemu", "--netns", "nx"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(
        lines[0],
        "-netdev tap,id=net-web-eth0,ifname=web-eth0,script=no,downscript=no,queues=4,vhost=on"
    );
    assert!(
        lines[1].starts_with("-device virtio-net-pci,netdev=net-web-eth0,mac=52:")
            && lines[1].ends_with(",mq=on,vectors=10"),
        "{out}"
    );
    // The macvtap takes fd 3; its device node is named in a note on stderr.
    assert_eq!(lines[2], "-netdev tap,id=net-web-mv,fd=3");
    assert!(
        err.contains("3<>/dev/tap$(cat /sys/class/net/web-mv/ifindex)"),
        "{err}"
    );
    assert!(err.contains("web-veth is a veth port"), "{err}");
    assert!(lines[5].starts_with("-device virtio-net-pci,netdev=net-web-eth3,mac="));
    // --port picks one; a VM with only veth ports has nothing for QEMU (exit 2).
    let (one, _) = export_ok(
        spec.path(),
        &["web", "--port", "web-eth3", "--format", "qemu"],
    );
    assert_eq!(one.lines().count(), 2, "{one}");
    assert_eq!(
        export(spec.path(), &["box", "--format", "qemu"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        export(spec.path(), &["nope", "--format", "qemu"])
            .status
            .code(),
        Some(2)
    );
    let bad_port = export(spec.path(), &["web", "--port", "x", "--format", "qemu"]);
    assert_eq!(bad_port.status.code(), Some(2));
}

#[test]
fn libvirt_interfaces_validate_against_the_domain_schema() {
    let spec = SpecFile::new(SPEC);
    let (xml, _) = export_ok(spec.path(), &["web", "--format", "libvirt"]);
    assert_eq!(
        xml.matches("<interface type='ethernet'>").count(),
        3,
        "{xml}"
    );
    assert!(
        xml.contains("<target dev='web-eth0' managed='no'/>"),
        "{xml}"
    );
    assert!(xml.contains("<driver queues='4'/>"), "{xml}");
    assert!(xml.contains("<model type='virtio'/>"), "{xml}");
    let dir = std::env::temp_dir().join(unique("virt"));
    std::fs::create_dir_all(&dir).unwrap();
    let dom = dir.join("domain.xml");
    std::fs::write(
        &dom,
        format!(
            "<domain type='kvm'>\n<name>web</name>\n<memory unit='MiB'>256</memory>\n\
             <os><type arch='x86_64'>hvm</type></os>\n<devices>\n{xml}</devices>\n</domain>\n"
        ),
    )
    .unwrap();
    let v = Command::new("virt-xml-validate")
        .arg(&dom)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients, with xmllint from libxml2-utils)");
    assert!(
        v.status.success(),
        "{xml}\n{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cloud_init_reads_the_network_config() {
    let spec = SpecFile::new(SPEC);
    let (yaml, _) = export_ok(spec.path(), &["web", "--format", "cloud-init"]);
    let (qemu, _) = export_ok(spec.path(), &["web", "--format", "qemu"]);
    let v = &yaml_rust2::YamlLoader::load_from_str(&yaml).unwrap()[0];
    let s = |y: &yaml_rust2::Yaml| y.as_str().unwrap_or_else(|| panic!("{yaml}")).to_string();
    assert_eq!(v["version"].as_i64(), Some(2), "{yaml}");
    let eth0 = &v["ethernets"]["eth0"];
    assert_eq!(s(&eth0["match"]["macaddress"]), mac_in(&qemu), "{yaml}");
    assert_eq!(s(&eth0["set-name"]), "eth0");
    assert_eq!(s(&eth0["addresses"][0]), "10.96.0.10/24");
    assert_eq!(s(&eth0["routes"][0]["to"]), "0.0.0.0/0");
    assert_eq!(s(&eth0["routes"][0]["via"]), "10.96.0.1");
    assert_eq!(s(&eth0["routes"][1]["to"]), "10.9.0.0/16");
    assert_eq!(s(&eth0["nameservers"]["addresses"][0]), "10.96.0.1");
    assert_eq!(s(&eth0["nameservers"]["search"][0]), "example.test");
    assert_eq!(eth0["mtu"].as_i64(), Some(1400));
    // IPv6: the declared address with the prefix's length, the default route via the
    // gateway, the gateway as resolver (the network's `dns:` service, no `dns6`), RAs on.
    assert_eq!(s(&eth0["addresses"][1]), "fd00:96::10/64");
    assert_eq!(s(&eth0["gateway6"]), "fd00:96::1");
    assert_eq!(s(&eth0["nameservers"]["addresses"][1]), "fd00:96::1");
    assert_eq!(eth0["dhcp6"].as_bool(), Some(false), "{yaml}");
    assert_eq!(eth0["accept-ra"].as_bool(), Some(true), "{yaml}");
    // No veth (port 1); the direct port and the port without an address use DHCP, the
    // latter DHCPv6 too (ra.mode slaac+dhcpv6 hands addresses out by DHCPv6).
    assert!(v["ethernets"]["eth1"].is_badvalue(), "{yaml}");
    assert_eq!(v["ethernets"]["eth2"]["dhcp4"].as_bool(), Some(true));
    assert!(v["ethernets"]["eth2"]["dhcp6"].is_badvalue(), "{yaml}");
    assert_eq!(v["ethernets"]["eth3"]["dhcp4"].as_bool(), Some(true));
    assert_eq!(
        v["ethernets"]["eth3"]["dhcp6"].as_bool(),
        Some(true),
        "{yaml}"
    );
    assert_eq!(v["ethernets"]["eth3"]["accept-ra"].as_bool(), Some(true));

    // cloud-init's own parser renders it (to systemd-networkd files).
    let dir = std::env::temp_dir().join(unique("ci"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("network-config");
    std::fs::write(&file, &yaml).unwrap();
    let out = dir.join("out");
    let c = Command::new("cloud-init")
        .args([
            "devel",
            "net-convert",
            "-k",
            "yaml",
            "-D",
            "debian",
            "-O",
            "networkd",
        ])
        .arg("-p")
        .arg(&file)
        .arg("-d")
        .arg(&out)
        .output()
        .expect("cloud-init (Debian package cloud-init)");
    assert!(
        c.status.success(),
        "{yaml}\n{}",
        String::from_utf8_lossy(&c.stderr)
    );
    let eth0 = std::fs::read_to_string(out.join("etc/systemd/network/10-cloud-init-eth0.network"))
        .unwrap();
    for want in [
        "Address=10.96.0.10/24",
        "Gateway=10.96.0.1",
        "DNS=10.96.0.1",
        "MTUBytes=1400",
        "Address=fd00:96::10/64",
        "Gateway=fd00:96::1",
        "DNS=10.96.0.1 fd00:96::1",
    ] {
        assert!(eth0.contains(want), "{want}:\n{eth0}");
    }
    let eth3 = std::fs::read_to_string(out.join("etc/systemd/network/10-cloud-init-eth3.network"))
        .unwrap();
    // cloud-init's networkd renderer writes accept-ra only for an interface with DHCPv6.
    for want in ["DHCP=yes", "IPv6AcceptRA=True"] {
        assert!(eth3.contains(want), "{want}:\n{eth3}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// QEMU started with exactly the exported arguments gets a lease from the daemon for the
/// exported MAC: the MAC the port was derived and settled to.
#[test]
fn qemu_with_the_exported_arguments_gets_its_lease() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("exh");
    let spec = SpecFile::new(&guest_spec());
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
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sock.exists(), "daemon did not start");
    let args = ns.kvmnet_ok(&[
        "export",
        "guest",
        "--format",
        "qemu",
        "--netns",
        &host,
        spec.path(),
    ]);
    let mac = mac_in(&args);
    let argv: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(argv.len(), 4, "{args}");
    let mut g = guest::Guest::builder()
        .netns(&host)
        .qemu_args(&argv)
        .net(0, "dhcp")
        .name("export")
        .boot();
    let ready = g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
    let ip = guest::field(&ready, "ip").unwrap_or_default();
    assert!(ip.starts_with("10.96.0.1"), "no lease: {ready}");
    let leases = ns.kvmnet_ok(&["leases", "--netns", &host, "--json"]);
    assert!(
        leases.contains(&mac) && leases.contains(ip.trim_end_matches("/24")),
        "{mac} {ip}: {leases}"
    );
    exported_ipv6_works_in_the_guest(&ns, &host, &spec, &mut g);
    g.shutdown(Duration::from_secs(30));
    drop(daemon);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

/// The guest configured as the exported cloud-init config says (its declared `ipv6`, the
/// default route and the resolver over IPv6) reaches its gateway through the guard and has
/// its name answered; the spec then plans to no changes.
fn exported_ipv6_works_in_the_guest(
    ns: &Namespaces,
    host: &str,
    spec: &SpecFile,
    g: &mut guest::Guest,
) {
    let ci = ns.kvmnet_ok(&[
        "export",
        "guest",
        "--format",
        "cloud-init",
        "--netns",
        host,
        spec.path(),
    ]);
    let v = &yaml_rust2::YamlLoader::load_from_str(&ci).unwrap()[0];
    let eth0 = &v["ethernets"]["eth0"];
    let addr = eth0["addresses"][0]
        .as_str()
        .unwrap_or_else(|| panic!("{ci}"));
    assert_eq!(addr, "fd00:96::20/64", "{ci}");
    let gw = eth0["gateway6"].as_str().unwrap();
    let ns6 = eth0["nameservers"]["addresses"][1].as_str().unwrap();
    let t = Duration::from_secs(30);
    g.run_ok(&format!("ip -6 addr add {addr} dev eth0"), t);
    // Past duplicate address detection before the address is used.
    g.run_ok("sleep 3", t);
    g.run_ok(&format!("ip -6 route replace default via {gw} dev eth0"), t);
    let (code, out) = g.run(&format!("ping -c 2 -W 5 {gw}"), t);
    assert_eq!(code, 0, "ping over IPv6 from {addr}: {out}");
    let (code, out) = g.run(&format!("nslookup -type=AAAA guest.vm.test {ns6}"), t);
    assert!(
        code == 0 && out.contains("fd00:96::20"),
        "the exported resolver {ns6} answers the guest's name: {out}"
    );
    let plan = ns.kvmnet(&["plan", spec.path(), "--netns", host, "--detailed-exitcode"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "the dual-stack spec plans to no changes: {}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
}

/// The guest's network alone: a nat network with DHCP and one tap with a derived MAC.
fn guest_spec() -> String {
    let (networks, _) = SPEC.split_once("  lan:").unwrap();
    format!(
        "{networks}vms:\n  guest:\n    ports: [ {{ network: default, name: ex-tap, ipv6: \"fd00:96::20\" }} ]\n"
    )
}
