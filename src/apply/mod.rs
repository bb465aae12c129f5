//! Runs a plan against the kernel. Steps run in order; consecutive steps of one sort are sent
//! to the kernel together (pipelined netlink requests) because that is where the time goes
//! with many ports. On any failure the steps already done are undone in reverse order.

mod guest;
mod kinds;
mod ports;

use std::collections::HashMap;

use crate::backend::rtnl::{BondOptions, Netlink, NetlinkError, Request, RouteInfo};
use crate::backend::{ethtool, macvtap, netns, nftables, sysctl, tap, tc};
use crate::plan::{Change, Step};
use crate::spec::{BondMode, LACP_RATES, XMIT_HASH_POLICIES};
use crate::state::BondLink;
use crate::state::{PortLink, Route, ShapeState, parse_alias};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    /// Boxed, like the next: its messages carry names and an OS error.
    #[error(transparent)]
    Ethtool(Box<ethtool::EthtoolError>),
    /// Boxed: its messages carry paths, and every `Result` of this module pays for the
    /// largest variant.
    #[error(transparent)]
    Macvtap(Box<macvtap::MacvtapError>),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Nft(#[from] nftables::NftError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Tc(#[from] tc::TcError),
    #[error("traffic control: {0}")]
    TrafficControl(String),
    #[error("interface '{0}' not found")]
    NoSuchLink(String),
    #[error("refusing to delete '{0}': it does not carry kvmnet's mark")]
    NotOurs(String),
    #[error("bond {0}: unknown {1} '{2}'")]
    BondOption(String, &'static str, String),
    #[error("{0}: cannot be changed in place")]
    InPlace(String),
    #[error("injected failure after step {0} (KVMNET_FAIL_AFTER)")]
    Injected(usize),
    /// Boxed, like the others carrying names.
    #[error(transparent)]
    Nb(Box<crate::ovn::nb::NbError>),
    #[error("the plan changes OVN Northbound rows but names no Northbound database")]
    NoNb,
    #[error(transparent)]
    Chassis(Box<crate::ovn::local::LocalError>),
}

impl From<crate::ovn::local::LocalError> for ApplyError {
    fn from(e: crate::ovn::local::LocalError) -> Self {
        ApplyError::Chassis(Box::new(e))
    }
}

impl From<crate::ovn::nb::NbError> for ApplyError {
    fn from(e: crate::ovn::nb::NbError) -> Self {
        ApplyError::Nb(Box::new(e))
    }
}

impl From<ethtool::EthtoolError> for ApplyError {
    fn from(e: ethtool::EthtoolError) -> Self {
        ApplyError::Ethtool(Box::new(e))
    }
}

impl From<macvtap::MacvtapError> for ApplyError {
    fn from(e: macvtap::MacvtapError) -> Self {
        ApplyError::Macvtap(Box::new(e))
    }
}

/// Where a run of steps stopped.
#[derive(Debug)]
pub struct Stopped {
    /// The steps that were done, in any order.
    pub done: Vec<usize>,
    /// The steps that failed, the one reported first. Each may be half done: when several
    /// requests of one batch were in flight together, any of them may have been refused
    /// after part of its work (a tap made but not attached, say), so every one gets its
    /// inverse tried as clean-up, not only the first.
    pub failed: Vec<usize>,
    pub error: ApplyError,
}

/// Something that can carry out steps.
pub trait Executor {
    fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>>;

    /// For `KVMNET_FAIL_AFTER` inside a run of Northbound changes: the next Northbound
    /// transaction is sent with an `abort` after its operations, so that the database
    /// itself refuses all of it. (Executors without a database ignore it.)
    fn abort_next_nb(&mut self) {}
}

#[derive(Debug)]
pub struct Failure {
    pub step: usize,
    pub error: ApplyError,
    /// Errors met while undoing; empty when the rollback was clean.
    pub rollback_errors: Vec<String>,
}

/// Runs `steps`, stopping with an injected failure after `fail_after` steps when set. On
/// failure everything done is undone (in reverse) before returning.
pub fn apply(
    exec: &mut dyn Executor,
    steps: &[Step],
    fail_after: Option<usize>,
) -> Result<(), Failure> {
    let mut limit = fail_after.unwrap_or(usize::MAX).min(steps.len());
    // A failure injected within one Northbound transaction's changes is the database's: the
    // transaction goes whole (a part of it may name rows the rest makes) and the server
    // refuses it (see `abort_next_nb`).
    let nb = |i: usize| matches!(steps.get(i), Some(Step::Nb(_)));
    if fail_after.is_some() && limit > 0 && nb(limit - 1) && nb(limit) {
        exec.abort_next_nb();
        while nb(limit) {
            limit += 1;
        }
    }
    let Stopped {
        mut done,
        failed,
        error,
    } = match exec.run(&steps[..limit]) {
        Ok(()) if fail_after.is_some_and(|k| k <= steps.len()) => Stopped {
            done: (0..limit).collect(),
            failed: Vec::new(),
            error: ApplyError::Injected(limit),
        },
        Ok(()) => return Ok(()),
        Err(e) => *e,
    };
    let failed_at = failed.first().copied().unwrap_or(limit);
    // Best effort, newest first: a failed step may have left something behind, or nothing
    // (then its inverse fails, and that is no error of the rollback).
    let mut failed = failed;
    failed.sort_unstable();
    for i in failed.iter().rev() {
        let _ = exec.run(&[steps[*i].inverse()]);
    }
    done.sort_unstable();
    let undo: Vec<Step> = done.iter().rev().map(|i| steps[*i].inverse()).collect();
    let mut rollback_errors = Vec::new();
    if let Err(stop) = exec.run(&undo) {
        let at = stop.failed.first().copied().unwrap_or(0);
        rollback_errors.push(format!("undo {}: {}", undo[at], stop.error));
        // Keep going: undo whatever else of the batch and after it can be undone, reporting
        // every error.
        let mut rest: Vec<usize> = stop.failed[1..].to_vec();
        rest.extend(at + 1..undo.len());
        let undone: std::collections::HashSet<usize> = stop.done.iter().copied().collect();
        rest.retain(|i| !undone.contains(i));
        rest.sort_unstable();
        rest.dedup();
        for i in rest {
            if let Err(e) = exec.run(std::slice::from_ref(&undo[i])) {
                rollback_errors.push(format!("undo {}: {}", undo[i], e.error));
            }
        }
    }
    Err(Failure {
        step: failed_at + 1,
        error,
        rollback_errors,
    })
}

/// Deletes the links of this namespace that a kvmnet made and was killed before it marked
/// (see [`crate::backend::rtnl::HALF_MADE_GROUP`]): one request, nothing when none.
pub fn remove_half_made() -> Result<(), ApplyError> {
    Ok(Netlink::open()?.delete_group(crate::backend::rtnl::HALF_MADE_GROUP)?)
}

/// The real thing: netlink, tun ioctls, nft, /proc/sys.
pub struct Kernel {
    nl: Netlink,
    scope: String,
    guests: HashMap<String, Netlink>,
    index: HashMap<String, u32>,
    /// Links that carry kvmnet's mark, or that this run created: the only ones it may delete.
    deletable: std::collections::HashSet<String>,
    /// The OVN Northbound database the plan's row changes go to.
    nb: Option<String>,
    /// The next Northbound transaction ends with an `abort` (see `Executor::abort_next_nb`).
    abort_nb: std::cell::Cell<bool>,
}

/// The traffic control a port's record asks for, in the tc backend's terms.
pub fn port_tc(
    dev: &str,
    qos_in: Option<ShapeState>,
    qos_out: Option<ShapeState>,
    mirror: Option<String>,
) -> tc::PortTc {
    let rate = |s: ShapeState| tc::Rate {
        bits_per_sec: s.rate,
        ceil_bits_per_sec: (s.ceil > 0).then_some(s.ceil),
        burst_bytes: (s.burst > 0).then_some(s.burst),
        cburst_bytes: None,
    };
    tc::PortTc {
        dev: dev.to_string(),
        inbound: qos_in.map(rate),
        outbound: qos_out.map(rate),
        ifb: None,
        mirror_to: mirror,
    }
}

fn link_tc(p: &PortLink) -> tc::PortTc {
    port_tc(&p.name, p.qos_in, p.qos_out, p.mirror.clone())
}

/// A link's full configuration in one request: what every kvmnet-made link gets set.
fn configure(
    index: u32,
    mac: crate::spec::Mac,
    mtu: u32,
    master: Option<u32>,
    up: bool,
    alias: String,
) -> Request {
    Request::SetLink {
        index,
        name: None,
        mac: Some(mac),
        mtu: Some(mtu),
        master,
        up: Some(up),
        alias: Some(alias),
        netns_fd: None,
    }
}

fn set_up(index: u32) -> Request {
    let mut r = Request::set_link(index);
    if let Request::SetLink { up, .. } = &mut r {
        *up = Some(true);
    }
    r
}

/// The host end of a port, attached to bridge `master` (0: released).
fn configure_port(p: &PortLink, index: u32, master: u32) -> Request {
    configure(index, p.mac, p.mtu, Some(master), p.up, p.alias())
}

/// A bond's options as netlink numbers, only those its mode has (the kernel refuses the
/// others). `primary`: None on creation (no members yet), else the member's index or 0.
fn bond_options(
    b: &BondLink,
    create: bool,
    primary: Option<u32>,
) -> Result<BondOptions, ApplyError> {
    let bad = |what, v: &str| ApplyError::BondOption(b.name.clone(), what, v.to_string());
    let mode = BondMode::parse(&b.mode).ok_or_else(|| bad("mode", &b.mode))?;
    let pos = |list: &[&str], v: &str, what| {
        list.iter()
            .position(|x| *x == v)
            .map(|i| i as u8)
            .ok_or_else(|| bad(what, v))
    };
    let lacp = mode == BondMode::Lacp;
    Ok(BondOptions {
        mode: create.then(|| mode.number()),
        miimon: Some(b.miimon),
        lacp_rate: if lacp {
            Some(pos(&LACP_RATES, &b.lacp_rate, "lacp_rate")?)
        } else {
            None
        },
        xmit_hash_policy: if mode.hashes() {
            Some(pos(
                &XMIT_HASH_POLICIES,
                &b.xmit_hash_policy,
                "xmit_hash_policy",
            )?)
        } else {
            None
        },
        min_links: lacp.then_some(b.min_links),
        primary: primary.filter(|_| mode.has_primary()),
    })
}

fn route_info(route: &Route, oif: u32) -> RouteInfo {
    RouteInfo {
        table: route.table,
        dst: route.dst,
        gateway: route.gateway,
        oif: Some(oif),
        protocol: route.protocol,
        scope: route.scope,
        route_type: 1,
        priority: route.metric,
        prefsrc: route.prefsrc,
    }
}

impl Kernel {
    pub fn new(scope: &str) -> Result<Kernel, ApplyError> {
        Ok(Kernel {
            nl: Netlink::open()?,
            scope: scope.to_string(),
            guests: HashMap::new(),
            index: HashMap::new(),
            deletable: Default::default(),
            nb: None,
            abort_nb: Default::default(),
        })
    }

    /// Sends the plan's OVN Northbound row changes to `remotes`.
    pub fn with_nb(mut self, remotes: Option<String>) -> Kernel {
        self.nb = remotes;
        self
    }

    /// Row changes of OVN's Northbound database, as one transaction.
    fn nb_rows(&self, changes: &[&Change<kvmnet_core::ovn::NbRow>]) -> Result<(), ApplyError> {
        let remotes = self.nb.as_deref().ok_or(ApplyError::NoNb)?;
        Ok(crate::ovn::nb::execute(
            remotes,
            changes,
            self.abort_nb.take(),
        )?)
    }

    /// Learns afresh the indexes of `names` (and whether kvmnet marked them): one lookup each
    /// for a few, one dump of every link for many.
    fn refresh_names(&mut self, names: &[&str]) -> Result<(), ApplyError> {
        if names.len() > 32 {
            return self.refresh_index();
        }
        for n in names {
            self.index.remove(*n);
            if let Some(l) = self.nl.link_by_name(n)? {
                if l.alias.as_deref().and_then(parse_alias).is_some() {
                    self.deletable.insert(l.name.clone());
                }
                self.index.insert(l.name, l.index);
            }
        }
        Ok(())
    }

    fn refresh_index(&mut self) -> Result<(), ApplyError> {
        let links = self.nl.links_without_stats()?;
        for l in &links {
            if l.alias.as_deref().and_then(parse_alias).is_some() {
                self.deletable.insert(l.name.clone());
            }
        }
        self.index = links.into_iter().map(|l| (l.name, l.index)).collect();
        Ok(())
    }

    fn idx(&mut self, name: &str) -> Result<u32, ApplyError> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        match self.nl.link_by_name(name)? {
            Some(l) => {
                self.index.insert(name.to_string(), l.index);
                Ok(l.index)
            }
            None => Err(ApplyError::NoSuchLink(name.to_string())),
        }
    }

    fn guest(&mut self, ns: &str) -> Result<&mut Netlink, ApplyError> {
        if !self.guests.contains_key(ns) {
            let nl = netns::with_netns(ns, Netlink::open)??;
            self.guests.insert(ns.to_string(), nl);
        }
        Ok(self.guests.get_mut(ns).expect("just inserted"))
    }

    fn one(nl: &mut Netlink, req: Request) -> Result<(), ApplyError> {
        nl.execute(std::slice::from_ref(&req))
            .pop()
            .unwrap_or(Ok(()))
            .map_err(ApplyError::from)
    }

    fn master_index(&mut self, master: &Option<String>) -> Result<u32, ApplyError> {
        match master {
            Some(m) => self.idx(m),
            None => Ok(0),
        }
    }

    /// Makes a link kvmnet owns from `RTM_NEWLINK` (which, made here, an undo may delete).
    fn create_link(&mut self, req: Request) -> Result<(), ApplyError> {
        let Request::NewLink { name, .. } = &req else {
            unreachable!("create_link takes a NewLink request");
        };
        let name = name.clone();
        Self::one(&mut self.nl, req)?;
        self.index.remove(&name);
        self.deletable.insert(name);
        Ok(())
    }

    fn delete_links(&mut self, names: &[&str]) -> Vec<Result<(), ApplyError>> {
        let mut results = Vec::with_capacity(names.len());
        let mut reqs = Vec::new();
        let mut owners = Vec::new();
        if let Err(e) = self.refresh_names(names) {
            return names
                .iter()
                .map(|_| Err(ApplyError::NoSuchLink(e.to_string())))
                .collect();
        }
        for (i, n) in names.iter().enumerate() {
            if !self.deletable.contains(*n) {
                results.push(Err(if self.index.contains_key(*n) {
                    ApplyError::NotOurs(n.to_string())
                } else {
                    ApplyError::NoSuchLink(n.to_string())
                }));
                continue;
            }
            match self.idx(n) {
                Ok(index) => {
                    reqs.push(index);
                    owners.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // One group delete instead of one request per link: the kernel then waits for RCU
        // once, not once per device (1,000 ports: well under a second instead of ~20 s).
        for (i, r) in owners.into_iter().zip(self.nl.delete_links(&reqs)) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
        for n in names {
            self.index.remove(*n);
        }
        results
    }
}

impl Executor for Kernel {
    fn abort_next_nb(&mut self) {
        self.abort_nb.set(true);
    }

    fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < steps.len() {
            // Batch runs of port creations and deletions: the bulk of any large apply.
            let run_end = |pred: &dyn Fn(&Step) -> bool| {
                let mut j = i;
                while j < steps.len() && pred(&steps[j]) {
                    j += 1;
                }
                j
            };
            let creates = run_end(&|s| matches!(s, Step::Port(Change::Create(_))));
            let deletes = run_end(&|s| matches!(s, Step::Port(Change::Delete(_))));
            // Changes to kvmnet's nftables tables: one transaction, all or nothing.
            let nft_end = run_end(&|s| matches!(s, Step::Nft(_)));
            // OVN Northbound rows: one transaction too.
            let nb_end = run_end(&|s| matches!(s, Step::Nb(_)));
            let results: Vec<Result<(), ApplyError>> = if nb_end > i {
                let changes: Vec<&Change<kvmnet_core::ovn::NbRow>> = steps[i..nb_end]
                    .iter()
                    .map(|s| match s {
                        Step::Nb(c) => c,
                        _ => unreachable!("run of Nb"),
                    })
                    .collect();
                match self.nb_rows(&changes) {
                    Ok(()) => changes.iter().map(|_| Ok(())).collect(),
                    Err(e) => vec![Err(e)],
                }
            } else if nft_end > i + 1 {
                let changes: Vec<&crate::nft::NftChange> = steps[i..nft_end]
                    .iter()
                    .map(|s| match s {
                        Step::Nft(c) => c,
                        _ => unreachable!("run of Nft"),
                    })
                    .collect();
                match nftables::change(&changes) {
                    Ok(()) => changes.iter().map(|_| Ok(())).collect(),
                    // Nothing of the transaction happened: the first change is the one that
                    // failed, the others were not done.
                    Err(e) => vec![Err(e.into())],
                }
            } else if creates > i + 1 {
                let ports: Vec<&PortLink> = steps[i..creates]
                    .iter()
                    .map(|s| match s {
                        Step::Port(Change::Create(p)) => p,
                        _ => unreachable!("run of port creations"),
                    })
                    .collect();
                self.create_ports(&ports)
            } else if deletes > i + 1 {
                let ports: Vec<&PortLink> = steps[i..deletes]
                    .iter()
                    .map(|s| match s {
                        Step::Port(Change::Delete(p)) => p,
                        _ => unreachable!("run of port deletions"),
                    })
                    .collect();
                self.delete_ports(&ports)
            } else {
                vec![self.run_single(&steps[i])]
            };
            let n = results.len();
            let mut failed = Vec::new();
            let mut first_err = None;
            for (k, r) in results.into_iter().enumerate() {
                match r {
                    Ok(()) => done.push(i + k),
                    Err(e) => {
                        failed.push(i + k);
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(error) = first_err {
                return Err(Box::new(Stopped {
                    done,
                    failed,
                    error,
                }));
            }
            i += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs namespace steps in one batch, as the kernel executor runs a run of port steps:
    /// a step on a name starting `bad` is refused, the others go through.
    #[derive(Default)]
    struct Fake {
        ran: Vec<String>,
    }

    impl Executor for Fake {
        fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>> {
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for (i, s) in steps.iter().enumerate() {
                let Step::Netns(c) = s else {
                    unreachable!("namespace steps only");
                };
                self.ran.push(s.to_string());
                if c.object().name.starts_with("bad") && matches!(c, Change::Create(_)) {
                    failed.push(i);
                } else {
                    done.push(i);
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            Err(Box::new(Stopped {
                done,
                failed,
                error: ApplyError::NoSuchLink("refused".into()),
            }))
        }
    }

    fn netns(name: &str) -> crate::plan::Netns {
        crate::plan::Netns {
            name: name.to_string(),
        }
    }

    fn ns(names: &[&str]) -> Vec<Step> {
        names
            .iter()
            .map(|n| Step::Netns(Change::Create(netns(n))))
            .collect()
    }

    #[test]
    fn every_refused_step_of_a_batch_is_cleaned_up_then_every_done_one_undone() {
        let steps = ns(&["a", "b", "bad1", "c", "bad2"]);
        let mut fake = Fake::default();
        let f = apply(&mut fake, &steps, None).unwrap_err();
        assert_eq!(f.step, 3, "the first refusal is the one reported");
        assert!(f.rollback_errors.is_empty());
        let undo: Vec<&str> = fake.ran[5..].iter().map(String::as_str).collect();
        let want: Vec<String> = ["bad2", "bad1", "c", "b", "a"]
            .iter()
            .map(|n| Step::Netns(Change::Delete(netns(n))).to_string())
            .collect();
        assert_eq!(undo, want.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn an_injected_failure_undoes_exactly_the_steps_before_it() {
        let steps = ns(&["a", "b", "c"]);
        let mut fake = Fake::default();
        let f = apply(&mut fake, &steps, Some(2)).unwrap_err();
        assert!(matches!(f.error, ApplyError::Injected(2)));
        assert_eq!(fake.ran.len(), 4, "{:?}", fake.ran);
        assert_eq!(
            fake.ran[2],
            Step::Netns(Change::Delete(netns("b"))).to_string()
        );
        assert_eq!(
            fake.ran[3],
            Step::Netns(Change::Delete(netns("a"))).to_string()
        );
    }
}
