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
use crate::spec::naming::{bridge_mac, host_end_mac, overlay_bridge_mac, vlan_bridge_mac};
use crate::spec::{
    BondMode, DirectMode, MIIMON_DEFAULT, Mac, Mode, Network, Owner, PortKind as SpecPortKind,
    Spec, SpecError, Uplink, VXLAN_OVERHEAD, Vlan, Vxlan, path_join,
};
use crate::state::{
    Addr, BondLink, BridgeLink, FLOOR_CLASS_MIN, FloorClass, GuestEnd, HostState, MemberLink,
    PortKind, PortLink, Route, ShapeState, Shaping, UplinkLink, VlanLink, VxlanLink, guest_alias,
    guest_ifname, is_kvmnet_alias, parse_alias,
};

mod links;
mod observed;
#[cfg(test)]
mod tests;
mod uplinks;

use links::*;
pub use observed::{Interest, observed, observed_foreign, observed_owned};
use uplinks::*;
pub use uplinks::{HostLink, resolve_uplink};

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// Per-port firewalls see bridged traffic only when the bridge hands it to the IP hooks.
pub const BRIDGE_NF: &str = "net.bridge.bridge-nf-call-iptables";
/// The same for bridged IPv6: firewalls cover both families.
pub const BRIDGE_NF6: &str = "net.bridge.bridge-nf-call-ip6tables";
const DEFAULT_MTU: u32 = 1500;

fn is_ours(l: &LinkSnap) -> bool {
    l.alias.as_deref().is_some_and(is_kvmnet_alias)
}

fn is_our_bond(l: &LinkSnap) -> bool {
    l.kind == "bond"
        && l.alias
            .as_deref()
            .and_then(parse_alias)
            .is_some_and(|a| a.bond)
}

fn conflict(spec: &Spec, path: String, message: String) -> SpecError {
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

/// sysctl values are compared the way the kernel prints them: fields separated by blanks.
pub fn normalize_sysctl(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// sysctls that come only from the tuning profile: skipped where this host (or namespace)
/// does not have them, rather than refused.
fn tuning_only(spec: &Spec) -> BTreeSet<String> {
    spec.host
        .tuning
        .map(|t| t.sysctls())
        .unwrap_or_default()
        .iter()
        .map(|(k, _)| k.to_string())
        .filter(|k| !spec.host.sysctl.contains_key(k))
        .collect()
}

/// The sysctls kvmnet enforces for this spec (profile, implied, explicit: later wins),
/// without restores.
pub fn managed_sysctls(spec: &Spec) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(t) = spec.host.tuning {
        for (k, v) in t.sysctls() {
            out.insert(k.to_string(), v.to_string());
        }
    }
    if spec
        .networks
        .values()
        .any(|n| matches!(n.mode, Mode::Nat | Mode::Routed))
    {
        out.insert(IP_FORWARD.to_string(), "1".to_string());
    }
    if spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .any(|p| p.firewall.is_some())
    {
        out.insert(BRIDGE_NF.to_string(), "1".to_string());
        out.insert(BRIDGE_NF6.to_string(), "1".to_string());
    }
    for (k, v) in &spec.host.sysctl {
        out.insert(k.clone(), normalize_sysctl(v));
    }
    out
}

pub fn desired(spec: &Spec, snap: &Snapshot) -> Result<HostState, Vec<SpecError>> {
    desired_with_nft(spec, snap, nft::table_for(spec))
}

/// [`desired`], with the spec's nftables tables ([`nft::table_for`]) made already.
#[allow(
    clippy::too_many_lines,
    reason = "the desired state of every mode and feature in one pass; to become one contribution per mode and feature (#14)"
)]
pub fn desired_with_nft(
    spec: &Spec,
    snap: &Snapshot,
    nft: Option<nft::NftTable>,
) -> Result<HostState, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut st = HostState::default();
    // `snap.link` by name without a scan of every link: a host may have thousands of ports.
    let mut by_name: HashMap<&str, &LinkSnap> = HashMap::with_capacity(snap.links.len());
    for l in &snap.links {
        by_name.entry(l.name.as_str()).or_insert(l);
    }
    let link = |name: &str| by_name.get(name).copied();
    let foreign = |name: &str| link(name).filter(|l| !is_ours(l));
    // Per direct network: its uplink, mode, MTU and (passthrough) the uplink's MAC.
    let mut direct: BTreeMap<&str, DirectNet> = BTreeMap::new();

    // Bonds first: networks may use them as uplinks and take their addresses.
    for u in spec.host.uplinks.values() {
        bond_state(spec, snap, u, &mut st, &mut errors);
        nic_state(spec, snap, u, &mut st, &mut errors);
    }

    for net in spec.networks.values() {
        let npath = path_join("networks", &net.name);
        if net.mode == Mode::Direct {
            match direct_net(spec, snap, &st, net, &npath) {
                Ok(d) => {
                    direct.insert(net.name.as_str(), d);
                }
                Err(e) => errors.push(e),
            }
            continue;
        }
        let bpath = path_join(&npath, "bridge");
        if foreign(&net.bridge).is_some() {
            errors.push(conflict(
                spec,
                bpath.clone(),
                format!(
                    "interface '{}' already exists and is not managed by kvmnet; choose another bridge name",
                    net.bridge
                ),
            ));
        }
        let mut mac = bridge_mac(&net.name);
        let mut mtu = net.mtu.unwrap_or(DEFAULT_MTU);
        if let Some(vx) = &net.vxlan {
            match vxlan_link(spec, snap, &st, net, vx, &npath) {
                Ok(v) => {
                    mtu = v.mtu;
                    mac = overlay_bridge_mac(&net.name, v.local);
                    let mut fdb = vx.remotes.clone();
                    fdb.sort();
                    st.fdb.insert(v.name.clone(), fdb);
                    st.vxlans.insert(v.name.clone(), v);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if let Some(v) = &net.vlan {
            match vlan_link(spec, snap, &st, net, v, &npath) {
                Ok((l, uplink_mac, raise)) => {
                    mtu = l.mtu;
                    mac = vlan_bridge_mac(&net.name, uplink_mac);
                    if raise {
                        st.raise.insert(v.uplink.clone());
                    }
                    st.vlans.insert(l.name.clone(), l);
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        let mut addrs = Vec::new();
        let mut routes = Vec::new();
        if let Some(gw) = net.ipv4 {
            addrs.push(Addr::with_standard_broadcast(gw));
        }
        if let Some(up) = &net.uplink {
            let upath = path_join(&npath, "uplink");
            // What the uplink brings: MAC, MTU, addresses and routes.
            let taken = match resolve_uplink(spec, snap, up) {
                HostLink::Missing => {
                    errors.push(conflict(
                        spec,
                        upath,
                        format!("uplink '{up}' does not exist on this host"),
                    ));
                    None
                }
                HostLink::Ours => {
                    errors.push(conflict(
                        spec,
                        upath,
                        format!("uplink '{up}' is a device kvmnet created; name a host interface"),
                    ));
                    None
                }
                HostLink::Foreign(l) if l.master.as_ref().is_some_and(|m| m != &net.bridge) => {
                    errors.push(conflict(
                        spec,
                        upath,
                        format!(
                            "uplink '{up}' is already enslaved to '{}'; release it first",
                            l.master.as_deref().unwrap_or_default()
                        ),
                    ));
                    None
                }
                HostLink::Foreign(l) => Some((
                    l.mac,
                    st.mtus.get(up).copied().unwrap_or(l.mtu),
                    addrs_of(snap, up),
                    movable_routes(&snap.routes, up),
                )),
                HostLink::DeclaredBond => st.bonds.get(up).map(|b| {
                    // A bond takes its first member's MAC when that member joins.
                    let mac = snap
                        .link(up)
                        .filter(|_| snap.links.iter().any(|m| m.master.as_ref() == Some(up)))
                        .or_else(|| link(&b.home))
                        .and_then(|l| l.mac);
                    (
                        mac,
                        b.mtu,
                        st.addrs.get(up).cloned().unwrap_or_default(),
                        st.routes.get(up).cloned().unwrap_or_default(),
                    )
                }),
            };
            if let Some((umac, umtu, uaddrs, uroutes)) = taken {
                // The bridge takes over the uplink's identity so neighbours and DHCP
                // servers keep seeing the same host.
                if let Some(m) = umac {
                    mac = m;
                }
                if net.mtu.is_none() {
                    mtu = umtu;
                }
                let ours = link(&net.bridge).is_some_and(is_ours);
                if ours {
                    addrs.extend(addrs_of(snap, &net.bridge));
                    routes.extend(movable_routes(&snap.routes, &net.bridge));
                    // What was moved and has since been deleted by hand comes back.
                    if let Some(m) = snap.moved.get(&net.bridge) {
                        push_new(&mut addrs, &m.addrs);
                        push_new(&mut routes, &m.routes);
                    }
                }
                push_new(&mut addrs, &uaddrs);
                push_new(&mut routes, &uroutes);
                st.uplinks.insert(
                    up.clone(),
                    UplinkLink {
                        name: up.clone(),
                        master: Some(net.bridge.clone()),
                    },
                );
                st.addrs.insert(up.clone(), Vec::new());
                st.routes.insert(up.clone(), Vec::new());
            }
        }
        st.bridges.insert(
            net.bridge.clone(),
            BridgeLink {
                name: net.bridge.clone(),
                network: net.name.clone(),
                mac,
                mtu,
                up: true,
            },
        );
        st.addrs.insert(net.bridge.clone(), addrs);
        st.routes.insert(net.bridge.clone(), routes);
    }

    // Uplinks of bridges that are going away (or that lost their uplink) are released and get
    // back the addresses and routes the bridge took from them.
    for l in &snap.links {
        let Some(m) = l.master.as_deref() else {
            continue;
        };
        if (is_ours(l) && !is_our_bond(l)) || st.uplinks.contains_key(&l.name) {
            continue;
        }
        if !snap
            .link(m)
            .is_some_and(|b| b.kind == "bridge" && is_ours(b))
        {
            continue;
        }
        // A bond that stays has its own addresses worked out already.
        let mut addrs = st
            .addrs
            .get(&l.name)
            .cloned()
            .unwrap_or_else(|| addrs_of(snap, &l.name));
        let mut routes = st
            .routes
            .get(&l.name)
            .cloned()
            .unwrap_or_else(|| movable_routes(&snap.routes, &l.name));
        if !st.bridges.contains_key(m) {
            addrs.extend(addrs_of(snap, m));
            routes.extend(movable_routes(&snap.routes, m));
            if let Some(moved) = snap.moved.get(m) {
                for a in &moved.addrs {
                    if !addrs.contains(a) {
                        addrs.push(*a);
                    }
                }
                for r in &moved.routes {
                    if !routes.contains(r) {
                        routes.push(r.clone());
                    }
                }
            }
        }
        st.uplinks.insert(
            l.name.clone(),
            UplinkLink {
                name: l.name.clone(),
                master: None,
            },
        );
        st.addrs.insert(l.name.clone(), addrs);
        st.routes.insert(l.name.clone(), routes);
    }

    // Bonds that go away: their members are released, and the first one (recorded in the
    // bond's mark) gets back what the bond held. Members dropped from a bond that stays are
    // released too; the bond keeps the addresses.
    for l in &snap.links {
        let Some(m) = l.master.as_deref() else {
            continue;
        };
        if is_ours(l) || st.members.contains_key(&l.name) {
            continue;
        }
        if link(m).is_some_and(is_our_bond) {
            st.members.insert(
                l.name.clone(),
                MemberLink {
                    name: l.name.clone(),
                    bond: None,
                },
            );
            st.addrs
                .entry(l.name.clone())
                .or_insert_with(|| addrs_of(snap, &l.name));
            st.routes
                .entry(l.name.clone())
                .or_insert_with(|| movable_routes(&snap.routes, &l.name));
        }
    }
    for b in snap.links.iter().filter(|l| is_our_bond(l)) {
        if st.bonds.contains_key(&b.name) {
            continue;
        }
        let held = st.addrs.remove(&b.name);
        let held_routes = st.routes.remove(&b.name);
        let home = b
            .alias
            .as_deref()
            .and_then(parse_alias)
            .and_then(|a| a.home);
        let Some(home) = home.filter(|h| link(h).is_some_and(|l| !is_ours(l))) else {
            continue;
        };
        let mut addrs = st
            .addrs
            .get(&home)
            .cloned()
            .unwrap_or_else(|| addrs_of(snap, &home));
        let mut routes = st
            .routes
            .get(&home)
            .cloned()
            .unwrap_or_else(|| movable_routes(&snap.routes, &home));
        push_new(&mut addrs, &held.unwrap_or_else(|| addrs_of(snap, &b.name)));
        push_new(
            &mut routes,
            &held_routes.unwrap_or_else(|| movable_routes(&snap.routes, &b.name)),
        );
        if let Some(moved) = snap.moved.get(&b.name) {
            push_new(&mut addrs, &moved.addrs);
            push_new(&mut routes, &moved.routes);
        }
        st.members.entry(home.clone()).or_insert(MemberLink {
            name: home.clone(),
            bond: None,
        });
        st.addrs.insert(home.clone(), addrs);
        st.routes.insert(home.clone(), routes);
        st.addrs.insert(b.name.clone(), Vec::new());
        st.routes.insert(b.name.clone(), Vec::new());
    }

    // Interfaces kvmnet brought up and no longer needs up go back down; not one another
    // network still sits on (a direct network's macvtaps, say, need their uplink up).
    let needed_up = uplinks_in_use(spec);
    for k in snap.raised.keys() {
        if !needed_up.contains(k) && link(k).is_some_and(|l| !is_ours(l) && l.up) {
            st.lower.insert(k.clone());
        }
    }

    // MTUs kvmnet changed and no longer manages go back to what they were.
    for (k, orig) in &snap.mtu_originals {
        if !st.mtus.contains_key(k) && link(k).is_some_and(|l| !is_ours(l)) {
            st.mtus.insert(k.clone(), *orig);
        }
    }

    // Built at the end in one pass: cheaper than thousands of inserts into the map.
    let mut port_links: Vec<(String, PortLink)> = Vec::with_capacity(spec.vms.len());
    let mut guest_names = BTreeSet::new();
    let mut routed_ns = BTreeSet::new();
    for vm in spec.vms.values() {
        for port in &vm.ports {
            // Written out only for an error.
            let ppath = || {
                format!(
                    "{}[{}]",
                    path_join(&path_join("vms", &vm.name), "ports"),
                    port.index
                )
            };
            let Some(net) = spec.networks.get(&port.network) else {
                continue;
            };
            if foreign(&port.name).is_some() {
                errors.push(conflict(
                    spec,
                    format!("{}.name", ppath()),
                    format!(
                        "interface '{}' already exists and is not managed by kvmnet; choose another port name",
                        port.name
                    ),
                ));
            }
            let dnet = direct.get(net.name.as_str());
            let mtu = match dnet {
                Some(d) => d.mtu,
                None => st.bridges.get(&net.bridge).map_or(DEFAULT_MTU, |b| b.mtu),
            };
            let owner = match &port.owner {
                None => None,
                Some(Owner::Uid(u)) => Some(*u),
                Some(Owner::User(name)) => match snap.users.get(name) {
                    Some(u) => Some(*u),
                    None => {
                        errors.push(conflict(
                            spec,
                            format!("{}.owner", ppath()),
                            format!("no user '{name}' on this host"),
                        ));
                        None
                    }
                },
            };
            let kind = match port.kind {
                SpecPortKind::Tap => PortKind::Tap {
                    owner,
                    multi_queue: port.queues > 1,
                },
                SpecPortKind::Macvtap => {
                    // A network whose uplink failed its checks has already said so.
                    let Some(d) = dnet else { continue };
                    PortKind::Macvtap {
                        uplink: d.uplink.clone(),
                        mode: d.mode,
                        // The kernel makes the node root's; root is what no owner means.
                        owner: Some(owner.unwrap_or(0)),
                    }
                }
                SpecPortKind::Veth => {
                    let ns = port.netns.clone().unwrap_or_default();
                    let gname = guest_ifname(port.index);
                    if !guest_names.insert((ns.clone(), gname.clone())) {
                        errors.push(conflict(
                            spec,
                            format!("{}.netns", ppath()),
                            format!(
                                "another veth port already puts its {gname} into namespace '{ns}'; give each VM its own namespace"
                            ),
                        ));
                    }
                    if let Some(g) = snap.netns.get(&ns) {
                        // A far end of another kvmnet port is fine: that port is either
                        // this one or one being removed (removals run before creations).
                        let clash = g.links.iter().any(|l| {
                            l.name == gname
                                && l.alias
                                    .as_deref()
                                    .and_then(parse_alias)
                                    .is_none_or(|a| a.port.is_none())
                        });
                        if clash {
                            errors.push(conflict(
                                spec,
                                format!("{}.netns", ppath()),
                                format!(
                                    "namespace '{ns}' already has an {gname} that kvmnet did not create"
                                ),
                            ));
                        }
                        if g.owned {
                            st.netns.insert(ns.clone());
                        }
                    } else {
                        st.netns.insert(ns.clone());
                    }
                    // One default route per namespace: the first port that can have one.
                    let gateway = match (net.ipv4, port.ipv4) {
                        (Some(gw), Some(_)) if routed_ns.insert(ns.clone()) => Some(gw.addr),
                        _ => None,
                    };
                    // A trunk that tags its own VLAN carries nothing untagged: the VM
                    // addresses its VLAN sub-interfaces itself.
                    let configured = !port.dhcp_client && port.has_native();
                    PortKind::Veth {
                        netns: ns,
                        guest: GuestEnd {
                            name: gname,
                            mac: port.mac,
                            mtu,
                            up: true,
                            // A DHCP client in the namespace configures it instead.
                            addr: port.ipv4.filter(|_| configured),
                            gateway: gateway.filter(|_| configured),
                            dhcp: port.dhcp_client,
                        },
                    }
                }
            };
            // Trunk ports: one sub-interface per tagged VLAN, on that VLAN's bridge.
            for (i, t) in port.trunk.iter().enumerate() {
                let Some(tnet) = spec.networks.get(&t.network) else {
                    continue;
                };
                if foreign(&t.device).is_some() {
                    errors.push(conflict(
                        spec,
                        format!("{}.vlans[{i}]", ppath()),
                        format!(
                            "interface '{}' (this port's VLAN {} sub-interface) already exists and is not managed by kvmnet",
                            t.device, t.vid
                        ),
                    ));
                }
                let tmtu = st.bridges.get(&tnet.bridge).map_or(DEFAULT_MTU, |b| b.mtu);
                st.vlans.insert(
                    t.device.clone(),
                    VlanLink {
                        name: t.device.clone(),
                        network: tnet.name.clone(),
                        parent: port.name.clone(),
                        vid: t.vid,
                        port: Some(port.name.clone()),
                        master: Some(tnet.bridge.clone()),
                        // A VLAN device never exceeds its lower device's MTU.
                        mtu: tmtu.min(mtu),
                        up: true,
                        isolated: tnet.isolate_ports,
                    },
                );
            }
            let native = port.has_native();
            port_links.push((
                port.name.clone(),
                PortLink {
                    name: port.name.clone(),
                    vm: vm.name.clone(),
                    network: net.name.clone(),
                    master: (dnet.is_none() && native).then(|| net.bridge.clone()),
                    // A macvtap is the VM's NIC itself on the uplink's segment: it carries
                    // the VM's MAC (in passthrough, the uplink's, which it inherits).
                    mac: match dnet {
                        Some(d) => d.passthrough_mac.unwrap_or(port.mac),
                        None => host_end_mac(port.mac),
                    },
                    mtu,
                    up: true,
                    isolated: net.isolate_ports && native,
                    qos_in: port
                        .qos
                        .as_ref()
                        .and_then(|q| q.inbound.as_ref())
                        .map(ShapeState::from_shape),
                    qos_out: port
                        .qos
                        .as_ref()
                        .and_then(|q| q.outbound.as_ref())
                        .map(ShapeState::from_shape),
                    mirror: port.mirror.clone(),
                    tc_ok: true,
                    kind,
                },
            ));
        }
    }
    st.ports = port_links.into_iter().collect();

    // ethtool: ports' settings, foreign interfaces' settings, and the originals of foreign
    // settings the spec no longer makes (restored).
    for vm in spec.vms.values() {
        for port in &vm.ports {
            let Some(e) = &port.ethtool else { continue };
            let kind = match port.kind {
                SpecPortKind::Tap => "tun",
                SpecPortKind::Veth => "veth",
                SpecPortKind::Macvtap => "macvtap",
            };
            // What an existing device of the same kind reports is what the new one will.
            if link(&port.name).is_some_and(|l| l.kind == kind) {
                check_ethtool(spec, snap, &port.name, e, &mut errors);
            }
            st.ethtool.insert(port.name.clone(), e.settings.clone());
        }
    }
    for (dev, e) in &spec.host.ethtool {
        match link(dev) {
            None => errors.push(conflict(
                spec,
                e.path.clone(),
                format!("interface '{dev}' does not exist on this host"),
            )),
            Some(l) if is_ours(l) => errors.push(conflict(
                spec,
                e.path.clone(),
                format!("'{dev}' is a device kvmnet created; set ethtool on its port instead"),
            )),
            Some(_) => {
                check_ethtool(spec, snap, dev, e, &mut errors);
                st.ethtool.insert(dev.clone(), e.settings.clone());
            }
        }
    }
    for (dev, orig) in &snap.ethtool_originals {
        if link(dev).is_some() {
            let w = st.ethtool.entry(dev.clone()).or_default();
            for (k, v) in orig {
                w.entry(k.clone()).or_insert(*v);
            }
        }
    }

    st.nft = nft;

    for net in spec.networks.values() {
        if let Some(bandwidth) = net.bandwidth_bps {
            let live = link(&net.bridge).and_then(|l| l.shaping.as_ref());
            st.shaping
                .insert(net.bridge.clone(), shaping(spec, net, bandwidth, live));
        }
    }

    let managed = managed_sysctls(spec);
    let optional = tuning_only(spec);
    let in_netns = snap.scope != "host";
    for (k, v) in &managed {
        let usable =
            matches!(snap.sysctls.get(k), Some(Some(_))) && !snap.sysctl_readonly.contains(k);
        if optional.contains(k) && !usable {
            continue;
        }
        let path = path_join("host.sysctl", k);
        if in_netns && !k.starts_with("net.") {
            errors.push(conflict(
                spec,
                path,
                format!(
                    "'{k}' is not per network namespace; only net.* sysctls can be set with --netns"
                ),
            ));
            continue;
        }
        match snap.sysctls.get(k) {
            Some(Some(_)) if snap.sysctl_readonly.contains(k) => errors.push(conflict(
                spec,
                path,
                format!("sysctl '{k}' is read-only here (only the host's initial namespace can change it)"),
            )),
            Some(Some(_)) => {
                st.sysctls.insert(k.clone(), v.clone());
            }
            _ => errors.push(conflict(
                spec,
                path,
                format!(
                    "no sysctl '{k}' here (/proc/sys/{} does not exist)",
                    k.replace('.', "/")
                ),
            )),
        }
    }
    for (k, orig) in &snap.sysctl_originals {
        if !managed.contains_key(k) && matches!(snap.sysctls.get(k), Some(Some(_))) {
            st.sysctls.insert(k.clone(), normalize_sysctl(orig));
        }
    }

    if errors.is_empty() {
        Ok(st)
    } else {
        errors.sort_by(|a, b| (a.loc, &a.path).cmp(&(b.loc, &b.path)));
        Err(errors)
    }
}

/// A network's shaping. A VM keeps the class it has on the live tree; a new floor takes the
/// lowest free one, so adding or removing a VM never renumbers the others.
fn shaping(
    spec: &Spec,
    net: &crate::spec::Network,
    bandwidth: u64,
    live: Option<&Shaping>,
) -> Shaping {
    let bytes = |bps: u64| bps / 8 * 8;
    let wanted: BTreeMap<Mac, u64> = spec
        .vms
        .values()
        .flat_map(|vm| &vm.ports)
        .filter(|p| p.network == net.name)
        .filter_map(|p| Some((p.mac, bytes(p.qos.as_ref()?.floor_bps?))))
        .collect();
    let kept: BTreeMap<Mac, u16> = live
        .map(|l| {
            l.floors
                .iter()
                .filter(|(mac, _)| wanted.contains_key(mac))
                .map(|(mac, f)| (*mac, f.class))
                .collect()
        })
        .unwrap_or_default();
    let mut used: BTreeSet<u16> = kept.values().copied().collect();
    let mut next = FLOOR_CLASS_MIN;
    let mut floors = BTreeMap::new();
    for (mac, rate) in wanted {
        let class = match kept.get(&mac) {
            Some(c) => *c,
            None => {
                while used.contains(&next) {
                    next += 1;
                }
                used.insert(next);
                next
            }
        };
        floors.insert(mac, FloorClass { rate, class });
    }
    Shaping {
        bandwidth: bytes(bandwidth),
        floors,
        intact: true,
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
