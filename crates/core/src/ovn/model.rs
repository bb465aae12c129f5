//! The spec's OVN networks as Northbound rows. Pure: the same spec gives the same rows on
//! every host.
//!
//! - Each network is a logical switch named as the network. Its VM ports are logical
//!   switch ports named as the port's device (the chassis binds them by `iface-id`), with
//!   `MAC IP` addresses and the same as port security (none with `antispoof: false`).
//! - Pool addresses: OVN's DHCP answers a port only with an address its `addresses` names,
//!   so a port without `ipv4` on a network with a DHCP pool gets one picked here from its
//!   MAC (the same on every host, and stable as other ports come and go).
//! - nat and routed networks hang on one logical router, `kvmnet`, through a router port
//!   holding the gateway address. nat networks leave through the router's port on the
//!   external switch (a localnet port on physical network `kvmnet-ext`), bound to the
//!   gateway chassis by an HA chassis group, with SNAT to `ovn.external.ipv4` (see
//!   the `router` module).
//! - bridge and vlan networks are provider networks: a localnet port on the switch (see
//!   [`super::provider`]).
//! - Firewalls are ACLs on one port group per distinct firewall ([`super::firewall`]).
//! - IPv6 (routed, nat and isolated networks): a routed or nat network's router port holds
//!   the `ipv6` gateway too and announces the prefix for SLAAC (`ipv6_ra_configs`); a
//!   port's SLAAC address (from its MAC, in that prefix) and its declared `ipv6` are in its
//!   `addresses` and port security, as the kernel backend's guard lets a port use exactly
//!   those. An
//!   isolated network has no router, so no RAs: its ports take static addresses only.
//!   With `ra.mode: dhcpv6` the router port sends guests to DHCPv6 instead, and each port
//!   lists its one DHCPv6 address (declared, or picked from `range6` as IPv4 pool addresses
//!   are) in place of a SLAAC one: OVN's DHCPv6 answers with the addresses a port lists.
//!   There is no guard against guests' router advertisements: OVN 23.03's ACL stages pass
//!   all neighbour discovery (RAs included) over any ACL, and port security lets a port
//!   send from its link-local address, which is where RAs come from.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{NbParent, NbRow, NbVal};
use crate::spec::model::{Ipv4Cidr, Mac, Mode, Network};
use crate::spec::naming::fnv1a;
use crate::spec::ovn::{Ovn, OvnPort};

/// The logical router all nat and routed networks hang on.
pub const ROUTER: &str = "kvmnet";
/// The external switch nat networks leave by.
pub const EXTERNAL_SWITCH: &str = "kvmnet-ext";
/// The router port on the external switch, by its row key.
pub(super) const EXTERNAL_KEY: &str = "ext";
/// The isolation ACL's priority: over every firewall ACL (see [`super::firewall`]).
const PRIO_ISOLATE: i64 = 3000;

pub(super) struct Rows(pub(super) Vec<NbRow>);

impl Rows {
    pub(super) fn add(
        &mut self,
        table: &str,
        key: impl Into<String>,
        cols: Vec<(&str, NbVal)>,
        parent: Option<(&str, &str, &str)>,
    ) {
        self.0.push(NbRow {
            table: table.to_string(),
            key: key.into(),
            columns: cols.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            parent: parent.map(|(t, k, c)| NbParent {
                table: t.to_string(),
                key: k.to_string(),
                column: c.to_string(),
            }),
        });
    }
}

/// Whether `net` hangs on the router `kvmnet` (nat and routed networks): it has a router
/// port holding its gateway, announcing its IPv6 prefix and answering its DHCPv6.
pub(super) fn on_router(net: &Network) -> bool {
    matches!(net.mode, Mode::Nat | Mode::Routed)
}

/// A MAC of kvmnet's router ports: locally administered, from the port's name.
pub fn router_mac(name: &str) -> Mac {
    let h = fnv1a(name.as_bytes());
    let b = h.to_be_bytes();
    Mac([0x0a, 0x6b, b[0], b[1], b[2], b[3]])
}

/// Every Northbound row the spec's OVN part wants.
pub fn rows(ovn: &Ovn) -> Vec<NbRow> {
    let mut out = router_rows(ovn);
    for (net, ports) in by_network(ovn) {
        out.extend(network_rows(ovn, net, &ports));
    }
    out.extend(tail_rows(ovn));
    out
}

/// The rows before the networks' ([`rows`] lists them first): the router of the nat and
/// routed networks.
pub(super) fn router_rows(ovn: &Ovn) -> Vec<NbRow> {
    let mut r = Rows(Vec::new());
    let routed: Vec<&Network> = ovn.networks.values().filter(|n| on_router(n)).collect();
    if !routed.is_empty() {
        super::router::router(&mut r, ovn, &routed);
    }
    r.0
}

/// Each network with its ports, in one pass: a spec may have hundreds of networks.
pub(super) fn by_network(ovn: &Ovn) -> Vec<(&Network, Vec<&OvnPort>)> {
    let mut by_net: BTreeMap<&str, Vec<&OvnPort>> = BTreeMap::new();
    for p in &ovn.ports {
        by_net.entry(p.port.network.as_str()).or_default().push(p);
    }
    ovn.networks
        .values()
        .map(|net| (net, by_net.remove(net.name.as_str()).unwrap_or_default()))
        .collect()
}

/// One network's rows: its switch and ports, their QoS, its isolation and DNS. A function of
/// the spec's OVN part but its ports, the network and its own ports (which
/// [`super::memo::RowsMemo`] relies on).
pub(super) fn network_rows(ovn: &Ovn, net: &Network, ports: &[&OvnPort]) -> Vec<NbRow> {
    let (mut rows, addrs, switch) = network_parts(ovn, net, ports);
    for p in ports {
        rows.extend(port_rows(net, &p.port, &addrs, &switch));
    }
    rows
}

/// What a network's ports' own rows take from their switch: its DHCP options.
pub(super) struct SwitchOptions {
    dhcp: bool,
    dhcp6: Option<String>,
}

/// A network's rows but its ports' own ([`port_rows`]): its switch, DHCP options, router
/// and localnet ports, isolation and DNS; with the addresses picked for its ports and what
/// their rows take from the switch.
pub(super) fn network_parts<'a>(
    ovn: &Ovn,
    net: &Network,
    ports: &[&'a OvnPort],
) -> (Vec<NbRow>, Picked<'a>, SwitchOptions) {
    let mut r = Rows(Vec::new());
    let addrs = Picked {
        v4: addresses(net, ports),
        v6: addresses6(net, ports),
    };
    let switch = switch(&mut r, ovn, net);
    if net.isolate_ports {
        isolation(&mut r, net, ports);
    }
    if net.dns.is_some() {
        r.0.extend(super::dns::row(net, &vm_addresses(ports, &addrs)));
    }
    (r.0, addrs, switch)
}

/// The rows after the networks': the firewalls' port groups, ACLs and address sets, and
/// the forwards' load balancers and NAT.
pub(super) fn tail_rows(ovn: &Ovn) -> Vec<NbRow> {
    let mut r = Rows(Vec::new());
    super::firewall::firewalls(&mut r, ovn);
    r.0.extend(forward_rows(ovn));
    r.0
}

/// The rows of the networks' `forwards` (the last of [`tail_rows`]).
pub(super) fn forward_rows(ovn: &Ovn) -> Vec<NbRow> {
    if ovn.networks.values().any(on_router) {
        super::forwards::rows(ovn)
    } else {
        Vec::new()
    }
}

/// Each port's addresses on its network, by port name, where kvmnet says them (declared)
/// or picks them (from the DHCP pools): OVN's DHCP answers a port only with an address
/// its `addresses` lists. (By the ports' own names, hashed: 2,500 names copied into two
/// ordered maps took a fifth of making a network's rows again.)
pub(super) struct Picked<'a> {
    v4: HashMap<&'a str, Ipv4Addr>,
    /// The port's DHCPv6 address (RA mode `dhcpv6`): its `ipv6`, else one of `range6`.
    v6: HashMap<&'a str, Ipv6Addr>,
}

impl Picked<'_> {
    /// What was picked for port `name`: all of its rows read of the picks.
    pub(super) fn of(&self, name: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        (self.v4.get(name).copied(), self.v6.get(name).copied())
    }
}

/// Each VM's addresses on `net`, for its DNS names: IPv4 declared or picked, and the
/// declared `ipv6` or the DHCPv6 address picked for it (not a SLAAC address: the guest may
/// form another, as the kernel backend's DNS says).
fn vm_addresses(ports: &[&OvnPort], addrs: &Picked) -> BTreeMap<String, Vec<IpAddr>> {
    let mut out: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for p in ports {
        if let Some(a) = addrs.v4.get(p.port.name.as_str()) {
            out.entry(p.port.vm.clone())
                .or_default()
                .push(IpAddr::V4(*a));
        }
    }
    for p in ports {
        if let Some(a) = p
            .port
            .ipv6
            .or_else(|| addrs.v6.get(p.port.name.as_str()).copied())
        {
            out.entry(p.port.vm.clone())
                .or_default()
                .push(IpAddr::V6(a));
        }
    }
    out
}

/// A network's switch, its DHCP options, and its router and localnet ports.
fn switch(r: &mut Rows, ovn: &Ovn, net: &Network) -> SwitchOptions {
    r.add(
        "Logical_Switch",
        &net.name,
        vec![
            ("name", NbVal::str(&net.name)),
            ("other_config", NbVal::map::<&str, &str>([])),
        ],
        None,
    );
    let dhcp = net.dhcp.is_some() && net.ipv4.is_some();
    if dhcp {
        dhcp_options(r, ovn, net);
    }
    let dhcp6 = dhcp6_options(r, net);
    if on_router(net) {
        router_port_lsp(
            r,
            &net.name,
            Some(("Logical_Switch", net.name.as_str(), "ports")),
        );
    }
    r.0.extend(super::provider::localnet_port(net));
    SwitchOptions { dhcp, dhcp6 }
}

/// A VM port's own rows: its logical switch port and its QoS. A function of the network,
/// the port, what was picked for it ([`Picked::of`]) and the switch's options.
pub(super) fn port_rows(
    net: &Network,
    port: &crate::spec::model::Port,
    addrs: &Picked,
    switch: &SwitchOptions,
) -> Vec<NbRow> {
    let mut r = Rows(Vec::new());
    let (v4, v6) = addrs.of(&port.name);
    let mut addr = match v4 {
        Some(a) => format!("{} {a}", port.mac),
        None => port.mac.to_string(),
    };
    for a in ipv6_addresses(net, port, v6) {
        addr.push_str(&format!(" {a}"));
    }
    r.add(
        "Logical_Switch_Port",
        &port.name,
        vec![
            ("name", NbVal::str(&port.name)),
            ("type", NbVal::str("")),
            ("addresses", NbVal::strs([addr.clone()])),
            ("port_security", NbVal::strs(port.antispoof.then_some(addr))),
            ("options", NbVal::map::<&str, &str>([])),
            (
                "dhcpv4_options",
                NbVal::set(
                    switch
                        .dhcp
                        .then(|| NbVal::reference("DHCP_Options", &net.name)),
                ),
            ),
            (
                "dhcpv6_options",
                NbVal::set(
                    switch
                        .dhcp6
                        .as_deref()
                        .map(|k| NbVal::reference("DHCP_Options", k)),
                ),
            ),
            ("tag", NbVal::set([])),
        ],
        Some(("Logical_Switch", net.name.as_str(), "ports")),
    );
    qos(&mut r, net, port);
    r.0
}

/// A port's `qos` as meters on its switch: traffic over the rate is dropped (policed), not
/// queued as the kernel backend's shaping does. OVN meters take kbps and kbits.
fn qos(r: &mut Rows, net: &Network, port: &crate::spec::model::Port) {
    let Some(q) = &port.qos else { return };
    for (dir, shape, side) in [
        ("to-lport", &q.inbound, "outport"),
        ("from-lport", &q.outbound, "inport"),
    ] {
        let Some(s) = shape else { continue };
        let kbps = (s.rate_bps / 1000).max(1);
        // Without a written burst, a fifth of a second at the rate: a policer with less
        // than a few TCP windows of burst starves the flows it meters.
        let burst = s
            .burst_bytes
            .map_or(kbps / 5, |b| u64::from(b) * 8 / 1000)
            .max(100);
        r.add(
            "QoS",
            format!("{}/{dir}", port.name),
            vec![
                ("priority", NbVal::Int(100)),
                ("direction", NbVal::str(dir)),
                ("match", NbVal::str(format!("{side} == \"{}\"", port.name))),
                ("action", NbVal::map::<&str, &str>([])),
                (
                    "bandwidth",
                    NbVal::IntMap(
                        [
                            ("rate".to_string(), kbps as i64),
                            ("burst".to_string(), burst as i64),
                        ]
                        .into(),
                    ),
                ),
            ],
            Some(("Logical_Switch", net.name.as_str(), "qos_rules")),
        );
    }
}

/// The switch's port towards the router port `kvmnet-lrp-LRP_KEY`.
pub(super) fn router_port_lsp(r: &mut Rows, lrp_key: &str, parent: Option<(&str, &str, &str)>) {
    let mut options =
        BTreeMap::from([("router-port".to_string(), format!("kvmnet-lrp-{lrp_key}"))]);
    if lrp_key == EXTERNAL_KEY {
        // The active gateway chassis announces the router's address, SNAT and forwards
        // (gratuitous ARP through the localnet port) when it takes the gateway port over,
        // so the external network's switches learn where the port's MAC now is.
        options.insert("nat-addresses".into(), "router".into());
    }
    r.add(
        "Logical_Switch_Port",
        format!("kvmnet-rp-{lrp_key}"),
        vec![
            ("name", NbVal::str(format!("kvmnet-rp-{lrp_key}"))),
            ("type", NbVal::str("router")),
            ("addresses", NbVal::strs(["router"])),
            ("port_security", NbVal::strs::<&str>([])),
            ("options", NbVal::Map(options)),
            ("dhcpv4_options", NbVal::set([])),
            ("dhcpv6_options", NbVal::set([])),
            ("tag", NbVal::set([])),
        ],
        parent,
    );
}

/// Each port's IPv4 address: the declared one, else one of the pool picked from its MAC.
fn addresses<'a>(net: &Network, ports: &[&'a OvnPort]) -> HashMap<&'a str, Ipv4Addr> {
    let mut out = HashMap::with_capacity(ports.len());
    let mut taken: HashSet<Ipv4Addr> = net.ipv4.iter().map(|c| c.addr).collect();
    for p in ports {
        if let Some(a) = p.port.ipv4 {
            out.insert(p.port.name.as_str(), a.addr);
            taken.insert(a.addr);
        }
    }
    let Some((first, last)) = net.dhcp.as_ref().filter(|d| d.pool).and_then(|d| d.range) else {
        return out;
    };
    let (lo, hi) = (u32::from(first), u32::from(last));
    let size = u64::from(hi - lo) + 1;
    // In name order, so the pick of each port depends only on the ports before it that
    // collide with it: rare in a pool larger than its ports.
    for p in ports.iter().filter(|p| p.port.ipv4.is_none()) {
        let start = fnv1a(&p.port.mac.0) % size;
        let free = (0..size)
            .map(|i| Ipv4Addr::from(lo + ((start + i) % size) as u32))
            .find(|a| !taken.contains(a));
        if let Some(a) = free {
            taken.insert(a);
            out.insert(p.port.name.as_str(), a);
        }
    }
    out
}

/// Each port's DHCPv6 address on `net` when its router port tells guests to take their
/// address from DHCPv6 (`ra.mode: dhcpv6`): the declared `ipv6`, else one of `range6`
/// picked from its MAC as IPv4 pool addresses are (the same on every host, stable as other
/// ports come and go, never another port's or the gateway's).
fn addresses6<'a>(net: &Network, ports: &[&'a OvnPort]) -> HashMap<&'a str, Ipv6Addr> {
    let mut out = HashMap::default();
    if !on_router(net) || net.ipv6.is_none_or(|v| !v.ra.mode.managed()) {
        return out;
    }
    let mut taken: HashSet<Ipv6Addr> = net.ipv6.iter().map(|v| v.gateway.addr).collect();
    for p in ports {
        if let Some(a) = p.port.ipv6 {
            out.insert(p.port.name.as_str(), a);
            taken.insert(a);
        }
    }
    let Some((first, last)) = net.dhcp6_pool() else {
        return out;
    };
    let (lo, hi) = (u128::from(first), u128::from(last));
    let size = hi - lo + 1;
    for p in ports.iter().filter(|p| p.port.ipv6.is_none()) {
        let start = u128::from(fnv1a(&p.port.mac.0)) % size;
        // At most `taken` addresses are in the way: a free one is no further on.
        let free = (0..size.min(taken.len() as u128 + 1))
            .map(|i| Ipv6Addr::from(lo + (start + i) % size))
            .find(|a| !taken.contains(a));
        if let Some(a) = free {
            taken.insert(a);
            out.insert(p.port.name.as_str(), a);
        }
    }
    out
}

/// The IPv6 addresses port `port` may use on `net`: its SLAAC address in the prefix the
/// network's router port announces (routed networks, a /64, when guests form SLAAC
/// addresses) or in each prefix the LAN's router announces (`ipv6_prefixes` of a provider
/// network), and its declared `ipv6`, or, with `ra.mode: dhcpv6`, the address DHCPv6
/// gives it (`dhcp6`: declared or picked). OVN's port security lets the link-local address
/// of the port's MAC through by itself once one is listed; a port with none on a network
/// with IPv6 lists that link-local address, so it keeps IPv6 on the link as the kernel
/// backend's guard lets it (an IPv4-only port security entry drops all IPv6).
pub fn ipv6_addresses(
    net: &Network,
    port: &crate::spec::model::Port,
    dhcp6: Option<Ipv6Addr>,
) -> Vec<Ipv6Addr> {
    let mut out = Vec::new();
    // An isolated network announces no prefix; a provider network's LAN router announces
    // its `ipv6_prefixes`.
    if net.mode != Mode::Isolated {
        out.extend(net.slaac_prefixes().map(|c| port.mac.slaac(c.addr)));
    }
    if let Some(a) = port.ipv6.or(dhcp6)
        && !out.contains(&a)
    {
        out.push(a);
    }
    if out.is_empty() && net.ipv6.is_some() {
        out.push(port.mac.link_local());
    }
    out
}

fn dhcp_options(r: &mut Rows, ovn: &Ovn, net: &Network) {
    let (Some(d), Some(gw)) = (&net.dhcp, net.ipv4) else {
        return;
    };
    let mut o: BTreeMap<String, String> = BTreeMap::new();
    o.insert("lease_time".into(), d.lease_time_secs.to_string());
    o.insert("server_id".into(), gw.addr.to_string());
    o.insert(
        "server_mac".into(),
        router_mac(&format!("kvmnet-lrp-{}", net.name)).to_string(),
    );
    o.insert("mtu".into(), ovn.guest_mtu(net).to_string());
    if on_router(net) {
        o.insert("router".into(), gw.addr.to_string());
    }
    let dns = super::dns::dhcp_servers(net);
    if !dns.is_empty() {
        let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
        o.insert("dns_server".into(), format!("{{{}}}", list.join(", ")));
    }
    if let Some(dom) = super::dns::dhcp_domain(net) {
        o.insert("domain_name".into(), format!("\"{dom}\""));
    }
    if !d.routes.is_empty() {
        let list: Vec<String> = d
            .routes
            .iter()
            .map(|rt| format!("{}, {}", rt.to.network(), rt.via))
            .collect();
        o.insert(
            "classless_static_route".into(),
            format!("{{{}}}", list.join(", ")),
        );
    }
    r.add(
        "DHCP_Options",
        &net.name,
        vec![("cidr", NbVal::str(subnet(gw))), ("options", NbVal::Map(o))],
        None,
    );
}

/// `net`'s DHCPv6 options (key `NET/v6`, in the table OVN keeps DHCPv4's in), when its
/// router port (a routed or nat network's) sends guests to DHCPv6: for their address (`ra.mode: dhcpv6`, stateful), or
/// only for DNS (`dhcp.dns6` with SLAAC: stateless, answering the Information-requests a
/// guest sends, as the kernel backend's DHCPv6 server does). The server is the router
/// port: its MAC is `server_id`, and OVN answers from that MAC's link-local address. DNS
/// servers are `dhcp.dns6`, else the gateway when the network has `dns` (OVN answers
/// there); the search list is the DHCP domain. Its key, when written.
fn dhcp6_options(r: &mut Rows, net: &Network) -> Option<String> {
    let v6 = net.ipv6.filter(|_| on_router(net))?;
    let dns6 = net
        .dhcp
        .as_ref()
        .map(|d| d.dns6.as_slice())
        .unwrap_or_default();
    let stateful = v6.ra.mode.managed();
    if !stateful && dns6.is_empty() {
        return None;
    }
    let mut o: BTreeMap<String, String> = BTreeMap::new();
    o.insert(
        "server_id".into(),
        router_mac(&format!("kvmnet-lrp-{}", net.name)).to_string(),
    );
    if !stateful {
        o.insert("dhcpv6_stateless".into(), "true".into());
    }
    let servers: Vec<String> = if dns6.is_empty() {
        net.dns
            .iter()
            .map(|_| v6.gateway.addr.to_string())
            .collect()
    } else {
        dns6.iter().map(ToString::to_string).collect()
    };
    if !servers.is_empty() {
        o.insert("dns_server".into(), format!("{{{}}}", servers.join(", ")));
    }
    if let Some(dom) = super::dns::dhcp_domain(net) {
        o.insert("domain_search".into(), format!("\"{dom}\""));
    }
    let key = format!("{}/v6", net.name);
    r.add(
        "DHCP_Options",
        &key,
        vec![
            ("cidr", NbVal::str(v6.prefix().to_string())),
            ("options", NbVal::Map(o)),
        ],
        None,
    );
    Some(key)
}

pub(super) fn subnet(c: Ipv4Cidr) -> String {
    c.network().to_string()
}

/// A port group name: OVN takes letters, digits and '_'.
pub(super) fn group_name(prefix: &str, text: &str) -> String {
    format!("{prefix}_{:08x}", fnv1a(text.as_bytes()) as u32)
}

/// A `Port_Group` named `pg` holding the switch ports named `ports`.
pub(super) fn port_group<'a>(r: &mut Rows, pg: &str, ports: impl IntoIterator<Item = &'a str>) {
    r.add(
        "Port_Group",
        pg,
        vec![
            ("name", NbVal::str(pg)),
            (
                "ports",
                NbVal::set(
                    ports
                        .into_iter()
                        .map(|p| NbVal::reference("Logical_Switch_Port", p)),
                ),
            ),
        ],
        None,
    );
}

fn isolation(r: &mut Rows, net: &Network, ports: &[&OvnPort]) {
    let pg = group_name("kvmnet_iso", &net.name);
    port_group(r, &pg, ports.iter().map(|p| p.port.name.as_str()));
    super::firewall::acl(
        r,
        &pg,
        0,
        ("to-lport", PRIO_ISOLATE),
        isolation_match(&pg, ports),
        ("drop", false),
    );
}

/// What the isolation ACL drops: frames to a port of the group from another's MAC.
/// Not `inport == @pg`: ovn-controller expands a port group to the ports bound on its own
/// chassis, so a to-lport ACL (run where the destination is) never sees a remote inport in
/// the group. Not `outport == @pg` alone either: OVN's ARP and DHCP responders answer with
/// `outport = inport`, so that would drop a port's replies from its own gateway. A port
/// with antispoof off could forge another MAC past this; port security is what holds it.
fn isolation_match(pg: &str, ports: &[&OvnPort]) -> String {
    let macs: BTreeSet<String> = ports.iter().map(|p| p.port.mac.to_string()).collect();
    if macs.is_empty() {
        return "0".into();
    }
    let macs: Vec<String> = macs.into_iter().collect();
    format!("outport == @{pg} && eth.src == {{{}}}", macs.join(", "))
}

/// This host as a chassis, when the spec names it among `ovn.chassis`.
pub fn chassis_conf(ovn: &Ovn) -> Option<super::ChassisConf> {
    let name = ovn.local.as_deref()?;
    let c = ovn.chassis.get(name)?;
    Some(super::ChassisConf {
        name: name.to_string(),
        ovs: ovn.ovs_of(name).to_string(),
        sb: ovn.sb.clone(),
        encap: ovn.encap.clone(),
        encap_ip: c.encap_ip,
        datapath: ovn.datapath.clone(),
        gateway_uplink: c
            .gateway
            .and(ovn.external.as_ref())
            .map(|e| e.uplink.clone()),
        provider_uplinks: super::provider::uplinks(ovn),
        ports: ovn
            .local_ports()
            .map(|p| (p.port.name.clone(), p.port.name.clone()))
            .collect(),
        ssl: ovn
            .ssl
            .clone()
            .filter(|_| crate::spec::ovn::has_ssl(&ovn.sb)),
        drifted: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{HostIdentity, parse};

    const SPEC: &str = r#"version: 1
ovn:
  nb: tcp:192.0.2.1:6641
  sb: tcp:192.0.2.1:6642
  chassis:
    hv1: { encap_ip: 192.0.2.11, gateway: 2 }
    hv2: { encap_ip: 192.0.2.12, gateway: 1 }
    hv3: { encap_ip: 192.0.2.13 }
  external: { uplink: eth1, ipv4: 198.51.100.2/24, next_hop: 198.51.100.1 }
networks:
  web:
    backend: ovn
    mode: nat
    ipv4: 10.80.0.1/24
    isolate_ports: true
    dhcp: { range: 10.80.0.100-10.80.0.109, dns: [10.80.0.1] }
  lab:
    backend: ovn
    mode: isolated
    ipv4: 10.81.0.1/24
vms:
  a:
    host: hv1
    ports:
      - { network: web, name: pa, mac: "52:54:00:00:00:0a", ipv4: 10.80.0.10, firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22, 8000-8080] } ] } } }
  b:
    host: hv3
    ports:
      - { network: web, name: pb, mac: "52:54:00:00:00:0b", firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22, 8000-8080] } ] } } }
      - { network: lab, name: pb2, mac: "52:54:00:00:00:0c", antispoof: false }
"#;

    fn rows_of(text: &str, local: &str) -> (Vec<NbRow>, Option<crate::ovn::ChassisConf>) {
        let mut spec = parse(text, &HostIdentity::default()).expect("valid");
        let ovn = spec.ovn.as_mut().expect("ovn");
        ovn.local = Some(local.to_string());
        (rows(ovn), chassis_conf(ovn))
    }

    fn find<'a>(rows: &'a [NbRow], table: &str, key: &str) -> &'a NbRow {
        rows.iter()
            .find(|r| r.table == table && r.key == key)
            .unwrap_or_else(|| panic!("no {table} {key}"))
    }

    #[test]
    fn ports_carry_addresses_port_security_and_dhcp() {
        let (rows, _) = rows_of(SPEC, "hv1");
        let pa = find(&rows, "Logical_Switch_Port", "pa");
        assert_eq!(
            pa.columns["addresses"],
            NbVal::strs(["52:54:00:00:00:0a 10.80.0.10"])
        );
        assert_eq!(pa.columns["port_security"], pa.columns["addresses"]);
        assert_eq!(
            pa.columns["dhcpv4_options"],
            NbVal::set([NbVal::reference("DHCP_Options", "web")])
        );
        // A pool port gets an address of the pool, the same each time.
        let NbVal::Set(a) = &find(&rows, "Logical_Switch_Port", "pb").columns["addresses"] else {
            panic!()
        };
        let NbVal::Str(a) = &a[0] else { panic!() };
        let ip: Ipv4Addr = a.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(
            (u32::from(ip) & 0xff) >= 100 && (u32::from(ip) & 0xff) <= 109,
            "{a}"
        );
        assert_eq!(rows_of(SPEC, "hv2").0, rows);
        // antispoof: false leaves port security off.
        let pb2 = find(&rows, "Logical_Switch_Port", "pb2");
        assert_eq!(pb2.columns["port_security"], NbVal::Set(Vec::new()));
        let dhcp = find(&rows, "DHCP_Options", "web");
        let NbVal::Map(o) = &dhcp.columns["options"] else {
            panic!()
        };
        assert_eq!(o["router"], "10.80.0.1");
        assert_eq!(o["mtu"], "1442");
        assert_eq!(o["dns_server"], "{10.80.0.1}");
    }

    #[test]
    fn pool_picks_never_collide_and_skip_declared_addresses() {
        let mut text = SPEC.to_string();
        for i in 0..9 {
            text.push_str(&format!(
                "  p{i}:\n    host: hv2\n    ports:\n      - {{ network: web, name: pp{i}, mac: \"52:54:00:00:01:{i:02x}\" }}\n"
            ));
        }
        let (rows, _) = rows_of(&text, "hv2");
        let addrs: BTreeSet<String> = rows
            .iter()
            .filter(|r| r.table == "Logical_Switch_Port" && r.key.starts_with('p'))
            .filter_map(|r| match &r.columns["addresses"] {
                NbVal::Set(v) => match v.first() {
                    Some(NbVal::Str(s)) => s.split(' ').nth(1).map(String::from),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        // pa's declared .10 and ten pool ports in a pool of ten: all distinct.
        assert_eq!(addrs.len(), 11, "{addrs:?}");
    }

    #[test]
    fn nat_goes_through_the_gateway_group_and_firewalls_share_a_group() {
        let (rows, _) = rows_of(SPEC, "hv1");
        let nat = find(&rows, "NAT", "snat-web");
        assert_eq!(nat.columns["logical_ip"], NbVal::str("10.80.0.0/24"));
        assert_eq!(nat.columns["external_ip"], NbVal::str("198.51.100.2"));
        assert_eq!(
            find(&rows, "HA_Chassis", "hv1").columns["priority"],
            NbVal::Int(2)
        );
        assert!(
            !rows
                .iter()
                .any(|r| r.table == "HA_Chassis" && r.key == "hv3")
        );
        // The isolated network has no router port.
        assert!(
            !rows
                .iter()
                .any(|r| r.table == "Logical_Router_Port" && r.key == "lab")
        );
        // a and b have the same firewall: one group holding both.
        let groups: Vec<&NbRow> = rows
            .iter()
            .filter(|r| r.table == "Port_Group" && r.key.starts_with("kvmnet_fw"))
            .collect();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].columns["ports"],
            NbVal::set([
                NbVal::reference("Logical_Switch_Port", "pa"),
                NbVal::reference("Logical_Switch_Port", "pb"),
            ])
        );
        let pg = &groups[0].key;
        let rule = find(&rows, "ACL", &format!("{pg}/0"));
        assert_eq!(
            rule.columns["match"],
            NbVal::str(format!(
                "outport == @{pg} && tcp && (tcp.dst == 22 || (tcp.dst >= 8000 && tcp.dst <= 8080))"
            ))
        );
        assert_eq!(rule.columns["action"], NbVal::str("allow-related"));
        let policy = find(&rows, "ACL", &format!("{pg}/1"));
        assert_eq!(policy.columns["action"], NbVal::str("drop"));
        // Every row of a table that is not a root has a parent among the rows.
        for r in &rows {
            if let Some(p) = &r.parent {
                find(&rows, &p.table, &p.key);
            }
        }
    }

    #[test]
    fn the_chassis_binds_only_its_vms_ports() {
        let (_, hv1) = rows_of(SPEC, "hv1");
        let hv1 = hv1.expect("hv1 is a chassis");
        assert_eq!(hv1.ports.keys().collect::<Vec<_>>(), ["pa"]);
        assert_eq!(hv1.gateway_uplink.as_deref(), Some("eth1"));
        let (_, hv3) = rows_of(SPEC, "hv3");
        let hv3 = hv3.expect("hv3 is a chassis");
        assert_eq!(hv3.ports.keys().collect::<Vec<_>>(), ["pb", "pb2"]);
        assert_eq!(hv3.gateway_uplink, None);
        assert!(rows_of(SPEC, "elsewhere").1.is_none());
    }

    /// The isolation ACL names the ports' MACs, not `inport == @pg` (which ovn-controller
    /// narrows to its own chassis's ports), and leaves OVN's own answers (`outport = inport`
    /// from the router's MAC) alone.
    #[test]
    fn isolation_drops_by_source_mac_to_the_group() {
        let (rows, _) = rows_of(SPEC, "hv1");
        let pg = group_name("kvmnet_iso", "web");
        assert_eq!(
            find(&rows, "ACL", &format!("{pg}/0")).columns["match"],
            NbVal::str(format!(
                "outport == @{pg} && eth.src == {{52:54:00:00:00:0a, 52:54:00:00:00:0b}}"
            ))
        );
    }

    const SPEC6: &str = r#"version: 1
ovn:
  nb: tcp:192.0.2.1:6641
  sb: tcp:192.0.2.1:6642
  chassis:
    hv1: { encap_ip: 192.0.2.11 }
networks:
  web:
    backend: ovn
    mode: routed
    ipv4: 10.80.0.1/24
    ipv6: fd00:80::1/64
  lab:
    backend: ovn
    mode: isolated
    ipv4: 10.81.0.1/24
    ipv6: fd00:81::1/64
vms:
  a:
    host: hv1
    ports:
      - { network: web, name: pa, mac: "52:54:00:00:00:0a", ipv4: 10.80.0.10 }
      - { network: web, name: ps, mac: "52:54:00:00:00:0c", ipv4: 10.80.0.12, ipv6: "fd00:80::12" }
      - { network: lab, name: pl, mac: "52:54:00:00:00:0b", ipv4: 10.81.0.11, ipv6: "fd00:81::11" }
      - { network: lab, name: pk, mac: "52:54:00:00:00:0d", ipv4: 10.81.0.13 }
"#;

    /// A routed network's router port holds the IPv6 gateway and announces the prefix
    /// for SLAAC with the overlay's MTU; a port's SLAAC address (and its declared one) are
    /// its addresses and port security; an isolated network's ports have no SLAAC address.
    #[test]
    fn ipv6_router_port_announces_slaac_and_ports_list_their_addresses() {
        let (rows, _) = rows_of(SPEC6, "hv1");
        let lrp = find(&rows, "Logical_Router_Port", "web");
        assert_eq!(
            lrp.columns["networks"],
            NbVal::strs(["10.80.0.1/24", "fd00:80::1/64"])
        );
        assert_eq!(
            lrp.columns["ipv6_ra_configs"],
            NbVal::map([
                ("address_mode", "slaac"),
                ("send_periodic", "true"),
                ("max_interval", "600"),
                ("min_interval", "200"),
                ("mtu", "1442"),
            ])
        );
        for (port, want) in [
            ("pa", "52:54:00:00:00:0a 10.80.0.10 fd00:80::5054:ff:fe00:a"),
            (
                "ps",
                "52:54:00:00:00:0c 10.80.0.12 fd00:80::5054:ff:fe00:c fd00:80::12",
            ),
            ("pl", "52:54:00:00:00:0b 10.81.0.11 fd00:81::11"),
            ("pk", "52:54:00:00:00:0d 10.81.0.13 fe80::5054:ff:fe00:d"),
        ] {
            let p = find(&rows, "Logical_Switch_Port", port);
            assert_eq!(p.columns["addresses"], NbVal::strs([want]), "{port}");
            assert_eq!(p.columns["port_security"], NbVal::strs([want]), "{port}");
        }
        assert!(
            !rows
                .iter()
                .any(|r| r.table == "Logical_Router_Port" && r.key == "lab")
        );
    }

    /// `ra.mode: dhcpv6`: the router port announces DHCPv6 for addresses, and each port's
    /// one IPv6 address (besides its link-local one) is its DHCPv6 address: the declared
    /// one, or one of `range6` picked from its MAC, never another's or the gateway's. OVN
    /// answers DHCPv6 with each address of the prefix a port lists, so a SLAAC address
    /// there would be a second answer.
    #[test]
    fn dhcpv6_ports_list_their_dhcpv6_address_only() {
        let mut text = SPEC6.replace(
            "    ipv6: fd00:80::1/64\n",
            "    ipv6: fd00:80::1/64\n    ra: { mode: dhcpv6 }\n    dhcp: { range6: \"fd00:80::2-fd00:80::5\", dns6: [\"fd00:80::53\"] }\n",
        );
        for i in 0..3 {
            text.push_str(&format!(
                "      - {{ network: web, name: pd{i}, mac: \"52:54:00:00:02:{i:02x}\" }}\n"
            ));
        }
        let (rows, _) = rows_of(&text, "hv1");
        let lrp = find(&rows, "Logical_Router_Port", "web");
        let NbVal::Map(ra) = &lrp.columns["ipv6_ra_configs"] else {
            panic!("{lrp:?}")
        };
        assert_eq!(ra["address_mode"], "dhcpv6_stateful");
        let dhcp6 = find(&rows, "DHCP_Options", "web/v6");
        assert_eq!(dhcp6.columns["cidr"], NbVal::str("fd00:80::/64"));
        let NbVal::Map(o) = &dhcp6.columns["options"] else {
            panic!("{dhcp6:?}")
        };
        assert_eq!(o["server_id"], router_mac("kvmnet-lrp-web").to_string());
        assert_eq!(o["dns_server"], "{fd00:80::53}");
        assert!(!o.contains_key("dhcpv6_stateless"));
        let mut seen = BTreeSet::new();
        for port in ["pa", "ps", "pd0", "pd1", "pd2"] {
            let p = find(&rows, "Logical_Switch_Port", port);
            assert_eq!(
                p.columns["dhcpv6_options"],
                NbVal::set([NbVal::reference("DHCP_Options", "web/v6")])
            );
            let NbVal::Set(a) = &p.columns["addresses"] else {
                panic!("{p:?}")
            };
            let [NbVal::Str(a)] = a.as_slice() else {
                panic!("{p:?}")
            };
            let v6: Vec<Ipv6Addr> = a.split(' ').filter_map(|w| w.parse().ok()).collect();
            assert_eq!(v6.len(), 1, "{port}: {a}");
            if port == "ps" {
                assert_eq!(v6[0], "fd00:80::12".parse::<Ipv6Addr>().unwrap());
            } else {
                assert!(v6[0] >= "fd00:80::2".parse::<Ipv6Addr>().unwrap(), "{a}");
                assert!(v6[0] <= "fd00:80::5".parse::<Ipv6Addr>().unwrap(), "{a}");
            }
            assert!(seen.insert(v6[0]), "{port}: {a} taken twice");
        }
        // Four ports without ipv6 in a pool of four, and ps's own: all distinct.
        assert_eq!(seen.len(), 5);
    }
}
