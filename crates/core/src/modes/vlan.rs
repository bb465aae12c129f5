//! `vlan`: one 802.1Q VLAN of a host uplink, a VLAN sub-interface of the uplink on the
//! network's bridge. kvmnet brings the uplink up if it is down, and gives that back.

use super::{Fields, NetworkMode, Take};
use crate::desired::{BridgeDraft, Build, HostLink, conflict, is_ours, resolve_uplink};
use crate::snapshot::Snapshot;
use crate::spec::naming::{self, vlan_bridge_mac};
use crate::spec::validate::{NetReader, int_in, join_path as join, read_ifname_field};
use crate::spec::{Mode, Network, Spec, SpecError, VLAN_ID_MAX, path_join};
use crate::state::{HostState, VlanLink};

pub(crate) struct Vlan;

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Optional,
    uplink: Take::Own,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Optional,
    ipv6: Take::Refused(super::bridge::LAN_V6),
    routed_by_host: false,
    forwarding: false,
    own: &["vlan"],
};

impl NetworkMode for Vlan {
    fn mode(&self) -> Mode {
        Mode::Vlan
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }

    /// The uplink that carries the VLAN, and its id.
    fn read_own(&self, r: &mut NetReader<'_, '_>) {
        let cx = &mut *r.cx;
        let d = &mut *r.d;
        let uplink = match r.o.get(cx, "uplink") {
            Some(uf) => {
                d.vlan_uplink_loc = uf.loc();
                read_ifname_field(
                    cx,
                    &uf,
                    "the host interface that carries the VLAN tagged, like eth1",
                )
            }
            None => {
                cx.err(
                    &join(&d.path, "uplink"),
                    r.o.loc,
                    "missing required field 'uplink'; a vlan network needs the host interface that carries its tagged frames, like eth1",
                );
                None
            }
        };
        let Some(vf) = r.o.get(cx, "vlan") else {
            cx.err(
                &join(&d.path, "vlan"),
                r.o.loc,
                format!(
                    "missing required field 'vlan'; a vlan network needs its 802.1Q VLAN id (1 to {VLAN_ID_MAX}), like vlan: 10"
                ),
            );
            return;
        };
        d.vlan_loc = vf.loc();
        let id = int_in(
            cx,
            &vf,
            &format!("a VLAN id between 1 and {VLAN_ID_MAX}"),
            1,
            i128::from(VLAN_ID_MAX),
        )
        .and_then(|n| u16::try_from(n).ok());
        if let (Some(id), Some(uplink)) = (id, uplink) {
            d.vlan = Some(crate::spec::Vlan {
                id,
                device: naming::uplink_vlan_name(&uplink, id),
                uplink,
            });
        }
    }

    fn refusal(&self, _field: &str, here: Mode) -> String {
        format!(
            "vlan applies only to mode vlan; a {} network has no VLAN id (remove it, or use mode: vlan)",
            here.as_str()
        )
    }

    /// The VLAN sub-interface; the bridge takes its MTU and a MAC made from the uplink's.
    fn lower(&self, b: &mut Build<'_>, net: &Network, npath: &str, br: &mut BridgeDraft) {
        let Some(v) = &net.vlan else { return };
        match vlan_link(b.spec, b.snap, &b.st, net, v, npath) {
            Ok((l, uplink_mac, raise)) => {
                br.mtu = l.mtu;
                br.mac = vlan_bridge_mac(&net.name, uplink_mac);
                if raise {
                    b.st.raise.insert(v.uplink.clone());
                }
                b.st.vlans.insert(l.name.clone(), l);
            }
            Err(mut e) => b.errors.append(&mut e),
        }
    }
}

/// The 802.1Q sub-interface of a `vlan` network on its uplink, and whether the uplink must
/// be brought up. Its MTU is the uplink's unless the spec sets a smaller one.
fn vlan_link(
    spec: &Spec,
    snap: &Snapshot,
    st: &HostState,
    net: &Network,
    v: &crate::spec::Vlan,
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
