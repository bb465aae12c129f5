//! Host settings kvmnet borrows: values it changes on objects it does not own (a sysctl, a
//! host interface's MTU, ethtool settings or up state, the addresses and routes a bridge or
//! bond takes from the interface it enslaves), recorded, enforced while the spec asks for
//! them, and given back when it stops asking (destroy included). One mechanism for every
//! kind, so that a new kind is a key type, a line in [`Managed`] and a line in [`changes`]
//! (or, for moved addresses, in [`Borrowed::retain_managed`]).
//!
//! Pure: the engine records from the steps it is about to run and keeps what is still
//! managed afterwards; the desired state asks [`Originals::to_give_back`] what to restore.
//!
//! Moved addresses and routes differ in one way: what is recorded is not a value from
//! before the first change but what the bridge (or bond) holds for the interface it took,
//! as the plan just applied left it. They are recorded after a successful apply, replacing
//! the record (a bridge's addresses may grow while it holds them); the desired state puts
//! back any deleted by hand, and hands them back to the interface when the bridge goes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::plan::{Set, Step};
use crate::state::Moved;

/// A recorded original value. The first one recorded wins: later ones are values kvmnet
/// itself set.
pub trait Original: Clone {
    /// Keeps `self` (the older value), adding what only `later` holds.
    fn keep_first(&mut self, later: Self);
}

impl Original for String {
    fn keep_first(&mut self, _: Self) {}
}

impl Original for u32 {
    fn keep_first(&mut self, _: Self) {}
}

impl Original for bool {
    fn keep_first(&mut self, _: Self) {}
}

/// Several settings of one object (ethtool keys of a device): each keeps its first value.
impl Original for BTreeMap<String, u32> {
    fn keep_first(&mut self, later: Self) {
        for (k, v) in later {
            self.entry(k).or_insert(v);
        }
    }
}

/// Original values by key. Serialized as the plain map (the state directory's format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Originals<V>(pub BTreeMap<String, V>);

impl<V> Default for Originals<V> {
    fn default() -> Self {
        Originals(BTreeMap::new())
    }
}

impl<V: Original> Originals<V> {
    /// Notes `before` as `key`'s original, unless one is recorded already.
    pub fn record(&mut self, key: &str, before: V) {
        match self.0.get_mut(key) {
            Some(first) => first.keep_first(before),
            None => {
                self.0.insert(key.to_string(), before);
            }
        }
    }

    /// Forgets the originals of keys no longer managed: they have been given back.
    pub fn retain_managed(&mut self, managed: impl Fn(&str) -> bool) {
        self.0.retain(|k, _| managed(k));
    }

    /// Originals of keys the spec no longer manages: what to give back.
    pub fn to_give_back<'a>(
        &'a self,
        managed: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a String, &'a V)> + 'a {
        self.0.iter().filter(move |(k, _)| !managed(k))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V> std::ops::Deref for Originals<V> {
    type Target = BTreeMap<String, V>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<V> std::ops::DerefMut for Originals<V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// What a spec borrows: the settings it asks for on objects kvmnet does not own.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Managed {
    pub sysctls: BTreeSet<String>,
    pub mtus: BTreeSet<String>,
    /// ethtool keys by device.
    pub ethtool: BTreeMap<String, BTreeSet<String>>,
    /// Host interfaces a network of the spec sits on: one kvmnet brought up stays up while
    /// any is listed here.
    pub up: BTreeSet<String>,
    /// By bridge (of a bridge-mode network) and by bond: the addresses and routes it holds
    /// from the interfaces it took, once the plan is applied.
    pub moved: BTreeMap<String, Moved>,
}

/// Every kind of borrowed setting, as the state directory keeps them (under the names the
/// first kinds had there).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Borrowed {
    #[serde(rename = "sysctl_originals")]
    pub sysctls: Originals<String>,
    #[serde(rename = "mtu_originals")]
    pub mtus: Originals<u32>,
    #[serde(rename = "ethtool_originals")]
    pub ethtool: Originals<BTreeMap<String, u32>>,
    /// Up state (always `false`: kvmnet only brings interfaces up).
    #[serde(rename = "raised", skip_serializing_if = "Originals::is_empty")]
    pub up: Originals<bool>,
    /// Addresses and routes moved onto a bridge or bond, by bridge or bond (see the module
    /// doc).
    pub moved: Originals<Moved>,
}

/// One borrowed setting a step changes, with its value before the step.
pub enum Change<'a> {
    Sysctl(&'a str, &'a str),
    Mtu(&'a str, u32),
    Ethtool(&'a str, BTreeMap<String, u32>),
    Up(&'a str, bool),
}

/// The borrowed settings `step` changes, if `managed` says the spec asks for them.
pub fn changes<'a>(step: &'a Step, managed: &Managed) -> Option<Change<'a>> {
    match step {
        Step::Sysctl(Set { name, from, .. }) if managed.sysctls.contains(name) => {
            Some(Change::Sysctl(name, from))
        }
        Step::Mtu(Set { name, from, .. }) if managed.mtus.contains(name) => {
            Some(Change::Mtu(name, *from))
        }
        Step::Ethtool(Set {
            name: dev, from, ..
        }) => {
            let keys = managed.ethtool.get(dev)?;
            let before: BTreeMap<String, u32> = from
                .iter()
                .filter(|(k, _)| keys.contains(*k))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            (!before.is_empty()).then_some(Change::Ethtool(dev, before))
        }
        Step::Up(Set {
            name, from: false, ..
        }) if managed.up.contains(name) => Some(Change::Up(name, false)),
        _ => None,
    }
}

impl Borrowed {
    /// Records the originals of what `steps` change, before they run.
    pub fn record(&mut self, steps: &[Step], managed: &Managed) {
        for s in steps {
            match changes(s, managed) {
                Some(Change::Sysctl(k, v)) => self.sysctls.record(k, v.to_string()),
                Some(Change::Mtu(k, v)) => self.mtus.record(k, v),
                Some(Change::Ethtool(k, v)) => self.ethtool.record(k, v),
                Some(Change::Up(k, v)) => self.up.record(k, v),
                None => {}
            }
        }
    }

    /// After a successful apply: only what the spec still borrows stays recorded (the rest
    /// was given back by that apply), and moved addresses are recorded as the plan left
    /// them.
    pub fn retain_managed(&mut self, managed: &Managed) {
        self.sysctls.retain_managed(|k| managed.sysctls.contains(k));
        self.mtus.retain_managed(|k| managed.mtus.contains(k));
        self.up.retain_managed(|k| managed.up.contains(k));
        self.ethtool.0.retain(|dev, vals| {
            vals.retain(|k, _| managed.ethtool.get(dev).is_some_and(|m| m.contains(k)));
            !vals.is_empty()
        });
        self.record_moved(managed);
    }

    /// Hands the recorded settings to `snap`, where the desired state reads them (what to
    /// give back, what to put back on a bridge).
    pub fn fill(self, snap: &mut crate::snapshot::Snapshot) {
        snap.sysctl_originals = self.sysctls.0;
        snap.mtu_originals = self.mtus.0;
        snap.ethtool_originals = self.ethtool.0;
        snap.raised = self.up.0;
        snap.moved = self.moved.0;
    }

    /// Records what the bridges and bonds of `managed` hold from the interfaces they took
    /// (nothing left for those that went: given back). Returns whether that changed the
    /// record: an apply with nothing to do still records it.
    pub fn record_moved(&mut self, managed: &Managed) -> bool {
        if *self.moved == managed.moved {
            return false;
        }
        self.moved = Originals(managed.moved.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn managed() -> Managed {
        Managed {
            sysctls: ["net.ipv4.ip_forward".to_string()].into(),
            mtus: ["eth0".to_string()].into(),
            ethtool: [("eth0".to_string(), ["gro".to_string()].into())].into(),
            up: ["eth1".to_string()].into(),
            moved: BTreeMap::new(),
        }
    }

    #[test]
    fn the_first_value_is_the_original_and_only_managed_settings_are_recorded() {
        let mut b = Borrowed::default();
        let steps = vec![
            Step::Sysctl(Set::new("net.ipv4.ip_forward", "0".into(), "1".into())),
            Step::Sysctl(Set::new("net.core.somaxconn", "4096".into(), "1".into())),
            Step::Up(Set::new("eth1", false, true)),
            Step::Up(Set::new("eth2", false, true)),
        ];
        b.record(&steps, &managed());
        b.record(
            &[Step::Sysctl(Set::new(
                "net.ipv4.ip_forward",
                "1".into(),
                "0".into(),
            ))],
            &managed(),
        );
        assert_eq!(
            b.sysctls.get("net.ipv4.ip_forward").map(String::as_str),
            Some("0")
        );
        assert!(!b.sysctls.contains_key("net.core.somaxconn"));
        assert_eq!(b.up.get("eth1"), Some(&false));
        assert!(!b.up.contains_key("eth2"));
    }

    #[test]
    fn what_is_no_longer_managed_is_given_back_then_forgotten() {
        let mut b = Borrowed::default();
        b.up.record("eth1", false);
        b.mtus.record("eth0", 1500);
        let now = Managed {
            mtus: ["eth0".to_string()].into(),
            ..Managed::default()
        };
        let back: Vec<_> = b.up.to_give_back(|k| now.up.contains(k)).collect();
        assert_eq!(back, vec![(&"eth1".to_string(), &false)]);
        assert_eq!(b.mtus.to_give_back(|k| now.mtus.contains(k)).count(), 0);
        b.retain_managed(&now);
        assert!(b.up.is_empty());
        assert_eq!(b.mtus.get("eth0"), Some(&1500));
    }

    #[test]
    fn ethtool_keys_of_one_device_each_keep_their_first_value() {
        let mut o: Originals<BTreeMap<String, u32>> = Originals::default();
        o.record("eth0", [("gro".to_string(), 1)].into());
        o.record(
            "eth0",
            [("gro".to_string(), 0), ("tso".to_string(), 1)].into(),
        );
        assert_eq!(
            o["eth0"],
            [("gro".to_string(), 1), ("tso".to_string(), 1)].into()
        );
    }

    #[test]
    fn moved_addresses_are_what_the_plan_leaves_and_go_when_their_bridge_goes() {
        let moved = |cidr: &str| Moved {
            addrs: vec![crate::state::Addr::with_standard_broadcast(
                cidr.parse().unwrap(),
            )],
            routes: Vec::new(),
        };
        let mut b = Borrowed::default();
        let mut now = Managed {
            moved: [("br0".to_string(), moved("192.0.2.10/24"))].into(),
            ..Managed::default()
        };
        // Steps record no moved addresses: those are recorded once the plan is applied.
        b.record(&[], &now);
        assert!(b.moved.is_empty());
        assert!(b.record_moved(&now));
        assert!(!b.record_moved(&now), "nothing new to record");
        now.moved.insert("br0".to_string(), moved("192.0.2.11/24"));
        b.retain_managed(&now);
        assert_eq!(b.moved["br0"], moved("192.0.2.11/24"));
        // The bridge went (destroy): the addresses went back to the uplink with it.
        b.retain_managed(&Managed::default());
        assert!(b.moved.is_empty());
    }

    /// A state file written before moved addresses joined the borrowed settings (`moved`
    /// beside them at the top level) reads the same, and is written the same.
    #[test]
    fn a_state_file_with_moved_addresses_reads_as_before() {
        let old = r#"{
  "sysctl_originals": {"net.ipv4.ip_forward": "0"},
  "mtu_originals": {},
  "ethtool_originals": {},
  "moved": {
    "br0": {
      "addrs": [{"cidr": "192.0.2.10/24", "broadcast": "192.0.2.255"}],
      "routes": [{"dst": "0.0.0.0/0", "gateway": "192.0.2.1", "metric": null, "table": 254,
                  "protocol": 3, "scope": 0, "prefsrc": null}]
    }
  }
}"#;
        let b: Borrowed = serde_json::from_str(old).unwrap();
        assert_eq!(b.sysctls["net.ipv4.ip_forward"], "0");
        let br0 = &b.moved["br0"];
        assert_eq!(br0.addrs[0].cidr.to_string(), "192.0.2.10/24");
        assert_eq!(br0.routes[0].gateway, Some("192.0.2.1".parse().unwrap()));
        let again: serde_json::Value = serde_json::to_value(&b).unwrap();
        let want: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(again, want);
        // One written before bridges took addresses at all has none.
        let older: Borrowed = serde_json::from_str(r#"{"sysctl_originals": {}}"#).unwrap();
        assert!(older.moved.is_empty());
    }

    #[test]
    fn serialized_as_the_plain_map() {
        let mut o: Originals<u32> = Originals::default();
        o.record("eth0", 9000);
        assert_eq!(serde_json::to_string(&o).unwrap(), r#"{"eth0":9000}"#);
    }
}
