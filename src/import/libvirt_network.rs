//! A libvirt `<network>` as a kvmnet network (and its `<host>` reservations, which
//! [`super::model::assemble`] turns into ports).

use std::net::Ipv4Addr;

use roxmltree::Node;

use super::model::{Dhcp, Host, Mode, Network, Place, sanitize};
use super::xml::{Report, elements, is, named};

/// libvirt's default lease (dnsmasq's), which is also kvmnet's.
const DEFAULT_LEASE_SECS: u64 = 3600;

/// kvmnet's shortest lease.
const MIN_LEASE_SECS: u64 = 60;

/// What the elements of one `<network>` said, before they are checked against each other.
#[derive(Default)]
struct Draft {
    name: Option<String>,
    /// `None`: no `<forward>`, an isolated network.
    mode: Option<Mode>,
    forward: Option<Place>,
    /// `<forward mode='bridge'>`, which is a host bridge with `<bridge name>`, else macvtap.
    forward_bridge: bool,
    uplink: Option<String>,
    bridge: Option<(String, Place)>,
    ipv4: Option<((Ipv4Addr, u8), Place)>,
    mtu: Option<u32>,
    dhcp: Option<(Dhcp, Place)>,
    domain: Option<(String, Place)>,
    bandwidth: Option<(String, Place)>,
    isolate_ports: Option<Place>,
    dns_disabled: bool,
    hosts: Vec<Host>,
    mac: Option<Place>,
}

/// Why an attribute of `<network>` has no mapping.
fn network_attr(_: &str) -> &'static str {
    "kvmnet has no such network setting"
}

/// Why a child element of `<network>` has no mapping.
fn network_child(name: &str) -> &'static str {
    match name {
        "vlan" => {
            "libvirt tags only Open vSwitch and hostdev ports with a network's VLAN; kvmnet's vlan mode is a bridge on an uplink's 802.1Q sub-interface: write a network with mode: vlan, uplink and vlan"
        }
        "virtualport" => {
            "802.1Qbg/802.1Qbh port profiles and Open vSwitch: kvmnet drives no switch profile and no OVS"
        }
        "portgroup" => "kvmnet has no port groups; give each port its settings",
        "route" => {
            "a static host route through a guest: kvmnet adds no host routes for a network (its dhcp.routes are routes handed to guests)"
        }
        "options" => "raw dnsmasq options: kvmnet does not run dnsmasq",
        _ => "kvmnet has no such network element",
    }
}

/// Reads one network file.
pub fn read(cx: &mut Report, text: &str) -> Option<Network> {
    let doc = cx.parse(text)?;
    let root = doc.root_element();
    if !is(root, "network") {
        cx.refuse(
            root,
            "not a libvirt network: the root element must be <network>",
        );
        return None;
    }
    let before = cx.error_count();
    cx.only_attrs(root, &["ipv6", "trustGuestRxFilters"], network_attr);
    if root.attribute("trustGuestRxFilters") == Some("yes") {
        cx.unmapped(
            root,
            "trustGuestRxFilters='yes' lets macvtap guests change their receive filter; kvmnet's macvtap ports keep the host's",
        );
    }
    let mut d = Draft::default();
    for c in elements(root) {
        child(cx, c, &mut d);
    }
    let net = finish(cx, root, d);
    (cx.error_count() == before).then_some(net).flatten()
}

/// One child of `<network>`.
fn child(cx: &mut Report, c: Node, d: &mut Draft) {
    if c.tag_name().namespace().is_some() {
        cx.unmapped(c, network_child(c.tag_name().name()));
        return;
    }
    match c.tag_name().name() {
        "name" => d.name = Some(c.text().unwrap_or("").trim().to_string()),
        // Identity and annotations: nothing on the host depends on them.
        "uuid" | "title" | "description" | "metadata" => {}
        "forward" => forward(cx, c, d),
        "bridge" => bridge(cx, c, d),
        "mac" => {
            cx.only_attrs(c, &["address"], network_attr);
            d.mac = Some(cx.place(c));
        }
        "mtu" => {
            cx.only_attrs(c, &["size"], network_attr);
            d.mtu = number(cx, c, "size", 68, 65535).map(|v| v as u32);
        }
        "domain" => {
            cx.only_attrs(c, &["name"], |a| match a {
                "localOnly" | "register" => {
                    "it shapes libvirt's DNS server, and kvmnet serves no DNS"
                }
                _ => network_attr(a),
            });
            if let Some(n) = c.attribute("name") {
                d.domain = Some((n.to_string(), cx.place(c)));
            }
        }
        "dns" => dns(cx, c, d),
        "ip" => ip(cx, c, d),
        "bandwidth" => bandwidth(cx, c, d),
        "port" => {
            cx.only_attrs(c, &["isolated"], network_attr);
            if c.attribute("isolated") == Some("yes") {
                d.isolate_ports = Some(cx.place(c));
            }
        }
        other => cx.unmapped(c, network_child(other)),
    }
}

/// `<forward>`: the mode, and the device(s) traffic leaves by.
fn forward(cx: &mut Report, c: Node, d: &mut Draft) {
    cx.only_attrs(c, &["mode", "dev"], |a| match a {
        "managed" => "PCI devices handed to guests: kvmnet connects guests through tap and macvtap devices only",
        _ => "kvmnet has no such forward setting",
    });
    d.forward = Some(cx.place(c));
    let mut devs: Vec<String> = c.attribute("dev").map(str::to_string).into_iter().collect();
    let mode = c.attribute("mode").unwrap_or("nat");
    for e in elements(c) {
        match e.tag_name().name() {
            "interface" if e.tag_name().namespace().is_none() => {
                cx.only_attrs(e, &["dev"], |_| "kvmnet has no such interface setting");
                match e.attribute("dev") {
                    Some(dev) if devs.iter().any(|x| x == dev) => {}
                    Some(dev) if devs.is_empty() => devs.push(dev.to_string()),
                    Some(_) => cx.unmapped(
                        e,
                        "kvmnet takes one uplink per network; libvirt picks each guest's from a pool of several",
                    ),
                    None => cx.refuse(e, "an <interface> of <forward> needs dev"),
                }
            }
            "nat" if mode == "nat" && e.tag_name().namespace().is_none() => nat(cx, e),
            "pf" | "address" | "driver" => cx.unmapped(
                e,
                "SR-IOV functions and PCI devices: kvmnet connects guests through tap and macvtap devices only",
            ),
            _ => cx.unmapped(e, "kvmnet has no such forward setting"),
        }
    }
    let uplink = devs.into_iter().next();
    match mode {
        "nat" => {
            d.mode = Some(Mode::Nat);
            d.uplink = uplink;
        }
        "route" if uplink.is_some() => cx.unmapped(
            c,
            "libvirt forwards a routed network only through dev; kvmnet's routed networks forward through any interface and cannot be limited to one: drop dev to import it as routed",
        ),
        "route" => d.mode = Some(Mode::Routed),
        "open" => cx.unmapped(
            c,
            "an open network has no firewall rules at all; kvmnet's routed networks always keep the host and other networks out (nearest: mode routed, with host_access for what guests need on the host)",
        ),
        "bridge" | "private" | "vepa" | "passthrough" => {
            let kernel_mode = match mode {
                "bridge" => "bridge",
                "private" => "private",
                "vepa" => "vepa",
                _ => "passthrough",
            };
            d.forward_bridge = mode == "bridge";
            d.mode = Some(Mode::Direct(kernel_mode));
            d.uplink = uplink;
        }
        "hostdev" => cx.unmapped(
            c,
            "PCI devices (SR-IOV functions) handed to guests: kvmnet connects guests through tap and macvtap devices only",
        ),
        other => cx.refuse(c, format!("'{other}' is not a libvirt forward mode")),
    }
}

/// `<nat>` of a nat forward: kvmnet masquerades to the egress address with the kernel's
/// choice of ports, so address and port ranges have no mapping.
fn nat(cx: &mut Report, e: Node) {
    cx.only_attrs(e, &[], |a| match a {
        "ipv6" => "kvmnet translates no IPv6",
        _ => "kvmnet has no such nat setting",
    });
    for x in elements(e) {
        match x.tag_name().name() {
            "address" => cx.unmapped(
                x,
                "kvmnet masquerades to the egress interface's own address; it has no pool of source addresses",
            ),
            "port" => cx.unmapped(
                x,
                "kvmnet masquerades with the kernel's choice of source ports; it has no port range",
            ),
            _ => cx.unmapped(x, "kvmnet has no such nat setting"),
        }
    }
}

/// `<bridge>`: its name; the other attributes either change nothing a guest sees or are
/// refused.
fn bridge(cx: &mut Report, c: Node, d: &mut Draft) {
    cx.only_attrs(
        c,
        &["name", "stp", "delay", "macTableManager"],
        |a| match a {
            "zone" => "a firewalld zone: kvmnet keeps its rules in its own nftables tables",
            _ => "kvmnet has no such bridge setting",
        },
    );
    if c.attribute("macTableManager") == Some("libvirt") {
        cx.unmapped(
            c,
            "macTableManager='libvirt' turns learning and flooding off and writes each guest's MAC itself; kvmnet's bridges learn",
        );
    }
    if let Some(n) = c.attribute("name") {
        if n.len() <= 15 && sanitize(n).as_deref() == Some(n) {
            d.bridge = Some((n.to_string(), cx.place(c)));
        } else {
            cx.refuse(
                c,
                format!(
                    "'{n}' is not an interface name kvmnet takes (at most 15 of [A-Za-z0-9_.-])"
                ),
            );
        }
    }
}

/// `<dns>`: libvirt's DNS server. kvmnet serves no DNS, so only its absence maps.
fn dns(cx: &mut Report, c: Node, d: &mut Draft) {
    cx.only_attrs(c, &["enable", "forwardPlainNames"], network_attr);
    d.dns_disabled = c.attribute("enable") == Some("no");
    if c.attribute("forwardPlainNames") == Some("no") {
        cx.unmapped(
            c,
            "it shapes libvirt's DNS server, and kvmnet serves no DNS",
        );
    }
    for e in elements(c) {
        cx.unmapped(
            e,
            "kvmnet serves no DNS: host names, forwarders, SRV and TXT records need a DNS server of your own (dhcp.dns hands its address to guests)",
        );
    }
}

/// An attribute as a whole number in `min..=max`, or a refusal.
pub(super) fn number(cx: &mut Report, c: Node, attr: &str, min: u64, max: u64) -> Option<u64> {
    let Some(t) = c.attribute(attr) else {
        cx.refuse(c, format!("{attr} is missing"));
        return None;
    };
    match t.trim().parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Some(v),
        _ => {
            cx.refuse(
                c,
                format!("{attr}='{t}' is not a number from {min} to {max}"),
            );
            None
        }
    }
}

/// An IPv4 address attribute, or a refusal.
fn address(cx: &mut Report, c: Node, attr: &str) -> Option<Ipv4Addr> {
    let Some(t) = c.attribute(attr) else {
        cx.refuse(c, format!("{attr} is missing"));
        return None;
    };
    t.trim().parse().ok().or_else(|| {
        cx.refuse(c, format!("{attr}='{t}' is not an IPv4 address"));
        None
    })
}

/// The prefix of `<ip>`: `prefix`, else `netmask`, else the address's class (as libvirt
/// takes an address without either).
fn prefix(cx: &mut Report, c: Node, addr: Ipv4Addr) -> Option<u8> {
    if c.attribute("prefix").is_some() {
        return number(cx, c, "prefix", 1, 30).map(|p| p as u8);
    }
    if c.attribute("netmask").is_some() {
        let m = u32::from(address(cx, c, "netmask")?);
        let p = m.leading_ones();
        if m.checked_shl(p).unwrap_or(0) != 0 || !(1..=30).contains(&p) {
            cx.refuse(c, "the netmask is not a contiguous mask of 1 to 30 bits");
            return None;
        }
        return Some(p as u8);
    }
    Some(match addr.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    })
}

/// `<ip>`: the network's gateway and subnet, and its DHCP.
fn ip(cx: &mut Report, c: Node, d: &mut Draft) {
    cx.only_attrs(
        c,
        &["family", "address", "netmask", "prefix"],
        |a| match a {
            "localPtr" => "it shapes libvirt's DNS server, and kvmnet serves no DNS",
            _ => "kvmnet has no such address setting",
        },
    );
    if c.attribute("family") == Some("ipv6") {
        cx.unmapped(
            c,
            "kvmnet's nat, routed and isolated networks are IPv4 only: no IPv6 gateway, router advertisements or DHCPv6",
        );
        return;
    }
    if d.ipv4.is_some() {
        cx.unmapped(
            c,
            "kvmnet gives a network one IPv4 subnet, and this is a second",
        );
        return;
    }
    let Some(addr) = address(cx, c, "address") else {
        return;
    };
    let Some(len) = prefix(cx, c, addr) else {
        return;
    };
    d.ipv4 = Some(((addr, len), cx.place(c)));
    for e in elements(c) {
        match e.tag_name().name() {
            "dhcp" if e.tag_name().namespace().is_none() => dhcp(cx, e, d),
            "tftp" => cx.unmapped(e, "kvmnet serves no TFTP"),
            _ => cx.unmapped(e, "kvmnet has no such address setting"),
        }
    }
}

/// `<dhcp>`: one range, reservations by MAC, one lease time.
fn dhcp(cx: &mut Report, c: Node, d: &mut Draft) {
    cx.only_attrs(c, &[], network_attr);
    let mut out = Dhcp::default();
    let mut host_leases = Vec::new();
    for e in elements(c) {
        match e.tag_name().name() {
            "range" => range(cx, e, &mut out),
            "host" => {
                if let Some(h) = host(cx, e) {
                    if let Some(l) = named(e, "lease").next() {
                        host_leases.push((lease(cx, l), cx.place(l)));
                    }
                    d.hosts.push(h);
                }
            }
            "bootp" => cx.unmapped(e, "kvmnet's DHCP hands out no boot file or next server"),
            _ => cx.unmapped(e, "kvmnet has no such DHCP setting"),
        }
    }
    let lease = out.lease_secs.unwrap_or(DEFAULT_LEASE_SECS);
    for (l, place) in host_leases {
        if l.is_some_and(|l| l != lease) {
            cx.refuse_at(
                &place,
                format!(
                    "no faithful mapping in kvmnet (it has one lease time per network, here {lease}s; a reservation's own lease time has no place)"
                ),
            );
        }
    }
    d.dhcp = Some((out, cx.place(c)));
}

fn range(cx: &mut Report, e: Node, out: &mut Dhcp) {
    cx.only_attrs(e, &["start", "end"], |_| "kvmnet has no such range setting");
    if out.range.is_some() {
        cx.unmapped(
            e,
            "kvmnet's DHCP has one range per network, and this is a second",
        );
        return;
    }
    let (Some(a), Some(b)) = (address(cx, e, "start"), address(cx, e, "end")) else {
        return;
    };
    out.range = Some((a, b));
    for x in elements(e) {
        if is(x, "lease") {
            out.lease_secs = lease(cx, x);
        } else {
            cx.unmapped(x, "kvmnet has no such range setting");
        }
    }
}

/// `<lease expiry unit>` in seconds (libvirt's unit defaults to minutes).
fn lease(cx: &mut Report, e: Node) -> Option<u64> {
    cx.only_attrs(
        e,
        &["expiry", "unit"],
        |_| "kvmnet has no such lease setting",
    );
    let n = number(cx, e, "expiry", 0, u64::from(u32::MAX))?;
    let mult = match e.attribute("unit").unwrap_or("minutes") {
        "seconds" => 1,
        "minutes" => 60,
        "hours" => 3600,
        u => {
            cx.refuse(e, format!("unit='{u}' is not seconds, minutes or hours"));
            return None;
        }
    };
    match n * mult {
        0 => {
            cx.unmapped(
                e,
                "an infinite lease: kvmnet's leases expire (at most 136 years)",
            );
            None
        }
        s if s < MIN_LEASE_SECS => {
            cx.unmapped(e, "kvmnet's shortest lease is 60 seconds");
            None
        }
        s => Some(s),
    }
}

/// `<host mac ip name>`: a reservation by MAC.
fn host(cx: &mut Report, e: Node) -> Option<Host> {
    cx.only_attrs(e, &["mac", "ip", "name"], |a| match a {
        "id" => "a DHCPv6 client id: kvmnet serves no DHCPv6",
        _ => "kvmnet has no such reservation setting",
    });
    for x in elements(e).filter(|x| !is(*x, "lease")) {
        cx.unmapped(x, "kvmnet has no such reservation setting");
    }
    let Some(mac) = e.attribute("mac") else {
        cx.unmapped(
            e,
            "a reservation by host name alone: dnsmasq matches the name a client sends, kvmnet reserves by MAC only",
        );
        return None;
    };
    let Some(mac) = normal_mac(mac) else {
        cx.refuse(e, format!("mac='{mac}' is not a MAC address"));
        return None;
    };
    let ip = address(cx, e, "ip")?;
    Some(Host {
        mac,
        ip,
        name: e.attribute("name").map(str::to_string),
        place: cx.place(e),
    })
}

/// A MAC as kvmnet writes it (lower case, colons), or `None`.
pub fn normal_mac(t: &str) -> Option<String> {
    let parts: Vec<&str> = t.trim().split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    ok.then(|| t.trim().to_ascii_lowercase())
}

/// libvirt's `average` (and `peak`, `floor`) count kilobytes per second as tc's `kbps`
/// does (1000 bytes: libvirt hands the number to tc with that unit); kvmnet's `kbps` is the
/// same unit. Refused above kvmnet's largest rate (16 tbit).
pub fn rate(cx: &mut Report, c: Node, attr: &str) -> Option<String> {
    number(cx, c, attr, 1, 2_000_000_000).map(|v| format!("{v}kbps"))
}

/// `<bandwidth>` of a network: what the host sends into it, capped.
fn bandwidth(cx: &mut Report, c: Node, d: &mut Draft) {
    cx.only_attrs(c, &[], network_attr);
    for e in elements(c) {
        match e.tag_name().name() {
            "inbound" => {
                cx.only_attrs(e, &["average"], |a| match a {
                    "peak" | "burst" => {
                        "kvmnet's network bandwidth is one cap, with no peak or burst above it"
                    }
                    _ => "kvmnet has no such network bandwidth setting",
                });
                if let Some(r) = rate(cx, e, "average") {
                    d.bandwidth = Some((r, cx.place(e)));
                }
            }
            "outbound" => cx.unmapped(
                e,
                "kvmnet caps only what the host sends into a network; what guests send is capped per port (qos.outbound)",
            ),
            _ => cx.unmapped(e, "kvmnet has no such bandwidth setting"),
        }
    }
}

/// The draft checked as a whole: a network kvmnet takes, or refusals.
fn finish(cx: &mut Report, root: Node, d: Draft) -> Option<Network> {
    let Some(raw) = d.name.clone().filter(|n| !n.is_empty()) else {
        cx.refuse(root, "the network has no <name>");
        return None;
    };
    let Some(name) = sanitize(&raw) else {
        cx.refuse(
            root,
            format!("the name '{raw}' has nothing kvmnet can name a network by ([A-Za-z0-9_.-], at most 64)"),
        );
        return None;
    };
    if name != raw {
        cx.note(
            root,
            &format!("network '{raw}' is named '{name}' in kvmnet"),
        );
    }
    let mode = d.mode.unwrap_or(Mode::Isolated);
    if let Some(p) = &d.mac {
        cx.note_at(
            p,
            "kvmnet gives the bridge a MAC of its own; guests learn it by ARP",
        );
    }
    let ok = match mode {
        Mode::Direct(_) => check_direct(cx, root, &d),
        _ => check_routed(cx, root, &d, mode),
    };
    if !ok {
        return None;
    }
    Some(Network {
        libvirt_name: raw,
        name,
        mode,
        bridge: d.bridge.map(|(b, _)| b),
        ipv4: d.ipv4.map(|(a, _)| a),
        mtu: d.mtu,
        nat_egress: d.uplink.clone().filter(|_| mode == Mode::Nat),
        uplink: d.uplink.filter(|_| matches!(mode, Mode::Direct(_))),
        dhcp: d.dhcp.map(|(mut x, _)| {
            x.domain = d.domain.map(|(n, _)| n);
            x
        }),
        bandwidth: d.bandwidth.map(|(b, _)| b),
        isolate_ports: d.isolate_ports.is_some(),
        hosts: d.hosts,
        place: cx.place(root),
    })
}

/// A macvtap network (`<forward mode='bridge|private|vepa|passthrough'>`).
fn check_direct(cx: &mut Report, root: Node, d: &Draft) -> bool {
    let before = cx.error_count();
    let fwd = d.forward.clone().unwrap_or_else(|| cx.place(root));
    if d.forward_bridge && d.bridge.is_some() {
        cx.refuse_at(
            &fwd,
            "no faithful mapping in kvmnet (guests join a host bridge made outside libvirt, whose uplink the XML does not name; kvmnet's bridge mode makes the bridge itself from its uplink: write mode: bridge, bridge: NAME, uplink: the NIC in it)".into(),
        );
        return false;
    }
    if d.uplink.is_none() {
        cx.refuse_at(
            &fwd,
            "no faithful mapping in kvmnet (macvtap with no device named: kvmnet's direct networks need their uplink, as dev= or one <interface dev>)".into(),
        );
    }
    for (what, place) in [
        ("an address", d.ipv4.as_ref().map(|x| &x.1)),
        ("DHCP", d.dhcp.as_ref().map(|x| &x.1)),
        ("a bandwidth cap", d.bandwidth.as_ref().map(|x| &x.1)),
        ("a domain", d.domain.as_ref().map(|x| &x.1)),
    ] {
        if let Some(p) = place {
            cx.refuse_at(
                p,
                format!("no faithful mapping in kvmnet (a direct (macvtap) network has no {what} on the host)"),
            );
        }
    }
    if let Some(p) = &d.isolate_ports {
        cx.refuse_at(
            p,
            "no faithful mapping in kvmnet (ports of a direct network are kept apart by direct_mode: private)".into(),
        );
    }
    cx.error_count() == before
}

/// A nat, routed or isolated network.
fn check_routed(cx: &mut Report, root: Node, d: &Draft, mode: Mode) -> bool {
    let before = cx.error_count();
    if d.ipv4.is_none() {
        cx.unmapped(
            root,
            &format!(
                "a network without an IPv4 <ip>: kvmnet's {} networks need their gateway address",
                mode.word()
            ),
        );
    }
    if let Some((_, p)) = &d.domain
        && d.dhcp.is_none()
    {
        cx.refuse_at(
            p,
            "no faithful mapping in kvmnet (without DHCP the domain only names hosts in libvirt's DNS, and kvmnet serves no DNS)".into(),
        );
    }
    if mode == Mode::Isolated && d.dhcp.is_some() {
        cx.note(
            root,
            "libvirt's isolated DHCP hands out no router; kvmnet's names the gateway (which forwards nothing out of an isolated network)",
        );
    }
    if !d.dns_disabled
        && let Some((_, p)) = &d.dhcp
    {
        cx.note_at(
            p,
            "libvirt's dnsmasq also answered DNS on the gateway and named it as the DNS server; kvmnet serves no DNS: set dhcp.dns to a resolver the guests reach",
        );
    }
    cx.error_count() == before
}

#[cfg(test)]
#[path = "libvirt_network_tests.rs"]
mod tests;
