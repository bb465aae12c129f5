//! Spec + what the host looks like -> the exact objects kvmnet should own there. Pure.
//!
//! The host enters only where the spec points at things kvmnet does not own: a bridge-mode
//! uplink (whose MAC, MTU, addresses and routes move to the bridge), user names of tap owners,
//! guest namespaces that already exist, sysctls' current values. Conflicts with foreign objects
//! come back as errors that point into the spec, like validation errors.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet};

use crate::nft;
use crate::snapshot::{LinkSnap, PROTO_KERNEL, RouteSnap, Snapshot, TABLE_LOCAL};
use crate::spec::naming::{bridge_mac, host_end_mac};
use crate::spec::{
    BondMode, DirectMode, MIIMON_DEFAULT, Mac, Network, Owner, PortKind as SpecPortKind, Spec,
    SpecError, Uplink, path_join,
};
use crate::state::{
    Addr, BondLink, BridgeLink, FLOOR_CLASS_MIN, FloorClass, GuestEnd, HostState, MemberLink,
    PortKind, PortLink, Route, ShapeState, Shaping, UplinkLink, VlanLink, VxlanLink, guest_alias,
    guest_ifname, is_kvmnet_alias, parse_alias,
};

mod ethtool;
mod floors;
mod network;
mod observed;
mod ports;
mod release;
mod sysctls;
#[cfg(test)]
mod tests;
mod uplinks;

pub use observed::{Interest, observed, observed_foreign, observed_owned};
pub use sysctls::{managed_sysctls, normalize_sysctl};
pub(crate) use uplinks::push_new;
use uplinks::*;
pub use uplinks::{HostLink, resolve_uplink};

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// IPv6 forwarding, for nat and routed networks with `ipv6`. Turning it on makes the host
/// ignore RAs on interfaces whose accept_ra is 1 (README says what that means for an uplink
/// configured by SLAAC).
pub const IP6_FORWARD: &str = "net.ipv6.conf.all.forwarding";
/// Per-port firewalls see bridged traffic only when the bridge hands it to the IP hooks.
pub const BRIDGE_NF: &str = "net.bridge.bridge-nf-call-iptables";
/// The same for bridged IPv6: firewalls cover both families.
pub const BRIDGE_NF6: &str = "net.bridge.bridge-nf-call-ip6tables";
const DEFAULT_MTU: u32 = 1500;

pub(crate) fn is_ours(l: &LinkSnap) -> bool {
    l.alias.as_deref().is_some_and(is_kvmnet_alias)
}

fn is_our_bond(l: &LinkSnap) -> bool {
    l.kind == "bond"
        && l.alias
            .as_deref()
            .and_then(parse_alias)
            .is_some_and(|a| a.bond)
}

pub(crate) fn conflict(spec: &Spec, path: String, message: String) -> SpecError {
    let loc = spec.loc(&path);
    SpecError { path, loc, message }
}

pub fn route_from(r: &RouteSnap) -> Route {
    Route {
        dst: r.dst,
        gateway: r.gateway,
        metric: r.metric,
        table: r.table,
        protocol: r.protocol,
        scope: r.scope,
        prefsrc: r.prefsrc,
    }
}

/// Routes kvmnet moves with an address: everything through the device except what the kernel
/// derives by itself from addresses.
pub fn movable_routes(snap: &[RouteSnap], dev: &str) -> Vec<Route> {
    snap.iter()
        .filter(|r| r.dev == dev && r.protocol != PROTO_KERNEL && r.table != TABLE_LOCAL)
        .map(route_from)
        .collect()
}

pub fn addrs_of(snap: &Snapshot, dev: &str) -> Vec<Addr> {
    snap.addrs
        .iter()
        .filter(|a| a.dev == dev)
        .map(|a| Addr {
            cidr: a.addr,
            broadcast: a.broadcast,
        })
        .collect()
}

/// The interfaces of the host by name, without a scan of every link for each lookup: a host
/// may have thousands of ports.
pub(crate) struct Links<'a>(HashMap<&'a str, &'a LinkSnap>);

impl<'a> Links<'a> {
    fn of(snap: &'a Snapshot) -> Links<'a> {
        let mut by_name: HashMap<&str, &LinkSnap> = HashMap::with_capacity(snap.links.len());
        for l in &snap.links {
            by_name.entry(l.name.as_str()).or_insert(l);
        }
        Links(by_name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&'a LinkSnap> {
        self.0.get(name).copied()
    }

    /// An interface kvmnet does not own.
    pub(crate) fn foreign(&self, name: &str) -> Option<&'a LinkSnap> {
        self.get(name).filter(|l| !is_ours(l))
    }
}

/// The desired host being built: each mode, kind of object and feature adds its part.
pub(crate) struct Build<'a> {
    pub(crate) spec: &'a Spec,
    pub(crate) snap: &'a Snapshot,
    pub(crate) links: Links<'a>,
    pub(crate) st: HostState,
    /// Conflicts with the host, located in the spec like validation errors.
    pub(crate) errors: Vec<SpecError>,
    /// Per direct network: its uplink, mode, MTU and (passthrough) the uplink's MAC.
    pub(crate) direct: BTreeMap<String, DirectNet>,
}

/// A network's bridge as its mode shapes it: the mode's lower device may give it a MAC and
/// an MTU, and a bridge-mode uplink its addresses and routes.
pub(crate) struct BridgeDraft {
    pub(crate) mac: Mac,
    pub(crate) mtu: u32,
    pub(crate) addrs: Vec<Addr>,
    pub(crate) routes: Vec<Route>,
}

/// What the ports of a direct network need from its uplink.
#[derive(Clone)]
pub(crate) struct DirectNet {
    pub(crate) uplink: String,
    pub(crate) mode: DirectMode,
    pub(crate) mtu: u32,
    /// Passthrough: the macvtap inherits the uplink's MAC.
    pub(crate) passthrough_mac: Option<crate::spec::Mac>,
}

impl Build<'_> {
    pub(crate) fn conflict(&mut self, path: String, message: String) {
        self.errors.push(conflict(self.spec, path, message));
    }
}

pub fn desired(spec: &Spec, snap: &Snapshot) -> Result<HostState, Vec<SpecError>> {
    desired_with_nft(spec, snap, nft::table_for(spec))
}

/// [`desired`], with the spec's nftables tables ([`nft::table_for`]) made already. The
/// order matters where one part reads what an earlier one decided: bonds before the networks
/// that use them as uplinks, networks before the releases that look for what stays, bridges
/// before the ports that take their MTU.
pub fn desired_with_nft(
    spec: &Spec,
    snap: &Snapshot,
    nft: Option<nft::NftTable>,
) -> Result<HostState, Vec<SpecError>> {
    desired_with_rows(spec, snap, nft, None)
}

/// [`desired_with_nft`], with the spec's Northbound rows made already when `nb` is given (a
/// daemon's [`crate::ovn::memo::RowsMemo`] makes again only what changed).
pub fn desired_with_rows(
    spec: &Spec,
    snap: &Snapshot,
    nft: Option<nft::NftTable>,
    nb: Option<crate::ovn::memo::RowMap>,
) -> Result<HostState, Vec<SpecError>> {
    let mut b = Build {
        spec,
        snap,
        links: Links::of(snap),
        st: HostState::default(),
        errors: Vec::new(),
        direct: BTreeMap::new(),
    };
    for u in spec.host.uplinks.values() {
        bond_state(spec, snap, u, &mut b.st, &mut b.errors);
        nic_state(spec, snap, u, &mut b.st, &mut b.errors);
    }
    for net in spec.networks.values() {
        let npath = path_join("networks", &net.name);
        net.mode.behaviour().contribute(&mut b, net, &npath);
    }
    b.release_uplinks();
    b.release_bonds();
    b.give_back();
    b.ports();
    if let Some(o) = &spec.ovn {
        b.st.nb = nb.unwrap_or_else(|| {
            crate::ovn::model::rows(o)
                .into_iter()
                .map(|r| (r.id().into(), std::sync::Arc::new(r)))
                .collect()
        });
        b.st.chassis = crate::ovn::model::chassis_conf(o);
    }
    b.ethtool();
    b.st.nft = nft;
    b.floors();
    b.sysctls();
    let Build { st, mut errors, .. } = b;
    if errors.is_empty() {
        Ok(st)
    } else {
        errors.sort_by(|a, b| (a.loc, &a.path).cmp(&(b.loc, &b.path)));
        Err(errors)
    }
}

/// The host interfaces `spec` needs up: a VLAN sub-interface cannot come up on a lower
/// device that is down, so kvmnet brings a vlan network's uplink up, and gives that back only
/// when no network sits on the interface any more (a direct network's macvtaps, a bridge's
/// uplink or a VXLAN underlay need it up as well).
pub fn uplinks_in_use(spec: &Spec) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for n in spec.networks.values() {
        used.extend(n.vlan.iter().map(|v| v.uplink.clone()));
        used.extend(n.uplink.iter().cloned());
        used.extend(n.vxlan.iter().map(|v| v.underlay.clone()));
    }
    used
}
