//! Which changes take the live tables to the wanted ones: nothing, a whole replacement
//! (tables missing, not kvmnet's, or going away), or only the chains, sets and elements that
//! differ, ordered so that nft accepts each (jump targets first). Apart from the table model
//! in `mod.rs`, which says what the tables hold; this says how one becomes another.

use std::collections::BTreeSet;

use super::{NftChain, NftChange, NftSet, NftTable};

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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::nft::{FAMILY, NftRule};

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
