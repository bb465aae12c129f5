//! rtnetlink attribute numbers and flags (linux/if_link.h, if_addr.h, rtnetlink.h,
//! neighbour.h, if_tun.h), shared with `tc`, which makes and reads its IFBs as links.

pub(crate) const AF_BRIDGE: u8 = 7;
pub(crate) const NDA_DST: u16 = 1;
pub(crate) const NDA_LLADDR: u16 = 2;
pub(crate) const NTF_SELF: u8 = 0x02;
pub(crate) const NUD_NOARP: u16 = 0x40;
pub(crate) const NUD_PERMANENT: u16 = 0x80;

pub(crate) const IFLA_VXLAN_ID: u16 = 1;
pub(crate) const IFLA_VLAN_ID: u16 = 1;
pub(crate) const IFLA_VXLAN_GROUP: u16 = 2;
pub(crate) const IFLA_VXLAN_LINK: u16 = 3;
pub(crate) const IFLA_VXLAN_LOCAL: u16 = 4;
pub(crate) const IFLA_VXLAN_LEARNING: u16 = 7;
pub(crate) const IFLA_VXLAN_PORT: u16 = 15;
// IFLA_BOND_*, inside IFLA_INFO_DATA of kind "bond".
pub(crate) const IFLA_BOND_MODE: u16 = 1;
pub(crate) const IFLA_BOND_MIIMON: u16 = 3;
pub(crate) const IFLA_BOND_PRIMARY: u16 = 11;
pub(crate) const IFLA_BOND_XMIT_HASH_POLICY: u16 = 14;
pub(crate) const IFLA_BOND_MIN_LINKS: u16 = 18;
pub(crate) const IFLA_BOND_AD_LACP_RATE: u16 = 21;

pub(crate) const IFLA_ADDRESS: u16 = 1;
pub(crate) const IFLA_IFNAME: u16 = 3;
pub(crate) const IFLA_MTU: u16 = 4;
pub(crate) const IFLA_LINK: u16 = 5;
pub(crate) const IFLA_QDISC: u16 = 6;
pub(crate) const IFLA_MASTER: u16 = 10;
pub(crate) const IFLA_OPERSTATE: u16 = 16;
pub(crate) const IFLA_LINKINFO: u16 = 18;
pub(crate) const IFLA_IFALIAS: u16 = 20;
pub(crate) const IFLA_STATS64: u16 = 23;
pub(crate) const IFLA_GROUP: u16 = 27;
pub(crate) const IFLA_NET_NS_FD: u16 = 28;
pub(crate) const IFLA_EXT_MASK: u16 = 29;
pub(crate) const IFLA_LINK_NETNSID: u16 = 37;
pub(crate) const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

pub(crate) const IFLA_INFO_KIND: u16 = 1;
pub(crate) const IFLA_INFO_DATA: u16 = 2;
pub(crate) const IFLA_MACVLAN_MODE: u16 = 1;
pub(crate) const IFLA_INFO_SLAVE_KIND: u16 = 4;
pub(crate) const IFLA_INFO_SLAVE_DATA: u16 = 5;
pub(crate) const IFLA_BRPORT_ISOLATED: u16 = 33;
pub(crate) const VETH_INFO_PEER: u16 = 1;

pub(crate) const IFLA_TUN_OWNER: u16 = 1;
pub(crate) const IFLA_TUN_GROUP: u16 = 2;
pub(crate) const IFLA_TUN_TYPE: u16 = 3;
pub(crate) const IFLA_TUN_PERSIST: u16 = 6;
pub(crate) const IFLA_TUN_MULTI_QUEUE: u16 = 7;
pub(crate) const IFF_TAP: u8 = 2;

pub(crate) const IFF_UP: u32 = 0x1;
pub(crate) const IFF_LOWER_UP: u32 = 0x1_0000;
pub(crate) const IF_OPER_UP: u8 = 6;

pub(crate) const IFA_ADDRESS: u16 = 1;
pub(crate) const IFA_LOCAL: u16 = 2;
pub(crate) const IFA_BROADCAST: u16 = 4;
pub(crate) const IFA_CACHEINFO: u16 = 6;
pub(crate) const IFA_FLAGS: u16 = 8;
pub(crate) const IFA_F_PERMANENT: u32 = 0x80;
/// No duplicate address detection: the address is usable at once.
pub(crate) const IFA_F_NODAD: u32 = 0x02;
pub(crate) const INFINITY_LIFE_TIME: u32 = u32::MAX;

pub(crate) const RTA_DST: u16 = 1;
pub(crate) const RTA_OIF: u16 = 4;
pub(crate) const RTA_GATEWAY: u16 = 5;
pub(crate) const RTA_PRIORITY: u16 = 6;
pub(crate) const RTA_PREFSRC: u16 = 7;
pub(crate) const RTA_TABLE: u16 = 15;

pub(crate) const IFNAMSIZ: usize = 16;
pub(crate) const IFALIASZ: usize = 256;

/// Route protocol (`rtm_protocol`) `ip route add` uses, for [`super::RouteInfo::protocol`].
pub(crate) const RTPROT_BOOT: u8 = 3;
/// Route scopes (`rtm_scope`), for [`super::RouteInfo::scope`].
pub(crate) const RT_SCOPE_UNIVERSE: u8 = 0;
pub(crate) const RT_SCOPE_LINK: u8 = 253;
/// Route type (`rtm_type`) of an ordinary route, for [`super::RouteInfo::route_type`].
pub(crate) const RTN_UNICAST: u8 = 1;
/// The main routing table, for [`super::RouteInfo::table`].
pub(crate) const RT_TABLE_MAIN: u32 = 254;
