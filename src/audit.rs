//! The audit log: one JSON line per apply, revert, repair and destroy, appended to
//! `audit.log` in the state directory and synced to disk before the command returns. Each
//! line names the uid of whoever asked for the change: the CLI's user, or for requests
//! through the daemon's API the peer of the connection (not the daemon's own uid).

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::statedir::{StateDir, StateError};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This process's real uid: who asked, when the change is made in this process.
pub fn own_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

pub struct Entry<'a> {
    pub action: &'a str,
    pub spec_hash: &'a str,
    pub changes: Value,
    pub result: Result<(), &'a str>,
    /// Who asked for the change.
    pub uid: u32,
}

pub fn append(dir: &StateDir, e: &Entry<'_>) -> Result<(), StateError> {
    let path = dir.dir.join("audit.log");
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    dir.ensure_private().map_err(io)?;
    let line = json!({
        "time": now_unix(),
        "uid": e.uid,
        "action": e.action,
        "spec_hash": e.spec_hash,
        "changes": e.changes,
        "result": match e.result { Ok(()) => "ok".to_string(), Err(m) => m.to_string() },
    });
    let mut f = crate::statedir::open_private_append(&path).map_err(io)?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    f.sync_data().map_err(io)
}
