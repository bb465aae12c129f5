//! A small rtnetlink client over a raw `NETLINK_ROUTE` socket: link/address/route dumps and
//! batched changes.
//!
//! Speed comes from [`Netlink::execute`]: the kernel handles every message of a `sendmsg`
//! synchronously inside that call and queues one ack per message, so a window of requests costs
//! one `sendmsg` plus reading the acks, instead of a send/receive round trip per request. The
//! window is bounded so the queued acks always fit the (enlarged) receive buffer.
//!
//! Two kernel costs dominate at scale and are dodged here: a bridge enabling a port whose stale
//! operstate still says "up" (see the sync RTM_GETLINK in `encode`), and the RCU barrier every
//! single RTM_DELLINK pays ([`Netlink::delete_links`] deletes many links in one go).

// An API module: the binary need not use every item.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::types::{Ipv4Cidr, Mac};

// ---- protocol constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, ...) ----

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
// In acks:
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;

const NLMSGERR_ATTR_MSG: u16 = 1;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_APPEND: u16 = 0x800;
const AF_BRIDGE: u8 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NTF_SELF: u8 = 0x02;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;

const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VLAN_ID: u16 = 1;
const IFLA_VXLAN_GROUP: u16 = 2;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
// IFLA_BOND_* (linux/if_link.h), inside IFLA_INFO_DATA of kind "bond".
const IFLA_BOND_MODE: u16 = 1;
const IFLA_BOND_MIIMON: u16 = 3;
const IFLA_BOND_PRIMARY: u16 = 11;
const IFLA_BOND_XMIT_HASH_POLICY: u16 = 14;
const IFLA_BOND_MIN_LINKS: u16 = 18;
const IFLA_BOND_AD_LACP_RATE: u16 = 21;

const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_QDISC: u16 = 6;
const IFLA_OPERSTATE: u16 = 16;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_STATS64: u16 = 23;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_GROUP: u16 = 27;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_MACVLAN_MODE: u16 = 1;
const IFLA_INFO_SLAVE_KIND: u16 = 4;
const IFLA_INFO_SLAVE_DATA: u16 = 5;
const IFLA_BRPORT_ISOLATED: u16 = 33;
const VETH_INFO_PEER: u16 = 1;

const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;
const IFF_TAP: u8 = 2;

const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;
const IF_OPER_UP: u8 = 6;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;
const IFA_F_PERMANENT: u32 = 0x80;
const INFINITY_LIFE_TIME: u32 = u32::MAX;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;

const IFNAMSIZ: usize = 16;
const IFALIASZ: usize = 256;

/// Route protocols (`rtm_protocol`), for [`RouteInfo::protocol`].
pub const RTPROT_UNSPEC: u8 = 0;
pub const RTPROT_REDIRECT: u8 = 1;
pub const RTPROT_KERNEL: u8 = 2;
pub const RTPROT_BOOT: u8 = 3;
pub const RTPROT_STATIC: u8 = 4;
/// Route scopes (`rtm_scope`), for [`RouteInfo::scope`].
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RT_SCOPE_HOST: u8 = 254;
/// Route types (`rtm_type`), for [`RouteInfo::route_type`].
pub const RTN_UNICAST: u8 = 1;
pub const RTN_LOCAL: u8 = 2;
pub const RTN_BROADCAST: u8 = 3;
pub const RTN_BLACKHOLE: u8 = 6;
pub const RTN_UNREACHABLE: u8 = 7;
pub const RTN_PROHIBIT: u8 = 8;
/// Routing tables, for [`RouteInfo::table`].
pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;

/// Requests per window in [`Netlink::execute`], at most. Fewer when the receive buffer is
/// small: see [`RCVBUF_PER_REQUEST`].
const WINDOW: usize = 256;
/// Receive buffer one request of a window may need for its answers (an ack of ~0.5-1 KiB
/// truesize, plus for some SetLinks the reply to a sync RTM_GETLINK of ~2-3 KiB).
const RCVBUF_PER_REQUEST: usize = 4096;
/// Bytes per window (one `sendmsg`); kept under half the send buffer.
const WINDOW_BYTES: usize = 128 * 1024;
const SNDBUF: libc::c_int = 1 << 20;
const RCVBUF: libc::c_int = 4 << 20;
const RECV_BUF_LEN: usize = 256 * 1024;
const DUMP_RETRIES: usize = 5;

// ---- errors ----

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening or driving the socket itself failed.
    #[error("netlink socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request. `op` names the operation and the object; `ext` is the
    /// kernel's extended-ack message when it gave one.
    #[error("{op}: {source}{}", ext.as_ref().map(|m| format!(" (kernel: {m})")).unwrap_or_default())]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
        ext: Option<String>,
    },
    /// Refused before sending: the request cannot be encoded (name too long, ...).
    #[error("{op}: {reason}")]
    Invalid { op: String, reason: String },
    /// A step around the request failed (e.g. reaching the veth peer's namespace).
    #[error("{op}: {reason}")]
    Other { op: String, reason: String },
    /// The kernel's reply did not make sense.
    #[error("{op}: unexpected netlink reply: {reason}")]
    Protocol { op: String, reason: String },
    /// The ack was dropped (receive buffer overrun): the request may or may not have been
    /// applied. Read the state back to find out.
    #[error(
        "{op}: no acknowledgement from the kernel (netlink receive buffer overrun); the change may or may not have been applied"
    )]
    AckLost { op: String },
}

impl NetlinkError {
    /// The errno the kernel (or the socket) reported, if any: match on `libc::EEXIST`, ...
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Socket { source, .. } | NetlinkError::Kernel { source, .. } => {
                source.raw_os_error()
            }
            NetlinkError::AckLost { .. } => Some(libc::ENOBUFS),
            _ => None,
        }
    }
}

fn kernel_err(op: String, errno: i32, ext: Option<String>) -> NetlinkError {
    NetlinkError::Kernel {
        op,
        source: io::Error::from_raw_os_error(errno),
        ext,
    }
}

// ---- public data types ----

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// What the kernel reports for a tun/tap device (`IFLA_INFO_DATA` of kind "tun").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunInfo {
    pub tap: bool,
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub multi_queue: bool,
    pub persist: bool,
}

/// What the kernel reports for a VXLAN device (`IFLA_INFO_DATA` of kind "vxlan").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    /// IFLA_VXLAN_GROUP: the multicast group (or single remote).
    pub group: Option<Ipv4Addr>,
    /// IFLA_VXLAN_LINK: the underlay's index.
    pub link: Option<u32>,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
    /// Destination UDP port, host order.
    pub port: u16,
}

/// A bond's options: what the kernel reports in `IFLA_INFO_DATA` of kind "bond", and what a
/// request sets (`None`: leave as is). The kernel refuses options its mode does not have
/// (lacp_rate outside 802.3ad, primary in 802.3ad), so a request carries only those.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BondOptions {
    /// IFLA_BOND_MODE: 0 balance-rr .. 4 802.3ad .. 6 balance-alb.
    pub mode: Option<u8>,
    pub miimon: Option<u32>,
    /// 0 slow, 1 fast.
    pub lacp_rate: Option<u8>,
    /// 0 layer2, 1 layer3+4, 2 layer2+3, 3 encap2+3, 4 encap3+4.
    pub xmit_hash_policy: Option<u8>,
    pub min_links: Option<u32>,
    /// The primary member's index; Some(0) clears it.
    pub primary: Option<u32>,
}

impl BondOptions {
    fn encode(&self, b: &mut MsgBuf) {
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

    fn parse(data: &[u8]) -> BondOptions {
        let mut o = BondOptions::default();
        for (t, d) in attrs(data) {
            match t {
                IFLA_BOND_MODE => o.mode = attr_u8(d),
                IFLA_BOND_MIIMON => o.miimon = attr_u32(d),
                IFLA_BOND_AD_LACP_RATE => o.lacp_rate = attr_u8(d),
                IFLA_BOND_XMIT_HASH_POLICY => o.xmit_hash_policy = attr_u8(d),
                IFLA_BOND_MIN_LINKS => o.min_links = attr_u32(d),
                IFLA_BOND_PRIMARY => o.primary = attr_u32(d).filter(|&p| p != 0),
                _ => {}
            }
        }
        o
    }
}

/// One bridge-family FDB entry (`bridge fdb show`), IPv4 destination only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: Mac,
    /// NDA_DST: for a VXLAN device, the remote endpoint.
    pub dst: Option<Ipv4Addr>,
    pub flags: u8,
    pub state: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// For a bridge port: whether it is isolated (`IFLA_BRPORT_ISOLATED`).
    pub brport_isolated: Option<bool>,
    /// `IFLA_INFO_KIND`: "bridge", "veth", "tun", ...; None for devices without one (lo, most
    /// physical NICs).
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub master: Option<u32>,
    /// IFF_UP.
    pub admin_up: bool,
    /// IFF_LOWER_UP or operstate UP.
    pub oper_up: bool,
    pub alias: Option<String>,
    pub tun: Option<TunInfo>,
    pub vxlan: Option<VxlanInfo>,
    /// `IFLA_MACVLAN_MODE` of a macvlan or macvtap (whose lower device is `peer_index`).
    pub macvlan_mode: Option<u32>,
    /// `IFLA_VLAN_ID` of an 802.1Q device (kind "vlan"); its lower device is `peer_index`.
    pub vlan_id: Option<u16>,
    pub bond: Option<BondOptions>,
    /// `IFLA_LINK`: for a macvlan, macvtap or VLAN device, the lower device's index; for a
    /// veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: for a veth whose peer lives in another namespace, that namespace's
    /// id as seen from here.
    pub link_netnsid: Option<i32>,
    pub stats: LinkStats,
    /// `IFLA_QDISC`: the kind of the root qdisc ("noqueue", "htb", ...).
    pub qdisc: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    pub addr: Ipv4Cidr,
    pub broadcast: Option<Ipv4Addr>,
    pub permanent: bool,
    /// Seconds left; None if forever.
    pub valid_lft: Option<u32>,
    pub preferred_lft: Option<u32>,
}

/// An IPv4 route. For [`Request::NewRoute`], `table` 0 means main and `route_type` 0 means
/// unicast; `protocol` and `scope` are sent as given (`ip route add` uses [`RTPROT_BOOT`] and
/// [`RT_SCOPE_UNIVERSE`] for a route via a gateway, [`RT_SCOPE_LINK`] for a device route).
/// For [`Request::DelRoute`] the kernel treats `protocol` 0, `route_type` 0, `priority` None as
/// wildcards; a route read back with [`Netlink::routes`] deletes exactly that route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteInfo {
    pub table: u32,
    pub dst: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub scope: u8,
    pub route_type: u8,
    pub priority: Option<u32>,
    pub prefsrc: Option<Ipv4Addr>,
}

impl RouteInfo {
    /// A unicast route in the main table to `dst` via `gateway`, as `ip route add` makes it.
    pub fn via(dst: Ipv4Cidr, gateway: Ipv4Addr) -> RouteInfo {
        RouteInfo {
            table: RT_TABLE_MAIN,
            dst: dst.network(),
            gateway: Some(gateway),
            oif: None,
            protocol: RTPROT_BOOT,
            scope: RT_SCOPE_UNIVERSE,
            route_type: RTN_UNICAST,
            priority: None,
            prefsrc: None,
        }
    }
    /// A unicast link-scope route in the main table to `dst` out of device `oif`.
    pub fn dev(dst: Ipv4Cidr, oif: u32) -> RouteInfo {
        RouteInfo {
            table: RT_TABLE_MAIN,
            dst: dst.network(),
            gateway: None,
            oif: Some(oif),
            protocol: RTPROT_BOOT,
            scope: RT_SCOPE_LINK,
            route_type: RTN_UNICAST,
            priority: None,
            prefsrc: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewLinkKind {
    Bridge,
    /// The peer is created straight in `peer_netns_fd`'s namespace when given (so its name
    /// may clash with names here, e.g. "eth0"). `peer_mtu` None takes the link's `mtu`.
    Veth {
        peer_name: String,
        peer_mac: Option<Mac>,
        peer_mtu: Option<u32>,
        peer_alias: Option<String>,
        peer_netns_fd: Option<RawFd>,
    },
    /// `ip link add link LINK name NAME type vlan id ID` (802.1Q).
    Vlan {
        id: u16,
        link: u32,
    },
    /// `ip link add NAME type vxlan id VNI local LOCAL dev LINK dstport PORT [group GROUP]`.
    Vxlan {
        vni: u32,
        local: Option<Ipv4Addr>,
        link: Option<u32>,
        port: u16,
        group: Option<Ipv4Addr>,
        learning: bool,
    },
    /// `ip link add NAME link LOWER type macvtap mode MODE`: MODE an `IFLA_MACVLAN_MODE` value.
    Macvtap {
        lower: u32,
        mode: u32,
    },
    /// `ip link add NAME type bond mode MODE ...`.
    Bond(BondOptions),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Create a bridge or veth pair (NLM_F_CREATE|NLM_F_EXCL). `up` applies to `name` only: a
    /// veth peer starts down (bring it up with a SetLink where it lives; the kernel cannot
    /// create a peer up: ENOTCONN). `alias` and `peer_alias`, which RTM_NEWLINK ignores, are
    /// set by a follow-up RTM_SETLINK once the creation succeeded.
    NewLink {
        name: String,
        kind: NewLinkKind,
        mac: Option<Mac>,
        mtu: Option<u32>,
        alias: Option<String>,
        master: Option<u32>,
        up: bool,
    },
    /// Change a link. With `netns_fd` the link moves first and everything else (the new
    /// `name`, `master`, ...) applies in the target namespace.
    SetLink {
        index: u32,
        name: Option<String>,
        mac: Option<Mac>,
        mtu: Option<u32>,
        /// Some(0) releases it from its bridge.
        master: Option<u32>,
        up: Option<bool>,
        /// Some("") clears it.
        alias: Option<String>,
        netns_fd: Option<RawFd>,
    },
    DelLink {
        index: u32,
    },
    /// Change options of an existing bond (`ip link set BOND type bond ...`).
    SetBond {
        index: u32,
        options: BondOptions,
    },
    /// Bridge-port flags of a link enslaved to a bridge.
    SetBridgePort {
        index: u32,
        isolated: bool,
    },
    /// `broadcast: None` adds the address without a broadcast address.
    NewAddr {
        index: u32,
        addr: Ipv4Cidr,
        broadcast: Option<Ipv4Addr>,
    },
    DelAddr {
        index: u32,
        addr: Ipv4Cidr,
    },
    NewRoute(RouteInfo),
    DelRoute(RouteInfo),
    /// `bridge fdb append MAC dev LINK dst DST self permanent` (NLM_F_CREATE|NLM_F_APPEND:
    /// the all-zeros MAC may carry many destinations).
    NewFdb {
        index: u32,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// `bridge fdb del MAC dev LINK dst DST self`: that one destination.
    DelFdb {
        index: u32,
        mac: Mac,
        dst: Ipv4Addr,
    },
}

impl Request {
    /// A SetLink that changes nothing yet; fill in the fields you need.
    pub fn set_link(index: u32) -> Request {
        Request::SetLink {
            index,
            name: None,
            mac: None,
            mtu: None,
            master: None,
            up: None,
            alias: None,
            netns_fd: None,
        }
    }

    /// The link index this request acts on, if it names one.
    fn link_index(&self) -> Option<u32> {
        match self {
            Request::SetLink { index, .. }
            | Request::DelLink { index }
            | Request::SetBridgePort { index, .. }
            | Request::SetBond { index, .. }
            | Request::NewAddr { index, .. }
            | Request::DelAddr { index, .. }
            | Request::NewFdb { index, .. }
            | Request::DelFdb { index, .. } => Some(*index),
            Request::NewRoute(r) | Request::DelRoute(r) => r.oif,
            Request::NewLink { .. } => None,
        }
    }

    /// "operation object" for error messages; `name` is the link's name when known.
    fn describe(&self, name: Option<&str>) -> String {
        let link = |index: u32| match name {
            Some(n) => format!("{n} (index {index})"),
            None => format!("index {index}"),
        };
        match self {
            Request::NewLink { name, kind, .. } => match kind {
                NewLinkKind::Bridge => format!("create link {name}"),
                NewLinkKind::Veth { peer_name, .. } => {
                    format!("create link {name} (veth, peer {peer_name})")
                }
                NewLinkKind::Vxlan { vni, .. } => format!("create link {name} (vxlan id {vni})"),
                NewLinkKind::Macvtap { lower, .. } => {
                    format!("create link {name} (macvtap on index {lower})")
                }
                NewLinkKind::Vlan { id, .. } => format!("create link {name} (vlan id {id})"),
                NewLinkKind::Bond(o) => format!(
                    "create link {name} (bond mode {})",
                    o.mode.unwrap_or_default()
                ),
            },
            Request::SetLink {
                index,
                name: new_name,
                mac,
                mtu,
                master,
                up,
                alias,
                netns_fd,
            } => {
                let mut what = Vec::new();
                if netns_fd.is_some() {
                    what.push("move to another netns".to_string());
                }
                if let Some(n) = new_name {
                    what.push(format!("rename to {n}"));
                }
                if let Some(m) = mac {
                    what.push(format!("mac {m}"));
                }
                if let Some(m) = mtu {
                    what.push(format!("mtu {m}"));
                }
                match master {
                    Some(0) => what.push("nomaster".into()),
                    Some(m) => what.push(format!("master index {m}")),
                    None => {}
                }
                if let Some(u) = up {
                    what.push(if *u { "up" } else { "down" }.into());
                }
                if let Some(a) = alias {
                    what.push(format!("alias '{a}'"));
                }
                format!("set link {} [{}]", link(*index), what.join(", "))
            }
            Request::DelLink { index } => format!("delete link {}", link(*index)),
            Request::SetBond { index, options } => {
                format!("set bond {} [{options:?}]", link(*index))
            }
            Request::SetBridgePort { index, isolated } => {
                format!("set bridge port {} [isolated {isolated}]", link(*index))
            }
            Request::NewAddr { index, addr, .. } => {
                format!("add address {addr} to link {}", link(*index))
            }
            Request::DelAddr { index, addr } => {
                format!("delete address {addr} from link {}", link(*index))
            }
            Request::NewRoute(r) => format!("add route {}", describe_route(r, name)),
            Request::DelRoute(r) => format!("delete route {}", describe_route(r, name)),
            Request::NewFdb { index, mac, dst } => {
                format!("add fdb entry {mac} dst {dst} to link {}", link(*index))
            }
            Request::DelFdb { index, mac, dst } => {
                format!(
                    "delete fdb entry {mac} dst {dst} from link {}",
                    link(*index)
                )
            }
        }
    }
}

fn describe_route(r: &RouteInfo, oif_name: Option<&str>) -> String {
    let mut s = if r.dst.prefix == 0 {
        "default".to_string()
    } else {
        r.dst.to_string()
    };
    if let Some(g) = r.gateway {
        let _ = write!(s, " via {g}");
    }
    if let Some(o) = r.oif {
        match oif_name {
            Some(n) => {
                let _ = write!(s, " dev {n} (index {o})");
            }
            None => {
                let _ = write!(s, " dev index {o}");
            }
        }
    }
    let _ = write!(
        s,
        " table {}",
        if r.table == 0 { RT_TABLE_MAIN } else { r.table }
    );
    if let Some(p) = r.priority {
        let _ = write!(s, " metric {p}");
    }
    s
}

// ---- message building ----

struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    /// Start a message; returns its offset for [`MsgBuf::end`].
    fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> usize {
        self.align();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        start
    }
    fn end(&mut self, start: usize) {
        self.align();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
    fn ifinfomsg(&mut self, index: u32, flags: u32, change: u32) {
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }
    fn ifaddrmsg(&mut self, prefix: u8, index: u32) {
        self.buf
            .extend_from_slice(&[libc::AF_INET as u8, prefix, 0, RT_SCOPE_UNIVERSE]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
    }
    fn rtmsg(&mut self, dst_len: u8, table: u8, protocol: u8, scope: u8, ty: u8) {
        self.buf.extend_from_slice(&[
            libc::AF_INET as u8,
            dst_len,
            0,
            0,
            table,
            protocol,
            scope,
            ty,
        ]);
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
    }
    /// struct ndmsg: family, pad, pad, ifindex, state, flags, type.
    fn ndmsg(&mut self, family: u8, index: u32, state: u16, flags: u8) {
        self.buf.extend_from_slice(&[family, 0, 0, 0]);
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&state.to_ne_bytes());
        self.buf.extend_from_slice(&[flags, 0]);
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.align();
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
    }
    fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }
    /// NUL-terminated string.
    fn attr_str(&mut self, ty: u16, s: &str) {
        self.align();
        let len = (NLA_HDRLEN + s.len() + 1) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.align();
    }
    fn nest_begin(&mut self, ty: u16) -> usize {
        self.align();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }
    fn nest_end(&mut self, start: usize) {
        self.align();
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ':', '\0']) {
        return Err(format!(
            "'{name}' is not a valid interface name (1 to 15 bytes, no '/' or ':')"
        ));
    }
    Ok(())
}

fn check_alias(alias: &str) -> Result<(), String> {
    if alias.len() >= IFALIASZ || alias.contains('\0') {
        return Err(format!("alias '{alias}' is too long (at most 255 bytes)"));
    }
    Ok(())
}

/// A message awaiting its answer: which request it belongs to; `sync` marks an RTM_GETLINK
/// sent only for its side effect (its reply is the answer; its failure is not the request's).
#[derive(Clone, Copy)]
struct Pending {
    req: usize,
    sync: bool,
}

// ---- parsing ----

/// One netlink message of a received buffer (shared with the tc backend).
pub(crate) struct Msg<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// The sender's port: for a notification, the socket whose request caused it.
    pub(crate) pid: u32,
    pub(crate) payload: &'a [u8],
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

/// Split a datagram into messages. Stops at the first malformed header.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let m = Msg {
            ty: u16_at(buf, 4),
            flags: u16_at(buf, 6),
            seq: u32_at(buf, 8),
            pid: u32_at(buf, 12),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        let next = (len + 3) & !3;
        buf = if next >= buf.len() { &[] } else { &buf[next..] };
        Some(m)
    })
}

/// Iterate attributes: (type without flags, payload).
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16_at(buf, 0) as usize;
        if len < NLA_HDRLEN || len > buf.len() {
            return None;
        }
        let item = (u16_at(buf, 2) & NLA_TYPE_MASK, &buf[NLA_HDRLEN..len]);
        let next = (len + 3) & !3;
        buf = if next >= buf.len() { &[] } else { &buf[next..] };
        Some(item)
    })
}

pub(crate) fn attr_string(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}
pub(crate) fn attr_u32(p: &[u8]) -> Option<u32> {
    (p.len() >= 4).then(|| u32_at(p, 0))
}
fn attr_u8(p: &[u8]) -> Option<u8> {
    p.first().copied()
}
fn attr_ipv4(p: &[u8]) -> Option<Ipv4Addr> {
    (p.len() == 4).then(|| Ipv4Addr::new(p[0], p[1], p[2], p[3]))
}

/// An NLMSG_ERROR payload: (errno as a positive number or 0 for an ack, the original seq,
/// the extended-ack message).
pub(crate) fn parse_error(m: &Msg<'_>) -> Option<(i32, u32, Option<String>)> {
    let p = m.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let err = i32::from_ne_bytes(p[0..4].try_into().unwrap());
    let seq = u32_at(p, 4 + 8);
    let mut ext = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        let tlv_off = if m.flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            4 + ((u32_at(p, 4) as usize + 3) & !3)
        };
        if tlv_off <= p.len() {
            for (ty, v) in attrs(&p[tlv_off..]) {
                if ty == NLMSGERR_ATTR_MSG {
                    let s = attr_string(v);
                    if !s.is_empty() {
                        ext = Some(s);
                    }
                }
            }
        }
    }
    Some((-err, seq, ext))
}

fn parse_link(p: &[u8]) -> Option<LinkInfo> {
    if p.len() < 16 {
        return None;
    }
    let index = u32_at(p, 4);
    let flags = u32_at(p, 8);
    let mut li = LinkInfo {
        index,
        name: String::new(),
        brport_isolated: None,
        kind: None,
        mac: None,
        mtu: 0,
        master: None,
        admin_up: flags & IFF_UP != 0,
        oper_up: flags & IFF_LOWER_UP != 0,
        alias: None,
        tun: None,
        vxlan: None,
        macvlan_mode: None,
        vlan_id: None,
        bond: None,
        peer_index: None,
        link_netnsid: None,
        stats: LinkStats::default(),
        qdisc: None,
    };
    for (ty, v) in attrs(&p[16..]) {
        match ty {
            IFLA_IFNAME => li.name = attr_string(v),
            IFLA_ADDRESS if v.len() == 6 => {
                li.mac = Some(Mac(v.try_into().unwrap()));
            }
            IFLA_MTU => li.mtu = attr_u32(v).unwrap_or(0),
            IFLA_MASTER => li.master = attr_u32(v).filter(|&m| m != 0),
            IFLA_OPERSTATE if attr_u8(v) == Some(IF_OPER_UP) => li.oper_up = true,
            IFLA_IFALIAS => {
                let a = attr_string(v);
                li.alias = (!a.is_empty()).then_some(a);
            }
            IFLA_LINK => li.peer_index = attr_u32(v),
            IFLA_QDISC => li.qdisc = Some(attr_string(v)),
            IFLA_LINK_NETNSID => li.link_netnsid = attr_u32(v).map(|n| n as i32),
            IFLA_STATS64 if v.len() >= 64 => {
                // struct rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes,
                // rx_errors, tx_errors, rx_dropped, tx_dropped, ...
                li.stats = LinkStats {
                    rx_packets: u64_at(v, 0),
                    tx_packets: u64_at(v, 8),
                    rx_bytes: u64_at(v, 16),
                    tx_bytes: u64_at(v, 24),
                    rx_errors: u64_at(v, 32),
                    tx_errors: u64_at(v, 40),
                    rx_dropped: u64_at(v, 48),
                    tx_dropped: u64_at(v, 56),
                };
            }
            IFLA_LINKINFO => {
                let mut data = None;
                let mut slave_kind = None;
                let mut slave_data = None;
                for (t, d) in attrs(v) {
                    match t {
                        IFLA_INFO_KIND => li.kind = Some(attr_string(d)),
                        IFLA_INFO_DATA => data = Some(d),
                        IFLA_INFO_SLAVE_KIND => slave_kind = Some(attr_string(d)),
                        IFLA_INFO_SLAVE_DATA => slave_data = Some(d),
                        _ => {}
                    }
                }
                if slave_kind.as_deref() == Some("bridge") {
                    li.brport_isolated = Some(
                        attrs(slave_data.unwrap_or(&[]))
                            .find(|(t, _)| *t == IFLA_BRPORT_ISOLATED)
                            .and_then(|(_, d)| attr_u8(d))
                            .unwrap_or(0)
                            != 0,
                    );
                }
                if li.kind.as_deref() == Some("tun") {
                    let mut tun = TunInfo::default();
                    for (t, d) in attrs(data.unwrap_or(&[])) {
                        match t {
                            IFLA_TUN_OWNER => tun.owner = attr_u32(d),
                            IFLA_TUN_GROUP => tun.group = attr_u32(d),
                            IFLA_TUN_TYPE => tun.tap = attr_u8(d) == Some(IFF_TAP),
                            IFLA_TUN_PERSIST => tun.persist = attr_u8(d).unwrap_or(0) != 0,
                            IFLA_TUN_MULTI_QUEUE => tun.multi_queue = attr_u8(d).unwrap_or(0) != 0,
                            _ => {}
                        }
                    }
                    li.tun = Some(tun);
                }
                if matches!(li.kind.as_deref(), Some("macvtap" | "macvlan")) {
                    li.macvlan_mode = attrs(data.unwrap_or(&[]))
                        .find(|(t, _)| *t == IFLA_MACVLAN_MODE)
                        .and_then(|(_, d)| attr_u32(d));
                }
                if li.kind.as_deref() == Some("vlan") {
                    li.vlan_id = attrs(data.unwrap_or(&[]))
                        .find(|(t, _)| *t == IFLA_VLAN_ID)
                        .and_then(|(_, d)| {
                            (d.len() >= 2).then(|| u16::from_ne_bytes([d[0], d[1]]))
                        });
                }
                if li.kind.as_deref() == Some("bond") {
                    li.bond = Some(BondOptions::parse(data.unwrap_or(&[])));
                }
                if li.kind.as_deref() == Some("vxlan") {
                    let mut vx = VxlanInfo::default();
                    for (t, d) in attrs(data.unwrap_or(&[])) {
                        match t {
                            IFLA_VXLAN_ID => vx.vni = attr_u32(d).unwrap_or(0),
                            IFLA_VXLAN_GROUP => vx.group = attr_ipv4(d),
                            IFLA_VXLAN_LINK => vx.link = attr_u32(d).filter(|&l| l != 0),
                            IFLA_VXLAN_LOCAL => vx.local = attr_ipv4(d),
                            IFLA_VXLAN_LEARNING => vx.learning = attr_u8(d).unwrap_or(0) != 0,
                            IFLA_VXLAN_PORT if d.len() >= 2 => {
                                vx.port = u16::from_be_bytes([d[0], d[1]]);
                            }
                            _ => {}
                        }
                    }
                    li.vxlan = Some(vx);
                }
            }
            _ => {}
        }
    }
    Some(li)
}

fn parse_fdb(p: &[u8]) -> Option<FdbEntry> {
    if p.len() < 12 || p[0] != AF_BRIDGE {
        return None;
    }
    let mut e = FdbEntry {
        index: u32_at(p, 4),
        mac: Mac::default(),
        dst: None,
        flags: p[10],
        state: u16_at(p, 8),
    };
    for (ty, v) in attrs(&p[12..]) {
        match ty {
            NDA_LLADDR if v.len() == 6 => e.mac = Mac(v.try_into().unwrap()),
            NDA_DST => e.dst = attr_ipv4(v),
            _ => {}
        }
    }
    Some(e)
}

fn parse_addr(p: &[u8]) -> Option<AddrInfo> {
    if p.len() < 8 || p[0] != libc::AF_INET as u8 {
        return None;
    }
    let prefix = p[1];
    let mut flags = u32::from(p[2]);
    let index = u32_at(p, 4);
    let (mut local, mut address, mut broadcast) = (None, None, None);
    let (mut valid, mut preferred) = (None, None);
    for (ty, v) in attrs(&p[8..]) {
        match ty {
            IFA_LOCAL => local = attr_ipv4(v),
            IFA_BROADCAST => broadcast = attr_ipv4(v),
            IFA_ADDRESS => address = attr_ipv4(v),
            IFA_FLAGS => flags = attr_u32(v).unwrap_or(flags),
            IFA_CACHEINFO if v.len() >= 8 => {
                // struct ifa_cacheinfo: ifa_prefered, ifa_valid, cstamp, tstamp
                let pref = u32_at(v, 0);
                let val = u32_at(v, 4);
                preferred = (pref != INFINITY_LIFE_TIME).then_some(pref);
                valid = (val != INFINITY_LIFE_TIME).then_some(val);
            }
            _ => {}
        }
    }
    let addr = local.or(address)?;
    Some(AddrInfo {
        index,
        addr: Ipv4Cidr::new(addr, prefix),
        broadcast,
        permanent: flags & IFA_F_PERMANENT != 0,
        valid_lft: valid,
        preferred_lft: preferred,
    })
}

fn parse_route(p: &[u8]) -> Option<RouteInfo> {
    if p.len() < 12 || p[0] != libc::AF_INET as u8 {
        return None;
    }
    let mut r = RouteInfo {
        table: u32::from(p[4]),
        dst: Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, p[1]),
        gateway: None,
        oif: None,
        protocol: p[5],
        scope: p[6],
        route_type: p[7],
        priority: None,
        prefsrc: None,
    };
    for (ty, v) in attrs(&p[12..]) {
        match ty {
            RTA_DST => {
                if let Some(a) = attr_ipv4(v) {
                    r.dst.addr = a;
                }
            }
            RTA_GATEWAY => r.gateway = attr_ipv4(v),
            RTA_OIF => r.oif = attr_u32(v),
            RTA_PRIORITY => r.priority = attr_u32(v),
            RTA_PREFSRC => r.prefsrc = attr_ipv4(v),
            RTA_TABLE => r.table = attr_u32(v).unwrap_or(r.table),
            _ => {}
        }
    }
    Some(r)
}

// ---- the client ----

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
    sbuf: MsgBuf,
    rbuf: Vec<u8>,
    /// Bytes we may put in one sendmsg.
    max_send: usize,
    /// Requests per window.
    window: usize,
}

/// A bound netlink socket of `protocol` (`flags` added to its type, e.g. SOCK_NONBLOCK)
/// listening to the multicast `groups`, with a receive buffer of `rcvbuf` bytes (forced past
/// the system limit where the caller may).
pub(crate) fn open_socket(
    protocol: libc::c_int,
    flags: libc::c_int,
    rcvbuf: libc::c_int,
    groups: u32,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is wrapped right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if sockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        rcvbuf,
    )
    .is_err()
    {
        let _ = sockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf);
    }
    // SAFETY: zeroed sockaddr_nl is valid; the groups say what to hear.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: sa is a valid sockaddr_nl.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub(crate) fn sockopt(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: val is a valid c_int for the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val and len are valid for writing.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(val)
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; zeroed is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa
}

impl Netlink {
    /// Open a socket bound in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let sock = |op, source| NetlinkError::Socket { op, source };
        // SAFETY: plain syscall; the fd is wrapped right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(sock("socket(NETLINK_ROUTE)", io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        // Big buffers so a window of acks or a dump never overruns. The FORCE variants need
        // CAP_NET_ADMIN; without it we get what net.core.[rw]mem_max allow.
        if sockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF).is_err() {
            let _ = sockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
        }
        if sockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = sockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        // Acks without a copy of the request; the kernel's error text when it has one.
        let _ = sockopt(raw, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = sockopt(raw, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let sa = kernel_addr();
        // SAFETY: sa is a valid sockaddr_nl.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(sock("bind", io::Error::last_os_error()));
        }
        let sndbuf = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(200_000);
        let max_send = (sndbuf.max(65536) as usize / 2).min(WINDOW_BYTES);
        let rcvbuf = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(200_000);
        let window = (rcvbuf.max(0) as usize / RCVBUF_PER_REQUEST).clamp(8, WINDOW);
        Ok(Netlink {
            fd,
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            sbuf: MsgBuf {
                buf: Vec::with_capacity(WINDOW_BYTES),
            },
            rbuf: vec![0; RECV_BUF_LEN],
            max_send,
            window,
        })
    }

    /// Open a socket bound in the namespace `netns_fd` refers to (the calling thread switches
    /// there for the `socket` call and back).
    pub fn open_in(netns_fd: RawFd) -> Result<Netlink, NetlinkError> {
        let sock = |op, source| NetlinkError::Socket { op, source };
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| sock("open the current network namespace", e))?;
        // SAFETY: plain syscalls on descriptors we hold.
        if unsafe { libc::setns(netns_fd, libc::CLONE_NEWNET) } != 0 {
            return Err(sock("enter network namespace", io::Error::last_os_error()));
        }
        let res = Netlink::open();
        // SAFETY: as above.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "fatal: cannot switch back to the original network namespace: {}",
                io::Error::last_os_error()
            );
            std::process::abort();
        }
        res
    }

    /// Requests per `sendmsg` in [`Netlink::execute`] (default 256, less with a small
    /// receive buffer; 1 means one round trip per request).
    pub fn set_window(&mut self, n: usize) {
        self.window = n.max(1);
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Send the whole of `sbuf` as one datagram.
    fn send_buf(&mut self) -> io::Result<()> {
        send_to_kernel(self.fd.as_raw_fd(), &self.sbuf.buf)
    }

    /// Receive one datagram into `rbuf`; returns its length.
    fn recv(&mut self, nonblock: bool) -> io::Result<usize> {
        let flags = libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: rbuf is valid for writing rbuf.len() bytes.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rbuf.as_mut_ptr().cast(),
                    self.rbuf.len(),
                    flags,
                )
            };
            if r >= 0 {
                let n = r as usize;
                if n > self.rbuf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink message of {n} bytes truncated"),
                    ));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Run a dump request; `f` gets the payload of each reply message.
    fn dump(
        &mut self,
        op: &str,
        ty: u16,
        header: &[u8],
        mut f: impl FnMut(&[u8]),
    ) -> Result<(), NetlinkError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let seq = self.next_seq();
            self.sbuf.buf.clear();
            let start = self.sbuf.begin(ty, NLM_F_REQUEST | NLM_F_DUMP, seq);
            self.sbuf.buf.extend_from_slice(header);
            self.sbuf.end(start);
            self.send_buf().map_err(|e| NetlinkError::Socket {
                op: "send dump request",
                source: e,
            })?;
            let mut interrupted = false;
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            'recv: loop {
                let n = self.recv(false).map_err(|e| NetlinkError::Socket {
                    op: "receive dump",
                    source: e,
                })?;
                for m in messages(&self.rbuf[..n]) {
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.ty {
                        NLMSG_DONE => {
                            let err = m
                                .payload
                                .get(0..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                                .unwrap_or(0);
                            if err < 0 {
                                return Err(kernel_err(op.to_string(), -err, None));
                            }
                            break 'recv;
                        }
                        NLMSG_ERROR => {
                            let (errno, _, ext) =
                                parse_error(&m).ok_or_else(|| NetlinkError::Protocol {
                                    op: op.to_string(),
                                    reason: "short error message".into(),
                                })?;
                            if errno != 0 {
                                return Err(kernel_err(op.to_string(), errno, ext));
                            }
                        }
                        NLMSG_NOOP | NLMSG_OVERRUN => {}
                        _ => {
                            if interrupted {
                                continue;
                            }
                            payloads.push(m.payload.to_vec());
                        }
                    }
                }
            }
            if interrupted && attempt < DUMP_RETRIES {
                continue;
            }
            if interrupted {
                return Err(NetlinkError::Protocol {
                    op: op.to_string(),
                    reason: format!(
                        "dump kept being interrupted by concurrent changes ({DUMP_RETRIES} tries)"
                    ),
                });
            }
            for p in &payloads {
                f(p);
            }
            return Ok(());
        }
    }

    /// All links (RTM_GETLINK dump).
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut hdr = MsgBuf { buf: Vec::new() };
        hdr.ifinfomsg(0, 0, 0);
        let mut out = Vec::new();
        self.dump("list links", RTM_GETLINK, &hdr.buf, |p| {
            if let Some(l) = parse_link(p) {
                out.push(l);
            }
        })?;
        Ok(out)
    }

    /// [`Netlink::links`] without traffic counters: much less for the kernel to fill in when
    /// only names, indexes and marks matter.
    pub fn links_without_stats(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut hdr = MsgBuf { buf: Vec::new() };
        hdr.ifinfomsg(0, 0, 0);
        hdr.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let mut out = Vec::new();
        self.dump("list links", RTM_GETLINK, &hdr.buf, |p| {
            if let Some(l) = parse_link(p) {
                out.push(l);
            }
        })?;
        Ok(out)
    }

    /// One RTM_GETLINK by name or index; Ok(None) if there is no such link.
    fn get_link(
        &mut self,
        op: &str,
        index: u32,
        name: Option<&str>,
    ) -> Result<Option<LinkInfo>, NetlinkError> {
        let seq = self.next_seq();
        self.sbuf.buf.clear();
        let start = self.sbuf.begin(RTM_GETLINK, NLM_F_REQUEST, seq);
        self.sbuf.ifinfomsg(index, 0, 0);
        if let Some(n) = name {
            self.sbuf.attr_str(IFLA_IFNAME, n);
        }
        self.sbuf.end(start);
        self.send_buf().map_err(|e| NetlinkError::Socket {
            op: "send link request",
            source: e,
        })?;
        loop {
            let n = self.recv(false).map_err(|e| NetlinkError::Socket {
                op: "receive link reply",
                source: e,
            })?;
            for m in messages(&self.rbuf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let (errno, _, ext) =
                            parse_error(&m).ok_or_else(|| NetlinkError::Protocol {
                                op: op.to_string(),
                                reason: "short error message".into(),
                            })?;
                        return match errno {
                            libc::ENODEV => Ok(None),
                            0 => Err(NetlinkError::Protocol {
                                op: op.to_string(),
                                reason: "ack without a link".into(),
                            }),
                            e => Err(kernel_err(op.to_string(), e, ext)),
                        };
                    }
                    RTM_NEWLINK => {
                        return parse_link(m.payload).map(Some).ok_or_else(|| {
                            NetlinkError::Protocol {
                                op: op.to_string(),
                                reason: "short link message".into(),
                            }
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        if check_ifname(name).is_err() {
            return Ok(None);
        }
        self.get_link(&format!("look up link {name}"), 0, Some(name))
    }

    /// The link with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        if index == 0 || index > i32::MAX as u32 {
            return Ok(None);
        }
        self.get_link(&format!("look up link index {index}"), index, None)
    }

    /// All IPv4 addresses.
    pub fn addrs(&mut self) -> Result<Vec<AddrInfo>, NetlinkError> {
        let mut hdr = MsgBuf { buf: Vec::new() };
        hdr.ifaddrmsg(0, 0);
        let mut out = Vec::new();
        self.dump("list IPv4 addresses", RTM_GETADDR, &hdr.buf, |p| {
            if let Some(a) = parse_addr(p) {
                out.push(a);
            }
        })?;
        Ok(out)
    }

    /// All IPv4 routes of all tables (local and broadcast routes of table 255 included).
    pub fn routes(&mut self) -> Result<Vec<RouteInfo>, NetlinkError> {
        let mut hdr = MsgBuf { buf: Vec::new() };
        hdr.rtmsg(0, 0, 0, 0, 0);
        let mut out = Vec::new();
        self.dump("list IPv4 routes", RTM_GETROUTE, &hdr.buf, |p| {
            if let Some(r) = parse_route(p) {
                out.push(r);
            }
        })?;
        Ok(out)
    }

    /// All bridge-family FDB entries with an IPv4 destination or none (`bridge fdb show`).
    pub fn fdb(&mut self) -> Result<Vec<FdbEntry>, NetlinkError> {
        let mut hdr = MsgBuf { buf: Vec::new() };
        hdr.ndmsg(AF_BRIDGE, 0, 0, 0);
        let mut out = Vec::new();
        self.dump("list fdb entries", RTM_GETNEIGH, &hdr.buf, |p| {
            if let Some(e) = parse_fdb(p) {
                out.push(e);
            }
        })?;
        Ok(out)
    }

    /// Append the message for `req` to `sbuf`, recording its sequence number; aliases of
    /// created links go to `deferred`.
    fn encode(
        &mut self,
        req: &Request,
        idx: usize,
        pending: &mut HashMap<u32, Pending>,
        deferred: &mut Vec<Deferred>,
    ) -> Result<(), String> {
        let ack = NLM_F_REQUEST | NLM_F_ACK;
        let create = ack | NLM_F_CREATE | NLM_F_EXCL;
        // Validate first so a refused request leaves nothing half-written.
        match req {
            Request::NewLink {
                name, kind, alias, ..
            } => {
                check_ifname(name)?;
                if let Some(a) = alias {
                    check_alias(a)?;
                }
                if let NewLinkKind::Veth {
                    peer_name,
                    peer_alias,
                    ..
                } = kind
                {
                    check_ifname(peer_name)?;
                    if let Some(a) = peer_alias {
                        check_alias(a)?;
                    }
                }
            }
            Request::SetLink { name, alias, .. } => {
                if let Some(n) = name {
                    check_ifname(n)?;
                }
                if let Some(a) = alias {
                    check_alias(a)?;
                }
            }
            Request::NewAddr { addr, .. } | Request::DelAddr { addr, .. } => {
                if addr.prefix > 32 {
                    return Err(format!("prefix length {} is over 32", addr.prefix));
                }
            }
            Request::NewRoute(r) | Request::DelRoute(r) => {
                if r.dst.prefix > 32 {
                    return Err(format!("prefix length {} is over 32", r.dst.prefix));
                }
            }
            Request::DelLink { .. }
            | Request::SetBridgePort { .. }
            | Request::SetBond { .. }
            | Request::NewFdb { .. }
            | Request::DelFdb { .. } => {}
        }
        if let Some(i) = req.link_index()
            && i > i32::MAX as u32
        {
            return Err(format!("link index {i} is out of range"));
        }
        let mut seq = self.next_seq();
        pending.insert(
            seq,
            Pending {
                req: idx,
                sync: false,
            },
        );
        let b = &mut self.sbuf;
        match req {
            Request::NewLink {
                name,
                kind,
                mac,
                mtu,
                alias,
                master,
                up,
            } => {
                let flags = if *up { IFF_UP } else { 0 };
                let start = b.begin(RTM_NEWLINK, create, seq);
                b.ifinfomsg(0, flags, IFF_UP);
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
                if let NewLinkKind::Macvtap { lower, .. } = kind {
                    b.attr_u32(IFLA_LINK, *lower);
                }
                if let NewLinkKind::Vlan { link, .. } = kind {
                    b.attr_u32(IFLA_LINK, *link);
                }
                let li = b.nest_begin(IFLA_LINKINFO);
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
                        // Never up here: the kernel opens the peer before the pair is
                        // linked, which fails with ENOTCONN.
                        b.ifinfomsg(0, 0, 0);
                        b.attr_str(IFLA_IFNAME, peer_name);
                        if let Some(m) = peer_mac {
                            b.attr(IFLA_ADDRESS, &m.0);
                        }
                        if let Some(m) = peer_mtu.or(*mtu) {
                            b.attr_u32(IFLA_MTU, m);
                        }
                        if let Some(fd) = peer_netns_fd {
                            b.attr_u32(IFLA_NET_NS_FD, *fd as u32);
                        }
                        b.nest_end(peer);
                        b.nest_end(data);
                        if let Some(a) = peer_alias {
                            deferred.push(Deferred {
                                req: idx,
                                netns_fd: *peer_netns_fd,
                                name: peer_name.clone(),
                                alias: a.clone(),
                            });
                        }
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
            Request::SetLink {
                index,
                name,
                mac,
                mtu,
                master,
                up,
                alias,
                netns_fd,
            } => {
                if master.is_some_and(|m| m != 0) || *up == Some(true) {
                    // A carrier change the kernel has not yet folded into the operstate (a
                    // freshly made tap lost its carrier when its creator closed it; linkwatch
                    // catches up within a second) would make the bridge enable the port, arm
                    // its STP/multicast timers and disable it again a moment later, which
                    // makes attaching ~2x slower. An RTM_GETLINK of the link syncs linkwatch
                    // first (`ip link set` gets this for free from its name lookup).
                    let sync_seq = seq;
                    pending.get_mut(&sync_seq).expect("just inserted").sync = true;
                    let start = b.begin(RTM_GETLINK, NLM_F_REQUEST, sync_seq);
                    b.ifinfomsg(*index, 0, 0);
                    b.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
                    b.end(start);
                    seq = self.next_seq();
                    pending.insert(
                        seq,
                        Pending {
                            req: idx,
                            sync: false,
                        },
                    );
                }
                let b = &mut self.sbuf;
                let start = b.begin(RTM_SETLINK, ack, seq);
                match up {
                    Some(true) => b.ifinfomsg(*index, IFF_UP, IFF_UP),
                    Some(false) => b.ifinfomsg(*index, 0, IFF_UP),
                    None => b.ifinfomsg(*index, 0, 0),
                }
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
            Request::DelLink { index } => {
                let start = b.begin(RTM_DELLINK, ack, seq);
                b.ifinfomsg(*index, 0, 0);
                b.end(start);
            }
            Request::SetBond { index, options } => {
                let start = b.begin(RTM_NEWLINK, ack, seq);
                b.ifinfomsg(*index, 0, 0);
                let li = b.nest_begin(IFLA_LINKINFO);
                options.encode(b);
                b.nest_end(li);
                b.end(start);
            }
            Request::SetBridgePort { index, isolated } => {
                // Like `ip link set dev X type bridge_slave isolated on`.
                let start = b.begin(RTM_NEWLINK, ack, seq);
                b.ifinfomsg(*index, 0, 0);
                let li = b.nest_begin(IFLA_LINKINFO);
                b.attr_str(IFLA_INFO_SLAVE_KIND, "bridge");
                let data = b.nest_begin(IFLA_INFO_SLAVE_DATA);
                b.attr(IFLA_BRPORT_ISOLATED, &[u8::from(*isolated)]);
                b.nest_end(data);
                b.nest_end(li);
                b.end(start);
            }
            Request::NewAddr { index, addr, .. } | Request::DelAddr { index, addr } => {
                let (ty, flags) = match req {
                    Request::NewAddr { .. } => (RTM_NEWADDR, create),
                    _ => (RTM_DELADDR, ack),
                };
                let start = b.begin(ty, flags, seq);
                b.ifaddrmsg(addr.prefix, *index);
                b.attr(IFA_LOCAL, &addr.addr.octets());
                b.attr(IFA_ADDRESS, &addr.addr.octets());
                if let Request::NewAddr {
                    broadcast: Some(brd),
                    ..
                } = req
                {
                    b.attr(IFA_BROADCAST, &brd.octets());
                }
                b.end(start);
            }
            Request::NewFdb { index, mac, dst } | Request::DelFdb { index, mac, dst } => {
                let (ty, flags, state) = match req {
                    Request::NewFdb { .. } => (
                        RTM_NEWNEIGH,
                        ack | NLM_F_CREATE | NLM_F_APPEND,
                        NUD_NOARP | NUD_PERMANENT,
                    ),
                    _ => (RTM_DELNEIGH, ack, 0),
                };
                let start = b.begin(ty, flags, seq);
                b.ndmsg(AF_BRIDGE, *index, state, NTF_SELF);
                b.attr(NDA_LLADDR, &mac.0);
                b.attr(NDA_DST, &dst.octets());
                b.end(start);
            }
            Request::NewRoute(r) | Request::DelRoute(r) => {
                let new = matches!(req, Request::NewRoute(_));
                let (ty, flags) = if new {
                    (RTM_NEWROUTE, create)
                } else {
                    (RTM_DELROUTE, ack)
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
                b.rtmsg(r.dst.prefix, t8, r.protocol, r.scope, rtype);
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
        }
        Ok(())
    }

    /// Apply many requests, pipelined: each window of requests goes out in one `sendmsg`
    /// (each message with NLM_F_ACK), then its acks are collected. The kernel applies them in
    /// order and carries on past a failure. Returns one result per request, in order.
    pub fn execute(&mut self, reqs: &[Request]) -> Vec<Result<(), NetlinkError>> {
        let mut failures: Vec<Option<Failure>> = (0..reqs.len()).map(|_| None).collect();
        let mut i = 0;
        while i < reqs.len() {
            self.sbuf.buf.clear();
            let mut pending: HashMap<u32, Pending> = HashMap::new();
            let mut deferred = Vec::new();
            let mut count = 0;
            while i < reqs.len() && count < self.window && self.sbuf.buf.len() < self.max_send {
                let mark = self.sbuf.buf.len();
                let dmark = deferred.len();
                if let Err(reason) = self.encode(&reqs[i], i, &mut pending, &mut deferred) {
                    self.sbuf.buf.truncate(mark);
                    deferred.truncate(dmark);
                    pending.retain(|_, p| p.req != i);
                    failures[i] = Some(Failure::Invalid(reason));
                }
                count += 1;
                i += 1;
            }
            self.send_window(&mut pending, &mut failures);
            self.set_new_aliases(deferred, &mut failures);
        }
        self.render(reqs, failures)
    }

    /// Turn per-request failures into results whose messages name the objects.
    fn render(
        &mut self,
        reqs: &[Request],
        failures: Vec<Option<Failure>>,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut names: HashMap<u32, Option<String>> = HashMap::new();
        let failed = failures.iter().filter(|f| f.is_some()).count();
        if failed > 16 {
            // One dump beats many lookups.
            if let Ok(links) = self.links() {
                names = links.into_iter().map(|l| (l.index, Some(l.name))).collect();
                for r in reqs {
                    if let Some(ix) = r.link_index() {
                        names.entry(ix).or_insert(None);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(reqs.len());
        for (req, f) in reqs.iter().zip(failures) {
            let Some(f) = f else {
                out.push(Ok(()));
                continue;
            };
            // Name the link in the message when it still exists.
            let name = match req.link_index() {
                Some(ix) => names
                    .entry(ix)
                    .or_insert_with(|| self.link_by_index(ix).ok().flatten().map(|l| l.name))
                    .clone(),
                None => None,
            };
            let op = req.describe(name.as_deref());
            out.push(Err(match f {
                Failure::Kernel(errno, ext, None) => kernel_err(op, errno, ext),
                Failure::Kernel(errno, ext, Some(context)) => {
                    kernel_err(format!("{op}: {context}"), errno, ext)
                }
                Failure::Send(errno) => NetlinkError::Kernel {
                    op: format!("{op}: send"),
                    source: io::Error::from_raw_os_error(errno),
                    ext: None,
                },
                Failure::Lost => NetlinkError::AckLost { op },
                Failure::Invalid(reason) => NetlinkError::Invalid { op, reason },
                Failure::Other(reason) => NetlinkError::Other { op, reason },
            }));
        }
        out
    }

    /// Delete many links at once. One RTM_DELLINK per link costs the kernel an RCU barrier
    /// each (~30 ms: 1,000 taps take half a minute); instead this tags the links with a
    /// scratch link group (pipelined) and deletes that group with one RTM_DELLINK, which
    /// unregisters them together. If the kernel refuses the group delete, falls back to one
    /// DelLink per link. One result per index, in order; messages as for DelLink.
    pub fn delete_links(&mut self, indexes: &[u32]) -> Vec<Result<(), NetlinkError>> {
        let dels: Vec<Request> = indexes
            .iter()
            .map(|&index| Request::DelLink { index })
            .collect();
        if indexes.len() < 4 {
            return self.execute(&dels);
        }
        let mut groups: HashMap<u32, u32> = HashMap::new();
        let mut hdr = MsgBuf { buf: Vec::new() };
        hdr.ifinfomsg(0, 0, 0);
        let dumped = self.dump("list links", RTM_GETLINK, &hdr.buf, |p| {
            if p.len() >= 16 {
                let index = u32_at(p, 4);
                let group = attrs(&p[16..])
                    .find(|(t, _)| *t == IFLA_GROUP)
                    .and_then(|(_, v)| attr_u32(v))
                    .unwrap_or(0);
                groups.insert(index, group);
            }
        });
        if dumped.is_err() {
            return self.execute(&dels);
        }
        let used: std::collections::HashSet<u32> = groups.values().copied().collect();
        let mut group = 0x6b76_0000 | (std::process::id() & 0xffff);
        while group == 0 || used.contains(&group) {
            group = group.wrapping_add(1);
        }
        // Tag.
        let mut failures: Vec<Option<Failure>> = (0..indexes.len()).map(|_| None).collect();
        let mut i = 0;
        while i < indexes.len() {
            self.sbuf.buf.clear();
            let mut pending = HashMap::new();
            let mut count = 0;
            while i < indexes.len() && count < self.window && self.sbuf.buf.len() < self.max_send {
                let index = indexes[i];
                if index == 0 || index > i32::MAX as u32 {
                    failures[i] = Some(Failure::Invalid(format!(
                        "link index {index} is out of range"
                    )));
                } else {
                    let seq = self.next_seq();
                    pending.insert(
                        seq,
                        Pending {
                            req: i,
                            sync: false,
                        },
                    );
                    let start = self.sbuf.begin(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
                    self.sbuf.ifinfomsg(index, 0, 0);
                    self.sbuf.attr_u32(IFLA_GROUP, group);
                    self.sbuf.end(start);
                }
                count += 1;
                i += 1;
            }
            self.send_window(&mut pending, &mut failures);
        }
        // Delete the group.
        let mut group_failure = vec![None];
        self.sbuf.buf.clear();
        let seq = self.next_seq();
        let start = self.sbuf.begin(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
        self.sbuf.ifinfomsg(0, 0, 0);
        self.sbuf.attr_u32(IFLA_GROUP, group);
        self.sbuf.end(start);
        let mut pending = HashMap::from([(
            seq,
            Pending {
                req: 0,
                sync: false,
            },
        )]);
        self.send_window(&mut pending, &mut group_failure);
        let mut out = self.render(&dels, failures);
        if group_failure[0].is_some() {
            // One by one; put back the group of any link that still exists afterwards.
            let tagged: Vec<usize> = (0..indexes.len()).filter(|&i| out[i].is_ok()).collect();
            let reqs: Vec<Request> = tagged.iter().map(|&i| dels[i].clone()).collect();
            let res = self.execute(&reqs);
            self.sbuf.buf.clear();
            let mut pending = HashMap::new();
            for (&i, r) in tagged.iter().zip(res) {
                if r.is_err() {
                    let seq = self.next_seq();
                    pending.insert(
                        seq,
                        Pending {
                            req: i,
                            sync: false,
                        },
                    );
                    let start = self.sbuf.begin(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
                    self.sbuf.ifinfomsg(indexes[i], 0, 0);
                    let old = groups.get(&indexes[i]).copied().unwrap_or(0);
                    self.sbuf.attr_u32(IFLA_GROUP, old);
                    self.sbuf.end(start);
                }
                out[i] = r;
            }
            let mut ignore: Vec<Option<Failure>> = (0..indexes.len()).map(|_| None).collect();
            self.send_window(&mut pending, &mut ignore);
        }
        out
    }

    /// Send `sbuf` (the messages in `pending`) and collect the acks.
    fn send_window(
        &mut self,
        pending: &mut HashMap<u32, Pending>,
        failures: &mut [Option<Failure>],
    ) {
        if pending.is_empty() {
            return;
        }
        if let Err(e) = self.send_buf() {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            for p in pending.values() {
                failures[p.req].get_or_insert(Failure::Send(errno));
            }
            pending.clear();
            return;
        }
        self.collect_acks(pending, failures);
    }

    /// Set the aliases of links created successfully in the last window: by name, through this socket or, for a veth peer created in another namespace, through one
    /// opened there (one per namespace).
    fn set_new_aliases(&mut self, deferred: Vec<Deferred>, failures: &mut [Option<Failure>]) {
        let mut by_ns: Vec<(Option<RawFd>, Vec<Deferred>)> = Vec::new();
        for d in deferred.into_iter().filter(|d| failures[d.req].is_none()) {
            match by_ns.iter_mut().find(|(fd, _)| *fd == d.netns_fd) {
                Some((_, v)) => v.push(d),
                None => by_ns.push((d.netns_fd, vec![d])),
            }
        }
        for (fd, items) in by_ns {
            let mut other;
            let nl = match fd {
                None => &mut *self,
                Some(fd) => match Netlink::open_in(fd) {
                    Ok(n) => {
                        other = n;
                        &mut other
                    }
                    Err(e) => {
                        for d in items {
                            failures[d.req] = Some(Failure::Other(format!(
                                "created, but cannot reach the namespace of veth peer {} to \
                                 set its alias: {e}",
                                d.name
                            )));
                        }
                        continue;
                    }
                },
            };
            nl.sbuf.buf.clear();
            let mut pending = HashMap::new();
            for d in &items {
                let seq = nl.next_seq();
                pending.insert(
                    seq,
                    Pending {
                        req: d.req,
                        sync: false,
                    },
                );
                set_by_name(&mut nl.sbuf, seq, d);
            }
            let mut scratch: Vec<Option<Failure>> = (0..failures.len()).map(|_| None).collect();
            nl.send_window(&mut pending, &mut scratch);
            for d in &items {
                if let Some(f) = scratch[d.req].take() {
                    let context = format!(
                        "created, but could not set the alias of {} afterwards",
                        d.name
                    );
                    failures[d.req] = Some(match f {
                        Failure::Kernel(errno, ext, _) => {
                            Failure::Kernel(errno, ext, Some(context))
                        }
                        Failure::Send(errno) => Failure::Kernel(errno, None, Some(context)),
                        Failure::Lost => Failure::Other(format!(
                            "{context}: no acknowledgement (receive buffer overrun)"
                        )),
                        other => other,
                    });
                }
            }
        }
    }

    /// Read acks until every sequence number in `pending` is answered. The kernel has already
    /// processed the whole window when `sendmsg` returned, so on an overrun the missing acks
    /// are gone for good: drain what is queued and mark the rest as lost.
    fn collect_acks(
        &mut self,
        pending: &mut HashMap<u32, Pending>,
        failures: &mut [Option<Failure>],
    ) {
        let mut overrun = false;
        while !pending.is_empty() {
            let n = match self.recv(overrun) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    overrun = true;
                    continue;
                }
                Err(e) => {
                    // EAGAIN after an overrun, or a socket failure: the rest is unknown.
                    let lost = e.raw_os_error() == Some(libc::EAGAIN) && overrun;
                    for p in pending.values() {
                        failures[p.req].get_or_insert(if lost {
                            Failure::Lost
                        } else {
                            Failure::Send(e.raw_os_error().unwrap_or(libc::EIO))
                        });
                    }
                    pending.clear();
                    return;
                }
            };
            for m in messages(&self.rbuf[..n]) {
                match m.ty {
                    // The reply to a sync RTM_GETLINK.
                    RTM_NEWLINK => {
                        pending.remove(&m.seq);
                    }
                    NLMSG_ERROR => {
                        let Some((errno, seq, ext)) = parse_error(&m) else {
                            continue;
                        };
                        let Some(p) = pending.remove(&seq) else {
                            continue;
                        };
                        if errno != 0 && !p.sync {
                            failures[p.req].get_or_insert(Failure::Kernel(errno, ext, None));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// An alias RTM_NEWLINK ignores, set by name once the link exists.
struct Deferred {
    req: usize,
    netns_fd: Option<RawFd>,
    name: String,
    alias: String,
}

enum Failure {
    /// errno, extended ack, what had already happened (for a deferred step).
    Kernel(i32, Option<String>, Option<String>),
    Send(i32),
    Lost,
    Invalid(String),
    Other(String),
}

/// RTM_SETLINK selecting the link by name, setting its alias.
fn set_by_name(b: &mut MsgBuf, seq: u32, d: &Deferred) {
    let start = b.begin(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq);
    b.ifinfomsg(0, 0, 0);
    b.attr_str(IFLA_IFNAME, &d.name);
    b.attr(IFLA_IFALIAS, d.alias.as_bytes());
    b.end(start);
}

/// Sends `buf` as one datagram to the kernel on netlink socket `fd` (any netlink family),
/// retrying when a signal interrupts it.
pub(crate) fn send_to_kernel(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<()> {
    let sa = kernel_addr();
    loop {
        // SAFETY: buffer and address are valid for the given lengths.
        let r = unsafe {
            libc::sendto(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = MsgBuf { buf: Vec::new() };
        let start = b.begin(ty, flags, 7);
        b.buf.extend_from_slice(payload);
        b.end(start);
        b.buf
    }

    #[test]
    fn error_ack_with_extended_message() {
        // nlmsgerr: error, the original header (capped), then NLMSGERR_ATTR_MSG.
        let mut p = Vec::new();
        p.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let orig = msg(RTM_NEWLINK, NLM_F_REQUEST, &[]);
        p.extend_from_slice(&orig[..16]);
        let mut tlv = MsgBuf { buf: Vec::new() };
        tlv.attr_str(NLMSGERR_ATTR_MSG, "Address already assigned");
        p.extend_from_slice(&tlv.buf);
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
        let mut b = MsgBuf { buf: Vec::new() };
        let li = b.nest_begin(IFLA_LINKINFO);
        o.encode(&mut b);
        b.nest_end(li);
        let (_, linkinfo) = attrs(&b.buf).find(|(t, _)| *t == IFLA_LINKINFO).unwrap();
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
        let mut b = MsgBuf { buf: Vec::new() };
        clear.encode(&mut b);
        let (_, data) = attrs(&b.buf).find(|(t, _)| *t == IFLA_INFO_DATA).unwrap();
        assert_eq!(attr_u32(attrs(data).next().unwrap().1), Some(0));
        assert_eq!(BondOptions::parse(data).primary, None);
    }

    #[test]
    fn veth_request_nests_the_peer() {
        let mut nl = Netlink::open().expect("netlink socket");
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
        let mut pending = HashMap::new();
        let mut deferred = Vec::new();
        nl.sbuf.buf.clear();
        nl.encode(&req, 0, &mut pending, &mut deferred).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(deferred.len(), 1);
        assert_eq!(deferred[0].netns_fd, Some(9));
        let buf = nl.sbuf.buf.clone();
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
        let mut nl = Netlink::open().expect("netlink socket");
        let req = Request::NewLink {
            name: "eth1.10".into(),
            kind: NewLinkKind::Vlan { id: 10, link: 4 },
            mac: None,
            mtu: Some(1500),
            alias: Some("kvmnet network=v10".into()),
            master: Some(7),
            up: true,
        };
        let mut pending = HashMap::new();
        let mut deferred = Vec::new();
        nl.sbuf.buf.clear();
        nl.encode(&req, 0, &mut pending, &mut deferred).unwrap();
        assert_eq!(deferred.len(), 1, "the alias follows the creation");
        let buf = nl.sbuf.buf.clone();
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
}
