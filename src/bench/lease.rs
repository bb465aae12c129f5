//! Bench's ports beside a running daemon: lent by the daemon (`POST /v1/ephemeral`) for a
//! lease that a thread of bench's keeps refreshing, released when bench is done (or fails,
//! or is interrupted). The daemon never records them in its accepted spec: if bench dies
//! without releasing, the lease runs out and the daemon removes them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::ports::PortsError;
use crate::daemon::api::{self, ApiError};

/// The lease bench asks for, and how often it refreshes it: a bench killed with SIGKILL
/// leaves its ports for at most this long.
const LEASE_SECS: u64 = 20;
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// Ephemeral ports lent by the scope's daemon, refreshed until released.
pub struct DaemonLease {
    dir: PathBuf,
    id: String,
    stop: Arc<AtomicBool>,
    /// Set when a refresh found the lease gone (a new spec accepted, or the lease ran out).
    lost: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

fn answer(r: Option<Result<serde_json::Value, ApiError>>) -> Result<serde_json::Value, PortsError> {
    match r {
        None => Err(PortsError::DaemonGone),
        Some(r) => r.map_err(|e| PortsError::Daemon(Box::new(e))),
    }
}

impl DaemonLease {
    /// Asks the daemon of state directory `dir` to enforce `spec` (the accepted spec, whose
    /// hash is `base_hash`, with bench's VMs added) for a lease, and starts refreshing it.
    pub fn begin(dir: &Path, spec: &str, base_hash: &str) -> Result<DaemonLease, PortsError> {
        let fields = [
            ("base_hash", base_hash.to_string()),
            ("lease_secs", LEASE_SECS.to_string()),
            ("source", "(bench)".to_string()),
        ];
        let v = answer(api::call_with_spec(
            dir,
            "/v1/ephemeral",
            &fields,
            spec.as_bytes(),
        ))?;
        let id = v["lease"]
            .as_str()
            .ok_or_else(|| PortsError::Daemon(Box::new(ApiError::Malformed(v.to_string()))))?
            .to_string();
        let (stop, lost) = (Arc::default(), Arc::default());
        let refresher = {
            let (dir, id) = (dir.to_path_buf(), id.clone());
            let (stop, lost): (Arc<AtomicBool>, Arc<AtomicBool>) =
                (Arc::clone(&stop), Arc::clone(&lost));
            std::thread::spawn(move || refresh_until_stopped(&dir, &id, &stop, &lost))
        };
        Ok(DaemonLease {
            dir: dir.to_path_buf(),
            id,
            stop,
            lost,
            refresher: Some(refresher),
        })
    }

    /// Whether the daemon dropped the ports before bench was done: what the refreshing
    /// thread found, or else what the daemon says now (a failed measurement may be the
    /// first sign, before the next refresh).
    pub fn lost(&self) -> bool {
        if self.lost.load(Ordering::SeqCst) || self.refresher.is_none() {
            return self.lost.load(Ordering::SeqCst);
        }
        let body = json!({ "lease": self.id, "lease_secs": LEASE_SECS });
        let gone = matches!(
            api::call(&self.dir, "POST", "/v1/ephemeral/refresh", &body),
            Some(Err(ApiError::Status { status: 404, .. }))
        );
        self.lost.fetch_or(gone, Ordering::SeqCst) || gone
    }

    /// Stops refreshing and asks the daemon to remove the ports (once: later calls do
    /// nothing). The daemon answers once they are gone.
    pub fn release(&mut self) -> Result<(), PortsError> {
        let Some(t) = self.refresher.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::SeqCst);
        let _ = t.join();
        let body = json!({ "lease": self.id });
        answer(api::call(&self.dir, "POST", "/v1/ephemeral/release", &body)).map(|_| ())
    }
}

impl Drop for DaemonLease {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            crate::log::line(
                crate::log::Level::Error,
                &format!(
                    "kvmnet: releasing bench's ports: {e} (the daemon removes them within {LEASE_SECS} s)"
                ),
            );
        }
    }
}

fn refresh_until_stopped(dir: &Path, id: &str, stop: &AtomicBool, lost: &AtomicBool) {
    let body = json!({ "lease": id, "lease_secs": LEASE_SECS });
    let mut next = Instant::now() + REFRESH_EVERY;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() < next {
            continue;
        }
        match api::call(dir, "POST", "/v1/ephemeral/refresh", &body) {
            Some(Ok(_)) => next = Instant::now() + REFRESH_EVERY,
            // The lease is gone: the ports are (or are about to be) removed.
            Some(Err(ApiError::Status { status: 404, .. })) => {
                lost.store(true, Ordering::SeqCst);
                // Measuring on ports that went away would wait on lost connections.
                super::measure::STOP.store(true, Ordering::Relaxed);
                return;
            }
            // A daemon restarting, or busy: tried again soon, within the lease.
            _ => next = Instant::now() + Duration::from_secs(1),
        }
    }
}
