//! VXLAN devices of `vxlan` networks, and their flood entries. A device's settings cannot
//! change in place: one that differs is made again, its flood entries removed first and
//! added back after, so every step has an exact inverse.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::order::{Cx, take_off_all};
use super::{Change, Kind, Object, Step, list_diff};
use crate::state::{HostState, VxlanLink};

impl Object for VxlanLink {
    fn kind(&self) -> &'static str {
        "vxlan"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("network".into(), json!(self.network));
        o.insert("vni".into(), json!(self.vni));
        o.insert("underlay".into(), json!(self.underlay));
        o.insert("local".into(), json!(self.local.to_string()));
        o.insert("port".into(), json!(self.port));
        o.insert("group".into(), json!(self.group.map(|g| g.to_string())));
        o.insert("bridge".into(), json!(self.master));
        o.insert("mtu".into(), json!(self.mtu));
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            " (network {}, vni {}, local {} dev {}, port {}, bridge {}, mtu {}",
            self.network,
            self.vni,
            self.local,
            self.underlay,
            self.port,
            self.master.as_deref().unwrap_or("-"),
            self.mtu
        )?;
        if let Some(g) = self.group {
            write!(f, ", group {g}")?;
        }
        write!(f, ")")
    }
}

/// A flood entry (all-zeros MAC) of a VXLAN device towards one remote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fdb {
    pub dev: String,
    pub dst: Ipv4Addr,
}

impl Object for Fdb {
    const OPS: [&'static str; 2] = ["add", "remove"];
    fn kind(&self) -> &'static str {
        "fdb"
    }
    fn name(&self) -> String {
        format!("{} dev {}", self.dst, self.dev)
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("dev".into(), json!(self.dev));
        o.insert("mac".into(), json!("00:00:00:00:00:00"));
        o.insert("dst".into(), json!(self.dst.to_string()));
    }
}

fn fdb(dev: &str, dst: Ipv4Addr, c: fn(Fdb) -> Change<Fdb>) -> Step {
    Step::Fdb(c(Fdb {
        dev: dev.to_string(),
        dst,
    }))
}

/// The devices this plan removes, for good or to make again.
pub(super) fn remade(cx: &Cx<'_>) -> BTreeSet<String> {
    cx.have
        .vxlans
        .iter()
        .filter(|(name, h)| cx.want.vxlans.get(*name) != Some(*h))
        .map(|(name, _)| name.clone())
        .collect()
}

/// After the bridges they join exist.
pub(super) fn changes(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let no_fdb = Vec::new();
    let (want, have) = (cx.want, &cx.have);
    let remade = cx.remade_under(Kind::Fdb);
    for (name, h) in &have.vxlans {
        if remade.contains(name) {
            for dst in have.fdb.get(name).unwrap_or(&no_fdb) {
                steps.push(fdb(name, *dst, Change::Delete));
            }
            steps.push(Step::Vxlan(Change::Delete(h.clone())));
        }
    }
    for (name, w) in &want.vxlans {
        let want_fdb = want.fdb.get(name).unwrap_or(&no_fdb);
        if have.vxlans.get(name) != Some(w) {
            steps.push(Step::Vxlan(Change::Create(w.clone())));
            for dst in want_fdb {
                steps.push(fdb(name, *dst, Change::Create));
            }
            continue;
        }
        let (del, add) = list_diff(have.fdb.get(name).unwrap_or(&no_fdb), want_fdb);
        for dst in del {
            steps.push(fdb(name, dst, Change::Delete));
        }
        for dst in add {
            steps.push(fdb(name, dst, Change::Create));
        }
    }
}

/// The devices whose underlay is `underlay` removed, each with what sits on it.
pub(super) fn take_off(have: &mut HostState, underlay: &str, steps: &mut Vec<Step>) {
    let on: Vec<String> = have
        .vxlans
        .values()
        .filter(|v| v.underlay == underlay)
        .map(|v| v.name.clone())
        .collect();
    for v in on {
        take_off_all(Kind::Vxlan, have, &v, steps);
        if let Some(link) = have.vxlans.remove(&v) {
            steps.push(Step::Vxlan(Change::Delete(link)));
        }
    }
}

/// The flood entries of `dev` removed.
pub(super) fn take_off_fdb(have: &mut HostState, dev: &str, steps: &mut Vec<Step>) {
    for dst in have.fdb.remove(dev).unwrap_or_default() {
        steps.push(fdb(dev, dst, Change::Delete));
    }
}
