//! The checks of `kvmnet doctor`, pure: each is a function from the spec in force and a
//! snapshot of the host facts it needs ([`Facts`]) to results, so each can be tested with
//! facts written by hand. The I/O that gathers the facts is in the parent module.

use std::collections::BTreeMap;

use crate::desired::{BRIDGE_NF, IP_FORWARD};
use crate::snapshot::LinkSnap;
use crate::spec::{Mode, PortKind, Spec};

#[path = "checks_host.rs"]
mod host;
#[path = "checks_ovn.rs"]
mod ovn;
#[path = "checks_v6.rs"]
pub mod v6;
pub use host::{
    DEVICES, Device, bridged_uplinks, devices, duplicate_mac, gateway_arp, gateways, lro,
    owner_keys, tap_owner,
};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One result: which check (`id`), about what (`subject`: a sysctl, a device, a table), what
/// it saw (`message`), and the command or spec change that fixes it (`fix`, empty when ok).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub id: &'static str,
    pub status: Status,
    pub subject: String,
    pub message: String,
    pub fix: String,
}

impl Check {
    /// A result of any status (the OVN checks' constructor).
    fn with(
        id: &'static str,
        status: Status,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            id,
            status,
            subject: subject.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn ok(id: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            id,
            status: Status::Ok,
            subject: subject.into(),
            message: message.into(),
            fix: String::new(),
        }
    }

    fn bad(
        id: &'static str,
        status: Status,
        subject: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            id,
            status,
            subject: subject.into(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// What the checks look at on the live host, read in the scope's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `host` or the namespace kvmnet runs in: fixes run there.
    pub scope: String,
    /// The sysctls the checks read; `None` when the key does not exist here.
    pub sysctls: BTreeMap<String, Option<String>>,
    /// Base chains of other tables on the forward hook with policy drop, as
    /// `(family, table, chain)`; legacy iptables' FORWARD DROP as `("ip", "filter",
    /// "FORWARD")` too.
    pub forward_drops: Vec<(String, String, String)>,
    /// Why the forward chains could not be read, if they could not.
    pub forward_drops_error: Option<String>,
    /// Other firewall managers with rules here (firewalld, ufw), with where they were seen.
    pub foreign_firewalls: Vec<(String, String)>,
    /// Why they could not be read, if they could not.
    pub foreign_firewalls_error: Option<String>,
    /// The scope's links by name.
    pub links: BTreeMap<String, LinkSnap>,
    /// Why the links could not be read, if they could not.
    pub links_error: Option<String>,
    /// A daemon listens for the scope.
    pub daemon_running: bool,
    /// The user names the spec's taps are owned by, with their uids (`None`: no such user).
    pub users: BTreeMap<String, Option<u32>>,
    /// The uids the spec's taps are owned by, and whether a user has each.
    pub uids: BTreeMap<u32, bool>,
    /// The devices of [`DEVICES`], by path.
    pub devices: BTreeMap<String, Device>,
    /// LRO of the bridge networks' uplinks, by name (`None`: it could not be read).
    pub lro: BTreeMap<String, Option<bool>>,
    /// MACs the bridges learned, as `(bridge, port, mac)`, over a few reads.
    pub learned: Vec<(String, String, crate::types::Mac)>,
    /// What a DHCPDISCOVER on each DHCP network's bridge got back (the offered address, or
    /// nothing), by network; probed only while a daemon runs.
    pub dhcp_answers: BTreeMap<String, Result<Option<std::net::Ipv4Addr>, String>>,
    /// Who else answered an ARP probe for each bridge's gateway address, by bridge.
    pub gateway_answers: BTreeMap<String, Result<Vec<crate::types::Mac>, String>>,
    /// What the router solicitation and DNS probes saw; probed only while a daemon runs.
    pub probes6: v6::Probes6,
    /// What the OVN checks look at, when the spec has OVN networks.
    pub ovn: Option<crate::ovn::report::OvnFacts>,
}

impl Facts {
    fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).and_then(|v| v.as_deref())
    }

    /// `cmd` as run in the scope (`ip netns exec NS cmd` for a namespace).
    fn here(&self, cmd: &str) -> String {
        if self.scope == "host" || self.scope.is_empty() {
            cmd.to_string()
        } else {
            format!("ip netns exec {} {cmd}", self.scope)
        }
    }
}

/// The sysctls [`all`] needs for `spec`.
pub fn sysctl_keys(spec: &Spec) -> Vec<String> {
    let mut keys = vec![
        IP_FORWARD.to_string(),
        BRIDGE_NF.to_string(),
        rp_filter_key("all"),
    ];
    keys.extend(routed_bridges(spec).map(rp_filter_key));
    keys.extend([CT_COUNT.to_string(), CT_MAX.to_string()]);
    keys.extend(v6::sysctl_keys(spec));
    keys
}

/// Every check, in the order the output lists them.
pub fn all(spec: &Spec, facts: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    out.extend(forwarding(spec, facts));
    out.extend(v6::forwarding6(spec, facts));
    out.extend(v6::accept_ra(spec, facts));
    out.extend(br_netfilter(spec, facts));
    out.extend(foreign_forward_drop(spec, facts));
    out.extend(foreign_firewall(spec, facts));
    out.extend(rp_filter(spec, facts));
    out.extend(carrier(spec, facts));
    out.extend(mtu(spec, facts));
    out.extend(dhcp_mtu(spec, facts));
    out.extend(conntrack(facts));
    out.extend(daemon(spec, facts));
    out.extend(dhcp_probe(spec, facts));
    out.extend(v6::ra_probe(spec, facts));
    out.extend(v6::dhcp6_probe(spec, facts));
    out.extend(v6::dns_probe(spec, facts));
    out.extend(tap_owner(spec, facts));
    out.extend(devices(facts));
    out.extend(lro(spec, facts));
    out.extend(duplicate_mac(spec, facts));
    out.extend(gateway_arp(spec, facts));
    out.extend(ovn::ovn(facts));
    out
}

/// Networks of `spec` whose mode satisfies `pred`, as `name (mode)`, comma-separated.
fn networks_where(spec: &Spec, pred: impl Fn(&crate::spec::Network) -> bool) -> String {
    spec.networks
        .values()
        .filter(|n| pred(n))
        .map(|n| format!("{} ({})", n.name, n.mode.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `forwarding`: nat and routed networks need the host to route IPv4 (net.ipv4.ip_forward).
pub fn forwarding(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "forwarding";
    let needing = networks_where(spec, |n| n.mode.forwarding());
    let value = facts.sysctl(IP_FORWARD);
    if needing.is_empty() {
        let seen = value.unwrap_or("missing");
        let msg = format!("{IP_FORWARD} is {seen}; no network routes through this host");
        return vec![Check::ok(ID, IP_FORWARD, msg)];
    }
    match value {
        Some("1") => vec![Check::ok(
            ID,
            IP_FORWARD,
            format!("{IP_FORWARD} is 1, as {needing} needs"),
        )],
        v => vec![Check::bad(
            ID,
            Status::Fail,
            IP_FORWARD,
            format!(
                "{IP_FORWARD} is {}, but {needing} routes through this host: guests reach nothing beyond it",
                v.unwrap_or("missing")
            ),
            format!(
                "{} (or apply the spec again, which sets it)",
                facts.here(&format!("sysctl -w {IP_FORWARD}=1"))
            ),
        )],
    }
}

/// Up to three names, and how many more.
fn some_of(names: &[&str]) -> String {
    let mut s = names.iter().take(3).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 3 {
        s.push_str(&format!(" and {} more", names.len() - 3));
    }
    s
}

/// `br_netfilter`: a port's firewall sees bridged traffic only through br_netfilter, with
/// net.bridge.bridge-nf-call-iptables on; without the module the key does not exist.
pub fn br_netfilter(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "br_netfilter";
    let ports: Vec<&str> = spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .filter(|p| p.firewall.is_some())
        .map(|p| p.name.as_str())
        .collect();
    let value = facts.sysctl(BRIDGE_NF);
    if ports.is_empty() {
        let seen = value.unwrap_or("missing (br_netfilter not loaded)");
        let msg = format!("{BRIDGE_NF} is {seen}; no port has a firewall");
        return vec![Check::ok(ID, BRIDGE_NF, msg)];
    }
    let which = format!("the firewall of port {}", some_of(&ports));
    let (seen, fix) = match value {
        Some("1") => {
            let msg = format!("{BRIDGE_NF} is 1, as {which} needs");
            return vec![Check::ok(ID, BRIDGE_NF, msg)];
        }
        None => (
            "missing (the br_netfilter module is not loaded)".to_string(),
            format!(
                "modprobe br_netfilter (on the host), then {} or apply the spec again",
                facts.here(&format!("sysctl -w {BRIDGE_NF}=1"))
            ),
        ),
        Some(v) => (
            v.to_string(),
            format!(
                "{} (or apply the spec again, which sets it)",
                facts.here(&format!("sysctl -w {BRIDGE_NF}=1"))
            ),
        ),
    };
    vec![Check::bad(
        ID,
        Status::Fail,
        BRIDGE_NF,
        format!("{BRIDGE_NF} is {seen}: {which} does not see bridged traffic"),
        fix,
    )]
}

/// The fix for a foreign drop-policy forward chain: accept the spec's bridges in it.
fn forward_drop_fix(
    facts: &Facts,
    (family, table, chain): &(String, String, String),
    bridges: &[&str],
) -> String {
    if table == "filter" && chain == "FORWARD" && family == "ip" {
        // iptables' (Docker's) FORWARD: Docker keeps DOCKER-USER for rules like these.
        let rules: Vec<String> = bridges
            .iter()
            .flat_map(|b| [format!("-i {b}"), format!("-o {b}")])
            .map(|r| facts.here(&format!("iptables -I FORWARD {r} -j ACCEPT")))
            .collect();
        return format!(
            "allow the bridges: {} (under Docker, in DOCKER-USER instead of FORWARD)",
            rules.join("; ")
        );
    }
    let set = format!("{{ {} }}", bridges.join(", "));
    format!(
        "allow the bridges: {}; {}, or remove the table if nothing needs it: {}",
        facts.here(&format!(
            "nft insert rule {family} {table} {chain} iifname {set} accept"
        )),
        facts.here(&format!(
            "nft insert rule {family} {table} {chain} oifname {set} accept"
        )),
        facts.here(&format!("nft delete table {family} {table}"))
    )
}

/// The bridges of the spec's networks (a direct network has none).
pub fn spec_bridges(spec: &Spec) -> Vec<&str> {
    spec.networks
        .values()
        .map(|n| n.bridge.as_str())
        .filter(|b| !b.is_empty())
        .collect()
}

/// The warning of a check whose nftables facts could not be read.
fn unreadable_tables(id: &'static str, what: &str, e: &str) -> Vec<Check> {
    let msg = format!("could not read {what}: {e}");
    vec![Check::bad(
        id,
        Status::Warn,
        "nftables",
        msg,
        "nft list ruleset shows them",
    )]
}

/// `foreign_forward_drop`: another table's forward chain with policy drop (as Docker sets
/// iptables' FORWARD) drops the guests' routed and bridged traffic unless it accepts it.
/// kvmnet never touches other tables, so this is a warning with the rules that would help.
pub fn foreign_forward_drop(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "foreign_forward_drop";
    if let Some(e) = &facts.forward_drops_error {
        return unreadable_tables(ID, "the forward chains of other tables", e);
    }
    let bridges = spec_bridges(spec);
    if facts.forward_drops.is_empty() || spec.networks.is_empty() {
        let msg = match facts.forward_drops.len() {
            0 => "no other table drops forwarded traffic by policy".to_string(),
            n => format!("{n} other forward chains drop by policy, but no network is in the spec"),
        };
        return vec![Check::ok(ID, "nftables", msg)];
    }
    facts
        .forward_drops
        .iter()
        .map(|d| {
            let (family, table, chain) = d;
            Check::bad(
                ID,
                Status::Warn,
                format!("{family} {table} {chain}"),
                format!(
                    "chain {chain} of table {family} {table} (not kvmnet's) hooks forward with policy drop: \
                     guests' forwarded traffic it does not accept is dropped"
                ),
                forward_drop_fix(facts, d, &bridges),
            )
        })
        .collect()
}

/// `foreign_firewall`: firewalld or ufw manage rules here. Both reject forwarded traffic they
/// were not told about (firewalld: interfaces in no zone; ufw: its default routed policy),
/// whatever the base chains' policies say, so guests behind the host's routing lose it.
pub fn foreign_firewall(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "foreign_firewall";
    if let Some(e) = &facts.foreign_firewalls_error {
        return unreadable_tables(ID, "the other tables' chains", e);
    }
    let found = &facts.foreign_firewalls;
    let bridges: Vec<&str> = spec
        .networks
        .values()
        .filter(|n| n.mode.routed_by_host())
        .map(|n| n.bridge.as_str())
        .collect();
    if found.is_empty() || bridges.is_empty() {
        let msg = match found.len() {
            0 => "neither firewalld nor ufw has rules here".to_string(),
            _ => {
                "firewalld or ufw has rules here, but no network is routed by the host".to_string()
            }
        };
        return vec![Check::ok(ID, "firewall managers", msg)];
    }
    found
        .iter()
        .map(|(manager, seen)| {
            let fix: Vec<String> = bridges
                .iter()
                .map(|b| match manager.as_str() {
                    "firewalld" => format!(
                        "firewall-cmd --permanent --zone=trusted --add-interface={b}"
                    ),
                    _ => format!("ufw route allow in on {b}; ufw route allow out on {b}"),
                })
                .collect();
            let reload = if manager == "firewalld" { "; firewall-cmd --reload" } else { "" };
            let msg = format!(
                "{manager} manages rules here ({seen}): it rejects forwarded traffic it was not told about, so guests of {} may reach nothing beyond the host",
                bridges.join(", ")
            );
            Check::bad(ID, Status::Warn, manager.clone(), msg, format!("{}{reload}", fix.join("; ")))
        })
        .collect()
}

fn rp_filter_key(dev: &str) -> String {
    format!("net.ipv4.conf.{dev}.rp_filter")
}

/// The bridges of the spec's routed networks.
fn routed_bridges(spec: &Spec) -> impl Iterator<Item = &str> {
    spec.networks
        .values()
        .filter(|n| n.mode == Mode::Routed && !n.bridge.is_empty())
        .map(|n| n.bridge.as_str())
}

/// `rp_filter`: strict reverse-path filtering (1; the kernel uses the higher of `all` and
/// the device's) drops a routed network's packets whenever the route back to their source
/// is not through the bridge they came in on, as with asymmetric routes.
pub fn rp_filter(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "rp_filter";
    let bridges: Vec<&str> = routed_bridges(spec).collect();
    if bridges.is_empty() {
        let msg = "no routed network: reverse-path filtering is not checked";
        return vec![Check::ok(ID, rp_filter_key("all"), msg)];
    }
    let strict: Vec<String> = std::iter::once("all")
        .chain(bridges.iter().copied())
        .map(rp_filter_key)
        .filter(|k| facts.sysctl(k) == Some("1"))
        .collect();
    if strict.is_empty() {
        let msg = format!(
            "reverse-path filtering is not strict on {} (nor all)",
            bridges.join(", ")
        );
        return vec![Check::ok(ID, rp_filter_key("all"), msg)];
    }
    strict
        .into_iter()
        .map(|k| {
            let msg = format!(
                "{k} is 1 (strict): packets of routed network bridges {} are dropped when \
                 the route back to their source is not through the bridge (asymmetric routing)",
                bridges.join(", ")
            );
            let fix = format!(
                "{} (loose), or set it under host.sysctl in the spec",
                facts.here(&format!("sysctl -w {k}=2"))
            );
            Check::bad(ID, Status::Warn, k, msg, fix)
        })
        .collect()
}

/// The host interfaces the spec's networks use as uplinks, with the network of each.
fn uplinks(spec: &Spec) -> BTreeMap<&str, &str> {
    let mut out = BTreeMap::new();
    for n in spec.networks.values() {
        let dev = match n.mode {
            Mode::Bridge | Mode::Direct => n.uplink.as_deref(),
            Mode::Vlan => n.vlan.as_ref().map(|v| v.uplink.as_str()),
            _ => None,
        };
        if let Some(d) = dev {
            out.entry(d).or_insert(n.name.as_str());
        }
    }
    out
}

/// The uplink `dev` (of network `net`): missing or without carrier fails, since every
/// guest on it is cut off.
fn uplink_carrier(facts: &Facts, dev: &str, net: &str) -> Check {
    const ID: &str = "carrier";
    let Some(l) = facts.links.get(dev) else {
        let msg = format!("uplink {dev} of network {net} does not exist");
        let fix = format!("create {dev}, or change network {net}'s uplink in the spec");
        return Check::bad(ID, Status::Fail, dev, msg, fix);
    };
    if l.oper_up {
        return Check::ok(
            ID,
            dev,
            format!("uplink {dev} of network {net} has carrier"),
        );
    }
    let (why, fix) = match l.up {
        false => ("is down", facts.here(&format!("ip link set {dev} up"))),
        true => (
            "has no carrier",
            format!(
                "check its cable and switch port ({})",
                facts.here(&format!("ip link show {dev}"))
            ),
        ),
    };
    let msg =
        format!("uplink {dev} of network {net} {why}: its guests reach nothing beyond the host");
    Check::bad(ID, Status::Fail, dev, msg, fix)
}

/// `carrier`: uplinks without carrier fail; ports without carrier warn (a tap has none
/// while its VM is not running, which may be intended), and ports with carrier are counted.
pub fn carrier(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "carrier";
    if let Some(e) = &facts.links_error {
        let msg = format!("could not read the links: {e}");
        return vec![Check::bad(
            ID,
            Status::Warn,
            "links",
            msg,
            "ip link shows them",
        )];
    }
    let mut out: Vec<Check> = uplinks(spec)
        .into_iter()
        .map(|(dev, net)| uplink_carrier(facts, dev, net))
        .collect();
    let mut up = 0;
    for p in spec.vms.values().flat_map(|v| &v.ports) {
        let (name, vm) = (p.name.as_str(), p.vm.as_str());
        let (msg, fix) = match facts.links.get(name) {
            Some(l) if l.oper_up => {
                up += 1;
                continue;
            }
            None => (
                format!("port {name} of VM {vm} does not exist"),
                "apply the spec again (kvmnet plan shows what it would make)".to_string(),
            ),
            Some(_) => match p.kind {
                PortKind::Tap | PortKind::Macvtap => (
                    format!(
                        "port {name} of VM {vm} has no carrier: a tap has none while its VM is not running"
                    ),
                    format!(
                        "start VM {vm} with port {name} (kvmnet export {vm} prints its arguments)"
                    ),
                ),
                PortKind::Veth => (
                    format!("port {name} of VM {vm} has no carrier: its far end is down"),
                    format!(
                        "bring the far end up in namespace {}",
                        p.netns.as_deref().unwrap_or("?")
                    ),
                ),
            },
        };
        out.push(Check::bad(ID, Status::Warn, name, msg, fix));
    }
    if up > 0 || out.is_empty() {
        out.push(Check::ok(ID, "ports", format!("{up} ports have carrier")));
    }
    out
}

/// Ports whose MTU is above their bridge's: the bridge drops the larger frames the VM may
/// send.
fn port_mtus(spec: &Spec, facts: &Facts) -> (usize, Vec<Check>) {
    let mut out = Vec::new();
    let mut seen = 0;
    for p in spec.vms.values().flat_map(|v| &v.ports) {
        let Some(net) = spec.networks.get(&p.network) else {
            continue;
        };
        let (Some(port), Some(br)) = (facts.links.get(&p.name), facts.links.get(&net.bridge))
        else {
            continue;
        };
        seen += 1;
        if port.mtu > br.mtu {
            let msg = format!(
                "port {} has MTU {} above its bridge {}'s {}: the larger frames its VM sends are dropped",
                p.name, port.mtu, br.name, br.mtu
            );
            let fix = format!(
                "set networks.{}.mtu in the spec and apply it again, or {}",
                net.name,
                facts.here(&format!("ip link set {} mtu {}", p.name, br.mtu))
            );
            out.push(Check::bad("mtu", Status::Warn, &p.name, msg, fix));
        }
    }
    (seen, out)
}

/// VXLAN overlays whose underlay cannot carry a full overlay frame plus the encapsulation.
fn overlay_mtus(spec: &Spec, facts: &Facts) -> (usize, Vec<Check>) {
    let mut out = Vec::new();
    let mut seen = 0;
    for (n, vx) in spec
        .networks
        .values()
        .filter_map(|n| Some((n, n.vxlan.as_ref()?)))
    {
        let overlay = facts.links.get(&vx.device).map(|l| l.mtu).or(n.mtu);
        let (Some(overlay), Some(under)) = (overlay, facts.links.get(&vx.underlay)) else {
            continue;
        };
        seen += 1;
        let need = overlay + crate::spec::VXLAN_OVERHEAD;
        if under.mtu < need {
            let msg = format!(
                "underlay {} of overlay {} has MTU {}, below the overlay's {overlay} + {} = {need}: full-size frames are lost",
                vx.underlay,
                n.name,
                under.mtu,
                crate::spec::VXLAN_OVERHEAD
            );
            let fix = format!(
                "{}, or a smaller networks.{}.mtu in the spec (at most {})",
                facts.here(&format!("ip link set {} mtu {need}", vx.underlay)),
                n.name,
                under.mtu.saturating_sub(crate::spec::VXLAN_OVERHEAD)
            );
            out.push(Check::bad("mtu", Status::Fail, &vx.underlay, msg, fix));
        }
    }
    (seen, out)
}

/// `mtu`: a port's MTU above its bridge's (warn), a VXLAN underlay too small for the
/// overlay's MTU plus 50 (fail).
pub fn mtu(spec: &Spec, facts: &Facts) -> Vec<Check> {
    let (ports, mut out) = port_mtus(spec, facts);
    let (overlays, more) = overlay_mtus(spec, facts);
    out.extend(more);
    if out.is_empty() {
        let msg =
            format!("MTUs fit: {ports} ports on bridges, {overlays} overlays on their underlays");
        out.push(Check::ok("mtu", "mtu", msg));
    }
    out
}

const CT_COUNT: &str = "net.netfilter.nf_conntrack_count";
const CT_MAX: &str = "net.netfilter.nf_conntrack_max";

/// `conntrack`: a connection tracking table more than 90% full; when it is full, new
/// connections (guests' NAT and firewalled ones among them) are dropped.
/// `dhcp_mtu`: the MTU DHCP tells a network's guests (its `mtu`; without one, the bridge's
/// own when below 1500, else the 1500 guests assume) against what the bridge carries now. A
/// bridge takes its smallest port's MTU, so one port or lower device below the network's
/// `mtu` makes every guest send frames the bridge drops.
pub fn dhcp_mtu(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "dhcp_mtu";
    let mut out = Vec::new();
    let mut seen = 0;
    for n in spec
        .networks
        .values()
        .filter(|n| n.dhcp.is_some() && !n.bridge.is_empty())
    {
        let Some(live) = facts.links.get(&n.bridge).map(|l| l.mtu) else {
            continue;
        };
        seen += 1;
        // Without an `mtu`, DHCP tells the bridge's own MTU when it is below 1500 and guests
        // otherwise assume 1500, which the bridge then carries: nothing can be wrong.
        let Some(told) = n.mtu.filter(|&m| live < m) else {
            continue;
        };
        let smallest = facts
            .links
            .values()
            .filter(|l| l.master.as_deref() == Some(n.bridge.as_str()) && l.mtu == live)
            .map(|l| l.name.as_str())
            .next()
            .unwrap_or("a port");
        let msg = format!(
            "DHCP tells guests of {} MTU {told}, but bridge {} carries {live} ({smallest} holds it down): their full-size frames are dropped",
            n.name, n.bridge
        );
        let fix = format!(
            "raise {smallest}'s MTU to {told}, or set mtu: {live} on network {} (DHCP then tells guests)",
            n.name
        );
        out.push(Check::bad(ID, Status::Fail, n.name.clone(), msg, fix));
    }
    if out.is_empty() {
        let msg = format!("the MTU DHCP tells guests fits the bridge on all {seen} DHCP networks");
        out.push(Check::ok(ID, "dhcp", msg));
    }
    out
}

pub fn conntrack(facts: &Facts) -> Vec<Check> {
    const ID: &str = "conntrack";
    let num = |k| facts.sysctl(k).and_then(|v| v.parse::<u64>().ok());
    let (Some(count), Some(max)) = (num(CT_COUNT), num(CT_MAX)) else {
        let msg = "connection tracking is not loaded here: nothing tracks connections yet";
        return vec![Check::ok(ID, CT_COUNT, msg)];
    };
    let seen = format!("{count} of {max} connections tracked");
    // count > 0.9 max, in integers.
    if count * 10 <= max * 9 {
        return vec![Check::ok(ID, CT_COUNT, seen)];
    }
    let msg = format!(
        "{seen} (over 90%): when the table is full, new connections are dropped \
         (the kernel logs \"nf_conntrack: table full\")"
    );
    let fix = format!(
        "sysctl -w {CT_MAX}={} on the host (the table is shared by every namespace), or find \
         what opens so many connections: {}",
        max.saturating_mul(2),
        facts.here("conntrack -L")
    );
    vec![Check::bad(ID, Status::Warn, CT_COUNT, msg, fix)]
}

/// Whether the daemon serves `n`: DHCP, DNS, or router advertisements (a network the host
/// routes with `ipv6`).
fn daemon_serves(n: &crate::spec::Network) -> bool {
    n.dhcp.is_some() || n.dns.is_some() || (n.mode.routed_by_host() && n.ipv6.is_some())
}

/// `daemon`: DHCP, DNS and router advertisements are served by the daemon only, so a spec
/// with them and no daemon for the scope leaves guests without addresses or names.
pub fn daemon(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "daemon";
    let running = match facts.daemon_running {
        true => "a daemon runs for this scope",
        false => "no daemon runs for this scope",
    };
    let serving = networks_where(spec, daemon_serves);
    if serving.is_empty() {
        let msg = format!("{running}; no network serves DHCP, DNS or RAs, so none is needed");
        return vec![Check::ok(ID, "daemon", msg)];
    }
    if facts.daemon_running {
        let msg = format!("{running}, serving DHCP, DNS or RAs on {serving}");
        return vec![Check::ok(ID, "daemon", msg)];
    }
    let fix = match facts.scope.as_str() {
        "host" | "" => {
            "systemctl enable --now kvmnet (contrib/kvmnet.service), or kvmnet daemon --spec FILE"
                .to_string()
        }
        ns => format!("kvmnet daemon --spec FILE --netns {ns} (FILE: the spec applied)"),
    };
    let msg = format!(
        "{running}, but {serving} has dhcp, dns or ipv6: only the daemon serves DHCP, DNS and RAs, so guests get no address or name"
    );
    vec![Check::bad(ID, Status::Fail, "daemon", msg, fix)]
}

/// `dhcp_probe`: a DHCPDISCOVER from a throwaway client on each DHCP network's bridge gets
/// an OFFER from the daemon (only an offer: no lease is made).
pub fn dhcp_probe(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "dhcp_probe";
    let serving: Vec<&str> = spec
        .networks
        .values()
        .filter(|n| n.dhcp.is_some())
        .map(|n| n.name.as_str())
        .collect();
    if serving.is_empty() || !facts.daemon_running {
        let why = if serving.is_empty() {
            "no network serves DHCP"
        } else {
            "no daemon runs (see daemon)"
        };
        return vec![Check::ok(ID, "dhcp", format!("not probed: {why}"))];
    }
    let mut out = Vec::new();
    for net in serving {
        let subject = net.to_string();
        match facts.dhcp_answers.get(net) {
            Some(Ok(Some(a))) => out.push(Check::ok(ID, subject, format!("a DHCPDISCOVER on {net} got an offer of {a}"))),
            Some(Ok(None)) => out.push(Check::bad(
                ID,
                Status::Fail,
                subject,
                format!("a DHCPDISCOVER on {net} got no offer within 0.7 s: guests that ask get no address"),
                format!("see the daemon's log for dhcp lines ({}), and kvmnet leases for a full pool", facts.here("journalctl -u kvmnet")),
            )),
            Some(Err(e)) => out.push(Check::bad(ID, Status::Warn, subject, format!("could not probe {net}: {e}"), "")),
            None => out.push(Check::bad(ID, Status::Warn, subject, format!("{net} was not probed: its bridge is missing or down (see carrier)"), "")),
        }
    }
    out
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
