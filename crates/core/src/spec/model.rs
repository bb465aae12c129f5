//! The typed, validated spec. Everything here has already been checked: names are legal
//! interface names, addresses sit inside their subnets, references resolve. Derived values
//! (bridge and port names, MACs) are filled in, so later layers never guess.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

/// A position in the spec file, 1-based, as editors show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

// Addresses and MACs are shared with layers that must not depend on the spec.
pub use crate::types::{IpCidr, Ipv4Cidr, Ipv6Cidr, Mac};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Nat,
    Routed,
    Isolated,
    Bridge,
    /// An L2 overlay across hosts: a VXLAN device on the network's bridge.
    Vxlan,
    /// Guests directly on an uplink's segment through macvtap devices: no bridge.
    Direct,
    /// One 802.1Q VLAN of a host uplink: a VLAN sub-interface of the uplink on the
    /// network's bridge.
    Vlan,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Routed => "routed",
            Mode::Isolated => "isolated",
            Mode::Bridge => "bridge",
            Mode::Vxlan => "vxlan",
            Mode::Direct => "direct",
            Mode::Vlan => "vlan",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub version: u32,
    pub host: Host,
    /// Keyed by network name.
    pub networks: BTreeMap<String, Network>,
    /// Keyed by VM name.
    pub vms: BTreeMap<String, Vm>,
    /// Where each field path (`networks.default.ipv4`, `vms.web1.ports[0].owner`) sits in the
    /// file, so checks that need the live host (a missing uplink, an unknown user) can still
    /// point at the line.
    pub locs: LocMap,
    /// The host and scope derived MACs are made for.
    pub identity: super::macs::HostIdentity,
    /// The `ovn` section, with the networks on OVN and their VM ports (see [`super::ovn`]).
    pub ovn: Option<super::ovn::Ovn>,
}

/// Paths and their locations, shared: those of one VM entry, with lines counted from the
/// line the entry starts at.
pub type LocPart = (std::sync::Arc<Vec<(String, Loc)>>, usize);

/// Field paths and where they were written. Most of it is looked at only to place an error,
/// so a spec cache shares the parts of unchanged VM entries between specs (with the line
/// each entry starts at) instead of copying thousands of paths for every spec.
#[derive(Clone, Debug, Default)]
pub struct LocMap {
    map: BTreeMap<String, Loc>,
    /// Paths with lines counted from `.1` (added to each); a later part wins over an earlier
    /// one and over `map`, as a later entry wins within a part.
    parts: Vec<LocPart>,
}

impl LocMap {
    pub fn new(map: BTreeMap<String, Loc>, parts: Vec<LocPart>) -> LocMap {
        LocMap { map, parts }
    }

    pub fn get(&self, path: &str) -> Option<Loc> {
        for (part, line) in self.parts.iter().rev() {
            if let Some((_, l)) = part.iter().rev().find(|(p, _)| p == path) {
                return Some(Loc {
                    line: l.line + line,
                    col: l.col,
                });
            }
        }
        self.map.get(path).copied()
    }

    pub fn contains_key(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Every path with its location, in path order.
    pub fn to_map(&self) -> BTreeMap<String, Loc> {
        let mut m = self.map.clone();
        for (part, line) in &self.parts {
            for (p, l) in part.iter() {
                m.insert(
                    p.clone(),
                    Loc {
                        line: l.line + line,
                        col: l.col,
                    },
                );
            }
        }
        m
    }
}

impl PartialEq for LocMap {
    fn eq(&self, other: &LocMap) -> bool {
        self.to_map() == other.to_map()
    }
}

impl Eq for LocMap {}

impl From<BTreeMap<String, Loc>> for LocMap {
    fn from(map: BTreeMap<String, Loc>) -> LocMap {
        LocMap {
            map,
            parts: Vec::new(),
        }
    }
}

impl Spec {
    /// The bond `name` if the spec declares one: such an uplink may not exist yet, since kvmnet
    /// creates it before anything that uses it. Every "does this uplink exist" check asks
    /// this first.
    pub fn declared_bond(&self, name: &str) -> Option<&Bond> {
        self.host.uplinks.get(name).and_then(|u| u.bond.as_ref())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Host {
    /// sysctl key (dotted, `net.ipv4.ip_forward`) to value, as written.
    pub sysctl: BTreeMap<String, String>,
    /// A named sysctl profile; `sysctl` entries override its values.
    pub tuning: Option<Tuning>,
    /// ethtool settings of host interfaces kvmnet does not own, by interface name (from the
    /// uplink section of a spec); their previous values are restored on destroy.
    pub ethtool: BTreeMap<String, Ethtool>,
    /// Host uplinks kvmnet builds (bonds) or tunes (existing NICs), keyed by interface name.
    pub uplinks: BTreeMap<String, Uplink>,
}

/// ethtool settings of one interface: only the keys the spec sets, each by kvmnet's name
/// (`tso`, `gso`, `gro`, `lro`, `rx_checksum`, `tx_checksum`, `rings.rx`, `rings.tx`,
/// `channels.combined`, `channels.rx`, `channels.tx`) with its value (offloads 0 or 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ethtool {
    pub settings: BTreeMap<String, u32>,
    /// The spec path of the `ethtool` mapping, so a problem found on the host can point at
    /// the line of the setting (see [`Ethtool::field_path`]).
    pub path: String,
}

impl Ethtool {
    /// Where setting `key` sits in the spec: offloads are under `offloads.`.
    pub fn field_path(&self, key: &str) -> String {
        if key.contains('.') {
            format!("{}.{key}", self.path)
        } else {
            format!("{}.offloads.{key}", self.path)
        }
    }
}

/// One entry of `host.uplinks`: a bond kvmnet creates (`bond` set) or an existing NIC it only
/// tunes. Later settings (offloads, rings) join as further optional fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub bond: Option<Bond>,
    pub mtu: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BondMode {
    BalanceRr,
    ActiveBackup,
    BalanceXor,
    Broadcast,
    Lacp,
    BalanceTlb,
    BalanceAlb,
}

impl BondMode {
    pub const ALL: [BondMode; 7] = [
        BondMode::BalanceRr,
        BondMode::ActiveBackup,
        BondMode::BalanceXor,
        BondMode::Broadcast,
        BondMode::Lacp,
        BondMode::BalanceTlb,
        BondMode::BalanceAlb,
    ];
    /// The name the kernel and iproute2 use.
    pub fn as_str(&self) -> &'static str {
        match self {
            BondMode::BalanceRr => "balance-rr",
            BondMode::ActiveBackup => "active-backup",
            BondMode::BalanceXor => "balance-xor",
            BondMode::Broadcast => "broadcast",
            BondMode::Lacp => "802.3ad",
            BondMode::BalanceTlb => "balance-tlb",
            BondMode::BalanceAlb => "balance-alb",
        }
    }
    /// IFLA_BOND_MODE value.
    pub fn number(&self) -> u8 {
        Self::ALL.iter().position(|m| m == self).unwrap_or(0) as u8
    }
    pub fn from_number(n: u8) -> Option<BondMode> {
        Self::ALL.get(usize::from(n)).copied()
    }
    pub fn parse(s: &str) -> Option<BondMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
    /// Modes that balance by a hash of the packet headers.
    pub fn hashes(&self) -> bool {
        matches!(self, BondMode::Lacp | BondMode::BalanceXor)
    }
    /// Modes with one active member that a `primary` may name.
    pub fn has_primary(&self) -> bool {
        matches!(
            self,
            BondMode::ActiveBackup | BondMode::BalanceTlb | BondMode::BalanceAlb
        )
    }
}

/// xmit_hash_policy names, in IFLA_BOND_XMIT_HASH_POLICY order.
pub const XMIT_HASH_POLICIES: [&str; 5] =
    ["layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4"];
/// lacp_rate names, in IFLA_BOND_AD_LACP_RATE order.
pub const LACP_RATES: [&str; 2] = ["slow", "fast"];
/// Link monitoring interval kvmnet sets when the spec gives none: without it the bond never
/// notices a dead member.
pub const MIIMON_DEFAULT: u32 = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bond {
    pub mode: BondMode,
    /// In the order written: the first one's addresses move to the bond and come back to it.
    pub members: Vec<String>,
    /// `fast` (LACPDUs every second) or `slow` (every 30 s); 802.3ad only.
    pub lacp_rate: Option<String>,
    pub xmit_hash_policy: Option<String>,
    pub miimon: Option<u32>,
    pub min_links: Option<u32>,
    pub primary: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tuning {
    Throughput,
    Latency,
}

impl Tuning {
    /// The documented sysctl set of each profile (see the README).
    pub fn sysctls(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Tuning::Throughput => &[
                ("net.core.rmem_max", "134217728"),
                ("net.core.wmem_max", "134217728"),
                ("net.core.rmem_default", "1048576"),
                ("net.core.wmem_default", "1048576"),
                ("net.ipv4.tcp_rmem", "4096 1048576 134217728"),
                ("net.ipv4.tcp_wmem", "4096 1048576 134217728"),
                ("net.ipv4.tcp_moderate_rcvbuf", "1"),
                ("net.ipv4.tcp_window_scaling", "1"),
                ("net.ipv4.tcp_mtu_probing", "1"),
                ("net.core.netdev_max_backlog", "250000"),
                ("net.core.netdev_budget", "600"),
                ("net.core.somaxconn", "8192"),
                ("net.ipv4.tcp_max_syn_backlog", "8192"),
            ],
            Tuning::Latency => &[
                ("net.core.busy_poll", "50"),
                ("net.core.busy_read", "50"),
                ("net.ipv4.tcp_fastopen", "3"),
                ("net.ipv4.tcp_slow_start_after_idle", "0"),
                ("net.ipv4.tcp_notsent_lowat", "16384"),
                ("net.core.netdev_budget", "300"),
                ("net.core.somaxconn", "4096"),
            ],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub mode: Mode,
    /// Bridge device name, given or derived; empty on `direct` networks, which have none.
    pub bridge: String,
    /// Gateway address on the bridge plus the subnet. Required for nat/routed/isolated;
    /// absent for `bridge` mode.
    pub ipv4: Option<Ipv4Cidr>,
    pub mtu: Option<u32>,
    /// `bridge` mode: the host interface enslaved to the bridge.
    pub uplink: Option<String>,
    /// `nat` mode: masquerade only when leaving through this interface (`nat.egress`).
    pub nat_egress: Option<String>,
    pub dhcp: Option<Dhcp>,
    /// Ports reach the gateway and the outside but not each other (bridge port isolation).
    pub isolate_ports: bool,
    /// `nat` mode: host ports forwarded to a VM (DNAT), also from the host itself.
    pub forwards: Vec<Forward>,
    /// `vxlan` mode: the overlay's settings.
    pub vxlan: Option<Vxlan>,
    /// Total rate of traffic the host sends into the network (bits/s): the bridge is shaped to
    /// it, and ports' `qos.floor` guarantees are shares of it.
    pub bandwidth_bps: Option<u64>,
    /// `direct` mode: the macvtap mode of its ports (`uplink` is their lower device).
    pub direct_mode: Option<DirectMode>,
    /// `vlan` mode: the VLAN and the uplink that carries it.
    pub vlan: Option<Vlan>,
    /// nat, routed and isolated networks: what guests may reach on the host besides DHCP
    /// and ICMP echo to the gateway (`host_access`), as firewall rules; the rest is dropped.
    pub host_access: Vec<FirewallRule>,
    /// bridge, vlan and vxlan networks: the /64 prefixes the LAN's router announces
    /// (`ipv6_prefixes`); a guarded port may use the SLAAC (EUI-64) address of its MAC in
    /// each.
    pub ipv6_prefixes: Vec<Ipv6Cidr>,
    /// nat, routed and isolated networks: the gateway's IPv6 address and prefix (`ipv6`),
    /// with the network's router advertisements and NAT66 (see [`super::ipv6`]).
    pub ipv6: Option<super::NetIpv6>,
    /// nat, routed and isolated networks: the DNS service on the gateway (`dns`).
    pub dns: Option<super::dns::Dns>,
}

/// How macvtap ports on one uplink reach each other (the kernel's macvlan modes).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DirectMode {
    /// Ports reach each other inside the host, and the uplink's segment.
    Bridge,
    /// Everything goes out through the uplink; port-to-port only if the switch hairpins.
    Vepa,
    /// Ports never reach each other, only the uplink's segment.
    Private,
    /// One port takes over the uplink (its MAC and promiscuity).
    Passthrough,
}

impl DirectMode {
    /// The spec's word for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            DirectMode::Bridge => "bridge",
            DirectMode::Vepa => "vepa",
            DirectMode::Private => "private",
            DirectMode::Passthrough => "passthrough",
        }
    }
    /// `IFLA_MACVLAN_MODE` values (linux/if_link.h).
    pub fn kernel_value(&self) -> u32 {
        match self {
            DirectMode::Private => 1,
            DirectMode::Vepa => 2,
            DirectMode::Bridge => 4,
            DirectMode::Passthrough => 8,
        }
    }
    pub fn from_kernel(v: u32) -> Option<DirectMode> {
        Some(match v {
            1 => DirectMode::Private,
            2 => DirectMode::Vepa,
            4 => DirectMode::Bridge,
            8 => DirectMode::Passthrough,
            _ => return None,
        })
    }
    pub fn parse(s: &str) -> Option<DirectMode> {
        Some(match s {
            "bridge" => DirectMode::Bridge,
            "vepa" => DirectMode::Vepa,
            "private" => DirectMode::Private,
            "passthrough" => DirectMode::Passthrough,
            _ => return None,
        })
    }
}

/// Highest usable 802.1Q VLAN id (4095 is reserved).
pub const VLAN_ID_MAX: u16 = 4094;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub id: u16,
    /// The host interface (foreign: kvmnet only brings it up) that carries the tagged frames.
    pub uplink: String,
    /// The 802.1Q sub-interface of the uplink, enslaved to the network's bridge
    /// (`UPLINK.ID`, or a derived short name when that exceeds 15 characters).
    pub device: String,
}

/// One tagged VLAN of a trunk port: an 802.1Q sub-interface of the port's host end,
/// enslaved to the bridge of the vlan network that serves that VLAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trunk {
    pub vid: u16,
    pub network: String,
    pub device: String,
}

/// VXLAN default UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN over IPv4 adds to each frame: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner
/// Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vxlan {
    /// The VXLAN device's name (derived from the network name).
    pub device: String,
    pub vni: u32,
    /// The host interface whose first IPv4 address is the local tunnel endpoint.
    pub underlay: String,
    /// Unicast peers (flooded to through all-zeros FDB entries); empty with `group`.
    pub remotes: Vec<Ipv4Addr>,
    /// Multicast group for flooding; `None` with `remotes`.
    pub group: Option<Ipv4Addr>,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub proto: Proto,
    /// The port on the host's addresses.
    pub port: u16,
    /// The VM it goes to, and the address of that VM's port on this network.
    pub to: String,
    pub to_ip: Ipv4Addr,
    /// The same port's declared `ipv6`, on a network with `ipv6`: forwarded for IPv6 too.
    pub to_ip6: Option<std::net::Ipv6Addr>,
    pub to_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp {
    /// Pool for MACs the spec does not reserve, inclusive.
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    /// `pool: false` serves reservations only.
    pub pool: bool,
    pub lease_time_secs: u64,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub routes: Vec<DhcpRoute>,
    /// The DHCPv6 pool (`range6`), inclusive, inside the network's `ipv6` prefix.
    pub range6: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
    /// DNS servers DHCPv6 hands out (`dns6`, option 23).
    pub dns6: Vec<std::net::Ipv6Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpRoute {
    pub to: Ipv4Cidr,
    pub via: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub ports: Vec<Port>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    Tap,
    Veth,
    /// Every port of a `direct` network: a macvtap device on the network's uplink.
    Macvtap,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    User(String),
    Uid(u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub vm: String,
    /// Position in the VM's `ports` list.
    pub index: usize,
    pub network: String,
    /// Host-side device name, given or derived.
    pub name: String,
    pub kind: PortKind,
    /// The VM's MAC (given or derived). The host end of the port uses the same address with
    /// its first octet replaced by 0xfe, as libvirt does, so the bridge never takes it.
    pub mac: Mac,
    /// `mac` was derived (see [`super::macs`]), not written.
    pub mac_derived: bool,
    /// The VM's address with its prefix: the network's prefix on nat/routed/isolated networks,
    /// the written prefix on `bridge` networks.
    pub ipv4: Option<Ipv4Cidr>,
    /// A static IPv6 address on a network with `ipv6` (set inside a veth's namespace).
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub owner: Option<Owner>,
    pub queues: u32,
    /// veth: the namespace that receives the far end.
    pub netns: Option<String>,
    /// Drop frames from this port whose MAC, IPv4 or ARP sender is not the port's, DHCP
    /// server replies and IPv6 router advertisements (default true).
    pub antispoof: bool,
    /// veth: leave the far end unaddressed, for a DHCP client in the namespace.
    pub dhcp_client: bool,
    /// Stateful per-port firewall, directions as the VM sees them. Shared: thousands of
    /// ports may have one each, and every spec a daemon parses copies every port.
    pub firewall: Option<std::sync::Arc<Firewall>>,
    /// Traffic shaping, directions as the VM sees them.
    pub qos: Option<Qos>,
    /// Copy this port's traffic, both ways, to the port with this (host-side) name.
    pub mirror: Option<String>,
    /// Offloads, rings and channels of the port's host-side device.
    pub ethtool: Option<Ethtool>,
    /// Trunk port: the VLANs it carries tagged (`vlans`), in the order written. Empty for an
    /// access port.
    pub trunk: Vec<Trunk>,
}

impl Port {
    /// Whether the port's own network reaches the VM untagged: always on an access port, and
    /// on a trunk port unless its own VLAN is listed in `vlans`.
    pub fn has_native(&self) -> bool {
        !self.trunk.iter().any(|t| t.network == self.network)
    }

    /// The host-side interface that carries the port's own network: the port itself, or the
    /// sub-interface of its own VLAN on a trunk that tags it.
    pub fn own_interface(&self) -> &str {
        self.trunk
            .iter()
            .find(|t| t.network == self.network)
            .map_or(self.name.as_str(), |t| t.device.as_str())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qos {
    /// Traffic to the VM.
    pub inbound: Option<Shape>,
    /// Traffic from the VM.
    pub outbound: Option<Shape>,
    /// Guaranteed minimum (bits/s) of the traffic the host routes to the VM, out of its
    /// network's `bandwidth`.
    pub floor_bps: Option<u64>,
}

/// A shaping rate: HTB rate, optional ceiling and burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub rate_bps: u64,
    pub ceil_bps: Option<u64>,
    pub burst_bytes: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Firewall {
    /// Traffic to the VM.
    pub inbound: Option<FirewallDirection>,
    /// Traffic from the VM.
    pub outbound: Option<FirewallDirection>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FirewallDirection {
    /// What happens to traffic no rule decides: `true` accept, `false` drop.
    pub accept_by_default: bool,
    pub rules: Vec<FirewallRule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleProto {
    Tcp,
    Udp,
    Icmp,
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleAction {
    Accept,
    Drop,
    Reject,
}

/// ICMP type names with an ICMPv6 counterpart, as nft names each: a rule about them covers
/// both families.
pub const ICMP_V6: &[(&str, &str)] = &[
    ("echo-reply", "echo-reply"),
    ("destination-unreachable", "destination-unreachable"),
    ("echo-request", "echo-request"),
    ("time-exceeded", "time-exceeded"),
    ("parameter-problem", "parameter-problem"),
    ("router-advertisement", "nd-router-advert"),
    ("router-solicitation", "nd-router-solicit"),
    ("redirect", "nd-redirect"),
];

/// The ICMPv6 name of an ICMP type, where there is one.
pub fn icmpv6_counterpart(t: &str) -> Option<&'static str> {
    ICMP_V6.iter().find(|(v4, _)| *v4 == t).map(|(_, v6)| *v6)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FirewallRule {
    pub proto: RuleProto,
    /// Destination ports (inclusive ranges), tcp/udp only.
    pub ports: Vec<(u16, u16)>,
    /// Source and destination address matches (`from` is the remote side of inbound
    /// traffic, `to` the remote side of outbound traffic).
    /// Either family; a rule with one matches only that family.
    pub from: Option<IpCidr>,
    pub to: Option<IpCidr>,
    /// ICMP type names as nft knows them (echo-request, ...).
    pub icmp_types: Vec<String>,
    /// At most this many connections at once match the rule; more are rejected.
    pub connlimit: Option<u32>,
    /// Beyond this rate (`10/second`) matching new connections are dropped; for ICMP, which
    /// has no real connections, matching packets are.
    pub rate: Option<(u32, String)>,
    pub action: RuleAction,
    pub log: bool,
}
