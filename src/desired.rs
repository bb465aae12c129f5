//! Spec + what the host looks like -> the exact objects kvmnet should own there. Pure.
//!
//! The host enters only where the spec points at things kvmnet does not own: a bridge-mode
//! uplink (whose MAC, MTU, addresses and routes move to the bridge), user names of tap owners,
//! guest namespaces that already exist, sysctls' current values. Conflicts with foreign objects
//! come back as errors that point into the spec, like validation errors.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::tc::FLOOR_CLASS_MIN;
use crate::nft;
use crate::snapshot::{LinkSnap, PROTO_KERNEL, RouteSnap, Snapshot, TABLE_LOCAL};
use crate::spec::naming::{bridge_mac, host_end_mac, overlay_bridge_mac, vlan_bridge_mac};
use crate::spec::{
    DirectMode, Mac, Mode, Network, Owner, PortKind as SpecPortKind, Spec, SpecError,
    VXLAN_OVERHEAD, Vlan, Vxlan, path_join,
};
use crate::state::{
    Addr, BridgeLink, FloorClass, GuestEnd, HostState, PortKind, PortLink, Route, ShapeState,
    Shaping, UplinkLink, VlanLink, VxlanLink, guest_alias, guest_ifname, parse_alias,
};

pub const IP_FORWARD: &str = "net.ipv4.ip_forward";
/// Per-port firewalls see bridged traffic only when the bridge hands it to the IP hooks.
pub const BRIDGE_NF: &str = "net.bridge.bridge-nf-call-iptables";
const DEFAULT_MTU: u32 = 1500;

fn is_ours(l: &LinkSnap) -> bool {
    l.alias.as_deref().and_then(parse_alias).is_some()
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
    }
    for (k, v) in &spec.host.sysctl {
        out.insert(k.clone(), normalize_sysctl(v));
    }
    out
}

/// The VXLAN device of a `vxlan` network, from its underlay as the host has it: the local
/// endpoint is the underlay's first IPv4 address and the MTU, unless the spec sets one, the
/// underlay's minus the encapsulation.
fn vxlan_link(
    spec: &Spec,
    snap: &Snapshot,
    net: &Network,
    vx: &Vxlan,
    npath: &str,
) -> Result<VxlanLink, Vec<SpecError>> {
    let mut errors = Vec::new();
    if snap.link(&vx.device).is_some_and(|l| !is_ours(l)) {
        errors.push(conflict(
            spec,
            npath.to_string(),
            format!(
                "interface '{}' (this network's vxlan device) already exists and is not managed by kvmnet",
                vx.device
            ),
        ));
    }
    let upath = path_join(npath, "underlay");
    let u = &vx.underlay;
    let Some(ul) = snap.link(u) else {
        errors.push(conflict(
            spec,
            upath,
            format!("underlay '{u}' does not exist on this host"),
        ));
        return Err(errors);
    };
    if is_ours(ul) {
        errors.push(conflict(
            spec,
            upath.clone(),
            format!("underlay '{u}' is a device kvmnet created; name the host interface that carries the tunnel"),
        ));
    }
    let local = snap.addrs.iter().find(|a| &a.dev == u).map(|a| a.addr.addr);
    if local.is_none() {
        errors.push(conflict(
            spec,
            upath,
            format!("underlay '{u}' has no IPv4 address to use as the tunnel's local endpoint"),
        ));
    }
    let room = ul.mtu.saturating_sub(VXLAN_OVERHEAD);
    if let Some(m) = net.mtu
        && m > room
    {
        errors.push(conflict(
            spec,
            path_join(npath, "mtu"),
            format!(
                "mtu {m} does not fit over underlay '{u}' (mtu {}): VXLAN adds {VXLAN_OVERHEAD} bytes, so at most {room}",
                ul.mtu
            ),
        ));
    }
    let mtu = net.mtu.unwrap_or(room);
    if mtu < 68 {
        errors.push(conflict(
            spec,
            path_join(npath, "underlay"),
            format!(
                "underlay '{u}' (mtu {}) leaves no room for VXLAN frames",
                ul.mtu
            ),
        ));
    }
    match (errors.is_empty(), local) {
        (true, Some(local)) => Ok(VxlanLink {
            name: vx.device.clone(),
            network: net.name.clone(),
            vni: vx.vni,
            underlay: u.clone(),
            local,
            port: vx.port,
            group: vx.group,
            learning: true,
            master: Some(net.bridge.clone()),
            mtu,
            up: true,
        }),
        _ => Err(errors),
    }
}

/// Settings a device cannot take, found before anything changes: ring and channel counts
/// beyond what it reports (or of a kind it has none of), offloads it does not report.
fn check_ethtool(
    spec: &Spec,
    snap: &Snapshot,
    dev: &str,
    e: &crate::spec::Ethtool,
    errors: &mut Vec<SpecError>,
) {
    let Some(have) = snap.ethtool.get(dev) else {
        return;
    };
    for (k, v) in &e.settings {
        let msg = if k.contains('.') {
            match have.max.get(k) {
                None => Some(format!(
                    "'{dev}' does not support {} settings (the kernel refuses them for this device)",
                    k.split('.').next().unwrap_or(k)
                )),
                Some(0) => Some(format!("'{dev}' has no {k} to set (its maximum is 0)")),
                Some(m) if v > m => Some(format!(
                    "{k} {v} is more than '{dev}' supports (at most {m})"
                )),
                Some(_) => None,
            }
        } else if !have.values.contains_key(k) {
            Some(format!("'{dev}' does not report the {k} offload"))
        } else {
            None
        };
        if let Some(m) = msg {
            errors.push(conflict(spec, e.field_path(k), m));
        }
    }
}

/// What the ports of a direct network need from its uplink.
struct DirectNet {
    uplink: String,
    mode: DirectMode,
    mtu: u32,
    /// Passthrough: the macvtap inherits the uplink's MAC.
    passthrough_mac: Option<crate::spec::Mac>,
}

/// A direct network's uplink as the host has it: an existing interface kvmnet does not own,
/// in no bridge or bond (the kernel gives a device's receive path to one of them only), with
/// room for the network's MTU. The uplink itself is never changed.
fn direct_net(
    spec: &Spec,
    snap: &Snapshot,
    net: &Network,
    npath: &str,
) -> Result<DirectNet, SpecError> {
    let upath = path_join(npath, "uplink");
    let up = net.uplink.clone().unwrap_or_default();
    let mode = net.direct_mode.unwrap_or(DirectMode::Bridge);
    let l = match snap.link(&up) {
        None => {
            return Err(conflict(
                spec,
                upath,
                format!("uplink '{up}' does not exist on this host"),
            ));
        }
        Some(l) if is_ours(l) => {
            return Err(conflict(
                spec,
                upath,
                format!("uplink '{up}' is a device kvmnet created; name a host interface"),
            ));
        }
        Some(l) => l,
    };
    if let Some(m) = &l.master {
        return Err(conflict(
            spec,
            upath,
            format!(
                "uplink '{up}' is enslaved to '{m}'; macvtap ports need a device that is in no bridge or bond (use '{m}' itself, or release '{up}')"
            ),
        ));
    }
    if mode == DirectMode::Passthrough
        && let Some(other) = snap.links.iter().find(|o| {
            o.macvtap
                .as_ref()
                .is_some_and(|m| m.link.as_deref() == Some(&up))
                && o.alias
                    .as_deref()
                    .and_then(parse_alias)
                    .is_none_or(|a| a.network.as_deref() != Some(net.name.as_str()))
        })
    {
        return Err(conflict(
            spec,
            path_join(npath, "direct_mode"),
            format!(
                "passthrough needs uplink '{up}' for itself, but macvtap '{}' already sits on it",
                other.name
            ),
        ));
    }
    if let Some(m) = net.mtu
        && m > l.mtu
    {
        return Err(conflict(
            spec,
            path_join(npath, "mtu"),
            format!(
                "mtu {m} is more than uplink '{up}' carries ({}); a macvtap cannot exceed its uplink",
                l.mtu
            ),
        ));
    }
    Ok(DirectNet {
        uplink: up,
        mode,
        mtu: net.mtu.unwrap_or(l.mtu),
        passthrough_mac: l.mac.filter(|_| mode == DirectMode::Passthrough),
    })
}

/// The host interface a vlan network's uplink names, if this host has one kvmnet may use.
/// Every check of "does this uplink exist" goes through here, so that other kinds of uplink
/// (a bond kvmnet builds from the spec) need teaching in one place only.
fn vlan_uplink<'a>(
    spec: &Spec,
    snap: &'a Snapshot,
    uplink: &str,
    upath: &str,
) -> Result<&'a LinkSnap, SpecError> {
    match snap.link(uplink) {
        None => Err(conflict(
            spec,
            upath.to_string(),
            format!("uplink '{uplink}' does not exist on this host"),
        )),
        Some(l) if is_ours(l) => Err(conflict(
            spec,
            upath.to_string(),
            format!(
                "uplink '{uplink}' is a device kvmnet created; name the host interface that carries the VLANs"
            ),
        )),
        Some(l) => Ok(l),
    }
}

/// The 802.1Q sub-interface of a `vlan` network on its uplink, and whether the uplink must
/// be brought up. Its MTU is the uplink's unless the spec sets a smaller one.
fn vlan_link(
    spec: &Spec,
    snap: &Snapshot,
    net: &Network,
    v: &Vlan,
    npath: &str,
) -> Result<(VlanLink, crate::spec::Mac, bool), Vec<SpecError>> {
    let mut errors = Vec::new();
    if snap.link(&v.device).is_some_and(|l| !is_ours(l)) {
        errors.push(conflict(
            spec,
            path_join(npath, "vlan"),
            format!(
                "interface '{}' (the VLAN {} sub-interface of uplink '{}') already exists and is not managed by kvmnet",
                v.device, v.id, v.uplink
            ),
        ));
    }
    let upath = path_join(npath, "uplink");
    let ul = match vlan_uplink(spec, snap, &v.uplink, &upath) {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            return Err(errors);
        }
    };
    if let Some(m) = net.mtu
        && m > ul.mtu
    {
        errors.push(conflict(
            spec,
            path_join(npath, "mtu"),
            format!(
                "mtu {m} is larger than uplink '{}' allows (mtu {}); a VLAN sub-interface cannot exceed its uplink's MTU",
                v.uplink, ul.mtu
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let link = VlanLink {
        name: v.device.clone(),
        network: net.name.clone(),
        parent: v.uplink.clone(),
        vid: v.id,
        port: None,
        master: Some(net.bridge.clone()),
        mtu: net.mtu.unwrap_or(ul.mtu),
        up: true,
        isolated: false,
    };
    Ok((link, ul.mac.unwrap_or_default(), !ul.up))
}

pub fn desired(spec: &Spec, snap: &Snapshot) -> Result<HostState, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut st = HostState::default();
    let foreign = |name: &str| snap.link(name).filter(|l| !is_ours(l));
    // Per direct network: its uplink, mode, MTU and (passthrough) the uplink's MAC.
    let mut direct: BTreeMap<&str, DirectNet> = BTreeMap::new();

    for net in spec.networks.values() {
        let npath = path_join("networks", &net.name);
        if net.mode == Mode::Direct {
            match direct_net(spec, snap, net, &npath) {
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
            match vxlan_link(spec, snap, net, vx, &npath) {
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
            match vlan_link(spec, snap, net, v, &npath) {
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
            match snap.link(up) {
                None => errors.push(conflict(
                    spec,
                    upath,
                    format!("uplink '{up}' does not exist on this host"),
                )),
                Some(l) if is_ours(l) => errors.push(conflict(
                    spec,
                    upath,
                    format!("uplink '{up}' is a device kvmnet created; name a host interface"),
                )),
                Some(l) if l.master.as_ref().is_some_and(|m| m != &net.bridge) => {
                    errors.push(conflict(
                        spec,
                        upath,
                        format!(
                            "uplink '{up}' is already enslaved to '{}'; release it first",
                            l.master.as_deref().unwrap_or_default()
                        ),
                    ))
                }
                Some(l) => {
                    // The bridge takes over the uplink's identity so neighbours and DHCP
                    // servers keep seeing the same host.
                    if let Some(m) = l.mac {
                        mac = m;
                    }
                    if net.mtu.is_none() {
                        mtu = l.mtu;
                    }
                    let ours = snap.link(&net.bridge).is_some_and(is_ours);
                    if ours {
                        addrs.extend(addrs_of(snap, &net.bridge));
                        routes.extend(movable_routes(&snap.routes, &net.bridge));
                        // What was moved and has since been deleted by hand comes back.
                        if let Some(m) = snap.moved.get(&net.bridge) {
                            for a in &m.addrs {
                                if !addrs.contains(a) {
                                    addrs.push(*a);
                                }
                            }
                            for r in &m.routes {
                                if !routes.contains(r) {
                                    routes.push(r.clone());
                                }
                            }
                        }
                    }
                    for a in addrs_of(snap, up) {
                        if !addrs.contains(&a) {
                            addrs.push(a);
                        }
                    }
                    for r in movable_routes(&snap.routes, up) {
                        if !routes.contains(&r) {
                            routes.push(r);
                        }
                    }
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
        if is_ours(l) || st.uplinks.contains_key(&l.name) {
            continue;
        }
        if !snap
            .link(m)
            .is_some_and(|b| b.kind == "bridge" && is_ours(b))
        {
            continue;
        }
        let mut addrs = addrs_of(snap, &l.name);
        let mut routes = movable_routes(&snap.routes, &l.name);
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

    let mut guest_names = BTreeSet::new();
    let mut routed_ns = BTreeSet::new();
    for vm in spec.vms.values() {
        for port in &vm.ports {
            let ppath = format!(
                "{}[{}]",
                path_join(&path_join("vms", &vm.name), "ports"),
                port.index
            );
            let Some(net) = spec.networks.get(&port.network) else {
                continue;
            };
            if foreign(&port.name).is_some() {
                errors.push(conflict(
                    spec,
                    format!("{ppath}.name"),
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
                            format!("{ppath}.owner"),
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
                            format!("{ppath}.netns"),
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
                                format!("{ppath}.netns"),
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
                        format!("{ppath}.vlans[{i}]"),
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
            st.ports.insert(
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
            );
        }
    }

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
            if snap.link(&port.name).is_some_and(|l| l.kind == kind) {
                check_ethtool(spec, snap, &port.name, e, &mut errors);
            }
            st.ethtool.insert(port.name.clone(), e.settings.clone());
        }
    }
    for (dev, e) in &spec.host.ethtool {
        match snap.link(dev) {
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
        if snap.link(dev).is_some() {
            let w = st.ethtool.entry(dev.clone()).or_default();
            for (k, v) in orig {
                w.entry(k.clone()).or_insert(*v);
            }
        }
    }

    st.nft = nft::table_for(spec);

    for net in spec.networks.values() {
        if let Some(bandwidth) = net.bandwidth_bps {
            let live = snap.link(&net.bridge).and_then(|l| l.shaping.as_ref());
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

/// What kvmnet owns on the host now, read from a snapshot. `uplinks` names foreign interfaces
/// the desired state enslaves; they are observed too, so their addresses can be moved.
pub fn observed(
    snap: &Snapshot,
    uplinks: &BTreeSet<String>,
    sysctl_keys: &BTreeSet<String>,
) -> HostState {
    let mut st = HostState::default();
    for l in &snap.links {
        let Some(alias) = l.alias.as_deref().and_then(parse_alias) else {
            continue;
        };
        // An IFB belongs to its port's traffic control; only an orphan is an object of its
        // own (and then one to remove).
        if let Some(port) = &alias.ifb_of
            && snap.links.iter().any(|x| &x.name == port)
        {
            continue;
        }
        let mac = l.mac.unwrap_or_default();
        if l.kind == "bridge" {
            if let Some(sh) = &l.shaping {
                st.shaping.insert(l.name.clone(), sh.clone());
            }
            st.bridges.insert(
                l.name.clone(),
                BridgeLink {
                    name: l.name.clone(),
                    network: alias.network.clone().unwrap_or_default(),
                    mac,
                    mtu: l.mtu,
                    up: l.up,
                },
            );
            continue;
        }
        if let Some(v) = l.vlan.as_ref().filter(|_| l.kind == "vlan") {
            st.vlans.insert(
                l.name.clone(),
                VlanLink {
                    name: l.name.clone(),
                    network: alias.network.clone().unwrap_or_default(),
                    parent: v.link.clone().unwrap_or_default(),
                    vid: v.id,
                    port: alias.trunk.clone(),
                    master: l.master.clone(),
                    mtu: l.mtu,
                    up: l.up,
                    isolated: l.isolated,
                },
            );
            continue;
        }
        if let Some(v) = l.vxlan.as_ref().filter(|_| l.kind == "vxlan") {
            st.vxlans.insert(
                l.name.clone(),
                VxlanLink {
                    name: l.name.clone(),
                    network: alias.network.clone().unwrap_or_default(),
                    vni: v.vni,
                    underlay: v.link.clone().unwrap_or_default(),
                    local: v.local.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                    port: v.port,
                    group: v.group,
                    learning: v.learning,
                    master: l.master.clone(),
                    mtu: l.mtu,
                    up: l.up,
                },
            );
            st.fdb.insert(l.name.clone(), l.fdb.clone());
            continue;
        }
        let kind = match l.kind.as_str() {
            "macvtap" => {
                let m = l.macvtap.clone().unwrap_or_default();
                PortKind::Macvtap {
                    // A mode kvmnet does not make shows as no uplink: the port is made again.
                    uplink: m.link.filter(|_| m.mode.is_some()).unwrap_or_default(),
                    mode: m.mode.unwrap_or(DirectMode::Bridge),
                    owner: m.dev_owner,
                }
            }
            "tun" => PortKind::Tap {
                owner: l.tun_owner,
                multi_queue: l.tun_multi_queue,
            },
            "veth" => {
                let netns = alias.netns.clone().unwrap_or_default();
                let g = snap.netns.get(&netns).and_then(|g| {
                    let mark = guest_alias(&l.name);
                    let link = g.links.iter().find(|x| x.alias.as_deref() == Some(&mark))?;
                    let addr = g.addrs.iter().find(|a| a.dev == link.name).map(|a| a.addr);
                    let gateway = g
                        .routes
                        .iter()
                        .find(|r| r.dev == link.name && r.dst.prefix == 0 && r.table == 254)
                        .and_then(|r| r.gateway);
                    Some(GuestEnd {
                        name: link.name.clone(),
                        mac: link.mac.unwrap_or_default(),
                        mtu: link.mtu,
                        up: link.up,
                        addr: addr.filter(|_| !alias.dhcp),
                        gateway: gateway.filter(|_| !alias.dhcp),
                        dhcp: alias.dhcp,
                    })
                });
                PortKind::Veth {
                    netns,
                    // A missing far end shows as MTU 0, which forces the port to be made again.
                    guest: g.unwrap_or(GuestEnd {
                        name: String::new(),
                        mac: Default::default(),
                        mtu: 0,
                        up: false,
                        addr: None,
                        gateway: None,
                        dhcp: alias.dhcp,
                    }),
                }
            }
            // Something else wearing our mark (made by a newer kvmnet?): treat it as a port
            // of unknown kind so that it is replaced or removed, never silently kept.
            _ => PortKind::Tap {
                owner: Some(u32::MAX),
                multi_queue: false,
            },
        };
        st.ports.insert(
            l.name.clone(),
            PortLink {
                name: l.name.clone(),
                vm: alias.vm.clone().unwrap_or_default(),
                network: alias.network.clone().unwrap_or_default(),
                master: l.master.clone(),
                mac,
                mtu: l.mtu,
                up: l.up,
                isolated: l.isolated,
                qos_in: alias.qos_in,
                qos_out: alias.qos_out,
                mirror: alias.mirror.clone(),
                tc_ok: !l.tc_drift,
                kind,
            },
        );
    }
    for l in &snap.links {
        if is_ours(l) {
            continue;
        }
        let enslaved = l
            .master
            .as_ref()
            .is_some_and(|m| st.bridges.contains_key(m));
        if enslaved || uplinks.contains(&l.name) {
            st.uplinks.insert(
                l.name.clone(),
                UplinkLink {
                    name: l.name.clone(),
                    master: l.master.clone(),
                },
            );
        }
    }
    let devs: Vec<String> = st
        .bridges
        .keys()
        .chain(st.uplinks.keys())
        .cloned()
        .collect();
    for d in devs {
        st.addrs.insert(d.clone(), addrs_of(snap, &d));
        st.routes
            .insert(d.clone(), movable_routes(&snap.routes, &d));
    }
    st.netns = snap
        .netns
        .iter()
        .filter(|(_, g)| g.owned)
        .map(|(n, _)| n.clone())
        .collect();
    st.nft = snap.nft.clone();
    st.ethtool = snap
        .ethtool
        .iter()
        .map(|(d, e)| (d.clone(), e.values.clone()))
        .collect();
    for k in sysctl_keys {
        if let Some(Some(v)) = snap.sysctls.get(k) {
            st.sysctls.insert(k.clone(), normalize_sysctl(v));
        }
    }
    st
}
