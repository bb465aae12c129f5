//! What a daemon accepted survives it: a kill -9 and a restart with the same command line, or
//! a reload, keep what `kvmnet apply` changed through it (the `--spec` file wins only when
//! its content changed since the daemon last read it); a change awaiting confirmation is
//! reverted only onto its own spec; a revert that fails is tried again; the state directory
//! is the daemon's alone; the audit log names the caller.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `kvmnet daemon` and waits until its API answers (a socket file left by a daemon
/// that was killed does not count).
fn start(ns: &Namespaces, spec: &str, host: &str, env: &[(&str, &str)]) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(daemon_log(ns))
        .unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmnet"));
    c.args(["daemon", "--spec", spec, "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_RECONCILE_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for (k, v) in env {
        c.env(k, v);
    }
    let mut d = Daemon(c.spawn().unwrap());
    let sock = scope_dir(ns, host).join("api.sock");
    wait_until("daemon API", || {
        assert!(
            d.0.try_wait().unwrap().is_none(),
            "the daemon exited:\n{}",
            std::fs::read_to_string(daemon_log(ns)).unwrap_or_default()
        );
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    d
}

/// The daemons' output, beside the scopes' directories (removed with them).
fn daemon_log(ns: &Namespaces) -> PathBuf {
    std::fs::create_dir_all(&ns.state_dir).unwrap();
    ns.state_dir.join("daemon.log")
}

/// SIGKILL, as a crash or the OOM killer does it.
fn kill9(d: Daemon) {
    let mut d = std::mem::ManuallyDrop::new(d);
    d.0.kill().unwrap();
    d.0.wait().unwrap();
}

fn scope_dir(ns: &Namespaces, host: &str) -> PathBuf {
    ns.state_dir.join(format!("netns-{host}"))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// A link's index: the same index means the same device (not deleted and made again).
fn ifindex(host: &str, name: &str) -> Option<u64> {
    let o = sh(&format!("ip -n {host} -j link show {name} 2>/dev/null"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v[0]["ifindex"].as_u64()
}

fn audit(ns: &Namespaces, host: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(scope_dir(ns, host).join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn count(ns: &Namespaces, host: &str, action: &str) -> usize {
    audit(ns, host)
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

/// A nat network with a veth port per VM, its far end in the VM's namespace `GUEST-VM`.
fn spec_text(guest: &str, vms: &[char]) -> String {
    let mut s = String::from(
        "version: 1\nnetworks:\n  nat:\n    mode: nat\n    bridge: s-nat\n    ipv4: 10.97.0.1/24\nvms:\n",
    );
    for (i, vm) in vms.iter().enumerate() {
        s.push_str(&format!(
            "  {vm}:\n    ports: [ {{ network: nat, name: s-{vm}, kind: veth, netns: {guest}{vm}, ipv4: 10.97.0.{} }} ]\n",
            10 + i
        ));
    }
    s
}

fn sighup(d: &Daemon) {
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGHUP) };
}

/// Sends a reload (SIGHUP or the API) and waits until the daemon has applied after it.
fn reload_and_wait(ns: &Namespaces, host: &str, reload: impl FnOnce()) {
    let before = count(ns, host, "apply");
    reload();
    wait_until("the reload's apply", || count(ns, host, "apply") > before);
}

#[test]
fn a_crash_restart_or_a_reload_keeps_what_was_applied_through_the_daemon() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("acc");
    let guest = ns.reserve("g");
    for vm in ['a', 'b', 'c'] {
        ns.names.push(format!("{guest}{vm}"));
    }
    let spec = SpecFile::new(&spec_text(&guest, &['a']));
    let d = start(&ns, spec.path(), &host, &[]);
    let plus_b = SpecFile::new(&spec_text(&guest, &['a', 'b']));
    ns.kvmnet_ok(&["apply", plus_b.path(), "--netns", &host]);
    assert!(pings(&format!("{guest}b"), "10.97.0.1"));
    let b = ifindex(&host, "s-b").expect("s-b made");

    // kill -9, then the same command line: the port stays, and its VM keeps its network.
    kill9(d);
    let d = start(&ns, spec.path(), &host, &[]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        ifindex(&host, "s-b"),
        Some(b),
        "the restart undid the apply"
    );
    assert!(pings(&format!("{guest}b"), "10.97.0.1"));

    // A second daemon for the scope (with another file, which would win) refuses to start,
    // and changes nothing.
    let other = SpecFile::new(&spec_text(&guest, &['a']));
    let o = ns.kvmnet(&["daemon", "--spec", other.path(), "--netns", &host]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already runs"));
    assert_eq!(ifindex(&host, "s-b"), Some(b));

    // A reload with the file as the daemon last read it keeps the accepted spec too.
    reload_and_wait(&ns, &host, || sighup(&d));
    let sock = scope_dir(&ns, &host).join("api.sock");
    reload_and_wait(&ns, &host, || {
        ok(&format!(
            "curl -sf --unix-socket {} -X POST -d '' http://kvmnet/v1/reload",
            sock.display()
        ));
    });
    assert_eq!(ifindex(&host, "s-b"), Some(b), "a reload undid the apply");

    // The operator edits the file: it wins on reload, as before.
    std::fs::write(&spec.0, spec_text(&guest, &['a', 'c'])).unwrap();
    sighup(&d);
    wait_until("the edited file applied", || {
        ifindex(&host, "s-b").is_none() && ifindex(&host, "s-c").is_some()
    });
    let c = ifindex(&host, "s-c");
    kill9(d);
    let d = start(&ns, spec.path(), &host, &[]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ifindex(&host, "s-c"), c);
    assert_eq!(ifindex(&host, "s-b"), None);

    // Stopped cleanly, restarted with the file untouched: what was applied since stays.
    ns.kvmnet_ok(&["apply", plus_b.path(), "--netns", &host]);
    let b = ifindex(&host, "s-b");
    drop(d);
    let d = start(&ns, spec.path(), &host, &[]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ifindex(&host, "s-b"), b);
    // Edited while the daemon was down: the file wins at start.
    drop(d);
    std::fs::write(&spec.0, spec_text(&guest, &['a'])).unwrap();
    let d = start(&ns, spec.path(), &host, &[]);
    assert_eq!(ifindex(&host, "s-b"), None);
    assert!(ifindex(&host, "s-a").is_some());
    // The accepted spec is a spec, with its record as the last line.
    let stored = std::fs::read_to_string(scope_dir(&ns, &host).join("accepted-spec.yaml"))
        .expect("the accepted spec is in the state directory");
    assert!(stored.starts_with(&spec_text(&guest, &['a'])), "{stored}");
    assert!(stored.contains("\"origin\":\"file\""), "{stored}");
    drop(d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn a_pending_change_found_at_start_is_reverted_only_onto_its_own_spec() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("pnd");
    let guest = ns.reserve("g");
    for vm in ['a', 'b', 'c'] {
        ns.names.push(format!("{guest}{vm}"));
    }
    let spec = SpecFile::new(&spec_text(&guest, &['a']));
    let plus_b = SpecFile::new(&spec_text(&guest, &['a', 'b']));
    let d = start(&ns, spec.path(), &host, &[]);
    let confirm = ["--confirm-within", "3s"];
    let apply_b = [&["apply", plus_b.path(), "--netns", &host][..], &confirm].concat();
    ns.kvmnet_ok(&apply_b);
    assert!(ifindex(&host, "s-b").is_some());
    // While it awaits confirmation, no other spec is accepted (its revert would undo it).
    let o = ns.kvmnet(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("awaits confirmation"));

    // The daemon dies; its successor reverts the change at its deadline.
    kill9(d);
    let d = start(&ns, spec.path(), &host, &[]);
    assert!(ifindex(&host, "s-b").is_some(), "reverted before its time");
    // (The audit line follows the kernel's change, and the pending change is removed after
    // both: a crash before that makes the next daemon finish the revert. Wait for all.)
    let pending = scope_dir(&ns, &host).join("pending-confirm.json");
    wait_until("the revert", || {
        ifindex(&host, "s-b").is_none() && count(&ns, &host, "revert") == 1 && !pending.exists()
    });
    // The revert was accepted too: another crash does not bring the change back.
    kill9(d);
    let d = start(&ns, spec.path(), &host, &[]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ifindex(&host, "s-b"), None);

    // Unconfirmed again, and the operator edits the file while the daemon is down: the file
    // is newer, so the change is dropped, not reverted onto the file's spec.
    ns.kvmnet_ok(&apply_b);
    kill9(d);
    std::fs::write(&spec.0, spec_text(&guest, &['a', 'c'])).unwrap();
    let d = start(&ns, spec.path(), &host, &[]);
    let c = ifindex(&host, "s-c").expect("the file's spec applied");
    assert_eq!(ifindex(&host, "s-b"), None);
    assert_eq!(count(&ns, &host, "discard"), 1);
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        ifindex(&host, "s-c"),
        Some(c),
        "the dropped change was reverted"
    );
    assert_eq!(count(&ns, &host, "revert"), 1);
    assert!(pings(&format!("{guest}c"), "10.97.0.1"));
    drop(d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

const TAPS: &str = "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: r-n\n    ipv4: 10.98.0.1/24\nvms:\n  a: { ports: [ { network: n, name: r-a } ] }\n";

/// A revert that fails (a foreign interface took the name of the port it must bring back)
/// is tried again until it succeeds: the unconfirmed change does not stay for good.
fn revert_is_retried(ns: &Namespaces, host: &str) {
    let both = SpecFile::new(&format!(
        "{TAPS}  b: {{ ports: [ {{ network: n, name: r-b }} ] }}\n"
    ));
    let only_a = SpecFile::new(TAPS);
    ns.kvmnet_ok(&["apply", both.path(), "--netns", host]);
    let failed = |ns: &Namespaces| {
        audit(ns, host)
            .iter()
            .filter(|e| e["action"] == "revert" && e["result"] != "ok")
            .count()
    };
    ns.kvmnet_ok(&[
        "apply",
        only_a.path(),
        "--netns",
        host,
        "--confirm-within",
        "2s",
    ]);
    assert_eq!(ifindex(host, "r-b"), None);
    ok(&format!("ip -n {host} link add r-b type bridge"));
    wait_until("a failed revert", || failed(ns) >= 1);
    assert!(scope_dir(ns, host).join("pending-confirm.json").exists());
    ok(&format!("ip -n {host} link del r-b"));
    wait_until("the revert, tried again", || {
        sh(&format!("ip -n {host} -d link show r-b"))
            .stdout
            .windows(3)
            .any(|w| w == b"tun")
    });
    wait_until("the pending change gone", || {
        !scope_dir(ns, host).join("pending-confirm.json").exists()
    });
    let last = audit(ns, host)
        .into_iter()
        .rfind(|e| e["action"] == "revert")
        .unwrap();
    assert_eq!(last["result"], "ok");
    ns.kvmnet_ok(&["destroy", "--netns", host]);
}

#[test]
fn a_failed_revert_is_tried_again_without_a_daemon() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("rrt");
    revert_is_retried(&ns, &host);
}

#[test]
fn a_failed_revert_is_tried_again_by_the_daemon() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("rrd");
    let empty = SpecFile::new("version: 1\n");
    let _d = start(&ns, empty.path(), &host, &[]);
    revert_is_retried(&ns, &host);
}

/// Every directory under `dir` (itself included) 0700, every other file 0600.
fn loose_modes(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    if mode != 0o700 {
        out.push(format!("{} {mode:o}", dir.display()));
    }
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(loose_modes(&e.path()));
        } else {
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if mode != 0o600 {
                out.push(format!("{} {mode:o}", e.path().display()));
            }
        }
    }
    out
}

#[test]
fn the_state_directory_is_private_and_the_audit_log_names_the_caller() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("prv");
    // An install from before: everything readable by everyone.
    let dir = scope_dir(&ns, &host);
    std::fs::create_dir_all(dir.join("dhcp")).unwrap();
    std::fs::write(dir.join("audit.log"), "").unwrap();
    for (p, mode) in [
        (dir.clone(), 0o755),
        (dir.join("dhcp"), 0o755),
        (dir.join("audit.log"), 0o644),
    ] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // With a DHCP server, so that its journal is there too.
    let spec = SpecFile::new(&TAPS.replace(
        "ipv4: 10.98.0.1/24\n",
        "ipv4: 10.98.0.1/24\n    dhcp: { range: 10.98.0.100-10.98.0.110 }\n",
    ));
    let d = start(&ns, spec.path(), &host, &[("KVMNET_API_UIDS", "0,65534")]);
    assert_eq!(loose_modes(&dir), Vec::<String>::new());

    // A VM manager running as its own user (with the capability to reach root's socket):
    // the audit log records that user, not the daemon's uid.
    let both = SpecFile::new(&format!(
        "{}  b: {{ ports: [ {{ network: n, name: r-b }} ] }}\n",
        std::fs::read_to_string(&spec.0).unwrap()
    ));
    ok(&format!(
        "KVMNET_STATE_DIR={} setpriv --reuid 65534 --regid 65534 --clear-groups \
         --inh-caps +dac_override --ambient-caps +dac_override {} apply {} --netns {host} \
         --confirm-within 60s",
        ns.state_dir.display(),
        env!("CARGO_BIN_EXE_kvmnet"),
        both.path()
    ));
    let last = audit(&ns, &host).pop().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["uid"].as_u64()),
        (Some("apply"), Some(65534))
    );
    ns.kvmnet_ok(&["confirm", "--netns", &host]);
    let last = audit(&ns, &host).pop().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["uid"].as_u64()),
        (Some("confirm"), Some(0))
    );
    // What was written since (accepted spec, pending change, audit lines) is private too.
    assert_eq!(loose_modes(&dir), Vec::<String>::new());
    drop(d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(loose_modes(&dir), Vec::<String>::new());
}
