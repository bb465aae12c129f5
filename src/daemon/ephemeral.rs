//! Ephemeral VMs: VMs a client (`kvmnet bench`) adds to what the daemon enforces for a
//! while, without making them part of the accepted spec.
//!
//! `POST /v1/ephemeral` takes the accepted spec with only new VMs added (named
//! `kvmnet-bench-*`, every port with a written MAC, so nothing is recorded for them), the
//! hash of the accepted spec it was built on, and a lease in seconds. The daemon enforces
//! that combined spec in memory only: the accepted spec on disk stays as it was, so a kill
//! of the daemon or of the client can never make the VMs durable. They go away when the
//! client releases them (`/v1/ephemeral/release`), when the lease runs out without a
//! `/v1/ephemeral/refresh` (the reconcile loop checks it), when a new spec is accepted (an
//! apply, a reload or a revert drops them: the operator's change wins over a measurement),
//! and when the daemon restarts (its first apply finds them as drift).

use std::time::{Duration, Instant};

use serde_json::json;
use yaml_rust2::{Yaml, YamlLoader};

use super::{Active, Shared, api, error_response, execute_active, log, refuse_while_pending};
use crate::engine::{self, ErrorKind};
use crate::log::Level;
use crate::spec::Spec;

/// The names ephemeral VMs must have: a client cannot shadow or add an operator's VM.
pub const VM_PREFIX: &str = "kvmnet-bench-";
/// The longest lease a client may ask for at once.
pub const MAX_LEASE_SECS: u64 = 600;

/// Ephemeral VMs in force.
pub struct Lease {
    pub id: String,
    pub deadline: Instant,
    /// The accepted spec's parsed form, enforced again when the lease ends.
    pub base: Spec,
    pub vms: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EphemeralError {
    #[error("spec is not YAML: {0}")]
    Yaml(String),
    #[error("{0} differs from the accepted spec: ephemeral VMs may only be added to it")]
    Changed(String),
    #[error("new VM '{0}' is not named {VM_PREFIX}*: only such VMs may be ephemeral")]
    Name(String),
    #[error(
        "ephemeral VM '{0}' has a port without a written mac: a derived MAC would be recorded and outlive the lease"
    )]
    NoMac(String),
    #[error("the spec adds no VM to the accepted spec")]
    Empty,
}

/// The top-level mapping of a spec's text (an empty text is an empty mapping).
fn root(text: &str) -> Result<yaml_rust2::yaml::Hash, EphemeralError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| EphemeralError::Yaml(e.to_string()))?;
    match docs.into_iter().next() {
        None | Some(Yaml::Null) => Ok(Default::default()),
        Some(Yaml::Hash(h)) => Ok(h),
        Some(_) => Err(EphemeralError::Yaml("the spec is not a mapping".into())),
    }
}

/// The VMs `combined` adds to `accepted`, if that is all it changes: every other key and
/// every accepted VM the same, the new VMs named [`VM_PREFIX`]`*` with written MACs.
pub fn added_vms(accepted: &str, combined: &str) -> Result<Vec<String>, EphemeralError> {
    let (mut a, mut c) = (root(accepted)?, root(combined)?);
    let key = Yaml::String("vms".into());
    let vms = |h: &mut yaml_rust2::yaml::Hash| match h.remove(&key) {
        None | Some(Yaml::Null) => Ok(Default::default()),
        Some(Yaml::Hash(v)) => Ok(v),
        Some(_) => Err(EphemeralError::Yaml("vms is not a mapping".into())),
    };
    let (va, vc) = (vms(&mut a)?, vms(&mut c)?);
    if a != c {
        let keys: std::collections::BTreeSet<String> = a
            .iter()
            .chain(c.iter())
            .filter(|(k, v)| a.get(k) != Some(v) || c.get(k) != Some(v))
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect();
        let keys: Vec<String> = keys.into_iter().collect();
        return Err(EphemeralError::Changed(keys.join(", ")));
    }
    for (name, vm) in &va {
        if vc.get(name) != Some(vm) {
            let n = name.as_str().unwrap_or("?");
            return Err(EphemeralError::Changed(format!("vms.{n}")));
        }
    }
    let mut added = Vec::new();
    for (name, vm) in vc.iter().filter(|(n, _)| !va.contains_key(*n)) {
        let n = name.as_str().unwrap_or("?").to_string();
        if !n.starts_with(VM_PREFIX) {
            return Err(EphemeralError::Name(n));
        }
        let ports = vm["ports"].as_vec().map_or(&[][..], |v| v.as_slice());
        if ports.is_empty() || ports.iter().any(|p| p["mac"].as_str().is_none()) {
            return Err(EphemeralError::NoMac(n));
        }
        added.push(n);
    }
    match added.is_empty() {
        true => Err(EphemeralError::Empty),
        false => Ok(added),
    }
}

fn lease_secs(body: &serde_json::Value) -> Result<u64, api::Response> {
    match api::number(body, "lease_secs") {
        Some(s) if (1..=MAX_LEASE_SECS).contains(&s) => Ok(s),
        _ => Err(api::Response::failed(
            ErrorKind::Usage,
            format!("body needs \"lease_secs\", 1 to {MAX_LEASE_SECS}"),
        )),
    }
}

fn field<'a>(body: &'a serde_json::Value, name: &str) -> Result<&'a str, api::Response> {
    body[name]
        .as_str()
        .ok_or_else(|| api::Response::failed(ErrorKind::Usage, format!("body needs \"{name}\"")))
}

/// `POST /v1/ephemeral {"spec", "base_hash", "lease_secs"}`: checks, then enforces the
/// combined spec until the lease ends. 409 when the accepted spec is not the one the client
/// built on, when another lease is in force, or while a change awaits confirmation.
pub(super) fn begin(sh: &Shared, req: &api::Request) -> api::Response {
    if !req.framed {
        return api::Response::error(411, "POST /v1/ephemeral needs a body with a length");
    }
    let (text, base_hash, secs) = match (
        field(&req.body, "spec"),
        field(&req.body, "base_hash"),
        lease_secs(&req.body),
    ) {
        (Ok(t), Ok(h), Ok(s)) => (t, h, s),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let mut active = sh.active.lock().expect("lock");
    if let Err(e) = refuse_while_pending(sh) {
        return error_response(&e);
    }
    if let Some(l) = &active.lease {
        return api::Response::failed(
            ErrorKind::Busy,
            format!(
                "ephemeral VMs of another client are in force (lease {})",
                l.id
            ),
        );
    }
    let hash = engine::spec_hash(&active.accepted.text);
    if hash != base_hash {
        return api::Response::failed(
            ErrorKind::Busy,
            format!(
                "the accepted spec changed since the client read it (its hash is {hash}, not {base_hash}): build on it again"
            ),
        );
    }
    let vms = match added_vms(&String::from_utf8_lossy(&active.accepted.text), text) {
        Ok(v) => v,
        Err(e) => return api::Response::failed(ErrorKind::Usage, e.to_string()),
    };
    let spec = match engine::parse("(ephemeral)", text.as_bytes(), &sh.identity) {
        Ok(s) => sh.settled(s),
        Err(e) => return error_response(&e),
    };
    let id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let base = std::mem::replace(&mut active.spec, spec);
    active.lease = Some(Lease {
        id: id.clone(),
        deadline: Instant::now() + Duration::from_secs(secs),
        base,
        vms: vms.clone(),
    });
    if let Err(e) = execute_active(sh, &mut active, "ephemeral") {
        // Rolled back; the accepted spec is enforced again at once.
        let _ = end(sh, &mut active, "ephemeral-release");
        return error_response(&e);
    }
    log(
        Level::Info,
        &format!(
            "ephemeral VMs {} in force for {secs} s (lease {id})",
            vms.join(", ")
        ),
    );
    api::Response::ok(json!({ "lease": id, "lease_secs": secs, "vms": vms }))
}

fn lease_of<'a>(active: &'a mut Active, id: &str) -> Option<&'a mut Lease> {
    active.lease.as_mut().filter(|l| l.id == id)
}

/// `POST /v1/ephemeral/refresh {"lease", "lease_secs"}`: the lease ends `lease_secs` from
/// now. 404 when it is no longer in force.
pub(super) fn refresh(sh: &Shared, req: &api::Request) -> api::Response {
    let (id, secs) = match (field(&req.body, "lease"), lease_secs(&req.body)) {
        (Ok(i), Ok(s)) => (i, s),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let mut active = sh.active.lock().expect("lock");
    match lease_of(&mut active, id) {
        Some(l) => {
            l.deadline = Instant::now() + Duration::from_secs(secs);
            api::Response::ok(json!({ "lease": id, "lease_secs": secs }))
        }
        None => api::Response::error(
            404,
            format!(
                "lease {id} is not in force: it ran out, was released, or a new accepted spec (an apply, a reload, a revert) dropped its VMs"
            ),
        ),
    }
}

/// `POST /v1/ephemeral/release {"lease"}`: the accepted spec is enforced again (the VMs
/// removed) before the answer. Releasing a lease no longer in force is no error.
pub(super) fn release(sh: &Shared, req: &api::Request) -> api::Response {
    let id = match field(&req.body, "lease") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut active = sh.active.lock().expect("lock");
    if lease_of(&mut active, id).is_none() {
        return api::Response::ok(json!({ "released": false }));
    }
    match end(sh, &mut active, "ephemeral-release") {
        Ok(()) => api::Response::ok(json!({ "released": true })),
        Err(e) => error_response(&e),
    }
}

/// Ends the lease: the accepted spec is enforced again and applied. If the apply fails, the
/// next reconcile tries again (the lease is gone either way).
fn end(sh: &Shared, active: &mut Active, action: &str) -> Result<(), engine::EngineError> {
    if let Some(l) = active.lease.take() {
        let combined = std::mem::replace(&mut active.spec, l.base);
        sh.retire(combined);
    }
    execute_active(sh, active, action).map(|_| ())
}

/// The lease dropped without an apply of its own (a new accepted spec replaces it, or a
/// reload applies the accepted spec next).
pub(super) fn drop_lease(sh: &Shared, active: &mut Active, why: &str) {
    if let Some(l) = active.lease.take() {
        log(
            Level::Notice,
            &format!("ephemeral VMs {} dropped: {why}", l.vms.join(", ")),
        );
        let combined = std::mem::replace(&mut active.spec, l.base);
        sh.retire(combined);
    }
}

/// From the reconcile loop: a lease that ran out ends.
pub(super) fn expire_due(sh: &Shared) {
    let mut active = sh.active.lock().expect("lock");
    let Some(l) = active
        .lease
        .as_ref()
        .filter(|l| l.deadline <= Instant::now())
    else {
        return;
    };
    log(
        Level::Notice,
        &format!(
            "lease {} ran out: ephemeral VMs {} removed",
            l.id,
            l.vms.join(", ")
        ),
    );
    if let Err(e) = end(sh, &mut active, "ephemeral-expire") {
        log(
            Level::Error,
            &format!("removing ephemeral VMs failed (tried again shortly): {e}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "version: 1\nnetworks:\n  n: { mode: nat, ipv4: 10.8.0.1/24 }\nvms:\n  web: { ports: [ { network: n } ] }\n";
    const BENCH: &str =
        "  kvmnet-bench-pa: { ports: [ { network: n, kind: veth, mac: '02:00:00:00:00:01' } ] }\n";

    #[test]
    fn only_new_bench_vms_with_macs_may_be_added() {
        assert_eq!(
            added_vms(A, &format!("{A}{BENCH}")).unwrap(),
            ["kvmnet-bench-pa"]
        );
        assert!(matches!(added_vms(A, A), Err(EphemeralError::Empty)));
        let other = BENCH.replace("kvmnet-bench-pa", "intruder");
        assert!(matches!(
            added_vms(A, &format!("{A}{other}")),
            Err(EphemeralError::Name(_))
        ));
        let no_mac = BENCH.replace(", mac: '02:00:00:00:00:01'", "");
        assert!(matches!(
            added_vms(A, &format!("{A}{no_mac}")),
            Err(EphemeralError::NoMac(_))
        ));
        // A changed VM or network is refused, whatever is added.
        let web = A.replace("network: n }", "network: n, ipv4: 10.8.0.9 }");
        let e = added_vms(A, &format!("{web}{BENCH}")).unwrap_err();
        assert_eq!(e.to_string().split(' ').next(), Some("vms.web"));
        let net = A.replace("10.8.0.1/24", "10.8.1.1/24");
        let e = added_vms(A, &format!("{net}{BENCH}")).unwrap_err();
        assert!(e.to_string().starts_with("networks differs"), "{e}");
        // An accepted spec without VMs takes them too.
        let bare = "version: 1\nnetworks:\n  n: { mode: nat, ipv4: 10.8.0.1/24 }\n";
        assert!(added_vms(bare, &format!("{bare}vms:\n{BENCH}")).is_ok());
    }
}
