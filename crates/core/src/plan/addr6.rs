//! IPv6 addresses of kvmnet's bridges (a routed network's gateway `ipv6`). Added without
//! duplicate address detection (the address is the host's own on a bridge it owns); the
//! kernel adds and removes the prefix route with each.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Object, Step, per_device_diff};
use crate::spec::Ipv6Cidr;

/// An IPv6 address on one bridge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevAddr6 {
    pub dev: String,
    pub addr: Ipv6Cidr,
}

impl Object for DevAddr6 {
    const OPS: [&'static str; 2] = ["add", "remove"];
    fn kind(&self) -> &'static str {
        "address"
    }
    fn name(&self) -> String {
        format!("{} dev {}", self.addr, self.dev)
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("dev".into(), json!(self.dev));
        o.insert("address".into(), json!(self.addr.to_string()));
    }
}

fn step(c: Change<DevAddr6>) -> Step {
    Step::Addr6(c)
}

fn diff(cx: &Cx<'_>) -> (Vec<Step>, Vec<Step>) {
    let on = |dev: &String, addr| DevAddr6 {
        dev: dev.clone(),
        addr,
    };
    per_device_diff(&cx.want.addrs6, &cx.have.addrs6, on, step)
}

pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    steps.extend(diff(cx).0);
}

pub(super) fn add(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    steps.extend(diff(cx).1);
}
