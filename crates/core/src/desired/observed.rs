//! What kvmnet owns on the host now, read from a snapshot: the other side of every diff.

use super::*;
use crate::snapshot::{BondSnap, VlanSnap, VxlanSnap};
use crate::state::Alias;

/// Foreign interfaces the desired state touches, so that observation looks at them too.
#[derive(Clone, Debug, Default)]
pub struct Interest {
    /// Enslaved to bridges or bonds (their addresses move).
    pub uplinks: BTreeSet<String>,
    pub members: BTreeSet<String>,
    /// Whose MTU is set.
    pub mtus: BTreeSet<String>,
    pub sysctls: BTreeSet<String>,
}

impl Interest {
    pub fn of(st: &HostState) -> Interest {
        Interest {
            uplinks: st.uplinks.keys().cloned().collect(),
            members: st.members.keys().cloned().collect(),
            mtus: st.mtus.keys().cloned().collect(),
            sysctls: st.sysctls.keys().cloned().collect(),
        }
    }
}

/// What kvmnet owns on the host now, read from a snapshot, plus the foreign interfaces of
/// `interest` (the desired state enslaves them or sets their MTU).
pub fn observed(snap: &Snapshot, interest: &Interest) -> HostState {
    let mut st = observed_owned(snap);
    observed_foreign(snap, interest, &mut st);
    st
}

/// The part of [`observed`] that needs no interest: the links kvmnet made (the bulk of the
/// work on a large host, so a planner may do it while the desired state is being made).
pub fn observed_owned(snap: &Snapshot) -> HostState {
    let mut st = HostState::default();
    // Built at the end in one pass: cheaper than thousands of inserts into the map.
    let mut port_links: Vec<(String, PortLink)> = Vec::with_capacity(snap.links.len());
    let shaped_out = shaped_out_ports(snap);
    for l in &snap.links {
        let Some(alias) = l.alias.as_deref().and_then(parse_alias) else {
            continue;
        };
        if let Some(b) = l.bond.as_ref().filter(|_| is_our_bond(l)) {
            st.bonds.insert(l.name.clone(), bond_link(l, b, &alias));
            continue;
        }
        // An IFB belongs to its port's traffic control; only an orphan is an object of its
        // own (and then one to remove).
        if let Some(port) = &alias.ifb_of
            && shaped_out.contains(port.as_str())
        {
            continue;
        }
        if l.kind == "bridge" {
            if let Some(sh) = &l.shaping {
                st.shaping.insert(l.name.clone(), sh.clone());
            }
            st.bridges.insert(l.name.clone(), bridge_link(l, &alias));
            continue;
        }
        if let Some(v) = l.vlan.as_ref().filter(|_| l.kind == "vlan") {
            st.vlans.insert(l.name.clone(), vlan_link(l, v, &alias));
            continue;
        }
        if let Some(v) = l.vxlan.as_ref().filter(|_| l.kind == "vxlan") {
            st.vxlans.insert(l.name.clone(), vxlan_link(l, v, &alias));
            st.fdb.insert(l.name.clone(), l.fdb.clone());
            continue;
        }
        port_links.push((l.name.clone(), port_link(snap, l, alias)));
    }
    st.ports = port_links.into_iter().collect();
    st.nb = snap.nb.clone();
    st.chassis.clone_from(&snap.chassis);
    st
}

/// Ports whose mark records outbound shaping: only their IFBs are theirs. Any other IFB
/// is an orphan to remove, such as one made by an apply killed before it recorded it.
fn shaped_out_ports(snap: &Snapshot) -> HashSet<&str> {
    snap.links
        .iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .and_then(parse_alias)
                .is_some_and(|a| a.qos_out.is_some())
        })
        .map(|l| l.name.as_str())
        .collect()
}

/// A bond of `host.uplinks` as kvmnet made it.
fn bond_link(l: &LinkSnap, b: &BondSnap, alias: &Alias) -> BondLink {
    BondLink {
        name: l.name.clone(),
        mode: b.mode.clone(),
        miimon: b.miimon,
        lacp_rate: if b.mode == BondMode::Lacp.as_str() {
            b.lacp_rate.clone()
        } else {
            String::new()
        },
        xmit_hash_policy: b.xmit_hash_policy.clone(),
        min_links: b.min_links,
        primary: b.primary.clone(),
        mtu: l.mtu,
        home: alias.home.clone().unwrap_or_default(),
        up: l.up,
    }
}

/// A network's bridge.
fn bridge_link(l: &LinkSnap, alias: &Alias) -> BridgeLink {
    BridgeLink {
        name: l.name.clone(),
        network: alias.network.clone().unwrap_or_default(),
        mac: l.mac.unwrap_or_default(),
        mtu: l.mtu,
        up: l.up,
    }
}

/// A VLAN sub-interface: a vlan network's, or a trunk port's.
fn vlan_link(l: &LinkSnap, v: &VlanSnap, alias: &Alias) -> VlanLink {
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
    }
}

/// A vxlan network's VXLAN device (its flood entries are read apart).
fn vxlan_link(l: &LinkSnap, v: &VxlanSnap, alias: &Alias) -> VxlanLink {
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
    }
}

/// A VM's port: any other link wearing our mark.
fn port_link(snap: &Snapshot, l: &LinkSnap, alias: Alias) -> PortLink {
    let kind = port_kind(snap, l, &alias);
    PortLink {
        name: l.name.clone(),
        vm: alias.vm.unwrap_or_default(),
        network: alias.network.unwrap_or_default(),
        master: l.master.clone(),
        mac: l.mac.unwrap_or_default(),
        mtu: l.mtu,
        up: l.up,
        isolated: l.isolated,
        qos_in: alias.qos_in,
        qos_out: alias.qos_out,
        mirror: alias.mirror,
        tc_ok: !l.tc_drift,
        kind,
    }
}

/// What kind of port `l` is, with what kvmnet set on it.
fn port_kind(snap: &Snapshot, l: &LinkSnap, alias: &Alias) -> PortKind {
    match l.kind.as_str() {
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
            let guest = guest_end(snap, &netns, &l.name, alias.dhcp);
            PortKind::Veth {
                netns,
                // A missing far end shows as MTU 0, which forces the port to be made again.
                guest: guest.unwrap_or(GuestEnd {
                    name: String::new(),
                    mac: Default::default(),
                    mtu: 0,
                    up: false,
                    addr: None,
                    gateway: None,
                    addr6: None,
                    gateway6: None,
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
    }
}

/// The far end of veth port `port` in guest namespace `netns`, found by its mark; its
/// addresses and default routes only when kvmnet configures them (no `dhcp`). Of IPv6, the
/// snapshot holds only permanent addresses and routes not learnt from router
/// advertisements: what SLAAC and DHCPv6 clients add is the guest's own.
fn guest_end(snap: &Snapshot, netns: &str, port: &str, dhcp: bool) -> Option<GuestEnd> {
    let g = snap.netns.get(netns)?;
    let mark = guest_alias(port);
    let link = g.links.iter().find(|x| x.alias.as_deref() == Some(&mark))?;
    let addr = g.addrs.iter().find(|a| a.dev == link.name).map(|a| a.addr);
    let gateway = g
        .routes
        .iter()
        .find(|r| r.dev == link.name && r.dst.prefix == 0 && r.table == 254)
        .and_then(|r| r.gateway);
    let addr6 = g.addrs6.iter().find(|a| a.dev == link.name).map(|a| a.addr);
    let gateway6 = g
        .routes6
        .iter()
        .find(|r| r.dev == link.name && r.dst.prefix == 0 && r.table == 254)
        .and_then(|r| r.gateway);
    Some(GuestEnd {
        name: link.name.clone(),
        mac: link.mac.unwrap_or_default(),
        mtu: link.mtu,
        up: link.up,
        addr: addr.filter(|_| !dhcp),
        gateway: gateway.filter(|_| !dhcp),
        addr6: addr6.filter(|_| !dhcp),
        gateway6: gateway6.filter(|_| !dhcp),
        dhcp,
    })
}

/// The rest of [`observed`], added to what [`observed_owned`] read: the foreign interfaces
/// of `interest`, addresses and routes, namespaces, nft tables, ethtool settings, sysctls.
pub fn observed_foreign(snap: &Snapshot, interest: &Interest, st: &mut HostState) {
    let uplinks = &interest.uplinks;
    let sysctl_keys = &interest.sysctls;
    for l in &snap.links {
        if is_ours(l) && !is_our_bond(l) {
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
        if is_ours(l) {
            continue;
        }
        let member = l.master.as_ref().is_some_and(|m| st.bonds.contains_key(m));
        if member || interest.members.contains(&l.name) {
            st.members.insert(
                l.name.clone(),
                MemberLink {
                    name: l.name.clone(),
                    bond: l.master.clone().filter(|m| st.bonds.contains_key(m)),
                },
            );
        }
        if interest.mtus.contains(&l.name) {
            st.mtus.insert(l.name.clone(), l.mtu);
        }
    }
    let devs: BTreeSet<String> = st
        .bridges
        .keys()
        .chain(st.uplinks.keys())
        .chain(st.bonds.keys())
        .chain(st.members.keys())
        .cloned()
        .collect();
    // Only kvmnet's bridges: an uplink's own IPv6 is the host's, never moved or managed.
    for a in snap
        .addrs6
        .iter()
        .filter(|a| st.bridges.contains_key(&a.dev))
    {
        st.addrs6.entry(a.dev.clone()).or_default().push(a.addr);
    }
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
}
