//! Unit tests of the rtnetlink messages: built, then read back with the framing's parsers.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::consts::{
    IFLA_ADDRESS, IFLA_BOND_AD_LACP_RATE, IFLA_BOND_MODE, IFLA_BOND_PRIMARY, IFLA_IFNAME,
    IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINK, IFLA_LINKINFO, IFLA_MASTER, IFLA_MTU,
    IFLA_NET_NS_FD, IFLA_VLAN_ID, VETH_INFO_PEER,
};
use super::encode::encode;
use super::*;
use crate::backend::netlink::attr::{parse_error, u32_at};
use crate::backend::netlink::consts::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR,
    NLMSGERR_ATTR_MSG, RTM_NEWLINK,
};
use crate::backend::netlink::{attr_string, attrs, messages};
use crate::types::Mac;

/// `req` encoded alone, numbered from 1: the bytes, and the aliases deferred.
fn encoded(req: &Request) -> (Vec<u8>, usize, Vec<Deferred>) {
    let mut b = MsgBuf::new();
    let mut next = 0;
    let mut seqs = || {
        next += 1;
        next
    };
    let mut pending = HashMap::new();
    let mut deferred = Vec::new();
    encode(&mut b, &mut seqs, req, 0, &mut pending, &mut deferred).unwrap();
    (b.as_bytes().to_vec(), pending.len(), deferred)
}

fn msg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = MsgBuf::new();
    let start = b.begin(ty, flags, 7);
    b.bytes(payload);
    b.end(start);
    b.as_bytes().to_vec()
}

#[test]
fn error_ack_with_extended_message() {
    // nlmsgerr: error, the original header (capped), then NLMSGERR_ATTR_MSG.
    let mut p = Vec::new();
    p.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
    let orig = msg(RTM_NEWLINK, NLM_F_REQUEST, &[]);
    p.extend_from_slice(&orig[..16]);
    let mut tlv = MsgBuf::new();
    tlv.attr_str(NLMSGERR_ATTR_MSG, "Address already assigned");
    p.extend_from_slice(tlv.as_bytes());
    let buf = msg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, &p);
    let m = messages(&buf).next().unwrap();
    let (errno, seq, ext) = parse_error(&m).unwrap();
    assert_eq!(errno, libc::EEXIST);
    assert_eq!(seq, 7);
    assert_eq!(ext.as_deref(), Some("Address already assigned"));
    let e = kernel_err("create link x".into(), errno, ext);
    assert_eq!(
        e.to_string(),
        "create link x: File exists (os error 17) (kernel: Address already assigned)"
    );
    assert_eq!(e.errno(), Some(libc::EEXIST));
}

#[test]
fn bond_options_round_trip_through_info_data() {
    let o = BondOptions {
        mode: Some(4),
        miimon: Some(100),
        lacp_rate: Some(1),
        xmit_hash_policy: Some(1),
        min_links: Some(2),
        primary: None,
    };
    let mut b = MsgBuf::new();
    let li = b.nest_begin(IFLA_LINKINFO);
    o.encode(&mut b);
    b.nest_end(li);
    let (_, linkinfo) = attrs(b.as_bytes())
        .find(|(t, _)| *t == IFLA_LINKINFO)
        .unwrap();
    let kind = attrs(linkinfo)
        .find(|(t, _)| *t == IFLA_INFO_KIND)
        .unwrap()
        .1;
    assert_eq!(attr_string(kind), "bond");
    let (_, data) = attrs(linkinfo).find(|(t, _)| *t == IFLA_INFO_DATA).unwrap();
    let a: HashMap<u16, &[u8]> = attrs(data).collect();
    assert_eq!(a[&IFLA_BOND_MODE], &[4], "mode is a u8");
    assert_eq!(a[&IFLA_BOND_AD_LACP_RATE], &[1]);
    assert!(!a.contains_key(&IFLA_BOND_PRIMARY), "no primary on 802.3ad");
    assert_eq!(BondOptions::parse(data), o);
    // Some(0) clears the primary; reading back, 0 means none.
    let clear = BondOptions {
        primary: Some(0),
        ..Default::default()
    };
    let mut b = MsgBuf::new();
    clear.encode(&mut b);
    let (_, data) = attrs(b.as_bytes())
        .find(|(t, _)| *t == IFLA_INFO_DATA)
        .unwrap();
    assert_eq!(attr_u32(attrs(data).next().unwrap().1), Some(0));
    assert_eq!(BondOptions::parse(data).primary, None);
}

#[test]
fn veth_request_nests_the_peer() {
    let req = Request::NewLink {
        name: "a0".into(),
        kind: NewLinkKind::Veth {
            peer_name: "eth0".into(),
            peer_mac: Some(Mac([2, 0, 0, 0, 0, 1])),
            peer_mtu: None,
            peer_alias: Some("p".into()),
            peer_netns_fd: Some(9),
        },
        mac: None,
        mtu: Some(1400),
        alias: None,
        master: None,
        up: true,
    };
    let (buf, pending, deferred) = encoded(&req);
    assert_eq!(pending, 1);
    assert_eq!(deferred.len(), 1);
    assert_eq!(deferred[0].netns_fd, Some(9));
    let m = messages(&buf).next().unwrap();
    assert_eq!(m.ty, RTM_NEWLINK);
    assert_eq!(
        m.flags,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    );
    assert_eq!(u32_at(m.payload, 8), IFF_UP);
    let (_, linkinfo) = attrs(&m.payload[16..])
        .find(|(t, _)| *t == IFLA_LINKINFO)
        .unwrap();
    let (_, data) = attrs(linkinfo).find(|(t, _)| *t == IFLA_INFO_DATA).unwrap();
    let (_, peer) = attrs(data).find(|(t, _)| *t == VETH_INFO_PEER).unwrap();
    assert_eq!(u32_at(peer, 8), 0, "peer created down");
    let pa: HashMap<u16, &[u8]> = attrs(&peer[16..]).collect();
    assert_eq!(attr_string(pa[&IFLA_IFNAME]), "eth0");
    assert_eq!(pa[&IFLA_ADDRESS], &[2, 0, 0, 0, 0, 1]);
    assert_eq!(attr_u32(pa[&IFLA_MTU]), Some(1400), "peer mtu follows mtu");
    assert_eq!(attr_u32(pa[&IFLA_NET_NS_FD]), Some(9));
}

#[test]
fn vlan_request_names_its_lower_device_and_id() {
    let req = Request::NewLink {
        name: "eth1.10".into(),
        kind: NewLinkKind::Vlan { id: 10, link: 4 },
        mac: None,
        mtu: Some(1500),
        alias: Some("kvmnet network=v10".into()),
        master: Some(7),
        up: true,
    };
    let (buf, _, deferred) = encoded(&req);
    assert_eq!(deferred.len(), 1, "the alias follows the creation");
    let m = messages(&buf).next().unwrap();
    let top: HashMap<u16, &[u8]> = attrs(&m.payload[16..]).collect();
    assert_eq!(
        attr_u32(top[&IFLA_LINK]),
        Some(4),
        "IFLA_LINK at the top level"
    );
    assert_eq!(attr_u32(top[&IFLA_MASTER]), Some(7));
    let li: HashMap<u16, &[u8]> = attrs(top[&IFLA_LINKINFO]).collect();
    assert_eq!(attr_string(li[&IFLA_INFO_KIND]), "vlan");
    let data: HashMap<u16, &[u8]> = attrs(li[&IFLA_INFO_DATA]).collect();
    assert_eq!(data[&IFLA_VLAN_ID], &10u16.to_ne_bytes());
}

#[test]
fn descriptions_name_the_object() {
    let r = RouteInfo {
        priority: Some(10),
        ..RouteInfo::via("10.0.0.0/8".parse().unwrap(), Ipv4Addr::new(192, 168, 1, 1))
    };
    assert_eq!(
        Request::NewRoute(r).describe(None),
        "add route 10.0.0.0/8 via 192.168.1.1 table 254 metric 10"
    );
    let mut s = Request::set_link(5);
    if let Request::SetLink { master, up, .. } = &mut s {
        *master = Some(0);
        *up = Some(false);
    }
    assert_eq!(
        s.describe(Some("t0")),
        "set link t0 (index 5) [nomaster, down]"
    );
    assert_eq!(
        Request::DelLink { index: 9 }.describe(None),
        "delete link index 9"
    );
}
