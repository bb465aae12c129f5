//! diff(desired, observed) -> ordered steps, each with its inverse. Pure.
//!
//! A step is a typed change of one kind of object: a [`Change`] (made, removed, or changed
//! from one value to another) of a device or an entry, or a [`Set`] of a setting of something
//! that exists (a sysctl, an interface's MTU, a bridge's shaping...). Each kind has a file of
//! its own here, holding its diff of wanted against observed and how its changes are named,
//! shown and written as JSON ([`Object`], [`Setting`]); inverse, op, name, JSON and text are
//! written once, for every kind. The order the kinds' changes run in, and what goes with an
//! object made again, are the two tables of `order.rs` ([`ORDER`], [`CASCADES`]).

mod addr;
mod addr6;
mod bond;
mod bridge;
mod nb;
mod netns;
mod nft;
mod order;
mod port;
mod route;
mod settings;
mod shaping;
mod vlan;
mod vxlan;

#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::nft::NftChange;
use crate::state::{BondLink, BridgeLink, HostState, PortLink, VlanLink, VxlanLink};

pub use addr::DevAddr;
pub use addr6::DevAddr6;
pub use bond::BondMember;
pub use nb::Chassis;
pub use netns::Netns;
pub use nft::Ruleset;
pub use order::{CASCADES, Cascade, ORDER, Phase};
pub use route::DevRoute;
pub use settings::{Ethtool, LinkUp, Master, Mtu, Sysctl};
pub use shaping::NetworkShaping;
pub use vxlan::Fdb;

/// An object made, removed, or changed in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change<T> {
    Create(T),
    Delete(T),
    Update { from: T, to: T },
}

impl<T: Clone> Change<T> {
    pub fn inverse(&self) -> Change<T> {
        match self {
            Change::Create(x) => Change::Delete(x.clone()),
            Change::Delete(x) => Change::Create(x.clone()),
            Change::Update { from, to } => Change::Update {
                from: to.clone(),
                to: from.clone(),
            },
        }
    }

    /// The object made, removed, or as the change leaves it.
    pub fn object(&self) -> &T {
        match self {
            Change::Create(x) | Change::Delete(x) | Change::Update { to: x, .. } => x,
        }
    }
}

/// A setting of something that exists (named `name`), from one value to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set<S: Setting> {
    pub name: String,
    pub from: S::Value,
    pub to: S::Value,
}

impl<S: Setting> Set<S> {
    pub fn new(name: impl Into<String>, from: S::Value, to: S::Value) -> Set<S> {
        Set {
            name: name.into(),
            from,
            to,
        }
    }

    pub fn inverse(&self) -> Set<S> {
        Set::new(self.name.clone(), self.to.clone(), self.from.clone())
    }
}

/// A kind of object that steps make, remove or change ([`Change`]).
pub trait Object: Clone {
    /// The op words of a create and a delete: devices are created and deleted, entries
    /// (addresses, routes, flood entries) added and removed. An update is an "update".
    const OPS: [&'static str; 2] = ["create", "delete"];
    /// The kind word a plan shows (`bridge`, `tap`...).
    fn kind(&self) -> &'static str;
    fn name(&self) -> String;
    /// The JSON fields of the object made or removed, besides op, kind and name.
    fn fields(&self, _o: &mut Map<String, Value>) {}
    /// What a plan line shows after the name when the object is made.
    fn created(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
    /// What a plan line shows after the name when the object is removed.
    fn deleted(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
    /// What an update changes: (what, from, to) for each thing that may differ.
    fn changes(_from: &Self, _to: &Self) -> Vec<(&'static str, String, String)> {
        Vec::new()
    }
}

/// A kind of setting that steps change ([`Set`]).
pub trait Setting {
    type Value: Clone + fmt::Debug + PartialEq + Eq;
    const KIND: &'static str;
    fn op(_from: &Self::Value, _to: &Self::Value) -> &'static str {
        "set"
    }
    /// One value as JSON.
    fn value(v: &Self::Value) -> Value;
    /// The JSON fields of the change, besides op, kind and name.
    fn fields(from: &Self::Value, to: &Self::Value, o: &mut Map<String, Value>) {
        o.insert("from".into(), Self::value(from));
        o.insert("to".into(), Self::value(to));
    }
    /// What a plan line shows after the name.
    fn detail(from: &Self::Value, to: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// What every change says about itself; written once for [`Change`] and [`Set`].
pub trait Describe {
    fn op(&self) -> &'static str;
    fn kind(&self) -> &'static str;
    fn name(&self) -> String;
    fn fields(&self, o: &mut Map<String, Value>);
    fn detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: Object> Describe for Change<T> {
    fn op(&self) -> &'static str {
        match self {
            Change::Create(_) => T::OPS[0],
            Change::Delete(_) => T::OPS[1],
            Change::Update { .. } => "update",
        }
    }
    fn kind(&self) -> &'static str {
        self.object().kind()
    }
    fn name(&self) -> String {
        self.object().name()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        match self {
            Change::Create(x) | Change::Delete(x) => x.fields(o),
            Change::Update { from, to } => {
                o.insert("changes".into(), changes(T::changes(from, to)));
            }
        }
    }
    fn detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create(x) => x.created(f),
            Change::Delete(x) => x.deleted(f),
            Change::Update { from, to } => write_changes(f, &changes(T::changes(from, to))),
        }
    }
}

impl<S: Setting> Describe for Set<S> {
    fn op(&self) -> &'static str {
        S::op(&self.from, &self.to)
    }
    fn kind(&self) -> &'static str {
        S::KIND
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        S::fields(&self.from, &self.to, o);
    }
    fn detail(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        S::detail(&self.from, &self.to, f)
    }
}

/// The steps, one variant per kind of object, and [`Kind`] naming the variants.
macro_rules! steps {
    ($($(#[$doc:meta])* $kind:ident($change:ty),)*) => {
        // Steps are built once per plan and moved little: boxing the large variants buys
        // nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        pub enum Step {
            $($(#[$doc])* $kind($change),)*
        }

        /// The kinds of step: one per variant of [`Step`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Kind {
            $($kind,)*
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];
        }

        impl Step {
            /// Which kind of step this is.
            pub fn tag(&self) -> Kind {
                match self {
                    $(Step::$kind(_) => Kind::$kind,)*
                }
            }

            pub fn inverse(&self) -> Step {
                match self {
                    $(Step::$kind(c) => Step::$kind(c.inverse()),)*
                }
            }

            fn change(&self) -> &dyn Describe {
                match self {
                    $(Step::$kind(c) => c,)*
                }
            }
        }
    };
}

steps! {
    Netns(Change<Netns>),
    Bridge(Change<BridgeLink>),
    /// Enslave a foreign uplink to a bridge, or release it.
    Master(Set<Master>),
    Addr(Change<DevAddr>),
    /// A bridge's IPv6 gateway address.
    Addr6(Change<DevAddr6>),
    Route(Change<DevRoute>),
    Port(Change<PortLink>),
    /// kvmnet's nftables tables replaced whole.
    NftTable(Set<Ruleset>),
    /// One object of kvmnet's nftables tables; consecutive ones run as one transaction.
    Nft(NftChange),
    Sysctl(Set<Sysctl>),
    Vxlan(Change<VxlanLink>),
    /// A flood entry (all-zeros MAC) of a VXLAN device towards one remote.
    Fdb(Change<Fdb>),
    /// A network's bandwidth and floors, at its bridge.
    Shaping(Set<NetworkShaping>),
    /// ethtool settings of one interface: `to` is set; `from` holds the values they had
    /// (missing for a device this plan makes, whose removal takes its settings with it).
    Ethtool(Set<Ethtool>),
    Vlan(Change<VlanLink>),
    /// Bring a foreign interface (a vlan network's uplink) up, or back down.
    Up(Set<LinkUp>),
    /// A bond is made without a primary (the kernel takes the primary as an interface index,
    /// so it is set by an update once that member is enslaved).
    Bond(Change<BondLink>),
    /// Enslave a host interface to a bond, or release it (taken down around the change).
    BondMember(Set<BondMember>),
    /// MTU of a host interface that `host.uplinks` tunes.
    Mtu(Set<Mtu>),
    /// One of kvmnet's rows in OVN's Northbound database; all of a plan's run as one
    /// transaction.
    Nb(Change<crate::ovn::NbRow>),
    /// This host as an OVN chassis (its Open_vSwitch database), in one transaction.
    Chassis(Set<Chassis>),
}

impl Step {
    pub fn op(&self) -> &'static str {
        self.change().op()
    }

    pub fn kind(&self) -> &'static str {
        self.change().kind()
    }

    pub fn name(&self) -> String {
        self.change().name()
    }

    /// One JSON object per step: `op`, `kind`, `name`, and what the step sets.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "op": self.op(), "kind": self.kind(), "name": self.name() });
        self.change().fields(v.as_object_mut().expect("object"));
        v
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = match self.op() {
            "create" | "add" => '+',
            "delete" | "remove" => '-',
            _ => '~',
        };
        write!(f, "{sign} {} {}", self.kind(), self.name())?;
        self.change().detail(f)
    }
}

/// The things that differ, as `{what: {from, to}}`.
fn changes(pairs: Vec<(&str, String, String)>) -> Value {
    let mut m = Map::new();
    for (k, a, b) in pairs {
        if a != b {
            m.insert(k.to_string(), json!({ "from": a, "to": b }));
        }
    }
    Value::Object(m)
}

fn write_changes(f: &mut fmt::Formatter<'_>, v: &Value) -> fmt::Result {
    if let Some(m) = v.as_object() {
        let parts: Vec<String> = m
            .iter()
            .map(|(k, c)| {
                format!(
                    "{k} {} -> {}",
                    c["from"].as_str().unwrap_or(""),
                    c["to"].as_str().unwrap_or("")
                )
            })
            .collect();
        write!(f, ": {}", parts.join(", "))?;
    }
    Ok(())
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({ "changes": self.steps.iter().map(Step::to_json).collect::<Vec<_>>() })
    }

    pub fn render(&self) -> String {
        if self.steps.is_empty() {
            return "No changes: the host matches the spec.\n".to_string();
        }
        let mut s = String::new();
        let (mut add, mut change, mut del) = (0, 0, 0);
        for st in &self.steps {
            s.push_str(&format!("{st}\n"));
            match st.op() {
                "create" | "add" => add += 1,
                "delete" | "remove" => del += 1,
                _ => change += 1,
            }
        }
        s.push_str(&format!(
            "Plan: {add} to add, {change} to change, {del} to remove.\n"
        ));
        s
    }
}

fn list_diff<T: Clone + PartialEq>(have: &[T], want: &[T]) -> (Vec<T>, Vec<T>) {
    let del = have.iter().filter(|x| !want.contains(x)).cloned().collect();
    let add = want.iter().filter(|x| !have.contains(x)).cloned().collect();
    (del, add)
}

/// Entries held per interface (addresses, routes): the steps that remove those found and
/// not wanted and add those wanted and not found, interface by interface.
fn per_device_diff<T: Clone + PartialEq, O>(
    want: &std::collections::BTreeMap<String, Vec<T>>,
    have: &std::collections::BTreeMap<String, Vec<T>>,
    on: impl Fn(&String, T) -> O,
    step: fn(Change<O>) -> Step,
) -> (Vec<Step>, Vec<Step>) {
    let devs: std::collections::BTreeSet<&String> = want.keys().chain(have.keys()).collect();
    let empty = Vec::new();
    let (mut dels, mut adds) = (Vec::new(), Vec::new());
    for dev in devs {
        let (d, a) = list_diff(
            have.get(dev).unwrap_or(&empty),
            want.get(dev).unwrap_or(&empty),
        );
        dels.extend(d.into_iter().map(|x| step(Change::Delete(on(dev, x)))));
        adds.extend(a.into_iter().map(|x| step(Change::Create(on(dev, x)))));
    }
    (dels, adds)
}

/// The ordered steps that turn `have` into `want`, in the order [`ORDER`] states.
///
/// Order: namespaces and bridges first; uplinks enslaved or released; routes and addresses
/// moved (old routes out before addresses move, new routes in after); the firewall before any
/// port comes up; ports that go away before new ones are made; sysctls (forwarding) only once
/// the firewall is in place; bridges and namespaces removed last.
pub fn diff(want: &HostState, have: &HostState) -> Plan {
    // The tables' part needs nothing from the rest and is the biggest on a large host (a
    // thousand chains): it is worked out alongside.
    std::thread::scope(|s| {
        let nft = s.spawn(|| crate::nft::diff(want.nft.as_ref(), have.nft.as_ref()));
        order::diff_with(want, have, move || {
            nft.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    })
}
