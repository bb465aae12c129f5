//! The up state kvmnet gave a host interface is given back only when nothing sits on it.

use super::*;
use crate::spec::{HostIdentity, parse};

fn spec(text: &str) -> Spec {
    let id = HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host").unwrap();
    parse(text, &id).expect("a valid spec")
}

/// A host whose eth1 is up because kvmnet raised it for a vlan network.
fn host() -> Snapshot {
    let mut snap = Snapshot {
        scope: "host".into(),
        ..Default::default()
    };
    snap.links.push(LinkSnap {
        name: "eth1".into(),
        mtu: 1500,
        up: true,
        oper_up: true,
        mac: Some(crate::types::Mac([0x52, 0x54, 0, 1, 2, 3])),
        ..Default::default()
    });
    snap.raised.insert("eth1".into(), false);
    snap
}

#[test]
fn an_uplink_kvmnet_raised_goes_down_once_no_network_sits_on_it() {
    let empty = spec("version: 1\n");
    let st = desired(&empty, &host()).unwrap();
    assert_eq!(st.lower, BTreeSet::from(["eth1".to_string()]));
}

#[test]
fn an_uplink_kvmnet_raised_stays_up_while_a_direct_network_uses_it() {
    let direct = spec("version: 1\nnetworks:\n  lan:\n    mode: direct\n    uplink: eth1\n");
    let st = desired(&direct, &host()).unwrap();
    assert!(st.lower.is_empty(), "{:?}", st.lower);
    assert!(uplinks_in_use(&direct).contains("eth1"));
}
