//! Settings of host interfaces and of the host that kvmnet changes but does not own: the
//! master of a bridge uplink, whether a vlan uplink is up, NIC MTUs, ethtool settings,
//! sysctls.

use std::fmt;

use serde_json::{Value, json};

use super::order::Cx;
use super::{Set, Setting, Step, port};
use crate::state::{EthtoolValues, HostState};

/// The bridge a foreign uplink is enslaved to (`None`: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master;

impl Setting for Master {
    type Value = Option<String>;
    const KIND: &'static str = "uplink";
    fn op(_: &Self::Value, _: &Self::Value) -> &'static str {
        "update"
    }
    fn value(v: &Self::Value) -> Value {
        json!(v)
    }
    fn detail(from: &Self::Value, to: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            ": master {} -> {}",
            from.as_deref().unwrap_or("(none)"),
            to.as_deref().unwrap_or("(none)")
        )
    }
}

/// Whether a foreign interface is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkUp;

fn up_word(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

impl Setting for LinkUp {
    type Value = bool;
    const KIND: &'static str = "uplink";
    fn op(_: &bool, _: &bool) -> &'static str {
        "update"
    }
    fn value(v: &bool) -> Value {
        json!(up_word(*v))
    }
    fn detail(from: &bool, to: &bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ": {} -> {}", up_word(*from), up_word(*to))
    }
}

/// The MTU of a host interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mtu;

impl Setting for Mtu {
    type Value = u32;
    const KIND: &'static str = "mtu";
    fn value(v: &u32) -> Value {
        json!(v)
    }
    fn detail(from: &u32, to: &u32, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ": {from} -> {to}")
    }
}

/// One sysctl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysctl;

impl Setting for Sysctl {
    type Value = String;
    const KIND: &'static str = "sysctl";
    fn value(v: &String) -> Value {
        json!(v)
    }
    fn detail(from: &String, to: &String, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ": {from} -> {to}")
    }
}

/// ethtool settings of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ethtool;

impl Setting for Ethtool {
    type Value = EthtoolValues;
    const KIND: &'static str = "ethtool";
    fn value(v: &EthtoolValues) -> Value {
        json!(v)
    }
    fn detail(from: &EthtoolValues, to: &EthtoolValues, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = |k: &str, v: u32| {
            if k.contains('.') {
                v.to_string()
            } else if v != 0 {
                "on".to_string()
            } else {
                "off".to_string()
            }
        };
        let parts: Vec<String> = to
            .iter()
            .map(|(k, v)| match from.get(k) {
                Some(old) => format!("{k} {} -> {}", word(k, *old), word(k, *v)),
                None => format!("{k} -> {}", word(k, *v)),
            })
            .collect();
        write!(f, ": {}", parts.join(", "))
    }
}

/// NIC MTUs first: a bridge or VXLAN device on top was planned with the new MTU.
pub(super) fn mtus(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (name, mtu) in &cx.want.mtus {
        if let Some(cur) = cx.have.mtus.get(name)
            && cur != mtu
        {
            steps.push(Step::Mtu(Set::new(name, *cur, *mtu)));
        }
    }
}

/// Uplinks enslaved to their bridges, or released.
pub(super) fn masters(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let (want, have) = (cx.want, &cx.have);
    for (name, u) in &want.uplinks {
        let from = have.uplinks.get(name).and_then(|h| h.master.clone());
        // A former bridge uplink that joins a bond is released from its bridge here; once
        // in its bond, the bond-member steps own its master.
        let in_bond = u.master.is_none()
            && want.members.get(name).is_some_and(|m| m.bond.is_some())
            && from.as_ref().is_some_and(|f| !have.bridges.contains_key(f));
        if from != u.master && !in_bond {
            steps.push(Step::Master(Set::new(name, from, u.master.clone())));
        }
    }
}

/// `link` released from its bridge.
pub(super) fn take_off_master(have: &mut HostState, link: &str, steps: &mut Vec<Step>) {
    if let Some(u) = have.uplinks.get_mut(link)
        && u.master.is_some()
    {
        steps.push(Step::Master(Set::new(link, u.master.take(), None)));
    }
}

pub(super) fn raise(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for link in &cx.want.raise {
        steps.push(Step::Up(Set::new(link, false, true)));
    }
}

pub(super) fn lower(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for link in &cx.want.lower {
        steps.push(Step::Up(Set::new(link, true, false)));
    }
}

/// ethtool settings once every device exists. A device this plan makes starts from its
/// defaults, whatever the device it replaces had.
pub(super) fn ethtool(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    // What is made is worked out over every port: not for a host without ethtool settings.
    if cx.want.ethtool.is_empty() {
        return;
    }
    let fresh = port::made(cx);
    for (dev, w) in &cx.want.ethtool {
        let h = cx.have.ethtool.get(dev).filter(|_| !fresh.contains(dev));
        let mut from = EthtoolValues::new();
        let mut to = EthtoolValues::new();
        for (k, v) in w {
            let cur = h.and_then(|h| h.get(k));
            if cur != Some(v) {
                to.insert(k.clone(), *v);
                if let Some(c) = cur {
                    from.insert(k.clone(), *c);
                }
            }
        }
        if !to.is_empty() {
            steps.push(Step::Ethtool(Set::new(dev, from, to)));
        }
    }
}

pub(super) fn sysctls(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    for (k, v) in &cx.want.sysctls {
        if let Some(cur) = cx.have.sysctls.get(k)
            && cur != v
        {
            steps.push(Step::Sysctl(Set::new(k, cur.clone(), v.clone())));
        }
    }
}
