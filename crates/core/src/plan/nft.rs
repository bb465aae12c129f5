//! kvmnet's nftables tables: replaced whole, or changed object by object ([`NftChange`],
//! whose diff is `crate::nft::diff`).

use std::fmt;

use serde_json::{Map, Value, json};

use super::order::Cx;
use super::shaping::presence;
use super::{Describe, Set, Setting, Step};
use crate::nft::{NftChange, NftPlan, NftTable};

/// kvmnet's tables, whole (`None`: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset;

impl Setting for Ruleset {
    type Value = Option<NftTable>;
    const KIND: &'static str = "nftables";
    fn op(from: &Self::Value, to: &Self::Value) -> &'static str {
        presence(from, to)
    }
    fn value(v: &Self::Value) -> Value {
        json!(v.as_ref().map(NftTable::text))
    }
    /// The rules set, only.
    fn fields(_from: &Self::Value, to: &Self::Value, o: &mut Map<String, Value>) {
        o.insert("rules".into(), Self::value(to));
    }
    fn detail(_from: &Self::Value, to: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match to {
            Some(t) => write!(f, " ({} rules)", t.rule_count()),
            None => Ok(()),
        }
    }
}

impl Describe for NftChange {
    fn op(&self) -> &'static str {
        NftChange::op(self)
    }
    fn kind(&self) -> &'static str {
        "nftables"
    }
    fn name(&self) -> String {
        NftChange::name(self)
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        for (k, v) in self.json_fields() {
            o.insert(k.into(), v);
        }
    }
    fn detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", NftChange::detail(self))
    }
}

/// The firewall, before any port comes up.
pub(super) fn changes(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let nft = cx.nft.take().expect("the tables' part is taken once");
    match nft() {
        NftPlan::Nothing => {}
        NftPlan::Replace => steps.push(Step::NftTable(Set::new(
            crate::nft::TABLE,
            cx.have.nft.clone(),
            cx.want.nft.clone(),
        ))),
        NftPlan::Changes(c) => steps.extend(c.into_iter().map(Step::Nft)),
    }
}
