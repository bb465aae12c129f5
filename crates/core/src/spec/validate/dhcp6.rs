//! Where a network's DHCPv6 settings (`dhcp.range6`, `dhcp.dns6`) must lie, checked with the
//! rest of the spec: the network's `ipv6` prefix, its gateway, the ports' static addresses
//! and the RA mode that tells guests whether to ask DHCPv6 for addresses.

use super::ipv6::contains6;
use super::*;

pub(super) fn check_dhcp6(cx: &mut Ctx, nets: &[NetDraft], ports: &[&PortDraft]) {
    for n in nets {
        check_network(cx, n, ports);
    }
    for p in ports {
        let (Some(net), Some(a)) = (&p.network, p.ipv6) else {
            continue;
        };
        let Some(n) = nets.iter().find(|n| &n.name == net) else {
            continue;
        };
        if let Some((lo, hi)) = n.dhcp.as_ref().and_then(|d| d.range6)
            && (lo..=hi).contains(&a)
        {
            cx.err(
                &join(&p.path, "ipv6"),
                p.ipv6_loc,
                format!(
                    "{a} is inside network {net}'s DHCPv6 range {lo}-{hi}; a port's own address must stay out of the pool (move it, or shrink the range)"
                ),
            );
        }
    }
}

fn check_network(cx: &mut Ctx, n: &NetDraft, ports: &[&PortDraft]) {
    let dhcp = n.dhcp.as_ref();
    let dhcp_path = join(&n.path, "dhcp");
    let at = |cx: &Ctx, key: &str| -> (String, Loc) {
        let path = join(&dhcp_path, key);
        let loc = cx.loc_at(&path).unwrap_or(n.key_loc);
        (path, loc)
    };
    if !n.v6.given {
        for (key, set) in [
            ("range6", dhcp.is_some_and(|d| d.range6.is_some())),
            ("dns6", dhcp.is_some_and(|d| !d.dns6.is_empty())),
        ] {
            if set {
                let (path, loc) = at(cx, key);
                cx.err(
                    &path,
                    loc,
                    format!(
                        "{key} is for DHCPv6, but network {} has no ipv6; give it one (ipv6: GATEWAY/64)",
                        n.name
                    ),
                );
            }
        }
        return;
    }
    let Some(gw) = n.v6.gateway else { return };
    if dhcp.is_none() && cx.loc_at(&dhcp_path).is_some() {
        return; // a dhcp block with errors of its own
    }
    let mode = n.v6.ra.mode;
    match dhcp.and_then(|d| d.range6) {
        Some((lo, hi)) => {
            let (path, loc) = at(cx, "range6");
            let prefix = gw.network();
            let why = if !contains6(gw, lo) || !contains6(gw, hi) {
                Some(format!(
                    "the range {lo}-{hi} is outside the network's prefix {prefix}"
                ))
            } else if (lo..=hi).contains(&gw.addr) {
                Some(format!(
                    "the range {lo}-{hi} contains the gateway {}; keep the gateway out of the pool",
                    gw.addr
                ))
            } else if !mode.managed() {
                Some(format!(
                    "range6 hands addresses out by DHCPv6, but the network's ra mode is {} (guests are told not to ask); use ra: {{ mode: dhcpv6 }} or slaac+dhcpv6",
                    mode.as_str()
                ))
            } else {
                None
            };
            if let Some(m) = why {
                cx.err(&path, loc, m);
            }
        }
        None if mode.managed() => {
            let reserved = ports
                .iter()
                .any(|p| p.ipv6.is_some() && p.network.as_deref() == Some(n.name.as_str()));
            if !reserved {
                let path = join(&join(&n.path, "ra"), "mode");
                let loc = cx.loc_at(&path).unwrap_or(n.v6.loc);
                cx.err(
                    &path,
                    loc,
                    format!(
                        "ra mode {} tells guests to ask DHCPv6 for their addresses, but network {} has no dhcp.range6 and no port with ipv6 to reserve; add dhcp: {{ range6: START-END }} inside {}",
                        mode.as_str(),
                        n.name,
                        gw.network()
                    ),
                );
            }
        }
        None => {}
    }
}
