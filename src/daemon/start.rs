//! What the daemon settles before it serves: its private state directory (refused while
//! another daemon serves it), this host's identity and OVN chassis, the spec it starts with
//! (the `--spec` file or the accepted spec it resumes), the kernel notifications and the
//! thread that frees big values. Apart from `mod.rs` because each runs once, at start.

use std::sync::Mutex;
use std::time::Duration;

use super::accepted::{self, Accepted, Origin};
use super::{api, dhcp_dir, log};
use crate::engine::{self, Busy, EngineError};
use crate::log::Level;
use crate::spec::Spec;
use crate::statedir::StateDir;
use crate::watch::Watch;

/// The spec the daemon starts with ([`accepted::file_wins`]): the `--spec` file, recorded as
/// accepted before anything is applied, or the accepted spec it resumes.
pub(super) fn start_spec(
    sd: &StateDir,
    specs: &Mutex<crate::spec::SpecCache>,
    spec_path: &std::path::Path,
    spec_file: &str,
    identity: &crate::spec::HostIdentity,
    chassis: Option<&str>,
) -> Result<(Spec, Accepted), EngineError> {
    let text = engine::read(spec_path)?;
    let file_hash = engine::spec_hash(&text);
    let stored = accepted::load(&sd.dir)?;
    let mut cache = specs.lock().expect("lock");
    if let Some(a) = stored
        .as_ref()
        .filter(|a| !accepted::file_wins(Some(&a.record), spec_file, &file_hash))
    {
        let source = accepted::path(&sd.dir).display().to_string();
        let spec = engine::parse_cached(&mut cache, &source, &a.text, identity)?;
        let mut spec = crate::host_macs::as_recorded(spec, identity.scope())?;
        engine::settle_chassis(&mut spec, chassis);
        log(
            Level::Info,
            &format!(
                "resuming the spec accepted from {} (number {}; {} is unchanged since it was last read)",
                a.record.source,
                a.record.seq,
                spec_path.display()
            ),
        );
        return Ok((spec, a.clone()));
    }
    let spec = engine::parse_cached(
        &mut cache,
        &spec_path.display().to_string(),
        &text,
        identity,
    )?;
    let mut spec = crate::host_macs::as_recorded(spec, identity.scope())?;
    engine::settle_chassis(&mut spec, chassis);
    let next = Accepted {
        record: accepted::Record {
            seq: stored.as_ref().map_or(1, |a| a.record.seq + 1),
            time_unix: crate::audit::now_unix(),
            origin: Origin::File,
            source: spec_file.to_string(),
            spec_file: spec_file.to_string(),
            spec_file_hash: file_hash,
            reverts: None,
        },
        text,
    };
    accepted::save(&sd.dir, &next)?;
    Ok((spec, next))
}

/// The scope's state directory, private, with no daemon serving it yet.
pub(super) fn private_state_dir(scope: &str) -> Result<StateDir, EngineError> {
    let state_dir = StateDir::for_scope(scope);
    // A second daemon would record and apply its --spec file before finding the socket
    // taken: the first one's accepted spec would be undone.
    if api::daemon_listening(&state_dir.dir) {
        return Err(Busy::Daemon {
            socket: api::socket_path(&state_dir.dir),
        }
        .into());
    }
    // Installs from before kept these readable by everyone.
    state_dir
        .ensure_private()
        .and_then(|()| crate::statedir::create_private_dir(&dhcp_dir(scope)))
        .map_err(|source| EngineError::StateIo {
            context: "state directory: ",
            source,
        })?;
    state_dir.tighten()?;
    Ok(state_dir)
}

/// This host's identity for derived MACs, a warning logged when it is not the machine's.
pub(super) fn host_identity(scope: &str) -> crate::spec::HostIdentity {
    let (identity, warning) = crate::host_macs::host_identity(scope);
    if let Some(w) = warning {
        log(Level::Warning, &format!("warning: {w}"));
    }
    identity
}

pub(super) fn open_watch() -> Option<Watch> {
    match Watch::open() {
        Ok(mut w) => {
            if let Some(ms) = std::env::var("KVMNET_RESYNC_MS")
                .ok()
                .and_then(|v| v.parse().ok())
            {
                w.resync = Duration::from_millis(ms);
            }
            Some(w)
        }
        Err(e) => {
            log(
                Level::Warning,
                &format!("no kernel notifications ({e}): every plan reads the whole host"),
            );
            None
        }
    }
}

/// A thread that frees what is sent to it, at the lowest priority.
pub(super) fn freeing_thread() -> std::sync::mpsc::Sender<Box<dyn Send>> {
    let (retired, to_free) = std::sync::mpsc::channel::<Box<dyn Send>>();
    std::thread::spawn(move || {
        // Freeing is never urgent: it gives way to requests and to everything else.
        // SAFETY: setpriority on this thread (a Linux thread id is a PRIO_PROCESS target).
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
        to_free.into_iter().for_each(drop)
    });
    retired
}
