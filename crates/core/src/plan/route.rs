//! Non-kernel IPv4 routes through bridges, uplinks and bonds.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Object, Step, per_device_diff};
use crate::state::Route;

/// A route through one interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevRoute {
    pub dev: String,
    pub route: Route,
}

impl Object for DevRoute {
    const OPS: [&'static str; 2] = ["add", "remove"];
    fn kind(&self) -> &'static str {
        "route"
    }
    fn name(&self) -> String {
        format!("{} dev {}", self.route, self.dev)
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("dev".into(), json!(self.dev));
        o.insert("route".into(), json!(self.route.to_string()));
    }
}

fn step(c: Change<DevRoute>) -> Step {
    Step::Route(c)
}

/// The routes to remove and to add, interface by interface.
fn diff(cx: &Cx<'_>) -> (Vec<Step>, Vec<Step>) {
    let on = |dev: &String, route| DevRoute {
        dev: dev.clone(),
        route,
    };
    per_device_diff(&cx.want.routes, &cx.have.routes, on, step)
}

pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    steps.extend(diff(cx).0);
}

pub(super) fn add(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    steps.extend(diff(cx).1);
}

/// Every route through `dev` removed.
pub(super) fn take_off(have: &mut crate::state::HostState, dev: &str, steps: &mut Vec<Step>) {
    for route in have.routes.remove(dev).unwrap_or_default() {
        steps.push(step(Change::Delete(DevRoute {
            dev: dev.to_string(),
            route,
        })));
    }
}
