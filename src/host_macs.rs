//! This host's side of derived MACs (see [`crate::spec::macs`]): its identity, read once by
//! the CLI and the daemon, and the record of the MACs it gave out, kept in the scope's state
//! directory; and settling a spec's derived MACs against the ports the host has, where a plan
//! is made.

use std::collections::BTreeMap;
use std::path::Path;

use crate::engine::{EngineError, SpecErrors};
use crate::snapshot::Snapshot;
use crate::spec::{self, Mac, Spec, SpecError};
use crate::statedir::StateDir;

/// Where a host keeps its machine ID: systemd's file, then the D-Bus copy older systems have.
const MACHINE_ID_FILES: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// This host's identity for derived MACs in `scope`, read once by the CLI and the daemon:
/// the machine ID, as systemd's persistent MAC policy uses it. A host without a readable
/// machine ID uses its host name instead (unique only as far as host names are), and a
/// warning to show says so.
pub fn host_identity(scope: &str) -> (spec::HostIdentity, Option<String>) {
    identity_from(
        &MACHINE_ID_FILES.map(Path::new),
        Path::new("/proc/sys/kernel/hostname"),
        scope,
    )
}

/// [`host_identity`] from the first of `machine_id_files` that holds a machine ID, else from
/// the host name in `hostname_file`.
fn identity_from(
    machine_id_files: &[&Path],
    hostname_file: &Path,
    scope: &str,
) -> (spec::HostIdentity, Option<String>) {
    for f in machine_id_files {
        if let Some(id) = std::fs::read_to_string(f)
            .ok()
            .and_then(|t| spec::HostIdentity::from_machine_id(&t, scope))
        {
            return (id, None);
        }
    }
    let name = std::fs::read_to_string(hostname_file).unwrap_or_default();
    let name = name.trim();
    let files: Vec<String> = machine_id_files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    (
        spec::HostIdentity::from_host_name(name, scope),
        Some(format!(
            "no machine ID in {}: derived MACs come from the host name '{name}', so hosts with one name on one network would share them (give each host a machine ID: systemd-machine-id-setup)",
            files.join(" or ")
        )),
    )
}

/// The derived MACs given out in a scope, by port, as of the last apply: a port that went
/// away (a reboot takes every tap) comes back with the MAC its VM was configured with, even
/// where a collision or an earlier version's derivation made it other than the first
/// candidate.
const MACS_FILE: &str = "macs.json";

/// What identifies one version of a file: a file replaced by rename has a new inode.
type Stamp = (u64, std::time::SystemTime, u64);

/// The record as this process last read or wrote it, with the file's stamp then: a daemon
/// planning every few seconds reads it again only when another process changed it.
struct MacsSeen {
    path: std::path::PathBuf,
    stamp: Stamp,
    macs: BTreeMap<String, Mac>,
}

static MACS_SEEN: std::sync::Mutex<Option<MacsSeen>> = std::sync::Mutex::new(None);

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

/// The record of `sd`, as a map of its own.
pub(crate) fn recorded(sd: &StateDir) -> BTreeMap<String, Mac> {
    with_record(sd, BTreeMap::clone)
}

/// Runs `f` on the record of `sd` (empty when there is none, or it cannot be read: only
/// memory is lost then, never a port).
fn with_record<T>(sd: &StateDir, f: impl FnOnce(&BTreeMap<String, Mac>) -> T) -> T {
    let path = sd.dir.join(MACS_FILE);
    let mut seen = MACS_SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let Some(now) = stamp(&path) else {
        return f(&BTreeMap::new());
    };
    if !seen
        .as_ref()
        .is_some_and(|s| s.path == path && s.stamp == now)
    {
        let macs = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        *seen = Some(MacsSeen {
            path,
            stamp: now,
            macs,
        });
    }
    f(&seen.as_ref().expect("set above").macs)
}

/// Records `macs` as the derived MACs of `sd`'s scope (written atomically, readable by root
/// only), unless that is what the record holds.
pub(crate) fn remember(sd: &StateDir, macs: &BTreeMap<String, Mac>) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if with_record(sd, |have| have == macs) {
        return Ok(());
    }
    let path = sd.dir.join(MACS_FILE);
    let tmp = sd.dir.join(format!("{MACS_FILE}.tmp"));
    std::fs::create_dir_all(&sd.dir).map_err(EngineError::state_io)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(EngineError::state_io)?;
    f.write_all(&serde_json::to_vec(macs).expect("MACs serialize"))
        .and_then(|()| f.sync_all())
        .map_err(EngineError::state_io)?;
    std::fs::rename(&tmp, &path).map_err(EngineError::state_io)?;
    if let Some(now) = stamp(&path) {
        *MACS_SEEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(MacsSeen {
            path,
            stamp: now,
            macs: macs.clone(),
        });
    }
    Ok(())
}

/// The derived MACs of a spec, by port.
pub(crate) fn derived(spec: &Spec) -> BTreeMap<String, Mac> {
    spec.vms
        .values()
        .flat_map(|v| &v.ports)
        .filter(|p| p.mac_derived)
        .map(|p| (p.name.clone(), p.mac))
        .collect()
}

/// The spec with its derived MACs settled against the ports `snap` shows (see
/// [`spec::macs`]): a port kvmnet made keeps the MAC it carries when that is one of its own;
/// one that is not there gets the MAC it was given before, if `remembered` (called only then)
/// has it. `None` when nothing changes.
pub fn settle(
    spec: &Spec,
    snap: &Snapshot,
    remembered: impl FnOnce() -> BTreeMap<String, Mac>,
) -> Result<Option<Spec>, EngineError> {
    let derived: Vec<&str> = spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .filter(|p| p.mac_derived)
        .map(|p| p.name.as_str())
        .collect();
    if derived.is_empty() {
        return Ok(None);
    }
    let ours: foldhash::HashMap<&str, Mac> = snap
        .links
        .iter()
        .filter(|l| {
            l.alias
                .as_deref()
                .is_some_and(crate::state::is_kvmnet_alias)
        })
        .filter_map(|l| Some((l.name.as_str(), l.mac?)))
        .collect();
    let remembered = if derived.iter().all(|p| ours.contains_key(p)) {
        BTreeMap::new()
    } else {
        remembered()
    };
    spec.settle_macs(&|port| ours.get(port).copied(), &|port| {
        remembered.get(port).copied()
    })
    .map_err(|u| unplaced(spec, u))
}

/// The spec with its derived MACs as recorded at the last apply, before the host is
/// observed: where they are not the ports' first candidates (an upgraded host, a collision),
/// the observation then agrees and need not be repeated. `None` when nothing changes.
pub(crate) fn presettle(spec: &Spec, sd: &StateDir) -> Result<Option<Spec>, EngineError> {
    if !spec
        .vms
        .values()
        .flat_map(|v| &v.ports)
        .any(|p| p.mac_derived)
    {
        return Ok(None);
    }
    with_record(sd, |m| {
        if m.is_empty() {
            return Ok(None);
        }
        spec.settle_macs(&|_| None, &|port| m.get(port).copied())
    })
    .map_err(|u| unplaced(spec, u))
}

/// `spec` with its derived MACs as recorded at `scope`'s last apply: what a daemon serves
/// DHCP for until its next plan settles them against the host.
pub fn as_recorded(spec: Spec, scope: &str) -> Result<Spec, EngineError> {
    Ok(presettle(&spec, &StateDir::for_scope(scope))?.unwrap_or(spec))
}

fn unplaced(spec: &Spec, u: spec::macs::Unplaced) -> EngineError {
    let path = format!(
        "{}[{}]",
        spec::path_join(&spec::path_join("vms", &u.vm), "ports"),
        u.index
    );
    // The spec is valid: it is the ports the host has that leave no MAC free.
    EngineError::Conflict(SpecErrors {
        source: "(host)".to_string(),
        errors: vec![SpecError {
            loc: spec.loc(&path),
            message: format!(
                "none of this port's {} derived MACs is free on this host; set mac",
                spec::macs::CANDIDATES
            ),
            path,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine ID first, the D-Bus copy next; the host name (with a warning) only when
    /// neither holds a machine ID.
    #[test]
    fn identity_falls_back_in_order() {
        let dir = std::env::temp_dir().join(format!("kvmnet-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (etc, dbus, name) = (dir.join("etc"), dir.join("dbus"), dir.join("name"));
        std::fs::write(&name, "hv7\n").unwrap();
        let files = [etc.as_path(), dbus.as_path()];
        let id = |s| spec::HostIdentity::from_machine_id(s, "host").unwrap();

        let (got, warning) = identity_from(&files, &name, "host");
        assert_eq!(got, spec::HostIdentity::from_host_name("hv7", "host"));
        assert!(warning.unwrap().contains("'hv7'"));

        std::fs::write(&etc, "uninitialized\n").unwrap();
        std::fs::write(&dbus, "0123456789abcdef0123456789abcdef\n").unwrap();
        let (got, warning) = identity_from(&files, &name, "host");
        assert_eq!(got, id("0123456789abcdef0123456789abcdef"));
        assert!(warning.is_none());

        std::fs::write(&etc, "fedcba9876543210fedcba9876543210\n").unwrap();
        assert_eq!(
            identity_from(&files, &name, "host").0,
            id("fedcba9876543210fedcba9876543210")
        );
        // The scope is part of the identity.
        let ns1 = identity_from(&files, &name, "ns1").0;
        assert_eq!(ns1.scope(), "ns1");
        assert_ne!(ns1, id("fedcba9876543210fedcba9876543210"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
