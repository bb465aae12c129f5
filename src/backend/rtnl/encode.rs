//! Requests as rtnetlink messages.

use std::collections::HashMap;
use std::os::fd::RawFd;

use super::HALF_MADE_GROUP;
use super::consts::{
    AF_BRIDGE, IFA_ADDRESS, IFA_BROADCAST, IFA_F_NODAD, IFA_F_PERMANENT, IFA_FLAGS, IFA_LOCAL,
    IFF_UP, IFLA_ADDRESS, IFLA_BOND_AD_LACP_RATE, IFLA_BOND_MIIMON, IFLA_BOND_MIN_LINKS,
    IFLA_BOND_MODE, IFLA_BOND_PRIMARY, IFLA_BOND_XMIT_HASH_POLICY, IFLA_BRPORT_ISOLATED,
    IFLA_EXT_MASK, IFLA_GROUP, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_DATA, IFLA_INFO_KIND,
    IFLA_INFO_SLAVE_DATA, IFLA_INFO_SLAVE_KIND, IFLA_LINK, IFLA_LINKINFO, IFLA_MACVLAN_MODE,
    IFLA_MASTER, IFLA_MTU, IFLA_NET_NS_FD, IFLA_VLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT, NDA_DST, NDA_LLADDR,
    NTF_SELF, NUD_NOARP, NUD_PERMANENT, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTA_DST, RTA_GATEWAY,
    RTA_OIF, RTA_PREFSRC, RTA_PRIORITY, RTA_TABLE, RTEXT_FILTER_SKIP_STATS, RTN_UNICAST,
    VETH_INFO_PEER,
};
use super::request::{NewLinkKind, Request, validate};
use super::types::{BondOptions, Route6Info, RouteInfo};
use crate::backend::netlink::MsgBuf;
use crate::backend::netlink::consts::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, RTM_DELADDR, RTM_DELLINK,
    RTM_DELNEIGH, RTM_DELROUTE, RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE,
    RTM_SETLINK,
};

/// A change, answered by an ack.
pub(crate) const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// A creation of something that must not exist yet.
pub(crate) const CREATE: u16 = ACK | NLM_F_CREATE | NLM_F_EXCL;

/// A message awaiting its answer: which request it belongs to; `sync` marks an RTM_GETLINK
/// sent only for its side effect (its reply is the answer; its failure is not the request's).
#[derive(Clone, Copy)]
pub(super) struct Pending {
    pub(super) req: usize,
    pub(super) sync: bool,
}

/// An alias RTM_NEWLINK ignores, set by name once the link exists.
pub(super) struct Deferred {
    pub(super) req: usize,
    pub(super) netns_fd: Option<RawFd>,
    pub(super) name: String,
    pub(super) alias: String,
}

/// `struct ifinfomsg`: family, pad, type, index, flags, change.
pub(crate) fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0] = libc::AF_UNSPEC as u8;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    h[12..16].copy_from_slice(&change.to_ne_bytes());
    h
}

/// `struct ifaddrmsg` of an IPv4 address: family, prefix length, flags, scope, index.
pub(super) fn ifaddrmsg(prefix: u8, index: u32) -> [u8; 8] {
    let mut h = [
        libc::AF_INET as u8,
        prefix,
        0,
        RT_SCOPE_UNIVERSE,
        0,
        0,
        0,
        0,
    ];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// `struct rtmsg` of an IPv4 route: family, dst_len, src_len, tos, table, protocol, scope,
/// type, flags.
pub(super) fn rtmsg(dst_len: u8, table: u8, protocol: u8, scope: u8, ty: u8) -> [u8; 12] {
    let f = libc::AF_INET as u8;
    [f, dst_len, 0, 0, table, protocol, scope, ty, 0, 0, 0, 0]
}

/// `struct ndmsg`: family, pad, pad, ifindex, state, flags, type.
pub(super) fn ndmsg(family: u8, index: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut h = [family, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, 0];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..10].copy_from_slice(&state.to_ne_bytes());
    h
}

/// RTM_SETLINK selecting the link by name, setting its alias.
pub(super) fn set_alias_by_name(b: &mut MsgBuf, seq: u32, d: &Deferred) {
    let start = b.begin(RTM_SETLINK, ACK, seq);
    b.bytes(&ifinfomsg(0, 0, 0));
    b.attr_str(IFLA_IFNAME, &d.name);
    // The kernel takes the attribute length as the alias length: no NUL.
    b.attr(IFLA_IFALIAS, d.alias.as_bytes());
    // Marked: out of the group it was made in (see `HALF_MADE_GROUP`).
    b.attr_u32(IFLA_GROUP, 0);
    b.end(start);
}

/// Appends the message(s) for `req`, request `idx` of a window, to `b`: numbered by `seqs`,
/// each number recorded in `pending`; aliases of created links go to `deferred`. Nothing is
/// written for a request that cannot be encoded.
pub(super) fn encode(
    b: &mut MsgBuf,
    seqs: &mut impl FnMut() -> u32,
    req: &Request,
    idx: usize,
    pending: &mut HashMap<u32, Pending>,
    deferred: &mut Vec<Deferred>,
) -> Result<(), String> {
    validate(req)?;
    let mut number = |sync: bool| {
        let seq = seqs();
        pending.insert(seq, Pending { req: idx, sync });
        seq
    };
    match req {
        Request::NewLink { .. } => new_link(b, number(false), req, idx, deferred),
        Request::SetLink { .. } => set_link(b, &mut number, req),
        Request::DelLink { index } => {
            let start = b.begin(RTM_DELLINK, ACK, number(false));
            b.bytes(&ifinfomsg(*index, 0, 0));
            b.end(start);
        }
        Request::SetBond { index, options } => {
            let start = b.begin(RTM_NEWLINK, ACK, number(false));
            b.bytes(&ifinfomsg(*index, 0, 0));
            let li = b.nest_begin(IFLA_LINKINFO);
            options.encode(b);
            b.nest_end(li);
            b.end(start);
        }
        Request::SetBridgePort { index, isolated } => {
            // Like `ip link set dev X type bridge_slave isolated on`.
            let start = b.begin(RTM_NEWLINK, ACK, number(false));
            b.bytes(&ifinfomsg(*index, 0, 0));
            let li = b.nest_begin(IFLA_LINKINFO);
            b.attr_str(IFLA_INFO_SLAVE_KIND, "bridge");
            let data = b.nest_begin(IFLA_INFO_SLAVE_DATA);
            b.attr(IFLA_BRPORT_ISOLATED, &[u8::from(*isolated)]);
            b.nest_end(data);
            b.nest_end(li);
            b.end(start);
        }
        Request::NewAddr { .. } | Request::DelAddr { .. } => addr(b, number(false), req),
        Request::NewAddr6 { .. } | Request::DelAddr6 { .. } => addr6(b, number(false), req),
        Request::NewFdb { .. } | Request::DelFdb { .. } => fdb(b, number(false), req),
        Request::NewRoute(r) => route(b, number(false), r, true),
        Request::DelRoute(r) => route(b, number(false), r, false),
        Request::NewRoute6(r) => route6(b, number(false), r, true),
        Request::DelRoute6(r) => route6(b, number(false), r, false),
    }
    Ok(())
}

/// RTM_NEWLINK for a [`Request::NewLink`].
fn new_link(b: &mut MsgBuf, seq: u32, req: &Request, idx: usize, deferred: &mut Vec<Deferred>) {
    let Request::NewLink {
        name,
        kind,
        mac,
        mtu,
        alias,
        master,
        up,
    } = req
    else {
        unreachable!("new_link encodes NewLink only");
    };
    let start = b.begin(RTM_NEWLINK, CREATE, seq);
    b.bytes(&ifinfomsg(0, if *up { IFF_UP } else { 0 }, IFF_UP));
    b.attr_str(IFLA_IFNAME, name);
    if let Some(m) = mac {
        b.attr(IFLA_ADDRESS, &m.0);
    }
    if let Some(m) = mtu {
        b.attr_u32(IFLA_MTU, *m);
    }
    if let Some(m) = master {
        b.attr_u32(IFLA_MASTER, *m);
    }
    if alias.is_some() {
        b.attr_u32(IFLA_GROUP, HALF_MADE_GROUP);
    }
    if let NewLinkKind::Macvtap { lower: link, .. } | NewLinkKind::Vlan { link, .. } = kind {
        b.attr_u32(IFLA_LINK, *link);
    }
    let li = b.nest_begin(IFLA_LINKINFO);
    if let Some(peer) = link_kind(b, kind, *mtu) {
        deferred.push(Deferred { req: idx, ..peer });
    }
    b.nest_end(li);
    b.end(start);
    // RTM_NEWLINK ignores IFLA_IFALIAS: set it once the creation succeeded.
    if let Some(a) = alias {
        deferred.push(Deferred {
            req: idx,
            netns_fd: None,
            name: name.clone(),
            alias: a.clone(),
        });
    }
}

/// IFLA_INFO_KIND and IFLA_INFO_DATA of a new link. Returns the alias to set on a veth peer
/// once it exists (its `req` is filled in by the caller).
fn link_kind(b: &mut MsgBuf, kind: &NewLinkKind, mtu: Option<u32>) -> Option<Deferred> {
    match kind {
        NewLinkKind::Bridge => b.attr_str(IFLA_INFO_KIND, "bridge"),
        NewLinkKind::Vlan { id, .. } => {
            b.attr_str(IFLA_INFO_KIND, "vlan");
            let data = b.nest_begin(IFLA_INFO_DATA);
            b.attr(IFLA_VLAN_ID, &id.to_ne_bytes());
            b.nest_end(data);
        }
        NewLinkKind::Veth {
            peer_name,
            peer_mac,
            peer_mtu,
            peer_alias,
            peer_netns_fd,
        } => {
            b.attr_str(IFLA_INFO_KIND, "veth");
            let data = b.nest_begin(IFLA_INFO_DATA);
            let peer = b.nest_begin(VETH_INFO_PEER);
            // Never up here: the kernel opens the peer before the pair is linked, which
            // fails with ENOTCONN.
            b.bytes(&ifinfomsg(0, 0, 0));
            b.attr_str(IFLA_IFNAME, peer_name);
            if let Some(m) = peer_mac {
                b.attr(IFLA_ADDRESS, &m.0);
            }
            if let Some(m) = peer_mtu.or(mtu) {
                b.attr_u32(IFLA_MTU, m);
            }
            if let Some(fd) = peer_netns_fd {
                b.attr_u32(IFLA_NET_NS_FD, *fd as u32);
            }
            if peer_alias.is_some() {
                b.attr_u32(IFLA_GROUP, HALF_MADE_GROUP);
            }
            b.nest_end(peer);
            b.nest_end(data);
            return peer_alias.as_ref().map(|a| Deferred {
                req: 0,
                netns_fd: *peer_netns_fd,
                name: peer_name.clone(),
                alias: a.clone(),
            });
        }
        NewLinkKind::Vxlan {
            vni,
            local,
            link,
            port,
            group,
            learning,
        } => {
            b.attr_str(IFLA_INFO_KIND, "vxlan");
            let data = b.nest_begin(IFLA_INFO_DATA);
            b.attr_u32(IFLA_VXLAN_ID, *vni);
            if let Some(g) = group {
                b.attr(IFLA_VXLAN_GROUP, &g.octets());
            }
            if let Some(l) = link {
                b.attr_u32(IFLA_VXLAN_LINK, *l);
            }
            if let Some(l) = local {
                b.attr(IFLA_VXLAN_LOCAL, &l.octets());
            }
            b.attr(IFLA_VXLAN_LEARNING, &[u8::from(*learning)]);
            b.attr(IFLA_VXLAN_PORT, &port.to_be_bytes());
            b.nest_end(data);
        }
        NewLinkKind::Macvtap { mode, .. } => {
            b.attr_str(IFLA_INFO_KIND, "macvtap");
            let data = b.nest_begin(IFLA_INFO_DATA);
            b.attr_u32(IFLA_MACVLAN_MODE, *mode);
            b.nest_end(data);
        }
        NewLinkKind::Bond(o) => o.encode(b),
    }
    None
}

/// RTM_SETLINK for a [`Request::SetLink`], after a sync RTM_GETLINK where it helps.
fn set_link(b: &mut MsgBuf, number: &mut impl FnMut(bool) -> u32, req: &Request) {
    let Request::SetLink {
        index,
        name,
        mac,
        mtu,
        master,
        up,
        alias,
        netns_fd,
    } = req
    else {
        unreachable!("set_link encodes SetLink only");
    };
    if master.is_some_and(|m| m != 0) || *up == Some(true) {
        // A carrier change the kernel has not yet folded into the operstate (a freshly made
        // tap lost its carrier when its creator closed it; linkwatch catches up within a
        // second) would make the bridge enable the port, arm its STP/multicast timers and
        // disable it again a moment later, which makes attaching ~2x slower. An RTM_GETLINK
        // of the link syncs linkwatch first (`ip link set` gets this for free from its name
        // lookup).
        let start = b.begin(RTM_GETLINK, NLM_F_REQUEST, number(true));
        b.bytes(&ifinfomsg(*index, 0, 0));
        b.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        b.end(start);
    }
    let start = b.begin(RTM_SETLINK, ACK, number(false));
    b.bytes(&match up {
        Some(true) => ifinfomsg(*index, IFF_UP, IFF_UP),
        Some(false) => ifinfomsg(*index, 0, IFF_UP),
        None => ifinfomsg(*index, 0, 0),
    });
    if let Some(fd) = netns_fd {
        b.attr_u32(IFLA_NET_NS_FD, *fd as u32);
    }
    if let Some(n) = name {
        b.attr_str(IFLA_IFNAME, n);
    }
    if let Some(m) = mac {
        b.attr(IFLA_ADDRESS, &m.0);
    }
    if let Some(m) = mtu {
        b.attr_u32(IFLA_MTU, *m);
    }
    if let Some(m) = master {
        b.attr_u32(IFLA_MASTER, *m);
    }
    if let Some(a) = alias {
        // The kernel takes the attribute length as the alias length: no NUL.
        b.attr(IFLA_IFALIAS, a.as_bytes());
    }
    b.end(start);
}

/// RTM_NEWADDR or RTM_DELADDR.
fn addr(b: &mut MsgBuf, seq: u32, req: &Request) {
    let (ty, flags, index, addr, broadcast) = match req {
        Request::NewAddr {
            index,
            addr,
            broadcast,
        } => (RTM_NEWADDR, CREATE, index, addr, *broadcast),
        Request::DelAddr { index, addr } => (RTM_DELADDR, ACK, index, addr, None),
        _ => unreachable!("addr encodes NewAddr and DelAddr only"),
    };
    let start = b.begin(ty, flags, seq);
    b.bytes(&ifaddrmsg(addr.prefix, *index));
    b.attr(IFA_LOCAL, &addr.addr.octets());
    b.attr(IFA_ADDRESS, &addr.addr.octets());
    if let Some(brd) = broadcast {
        b.attr(IFA_BROADCAST, &brd.octets());
    }
    b.end(start);
}

/// RTM_NEWADDR or RTM_DELADDR of an IPv6 address.
fn addr6(b: &mut MsgBuf, seq: u32, req: &Request) {
    let (ty, flags, index, addr) = match req {
        Request::NewAddr6 { index, addr } => (RTM_NEWADDR, CREATE, index, addr),
        Request::DelAddr6 { index, addr } => (RTM_DELADDR, ACK, index, addr),
        _ => unreachable!("addr6 encodes NewAddr6 and DelAddr6 only"),
    };
    let start = b.begin(ty, flags, seq);
    b.bytes(&ifaddrmsg6(addr.prefix, *index));
    b.attr(IFA_LOCAL, &addr.addr.octets());
    b.attr(IFA_ADDRESS, &addr.addr.octets());
    if ty == RTM_NEWADDR {
        b.attr_u32(IFA_FLAGS, IFA_F_NODAD | IFA_F_PERMANENT);
    }
    b.end(start);
}

/// `struct ifaddrmsg` of an IPv6 address.
pub(super) fn ifaddrmsg6(prefix: u8, index: u32) -> [u8; 8] {
    let mut h = ifaddrmsg(prefix, index);
    h[0] = libc::AF_INET6 as u8;
    h
}

/// RTM_NEWNEIGH (append) or RTM_DELNEIGH of a bridge-family FDB entry.
fn fdb(b: &mut MsgBuf, seq: u32, req: &Request) {
    let (ty, flags, state, index, mac, dst) = match req {
        Request::NewFdb { index, mac, dst } => (
            RTM_NEWNEIGH,
            ACK | NLM_F_CREATE | NLM_F_APPEND,
            NUD_NOARP | NUD_PERMANENT,
            index,
            mac,
            dst,
        ),
        Request::DelFdb { index, mac, dst } => (RTM_DELNEIGH, ACK, 0, index, mac, dst),
        _ => unreachable!("fdb encodes NewFdb and DelFdb only"),
    };
    let start = b.begin(ty, flags, seq);
    b.bytes(&ndmsg(AF_BRIDGE, *index, state, NTF_SELF));
    b.attr(NDA_LLADDR, &mac.0);
    b.attr(NDA_DST, &dst.octets());
    b.end(start);
}

/// RTM_NEWROUTE (`new`) or RTM_DELROUTE.
fn route(b: &mut MsgBuf, seq: u32, r: &RouteInfo, new: bool) {
    let (ty, flags) = if new {
        (RTM_NEWROUTE, CREATE)
    } else {
        (RTM_DELROUTE, ACK)
    };
    let table = if new && r.table == 0 {
        RT_TABLE_MAIN
    } else {
        r.table
    };
    let rtype = if new && r.route_type == 0 {
        RTN_UNICAST
    } else {
        r.route_type
    };
    let start = b.begin(ty, flags, seq);
    let t8 = if table < 256 { table as u8 } else { 0 };
    b.bytes(&rtmsg(r.dst.prefix, t8, r.protocol, r.scope, rtype));
    b.attr_u32(RTA_TABLE, table);
    if r.dst.prefix > 0 {
        b.attr(RTA_DST, &r.dst.network().addr.octets());
    }
    if let Some(g) = r.gateway {
        b.attr(RTA_GATEWAY, &g.octets());
    }
    if let Some(o) = r.oif {
        b.attr_u32(RTA_OIF, o);
    }
    if let Some(p) = r.priority {
        b.attr_u32(RTA_PRIORITY, p);
    }
    if let Some(s) = r.prefsrc {
        b.attr(RTA_PREFSRC, &s.octets());
    }
    b.end(start);
}

/// RTM_NEWROUTE (`new`) or RTM_DELROUTE of an IPv6 route.
fn route6(b: &mut MsgBuf, seq: u32, r: &Route6Info, new: bool) {
    let (ty, flags) = if new {
        (RTM_NEWROUTE, CREATE)
    } else {
        (RTM_DELROUTE, ACK)
    };
    let start = b.begin(ty, flags, seq);
    b.bytes(&rtmsg6(r.dst.prefix, r.protocol, r.route_type));
    b.attr_u32(RTA_TABLE, r.table);
    if r.dst.prefix > 0 {
        b.attr(RTA_DST, &r.dst.network().addr.octets());
    }
    if let Some(g) = r.gateway {
        b.attr(RTA_GATEWAY, &g.octets());
    }
    if let Some(o) = r.oif {
        b.attr_u32(RTA_OIF, o);
    }
    b.end(start);
}

/// `struct rtmsg` of an IPv6 route in the table RTA_TABLE names (0 here), scope universe.
pub(super) fn rtmsg6(dst_len: u8, protocol: u8, ty: u8) -> [u8; 12] {
    let mut h = rtmsg(dst_len, 0, protocol, RT_SCOPE_UNIVERSE, ty);
    h[0] = libc::AF_INET6 as u8;
    h
}

impl BondOptions {
    /// IFLA_INFO_KIND "bond" and the options set, inside an IFLA_LINKINFO.
    pub(super) fn encode(&self, b: &mut MsgBuf) {
        b.attr_str(IFLA_INFO_KIND, "bond");
        let data = b.nest_begin(IFLA_INFO_DATA);
        if let Some(m) = self.mode {
            b.attr(IFLA_BOND_MODE, &[m]);
        }
        if let Some(m) = self.miimon {
            b.attr_u32(IFLA_BOND_MIIMON, m);
        }
        if let Some(r) = self.lacp_rate {
            b.attr(IFLA_BOND_AD_LACP_RATE, &[r]);
        }
        if let Some(x) = self.xmit_hash_policy {
            b.attr(IFLA_BOND_XMIT_HASH_POLICY, &[x]);
        }
        if let Some(m) = self.min_links {
            b.attr_u32(IFLA_BOND_MIN_LINKS, m);
        }
        if let Some(p) = self.primary {
            b.attr_u32(IFLA_BOND_PRIMARY, p);
        }
        b.nest_end(data);
    }
}
