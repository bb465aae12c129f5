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

mod change;
mod diff;
mod firewall;
mod guard;
mod networks;

pub use change::NftChange;
pub use diff::{NftPlan, chains_to_read, diff};

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
}
