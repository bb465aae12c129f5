//! Bonds of `host.uplinks`, and the host interfaces enslaved to them.

use std::fmt;

use serde_json::{Map, Value, json};

use super::order::{Cx, take_off_all};
use super::{Change, Kind, Object, Set, Setting, Step};
use crate::state::{BondLink, HostState, MemberLink};

impl Object for BondLink {
    fn kind(&self) -> &'static str {
        "bond"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("mode".into(), json!(self.mode));
        o.insert("miimon".into(), json!(self.miimon));
        o.insert("lacp_rate".into(), json!(self.lacp_rate));
        o.insert("xmit_hash_policy".into(), json!(self.xmit_hash_policy));
        o.insert("min_links".into(), json!(self.min_links));
        o.insert("primary".into(), json!(self.primary));
        o.insert("mtu".into(), json!(self.mtu));
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, " (mode {}, miimon {}", self.mode, self.miimon)?;
        if !self.lacp_rate.is_empty() {
            write!(f, ", lacp_rate {}", self.lacp_rate)?;
        }
        write!(
            f,
            ", xmit_hash_policy {}, min_links {}, mtu {})",
            self.xmit_hash_policy, self.min_links, self.mtu
        )
    }
    fn changes(a: &Self, b: &Self) -> Vec<(&'static str, String, String)> {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        vec![
            ("mode", a.mode.clone(), b.mode.clone()),
            ("miimon", a.miimon.to_string(), b.miimon.to_string()),
            ("lacp_rate", a.lacp_rate.clone(), b.lacp_rate.clone()),
            (
                "xmit_hash_policy",
                a.xmit_hash_policy.clone(),
                b.xmit_hash_policy.clone(),
            ),
            (
                "min_links",
                a.min_links.to_string(),
                b.min_links.to_string(),
            ),
            ("primary", opt(&a.primary), opt(&b.primary)),
            ("mtu", a.mtu.to_string(), b.mtu.to_string()),
            ("home", a.home.clone(), b.home.clone()),
            ("up", a.up.to_string(), b.up.to_string()),
        ]
    }
}

/// The bond a host interface is enslaved to (`None`: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BondMember;

impl Setting for BondMember {
    type Value = Option<String>;
    const KIND: &'static str = "bond-member";
    fn op(_: &Self::Value, _: &Self::Value) -> &'static str {
        "update"
    }
    fn value(v: &Self::Value) -> Value {
        json!(v)
    }
    fn detail(from: &Self::Value, to: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            ": bond {} -> {}",
            from.as_deref().unwrap_or("(none)"),
            to.as_deref().unwrap_or("(none)")
        )
    }
}

fn step(c: Change<BondLink>) -> Step {
    Step::Bond(c)
}

fn member(link: &str, from: Option<String>, to: Option<String>) -> Step {
    Step::BondMember(Set::new(link, from, to))
}

/// A bond of another mode is made again: everything comes off the old one first (see
/// `CASCADES`), and the rest of the plan then sees no bond and builds it like a new one.
pub(super) fn take_down_replaced(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let want = cx.want;
    let replaced: Vec<BondLink> = cx
        .have
        .bonds
        .values()
        .filter(|h| want.bonds.get(&h.name).is_some_and(|w| h.needs_replace(w)))
        .cloned()
        .collect();
    if replaced.is_empty() {
        return;
    }
    let have = cx.have.to_mut();
    for old in &replaced {
        take_off_all(Kind::Bond, have, &old.name, steps);
        steps.push(step(Change::Delete(old.without_primary())));
        have.bonds.remove(&old.name);
    }
    cx.replaced_bonds
        .extend(replaced.into_iter().map(|b| b.name));
}

/// The members of bond `bond` released, its primary cleared first.
pub(super) fn take_off_members(have: &mut HostState, bond: &str, steps: &mut Vec<Step>) {
    if let Some(old) = have.bonds.get(bond)
        && old.primary.is_some()
    {
        steps.push(step(Change::Update {
            from: old.clone(),
            to: old.without_primary(),
        }));
    }
    for m in have.members.values_mut() {
        if m.bond.as_deref() == Some(bond) {
            let from = m.bond.take();
            steps.push(member(&m.name, from, None));
        }
    }
}

/// New bonds, without their primary.
pub(super) fn create(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, b) in &cx.want.bonds {
        if !cx.have.bonds.contains_key(name) {
            steps.push(step(Change::Create(b.without_primary())));
        }
    }
}

/// A primary is cleared before its bond, going, loses it.
pub(super) fn clear_primaries(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, h) in &cx.have.bonds {
        if !cx.want.bonds.contains_key(name) && h.primary.is_some() {
            steps.push(step(Change::Update {
                from: h.clone(),
                to: h.without_primary(),
            }));
        }
    }
}

/// Members join or leave bonds. A new bond takes the MAC of the first member it gets: its
/// home member joins first.
pub(super) fn members(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let want = cx.want;
    let mut joins: Vec<(&String, &MemberLink)> = want.members.iter().collect();
    joins.sort_by_key(|(name, m)| {
        let home = m
            .bond
            .as_ref()
            .and_then(|b| want.bonds.get(b))
            .is_some_and(|b| b.home == **name);
        (!home, *name)
    });
    for (name, m) in joins {
        let from = cx.have.members.get(name).and_then(|h| h.bond.clone());
        if from != m.bond {
            steps.push(member(name, from, m.bond.clone()));
        }
    }
}

/// Bonds set as wanted (a new one gets its primary here).
pub(super) fn update(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, b) in &cx.want.bonds {
        let from = cx
            .have
            .bonds
            .get(name)
            .cloned()
            .unwrap_or_else(|| b.without_primary());
        if &from != b {
            steps.push(step(Change::Update {
                from,
                to: b.clone(),
            }));
        }
    }
}

pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, b) in &cx.have.bonds {
        if !cx.want.bonds.contains_key(name) {
            steps.push(step(Change::Delete(b.without_primary())));
        }
    }
}
