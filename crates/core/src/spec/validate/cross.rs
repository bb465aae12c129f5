//! The second pass: rules that span the whole spec.

use super::*;
use foldhash::{HashSet, HashSetExt};

/// Every whole-spec rule, one function each; the errors are sorted by place at the end, so
/// the order here is only the order of reading.
pub(super) fn cross_checks(
    cx: &mut Ctx,
    nets: &[NetDraft],
    ports: &[&PortDraft],
    sysctl: Option<&Sysctl>,
    ovn_nets: &[String],
) {
    check_floors(cx, nets, ports);
    check_bridge_ports(cx, nets, ports, ovn_nets);
    let created = created_names(cx, nets, ports);
    let seen_uplink = check_uplinks(cx, nets, &created);
    direct_checks(cx, nets, ports, &created, &seen_uplink);
    check_vlan_uplinks(cx, nets, &created);
    check_nat_egress(cx, nets, &created, &seen_uplink);
    check_macs(cx, nets, ports);
    check_port_addresses(cx, ports);
    check_subnets(cx, nets);
    check_mirrors(cx, ports);
    check_forwards(cx, nets, ports);
    check_forwarding(cx, nets, sysctl);
    super::ipv6::check_ipv6(cx, nets, ports, sysctl);
    check_dns(cx, nets, ports);
    super::dhcp6::check_dhcp6(cx, nets, ports);
}

/// An interface kvmnet creates, with where its name comes from.
#[derive(Clone)]
struct Created<'a> {
    name: std::borrow::Cow<'a, str>,
    loc: Loc,
    path: LazyPath<'a>,
    what: What<'a>,
    derived: bool,
}

/// Every interface kvmnet creates, to be looked up by name.
struct CreatedNames<'a> {
    /// Bridges, VXLAN and VLAN devices and trunk sub-interfaces; and, when two names clash,
    /// the ports too, all in the order of where they were written.
    listed: Vec<Created<'a>>,
    /// Without a clash, the ports by name: not copied into `listed` (10,000 ports' entries,
    /// a hundred bytes each, took most of a millisecond of every parse).
    ports: HashMap<&'a str, &'a PortDraft>,
}

impl<'a> CreatedNames<'a> {
    /// The first interface named `name`, in the order of `listed` then the ports (names
    /// are unique when the ports are not listed, so then there is only one).
    fn find(&self, name: &str) -> Option<Created<'a>> {
        self.find_where(name, |_| true)
    }

    /// The first interface named `name` that `also` takes (of two that clash, the other one
    /// may be the one wanted).
    fn find_where(&self, name: &str, also: impl Fn(&Created) -> bool) -> Option<Created<'a>> {
        self.listed
            .iter()
            .find(|c| c.name == name && also(c))
            .cloned()
            .or_else(|| {
                let p = self.ports.get(name)?;
                Some(port_created(p)).filter(|c| also(c))
            })
    }
}

/// A port's interface, when it has a name.
fn port_created<'a>(p: &'a PortDraft) -> Created<'a> {
    Created {
        name: p.name.as_deref().unwrap_or_default().into(),
        loc: p.name_loc,
        path: LazyPath::Join(&p.path, "name"),
        what: What::Port(p.index, &p.vm),
        derived: p.name_derived,
    }
}

/// Every interface kvmnet creates needs a unique name: bridges, VXLAN and VLAN devices,
/// trunk sub-interfaces and ports.
fn created_names<'a>(
    cx: &mut Ctx,
    nets: &'a [NetDraft],
    ports: &'a [&'a PortDraft],
) -> CreatedNames<'a> {
    let mut created: Vec<Created> = Vec::new();
    for n in nets {
        if let Some(b) = n.bridge.as_ref().filter(|b| !b.is_empty()) {
            created.push(Created {
                name: b.as_str().into(),
                loc: n.bridge_loc,
                path: LazyPath::Join(&n.path, "bridge"),
                what: What::Bridge(&n.name),
                derived: n.bridge_derived,
            });
        }
    }
    for n in nets {
        if let Some(v) = &n.vxlan {
            created.push(Created {
                name: v.device.as_str().into(),
                loc: n.key_loc,
                path: LazyPath::Plain(&n.path),
                what: What::Vxlan(&n.name),
                derived: true,
            });
        }
    }
    let vlan_ids = vlan_networks(cx, nets, &mut created);
    trunk_vlans(cx, nets, ports, &vlan_ids, &mut created);
    unique_vnis(cx, nets);
    // Put in order (to blame the later of two) only when two share a name: with none, no
    // order shows (the names are unique, so a search by name finds the one), and sorting
    // 10,000 ports' names took a few milliseconds of every parse.
    let named = || ports.iter().filter(|p| p.name.is_some());
    let mut by_name: HashMap<&str, &PortDraft> = HashMap::with_capacity(ports.len());
    let clash = {
        let mut listed: HashSet<&str> = HashSet::with_capacity(created.len());
        !named().all(|p| {
            by_name
                .insert(p.name.as_deref().unwrap_or_default(), p)
                .is_none()
        }) || !created
            .iter()
            .all(|c| listed.insert(c.name.as_ref()) && !by_name.contains_key(c.name.as_ref()))
    };
    if !clash {
        return CreatedNames {
            listed: created,
            ports: by_name,
        };
    }
    created.extend(named().map(|p| port_created(p)));
    created.sort_by(|a, b| a.loc.cmp(&b.loc).then_with(|| a.path.cmp(&b.path)));
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(created.len());
    for (i, c) in created.iter().enumerate() {
        if let Some(&j) = first.get(c.name.as_ref()) {
            let f = &created[j];
            let how = if c.derived {
                format!(
                    "the derived interface name '{}' of {} is already used by {}",
                    c.name, c.what, f.what
                )
            } else {
                format!("interface name '{}' is already used by {}", c.name, f.what)
            };
            let fix = if c.derived {
                "; set a name explicitly"
            } else {
                "; every bridge and port kvmnet creates needs its own name"
            };
            let (path, loc) = (c.path.get(), c.loc);
            cx.err(
                &path,
                loc,
                format!("{how}{}{fix}", if f.derived { " (derived)" } else { "" }),
            );
        } else {
            first.insert(c.name.as_ref(), i);
        }
    }
    CreatedNames {
        listed: created,
        ports: HashMap::new(),
    }
}

/// One vlan network per VLAN of an uplink; each sub-interface is an interface kvmnet makes.
fn vlan_networks<'a>(
    cx: &mut Ctx,
    nets: &'a [NetDraft],
    created: &mut Vec<Created<'a>>,
) -> HashMap<(&'a str, u16), &'a NetDraft> {
    let mut vlan_ids: HashMap<(&str, u16), &NetDraft> = HashMap::new();
    for n in nets {
        let Some(v) = &n.vlan else { continue };
        if let Some(other) = vlan_ids.get(&(v.uplink.as_str(), v.id)) {
            cx.err(
                &join(&n.path, "vlan"),
                n.vlan_loc,
                format!(
                    "VLAN {} of uplink '{}' is already network {}; one network per VLAN (ports of both belong on that network)",
                    v.id, v.uplink, other.name
                ),
            );
            continue;
        }
        vlan_ids.insert((v.uplink.as_str(), v.id), n);
        created.push(Created {
            name: v.device.as_str().into(),
            loc: n.vlan_loc,
            path: LazyPath::Join(&n.path, "vlan"),
            what: What::NetVlan(v.id, &n.name),
            derived: true,
        });
    }
    vlan_ids
}

/// A trunk port's VLANs: each one served by a vlan network on its own network's uplink.
fn trunk_vlans<'a>(
    cx: &mut Ctx,
    nets: &'a [NetDraft],
    ports: &'a [&'a PortDraft],
    vlan_ids: &HashMap<(&'a str, u16), &'a NetDraft>,
    created: &mut Vec<Created<'a>>,
) {
    for p in ports {
        if p.vlans.is_empty() {
            continue;
        }
        let Some(own) = p
            .network
            .as_ref()
            .and_then(|name| nets.iter().find(|n| &n.name == name))
        else {
            continue;
        };
        let Some(ov) = &own.vlan else { continue };
        for (vid, loc, path) in &p.vlans {
            if !vlan_ids.contains_key(&(ov.uplink.as_str(), *vid)) {
                cx.err(
                    path,
                    *loc,
                    format!(
                        "no vlan network serves VLAN {vid} on uplink '{}'; define one (mode: vlan, uplink: {}, vlan: {vid}) or remove {vid} from vlans",
                        ov.uplink, ov.uplink
                    ),
                );
            } else if let Some(name) = &p.name {
                created.push(Created {
                    name: naming::trunk_vlan_name(name, *vid).into(),
                    loc: *loc,
                    path: LazyPath::Plain(path),
                    what: What::TrunkVlan(*vid, p.index, &p.vm),
                    derived: true,
                });
            }
        }
    }
}

/// One VNI per UDP port on a host: the kernel refuses a second device for it.
fn unique_vnis(cx: &mut Ctx, nets: &[NetDraft]) {
    let mut vnis: HashMap<(u32, u16), &NetDraft> = HashMap::new();
    for n in nets {
        let Some(v) = &n.vxlan else { continue };
        if let Some(other) = vnis.get(&(v.vni, v.port)) {
            let path = join(&n.path, "vni");
            let loc = cx.loc_at(&path).unwrap_or(n.key_loc);
            cx.err(
                &path,
                loc,
                format!(
                    "vni {} on port {} is already used by network {}; every vxlan network needs its own VNI",
                    v.vni, v.port, other.name
                ),
            );
        } else {
            vnis.insert((v.vni, v.port), n);
        }
    }
}

/// Uplinks: existing host interfaces, never one kvmnet creates, each enslaved once.
fn check_uplinks<'a>(
    cx: &mut Ctx,
    nets: &'a [NetDraft],
    created: &CreatedNames,
) -> HashMap<&'a str, &'a NetDraft> {
    let mut uplinks: Vec<(&str, Loc, &NetDraft)> = nets
        .iter()
        .filter(|n| n.mode.is_none_or(Mode::has_bridge))
        .filter_map(|n| n.uplink.as_ref().map(|(u, l)| (u.as_str(), *l, n)))
        .collect();
    uplinks.sort_by_key(|u| u.1);
    let mut seen_uplink: HashMap<&str, &NetDraft> = HashMap::new();
    for (u, loc, n) in &uplinks {
        let path = join(&n.path, "uplink");
        if let Some(c) = created.find(u) {
            cx.err(
                &path,
                *loc,
                format!(
                    "uplink '{u}' is an interface kvmnet creates ({}); the uplink must be an existing host interface like eth0",
                    c.what
                ),
            );
        }
        if let Some(other) = seen_uplink.get(u) {
            cx.err(
                &path,
                *loc,
                format!(
                    "uplink '{u}' is already enslaved by bridge network {}; an interface can join only one bridge",
                    other.name
                ),
            );
        } else {
            seen_uplink.insert(u, n);
        }
    }

    seen_uplink
}

/// A vlan network's uplink is an existing host interface.
fn check_vlan_uplinks(cx: &mut Ctx, nets: &[NetDraft], created: &CreatedNames) {
    for n in nets {
        let Some(v) = &n.vlan else { continue };
        if let Some(c) = created.find(&v.uplink) {
            cx.err(
                &join(&n.path, "uplink"),
                n.vlan_uplink_loc,
                format!(
                    "uplink '{}' is an interface kvmnet creates ({}); a vlan network's uplink must be an existing host interface like eth1",
                    v.uplink, c.what
                ),
            );
        }
    }
}

/// NAT egress: a host interface the traffic really leaves through.
fn check_nat_egress(
    cx: &mut Ctx,
    nets: &[NetDraft],
    created: &CreatedNames,
    seen_uplink: &HashMap<&str, &NetDraft>,
) {
    for n in nets {
        let Some((e, loc)) = &n.egress else { continue };
        let path = join(&join(&n.path, "nat"), "egress");
        if let Some(other) = seen_uplink.get(e.as_str()) {
            let br = other.bridge.as_deref().unwrap_or("its bridge");
            cx.err(
                &path,
                *loc,
                format!(
                    "'{e}' is enslaved to the bridge of network {}; traffic leaves through the bridge, so use egress: {br}",
                    other.name
                ),
            );
        } else if n.bridge.as_deref() == Some(e.as_str()) {
            cx.err(
                &path,
                *loc,
                format!("'{e}' is this network's own bridge; egress names the host interface towards the outside, like eth0"),
            );
        } else if let Some(c) = created.find_where(e, |c| c.path.get().starts_with("vms")) {
            cx.err(
                &path,
                *loc,
                format!(
                    "'{e}' is {}; egress names the host interface towards the outside, like eth0",
                    c.what
                ),
            );
        }
    }
}

/// MACs: guests' and bridges' addresses must all differ.
fn check_macs(cx: &mut Ctx, nets: &[NetDraft], ports: &[&PortDraft]) {
    // Without a clash there is no one to blame, and no order to put them in: the MACs are
    // only counted (the list below, of 10,000 ports, took half a millisecond).
    let bridged = |n: &&NetDraft| {
        check_entity_name(&n.name, "network").is_ok() && n.mode.is_none_or(Mode::has_bridge)
    };
    let mut distinct: HashSet<Mac> = HashSet::with_capacity(nets.len() + ports.len());
    let all = nets
        .iter()
        .filter(bridged)
        .map(|n| naming::bridge_mac(&n.name));
    if all
        .chain(ports.iter().filter_map(|p| p.mac))
        .all(|m| distinct.insert(m))
    {
        return;
    }
    let mut macs: Vec<(Mac, Loc, LazyPath, What, bool)> =
        Vec::with_capacity(nets.len() + ports.len());
    for n in nets.iter().filter(bridged) {
        macs.push((
            naming::bridge_mac(&n.name),
            n.key_loc,
            LazyPath::Plain(&n.path),
            What::Bridge(&n.name),
            true,
        ));
    }
    for p in ports {
        if let Some(m) = p.mac {
            macs.push((
                m,
                p.mac_loc,
                LazyPath::Join(&p.path, "mac"),
                What::Port(p.index, &p.vm),
                p.mac_derived,
            ));
        }
    }
    // Explicit MACs first, so a clash is blamed on the bridge's; then by position. (Derived
    // ports' MACs are not here: they are given out later, around all of these.)
    macs.sort_by(|a, b| (a.4, a.1).cmp(&(b.4, b.1)).then_with(|| a.2.cmp(&b.2)));
    let mut seen_mac: HashMap<Mac, usize> = HashMap::with_capacity(macs.len());
    for (i, (m, loc, path, what, derived)) in macs.iter().enumerate() {
        if let Some(&j) = seen_mac.get(m) {
            let path = path.get();
            let prefix = if *derived { "the derived MAC" } else { "MAC" };
            cx.err(
                &path,
                *loc,
                format!(
                    "{prefix} {m} of {what} is already used by {}; every MAC must be unique",
                    macs[j].3
                ),
            );
        } else {
            seen_mac.insert(*m, i);
        }
    }
}

/// Port addresses: unique within a network.
fn check_port_addresses(cx: &mut Ctx, ports: &[&PortDraft]) {
    // Put in order (to blame the later of two) only when two share an address, as with
    // names and MACs: sorting 10,000 ports took more than half a millisecond.
    let mut distinct: HashSet<(&str, Ipv4Addr)> = HashSet::with_capacity(ports.len());
    let placed = ports
        .iter()
        .filter_map(|p| Some((p.network.as_deref()?, p.ipv4?.addr)));
    if placed.into_iter().all(|k| distinct.insert(k)) {
        return;
    }
    let mut addrs: Vec<&PortDraft> = ports.iter().copied().filter(|p| p.ipv4.is_some()).collect();
    addrs.sort_by_key(|p| p.ipv4_loc);
    let mut seen_addr: HashMap<(&str, Ipv4Addr), &PortDraft> = HashMap::new();
    for p in addrs {
        let (Some(net), Some(a)) = (&p.network, p.ipv4) else {
            continue;
        };
        if let Some(other) = seen_addr.get(&(net.as_str(), a.addr)) {
            cx.err(
                &join(&p.path, "ipv4"),
                p.ipv4_loc,
                format!(
                    "{} is already assigned to port {} of VM {} on network {net}",
                    a.addr, other.index, other.vm
                ),
            );
        } else {
            seen_addr.insert((net.as_str(), a.addr), p);
        }
    }
}

/// Subnets of nat/routed/isolated networks must not overlap.
fn check_subnets(cx: &mut Ctx, nets: &[NetDraft]) {
    let mut subnets: Vec<(&NetDraft, Ipv4Cidr)> =
        nets.iter().filter_map(|n| n.ipv4.map(|c| (n, c))).collect();
    subnets.sort_by_key(|(n, _)| n.ipv4_loc);
    for (i, (n, c)) in subnets.iter().enumerate() {
        if let Some((other, oc)) = subnets[..i].iter().find(|(_, oc)| oc.overlaps(c)) {
            cx.err(
                &join(&n.path, "ipv4"),
                n.ipv4_loc,
                format!(
                    "subnet {} overlaps {} of network {}; networks need separate subnets",
                    c.network(),
                    oc.network(),
                    other.name
                ),
            );
        }
    }
}

/// A mirror copies to another port of the spec.
fn check_mirrors(cx: &mut Ctx, ports: &[&PortDraft]) {
    for p in ports {
        if let Some((m, loc, path)) = &p.mirror {
            let target = ports.iter().find(|q| q.name.as_deref() == Some(m.as_str()));
            if p.name.as_deref() == Some(m.as_str()) {
                cx.err(path, *loc, "a port cannot mirror to itself");
            } else if target.is_some_and(|t| t.kind == Some(PortKind::Macvtap)) {
                cx.err(
                    path,
                    *loc,
                    format!(
                        "'{}' is a port on a direct network: a copy sent to a macvtap leaves through its uplink instead of reaching the VM; mirror to a tap or veth port",
                        show(m)
                    ),
                );
            } else if !ports.iter().any(|q| q.name.as_deref() == Some(m.as_str())) {
                cx.err(
                    path,
                    *loc,
                    format!(
                        "no port named '{}' to mirror to; name a port of this spec",
                        show(m)
                    ),
                );
            }
        }
    }
}

/// A forward needs a VM with an address on its network.
fn check_forwards(cx: &mut Ctx, nets: &[NetDraft], ports: &[&PortDraft]) {
    for n in nets {
        for fw in &n.forwards {
            let target = ports.iter().find(|p| {
                p.vm == fw.to && p.network.as_deref() == Some(n.name.as_str()) && p.ipv4.is_some()
            });
            if target.is_none() {
                let exists = ports.iter().any(|p| p.vm == fw.to);
                cx.err(
                    &join(&fw.path, "to"),
                    fw.to_loc,
                    if exists {
                        format!(
                            "VM '{}' has no port with an ipv4 on network {}; a forward needs the address it goes to",
                            show(&fw.to),
                            n.name
                        )
                    } else {
                        format!("unknown VM '{}'", show(&fw.to))
                    },
                );
            }
        }
    }
}

/// Forwarding: nat and routed networks need it.
fn check_forwarding(cx: &mut Ctx, nets: &[NetDraft], sysctl: Option<&Sysctl>) {
    if let Some((values, where_)) = sysctl {
        let needs: Vec<String> = nets
            .iter()
            .filter(|n| n.mode.is_some_and(Mode::forwarding))
            .map(|n| format!("{} ({})", n.name, n.mode.map_or("", |m| m.as_str())))
            .collect();
        if !needs.is_empty() {
            for key in ["net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding"] {
                if values
                    .get(key)
                    .is_some_and(|v| v.trim().parse::<i64>() == Ok(0))
                    && let Some((loc, path)) = where_.get(key)
                {
                    cx.err(
                        path,
                        *loc,
                        format!(
                            "{key}=0 turns off IPv4 forwarding, but network{} {} need{} it; remove this setting or set it to 1",
                            if needs.len() > 1 { "s" } else { "" },
                            needs.join(", "),
                            if needs.len() > 1 { "" } else { "s" },
                        ),
                    );
                }
            }
        }
    }
}

/// Ports a Linux bridge can hold: port numbers are 10 bits and 0 is reserved
/// (`BR_MAX_PORTS` in the kernel's `br_private.h`). One more is refused with EXFULL in the
/// middle of an apply.
pub const BRIDGE_MAX_PORTS: usize = 1023;

/// Refuses, at the first port over the limit, a network whose bridge would hold more ports
/// than the kernel allows: its uplink, VLAN or VXLAN device, its ports that carry it
/// untagged, and the trunk sub-interfaces of other ports that tag it. An OVN network is a
/// logical switch, no Linux bridge: it has no such limit.
pub(super) fn check_bridge_ports(
    cx: &mut Ctx,
    nets: &[NetDraft],
    ports: &[&PortDraft],
    ovn_nets: &[String],
) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    let linux = |n: &&NetDraft| n.bridge.is_some() && !ovn_nets.contains(&n.name);
    for n in nets.iter().filter(linux) {
        let lower = n.uplink.is_some() || n.vlan.is_some() || n.vxlan.is_some();
        count.insert(n.name.as_str(), usize::from(lower));
    }
    let vlan_net = |uplink: &str, vid: u16| {
        nets.iter().find(|n| {
            n.vlan
                .as_ref()
                .is_some_and(|v| v.uplink == uplink && v.id == vid)
        })
    };
    let mut reported = std::collections::HashSet::new();
    for p in ports {
        let Some(own) = p
            .network
            .as_deref()
            .and_then(|name| nets.iter().find(|n| n.name == name))
        else {
            continue;
        };
        // On no counted bridge, through no VLAN (an OVN port): nothing to count.
        if own.vlan.is_none() && !count.contains_key(own.name.as_str()) {
            continue;
        }
        let own_vid = own.vlan.as_ref().map(|v| v.id);
        let mut on: Vec<&NetDraft> = Vec::new();
        if own_vid.is_none_or(|id| !p.vlans.iter().any(|v| v.0 == id)) {
            on.push(own);
        }
        if let Some(ov) = &own.vlan {
            on.extend(p.vlans.iter().filter_map(|v| vlan_net(&ov.uplink, v.0)));
        }
        for n in on {
            let Some(c) = count.get_mut(n.name.as_str()) else {
                continue;
            };
            *c += 1;
            if *c > BRIDGE_MAX_PORTS && reported.insert(n.name.as_str()) {
                cx.err(
                    &p.path,
                    p.name_loc,
                    format!(
                        "network {} would put more than {BRIDGE_MAX_PORTS} ports on bridge '{}', the most a Linux bridge holds (counting its uplink); move some ports to another network",
                        n.name,
                        n.bridge.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
    }
}

/// `qos.floor` guarantees are shares of their network's `bandwidth`: the network must declare
/// one, and the floors on it must fit in it.
pub(super) fn check_floors(cx: &mut Ctx, nets: &[NetDraft], ports: &[&PortDraft]) {
    let mut sums: HashMap<&str, u64> = HashMap::new();
    for p in ports {
        let Some(floor) = p.qos.as_ref().and_then(|q| q.floor_bps) else {
            continue;
        };
        let Some(net) = p
            .network
            .as_deref()
            .and_then(|n| nets.iter().find(|d| d.name == n))
        else {
            continue;
        };
        let path = join(&join(&p.path, "qos"), "floor");
        // Looked up only for an error: the list of locations is long.
        let loc = |cx: &Ctx| cx.loc_at(&path).unwrap_or(p.name_loc);
        let Some((bandwidth, _)) = net.bandwidth else {
            let msg = match net.mode {
                Some(m) if !m.routed_by_host() => format!(
                    "floors apply on nat, routed and isolated networks, where the host routes traffic into the network; on network {} ({}) traffic to the VMs is switched past the host",
                    net.name,
                    m.as_str()
                ),
                _ => format!(
                    "a floor is a share of its network's bandwidth; set networks.{}.bandwidth (the total rate the host sends into the network, like 1gbit)",
                    net.name
                ),
            };
            cx.err(&path, loc(cx), msg);
            continue;
        };
        if let Some(inbound) = p.qos.as_ref().and_then(|q| q.inbound) {
            let cap = inbound.ceil_bps.unwrap_or(inbound.rate_bps);
            if floor > cap {
                cx.err(
                    &path,
                    loc(cx),
                    format!(
                        "the floor ({}) is above this port's own inbound limit ({}); lower the floor or raise qos.inbound",
                        show_rate(floor),
                        show_rate(cap)
                    ),
                );
                continue;
            }
        }
        let sum = sums.entry(net.name.as_str()).or_default();
        *sum += floor;
        if *sum > bandwidth {
            cx.err(
                &path,
                loc(cx),
                format!(
                    "the floors on network {} add up to {} with this one, more than its bandwidth of {}; lower a floor or raise the bandwidth",
                    net.name,
                    show_rate(*sum),
                    show_rate(bandwidth)
                ),
            );
        }
    }
}

/// Direct networks: the uplink is a host interface no bridge of the spec takes (the kernel
/// gives a device to a bridge or to macvlans, not both), and passthrough has the uplink to
/// itself: one network, one port.
fn direct_checks(
    cx: &mut Ctx,
    nets: &[NetDraft],
    ports: &[&PortDraft],
    created: &CreatedNames,
    bridged: &HashMap<&str, &NetDraft>,
) {
    let mut direct: Vec<&NetDraft> = nets
        .iter()
        .filter(|n| n.mode.is_some_and(|m| !m.has_bridge()) && n.uplink.is_some())
        .collect();
    direct.sort_by_key(|n| n.uplink.as_ref().map(|u| u.1));
    for (i, n) in direct.iter().enumerate() {
        let Some((u, loc)) = &n.uplink else { continue };
        let path = join(&n.path, "uplink");
        if let Some(what) = created.find(u).map(|c| c.what) {
            cx.err(
                &path,
                *loc,
                format!(
                    "uplink '{u}' is an interface kvmnet creates ({what}); the uplink must be an existing host interface like eth0"
                ),
            );
            continue;
        }
        if let Some(b) = bridged.get(u.as_str()) {
            cx.err(
                &path,
                *loc,
                format!(
                    "uplink '{u}' is enslaved by bridge network {}; a device serves a bridge or macvtap ports, not both (attach this network's VMs to {} instead)",
                    b.name, b.name
                ),
            );
            continue;
        }
        let mode = n.direct_mode.map(|m| m.0);
        let earlier = direct[..i]
            .iter()
            .find(|o| o.uplink.as_ref().map(|x| &x.0) == Some(u));
        if let Some(o) = earlier {
            let om = o.direct_mode.map(|m| m.0);
            if mode == Some(DirectMode::Passthrough) || om == Some(DirectMode::Passthrough) {
                let dpath = join(&n.path, "direct_mode");
                let dloc = n.direct_mode.map_or(*loc, |m| m.1);
                cx.err(
                    if mode == Some(DirectMode::Passthrough) { &dpath } else { &path },
                    if mode == Some(DirectMode::Passthrough) { dloc } else { *loc },
                    format!(
                        "uplink '{u}' is already used by direct network {}; a passthrough network takes its uplink for itself, so no other direct network can share it",
                        o.name
                    ),
                );
            }
        }
        if mode == Some(DirectMode::Passthrough) {
            let mine: Vec<&PortDraft> = ports
                .iter()
                .copied()
                .filter(|p| p.network.as_deref() == Some(n.name.as_str()))
                .collect();
            if let Some(second) = mine.get(1) {
                cx.err(
                    &join(&second.path, "network"),
                    cx.loc_at(&join(&second.path, "network"))
                        .unwrap_or(second.name_loc),
                    format!(
                        "network {} is in passthrough mode, which gives its uplink '{u}' to exactly one port, and port {} of VM {} already has it; use direct_mode bridge for several ports",
                        n.name, mine[0].index, mine[0].vm
                    ),
                );
            }
        }
    }
}

/// What an interface kvmnet creates is, for messages; written out only for an error.
#[derive(Clone, Copy)]
pub(super) enum What<'a> {
    Bridge(&'a str),
    Vxlan(&'a str),
    NetVlan(u16, &'a str),
    TrunkVlan(u16, usize, &'a str),
    Port(usize, &'a str),
}

impl std::fmt::Display for What<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            What::Bridge(n) => write!(f, "the bridge of network {n}"),
            What::Vxlan(n) => write!(f, "the vxlan device of network {n}"),
            What::NetVlan(id, n) => write!(f, "the VLAN {id} sub-interface of network {n}"),
            What::TrunkVlan(vid, i, vm) => {
                write!(f, "the VLAN {vid} sub-interface of port {i} of VM {vm}")
            }
            What::Port(i, vm) => write!(f, "port {i} of VM {vm}"),
        }
    }
}

/// A field path, joined only when it is needed (for an error, or to order two things
/// written at the same place).
#[derive(Clone, Copy)]
pub(super) enum LazyPath<'a> {
    Plain(&'a str),
    Join(&'a str, &'static str),
}

impl LazyPath<'_> {
    fn get(&self) -> String {
        match self {
            LazyPath::Plain(p) => p.to_string(),
            LazyPath::Join(p, k) => join(p, k),
        }
    }
}

impl PartialEq for LazyPath<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for LazyPath<'_> {}

impl PartialOrd for LazyPath<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LazyPath<'_> {
    /// As the paths' texts compare, without making them: sorting 10,000 ports written at
    /// one place each (a spec cache's entries, each counted from its own first line) made
    /// two paths per comparison, half of the checks' time.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes().cmp(other.bytes())
    }
}

impl LazyPath<'_> {
    /// The path's text, byte by byte: a `Join`'s key is one of the checks' own plain field
    /// names, which `join` writes as they are.
    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        let (parent, key) = match *self {
            LazyPath::Plain(p) => (p, ""),
            LazyPath::Join(p, k) => {
                debug_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                (p, k)
            }
        };
        let dot = matches!(self, LazyPath::Join(..)) && !parent.is_empty();
        let dot = dot.then_some(b'.');
        parent.bytes().chain(dot).chain(key.bytes())
    }
}

// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::LazyPath;

    #[test]
    fn lazy_paths_compare_as_their_texts() {
        let paths = [
            LazyPath::Plain(""),
            LazyPath::Plain("vms.a.ports[0]"),
            LazyPath::Plain("vms.a.ports[0].mac"),
            LazyPath::Join("vms.a.ports[0]", "mac"),
            LazyPath::Join("vms.a.ports[0]", "name"),
            LazyPath::Join("vms.a.ports[10]", "mac"),
            LazyPath::Join("vms.a", "name"),
            LazyPath::Join("", "mac"),
            LazyPath::Plain("mac"),
            LazyPath::Plain("networks.web"),
            LazyPath::Join("networks.web", "bridge"),
        ];
        for a in &paths {
            for b in &paths {
                assert_eq!(a.cmp(b), a.get().cmp(&b.get()), "{} {}", a.get(), b.get());
            }
        }
    }
}
