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
use kvmnet::plan::Step;

type Facts = BTreeMap<String, String>;

fn js<T: serde::Serialize>(v: &T) -> Option<String> {
    Some(serde_json::to_string(v).expect("steps serialize"))
}

fn nft_effect(c: &NftChange) -> (String, Option<String>, Option<String>) {
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

/// The one fact `s` changes: its name, the value it expects, the value it leaves.
fn effect(s: &Step) -> (String, Option<String>, Option<String>) {
    use Step::*;
    let yes = || js(&true);
    match s {
        CreateNetns(n) => (format!("netns {n}"), None, yes()),
        DeleteNetns(n) => (format!("netns {n}"), yes(), None),
        CreateBridge(b) => (format!("link {}", b.name), None, js(b)),
        DeleteBridge(b) => (format!("link {}", b.name), js(b), None),
        UpdateBridge { from, to } => (format!("link {}", to.name), js(from), js(to)),
        SetMaster { link, from, to } => (format!("master {link}"), js(from), js(to)),
        AddAddr { dev, addr } => (format!("addr {dev} {}", js(addr).unwrap()), None, yes()),
        DelAddr { dev, addr } => (format!("addr {dev} {}", js(addr).unwrap()), yes(), None),
        AddRoute { dev, route } => (format!("route {dev} {}", js(route).unwrap()), None, yes()),
        DelRoute { dev, route } => (format!("route {dev} {}", js(route).unwrap()), yes(), None),
        CreatePort(p) => (format!("link {}", p.name), None, js(p)),
        DeletePort(p) => (format!("link {}", p.name), js(p), None),
        UpdatePort { from, to } => (format!("link {}", to.name), js(from), js(to)),
        SetNft { from, to } => ("nft".into(), js(from), js(to)),
        Nft(c) => nft_effect(c),
        SetSysctl { key, from, to } => (format!("sysctl {key}"), js(from), js(to)),
        CreateVxlan(v) => (format!("link {}", v.name), None, js(v)),
        DeleteVxlan(v) => (format!("link {}", v.name), js(v), None),
        AddFdb { dev, dst } => (format!("fdb {dev} {dst}"), None, yes()),
        DelFdb { dev, dst } => (format!("fdb {dev} {dst}"), yes(), None),
        SetShaping { bridge, from, to } => (format!("shaping {bridge}"), js(from), js(to)),
        SetEthtool { dev, from, to } => (format!("ethtool {dev}"), js(from), js(to)),
        CreateVlan(v) => (format!("link {}", v.name), None, js(v)),
        DeleteVlan(v) => (format!("link {}", v.name), js(v), None),
        SetUp { link, from, to } => (format!("up {link}"), js(from), js(to)),
        CreateBond(b) => (format!("link {}", b.name), None, js(b)),
        DeleteBond(b) => (format!("link {}", b.name), js(b), None),
        UpdateBond { from, to } => (format!("link {}", to.name), js(from), js(to)),
        SetBondMember { link, from, to } => (format!("bond member {link}"), js(from), js(to)),
        SetMtu { link, from, to } => (format!("mtu {link}"), js(from), js(to)),
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
