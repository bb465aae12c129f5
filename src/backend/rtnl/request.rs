//! The changes rtnetlink is asked for, and how they are named in error messages.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use super::consts::{IFALIASZ, IFNAMSIZ, RT_TABLE_MAIN};
use super::types::{BondOptions, Route6Info, RouteInfo};
use crate::types::{Ipv4Cidr, Mac};

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
    /// An IPv6 address, without duplicate address detection (`ip addr add A/P nodad`).
    NewAddr6 {
        index: u32,
        addr: crate::spec::Ipv6Cidr,
    },
    DelAddr6 {
        index: u32,
        addr: crate::spec::Ipv6Cidr,
    },
    NewRoute(RouteInfo),
    DelRoute(RouteInfo),
    NewRoute6(Route6Info),
    DelRoute6(Route6Info),
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
    pub(super) fn link_index(&self) -> Option<u32> {
        match self {
            Request::SetLink { index, .. }
            | Request::DelLink { index }
            | Request::SetBridgePort { index, .. }
            | Request::SetBond { index, .. }
            | Request::NewAddr { index, .. }
            | Request::DelAddr { index, .. }
            | Request::NewAddr6 { index, .. }
            | Request::DelAddr6 { index, .. }
            | Request::NewFdb { index, .. }
            | Request::DelFdb { index, .. } => Some(*index),
            Request::NewRoute(r) | Request::DelRoute(r) => r.oif,
            Request::NewRoute6(r) | Request::DelRoute6(r) => r.oif,
            Request::NewLink { .. } => None,
        }
    }

    /// "operation object" for error messages; `name` is the link's name when known.
    pub(super) fn describe(&self, name: Option<&str>) -> String {
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
            Request::NewAddr6 { index, addr } => {
                format!("add address {addr} to link {}", link(*index))
            }
            Request::DelAddr6 { index, addr } => {
                format!("delete address {addr} from link {}", link(*index))
            }
            Request::NewRoute(r) => format!("add route {}", describe_route(r, name)),
            Request::DelRoute(r) => format!("delete route {}", describe_route(r, name)),
            Request::NewRoute6(r) => format!("add route {}", describe_route6(r, name)),
            Request::DelRoute6(r) => format!("delete route {}", describe_route6(r, name)),
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

fn describe_route6(r: &Route6Info, oif_name: Option<&str>) -> String {
    let mut s = if r.dst.prefix == 0 {
        "default".to_string()
    } else {
        r.dst.to_string()
    };
    if let Some(g) = r.gateway {
        let _ = write!(s, " via {g}");
    }
    match (r.oif, oif_name) {
        (Some(o), Some(n)) => {
            let _ = write!(s, " dev {n} (index {o})");
        }
        (Some(o), None) => {
            let _ = write!(s, " dev index {o}");
        }
        (None, _) => {}
    }
    s
}

pub(super) fn check_ifname(name: &str) -> Result<(), String> {
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

/// Refuses what cannot be encoded, before anything of it is written.
pub(super) fn validate(req: &Request) -> Result<(), String> {
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
        Request::NewAddr6 { addr, .. } | Request::DelAddr6 { addr, .. } => {
            if addr.prefix > 128 {
                return Err(format!("prefix length {} is over 128", addr.prefix));
            }
        }
        Request::NewRoute(r) | Request::DelRoute(r) => {
            if r.dst.prefix > 32 {
                return Err(format!("prefix length {} is over 32", r.dst.prefix));
            }
        }
        Request::NewRoute6(r) | Request::DelRoute6(r) => {
            if r.dst.prefix > 128 {
                return Err(format!("prefix length {} is over 128", r.dst.prefix));
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
    Ok(())
}
