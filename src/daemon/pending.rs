//! Changes applied with `--confirm-within` and not yet confirmed: they hold back every other
//! change, survive a restart of the daemon when still enforced, and are reverted when their
//! time is up. Apart from `mod.rs` because the rules of who wins (the pending change, a
//! newer accepted spec, a revert under way) are their own.

use super::accepted::{self, Accepted, Origin};
use super::{Shared, log};
use crate::engine::{self, Busy, EngineError};
use crate::log::Level;
use crate::metrics::Operation;
use crate::spec::Spec;

/// A change applied with `--confirm-within` and not yet confirmed holds back every other:
/// reverting it must not undo a spec accepted after it.
pub(super) fn refuse_while_pending(sh: &Shared) -> Result<(), EngineError> {
    match engine::load_pending(&sh.state_dir)? {
        None => Ok(()),
        Some(p) => Err(Busy::Pending {
            reverts_in: p.deadline_unix.saturating_sub(crate::audit::now_unix()),
        }
        .into()),
    }
}

/// A change awaiting confirmation when the daemon starts is reverted (at its deadline) only
/// if it is what the daemon enforces now; a revert that was under way is finished. Returns
/// whether a revert is due at once.
pub(super) fn pending_at_start(sh: &Shared) -> Result<bool, EngineError> {
    let Some(p) = engine::load_pending(&sh.state_dir)? else {
        return Ok(false);
    };
    let record = sh.active.lock().expect("lock").accepted.record.clone();
    match accepted::pending_at_start(p.accepted_seq, &record) {
        accepted::PendingAtStart::Keep => Ok(false),
        accepted::PendingAtStart::FinishRevert => Ok(true),
        accepted::PendingAtStart::Drop => {
            log(
                Level::Notice,
                "a change awaiting confirmation was dropped: a newer spec was accepted since",
            );
            engine::end_pending(&sh.scope, "discard", crate::audit::own_uid())?;
            Ok(false)
        }
    }
}

/// Reverts the change awaiting confirmation if its time is up (or at once with `force`); the
/// spec before it is recorded as accepted first. A revert that fails is tried again at the
/// next reconcile: the change stays pending until it is reverted or confirmed.
pub(super) fn revert_due(sh: &Shared, force: bool) {
    let mut active = sh.active.lock().expect("lock");
    let mut reverted_to: Option<(Spec, Accepted)> = None;
    let current = &active.accepted;
    let result = engine::revert_if_due_with(&sh.scope, None, force, &mut |p| {
        let Some(text) = &p.previous_spec else {
            return Ok(());
        };
        let spec = engine::parse("(previous spec)", text.as_bytes(), &sh.identity)
            .and_then(|s| crate::host_macs::as_recorded(s, &sh.scope))
            .map(|s| sh.settled(s))?;
        if p.accepted_seq.is_some() && current.record.reverts == p.accepted_seq {
            // Recorded by a daemon that stopped before the revert was done.
            reverted_to = Some((spec, current.clone()));
            return Ok(());
        }
        let mut next = current.next(Origin::Revert, "(revert)", text.clone().into_bytes());
        next.record.reverts = p.accepted_seq;
        sh.accept(&next)?;
        reverted_to = Some((spec, next));
        Ok(())
    });
    match result {
        Ok(Some(_)) => {
            sh.metrics.reverted();
            log(
                Level::Warning,
                "confirmation did not come in time: reverted the last change",
            );
            if let Some((spec, next)) = reverted_to {
                sh.set_active(&mut active, spec, next);
            }
        }
        Ok(None) => {}
        Err(e) => {
            sh.metrics.failed(Operation::Revert);
            log(
                Level::Error,
                &format!("revert failed (tried again shortly): {e}"),
            )
        }
    }
}
