//! A model host for rollback without root: every step is a change of one fact (an object
//! with its settings, an address, a sysctl value...) from one value to another, refused when
//! the host does not hold the value the step expects, as the kernel refuses to make what
//! exists or delete what does not. Failing each step of a plan in turn, the apply driver's
//! rollback must leave the model exactly as it was, which checks every step's inverse and
//! the undo order together.

use std::collections::BTreeMap;
use std::path::Path;

use kvmnet::apply::{self, ApplyError, Executor, Stopped};
use kvmnet::nft::NftChange;
use kvmnet::plan::{Change, DevAddr, DevAddr6, DevRoute, Fdb, Netns, Set, Setting, Step};
use kvmnet::state::{BondLink, BridgeLink, PortLink, VlanLink, VxlanLink};

type Facts = BTreeMap<String, String>;

fn js<T: serde::Serialize>(v: &T) -> Option<String> {
    Some(serde_json::to_string(v).expect("steps serialize"))
}

fn nft_effect(c: &NftChange) -> Effect {
    use NftChange::*;
    match c {
        AddChain(ch) => (format!("chain {} {}", ch.family, ch.name), None, js(ch)),
        DelChain(ch) => (format!("chain {} {}", ch.family, ch.name), js(ch), None),
        UpdateChain { from, to } => (format!("chain {} {}", to.family, to.name), js(from), js(to)),
        AddSet(st) => (format!("set {} {}", st.family, st.name), None, js(st)),
        DelSet(st) => (format!("set {} {}", st.family, st.name), js(st), None),
        AddElement {
            family,
            set,
            element,
        } => (format!("element {family} {set} {element}"), None, js(&true)),
        DelElement {
            family,
            set,
            element,
        } => (format!("element {family} {set} {element}"), js(&true), None),
    }
}

/// What a fact is called and, present, holds: a device is a link with its settings, an
/// entry (address, route, flood entry) or a namespace just is.
trait Fact {
    fn fact(&self) -> String;
    fn value(&self) -> Option<String>;
}

macro_rules! link_fact {
    ($($t:ty),*) => {$(
        impl Fact for $t {
            fn fact(&self) -> String {
                format!("link {}", self.name)
            }
            fn value(&self) -> Option<String> {
                js(self)
            }
        }
    )*};
}
link_fact!(BridgeLink, PortLink, VxlanLink, VlanLink, BondLink);

impl Fact for kvmnet::ovn_core::NbRow {
    fn fact(&self) -> String {
        format!("nb {}", self.id())
    }
    fn value(&self) -> Option<String> {
        js(self)
    }
}

impl Fact for Netns {
    fn fact(&self) -> String {
        format!("netns {}", self.name)
    }
    fn value(&self) -> Option<String> {
        js(&true)
    }
}

impl Fact for DevAddr {
    fn fact(&self) -> String {
        format!("addr {} {}", self.dev, js(&self.addr).unwrap())
    }
    fn value(&self) -> Option<String> {
        js(&true)
    }
}

impl Fact for DevAddr6 {
    fn fact(&self) -> String {
        format!("addr6 {} {}", self.dev, self.addr)
    }
    fn value(&self) -> Option<String> {
        js(&true)
    }
}

impl Fact for DevRoute {
    fn fact(&self) -> String {
        format!("route {} {}", self.dev, js(&self.route).unwrap())
    }
    fn value(&self) -> Option<String> {
        js(&true)
    }
}

impl Fact for Fdb {
    fn fact(&self) -> String {
        format!("fdb {} {}", self.dev, self.dst)
    }
    fn value(&self) -> Option<String> {
        js(&true)
    }
}

type Effect = (String, Option<String>, Option<String>);

fn change<T: Fact>(c: &Change<T>) -> Effect {
    match c {
        Change::Create(x) => (x.fact(), None, x.value()),
        Change::Delete(x) => (x.fact(), x.value(), None),
        Change::Update { from, to } => (to.fact(), from.value(), to.value()),
    }
}

fn set<S: Setting>(what: &str, s: &Set<S>) -> Effect
where
    S::Value: serde::Serialize,
{
    (format!("{what} {}", s.name), js(&s.from), js(&s.to))
}

/// The one fact `s` changes: its name, the value it expects, the value it leaves.
fn effect(s: &Step) -> Effect {
    match s {
        Step::Netns(c) => change(c),
        Step::Bridge(c) => change(c),
        Step::Master(s) => set("master", s),
        Step::Addr(c) => change(c),
        Step::Addr6(c) => change(c),
        Step::Route(c) => change(c),
        Step::Port(c) => change(c),
        Step::NftTable(s) => ("nft".into(), js(&s.from), js(&s.to)),
        Step::Nft(c) => nft_effect(c),
        Step::Sysctl(s) => set("sysctl", s),
        Step::Vxlan(c) => change(c),
        Step::Fdb(c) => change(c),
        Step::Shaping(s) => set("shaping", s),
        Step::Ethtool(s) => set("ethtool", s),
        Step::Vlan(c) => change(c),
        Step::Up(s) => set("up", s),
        Step::Bond(c) => change(c),
        Step::BondMember(s) => set("bond member", s),
        Step::Mtu(s) => set("mtu", s),
        Step::Nb(c) => change(c),
        Step::Chassis(s) => set("chassis", s),
    }
}

/// A host of facts. `refuse` is the index (in the steps of one run) to refuse; the steps of
/// that run after it still go through, as requests already in flight in a pipelined batch
/// do.
struct Model {
    facts: Facts,
    refuse: Option<usize>,
}

impl Model {
    fn change(&mut self, s: &Step) -> Result<(), String> {
        let (fact, before, after) = effect(s);
        if self.facts.get(&fact) != before.as_ref() {
            return Err(format!("{s}: {fact} is {:?}", self.facts.get(&fact)));
        }
        match after {
            Some(v) => self.facts.insert(fact, v),
            None => self.facts.remove(&fact),
        };
        Ok(())
    }
}

impl Executor for Model {
    fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>> {
        let refuse = self.refuse.take();
        let (mut done, mut failed, mut error) = (Vec::new(), Vec::new(), None);
        for (i, s) in steps.iter().enumerate() {
            let r = if Some(i) == refuse {
                Err(format!("{s}: refused"))
            } else {
                self.change(s)
            };
            match r {
                Ok(()) => done.push(i),
                Err(e) => {
                    failed.push(i);
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            None => Ok(()),
            Some(e) => Err(Box::new(Stopped {
                done,
                failed,
                error: ApplyError::TrafficControl(e),
            })),
        }
    }
}

/// The host a plan starts from: each fact as the first step that touches it expects it.
fn start(steps: &[Step]) -> Facts {
    let mut facts = Facts::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in steps {
        let (fact, before, _) = effect(s);
        if seen.insert(fact.clone())
            && let Some(v) = before
        {
            facts.insert(fact, v);
        }
    }
    facts
}

/// Applies `steps` to the model whole (they must chain: each finds what the one before
/// left), then refuses each step in turn: rollback must give back the starting host.
pub fn every_failure_rolls_back(steps: &[Step], case: &Path) {
    let initial = start(steps);
    let mut whole = Model {
        facts: initial.clone(),
        refuse: None,
    };
    if let Err(e) = apply::apply(&mut whole, steps, None) {
        panic!("{}: the plan does not chain: {}", case.display(), e.error);
    }
    for k in 0..steps.len() {
        let mut m = Model {
            facts: initial.clone(),
            refuse: Some(k),
        };
        let f = apply::apply(&mut m, steps, None).expect_err("refused");
        assert!(
            f.rollback_errors.is_empty() && m.facts == initial,
            "{}: refusing step {} ({}) left the model changed: {:?}",
            case.display(),
            k + 1,
            steps[k],
            f.rollback_errors
        );
    }
}
