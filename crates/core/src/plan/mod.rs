//! diff(desired, observed) -> ordered steps, each with its inverse. Pure.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::nft::{NftChange, NftPlan, NftTable};
use std::net::Ipv4Addr;

use crate::state::{
    Addr, BondLink, BridgeLink, EthtoolValues, HostState, PortKind, PortLink, Route, Shaping,
    VlanLink, VxlanLink,
};

// Steps are built once per plan and moved little: boxing the large variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    CreateNetns(String),
    DeleteNetns(String),
    CreateBridge(BridgeLink),
    DeleteBridge(BridgeLink),
    UpdateBridge {
        from: BridgeLink,
        to: BridgeLink,
    },
    /// Enslave a foreign uplink to a bridge, or release it.
    SetMaster {
        link: String,
        from: Option<String>,
        to: Option<String>,
    },
    AddAddr {
        dev: String,
        addr: Addr,
    },
    DelAddr {
        dev: String,
        addr: Addr,
    },
    AddRoute {
        dev: String,
        route: Route,
    },
    DelRoute {
        dev: String,
        route: Route,
    },
    CreatePort(PortLink),
    DeletePort(PortLink),
    UpdatePort {
        from: PortLink,
        to: PortLink,
    },
    SetNft {
        from: Option<NftTable>,
        to: Option<NftTable>,
    },
    /// One object of kvmnet's nftables tables; consecutive ones run as one transaction.
    Nft(NftChange),
    SetSysctl {
        key: String,
        from: String,
        to: String,
    },
    CreateVxlan(VxlanLink),
    DeleteVxlan(VxlanLink),
    /// A flood entry (all-zeros MAC) of a VXLAN device towards one remote.
    AddFdb {
        dev: String,
        dst: Ipv4Addr,
    },
    DelFdb {
        dev: String,
        dst: Ipv4Addr,
    },
    /// A network's bandwidth and floors, at its bridge.
    SetShaping {
        bridge: String,
        from: Option<Shaping>,
        to: Option<Shaping>,
    },
    /// ethtool settings of one interface: `to` is set; `from` holds the values they had
    /// (missing for a device this plan makes, whose removal takes its settings with it).
    SetEthtool {
        dev: String,
        from: EthtoolValues,
        to: EthtoolValues,
    },
    CreateVlan(VlanLink),
    DeleteVlan(VlanLink),
    /// Bring a foreign interface (a vlan network's uplink) up, or back down.
    SetUp {
        link: String,
        from: bool,
        to: bool,
    },
    /// A bond is made without a primary (the kernel takes the primary as an interface index,
    /// so it is set by an UpdateBond once that member is enslaved).
    CreateBond(BondLink),
    DeleteBond(BondLink),
    UpdateBond {
        from: BondLink,
        to: BondLink,
    },
    /// Enslave a host interface to a bond, or release it (taken down around the change).
    SetBondMember {
        link: String,
        from: Option<String>,
        to: Option<String>,
    },
    /// MTU of a host interface that `host.uplinks` tunes.
    SetMtu {
        link: String,
        from: u32,
        to: u32,
    },
}

impl Step {
    pub fn inverse(&self) -> Step {
        use Step::*;
        match self.clone() {
            CreateNetns(n) => DeleteNetns(n),
            DeleteNetns(n) => CreateNetns(n),
            CreateBridge(b) => DeleteBridge(b),
            DeleteBridge(b) => CreateBridge(b),
            UpdateBridge { from, to } => UpdateBridge { from: to, to: from },
            SetMaster { link, from, to } => SetMaster {
                link,
                from: to,
                to: from,
            },
            AddAddr { dev, addr } => DelAddr { dev, addr },
            DelAddr { dev, addr } => AddAddr { dev, addr },
            AddRoute { dev, route } => DelRoute { dev, route },
            DelRoute { dev, route } => AddRoute { dev, route },
            CreatePort(p) => DeletePort(p),
            DeletePort(p) => CreatePort(p),
            UpdatePort { from, to } => UpdatePort { from: to, to: from },
            SetNft { from, to } => SetNft { from: to, to: from },
            Nft(c) => Nft(c.inverse()),
            SetSysctl { key, from, to } => SetSysctl {
                key,
                from: to,
                to: from,
            },
            CreateVxlan(v) => DeleteVxlan(v),
            DeleteVxlan(v) => CreateVxlan(v),
            AddFdb { dev, dst } => DelFdb { dev, dst },
            DelFdb { dev, dst } => AddFdb { dev, dst },
            SetShaping { bridge, from, to } => SetShaping {
                bridge,
                from: to,
                to: from,
            },
            SetEthtool { dev, from, to } => SetEthtool {
                dev,
                from: to,
                to: from,
            },
            CreateVlan(v) => DeleteVlan(v),
            DeleteVlan(v) => CreateVlan(v),
            SetUp { link, from, to } => SetUp {
                link,
                from: to,
                to: from,
            },
            CreateBond(b) => DeleteBond(b),
            DeleteBond(b) => CreateBond(b),
            UpdateBond { from, to } => UpdateBond { from: to, to: from },
            SetBondMember { link, from, to } => SetBondMember {
                link,
                from: to,
                to: from,
            },
            SetMtu { link, from, to } => SetMtu {
                link,
                from: to,
                to: from,
            },
        }
    }

    pub fn op(&self) -> &'static str {
        use Step::*;
        match self {
            CreateNetns(_) | CreateBridge(_) | CreatePort(_) | CreateVxlan(_) | CreateVlan(_)
            | CreateBond(_) => "create",
            DeleteNetns(_) | DeleteBridge(_) | DeletePort(_) | DeleteVxlan(_) | DeleteVlan(_)
            | DeleteBond(_) => "delete",
            UpdateBridge { .. }
            | UpdatePort { .. }
            | SetMaster { .. }
            | SetUp { .. }
            | UpdateBond { .. }
            | SetBondMember { .. } => "update",
            SetMtu { .. } => "set",
            AddAddr { .. } | AddRoute { .. } | AddFdb { .. } => "add",
            DelAddr { .. } | DelRoute { .. } | DelFdb { .. } => "remove",
            SetNft { to: None, .. } | SetShaping { to: None, .. } => "delete",
            SetNft { from: None, .. } | SetShaping { from: None, .. } => "create",
            SetNft { .. } | SetSysctl { .. } | SetShaping { .. } | SetEthtool { .. } => "set",
            Nft(c) => c.op(),
        }
    }

    pub fn kind(&self) -> &'static str {
        use Step::*;
        match self {
            CreateNetns(_) | DeleteNetns(_) => "netns",
            CreateBridge(_) | DeleteBridge(_) | UpdateBridge { .. } => "bridge",
            SetMaster { .. } | SetUp { .. } => "uplink",
            AddAddr { .. } | DelAddr { .. } => "address",
            AddRoute { .. } | DelRoute { .. } => "route",
            CreatePort(p) | DeletePort(p) => p.kind_name(),
            UpdatePort { to, .. } => to.kind_name(),
            SetNft { .. } | Nft(_) => "nftables",
            SetSysctl { .. } => "sysctl",
            CreateVxlan(_) | DeleteVxlan(_) => "vxlan",
            AddFdb { .. } | DelFdb { .. } => "fdb",
            SetShaping { .. } => "shaping",
            SetEthtool { .. } => "ethtool",
            CreateVlan(_) | DeleteVlan(_) => "vlan",
            CreateBond(_) | DeleteBond(_) | UpdateBond { .. } => "bond",
            SetBondMember { .. } => "bond-member",
            SetMtu { .. } => "mtu",
        }
    }

    pub fn name(&self) -> String {
        use Step::*;
        match self {
            CreateNetns(n) | DeleteNetns(n) => n.clone(),
            CreateBridge(b) | DeleteBridge(b) => b.name.clone(),
            UpdateBridge { to, .. } => to.name.clone(),
            SetMaster { link, .. } => link.clone(),
            AddAddr { dev, addr } | DelAddr { dev, addr } => format!("{} dev {dev}", addr.cidr),
            AddRoute { dev, route } | DelRoute { dev, route } => format!("{route} dev {dev}"),
            CreatePort(p) | DeletePort(p) => p.name.clone(),
            UpdatePort { to, .. } => to.name.clone(),
            SetNft { .. } => crate::nft::TABLE.to_string(),
            Nft(c) => c.name(),
            SetSysctl { key, .. } => key.clone(),
            CreateVxlan(v) | DeleteVxlan(v) => v.name.clone(),
            AddFdb { dev, dst } | DelFdb { dev, dst } => format!("{dst} dev {dev}"),
            SetShaping { bridge, .. } => bridge.clone(),
            SetEthtool { dev, .. } => dev.clone(),
            CreateVlan(v) | DeleteVlan(v) => v.name.clone(),
            SetUp { link, .. } => link.clone(),
            CreateBond(b) | DeleteBond(b) => b.name.clone(),
            UpdateBond { to, .. } => to.name.clone(),
            SetBondMember { link, .. } | SetMtu { link, .. } => link.clone(),
        }
    }

    /// One JSON object per step: `op`, `kind`, `name`, and what the step sets.
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per kind of step; goes with typed changes (#14)"
    )]
    pub fn to_json(&self) -> Value {
        use Step::*;
        let mut v = json!({ "op": self.op(), "kind": self.kind(), "name": self.name() });
        let o = v.as_object_mut().expect("object");
        match self {
            CreateBridge(b) | DeleteBridge(b) => {
                o.insert("network".into(), json!(b.network));
                o.insert("mac".into(), json!(b.mac.to_string()));
                o.insert("mtu".into(), json!(b.mtu));
            }
            UpdateBridge { from, to } => {
                o.insert("changes".into(), bridge_changes(from, to));
            }
            SetMaster { from, to, .. } => {
                o.insert("from".into(), json!(from));
                o.insert("to".into(), json!(to));
            }
            AddAddr { dev, addr } | DelAddr { dev, addr } => {
                o.insert("dev".into(), json!(dev));
                o.insert("address".into(), json!(addr.cidr.to_string()));
                o.insert(
                    "broadcast".into(),
                    json!(addr.broadcast.map(|b| b.to_string())),
                );
            }
            AddRoute { dev, route } | DelRoute { dev, route } => {
                o.insert("dev".into(), json!(dev));
                o.insert("route".into(), json!(route.to_string()));
            }
            CreatePort(p) | DeletePort(p) => {
                o.insert("vm".into(), json!(p.vm));
                o.insert("network".into(), json!(p.network));
                o.insert("bridge".into(), json!(p.master));
                o.insert("mac".into(), json!(p.mac.to_string()));
                o.insert("mtu".into(), json!(p.mtu));
                match &p.kind {
                    PortKind::Tap { owner, multi_queue } => {
                        o.insert("owner".into(), json!(owner));
                        o.insert("multi_queue".into(), json!(multi_queue));
                    }
                    PortKind::Macvtap {
                        uplink,
                        mode,
                        owner,
                    } => {
                        o.insert("uplink".into(), json!(uplink));
                        o.insert("direct_mode".into(), json!(mode.as_str()));
                        o.insert("owner".into(), json!(owner));
                    }
                    PortKind::Veth { netns, guest } => {
                        o.insert("netns".into(), json!(netns));
                        o.insert("guest_mac".into(), json!(guest.mac.to_string()));
                        o.insert(
                            "guest_ipv4".into(),
                            json!(guest.addr.map(|a| a.to_string())),
                        );
                        o.insert(
                            "guest_gateway".into(),
                            json!(guest.gateway.map(|a| a.to_string())),
                        );
                    }
                }
            }
            UpdatePort { from, to } => {
                o.insert("changes".into(), port_changes(from, to));
            }
            SetNft { to, .. } => {
                o.insert("rules".into(), json!(to.as_ref().map(|t| t.text())));
            }
            Nft(c) => {
                for (k, v) in c.json_fields() {
                    o.insert(k.into(), v);
                }
            }
            SetSysctl { from, to, .. } => {
                o.insert("from".into(), json!(from));
                o.insert("to".into(), json!(to));
            }
            CreateVxlan(x) | DeleteVxlan(x) => {
                o.insert("network".into(), json!(x.network));
                o.insert("vni".into(), json!(x.vni));
                o.insert("underlay".into(), json!(x.underlay));
                o.insert("local".into(), json!(x.local.to_string()));
                o.insert("port".into(), json!(x.port));
                o.insert("group".into(), json!(x.group.map(|g| g.to_string())));
                o.insert("bridge".into(), json!(x.master));
                o.insert("mtu".into(), json!(x.mtu));
            }
            AddFdb { dev, dst } | DelFdb { dev, dst } => {
                o.insert("dev".into(), json!(dev));
                o.insert("mac".into(), json!("00:00:00:00:00:00"));
                o.insert("dst".into(), json!(dst.to_string()));
            }
            SetShaping { from, to, .. } => {
                o.insert("from".into(), json!(from.as_ref().map(shaping_word)));
                o.insert("to".into(), json!(to.as_ref().map(shaping_word)));
            }
            SetEthtool { from, to, .. } => {
                o.insert("from".into(), json!(from));
                o.insert("to".into(), json!(to));
            }
            CreateVlan(v) | DeleteVlan(v) => {
                o.insert("network".into(), json!(v.network));
                o.insert("vlan".into(), json!(v.vid));
                o.insert("link".into(), json!(v.parent));
                o.insert("port".into(), json!(v.port));
                o.insert("bridge".into(), json!(v.master));
                o.insert("mtu".into(), json!(v.mtu));
            }
            SetUp { from, to, .. } => {
                o.insert("from".into(), json!(if *from { "up" } else { "down" }));
                o.insert("to".into(), json!(if *to { "up" } else { "down" }));
            }
            CreateBond(b) | DeleteBond(b) => {
                o.insert("mode".into(), json!(b.mode));
                o.insert("miimon".into(), json!(b.miimon));
                o.insert("lacp_rate".into(), json!(b.lacp_rate));
                o.insert("xmit_hash_policy".into(), json!(b.xmit_hash_policy));
                o.insert("min_links".into(), json!(b.min_links));
                o.insert("primary".into(), json!(b.primary));
                o.insert("mtu".into(), json!(b.mtu));
            }
            UpdateBond { from, to } => {
                o.insert("changes".into(), bond_changes(from, to));
            }
            SetBondMember { from, to, .. } => {
                o.insert("from".into(), json!(from));
                o.insert("to".into(), json!(to));
            }
            SetMtu { from, to, .. } => {
                o.insert("from".into(), json!(from));
                o.insert("to".into(), json!(to));
            }
            CreateNetns(_) | DeleteNetns(_) => {}
        }
        v
    }
}

/// "bandwidth 1gbit, floors 52:54:00:00:00:01 100mbit (1:10)"; "(damaged)" when the live
/// tree is not what its classes say.
fn shaping_word(s: &Shaping) -> String {
    let rate = crate::spec::show_rate;
    let mut w = format!("bandwidth {}", rate(s.bandwidth));
    if !s.floors.is_empty() {
        let floors: Vec<String> = s
            .floors
            .iter()
            .map(|(mac, f)| format!("{mac} {} (1:{:x})", rate(f.rate), f.class))
            .collect();
        w.push_str(&format!(", floors {}", floors.join(", ")));
    }
    if !s.intact {
        w.push_str(" (damaged)");
    }
    w
}

fn changes(pairs: Vec<(&str, String, String)>) -> Value {
    let mut m = serde_json::Map::new();
    for (k, a, b) in pairs {
        if a != b {
            m.insert(k.to_string(), json!({ "from": a, "to": b }));
        }
    }
    Value::Object(m)
}

fn bridge_changes(a: &BridgeLink, b: &BridgeLink) -> Value {
    changes(vec![
        ("mac", a.mac.to_string(), b.mac.to_string()),
        ("mtu", a.mtu.to_string(), b.mtu.to_string()),
        ("up", a.up.to_string(), b.up.to_string()),
        ("network", a.network.clone(), b.network.clone()),
    ])
}

fn bond_changes(a: &BondLink, b: &BondLink) -> Value {
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    changes(vec![
        ("mode", a.mode.clone(), b.mode.clone()),
        ("miimon", a.miimon.to_string(), b.miimon.to_string()),
        ("lacp_rate", a.lacp_rate.clone(), b.lacp_rate.clone()),
        (
            "xmit_hash_policy",
            a.xmit_hash_policy.clone(),
            b.xmit_hash_policy.clone(),
        ),
        (
            "min_links",
            a.min_links.to_string(),
            b.min_links.to_string(),
        ),
        ("primary", opt(&a.primary), opt(&b.primary)),
        ("mtu", a.mtu.to_string(), b.mtu.to_string()),
        ("home", a.home.clone(), b.home.clone()),
        ("up", a.up.to_string(), b.up.to_string()),
    ])
}

fn qos_word(p: &PortLink) -> String {
    let s = |q: &Option<crate::state::ShapeState>| {
        q.map_or("-".to_string(), |q| {
            let mut w = format!("{}bit", q.rate);
            if q.ceil > 0 {
                w.push_str(&format!(" ceil {}bit", q.ceil));
            }
            if q.burst > 0 {
                w.push_str(&format!(" burst {}b", q.burst));
            }
            w
        })
    };
    let mut w = format!("in {} out {}", s(&p.qos_in), s(&p.qos_out));
    if !p.tc_ok {
        w.push_str(" (live tc differs)");
    }
    w
}

fn port_changes(a: &PortLink, b: &PortLink) -> Value {
    let guest = |p: &PortLink| match &p.kind {
        PortKind::Veth { guest, .. } => format!(
            "mac {} mtu {} up {} ipv4 {} gateway {}",
            guest.mac,
            guest.mtu,
            guest.up,
            guest.addr.map_or("-".into(), |x| x.to_string()),
            guest.gateway.map_or("-".into(), |x| x.to_string())
        ),
        PortKind::Tap { .. } | PortKind::Macvtap { .. } => String::new(),
    };
    let device_owner = |p: &PortLink| match &p.kind {
        PortKind::Macvtap { owner, .. } => owner.map_or("-".into(), |o| format!("uid {o}")),
        _ => String::new(),
    };
    changes(vec![
        ("mac", a.mac.to_string(), b.mac.to_string()),
        ("mtu", a.mtu.to_string(), b.mtu.to_string()),
        ("up", a.up.to_string(), b.up.to_string()),
        ("isolated", a.isolated.to_string(), b.isolated.to_string()),
        ("qos", qos_word(a), qos_word(b)),
        (
            "mirror",
            a.mirror.clone().unwrap_or("-".into()),
            b.mirror.clone().unwrap_or("-".into()),
        ),
        (
            "bridge",
            a.master.clone().unwrap_or_default(),
            b.master.clone().unwrap_or_default(),
        ),
        ("vm", a.vm.clone(), b.vm.clone()),
        ("network", a.network.clone(), b.network.clone()),
        ("guest", guest(a), guest(b)),
        ("device owner", device_owner(a), device_owner(b)),
    ])
}

impl fmt::Display for Step {
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per kind of step; goes with typed changes (#14)"
    )]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Step::*;
        let sign = match self.op() {
            "create" | "add" => '+',
            "delete" | "remove" => '-',
            _ => '~',
        };
        write!(f, "{sign} {} {}", self.kind(), self.name())?;
        match self {
            CreateBridge(b) => write!(f, " (network {}, mac {}, mtu {})", b.network, b.mac, b.mtu),
            CreateVxlan(v) => {
                write!(
                    f,
                    " (network {}, vni {}, local {} dev {}, port {}, bridge {}, mtu {}",
                    v.network,
                    v.vni,
                    v.local,
                    v.underlay,
                    v.port,
                    v.master.as_deref().unwrap_or("-"),
                    v.mtu
                )?;
                if let Some(g) = v.group {
                    write!(f, ", group {g}")?;
                }
                write!(f, ")")
            }
            CreatePort(p) if matches!(p.kind, PortKind::Macvtap { .. }) => {
                if let PortKind::Macvtap {
                    uplink,
                    mode,
                    owner,
                } = &p.kind
                {
                    write!(
                        f,
                        " (vm {}, on {uplink} mode {}, mac {}, mtu {}",
                        p.vm,
                        mode.as_str(),
                        p.mac,
                        p.mtu
                    )?;
                    if let Some(o) = owner {
                        write!(f, ", owner uid {o}")?;
                    }
                }
                write!(f, ")")
            }
            CreateVlan(v) => {
                write!(
                    f,
                    " (network {}, vlan {} on {}, bridge {}, mtu {}",
                    v.network,
                    v.vid,
                    v.parent,
                    v.master.as_deref().unwrap_or("-"),
                    v.mtu
                )?;
                if v.isolated {
                    write!(f, ", isolated")?;
                }
                write!(f, ")")
            }
            SetUp { from, to, .. } => write!(
                f,
                ": {} -> {}",
                if *from { "up" } else { "down" },
                if *to { "up" } else { "down" }
            ),
            CreatePort(p) => {
                write!(
                    f,
                    " (vm {}, bridge {}, mtu {}",
                    p.vm,
                    p.master.as_deref().unwrap_or("-"),
                    p.mtu
                )?;
                match &p.kind {
                    PortKind::Tap { owner, multi_queue } => {
                        if let Some(o) = owner {
                            write!(f, ", owner uid {o}")?;
                        }
                        if *multi_queue {
                            write!(f, ", multiqueue")?;
                        }
                    }
                    PortKind::Macvtap { .. } => {}
                    PortKind::Veth { netns, guest } => {
                        write!(f, ", guest {netns}/{} mac {}", guest.name, guest.mac)?;
                        if let Some(a) = guest.addr {
                            write!(f, " ipv4 {a}")?;
                        }
                    }
                }
                write!(f, ")")
            }
            CreateBond(b) => {
                write!(f, " (mode {}, miimon {}", b.mode, b.miimon)?;
                if !b.lacp_rate.is_empty() {
                    write!(f, ", lacp_rate {}", b.lacp_rate)?;
                }
                write!(
                    f,
                    ", xmit_hash_policy {}, min_links {}, mtu {})",
                    b.xmit_hash_policy, b.min_links, b.mtu
                )
            }
            UpdateBond { from, to } => write_changes(f, &bond_changes(from, to)),
            SetBondMember { from, to, .. } => write!(
                f,
                ": bond {} -> {}",
                from.as_deref().unwrap_or("(none)"),
                to.as_deref().unwrap_or("(none)")
            ),
            SetMtu { from, to, .. } => write!(f, ": {from} -> {to}"),
            UpdateBridge { from, to } => write_changes(f, &bridge_changes(from, to)),
            UpdatePort { from, to } => write_changes(f, &port_changes(from, to)),
            SetMaster { from, to, .. } => write!(
                f,
                ": master {} -> {}",
                from.as_deref().unwrap_or("(none)"),
                to.as_deref().unwrap_or("(none)")
            ),
            SetSysctl { from, to, .. } => write!(f, ": {from} -> {to}"),
            SetEthtool { from, to, .. } => {
                let word = |k: &str, v: u32| {
                    if k.contains('.') {
                        v.to_string()
                    } else if v != 0 {
                        "on".to_string()
                    } else {
                        "off".to_string()
                    }
                };
                let parts: Vec<String> = to
                    .iter()
                    .map(|(k, v)| match from.get(k) {
                        Some(old) => format!("{k} {} -> {}", word(k, *old), word(k, *v)),
                        None => format!("{k} -> {}", word(k, *v)),
                    })
                    .collect();
                write!(f, ": {}", parts.join(", "))
            }
            AddAddr { addr, .. } | DelAddr { addr, .. } => {
                let full = addr.to_string();
                match full.strip_prefix(&addr.cidr.to_string()) {
                    Some(extra) if !extra.is_empty() => write!(f, "{extra}"),
                    _ => Ok(()),
                }
            }
            SetShaping { from, to, .. } => match (from, to) {
                (_, Some(t)) => write!(f, ": {}", shaping_word(t)),
                (Some(h), None) => write!(f, " (was {})", shaping_word(h)),
                (None, None) => Ok(()),
            },
            SetNft { to: Some(t), .. } => write!(f, " ({} rules)", t.rule_count()),
            Nft(c) => write!(f, "{}", c.detail()),
            _ => Ok(()),
        }
    }
}

fn write_changes(f: &mut fmt::Formatter<'_>, v: &Value) -> fmt::Result {
    if let Some(m) = v.as_object() {
        let parts: Vec<String> = m
            .iter()
            .map(|(k, c)| {
                format!(
                    "{k} {} -> {}",
                    c["from"].as_str().unwrap_or(""),
                    c["to"].as_str().unwrap_or("")
                )
            })
            .collect();
        write!(f, ": {}", parts.join(", "))?;
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({ "changes": self.steps.iter().map(Step::to_json).collect::<Vec<_>>() })
    }

    pub fn render(&self) -> String {
        if self.steps.is_empty() {
            return "No changes: the host matches the spec.\n".to_string();
        }
        let mut s = String::new();
        let (mut add, mut change, mut del) = (0, 0, 0);
        for st in &self.steps {
            s.push_str(&format!("{st}\n"));
            match st.op() {
                "create" | "add" => add += 1,
                "delete" | "remove" => del += 1,
                _ => change += 1,
            }
        }
        s.push_str(&format!(
            "Plan: {add} to add, {change} to change, {del} to remove.\n"
        ));
        s
    }
}

fn list_diff<T: Clone + PartialEq>(have: &[T], want: &[T]) -> (Vec<T>, Vec<T>) {
    let del = have.iter().filter(|x| !want.contains(x)).cloned().collect();
    let add = want.iter().filter(|x| !have.contains(x)).cloned().collect();
    (del, add)
}

/// The ordered steps that turn `have` into `want`.
///
/// Order: namespaces and bridges first; uplinks enslaved or released; routes and addresses
/// moved (old routes out before addresses move, new routes in after); the firewall before any
/// port comes up; ports that go away before new ones are made; sysctls (forwarding) only once
/// the firewall is in place; bridges and namespaces removed last.
pub fn diff(want: &HostState, have: &HostState) -> Plan {
    // The tables' part needs nothing from the rest and is the biggest on a large host (a
    // thousand chains): it is worked out alongside.
    std::thread::scope(|s| {
        let nft = s.spawn(|| crate::nft::diff(want.nft.as_ref(), have.nft.as_ref()));
        diff_with(want, have, move || {
            nft.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    })
}

#[allow(
    clippy::too_many_lines,
    reason = "step order written as statement order; to become ordering as data (#14)"
)]
fn diff_with(want: &HostState, have: &HostState, nft: impl FnOnce() -> NftPlan) -> Plan {
    let mut steps = Vec::new();

    for n in want.netns.difference(&have.netns) {
        steps.push(Step::CreateNetns(n.clone()));
    }

    // NIC MTUs first: a bridge or VXLAN device on top was planned with the new MTU.
    for (name, mtu) in &want.mtus {
        if let Some(cur) = have.mtus.get(name)
            && cur != mtu
        {
            steps.push(Step::SetMtu {
                link: name.clone(),
                from: *cur,
                to: *mtu,
            });
        }
    }

    // A bond of another mode is made again: everything comes off the old one first, and the
    // rest of the plan then sees no bond and builds it like a new one.
    let replaced: Vec<BondLink> = have
        .bonds
        .values()
        .filter(|h| want.bonds.get(&h.name).is_some_and(|w| h.needs_replace(w)))
        .cloned()
        .collect();
    let rest;
    let have = if replaced.is_empty() {
        have
    } else {
        let mut h2 = have.clone();
        for old in &replaced {
            steps.extend(take_down_bond(&mut h2, old));
        }
        rest = h2;
        &rest
    };
    // New bonds exist before anything that uses them (a bridge enslaving one).
    for (name, b) in &want.bonds {
        if !have.bonds.contains_key(name) {
            steps.push(Step::CreateBond(b.without_primary()));
        }
    }
    for (name, b) in &want.bridges {
        match have.bridges.get(name) {
            None => steps.push(Step::CreateBridge(b.clone())),
            Some(h) if h != b => steps.push(Step::UpdateBridge {
                from: h.clone(),
                to: b.clone(),
            }),
            _ => {}
        }
    }
    for (name, u) in &want.uplinks {
        let from = have.uplinks.get(name).and_then(|h| h.master.clone());
        // A former bridge uplink that joins a bond is released from its bridge here; once
        // in its bond, the bond-member steps own its master.
        let in_bond = u.master.is_none()
            && want.members.get(name).is_some_and(|m| m.bond.is_some())
            && from.as_ref().is_some_and(|f| !have.bridges.contains_key(f));
        if from != u.master && !in_bond {
            steps.push(Step::SetMaster {
                link: name.clone(),
                from,
                to: u.master.clone(),
            });
        }
    }

    let devs: BTreeSet<&String> = want.addrs.keys().chain(have.addrs.keys()).collect();
    let empty_a = Vec::new();
    let empty_r = Vec::new();
    let mut del_routes = Vec::new();
    let mut add_routes = Vec::new();
    let mut del_addrs = Vec::new();
    let mut add_addrs = Vec::new();
    let route_devs: BTreeSet<&String> = want.routes.keys().chain(have.routes.keys()).collect();
    for dev in &route_devs {
        let (d, a) = list_diff(
            have.routes.get(*dev).unwrap_or(&empty_r),
            want.routes.get(*dev).unwrap_or(&empty_r),
        );
        del_routes.extend(d.into_iter().map(|route| Step::DelRoute {
            dev: (*dev).clone(),
            route,
        }));
        add_routes.extend(a.into_iter().map(|route| Step::AddRoute {
            dev: (*dev).clone(),
            route,
        }));
    }
    for dev in &devs {
        let (d, a) = list_diff(
            have.addrs.get(*dev).unwrap_or(&empty_a),
            want.addrs.get(*dev).unwrap_or(&empty_a),
        );
        del_addrs.extend(d.into_iter().map(|addr| Step::DelAddr {
            dev: (*dev).clone(),
            addr,
        }));
        add_addrs.extend(a.into_iter().map(|addr| Step::AddAddr {
            dev: (*dev).clone(),
            addr,
        }));
    }
    steps.extend(del_routes);
    steps.extend(del_addrs);

    // Members join or leave bonds once their addresses and routes are off them (taking a
    // member down would drop its routes); a primary is cleared before its bond loses it.
    for (name, h) in &have.bonds {
        if !want.bonds.contains_key(name) && h.primary.is_some() {
            steps.push(Step::UpdateBond {
                from: h.clone(),
                to: h.without_primary(),
            });
        }
    }
    // A new bond takes the MAC of the first member it gets: its home member joins first.
    let mut joins: Vec<(&String, &crate::state::MemberLink)> = want.members.iter().collect();
    joins.sort_by_key(|(name, m)| {
        let home = m
            .bond
            .as_ref()
            .and_then(|b| want.bonds.get(b))
            .is_some_and(|b| b.home == **name);
        (!home, *name)
    });
    for (name, m) in joins {
        let from = have.members.get(name).and_then(|h| h.bond.clone());
        if from != m.bond {
            steps.push(Step::SetBondMember {
                link: name.clone(),
                from,
                to: m.bond.clone(),
            });
        }
    }
    for (name, b) in &want.bonds {
        let from = have
            .bonds
            .get(name)
            .cloned()
            .unwrap_or_else(|| b.without_primary());
        if &from != b {
            steps.push(Step::UpdateBond {
                from,
                to: b.clone(),
            });
        }
    }
    steps.extend(add_addrs);
    steps.extend(add_routes);

    match nft() {
        NftPlan::Nothing => {}
        NftPlan::Replace => steps.push(Step::SetNft {
            from: have.nft.clone(),
            to: want.nft.clone(),
        }),
        NftPlan::Changes(c) => steps.extend(c.into_iter().map(Step::Nft)),
    }

    // Ports that go away leave first, so a new port may take the name their far end had.
    let mut port_steps = Vec::new();
    // Ports deleted (for good or to be made again): the kernel takes their VLAN
    // sub-interfaces with them, so the plan removes those first and makes them again after.
    let mut remade: BTreeSet<&String> = BTreeSet::new();
    for (name, p) in &have.ports {
        if !want.ports.contains_key(name) {
            port_steps.push(Step::DeletePort(p.clone()));
            remade.insert(name);
        }
    }
    // Changed ports come after the new ones: a change may mirror to a port made here.
    let mut updates = Vec::new();
    for (name, p) in &want.ports {
        match have.ports.get(name) {
            None => port_steps.push(Step::CreatePort(p.clone())),
            Some(h) if h.needs_replace(p) || guest_missing(h) => {
                port_steps.push(Step::DeletePort(h.clone()));
                port_steps.push(Step::CreatePort(p.clone()));
                remade.insert(name);
            }
            Some(h) if h != p => updates.push(Step::UpdatePort {
                from: h.clone(),
                to: p.clone(),
            }),
            _ => {}
        }
    }
    port_steps.extend(updates);
    // VLAN sub-interfaces: an id, lower device or setting that differs makes one again. They
    // leave before the ports and bridges they hang on, and come after them.
    let vlan_stale =
        |name: &String, v: &VlanLink| want.vlans.get(name) != Some(v) || remade.contains(&v.parent);
    for (name, h) in &have.vlans {
        if vlan_stale(name, h) {
            steps.push(Step::DeleteVlan(h.clone()));
        }
    }
    steps.extend(port_steps);
    for link in &want.raise {
        steps.push(Step::SetUp {
            link: link.clone(),
            from: false,
            to: true,
        });
    }
    for link in &want.lower {
        steps.push(Step::SetUp {
            link: link.clone(),
            from: true,
            to: false,
        });
    }
    for (name, w) in &want.vlans {
        match have.vlans.get(name) {
            Some(h) if !vlan_stale(name, h) => {}
            _ => steps.push(Step::CreateVlan(w.clone())),
        }
    }

    // VXLAN devices (after the bridges they join exist). Their settings cannot change in
    // place: a device that differs is made again, its flood entries removed first and added
    // back after, so every step has an exact inverse.
    let no_fdb = Vec::new();
    for (name, h) in &have.vxlans {
        let w = want.vxlans.get(name);
        if w != Some(h) {
            for dst in have.fdb.get(name).unwrap_or(&no_fdb) {
                steps.push(Step::DelFdb {
                    dev: name.clone(),
                    dst: *dst,
                });
            }
            steps.push(Step::DeleteVxlan(h.clone()));
        }
    }
    for (name, w) in &want.vxlans {
        let want_fdb = want.fdb.get(name).unwrap_or(&no_fdb);
        if have.vxlans.get(name) != Some(w) {
            steps.push(Step::CreateVxlan(w.clone()));
            for dst in want_fdb {
                steps.push(Step::AddFdb {
                    dev: name.clone(),
                    dst: *dst,
                });
            }
            continue;
        }
        let (del, add) = list_diff(have.fdb.get(name).unwrap_or(&no_fdb), want_fdb);
        for dst in del {
            steps.push(Step::DelFdb {
                dev: name.clone(),
                dst,
            });
        }
        for dst in add {
            steps.push(Step::AddFdb {
                dev: name.clone(),
                dst,
            });
        }
    }

    // Shaping, once the bridges exist; removed before a bridge goes, so that undoing the
    // removal puts it back exactly.
    let bridges: BTreeSet<&String> = want.shaping.keys().chain(have.shaping.keys()).collect();
    for bridge in bridges {
        let (w, h) = (want.shaping.get(bridge), have.shaping.get(bridge));
        if w != h {
            steps.push(Step::SetShaping {
                bridge: bridge.clone(),
                from: h.cloned(),
                to: w.cloned(),
            });
        }
    }

    // ethtool settings once every device exists. A device this plan makes starts from its
    // defaults, whatever the device it replaces had.
    let fresh: BTreeSet<String> = steps
        .iter()
        .filter_map(|s| match s {
            Step::CreatePort(p) => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    for (dev, w) in &want.ethtool {
        let h = have.ethtool.get(dev).filter(|_| !fresh.contains(dev));
        let mut from = EthtoolValues::new();
        let mut to = EthtoolValues::new();
        for (k, v) in w {
            let cur = h.and_then(|h| h.get(k));
            if cur != Some(v) {
                to.insert(k.clone(), *v);
                if let Some(c) = cur {
                    from.insert(k.clone(), *c);
                }
            }
        }
        if !to.is_empty() {
            steps.push(Step::SetEthtool {
                dev: dev.clone(),
                from,
                to,
            });
        }
    }

    for (k, v) in &want.sysctls {
        if let Some(cur) = have.sysctls.get(k)
            && cur != v
        {
            steps.push(Step::SetSysctl {
                key: k.clone(),
                from: cur.clone(),
                to: v.clone(),
            });
        }
    }

    for (name, b) in &have.bridges {
        if !want.bridges.contains_key(name) {
            steps.push(Step::DeleteBridge(b.clone()));
        }
    }
    for (name, b) in &have.bonds {
        if !want.bonds.contains_key(name) {
            steps.push(Step::DeleteBond(b.without_primary()));
        }
    }
    for n in have.netns.difference(&want.netns) {
        steps.push(Step::DeleteNetns(n.clone()));
    }
    Plan { steps }
}

/// The steps that take `old` apart (addresses and routes off, out of its bridge, members
/// released, deleted), and `have` updated as if they had run.
fn take_down_bond(have: &mut HostState, old: &BondLink) -> Vec<Step> {
    let name = &old.name;
    let mut steps = Vec::new();
    // Devices stacked on the bond die with it: they go first, explicitly, so that the rest
    // of the plan makes them again on the new bond and undoing puts them back.
    let vlans: Vec<String> = have
        .vlans
        .values()
        .filter(|v| v.parent == *name)
        .map(|v| v.name.clone())
        .collect();
    for v in vlans {
        if let Some(link) = have.vlans.remove(&v) {
            steps.push(Step::DeleteVlan(link));
        }
    }
    let vxlans: Vec<String> = have
        .vxlans
        .values()
        .filter(|v| v.underlay == *name)
        .map(|v| v.name.clone())
        .collect();
    for v in vxlans {
        for dst in have.fdb.remove(&v).unwrap_or_default() {
            steps.push(Step::DelFdb {
                dev: v.clone(),
                dst,
            });
        }
        if let Some(link) = have.vxlans.remove(&v) {
            steps.push(Step::DeleteVxlan(link));
        }
    }
    for route in have.routes.remove(name).unwrap_or_default() {
        steps.push(Step::DelRoute {
            dev: name.clone(),
            route,
        });
    }
    for addr in have.addrs.remove(name).unwrap_or_default() {
        steps.push(Step::DelAddr {
            dev: name.clone(),
            addr,
        });
    }
    if let Some(u) = have.uplinks.get_mut(name)
        && u.master.is_some()
    {
        steps.push(Step::SetMaster {
            link: name.clone(),
            from: u.master.take(),
            to: None,
        });
    }
    if old.primary.is_some() {
        steps.push(Step::UpdateBond {
            from: old.clone(),
            to: old.without_primary(),
        });
    }
    for m in have.members.values_mut() {
        if m.bond.as_ref() == Some(name) {
            steps.push(Step::SetBondMember {
                link: m.name.clone(),
                from: m.bond.take(),
                to: None,
            });
        }
    }
    steps.push(Step::DeleteBond(old.without_primary()));
    have.bonds.remove(name);
    steps
}

fn guest_missing(p: &PortLink) -> bool {
    matches!(&p.kind, PortKind::Veth { guest, .. } if guest.mtu == 0)
}
