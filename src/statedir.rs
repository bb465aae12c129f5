//! kvmnet's state directory: only what the kernel cannot hold for us. Today that is the value
//! each sysctl had before kvmnet first changed it, so destroy can give it back. Everything
//! else kvmnet owns is recognised from the kernel itself (marks on links and namespaces).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state file {path} is damaged ({source}); move it aside to continue")]
    Corrupt {
        path: String,
        source: serde_json::Error,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub sysctl_originals: BTreeMap<String, String>,
    /// Per bridge of a bridge-mode network and per bond: the uplink or member addresses and routes kvmnet moved onto
    /// it, so one deleted by hand is put back (and returned to the uplink on destroy).
    #[serde(default)]
    pub moved: BTreeMap<String, Moved>,
    /// Per foreign interface: the value each ethtool setting had before kvmnet first changed
    /// it, given back on destroy.
    #[serde(default)]
    pub ethtool_originals: BTreeMap<String, BTreeMap<String, u32>>,
    /// MTUs host interfaces had before `host.uplinks` first changed them.
    #[serde(default)]
    pub mtu_originals: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Moved {
    pub addrs: Vec<crate::state::Addr>,
    pub routes: Vec<crate::state::Route>,
}

pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    /// `KVMNET_STATE_DIR` (default /var/lib/kvmnet), one subfolder per scope (`host` or the
    /// `--netns` name) so sandboxes never share state with the host.
    pub fn for_scope(scope: &str) -> StateDir {
        let base = std::env::var_os("KVMNET_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/kvmnet"));
        let sub = if scope == "host" {
            "host".to_string()
        } else {
            format!("netns-{scope}")
        };
        StateDir {
            dir: base.join(sub),
        }
    }

    /// Holds an exclusive lock on this scope until the returned file is dropped, so two
    /// kvmnet processes never plan and apply over each other.
    pub fn lock(&self) -> Result<std::fs::File, StateError> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join("lock");
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; blocks until the other holder finishes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(f)
    }

    fn file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn load(&self) -> Result<State, StateError> {
        let path = self.file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Written to a temporary file, synced, then renamed: a crash leaves the old or the new
    /// state, never half of one.
    pub fn save(&self, st: &State) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.file().display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join("state.json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(st).expect("state serializes");
        f.write_all(&text).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.file()).map_err(io)?;
        Ok(())
    }
}
