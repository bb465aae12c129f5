//! sysctls through /proc/sys, read and written in the calling thread's network namespace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("set sysctl {key} = {value}: {source}")]
    Write {
        key: String,
        value: String,
        source: std::io::Error,
    },
}

pub fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// `None` when the key does not exist (or cannot be read) here.
pub fn read(key: &str) -> Option<String> {
    std::fs::read_to_string(path(key))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// Some keys exist in a network namespace but only the initial namespace may change them
/// (their file is read-only there).
pub fn writable(key: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path(key)).is_ok_and(|m| m.permissions().mode() & 0o200 != 0)
}

pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    std::fs::write(path(key), value).map_err(|source| SysctlError::Write {
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}
