//! What rtnetlink reports about links, addresses, routes and FDB entries, as plain data.

use std::net::Ipv4Addr;

use super::consts::{RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTN_UNICAST, RTPROT_BOOT};
use crate::types::{Ipv4Cidr, Mac};

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
    /// `IFLA_GROUP`, the link group (0: the default group).
    pub group: u32,
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

/// An IPv4 route. For [`super::Request::NewRoute`], `table` 0 means main and `route_type` 0 means
/// unicast; `protocol` and `scope` are sent as given (`ip route add` uses [`RTPROT_BOOT`] and
/// [`RT_SCOPE_UNIVERSE`] for a route via a gateway, [`RT_SCOPE_LINK`] for a device route).
/// For [`super::Request::DelRoute`] the kernel treats `protocol` 0, `route_type` 0, `priority` None as
/// wildcards; a route read back with [`super::Netlink::routes`] deletes exactly that route.
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

/// An IPv6 unicast route of the main table (what kvmnet sets of IPv6 routes: a veth far
/// end's default route). `protocol` as for [`RouteInfo`]; the kernel gives routes it learns
/// from router advertisements [`RTPROT_RA`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route6Info {
    pub dst: crate::types::Ipv6Cidr,
    pub gateway: Option<std::net::Ipv6Addr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub table: u32,
    pub route_type: u8,
}

impl Route6Info {
    /// The default route out of `oif` via `gateway`, as `ip -6 route add default via G dev
    /// D` makes it.
    pub fn default_via(gateway: std::net::Ipv6Addr, oif: u32) -> Route6Info {
        Route6Info {
            dst: crate::types::Ipv6Cidr {
                addr: std::net::Ipv6Addr::UNSPECIFIED,
                prefix: 0,
            },
            gateway: Some(gateway),
            oif: Some(oif),
            protocol: RTPROT_BOOT,
            table: RT_TABLE_MAIN,
            route_type: RTN_UNICAST,
        }
    }
}

/// Route protocol of what the kernel learns from router advertisements.
pub const RTPROT_RA: u8 = 9;

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
