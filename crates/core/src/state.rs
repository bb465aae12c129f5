//! The objects kvmnet manages, as plain values. Both the desired state (from the spec) and the
//! observed state (from the kernel) are a `HostState`, so planning is a diff of two values.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::nft::NftTable;
use crate::spec::{Ipv4Cidr, Mac};

/// Every link kvmnet creates carries an alias starting with this word; that is how kvmnet
/// recognises its own objects without any state file.
pub const MARK: &str = "kvmnet";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    /// Guest namespaces kvmnet created and therefore owns.
    pub netns: BTreeSet<String>,
    pub bridges: BTreeMap<String, BridgeLink>,
    /// Foreign host interfaces kvmnet enslaves (bridge-mode uplinks). Only their master and
    /// addresses are managed.
    pub uplinks: BTreeMap<String, UplinkLink>,
    pub ports: BTreeMap<String, PortLink>,
    /// IPv4 addresses of bridges and uplinks, in the order they were added.
    pub addrs: BTreeMap<String, Vec<Addr>>,
    /// IPv6 addresses kvmnet puts on its bridges (the gateway's `ipv6`); the kernel adds
    /// the prefix route with each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addrs6: BTreeMap<String, Vec<crate::spec::Ipv6Cidr>>,
    /// Non-kernel IPv4 routes through bridges and uplinks.
    pub routes: BTreeMap<String, Vec<Route>>,
    pub nft: Option<NftTable>,
    pub sysctls: BTreeMap<String, String>,
    /// VXLAN devices of `vxlan` networks.
    #[serde(default)]
    pub vxlans: BTreeMap<String, VxlanLink>,
    /// Flood entries (all-zeros MAC) of each VXLAN device: the unicast remotes.
    #[serde(default)]
    pub fdb: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Shaping of the traffic the host sends into a network, at its bridge (by bridge name).
    #[serde(default)]
    pub shaping: BTreeMap<String, Shaping>,
    /// ethtool settings by interface (kvmnet's ports or foreign interfaces), only the keys
    /// that matter: desired, those the spec sets (or restores); observed, what the device
    /// reports.
    #[serde(default)]
    pub ethtool: BTreeMap<String, EthtoolValues>,
    /// 802.1Q sub-interfaces: of vlan networks' uplinks, and of trunk ports.
    #[serde(default)]
    pub vlans: BTreeMap<String, VlanLink>,
    /// Foreign interfaces found down that must be up: the uplinks of vlan networks (a VLAN
    /// sub-interface cannot come up on a lower device that is down). Only a desired state
    /// holds any; once up, there is nothing left to do.
    #[serde(default)]
    pub raise: BTreeSet<String>,
    /// Foreign interfaces kvmnet brought up (see `raise`) that no spec needs up any more:
    /// given back, down. Only a desired state holds any.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lower: BTreeSet<String>,
    /// Bonds of `host.uplinks`.
    #[serde(default)]
    pub bonds: BTreeMap<String, BondLink>,
    /// Foreign host interfaces kvmnet enslaves to its bonds (or releases from them). Only
    /// their master and addresses are managed.
    #[serde(default)]
    pub members: BTreeMap<String, MemberLink>,
    /// MTUs of foreign host interfaces that `host.uplinks` tunes (or whose original MTU is
    /// being restored).
    #[serde(default)]
    pub mtus: BTreeMap<String, u32>,
    /// kvmnet's rows in OVN's Northbound database, by [`crate::ovn::NbRow::id`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Shared, not copied: a daemon's view of the database holds the same rows.
    pub nb: crate::ovn::memo::RowMap,
    /// This host as an OVN chassis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<crate::ovn::ChassisConf>,
}

/// A bond. Options are kept by their kernel names; ones a mode does not have are empty (the
/// kernel reports no lacp_rate outside 802.3ad) so desired and observed compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BondLink {
    pub name: String,
    pub mode: String,
    pub miimon: u32,
    pub lacp_rate: String,
    pub xmit_hash_policy: String,
    pub min_links: u32,
    /// Set only once its member is enslaved (the kernel takes it as an interface index).
    pub primary: Option<String>,
    pub mtu: u32,
    /// The member that gets the bond's addresses back when the bond goes: its first one.
    pub home: String,
    pub up: bool,
}

impl BondLink {
    pub fn alias(&self) -> String {
        format!("{MARK} bond home={}", self.home)
    }
    /// The kernel changes a bond's mode only while it has no members and is down: a bond
    /// of another mode is made again.
    pub fn needs_replace(&self, other: &BondLink) -> bool {
        self.mode != other.mode
    }
    pub fn without_primary(&self) -> BondLink {
        BondLink {
            primary: None,
            ..self.clone()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLink {
    pub name: String,
    pub bond: Option<String>,
}

/// An 802.1Q VLAN sub-interface, enslaved to the bridge of the network that serves its VLAN.
/// Its id and lower device cannot change in place: any difference makes it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VlanLink {
    pub name: String,
    pub network: String,
    /// The lower device (IFLA_LINK): a vlan network's uplink, or a trunk port.
    pub parent: String,
    pub vid: u16,
    /// Set for the sub-interfaces of a trunk port: they belong to that port.
    pub port: Option<String>,
    pub master: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// Bridge port isolation (a trunk sub-interface on an `isolate_ports` network).
    #[serde(default)]
    pub isolated: bool,
}

impl VlanLink {
    pub fn alias(&self) -> String {
        match &self.port {
            Some(p) => format!("{MARK} network={} trunk={p}", self.network),
            None => format!("{MARK} network={}", self.network),
        }
    }
}

/// What kvmnet moved from an uplink (or bond member) onto the bridge (or bond) that took it:
/// given back on destroy, put back when deleted by hand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Moved {
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
}

/// Floor classes (and their filters' priorities) are numbered from here: the classes below
/// are the tree's own (root, default).
pub const FLOOR_CLASS_MIN: u16 = 0x10;

/// A network's `bandwidth` and its VMs' floors, as the HTB tree on its bridge holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shaping {
    /// bits/s (a multiple of 8: the kernel keeps bytes/s).
    pub bandwidth: u64,
    /// Guaranteed rates by destination VM MAC.
    #[serde(default)]
    pub floors: BTreeMap<Mac, FloorClass>,
    /// Whether the live tree is exactly what the fields above describe (always true when
    /// desired).
    #[serde(default = "yes")]
    pub intact: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorClass {
    /// bits/s (a multiple of 8).
    pub rate: u64,
    /// The HTB class minor (1:CLASS); also its filter's priority.
    pub class: u16,
}

/// ethtool setting key (`tso`, `rings.rx`, ...) to value (offloads 0/1).
pub type EthtoolValues = BTreeMap<String, u32>;

/// A VXLAN device, enslaved to its network's bridge. Its settings cannot change in place:
/// any difference makes it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanLink {
    pub name: String,
    pub network: String,
    pub vni: u32,
    /// The underlay interface (IFLA_VXLAN_LINK) and its address (IFLA_VXLAN_LOCAL).
    pub underlay: String,
    pub local: Ipv4Addr,
    pub port: u16,
    /// Multicast group; unicast remotes are FDB entries instead.
    pub group: Option<Ipv4Addr>,
    pub learning: bool,
    pub master: Option<String>,
    pub mtu: u32,
    pub up: bool,
}

impl VxlanLink {
    pub fn alias(&self) -> String {
        format!("{MARK} network={}", self.network)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeLink {
    pub name: String,
    pub network: String,
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
}

impl BridgeLink {
    pub fn alias(&self) -> String {
        format!("{MARK} network={}", self.network)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkLink {
    pub name: String,
    pub master: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortLink {
    pub name: String,
    pub vm: String,
    pub network: String,
    /// The bridge this port is attached to.
    pub master: Option<String>,
    /// The host end's own MAC (the VM's MAC with 0xfe first).
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
    /// Bridge port isolation: no traffic to other isolated ports of the bridge.
    #[serde(default)]
    pub isolated: bool,
    /// Shaping of traffic to the VM (at this device's root) and from it (through an IFB).
    #[serde(default)]
    pub qos_in: Option<ShapeState>,
    #[serde(default)]
    pub qos_out: Option<ShapeState>,
    /// The port that receives a copy of this port's traffic.
    #[serde(default)]
    pub mirror: Option<String>,
    /// Whether the live tc setup is what the fields above say (always true when desired).
    #[serde(default = "yes")]
    pub tc_ok: bool,
    pub kind: PortKind,
}

fn yes() -> bool {
    true
}

/// A shaping rate as kvmnet records it: bits/s, ceiling bits/s (0: none), burst bytes (0:
/// default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeState {
    pub rate: u64,
    pub ceil: u64,
    pub burst: u32,
}

impl ShapeState {
    pub fn from_shape(s: &crate::spec::Shape) -> ShapeState {
        ShapeState {
            rate: s.rate_bps,
            ceil: s.ceil_bps.unwrap_or(0),
            burst: s.burst_bytes.unwrap_or(0),
        }
    }
    fn word(&self) -> String {
        format!("{}/{}/{}", self.rate, self.ceil, self.burst)
    }
    fn parse(w: &str) -> Option<ShapeState> {
        let mut it = w.split('/').map(|x| x.parse::<u64>().ok());
        let (rate, ceil, burst) = (it.next()??, it.next()??, it.next()??);
        Some(ShapeState {
            rate,
            ceil,
            burst: u32::try_from(burst).ok()?,
        })
    }
}

impl PortLink {
    /// The mark on the host end. Shaping and mirroring are recorded in it too: tc objects
    /// carry no marks of their own, and this is what lets a rollback or a revert put back
    /// exactly the traffic control kvmnet had set.
    pub fn alias(&self) -> String {
        let mut a = format!("{MARK} vm={} network={}", self.vm, self.network);
        if let PortKind::Veth { netns, guest } = &self.kind {
            a.push_str(&format!(" netns={netns}"));
            if guest.dhcp {
                a.push_str(" dhcp=1");
            }
        }
        if let Some(q) = &self.qos_in {
            a.push_str(&format!(" qin={}", q.word()));
        }
        if let Some(q) = &self.qos_out {
            a.push_str(&format!(" qout={}", q.word()));
        }
        if let Some(m) = &self.mirror {
            a.push_str(&format!(" mirror={m}"));
        }
        a
    }

    /// The mark a port carries until its traffic control is in place (see `alias`).
    pub fn alias_before_tc(&self) -> String {
        PortLink {
            qos_in: None,
            qos_out: None,
            mirror: None,
            ..self.clone()
        }
        .alias()
    }

    pub fn has_tc(&self) -> bool {
        self.qos_in.is_some() || self.qos_out.is_some() || self.mirror.is_some()
    }
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            PortKind::Tap { .. } => "tap",
            PortKind::Veth { .. } => "veth",
            PortKind::Macvtap { .. } => "macvtap",
        }
    }
    /// Differences that cannot be changed in place: the device must be made again.
    pub fn needs_replace(&self, other: &PortLink) -> bool {
        match (&self.kind, &other.kind) {
            (PortKind::Tap { .. }, PortKind::Tap { .. }) => self.kind != other.kind,
            (
                PortKind::Veth {
                    netns: a,
                    guest: ga,
                },
                PortKind::Veth {
                    netns: b,
                    guest: gb,
                },
            ) => a != b || ga.name != gb.name || ga.mtu == 0,
            // The lower device and the mode are fixed when a macvlan is made; the owner of
            // its /dev/tapN changes in place.
            (
                PortKind::Macvtap {
                    uplink: a,
                    mode: ma,
                    ..
                },
                PortKind::Macvtap {
                    uplink: b,
                    mode: mb,
                    ..
                },
            ) => a != b || ma != mb,
            _ => true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortKind {
    Tap {
        owner: Option<u32>,
        multi_queue: bool,
    },
    Veth {
        netns: String,
        guest: GuestEnd,
    },
    /// A port of a `direct` network: a macvtap on `uplink` whose MAC is the VM's own. QEMU
    /// opens its character device `/dev/tapIFINDEX`, which belongs to `owner` (uid; `None`
    /// when it is missing, as observed).
    Macvtap {
        uplink: String,
        mode: crate::spec::DirectMode,
        owner: Option<u32>,
    },
}

/// The far end of a veth port, inside its namespace: the stand-in for a VM NIC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestEnd {
    /// `eth<N>`, N being the port's position in its VM's list: `eth0` for a VM's first port.
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    pub up: bool,
    pub addr: Option<Ipv4Cidr>,
    pub gateway: Option<Ipv4Addr>,
    /// The port's `ipv6`, with the prefix length of the network prefix it lies in (added
    /// permanent and without duplicate address detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr6: Option<crate::spec::Ipv6Cidr>,
    /// The IPv6 default route's gateway: the network's gateway address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<std::net::Ipv6Addr>,
    /// A DHCP client in the namespace owns the addresses and default routes: kvmnet leaves
    /// them alone (and so does not observe them either).
    #[serde(default)]
    pub dhcp: bool,
}

/// An interface address as the kernel holds it. The broadcast address is kept as found, so an
/// address moved to a bridge and back comes back exactly as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Addr {
    pub cidr: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<Ipv4Addr>,
}

impl Addr {
    /// What `ip addr add A/P brd +` makes: the subnet's broadcast, none on /31 and /32.
    pub fn with_standard_broadcast(cidr: Ipv4Cidr) -> Addr {
        Addr {
            cidr,
            broadcast: (cidr.prefix < 31).then(|| cidr.broadcast()),
        }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.cidr)?;
        match self.broadcast {
            None if self.cidr.prefix < 31 => write!(f, " (no broadcast)"),
            Some(b) if b != self.cidr.broadcast() => write!(f, " brd {b}"),
            _ => Ok(()),
        }
    }
}

pub fn guest_ifname(port_index: usize) -> String {
    format!("eth{port_index}")
}

pub fn guest_alias(port: &str) -> String {
    format!("{MARK} port={port}")
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Route {
    pub dst: Ipv4Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub metric: Option<u32>,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub prefsrc: Option<Ipv4Addr>,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.dst.prefix == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.dst)?;
        }
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        if self.table != 254 {
            write!(f, " table {}", self.table)?;
        }
        Ok(())
    }
}

/// What an alias written by kvmnet says about its link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alias {
    pub network: Option<String>,
    pub vm: Option<String>,
    pub netns: Option<String>,
    pub port: Option<String>,
    pub qos_in: Option<ShapeState>,
    pub qos_out: Option<ShapeState>,
    pub mirror: Option<String>,
    /// The far end is configured by a DHCP client, not by kvmnet.
    pub dhcp: bool,
    /// `kvmnet ifb of PORT`: the IFB that shapes PORT's outbound traffic.
    pub ifb_of: Option<String>,
    /// A trunk port's VLAN sub-interface: the port it belongs to.
    pub trunk: Option<String>,
    /// `kvmnet bond home=MEMBER`: a bond of `host.uplinks`.
    pub bond: bool,
    pub home: Option<String>,
}

/// Whether kvmnet wrote this alias: exactly when [`parse_alias`] reads it.
pub fn is_kvmnet_alias(alias: &str) -> bool {
    alias.split_ascii_whitespace().next() == Some(MARK)
}

/// `None` when the alias is not kvmnet's.
pub fn parse_alias(alias: &str) -> Option<Alias> {
    let mut words = alias.split_ascii_whitespace();
    if words.next() != Some(MARK) {
        return None;
    }
    let mut a = Alias::default();
    let mut probe = words.clone();
    if let (Some("ifb"), Some("of"), Some(port), None) =
        (probe.next(), probe.next(), probe.next(), probe.next())
    {
        a.ifb_of = Some(port.to_string());
        return Some(a);
    }
    for w in words {
        match w.split_once('=') {
            Some(("network", v)) => a.network = Some(v.to_string()),
            Some(("vm", v)) => a.vm = Some(v.to_string()),
            Some(("netns", v)) => a.netns = Some(v.to_string()),
            Some(("port", v)) => a.port = Some(v.to_string()),
            Some(("qin", v)) => a.qos_in = ShapeState::parse(v),
            Some(("qout", v)) => a.qos_out = ShapeState::parse(v),
            Some(("mirror", v)) => a.mirror = Some(v.to_string()),
            Some(("dhcp", v)) => a.dhcp = v == "1",
            Some(("trunk", v)) => a.trunk = Some(v.to_string()),
            Some(("home", v)) => a.home = Some(v.to_string()),
            None if w == "bond" => a.bond = true,
            _ => {}
        }
    }
    Some(a)
}
