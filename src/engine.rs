//! Plan and apply as a library: the one path the CLI, the daemon and the confirm timer share.
//! Observation, planning and execution of one change all happen under the scope's lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::apply;
use crate::audit;
use crate::backend::seam::{self, Backend};
use crate::borrowed::Managed;
use crate::desired::{self, managed_sysctls};
use crate::host_macs;
use crate::plan::{self, Change, Plan, Step};
use crate::spec::naming::fnv1a;
use crate::spec::{self, Loc, Spec, SpecError};
use crate::state::HostState;
use crate::state::Moved;
use crate::statedir::{State, StateDir};

pub use crate::error::{Busy, EngineError, ErrorKind, SpecErrors};

pub fn invalid(source: &str, path: &str, message: String) -> EngineError {
    EngineError::Invalid(SpecErrors {
        source: source.to_string(),
        errors: vec![SpecError {
            path: path.to_string(),
            loc: Loc { line: 1, col: 1 },
            message,
        }],
    })
}

pub fn empty_spec() -> Spec {
    Spec {
        version: 1,
        host: Default::default(),
        networks: Default::default(),
        vms: Default::default(),
        locs: Default::default(),
        identity: Default::default(),
        ovn: None,
    }
}

pub fn spec_hash(text: &[u8]) -> String {
    format!("{:016x}", fnv1a(text))
}

/// [`spec_hash`] of texts that mostly start as the last one did (a daemon's specs, one VM
/// added at a time): the hash's state is kept every [`SpecHasher::STEP`] bytes of the last
/// text, and a text is hashed on from the last one before its first change. FNV-1a goes a
/// byte at a time: 1.7 MB took 2-3 ms of a core beside every apply.
#[derive(Default)]
pub struct SpecHasher {
    text: Vec<u8>,
    /// `states[i]`: the state after the first `i * STEP` bytes of `text`.
    states: Vec<u64>,
}

impl SpecHasher {
    const STEP: usize = 64 << 10;

    pub fn hash(&mut self, text: &[u8]) -> String {
        let same = self
            .text
            .chunks(Self::STEP)
            .zip(text.chunks(Self::STEP))
            .take_while(|(a, b)| a.len() == Self::STEP && a == b)
            .count();
        self.states.truncate(same + 1);
        if self.states.is_empty() {
            self.states.push(crate::spec::naming::FNV1A_BASIS);
        }
        let kept = self.states.len() - 1;
        let mut h = self.states[kept];
        for step in text[kept * Self::STEP..].chunks(Self::STEP) {
            h = crate::spec::naming::fnv1a_from(h, step);
            if step.len() == Self::STEP {
                self.states.push(h);
            }
        }
        // The text kept: what it shares with this one stays.
        self.text.truncate(kept * Self::STEP);
        self.text.extend_from_slice(&text[kept * Self::STEP..]);
        format!("{h:016x}")
    }
}

/// [`parse`] through `cache`, which re-reads only the VM entries that changed since the
/// texts it saw before (same result, errors included).
pub fn parse_cached(
    cache: &mut spec::SpecCache,
    source: &str,
    bytes: &[u8],
    identity: &spec::HostIdentity,
) -> Result<Spec, EngineError> {
    cache.parse_bytes(bytes, identity).map_err(|errors| {
        EngineError::Invalid(SpecErrors {
            source: source.to_string(),
            errors,
        })
    })
}

pub fn parse(
    source: &str,
    bytes: &[u8],
    identity: &spec::HostIdentity,
) -> Result<Spec, EngineError> {
    spec::parse_bytes(bytes, identity).map_err(|errors| {
        EngineError::Invalid(SpecErrors {
            source: source.to_string(),
            errors,
        })
    })
}

/// A spec file's raw text.
pub fn read(path: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|error| EngineError::SpecUnreadable {
        file: path.display().to_string(),
        error,
    })
}

/// Reads and validates a spec file; returns it with its raw text.
pub fn load(path: &Path, identity: &spec::HostIdentity) -> Result<(Spec, Vec<u8>), EngineError> {
    let bytes = read(path)?;
    Ok((parse(&path.display().to_string(), &bytes, identity)?, bytes))
}

/// Which OVN chassis this host is, for a spec with OVN networks: `flag` (`--chassis`),
/// else the `system-id` of this host's Open_vSwitch database (`ovn.ovs`), else the
/// hostname. Whether the name is one of `ovn.chassis` is the plan's to say: a
/// host that is none carries no VM ports, but still writes the Northbound rows.
pub fn settle_chassis(spec: &mut Spec, flag: Option<&str>) {
    let Some(ovn) = spec.ovn.as_mut() else {
        return;
    };
    crate::ovn::ovsdb::tls::configure(ovn.ssl.as_ref());
    if ovn.local.is_none() {
        ovn.local = Some(match flag {
            Some(f) => f.to_string(),
            None => crate::ovn::local::system_id(&ovn.ovs).unwrap_or_else(hostname),
        });
    }
}

/// This host's name, the chassis name when none is given.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

pub struct Planned {
    pub plan: Plan,
    /// The spec planned, when settling its derived MACs against the host changed some (see
    /// [`host_macs::settle`]): what to enforce from now on in place of the spec given.
    pub settled: Option<Spec>,
    /// The derived MACs of the spec planned, recorded once it is applied; `None` for a
    /// destroy or a revert (the record stays: a port made again later gets its MAC back).
    derived_macs: Option<BTreeMap<String, spec::Mac>>,
    /// What kvmnet owned before (observed), for reverting a change exactly.
    pub previous: HostState,
    /// Settings the spec borrows from the host: their steps record originals first; the
    /// other steps on such settings are give-backs. Also what bridge-mode bridges and bonds
    /// hold from their uplinks once this plan is applied.
    managed: Managed,
    pub state_dir: StateDir,
    scope: String,
    /// The OVN Northbound database the plan's row changes go to, and whether kvmnet has
    /// rows there once it is applied (the state directory records where they are).
    nb: Option<(String, bool)>,
    /// The spec's OVN Southbound database, recorded beside the Northbound one: `status`
    /// without the spec reads each port's chassis and the logical flows there.
    sb: Option<String>,
    /// The plan as JSON, made once: the answer and the audit log both show it, and at
    /// 10,000 OVN ports one port more took a millisecond to show (its switch's and port
    /// group's 2,500 members compared to show what changed).
    json: std::sync::OnceLock<serde_json::Value>,
    /// Held from observation to the end of execution (or until [`Planned::unlock`]).
    _lock: Option<crate::statedir::ScopeLock>,
    /// What the plan was made from; freed with it. Freeing what a 1,000-port host planned
    /// from takes milliseconds: a daemon does it off the request's path.
    _inputs: Option<
        Box<(
            crate::snapshot::Snapshot,
            HostState,
            Option<crate::nft::NftTable>,
        )>,
    >,
}

impl Planned {
    /// [`Plan::to_json`] of the plan, made on the first call.
    pub fn plan_json(&self) -> &serde_json::Value {
        self.json.get_or_init(|| self.plan.to_json())
    }

    /// Lets the next plan of this scope start, before this one is freed (a daemon frees
    /// plans on a thread of its own, which may get to it late).
    pub fn unlock(&mut self) {
        self._lock = None;
    }

    /// The Northbound rows the plan wanted (a daemon gives them back to the rows' memo that
    /// made them: see `RowsMemo::give_back`).
    pub fn take_wanted_nb(&mut self) -> kvmnet_core::ovn::memo::RowMap {
        self._inputs
            .as_mut()
            .map(|i| std::mem::take(&mut i.1.nb))
            .unwrap_or_default()
    }

    /// The links of the snapshot the plan was made from (a daemon gives them back to its
    /// notification cache).
    pub fn take_snapshot_links(&mut self) -> Vec<crate::snapshot::LinkSnap> {
        self._inputs
            .as_mut()
            .map(|i| std::mem::take(&mut i.0.links))
            .unwrap_or_default()
    }
}

/// What a plan is made from: the snapshot, the desired state (or what is wrong with the
/// spec) and what is observed, nft tables included.
type Inputs = (
    crate::snapshot::Snapshot,
    Result<HostState, Vec<crate::spec::SpecError>>,
    HostState,
);

/// [`Inputs`] read through `backend`. On a large host the spec's nft tables, the desired
/// state and what kvmnet owns each take milliseconds, and none needs another: the tables
/// are made on a thread of their own from the start; once the host is read (but for its
/// nft tables, which are read according to the tables wanted), what kvmnet owns is read on
/// another while this one makes the desired state. (At 1,000 ports, adds through the
/// daemon took 32-36 ms this way in three runs, and 35-40 ms when the desired state waited
/// for the tables.)
fn inputs(
    backend: &mut dyn Backend,
    spec: Option<&Spec>,
    full: &Spec,
) -> Result<Inputs, crate::observe::ObserveError> {
    let mut slot = None;
    let slot_ref: &mut Option<crate::snapshot::Snapshot> = &mut slot;
    let parts = std::thread::scope(|s| {
        let slot_ref = slot_ref;
        let made = s.spawn(|| spec.and_then(crate::nft::table_for));
        let mut observed = backend.observe(spec, &BTreeSet::new())?;
        // kvmnet's Northbound rows (20,000 at 10,000 ports) are moved into what is owned,
        // not copied: nothing else reads them from the snapshot.
        let nb = std::mem::take(&mut observed.nb);
        let snap = &*slot_ref.insert(observed);
        let owned = s.spawn(move || {
            let mut have = desired::observed_owned(snap);
            have.nb = nb;
            have
        });
        let rows = full.ovn.as_ref().and_then(|o| backend.nb_wanted(o));
        let want = desired::desired_with_rows(full, snap, None, rows);
        let made = made.join().expect("making nft tables does not panic");
        let have = owned.join().expect("reading the snapshot does not panic");
        Ok::<_, crate::observe::ObserveError>((made, want, have))
    });
    let (made, mut want, mut have) = parts?;
    let snap = slot.expect("observed when the parts are");
    let nft = backend.observe_nft(made.as_ref())?;
    if let Ok(want) = want.as_mut() {
        want.nft = made;
    }
    desired_foreign(&snap, &want, &mut have);
    have.nft = nft;
    Ok((snap, want, have))
}

/// The foreign objects the desired state touches, into `have` (nothing when the spec is
/// wrong: no plan is made then). It sets `have.nft` from the snapshot: the observed tables
/// go in after.
fn desired_foreign(
    snap: &crate::snapshot::Snapshot,
    want: &Result<HostState, Vec<crate::spec::SpecError>>,
    have: &mut HostState,
) {
    if let Ok(want) = want {
        desired::observed_foreign(snap, &desired::Interest::of(want), have);
    }
}

/// Observes the host and plans `spec` (a destroy when `None`).
pub fn plan(spec: Option<&Spec>, scope: &str, source: &str) -> Result<Planned, EngineError> {
    plan_with(spec, scope, source, None)
}

/// [`plan`], observing through `watch` (a daemon's cache kept current by the kernel's
/// notifications) when given.
pub fn plan_with(
    spec: Option<&Spec>,
    scope: &str,
    source: &str,
    watch: Option<&mut crate::watch::Watch>,
) -> Result<Planned, EngineError> {
    plan_on(&mut seam::Kernel::new(scope, watch), spec, source)
}

/// [`plan`] on `backend`: observed through it, planned by the core.
pub fn plan_on(
    backend: &mut dyn Backend,
    spec: Option<&Spec>,
    source: &str,
) -> Result<Planned, EngineError> {
    let state_dir = backend.state_dir().clone();
    let lock = state_dir.lock()?;
    let empty = empty_spec();
    let full = spec.unwrap_or(&empty);
    let mut inputs =
        |spec: Option<&Spec>, full: &Spec| inputs(backend, spec, full).map_err(EngineError::from);
    // Derived MACs: as recorded at the last apply, then settled against the ports the host
    // has. When that changes one (a port that is not as recorded), everything is observed
    // again for the settled spec: the nft tables are read according to what is wanted. A
    // daemon enforces the settled spec from then on, so it does this once.
    let sd = &state_dir;
    let presettled = spec
        .map(|s| host_macs::presettle(s, sd))
        .transpose()?
        .flatten();
    let given = presettled.as_ref().or(spec);
    let (mut snap, mut want, mut have) = inputs(given, given.unwrap_or(full))?;
    let resettled = given
        .map(|s| host_macs::settle(s, &snap, || host_macs::recorded(sd)))
        .transpose()?
        .flatten();
    if let Some(s) = &resettled {
        drop((snap, want, have));
        (snap, want, have) = inputs(Some(s), s)?;
    }
    let settled = resettled.or(presettled);
    let derived_macs = spec.map(|s| host_macs::derived(settled.as_ref().unwrap_or(s)));
    // What follows does not depend on MACs.
    let spec = full;
    // The spec is valid (it parsed): what the desired state refuses is the host's doing.
    let want = want.map_err(|errors| {
        EngineError::Conflict(SpecErrors {
            source: source.to_string(),
            errors,
        })
    })?;
    let managed = Managed {
        moved: moved_onto(&want),
        ..managed(spec)
    };
    let mut want = want;
    backend.nb_adopt(&mut want.nb, &have.nb);
    let plan = plan::diff(&want, &have);
    let nb = backend.nb_remote().map(|r| (r, !want.nb.is_empty()));
    let sb = spec.ovn.as_ref().map(|o| o.sb.clone());
    let remembered = backend.remember_nft(want.nft.take());
    Ok(Planned {
        plan,
        settled,
        derived_macs,
        previous: have,
        managed,
        scope: snap.scope.clone(),
        nb,
        sb,
        state_dir,
        json: Default::default(),
        _lock: Some(lock),
        _inputs: Some(Box::new((snap, want, remembered))),
    })
}

/// What the bridges and bonds of `want` hold from the interfaces they take, by bridge or
/// bond: the addresses and routes they are to have.
fn moved_onto(want: &HostState) -> BTreeMap<String, Moved> {
    want.uplinks
        .values()
        .filter_map(|u| u.master.clone())
        .chain(want.bonds.keys().cloned())
        .map(|b| {
            let m = Moved {
                addrs: want.addrs.get(&b).cloned().unwrap_or_default(),
                routes: want.routes.get(&b).cloned().unwrap_or_default(),
            };
            (b, m)
        })
        .collect()
}

/// The host settings `spec` borrows (but for moved addresses, which the desired state
/// knows: see [`moved_onto`]).
pub fn managed(spec: &Spec) -> Managed {
    Managed {
        sysctls: managed_sysctls(spec).into_keys().collect(),
        mtus: spec
            .host
            .uplinks
            .values()
            .filter(|u| u.bond.is_none() && u.mtu.is_some())
            .map(|u| u.name.clone())
            .collect(),
        ethtool: managed_ethtool(spec),
        up: desired::uplinks_in_use(spec),
        moved: BTreeMap::new(),
    }
}

/// The ethtool settings a spec makes on interfaces kvmnet does not own.
pub fn managed_ethtool(spec: &Spec) -> BTreeMap<String, BTreeSet<String>> {
    spec.host
        .ethtool
        .iter()
        .map(|(dev, e)| (dev.clone(), e.settings.keys().cloned().collect()))
        .collect()
}

/// A failed execution of `steps`: which step failed, why, and what became of the others.
fn refused(steps: &[Step], f: apply::Failure) -> EngineError {
    EngineError::KernelRefused {
        step: f.step,
        what: steps
            .get(f.step.saturating_sub(1))
            .map_or(String::new(), |s| s.to_string()),
        error: Box::new(f.error),
        rolled_back: f.step.saturating_sub(1),
        rollback_errors: f.rollback_errors,
    }
}

/// Runs a plan, rolling back on failure, and records it in the audit log. `action` names it
/// there (apply, destroy, repair, revert).
pub fn execute(
    p: &Planned,
    action: &str,
    spec_hash: &str,
    fail_after: Option<usize>,
) -> Result<(), EngineError> {
    execute_as(p, action, spec_hash, fail_after, audit::own_uid())
}

/// [`execute`] for the user `uid` (a daemon's API client), as the audit log records it.
pub fn execute_as(
    p: &Planned,
    action: &str,
    spec_hash: &str,
    fail_after: Option<usize>,
    uid: u32,
) -> Result<(), EngineError> {
    let mut kernel = seam::Kernel::new(&p.scope, None).with_nb(p.nb.as_ref().map(|n| n.0.clone()));
    execute_on(&mut kernel, p, action, spec_hash, fail_after, uid)
}

/// [`execute_as`] on `backend` (the one the plan was made on).
pub fn execute_on(
    backend: &mut dyn Backend,
    p: &Planned,
    action: &str,
    spec_hash: &str,
    fail_after: Option<usize>,
    uid: u32,
) -> Result<(), EngineError> {
    // What a kvmnet killed mid-apply left half made (invisible to the plan: see
    // `HALF_MADE_GROUP`) goes first, so that nothing stands in the way of the plan.
    remove_half_made(backend, &p.state_dir)?;
    if p.plan.is_empty() {
        if let Some(m) = &p.derived_macs {
            host_macs::remember(&p.state_dir, m)?;
        }
        let mut st = p.state_dir.load()?;
        let was = st.clone();
        record_ovn(&mut st, p);
        if st != was {
            p.state_dir.save(&st)?;
        }
        if st.borrowed.record_moved(&p.managed) {
            p.state_dir.save(&st)?;
        }
        return audit::append(
            &p.state_dir,
            &audit::Entry {
                action,
                spec_hash,
                changes: serde_json::json!([]),
                result: Ok(()),
                uid,
            },
        )
        .map_err(EngineError::from);
    }
    // Remember first values of sysctls before touching them: written (and synced) before
    // the change, so even a crash mid-apply cannot lose them.
    let sd = &p.state_dir;
    let before = sd.load()?;
    let mut during = before.clone();
    during.borrowed.record(&p.plan.steps, &p.managed);
    for s in &p.plan.steps {
        if let Step::Netns(Change::Create(n)) = s {
            during.creating_netns.insert(n.name.clone());
        }
    }
    if during != before {
        sd.save(&during)?;
    }
    let mut exec = backend
        .executor()
        .map_err(|e| EngineError::Kernel(Box::new(e)))?;
    let outcome = match apply::apply(&mut *exec, &p.plan.steps, fail_after) {
        Ok(()) => {
            let mut after = during.clone();
            after.borrowed.retain_managed(&p.managed);
            after.creating_netns.clear();
            record_ovn(&mut after, p);
            if after != during {
                sd.save(&after)?;
            }
            if let Some(m) = &p.derived_macs {
                host_macs::remember(sd, m)?;
            }
            Ok(())
        }
        Err(f) => {
            if during != before {
                let _ = sd.save(&before);
            }
            Err(refused(&p.plan.steps, f))
        }
    };
    let message = outcome.as_ref().err().map(ToString::to_string);
    audit::append(
        sd,
        &audit::Entry {
            action,
            spec_hash,
            changes: p.plan_json()["changes"].clone(),
            result: message.as_deref().map_or(Ok(()), Err),
            uid,
        },
    )?;
    outcome
}

/// Where kvmnet's OVN rows are once `p` is applied, into `st`: the Northbound database
/// when rows are left there, what reaches it over TLS, and the Southbound database (kept
/// as recorded by a plan that does not know it: a revert's).
fn record_ovn(st: &mut State, p: &Planned) {
    let Some((remote, left)) = &p.nb else {
        return;
    };
    st.ovn_nb = left.then(|| remote.clone());
    st.ovn_ssl = st
        .ovn_nb
        .as_ref()
        .and_then(|_| crate::ovn::ovsdb::tls::configured());
    st.ovn_sb = match (&st.ovn_nb, &p.sb) {
        (None, _) => None,
        (Some(_), Some(sb)) => Some(sb.clone()),
        (Some(_), None) => st.ovn_sb.take(),
    };
}

/// Has `backend` remove what an apply killed midway left half made, the namespace
/// placeholders included (the apply recorded their names first), and forgets the names.
fn remove_half_made(backend: &mut dyn Backend, sd: &StateDir) -> Result<(), EngineError> {
    let mut st = sd.load()?;
    backend
        .remove_half_made(&st.creating_netns)
        .map_err(|e| EngineError::Kernel(Box::new(e)))?;
    if st.creating_netns.is_empty() {
        return Ok(());
    }
    st.creating_netns.clear();
    sd.save(&st)?;
    Ok(())
}

/// A change applied with `--confirm-within`: what to go back to if no confirmation comes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub token: String,
    pub deadline_unix: u64,
    pub previous: HostState,
    pub previous_state: State,
    /// The spec a daemon enforced before (it goes back to enforcing it on revert).
    pub previous_spec: Option<String>,
    pub spec_hash: String,
    /// Through a daemon: the sequence number of the accepted spec this change applied. A
    /// daemon that starts and finds a newer accepted spec drops the change instead of
    /// reverting it onto what came after.
    #[serde(default)]
    pub accepted_seq: Option<u64>,
}

fn pending_path(sd: &StateDir) -> std::path::PathBuf {
    sd.dir.join("pending-confirm.json")
}

pub fn save_pending(sd: &StateDir, p: &Pending) -> Result<(), EngineError> {
    sd.ensure_private().map_err(EngineError::state_io)?;
    crate::statedir::write_atomic(
        &pending_path(sd),
        &serde_json::to_vec(p).expect("serializes"),
    )
    .map_err(EngineError::state_io)
}

pub fn load_pending(sd: &StateDir) -> Result<Option<Pending>, EngineError> {
    match std::fs::read(pending_path(sd)) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(EngineError::PendingDamaged),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::state_io(e)),
    }
}

/// Confirms the pending change, if any. Returns whether there was one.
pub fn confirm(scope: &str) -> Result<bool, EngineError> {
    confirm_as(scope, audit::own_uid())
}

/// [`confirm`] for the user `uid`, as the audit log records it.
pub fn confirm_as(scope: &str, uid: u32) -> Result<bool, EngineError> {
    end_pending(scope, "confirm", uid)
}

/// Drops the pending change without reverting it (a newer spec was accepted since), as
/// `action` in the audit log. Returns whether there was one.
pub fn end_pending(scope: &str, action: &str, uid: u32) -> Result<bool, EngineError> {
    let sd = StateDir::for_scope(scope);
    let _lock = sd.lock()?;
    let Some(p) = load_pending(&sd)? else {
        return Ok(false);
    };
    std::fs::remove_file(pending_path(&sd)).map_err(EngineError::state_io)?;
    audit::append(
        &sd,
        &audit::Entry {
            action,
            spec_hash: &p.spec_hash,
            changes: serde_json::json!([]),
            result: Ok(()),
            uid,
        },
    )?;
    Ok(true)
}

/// Reverts the pending change when its deadline has passed (or at once with `force`), and
/// only if it is still the one with `token` (when given). Returns the reverted change.
pub fn revert_if_due(
    scope: &str,
    token: Option<&str>,
    force: bool,
) -> Result<Option<Pending>, EngineError> {
    revert_if_due_with(scope, token, force, &mut |_| Ok(()))
}

/// [`revert_if_due`], calling `before` with the change once it is known to be reverted now,
/// before anything is touched (under the scope's lock): a daemon records there what it
/// enforces from then on. An error from `before` leaves everything as it was.
pub fn revert_if_due_with(
    scope: &str,
    token: Option<&str>,
    force: bool,
    before: &mut dyn FnMut(&Pending) -> Result<(), EngineError>,
) -> Result<Option<Pending>, EngineError> {
    let mut kernel = seam::Kernel::new(scope, None);
    let state_dir = kernel.state_dir().clone();
    let lock = state_dir.lock()?;
    let Some(pending) = load_pending(&state_dir)? else {
        return Ok(None);
    };
    if token.is_some_and(|t| t != pending.token)
        || (!force && audit::now_unix() < pending.deadline_unix)
    {
        return Ok(None);
    }
    let prev = &pending.previous;
    let keys: BTreeSet<String> = prev.sysctls.keys().cloned().collect();
    let mut snap = kernel.observe(None, &keys)?;
    snap.nft = kernel.observe_nft(None)?;
    let have = desired::observed(&snap, &desired::Interest::of(prev));
    let planned = Planned {
        plan: plan::diff(prev, &have),
        settled: None,
        derived_macs: None,
        previous: have,
        managed: Managed::default(),
        state_dir,
        scope: scope.to_string(),
        nb: kernel.nb_remote().map(|r| (r, !prev.nb.is_empty())),
        sb: None,
        json: Default::default(),
        _lock: Some(lock),
        _inputs: None,
    };
    before(&pending)?;
    execute_on(
        &mut kernel,
        &planned,
        "revert",
        &pending.spec_hash,
        None,
        audit::own_uid(),
    )?;
    planned.state_dir.save(&pending.previous_state)?;
    std::fs::remove_file(pending_path(&planned.state_dir)).map_err(EngineError::state_io)?;
    Ok(Some(pending))
}

/// Parses `60s`, `2m`, `90` (seconds) for `--confirm-within`.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 's') => (&s[..i], 1),
        (i, 'm') => (&s[..i], 60),
        (i, 'h') => (&s[..i], 3600),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    (n > 0).then(|| n * mult)
}

#[cfg(test)]
mod ethtool_originals_tests {
    use super::*;
    use crate::borrowed::Borrowed;

    fn vals(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// A foreign interface's first values are kept across applies, ports' never recorded, and
    /// what the spec stops setting is forgotten once restored.
    #[test]
    fn first_values_of_foreign_settings_are_kept_until_restored() {
        let managed = Managed {
            ethtool: BTreeMap::from([(
                "eth1".to_string(),
                BTreeSet::from(["tso".to_string(), "rings.rx".to_string()]),
            )]),
            ..Managed::default()
        };
        let step = |dev: &str, from: &[(&str, u32)], to: &[(&str, u32)]| {
            Step::Ethtool(plan::Set::new(dev, vals(from), vals(to)))
        };
        let mut b = Borrowed::default();
        b.record(
            &[
                step(
                    "eth1",
                    &[("tso", 1), ("rings.rx", 512)],
                    &[("tso", 0), ("rings.rx", 4096)],
                ),
                step("web0", &[("gro", 0)], &[("gro", 1)]),
            ],
            &managed,
        );
        assert_eq!(
            b.ethtool.0,
            BTreeMap::from([("eth1".to_string(), vals(&[("tso", 1), ("rings.rx", 512)]))])
        );
        // A later change (drift repair, new value) does not overwrite the original.
        b.record(
            &[step("eth1", &[("rings.rx", 4096)], &[("rings.rx", 2048)])],
            &managed,
        );
        assert_eq!(b.ethtool["eth1"]["rings.rx"], 512);
        // The spec keeps only tso: rings.rx was restored by the same apply and is forgotten.
        let now = Managed {
            ethtool: BTreeMap::from([("eth1".to_string(), BTreeSet::from(["tso".to_string()]))]),
            ..Managed::default()
        };
        b.retain_managed(&now);
        assert_eq!(
            b.ethtool.0,
            BTreeMap::from([("eth1".to_string(), vals(&[("tso", 1)]))])
        );
        b.retain_managed(&Managed::default());
        assert!(b.ethtool.is_empty());
    }
}

#[cfg(test)]
mod seam_tests;

#[cfg(test)]
mod spec_hasher_tests {
    use super::*;

    /// Edits at the start, the middle and the end of texts across several steps, the same
    /// text again, a shorter one, an empty one: always `spec_hash`.
    #[test]
    fn hashes_as_spec_hash() {
        let base: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 23) as u8).collect();
        let mut texts = vec![base.clone(), base.clone()];
        for at in [0, 65_535, 65_536, 131_073, 299_999] {
            let mut t = base.clone();
            t[at] = b'!';
            texts.push(t);
        }
        let mut longer = base.clone();
        longer.extend_from_slice(b"  v9: {}\n");
        texts.extend([longer, base[..200_000].to_vec(), Vec::new(), base.clone()]);
        let mut h = SpecHasher::default();
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(h.hash(t), spec_hash(t), "text {i}");
        }
    }
}
