//! rtnetlink messages read back into plain data.

use std::net::Ipv4Addr;

use super::consts::{
    AF_BRIDGE, IF_OPER_UP, IFA_ADDRESS, IFA_BROADCAST, IFA_CACHEINFO, IFA_F_PERMANENT, IFA_FLAGS,
    IFA_LOCAL, IFF_LOWER_UP, IFF_TAP, IFF_UP, IFLA_ADDRESS, IFLA_BOND_AD_LACP_RATE,
    IFLA_BOND_MIIMON, IFLA_BOND_MIN_LINKS, IFLA_BOND_MODE, IFLA_BOND_PRIMARY,
    IFLA_BOND_XMIT_HASH_POLICY, IFLA_BRPORT_ISOLATED, IFLA_GROUP, IFLA_IFALIAS, IFLA_IFNAME,
    IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_INFO_SLAVE_DATA, IFLA_INFO_SLAVE_KIND, IFLA_LINK,
    IFLA_LINK_NETNSID, IFLA_LINKINFO, IFLA_MACVLAN_MODE, IFLA_MASTER, IFLA_MTU, IFLA_OPERSTATE,
    IFLA_QDISC, IFLA_STATS64, IFLA_TUN_GROUP, IFLA_TUN_MULTI_QUEUE, IFLA_TUN_OWNER,
    IFLA_TUN_PERSIST, IFLA_TUN_TYPE, IFLA_VLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT, INFINITY_LIFE_TIME,
    NDA_DST, NDA_LLADDR, RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_PREFSRC, RTA_PRIORITY, RTA_TABLE,
};
use super::types::{
    AddrInfo, BondOptions, FdbEntry, LinkInfo, LinkStats, Route6Info, RouteInfo, TunInfo, VxlanInfo,
};
use crate::backend::netlink::attr::{u16_at, u32_at, u64_at};
use crate::backend::netlink::{attr, attr_ipv4, attr_string, attr_u8, attr_u32, attrs};
use crate::types::{Ipv4Cidr, Mac};

/// An RTM_NEWLINK: `struct ifinfomsg`, then attributes.
pub(crate) fn parse_link(p: &[u8]) -> Option<LinkInfo> {
    if p.len() < 16 {
        return None;
    }
    let flags = u32_at(p, 8);
    let mut li = LinkInfo {
        index: u32_at(p, 4),
        name: String::new(),
        brport_isolated: None,
        kind: None,
        mac: None,
        mtu: 0,
        master: None,
        admin_up: flags & IFF_UP != 0,
        oper_up: flags & IFF_LOWER_UP != 0,
        alias: None,
        group: 0,
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
            IFLA_GROUP => li.group = attr_u32(v).unwrap_or(0),
            IFLA_LINK => li.peer_index = attr_u32(v),
            IFLA_QDISC => li.qdisc = Some(attr_string(v)),
            IFLA_LINK_NETNSID => li.link_netnsid = attr_u32(v).map(|n| n as i32),
            IFLA_STATS64 if v.len() >= 64 => li.stats = parse_stats64(v),
            IFLA_LINKINFO => parse_linkinfo(&mut li, v),
            _ => {}
        }
    }
    Some(li)
}

/// `struct rtnl_link_stats64`: rx_packets, tx_packets, rx_bytes, tx_bytes, rx_errors,
/// tx_errors, rx_dropped, tx_dropped, ...
pub(crate) fn parse_stats64(v: &[u8]) -> LinkStats {
    LinkStats {
        rx_packets: u64_at(v, 0),
        tx_packets: u64_at(v, 8),
        rx_bytes: u64_at(v, 16),
        tx_bytes: u64_at(v, 24),
        rx_errors: u64_at(v, 32),
        tx_errors: u64_at(v, 40),
        rx_dropped: u64_at(v, 48),
        tx_dropped: u64_at(v, 56),
    }
}

/// IFLA_LINKINFO: the kind, its data, and the bridge-port data of an enslaved link.
fn parse_linkinfo(li: &mut LinkInfo, v: &[u8]) {
    let mut data: &[u8] = &[];
    let mut slave_kind = None;
    let mut slave_data: &[u8] = &[];
    for (t, d) in attrs(v) {
        match t {
            IFLA_INFO_KIND => li.kind = Some(attr_string(d)),
            IFLA_INFO_DATA => data = d,
            IFLA_INFO_SLAVE_KIND => slave_kind = Some(attr_string(d)),
            IFLA_INFO_SLAVE_DATA => slave_data = d,
            _ => {}
        }
    }
    if slave_kind.as_deref() == Some("bridge") {
        li.brport_isolated = Some(
            attr(slave_data, IFLA_BRPORT_ISOLATED)
                .and_then(attr_u8)
                .unwrap_or(0)
                != 0,
        );
    }
    match li.kind.as_deref() {
        Some("tun") => li.tun = Some(parse_tun(data)),
        Some("macvtap" | "macvlan") => {
            li.macvlan_mode = attr(data, IFLA_MACVLAN_MODE).and_then(attr_u32);
        }
        Some("vlan") => {
            li.vlan_id = attr(data, IFLA_VLAN_ID)
                .and_then(|d| (d.len() >= 2).then(|| u16::from_ne_bytes([d[0], d[1]])));
        }
        Some("bond") => li.bond = Some(BondOptions::parse(data)),
        Some("vxlan") => li.vxlan = Some(parse_vxlan(data)),
        _ => {}
    }
}

fn parse_tun(data: &[u8]) -> TunInfo {
    let mut tun = TunInfo::default();
    for (t, d) in attrs(data) {
        match t {
            IFLA_TUN_OWNER => tun.owner = attr_u32(d),
            IFLA_TUN_GROUP => tun.group = attr_u32(d),
            IFLA_TUN_TYPE => tun.tap = attr_u8(d) == Some(IFF_TAP),
            IFLA_TUN_PERSIST => tun.persist = attr_u8(d).unwrap_or(0) != 0,
            IFLA_TUN_MULTI_QUEUE => tun.multi_queue = attr_u8(d).unwrap_or(0) != 0,
            _ => {}
        }
    }
    tun
}

fn parse_vxlan(data: &[u8]) -> VxlanInfo {
    let mut vx = VxlanInfo::default();
    for (t, d) in attrs(data) {
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
    vx
}

impl BondOptions {
    /// IFLA_INFO_DATA of kind "bond".
    pub(super) fn parse(data: &[u8]) -> BondOptions {
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

pub(super) fn parse_fdb(p: &[u8]) -> Option<FdbEntry> {
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

pub(super) fn parse_addr(p: &[u8]) -> Option<AddrInfo> {
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

/// A global IPv6 address (link-local and other scopes are the kernel's own).
pub(super) fn parse_addr6(p: &[u8]) -> Option<(u32, crate::spec::Ipv6Cidr)> {
    parse_addr6_flags(p).map(|(i, a, _)| (i, a))
}

/// [`parse_addr6`] with the address's flags (`IFA_F_*`).
pub(super) fn parse_addr6_flags(p: &[u8]) -> Option<(u32, crate::spec::Ipv6Cidr, u32)> {
    if p.len() < 8 || p[0] != libc::AF_INET6 as u8 || p[3] != super::consts::RT_SCOPE_UNIVERSE {
        return None;
    }
    let (prefix, index) = (p[1], u32_at(p, 4));
    // The header holds the low 8 bits; IFA_FLAGS, when sent, all of them.
    let mut flags = u32::from(p[2]);
    let (mut local, mut address) = (None, None);
    for (ty, v) in attrs(&p[8..]) {
        let a = <[u8; 16]>::try_from(v).ok().map(std::net::Ipv6Addr::from);
        match ty {
            IFA_LOCAL => local = a,
            IFA_ADDRESS => address = a,
            IFA_FLAGS => flags = attr_u32(v).unwrap_or(flags),
            _ => {}
        }
    }
    Some((
        index,
        crate::spec::Ipv6Cidr {
            addr: local.or(address)?,
            prefix,
        },
        flags,
    ))
}

/// An IPv6 route (RTA_MULTIPATH routes come without gateway and device).
pub(super) fn parse_route6(p: &[u8]) -> Option<Route6Info> {
    if p.len() < 12 || p[0] != libc::AF_INET6 as u8 {
        return None;
    }
    let mut r = Route6Info {
        dst: crate::spec::Ipv6Cidr {
            addr: std::net::Ipv6Addr::UNSPECIFIED,
            prefix: p[1],
        },
        gateway: None,
        oif: None,
        protocol: p[5],
        table: u32::from(p[4]),
        route_type: p[7],
    };
    for (ty, v) in attrs(&p[12..]) {
        let a = <[u8; 16]>::try_from(v).ok().map(std::net::Ipv6Addr::from);
        match ty {
            RTA_DST => r.dst.addr = a.unwrap_or(r.dst.addr),
            RTA_GATEWAY => r.gateway = a,
            RTA_OIF => r.oif = attr_u32(v),
            RTA_TABLE => r.table = attr_u32(v).unwrap_or(r.table),
            _ => {}
        }
    }
    Some(r)
}

pub(super) fn parse_route(p: &[u8]) -> Option<RouteInfo> {
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
