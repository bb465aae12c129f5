//! The backend seam: what the engine needs from whatever holds the networking it manages,
//! and the kernel's implementation of it ([`Kernel`], the one the CLI and the daemon use).
//!
//! The core plans from plain data: a [`Snapshot`] of the host in, [`Step`]s out. A backend
//! is what turns the host into that snapshot and carries the steps out. The engine drives
//! it, always in this order and always under the scope's lock (the state directory's,
//! which the backend names):
//!
//! 1. [`Backend::observe`], then [`Backend::observe_nft`] with the nftables tables the spec
//!    wants (the engine makes them while the rest is read): the host as it is now.
//! 2. The core plans; the engine gives the backend the tables it wanted
//!    ([`Backend::remember_nft`]).
//! 3. To apply: [`Backend::remove_half_made`], then the steps through
//!    [`Backend::executor`], rolled back through the same executor when one fails
//!    ([`apply::apply`]).
//!
//! # Contract
//!
//! - **Observation is read-only** and says what is there, not what kvmnet would like: a
//!   snapshot is planned from as is. It carries what the spec's objects need (the links,
//!   addresses and routes of the scope, the guest namespaces the spec names or kvmnet owns,
//!   the sysctls the spec manages and `extra_sysctls`, the ethtool settings the spec sets)
//!   and the borrowed settings the state directory records ([`Borrowed::fill`]): without
//!   those, nothing borrowed is given back.
//! - **Ownership is read from the host.** What a snapshot shows as kvmnet's (marks on links,
//!   namespaces, the nftables table) is the only thing a plan deletes; a backend whose
//!   objects carry no marks records ownership where it can read it back.
//! - **Execution is all or nothing per step.** [`Executor::run`] reports which steps were
//!   done and which failed ([`apply::Stopped`]); a step reported done is done, a failed one
//!   may be half done (its inverse is tried as clean-up). Every step's inverse must undo it
//!   on this backend: rollback is the engine's, from the inverses.
//! - **A killed apply leaves nothing in the way.** Objects an apply makes are marked in the
//!   request that makes them, or recognisable as half made; [`Backend::remove_half_made`]
//!   removes those (and the namespace placeholders the state directory says an apply was
//!   creating) before anything else runs, since the plan does not see them.
//!
//! The state directory itself (borrowed originals, derived MACs, the audit log) is the
//! engine's, whichever backend: a backend only names where it is for its scope.

use std::collections::BTreeSet;

use crate::apply::{self, ApplyError, Executor};
use crate::backend::{netns, nftables};
use crate::nft::NftTable;
use crate::observe::{ObserveError, Observer};
use crate::snapshot::Snapshot;
use crate::spec::Spec;
use crate::statedir::StateDir;
use crate::watch::Watch;
use kvmnet_core::ovn::memo::RowMap;

#[cfg(doc)]
use crate::{borrowed::Borrowed, plan::Step};

/// What the engine needs from a backend (see the module's contract).
pub trait Backend {
    /// The scope's state directory: its lock, the borrowed settings, the audit log.
    fn state_dir(&self) -> &StateDir;

    /// The host as the pure layers plan `spec` from it (a destroy when `None`), also reading
    /// `extra_sysctls` (a revert needs the ones the state it goes back to had); all but the
    /// nftables tables (`nft` is `None`): see [`Backend::observe_nft`].
    fn observe(
        &mut self,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<Snapshot, ObserveError>;

    /// kvmnet's nftables tables as the host holds them, after [`Backend::observe`]. `want`:
    /// the tables the spec wants, whose rule texts may stand for those read back when the
    /// hashes match.
    fn observe_nft(&mut self, want: Option<&NftTable>) -> Result<Option<NftTable>, ObserveError>;

    /// The tables a plan wanted, once it is made: a backend that keeps what it observed may
    /// keep them too. Returns what goes with the plan, to be freed with it.
    fn remember_nft(&mut self, wanted: Option<NftTable>) -> Option<NftTable> {
        wanted
    }

    /// Removes what an apply killed midway left half made, invisible to the plan:
    /// objects made but not yet marked, and the placeholders of `creating_netns`, the
    /// namespaces it recorded it was about to create.
    fn remove_half_made(&mut self, creating_netns: &BTreeSet<String>) -> Result<(), ApplyError>;

    /// What runs the steps of a plan (and their inverses on rollback).
    fn executor(&mut self) -> Result<Box<dyn Executor + '_>, ApplyError>;

    /// The OVN Northbound database the last observation read kvmnet's rows from, if any:
    /// where the plan's row changes go.
    fn nb_remote(&self) -> Option<String> {
        None
    }

    /// The Northbound rows `ovn` wants, when this backend keeps what it made for the plans
    /// before (`None`: the desired state makes them anew).
    fn nb_wanted(&mut self, _ovn: &kvmnet_core::spec::ovn::Ovn) -> Option<RowMap> {
        None
    }

    /// Once observed: the wanted rows equal to observed ones take the observed copies, where
    /// this backend keeps rows between plans (see [`kvmnet_core::ovn::memo`]).
    fn nb_adopt(&mut self, _want: &mut RowMap, _have: &RowMap) {}
}

/// The kernel of the namespace kvmnet runs in: netlink, tun ioctls, nft, /proc/sys.
/// Observes through a daemon's notification cache when given one.
pub struct Kernel<'w> {
    observer: Observer,
    watch: Option<&'w mut Watch>,
    /// The cache's view of the nftables tables, from [`Backend::observe`] to
    /// [`Backend::observe_nft`].
    nft_view: Option<Option<NftTable>>,
    /// The OVN Northbound database: the spec's, else the one the state directory records.
    nb: Option<String>,
}

impl<'w> Kernel<'w> {
    /// The kernel for `scope` (`host` or the `--netns` name), observing through `watch`
    /// when given. Planning needs no traffic counters: links are read without them.
    pub fn new(scope: &str, watch: Option<&'w mut Watch>) -> Kernel<'w> {
        let mut observer = Observer::new(scope);
        observer.counters = false;
        Kernel {
            observer,
            watch,
            nft_view: None,
            nb: None,
        }
    }

    /// Sends a plan's OVN Northbound row changes to `remotes` (the plan's own).
    pub fn with_nb(mut self, remotes: Option<String>) -> Self {
        self.nb = remotes;
        self
    }
}

impl Backend for Kernel<'_> {
    fn state_dir(&self) -> &StateDir {
        &self.observer.state_dir
    }

    fn observe(
        &mut self,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<Snapshot, ObserveError> {
        let mut snap = match self.watch.as_deref_mut() {
            Some(w) => {
                let (snap, view) = w.snapshot_parts(&self.observer, spec, extra_sysctls)?;
                self.nft_view = Some(view);
                snap
            }
            None => self.observer.snapshot_but_nft(spec, extra_sysctls)?,
        };
        // kvmnet's Northbound rows: where the spec says OVN is, else where the rows the
        // last apply left are (so that they go when the spec no longer has them).
        self.nb = match spec.and_then(|s| s.ovn.as_ref()) {
            Some(o) => Some(o.nb.clone()),
            None => {
                let st = self.observer.state_dir.load()?;
                if st.ovn_ssl.is_some() {
                    crate::ovn::ovsdb::tls::configure(st.ovn_ssl.as_ref());
                }
                st.ovn_nb
            }
        };
        if let Some(r) = &self.nb {
            snap.nb = crate::ovn::nb::observe(r)?;
        }
        snap.chassis = crate::ovn::local::observe(&self.observer.state_dir)?;
        Ok(snap)
    }

    fn observe_nft(&mut self, want: Option<&NftTable>) -> Result<Option<NftTable>, ObserveError> {
        match (self.watch.as_deref(), self.nft_view.take()) {
            (Some(w), Some(view)) => w.nft_observed(view, want),
            _ => Ok(nftables::observe(want)?),
        }
    }

    fn remember_nft(&mut self, wanted: Option<NftTable>) -> Option<NftTable> {
        match self.watch.as_deref_mut() {
            Some(w) => w.remember(wanted),
            None => wanted,
        }
    }

    fn remove_half_made(&mut self, creating_netns: &BTreeSet<String>) -> Result<(), ApplyError> {
        apply::remove_half_made()?;
        for n in creating_netns {
            netns::remove_placeholder(n);
        }
        Ok(())
    }

    fn executor(&mut self) -> Result<Box<dyn Executor + '_>, ApplyError> {
        Ok(Box::new(
            apply::Kernel::new(&self.observer.scope)?.with_nb(self.nb.clone()),
        ))
    }

    fn nb_remote(&self) -> Option<String> {
        self.nb.clone()
    }

    fn nb_wanted(&mut self, ovn: &kvmnet_core::spec::ovn::Ovn) -> Option<RowMap> {
        self.watch.as_deref_mut().map(|w| w.nb_rows.rows(ovn))
    }

    fn nb_adopt(&mut self, want: &mut RowMap, have: &RowMap) {
        if let Some(w) = self.watch.as_deref_mut() {
            w.nb_rows.adopt(want, have);
        }
    }
}
