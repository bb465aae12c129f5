//! A network's bandwidth and its VMs' floors, as the HTB tree on its bridge.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Value, json};

use super::order::Cx;
use super::{Set, Setting, Step};
use crate::state::Shaping;

/// The shaping at one bridge (`None`: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkShaping;

impl Setting for NetworkShaping {
    type Value = Option<Shaping>;
    const KIND: &'static str = "shaping";
    fn op(from: &Self::Value, to: &Self::Value) -> &'static str {
        presence(from, to)
    }
    fn value(v: &Self::Value) -> Value {
        json!(v.as_ref().map(shaping_word))
    }
    fn detail(from: &Self::Value, to: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (from, to) {
            (_, Some(t)) => write!(f, ": {}", shaping_word(t)),
            (Some(h), None) => write!(f, " (was {})", shaping_word(h)),
            (None, None) => Ok(()),
        }
    }
}

/// The op of a setting that may be missing: made, removed, or set.
pub(super) fn presence<T>(from: &Option<T>, to: &Option<T>) -> &'static str {
    match (from, to) {
        (_, None) => "delete",
        (None, _) => "create",
        _ => "set",
    }
}

/// "bandwidth 1gbit, floors 52:54:00:00:00:01 100mbit (1:10)"; "(damaged)" when the live
/// tree is not what its classes say.
fn shaping_word(s: &Shaping) -> String {
    let rate = crate::spec::show_rate;
    let mut w = format!("bandwidth {}", rate(s.bandwidth));
    if !s.floors.is_empty() {
        let floors: Vec<String> = s
            .floors
            .iter()
            .map(|(mac, f)| format!("{mac} {} (1:{:x})", rate(f.rate), f.class))
            .collect();
        w.push_str(&format!(", floors {}", floors.join(", ")));
    }
    if !s.intact {
        w.push_str(" (damaged)");
    }
    w
}

/// Once the bridges exist; removed before a bridge goes, so that undoing the removal puts it
/// back exactly.
pub(super) fn changes(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let (want, have) = (&cx.want.shaping, &cx.have.shaping);
    let bridges: BTreeSet<&String> = want.keys().chain(have.keys()).collect();
    for bridge in bridges {
        let (w, h) = (want.get(bridge), have.get(bridge));
        if w != h {
            steps.push(Step::Shaping(Set::new(bridge, h.cloned(), w.cloned())));
        }
    }
}
