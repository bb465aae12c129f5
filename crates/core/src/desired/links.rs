//! The devices a network hangs on its uplink or underlay: VXLAN, VLAN and direct (macvtap)
//! networks, and the ethtool settings checked against what a device supports.

use super::*;

/// The VXLAN device of a `vxlan` network, from its underlay as the host has it: the local
/// endpoint is the underlay's first IPv4 address and the MTU, unless the spec sets one, the
/// underlay's minus the encapsulation.
pub(super) fn vxlan_link(
    spec: &Spec,
    snap: &Snapshot,
    st: &HostState,
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
    let (underlay_mtu, local) = match resolve_uplink(spec, snap, u) {
        HostLink::Missing => {
            errors.push(conflict(
                spec,
                upath,
                format!("underlay '{u}' does not exist on this host"),
            ));
            return Err(errors);
        }
        HostLink::DeclaredBond => match st.bonds.get(u) {
            Some(b) => (
                b.mtu,
                st.addrs.get(u).and_then(|a| a.first()).map(|a| a.cidr.addr),
            ),
            // The bond itself is in error; that error says why.
            None => return Err(errors),
        },
        HostLink::Ours => {
            errors.push(conflict(
                spec,
                upath.clone(),
                format!("underlay '{u}' is a device kvmnet created; name the host interface that carries the tunnel"),
            ));
            (0, None)
        }
        HostLink::Foreign(ul) => (
            st.mtus.get(u).copied().unwrap_or(ul.mtu),
            snap.addrs.iter().find(|a| &a.dev == u).map(|a| a.addr.addr),
        ),
    };
    if local.is_none() {
        errors.push(conflict(
            spec,
            upath,
            format!("underlay '{u}' has no IPv4 address to use as the tunnel's local endpoint"),
        ));
    }
    let room = underlay_mtu.saturating_sub(VXLAN_OVERHEAD);
    if let Some(m) = net.mtu
        && m > room
    {
        errors.push(conflict(
            spec,
            path_join(npath, "mtu"),
            format!(
                "mtu {m} does not fit over underlay '{u}' (mtu {underlay_mtu}): VXLAN adds {VXLAN_OVERHEAD} bytes, so at most {room}",
            ),
        ));
    }
    let mtu = net.mtu.unwrap_or(room);
    if mtu < 68 {
        errors.push(conflict(
            spec,
            path_join(npath, "underlay"),
            format!("underlay '{u}' (mtu {underlay_mtu}) leaves no room for VXLAN frames"),
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
pub(super) fn check_ethtool(
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
pub(super) struct DirectNet {
    pub(super) uplink: String,
    pub(super) mode: DirectMode,
    pub(super) mtu: u32,
    /// Passthrough: the macvtap inherits the uplink's MAC.
    pub(super) passthrough_mac: Option<crate::spec::Mac>,
}

/// A direct network's uplink as the host has it: an existing interface kvmnet does not own,
/// in no bridge or bond (the kernel gives a device's receive path to one of them only), with
/// room for the network's MTU. The uplink itself is never changed.
pub(super) fn direct_net(
    spec: &Spec,
    snap: &Snapshot,
    st: &HostState,
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
    // An MTU host.uplinks sets is in place before the macvtap is made.
    let ul_mtu = st.mtus.get(&up).copied().unwrap_or(l.mtu);
    if let Some(m) = net.mtu
        && m > ul_mtu
    {
        return Err(conflict(
            spec,
            path_join(npath, "mtu"),
            format!(
                "mtu {m} is more than uplink '{up}' carries ({}); a macvtap cannot exceed its uplink",
                ul_mtu
            ),
        ));
    }
    Ok(DirectNet {
        uplink: up,
        mode,
        mtu: net.mtu.unwrap_or(ul_mtu),
        passthrough_mac: l.mac.filter(|_| mode == DirectMode::Passthrough),
    })
}

/// The 802.1Q sub-interface of a `vlan` network on its uplink, and whether the uplink must
/// be brought up. Its MTU is the uplink's unless the spec sets a smaller one.
pub(super) fn vlan_link(
    spec: &Spec,
    snap: &Snapshot,
    st: &HostState,
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
    let uplink = &v.uplink;
    // The uplink's MTU, MAC and whether it is up: a host interface as found, or a bond of
    // host.uplinks as it will be (up, with its first member's MAC until it has its own).
    let (ul_mtu, ul_mac, ul_up) = match resolve_uplink(spec, snap, uplink) {
        // An MTU host.uplinks sets is in place before the sub-interface is made.
        HostLink::Foreign(l) => (
            st.mtus.get(uplink).copied().unwrap_or(l.mtu),
            l.mac.unwrap_or_default(),
            l.up,
        ),
        HostLink::DeclaredBond => match st.bonds.get(uplink) {
            Some(b) => {
                let mac = snap
                    .link(uplink)
                    .or_else(|| snap.link(&b.home))
                    .and_then(|l| l.mac)
                    .unwrap_or_default();
                (b.mtu, mac, true)
            }
            // The bond itself is in error; that error says why.
            None => return Err(errors),
        },
        HostLink::Missing => {
            errors.push(conflict(
                spec,
                upath,
                format!("uplink '{uplink}' does not exist on this host"),
            ));
            return Err(errors);
        }
        HostLink::Ours => {
            errors.push(conflict(
                spec,
                upath,
                format!(
                    "uplink '{uplink}' is a device kvmnet created; name the host interface (or a bond of host.uplinks) that carries the VLANs"
                ),
            ));
            return Err(errors);
        }
    };
    if let Some(m) = net.mtu
        && m > ul_mtu
    {
        errors.push(conflict(
            spec,
            path_join(npath, "mtu"),
            format!(
                "mtu {m} is larger than uplink '{}' allows (mtu {ul_mtu}); a VLAN sub-interface cannot exceed its uplink's MTU",
                v.uplink
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
        mtu: net.mtu.unwrap_or(ul_mtu),
        up: true,
        isolated: false,
    };
    Ok((link, ul_mac, !ul_up))
}
