//! kvmnet's state directory: only what the kernel cannot hold for us. Today that is the value
//! each sysctl had before kvmnet first changed it, so destroy can give it back. Everything
//! else kvmnet owns is recognised from the kernel itself (marks on links and namespaces).
//!
//! Nothing in it is for other users: a scope's directory is 0700 and its files 0600 (made
//! so, and tightened when found looser: installs from before this rule).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    /// Host settings kvmnet changed on objects it does not own, to give back; among them,
    /// per bridge of a bridge-mode network and per bond, the uplink or member addresses and
    /// routes kvmnet moved onto it, so one deleted by hand is put back (and returned to the
    /// uplink on destroy).
    #[serde(flatten)]
    pub borrowed: crate::borrowed::Borrowed,
    /// Namespaces an apply is about to create, written before it does: what a kill between
    /// the namespace's file and its mount leaves is then known to be kvmnet's (see
    /// `netns::create_with`), and the next apply or destroy removes it.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub creating_netns: BTreeSet<String>,
    /// The OVN Northbound database holding rows this scope applied: a destroy, or a spec
    /// with no OVN part any more, removes them there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovn_nb: Option<String>,
    /// What an `ssl:` Northbound database there is reached with (`ovn.ssl`), for a destroy
    /// or a status without the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovn_ssl: Option<crate::spec::ovn::Ssl>,
    /// The OVN Southbound database of the spec those rows are from, for a status without
    /// the spec on a host that is no chassis (a chassis records its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovn_sb: Option<String>,
}

#[derive(Clone, Debug)]
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
    pub fn lock(&self) -> Result<ScopeLock, StateError> {
        use std::os::fd::AsRawFd;
        let path = self.dir.join("lock");
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        self.ensure_private().map_err(io)?;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; blocks until the other holder finishes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        held_locks().push(f.as_raw_fd());
        Ok(ScopeLock(f))
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
        self.ensure_private().map_err(io)?;
        let text = serde_json::to_vec_pretty(st).expect("state serializes");
        write_atomic(&self.file(), &text).map_err(io)
    }

    /// Makes the scope's directory (0700) if it is missing, and tightens it and everything in
    /// it when it is looser: one `stat` when it is already right.
    pub fn ensure_private(&self) -> std::io::Result<()> {
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.permissions().mode() & 0o777 == 0o700 => Ok(()),
            Ok(_) => tighten(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private_dir(&self.dir),
            Err(e) => Err(e),
        }
    }

    /// Tightens the scope's directory and everything in it, whatever their modes now.
    pub fn tighten(&self) -> Result<(), StateError> {
        tighten(&self.dir).map_err(|source| StateError::Io {
            path: self.dir.display().to_string(),
            source,
        })
    }
}

/// Makes `dir` and any missing parent with mode 0700 (an existing parent is left as it is:
/// `KVMNET_STATE_DIR` may name a directory kvmnet does not own).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// `dir` to 0700 and, below it, directories to 0700 and files (sockets included) to 0600.
/// Symbolic links are left alone: they are not kvmnet's, and chmod would follow them.
pub fn tighten(dir: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            tighten(&entry.path())?;
        } else if !kind.is_symlink() {
            let mode = entry.metadata()?.permissions().mode();
            if mode & 0o777 != 0o600 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// Opens `path` for appending, creating it with mode 0600.
pub fn open_private_append(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Replaces `path` with `bytes` so that a crash at any moment leaves the old content or the
/// new, whole: written to `PATH.tmp` (0600), synced, renamed over `path`, and the directory
/// synced (without that the rename itself may not survive a crash).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    stage(path, bytes)?.commit()
}

/// The new content of a file, written and synced beside it but not in place yet: the slow
/// half of [`write_atomic`], which a caller may do while it works out whether to commit.
/// Dropped without [`Staged::commit`], it is removed.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// Writes `bytes` to `PATH.tmp` (0600) and syncs it.
pub fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<Staged> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let staged = Staged {
        tmp: PathBuf::from(tmp),
        path: path.to_path_buf(),
        committed: false,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged.tmp)?;
    // An older tmp file may be looser: mode applies only to files created now.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(staged)
}

impl Staged {
    /// Puts the new content in place: renamed over the file, the directory synced.
    pub fn commit(self) -> std::io::Result<()> {
        self.put_in_place()?.sync()
    }

    /// Renames the new content over the file: every process sees it from now on, and a
    /// crash of this one cannot take it back; a crash of the machine can until
    /// [`InPlace::sync`] returns.
    pub fn put_in_place(mut self) -> std::io::Result<InPlace> {
        let replaced = self.keep_replaced();
        std::fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        Ok(InPlace {
            dir: self.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            replaced,
        })
    }

    /// A large file about to be replaced, linked to `PATH.old` so that the rename does not
    /// free it: freeing a 1.7 MB spec's pages took 0.7 ms inside the rename, on the way to
    /// the apply; [`InPlace`] removes it after (where a daemon syncs, beside the apply).
    fn keep_replaced(&self) -> Option<PathBuf> {
        const LARGE: u64 = 256 << 10;
        let size = std::fs::metadata(&self.path).ok()?.len();
        if size < LARGE {
            return None;
        }
        let mut old = self.path.as_os_str().to_owned();
        old.push(".old");
        let old = PathBuf::from(old);
        // One a crash left behind goes first.
        let _ = std::fs::remove_file(&old);
        std::fs::hard_link(&self.path, &old).ok()?;
        Some(old)
    }
}

/// A renamed file whose directory is not synced yet.
#[derive(Debug)]
#[must_use = "the rename survives a power loss only once synced"]
pub struct InPlace {
    dir: PathBuf,
    /// The replaced file's other name, removed once synced (or dropped).
    replaced: Option<PathBuf>,
}

impl InPlace {
    pub fn sync(mut self) -> std::io::Result<()> {
        let synced = self.sync_dir();
        self.remove_replaced();
        synced
    }

    /// Syncs the directory and leaves the replaced file to be removed when `self` is
    /// dropped: its removal frees its blocks in the filesystem's journal, and an `fsync`
    /// anywhere on the filesystem meanwhile waits for that (a daemon's audit line for a
    /// 10,000-port spec took 0.8 ms to sync, against 0.2 ms with a small spec).
    pub fn sync_dir(&self) -> std::io::Result<()> {
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn remove_replaced(&mut self) {
        if let Some(old) = self.replaced.take() {
            let _ = std::fs::remove_file(old);
        }
    }
}

impl Drop for InPlace {
    fn drop(&mut self) {
        self.remove_replaced();
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state file's format is the same since the borrowed settings took in the moved
    /// addresses: a file written before loads, and is written back the same.
    #[test]
    fn a_state_file_from_before_loads_and_saves_the_same() {
        let old = r#"{
  "sysctl_originals": {
    "net.ipv4.ip_forward": "0"
  },
  "mtu_originals": {},
  "ethtool_originals": {},
  "moved": {
    "br0": {
      "addrs": [
        {
          "cidr": "192.0.2.10/24",
          "broadcast": "192.0.2.255"
        }
      ],
      "routes": []
    }
  },
  "creating_netns": [
    "g1"
  ]
}"#;
        let st: State = serde_json::from_str(old).unwrap();
        assert_eq!(st.borrowed.moved["br0"].addrs.len(), 1);
        assert!(st.creating_netns.contains("g1"));
        assert_eq!(serde_json::to_string_pretty(&st).unwrap(), old);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_loose_directory_is_tightened_and_new_files_are_private() {
        let base = std::env::temp_dir().join(format!("kvmnet-statedir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let sd = StateDir {
            dir: base.join("host"),
        };
        sd.ensure_private().unwrap();
        assert_eq!(mode(&sd.dir), 0o700);
        // An install from before: readable by everyone.
        std::fs::set_permissions(&sd.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(sd.dir.join("dhcp")).unwrap();
        std::fs::set_permissions(sd.dir.join("dhcp"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        for f in ["audit.log", "dhcp/leases"] {
            std::fs::write(sd.dir.join(f), "x").unwrap();
            std::fs::set_permissions(sd.dir.join(f), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        sd.ensure_private().unwrap();
        assert_eq!(mode(&sd.dir), 0o700);
        assert_eq!(mode(&sd.dir.join("dhcp")), 0o700);
        assert_eq!(mode(&sd.dir.join("audit.log")), 0o600);
        assert_eq!(mode(&sd.dir.join("dhcp/leases")), 0o600);
        sd.save(&State::default()).unwrap();
        assert_eq!(mode(&sd.dir.join("state.json")), 0o600);
        assert_eq!(sd.load().unwrap(), State::default());
        write_atomic(&sd.dir.join("x"), b"one").unwrap();
        write_atomic(&sd.dir.join("x"), b"two").unwrap();
        assert_eq!(std::fs::read(sd.dir.join("x")).unwrap(), b"two");
        assert_eq!(mode(&sd.dir.join("x")), 0o600);
        // Staged and dropped: the file keeps its content, and no temporary file is left.
        drop(stage(&sd.dir.join("x"), b"three").unwrap());
        assert_eq!(std::fs::read(sd.dir.join("x")).unwrap(), b"two");
        assert!(!sd.dir.join("x.tmp").exists());
        drop(sd.lock().unwrap());
        assert_eq!(mode(&sd.dir.join("lock")), 0o600);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// A large file replaced keeps a second name until the rename is synced (or the value
    /// dropped), then none; one a crash left behind is replaced.
    #[test]
    fn a_large_file_replaced_is_freed_after_the_rename() {
        let base = std::env::temp_dir().join(format!("kvmnet-replaced-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let (p, old) = (base.join("spec"), base.join("spec.old"));
        let large = |b: u8| vec![b; 300 << 10];
        write_atomic(&p, &large(b'a')).unwrap();
        std::fs::write(&old, b"left by a crash").unwrap();
        let in_place = stage(&p, &large(b'b')).unwrap().put_in_place().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), large(b'b'));
        assert_eq!(
            std::fs::read(&old).unwrap(),
            large(b'a'),
            "the replaced file"
        );
        in_place.sync().unwrap();
        assert!(!old.exists());
        // Synced apart: the replaced file goes with the value.
        let in_place = stage(&p, &large(b'd')).unwrap().put_in_place().unwrap();
        in_place.sync_dir().unwrap();
        assert!(old.exists());
        drop(in_place);
        assert!(!old.exists());
        drop(stage(&p, &large(b'c')).unwrap().put_in_place().unwrap());
        assert!(!old.exists());
        assert_eq!(std::fs::read(&p).unwrap(), large(b'c'));
        // A small file is renamed over as it is.
        write_atomic(&p, b"small").unwrap();
        let in_place = stage(&p, b"smaller").unwrap().put_in_place().unwrap();
        assert!(!old.exists());
        in_place.sync().unwrap();
        std::fs::remove_dir_all(&base).unwrap();
    }
}

/// A scope's lock, held while it lives.
///
/// Why children inherit it: a change kvmnet hands to a child process (`nft -f`) can outlive a
/// kvmnet killed while the child runs, and land after the next kvmnet looked at the host. A
/// child that holds the lock too makes the next one wait until it is done.
#[derive(Debug)]
pub struct ScopeLock(std::fs::File);

impl Drop for ScopeLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        held_locks().retain(|l| *l != fd);
    }
}

fn held_locks() -> std::sync::MutexGuard<'static, Vec<i32>> {
    static HELD: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Makes `cmd`'s process hold every scope lock this process holds (see [`ScopeLock`]).
pub fn share_locks_with(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let fds = held_locks().clone();
    if fds.is_empty() {
        return;
    }
    // SAFETY: between fork and exec the closure only calls fcntl, which is async-signal-safe,
    // on descriptors this process owns (copied before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
