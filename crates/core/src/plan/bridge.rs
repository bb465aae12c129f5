//! Bridges: one per network that has one.

use std::fmt;

use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Object, Step};
use crate::state::BridgeLink;

impl Object for BridgeLink {
    fn kind(&self) -> &'static str {
        "bridge"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("network".into(), json!(self.network));
        o.insert("mac".into(), json!(self.mac.to_string()));
        o.insert("mtu".into(), json!(self.mtu));
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            " (network {}, mac {}, mtu {})",
            self.network, self.mac, self.mtu
        )
    }
    fn changes(a: &Self, b: &Self) -> Vec<(&'static str, String, String)> {
        vec![
            ("mac", a.mac.to_string(), b.mac.to_string()),
            ("mtu", a.mtu.to_string(), b.mtu.to_string()),
            ("up", a.up.to_string(), b.up.to_string()),
            ("network", a.network.clone(), b.network.clone()),
        ]
    }
}

pub(super) fn create_update(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, b) in &cx.want.bridges {
        match cx.have.bridges.get(name) {
            None => steps.push(Step::Bridge(Change::Create(b.clone()))),
            Some(h) if h != b => steps.push(Step::Bridge(Change::Update {
                from: h.clone(),
                to: b.clone(),
            })),
            _ => {}
        }
    }
}

pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, b) in &cx.have.bridges {
        if !cx.want.bridges.contains_key(name) {
            steps.push(Step::Bridge(Change::Delete(b.clone())));
        }
    }
}
