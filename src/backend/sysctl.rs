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

/// Turns IPv6 off on `dev`, a device kvmnet just made and has not brought up. Bridge ports
/// and IFBs carry frames, not host addresses: without this each one gets a link-local
/// address and its routes, every later link change walks all of them (at 1,000 ports, 3,000
/// routes: milliseconds per port added or removed), and the host sends its own IPv6 (DAD,
/// MLD) into the VM's port. A kernel without IPv6 has nothing to turn off.
pub fn disable_ipv6(dev: &str) -> Result<(), SysctlError> {
    // Not through `path`: interface names may hold dots, which a dotted key cannot.
    let file = PathBuf::from("/proc/sys/net/ipv6/conf")
        .join(dev)
        .join("disable_ipv6");
    match std::fs::write(&file, "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SysctlError::Write {
            key: format!("net.ipv6.conf.{dev}.disable_ipv6"),
            value: "1".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}
