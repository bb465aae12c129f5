//! Real DHCP clients' hook scripts: written executable, and what they report read back.
//! Apart from `mod.rs` because they are how a test hears from dhclient, dhcpcd and udhcpc,
//! not part of the server's topology.

/// An executable `sh` script at `path` that runs `body`.
pub fn write_script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `KEY=value` lines of a file a client script wrote (scripts write a temporary file and
/// rename it, so a file that exists is complete).
pub fn env_file(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}
