//! Log lines on stderr. When stderr is connected to the systemd journal, each line starts
//! with its syslog priority (`<3>` error ... `<7>` debug), which the journal stores as the
//! line's priority, so `journalctl -p warning` shows repairs, refusals and errors apart from
//! routine lines. Anywhere else the lines are written as they are.
//!
//! systemd sets `JOURNAL_STREAM=DEV:INODE` for a service whose stderr (or stdout) it
//! connects to the journal; stderr is the journal only if fd 2 still is that file (the
//! variable is inherited by processes whose stderr went elsewhere), as sd_journal_stream_fd(3)
//! and systemd.exec(5) describe.

use std::io::Write;
use std::sync::OnceLock;

/// A line's syslog priority (RFC 5424 severity; `<N>` in the journal's stream protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something failed: an apply or repair rolled back, a file that could not be written.
    Error = 3,
    /// Something was refused or undone: an invalid spec, an unconfirmed change reverted.
    Warning = 4,
    /// Normal but significant: drift repaired.
    Notice = 5,
    /// Routine: started, applied, stopped.
    Info = 6,
    Debug = 7,
}

/// Writes `text` on stderr, each of its lines with the level's prefix when stderr is the
/// journal. Never fails: a log line that cannot be written is dropped.
pub fn line(level: Level, text: &str) {
    let out = format(level, text, to_journal());
    let _ = std::io::stderr().lock().write_all(out.as_bytes());
}

/// `text` as written: with a `<N>` prefix on every line for the journal (which splits the
/// stream at newlines), else unchanged; newline-terminated either way.
pub fn format(level: Level, text: &str, journal: bool) -> String {
    if !journal {
        return format!("{text}\n");
    }
    let mut out = String::with_capacity(text.len() + 4);
    for l in text.split('\n') {
        out.push_str(&format!("<{}>{l}\n", level as u8));
    }
    out
}

fn to_journal() -> bool {
    static TO_JOURNAL: OnceLock<bool> = OnceLock::new();
    *TO_JOURNAL.get_or_init(|| {
        let var = std::env::var_os("JOURNAL_STREAM");
        var.and_then(|v| parse_stream(v.to_str()?))
            .is_some_and(|(dev, ino)| fd_is(2, dev, ino))
    })
}

/// `JOURNAL_STREAM`'s value, `DEV:INODE` in decimal.
pub fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn fd_is(fd: libc::c_int, dev: u64, ino: u64) -> bool {
    // SAFETY: fstat writes into a local stat buffer; a closed fd only makes it fail.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return false;
        }
        st
    };
    st.st_dev == dev && st.st_ino == ino
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_only_for_the_journal() {
        assert_eq!(
            format(Level::Notice, "kvmnet: repair", false),
            "kvmnet: repair\n"
        );
        assert_eq!(
            format(Level::Notice, "kvmnet: repair", true),
            "<5>kvmnet: repair\n"
        );
        assert_eq!(
            format(Level::Warning, "refused:\na: bad\nb: bad", true),
            "<4>refused:\n<4>a: bad\n<4>b: bad\n"
        );
        assert_eq!(format(Level::Error, "x", true), "<3>x\n");
        assert_eq!(format(Level::Debug, "x", true), "<7>x\n");
    }

    #[test]
    fn journal_stream_is_dev_colon_inode() {
        assert_eq!(parse_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_stream("8:"), None);
        assert_eq!(parse_stream("8"), None);
        assert_eq!(parse_stream("x:1"), None);
    }

    #[test]
    fn a_stream_matches_only_its_own_file() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let m = f.metadata().unwrap();
        assert!(fd_is(f.as_raw_fd(), m.dev(), m.ino()));
        assert!(!fd_is(f.as_raw_fd(), m.dev(), m.ino() + 1));
        assert!(!fd_is(-1, m.dev(), m.ino()));
    }
}
