//! From the located YAML tree to a checked `Spec`.
//!
//! Two passes: the first reads every field (types, formats, per-field rules, rules between
//! fields of one network or port) and keeps going after a bad value; the second checks the
//! rules that span the whole spec (unique names and MACs, overlapping subnets, shared
//! uplinks, forwarding). A value that failed to parse is simply absent in the second pass,
//! so one mistake gives one error, not a cascade.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt};
use std::net::Ipv4Addr;

use super::SpecError;
use super::macs::HostIdentity;
use super::model::{Bond, BondMode, LACP_RATES, Uplink, XMIT_HASH_POLICIES};
use super::model::{
    Dhcp, DhcpRoute, DirectMode, Ethtool, Firewall, FirewallDirection, FirewallRule, Forward, Host,
    Ipv4Cidr, Ipv6Cidr, Loc, LocMap, Mac, Mode, Network, Owner, Port, PortKind, Proto, Qos,
    RuleAction, RuleProto, Shape, Spec, Trunk, Tuning, VLAN_ID_MAX, VXLAN_PORT, Vlan, Vm, Vxlan,
};
use super::naming;
use super::yaml::{Key, Kind, Node, index, join, show};

const TOP_FIELDS: &[&str] = &["version", "host", "networks", "vms"];
const HOST_FIELDS: &[&str] = &["sysctl", "tuning", "uplinks"];
const UPLINK_FIELDS: &[&str] = &[
    "mode",
    "members",
    "lacp_rate",
    "xmit_hash_policy",
    "miimon",
    "min_links",
    "primary",
    "mtu",
    "ethtool",
];
/// Settings that make an uplink entry a bond; an entry without them tunes an existing NIC.
const BOND_FIELDS: &[&str] = &[
    "mode",
    "members",
    "lacp_rate",
    "xmit_hash_policy",
    "miimon",
    "min_links",
    "primary",
];
const BOND_MODES: &str =
    "802.3ad, active-backup, balance-xor, balance-rr, broadcast, balance-tlb or balance-alb";
const NET_FIELDS: &[&str] = &[
    "mode",
    "bridge",
    "ipv4",
    "mtu",
    "uplink",
    "nat",
    "dhcp",
    "isolate_ports",
    "forwards",
    "vni",
    "underlay",
    "remotes",
    "group",
    "port",
    "bandwidth",
    "direct_mode",
    "vlan",
    "host_access",
    "ipv6_prefixes",
];
const VXLAN_FIELDS: &[&str] = &["vni", "underlay", "remotes", "group", "port"];
const VNI_MAX: i128 = 16_777_215;
const FORWARD_FIELDS: &[&str] = &["proto", "port", "to", "to_port"];
const NAT_FIELDS: &[&str] = &["egress"];
const DHCP_FIELDS: &[&str] = &["range", "pool", "lease_time", "dns", "domain", "routes"];
const ROUTE_FIELDS: &[&str] = &["to", "via"];
const VM_FIELDS: &[&str] = &["ports"];
const PORT_FIELDS: &[&str] = &[
    "network",
    "name",
    "kind",
    "mac",
    "ipv4",
    "owner",
    "queues",
    "netns",
    "antispoof",
    "dhcp_client",
    "firewall",
    "qos",
    "mirror",
    "ethtool",
    "vlans",
];
const ETHTOOL_FIELDS: &[&str] = &["offloads", "rings", "channels"];
const OFFLOAD_FIELDS: &[&str] = &["tso", "gso", "gro", "lro", "rx_checksum", "tx_checksum"];
const RING_FIELDS: &[&str] = &["rx", "tx"];
const CHANNEL_FIELDS: &[&str] = &["combined", "rx", "tx"];
const RING_MAX: i128 = 1 << 20;
const CHANNEL_MAX: i128 = 4096;

const MODES: &str = "nat, routed, isolated, bridge, vlan, vxlan or direct";
const DIRECT_MODES: &str = "bridge, vepa, private or passthrough";
const NAME_MAX: usize = 64;
const MTU_MIN: i128 = 68;
const MTU_MAX: i128 = 65535;
const QUEUES_MAX: i128 = 256;
const LEASE_MIN: u64 = 60;
const LEASE_DEFAULT: u64 = 3600;

#[derive(Default)]
pub(crate) struct Ctx {
    pub(crate) errors: Vec<SpecError>,
    /// Where each field path was written, in reading order; a later entry for the same path
    /// wins, as in the map it becomes. A list, not a map: thousands of paths are recorded
    /// and only a few ever looked up (to place an error).
    pub(crate) locs: Locs,
    /// More of them, shared with a spec cache: read after `locs` (see [`LocMap`]).
    pub(crate) parts: Vec<super::model::LocPart>,
}

impl Ctx {
    /// Where `path` was written, if it was.
    pub(crate) fn loc_at(&self, path: &str) -> Option<Loc> {
        for (part, line) in self.parts.iter().rev() {
            if let Some((_, l)) = part.iter().rev().find(|(p, _)| p == path) {
                return Some(Loc {
                    line: l.line + line,
                    col: l.col,
                });
            }
        }
        self.locs
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, l)| *l)
    }

    fn err(&mut self, path: &str, loc: Loc, message: impl Into<String>) {
        self.errors.push(SpecError {
            path: path.to_string(),
            loc,
            message: message.into(),
        });
    }
}

/// A mapping being read: unknown keys are reported when it is opened.
pub(crate) struct Obj<'a> {
    path: String,
    loc: Loc,
    entries: &'a [(Key, Node)],
}

/// One value together with its path.
struct Field<'a> {
    path: String,
    node: &'a Node,
}

impl Field<'_> {
    fn loc(&self) -> Loc {
        self.node.loc
    }
}

fn obj<'a>(
    cx: &mut Ctx,
    node: &'a Node,
    path: &str,
    allowed: &[&str],
    what: &str,
) -> Option<Obj<'a>> {
    match &node.kind {
        Kind::Map(entries) => {
            for (k, _) in entries {
                if !allowed.contains(&k.text.as_str()) {
                    cx.err(
                        &join(path, &k.text),
                        k.loc,
                        format!(
                            "unknown field '{}'; expected one of: {}",
                            show(&k.text),
                            allowed.join(", ")
                        ),
                    );
                }
            }
            Some(Obj {
                path: path.to_string(),
                loc: node.loc,
                entries,
            })
        }
        // An empty value where a mapping goes (`vms:` with nothing under it) is an empty
        // mapping, as most YAML tools read it.
        Kind::Scalar(s) if s.is_null() => Some(Obj {
            path: path.to_string(),
            loc: node.loc,
            entries: &[],
        }),
        Kind::Bad => None,
        _ => {
            cx.err(
                path,
                node.loc,
                format!("expected {what}, found {}", node.describe()),
            );
            None
        }
    }
}

impl<'a> Obj<'a> {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, cx: &mut Ctx, name: &str) -> Option<Field<'a>> {
        let (_, node) = self.entries.iter().find(|(k, _)| k.text == name)?;
        let path = join(&self.path, name);
        cx.locs.push((path.clone(), node.loc));
        Some(Field { path, node })
    }

    fn required(&self, cx: &mut Ctx, name: &str, hint: &str) -> Option<Field<'a>> {
        let f = self.get(cx, name);
        if f.is_none() {
            cx.err(
                &join(&self.path, name),
                self.loc,
                format!("missing required field '{name}'; {hint}"),
            );
        }
        f
    }

    /// Entries of a name -> value mapping (networks, vms, sysctl), with their paths.
    fn named(&self, cx: &mut Ctx) -> Vec<(&'a Key, Field<'a>)> {
        self.entries
            .iter()
            .map(|(k, node)| {
                let path = join(&self.path, &k.text);
                cx.locs.push((path.clone(), node.loc));
                (k, Field { path, node })
            })
            .collect()
    }
}

/// Any scalar, as written. `what` describes the expected value for messages.
fn text(cx: &mut Ctx, f: &Field, what: &str) -> Option<String> {
    match &f.node.kind {
        Kind::Scalar(s) if s.is_null() => {
            cx.err(&f.path, f.loc(), format!("missing value; expected {what}"));
            None
        }
        Kind::Scalar(s) => Some(s.text.clone()),
        Kind::Bad => None,
        _ => {
            cx.err(
                &f.path,
                f.loc(),
                format!("expected {what}, found {}", f.node.describe()),
            );
            None
        }
    }
}

/// A whole number within `lo..=hi`.
fn int_in(cx: &mut Ctx, f: &Field, what: &str, lo: i128, hi: i128) -> Option<i128> {
    let Kind::Scalar(s) = &f.node.kind else {
        if !matches!(f.node.kind, Kind::Bad) {
            cx.err(
                &f.path,
                f.loc(),
                format!("expected {what}, found {}", f.node.describe()),
            );
        }
        return None;
    };
    let Some(n) = s.as_int() else {
        cx.err(
            &f.path,
            f.loc(),
            format!("expected {what}, found {}", f.node.describe()),
        );
        return None;
    };
    if n < lo || n > hi {
        cx.err(
            &f.path,
            f.loc(),
            format!("{n} is out of range; expected {what}"),
        );
        return None;
    }
    Some(n)
}

fn boolean(cx: &mut Ctx, f: &Field) -> Option<bool> {
    if let Kind::Scalar(s) = &f.node.kind
        && let Some(b) = s.as_bool()
    {
        return Some(b);
    }
    if !matches!(f.node.kind, Kind::Bad) {
        cx.err(
            &f.path,
            f.loc(),
            format!("expected true or false, found {}", f.node.describe()),
        );
    }
    None
}

fn list<'a>(cx: &mut Ctx, f: &Field<'a>, what: &str) -> Option<Vec<Field<'a>>> {
    match &f.node.kind {
        Kind::Seq(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let path = index(&f.path, i);
                    cx.locs.push((path.clone(), node.loc));
                    Field { path, node }
                })
                .collect(),
        ),
        Kind::Scalar(s) if s.is_null() => Some(Vec::new()),
        Kind::Bad => None,
        _ => {
            cx.err(
                &f.path,
                f.loc(),
                format!("expected {what}, found {}", f.node.describe()),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Names and formats

fn name_chars_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A Linux interface name kvmnet creates or refers to.
pub(crate) fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an interface name must not be empty".into());
    }
    if !name_chars_ok(s) {
        return Err(format!(
            "'{}' is not a valid interface name: use only letters, digits, '_', '.' and '-'",
            show(s)
        ));
    }
    if s.len() > naming::IFNAME_MAX {
        return Err(format!(
            "interface name '{s}' is {} characters long; Linux allows at most {}",
            s.len(),
            naming::IFNAME_MAX
        ));
    }
    if s.starts_with('-') {
        return Err(format!(
            "interface name '{s}' must not start with '-' (tools would read it as an option)"
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid interface name"));
    }
    if matches!(s, "lo" | "all" | "default") {
        return Err(format!(
            "interface name '{s}' is reserved by the kernel (loopback and /proc/sys/net/*/conf/{{all,default}})"
        ));
    }
    Ok(())
}

/// Network and VM names: they appear in derived names, paths and state files.
fn check_entity_name(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("a {what} name must not be empty"));
    }
    if !name_chars_ok(s) {
        return Err(format!(
            "'{}' is not a valid {what} name: use only letters, digits, '_', '.' and '-'",
            show(s)
        ));
    }
    if s.len() > NAME_MAX {
        return Err(format!(
            "{what} name '{s}' is {} characters long; at most {NAME_MAX} are allowed",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid {what} name"));
    }
    Ok(())
}

fn check_netns(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a network namespace name must not be empty".into());
    }
    if !name_chars_ok(s) {
        return Err(format!(
            "'{}' is not a valid network namespace name: use only letters, digits, '_', '.' and '-'",
            show(s)
        ));
    }
    if s.len() > NAME_MAX {
        return Err(format!(
            "network namespace name '{s}' is {} characters long; at most {NAME_MAX} are allowed",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid network namespace name"));
    }
    Ok(())
}

fn check_sysctl_key(s: &str) -> Result<(), String> {
    let shown = show(s);
    if s.contains('/') {
        return Err(format!(
            "sysctl name '{shown}' contains '/'; write it dotted, like net.core.somaxconn"
        ));
    }
    let segs: Vec<&str> = s.split('.').collect();
    if segs.len() < 2 {
        return Err(format!(
            "'{shown}' is not a sysctl name; expected dotted segments like net.core.somaxconn"
        ));
    }
    if segs.iter().any(|g| g.is_empty()) {
        return Err(format!(
            "sysctl name '{shown}' has an empty segment (a leading, trailing or double dot)"
        ));
    }
    if !segs.iter().all(|g| {
        g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return Err(format!(
            "sysctl name '{shown}' may contain only letters, digits, '_' and '-' between its dots"
        ));
    }
    Ok(())
}

/// A DNS domain name (`example.test`), RFC 1123 labels.
fn check_domain(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("'{}' is not a valid domain name: {why}", show(s)));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("it has an empty label (a leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("labels may contain only letters, digits and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label must not start or end with '-'");
        }
    }
    Ok(())
}

/// A user name as `useradd` would accept it; uids are given as numbers.
fn check_user(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a user name must not be empty".into());
    }
    let body = s.strip_suffix('$').unwrap_or(s);
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "'{}' is not a valid user name: use letters, digits, '_', '.' and '-' (or give a numeric uid)",
            show(s)
        ));
    }
    if s.starts_with('-') {
        return Err(format!("user name '{s}' must not start with '-'"));
    }
    if s.len() > 32 {
        return Err(format!("user name '{s}' is longer than 32 characters"));
    }
    Ok(())
}

fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    let t = s.trim();
    if !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && let Ok(a) = t.parse()
    {
        return Ok(a);
    }
    Err(format!(
        "'{}' is not an IPv4 address (like 192.0.2.10)",
        show(s)
    ))
}

/// `addr/prefix`, strictly: digits and dots, one slash, a decimal prefix.
fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let t = s.trim();
    let Some((a, p)) = t.split_once('/') else {
        return Err(format!(
            "'{}' is not an address with a prefix (like 192.0.2.1/24)",
            show(s)
        ));
    };
    parse_ip(a)?;
    if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{}' is not a prefix length between 0 and 32",
            show(p)
        ));
    }
    t.parse::<Ipv4Cidr>()
}

fn parse_mac(s: &str) -> Result<Mac, String> {
    let t = s.trim();
    if t.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        && let Ok(m) = t.parse::<Mac>()
    {
        return Ok(m);
    }
    Err(format!(
        "'{}' is not a MAC address (like 52:54:00:12:34:56)",
        show(s)
    ))
}

/// Seconds, or a number with s, m, h or d.
fn parse_duration(f: &Field) -> Result<u64, String> {
    let Kind::Scalar(s) = &f.node.kind else {
        return Err(format!(
            "expected a duration (seconds, or like 30m, 1h, 1d), found {}",
            f.node.describe()
        ));
    };
    let t = s.text.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b's') => (&t[..t.len() - 1], 1),
        Some(b'm') => (&t[..t.len() - 1], 60),
        Some(b'h') => (&t[..t.len() - 1], 3600),
        Some(b'd') => (&t[..t.len() - 1], 86400),
        _ => (t, 1),
    };
    let bad = || {
        format!(
            "'{}' is not a duration; expected seconds or a number with s, m, h or d (like 1h)",
            show(&s.text)
        )
    };
    if num.is_empty() || num.len() > 12 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(n * mult)
}

/// Addresses that can never be a gateway or a guest address.
fn special(a: Ipv4Addr) -> Option<&'static str> {
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if a.is_broadcast() || a.octets()[0] >= 240 {
        Some("a reserved address")
    } else if a.octets()[0] == 0 {
        Some("in 0.0.0.0/8, which cannot be assigned")
    } else {
        None
    }
}

fn host_hint(net: Ipv4Cidr) -> Ipv4Cidr {
    Ipv4Cidr::new(
        Ipv4Addr::from(u32::from(net.network().addr).wrapping_add(1)),
        net.prefix,
    )
}

// ---------------------------------------------------------------------------------------
// First pass

#[derive(Clone)]
pub(crate) struct NetDraft {
    name: String,
    key_loc: Loc,
    path: String,
    mode: Option<Mode>,
    /// Explicit or derived; `None` when the given name is invalid or the network name is.
    bridge: Option<String>,
    /// Where the bridge name was written, or the network's key when derived.
    bridge_loc: Loc,
    bridge_derived: bool,
    /// Set only when the gateway passed every check.
    ipv4: Option<Ipv4Cidr>,
    ipv4_loc: Loc,
    mtu: Option<u32>,
    uplink: Option<(String, Loc)>,
    egress: Option<(String, Loc)>,
    dhcp: Option<Dhcp>,
    isolate_ports: bool,
    forwards: Vec<ForwardDraft>,
    /// `vxlan` mode, set only when every vxlan field passed its checks.
    vxlan: Option<Vxlan>,
    /// bits/s, with where it was written.
    bandwidth: Option<(u64, Loc)>,
    /// `direct` mode: how its macvtap ports reach each other.
    direct_mode: Option<(DirectMode, Loc)>,
    /// `vlan` mode, set only when the VLAN id and the uplink passed their checks.
    vlan: Option<Vlan>,
    vlan_loc: Loc,
    vlan_uplink_loc: Loc,
    host_access: Vec<FirewallRule>,
    ipv6_prefixes: Vec<Ipv6Cidr>,
}

#[derive(Clone)]
pub(crate) struct ForwardDraft {
    path: String,
    proto: Proto,
    port: u16,
    to: String,
    to_loc: Loc,
    to_port: u16,
}

#[derive(Clone)]
pub(crate) struct PortDraft {
    path: String,
    vm: String,
    index: usize,
    network: Option<String>,
    name: Option<String>,
    name_loc: Loc,
    name_derived: bool,
    kind: Option<PortKind>,
    mac: Option<Mac>,
    mac_loc: Loc,
    mac_derived: bool,
    ipv4: Option<Ipv4Cidr>,
    ipv4_loc: Loc,
    owner: Option<Owner>,
    queues: u32,
    netns: Option<String>,
    antispoof: bool,
    dhcp_client: bool,
    firewall: Option<Firewall>,
    qos: Option<Qos>,
    mirror: Option<(String, Loc, String)>,
    ethtool: Option<Ethtool>,
    /// `vlans`: each VID with where it was written and its path.
    vlans: Vec<(u16, Loc, String)>,
}

impl PortDraft {
    /// The same port read from a text that starts `by` lines further down.
    pub(crate) fn shift_lines(&mut self, by: usize) {
        for l in [&mut self.name_loc, &mut self.mac_loc, &mut self.ipv4_loc] {
            l.line += by;
        }
        if let Some((_, l, _)) = &mut self.mirror {
            l.line += by;
        }
        for (_, l, _) in &mut self.vlans {
            l.line += by;
        }
    }
}

pub(crate) fn convert(
    root: &Node,
    identity: &HostIdentity,
    errors: &mut Vec<SpecError>,
) -> Option<Spec> {
    let mut cx = Ctx::default();
    let spec = convert_inner(&mut cx, root, identity);
    errors.append(&mut cx.errors);
    if errors.is_empty() { spec } else { None }
}

fn convert_inner(cx: &mut Ctx, root: &Node, identity: &HostIdentity) -> Option<Spec> {
    let (head, vms) = read_head(cx, root)?;
    let mut ports: Vec<PortDraft> = Vec::new();
    let mut vm_names: Vec<String> = Vec::new();
    if let Some(o) = vms {
        for (key, field) in o.named(cx) {
            read_vm(cx, key, &field, head.nets.as_deref(), &mut ports);
            vm_names.push(key.text.clone());
        }
    }
    finish(cx, head, ports, vm_names, identity)
}

/// What reading a VM learns from the networks (name, mode, subnet of each); `None` when the
/// networks field is broken.
pub(crate) type VmContext = Option<Vec<(String, Option<Mode>, Option<Ipv4Cidr>)>>;

/// Field paths with where each was written.
pub(crate) type Locs = Vec<(String, Loc)>;

/// Everything of a spec but its VMs, as the first pass read it.
#[derive(Clone)]
pub(crate) struct Head {
    version: Option<u32>,
    sysctl: Option<Sysctl>,
    tuning: Option<Tuning>,
    uplinks: Vec<UplinkDraft>,
    /// `None`: the networks field itself is broken, so references cannot be checked.
    pub(crate) nets: Option<Vec<NetDraft>>,
}

impl Head {
    /// What reading a VM learns from the networks: the same VM text reads the same way
    /// under two heads whose networks agree on this.
    pub(crate) fn vm_context(&self) -> VmContext {
        self.nets.as_ref().map(|nets| {
            nets.iter()
                .map(|n| (n.name.clone(), n.mode, n.ipv4))
                .collect()
        })
    }
}

/// The first pass over everything but the VMs, which come back unread (`None` when the
/// vms field is absent or not a mapping).
pub(crate) fn read_head<'a>(cx: &mut Ctx, root: &'a Node) -> Option<(Head, Option<Obj<'a>>)> {
    let top = match &root.kind {
        Kind::Map(_) => obj(cx, root, "", TOP_FIELDS, "")?,
        Kind::Scalar(s) if s.is_null() => {
            cx.err(
                "",
                root.loc,
                "the spec is empty; it needs at least `version: 1`",
            );
            return None;
        }
        Kind::Bad => return None,
        _ => {
            cx.err(
                "",
                root.loc,
                format!(
                    "a spec must be a mapping with the fields version, host, networks and vms; found {}",
                    root.describe()
                ),
            );
            return None;
        }
    };

    let version = match top.required(cx, "version", "start the spec with `version: 1`") {
        Some(f) => read_version(cx, &f),
        None => None,
    };

    let mut sysctl: Option<Sysctl> = None;
    let mut tuning = None;
    let mut uplinks: Vec<UplinkDraft> = Vec::new();
    if let Some(f) = top.get(cx, "host")
        && let Some(host) = obj(
            cx,
            f.node,
            &f.path,
            HOST_FIELDS,
            "a mapping (with sysctl, tuning, uplinks)",
        )
    {
        sysctl = host.get(cx, "sysctl").and_then(|f| read_sysctl(cx, &f));
        if let Some(uf) = host.get(cx, "uplinks")
            && let Some(o) = obj_named(cx, &uf, "a mapping of interface names to uplinks")
        {
            for (key, field) in o.named(cx) {
                uplinks.push(read_uplink(cx, key, &field));
            }
        }
        if let Some(tf) = host.get(cx, "tuning") {
            match text(cx, &tf, "throughput, latency or default").as_deref() {
                Some("throughput") => tuning = Some(Tuning::Throughput),
                Some("latency") => tuning = Some(Tuning::Latency),
                Some("default") | None => {}
                Some(t) => cx.err(
                    &tf.path,
                    tf.loc(),
                    format!(
                        "'{}' is not a tuning profile; expected throughput, latency or default",
                        show(t)
                    ),
                ),
            }
        }
    }

    // `None`: the networks field itself is broken, so references cannot be checked.
    let mut nets: Option<Vec<NetDraft>> = Some(Vec::new());
    if let Some(f) = top.get(cx, "networks") {
        nets = obj_named(cx, &f, "a mapping of network names to networks").map(|o| {
            let entries = o.named(cx);
            entries
                .iter()
                .map(|(key, field)| read_network(cx, key, field))
                .collect()
        });
    }

    let vms = top
        .get(cx, "vms")
        .and_then(|f| obj_named(cx, &f, "a mapping of VM names to VMs"));
    Some((
        Head {
            version,
            sysctl,
            tuning,
            uplinks,
            nets,
        },
        vms,
    ))
}

/// One entry of `vms`, as `read_head`'s mapping hands it out: its path's location is
/// recorded, its ports are read against the networks and appended to `ports`.
pub(crate) fn read_vm_entry(
    cx: &mut Ctx,
    key: &Key,
    node: &Node,
    nets: Option<&[NetDraft]>,
    ports: &mut Vec<PortDraft>,
) {
    let path = join("vms", &key.text);
    cx.locs.push((path.clone(), node.loc));
    read_vm(cx, key, &Field { path, node }, nets, ports);
}

/// The second pass (rules across the whole spec) and the build of the `Spec`.
pub(crate) fn finish(
    cx: &mut Ctx,
    head: Head,
    ports: Vec<PortDraft>,
    vm_names: Vec<String>,
    identity: &HostIdentity,
) -> Option<Spec> {
    let Head {
        version,
        sysctl,
        tuning,
        uplinks,
        nets,
    } = head;
    cross_checks(cx, nets.as_deref().unwrap_or(&[]), &ports, sysctl.as_ref());
    uplink_checks(cx, nets.as_deref().unwrap_or(&[]), &ports, &uplinks);

    if !cx.errors.is_empty() {
        return None;
    }
    let mut spec = build(cx, version?, sysctl, nets?, ports, vm_names)?;
    spec.identity = identity.clone();
    if let Err(u) = spec.derive_macs() {
        let path = format!("{}[{}]", join(&join("vms", &u.vm), "ports"), u.index);
        let loc = spec.loc(&path);
        cx.err(
            &path,
            loc,
            format!(
                "none of this port's {} derived MACs is free (other ports hold them); set mac",
                super::macs::CANDIDATES
            ),
        );
        return None;
    }
    spec.host.tuning = tuning;
    for d in uplinks {
        let u = d.uplink?;
        // A bond's ethtool settings are its members': rings, channels and offloads are
        // properties of the NICs underneath.
        if let Some(e) = d.ethtool {
            let targets = match &u.bond {
                Some(b) => b.members.clone(),
                None => vec![u.name.clone()],
            };
            for t in targets {
                spec.host.ethtool.insert(t, e.clone());
            }
        }
        spec.host.uplinks.insert(u.name.clone(), u);
    }
    Some(spec)
}

#[derive(Clone)]
pub(crate) struct UplinkDraft {
    name: String,
    key_loc: Loc,
    path: String,
    /// Members with where each is written; empty for a plain NIC.
    members: Vec<(String, Loc, String)>,
    is_bond: bool,
    /// Set only when every field passed its checks.
    uplink: Option<Uplink>,
    /// Offloads, rings and channels: of the NIC, or of every member of the bond.
    ethtool: Option<Ethtool>,
}

fn read_uplink(cx: &mut Ctx, key: &Key, f: &Field) -> UplinkDraft {
    let before = cx.errors.len();
    let mut d = UplinkDraft {
        name: key.text.clone(),
        key_loc: key.loc,
        path: f.path.clone(),
        members: Vec::new(),
        is_bond: false,
        uplink: None,
        ethtool: None,
    };
    let name_ok = match check_ifname(&key.text) {
        Ok(()) => true,
        Err(m) => {
            cx.err(&f.path, key.loc, m);
            false
        }
    };
    let Some(o) = obj(
        cx,
        f.node,
        &f.path,
        UPLINK_FIELDS,
        "an uplink (a mapping with mode and members for a bond, or mtu and ethtool for an existing interface)",
    ) else {
        return d;
    };
    if let Some(ef) = o.get(cx, "ethtool") {
        d.ethtool = read_ethtool(cx, &ef);
    }
    let mtu = o.get(cx, "mtu").and_then(|mf| {
        int_in(
            cx,
            &mf,
            &format!("an MTU between {MTU_MIN} and {MTU_MAX}"),
            MTU_MIN,
            MTU_MAX,
        )
        .and_then(|n| u32::try_from(n).ok())
    });
    d.is_bond = BOND_FIELDS
        .iter()
        .any(|k| o.entries.iter().any(|(x, _)| x.text == *k));
    let mut bond = None;
    if d.is_bond {
        let mode = o
            .required(cx, "mode", &format!("a bond needs its mode: {BOND_MODES}"))
            .and_then(|mf| {
                let t = text(cx, &mf, BOND_MODES)?;
                let m = BondMode::parse(&t);
                if m.is_none() {
                    cx.err(
                        &mf.path,
                        mf.loc(),
                        format!("'{}' is not a bond mode; expected {BOND_MODES}", show(&t)),
                    );
                }
                m
            });
        if let Some(mf) = o.required(
            cx,
            "members",
            "a bond needs the host interfaces it joins, like members: [eth1, eth2]",
        ) && let Some(items) = list(cx, &mf, "a list of interface names")
        {
            if items.is_empty() {
                cx.err(
                    &mf.path,
                    mf.loc(),
                    "members is empty; list the host interfaces the bond joins, like [eth1, eth2]",
                );
            }
            for item in items {
                let Some(m) = read_ifname_field(cx, &item, "an interface name") else {
                    continue;
                };
                if d.members.iter().any(|(x, _, _)| *x == m) {
                    cx.err(
                        &item.path,
                        item.loc(),
                        format!("member '{m}' is listed twice"),
                    );
                } else if m == d.name {
                    cx.err(
                        &item.path,
                        item.loc(),
                        format!(
                            "'{m}' is the bond itself; a bond's members are other host interfaces"
                        ),
                    );
                } else {
                    d.members.push((m, item.loc(), item.path.clone()));
                }
            }
        }
        let only = |cx: &mut Ctx, field: &str, ok: bool, modes: &str| -> Option<Field<'_>> {
            let f = o.get(cx, field)?;
            match mode {
                Some(m) if !ok => {
                    cx.err(
                        &f.path,
                        f.loc(),
                        format!(
                            "{field} applies only to mode {modes}; a bond in mode {} has no {field} (remove it)",
                            m.as_str()
                        ),
                    );
                    None
                }
                _ => Some(f),
            }
        };
        let choice = |cx: &mut Ctx, f: &Field, names: &[&str], what: &str| -> Option<String> {
            let expected = names.join(", ");
            let t = text(cx, f, &expected)?;
            if names.contains(&t.as_str()) {
                Some(t)
            } else {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!("'{}' is not a {what}; expected {expected}", show(&t)),
                );
                None
            }
        };
        let lacp = mode == Some(BondMode::Lacp);
        let lacp_rate = only(cx, "lacp_rate", lacp || mode.is_none(), "802.3ad")
            .and_then(|f| choice(cx, &f, &LACP_RATES, "lacp_rate"));
        let xmit_hash_policy = only(
            cx,
            "xmit_hash_policy",
            mode.is_none_or(|m| m.hashes()),
            "802.3ad or balance-xor",
        )
        .and_then(|f| choice(cx, &f, &XMIT_HASH_POLICIES, "transmit hash policy"));
        let min_links = only(cx, "min_links", lacp || mode.is_none(), "802.3ad")
            .and_then(|f| int_in(cx, &f, "a number of members between 0 and 1024", 0, 1024))
            .and_then(|n| u32::try_from(n).ok());
        let miimon = o
            .get(cx, "miimon")
            .and_then(|f| int_in(cx, &f, "milliseconds between 1 and 60000", 1, 60_000))
            .and_then(|n| u32::try_from(n).ok());
        let primary = only(
            cx,
            "primary",
            mode.is_none_or(|m| m.has_primary()),
            "active-backup, balance-tlb or balance-alb",
        )
        .and_then(|f| {
            let p = read_ifname_field(cx, &f, "the member that is active whenever it is up")?;
            if !d.members.iter().any(|(m, _, _)| *m == p) {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!("primary '{p}' is not a member of this bond; name one of its members"),
                );
                return None;
            }
            Some(p)
        });
        if let Some(m) = mode {
            bond = Some(Bond {
                mode: m,
                members: d.members.iter().map(|(m, _, _)| m.clone()).collect(),
                lacp_rate,
                xmit_hash_policy,
                miimon,
                min_links,
                primary,
            });
        }
    }
    if cx.errors.len() == before && name_ok {
        d.uplink = Some(Uplink {
            name: d.name.clone(),
            bond,
            mtu,
        });
    }
    d
}

/// Uplinks against the rest of the spec: a bond's name is one more interface kvmnet creates
/// and must not clash; a member belongs to one bond only and is used through its bond, never
/// directly (a bridge uplink, a NAT egress, a VXLAN underlay).
fn uplink_checks(cx: &mut Ctx, nets: &[NetDraft], ports: &[PortDraft], uplinks: &[UplinkDraft]) {
    let mut created: Vec<(&str, What)> = Vec::new();
    for n in nets {
        if let Some(b) = &n.bridge {
            created.push((b, What::Bridge(&n.name)));
        }
        if let Some(v) = &n.vxlan {
            created.push((&v.device, What::Vxlan(&n.name)));
        }
    }
    // Only uplinks and bond members are looked up here, and there are few of them.
    if !uplinks.is_empty() {
        for p in ports {
            if let Some(name) = &p.name {
                created.push((name, What::Port(p.index, &p.vm)));
            }
        }
    }
    for u in uplinks {
        if let Some((_, what)) = created.iter().find(|(c, _)| *c == u.name) {
            cx.err(
                &u.path,
                u.key_loc,
                format!(
                    "'{}' is {what}, an interface kvmnet creates; an uplink is a bond or an existing host interface",
                    u.name
                ),
            );
        }
    }
    let mut owner: HashMap<&str, &UplinkDraft> = HashMap::new();
    let mut all: Vec<(&str, Loc, &str, &UplinkDraft)> = uplinks
        .iter()
        .flat_map(|u| {
            u.members
                .iter()
                .map(move |(m, l, p)| (m.as_str(), *l, p.as_str(), u))
        })
        .collect();
    all.sort_by_key(|x| x.1);
    for (m, loc, path, u) in all {
        if let Some(other) = owner.get(m) {
            cx.err(
                path,
                loc,
                format!(
                    "'{m}' is already a member of bond {}; an interface can join only one bond",
                    other.name
                ),
            );
            continue;
        }
        owner.insert(m, u);
        if let Some(other) = uplinks.iter().find(|x| x.name == m) {
            let what = if other.is_bond {
                "a bond"
            } else {
                "an uplink entry"
            };
            cx.err(
                path,
                loc,
                format!(
                    "'{m}' is {what} of host.uplinks itself; a member is a plain host interface"
                ),
            );
        }
        if let Some((_, what)) = created.iter().find(|(c, _)| *c == m) {
            cx.err(
                path,
                loc,
                format!("'{m}' is {what}, an interface kvmnet creates; a member is an existing host interface"),
            );
        }
    }
    let used = |cx: &mut Ctx, name: &str, path: &str, loc: Loc, role: &str| {
        if let Some(b) = owner.get(name) {
            cx.err(
                path,
                loc,
                format!(
                    "'{name}' is a member of bond {}; use the bond as {role} (write {})",
                    b.name, b.name
                ),
            );
        }
    };
    for n in nets {
        if let Some((u, loc)) = &n.uplink {
            used(cx, u, &join(&n.path, "uplink"), *loc, "the uplink");
        }
        if let Some((e, loc)) = &n.egress {
            used(
                cx,
                e,
                &join(&join(&n.path, "nat"), "egress"),
                *loc,
                "the egress",
            );
        }
        if let Some(v) = &n.vxlan {
            let path = join(&n.path, "underlay");
            let loc = cx.loc_at(&path).unwrap_or(n.key_loc);
            used(cx, &v.underlay, &path, loc, "the underlay");
        }
        if let Some(v) = n.vlan.as_ref().filter(|_| n.uplink.is_none()) {
            used(
                cx,
                &v.uplink,
                &join(&n.path, "uplink"),
                n.vlan_uplink_loc,
                "the uplink",
            );
        }
        if n.mode == Some(Mode::Direct)
            && let Some((u, loc)) = &n.uplink
            && uplinks.iter().any(|x| x.is_bond && x.name == *u)
        {
            cx.err(
                &join(&n.path, "uplink"),
                *loc,
                format!(
                    "'{u}' is a bond of host.uplinks; macvtap ports on a bond kvmnet builds are not supported (use a bridge or vlan network on the bond, or a host interface)"
                ),
            );
        }
    }
}

/// A name -> value mapping: the keys are free, so no unknown-field check.
fn obj_named<'a>(cx: &mut Ctx, f: &Field<'a>, what: &str) -> Option<Obj<'a>> {
    match &f.node.kind {
        Kind::Map(e) => Some(Obj {
            path: f.path.clone(),
            loc: f.loc(),
            entries: e,
        }),
        _ => obj(cx, f.node, &f.path, &[], what),
    }
}

fn read_version(cx: &mut Ctx, f: &Field) -> Option<u32> {
    if let Kind::Scalar(s) = &f.node.kind
        && let Some(n) = s.as_int()
    {
        if n == 1 {
            return Some(1);
        }
        cx.err(
            &f.path,
            f.loc(),
            format!("unsupported spec version {n}; this kvmnet understands version 1"),
        );
        return None;
    }
    if !matches!(f.node.kind, Kind::Bad) {
        cx.err(
            &f.path,
            f.loc(),
            format!("expected the number 1, found {}", f.node.describe()),
        );
    }
    None
}

/// The values, and for each key where its value sits (loc, path).
type Sysctl = (BTreeMap<String, String>, BTreeMap<String, (Loc, String)>);

fn read_sysctl(cx: &mut Ctx, f: &Field) -> Option<Sysctl> {
    let o = obj_named(cx, f, "a mapping of sysctl names to values")?;
    let mut values = BTreeMap::new();
    let mut where_ = BTreeMap::new();
    for (key, field) in o.named(cx) {
        if let Err(m) = check_sysctl_key(&key.text) {
            cx.err(&field.path, key.loc, m);
            continue;
        }
        let Some(v) = text(cx, &field, "a value (a string or a number)") else {
            continue;
        };
        if v.trim().is_empty() {
            cx.err(
                &field.path,
                field.loc(),
                "the value is empty; write the value to set, like \"1\"",
            );
            continue;
        }
        if v.contains(['\n', '\r']) {
            cx.err(
                &field.path,
                field.loc(),
                "the value spans several lines; a sysctl value must be a single line",
            );
            continue;
        }
        where_.insert(key.text.clone(), (field.loc(), field.path.clone()));
        values.insert(key.text.clone(), v);
    }
    Some((values, where_))
}

fn read_ifname_field(cx: &mut Ctx, f: &Field, what: &str) -> Option<String> {
    let name = text(cx, f, what)?;
    match check_ifname(&name) {
        Ok(()) => Some(name),
        Err(m) => {
            cx.err(&f.path, f.loc(), m);
            None
        }
    }
}

fn read_network(cx: &mut Ctx, key: &Key, f: &Field) -> NetDraft {
    let name_ok = match check_entity_name(&key.text, "network") {
        Ok(()) => true,
        Err(m) => {
            cx.err(&f.path, key.loc, m);
            false
        }
    };
    let mut d = NetDraft {
        name: key.text.clone(),
        key_loc: key.loc,
        path: f.path.clone(),
        mode: None,
        bridge: None,
        bridge_loc: key.loc,
        bridge_derived: false,
        ipv4: None,
        ipv4_loc: key.loc,
        mtu: None,
        uplink: None,
        egress: None,
        dhcp: None,
        isolate_ports: false,
        forwards: Vec::new(),
        vxlan: None,
        bandwidth: None,
        direct_mode: None,
        vlan: None,
        vlan_loc: key.loc,
        vlan_uplink_loc: key.loc,
        host_access: Vec::new(),
        ipv6_prefixes: Vec::new(),
    };
    let Some(o) = obj(
        cx,
        f.node,
        &f.path,
        NET_FIELDS,
        "a network (a mapping with mode and its settings)",
    ) else {
        return d;
    };

    let mut mode_known = false;
    if let Some(mf) = o.required(cx, "mode", &format!("expected {MODES}"))
        && let Some(m) = text(cx, &mf, MODES)
    {
        d.mode = match m.as_str() {
            "nat" => Some(Mode::Nat),
            "routed" => Some(Mode::Routed),
            "isolated" => Some(Mode::Isolated),
            "bridge" => Some(Mode::Bridge),
            "vxlan" => Some(Mode::Vxlan),
            "direct" => Some(Mode::Direct),
            "vlan" => Some(Mode::Vlan),
            _ => {
                cx.err(
                    &mf.path,
                    mf.loc(),
                    format!("'{}' is not a network mode; expected {MODES}", show(&m)),
                );
                None
            }
        };
        mode_known = d.mode.is_some();
    }
    let mode = d.mode;

    if mode == Some(Mode::Direct) {
        // No bridge at all: the ports are macvtap devices on the uplink.
        d.bridge = Some(String::new());
        if let Some(bf) = o.get(cx, "bridge") {
            cx.err(
                &bf.path,
                bf.loc(),
                "a direct network has no bridge: its ports are macvtap devices on the uplink (remove bridge, or use mode bridge)",
            );
        }
    } else if let Some(bf) = o.get(cx, "bridge") {
        d.bridge_loc = bf.loc();
        d.bridge = read_ifname_field(cx, &bf, "a bridge interface name");
    } else if name_ok {
        d.bridge = Some(naming::bridge_name(&key.text));
        d.bridge_derived = true;
    }

    // ipv4
    let ipf = o.get(cx, "ipv4");
    match (&ipf, mode) {
        (Some(ipf), Some(Mode::Direct)) => {
            cx.err(
                &ipf.path,
                ipf.loc(),
                "a direct network takes no ipv4: the host has no address on it (its guests sit on the uplink's segment and use that network's gateway); remove ipv4",
            );
        }
        (Some(ipf), Some(Mode::Bridge)) => {
            cx.err(
                &ipf.path,
                ipf.loc(),
                "a bridge network takes no ipv4: the host keeps its addresses on the uplink \
                 (they move to the bridge); remove ipv4 or use mode nat, routed or isolated",
            );
        }
        (None, Some(m)) if !matches!(m, Mode::Bridge | Mode::Vxlan | Mode::Direct | Mode::Vlan) => {
            cx.err(
                &join(&f.path, "ipv4"),
                o.loc,
                format!(
                    "missing required field 'ipv4'; a {} network needs the gateway address and subnet, like 192.168.122.1/24",
                    m.as_str()
                ),
            );
        }
        (Some(ipf), _) => {
            d.ipv4_loc = ipf.loc();
            if let Some(t) = text(
                cx,
                ipf,
                "a gateway address with prefix, like 192.168.122.1/24",
            ) {
                match parse_cidr(&t) {
                    Err(m) => cx.err(&ipf.path, ipf.loc(), m),
                    Ok(c) if mode.is_some() => match check_gateway(c) {
                        Ok(()) => d.ipv4 = Some(c),
                        Err(m) => cx.err(&ipf.path, ipf.loc(), m),
                    },
                    Ok(_) => {}
                }
            }
        }
        (None, _) => {}
    }

    if let Some(mf) = o.get(cx, "mtu")
        && let Some(n) = int_in(
            cx,
            &mf,
            &format!("an MTU between {MTU_MIN} and {MTU_MAX}"),
            MTU_MIN,
            MTU_MAX,
        )
    {
        d.mtu = u32::try_from(n).ok();
    }

    let mut vlan_uplink = None;
    match (o.get(cx, "uplink"), mode) {
        (Some(uf), Some(m)) if !matches!(m, Mode::Bridge | Mode::Direct | Mode::Vlan) => {
            cx.err(
                &uf.path,
                uf.loc(),
                format!(
                    "uplink applies only to modes bridge, vlan and direct; a {} network has no uplink (remove it)",
                    m.as_str()
                ),
            );
        }
        (Some(uf), Some(Mode::Vlan)) => {
            d.vlan_uplink_loc = uf.loc();
            vlan_uplink = read_ifname_field(
                cx,
                &uf,
                "the host interface that carries the VLAN tagged, like eth1",
            );
        }
        (None, Some(Mode::Vlan)) => {
            cx.err(
                &join(&f.path, "uplink"),
                o.loc,
                "missing required field 'uplink'; a vlan network needs the host interface that carries its tagged frames, like eth1",
            );
        }
        (Some(uf), _) => {
            if let Some(u) = read_ifname_field(cx, &uf, "the host interface to enslave, like eth0")
            {
                d.uplink = Some((u, uf.loc()));
            }
        }
        (None, Some(Mode::Bridge)) => {
            cx.err(
                &join(&f.path, "uplink"),
                o.loc,
                "missing required field 'uplink'; a bridge network needs the host interface to enslave, like eth0",
            );
        }
        (None, Some(Mode::Direct)) => {
            cx.err(
                &join(&f.path, "uplink"),
                o.loc,
                "missing required field 'uplink'; a direct network needs the host interface its macvtap ports sit on, like eth0",
            );
        }
        (None, _) => {}
    }

    if let Some(nf) = o.get(cx, "nat") {
        if let Some(m) = mode
            && m != Mode::Nat
        {
            cx.err(
                &nf.path,
                nf.loc(),
                format!(
                    "nat settings apply only to mode nat; this network is mode {}",
                    m.as_str()
                ),
            );
        } else if let Some(no) = obj(cx, nf.node, &nf.path, NAT_FIELDS, "a mapping (with egress)")
            && let Some(ef) = no.get(cx, "egress")
            && let Some(e) = read_ifname_field(cx, &ef, "the host interface NAT leaves through")
        {
            d.egress = Some((e, ef.loc()));
        }
    }

    if let Some(df) = o.get(cx, "dhcp") {
        if mode == Some(Mode::Direct) {
            cx.err(
                &df.path,
                df.loc(),
                "kvmnet serves no DHCP on a direct network: the host has no address there; its guests use the uplink segment's DHCP server (remove dhcp)",
            );
        } else if mode == Some(Mode::Bridge) {
            cx.err(
                &df.path,
                df.loc(),
                "kvmnet serves no DHCP on a bridge network: its guests sit on the uplink's LAN \
                 and use that LAN's DHCP server; remove dhcp",
            );
        } else if let Some(m @ (Mode::Vxlan | Mode::Vlan)) = mode
            && ipf.is_none()
        {
            cx.err(
                &df.path,
                df.loc(),
                format!(
                    "kvmnet serves DHCP on a {} network only from the host's address on it; \
                     set ipv4 (like 10.70.0.1/24) or remove dhcp",
                    m.as_str()
                ),
            );
        } else {
            // Checks against the subnet run only when mode and gateway are sound.
            let subnet = if mode_known { d.ipv4 } else { None };
            d.dhcp = read_dhcp(cx, &df, subnet);
        }
    }
    if let Some(isf) = o.get(cx, "isolate_ports") {
        if mode == Some(Mode::Direct) {
            cx.err(
                &isf.path,
                isf.loc(),
                "isolate_ports is a bridge setting; on a direct network use direct_mode: private (ports reach the uplink's segment, not each other)",
            );
        } else if let Some(b) = boolean(cx, &isf) {
            d.isolate_ports = b;
        }
    }
    match (o.get(cx, "direct_mode"), mode) {
        (Some(df), Some(m)) if m != Mode::Direct => cx.err(
            &df.path,
            df.loc(),
            format!(
                "direct_mode applies only to mode direct; a {} network has no direct_mode (remove it)",
                m.as_str()
            ),
        ),
        (Some(df), _) => {
            if let Some(t) = text(cx, &df, DIRECT_MODES) {
                match DirectMode::parse(&t) {
                    Some(dm) => d.direct_mode = Some((dm, df.loc())),
                    None => cx.err(
                        &df.path,
                        df.loc(),
                        format!("'{}' is not a direct mode; expected {DIRECT_MODES}", show(&t)),
                    ),
                }
            }
        }
        (None, Some(Mode::Direct)) => d.direct_mode = Some((DirectMode::Bridge, o.loc)),
        (None, _) => {}
    }
    if let Some(bf) = o.get(cx, "bandwidth")
        && let Some(t) = text(cx, &bf, "a rate like 1gbit")
    {
        match (parse_rate(&t), mode) {
            (Err(m), _) => cx.err(&bf.path, bf.loc(), m),
            (Ok(_), Some(m)) if mode_known && !matches!(m, Mode::Nat | Mode::Routed | Mode::Isolated) => {
                cx.err(
                    &bf.path,
                    bf.loc(),
                    format!(
                        "bandwidth applies to nat, routed and isolated networks, where the host routes traffic into the network; on a {} network traffic to the VMs is switched past the host",
                        m.as_str()
                    ),
                )
            }
            (Ok(v), _) => d.bandwidth = Some((v, bf.loc())),
        }
    }
    if let Some(ff) = o.get(cx, "forwards") {
        if mode_known && mode != Some(Mode::Nat) {
            cx.err(
                &ff.path,
                ff.loc(),
                "forwards apply only to nat networks; guests of other modes are reached directly",
            );
        } else if let Some(items) = list(cx, &ff, "a list of forwards") {
            let mut seen = BTreeMap::new();
            for item in items {
                if let Some(fw) = read_forward(cx, &item) {
                    if let Some(first) = seen.insert((fw.proto, fw.port), fw.path.clone()) {
                        cx.err(
                            &fw.path,
                            item.loc(),
                            format!(
                                "{} port {} is already forwarded by {first}",
                                fw.proto.as_str(),
                                fw.port
                            ),
                        );
                    }
                    d.forwards.push(fw);
                }
            }
        }
    }
    match (o.get(cx, "vlan"), mode) {
        (Some(vf), Some(Mode::Vlan)) => {
            d.vlan_loc = vf.loc();
            let id = int_in(
                cx,
                &vf,
                &format!("a VLAN id between 1 and {VLAN_ID_MAX}"),
                1,
                i128::from(VLAN_ID_MAX),
            )
            .and_then(|n| u16::try_from(n).ok());
            if let (Some(id), Some(uplink)) = (id, vlan_uplink) {
                d.vlan = Some(Vlan {
                    id,
                    device: naming::uplink_vlan_name(&uplink, id),
                    uplink,
                });
            }
        }
        (None, Some(Mode::Vlan)) => {
            cx.err(
                &join(&f.path, "vlan"),
                o.loc,
                format!(
                    "missing required field 'vlan'; a vlan network needs its 802.1Q VLAN id (1 to {VLAN_ID_MAX}), like vlan: 10"
                ),
            );
        }
        (Some(vf), Some(m)) => {
            cx.err(
                &vf.path,
                vf.loc(),
                format!(
                    "vlan applies only to mode vlan; a {} network has no VLAN id (remove it, or use mode: vlan)",
                    m.as_str()
                ),
            );
        }
        _ => {}
    }
    if let Some(hf) = o.get(cx, "host_access") {
        d.host_access = read_host_access(cx, &hf, mode);
    }
    if let Some(pf) = o.get(cx, "ipv6_prefixes") {
        d.ipv6_prefixes = read_ipv6_prefixes(cx, &pf, mode);
    }
    if mode == Some(Mode::Vxlan) {
        if name_ok {
            d.vxlan = read_vxlan(cx, &o, &f.path, &key.text);
        }
    } else if let Some(m) = mode {
        for k in VXLAN_FIELDS {
            if let Some(vf) = o.get(cx, k) {
                cx.err(
                    &vf.path,
                    vf.loc(),
                    format!(
                        "{k} applies only to mode vxlan; a {} network has no {k} (remove it)",
                        m.as_str()
                    ),
                );
            }
        }
    }
    d
}

/// `host_access`: what guests of a nat, routed or isolated network may reach on the host,
/// as firewall rules. Bridge-mode (and other L2) networks are the LAN: the host is not
/// behind them, so there is nothing to restrict.
fn read_host_access(cx: &mut Ctx, f: &Field, mode: Option<Mode>) -> Vec<FirewallRule> {
    if let Some(m) = mode.filter(|m| !matches!(m, Mode::Nat | Mode::Routed | Mode::Isolated)) {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "host_access applies to nat, routed and isolated networks; a {} network is the LAN and guests reach the host there as any LAN host does (remove it)",
                m.as_str()
            ),
        );
        return Vec::new();
    }
    let Some(items) = list(cx, f, "a list of rules like { proto: tcp, ports: [22] }") else {
        return Vec::new();
    };
    items.iter().filter_map(|i| read_rule(cx, i)).collect()
}

/// `ipv6_prefixes`: the /64 prefixes a LAN's router announces on a bridge, vlan or vxlan
/// network, so the guard lets guarded ports use their SLAAC addresses in them.
fn read_ipv6_prefixes(cx: &mut Ctx, f: &Field, mode: Option<Mode>) -> Vec<Ipv6Cidr> {
    if let Some(m) = mode.filter(|m| !matches!(m, Mode::Bridge | Mode::Vlan | Mode::Vxlan)) {
        let why = if m == Mode::Direct {
            "direct ports are not guarded (macvtap bypasses the host's bridge)".to_string()
        } else {
            format!("on a {} network kvmnet is the router", m.as_str())
        };
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "ipv6_prefixes applies to bridge, vlan and vxlan networks, whose router is on the LAN; {why} (remove it)"
            ),
        );
        return Vec::new();
    }
    let Some(items) = list(cx, f, "a list of IPv6 /64 prefixes like 2001:db8:7::/64") else {
        return Vec::new();
    };
    let mut out: Vec<Ipv6Cidr> = Vec::new();
    for item in items {
        let Some(t) = text(cx, &item, "an IPv6 /64 prefix like 2001:db8:7::/64") else {
            continue;
        };
        match t.parse::<Ipv6Cidr>() {
            Err(m) => cx.err(&item.path, item.loc(), m),
            Ok(c) if c.prefix != 64 => cx.err(
                &item.path,
                item.loc(),
                format!("{c} is not a /64: SLAAC addresses exist only in /64 prefixes"),
            ),
            Ok(c) if c.network() != c => cx.err(
                &item.path,
                item.loc(),
                format!("{c} has host bits set; did you mean {}?", c.network()),
            ),
            Ok(c) if out.contains(&c) => {
                cx.err(&item.path, item.loc(), format!("{c} is listed twice"))
            }
            Ok(c) => out.push(c),
        }
    }
    out
}

/// The vxlan settings of a `mode: vxlan` network; `None` if any of them is wrong (each
/// problem reported).
fn read_vxlan(cx: &mut Ctx, o: &Obj, path: &str, network: &str) -> Option<Vxlan> {
    let before = cx.errors.len();
    let vni = o
        .required(
            cx,
            "vni",
            "a vxlan network needs its VXLAN network identifier (1 to 16777215), like vni: 4242",
        )
        .and_then(|vf| {
            int_in(
                cx,
                &vf,
                &format!("a VNI between 1 and {VNI_MAX}"),
                1,
                VNI_MAX,
            )
        });
    let underlay = o
        .required(
            cx,
            "underlay",
            "a vxlan network needs the host interface that carries the tunnel, like eth0",
        )
        .and_then(|uf| read_ifname_field(cx, &uf, "the host interface that carries the tunnel"));
    let port = match o.get(cx, "port") {
        Some(pf) => int_in(cx, &pf, "a UDP port between 1 and 65535", 1, 65535),
        None => Some(i128::from(VXLAN_PORT)),
    };
    let mut remotes = Vec::new();
    let rf = o.get(cx, "remotes");
    if let Some(rf) = &rf
        && let Some(items) = list(cx, rf, "a list of IPv4 addresses of the other hosts")
    {
        for item in items {
            let Some(t) = text(cx, &item, "an IPv4 address") else {
                continue;
            };
            match parse_ip(&t).and_then(|a| match special(a) {
                Some(w) => Err(format!(
                    "remote {a} is {w}; a remote is the unicast IPv4 address of another host"
                )),
                None => Ok(a),
            }) {
                Ok(a) if remotes.contains(&a) => cx.err(
                    &item.path,
                    item.loc(),
                    format!("remote {a} is listed twice"),
                ),
                Ok(a) => remotes.push(a),
                Err(m) => cx.err(&item.path, item.loc(), m),
            }
        }
    }
    let mut group = None;
    let gf = o.get(cx, "group");
    if let Some(gf) = &gf {
        if rf.is_some() {
            cx.err(
                &gf.path,
                gf.loc(),
                "give either remotes (unicast peers) or group (multicast), not both",
            );
        } else if let Some(t) = text(cx, gf, "a multicast IPv4 address like 239.1.1.1") {
            match parse_ip(&t) {
                Ok(a) if a.is_multicast() => group = Some(a),
                Ok(a) => cx.err(
                    &gf.path,
                    gf.loc(),
                    format!(
                        "{a} is not a multicast address; a group is in 224.0.0.0/4, like 239.1.1.1 (for unicast peers use remotes)"
                    ),
                ),
                Err(m) => cx.err(&gf.path, gf.loc(), m),
            }
        }
    } else if rf.is_none() {
        cx.err(
            &join(path, "remotes"),
            o.loc,
            "a vxlan network needs its peers: remotes (a list of the other hosts' IPv4 addresses) or group (a multicast address)",
        );
    } else if let Some(rf) = &rf
        && remotes.is_empty()
        && cx.errors.len() == before
    {
        cx.err(
            &rf.path,
            rf.loc(),
            "remotes is empty; list the other hosts' IPv4 addresses",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Vxlan {
        device: naming::vxlan_name(network),
        vni: u32::try_from(vni?).ok()?,
        underlay: underlay?,
        remotes,
        group,
        port: u16::try_from(port?).ok()?,
    })
}

fn read_forward(cx: &mut Ctx, f: &Field) -> Option<ForwardDraft> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        FORWARD_FIELDS,
        "a forward (a mapping with proto, port, to and to_port)",
    )?;
    let mut proto = Some(Proto::Tcp);
    if let Some(pf) = o.get(cx, "proto") {
        proto = text(cx, &pf, "tcp or udp").and_then(|p| match p.as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => {
                cx.err(
                    &pf.path,
                    pf.loc(),
                    format!(
                        "'{}' is not a forwardable protocol; expected tcp or udp",
                        show(&p)
                    ),
                );
                None
            }
        });
    }
    let port = o
        .required(cx, "port", "the port on the host to forward")
        .and_then(|pf| int_in(cx, &pf, "a port between 1 and 65535", 1, 65535));
    let to = o
        .required(cx, "to", "the VM that receives the traffic")
        .and_then(|tf| text(cx, &tf, "a VM name").map(|t| (t, tf.loc())));
    let to_port = match o.get(cx, "to_port") {
        Some(tf) => int_in(cx, &tf, "a port between 1 and 65535", 1, 65535),
        None => port,
    };
    let (to, to_loc) = to?;
    Some(ForwardDraft {
        path: f.path.clone(),
        proto: proto?,
        port: u16::try_from(port?).ok()?,
        to,
        to_loc,
        to_port: u16::try_from(to_port?).ok()?,
    })
}

fn check_gateway(c: Ipv4Cidr) -> Result<(), String> {
    if let Some(what) = special(c.addr) {
        return Err(format!(
            "{} is {what}; pick a private subnet such as 192.168.122.1/24",
            c.addr
        ));
    }
    if c.prefix >= 31 {
        return Err(format!(
            "a /{} subnet leaves no room for guests; nat, routed and isolated networks need /30 or shorter, like {}/24",
            c.prefix, c.addr
        ));
    }
    if c.prefix < 8 {
        return Err(format!(
            "a /{} subnet is far larger than any VM network needs and would capture other traffic; use /8 or longer",
            c.prefix
        ));
    }
    if c.addr == c.network().addr {
        return Err(format!(
            "{c} has no host bits: the gateway needs a host address like {}",
            host_hint(c)
        ));
    }
    if c.addr == c.broadcast() {
        return Err(format!(
            "{c} is the subnet's broadcast address: the gateway needs a host address like {}",
            host_hint(c)
        ));
    }
    Ok(())
}

/// Checks an address that must be a usable host address in `net` (gateway `net.addr`).
fn check_in_subnet(a: Ipv4Addr, net: Ipv4Cidr, role: &str) -> Result<(), String> {
    let subnet = net.network();
    if !net.contains(a) {
        return Err(format!(
            "{role} {a} is outside the network's subnet {subnet}"
        ));
    }
    if a == subnet.addr {
        return Err(format!("{role} {a} is the network address of {subnet}"));
    }
    if a == net.broadcast() {
        return Err(format!("{role} {a} is the broadcast address of {subnet}"));
    }
    Ok(())
}

fn read_dhcp(cx: &mut Ctx, f: &Field, subnet: Option<Ipv4Cidr>) -> Option<Dhcp> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        DHCP_FIELDS,
        "a mapping of DHCP settings (use {} for defaults)",
    )?;
    let mut ok = true;
    let mut dhcp = Dhcp {
        range: None,
        pool: true,
        lease_time_secs: LEASE_DEFAULT,
        dns: Vec::new(),
        domain: None,
        routes: Vec::new(),
    };

    if let Some(rf) = o.get(cx, "range") {
        ok &= (|| {
            let t = text(cx, &rf, "an address range like 192.168.122.100-192.168.122.254")?;
            let r = parse_range(&t).and_then(|(a, b)| {
                if let Some(net) = subnet {
                    check_in_subnet(a, net, "range start")?;
                    check_in_subnet(b, net, "range end")?;
                    if (a..=b).contains(&net.addr) {
                        return Err(format!(
                            "the range {a}-{b} contains the gateway {}; keep the gateway out of the pool",
                            net.addr
                        ));
                    }
                }
                Ok((a, b))
            });
            match r {
                Ok(r) => {
                    dhcp.range = Some(r);
                    Some(())
                }
                Err(m) => {
                    cx.err(&rf.path, rf.loc(), m);
                    None
                }
            }
        })()
        .is_some();
    }

    if let Some(pf) = o.get(cx, "pool") {
        match boolean(cx, &pf) {
            Some(b) => dhcp.pool = b,
            None => ok = false,
        }
    }

    if let Some(lf) = o.get(cx, "lease_time") {
        match parse_duration(&lf) {
            Ok(s) if s < LEASE_MIN => {
                cx.err(
                    &lf.path,
                    lf.loc(),
                    format!("a lease of {s}s is too short; use at least 60s"),
                );
                ok = false;
            }
            Ok(s) if s > u64::from(u32::MAX - 1) => {
                cx.err(
                    &lf.path,
                    lf.loc(),
                    format!("a lease of {s}s is longer than DHCP can express (136 years)"),
                );
                ok = false;
            }
            Ok(s) => dhcp.lease_time_secs = s,
            Err(m) => {
                if !matches!(lf.node.kind, Kind::Bad) {
                    cx.err(&lf.path, lf.loc(), m);
                }
                ok = false;
            }
        }
    }

    if let Some(df) = o.get(cx, "dns") {
        match list(cx, &df, "a list of IPv4 addresses") {
            Some(items) => {
                for item in items {
                    let Some(t) = text(cx, &item, "an IPv4 address") else {
                        ok = false;
                        continue;
                    };
                    match parse_ip(&t).and_then(|a| match special(a) {
                        Some(w) if !a.is_loopback() => Err(format!("DNS server {a} is {w}")),
                        _ if a.is_unspecified() => Err(format!("DNS server {a} is unspecified")),
                        _ => Ok(a),
                    }) {
                        Ok(a) => dhcp.dns.push(a),
                        Err(m) => {
                            cx.err(&item.path, item.loc(), m);
                            ok = false;
                        }
                    }
                }
            }
            None => ok = false,
        }
    }

    if let Some(nf) = o.get(cx, "domain") {
        match text(cx, &nf, "a DNS domain name like example.test") {
            Some(t) => match check_domain(&t) {
                Ok(()) => dhcp.domain = Some(t),
                Err(m) => {
                    cx.err(&nf.path, nf.loc(), m);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }

    if let Some(rf) = o.get(cx, "routes") {
        match list(cx, &rf, "a list of routes ({ to: NET/LEN, via: ADDR })") {
            Some(items) => {
                for item in items {
                    match read_route(cx, &item, subnet) {
                        Some(r) => dhcp.routes.push(r),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(dhcp)
}

fn parse_range(t: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let Some((a, b)) = t.split_once('-') else {
        return Err(format!(
            "'{}' is not an address range; expected START-END like 192.168.122.100-192.168.122.254",
            show(t)
        ));
    };
    let a = parse_ip(a)?;
    let b = parse_ip(b)?;
    if a > b {
        return Err(format!(
            "the range {a}-{b} is backwards; its start must not be after its end"
        ));
    }
    Ok((a, b))
}

fn read_route(cx: &mut Ctx, f: &Field, subnet: Option<Ipv4Cidr>) -> Option<DhcpRoute> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        ROUTE_FIELDS,
        "a route (a mapping with to and via)",
    )?;
    let to = o.required(cx, "to", "give the destination network, like 10.9.0.0/16");
    let via = o.required(cx, "via", "give the router's address inside the subnet");
    let to = to.and_then(|tf| {
        let t = text(cx, &tf, "a destination network like 10.9.0.0/16")?;
        let r = parse_cidr(&t).and_then(|c| {
            if c.addr != c.network().addr {
                Err(format!(
                    "{c} has host bits set; a route destination is a network address like {}",
                    c.network()
                ))
            } else {
                Ok(c)
            }
        });
        r.map_err(|m| cx.err(&tf.path, tf.loc(), m)).ok()
    });
    let via = via.and_then(|vf| {
        let t = text(cx, &vf, "the router's IPv4 address")?;
        let r = parse_ip(&t).and_then(|a| match subnet {
            Some(net) => check_in_subnet(a, net, "router").map(|()| a),
            None => Ok(a),
        });
        r.map_err(|m| cx.err(&vf.path, vf.loc(), m)).ok()
    });
    Some(DhcpRoute { to: to?, via: via? })
}

/// What a port needs to know about its network.
struct NetRef {
    mode: Option<Mode>,
    ipv4: Option<Ipv4Cidr>,
}

fn read_vm(
    cx: &mut Ctx,
    key: &Key,
    f: &Field,
    nets: Option<&[NetDraft]>,
    ports: &mut Vec<PortDraft>,
) {
    let name_ok = match check_entity_name(&key.text, "VM") {
        Ok(()) => true,
        Err(m) => {
            cx.err(&f.path, key.loc, m);
            false
        }
    };
    let Some(o) = obj(
        cx,
        f.node,
        &f.path,
        VM_FIELDS,
        "a VM (a mapping with ports)",
    ) else {
        return;
    };
    let Some(pf) = o.required(cx, "ports", "list the VM's ports (ports: [] for none)") else {
        return;
    };
    let Some(items) = list(cx, &pf, "a list of ports") else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        if let Some(p) = read_port(cx, &key.text, name_ok, i, item, nets) {
            ports.push(p);
        }
    }
}

fn read_port(
    cx: &mut Ctx,
    vm: &str,
    vm_ok: bool,
    index: usize,
    f: &Field,
    nets: Option<&[NetDraft]>,
) -> Option<PortDraft> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        PORT_FIELDS,
        "a port (a mapping with network and its settings)",
    )?;
    let mut d = PortDraft {
        path: f.path.clone(),
        vm: vm.to_string(),
        index,
        network: None,
        name: None,
        name_loc: f.loc(),
        name_derived: false,
        kind: Some(PortKind::Tap),
        mac: None,
        mac_loc: f.loc(),
        mac_derived: false,
        ipv4: None,
        ipv4_loc: f.loc(),
        owner: None,
        queues: 1,
        netns: None,
        antispoof: true,
        dhcp_client: false,
        firewall: None,
        qos: None,
        mirror: None,
        ethtool: None,
        vlans: Vec::new(),
    };

    let mut net: Option<NetRef> = None;
    if let Some(nf) = o.required(cx, "network", "name the network this port joins")
        && let Some(n) = text(cx, &nf, "a network name")
    {
        match nets {
            Some(nets) => match nets.iter().find(|x| x.name == n) {
                Some(x) => {
                    net = Some(NetRef {
                        mode: x.mode,
                        ipv4: x.ipv4,
                    });
                    d.network = Some(n);
                }
                None => {
                    let known: Vec<&str> = nets.iter().map(|x| x.name.as_str()).collect();
                    let hint = if known.is_empty() {
                        "no networks are defined under networks".to_string()
                    } else {
                        format!("defined networks: {}", known.join(", "))
                    };
                    cx.err(
                        &nf.path,
                        nf.loc(),
                        format!("unknown network '{}'; {hint}", show(&n)),
                    );
                }
            },
            None => d.network = Some(n),
        }
    }

    if let Some(nf) = o.get(cx, "name") {
        d.name_loc = nf.loc();
        d.name = read_ifname_field(cx, &nf, "an interface name");
    } else if vm_ok {
        d.name = Some(naming::port_name(vm, index));
        d.name_derived = true;
    }

    let direct = net.as_ref().is_some_and(|n| n.mode == Some(Mode::Direct));
    if direct {
        d.kind = Some(PortKind::Macvtap);
        // Nothing on a direct port goes through a bridge, so the bridge-based guard has
        // nothing to hook into (see the README).
        d.antispoof = false;
    }
    if let Some(kf) = o.get(cx, "kind") {
        let k = text(cx, &kf, "tap, veth or macvtap").and_then(|k| match k.as_str() {
            "tap" => Some(PortKind::Tap),
            "veth" => Some(PortKind::Veth),
            "macvtap" => Some(PortKind::Macvtap),
            _ => {
                cx.err(
                    &kf.path,
                    kf.loc(),
                    format!(
                        "'{}' is not a port kind; expected tap, veth or macvtap",
                        show(&k)
                    ),
                );
                None
            }
        });
        match k {
            Some(PortKind::Macvtap) if !direct && net.is_some() => {
                cx.err(
                    &kf.path,
                    kf.loc(),
                    "macvtap ports exist only on direct networks (mode: direct); use tap or veth here",
                );
                d.kind = None;
            }
            Some(k @ (PortKind::Tap | PortKind::Veth)) if direct => {
                cx.err(
                    &kf.path,
                    kf.loc(),
                    format!(
                        "a port on direct network {} is a macvtap device on its uplink, not a {}; remove kind (or write kind: macvtap)",
                        d.network.as_deref().unwrap_or(""),
                        if k == PortKind::Tap { "tap" } else { "veth" }
                    ),
                );
                d.kind = None;
            }
            k if !direct => d.kind = k,
            _ => {}
        }
    }

    if let Some(mf) = o.get(cx, "mac") {
        d.mac_loc = mf.loc();
        if let Some(t) = text(cx, &mf, "a MAC address like 52:54:00:12:34:56") {
            match parse_mac(&t).and_then(check_vm_mac) {
                Ok(m) => d.mac = Some(m),
                Err(m) => cx.err(&mf.path, mf.loc(), m),
            }
        }
    } else if d.name.is_some() && vm_ok {
        // Given out once the whole spec is read (see `super::macs`).
        d.mac_derived = true;
    }

    if let Some(af) = o.get(cx, "ipv4") {
        d.ipv4_loc = af.loc();
        if let Some(t) = text(cx, &af, "an IPv4 address") {
            match port_ipv4(&t, net.as_ref(), d.network.as_deref().unwrap_or("")) {
                Ok(a) => d.ipv4 = a,
                Err(m) => cx.err(&af.path, af.loc(), m),
            }
        }
    }

    let kind = d.kind;
    if kind == Some(PortKind::Macvtap) {
        // What a macvtap port cannot do, field by field, each with its reason.
        let refuse: [(&str, &str); 5] = [
            (
                "queues",
                "a macvtap port needs no queues setting: QEMU opens /dev/tapN once per queue (remove it)",
            ),
            (
                "firewall",
                "a port on a direct network cannot have a firewall: its traffic never passes through the host's IP or bridge hooks (use a bridge network, or filter in the guest)",
            ),
            (
                "qos",
                "qos is not supported on direct (macvtap) ports in this version; use a bridge network for shaped ports",
            ),
            (
                "mirror",
                "mirror is not supported on direct (macvtap) ports in this version; use a bridge network",
            ),
            (
                "dhcp_client",
                "dhcp_client applies only to veth ports; a VM on a macvtap runs its own DHCP client (remove it)",
            ),
        ];
        for (key, why) in refuse {
            if let Some(f) = o.get(cx, key) {
                cx.err(&f.path, f.loc(), why);
            }
        }
        if let Some(af) = o.get(cx, "antispoof")
            && boolean(cx, &af) == Some(true)
        {
            cx.err(
                &af.path,
                af.loc(),
                "anti-spoofing is not enforced on direct (macvtap) ports: their frames never cross a bridge kvmnet guards; remove antispoof (or use a bridge network)",
            );
        }
    }
    if let Some(of) = o.get(cx, "owner") {
        if kind == Some(PortKind::Veth) {
            cx.err(
                &of.path,
                of.loc(),
                "owner applies only to tap ports; a veth port has no owner (remove it)",
            );
        } else {
            d.owner = read_owner(cx, &of);
        }
    }
    if let Some(qf) = o.get(cx, "queues")
        && kind != Some(PortKind::Macvtap)
    {
        if kind == Some(PortKind::Veth) {
            cx.err(
                &qf.path,
                qf.loc(),
                "queues applies only to tap ports; a veth port has no queues setting (remove it)",
            );
        } else if let Some(q) = int_in(
            cx,
            &qf,
            &format!("a queue count between 1 and {QUEUES_MAX}"),
            1,
            QUEUES_MAX,
        ) {
            d.queues = u32::try_from(q).unwrap_or(1);
        }
    }
    if let Some(af) = o.get(cx, "antispoof")
        && kind != Some(PortKind::Macvtap)
        && let Some(b) = boolean(cx, &af)
    {
        d.antispoof = b;
    }
    if let Some(cf) = o.get(cx, "dhcp_client")
        && kind != Some(PortKind::Macvtap)
    {
        if kind == Some(PortKind::Tap) {
            cx.err(
                &cf.path,
                cf.loc(),
                "dhcp_client applies only to veth ports; a VM behind a tap runs its own DHCP client (remove it)",
            );
        } else if let Some(b) = boolean(cx, &cf) {
            d.dhcp_client = b;
        }
    }
    if let Some(ff) = o.get(cx, "firewall")
        && kind != Some(PortKind::Macvtap)
    {
        // The port is found by its interface: neither an address nor the guard is needed.
        d.firewall = read_firewall(cx, &ff);
    }
    if let Some(qf) = o.get(cx, "qos")
        && kind != Some(PortKind::Macvtap)
    {
        d.qos = read_qos(cx, &qf);
    }
    if let Some(mf) = o.get(cx, "mirror")
        && kind != Some(PortKind::Macvtap)
        && let Some(m) = read_ifname_field(cx, &mf, "the name of the port that receives the copy")
    {
        d.mirror = Some((m, mf.loc(), mf.path.clone()));
    }
    if let Some(ef) = o.get(cx, "ethtool") {
        d.ethtool = read_ethtool(cx, &ef);
    }
    if let Some(vf) = o.get(cx, "vlans") {
        match net.as_ref().and_then(|n| n.mode) {
            Some(m) if m != Mode::Vlan => cx.err(
                &vf.path,
                vf.loc(),
                format!(
                    "vlans (a trunk port) applies only to ports of vlan networks; network {} is mode {} (remove vlans)",
                    d.network.as_deref().unwrap_or(""),
                    m.as_str()
                ),
            ),
            _ => {
                if let Some(items) = list(cx, &vf, "a list of VLAN ids, like [10, 20]") {
                    for item in items {
                        let Some(id) = int_in(
                            cx,
                            &item,
                            &format!("a VLAN id between 1 and {VLAN_ID_MAX}"),
                            1,
                            i128::from(VLAN_ID_MAX),
                        )
                        .and_then(|n| u16::try_from(n).ok()) else {
                            continue;
                        };
                        if let Some((_, _, first)) = d.vlans.iter().find(|v| v.0 == id) {
                            cx.err(
                                &item.path,
                                item.loc(),
                                format!("VLAN {id} is already listed at {first}"),
                            );
                            continue;
                        }
                        d.vlans.push((id, item.loc(), item.path.clone()));
                    }
                }
            }
        }
    }
    match (o.get(cx, "netns"), kind) {
        (Some(nf), Some(PortKind::Tap)) => {
            cx.err(
                &nf.path,
                nf.loc(),
                "netns applies only to veth ports; a tap port is opened by QEMU (use kind: veth, or remove netns)",
            );
        }
        (Some(nf), Some(PortKind::Macvtap)) => {
            cx.err(
                &nf.path,
                nf.loc(),
                "netns applies only to veth ports; a macvtap port is opened by QEMU through /dev/tapN (remove netns)",
            );
        }
        (Some(nf), _) => {
            if let Some(n) = text(cx, &nf, "a network namespace name") {
                match check_netns(&n) {
                    Ok(()) => d.netns = Some(n),
                    Err(m) => cx.err(&nf.path, nf.loc(), m),
                }
            }
        }
        (None, Some(PortKind::Veth)) => {
            cx.err(
                &join(&f.path, "netns"),
                o.loc,
                "missing required field 'netns'; a veth port needs the network namespace that receives its far end",
            );
        }
        (None, _) => {}
    }
    Some(d)
}

fn check_vm_mac(m: Mac) -> Result<Mac, String> {
    if m.is_zero() {
        return Err(format!(
            "{m} is the all-zero MAC address; give a unicast address like 52:54:00:12:34:56"
        ));
    }
    if m.is_multicast() {
        return Err(format!(
            "{m} is a multicast address (lowest bit of the first octet set); a NIC needs a unicast address like 52:54:00:12:34:56"
        ));
    }
    if m.0[0] == 0xfe {
        return Err(format!(
            "{m} starts with fe:, which kvmnet reserves for the host end of ports; use another prefix like 52:54:00"
        ));
    }
    Ok(m)
}

fn port_ipv4(t: &str, net: Option<&NetRef>, net_name: &str) -> Result<Option<Ipv4Cidr>, String> {
    let with_prefix = t.contains('/');
    let parsed = if with_prefix {
        parse_cidr(t)?
    } else {
        Ipv4Cidr::new(parse_ip(t)?, 32)
    };
    if let Some(w) = special(parsed.addr) {
        return Err(format!("{} is {w}", parsed.addr));
    }
    let Some(net) = net else {
        return Ok(None);
    };
    match (net.mode, net.ipv4) {
        (Some(m @ (Mode::Bridge | Mode::Direct)), _)
        | (Some(m @ (Mode::Vxlan | Mode::Vlan)), None) => {
            if !with_prefix {
                return Err(format!(
                    "on {} network {net_name} there is no subnet to take a prefix from; write the address with its prefix, like {}/24",
                    m.as_str(),
                    parsed.addr
                ));
            }
            if parsed.prefix <= 30 {
                if parsed.addr == parsed.network().addr {
                    return Err(format!(
                        "{parsed} has no host bits: it is the network address; give the guest's own address"
                    ));
                }
                if parsed.addr == parsed.broadcast() {
                    return Err(format!(
                        "{parsed} is the broadcast address of its subnet; give the guest's own address"
                    ));
                }
            }
            Ok(Some(parsed))
        }
        (Some(_), Some(gw)) => {
            if with_prefix && parsed.prefix != gw.prefix {
                return Err(format!(
                    "the prefix /{} differs from network {net_name}'s /{}; write the bare address {}",
                    parsed.prefix, gw.prefix, parsed.addr
                ));
            }
            let a = parsed.addr;
            if a == gw.addr {
                return Err(format!(
                    "{a} is the gateway of network {net_name}; give the guest another address in {}",
                    gw.network()
                ));
            }
            check_in_subnet(a, gw, "address")?;
            Ok(Some(Ipv4Cidr::new(a, gw.prefix)))
        }
        _ => Ok(None),
    }
}

fn read_owner(cx: &mut Ctx, f: &Field) -> Option<Owner> {
    let Kind::Scalar(s) = &f.node.kind else {
        if !matches!(f.node.kind, Kind::Bad) {
            cx.err(
                &f.path,
                f.loc(),
                format!(
                    "expected a user name or a numeric uid, found {}",
                    f.node.describe()
                ),
            );
        }
        return None;
    };
    if s.is_null() {
        cx.err(
            &f.path,
            f.loc(),
            "missing value; expected a user name or a numeric uid",
        );
        return None;
    }
    if s.as_bool().is_some() || (s.as_int().is_none() && s.looks_like_float()) {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "expected a user name or a numeric uid, found {}",
                f.node.describe()
            ),
        );
        return None;
    }
    // A quoted all-digit owner is a uid too: useradd refuses all-digit user names.
    let digits = !s.text.is_empty() && s.text.bytes().all(|b| b.is_ascii_digit());
    if s.as_int().is_some() || digits {
        return match s.text.trim_start_matches('+').parse::<u32>() {
            Ok(n) if n < u32::MAX => Some(Owner::Uid(n)),
            _ => {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!(
                        "{} is not a valid uid; expected 0 to {}",
                        show(&s.text),
                        u32::MAX - 1
                    ),
                );
                None
            }
        };
    }
    match check_user(&s.text) {
        Ok(()) => Some(Owner::User(s.text.clone())),
        Err(m) => {
            cx.err(&f.path, f.loc(), m);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Second pass: rules across the whole spec

fn cross_checks(cx: &mut Ctx, nets: &[NetDraft], ports: &[PortDraft], sysctl: Option<&Sysctl>) {
    check_floors(cx, nets, ports);
    check_bridge_ports(cx, nets, ports);
    // Every interface kvmnet creates needs a unique name.
    struct Created<'a> {
        name: std::borrow::Cow<'a, str>,
        loc: Loc,
        path: LazyPath<'a>,
        what: What<'a>,
        derived: bool,
    }
    impl CreatedName for Created<'_> {
        fn created_as(&self, name: &str) -> Option<String> {
            (self.name == name).then(|| self.what.to_string())
        }
    }
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
    // One vlan network per VLAN of an uplink; each sub-interface is an interface kvmnet makes.
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
    // A trunk port's VLANs: each one served by a vlan network on its own network's uplink.
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
    // One VNI per UDP port on a host: the kernel refuses a second device for it.
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
    for p in ports {
        if let Some(name) = &p.name {
            created.push(Created {
                name: name.as_str().into(),
                loc: p.name_loc,
                path: LazyPath::Join(&p.path, "name"),
                what: What::Port(p.index, &p.vm),
                derived: p.name_derived,
            });
        }
    }
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

    // Uplinks: existing host interfaces, never one kvmnet creates, each enslaved once.
    let mut uplinks: Vec<(&str, Loc, &NetDraft)> = nets
        .iter()
        .filter(|n| n.mode != Some(Mode::Direct))
        .filter_map(|n| n.uplink.as_ref().map(|(u, l)| (u.as_str(), *l, n)))
        .collect();
    uplinks.sort_by_key(|u| u.1);
    let mut seen_uplink: HashMap<&str, &NetDraft> = HashMap::new();
    for (u, loc, n) in &uplinks {
        let path = join(&n.path, "uplink");
        if let Some(c) = created.iter().find(|c| c.name == *u) {
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

    direct_checks(cx, nets, ports, &created, &seen_uplink);
    for n in nets {
        let Some(v) = &n.vlan else { continue };
        if let Some(c) = created.iter().find(|c| c.name == v.uplink) {
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

    // NAT egress: a host interface the traffic really leaves through.
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
        } else if let Some(c) = created
            .iter()
            .find(|c| c.name == e.as_str() && c.path.get().starts_with("vms"))
        {
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

    // MACs: guests' and bridges' addresses must all differ.
    let mut macs: Vec<(Mac, Loc, LazyPath, What, bool)> =
        Vec::with_capacity(nets.len() + ports.len());
    for n in nets {
        if check_entity_name(&n.name, "network").is_ok() && n.mode != Some(Mode::Direct) {
            macs.push((
                naming::bridge_mac(&n.name),
                n.key_loc,
                LazyPath::Plain(&n.path),
                What::Bridge(&n.name),
                true,
            ));
        }
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

    // Port addresses: unique within a network.
    let mut addrs: Vec<&PortDraft> = ports.iter().filter(|p| p.ipv4.is_some()).collect();
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

    // Subnets of nat/routed/isolated networks must not overlap.
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

    // A mirror copies to another port of the spec.
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

    // A forward needs a VM with an address on its network.
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

    // Forwarding: nat and routed networks need it.
    if let Some((values, where_)) = sysctl {
        let needs: Vec<String> = nets
            .iter()
            .filter(|n| matches!(n.mode, Some(Mode::Nat | Mode::Routed)))
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

/// `qos.floor` guarantees are shares of their network's `bandwidth`: the network must declare
/// one, and the floors on it must fit in it.
/// Ports a Linux bridge can hold: port numbers are 10 bits and 0 is reserved
/// (`BR_MAX_PORTS` in the kernel's `br_private.h`). One more is refused with EXFULL in the
/// middle of an apply.
pub const BRIDGE_MAX_PORTS: usize = 1023;

/// Refuses, at the first port over the limit, a network whose bridge would hold more ports
/// than the kernel allows: its uplink, VLAN or VXLAN device, its ports that carry it
/// untagged, and the trunk sub-interfaces of other ports that tag it.
fn check_bridge_ports(cx: &mut Ctx, nets: &[NetDraft], ports: &[PortDraft]) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for n in nets.iter().filter(|n| n.bridge.is_some()) {
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

fn check_floors(cx: &mut Ctx, nets: &[NetDraft], ports: &[PortDraft]) {
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
                Some(Mode::Nat | Mode::Routed | Mode::Isolated) | None => format!(
                    "a floor is a share of its network's bandwidth; set networks.{}.bandwidth (the total rate the host sends into the network, like 1gbit)",
                    net.name
                ),
                Some(m) => format!(
                    "floors apply on nat, routed and isolated networks, where the host routes traffic into the network; on network {} ({}) traffic to the VMs is switched past the host",
                    net.name,
                    m.as_str()
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
    ports: &[PortDraft],
    created: &[impl CreatedName],
    bridged: &HashMap<&str, &NetDraft>,
) {
    let mut direct: Vec<&NetDraft> = nets
        .iter()
        .filter(|n| n.mode == Some(Mode::Direct) && n.uplink.is_some())
        .collect();
    direct.sort_by_key(|n| n.uplink.as_ref().map(|u| u.1));
    for (i, n) in direct.iter().enumerate() {
        let Some((u, loc)) = &n.uplink else { continue };
        let path = join(&n.path, "uplink");
        if let Some(what) = created.iter().find_map(|c| c.created_as(u)) {
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

/// A rate in the largest unit that divides it: 1gbit, 250mbit, 1500kbit, 12bit.
pub fn show_rate(bps: u64) -> String {
    for (unit, scale) in [
        ("tbit", 1_000_000_000_000),
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bps >= scale && bps.is_multiple_of(scale) {
            return format!("{}{unit}", bps / scale);
        }
    }
    format!("{bps}bit")
}

/// What an interface kvmnet creates is, for messages; written out only for an error.
#[derive(Clone, Copy)]
enum What<'a> {
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
enum LazyPath<'a> {
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
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.get().cmp(&other.get())
    }
}

/// Lets the direct-network checks look at the names the spec creates without knowing the
/// first pass's local types.
trait CreatedName {
    fn created_as(&self, name: &str) -> Option<String>;
}

// ---------------------------------------------------------------------------------------

fn build(
    cx: &mut Ctx,
    version: u32,
    sysctl: Option<Sysctl>,
    nets: Vec<NetDraft>,
    ports: Vec<PortDraft>,
    vm_names: Vec<String>,
) -> Option<Spec> {
    // (uplink, VLAN id) -> the vlan network serving it; network -> its uplink.
    let vlan_nets: HashMap<(String, u16), String> = nets
        .iter()
        .filter_map(|n| {
            let v = n.vlan.as_ref()?;
            Some(((v.uplink.clone(), v.id), n.name.clone()))
        })
        .collect();
    let net_uplink: HashMap<String, String> = nets
        .iter()
        .filter_map(|n| Some((n.name.clone(), n.vlan.as_ref()?.uplink.clone())))
        .collect();
    let mut networks = BTreeMap::new();
    for n in nets {
        if n.mode == Some(Mode::Vxlan) && n.vxlan.is_none() {
            return None;
        }
        if n.mode == Some(Mode::Vlan) && n.vlan.is_none() {
            return None;
        }
        let network = Network {
            mode: n.mode?,
            bridge: n.bridge?,
            ipv4: n.ipv4,
            mtu: n.mtu,
            uplink: n.uplink.map(|u| u.0),
            nat_egress: n.egress.map(|e| e.0),
            dhcp: n.dhcp,
            isolate_ports: n.isolate_ports,
            vxlan: n.vxlan.clone(),
            vlan: n.vlan.clone(),
            bandwidth_bps: n.bandwidth.map(|b| b.0),
            direct_mode: n.direct_mode.map(|m| m.0),
            host_access: n.host_access.clone(),
            ipv6_prefixes: n.ipv6_prefixes.clone(),
            forwards: n
                .forwards
                .iter()
                .map(|f| {
                    let to_ip = ports
                        .iter()
                        .find(|p| {
                            p.vm == f.to
                                && p.network.as_deref() == Some(n.name.as_str())
                                && p.ipv4.is_some()
                        })
                        .and_then(|p| p.ipv4)
                        .map(|a| a.addr)?;
                    Some(Forward {
                        proto: f.proto,
                        port: f.port,
                        to: f.to.clone(),
                        to_ip,
                        to_port: f.to_port,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
            name: n.name,
        };
        networks.insert(network.name.clone(), network);
    }
    // Each VM's list made at its size: thousands of VMs, most with a port or two.
    let mut counts: HashMap<&str, usize> = HashMap::with_capacity(vm_names.len());
    for p in &ports {
        *counts.entry(p.vm.as_str()).or_default() += 1;
    }
    let mut vms: BTreeMap<String, Vm> = vm_names
        .into_iter()
        .map(|name| {
            let ports = Vec::with_capacity(counts.get(name.as_str()).copied().unwrap_or(0));
            (name.clone(), Vm { name, ports })
        })
        .collect();
    for p in ports {
        let name = p.name?;
        let network = p.network?;
        let mut trunk = Vec::new();
        for (vid, _, _) in &p.vlans {
            let uplink = net_uplink.get(&network)?;
            trunk.push(Trunk {
                vid: *vid,
                network: vlan_nets.get(&(uplink.clone(), *vid))?.clone(),
                device: naming::trunk_vlan_name(&name, *vid),
            });
        }
        let port = Port {
            trunk,
            network,
            name,
            kind: p.kind?,
            // A derived MAC is given out once the spec is built.
            mac: if p.mac_derived {
                Mac::default()
            } else {
                p.mac?
            },
            mac_derived: p.mac_derived,
            ipv4: p.ipv4,
            owner: p.owner,
            queues: p.queues,
            netns: p.netns,
            antispoof: p.antispoof,
            dhcp_client: p.dhcp_client,
            firewall: p.firewall,
            qos: p.qos,
            mirror: p.mirror.map(|m| m.0),
            ethtool: p.ethtool,
            index: p.index,
            vm: p.vm,
        };
        vms.get_mut(&port.vm)?.ports.push(port);
    }
    Some(Spec {
        version,
        host: Host {
            sysctl: sysctl.map(|s| s.0).unwrap_or_default(),
            tuning: None,
            ethtool: BTreeMap::new(),
            uplinks: BTreeMap::new(),
        },
        networks,
        vms,
        locs: LocMap::new(
            std::mem::take(&mut cx.locs).into_iter().collect(),
            std::mem::take(&mut cx.parts),
        ),
        identity: Default::default(),
    })
}

// ---------------------------------------------------------------------------------------
// ethtool settings

/// An `ethtool` mapping (offloads, rings, channels) of a port or a host interface; `None` if
/// any of it is wrong (each problem reported at its line).
fn read_ethtool(cx: &mut Ctx, f: &Field) -> Option<Ethtool> {
    let before = cx.errors.len();
    let o = obj(
        cx,
        f.node,
        &f.path,
        ETHTOOL_FIELDS,
        "a mapping with offloads, rings and channels",
    )?;
    let mut settings = BTreeMap::new();
    if let Some(of) = o.get(cx, "offloads")
        && let Some(oo) = obj(
            cx,
            of.node,
            &of.path,
            OFFLOAD_FIELDS,
            "a mapping of offloads to true or false, like { tso: false }",
        )
    {
        for key in OFFLOAD_FIELDS {
            if let Some(kf) = oo.get(cx, key)
                && let Some(b) = boolean(cx, &kf)
            {
                settings.insert(key.to_string(), u32::from(b));
            }
        }
    }
    for (group, fields, max) in [
        ("rings", RING_FIELDS, RING_MAX),
        ("channels", CHANNEL_FIELDS, CHANNEL_MAX),
    ] {
        let Some(gf) = o.get(cx, group) else { continue };
        let what = format!("a mapping with {}", fields.join(", "));
        let Some(go) = obj(cx, gf.node, &gf.path, fields, &what) else {
            continue;
        };
        for key in fields {
            if let Some(kf) = go.get(cx, key)
                && let Some(n) = int_in(
                    cx,
                    &kf,
                    &format!("a {group} count between 1 and {max}"),
                    1,
                    max,
                )
            {
                settings.insert(format!("{group}.{key}"), n as u32);
            }
        }
    }
    (cx.errors.len() == before).then(|| Ethtool {
        settings,
        path: f.path.clone(),
    })
}

// ---------------------------------------------------------------------------------------
// Per-port firewall

const FIREWALL_FIELDS: &[&str] = &["inbound", "outbound"];
const DIRECTION_FIELDS: &[&str] = &["policy", "rules"];
const RULE_FIELDS: &[&str] = &[
    "proto",
    "ports",
    "from",
    "to",
    "icmp_types",
    "connlimit",
    "rate",
    "action",
    "log",
];
const ICMP_TYPES: &[&str] = &[
    "echo-reply",
    "destination-unreachable",
    "source-quench",
    "redirect",
    "echo-request",
    "router-advertisement",
    "router-solicitation",
    "time-exceeded",
    "parameter-problem",
    "timestamp-request",
    "timestamp-reply",
    "info-request",
    "info-reply",
    "address-mask-request",
    "address-mask-reply",
];

fn read_firewall(cx: &mut Ctx, f: &Field) -> Option<Firewall> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        FIREWALL_FIELDS,
        "a firewall (a mapping with inbound and/or outbound)",
    )?;
    let mut fw = Firewall::default();
    let mut ok = true;
    for (name, slot) in [("inbound", &mut fw.inbound), ("outbound", &mut fw.outbound)] {
        if let Some(df) = o.get(cx, name) {
            match read_direction(cx, &df) {
                Some(d) => *slot = Some(d),
                None => ok = false,
            }
        }
    }
    ok.then_some(fw)
}

fn read_direction(cx: &mut Ctx, f: &Field) -> Option<FirewallDirection> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        DIRECTION_FIELDS,
        "a direction (a mapping with policy and rules)",
    )?;
    let mut d = FirewallDirection {
        accept_by_default: true,
        rules: Vec::new(),
    };
    let mut ok = true;
    if let Some(pf) = o.get(cx, "policy") {
        match text(cx, &pf, "accept or drop").as_deref() {
            Some("accept") => d.accept_by_default = true,
            Some("drop") => d.accept_by_default = false,
            Some(p) => {
                cx.err(
                    &pf.path,
                    pf.loc(),
                    format!("'{}' is not a policy; expected accept or drop", show(p)),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(rf) = o.get(cx, "rules") {
        match list(cx, &rf, "a list of rules") {
            Some(items) => {
                for item in items {
                    match read_rule(cx, &item) {
                        Some(r) => d.rules.push(r),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(d)
}

fn read_port_range(cx: &mut Ctx, f: &Field) -> Option<(u16, u16)> {
    let t = text(cx, f, "a port or a range like 8000-8100")?;
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let r = match t.split_once('-') {
        Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a <= b),
        None => parse(&t).map(|p| (p, p)),
    };
    if r.is_none() {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "'{}' is not a port (1-65535) or a range low-high like 8000-8100",
                show(&t)
            ),
        );
    }
    r
}

fn read_rule(cx: &mut Ctx, f: &Field) -> Option<FirewallRule> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        RULE_FIELDS,
        "a rule (a mapping with proto, ports, from, to, action, ...)",
    )?;
    let errors_before = cx.errors.len();
    let mut r = FirewallRule {
        proto: RuleProto::Any,
        ports: Vec::new(),
        from: None,
        to: None,
        icmp_types: Vec::new(),
        connlimit: None,
        rate: None,
        action: RuleAction::Accept,
        log: false,
    };
    if let Some(pf) = o.get(cx, "proto") {
        match text(cx, &pf, "tcp, udp, icmp or any").as_deref() {
            Some("tcp") => r.proto = RuleProto::Tcp,
            Some("udp") => r.proto = RuleProto::Udp,
            Some("icmp") => r.proto = RuleProto::Icmp,
            Some("any") => r.proto = RuleProto::Any,
            Some(p) => cx.err(
                &pf.path,
                pf.loc(),
                format!(
                    "'{}' is not a protocol; expected tcp, udp, icmp or any",
                    show(p)
                ),
            ),
            None => {}
        }
    }
    if let Some(pf) = o.get(cx, "ports") {
        if !matches!(r.proto, RuleProto::Tcp | RuleProto::Udp) {
            cx.err(&pf.path, pf.loc(), "ports need proto: tcp or proto: udp");
        } else if let Some(items) = list(cx, &pf, "a list of ports") {
            for item in items {
                if let Some(p) = read_port_range(cx, &item) {
                    r.ports.push(p);
                }
            }
        }
    }
    for (name, slot) in [("from", &mut r.from), ("to", &mut r.to)] {
        if let Some(af) = o.get(cx, name)
            && let Some(t) = text(cx, &af, "an IPv4 network like 10.0.0.0/8")
        {
            let parsed = if t.contains('/') {
                parse_cidr(&t)
            } else {
                parse_ip(&t).map(|a| Ipv4Cidr::new(a, 32))
            };
            match parsed {
                Ok(c) if c.network() == c => *slot = Some(c),
                Ok(c) => cx.err(
                    &af.path,
                    af.loc(),
                    format!("{c} has host bits set; did you mean {}?", c.network()),
                ),
                Err(m) => cx.err(&af.path, af.loc(), m),
            }
        }
    }
    if let Some(tf) = o.get(cx, "icmp_types") {
        if r.proto != RuleProto::Icmp {
            cx.err(&tf.path, tf.loc(), "icmp_types need proto: icmp");
        } else if let Some(items) = list(cx, &tf, "a list of ICMP type names") {
            for item in items {
                if let Some(t) = text(cx, &item, "an ICMP type name") {
                    if ICMP_TYPES.contains(&t.as_str()) {
                        r.icmp_types.push(t);
                    } else {
                        cx.err(
                            &item.path,
                            item.loc(),
                            format!(
                                "'{}' is not an ICMP type; expected one of: {}",
                                show(&t),
                                ICMP_TYPES.join(", ")
                            ),
                        );
                    }
                }
            }
        }
    }
    if let Some(cf) = o.get(cx, "connlimit") {
        r.connlimit = int_in(
            cx,
            &cf,
            "a connection count between 1 and 1000000",
            1,
            1_000_000,
        )
        .map(|n| n as u32);
    }
    if let Some(rf) = o.get(cx, "rate")
        && let Some(t) = text(cx, &rf, "a rate like 10/second")
    {
        let parsed = t.split_once('/').and_then(|(n, u)| {
            let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
            let u = u.trim();
            ["second", "minute", "hour", "day"]
                .contains(&u)
                .then(|| (n, u.to_string()))
        });
        match parsed {
            Some(p) => r.rate = Some(p),
            None => cx.err(
                &rf.path,
                rf.loc(),
                format!(
                    "'{}' is not a rate; expected N/second, N/minute, N/hour or N/day",
                    show(&t)
                ),
            ),
        }
    }
    if let Some(af) = o.get(cx, "action") {
        match text(cx, &af, "accept, drop or reject").as_deref() {
            Some("accept") => r.action = RuleAction::Accept,
            Some("drop") => r.action = RuleAction::Drop,
            Some("reject") => r.action = RuleAction::Reject,
            Some(a) => cx.err(
                &af.path,
                af.loc(),
                format!(
                    "'{}' is not an action; expected accept, drop or reject",
                    show(a)
                ),
            ),
            None => {}
        }
    }
    if let Some(lf) = o.get(cx, "log")
        && let Some(b) = boolean(cx, &lf)
    {
        r.log = b;
    }
    (cx.errors.len() == errors_before).then_some(r)
}

// ---------------------------------------------------------------------------------------
// Traffic shaping

const QOS_FIELDS: &[&str] = &["inbound", "outbound", "floor"];
const SHAPE_FIELDS: &[&str] = &["rate", "ceil", "burst"];

/// `100mbit`, `1gbit`, `500kbit`, `64000bit`; `bps` units are bytes per second, as in tc.
pub(crate) fn parse_rate(t: &str) -> Result<u64, String> {
    let t = t.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{t}' is not a rate; expected a number and a unit, like 100mbit"))?;
    let mult: f64 = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => {
            return Err(format!(
                "'{t}' has no known unit; use bit, kbit, mbit, gbit, tbit (or bps, kbps, mbps, gbps for bytes per second)"
            ));
        }
    };
    let v = n * mult;
    if !(8.0..=1.6e13).contains(&v) {
        return Err(format!("{t} is out of range (8bit to 16tbit)"));
    }
    Ok(v as u64)
}

/// `15k`, `1m`, `1600` (bytes).
fn parse_size(t: &str) -> Result<u32, String> {
    let t = t.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{t}' is not a size; expected bytes like 1600, 15k or 1m"))?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        _ => return Err(format!("'{t}' has no known unit; use b, k or m")),
    };
    u32::try_from(n * mult)
        .ok()
        .filter(|v| *v >= 64)
        .ok_or_else(|| format!("{t} is out of range (64 bytes to 4g)"))
}

fn read_shape(cx: &mut Ctx, f: &Field) -> Option<Shape> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        SHAPE_FIELDS,
        "a rate (a mapping with rate and optional ceil and burst)",
    )?;
    let errors_before = cx.errors.len();
    let read = |cx: &mut Ctx, name: &str, what: &str| -> Option<u64> {
        let rf = o.get(cx, name)?;
        let t = text(cx, &rf, what)?;
        match parse_rate(&t) {
            Ok(v) => Some(v),
            Err(m) => {
                cx.err(&rf.path, rf.loc(), m);
                None
            }
        }
    };
    let rate = read(cx, "rate", "a rate like 100mbit");
    let ceil = read(cx, "ceil", "a rate like 200mbit");
    let mut burst = None;
    if let Some(bf) = o.get(cx, "burst")
        && let Some(t) = text(cx, &bf, "a size like 15k")
    {
        match parse_size(&t) {
            Ok(v) => burst = Some(v),
            Err(m) => cx.err(&bf.path, bf.loc(), m),
        }
    }
    if rate.is_none() && cx.errors.len() == errors_before {
        cx.err(
            &join(&f.path, "rate"),
            o.loc,
            "missing required field 'rate'; give the shaping rate, like 100mbit",
        );
    }
    let rate = rate?;
    if let Some(c) = ceil
        && c < rate
    {
        let cf = o.get(cx, "ceil").expect("ceil was read");
        cx.err(
            &cf.path,
            cf.loc(),
            "ceil is below rate; it must be at least the rate",
        );
        return None;
    }
    (cx.errors.len() == errors_before).then_some(Shape {
        rate_bps: rate,
        ceil_bps: ceil,
        burst_bytes: burst,
    })
}

fn read_qos(cx: &mut Ctx, f: &Field) -> Option<Qos> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        QOS_FIELDS,
        "qos (a mapping with inbound and/or outbound)",
    )?;
    let mut q = Qos::default();
    if let Some(i) = o.get(cx, "inbound") {
        q.inbound = Some(read_shape(cx, &i)?);
    }
    if let Some(i) = o.get(cx, "outbound") {
        q.outbound = Some(read_shape(cx, &i)?);
    }
    if let Some(ff) = o.get(cx, "floor") {
        let t = text(cx, &ff, "a rate like 100mbit")?;
        match parse_rate(&t) {
            Ok(v) => q.floor_bps = Some(v),
            Err(m) => {
                cx.err(&ff.path, ff.loc(), m);
                return None;
            }
        }
    }
    Some(q)
}
