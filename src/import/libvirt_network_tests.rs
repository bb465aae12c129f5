use crate::import::{ImportError, Inputs, import};

fn one(xml: &str) -> Result<String, Vec<String>> {
    import(&Inputs {
        networks: vec![("n.xml".into(), xml.into())],
        domains: Vec::new(),
        nwfilter: None,
    })
    .map(|i| i.yaml)
    .map_err(|e| e.iter().map(ImportError::to_string).collect())
}

#[test]
fn a_nat_network_with_dhcp_and_a_reservation() {
    let y = one(
        "<network>\n  <name>default</name>\n  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>\n  <forward mode='nat' dev='eth1'><interface dev='eth1'/></forward>\n  <bridge name='virbr0' stp='on' delay='0'/>\n  <mtu size='9000'/>\n  <ip address='192.168.122.1' netmask='255.255.255.0'>\n    <dhcp>\n      <range start='192.168.122.2' end='192.168.122.254'><lease expiry='2' unit='hours'/></range>\n      <host mac='00:16:3E:77:E2:ED' name='a.example.com' ip='192.168.122.10'/>\n    </dhcp>\n  </ip>\n</network>\n",
    )
    .unwrap();
    assert_eq!(
        y,
        "# Imported from libvirt XML by `kvmnet import libvirt`.\nversion: 1\nnetworks:\n  \"default\":\n    mode: nat\n    bridge: \"virbr0\"\n    ipv4: 192.168.122.1/24\n    mtu: 9000\n    nat: { egress: \"eth1\" }\n    dhcp:\n      range: 192.168.122.2-192.168.122.254\n      lease_time: 7200\nvms:\n  \"a.example.com\":\n    ports:\n      - network: \"default\"\n        mac: 00:16:3e:77:e2:ed\n        ipv4: 192.168.122.10\n"
    );
}

#[test]
fn modes_from_forward() {
    let net = |fwd: &str, rest: &str| one(&format!("<network><name>n</name>{fwd}{rest}</network>"));
    let ip = "<ip address='10.1.0.1' prefix='24'/>";
    assert!(net("", ip).unwrap().contains("mode: isolated"));
    assert!(net("<forward/>", ip).unwrap().contains("mode: nat"));
    assert!(
        net("<forward mode='route'/>", ip)
            .unwrap()
            .contains("mode: routed")
    );
    let d = net(
        "<forward mode='bridge'><interface dev='eth10'/></forward>",
        "",
    )
    .unwrap();
    assert!(
        d.contains("mode: direct\n    uplink: \"eth10\"\n    direct_mode: bridge"),
        "{d}"
    );
    let p = net("<forward mode='passthrough' dev='eth3'/>", "").unwrap();
    assert!(p.contains("direct_mode: passthrough"), "{p}");
    // Classful default, as libvirt takes an address without a mask.
    assert!(
        net("", "<ip address='10.24.10.1'/>")
            .unwrap()
            .contains("ipv4: 10.24.10.1/8")
    );
}

#[test]
fn refusals_name_element_line_and_reason() {
    let e = one("<network>\n<name>h</name>\n<forward mode='hostdev' managed='yes'>\n<pf dev='eth2'/>\n</forward>\n</network>").unwrap_err();
    assert!(
        e.iter()
            .any(|m| m.starts_with("n.xml:3:1: <forward mode='hostdev' managed='yes'>: ")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("n.xml:4:1: <pf dev='eth2'>: no faithful mapping")),
        "{e:?}"
    );
    let e = one("<network><name>o</name><forward mode='open'/><ip address='10.0.0.1' prefix='24'/></network>").unwrap_err();
    assert!(e[0].contains("open network"), "{e:?}");
    let e = one("<network><name>r</name><forward mode='route' dev='eth1'/><ip address='10.0.0.1' prefix='24'/></network>").unwrap_err();
    assert!(e[0].contains("drop dev"), "{e:?}");
    let e = one("<network><name>b</name><forward mode='bridge'/><bridge name='br0'/></network>")
        .unwrap_err();
    assert!(e[0].contains("host bridge"), "{e:?}");
}

#[test]
fn every_unmapped_thing_is_reported_not_only_the_first() {
    let e = one(
        "<network><name>x</name><bridge name='virbr0' zone='z'/><dns><host ip='10.0.0.5'><hostname>a</hostname></host></dns>\
         <ip address='10.0.0.1' prefix='24'><tftp root='/t'/><dhcp><bootp file='f'/></dhcp></ip>\
         <ip family='ipv6' address='fd00::1' prefix='64'/><vlan><tag id='5'/></vlan></network>",
    )
    .unwrap_err();
    for what in [
        "zone",
        "<host ip",
        "<tftp",
        "<bootp",
        "family='ipv6'",
        "<vlan>",
    ] {
        assert!(e.iter().any(|m| m.contains(what)), "{what}: {e:?}");
    }
    assert_eq!(e.len(), 6, "{e:?}");
}

#[test]
fn leases_and_bandwidth() {
    let e = one("<network><name>l</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.9'><lease expiry='0'/></range></dhcp></ip></network>").unwrap_err();
    assert!(e[0].contains("infinite"), "{e:?}");
    let e = one("<network><name>l</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.9'/><host mac='52:54:00:00:00:01' ip='10.0.0.20'><lease expiry='30'/></host></dhcp></ip></network>").unwrap_err();
    assert!(e[0].contains("one lease time per network"), "{e:?}");
    let y = one("<network><name>b</name><forward/><bandwidth><inbound average='1000'/></bandwidth><ip address='10.0.0.1' prefix='24'/></network>").unwrap();
    assert!(y.contains("bandwidth: 1000kbps"), "{y}");
    let e = one("<network><name>b</name><forward/><bandwidth><inbound average='1000' peak='2000'/><outbound average='5'/></bandwidth><ip address='10.0.0.1' prefix='24'/></network>").unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn names_are_sanitized_and_notes_kept() {
    let i = import(&Inputs {
        networks: vec![("n.xml".into(), "<network><name>my net</name><mac address='52:54:00:00:00:01'/><ip address='10.0.0.1' prefix='24'><dhcp/></ip></network>".into())],
        domains: Vec::new(),
        nwfilter: None,
    })
    .unwrap();
    assert!(i.yaml.contains("\"my-net\":"), "{}", i.yaml);
    assert!(
        i.notes.iter().any(|n| n.contains("named 'my-net'")),
        "{:?}",
        i.notes
    );
    assert!(
        i.notes.iter().any(|n| n.contains("serves no DNS")),
        "{:?}",
        i.notes
    );
    assert!(
        i.notes.iter().any(|n| n.contains("MAC of its own")),
        "{:?}",
        i.notes
    );
}
