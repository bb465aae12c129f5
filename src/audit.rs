//! The audit log: one JSON line per apply, revert, repair and destroy, appended to
//! `audit.log` in the state directory and synced to disk before the command returns.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::statedir::{StateDir, StateError};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct Entry<'a> {
    pub action: &'a str,
    pub spec_hash: &'a str,
    pub changes: Value,
    pub result: Result<(), &'a str>,
}

pub fn append(dir: &StateDir, e: &Entry<'_>) -> Result<(), StateError> {
    let path = dir.dir.join("audit.log");
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir.dir).map_err(io)?;
    let line = json!({
        "time": now_unix(),
        "uid": unsafe { libc::getuid() },
        "action": e.action,
        "spec_hash": e.spec_hash,
        "changes": e.changes,
        "result": match e.result { Ok(()) => "ok".to_string(), Err(m) => m.to_string() },
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
    f.sync_data().map_err(io)
}
