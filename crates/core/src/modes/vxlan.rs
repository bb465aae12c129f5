//! `vxlan`: an L2 overlay across hosts, a VXLAN device on the network's bridge over an
//! underlay interface, flooding to a list of remotes or a multicast group.

use super::{Fields, NetworkMode, Take};
use crate::desired::{BridgeDraft, Build, HostLink, conflict, is_ours, resolve_uplink};
use crate::snapshot::Snapshot;
use crate::spec::naming::{self, overlay_bridge_mac};
use crate::spec::validate::{
    Ctx, NetReader, Obj, VNI_MAX, VXLAN_FIELDS, int_in, join_path as join, list, parse_ip,
    read_ifname_field, special, text,
};
use crate::spec::{Mode, Network, Spec, SpecError, VXLAN_OVERHEAD, VXLAN_PORT, path_join};
use crate::state::{HostState, VxlanLink};

pub(crate) struct Vxlan;

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Optional,
    uplink: Take::Elsewhere,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Optional,
    ipv6: Take::Refused(super::bridge::LAN_V6),
    routed_by_host: false,
    forwarding: false,
    own: VXLAN_FIELDS,
};

impl NetworkMode for Vxlan {
    fn mode(&self) -> Mode {
        Mode::Vxlan
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }

    fn read_own(&self, r: &mut NetReader<'_, '_>) {
        if r.name_ok {
            r.d.vxlan = read_vxlan(r.cx, r.o, &r.d.path, &r.d.name);
        }
    }

    /// The VXLAN device, with a flood entry per remote; the bridge takes its MTU and a MAC
    /// made from the local endpoint (so each host's bridge differs on the overlay).
    fn lower(&self, b: &mut Build<'_>, net: &Network, npath: &str, br: &mut BridgeDraft) {
        let Some(vx) = &net.vxlan else { return };
        match vxlan_link(b.spec, b.snap, &b.st, net, vx, npath) {
            Ok(v) => {
                br.mtu = v.mtu;
                br.mac = overlay_bridge_mac(&net.name, v.local);
                let mut fdb = vx.remotes.clone();
                fdb.sort();
                b.st.fdb.insert(v.name.clone(), fdb);
                b.st.vxlans.insert(v.name.clone(), v);
            }
            Err(mut e) => b.errors.append(&mut e),
        }
    }
}

/// The vxlan settings of a `mode: vxlan` network; `None` if any of them is wrong (each
/// problem reported).
#[allow(clippy::too_many_lines, reason = "one arm per vxlan field")]
fn read_vxlan(cx: &mut Ctx, o: &Obj, path: &str, network: &str) -> Option<crate::spec::Vxlan> {
    let before = cx.errors.len();
    let vni = o
        .required(
            cx,
            "vni",
            "a vxlan network needs its VXLAN network identifier (1 to 16777215), like vni: 4242",
        )
        .and_then(|vf| {
            int_in(
                cx,
                &vf,
                &format!("a VNI between 1 and {VNI_MAX}"),
                1,
                VNI_MAX,
            )
        });
    let underlay = o
        .required(
            cx,
            "underlay",
            "a vxlan network needs the host interface that carries the tunnel, like eth0",
        )
        .and_then(|uf| read_ifname_field(cx, &uf, "the host interface that carries the tunnel"));
    let port = match o.get(cx, "port") {
        Some(pf) => int_in(cx, &pf, "a UDP port between 1 and 65535", 1, 65535),
        None => Some(i128::from(VXLAN_PORT)),
    };
    let mut remotes = Vec::new();
    let rf = o.get(cx, "remotes");
    if let Some(rf) = &rf
        && let Some(items) = list(cx, rf, "a list of IPv4 addresses of the other hosts")
    {
        for item in items {
            let Some(t) = text(cx, &item, "an IPv4 address") else {
                continue;
            };
            match parse_ip(&t).and_then(|a| match special(a) {
                Some(w) => Err(format!(
                    "remote {a} is {w}; a remote is the unicast IPv4 address of another host"
                )),
                None => Ok(a),
            }) {
                Ok(a) if remotes.contains(&a) => cx.err(
                    &item.path,
                    item.loc(),
                    format!("remote {a} is listed twice"),
                ),
                Ok(a) => remotes.push(a),
                Err(m) => cx.err(&item.path, item.loc(), m),
            }
        }
    }
    let mut group = None;
    let gf = o.get(cx, "group");
    if let Some(gf) = &gf {
        if rf.is_some() {
            cx.err(
                &gf.path,
                gf.loc(),
                "give either remotes (unicast peers) or group (multicast), not both",
            );
        } else if let Some(t) = text(cx, gf, "a multicast IPv4 address like 239.1.1.1") {
            match parse_ip(&t) {
                Ok(a) if a.is_multicast() => group = Some(a),
                Ok(a) => cx.err(
                    &gf.path,
                    gf.loc(),
                    format!(
                        "{a} is not a multicast address; a group is in 224.0.0.0/4, like 239.1.1.1 (for unicast peers use remotes)"
                    ),
                ),
                Err(m) => cx.err(&gf.path, gf.loc(), m),
            }
        }
    } else if rf.is_none() {
        cx.err(
            &join(path, "remotes"),
            o.loc,
            "a vxlan network needs its peers: remotes (a list of the other hosts' IPv4 addresses) or group (a multicast address)",
        );
    } else if let Some(rf) = &rf
        && remotes.is_empty()
        && cx.errors.len() == before
    {
        cx.err(
            &rf.path,
            rf.loc(),
            "remotes is empty; list the other hosts' IPv4 addresses",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(crate::spec::Vxlan {
        device: naming::vxlan_name(network),
        vni: u32::try_from(vni?).ok()?,
        underlay: underlay?,
        remotes,
        group,
        port: u16::try_from(port?).ok()?,
    })
}

/// The VXLAN device of a `vxlan` network, from its underlay as the host has it: the local
/// endpoint is the underlay's first IPv4 address and the MTU, unless the spec sets one, the
/// underlay's minus the encapsulation.
fn vxlan_link(
    spec: &Spec,
    snap: &Snapshot,
    st: &HostState,
    net: &Network,
    vx: &crate::spec::Vxlan,
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
