//! A libvirt `<domain>`'s `<interface>` elements as the ports of one kvmnet VM. Only the
//! interfaces are read: the rest of a domain is the guest's hardware, none of which kvmnet
//! builds.

use std::path::Path;

use roxmltree::Node;

use super::libvirt_network::{normal_mac, number, rate};
use super::model::{Mode, Network, Port, Qos, Shape, Vm, sanitize};
use super::nwfilter;
use super::xml::{Report, elements, is, named};

/// Why an attribute or child of `<interface>` has no mapping.
fn interface_part(name: &str) -> &'static str {
    match name {
        "vlan" => {
            "VLAN tags on a guest's interface: kvmnet puts a port on a VLAN through a vlan network, or tags with a trunk port's vlans"
        }
        "virtualport" => {
            "802.1Qbg/802.1Qbh port profiles and Open vSwitch: kvmnet drives no switch profile and no OVS"
        }
        "mtu" => "kvmnet gives a port its network's MTU",
        "portgroup" => "kvmnet has no port groups",
        "ip" | "route" | "guest" => {
            "addresses and routes libvirt sets on the host side of the interface: kvmnet's ports carry none"
        }
        "coalesce" | "tune" | "backend" | "teaming" | "port" => "kvmnet has no such port setting",
        _ => "kvmnet has no such port setting",
    }
}

/// Reads one domain file into a VM with one port per interface kvmnet can make.
pub fn read(
    cx: &mut Report,
    text: &str,
    networks: &[Network],
    nwfilter: Option<&Path>,
) -> Option<Vm> {
    let doc = cx.parse(text)?;
    let root = doc.root_element();
    if !is(root, "domain") {
        cx.refuse(
            root,
            "not a libvirt domain: the root element must be <domain>",
        );
        return None;
    }
    let before = cx.error_count();
    let raw = named(root, "name")
        .next()
        .and_then(|n| n.text())
        .unwrap_or("")
        .trim()
        .to_string();
    let Some(name) = sanitize(&raw) else {
        cx.refuse(
            root,
            format!("the domain's name '{raw}' has nothing kvmnet can name a VM by ([A-Za-z0-9_.-], at most 64)"),
        );
        return None;
    };
    if name != raw {
        cx.note(root, &format!("domain '{raw}' is VM '{name}' in kvmnet"));
    }
    let mut ports = Vec::new();
    for dev in named(root, "devices") {
        for iface in named(dev, "interface") {
            if let Some(p) = port(cx, iface, networks, nwfilter) {
                ports.push(p);
            }
        }
    }
    (cx.error_count() == before).then_some(Vm { name, ports })
}

/// The network an interface's `<source>` names, among the imported ones.
fn source<'n>(cx: &mut Report, iface: Node, networks: &'n [Network]) -> Option<&'n Network> {
    let kind = iface.attribute("type").unwrap_or("");
    let Some(src) = named(iface, "source").next() else {
        cx.refuse(iface, "the interface has no <source>");
        return None;
    };
    cx.only_attrs(src, &["network", "bridge"], interface_part);
    let found = match kind {
        "network" => src
            .attribute("network")
            .map(|n| (n, networks.iter().find(|x| x.libvirt_name == n))),
        "bridge" => src
            .attribute("bridge")
            .map(|b| (b, networks.iter().find(|x| x.bridge.as_deref() == Some(b)))),
        _ => None,
    };
    match found {
        Some((_, Some(n))) => Some(n),
        Some((what, None)) => {
            cx.refuse(
                src,
                format!("'{what}' is not among the imported networks: import its network XML too"),
            );
            None
        }
        None => {
            cx.refuse(src, format!("the source names no {kind}"));
            None
        }
    }
}

/// One `<interface>`.
fn port(
    cx: &mut Report,
    iface: Node,
    networks: &[Network],
    nwfilter: Option<&Path>,
) -> Option<Port> {
    let before = cx.error_count();
    cx.only_attrs(iface, &["type"], |a| match a {
        "trustGuestRxFilters" => "macvtap receive filters follow the host in kvmnet",
        _ => "kvmnet has no such port setting",
    });
    match iface.attribute("type") {
        Some("network" | "bridge") => {}
        Some(t) => {
            cx.unmapped(
                iface,
                &format!("a type='{t}' interface: kvmnet makes tap ports on its networks' bridges and macvtap ports on direct networks, for interfaces of type network or bridge"),
            );
            return None;
        }
        None => {
            cx.refuse(iface, "the interface has no type");
            return None;
        }
    }
    let net = source(cx, iface, networks)?;
    let direct = matches!(net.mode, Mode::Direct(_));
    let mut p = Port {
        network: net.name.clone(),
        place: cx.place(iface),
        ..Port::default()
    };
    let mut filtered = false;
    for c in elements(iface) {
        match c.tag_name().name() {
            "source" => {}
            // What the guest sees of its NIC, not the host's networking.
            "model" | "alias" | "address" | "boot" | "rom" | "acpi" => {}
            "mac" => {
                cx.only_attrs(c, &["address"], interface_part);
                match c.attribute("address").and_then(normal_mac) {
                    Some(m) => p.mac = Some(m),
                    None => cx.refuse(c, "address is not a MAC address"),
                }
            }
            "target" => target(cx, c, &mut p),
            "driver" => driver(cx, c, &mut p),
            "link" => {
                cx.only_attrs(c, &["state"], interface_part);
                if c.attribute("state") == Some("down") {
                    cx.unmapped(c, "kvmnet's ports are up; the guest's link cannot be held down");
                }
            }
            "filterref" => {
                filtered = true;
                filterref(cx, c, &mut p, direct, nwfilter);
            }
            "bandwidth" if direct => cx.unmapped(
                c,
                "kvmnet cannot shape a direct (macvtap) port: its traffic never crosses a device kvmnet can shape",
            ),
            "bandwidth" => p.qos = qos(cx, c),
            other => cx.unmapped(c, interface_part(other)),
        }
    }
    if !filtered && !direct {
        // libvirt leaves an interface without a filter unguarded; so does the import, and
        // says so, since kvmnet's default would guard it.
        p.antispoof = Some(false);
        cx.note(
            iface,
            "no <filterref>: libvirt does not filter this interface, so the port gets antispoof: false (remove it to have kvmnet guard the port)",
        );
    }
    (cx.error_count() == before).then_some(p)
}

/// `<target dev>`: the port's host-side name.
fn target(cx: &mut Report, c: Node, p: &mut Port) {
    cx.only_attrs(c, &["dev"], |a| match a {
        "managed" => "a tap made outside libvirt: kvmnet makes its ports itself",
        _ => "kvmnet has no such port setting",
    });
    let Some(dev) = c.attribute("dev") else {
        return;
    };
    if dev.len() <= 15 && !dev.starts_with('-') && sanitize(dev).as_deref() == Some(dev) {
        p.name = Some(dev.to_string());
    } else {
        cx.refuse(
            c,
            format!("'{dev}' is not an interface name kvmnet takes (at most 15 of [A-Za-z0-9_.-])"),
        );
    }
}

/// `<driver>`: vhost or not is QEMU's business; `queues` makes a multiqueue tap.
fn driver(cx: &mut Report, c: Node, p: &mut Port) {
    cx.only_attrs(
        c,
        &["name", "queues"],
        |_| "a virtio or vhost tuning of the guest's NIC that kvmnet's tap does not carry",
    );
    if c.attribute("queues").is_some() {
        p.queues = number(cx, c, "queues", 1, 256).map(|q| q as u32);
    }
    for e in elements(c) {
        cx.unmapped(
            e,
            "a virtio or vhost tuning of the guest's NIC that kvmnet's tap does not carry",
        );
    }
}

/// `<filterref>`: libvirt's clean-traffic (or a filter that is only clean-traffic) is
/// kvmnet's guard; its `IP` parameter is the port's address.
fn filterref(cx: &mut Report, c: Node, p: &mut Port, direct: bool, dir: Option<&Path>) {
    cx.only_attrs(c, &["filter"], interface_part);
    let name = c.attribute("filter").unwrap_or("");
    if direct {
        cx.unmapped(
            c,
            "kvmnet cannot guard a direct (macvtap) port: its frames never cross a bridge",
        );
        return;
    }
    match nwfilter::check(dir, name) {
        Ok(()) => p.antispoof = Some(true),
        Err(why) => {
            cx.unmapped(c, &why);
            return;
        }
    }
    for param in elements(c) {
        if !is(param, "parameter") {
            cx.unmapped(param, "kvmnet has no such filter setting");
            continue;
        }
        cx.only_attrs(param, &["name", "value"], interface_part);
        match param.attribute("name") {
            Some("IP") if p.ipv4.is_some() => cx.unmapped(
                param,
                "a second IP: kvmnet's guard lets a port use one IPv4 address",
            ),
            Some("IP") => match param.attribute("value").and_then(|v| v.parse().ok()) {
                Some(ip) => p.ipv4 = Some(ip),
                None => cx.refuse(param, "value is not an IPv4 address"),
            },
            _ => cx.unmapped(
                param,
                "kvmnet's guard takes no parameters but the port's IPv4 address (IP)",
            ),
        }
    }
}

/// `<bandwidth>` of an interface: `inbound` is to the guest, `outbound` from it, as in
/// kvmnet's qos. Rates keep libvirt's unit (kilobytes per second as tc counts them, 1000
/// bytes), bursts theirs (KiB).
fn qos(cx: &mut Report, c: Node) -> Option<Qos> {
    cx.only_attrs(c, &[], interface_part);
    let mut q = Qos::default();
    for e in elements(c) {
        match e.tag_name().name() {
            "inbound" => {
                cx.only_attrs(
                    e,
                    &["average", "peak", "burst", "floor"],
                    |_| "kvmnet has no such shaping setting",
                );
                if e.attribute("floor").is_some() {
                    q.floor = rate(cx, e, "floor");
                }
                if e.attribute("average").is_some() {
                    q.inbound = shape(cx, e);
                } else if e.attribute("peak").is_some() || e.attribute("burst").is_some() {
                    cx.refuse(e, "peak and burst need an average");
                }
            }
            "outbound" => {
                cx.only_attrs(e, &["average", "peak", "burst"], |a| match a {
                    "floor" => "a floor is guaranteed to the guest, on inbound only",
                    _ => "kvmnet has no such shaping setting",
                });
                if e.attribute("peak").is_some() {
                    cx.unmapped(
                        e,
                        "libvirt polices what a guest sends at average and burst and ignores peak there; kvmnet's outbound ceil would let the guest send above average",
                    );
                }
                q.outbound = shape(cx, e).map(|s| Shape { ceil: None, ..s });
                cx.note(
                    e,
                    "libvirt polices (drops) what the guest sends above the rate; kvmnet shapes it (queues, then drops)",
                );
            }
            _ => cx.unmapped(e, "kvmnet has no such shaping setting"),
        }
    }
    Some(q)
}

/// average, peak and burst of one direction.
fn shape(cx: &mut Report, e: Node) -> Option<Shape> {
    let rate_ = rate(cx, e, "average")?;
    let ceil = match e.attribute("peak") {
        Some(_) => Some(rate(cx, e, "peak")?),
        None => None,
    };
    let burst = match e.attribute("burst") {
        Some(_) => Some(format!("{}k", number(cx, e, "burst", 1, 4_194_303)?)),
        None => None,
    };
    Some(Shape {
        rate: rate_,
        ceil,
        burst,
    })
}

#[cfg(test)]
#[path = "libvirt_domain_tests.rs"]
mod tests;
