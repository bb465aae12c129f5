//! `bridge`: a host interface enslaved to the network's bridge; the bridge takes over the
//! uplink's MAC, MTU, addresses and routes, so the host stays reachable as it was, and the
//! guests sit on the uplink's LAN.

use super::{Fields, NetworkMode, Take};
use crate::desired::{
    BridgeDraft, Build, HostLink, addrs_of, is_ours, movable_routes, push_new, resolve_uplink,
};
use crate::spec::{Mode, Network, path_join};
use crate::state::UplinkLink;

pub(crate) struct Bridge;

/// Why a network whose router is on the LAN takes no gateway address of its own.
pub(super) const LAN_V6: &str = "ipv6 (a gateway address) applies to nat, routed and isolated networks, where kvmnet is the router; here the LAN's router announces: list its prefixes in ipv6_prefixes";

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Refused(
        "a bridge network takes no ipv4: the host keeps its addresses on the uplink \
         (they move to the bridge); remove ipv4 or use mode nat, routed or isolated",
    ),
    uplink: Take::Required("a bridge network needs the host interface to enslave, like eth0"),
    dhcp: Take::Refused(
        "kvmnet serves no DHCP on a bridge network: its guests sit on the uplink's LAN \
         and use that LAN's DHCP server; remove dhcp",
    ),
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Optional,
    ipv6: Take::Refused(LAN_V6),
    routed_by_host: false,
    forwarding: false,
    own: &[],
};

impl NetworkMode for Bridge {
    fn mode(&self) -> Mode {
        Mode::Bridge
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }

    /// The uplink, enslaved; what it brings (MAC, MTU, addresses and routes) goes to the
    /// bridge.
    fn lower(&self, b: &mut Build<'_>, net: &Network, npath: &str, br: &mut BridgeDraft) {
        let Build {
            spec,
            snap,
            links,
            st,
            errors,
            ..
        } = b;
        let (spec, snap) = (*spec, *snap);
        let conflict = crate::desired::conflict;
        if let Some(up) = &net.uplink {
            let upath = path_join(npath, "uplink");
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
                        .or_else(|| links.get(&b.home))
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
                    br.mac = m;
                }
                if net.mtu.is_none() {
                    br.mtu = umtu;
                }
                let ours = links.get(&net.bridge).is_some_and(is_ours);
                if ours {
                    br.addrs.extend(addrs_of(snap, &net.bridge));
                    br.routes.extend(movable_routes(&snap.routes, &net.bridge));
                    // What was moved and has since been deleted by hand comes back.
                    if let Some(m) = snap.moved.get(&net.bridge) {
                        push_new(&mut br.addrs, &m.addrs);
                        push_new(&mut br.routes, &m.routes);
                    }
                }
                push_new(&mut br.addrs, &uaddrs);
                push_new(&mut br.routes, &uroutes);
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
}
