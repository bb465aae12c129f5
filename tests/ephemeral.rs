//! Ephemeral VMs through the daemon's API (what `kvmnet bench` borrows its ports with): only
//! new `kvmnet-bench-*` VMs on the accepted spec the client read are taken; they are
//! enforced but never accepted; a lease that runs out removes them, an apply through the
//! daemon drops them, and a restart after the daemon was killed with them in force removes
//! them. The accepted spec stays byte for byte.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmnet::daemon::api::{self, ApiError};
use serde_json::{Value, json};

const SPEC: &str = "version: 1\nnetworks:\n  n: { mode: nat, bridge: eph-n, ipv4: 10.97.0.1/24 }\nvms:\n  a: { ports: [ { network: n, name: eph-a } ] }\n";

fn start(ns: &Namespaces, spec: &str, host: &str) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec, "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_RECONCILE_MS", "300")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = state_dir(ns, host);
    wait_until("the daemon's API", || api::daemon_listening(&dir));
    Daemon(child)
}

fn state_dir(ns: &Namespaces, host: &str) -> PathBuf {
    ns.state_dir.join(format!("netns-{host}"))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The accepted spec's text (the file without its record line).
fn accepted_text(dir: &Path) -> String {
    let file = std::fs::read_to_string(dir.join("accepted-spec.yaml")).unwrap();
    let body = file.strip_suffix('\n').unwrap();
    body[..body.rfind('\n').unwrap()].to_string()
}

/// The accepted spec with one bench VM whose port's far end is in `far`.
fn with_bench_vm(accepted: &str, far: &str) -> String {
    format!(
        "{accepted}  kvmnet-bench-t: {{ ports: [ {{ network: n, name: kvbench-t, kind: veth, netns: {far}, mac: '02:6b:76:00:00:01', ipv4: 10.97.0.250 }} ] }}\n"
    )
}

fn begin(dir: &Path, spec: &str, base_hash: &str, secs: u64) -> Result<Value, ApiError> {
    let fields = [
        ("base_hash", base_hash.to_string()),
        ("lease_secs", secs.to_string()),
    ];
    api::call_with_spec(dir, "/v1/ephemeral", &fields, spec.as_bytes()).expect("a daemon")
}

fn status(r: Result<Value, ApiError>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(ApiError::Status { status, .. }) => status,
        Err(e) => panic!("{e}"),
    }
}

fn port_exists(host: &str) -> bool {
    sh(&format!("ip -n {host} link show kvbench-t"))
        .status
        .success()
}

fn netns_exists(name: &str) -> bool {
    namespaces_with(name).iter().any(|n| n == name)
}

#[test]
fn leases_run_out_and_a_restart_leaves_no_trace() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("eph");
    let far = ns.reserve("ephf");
    let spec = SpecFile::new(SPEC);
    let daemon = start(&ns, spec.path(), &host);
    let dir = state_dir(&ns, &host);
    let accepted_before = std::fs::read(dir.join("accepted-spec.yaml")).unwrap();
    let text = accepted_text(&dir);
    let hash = kvmnet::engine::spec_hash(text.as_bytes());
    let combined = with_bench_vm(&text, &far);

    // Refused: another base, a changed VM, a VM bench does not own.
    assert_eq!(status(begin(&dir, &combined, "0000", 5)), 409);
    let changed = combined.replace("name: eph-a", "name: eph-b");
    assert_eq!(status(begin(&dir, &changed, &hash, 5)), 400);
    let foreign = combined.replace("kvmnet-bench-t", "intruder");
    assert_eq!(status(begin(&dir, &foreign, &hash, 5)), 400);
    assert!(!port_exists(&host));

    // Lent for 2 s: there, one lease at a time, refreshed once, then gone when it runs out.
    let v = begin(&dir, &combined, &hash, 2).expect("lent");
    let id = v["lease"].as_str().unwrap().to_string();
    assert!(port_exists(&host) && netns_exists(&far));
    assert_eq!(status(begin(&dir, &combined, &hash, 5)), 409);
    let refresh = json!({ "lease": id, "lease_secs": 2 });
    assert!(
        api::call(&dir, "POST", "/v1/ephemeral/refresh", &refresh)
            .unwrap()
            .is_ok()
    );
    assert_eq!(
        std::fs::read(dir.join("accepted-spec.yaml")).unwrap(),
        accepted_before
    );
    wait_until("the lease to run out", || !port_exists(&host));
    wait_until("the far end's namespace to go", || !netns_exists(&far));
    let r = api::call(&dir, "POST", "/v1/ephemeral/refresh", &refresh).unwrap();
    assert_eq!(status(r), 404);
    let released = api::call(
        &dir,
        "POST",
        "/v1/ephemeral/release",
        &json!({ "lease": id }),
    );
    assert_eq!(released.unwrap().unwrap()["released"], false);

    // Lent again, and released: gone before the answer.
    let v = begin(&dir, &combined, &hash, 60).expect("lent");
    let release = json!({ "lease": v["lease"] });
    let r = api::call(&dir, "POST", "/v1/ephemeral/release", &release).unwrap();
    assert_eq!(r.unwrap()["released"], true);
    assert!(!port_exists(&host) && !netns_exists(&far));

    // An apply through the daemon drops them: the operator's change wins.
    let v = begin(&dir, &combined, &hash, 60).expect("lent");
    assert!(port_exists(&host));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(!port_exists(&host) && !netns_exists(&far));
    let refresh = json!({ "lease": v["lease"], "lease_secs": 60 });
    let r = api::call(&dir, "POST", "/v1/ephemeral/refresh", &refresh).unwrap();
    assert_eq!(status(r), 404);

    // Lent for long, then the daemon is killed: the VM was never accepted, so the next
    // daemon removes it at its first apply.
    begin(&dir, &combined, &hash, 600).expect("lent");
    assert!(port_exists(&host));
    let mut daemon = daemon;
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();
    assert!(port_exists(&host), "killed with the VM in force");
    assert_eq!(
        std::fs::read(dir.join("accepted-spec.yaml")).unwrap(),
        accepted_before
    );
    let _daemon = start(&ns, spec.path(), &host);
    assert!(!port_exists(&host) && !netns_exists(&far));
    assert_eq!(
        std::fs::read(dir.join("accepted-spec.yaml")).unwrap(),
        accepted_before
    );
    assert!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .contains("No changes")
    );
}
