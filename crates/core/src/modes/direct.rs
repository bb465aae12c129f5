//! `direct`: guests straight on an uplink's segment through macvtap devices, with no bridge
//! and no address of the host's: the uplink itself is never changed.

use super::{Fields, NetworkMode, Take};
use crate::desired::{Build, DirectNet, conflict, is_ours};
use crate::snapshot::Snapshot;
use crate::spec::validate::{DIRECT_MODES, NetReader, show, text};
use crate::spec::{DirectMode, Mode, Network, Spec, SpecError, path_join};
use crate::state::{HostState, parse_alias};

pub(crate) struct Direct;

static FIELDS: Fields = Fields {
    bridge: Take::Refused(
        "a direct network has no bridge: its ports are macvtap devices on the uplink (remove bridge, or use mode bridge)",
    ),
    ipv4: Take::Refused(
        "a direct network takes no ipv4: the host has no address on it (its guests sit on the uplink's segment and use that network's gateway); remove ipv4",
    ),
    uplink: Take::Required(
        "a direct network needs the host interface its macvtap ports sit on, like eth0",
    ),
    dhcp: Take::Refused(
        "kvmnet serves no DHCP on a direct network: the host has no address there; its guests use the uplink segment's DHCP server (remove dhcp)",
    ),
    isolate_ports: Take::Refused(
        "isolate_ports is a bridge setting; on a direct network use direct_mode: private (ports reach the uplink's segment, not each other)",
    ),
    ipv6_prefixes: Take::Refused(
        "direct ports are not guarded (macvtap bypasses the host's bridge)",
    ),
    ipv6: Take::Refused(
        "ipv6 (a gateway address) applies to nat, routed and isolated networks; a direct network's guests sit on the uplink's LAN, whose router serves them",
    ),
    routed_by_host: false,
    forwarding: false,
    own: &["direct_mode"],
};

impl NetworkMode for Direct {
    fn mode(&self) -> Mode {
        Mode::Direct
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }

    /// `direct_mode`: how the macvtap ports reach each other (bridge when absent).
    fn read_own(&self, r: &mut NetReader<'_, '_>) {
        let cx = &mut *r.cx;
        let Some(df) = r.o.get(cx, "direct_mode") else {
            r.d.direct_mode = Some((DirectMode::Bridge, r.o.loc));
            return;
        };
        if let Some(t) = text(cx, &df, DIRECT_MODES) {
            match DirectMode::parse(&t) {
                Some(dm) => r.d.direct_mode = Some((dm, df.loc())),
                None => cx.err(
                    &df.path,
                    df.loc(),
                    format!(
                        "'{}' is not a direct mode; expected {DIRECT_MODES}",
                        show(&t)
                    ),
                ),
            }
        }
    }

    /// No bridge: what the ports need from the uplink, for the ports to use.
    fn contribute(&self, b: &mut Build<'_>, net: &Network, npath: &str) {
        match direct_net(b.spec, b.snap, &b.st, net, npath) {
            Ok(d) => {
                b.direct.insert(net.name.clone(), d);
            }
            Err(e) => b.errors.push(e),
        }
    }
}

/// A direct network's uplink as the host has it: an existing interface kvmnet does not own,
/// in no bridge or bond (the kernel gives a device's receive path to one of them only), with
/// room for the network's MTU. The uplink itself is never changed.
fn direct_net(
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
