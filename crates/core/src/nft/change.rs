//! One change to one object of kvmnet's nftables tables (a chain, a set or map, an element):
//! its inverse, how a plan shows it, and the nft commands that make it. Apart from the table
//! model in `mod.rs` because this is what the planner and the executor exchange, and from
//! [`super::diff`] because what a change does is another matter than which changes a table
//! needs.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{NftChain, NftSet, TABLE, rule_line};

/// One change to one object of kvmnet's tables, when the tables are kvmnet's and only part
/// of them differs. Sets are made and removed empty; their elements are changes of their own,
/// so every change has an exact inverse and the order in [`super::diff()`] holds both ways.
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
