//! The daemon's DHCPv6 server (`crate::dhcp::v6`): its own thread beside the DHCPv4 one,
//! taking new scopes the same way whenever a spec is accepted.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Shared, log};
use crate::dhcp::v6::{self, Lease6, Scope6, Server6, ServerHandle6};
use crate::engine::EngineError;
use crate::log::Level;
use crate::spec::Spec;

#[derive(Default)]
pub(super) struct V6 {
    /// Scopes waiting for the thread, which `kick` wakes.
    pending: Mutex<Option<Vec<Scope6>>>,
    kick: AtomicBool,
    handle: Mutex<Option<ServerHandle6>>,
}

impl V6 {
    /// Serve what `spec` declares from now on.
    pub fn set_spec(&self, spec: &Spec) {
        *self.pending.lock().expect("lock") = Some(v6::scopes(spec));
        self.kick.store(true, Ordering::SeqCst);
    }

    pub fn leases(&self) -> Option<Vec<Lease6>> {
        self.handle
            .lock()
            .expect("lock")
            .as_ref()
            .map(|h| h.leases())
    }

    /// Ask the thread to look at `stop` (the daemon is stopping).
    pub fn wake(&self) {
        self.kick.store(true, Ordering::SeqCst);
    }
}

/// Start the server on the scopes of `spec`, in this thread's network namespace (the
/// bridges the first apply just made), and its thread.
pub(super) fn start(
    sh: &Arc<Shared>,
    spec: &Spec,
    dhcp_dir: &std::path::Path,
) -> Result<JoinHandle<()>, EngineError> {
    let dir = v6::state_dir(dhcp_dir);
    let server = match Server6::start(v6::scopes(spec), &dir) {
        Ok(s) => s,
        // A bridge that cannot take the socket yet is retried every second; the journal
        // and the DUID must be there.
        Err(e @ (v6::Dhcp6Error::State(_) | v6::Dhcp6Error::Duid { .. })) => {
            return Err(EngineError::Dhcp6(e));
        }
        Err(e) => {
            log(Level::Error, &format!("dhcp6: {e}"));
            Server6::start(Vec::new(), &dir).map_err(EngineError::Dhcp6)?
        }
    };
    let h = server.handle();
    *sh.v6.handle.lock().expect("lock") = Some(h.clone());
    sh.metrics.set_dhcp6(h);
    let sh = Arc::clone(sh);
    Ok(std::thread::spawn(move || thread(&sh, server)))
}

fn thread(sh: &Shared, mut server: Server6) {
    loop {
        if let Err(e) = server.run(&sh.v6.kick) {
            log(Level::Error, &format!("dhcp6: {e}"));
            std::thread::sleep(Duration::from_millis(500));
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        sh.v6.kick.store(false, Ordering::SeqCst);
        if let Some(scopes) = sh.v6.pending.lock().expect("lock").take()
            && let Err(e) = server.update(scopes)
        {
            log(Level::Error, &format!("dhcp6: {e}"));
        }
    }
}
