//! The logical router `kvmnet` the nat and routed networks hang on: a router port per
//! network (with its router advertisements), and where an `ovn.external` is declared, the
//! external switch the router leaves by, its gateway port bound to the gateway chassis by
//! priority, the default routes and the nat networks' SNAT.

use std::net::IpAddr;

use super::NbVal;
use super::model::{
    EXTERNAL_KEY, EXTERNAL_SWITCH, ROUTER, Rows, router_mac, router_port_lsp, subnet,
};
use crate::spec::model::{Mode, Network};
use crate::spec::ovn::{EXTERNAL_PHYSNET, Ovn};

const GATEWAY_GROUP: &str = "kvmnet-gw";
/// Unsolicited RAs of a router port: at most this many seconds apart, at least a third of
/// it, as the kernel backend's daemon announces with its default router lifetime.
const RA_MAX_INTERVAL: u32 = 600;
const RA_MIN_INTERVAL: u32 = 200;

/// The router, a port on it for each of `nets` (the nat and routed networks) and, with an
/// `ovn.external`, the way out.
pub(super) fn router(r: &mut Rows, ovn: &Ovn, nets: &[&Network]) {
    r.add(
        "Logical_Router",
        ROUTER,
        vec![("name", NbVal::str(ROUTER))],
        None,
    );
    let parent = Some(("Logical_Router", ROUTER, "ports"));
    for net in nets {
        let mut networks: Vec<String> = net.ipv4.iter().map(ToString::to_string).collect();
        networks.extend(net.ipv6.map(|v| v.gateway.to_string()));
        if networks.is_empty() {
            continue;
        }
        let name = format!("kvmnet-lrp-{}", net.name);
        r.add(
            "Logical_Router_Port",
            &net.name,
            vec![
                ("name", NbVal::str(&name)),
                ("mac", NbVal::str(router_mac(&name).to_string())),
                ("networks", NbVal::strs(networks)),
                ("ha_chassis_group", NbVal::set([])),
                ("ipv6_ra_configs", ra_configs(ovn, net)),
            ],
            parent,
        );
    }
    // Routed networks leave through the external port too, unchanged (the external network
    // routes their subnets back to `external.ipv4`), as the kernel backend's routed mode
    // routes without NAT; nat networks leave masqueraded.
    let Some(ext) = ovn.external.as_ref() else {
        return;
    };
    external(r, ovn, ext);
    let nat = nets.iter().filter(|n| n.mode == Mode::Nat);
    for net in nat {
        if let Some(gw) = net.ipv4 {
            snat(
                r,
                format!("snat-{}", net.name),
                subnet(gw),
                ext.ipv4.addr.into(),
            );
        }
        // NAT66: the network's prefix leaves as the external IPv6 address.
        if let (Some(v6), Some((ext6, _))) = (net.ipv6, ext.ipv6) {
            let prefix = v6.prefix().to_string();
            snat(r, format!("snat6-{}", net.name), prefix, ext6.addr.into());
        }
    }
}

fn snat(r: &mut Rows, key: String, logical_ip: String, external_ip: IpAddr) {
    r.add(
        "NAT",
        key,
        vec![
            ("type", NbVal::str("snat")),
            ("logical_ip", NbVal::str(logical_ip)),
            ("external_ip", NbVal::str(external_ip.to_string())),
        ],
        Some(("Logical_Router", ROUTER, "nat")),
    );
}

/// A router port's router advertisements: SLAAC, or DHCPv6 for addresses (`ra.mode:
/// dhcpv6`: OVN's `dhcpv6_stateful` sets the M flag and clears the prefix's A flag, as the
/// kernel backend's RA does), unsolicited ones as well as answers to solicitations, and the
/// overlay's MTU, as OVN's DHCP hands it out. None on a network without IPv6.
fn ra_configs(ovn: &Ovn, net: &Network) -> NbVal {
    let Some(v6) = net.ipv6 else {
        return NbVal::map::<&str, &str>([]);
    };
    // Validation refuses slaac+dhcpv6: OVN's RAs cannot say A and M at once.
    let mode = if v6.ra.mode.managed() {
        "dhcpv6_stateful"
    } else {
        "slaac"
    };
    let mut m = vec![
        ("address_mode", mode.to_string()),
        ("send_periodic", "true".to_string()),
        ("max_interval", RA_MAX_INTERVAL.to_string()),
        ("min_interval", RA_MIN_INTERVAL.to_string()),
        ("mtu", ovn.guest_mtu(net).to_string()),
    ];
    // As the kernel backend's RAs: with `dns`, the gateway as resolver (OVN answers there)
    // and `dns.domain` as the search list; else the DHCP domain alone.
    if net.dns.is_some() {
        m.push(("rdnss", v6.gateway.addr.to_string()));
    }
    let dnssl = net
        .dns
        .as_ref()
        .and_then(|d| d.domain.as_deref())
        .or_else(|| net.dhcp.as_ref()?.domain.as_deref());
    m.extend(dnssl.map(|d| ("dnssl", d.to_string())));
    NbVal::map(m)
}

/// The external switch with its localnet port, the router's gateway port on it (bound to
/// the gateway chassis by priority) and the default route.
fn external(r: &mut Rows, ovn: &Ovn, ext: &crate::spec::ovn::External) {
    r.add(
        "Logical_Switch",
        EXTERNAL_SWITCH,
        vec![
            ("name", NbVal::str(EXTERNAL_SWITCH)),
            ("other_config", NbVal::map::<&str, &str>([])),
        ],
        None,
    );
    let parent = Some(("Logical_Switch", EXTERNAL_SWITCH, "ports"));
    r.add(
        "Logical_Switch_Port",
        "kvmnet-ln-ext",
        vec![
            ("name", NbVal::str("kvmnet-ln-ext")),
            ("type", NbVal::str("localnet")),
            ("addresses", NbVal::strs(["unknown"])),
            ("port_security", NbVal::strs::<&str>([])),
            ("options", NbVal::map([("network_name", EXTERNAL_PHYSNET)])),
            ("dhcpv4_options", NbVal::set([])),
            ("dhcpv6_options", NbVal::set([])),
            ("tag", NbVal::set([])),
        ],
        parent,
    );
    router_port_lsp(r, EXTERNAL_KEY, parent);
    r.add(
        "HA_Chassis_Group",
        GATEWAY_GROUP,
        vec![("name", NbVal::str(GATEWAY_GROUP))],
        None,
    );
    for (name, c) in &ovn.chassis {
        let Some(prio) = c.gateway else { continue };
        r.add(
            "HA_Chassis",
            name,
            vec![
                ("chassis_name", NbVal::str(name)),
                ("priority", NbVal::Int(i64::from(prio))),
            ],
            Some(("HA_Chassis_Group", GATEWAY_GROUP, "ha_chassis")),
        );
    }
    let name = format!("kvmnet-lrp-{EXTERNAL_KEY}");
    r.add(
        "Logical_Router_Port",
        EXTERNAL_KEY,
        vec![
            ("name", NbVal::str(&name)),
            ("mac", NbVal::str(router_mac(&name).to_string())),
            (
                "networks",
                NbVal::strs(
                    std::iter::once(ext.ipv4.to_string())
                        .chain(ext.ipv6.map(|(c, _)| c.to_string())),
                ),
            ),
            (
                "ha_chassis_group",
                NbVal::set([NbVal::reference("HA_Chassis_Group", GATEWAY_GROUP)]),
            ),
            ("ipv6_ra_configs", NbVal::map::<&str, &str>([])),
        ],
        Some(("Logical_Router", ROUTER, "ports")),
    );
    r.add(
        "Logical_Router_Static_Route",
        "default",
        vec![
            ("ip_prefix", NbVal::str("0.0.0.0/0")),
            ("nexthop", NbVal::str(ext.next_hop.to_string())),
        ],
        Some(("Logical_Router", ROUTER, "static_routes")),
    );
    if let Some((_, hop6)) = ext.ipv6 {
        r.add(
            "Logical_Router_Static_Route",
            "default6",
            vec![
                ("ip_prefix", NbVal::str("::/0")),
                ("nexthop", NbVal::str(hop6.to_string())),
            ],
            Some(("Logical_Router", ROUTER, "static_routes")),
        );
    }
}
