use crate::import::{ImportError, Inputs, import};

const NET: &str = "<network>\n  <name>default</name>\n  <forward mode='nat'/>\n  <bridge name='virbr0'/>\n  <bandwidth><inbound average='100000'/></bandwidth>\n  <ip address='192.168.122.1' netmask='255.255.255.0'>\n    <dhcp>\n      <range start='192.168.122.100' end='192.168.122.254'/>\n      <host mac='52:54:00:aa:00:10' name='ignored' ip='192.168.122.10'/>\n    </dhcp>\n  </ip>\n</network>\n";

fn with_domain(dom: &str) -> Result<(String, Vec<String>), Vec<String>> {
    import(&Inputs {
        networks: vec![("n.xml".into(), NET.into())],
        domains: vec![("d.xml".into(), dom.into())],
        nwfilter: None,
    })
    .map(|i| (i.yaml, i.notes))
    .map_err(|e| e.iter().map(ImportError::to_string).collect())
}

#[test]
fn an_interface_becomes_a_port_and_takes_its_reservation() {
    let (y, notes) = with_domain(
        "<domain type='kvm'>\n  <name>web1</name>\n  <memory>1</memory>\n  <devices>\n    <disk type='file'/>\n    <interface type='network'>\n      <mac address='52:54:00:AA:00:10'/>\n      <source network='default'/>\n      <target dev='web1-eth0'/>\n      <model type='virtio'/>\n      <driver name='vhost' queues='4'/>\n      <filterref filter='clean-traffic'/>\n      <bandwidth>\n        <inbound average='1000' peak='2000' burst='4' floor='500'/>\n        <outbound average='5' burst='7'/>\n      </bandwidth>\n    </interface>\n    <interface type='bridge'>\n      <source bridge='virbr0'/>\n    </interface>\n  </devices>\n</domain>\n",
    )
    .unwrap();
    assert!(
        y.ends_with(
            "vms:\n  \"web1\":\n    ports:\n      - network: \"default\"\n        name: \"web1-eth0\"\n        mac: 52:54:00:aa:00:10\n        ipv4: 192.168.122.10\n        antispoof: true\n        queues: 4\n        qos:\n          inbound: { rate: 1000kbps, ceil: 2000kbps, burst: 4k }\n          outbound: { rate: 5kbps, burst: 7k }\n          floor: 500kbps\n      - network: \"default\"\n        antispoof: false\n"
        ),
        "{y}"
    );
    assert!(
        !y.contains("ignored"),
        "the reservation merged into web1: {y}"
    );
    assert!(
        notes.iter().any(|n| n.contains("no <filterref>")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.contains("polices")), "{notes:?}");
}

#[test]
fn unmapped_interfaces_are_refused_with_their_place() {
    let e = with_domain(
        "<domain>\n<name>x</name>\n<devices>\n<interface type='direct'><source dev='eth0' mode='vepa'/></interface>\n<interface type='network'><source network='other'/></interface>\n<interface type='network'><source network='default' portgroup='p'/><vlan><tag id='4'/></vlan><filterref filter='no-mac-spoofing'/><bandwidth><outbound average='1' peak='2'/></bandwidth></interface>\n</devices>\n</domain>",
    )
    .unwrap_err();
    for what in [
        "d.xml:4:1: <interface type='direct'>",
        "'other' is not among the imported networks",
        "portgroup",
        "<vlan>",
        "--nwfilter",
        "ignores peak",
    ] {
        assert!(e.iter().any(|m| m.contains(what)), "{what}: {e:?}");
    }
}

#[test]
fn a_clean_traffic_ip_parameter_must_agree_with_the_reservation() {
    let e = with_domain(
        "<domain><name>x</name><devices><interface type='network'><mac address='52:54:00:aa:00:10'/><source network='default'/><filterref filter='clean-traffic'><parameter name='IP' value='192.168.122.11'/></filterref></interface></devices></domain>",
    )
    .unwrap_err();
    assert!(e[0].contains("must agree"), "{e:?}");
}
