//! The spec a daemon enforces, kept in the state directory (`accepted-spec.yaml`) so that a
//! restart (after a crash, `systemctl restart`) goes on enforcing it instead of going back to
//! the `--spec` file and undoing what `kvmnet apply` changed through the daemon since.
//!
//! A spec is written (atomically, and synced) before it is applied: what the host has was
//! always accepted first. The file is the spec's text followed by one comment line holding
//! the record as JSON (a sequence number, when, where from, and the content hash of the
//! `--spec` file as the daemon last read it): still a spec `kvmnet validate` reads, with the
//! line numbers of the original.
//!
//! Which spec a daemon starts with, and what a reload does, is [`file_wins`]: the `--spec`
//! file when its content changed since the daemon last read it (the operator edited it), the
//! accepted spec otherwise.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "accepted-spec.yaml";
const HEADER: &str = "# kvmnet accepted spec: ";

#[derive(Debug, thiserror::Error)]
pub enum AcceptedError {
    #[error("accepted spec {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("accepted spec {path} is damaged ({why}); move it aside to start from the --spec file")]
    Corrupt { path: String, why: String },
}

/// Where an accepted spec came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The `--spec` file, at start or on reload.
    File,
    /// `POST /v1/apply` (`kvmnet apply` and `destroy` through the daemon).
    Api,
    /// The spec before an unconfirmed change, when the change was reverted.
    Revert,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Counts accepted specs in this state directory: a pending confirmation belongs to one.
    pub seq: u64,
    pub time_unix: u64,
    pub origin: Origin,
    /// The file the spec was read from, or the name an API client gave it.
    pub source: String,
    /// The `--spec` file of the daemon that accepted it, and the hash of that file's content
    /// when the daemon last read it.
    pub spec_file: String,
    pub spec_file_hash: String,
    /// For a revert: the `seq` of the change it reverts.
    #[serde(default)]
    pub reverts: Option<u64>,
}

/// An accepted spec: its record and its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub record: Record,
    pub text: Vec<u8>,
}

impl Accepted {
    /// The spec accepted after this one: next `seq`, now, the `--spec` file's hash kept.
    pub fn next(&self, origin: Origin, source: &str, text: Vec<u8>) -> Accepted {
        Accepted {
            record: Record {
                seq: self.record.seq + 1,
                time_unix: crate::audit::now_unix(),
                origin,
                source: source.to_string(),
                reverts: None,
                ..self.record.clone()
            },
            text,
        }
    }
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The accepted spec of the state directory `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<Accepted>, AcceptedError> {
    let p = path(dir);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AcceptedError::Io {
                path: p.display().to_string(),
                source,
            });
        }
    };
    decode(&bytes)
        .map(Some)
        .map_err(|why| AcceptedError::Corrupt {
            path: p.display().to_string(),
            why,
        })
}

/// Replaces the accepted spec (atomically: a crash leaves the old one or this one, whole).
pub fn save(dir: &Path, a: &Accepted) -> Result<(), AcceptedError> {
    commit(stage(dir, a)?, dir)
}

/// The slow half of [`save`]: `a` written and synced beside the accepted spec, to be put in
/// place by [`commit`] (or dropped, and removed).
pub fn stage(dir: &Path, a: &Accepted) -> Result<crate::statedir::Staged, AcceptedError> {
    let p = path(dir);
    crate::statedir::stage(&p, &encode(a)).map_err(|source| AcceptedError::Io {
        path: p.display().to_string(),
        source,
    })
}

pub fn commit(staged: crate::statedir::Staged, dir: &Path) -> Result<(), AcceptedError> {
    put_in_place(staged, dir)?
        .sync()
        .map_err(|source| io(dir, source))
}

/// [`commit`] up to the rename: the spec is the accepted one for every process from now on,
/// and for the machine once the returned value is synced.
pub fn put_in_place(
    staged: crate::statedir::Staged,
    dir: &Path,
) -> Result<crate::statedir::InPlace, AcceptedError> {
    staged.put_in_place().map_err(|source| io(dir, source))
}

fn io(dir: &Path, source: std::io::Error) -> AcceptedError {
    AcceptedError::Io {
        path: path(dir).display().to_string(),
        source,
    }
}

/// The text, a line end, the record line: the text comes back byte for byte (the record is
/// JSON on one line, newlines in names escaped, so the last line end is the separator).
fn encode(a: &Accepted) -> Vec<u8> {
    let record = serde_json::to_string(&a.record).expect("a record serializes");
    let mut out = Vec::with_capacity(a.text.len() + 1 + HEADER.len() + record.len() + 1);
    out.extend_from_slice(&a.text);
    out.push(b'\n');
    out.extend_from_slice(HEADER.as_bytes());
    out.extend_from_slice(record.as_bytes());
    out.push(b'\n');
    out
}

fn decode(bytes: &[u8]) -> Result<Accepted, String> {
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or("no record line at the end")?;
    let nl = body
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or("no record line at the end")?;
    let line = body[nl + 1..]
        .strip_prefix(HEADER.as_bytes())
        .ok_or("the last line is not its record")?;
    let record = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(Accepted {
        record,
        text: body[..nl].to_vec(),
    })
}

/// Whether the `--spec` file (`spec_file`, whose content hashes to `file_hash`) replaces
/// what `stored` holds: when nothing is stored, when it was accepted by a daemon of another
/// `--spec` file, or when the file's content changed since that daemon last read it.
/// Otherwise the stored spec stays: it is the newest the daemon accepted, whatever its
/// origin.
pub fn file_wins(stored: Option<&Record>, spec_file: &str, file_hash: &str) -> bool {
    stored.is_none_or(|r| r.spec_file != spec_file || r.spec_file_hash != file_hash)
}

/// What a daemon starting up does with a change that awaits confirmation.
#[derive(Debug, PartialEq, Eq)]
pub enum PendingAtStart {
    /// The change is what the daemon enforces: it reverts at its deadline unless confirmed.
    Keep,
    /// A revert of it was accepted and may not have finished: finish it now.
    FinishRevert,
    /// A newer spec was accepted since (or it was not made through a daemon): reverting it
    /// now would undo that spec. It is dropped.
    Drop,
}

/// The rule for a pending change of accepted spec `pending_seq` (`None`: applied without a
/// daemon) when the daemon starts with `current`.
pub fn pending_at_start(pending_seq: Option<u64>, current: &Record) -> PendingAtStart {
    match pending_seq {
        Some(s) if s == current.seq => PendingAtStart::Keep,
        Some(s) if current.reverts == Some(s) => PendingAtStart::FinishRevert,
        _ => PendingAtStart::Drop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(file_hash: &str) -> Accepted {
        Accepted {
            record: Record {
                seq: 1,
                time_unix: 100,
                origin: Origin::File,
                source: "/etc/kvmnet/kvmnet.yaml".into(),
                spec_file: "/etc/kvmnet/kvmnet.yaml".into(),
                spec_file_hash: file_hash.into(),
                reverts: None,
            },
            text: b"version: 1\n".to_vec(),
        }
    }

    #[test]
    fn a_record_round_trips_with_any_text_and_name() {
        let mut a = first("aa").next(
            Origin::Api,
            "we\nird #name",
            b"\nversion: 1\n# x\n".to_vec(),
        );
        a.record.reverts = Some(7);
        assert_eq!(decode(&encode(&a)).unwrap(), a);
        assert!(
            String::from_utf8(encode(&a))
                .unwrap()
                .starts_with("\nversion: 1\n# x\n\n")
        );
        let empty = first("aa").next(Origin::Api, "(destroy)", Vec::new());
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
        assert!(decode(b"version: 1\n").is_err());
        assert!(decode(b"\n# kvmnet accepted spec: {\n").is_err());
        let dir = std::env::temp_dir().join(format!("kvmnet-accepted-{}", std::process::id()));
        crate::statedir::create_private_dir(&dir).unwrap();
        assert_eq!(load(&dir).unwrap(), None);
        save(&dir, &a).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(a));
        std::fs::write(path(&dir), "garbage").unwrap();
        assert!(matches!(load(&dir), Err(AcceptedError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_wins_only_when_it_changed_or_is_another_file() {
        let a = first("aa");
        let file = "/etc/kvmnet/kvmnet.yaml";
        assert!(file_wins(None, file, "aa"));
        assert!(!file_wins(Some(&a.record), file, "aa"));
        assert!(file_wins(Some(&a.record), file, "bb"));
        assert!(file_wins(Some(&a.record), "/other.yaml", "aa"));
        // An apply through the API keeps what the daemon knows of the file.
        let b = a.next(Origin::Api, "web.yaml", b"version: 1\nvms: {}\n".to_vec());
        assert_eq!((b.record.seq, b.record.spec_file_hash.as_str()), (2, "aa"));
        assert!(!file_wins(Some(&b.record), file, "aa"));
        assert!(file_wins(Some(&b.record), file, "cc"));
    }

    #[test]
    fn a_pending_change_is_reverted_only_onto_its_own_spec() {
        let a = first("aa");
        let b = a.next(Origin::Api, "web.yaml", Vec::new());
        assert_eq!(pending_at_start(Some(2), &b.record), PendingAtStart::Keep);
        assert_eq!(pending_at_start(Some(1), &b.record), PendingAtStart::Drop);
        assert_eq!(pending_at_start(None, &b.record), PendingAtStart::Drop);
        let mut r = b.next(Origin::Revert, "(revert)", Vec::new());
        r.record.reverts = Some(2);
        assert_eq!(
            pending_at_start(Some(2), &r.record),
            PendingAtStart::FinishRevert
        );
        let c = r.next(Origin::Api, "x", Vec::new());
        assert_eq!(pending_at_start(Some(2), &c.record), PendingAtStart::Drop);
    }
}
