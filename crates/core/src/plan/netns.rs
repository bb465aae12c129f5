//! Guest namespaces kvmnet makes and owns.

use serde::{Deserialize, Serialize};

use super::order::Cx;
use super::{Change, Object, Step};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netns {
    pub name: String,
}

impl Object for Netns {
    fn kind(&self) -> &'static str {
        "netns"
    }
    fn name(&self) -> String {
        self.name.clone()
    }
}

fn step(c: Change<Netns>) -> Step {
    Step::Netns(c)
}

fn netns(name: &str) -> Netns {
    Netns {
        name: name.to_string(),
    }
}

pub(super) fn create(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for n in cx.want.netns.difference(&cx.have.netns) {
        steps.push(step(Change::Create(netns(n))));
    }
}

pub(super) fn delete(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for n in cx.have.netns.difference(&cx.want.netns) {
        steps.push(step(Change::Delete(netns(n))));
    }
}
