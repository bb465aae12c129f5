//! IPv4 addresses of bridges, uplinks and bonds.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Object, Step, per_device_diff};
use crate::state::Addr;

/// An address on one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevAddr {
    pub dev: String,
    pub addr: Addr,
}

impl DevAddr {
    /// What the plan line shows beyond the address: its broadcast when not the usual one.
    fn extra(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = self.addr.to_string();
        match full.strip_prefix(&self.addr.cidr.to_string()) {
            Some(extra) if !extra.is_empty() => write!(f, "{extra}"),
            _ => Ok(()),
        }
    }
}

impl Object for DevAddr {
    const OPS: [&'static str; 2] = ["add", "remove"];
    fn kind(&self) -> &'static str {
        "address"
    }
    fn name(&self) -> String {
        format!("{} dev {}", self.addr.cidr, self.dev)
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("dev".into(), json!(self.dev));
        o.insert("address".into(), json!(self.addr.cidr.to_string()));
        o.insert(
            "broadcast".into(),
            json!(self.addr.broadcast.map(|b| b.to_string())),
        );
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.extra(f)
    }
    fn deleted(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.extra(f)
    }
}

fn step(c: Change<DevAddr>) -> Step {
    Step::Addr(c)
}

/// The addresses to remove and to add, interface by interface.
fn diff(cx: &Cx<'_>) -> (Vec<Step>, Vec<Step>) {
    let on = |dev: &String, addr| DevAddr {
        dev: dev.clone(),
        addr,
    };
    per_device_diff(&cx.want.addrs, &cx.have.addrs, on, step)
}

pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    steps.extend(diff(cx).0);
}

pub(super) fn add(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    steps.extend(diff(cx).1);
}

/// Every address of `dev` removed.
pub(super) fn take_off(have: &mut crate::state::HostState, dev: &str, steps: &mut Vec<Step>) {
    for addr in have.addrs.remove(dev).unwrap_or_default() {
        steps.push(step(Change::Delete(DevAddr {
            dev: dev.to_string(),
            addr,
        })));
    }
}
