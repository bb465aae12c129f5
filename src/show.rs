//! `kvmnet show`: what kvmnet owns in a scope, as a spec.
//!
//! Much of a spec lives in no kernel object (DHCP ranges and options, reservations, firewall
//! rules as written, floors), so a spec read back from links and tables alone would be a
//! guess. What `show` prints is the spec last applied in the scope, as recorded in its state
//! directory: the daemon's accepted spec, or the spec `kvmnet apply` applied without a daemon
//! (`applied-spec.yaml`), whichever is newer. It then plans that spec against the live host:
//! when the host does not match (drift, a reverted unconfirmed change, objects of a kvmnet
//! that recorded nothing), a note on stderr says so, and `kvmnet plan` of the shown spec
//! lists the difference.

use std::path::{Path, PathBuf};

use crate::engine::{self, EngineError};
use crate::statedir::StateDir;

const APPLIED: &str = "applied-spec.yaml";

fn applied_path(sd: &StateDir) -> PathBuf {
    sd.dir.join(APPLIED)
}

/// Records `text` as the spec applied in `scope` (atomically, readable by root only).
pub fn record(scope: &str, text: &[u8]) -> Result<(), EngineError> {
    let sd = StateDir::for_scope(scope);
    sd.ensure_private().map_err(EngineError::state_io)?;
    crate::statedir::write_atomic(&applied_path(&sd), text).map_err(EngineError::state_io)
}

/// After a destroy, the empty spec is the applied one: it is newer than any accepted spec a
/// daemon left, which the daemon's next start reads and this destroy does not touch.
pub fn forget(scope: &str) -> Result<(), EngineError> {
    record(scope, b"version: 1\n")
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest recorded spec of `scope` and where it is, or `None`: the spec in force, which
/// `doctor` checks too.
pub fn recorded(scope: &str) -> Result<Option<(String, Vec<u8>)>, EngineError> {
    let sd = StateDir::for_scope(scope);
    let applied = applied_path(&sd);
    let accepted = crate::daemon::accepted::path(&sd.dir);
    let use_accepted = match (modified(&accepted), modified(&applied)) {
        (Some(_), None) => true,
        (Some(a), Some(b)) => a >= b,
        _ => false,
    };
    if use_accepted {
        let a = crate::daemon::accepted::load(&sd.dir)
            .map_err(|e| EngineError::Usage(e.to_string()))?;
        return Ok(a.map(|a| (accepted.display().to_string(), a.text)));
    }
    match std::fs::read(&applied) {
        Ok(t) => Ok(Some((applied.display().to_string(), t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::state_io(e)),
    }
}

/// Prints the scope's spec (the process is in its namespace already); notes on stderr.
pub fn run(scope: &str) -> Result<(), EngineError> {
    let (source, text) = recorded(scope)?.unwrap_or_else(|| {
        eprintln!("# no spec was applied in this scope");
        ("(none)".to_string(), b"version: 1\n".to_vec())
    });
    let (id, _) = crate::host_macs::host_identity(scope);
    let spec = engine::parse(&source, &text, &id)?;
    let p = engine::plan(Some(&spec), scope, &source)?;
    if !p.plan.is_empty() {
        eprintln!(
            "# the host does not match this spec ({} changes: kvmnet plan of it lists them)",
            p.plan.steps.len()
        );
    }
    drop(p);
    let body = String::from_utf8_lossy(&text);
    print!("{body}");
    if !body.ends_with('\n') {
        println!();
    }
    Ok(())
}
