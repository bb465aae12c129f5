//! The append-only lease journal that makes the lease table survive a crash.
//!
//! `leases.journal` holds one JSON record per line (a [`super::Lease`] for DHCPv4; the DHCPv6
//! server keeps its own journal of the same shape in a directory of its own); replaying it in order, the last line
//! for a (network, address) wins. Every binding is written and `fdatasync`ed before its
//! DHCPACK leaves (the server batches the packets of one wakeup, so one sync covers many
//! ACKs). Offers are not written: an offer lost in a crash costs the client one NAK or one
//! retry, never a double assignment. A torn last line (the process died inside `write`) is cut
//! off at start; nothing in it was acknowledged. When the journal grows to twice the live
//! records (and at least 4096 lines) it is rewritten, via a temporary file and rename.
//!
//! A disk that fills up or fails must never cost an acknowledged binding:
//! - A write that fails (a full disk writes part of a line, then refuses) is cut back: the
//!   file is truncated to the end of the last whole record, so the partial line cannot glue
//!   itself to the next record and hide it at replay. A sync that fails is cut back to the
//!   last successful sync (after a failed `fdatasync` the kernel may have dropped the pages,
//!   so what lies past it is unknown). Until the cut succeeds nothing is written and no sync
//!   reports success, so no ACK goes out.
//! - From the rename of a compaction on, appends go to the new file (reopened by its path),
//!   never to the replaced one; if that reopen fails, nothing is written until it succeeds.
//!   If the directory could not be synced after the rename, the rename itself may not
//!   survive a crash, so no sync counts as durable until a directory sync succeeds.
//! - Leases name clients: files are created 0600 (an existing journal is made 0600 at open),
//!   and a state directory the server has to create is 0700.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::DhcpError;
#[cfg(test)]
use super::Lease;

pub(crate) const JOURNAL: &str = "leases.journal";
const LOCK: &str = "leases.lock";
const COMPACT_MIN_LINES: u64 = 4096;
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// Parse journal bytes: the records, the length of the part that ends in a complete line,
/// and how many complete lines did not parse.
pub(crate) fn replay<R: DeserializeOwned>(bytes: &[u8]) -> (Vec<R>, usize, usize) {
    let good_len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut out = Vec::new();
    let mut bad = 0;
    for line in bytes[..good_len].split(|&b| b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        match serde_json::from_slice::<R>(line) {
            Ok(l) => out.push(l),
            Err(_) => bad += 1,
        }
    }
    (out, good_len, bad)
}

/// What must be put right before the journal takes another write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repair {
    /// Cut the file back to this length: what lies past it is from a failed write or sync.
    Truncate(u64),
    /// `file` may still be the file a compaction replaced: open the journal's path again.
    Reopen,
}

/// Failures a unit test injects where the real file system will not fail on demand.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// Directory syncs fail.
    pub dir_sync: bool,
    /// Opening the journal for appending fails.
    pub reopen: bool,
    /// Writes stop at this file length, as on a full disk: the part that fits is written,
    /// then the write fails.
    pub space: Option<u64>,
}

pub(crate) struct Journal<R> {
    path: PathBuf,
    dir: PathBuf,
    file: File,
    buf: Vec<u8>,
    lines: u64,
    /// File length at the end of the last record written without error.
    written: u64,
    /// File length known to be on disk (the last successful sync).
    synced: u64,
    repair: Option<Repair>,
    /// A compaction's rename is not known to be durable: a sync counts only once the
    /// directory has been synced too.
    dir_unsynced: bool,
    #[cfg(test)]
    pub faults: Faults,
    _lock: File,
    _record: std::marker::PhantomData<fn(R)>,
}

fn state_err(path: &Path, source: std::io::Error) -> DhcpError {
    DhcpError::State {
        path: path.display().to_string(),
        source,
    }
}

fn open_private(path: &Path, opts: &mut OpenOptions) -> std::io::Result<File> {
    let f = opts.mode(FILE_MODE).open(path)?;
    // `mode` applies only when the file is created: a file from an older version or an
    // earlier crash may be more open.
    if f.metadata()?.permissions().mode() & 0o7777 != FILE_MODE {
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(f)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().append(true).open(path)
}

impl<R: Serialize + DeserializeOwned> Journal<R> {
    /// Lock the state directory, read the journal (cutting off a torn last line) and open it
    /// for appending.
    pub fn open(dir: &Path) -> Result<(Journal<R>, Vec<R>), DhcpError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| state_err(dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock = open_private(
            &lock_path,
            OpenOptions::new().create(true).truncate(false).write(true),
        )
        .map_err(|e| state_err(&lock_path, e))?;
        // SAFETY: plain syscall on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(DhcpError::Locked {
                path: dir.display().to_string(),
            });
        }
        let path = dir.join(JOURNAL);
        let existed = path.exists();
        let mut file = open_private(
            &path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true),
        )
        .map_err(|e| state_err(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| state_err(&path, e))?;
        let (records, good_len, bad) = replay(&bytes);
        if bad > 0 {
            crate::log::line(
                crate::log::Level::Warning,
                &format!(
                    "kvmnet dhcp: {}: skipped {bad} damaged line(s)",
                    path.display()
                ),
            );
        }
        if good_len < bytes.len() {
            // The process died inside a write: that record was never acknowledged.
            file.set_len(good_len as u64)
                .and_then(|_| file.sync_data())
                .map_err(|e| state_err(&path, e))?;
        }
        drop(file);
        let file = open_append(&path).map_err(|e| state_err(&path, e))?;
        if !existed {
            sync_dir(dir).map_err(|e| state_err(dir, e))?;
        }
        let lines = records.len() as u64;
        Ok((
            Journal {
                path,
                dir: dir.to_path_buf(),
                file,
                buf: Vec::new(),
                lines,
                written: good_len as u64,
                synced: good_len as u64,
                repair: None,
                dir_unsynced: false,
                #[cfg(test)]
                faults: Faults::default(),
                _lock: lock,
                _record: std::marker::PhantomData,
            },
            records,
        ))
    }

    pub fn append(&mut self, l: &R) {
        serde_json::to_writer(&mut self.buf, l).expect("a lease serializes");
        self.buf.push(b'\n');
        self.lines += 1;
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Write what was appended; with `sync`, also wait until it is on disk. On an error
    /// what was appended is dropped (the bindings in it were not acknowledged: their clients
    /// ask again, and the table journals them again).
    pub fn flush(&mut self, sync: bool) -> Result<(), DhcpError> {
        let buf = std::mem::take(&mut self.buf);
        self.repair()?;
        if !buf.is_empty() {
            if let Err(e) = self.write(&buf) {
                self.cut_back(self.written);
                return Err(state_err(&self.path, e));
            }
            self.written += buf.len() as u64;
        }
        if sync {
            if let Err(e) = self.file.sync_data() {
                self.cut_back(self.synced);
                return Err(state_err(&self.path, e));
            }
            if self.dir_unsynced {
                self.sync_dir().map_err(|e| state_err(&self.dir, e))?;
                self.dir_unsynced = false;
            }
            self.synced = self.written;
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(space) = self.faults.space {
            let room = space.saturating_sub(self.written) as usize;
            if buf.len() > room {
                self.file.write_all(&buf[..room])?;
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        self.file.write_all(buf)
    }

    /// Forget everything past `len` and cut the file there (now, or before the next write).
    fn cut_back(&mut self, len: u64) {
        self.written = len;
        self.synced = self.synced.min(len);
        if self.repair != Some(Repair::Reopen) {
            self.repair = Some(Repair::Truncate(len));
        }
        let _ = self.repair();
    }

    fn repair(&mut self) -> Result<(), DhcpError> {
        match self.repair {
            None => {}
            Some(Repair::Truncate(len)) => {
                self.file
                    .set_len(len)
                    .map_err(|e| state_err(&self.path, e))?;
            }
            Some(Repair::Reopen) => {
                let file = self.reopen().map_err(|e| state_err(&self.path, e))?;
                let len = file.metadata().map_err(|e| state_err(&self.path, e))?.len();
                self.file = file;
                // The compacted file was synced before its rename.
                (self.written, self.synced) = (len, len);
            }
        }
        self.repair = None;
        Ok(())
    }

    fn reopen(&self) -> std::io::Result<File> {
        #[cfg(test)]
        if self.faults.reopen {
            return Err(std::io::Error::other("injected reopen failure"));
        }
        open_append(&self.path)
    }

    fn sync_dir(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if self.faults.dir_sync {
            return Err(std::io::Error::other("injected directory sync failure"));
        }
        sync_dir(&self.dir)
    }

    pub fn wants_compaction(&self, live: usize) -> bool {
        self.lines > COMPACT_MIN_LINES && self.lines > 2 * live as u64
    }

    /// Rewrite the journal with just `live` (after flushing what is pending).
    pub fn compact(&mut self, live: &[R]) -> Result<(), DhcpError> {
        self.flush(false)?;
        let tmp = self.dir.join(format!("{JOURNAL}.tmp"));
        let mut data = Vec::with_capacity(live.len() * 160);
        for l in live {
            serde_json::to_writer(&mut data, l).expect("a lease serializes");
            data.push(b'\n');
        }
        let write = || -> std::io::Result<()> {
            let mut f = open_private(
                &tmp,
                OpenOptions::new().write(true).create(true).truncate(true),
            )?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            // The journal is still the old file, whole: keep appending to it.
            let _ = std::fs::remove_file(&tmp);
            return Err(state_err(&tmp, e));
        }
        // From here on the journal is the new file.
        self.lines = live.len() as u64;
        self.dir_unsynced = true;
        self.repair = Some(Repair::Reopen);
        self.repair()?;
        self.sync_dir().map_err(|e| state_err(&self.dir, e))?;
        self.dir_unsynced = false;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Read a journal without locking or changing it (a live server may be appending).
pub(crate) fn read_journal<R: DeserializeOwned>(dir: &Path) -> Result<Vec<R>, DhcpError> {
    let path = dir.join(JOURNAL);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(state_err(&path, e)),
    };
    Ok(replay(&bytes).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("kvmnet-dhcp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    fn lease(i: u32, state: &str) -> Lease {
        Lease {
            mac: format!("02:00:00:00:00:{:02x}", i % 4),
            ip: Ipv4Addr::new(10, 0, 0, 10 + (i % 4) as u8),
            network: "n".into(),
            expires_unix: 1000 + u64::from(i),
            hostname: None,
            state: state.into(),
            reserved: false,
            client_id: None,
        }
    }

    #[test]
    fn journal_compacts_and_replays() {
        let d = dir("journal");
        {
            let (mut j, recs) = Journal::<Lease>::open(&d.0).unwrap();
            assert!(recs.is_empty());
            assert!(matches!(
                Journal::<Lease>::open(&d.0),
                Err(DhcpError::Locked { .. })
            ));
            for i in 0..5000 {
                j.append(&lease(i, "bound"));
            }
            j.flush(true).unwrap();
            assert!(j.wants_compaction(4));
            let live: Vec<Lease> = (4996..5000).map(|i| lease(i, "bound")).collect();
            j.compact(&live).unwrap();
            assert!(!j.wants_compaction(4));
            j.append(&lease(5000, "released"));
            j.flush(true).unwrap();
        }
        let (_j, recs) = Journal::<Lease>::open(&d.0).unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[4], lease(5000, "released"));
        assert_eq!(read_journal::<Lease>(&d.0).unwrap(), recs);
        // Nothing in the state directory is readable by others.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.0), 0o700);
        assert_eq!(mode(&d.0.join(JOURNAL)), 0o600);
        assert_eq!(mode(&d.0.join(LOCK)), 0o600);
    }

    #[test]
    fn open_makes_an_old_journal_private() {
        let d = dir("mode");
        std::fs::create_dir_all(&d.0).unwrap();
        std::fs::write(d.0.join(JOURNAL), b"").unwrap();
        std::fs::set_permissions(d.0.join(JOURNAL), Permissions::from_mode(0o644)).unwrap();
        let _j = Journal::<Lease>::open(&d.0).unwrap();
        let m = std::fs::metadata(d.0.join(JOURNAL)).unwrap().permissions();
        assert_eq!(m.mode() & 0o777, 0o600);
    }

    #[test]
    fn torn_tail_is_ignored() {
        let l = lease(0, "bound");
        let mut b = serde_json::to_vec(&l).unwrap();
        b.push(b'\n');
        b.extend_from_slice(b"garbage\n");
        let full = b.len();
        b.extend_from_slice(br#"{"mac":"02:00"#);
        let (recs, good, bad) = replay(&b);
        assert_eq!((recs, good, bad), (vec![l], full, 1));
    }

    /// A full disk takes part of a line and refuses the rest: the part is cut off, so the
    /// next binding, written once there is room, replays.
    #[test]
    fn short_write_is_cut_back() {
        let d = dir("short");
        let (mut j, _) = Journal::<Lease>::open(&d.0).unwrap();
        j.append(&lease(1, "bound"));
        j.flush(true).unwrap();
        let good = std::fs::metadata(d.0.join(JOURNAL)).unwrap().len();
        j.faults.space = Some(good + 20);
        j.append(&lease(2, "bound"));
        assert!(j.flush(true).is_err(), "the disk is full");
        assert_eq!(
            std::fs::metadata(d.0.join(JOURNAL)).unwrap().len(),
            good,
            "the 20 bytes that fitted are gone"
        );
        j.faults.space = None;
        j.append(&lease(3, "bound"));
        j.flush(true).unwrap();
        drop(j);
        let (_j, recs) = Journal::<Lease>::open(&d.0).unwrap();
        assert_eq!(recs, vec![lease(1, "bound"), lease(3, "bound")]);
    }

    /// After a compaction whose directory sync failed, appends go to the new file, and no
    /// sync counts until the directory is synced.
    #[test]
    fn compaction_with_failed_directory_sync() {
        let d = dir("dirsync");
        let (mut j, _) = Journal::<Lease>::open(&d.0).unwrap();
        for i in 0..8 {
            j.append(&lease(i, "bound"));
        }
        j.flush(true).unwrap();
        j.faults.dir_sync = true;
        let live = vec![lease(7, "bound")];
        assert!(j.compact(&live).is_err());
        j.append(&lease(9, "released"));
        assert!(
            j.flush(true).is_err(),
            "not durable while the rename is not"
        );
        j.faults.dir_sync = false;
        j.append(&lease(10, "bound"));
        j.flush(true).unwrap();
        drop(j);
        let (_j, recs) = Journal::<Lease>::open(&d.0).unwrap();
        assert_eq!(
            recs,
            vec![lease(7, "bound"), lease(9, "released"), lease(10, "bound")],
            "appends after the compaction are in the journal, not in the replaced file"
        );
    }

    /// A compaction that cannot reopen the new file writes nothing until it can.
    #[test]
    fn compaction_with_failed_reopen() {
        let d = dir("reopen");
        let (mut j, _) = Journal::<Lease>::open(&d.0).unwrap();
        for i in 0..8 {
            j.append(&lease(i, "bound"));
        }
        j.flush(true).unwrap();
        j.faults.reopen = true;
        assert!(j.compact(&[lease(6, "bound")]).is_err());
        j.append(&lease(11, "bound"));
        assert!(j.flush(true).is_err());
        j.faults.reopen = false;
        j.append(&lease(12, "bound"));
        j.flush(true).unwrap();
        drop(j);
        let (_j, recs) = Journal::<Lease>::open(&d.0).unwrap();
        assert_eq!(recs, vec![lease(6, "bound"), lease(12, "bound")]);
    }
}
