//! Valid specs parse into the expected `Spec`; odd but legal input is read as documented;
//! no input whatsoever makes the parser panic.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use kvmnet::spec::macs::Candidates;
use kvmnet::spec::naming;
use kvmnet::spec::{
    Dhcp, DhcpRoute, HostIdentity, Ipv4Cidr, Loc, Mac, Mode, Network, Owner, Port, PortKind, Spec,
    SpecError,
};

/// The fixed host identity these tests derive MACs for.
fn id() -> HostIdentity {
    HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host").unwrap()
}

fn parse(text: &str) -> Result<Spec, Vec<SpecError>> {
    kvmnet::spec::parse(text, &id())
}

fn parse_bytes(bytes: &[u8]) -> Result<Spec, Vec<SpecError>> {
    kvmnet::spec::parse_bytes(bytes, &id())
}

/// A port's first derived MAC under [`id`].
fn derived(vm: &str, port: &str) -> Mac {
    Candidates::new(&id(), vm, port).get(0)
}

const FULL: &str = r#"version: 1
host:
  sysctl:
    net.core.somaxconn: "4096"
    net.ipv4.ip_forward: 1
    vm.swappiness: 10
networks:
  default:
    mode: nat
    bridge: virbr0
    ipv4: 192.168.122.1/24
    mtu: 1500
    nat: { egress: eth0 }
    dhcp:
      range: 192.168.122.100-192.168.122.254
      pool: true
      lease_time: 2h
      dns: [192.168.122.1]
      domain: example.test
      routes: [ { to: 10.9.0.0/16, via: 192.168.122.5 } ]
  routed1:
    mode: routed
    ipv4: 10.20.0.1/24
    dhcp: {}
  hostonly:
    mode: isolated
    ipv4: 10.30.0.1/24
  lan:
    mode: bridge
    uplink: eth1
vms:
  web1:
    ports:
      - network: default
        name: web1-eth0
        kind: tap
        mac: 52:54:00:AA:00:10
        ipv4: 192.168.122.10
        owner: libvirt-qemu
        queues: 4
      - network: lan
        ipv4: 203.0.113.10/24
        owner: 64055
  test1:
    ports:
      - network: hostonly
        kind: veth
        netns: guest1
        ipv4: 10.30.0.5/24
      - network: routed1
        ipv4: 10.20.0.7
  empty:
    ports: []
"#;

fn ok(text: &str) -> Spec {
    match parse(text) {
        Ok(s) => s,
        Err(errs) => panic!(
            "expected a valid spec, got:\n{}",
            errs.iter().map(|e| format!("  {e}\n")).collect::<String>()
        ),
    }
}

fn errs(text: &str) -> Vec<SpecError> {
    match parse(text) {
        Ok(s) => panic!("expected errors, got {s:#?}"),
        Err(e) => e,
    }
}

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn loc(line: usize, col: usize) -> Loc {
    Loc { line, col }
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn full_example() {
    let spec = ok(FULL);
    assert_eq!(spec.version, 1);

    let sysctl: BTreeMap<String, String> = [
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.ip_forward", "1"),
        ("vm.swappiness", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(spec.host.sysctl, sysctl);

    let default = Network {
        name: "default".into(),
        mode: Mode::Nat,
        bridge: "virbr0".into(),
        ipv4: Some(cidr("192.168.122.1/24")),
        mtu: Some(1500),
        uplink: None,
        nat_egress: Some("eth0".into()),
        dhcp: Some(Dhcp {
            range: Some((ip("192.168.122.100"), ip("192.168.122.254"))),
            pool: true,
            lease_time_secs: 7200,
            dns: vec![ip("192.168.122.1")],
            domain: Some("example.test".into()),
            routes: vec![DhcpRoute {
                to: cidr("10.9.0.0/16"),
                via: ip("192.168.122.5"),
            }],
            range6: None,
            dns6: vec![],
        }),
        isolate_ports: false,
        forwards: vec![],
        vxlan: None,
        bandwidth_bps: None,
        direct_mode: None,
        vlan: None,
        host_access: vec![],
        ipv6_prefixes: vec![],
        ipv6: None,
        dns: None,
    };
    let routed = Network {
        name: "routed1".into(),
        mode: Mode::Routed,
        bridge: naming::bridge_name("routed1"),
        ipv4: Some(cidr("10.20.0.1/24")),
        mtu: None,
        uplink: None,
        nat_egress: None,
        dhcp: Some(Dhcp {
            range: None,
            pool: true,
            lease_time_secs: 3600,
            dns: vec![],
            domain: None,
            routes: vec![],
            range6: None,
            dns6: vec![],
        }),
        isolate_ports: false,
        forwards: vec![],
        vxlan: None,
        bandwidth_bps: None,
        direct_mode: None,
        vlan: None,
        host_access: vec![],
        ipv6_prefixes: vec![],
        ipv6: None,
        dns: None,
    };
    let hostonly = Network {
        name: "hostonly".into(),
        mode: Mode::Isolated,
        bridge: "kvbr-hostonly".into(),
        ipv4: Some(cidr("10.30.0.1/24")),
        mtu: None,
        uplink: None,
        nat_egress: None,
        dhcp: None,
        isolate_ports: false,
        forwards: vec![],
        vxlan: None,
        bandwidth_bps: None,
        direct_mode: None,
        vlan: None,
        host_access: vec![],
        ipv6_prefixes: vec![],
        ipv6: None,
        dns: None,
    };
    let lan = Network {
        name: "lan".into(),
        mode: Mode::Bridge,
        bridge: "kvbr-lan".into(),
        ipv4: None,
        mtu: None,
        uplink: Some("eth1".into()),
        nat_egress: None,
        dhcp: None,
        isolate_ports: false,
        forwards: vec![],
        vxlan: None,
        bandwidth_bps: None,
        direct_mode: None,
        vlan: None,
        host_access: vec![],
        ipv6_prefixes: vec![],
        ipv6: None,
        dns: None,
    };
    assert_eq!(
        spec.networks.keys().collect::<Vec<_>>(),
        ["default", "hostonly", "lan", "routed1"]
    );
    assert_eq!(spec.networks["default"], default);
    assert_eq!(spec.networks["routed1"], routed);
    assert_eq!(spec.networks["hostonly"], hostonly);
    assert_eq!(spec.networks["lan"], lan);

    let web1 = &spec.vms["web1"];
    assert_eq!(web1.name, "web1");
    assert_eq!(
        web1.ports,
        vec![
            Port {
                vm: "web1".into(),
                index: 0,
                network: "default".into(),
                name: "web1-eth0".into(),
                kind: PortKind::Tap,
                mac: Mac([0x52, 0x54, 0x00, 0xaa, 0x00, 0x10]),
                mac_derived: false,
                ipv4: Some(cidr("192.168.122.10/24")),
                ipv6: None,
                owner: Some(Owner::User("libvirt-qemu".into())),
                queues: 4,
                netns: None,
                antispoof: true,
                dhcp_client: false,
                firewall: None,
                qos: None,
                mirror: None,
                ethtool: None,
                trunk: vec![],
            },
            Port {
                vm: "web1".into(),
                index: 1,
                network: "lan".into(),
                name: "kv-web1-1".into(),
                kind: PortKind::Tap,
                mac: derived("web1", "kv-web1-1"),
                mac_derived: true,
                ipv4: Some(cidr("203.0.113.10/24")),
                ipv6: None,
                owner: Some(Owner::Uid(64055)),
                queues: 1,
                netns: None,
                antispoof: true,
                dhcp_client: false,
                firewall: None,
                qos: None,
                mirror: None,
                ethtool: None,
                trunk: vec![],
            },
        ]
    );
    let test1 = &spec.vms["test1"];
    assert_eq!(
        test1.ports,
        vec![
            Port {
                vm: "test1".into(),
                index: 0,
                network: "hostonly".into(),
                name: "kv-test1-0".into(),
                kind: PortKind::Veth,
                mac: derived("test1", "kv-test1-0"),
                mac_derived: true,
                ipv4: Some(cidr("10.30.0.5/24")),
                ipv6: None,
                owner: None,
                queues: 1,
                netns: Some("guest1".into()),
                antispoof: true,
                dhcp_client: false,
                firewall: None,
                qos: None,
                mirror: None,
                ethtool: None,
                trunk: vec![],
            },
            Port {
                vm: "test1".into(),
                index: 1,
                network: "routed1".into(),
                name: "kv-test1-1".into(),
                kind: PortKind::Tap,
                mac: derived("test1", "kv-test1-1"),
                mac_derived: true,
                // A bare address takes the network's prefix.
                ipv4: Some(cidr("10.20.0.7/24")),
                ipv6: None,
                owner: None,
                queues: 1,
                netns: None,
                antispoof: true,
                dhcp_client: false,
                firewall: None,
                qos: None,
                mirror: None,
                ethtool: None,
                trunk: vec![],
            },
        ]
    );
    let m = test1.ports[0].mac;
    assert_eq!(m.0[0], 0x52);
    assert_ne!(&m.0[1..3], &[0x54, 0x00]);
    assert!(spec.vms["empty"].ports.is_empty());

    // Locations of written values, for later layers' errors.
    assert_eq!(spec.locs.get("networks.default.ipv4").unwrap(), loc(11, 11));
    assert_eq!(spec.locs.get("networks.lan.uplink").unwrap(), loc(30, 13));
    assert_eq!(
        spec.locs.get("vms.web1.ports[0].owner").unwrap(),
        loc(39, 16)
    );
    assert_eq!(spec.locs.get("vms.web1.ports[1]").unwrap(), loc(41, 9));
    assert_eq!(
        spec.locs.get("host.sysctl.\"net.core.somaxconn\"").unwrap(),
        loc(4, 25)
    );
    assert_eq!(
        spec.locs
            .get("networks.default.dhcp.routes[0].via")
            .unwrap(),
        loc(20, 41)
    );
    assert_eq!(
        spec.locs.get("networks.default.nat.egress").unwrap(),
        loc(13, 20)
    );
    // Derived values are not in the file: `loc` falls back to the nearest written parent.
    assert!(!spec.locs.contains_key("vms.web1.ports[1].name"));
    assert_eq!(spec.loc("vms.web1.ports[1].name"), loc(41, 9));
    assert_eq!(spec.loc("networks.lan.bridge"), loc(29, 5));
    assert_eq!(spec.loc("nowhere.at.all"), loc(1, 1));
    // Unquoted sysctl paths are accepted too.
    assert_eq!(spec.loc("host.sysctl.net.core.somaxconn"), loc(4, 25));
    assert_eq!(
        kvmnet::spec::path_join("host.sysctl", "net.core.somaxconn"),
        "host.sysctl.\"net.core.somaxconn\""
    );
    assert_eq!(
        spec.loc(&kvmnet::spec::path_join("host.sysctl", "vm.swappiness")),
        loc(6, 20)
    );
}

#[test]
fn minimal_and_empty_sections() {
    let spec = ok("version: 1\n");
    assert!(spec.networks.is_empty() && spec.vms.is_empty() && spec.host.sysctl.is_empty());
    // Sections left empty read as empty mappings, an empty ports list as no ports.
    let spec = ok("version: 1\nhost:\nnetworks:\nvms:\n  a:\n    ports:\n");
    assert!(spec.vms["a"].ports.is_empty());
    // Flow style, CRLF line ends and a byte-order mark are fine.
    let spec = ok("\u{feff}{version: 1, networks: {n: {mode: isolated, ipv4: 10.0.0.1/8}}}\r\n");
    assert_eq!(spec.networks["n"].ipv4, Some(cidr("10.0.0.1/8")));
    let spec = parse_bytes(
        b"version: 1\r\nnetworks:\r\n  n:\r\n    mode: routed\r\n    ipv4: 10.1.0.1/16\r\n",
    )
    .unwrap();
    assert_eq!(spec.locs.get("networks.n.ipv4").unwrap(), loc(5, 11));
}

#[test]
fn values_as_written() {
    let spec = ok(r#"version: 1
host:
  sysctl:
    net.ipv4.ip_local_port_range: "32768 60999"
    kernel.panic: -1
    net.ipv4.ip_forward: 0
networks:
  "lab.1":
    mode: isolated
    ipv4: 10.0.0.1/24
    dhcp: { lease_time: 600, pool: false }
vms:
  a-very-long-vm-name:
    ports:
      - network: "lab.1"
        owner: "1000"
        mac: 02:00:00:00:00:01
      - network: lab.1
        ipv4: 10.0.0.9/24
        queues: 256
"#);
    // Forwarding may be off when only isolated networks exist.
    assert_eq!(spec.host.sysctl["net.ipv4.ip_forward"], "0");
    assert_eq!(spec.host.sysctl["kernel.panic"], "-1");
    assert_eq!(
        spec.host.sysctl["net.ipv4.ip_local_port_range"],
        "32768 60999"
    );
    let n = &spec.networks["lab.1"];
    assert_eq!(n.bridge, "kvbr-lab.1");
    let d = n.dhcp.as_ref().unwrap();
    assert_eq!((d.lease_time_secs, d.pool), (600, false));
    let ports = &spec.vms["a-very-long-vm-name"].ports;
    // A quoted all-digit owner is a uid too.
    assert_eq!(ports[0].owner, Some(Owner::Uid(1000)));
    // Long VM names give short, distinct derived port names.
    assert_eq!(ports[0].name, naming::port_name("a-very-long-vm-name", 0));
    assert!(ports[0].name.len() <= naming::IFNAME_MAX);
    assert_ne!(ports[0].name, ports[1].name);
    assert_eq!(ports[1].ipv4, Some(cidr("10.0.0.9/24")));
    assert_eq!(ports[1].queues, 256);
    assert_eq!(
        spec.locs.get("networks.\"lab.1\".ipv4").unwrap(),
        loc(10, 11)
    );

    for (text, secs) in [
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172800),
    ] {
        let spec = ok(&format!(
            "version: 1\nnetworks:\n  n:\n    mode: nat\n    ipv4: 10.0.0.1/24\n    dhcp: {{ lease_time: {text} }}\n"
        ));
        assert_eq!(
            spec.networks["n"].dhcp.as_ref().unwrap().lease_time_secs,
            secs
        );
    }
}

#[test]
fn error_shape_and_order() {
    let e = errs("version: 1\nnetworks:\n  default:\n    mdoe: nat\n    ipv4: 192.168.122.0/24\n");
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    // Two errors, in this order (the mode is unknown, so the gateway is only checked for
    // syntax); the lists of fields and modes grow with the spec.
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(
        e[0].starts_with(
            "4:5: networks.default.mdoe: unknown field 'mdoe'; expected one of: mode, bridge, ipv4, mtu, uplink, nat, dhcp, isolate_ports, forwards, "
        ),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with(
            "4:5: networks.default.mode: missing required field 'mode'; expected nat, routed, isolated, bridge, "
        ),
        "{e:#?}"
    );
    let e = errs("version: 1\nnetworks:\n  default:\n    mode: nat\n    ipv4: 192.168.122.0/24\n");
    assert_eq!(
        e[0].to_string(),
        "5:11: networks.default.ipv4: 192.168.122.0/24 has no host bits: the gateway needs a host address like 192.168.122.1/24"
    );
}

#[test]
fn file_level_errors() {
    for input in [&b""[..], b"   \n\t\n", b"\n"] {
        let e = parse_bytes(input).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].path.as_str(), e[0].loc), ("(file)", loc(1, 1)));
        assert!(e[0].message.contains("empty"), "{}", e[0]);
    }
    let e = parse_bytes(b"version: 1\x00\x01\x02").unwrap_err();
    assert!(e[0].message.contains("binary"));
    let e = parse_bytes(b"version: 1\nnetworks: {\xff: 1}\n").unwrap_err();
    assert!(e[0].message.contains("UTF-8"));
    let e = errs("");
    assert_eq!(e[0].path, "(file)");
    let e = errs("just a string\n");
    assert!(e[0].message.contains("must be a mapping"), "{}", e[0]);
    let e = errs("~\n");
    assert!(e[0].message.contains("empty"), "{}", e[0]);
}

#[test]
fn forwarding_needed_by_routed_too() {
    let e = errs(
        "version: 1\nhost:\n  sysctl:\n    net.ipv4.conf.all.forwarding: \"0\"\nnetworks:\n  r:\n    mode: routed\n    ipv4: 10.0.0.1/24\n",
    );
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].path, "host.sysctl.\"net.ipv4.conf.all.forwarding\"");
    assert!(e[0].message.contains("r (routed)"));
}

// ---------------------------------------------------------------------------------------
// Robustness: nothing panics.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn no_panics_on_truncation() {
    let bytes = FULL.as_bytes();
    for end in 0..=bytes.len() {
        let _ = parse_bytes(&bytes[..end]);
        if let Ok(s) = std::str::from_utf8(&bytes[end..]) {
            let _ = parse(s);
        }
    }
}

#[test]
fn no_panics_on_garbage() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // Characters that matter to YAML, to reach deep into the scanner and the validator.
    let alphabet: &[u8] = b" \n\t:-[]{},#&*!|>'\"?%@`~.0123456789/abcdefxyz\r\\";
    for _ in 0..300 {
        let len = rng.below(200);
        let raw: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
        let _ = parse_bytes(&raw);
        let yamlish: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        let _ = parse_bytes(&yamlish);
    }
}

#[test]
fn no_panics_on_mutations() {
    let mut rng = XorShift(42);
    let base = FULL.as_bytes();
    let lines: Vec<&str> = FULL.lines().collect();
    let tokens: &[&str] = &[
        "",
        "~",
        "[]",
        "{}",
        "- ",
        ": ",
        "&a ",
        "*a",
        "!!str ",
        "|\n",
        "\"",
        "'",
        "0",
        "-1",
        "99999999999999999999999",
        "0.0.0.0/0",
        "255.255.255.255/32",
        "ff:ff:ff:ff:ff:ff",
        "veth",
        "bridge",
        "\t",
        "é",
        "\u{1F600}",
        "---\n",
        "? ",
    ];
    for round in 0..600 {
        let text = match round % 4 {
            // Flip a byte.
            0 => {
                let mut b = base.to_vec();
                let i = rng.below(b.len());
                b[i] = alphabet_byte(&mut rng);
                String::from_utf8_lossy(&b).into_owned()
            }
            // Drop or duplicate a line.
            1 => {
                let mut l = lines.clone();
                let i = rng.below(l.len());
                if rng.next() & 1 == 0 {
                    l.remove(i);
                } else {
                    l.insert(i, lines[i]);
                }
                l.join("\n")
            }
            // Splice a token somewhere.
            2 => {
                let i = rng.below(FULL.len());
                let i = (0..=i)
                    .rev()
                    .find(|&j| FULL.is_char_boundary(j))
                    .unwrap_or(0);
                let t = tokens[rng.below(tokens.len())];
                format!("{}{}{}", &FULL[..i], t, &FULL[i..])
            }
            // Replace a value with a token.
            _ => {
                let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                let i = rng.below(l.len());
                if let Some(c) = l[i].find(": ") {
                    let t = tokens[rng.below(tokens.len())];
                    l[i] = format!("{}: {t}", &l[i][..c]);
                }
                l.join("\n")
            }
        };
        if let Err(errors) = parse(&text) {
            // Every error points inside the file and says something.
            let line_count = text.split('\n').count() + 1;
            for e in &errors {
                assert!(e.loc.line >= 1 && e.loc.col >= 1, "{e}");
                assert!(
                    e.loc.line <= line_count,
                    "{e} (file has {line_count} lines)"
                );
                assert!(!e.message.is_empty() && !e.path.is_empty(), "{e:?}");
            }
            assert!(errors.windows(2).all(|w| w[0].loc <= w[1].loc));
        }
    }
}

fn alphabet_byte(rng: &mut XorShift) -> u8 {
    let a: &[u8] = b" \n:-[]{},#&*!|>'\"?0123456789abcdef./";
    a[rng.below(a.len())]
}

#[test]
fn no_panics_on_deep_or_large_input() {
    let _ = parse(&"[".repeat(200_000));
    let _ = parse(&"{a: ".repeat(50_000));
    let _ = parse(&"- ".repeat(50_000));
    let mut big = String::from("version: 1\nvms:\n");
    for i in 0..2000 {
        big.push_str(&format!("  vm{i}:\n    ports: []\n"));
    }
    assert_eq!(ok(&big).vms.len(), 2000);
}

#[test]
fn vlan_networks_and_trunk_ports() {
    let spec = ok(r#"version: 1
networks:
  v10: { mode: vlan, uplink: eth1, vlan: 10, ipv4: 10.10.0.1/24 }
  v20: { mode: vlan, uplink: eth1, vlan: 20 }
  far: { mode: vlan, uplink: enx0123456789ab, vlan: 4094 }
vms:
  router:
    ports:
      - { network: v10, name: rt, ipv4: 10.10.0.2, vlans: [20, 10] }
      - { network: v20, ipv4: 10.20.0.2/24 }
"#);
    let v10 = spec.networks["v10"].vlan.as_ref().unwrap();
    assert_eq!(
        (v10.id, v10.uplink.as_str(), v10.device.as_str()),
        (10, "eth1", "eth1.10")
    );
    let far = spec.networks["far"].vlan.as_ref().unwrap();
    assert!(
        far.device.starts_with("vl4094-") && far.device.len() <= 15,
        "{}",
        far.device
    );
    let rt = &spec.vms["router"].ports[0];
    let trunk: Vec<(u16, &str, &str)> = rt
        .trunk
        .iter()
        .map(|t| (t.vid, t.network.as_str(), t.device.as_str()))
        .collect();
    assert_eq!(trunk, [(20, "v20", "rt.20"), (10, "v10", "rt.10")]);
    // Its own VLAN listed: no native VLAN, the address belongs to the tagged sub-interface.
    assert!(!rt.has_native());
    assert_eq!(rt.own_interface(), "rt.10");
    let access = &spec.vms["router"].ports[1];
    assert!(access.trunk.is_empty() && access.has_native());
    assert_eq!(access.own_interface(), access.name);
}

#[test]
fn host_uplinks_bonds_and_tuned_nics() {
    let s = ok("version: 1
host:
  uplinks:
    bond0:
      mode: 802.3ad
      members: [eth1, eth2]
      lacp_rate: fast
      xmit_hash_policy: layer3+4
      min_links: 1
      mtu: 9000
    bond1:
      mode: active-backup
      members: [eth4, eth5]
      primary: eth5
    eth3:
      mtu: 9000
networks:
  lan:
    mode: bridge
    uplink: bond0
");
    let u = &s.host.uplinks;
    let b = u["bond0"].bond.as_ref().unwrap();
    assert_eq!(b.mode, kvmnet::spec::BondMode::Lacp);
    assert_eq!(b.members, ["eth1", "eth2"]);
    assert_eq!(b.lacp_rate.as_deref(), Some("fast"));
    assert_eq!(b.xmit_hash_policy.as_deref(), Some("layer3+4"));
    assert_eq!((b.min_links, b.miimon), (Some(1), None));
    assert_eq!(u["bond0"].mtu, Some(9000));
    let b1 = u["bond1"].bond.as_ref().unwrap();
    assert_eq!(b1.primary.as_deref(), Some("eth5"));
    assert_eq!(u["eth3"].bond, None);
    assert_eq!(u["eth3"].mtu, Some(9000));
    assert!(s.declared_bond("bond0").is_some());
    assert!(s.declared_bond("eth3").is_none());
    assert_eq!(s.networks["lan"].uplink.as_deref(), Some("bond0"));
}

/// Every derived MAC of a spec, by port name.
fn derived_macs(spec: &Spec) -> BTreeMap<String, Mac> {
    spec.vms
        .values()
        .flat_map(|v| &v.ports)
        .filter(|p| p.mac_derived)
        .map(|p| (p.name.clone(), p.mac))
        .collect()
}

/// 10,000 ports without `mac` validate, each with its own MAC (where 24 hash bits gave two
/// collisions and an error), all of the derived form, in well under a second.
#[test]
fn ten_thousand_ports_without_mac() {
    let mut text = String::from("version: 1\nnetworks:\n");
    for n in 0..10 {
        text.push_str(&format!(
            "  n{n}: {{ mode: nat, bridge: kb{n}, ipv4: 10.{}.0.1/16 }}\n",
            100 + n
        ));
    }
    text.push_str("vms:\n");
    for i in 0..10_000 {
        let (n, h) = (i / 1000, i % 1000);
        text.push_str(&format!(
            "  vm{i}: {{ ports: [ {{ network: n{n}, ipv4: 10.{}.{}.{} }} ] }}\n",
            100 + n,
            1 + h / 250,
            2 + h % 250
        ));
    }
    let start = std::time::Instant::now();
    let spec = ok(&text);
    let took = start.elapsed();
    let macs = derived_macs(&spec);
    assert_eq!(macs.len(), 10_000);
    let unique: std::collections::BTreeSet<[u8; 5]> = macs
        .values()
        .map(|m| [m.0[1], m.0[2], m.0[3], m.0[4], m.0[5]])
        .collect();
    assert_eq!(
        unique.len(),
        10_000,
        "two ports share a MAC (or a host end)"
    );
    for m in macs.values() {
        assert_eq!(m.0[0], 0x52);
        assert_ne!(m.0[1..3], [0x54, 0x00]);
    }
    assert!(took.as_secs_f64() < 2.0, "validating took {took:?}");
}

/// Two ports whose first candidates are the same MAC (found by search for the tests'
/// identity): the first in name order takes it, the other its next candidate, with no error.
/// A written MAC equal to a derived one moves the derived one, never the written one.
#[test]
fn colliding_derived_macs_are_resolved() {
    let shared = derived("c397576", "kv-c397576-0");
    assert_eq!(derived("c429580", "kv-c429580-0"), shared);
    let spec = ok("version: 1
networks: { n: { mode: isolated, ipv4: 10.1.0.1/24 } }
vms:
  c429580: { ports: [ { network: n } ] }
  c397576: { ports: [ { network: n } ] }
");
    let macs = derived_macs(&spec);
    assert_eq!(macs["kv-c397576-0"], shared);
    assert_eq!(
        macs["kv-c429580-0"],
        Candidates::new(&id(), "c429580", "kv-c429580-0").get(1)
    );

    let spec = ok(&format!(
        "version: 1
networks: {{ n: {{ mode: isolated, ipv4: 10.1.0.1/24 }} }}
vms:
  a: {{ ports: [ {{ network: n, mac: \"{shared}\" }} ] }}
  c397576: {{ ports: [ {{ network: n }} ] }}
"
    ));
    assert_eq!(spec.vms["a"].ports[0].mac, shared);
    assert_eq!(
        spec.vms["c397576"].ports[0].mac,
        Candidates::new(&id(), "c397576", "kv-c397576-0").get(1)
    );
    // Two written MACs still may not be the same.
    let e = errs(
        "version: 1
networks: { n: { mode: isolated, ipv4: 10.1.0.1/24 } }
vms:
  a: { ports: [ { network: n, mac: \"02:00:00:00:00:01\" } ] }
  b: { ports: [ { network: n, mac: \"02:00:00:00:00:01\" } ] }
",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].path, "vms.b.ports[0].mac");
    assert!(e[0].message.contains("every MAC must be unique"), "{e:?}");
}

/// The host and the `--netns` scope are part of every derived MAC: two hosts (or two scopes
/// of one host) with the same VMs give them different MACs.
#[test]
fn derived_macs_differ_per_host_and_scope() {
    let text = "version: 1
networks: { n: { mode: isolated, ipv4: 10.1.0.1/24 } }
vms:
  web1: { ports: [ { network: n }, { network: n } ] }
  db1: { ports: [ { network: n } ] }
";
    let here = derived_macs(&ok(text));
    let hosts = [
        HostIdentity::from_machine_id("6b766d6e657474657374000000000002", "host").unwrap(),
        HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "sandbox").unwrap(),
        HostIdentity::from_host_name("hv2", "host"),
    ];
    for other in &hosts {
        let there = derived_macs(&kvmnet::spec::parse(text, other).unwrap());
        assert_eq!(there.len(), 3);
        for (port, m) in &here {
            assert_ne!(there[port], *m, "{port} has one MAC on both");
        }
    }
    // The same host and scope always give the same MACs.
    assert_eq!(derived_macs(&ok(text)), here);
}

/// A port whose candidates are all written into other ports cannot be given a MAC: an error
/// at the port, not a panic or a duplicate.
#[test]
fn a_port_without_a_free_mac_is_an_error() {
    let mut text =
        String::from("version: 1\nnetworks: { n: { mode: isolated, ipv4: 10.1.0.1/24 } }\nvms:\n");
    let host = id();
    let mut c = Candidates::new(&host, "victim", "kv-victim-0");
    for k in 0..kvmnet::spec::macs::CANDIDATES {
        text.push_str(&format!(
            "  p{k}: {{ ports: [ {{ network: n, mac: \"{}\" }} ] }}\n",
            c.get(k)
        ));
    }
    text.push_str("  victim:\n    ports:\n      - network: n\n");
    let e = errs(&text);
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].path, "vms.victim.ports[0]");
    assert_eq!(e[0].loc, loc(70, 9));
    assert!(e[0].message.contains("set mac"), "{e:?}");
}
