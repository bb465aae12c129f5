//! The generic parts of steps: inverse, naming, JSON and text of every kind, and the order
//! and cascade tables.

use std::collections::BTreeSet;

use super::*;
use crate::nft::NftChange;
use crate::state::{Addr, BondLink, BridgeLink, GuestEnd, HostState, PortKind, PortLink, Shaping};

mod fx {
    use crate::nft::{NftChain, NftRule, NftTable};
    use crate::state::{
        Addr, BondLink, BridgeLink, FloorClass, GuestEnd, PortKind, PortLink, Route, ShapeState,
        Shaping, VlanLink, VxlanLink,
    };
    use std::collections::BTreeMap;

    fn mac(s: &str) -> crate::spec::Mac {
        s.parse().unwrap()
    }

    pub(super) fn bridge() -> BridgeLink {
        BridgeLink {
            name: "kv-web".into(),
            network: "web".into(),
            mac: mac("52:54:00:00:00:01"),
            mtu: 1500,
            up: true,
        }
    }

    fn port(name: &str, kind: PortKind) -> PortLink {
        PortLink {
            name: name.into(),
            vm: "vm1".into(),
            network: "web".into(),
            master: Some("kv-web".into()),
            mac: mac("fe:54:00:00:00:10"),
            mtu: 1500,
            up: true,
            isolated: false,
            qos_in: None,
            qos_out: None,
            mirror: None,
            tc_ok: true,
            kind,
        }
    }

    pub(super) fn tap() -> PortLink {
        port(
            "kt-vm1-0",
            PortKind::Tap {
                owner: Some(1000),
                multi_queue: true,
            },
        )
    }

    pub(super) fn veth() -> PortLink {
        port(
            "kv-vm1-1",
            PortKind::Veth {
                netns: "kvmnet-vm1".into(),
                guest: GuestEnd {
                    name: "eth0".into(),
                    mac: mac("52:54:00:00:00:10"),
                    mtu: 1500,
                    up: true,
                    addr: Some("10.0.0.10/24".parse().unwrap()),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    addr6: None,
                    gateway6: None,
                    dhcp: false,
                },
            },
        )
    }

    pub(super) fn macvtap() -> PortLink {
        PortLink {
            master: None,
            ..port(
                "km-vm1-2",
                PortKind::Macvtap {
                    uplink: "eth0".into(),
                    mode: crate::spec::DirectMode::Bridge,
                    owner: Some(107),
                },
            )
        }
    }

    pub(super) fn tap_changed() -> PortLink {
        PortLink {
            mtu: 9000,
            isolated: true,
            qos_in: Some(ShapeState {
                rate: 1_000_000,
                ceil: 2_000_000,
                burst: 1500,
            }),
            mirror: Some("kt-vm2-0".into()),
            ..tap()
        }
    }

    pub(super) fn vxlan() -> VxlanLink {
        VxlanLink {
            name: "kx-web".into(),
            network: "web".into(),
            vni: 42,
            underlay: "eth0".into(),
            local: "192.0.2.1".parse().unwrap(),
            port: 4789,
            group: Some("239.1.1.1".parse().unwrap()),
            learning: false,
            master: Some("kv-web".into()),
            mtu: 1450,
            up: true,
        }
    }

    pub(super) fn vlan() -> VlanLink {
        VlanLink {
            name: "eth0.100".into(),
            network: "web".into(),
            parent: "eth0".into(),
            vid: 100,
            port: None,
            master: Some("kv-web".into()),
            mtu: 1500,
            up: true,
            isolated: true,
        }
    }

    pub(super) fn bond() -> BondLink {
        BondLink {
            name: "bond0".into(),
            mode: "802.3ad".into(),
            miimon: 100,
            lacp_rate: "fast".into(),
            xmit_hash_policy: "layer3+4".into(),
            min_links: 1,
            primary: None,
            mtu: 9000,
            home: "eth1".into(),
            up: true,
        }
    }

    pub(super) fn addr() -> Addr {
        Addr {
            cidr: "10.0.0.1/24".parse().unwrap(),
            broadcast: Some("10.0.0.127".parse().unwrap()),
        }
    }

    pub(super) fn route() -> Route {
        Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("10.0.0.254".parse().unwrap()),
            metric: Some(100),
            table: 254,
            protocol: 4,
            scope: 0,
            prefsrc: None,
        }
    }

    pub(super) fn shaping() -> Shaping {
        Shaping {
            bandwidth: 1_000_000_000,
            floors: BTreeMap::from([(
                mac("52:54:00:00:00:10"),
                FloorClass {
                    rate: 100_000_000,
                    class: 0x10,
                },
            )]),
            intact: true,
        }
    }

    pub(super) fn table() -> NftTable {
        let mut t = NftTable::empty();
        t.families.insert("inet".into());
        t.chains.insert(
            "inet fwd".into(),
            NftChain {
                family: "inet".into(),
                name: "fwd".into(),
                hook: Some("type filter hook forward priority 0; policy accept;".into()),
                rules: vec![NftRule::new("accept".into())],
            },
        );
        t
    }

    pub(super) fn chain() -> NftChain {
        NftChain {
            family: "inet".into(),
            name: "in-web".into(),
            hook: None,
            rules: vec![NftRule::new("accept".into())],
        }
    }

    pub(super) fn ethtool(v: &[(&str, u32)]) -> crate::state::EthtoolValues {
        v.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
    }
}

use fx::*;

fn addr_on(a: Addr) -> DevAddr {
    DevAddr {
        dev: "kv-web".into(),
        addr: a,
    }
}

fn route_on() -> DevRoute {
    DevRoute {
        dev: "kv-web".into(),
        route: route(),
    }
}

fn flood() -> Fdb {
    Fdb {
        dev: "kx-web".into(),
        dst: "192.0.2.2".parse().unwrap(),
    }
}

fn ns() -> Netns {
    Netns {
        name: "kvmnet-vm1".into(),
    }
}

/// One or more steps of every kind and shape.
fn steps() -> Vec<Step> {
    let mut v = first_steps();
    v.extend(more_steps());
    v
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

fn first_steps() -> Vec<Step> {
    use Change::{Create, Delete, Update};
    let b2 = BridgeLink {
        mac: "52:54:00:00:00:02".parse().unwrap(),
        mtu: 9000,
        ..bridge()
    };
    let plain = Addr {
        cidr: "10.0.0.1/24".parse().unwrap(),
        broadcast: Some("10.0.0.255".parse().unwrap()),
    };
    let veth2 = PortLink {
        kind: PortKind::Veth {
            netns: "kvmnet-vm1".into(),
            guest: GuestEnd {
                mtu: 9000,
                name: "eth0".into(),
                mac: "52:54:00:00:00:10".parse().unwrap(),
                up: true,
                addr: None,
                gateway: None,
                addr6: None,
                gateway6: None,
                dhcp: false,
            },
        },
        ..veth()
    };
    let macvtap2 = PortLink {
        kind: PortKind::Macvtap {
            uplink: "eth0".into(),
            mode: crate::spec::DirectMode::Bridge,
            owner: None,
        },
        ..macvtap()
    };
    vec![
        Step::Netns(Create(ns())),
        Step::Netns(Delete(ns())),
        Step::Bridge(Create(bridge())),
        Step::Bridge(Delete(bridge())),
        Step::Bridge(Update {
            from: bridge(),
            to: b2,
        }),
        Step::Master(Set::new("eth0", None, some("kv-web"))),
        Step::Master(Set::new("eth0", some("kv-web"), None)),
        Step::Addr(Create(addr_on(addr()))),
        Step::Addr(Delete(addr_on(addr()))),
        Step::Addr(Create(addr_on(plain))),
        Step::Addr6(Create(DevAddr6 {
            dev: "kv-web".into(),
            addr: "fd00:122::1/64".parse().unwrap(),
        })),
        Step::Route(Create(route_on())),
        Step::Route(Delete(route_on())),
        Step::Port(Create(tap())),
        Step::Port(Delete(tap())),
        Step::Port(Create(veth())),
        Step::Port(Create(macvtap())),
        Step::Port(Delete(macvtap())),
        Step::Port(Update {
            from: tap(),
            to: tap_changed(),
        }),
        Step::Port(Update {
            from: veth(),
            to: veth2,
        }),
        Step::Port(Update {
            from: macvtap(),
            to: macvtap2,
        }),
        Step::NftTable(Set::new(crate::nft::TABLE, None, Some(table()))),
        Step::NftTable(Set::new(crate::nft::TABLE, Some(table()), None)),
        Step::NftTable(Set::new(
            crate::nft::TABLE,
            Some(crate::nft::NftTable::empty()),
            Some(table()),
        )),
        Step::Nft(NftChange::AddChain(chain())),
        Step::Nft(NftChange::AddElement {
            family: "bridge".into(),
            set: "guarded".into(),
            element: "\"web1\"".into(),
        }),
    ]
}

fn more_steps() -> Vec<Step> {
    use Change::{Create, Delete, Update};
    let bond2 = BondLink {
        primary: Some("eth1".into()),
        mode: "active-backup".into(),
        lacp_rate: String::new(),
        ..bond()
    };
    vec![
        Step::Sysctl(Set::new("net.ipv4.ip_forward", "0".into(), "1".into())),
        Step::Vxlan(Create(vxlan())),
        Step::Vxlan(Create(crate::state::VxlanLink {
            group: None,
            master: None,
            ..vxlan()
        })),
        Step::Vxlan(Delete(vxlan())),
        Step::Fdb(Create(flood())),
        Step::Fdb(Delete(flood())),
        Step::Shaping(Set::new("kv-web", None, Some(shaping()))),
        Step::Shaping(Set::new(
            "kv-web",
            Some(Shaping {
                intact: false,
                ..shaping()
            }),
            None,
        )),
        Step::Shaping(Set::new(
            "kv-web",
            Some(shaping()),
            Some(Shaping {
                floors: Default::default(),
                ..shaping()
            }),
        )),
        Step::Ethtool(Set::new(
            "eth1",
            ethtool(&[("tso", 1), ("rings.rx", 512)]),
            ethtool(&[("tso", 0), ("rings.rx", 4096), ("gro", 1)]),
        )),
        Step::Ethtool(Set::new("eth1", ethtool(&[]), ethtool(&[]))),
        Step::Vlan(Create(vlan())),
        Step::Vlan(Create(crate::state::VlanLink {
            isolated: false,
            master: None,
            port: Some("kt-vm1-0".into()),
            ..vlan()
        })),
        Step::Vlan(Delete(vlan())),
        Step::Up(Set::new("eth0", false, true)),
        Step::Up(Set::new("eth0", true, false)),
        Step::Bond(Create(bond())),
        Step::Bond(Create(BondLink {
            lacp_rate: String::new(),
            ..bond()
        })),
        Step::Bond(Delete(bond())),
        Step::Bond(Update {
            from: bond(),
            to: bond2,
        }),
        Step::BondMember(Set::new("eth1", None, some("bond0"))),
        Step::BondMember(Set::new("eth1", some("bond0"), None)),
        Step::Mtu(Set::new("eth1", 1500, 9000)),
        Step::Nb(Create(nb_port("52:54:00:00:00:10 10.0.0.10"))),
        Step::Nb(Update {
            from: nb_port(""),
            to: nb_port("52:54:00:00:00:10 10.0.0.10"),
        }),
        Step::Chassis(Set::new(
            "hv1",
            None,
            Some(crate::ovn::ChassisConf {
                name: "hv1".into(),
                ovs: "unix:/run/openvswitch/db.sock".into(),
                sb: "tcp:192.0.2.1:6642".into(),
                encap: "geneve".into(),
                encap_ip: "192.0.2.11".parse().unwrap(),
                datapath: "system".into(),
                gateway_uplink: None,
                provider_uplinks: Default::default(),
                ports: [("vm1".to_string(), "vm1".to_string())].into(),
                ssl: None,
                drifted: false,
            }),
        )),
    ]
}

fn nb_port(addr: &str) -> crate::ovn::NbRow {
    use crate::ovn::NbVal;
    crate::ovn::NbRow {
        table: "Logical_Switch_Port".into(),
        key: "vm1".into(),
        columns: [
            ("name".to_string(), NbVal::str("vm1")),
            ("addresses".to_string(), NbVal::strs([addr])),
        ]
        .into(),
        parent: Some(crate::ovn::NbParent {
            table: "Logical_Switch".into(),
            key: "web".into(),
            column: "ports".into(),
        }),
    }
}

/// Text and JSON of each step of `steps()`, as the plan showed them before steps became
/// typed changes.
const EXPECTED: &[(&str, &str)] = &[
    (
        r#"+ netns kvmnet-vm1"#,
        r#"{"kind":"netns","name":"kvmnet-vm1","op":"create"}"#,
    ),
    (
        r#"- netns kvmnet-vm1"#,
        r#"{"kind":"netns","name":"kvmnet-vm1","op":"delete"}"#,
    ),
    (
        r#"+ bridge kv-web (network web, mac 52:54:00:00:00:01, mtu 1500)"#,
        r#"{"kind":"bridge","mac":"52:54:00:00:00:01","mtu":1500,"name":"kv-web","network":"web","op":"create"}"#,
    ),
    (
        r#"- bridge kv-web"#,
        r#"{"kind":"bridge","mac":"52:54:00:00:00:01","mtu":1500,"name":"kv-web","network":"web","op":"delete"}"#,
    ),
    (
        r#"~ bridge kv-web: mac 52:54:00:00:00:01 -> 52:54:00:00:00:02, mtu 1500 -> 9000"#,
        r#"{"changes":{"mac":{"from":"52:54:00:00:00:01","to":"52:54:00:00:00:02"},"mtu":{"from":"1500","to":"9000"}},"kind":"bridge","name":"kv-web","op":"update"}"#,
    ),
    (
        r#"~ uplink eth0: master (none) -> kv-web"#,
        r#"{"from":null,"kind":"uplink","name":"eth0","op":"update","to":"kv-web"}"#,
    ),
    (
        r#"~ uplink eth0: master kv-web -> (none)"#,
        r#"{"from":"kv-web","kind":"uplink","name":"eth0","op":"update","to":null}"#,
    ),
    (
        r#"+ address 10.0.0.1/24 dev kv-web brd 10.0.0.127"#,
        r#"{"address":"10.0.0.1/24","broadcast":"10.0.0.127","dev":"kv-web","kind":"address","name":"10.0.0.1/24 dev kv-web","op":"add"}"#,
    ),
    (
        r#"- address 10.0.0.1/24 dev kv-web brd 10.0.0.127"#,
        r#"{"address":"10.0.0.1/24","broadcast":"10.0.0.127","dev":"kv-web","kind":"address","name":"10.0.0.1/24 dev kv-web","op":"remove"}"#,
    ),
    (
        r#"+ address 10.0.0.1/24 dev kv-web"#,
        r#"{"address":"10.0.0.1/24","broadcast":"10.0.0.255","dev":"kv-web","kind":"address","name":"10.0.0.1/24 dev kv-web","op":"add"}"#,
    ),
    (
        r#"+ address fd00:122::1/64 dev kv-web"#,
        r#"{"address":"fd00:122::1/64","dev":"kv-web","kind":"address","name":"fd00:122::1/64 dev kv-web","op":"add"}"#,
    ),
    (
        r#"+ route default via 10.0.0.254 metric 100 dev kv-web"#,
        r#"{"dev":"kv-web","kind":"route","name":"default via 10.0.0.254 metric 100 dev kv-web","op":"add","route":"default via 10.0.0.254 metric 100"}"#,
    ),
    (
        r#"- route default via 10.0.0.254 metric 100 dev kv-web"#,
        r#"{"dev":"kv-web","kind":"route","name":"default via 10.0.0.254 metric 100 dev kv-web","op":"remove","route":"default via 10.0.0.254 metric 100"}"#,
    ),
    (
        r#"+ tap kt-vm1-0 (vm vm1, bridge kv-web, mtu 1500, owner uid 1000, multiqueue)"#,
        r#"{"bridge":"kv-web","kind":"tap","mac":"fe:54:00:00:00:10","mtu":1500,"multi_queue":true,"name":"kt-vm1-0","network":"web","op":"create","owner":1000,"vm":"vm1"}"#,
    ),
    (
        r#"- tap kt-vm1-0"#,
        r#"{"bridge":"kv-web","kind":"tap","mac":"fe:54:00:00:00:10","mtu":1500,"multi_queue":true,"name":"kt-vm1-0","network":"web","op":"delete","owner":1000,"vm":"vm1"}"#,
    ),
    (
        r#"+ veth kv-vm1-1 (vm vm1, bridge kv-web, mtu 1500, guest kvmnet-vm1/eth0 mac 52:54:00:00:00:10 ipv4 10.0.0.10/24)"#,
        r#"{"bridge":"kv-web","guest_gateway":"10.0.0.1","guest_ipv4":"10.0.0.10/24","guest_mac":"52:54:00:00:00:10","kind":"veth","mac":"fe:54:00:00:00:10","mtu":1500,"name":"kv-vm1-1","netns":"kvmnet-vm1","network":"web","op":"create","vm":"vm1"}"#,
    ),
    (
        r#"+ macvtap km-vm1-2 (vm vm1, on eth0 mode bridge, mac fe:54:00:00:00:10, mtu 1500, owner uid 107)"#,
        r#"{"bridge":null,"direct_mode":"bridge","kind":"macvtap","mac":"fe:54:00:00:00:10","mtu":1500,"name":"km-vm1-2","network":"web","op":"create","owner":107,"uplink":"eth0","vm":"vm1"}"#,
    ),
    (
        r#"- macvtap km-vm1-2"#,
        r#"{"bridge":null,"direct_mode":"bridge","kind":"macvtap","mac":"fe:54:00:00:00:10","mtu":1500,"name":"km-vm1-2","network":"web","op":"delete","owner":107,"uplink":"eth0","vm":"vm1"}"#,
    ),
    (
        r#"~ tap kt-vm1-0: isolated false -> true, mirror - -> kt-vm2-0, mtu 1500 -> 9000, qos in - out - -> in 1000000bit ceil 2000000bit burst 1500b out -"#,
        r#"{"changes":{"isolated":{"from":"false","to":"true"},"mirror":{"from":"-","to":"kt-vm2-0"},"mtu":{"from":"1500","to":"9000"},"qos":{"from":"in - out -","to":"in 1000000bit ceil 2000000bit burst 1500b out -"}},"kind":"tap","name":"kt-vm1-0","op":"update"}"#,
    ),
    (
        r#"~ veth kv-vm1-1: guest mac 52:54:00:00:00:10 mtu 1500 up true ipv4 10.0.0.10/24 gateway 10.0.0.1 -> mac 52:54:00:00:00:10 mtu 9000 up true ipv4 - gateway -"#,
        r#"{"changes":{"guest":{"from":"mac 52:54:00:00:00:10 mtu 1500 up true ipv4 10.0.0.10/24 gateway 10.0.0.1","to":"mac 52:54:00:00:00:10 mtu 9000 up true ipv4 - gateway -"}},"kind":"veth","name":"kv-vm1-1","op":"update"}"#,
    ),
    (
        r#"~ macvtap km-vm1-2: device owner uid 107 -> -"#,
        r#"{"changes":{"device owner":{"from":"uid 107","to":"-"}},"kind":"macvtap","name":"km-vm1-2","op":"update"}"#,
    ),
    (
        r#"+ nftables kvmnet (1 rules)"#,
        r#"{"kind":"nftables","name":"kvmnet","op":"create","rules":"table inet kvmnet {\n\tcomment \"kvmnet v2\"\n\tchain fwd {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\taccept comment \"7e5f7abe09509b09\"\n\t}\n}\n"}"#,
    ),
    (
        r#"- nftables kvmnet"#,
        r#"{"kind":"nftables","name":"kvmnet","op":"delete","rules":null}"#,
    ),
    (
        r#"~ nftables kvmnet (1 rules)"#,
        r#"{"kind":"nftables","name":"kvmnet","op":"set","rules":"table inet kvmnet {\n\tcomment \"kvmnet v2\"\n\tchain fwd {\n\t\ttype filter hook forward priority 0; policy accept;\n\t\taccept comment \"7e5f7abe09509b09\"\n\t}\n}\n"}"#,
    ),
    (
        r#"+ nftables chain inet in-web (1 rules)"#,
        r#"{"chain":"in-web","family":"inet","hook":null,"kind":"nftables","name":"chain inet in-web","object":"chain","op":"create","rules":["accept"]}"#,
    ),
    (
        r#"+ nftables element bridge guarded "web1""#,
        r#"{"element":"\"web1\"","family":"bridge","kind":"nftables","name":"element bridge guarded \"web1\"","object":"element","op":"add","set":"guarded"}"#,
    ),
    (
        r#"~ sysctl net.ipv4.ip_forward: 0 -> 1"#,
        r#"{"from":"0","kind":"sysctl","name":"net.ipv4.ip_forward","op":"set","to":"1"}"#,
    ),
    (
        r#"+ vxlan kx-web (network web, vni 42, local 192.0.2.1 dev eth0, port 4789, bridge kv-web, mtu 1450, group 239.1.1.1)"#,
        r#"{"bridge":"kv-web","group":"239.1.1.1","kind":"vxlan","local":"192.0.2.1","mtu":1450,"name":"kx-web","network":"web","op":"create","port":4789,"underlay":"eth0","vni":42}"#,
    ),
    (
        r#"+ vxlan kx-web (network web, vni 42, local 192.0.2.1 dev eth0, port 4789, bridge -, mtu 1450)"#,
        r#"{"bridge":null,"group":null,"kind":"vxlan","local":"192.0.2.1","mtu":1450,"name":"kx-web","network":"web","op":"create","port":4789,"underlay":"eth0","vni":42}"#,
    ),
    (
        r#"- vxlan kx-web"#,
        r#"{"bridge":"kv-web","group":"239.1.1.1","kind":"vxlan","local":"192.0.2.1","mtu":1450,"name":"kx-web","network":"web","op":"delete","port":4789,"underlay":"eth0","vni":42}"#,
    ),
    (
        r#"+ fdb 192.0.2.2 dev kx-web"#,
        r#"{"dev":"kx-web","dst":"192.0.2.2","kind":"fdb","mac":"00:00:00:00:00:00","name":"192.0.2.2 dev kx-web","op":"add"}"#,
    ),
    (
        r#"- fdb 192.0.2.2 dev kx-web"#,
        r#"{"dev":"kx-web","dst":"192.0.2.2","kind":"fdb","mac":"00:00:00:00:00:00","name":"192.0.2.2 dev kx-web","op":"remove"}"#,
    ),
    (
        r#"+ shaping kv-web: bandwidth 1gbit, floors 52:54:00:00:00:10 100mbit (1:10)"#,
        r#"{"from":null,"kind":"shaping","name":"kv-web","op":"create","to":"bandwidth 1gbit, floors 52:54:00:00:00:10 100mbit (1:10)"}"#,
    ),
    (
        r#"- shaping kv-web (was bandwidth 1gbit, floors 52:54:00:00:00:10 100mbit (1:10) (damaged))"#,
        r#"{"from":"bandwidth 1gbit, floors 52:54:00:00:00:10 100mbit (1:10) (damaged)","kind":"shaping","name":"kv-web","op":"delete","to":null}"#,
    ),
    (
        r#"~ shaping kv-web: bandwidth 1gbit"#,
        r#"{"from":"bandwidth 1gbit, floors 52:54:00:00:00:10 100mbit (1:10)","kind":"shaping","name":"kv-web","op":"set","to":"bandwidth 1gbit"}"#,
    ),
    (
        r#"~ ethtool eth1: gro -> on, rings.rx 512 -> 4096, tso on -> off"#,
        r#"{"from":{"rings.rx":512,"tso":1},"kind":"ethtool","name":"eth1","op":"set","to":{"gro":1,"rings.rx":4096,"tso":0}}"#,
    ),
    (
        r#"~ ethtool eth1: "#,
        r#"{"from":{},"kind":"ethtool","name":"eth1","op":"set","to":{}}"#,
    ),
    (
        r#"+ vlan eth0.100 (network web, vlan 100 on eth0, bridge kv-web, mtu 1500, isolated)"#,
        r#"{"bridge":"kv-web","kind":"vlan","link":"eth0","mtu":1500,"name":"eth0.100","network":"web","op":"create","port":null,"vlan":100}"#,
    ),
    (
        r#"+ vlan eth0.100 (network web, vlan 100 on eth0, bridge -, mtu 1500)"#,
        r#"{"bridge":null,"kind":"vlan","link":"eth0","mtu":1500,"name":"eth0.100","network":"web","op":"create","port":"kt-vm1-0","vlan":100}"#,
    ),
    (
        r#"- vlan eth0.100"#,
        r#"{"bridge":"kv-web","kind":"vlan","link":"eth0","mtu":1500,"name":"eth0.100","network":"web","op":"delete","port":null,"vlan":100}"#,
    ),
    (
        r#"~ uplink eth0: down -> up"#,
        r#"{"from":"down","kind":"uplink","name":"eth0","op":"update","to":"up"}"#,
    ),
    (
        r#"~ uplink eth0: up -> down"#,
        r#"{"from":"up","kind":"uplink","name":"eth0","op":"update","to":"down"}"#,
    ),
    (
        r#"+ bond bond0 (mode 802.3ad, miimon 100, lacp_rate fast, xmit_hash_policy layer3+4, min_links 1, mtu 9000)"#,
        r#"{"kind":"bond","lacp_rate":"fast","miimon":100,"min_links":1,"mode":"802.3ad","mtu":9000,"name":"bond0","op":"create","primary":null,"xmit_hash_policy":"layer3+4"}"#,
    ),
    (
        r#"+ bond bond0 (mode 802.3ad, miimon 100, xmit_hash_policy layer3+4, min_links 1, mtu 9000)"#,
        r#"{"kind":"bond","lacp_rate":"","miimon":100,"min_links":1,"mode":"802.3ad","mtu":9000,"name":"bond0","op":"create","primary":null,"xmit_hash_policy":"layer3+4"}"#,
    ),
    (
        r#"- bond bond0"#,
        r#"{"kind":"bond","lacp_rate":"fast","miimon":100,"min_links":1,"mode":"802.3ad","mtu":9000,"name":"bond0","op":"delete","primary":null,"xmit_hash_policy":"layer3+4"}"#,
    ),
    (
        r#"~ bond bond0: lacp_rate fast -> , mode 802.3ad -> active-backup, primary - -> eth1"#,
        r#"{"changes":{"lacp_rate":{"from":"fast","to":""},"mode":{"from":"802.3ad","to":"active-backup"},"primary":{"from":"-","to":"eth1"}},"kind":"bond","name":"bond0","op":"update"}"#,
    ),
    (
        r#"~ bond-member eth1: bond (none) -> bond0"#,
        r#"{"from":null,"kind":"bond-member","name":"eth1","op":"update","to":"bond0"}"#,
    ),
    (
        r#"~ bond-member eth1: bond bond0 -> (none)"#,
        r#"{"from":"bond0","kind":"bond-member","name":"eth1","op":"update","to":null}"#,
    ),
    (
        r#"~ mtu eth1: 1500 -> 9000"#,
        r#"{"from":1500,"kind":"mtu","name":"eth1","op":"set","to":9000}"#,
    ),
    (
        r#"+ ovn-port vm1 (addresses=["52:54:00:00:00:10 10.0.0.10"])"#,
        r#"{"columns":{"addresses":["52:54:00:00:00:10 10.0.0.10"],"name":"vm1"},"kind":"ovn-port","name":"vm1","op":"add","table":"Logical_Switch_Port"}"#,
    ),
    (
        r#"~ ovn-port vm1: addresses [""] -> ["52:54:00:00:00:10 10.0.0.10"]"#,
        r#"{"changes":{"addresses":{"from":"[\"\"]","to":"[\"52:54:00:00:00:10 10.0.0.10\"]"}},"kind":"ovn-port","name":"vm1","op":"update"}"#,
    ),
    (
        r#"+ ovn-chassis hv1 (encap geneve 192.0.2.11, 1 port(s))"#,
        r#"{"from":null,"kind":"ovn-chassis","name":"hv1","op":"add","to":{"datapath":"system","encap":"geneve","encap_ip":"192.0.2.11","gateway_uplink":null,"name":"hv1","ovs":"unix:/run/openvswitch/db.sock","ports":{"vm1":"vm1"},"sb":"tcp:192.0.2.1:6642"}}"#,
    ),
];

/// The plan's text and JSON of every kind of step are what they were before steps became
/// typed changes.
#[test]
fn text_and_json_of_every_kind_are_unchanged() {
    let steps = steps();
    assert_eq!(steps.len(), EXPECTED.len());
    for (s, (text, js)) in steps.iter().zip(EXPECTED) {
        assert_eq!(&s.to_string(), text);
        assert_eq!(&serde_json::to_string(&s.to_json()).unwrap(), js, "{s}");
    }
}

#[test]
fn the_examples_hold_every_kind() {
    let kinds: BTreeSet<Kind> = steps().iter().map(Step::tag).collect();
    assert_eq!(kinds, Kind::ALL.iter().copied().collect());
}

/// A create undoes as a delete of the same object and back; an update and a setting swap
/// their ends; the op words pair up (create/delete, add/remove, a setting's own).
#[test]
fn every_change_inverts_and_inverts_back() {
    for s in steps() {
        let inv = s.inverse();
        assert_eq!(inv.inverse(), s);
        assert_eq!(inv.tag(), s.tag());
        assert_eq!(inv.name(), s.name(), "{s}");
        let pair = |op: &'static str| match op {
            "create" => "delete",
            "delete" => "create",
            "add" => "remove",
            "remove" => "add",
            other => other,
        };
        assert_eq!(inv.op(), pair(s.op()), "{s}");
    }
    let c = Change::Update { from: 1, to: 2 };
    assert_eq!(c.inverse(), Change::Update { from: 2, to: 1 });
    assert_eq!(Change::Create(1).inverse(), Change::Delete(1));
    assert_eq!(Change::Delete(1).inverse(), Change::Create(1));
    let s: Set<Mtu> = Set::new("eth0", 1500, 9000);
    assert_eq!(s.inverse(), Set::new("eth0", 9000, 1500));
}

/// Every kind of step has a phase of the order, and every phase makes some kind.
#[test]
fn the_order_covers_every_kind() {
    let covered: BTreeSet<Kind> = ORDER.iter().flat_map(|p| p.kinds.iter().copied()).collect();
    assert_eq!(covered, Kind::ALL.iter().copied().collect());
    for p in ORDER {
        assert!(!p.kinds.is_empty() && !p.what.is_empty());
    }
}

/// What a cascade takes off early, it knows how to take off; and what comes off a bond
/// made again is within the phase that does it.
#[test]
fn cascades_can_be_carried_out() {
    for c in CASCADES {
        for k in c.over {
            assert!(order::take_off(*k).is_some(), "{k:?} on {:?}", c.under);
        }
    }
    let bond_phase = ORDER
        .iter()
        .find(|p| p.kinds.contains(&Kind::BondMember) && p.kinds.contains(&Kind::Vlan))
        .expect("the phase that takes bonds down");
    let mut under = vec![Kind::Bond];
    while let Some(k) = under.pop() {
        for o in order::over(k) {
            assert!(bond_phase.kinds.contains(&o), "{o:?}");
            under.push(o);
        }
    }
}

fn plan_text(want: &HostState, have: &HostState) -> Vec<String> {
    let p = diff(want, have);
    for s in &p.steps {
        assert_eq!(&s.inverse().inverse(), s);
    }
    p.steps.iter().map(Step::to_string).collect()
}

/// A bond made again (another mode) takes what sits on it down first, in the cascade's
/// order, and the rest of the plan builds it all again.
#[test]
fn a_bond_made_again_takes_down_and_rebuilds_what_sits_on_it() {
    use crate::state::{MemberLink, VlanLink, VxlanLink};
    let mut have = HostState::default();
    have.bonds.insert(
        "bond0".into(),
        BondLink {
            primary: Some("eth1".into()),
            ..bond()
        },
    );
    have.members.insert(
        "eth1".into(),
        MemberLink {
            name: "eth1".into(),
            bond: Some("bond0".into()),
        },
    );
    let on_bond = VlanLink {
        parent: "bond0".into(),
        ..vlan()
    };
    have.vlans.insert(on_bond.name.clone(), on_bond);
    let vx = VxlanLink {
        underlay: "bond0".into(),
        ..vxlan()
    };
    have.vxlans.insert(vx.name.clone(), vx);
    have.fdb
        .insert("kx-web".into(), vec!["192.0.2.2".parse().unwrap()]);
    have.addrs.insert("bond0".into(), vec![addr()]);
    let mut want = have.clone();
    want.bonds.get_mut("bond0").unwrap().mode = "active-backup".into();
    assert_eq!(
        plan_text(&want, &have),
        [
            "- vlan eth0.100",
            "- fdb 192.0.2.2 dev kx-web",
            "- vxlan kx-web",
            "- address 10.0.0.1/24 dev bond0 brd 10.0.0.127",
            "~ bond bond0: primary eth1 -> -",
            "~ bond-member eth1: bond bond0 -> (none)",
            "- bond bond0",
            "+ bond bond0 (mode active-backup, miimon 100, lacp_rate fast, \
             xmit_hash_policy layer3+4, min_links 1, mtu 9000)",
            "~ bond-member eth1: bond (none) -> bond0",
            "~ bond bond0: primary - -> eth1",
            "+ address 10.0.0.1/24 dev bond0 brd 10.0.0.127",
            "+ vlan eth0.100 (network web, vlan 100 on bond0, bridge kv-web, mtu 1500, isolated)",
            "+ vxlan kx-web (network web, vni 42, local 192.0.2.1 dev bond0, port 4789, \
             bridge kv-web, mtu 1450, group 239.1.1.1)",
            "+ fdb 192.0.2.2 dev kx-web",
        ]
    );
}

/// A port made again takes the VLAN sub-interfaces on it down before, and they come back
/// after; a port changed in place leaves them be.
#[test]
fn a_port_made_again_remakes_the_vlans_on_it() {
    let mut have = HostState::default();
    have.ports.insert(tap().name.clone(), tap());
    let trunk = crate::state::VlanLink {
        name: "kt-vm1-0.7".into(),
        parent: tap().name,
        ..vlan()
    };
    have.vlans.insert(trunk.name.clone(), trunk);
    let mut want = have.clone();
    want.ports.insert(tap().name, tap_changed());
    assert_eq!(
        plan_text(&want, &have),
        [
            "~ tap kt-vm1-0: isolated false -> true, mirror - -> kt-vm2-0, mtu 1500 -> 9000, \
          qos in - out - -> in 1000000bit ceil 2000000bit burst 1500b out -"
        ]
    );
    want.ports.get_mut("kt-vm1-0").unwrap().kind = PortKind::Tap {
        owner: None,
        multi_queue: false,
    };
    let remade = plan_text(&want, &have);
    assert_eq!(remade.len(), 4, "{remade:#?}");
    assert!(remade[0].starts_with("- vlan kt-vm1-0.7"));
    assert!(remade[1].starts_with("- tap kt-vm1-0"));
    assert!(remade[2].starts_with("+ tap kt-vm1-0"));
    assert!(remade[3].starts_with("+ vlan kt-vm1-0.7"));
}

/// A port joining a port group of many shows as that port, not as the group's whole list
/// twice: the plan of one port more stays one port long at 10,000.
#[test]
fn a_large_set_shows_only_what_differs() {
    use crate::ovn::{NbRow, NbVal};
    let switch = |n: usize| NbRow {
        table: "Port_Group".into(),
        key: "fw".into(),
        columns: [
            ("name".to_string(), NbVal::str("fw")),
            (
                "ports".to_string(),
                NbVal::set(
                    (0..n).map(|i| NbVal::reference("Logical_Switch_Port", format!("p{i}"))),
                ),
            ),
        ]
        .into(),
        parent: None,
    };
    let step = Step::Nb(Change::Update {
        from: switch(2500),
        to: switch(2501),
    });
    assert_eq!(
        step.to_string(),
        "~ ovn-port-group fw: ports [... 2500 shared] -> [Logical_Switch_Port:p2500, ... 2500 shared]"
    );
    // A few shared members are still shown whole.
    let step = Step::Nb(Change::Update {
        from: switch(2),
        to: switch(3),
    });
    assert!(step.to_string().ends_with(
        "ports [Logical_Switch_Port:p0, Logical_Switch_Port:p1] -> [Logical_Switch_Port:p0, Logical_Switch_Port:p1, Logical_Switch_Port:p2]"
    ));
}
