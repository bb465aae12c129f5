//! The checks of `kvmnet doctor` that look at the host around the networks: the users that
//! own taps, the devices guests use, the uplinks' offloads and the bridges' learned MACs.
//! Pure, as the others in [`super`].

use std::collections::BTreeMap;

use super::{Check, Facts, Status};
use crate::spec::{Mode, Owner, PortKind, Spec};
use crate::types::Mac;

/// The character devices [`devices`] looks at, with what a guest lacks without each.
pub const DEVICES: [(&str, &str); 2] = [
    (
        "/dev/kvm",
        "guests run without KVM acceleration (emulated, many times slower)",
    ),
    (
        "/dev/vhost-net",
        "guests' virtio-net runs without vhost (in QEMU's own threads, slower)",
    ),
];

/// How a device of [`DEVICES`] stands on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Usable,
    Missing,
    /// It exists, but cannot be opened for reading and writing.
    NoAccess,
}

/// The owners of the spec's tap and macvtap ports, with the ports of each.
fn owners(spec: &Spec) -> BTreeMap<String, (Owner, Vec<&str>)> {
    let mut out: BTreeMap<String, (Owner, Vec<&str>)> = BTreeMap::new();
    for p in spec.vms.values().flat_map(|v| &v.ports) {
        let (PortKind::Tap | PortKind::Macvtap, Some(o)) = (p.kind, &p.owner) else {
            continue;
        };
        let key = match o {
            Owner::User(u) => u.clone(),
            Owner::Uid(n) => n.to_string(),
        };
        out.entry(key)
            .or_insert_with(|| (o.clone(), Vec::new()))
            .1
            .push(p.name.as_str());
    }
    out
}

/// The user names and uids the spec's taps are owned by, for [`Facts::users`] and
/// [`Facts::uids`].
pub fn owner_keys(spec: &Spec) -> (Vec<String>, Vec<u32>) {
    let (mut users, mut uids) = (Vec::new(), Vec::new());
    for (o, _) in owners(spec).into_values() {
        match o {
            Owner::User(u) => users.push(u),
            Owner::Uid(n) => uids.push(n),
        }
    }
    (users, uids)
}

/// `tap_owner`: a tap owned by a user name the host does not know (fail: apply refuses
/// one, so the user was deleted since, and nobody can open the tap but root), or by a uid
/// without a user (warn: that uid can open it, but no account has it).
pub fn tap_owner(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "tap_owner";
    let mut out = Vec::new();
    let mut fine = 0;
    for (key, (owner, ports)) in owners(spec) {
        let ports = super::some_of(&ports);
        match owner {
            Owner::User(u) if facts.users.get(&u).is_some_and(Option::is_none) => {
                let msg = format!(
                    "user {u}, owner of port {ports}, does not exist: only root can open the tap, so its VM cannot start"
                );
                let fix = format!(
                    "create user {u}, or change the ports' owner in the spec and apply it again"
                );
                out.push(Check::bad(ID, Status::Fail, key, msg, fix));
            }
            Owner::Uid(n) if facts.uids.get(&n) == Some(&false) => {
                let msg = format!(
                    "uid {n} has no user: port {ports} is owned by it, so only a process running as uid {n} (or root) opens it"
                );
                let fix = "create a user with that uid, or give the ports' owner as a user name in the spec";
                out.push(Check::bad(ID, Status::Warn, key, msg, fix));
            }
            _ => fine += 1,
        }
    }
    if out.is_empty() {
        let msg = format!("{fine} tap owners exist on this host");
        out.push(Check::ok(ID, "owners", msg));
    }
    out
}

/// `devices`: `/dev/kvm` and `/dev/vhost-net`, missing or not usable, each warns.
pub fn devices(facts: &Facts) -> Vec<Check> {
    const ID: &str = "devices";
    DEVICES
        .iter()
        .map(|&(path, lack)| match facts.devices.get(path) {
            Some(Device::Usable) => Check::ok(ID, path, format!("{path} can be opened")),
            Some(Device::NoAccess) => Check::bad(
                ID,
                Status::Warn,
                path,
                format!("{path} exists but cannot be opened for reading and writing: {lack}"),
                format!("give the user running the guests access to {path} (its group, usually kvm)"),
            ),
            _ => Check::bad(
                ID,
                Status::Warn,
                path,
                format!("{path} does not exist: {lack}"),
                match path {
                    "/dev/kvm" => "load kvm_intel or kvm_amd (modprobe; virtualization enabled in the firmware)",
                    _ => "modprobe vhost_net",
                },
            ),
        })
        .collect()
}

/// The uplinks of the spec's bridge-mode networks, each with its network.
pub fn bridged_uplinks(spec: &Spec) -> BTreeMap<&str, &str> {
    spec.networks
        .values()
        .filter(|n| n.mode == Mode::Bridge)
        .filter_map(|n| Some((n.uplink.as_deref()?, n.name.as_str())))
        .collect()
}

/// `lro`: LRO on an uplink enslaved to a bridge merges received segments into frames larger
/// than the MTU, which the bridge forwards to guests that drop them (and the kernel warns).
pub fn lro(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "lro";
    let mut out = Vec::new();
    let mut off = Vec::new();
    for (dev, net) in bridged_uplinks(spec) {
        match facts.lro.get(dev) {
            Some(Some(true)) => {
                let msg = format!(
                    "LRO is on on uplink {dev} of bridge network {net}: merged frames larger than the MTU are forwarded to guests, which drop them"
                );
                let fix = format!(
                    "{}, or host.uplinks.{dev}.ethtool.offloads.lro: false in the spec",
                    facts.here(&format!("ethtool -K {dev} lro off"))
                );
                out.push(Check::bad(ID, Status::Warn, dev, msg, fix));
            }
            _ => off.push(dev),
        }
    }
    if out.is_empty() {
        let msg = match off.is_empty() {
            true => "no bridge network has an uplink".to_string(),
            false => format!("LRO is off (or not offered) on {}", off.join(", ")),
        };
        out.push(Check::ok(ID, "uplinks", msg));
    }
    out
}

/// `duplicate_mac`: one MAC learned on two ports of a bridge, within the few reads of its
/// forwarding database doctor makes: two guests use the same MAC (or frames loop back), and
/// frames to it go to whichever port sent last.
pub fn duplicate_mac(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "duplicate_mac";
    let mut ports: BTreeMap<(&str, Mac), Vec<&str>> = BTreeMap::new();
    for (br, port, mac) in &facts.learned {
        let v = ports.entry((br.as_str(), *mac)).or_default();
        if !v.contains(&port.as_str()) {
            v.push(port.as_str());
        }
    }
    let mut out = Vec::new();
    for ((br, mac), ps) in ports.into_iter().filter(|(_, ps)| ps.len() > 1) {
        let msg = format!(
            "MAC {mac} is learned on ports {} of bridge {br}: two guests use it (or frames loop back), and frames to it reach only one",
            ps.join(" and ")
        );
        let fix = format!(
            "give one guest another MAC (the port's mac in the spec), or find the loop: {}",
            facts.here(&format!("bridge fdb show br {br}"))
        );
        out.push(Check::bad(
            ID,
            Status::Fail,
            format!("{br} {mac}"),
            msg,
            fix,
        ));
    }
    if out.is_empty() {
        let n = spec
            .networks
            .values()
            .filter(|n| !n.bridge.is_empty())
            .count();
        let msg = format!("no MAC is learned on two ports of the {n} bridges");
        out.push(Check::ok(ID, "bridges", msg));
    }
    out
}

/// The gateways of the spec: `(bridge, address, network)` for each network whose bridge
/// carries a host address.
pub fn gateways(spec: &Spec) -> Vec<(&str, std::net::Ipv4Addr, &str)> {
    spec.networks
        .values()
        .filter(|n| !n.bridge.is_empty())
        .filter_map(|n| n.ipv4.map(|c| (n.bridge.as_str(), c.addr, n.name.as_str())))
        .collect()
}

/// `gateway_arp`: another host on a network answers ARP for the gateway's address (a guest
/// configured with it, or an attacker on an unguarded port): guests' traffic to the gateway
/// goes wherever the last answer pointed.
pub fn gateway_arp(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "gateway_arp";
    let mut out = Vec::new();
    for (br, gw, net) in gateways(spec) {
        let subject = format!("{net} {gw}");
        match facts.gateway_answers.get(br) {
            Some(Err(e)) => {
                let msg = format!("could not probe {br} for {gw}: {e}");
                let fix = facts.here(&format!("arping -D -I {br} {gw}"));
                out.push(Check::bad(ID, Status::Warn, subject, msg, fix));
            }
            Some(Ok(macs)) if !macs.is_empty() => {
                let who: Vec<String> = macs.iter().map(ToString::to_string).collect();
                let msg = format!(
                    "{} on {br} answer ARP for the gateway {gw}: guests may send their traffic there instead of to the host",
                    who.join(" and ")
                );
                let fix = format!(
                    "find the port with that MAC ({}) and remove {gw} from that guest; keep antispoof on its port so it cannot claim the gateway",
                    facts.here(&format!("bridge fdb show br {br}"))
                );
                out.push(Check::bad(ID, Status::Fail, subject, msg, fix));
            }
            _ => {}
        }
    }
    if out.is_empty() {
        let n = gateways(spec).len();
        out.push(Check::ok(
            ID,
            "gateways",
            format!("no other host answers ARP for the {n} gateway addresses"),
        ));
    }
    out
}
