//! What observation read from the kernel, as plain data. The pure layers (desired, observed
//! state, plan) take a `Snapshot`, so golden tests can feed them one from a JSON file.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::nft::NftTable;
use crate::spec::{Ipv4Cidr, Mac};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Snapshot {
    /// `host` or the name of the namespace kvmnet runs in (`--netns`). Guest namespaces that
    /// kvmnet creates are tagged with it, so two sandboxes never claim each other's.
    pub scope: String,
    pub links: Vec<LinkSnap>,
    pub addrs: Vec<AddrSnap>,
    /// Global IPv6 addresses (link-local ones are the kernel's), by device.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addrs6: Vec<Addr6Snap>,
    pub routes: Vec<RouteSnap>,
    /// Guest namespaces looked at: those the spec names and those kvmnet's ports point to.
    pub netns: BTreeMap<String, NetnsSnap>,
    pub nft: Option<NftTable>,
    /// Current value of every sysctl of interest; `None` when the key does not exist here.
    pub sysctls: BTreeMap<String, Option<String>>,
    /// sysctls that exist here but cannot be changed here (read-only in this namespace).
    pub sysctl_readonly: std::collections::BTreeSet<String>,
    /// Values sysctls had before kvmnet first changed them (from the state directory).
    pub sysctl_originals: BTreeMap<String, String>,
    /// What kvmnet moved from uplinks onto bridges (from the state directory).
    pub moved: BTreeMap<String, crate::state::Moved>,
    /// User names the spec uses as tap owners, resolved; absent when no such user.
    pub users: BTreeMap<String, u32>,
    /// ethtool settings of the interfaces of interest (those the spec configures and those
    /// with recorded originals), as the devices report them.
    pub ethtool: BTreeMap<String, EthtoolSnap>,
    /// Values ethtool settings of foreign interfaces had before kvmnet first changed them.
    pub ethtool_originals: BTreeMap<String, BTreeMap<String, u32>>,
    /// MTUs host interfaces had before kvmnet first changed them (from the state directory).
    pub mtu_originals: BTreeMap<String, u32>,
    /// Host interfaces kvmnet brought up, with their original up state (from the state
    /// directory).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub raised: BTreeMap<String, bool>,
    /// kvmnet's rows in OVN's Northbound database, with the columns it sets (empty when
    /// the spec has no OVN part and none was applied).
    /// By [`crate::ovn::NbRow::id`], written as a list of rows (as it always was).
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        default,
        with = "rows_as_list"
    )]
    pub nb: crate::ovn::memo::RowMap,
    /// This host as an OVN chassis, as kvmnet last made it (from the state directory), with
    /// whether its Open_vSwitch database still matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chassis: Option<crate::ovn::ChassisConf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EthtoolSnap {
    /// Every setting the device reports.
    pub values: BTreeMap<String, u32>,
    /// Upper bounds of rings and channels.
    pub max: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSnap {
    pub name: String,
    /// Link kind as the kernel reports it (`bridge`, `tun`, `veth`, ...), empty for plain NICs.
    pub kind: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub master: Option<String>,
    pub up: bool,
    pub oper_up: bool,
    pub alias: Option<String>,
    pub tun_owner: Option<u32>,
    pub tun_multi_queue: bool,
    /// Bridge port isolation flag, for links enslaved to a bridge.
    pub isolated: bool,
    /// The live traffic control differs from what this port's mark records.
    pub tc_drift: bool,
    pub stats: Option<Stats>,
    /// Settings of a VXLAN device.
    pub vxlan: Option<VxlanSnap>,
    /// Destinations of a VXLAN device's all-zeros (flood) FDB entries.
    pub fdb: Vec<Ipv4Addr>,
    /// The kind of the root qdisc, when it has one of its own (not `noqueue`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdisc: Option<String>,
    /// A kvmnet bridge's shaping tree, read back (network bandwidth and floors).
    pub shaping: Option<crate::state::Shaping>,
    /// Settings of a macvtap (or macvlan) device.
    pub macvtap: Option<MacvtapSnap>,
    /// Settings of an 802.1Q VLAN device.
    pub vlan: Option<VlanSnap>,
    /// Settings of a bond.
    pub bond: Option<BondSnap>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MacvtapSnap {
    /// The lower device's name.
    pub link: Option<String>,
    /// `None` for a macvlan mode kvmnet does not use (source).
    pub mode: Option<crate::spec::DirectMode>,
    /// Owner of its character device `/dev/tapIFINDEX`; `None` when there is none.
    pub dev_owner: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VlanSnap {
    pub id: u16,
    /// The lower device's name.
    pub link: Option<String>,
}

/// A bond's options by their kernel names; `lacp_rate` empty outside 802.3ad.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BondSnap {
    pub mode: String,
    pub miimon: u32,
    pub lacp_rate: String,
    pub xmit_hash_policy: String,
    pub min_links: u32,
    pub primary: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VxlanSnap {
    pub vni: u32,
    /// The underlay device's name.
    pub link: Option<String>,
    pub local: Option<Ipv4Addr>,
    pub group: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddrSnap {
    pub dev: String,
    pub addr: Ipv4Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addr6Snap {
    pub dev: String,
    pub addr: crate::spec::Ipv6Cidr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSnap {
    pub dev: String,
    pub dst: Ipv4Cidr,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub metric: Option<u32>,
    #[serde(default = "main_table")]
    pub table: u32,
    #[serde(default = "boot_proto")]
    pub protocol: u8,
    #[serde(default)]
    pub scope: u8,
    #[serde(default)]
    pub prefsrc: Option<Ipv4Addr>,
}

fn main_table() -> u32 {
    254
}
fn boot_proto() -> u8 {
    3
}

/// RTPROT_KERNEL: routes the kernel derives from addresses; they follow the address.
pub const PROTO_KERNEL: u8 = 2;
/// The local table holds the kernel's own local/broadcast routes.
pub const TABLE_LOCAL: u32 = 255;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetnsSnap {
    /// Created by kvmnet on behalf of this scope (its loopback carries kvmnet's mark).
    pub owned: bool,
    pub links: Vec<LinkSnap>,
    pub addrs: Vec<AddrSnap>,
    pub routes: Vec<RouteSnap>,
    /// Permanent global IPv6 addresses: those set by hand or by kvmnet, not the ones SLAAC or
    /// a DHCPv6 client add with lifetimes.
    pub addrs6: Vec<Addr6Snap>,
    /// IPv6 default routes, but those the kernel learns from router advertisements.
    pub routes6: Vec<Route6Snap>,
}

/// An IPv6 route as a guest namespace's snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route6Snap {
    pub dev: String,
    pub dst: crate::spec::Ipv6Cidr,
    #[serde(default)]
    pub gateway: Option<std::net::Ipv6Addr>,
    #[serde(default = "main_table")]
    pub table: u32,
    #[serde(default = "boot_proto")]
    pub protocol: u8,
}

impl Snapshot {
    pub fn link(&self, name: &str) -> Option<&LinkSnap> {
        self.links.iter().find(|l| l.name == name)
    }
}

/// A row map as the list of its rows: the ids are the rows' own (table and key).
mod rows_as_list {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use crate::ovn::NbRow;
    use crate::ovn::memo::RowMap;

    pub fn serialize<S: Serializer>(rows: &RowMap, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(rows.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RowMap, D::Error> {
        let rows = Vec::<Arc<NbRow>>::deserialize(d)?;
        Ok(rows.into_iter().map(|r| (r.id().into(), r)).collect())
    }
}
