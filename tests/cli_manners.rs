//! The command line's manners: `validate --json` speaks the same error objects as
//! `plan --json`, `-` reads the spec from standard input, an unreadable spec file is an
//! error about the file (not a made-up place in it), and misspellings get a suggestion.

mod common;
use common::*;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const VALID: &str = "version: 1\nnetworks:\n  iso:\n    mode: isolated\n    bridge: km-iso\n    ipv4: 10.83.0.1/24\nvms:\n  a:\n    ports: [ { network: iso, name: km-a, kind: tap } ]\n";
const INVALID: &str = "version: 1\nnetworks:\n  n:\n    mdoe: nat\n    ipv4: 10.0.5.1/24\n";

/// kvmnet with `args`, `stdin` on its standard input, and a state directory of its own.
fn kvmnet_in(ns: &Namespaces, args: &[&str], stdin: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(args)
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kvmnet runs");
    c.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}):\n{}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn validate_json_matches_plan_json() {
    let ns = Namespaces::new();
    let spec = SpecFile::new(INVALID);
    let v = ns.kvmnet(&["validate", spec.path(), "--json"]);
    assert_eq!(v.status.code(), Some(2));
    // Invalid before the host is looked at: plan needs no namespace nor root to say so.
    let p = ns.kvmnet(&["plan", spec.path(), "--json"]);
    assert_eq!(p.status.code(), Some(2));
    assert_eq!(stdout_json(&v), stdout_json(&p));
    let v = stdout_json(&v);
    assert_eq!(v["kind"], "invalid");
    assert_eq!(v["source"], spec.path());
    assert_eq!(v["errors"][0]["path"], "networks.n.mdoe");
    assert_eq!(v["errors"][0]["line"], 4);
    assert_eq!(v["errors"][0]["column"], 5);
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .ends_with("; did you mean 'mode'?"),
        "{v}"
    );

    let ok = SpecFile::new(VALID);
    let o = ns.kvmnet(&["validate", ok.path(), "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout_json(&o),
        json!({ "valid": true, "source": ok.path(), "networks": 1, "vms": 1, "ports": 1 })
    );
}

#[test]
fn dash_reads_the_spec_from_stdin() {
    let ns = Namespaces::new();
    let o = kvmnet_in(&ns, &["validate", "-"], VALID);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "(stdin): valid (1 networks, 1 VMs, 1 ports)\n"
    );
    let o = kvmnet_in(&ns, &["validate", "-"], INVALID);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("(stdin):4:5: networks.n.mdoe: unknown field 'mdoe'"),
        "{err}"
    );
    let o = kvmnet_in(&ns, &["plan", "-", "--json"], INVALID);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout_json(&o)["source"], "(stdin)");
}

#[test]
fn unreadable_spec_names_the_file_without_a_place() {
    let ns = Namespaces::new();
    let missing = std::env::temp_dir().join(unique("missing.yaml"));
    let missing = missing.to_str().unwrap();
    for cmd in ["validate", "plan", "apply"] {
        let o = ns.kvmnet(&[cmd, missing]);
        assert_eq!(o.status.code(), Some(2), "{cmd}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr),
            format!("kvmnet: cannot read {missing}: No such file or directory\n"),
            "{cmd}"
        );
        let o = ns.kvmnet(&[cmd, missing, "--json"]);
        assert_eq!(
            stdout_json(&o),
            json!({
                "changes": [], "kind": "invalid",
                "error": format!("cannot read {missing}: No such file or directory"),
            }),
            "{cmd}"
        );
    }
}

#[test]
fn plan_and_apply_read_stdin() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("stdin");
    let o = kvmnet_in(&ns, &["plan", "-", "--netns", &host, "--json"], VALID);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!stdout_json(&o)["changes"].as_array().unwrap().is_empty());
    let o = kvmnet_in(&ns, &["apply", "-", "--netns", &host], VALID);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ok_in(&host, "ip link show km-iso && ip link show km-a");
    let o = kvmnet_in(&ns, &["plan", "-", "--netns", &host], VALID);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "No changes: the host matches the spec.\n"
    );
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn plan_detailed_exitcode() {
    let ns = Namespaces::new();
    // Errors are 1 with the flag (2 means changes), whatever their kind.
    let bad = SpecFile::new(INVALID);
    let o = ns.kvmnet(&["plan", bad.path(), "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(ns.kvmnet(&["plan", bad.path()]).status.code(), Some(2));
    let o = ns.kvmnet(&["plan", "--detailed-exitcode", "--no-such-flag", bad.path()]);
    assert_eq!(o.status.code(), Some(1));
    if !privileged() {
        return;
    }
    let mut ns = ns;
    let host = ns.add("detail");
    let o = kvmnet_in(
        &ns,
        &["plan", "-", "--netns", &host, "--detailed-exitcode"],
        VALID,
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("km-iso"));
    // Without the flag, changes are still success.
    let o = kvmnet_in(&ns, &["plan", "-", "--netns", &host], VALID);
    assert_eq!(o.status.code(), Some(0));
    kvmnet_in(&ns, &["apply", "-", "--netns", &host], VALID);
    let o = kvmnet_in(
        &ns,
        &["plan", "-", "--netns", &host, "--detailed-exitcode"],
        VALID,
    );
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A namespace that does not exist: an error, so 1.
    let o = kvmnet_in(
        &ns,
        &[
            "plan",
            "-",
            "--netns",
            &unique("none"),
            "--detailed-exitcode",
        ],
        VALID,
    );
    assert_eq!(o.status.code(), Some(1));
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn destroy_dry_run_shows_the_plan_and_changes_nothing() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("dry");
    let o = kvmnet_in(&ns, &["apply", "-", "--netns", &host], VALID);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let before = fingerprint(&host, &["net.ipv4.ip_forward"]);

    let text = ns.kvmnet_ok(&["destroy", "--dry-run", "--netns", &host]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('-') && l.contains("km-iso")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with('-') && l.contains("km-a")),
        "{text}"
    );
    assert!(!text.contains("Applied"), "{text}");
    let v: Value =
        serde_json::from_str(&ns.kvmnet_ok(&["destroy", "--dry-run", "--netns", &host, "--json"]))
            .unwrap();
    let changes = v["changes"].as_array().unwrap();
    assert!(!changes.is_empty(), "{v}");
    assert!(
        changes
            .iter()
            .all(|c| c["op"] != "create" && c["op"] != "add"),
        "{v}"
    );
    assert_eq!(fingerprint(&host, &["net.ipv4.ip_forward"]), before);

    // What the dry run showed is what destroy does.
    let done: Value =
        serde_json::from_str(&ns.kvmnet_ok(&["destroy", "--netns", &host, "--json"])).unwrap();
    assert_eq!(done["changes"], v["changes"]);
    let v: Value =
        serde_json::from_str(&ns.kvmnet_ok(&["destroy", "--dry-run", "--netns", &host, "--json"]))
            .unwrap();
    assert_eq!(v, json!({ "changes": [] }));
}
