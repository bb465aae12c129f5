//! 802.1Q sub-interfaces: of vlan networks' uplinks, and of trunk ports. An id, lower device
//! or setting that differs makes one again.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Kind, Object, Step};
use crate::state::{HostState, VlanLink};

impl Object for VlanLink {
    fn kind(&self) -> &'static str {
        "vlan"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("network".into(), json!(self.network));
        o.insert("vlan".into(), json!(self.vid));
        o.insert("link".into(), json!(self.parent));
        o.insert("port".into(), json!(self.port));
        o.insert("bridge".into(), json!(self.master));
        o.insert("mtu".into(), json!(self.mtu));
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            " (network {}, vlan {} on {}, bridge {}, mtu {}",
            self.network,
            self.vid,
            self.parent,
            self.master.as_deref().unwrap_or("-"),
            self.mtu
        )?;
        if self.isolated {
            write!(f, ", isolated")?;
        }
        write!(f, ")")
    }
}

/// A sub-interface found that goes: not wanted as it is, or on a device made again.
fn stale(cx: &Cx<'_>, remade: &BTreeSet<String>, name: &String, v: &VlanLink) -> bool {
    cx.want.vlans.get(name) != Some(v) || remade.contains(&v.parent)
}

/// They leave before the ports and bridges they hang on...
pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    if cx.have.vlans.is_empty() {
        return;
    }
    let remade = cx.remade_under(Kind::Vlan);
    for (name, h) in &cx.have.vlans {
        if stale(cx, &remade, name, h) {
            steps.push(Step::Vlan(Change::Delete(h.clone())));
        }
    }
}

/// ...and come after them.
pub(super) fn create(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    // What is remade is worked out over every port: not for a host without VLANs.
    if cx.want.vlans.is_empty() {
        return;
    }
    let remade = cx.remade_under(Kind::Vlan);
    for (name, w) in &cx.want.vlans {
        match cx.have.vlans.get(name) {
            Some(h) if !stale(cx, &remade, name, h) => {}
            _ => steps.push(Step::Vlan(Change::Create(w.clone()))),
        }
    }
}

/// The sub-interfaces on `parent` removed.
pub(super) fn take_off(have: &mut HostState, parent: &str, steps: &mut Vec<Step>) {
    let on: Vec<String> = have
        .vlans
        .values()
        .filter(|v| v.parent == parent)
        .map(|v| v.name.clone())
        .collect();
    for v in on {
        if let Some(link) = have.vlans.remove(&v) {
            steps.push(Step::Vlan(Change::Delete(link)));
        }
    }
}
