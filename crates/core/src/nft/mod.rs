//! kvmnet's nftables ruleset: what the networks and ports of a spec need, as plain values,
//! and the nft scripts that make the live tables match them.
//!
//! kvmnet owns exactly two tables, `inet kvmnet` (forwarding policy, NAT, firewalls) and
//! `bridge kvmnet` (anti-spoofing at the bridge), and never lists, changes or deletes any other.
//! A table is kvmnet's when its comment is [`OWNER_COMMENT`]. Every rule carries a comment
//! with a hash of its own text, so a later run sees which rules are still what kvmnet wrote
//! without reading them back as text: a rule deleted, added or replaced by hand changes the
//! chain's list of hashes. When the tables are kvmnet's, a change touches only the chains,
//! sets and set elements that differ (adding a port adds its own chains and elements, nothing
//! else); when they are missing or not recognisable, both are replaced together. Either way it
//! is one nft transaction, so a half-written firewall is never visible.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::spec::Spec;
use crate::spec::naming::fnv1a;

mod firewall;
mod guard;
mod networks;

pub use guard::Reason as GuardDropReason;
// `kvmnet trace` words its hops with the rules as they are written here.
pub use firewall::{CountedBy, FirewallCounted, counted as firewall_counted, counting_set};
pub(crate) use firewall::{IPV6_PLUMBING, port_ranges, rule_matches, verdict as firewall_verdict};

pub const FAMILY: &str = "inet";
pub const BRIDGE_FAMILY: &str = "bridge";
pub const TABLE: &str = "kvmnet";
/// The comment of both tables: how kvmnet recognises them. Table comments cannot change after
/// creation, so it carries no hash; tables from older versions (`kvmnet <hash>`) are not
/// recognised and get replaced whole.
pub const OWNER_COMMENT: &str = "kvmnet v2";

/// One rule: its text as nft reads it and the hash kept in its comment. Observed rules have
/// an empty text unless it was read back (only when the rule has to be restored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRule {
    pub hash: String,
    pub text: String,
}

impl NftRule {
    pub fn new(text: String) -> NftRule {
        NftRule {
            hash: rule_hash(&text),
            text,
        }
    }
}

pub fn rule_hash(text: &str) -> String {
    format!("{:016x}", fnv1a(text.as_bytes()))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftChain {
    pub family: String,
    pub name: String,
    /// Base chains: `type filter hook forward priority 0; policy accept;`. Regular chains
    /// (jump targets) have none.
    pub hook: Option<String>,
    pub rules: Vec<NftRule>,
}

impl NftChain {
    /// Same hook and the same rules in the same order (by hash: observed text may be absent).
    pub fn same(&self, other: &NftChain) -> bool {
        self.hook == other.hook
            && self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .zip(&other.rules)
                .all(|(a, b)| a.hash == b.hash)
    }
}

/// A named set or verdict map with its elements, as nft writes them (`"port"`,
/// `"port" . 52:54:00:aa:00:10`, `192.0.2.10 : jump in-port`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftSet {
    pub family: String,
    pub name: String,
    /// `ifname . ether_addr`, `ipv4_addr : verdict`, ...; `typeof iifname; counter` for a
    /// set whose elements each carry a counter (the guard's drop counts).
    pub ty: String,
    pub elements: BTreeSet<String>,
}

impl NftSet {
    /// The set's type as nft declares it: `type ifname . ether_addr`, or for keys read from
    /// raw packet bytes `typeof iifname . @th,208,48` with that text as the comment too
    /// (observation reads the type back from the comment).
    fn declaration(&self) -> String {
        if self.ty.starts_with("typeof ") {
            format!("{}; comment \"{}\"", self.ty, self.ty)
        } else {
            format!("type {}", self.ty)
        }
    }

    fn keyword(&self) -> &'static str {
        if self.ty.contains(" : ") {
            "map"
        } else {
            "set"
        }
    }
}

/// kvmnet's ruleset: both tables, keyed by `family name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    /// Families whose table exists (observed) or is needed (desired).
    pub families: BTreeSet<String>,
    pub chains: BTreeMap<String, NftChain>,
    pub sets: BTreeMap<String, NftSet>,
    /// Observed: every table carries kvmnet's mark and holds only objects kvmnet could read
    /// (nothing hidden, such as a chain emptied by hand): safe to change in place.
    #[serde(default = "yes")]
    pub intact: bool,
    /// Observed: nft's own listing of the tables when it was read (whole-table changes need
    /// it to put the tables back exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing: Option<String>,
}

fn yes() -> bool {
    true
}

fn key(family: &str, name: &str) -> String {
    concat(&[family, " ", name])
}

/// The parts joined, without the formatting machinery: a table holds a few strings per
/// port, and a host may have thousands of ports.
/// An interface name as nft wants it in a rule: quoted.
pub(crate) fn quoted(name: &str) -> String {
    concat(&["\"", name, "\""])
}

fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// An address in dotted decimal, as `Display` writes it, by hand (see [`concat`]).
fn ipv4_text(a: std::net::Ipv4Addr) -> String {
    let mut s = String::with_capacity(15);
    for (i, o) in a.octets().into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        if o >= 100 {
            s.push(char::from(b'0' + o / 100));
        }
        if o >= 10 {
            s.push(char::from(b'0' + o / 10 % 10));
        }
        s.push(char::from(b'0' + o % 10));
    }
    s
}

impl NftTable {
    /// No family, no chain, no set; intact.
    pub fn empty() -> NftTable {
        NftTable {
            families: BTreeSet::new(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            intact: true,
            listing: None,
        }
    }

    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// The tables as one nft script: nft's listing when it was read, else rendered.
    pub fn text(&self) -> String {
        if let Some(l) = &self.listing {
            return l.clone();
        }
        let mut t = String::new();
        for fam in [FAMILY, BRIDGE_FAMILY] {
            if !self.families.contains(fam) {
                continue;
            }
            let _ = writeln!(t, "table {fam} {TABLE} {{\n\tcomment \"{OWNER_COMMENT}\"");
            let chains: Vec<&NftChain> = self.chains.values().filter(|c| c.family == fam).collect();
            // Jump targets first, then the maps that name them, then the hooks that use them.
            for c in chains.iter().filter(|c| c.hook.is_none()) {
                render_chain(&mut t, c);
            }
            for s in self.sets.values().filter(|s| s.family == fam) {
                let _ = writeln!(
                    t,
                    "\t{} {} {{\n\t\t{}",
                    s.keyword(),
                    s.name,
                    s.declaration()
                );
                if !s.elements.is_empty() {
                    let e: Vec<&str> = s.elements.iter().map(String::as_str).collect();
                    let _ = writeln!(t, "\t\telements = {{ {} }}", e.join(", "));
                }
                let _ = writeln!(t, "\t}}");
            }
            for c in chains.iter().filter(|c| c.hook.is_some()) {
                render_chain(&mut t, c);
            }
            t.push_str("}\n");
        }
        t
    }
}

fn rule_line(r: &NftRule) -> String {
    format!("{} comment \"{}\"", r.text, r.hash)
}

fn render_chain(t: &mut String, c: &NftChain) {
    let _ = writeln!(t, "\tchain {} {{", c.name);
    if let Some(h) = &c.hook {
        let _ = writeln!(t, "\t\t{h}");
    }
    for r in &c.rules {
        let _ = writeln!(t, "\t\t{}", rule_line(r));
    }
    let _ = writeln!(t, "\t}}");
}

/// A chain being built: rules as text until they get their hashes.
pub(crate) struct Chain {
    name: String,
    hook: Option<String>,
    rules: Vec<String>,
}

impl Chain {
    pub(crate) fn regular(name: String, rules: Vec<String>) -> Chain {
        Chain {
            name,
            hook: None,
            rules,
        }
    }
}

/// A base chain's header as kvmnet writes it, and as observation rebuilds it from the kernel.
pub fn hook_line(ty: &str, hook: &str, priority: i32, accept: bool) -> String {
    let policy = if accept { "accept" } else { "drop" };
    format!("type {ty} hook {hook} priority {priority}; policy {policy};")
}

/// A named set or map with its type and elements. A `typeof` type (keys read from raw
/// packet bytes) is also written as the set's comment: the kernel keeps only the key's
/// width, and the comment is how observation gets the type back.
pub(crate) struct Set {
    name: std::borrow::Cow<'static, str>,
    ty: &'static str,
    elements: Vec<String>,
}

impl Set {
    pub(crate) fn new(name: &'static str, ty: &'static str) -> Set {
        Set {
            name: name.into(),
            ty,
            elements: Vec::new(),
        }
    }

    fn named(name: String, ty: &'static str, elements: Vec<String>) -> Set {
        Set {
            name: name.into(),
            ty,
            elements,
        }
    }
}

/// The hooks of kvmnet's base chains. Each feature adds rules to them; within one base
/// chain the features' rules come in the order of [`table_for`]'s feature list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Base {
    /// bridge, before anything is learnt or forwarded: the guard, the source port's mark.
    BridgePre,
    /// bridge forward, before br_netfilter hands bridged IP to the inet hooks (priority -1):
    /// the destination port's mark.
    BridgeForward,
    /// bridge, on the way out: marks of ours that no inet hook consumed are cleared.
    BridgePost,
    /// inet prerouting after conntrack and DNAT: firewalls of traffic from VM ports.
    InetPreFilter,
    /// inet forward: firewalls of traffic to VM ports, then what may leave and enter each
    /// network.
    InetForward,
    /// inet input: what guests may reach on the host.
    InetInput,
    /// inet output: firewalls of traffic the host sends to VM ports.
    InetOutput,
    NatPre,
    NatOutput,
    NatPost,
}

impl Base {
    const ALL: [Base; 10] = [
        Base::BridgePre,
        Base::BridgeForward,
        Base::BridgePost,
        Base::InetPreFilter,
        Base::InetForward,
        Base::InetInput,
        Base::InetOutput,
        Base::NatPre,
        Base::NatOutput,
        Base::NatPost,
    ];

    /// Family, chain name, type, hook and priority. Names are kept from earlier versions
    /// where the chain is the same, so an upgrade changes rules, not chains.
    fn def(self) -> (&'static str, &'static str, &'static str, &'static str, i32) {
        match self {
            Base::BridgePre => (BRIDGE_FAMILY, "prerouting", "filter", "prerouting", -300),
            Base::BridgeForward => (BRIDGE_FAMILY, "forward", "filter", "forward", -200),
            Base::BridgePost => (BRIDGE_FAMILY, "postrouting", "filter", "postrouting", 0),
            Base::InetPreFilter => (FAMILY, "pre-filter", "filter", "prerouting", 0),
            Base::InetForward => (FAMILY, "forward", "filter", "forward", 0),
            Base::InetInput => (FAMILY, "input", "filter", "input", 0),
            Base::InetOutput => (FAMILY, "output-filter", "filter", "output", 0),
            Base::NatPre => (FAMILY, "prerouting", "nat", "prerouting", -100),
            Base::NatOutput => (FAMILY, "output", "nat", "output", -100),
            Base::NatPost => (FAMILY, "postrouting", "nat", "postrouting", 100),
        }
    }
}

/// What one feature (guard, firewall, networks) contributes to the ruleset.
#[derive(Default)]
pub(crate) struct Parts {
    /// Named sets and maps, by family.
    pub(crate) sets: Vec<(&'static str, Set)>,
    /// Regular chains (jump targets), by family.
    pub(crate) chains: Vec<(&'static str, Chain)>,
    /// Rules for the base chains, in order.
    pub(crate) hooks: Vec<(Base, String)>,
}

impl Parts {
    pub(crate) fn hook(&mut self, base: Base, rule: impl Into<String>) {
        self.hooks.push((base, rule.into()));
    }

    pub(crate) fn set(&mut self, family: &'static str, set: Set) {
        self.sets.push((family, set));
    }

    pub(crate) fn chain(&mut self, family: &'static str, name: String, rules: Vec<String>) {
        self.chains.push((family, Chain::regular(name, rules)));
    }
}

/// kvmnet's whole ruleset (its `inet` and `bridge` tables) for a spec, or `None` when the
/// spec needs no rule. Features contribute in a fixed order: the guard first (nothing a
/// guard drops reaches a firewall), then per-port firewalls, then the networks' policy.
pub fn table_for(spec: &Spec) -> Option<NftTable> {
    let features = [
        guard::parts(spec),
        firewall::parts(spec),
        networks::parts(spec),
    ];
    let mut chains = Vec::new();
    let mut sets = Vec::new();
    let mut hooks: BTreeMap<Base, Vec<String>> = BTreeMap::new();
    for f in features {
        chains.extend(f.chains);
        sets.extend(f.sets);
        for (base, rule) in f.hooks {
            hooks.entry(base).or_default().push(rule);
        }
    }
    for base in Base::ALL {
        let Some(rules) = hooks.remove(&base) else {
            continue;
        };
        let (family, name, ty, hook, priority) = base.def();
        chains.push((
            family,
            Chain {
                name: name.to_string(),
                hook: Some(hook_line(ty, hook, priority, true)),
                rules,
            },
        ));
    }
    if chains.is_empty() {
        return None;
    }
    let mut t = NftTable::empty();
    t.families = chains.iter().map(|(f, _)| f.to_string()).collect();
    t.chains = chains
        .into_iter()
        .map(|(family, c)| {
            let chain = NftChain {
                family: family.to_string(),
                name: c.name,
                hook: c.hook,
                rules: c.rules.into_iter().map(NftRule::new).collect(),
            };
            (key(family, &chain.name), chain)
        })
        .collect();
    // A set is kept only in a family that has chains: a set nobody looks up is no use.
    t.sets = sets
        .into_iter()
        .filter(|(family, _)| t.families.contains(*family))
        .map(|(family, s)| {
            let set = NftSet {
                family: family.to_string(),
                name: s.name.to_string(),
                ty: s.ty.to_string(),
                elements: s.elements.into_iter().collect(),
            };
            (key(family, &set.name), set)
        })
        .collect();
    Some(t)
}

/// The nft script that turns whatever tables are live into `to` (or removes them), in one
/// transaction. `add` first so `delete` cannot fail on a missing table.
pub fn replace_script(to: Option<&NftTable>) -> String {
    let mut s = String::new();
    for fam in [FAMILY, BRIDGE_FAMILY] {
        s.push_str(&format!(
            "add table {fam} {TABLE}\ndelete table {fam} {TABLE}\n"
        ));
    }
    if let Some(t) = to {
        s.push_str(&t.text());
    }
    s
}

/// One change to one object of kvmnet's tables, when the tables are kvmnet's and only part
/// of them differs. Sets are made and removed empty; their elements are changes of their own,
/// so every change has an exact inverse and the order in [`diff`] holds both ways.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NftChange {
    AddChain(NftChain),
    DelChain(NftChain),
    /// Same chain, other rules (or another hook): its rules are replaced.
    UpdateChain {
        from: NftChain,
        to: NftChain,
    },
    AddSet(NftSet),
    DelSet(NftSet),
    AddElement {
        family: String,
        set: String,
        element: String,
    },
    DelElement {
        family: String,
        set: String,
        element: String,
    },
}

impl NftChange {
    pub fn inverse(&self) -> NftChange {
        use NftChange::*;
        match self.clone() {
            AddChain(c) => DelChain(c),
            DelChain(c) => AddChain(c),
            UpdateChain { from, to } => UpdateChain { from: to, to: from },
            AddSet(s) => DelSet(s),
            DelSet(s) => AddSet(s),
            AddElement {
                family,
                set,
                element,
            } => DelElement {
                family,
                set,
                element,
            },
            DelElement {
                family,
                set,
                element,
            } => AddElement {
                family,
                set,
                element,
            },
        }
    }

    pub fn op(&self) -> &'static str {
        use NftChange::*;
        match self {
            AddChain(_) | AddSet(_) => "create",
            DelChain(_) | DelSet(_) => "delete",
            UpdateChain { .. } => "update",
            AddElement { .. } => "add",
            DelElement { .. } => "remove",
        }
    }

    pub fn object(&self) -> &'static str {
        use NftChange::*;
        match self {
            AddChain(_) | DelChain(_) | UpdateChain { .. } => "chain",
            AddSet(s) | DelSet(s) => s.keyword(),
            AddElement { .. } | DelElement { .. } => "element",
        }
    }

    pub fn family(&self) -> &str {
        use NftChange::*;
        match self {
            AddChain(c) | DelChain(c) | UpdateChain { to: c, .. } => &c.family,
            AddSet(s) | DelSet(s) => &s.family,
            AddElement { family, .. } | DelElement { family, .. } => family,
        }
    }

    /// `chain inet in-web1`, `map inet fw_in`, `element bridge guarded "web1"`.
    pub fn name(&self) -> String {
        use NftChange::*;
        let what = match self {
            AddChain(c) | DelChain(c) | UpdateChain { to: c, .. } => c.name.clone(),
            AddSet(s) | DelSet(s) => s.name.clone(),
            AddElement { set, element, .. } | DelElement { set, element, .. } => {
                format!("{set} {element}")
            }
        };
        format!("{} {} {what}", self.object(), self.family())
    }

    /// What the plan line adds after the name.
    pub fn detail(&self) -> String {
        use NftChange::*;
        match self {
            AddChain(c) => format!(" ({} rules)", c.rules.len()),
            UpdateChain { from, to } => {
                format!(": {} -> {} rules", from.rules.len(), to.rules.len())
            }
            AddSet(s) => format!(" (type {})", s.ty),
            _ => String::new(),
        }
    }

    /// The fields a JSON plan shows besides op, kind and name.
    pub fn json_fields(&self) -> Vec<(&'static str, serde_json::Value)> {
        use NftChange::*;
        use serde_json::json;
        let rules =
            |c: &NftChain| json!(c.rules.iter().map(|r| r.text.clone()).collect::<Vec<_>>());
        let mut v = vec![
            ("object", json!(self.object())),
            ("family", json!(self.family())),
        ];
        match self {
            AddChain(c) | DelChain(c) => {
                v.push(("chain", json!(c.name)));
                v.push(("hook", json!(c.hook)));
                v.push(("rules", rules(c)));
            }
            UpdateChain { from, to } => {
                v.push(("chain", json!(to.name)));
                v.push(("hook", json!(to.hook)));
                v.push(("rules", rules(to)));
                v.push(("previous_rules", json!(from.rules.len())));
            }
            AddSet(s) | DelSet(s) => {
                v.push(("set", json!(s.name)));
                v.push(("type", json!(s.ty)));
            }
            AddElement { set, element, .. } | DelElement { set, element, .. } => {
                v.push(("set", json!(set)));
                v.push(("element", json!(element)));
            }
        }
        v
    }

    /// This change as nft commands. Adding a chain empties it first and removing one makes
    /// sure it exists, so a change retried after a failed transaction does not double rules.
    pub fn script(&self, s: &mut String) {
        use NftChange::*;
        let add_rules = |s: &mut String, c: &NftChain| {
            for r in &c.rules {
                let _ = writeln!(
                    s,
                    "add rule {} {TABLE} {} {}",
                    c.family,
                    c.name,
                    rule_line(r)
                );
            }
        };
        let add_chain = |s: &mut String, c: &NftChain| {
            match &c.hook {
                Some(h) => {
                    let _ = writeln!(s, "add chain {} {TABLE} {} {{ {h} }}", c.family, c.name);
                }
                None => {
                    let _ = writeln!(s, "add chain {} {TABLE} {}", c.family, c.name);
                }
            }
            let _ = writeln!(s, "flush chain {} {TABLE} {}", c.family, c.name);
            add_rules(s, c);
        };
        let del_chain = |s: &mut String, c: &NftChain| {
            let _ = writeln!(s, "add chain {} {TABLE} {}", c.family, c.name);
            let _ = writeln!(s, "flush chain {} {TABLE} {}", c.family, c.name);
            let _ = writeln!(s, "delete chain {} {TABLE} {}", c.family, c.name);
        };
        match self {
            AddChain(c) => add_chain(s, c),
            DelChain(c) => del_chain(s, c),
            UpdateChain { from, to } if from.hook == to.hook => {
                let _ = writeln!(s, "flush chain {} {TABLE} {}", to.family, to.name);
                add_rules(s, to);
            }
            UpdateChain { from, to } => {
                del_chain(s, from);
                add_chain(s, to);
            }
            AddSet(set) => {
                let _ = writeln!(
                    s,
                    "add {} {} {TABLE} {} {{ {}; }}",
                    set.keyword(),
                    set.family,
                    set.name,
                    set.declaration()
                );
                if !set.elements.is_empty() {
                    let e: Vec<&str> = set.elements.iter().map(String::as_str).collect();
                    let _ = writeln!(
                        s,
                        "add element {} {TABLE} {} {{ {} }}",
                        set.family,
                        set.name,
                        e.join(", ")
                    );
                }
            }
            DelSet(set) => {
                let _ = writeln!(
                    s,
                    "delete {} {} {TABLE} {}",
                    set.keyword(),
                    set.family,
                    set.name
                );
            }
            AddElement {
                family,
                set,
                element,
            } => {
                let _ = writeln!(s, "add element {family} {TABLE} {set} {{ {element} }}");
            }
            DelElement {
                family,
                set,
                element,
            } => {
                // A map element is named by its key alone.
                let k = element.split(" : ").next().unwrap_or(element);
                let _ = writeln!(s, "delete element {family} {TABLE} {set} {{ {k} }}");
            }
        }
    }
}

impl std::fmt::Display for NftChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name(), self.detail())
    }
}

/// How the live tables become the wanted ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NftPlan {
    Nothing,
    /// Replace both tables whole: they are missing, not kvmnet's, or go away.
    Replace,
    /// Change only what differs.
    Changes(Vec<NftChange>),
}

/// Whether `have` can be changed in place into `want`.
fn incremental(want: &NftTable, have: &NftTable) -> bool {
    have.intact
        && want.families == have.families
        && want
            .sets
            .iter()
            .all(|(k, s)| have.sets.get(k).is_none_or(|h| h.ty == s.ty))
}

/// The chains a chain's rules jump or go to.
fn jump_targets(c: &NftChain) -> impl Iterator<Item = &str> {
    c.rules.iter().flat_map(|r| {
        let words: Vec<&str> = r.text.split_whitespace().collect();
        let targets: Vec<&str> = words
            .windows(2)
            .filter(|w| w[0] == "jump" || w[0] == "goto")
            .map(|w| w[1])
            .collect();
        targets
    })
}

/// `chains` in an order where each comes after the chains of the list it jumps or goes to
/// (nft refuses a rule naming a chain that does not exist yet, and the deletion of a chain
/// something still jumps to), chains with a hook last: the counting chains (`fw-in-drop`)
/// before the policy chains that go to them, whatever their names.
fn targets_first(mut chains: Vec<&NftChain>) -> Vec<&NftChain> {
    chains.sort_by_key(|c| c.hook.is_some());
    let listed: BTreeSet<(String, String)> = chains
        .iter()
        .map(|c| (c.family.clone(), c.name.clone()))
        .collect();
    let mut placed: BTreeSet<(String, String)> = BTreeSet::new();
    let mut out = Vec::with_capacity(chains.len());
    while !chains.is_empty() {
        let before = chains.len();
        chains.retain(|c| {
            let ready = jump_targets(c).all(|t| {
                let key = (c.family.clone(), t.to_string());
                !listed.contains(&key) || placed.contains(&key) || t == c.name
            });
            if ready {
                placed.insert((c.family.clone(), c.name.clone()));
                out.push(*c);
            }
            !ready
        });
        if chains.len() == before {
            // A cycle (kvmnet writes none): keep the rest as they are.
            out.append(&mut chains);
        }
    }
    out
}

pub fn diff(want: Option<&NftTable>, have: Option<&NftTable>) -> NftPlan {
    let (want, have) = match (want, have) {
        (None, None) => return NftPlan::Nothing,
        (Some(w), Some(h)) if incremental(w, h) => (w, h),
        _ => return NftPlan::Replace,
    };
    let empty = BTreeSet::new();
    let mut del_elements = Vec::new();
    let mut add_elements = Vec::new();
    let keys: BTreeSet<&String> = want.sets.keys().chain(have.sets.keys()).collect();
    for k in &keys {
        let (w, h) = (want.sets.get(*k), have.sets.get(*k));
        let set = w.or(h).expect("in one of them");
        let we = w.map_or(&empty, |s| &s.elements);
        let he = h.map_or(&empty, |s| &s.elements);
        for e in he.difference(we) {
            del_elements.push(NftChange::DelElement {
                family: set.family.clone(),
                set: set.name.clone(),
                element: e.clone(),
            });
        }
        for e in we.difference(he) {
            add_elements.push(NftChange::AddElement {
                family: set.family.clone(),
                set: set.name.clone(),
                element: e.clone(),
            });
        }
    }
    let bare = |s: &NftSet| NftSet {
        elements: BTreeSet::new(),
        ..s.clone()
    };
    let add_sets = want
        .sets
        .iter()
        .filter(|(k, _)| !have.sets.contains_key(*k))
        .map(|(_, s)| NftChange::AddSet(bare(s)));
    let del_sets = have
        .sets
        .iter()
        .filter(|(k, _)| !want.sets.contains_key(*k))
        .map(|(_, s)| NftChange::DelSet(bare(s)));
    let mut add_chains: Vec<&NftChain> = want
        .chains
        .iter()
        .filter(|(k, _)| !have.chains.contains_key(*k))
        .map(|(_, c)| c)
        .collect();
    // Jump targets before the chains that jump; removed in the opposite order.
    add_chains = targets_first(add_chains);
    let del_chains: Vec<&NftChain> = have
        .chains
        .iter()
        .filter(|(k, _)| !want.chains.contains_key(*k))
        .map(|(_, c)| c)
        .collect();
    let mut del_chains = targets_first(del_chains);
    del_chains.reverse();
    let updates = want.chains.iter().filter_map(|(k, w)| {
        let h = have.chains.get(k)?;
        (!w.same(h)).then(|| NftChange::UpdateChain {
            from: h.clone(),
            to: w.clone(),
        })
    });
    let mut out = del_elements;
    out.extend(add_sets);
    out.extend(add_chains.into_iter().cloned().map(NftChange::AddChain));
    out.extend(updates);
    out.extend(del_chains.into_iter().cloned().map(NftChange::DelChain));
    out.extend(del_sets);
    out.extend(add_elements);
    if out.is_empty() {
        NftPlan::Nothing
    } else {
        NftPlan::Changes(out)
    }
}

/// Which observed chains must be read back as text, for `want` to be reachable and every
/// change undoable: all of them when the tables get replaced whole (`None`), else the ones
/// that change or go away.
pub fn chains_to_read(want: Option<&NftTable>, have: &NftTable) -> Option<Vec<String>> {
    let want = want.filter(|w| incremental(w, have))?;
    Some(
        have.chains
            .iter()
            .filter(|(k, h)| want.chains.get(*k).is_none_or(|w| !w.same(h)))
            .map(|(k, _)| k.clone())
            .collect(),
    )
}

/// The rules of each chain in nft's listing of one table, with the hashes their comments
/// carry (empty for a rule without one).
pub fn parse_listing(text: &str) -> BTreeMap<String, Vec<NftRule>> {
    let mut out: BTreeMap<String, Vec<NftRule>> = BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            out.entry(name.clone()).or_default();
            chain = Some(name);
        } else if t == "}" {
            chain = None;
        } else if let Some(c) = &chain
            && !t.is_empty()
            && !t.starts_with("type ")
            && !t.starts_with("policy ")
            && !t.starts_with("comment ")
        {
            let rule = match t.rfind(" comment \"") {
                Some(i) if t.ends_with('"') => NftRule {
                    hash: t[i + 10..t.len() - 1].to_string(),
                    text: t[..i].to_string(),
                },
                _ => NftRule {
                    hash: String::new(),
                    text: t.to_string(),
                },
            };
            out.entry(c.clone()).or_default().push(rule);
        }
    }
    out
}

#[cfg(test)]
mod v6_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_written_texts_match_display() {
        for a in ["0.0.0.0", "10.160.1.2", "192.168.100.255", "1.22.100.9"] {
            let ip: std::net::Ipv4Addr = a.parse().unwrap();
            assert_eq!(ipv4_text(ip), ip.to_string());
        }
        assert_eq!(concat(&["a", "", "bc"]), "abc");
    }

    #[test]
    fn listing_rules_and_hashes() {
        let listing = "table inet kvmnet {\n\tcomment \"kvmnet v2\"\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"b\" accept comment \"00aa\"\n\t\toifname \"b\" reject\n\t}\n\tmap fw_in {\n\t\ttype ipv4_addr : verdict\n\t\telements = { 10.0.0.2 : jump in-x }\n\t}\n}\n";
        let rules = parse_listing(listing);
        assert_eq!(
            rules["forward"],
            vec![
                NftRule {
                    hash: "00aa".into(),
                    text: "iifname \"b\" accept".into()
                },
                NftRule {
                    hash: String::new(),
                    text: "oifname \"b\" reject".into()
                }
            ]
        );
        assert_eq!(rules.len(), 1);
    }

    fn chain(name: &str, rules: &[&str]) -> NftChain {
        NftChain {
            family: FAMILY.into(),
            name: name.into(),
            hook: None,
            rules: rules.iter().map(|r| NftRule::new(r.to_string())).collect(),
        }
    }

    /// A new policy chain that goes to a new counting chain: nft refuses the rule unless the
    /// counting chain exists first, whatever the names' order; deletion runs the other way.
    #[test]
    fn chains_are_added_after_the_chains_they_go_to() {
        let empty = NftTable {
            families: [FAMILY.to_string()].into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            intact: true,
            listing: None,
        };
        let mut w = empty.clone();
        for c in [
            chain(
                "fw-out-1",
                &[
                    "ct state invalid goto fw-out-drop",
                    "counter goto fw-out-reject",
                ],
            ),
            chain("fw-out-drop", &["drop"]),
            chain("fw-out-reject", &["reject"]),
            chain("a-caller", &["jump fw-out-1"]),
        ] {
            w.chains.insert(format!("inet {}", c.name), c);
        }
        let names = |plan: NftPlan, add: bool| -> Vec<String> {
            let NftPlan::Changes(c) = plan else {
                panic!("expected changes")
            };
            c.iter()
                .filter_map(|c| match c {
                    NftChange::AddChain(c) if add => Some(c.name.clone()),
                    NftChange::DelChain(c) if !add => Some(c.name.clone()),
                    _ => None,
                })
                .collect()
        };
        let added = names(diff(Some(&w), Some(&empty)), true);
        let at = |n: &str, v: &[String]| v.iter().position(|x| x == n).unwrap();
        assert!(
            at("fw-out-drop", &added) < at("fw-out-1", &added),
            "{added:?}"
        );
        assert!(
            at("fw-out-reject", &added) < at("fw-out-1", &added),
            "{added:?}"
        );
        assert!(at("fw-out-1", &added) < at("a-caller", &added), "{added:?}");
        let removed = names(diff(Some(&empty), Some(&w)), false);
        assert!(
            at("a-caller", &removed) < at("fw-out-1", &removed),
            "{removed:?}"
        );
        assert!(
            at("fw-out-1", &removed) < at("fw-out-drop", &removed),
            "{removed:?}"
        );
    }

    #[test]
    fn diff_touches_only_what_differs() {
        let mut t = NftTable {
            families: [FAMILY.to_string()].into(),
            chains: BTreeMap::new(),
            sets: BTreeMap::new(),
            intact: true,
            listing: None,
        };
        t.chains
            .insert("inet in-a".into(), chain("in-a", &["counter drop"]));
        t.sets.insert(
            "inet fw_in".into(),
            NftSet {
                family: FAMILY.into(),
                name: "fw_in".into(),
                ty: "ipv4_addr : verdict".into(),
                elements: ["10.0.0.2 : jump in-a".to_string()].into(),
            },
        );
        let mut w = t.clone();
        w.chains
            .insert("inet in-b".into(), chain("in-b", &["counter drop"]));
        w.sets
            .get_mut("inet fw_in")
            .unwrap()
            .elements
            .insert("10.0.0.3 : jump in-b".into());
        let NftPlan::Changes(c) = diff(Some(&w), Some(&t)) else {
            panic!("expected changes");
        };
        assert_eq!(c.len(), 2);
        assert!(matches!(&c[0], NftChange::AddChain(x) if x.name == "in-b"));
        assert!(matches!(&c[1], NftChange::AddElement { element, .. } if element.contains("in-b")));
        let mut s = String::new();
        c[0].script(&mut s);
        assert!(s.contains("add rule inet kvmnet in-b counter drop comment"));
        assert_eq!(diff(Some(&t), Some(&t)), NftPlan::Nothing);
        let mut broken = t.clone();
        broken.intact = false;
        assert_eq!(diff(Some(&t), Some(&broken)), NftPlan::Replace);
    }
}
