//! From the located YAML tree to a checked `Spec`.
//!
//! Two passes: the first reads every field (types, formats, per-field rules, rules between
//! fields of one network or port) and keeps going after a bad value; the second checks the
//! rules that span the whole spec (unique names and MACs, overlapping subnets, shared
//! uplinks, forwarding). A value that failed to parse is simply absent in the second pass,
//! so one mistake gives one error, not a cascade.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt};
use std::net::{Ipv4Addr, Ipv6Addr};

use super::SpecError;
use super::macs::HostIdentity;
use super::model::{Bond, BondMode, LACP_RATES, Uplink, XMIT_HASH_POLICIES};
use super::model::{
    Dhcp, DhcpRoute, DirectMode, Ethtool, Firewall, FirewallDirection, FirewallRule, Ipv4Cidr,
    Ipv6Cidr, Loc, Mac, Mode, Owner, PortKind, Proto, Qos, RuleAction, RuleProto, Shape, Spec,
    Tuning, VLAN_ID_MAX, Vlan, Vxlan,
};
use super::naming;
use super::yaml::{Key, Kind, Node, index, join};

mod build;
mod cross;
mod dhcp;
mod dhcp6;
mod dns;
mod host;
pub(crate) mod ipv6;
mod network;
mod ovn;
mod policy;
mod port;
pub(crate) mod schema;
mod suggest;
mod values;

pub(crate) use super::yaml::{join as join_path, show};
use crate::modes::{Fields, Take};
pub(crate) use build::PortBuilder;
use build::build;
use cross::*;
use dhcp::*;
use dns::*;
pub(crate) use host::read_ifname_field;
use host::*;
pub(crate) use network::NetReader;
pub(crate) use network::read_forward;
use network::*;
pub use policy::show_rate;
use policy::*;
use port::*;
use values::*;
pub(crate) use values::{parse_ip, special};

const TOP_FIELDS: &[&str] = &["version", "host", "networks", "vms", "ovn"];
const HOST_FIELDS: &[&str] = &["sysctl", "tuning", "uplinks", "backend"];
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
    "ipv6",
    "ra",
    "dns",
    "backend",
];
pub(crate) const VXLAN_FIELDS: &[&str] = &["vni", "underlay", "remotes", "group", "port"];
pub(crate) const VNI_MAX: i128 = 16_777_215;
const FORWARD_FIELDS: &[&str] = &["proto", "port", "to", "to_port"];
pub(crate) const NAT_FIELDS: &[&str] = &["egress", "ipv6"];
const DHCP_FIELDS: &[&str] = &[
    "range",
    "pool",
    "lease_time",
    "dns",
    "domain",
    "routes",
    "range6",
    "dns6",
];
const ROUTE_FIELDS: &[&str] = &["to", "via"];
const VM_FIELDS: &[&str] = &["ports", "host"];
const PORT_FIELDS: &[&str] = &[
    "network",
    "name",
    "kind",
    "mac",
    "ipv4",
    "ipv6",
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
pub(crate) const DIRECT_MODES: &str = "bridge, vepa, private or passthrough";
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

    /// Every written path and where, as [`Ctx::loc_at`] finds them, for checks that ask
    /// about many fields (one lookup each would make them quadratic); but for the parts a
    /// spec cache shares, which hold only paths under `vms` (see [`LocIndex::add_parts`]):
    /// enough for the paths of the other sections, and at 10,000 VM entries 10,000 keys
    /// less to copy.
    pub(crate) fn head_index(&self) -> LocIndex {
        LocIndex {
            head: self.locs.iter().map(|(p, l)| (p.clone(), *l)).collect(),
            parts: Default::default(),
        }
    }

    pub(crate) fn err(&mut self, path: &str, loc: Loc, message: impl Into<String>) {
        self.errors.push(SpecError {
            path: path.to_string(),
            loc,
            message: message.into(),
        });
    }
}

/// Where each written path is, for many lookups. The parts a spec cache shares (one per VM
/// entry) are found by their entry's path, not copied path by path: a daemon handed a spec
/// of 10,000 VMs would otherwise copy 150,000 paths for every apply.
pub(crate) struct LocIndex {
    head: foldhash::HashMap<String, Loc>,
    /// Each part by its first path: its VM entry's, as a part's paths are sorted (the spec
    /// cache sorts them).
    parts: foldhash::HashMap<String, super::model::LocPart>,
}

impl LocIndex {
    /// Adds to an index made by [`Ctx::head_index`] those of `cx`'s parts whose VM entry's
    /// path (`vms.NAME`) is in `wanted`.
    pub(crate) fn add_parts(&mut self, cx: &Ctx, wanted: &BTreeSet<String>) {
        fn first(part: &super::model::LocPart) -> Option<&str> {
            part.0.first().map(|(p, _)| p.as_str())
        }
        // Many wanted (all VMs checked again): one walk over all parts.
        if wanted.len().saturating_mul(16) > cx.parts.len() {
            for part in &cx.parts {
                if let Some(f) = first(part).filter(|f| wanted.contains(*f)) {
                    self.parts.insert(f.to_string(), part.clone());
                }
            }
            return;
        }
        // A few: a spec cache hands its parts over in VM name order, so each is found by a
        // search (the walk over 10,000 took 1.5 ms of one VM more at 10,000). A search that
        // misses (parts in another order) walks them.
        for w in wanted {
            let at = match cx
                .parts
                .binary_search_by(|p| first(p).cmp(&Some(w.as_str())))
            {
                Ok(i) => Some(i),
                Err(_) => cx.parts.iter().position(|p| first(p) == Some(w.as_str())),
            };
            if let Some(i) = at {
                self.parts.insert(w.clone(), cx.parts[i].clone());
            }
        }
    }

    /// Where `path` was written, if it was; a part wins over the head, as in [`Ctx::loc_at`].
    pub(crate) fn get(&self, path: &str) -> Option<Loc> {
        self.scope(path).get(path)
    }

    /// The part that holds `path` and every path below it (the VM entry's), for many lookups
    /// under one path without finding the part again each time.
    pub(crate) fn scope(&self, path: &str) -> LocScope<'_> {
        let prefixes = path
            .match_indices(['.', '['])
            .map(|(i, _)| &path[..i])
            .chain(std::iter::once(path));
        let part = prefixes
            .filter_map(|prefix| self.parts.get(prefix))
            .next()
            .map(|(part, line)| (part.as_slice(), *line));
        LocScope { index: self, part }
    }
}

/// [`LocIndex`] narrowed to the paths of one VM entry (or to the head's, for a spec read
/// whole).
pub(crate) struct LocScope<'a> {
    index: &'a LocIndex,
    part: Option<(&'a [(String, Loc)], usize)>,
}

impl<'a> LocScope<'a> {
    /// Each path written below `path` (as `path.REST`: REST with where it was written), when
    /// a part holds them; `None` for a spec read whole, whose paths only the head has.
    pub(crate) fn below(&self, path: &'a str) -> Option<impl Iterator<Item = (&'a str, Loc)>> {
        let (part, line) = self.part?;
        // Sorted by path: the paths below `path` are one run, after `path` itself.
        let start = part.partition_point(|(p, _)| p.as_str() <= path);
        Some(part[start..].iter().map_while(move |(p, l)| {
            let rest = p.strip_prefix(path)?.strip_prefix('.')?;
            Some((
                rest,
                Loc {
                    line: l.line + line,
                    col: l.col,
                },
            ))
        }))
    }

    /// Where `path`, a path in this scope, was written, if it was.
    pub(crate) fn get(&self, path: &str) -> Option<Loc> {
        if let Some((part, line)) = self.part {
            // Sorted by path, stably: the last of equal paths is the one written last.
            let end = part.partition_point(|(p, _)| p.as_str() <= path);
            if let Some((_, l)) = end
                .checked_sub(1)
                .map(|i| &part[i])
                .filter(|(p, _)| p == path)
            {
                return Some(Loc {
                    line: l.line + line,
                    col: l.col,
                });
            }
        }
        self.index.head.get(path).copied()
    }
}

/// A mapping being read: unknown keys are reported when it is opened.
pub(crate) struct Obj<'a> {
    pub(crate) path: String,
    pub(crate) loc: Loc,
    entries: &'a [(Key, Node)],
}

/// One value together with its path.
pub(crate) struct Field<'a> {
    pub(crate) path: String,
    pub(crate) node: &'a Node,
}

impl Field<'_> {
    pub(crate) fn loc(&self) -> Loc {
        self.node.loc
    }
}

pub(crate) fn obj<'a>(
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
                            "unknown field '{}'; expected one of: {}{}",
                            show(&k.text),
                            allowed.join(", "),
                            suggest::did_you_mean(&k.text, allowed)
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

    pub(crate) fn get(&self, cx: &mut Ctx, name: &str) -> Option<Field<'a>> {
        let (_, node) = self.entries.iter().find(|(k, _)| k.text == name)?;
        let path = join(&self.path, name);
        cx.locs.push((path.clone(), node.loc));
        Some(Field { path, node })
    }

    pub(crate) fn required(&self, cx: &mut Ctx, name: &str, hint: &str) -> Option<Field<'a>> {
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
pub(crate) fn text(cx: &mut Ctx, f: &Field, what: &str) -> Option<String> {
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
pub(crate) fn int_in(cx: &mut Ctx, f: &Field, what: &str, lo: i128, hi: i128) -> Option<i128> {
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

pub(crate) fn boolean(cx: &mut Ctx, f: &Field) -> Option<bool> {
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

pub(crate) fn list<'a>(cx: &mut Ctx, f: &Field<'a>, what: &str) -> Option<Vec<Field<'a>>> {
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

#[derive(Clone)]
pub(crate) struct NetDraft {
    pub(crate) name: String,
    key_loc: Loc,
    pub(crate) path: String,
    pub(crate) mode: Option<Mode>,
    /// Explicit or derived; `None` when the given name is invalid or the network name is.
    bridge: Option<String>,
    /// Where the bridge name was written, or the network's key when derived.
    bridge_loc: Loc,
    bridge_derived: bool,
    /// Set only when the gateway passed every check.
    ipv4: Option<Ipv4Cidr>,
    ipv4_loc: Loc,
    mtu: Option<u32>,
    pub(crate) uplink: Option<(String, Loc)>,
    pub(crate) egress: Option<(String, Loc)>,
    dhcp: Option<Dhcp>,
    isolate_ports: bool,
    pub(crate) forwards: Vec<ForwardDraft>,
    /// `vxlan` mode, set only when every vxlan field passed its checks.
    pub(crate) vxlan: Option<Vxlan>,
    /// bits/s, with where it was written.
    bandwidth: Option<(u64, Loc)>,
    /// `direct` mode: how its macvtap ports reach each other.
    pub(crate) direct_mode: Option<(DirectMode, Loc)>,
    /// `vlan` mode, set only when the VLAN id and the uplink passed their checks.
    pub(crate) vlan: Option<Vlan>,
    pub(crate) vlan_loc: Loc,
    pub(crate) vlan_uplink_loc: Loc,
    host_access: Vec<FirewallRule>,
    ipv6_prefixes: Vec<Ipv6Cidr>,
    /// `ipv6`, `ra` and `nat.ipv6`.
    pub(crate) v6: ipv6::V6Draft,
    /// `dns`, with where each record's name was written (for the duplicate check).
    pub(crate) dns: Option<DnsDraft>,
    /// `backend`, with where it was written.
    pub(crate) backend: Option<(crate::spec::NetBackend, Loc)>,
}

impl NetDraft {
    /// A network named by `key` at `path`, before any of its fields is read.
    fn new(key: &Key, path: &str) -> NetDraft {
        NetDraft {
            name: key.text.clone(),
            key_loc: key.loc,
            path: path.to_string(),
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
            v6: ipv6::V6Draft {
                loc: key.loc,
                ..Default::default()
            },
            dns: None,
            backend: None,
        }
    }
}

#[derive(Clone)]
pub(crate) struct ForwardDraft {
    pub(crate) path: String,
    pub(crate) proto: Proto,
    pub(crate) port: u16,
    to: String,
    to_loc: Loc,
    to_port: u16,
}

#[derive(Clone)]
pub(crate) struct PortDraft {
    path: std::sync::Arc<str>,
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
    ipv6: Option<std::net::Ipv6Addr>,
    ipv6_loc: Loc,
    owner: Option<Owner>,
    queues: u32,
    netns: Option<String>,
    antispoof: bool,
    dhcp_client: bool,
    firewall: Option<std::sync::Arc<Firewall>>,
    qos: Option<Qos>,
    mirror: Option<(String, Loc, String)>,
    ethtool: Option<Ethtool>,
    /// `vlans`: each VID with where it was written and its path.
    vlans: Vec<(u16, Loc, String)>,
    /// The VM's `host` (the chassis it runs on), with where it was written.
    pub(crate) host: Option<(std::sync::Arc<str>, Loc)>,
    /// What [`ovn::ovn_stamp`] gave for the spec in which this port, read from a spec
    /// cache's VM entry, passed the checks of an OVN port (0: none known). Those checks read
    /// the port and what the stamp covers, so under the same stamp they pass again.
    pub(crate) ovn_clean: OvnClean,
}

/// [`PortDraft::ovn_clean`]: set through the shared entry a spec cache keeps (the cache's
/// last layout holds the entries too, so none is the cache's alone to change).
#[derive(Debug, Default)]
pub(crate) struct OvnClean(std::sync::atomic::AtomicU64);

impl OvnClean {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set(&self, stamp: u64) {
        self.0.store(stamp, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clone for OvnClean {
    fn clone(&self) -> Self {
        OvnClean(self.get().into())
    }
}

impl PortDraft {
    /// Shares the port's firewall with the ports of `firewalls` that have an equal one
    /// (which the OVN model then finds by address: see `ovn::firewall`).
    pub(crate) fn share_firewall(
        &mut self,
        firewalls: &mut foldhash::HashSet<std::sync::Arc<Firewall>>,
    ) {
        if let Some(fw) = self.firewall.take() {
            self.firewall = Some(match firewalls.get(&fw) {
                Some(same) => std::sync::Arc::clone(same),
                None => {
                    firewalls.insert(std::sync::Arc::clone(&fw));
                    fw
                }
            });
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
    let drafts: Vec<&PortDraft> = ports.iter().collect();
    finish(cx, head, &drafts, None, vm_names, identity)
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
    ovn: Option<ovn::OvnDraft>,
    host_backend: Option<(crate::spec::NetBackend, Loc)>,
}

impl Head {
    /// See [`ovn::ovn_stamp`]: `None` when the spec has no OVN part.
    pub(crate) fn ovn_stamp(&self) -> Option<u64> {
        let draft = self.ovn.as_ref()?;
        Some(ovn::ovn_stamp(
            draft,
            self.host_backend,
            self.nets.as_deref().unwrap_or(&[]),
        ))
    }

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
    let mut host_backend = None;
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
        host_backend = host
            .get(cx, "backend")
            .and_then(|f| ovn::read_backend(cx, &f));
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

    let ovn = top.get(cx, "ovn").and_then(|f| ovn::read_ovn(cx, &f));
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
            ovn,
            host_backend,
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
/// `built`: the ports of `ports`, in their order, when a spec cache has them built already;
/// `None`: built here.
pub(crate) fn finish(
    cx: &mut Ctx,
    head: Head,
    ports: &[&PortDraft],
    built: Option<Vec<std::sync::Arc<super::model::Port>>>,
    vm_names: Vec<String>,
    identity: &HostIdentity,
) -> Option<Spec> {
    let Head {
        version,
        sysctl,
        tuning,
        uplinks,
        nets,
        ovn,
        host_backend,
    } = head;
    let ovn_nets = ovn::ovn_checks(
        cx,
        ovn.as_ref(),
        host_backend,
        nets.as_deref().unwrap_or(&[]),
        ports,
    );
    cross_checks(
        cx,
        nets.as_deref().unwrap_or(&[]),
        ports,
        sysctl.as_ref(),
        &ovn_nets,
    );
    uplink_checks(
        cx,
        nets.as_deref().unwrap_or(&[]),
        ports,
        &uplinks,
        &ovn_nets,
    );
    ovn::check_bonds(
        cx,
        ovn.as_ref(),
        nets.as_deref().unwrap_or(&[]),
        &ovn_nets,
        &uplinks,
    );

    if !cx.errors.is_empty() {
        return None;
    }
    let nets = nets?;
    let built = match built {
        Some(b) => b,
        None => build::PortBuilder::new(&nets).ports(ports.iter().copied())?,
    };
    // OVN ports are kept apart from the VMs: their MACs are derived apart (see
    // `derive_macs`).
    let ports = build::Ports {
        drafts: ports,
        built,
        ovn_nets: if ovn.is_some() { &ovn_nets } else { &[] },
    };
    let (mut spec, ovn_ports) = build(cx, version?, sysctl, nets, ports, vm_names)?;
    spec.identity = identity.clone();
    ovn::finish_ovn(&mut spec, ovn, &ovn_nets, ovn_ports);
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
    put_uplinks(&mut spec, uplinks)?;
    Some(spec)
}

/// The uplinks into `spec.host`, each with its ethtool settings; `None` when a draft lacks
/// what an error was already reported for.
fn put_uplinks(spec: &mut Spec, uplinks: Vec<UplinkDraft>) -> Option<()> {
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
    Some(())
}

// ---------------------------------------------------------------------------------------
// ethtool settings
