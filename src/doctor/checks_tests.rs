//! Unit tests of doctor's pure checks, with facts written by hand.

use super::*;

fn spec(yaml: &str) -> Spec {
    let id = crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host")
        .unwrap();
    crate::spec::parse(yaml, &id).unwrap()
}

const NAT: &str =
    "version: 1\nnetworks:\n  lan:\n    mode: nat\n    bridge: br-lan\n    ipv4: 10.1.0.1/24\n";
const ISOLATED: &str = "version: 1\nnetworks:\n  lan:\n    mode: isolated\n    bridge: br-lan\n    ipv4: 10.1.0.1/24\n";

fn facts(sysctls: &[(&str, Option<&str>)]) -> Facts {
    Facts {
        scope: "lab".into(),
        sysctls: sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(String::from)))
            .collect(),
        ..Facts::default()
    }
}

#[test]
fn forwarding_fails_when_a_nat_network_has_it_off() {
    let c = forwarding(&spec(NAT), &facts(&[(IP_FORWARD, Some("0"))]));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Fail);
    assert!(c[0].message.contains("lan (nat)"), "{}", c[0].message);
    assert!(
        c[0].fix
            .starts_with("ip netns exec lab sysctl -w net.ipv4.ip_forward=1"),
        "{}",
        c[0].fix
    );
    let c = forwarding(&spec(NAT), &facts(&[(IP_FORWARD, Some("1"))]));
    assert_eq!(c[0].status, Status::Ok);
}

const FIREWALLED: &str = "version: 1\nnetworks:\n  lan:\n    mode: isolated\n    bridge: br-lan\n    ipv4: 10.1.0.1/24\n\
vms:\n  a:\n    ports:\n      - network: lan\n        name: a-tap\n        firewall: { inbound: { policy: drop } }\n";

#[test]
fn br_netfilter_fails_missing_or_off_under_a_firewall() {
    let c = br_netfilter(&spec(FIREWALLED), &facts(&[]));
    assert_eq!(c[0].status, Status::Fail);
    assert!(
        c[0].fix.starts_with("modprobe br_netfilter"),
        "{}",
        c[0].fix
    );
    assert!(c[0].message.contains("a-tap"), "{}", c[0].message);
    let c = br_netfilter(&spec(FIREWALLED), &facts(&[(BRIDGE_NF, Some("0"))]));
    assert_eq!(c[0].status, Status::Fail);
    assert!(
        c[0].fix
            .contains("sysctl -w net.bridge.bridge-nf-call-iptables=1")
    );
    let c = br_netfilter(&spec(FIREWALLED), &facts(&[(BRIDGE_NF, Some("1"))]));
    assert_eq!(c[0].status, Status::Ok);
    let c = br_netfilter(&spec(NAT), &facts(&[(BRIDGE_NF, Some("0"))]));
    assert_eq!(c[0].status, Status::Ok);
}

#[test]
fn a_foreign_forward_drop_policy_warns_with_the_bridges() {
    let drop = |f: &str, t: &str, c: &str| Facts {
        forward_drops: vec![(f.into(), t.into(), c.into())],
        ..facts(&[])
    };
    let c = foreign_forward_drop(&spec(NAT), &drop("ip", "docker_like", "fwd"));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Warn);
    assert_eq!(c[0].subject, "ip docker_like fwd");
    assert!(
        c[0].fix.contains(
            "ip netns exec lab nft insert rule ip docker_like fwd iifname { br-lan } accept"
        ),
        "{}",
        c[0].fix
    );
    let c = foreign_forward_drop(&spec(NAT), &drop("ip", "filter", "FORWARD"));
    assert!(
        c[0].fix.contains("iptables -I FORWARD -i br-lan -j ACCEPT"),
        "{}",
        c[0].fix
    );
    let c = foreign_forward_drop(&spec(NAT), &facts(&[]));
    assert_eq!(c[0].status, Status::Ok);
    let c = foreign_forward_drop(&spec("version: 1\n"), &drop("ip", "filter", "FORWARD"));
    assert_eq!(c[0].status, Status::Ok);
}

#[test]
fn strict_rp_filter_on_a_routed_bridge_or_all_warns() {
    let routed = spec(&NAT.replace("nat", "routed"));
    let all = "net.ipv4.conf.all.rp_filter";
    let br = "net.ipv4.conf.br-lan.rp_filter";
    let c = rp_filter(&routed, &facts(&[(all, Some("1")), (br, Some("0"))]));
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].status, c[0].subject.as_str()), (Status::Warn, all));
    assert!(c[0].fix.contains("sysctl -w net.ipv4.conf.all.rp_filter=2"));
    let c = rp_filter(&routed, &facts(&[(all, Some("0")), (br, Some("1"))]));
    assert_eq!((c[0].status, c[0].subject.as_str()), (Status::Warn, br));
    let c = rp_filter(&routed, &facts(&[(all, Some("2")), (br, Some("0"))]));
    assert_eq!(c[0].status, Status::Ok);
    let c = rp_filter(&spec(NAT), &facts(&[(all, Some("1"))]));
    assert_eq!(c[0].status, Status::Ok);
    assert!(sysctl_keys(&routed).contains(&br.to_string()));
}

fn link(name: &str, up: bool, oper_up: bool, mtu: u32) -> (String, LinkSnap) {
    let l = LinkSnap {
        name: name.into(),
        up,
        oper_up,
        mtu,
        ..LinkSnap::default()
    };
    (name.into(), l)
}

const BRIDGED: &str = "version: 1\nnetworks:\n  lan:\n    mode: bridge\n    bridge: br-lan\n    uplink: eth0\n\
vms:\n  a:\n    ports: [ { network: lan, name: a-tap } ]\n";

#[test]
fn an_uplink_without_carrier_fails_and_a_port_warns() {
    let with = |links: Vec<(String, LinkSnap)>| Facts {
        links: links.into_iter().collect(),
        ..facts(&[])
    };
    let s = spec(BRIDGED);
    let c = carrier(
        &s,
        &with(vec![
            link("eth0", true, true, 1500),
            link("a-tap", true, true, 1500),
        ]),
    );
    assert!(c.iter().all(|c| c.status == Status::Ok), "{c:?}");
    let c = carrier(
        &s,
        &with(vec![
            link("eth0", true, false, 1500),
            link("a-tap", true, false, 1500),
        ]),
    );
    let got: Vec<_> = c.iter().map(|c| (c.subject.as_str(), c.status)).collect();
    assert_eq!(got, [("eth0", Status::Fail), ("a-tap", Status::Warn)]);
    assert!(
        c[1].message.contains("VM is not running"),
        "{}",
        c[1].message
    );
    let c = carrier(&s, &with(vec![link("eth0", false, false, 1500)]));
    assert_eq!(c[0].fix, "ip netns exec lab ip link set eth0 up");
    assert!(c[1].message.contains("does not exist"));
    let c = carrier(&s, &with(vec![]));
    assert_eq!(c[0].status, Status::Fail);
}

#[test]
fn a_port_above_its_bridge_and_a_small_underlay_are_mtu_problems() {
    let with = |links: Vec<(String, LinkSnap)>| Facts {
        links: links.into_iter().collect(),
        ..facts(&[])
    };
    let s = spec(BRIDGED);
    let c = mtu(
        &s,
        &with(vec![
            link("br-lan", true, true, 1400),
            link("a-tap", true, true, 1500),
        ]),
    );
    assert_eq!(
        (c[0].status, c[0].subject.as_str()),
        (Status::Warn, "a-tap")
    );
    let c = mtu(
        &s,
        &with(vec![
            link("br-lan", true, true, 1500),
            link("a-tap", true, true, 1500),
        ]),
    );
    assert_eq!(c[0].status, Status::Ok, "{c:?}");
    let vx = spec(
        "version: 1\nnetworks:\n  ovl:\n    mode: vxlan\n    bridge: br-ovl\n    vni: 42\n    underlay: eth0\n    remotes: [192.0.2.2]\n",
    );
    let dev = vx.networks["ovl"].vxlan.as_ref().unwrap().device.clone();
    let c = mtu(
        &vx,
        &with(vec![
            link(&dev, true, true, 1450),
            link("eth0", true, true, 1400),
        ]),
    );
    assert_eq!((c[0].status, c[0].subject.as_str()), (Status::Fail, "eth0"));
    assert!(
        c[0].fix.contains("ip link set eth0 mtu 1500"),
        "{}",
        c[0].fix
    );
    let c = mtu(
        &vx,
        &with(vec![
            link(&dev, true, true, 1450),
            link("eth0", true, true, 1500),
        ]),
    );
    assert_eq!(c[0].status, Status::Ok);
}

#[test]
fn a_conntrack_table_over_nine_tenths_full_warns() {
    let ct =
        |count: &str, max: &str| conntrack(&facts(&[(CT_COUNT, Some(count)), (CT_MAX, Some(max))]));
    let c = ct("901", "1000");
    assert_eq!(c[0].status, Status::Warn);
    assert!(c[0].message.contains("901 of 1000"), "{}", c[0].message);
    assert!(c[0].fix.contains("nf_conntrack_max=2000"), "{}", c[0].fix);
    assert_eq!(ct("900", "1000")[0].status, Status::Ok);
    assert_eq!(ct("0", "262144")[0].status, Status::Ok);
    assert_eq!(
        conntrack(&facts(&[(CT_COUNT, None), (CT_MAX, None)]))[0].status,
        Status::Ok
    );
}

#[test]
fn dhcp_without_a_daemon_fails() {
    let dhcp = spec(&format!(
        "{NAT}    dhcp: {{ range: 10.1.0.100-10.1.0.200 }}\n"
    ));
    let c = daemon(&dhcp, &facts(&[]));
    assert_eq!(c[0].status, Status::Fail);
    assert!(c[0].message.contains("lan (nat)"), "{}", c[0].message);
    assert_eq!(
        c[0].fix,
        "kvmnet daemon --spec FILE --netns lab (FILE: the spec applied)"
    );
    let running = Facts {
        daemon_running: true,
        ..facts(&[])
    };
    assert_eq!(daemon(&dhcp, &running)[0].status, Status::Ok);
    assert_eq!(daemon(&spec(NAT), &facts(&[]))[0].status, Status::Ok);
}

#[test]
fn forwarding_is_ok_off_when_no_network_routes() {
    let c = forwarding(&spec(ISOLATED), &facts(&[(IP_FORWARD, Some("0"))]));
    assert_eq!(c[0].status, Status::Ok);
    let c = forwarding(&spec("version: 1\n"), &facts(&[]));
    assert_eq!(c[0].status, Status::Ok);
}

const OWNED: &str = "version: 1\nnetworks:\n  lan:\n    mode: isolated\n    bridge: br-lan\n    ipv4: 10.1.0.1/24\n\
vms:\n  a:\n    ports:\n      - { network: lan, name: a-tap, owner: alice }\n      - { network: lan, name: a-tap2, owner: 4000123 }\n";

#[test]
fn a_deleted_owner_fails_and_a_uid_without_user_warns() {
    let f = |alice: Option<u32>, uid: bool| Facts {
        users: BTreeMap::from([("alice".to_string(), alice)]),
        uids: BTreeMap::from([(4000123, uid)]),
        ..facts(&[])
    };
    let c = tap_owner(&spec(OWNED), &f(Some(1000), true));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Ok);
    let c = tap_owner(&spec(OWNED), &f(None, false));
    assert_eq!(c.len(), 2, "{c:?}");
    let alice = c.iter().find(|c| c.subject == "alice").unwrap();
    assert_eq!(alice.status, Status::Fail);
    assert!(alice.message.contains("a-tap"), "{}", alice.message);
    assert!(alice.fix.starts_with("create user alice"), "{}", alice.fix);
    let uid = c.iter().find(|c| c.subject == "4000123").unwrap();
    assert_eq!(uid.status, Status::Warn);
    assert!(
        uid.message.starts_with("uid 4000123 has no user"),
        "{}",
        uid.message
    );
}

#[test]
fn a_missing_or_closed_device_warns() {
    let f = |kvm: Device, vhost: Device| Facts {
        devices: BTreeMap::from([
            ("/dev/kvm".to_string(), kvm),
            ("/dev/vhost-net".to_string(), vhost),
        ]),
        ..facts(&[])
    };
    let c = devices(&f(Device::Usable, Device::Usable));
    assert_eq!(
        c.iter().map(|c| c.status).collect::<Vec<_>>(),
        [Status::Ok; 2]
    );
    let c = devices(&f(Device::Missing, Device::NoAccess));
    assert_eq!(
        c.iter().map(|c| c.status).collect::<Vec<_>>(),
        [Status::Warn; 2]
    );
    assert_eq!(c[0].subject, "/dev/kvm");
    assert!(
        c[0].message.contains("without KVM acceleration"),
        "{}",
        c[0].message
    );
    assert!(c[1].message.contains("without vhost"), "{}", c[1].message);
    assert!(
        c[1].message.contains("cannot be opened"),
        "{}",
        c[1].message
    );
    // Not read at all counts as missing.
    assert_eq!(devices(&facts(&[]))[0].status, Status::Warn);
}

#[test]
fn lro_on_a_bridged_uplink_warns() {
    let f = |v: Option<bool>| Facts {
        lro: BTreeMap::from([("eth0".to_string(), v)]),
        ..facts(&[])
    };
    let c = lro(&spec(BRIDGED), &f(Some(true)));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Warn);
    assert_eq!(c[0].subject, "eth0");
    assert!(
        c[0].fix
            .starts_with("ip netns exec lab ethtool -K eth0 lro off"),
        "{}",
        c[0].fix
    );
    assert!(
        c[0].fix
            .contains("host.uplinks.eth0.ethtool.offloads.lro: false")
    );
    for v in [Some(false), None] {
        assert_eq!(lro(&spec(BRIDGED), &f(v))[0].status, Status::Ok);
    }
    // LRO does not matter to a routed uplink.
    assert_eq!(lro(&spec(NAT), &f(Some(true)))[0].status, Status::Ok);
}

#[test]
fn a_mac_learned_on_two_ports_of_a_bridge_fails() {
    let mac = crate::types::Mac([0x52, 0x54, 0, 0, 0, 1]);
    let other = crate::types::Mac([0x52, 0x54, 0, 0, 0, 2]);
    let f = |seen: &[(&str, crate::types::Mac)]| Facts {
        learned: seen
            .iter()
            .map(|(p, m)| ("br-lan".to_string(), p.to_string(), *m))
            .collect(),
        ..facts(&[])
    };
    let c = duplicate_mac(&spec(NAT), &f(&[("a-tap", mac), ("b-tap", other)]));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Ok);
    let c = duplicate_mac(
        &spec(NAT),
        &f(&[("a-tap", mac), ("b-tap", mac), ("a-tap", other)]),
    );
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Status::Fail);
    assert_eq!(c[0].subject, "br-lan 52:54:00:00:00:01");
    assert!(c[0].message.contains("a-tap and b-tap"), "{}", c[0].message);
    assert!(
        c[0].fix
            .contains("ip netns exec lab bridge fdb show br br-lan")
    );
}
