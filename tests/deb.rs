//! The Debian package: scripts/build-deb builds it, dpkg-deb reads its files and control
//! fields, and dpkg installs it on this machine for real (maintainer scripts included) and
//! purges it at the end, passed or not. The test refuses to run where kvmnet is installed
//! already or /etc/kvmnet/kvmnet.yaml exists: those are an operator's.
//!
//! What systemd would do is done by the test, since where the tests run systemd is not PID
//! 1 and `systemctl start` cannot work: `systemd-analyze verify` checks the installed unit,
//! then the daemon is started with the installed unit's ExecStart line word for word, with a
//! NOTIFY_SOCKET for its Type=notify readiness. Two things differ from a systemd start, so
//! that the machine's own networking and state are not touched: it runs inside a network
//! namespace the test made (`ip netns exec`), and KVMNET_STATE_DIR points into a temporary
//! directory instead of /var/lib/kvmnet. The spec is written where the unit reads it,
//! /etc/kvmnet/kvmnet.yaml (the package owns the directory), and removed again.

mod common;
use common::*;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = "/usr/lib/systemd/system/kvmnet.service";
const SPEC: &str = "/etc/kvmnet/kvmnet.yaml";

/// The package installed; removed with its spec when dropped, whatever happened.
struct Installed;

impl Installed {
    fn new(deb: &Path) -> Installed {
        let installed = Installed;
        ok(&format!("dpkg -i {}", deb.display()));
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SPEC);
        let o = sh("dpkg --purge kvmnet");
        if !o.status.success() {
            eprintln!(
                "dpkg --purge kvmnet failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

fn package_installed() -> bool {
    sh("dpkg-query -W -f='${Status}' kvmnet 2>/dev/null")
        .stdout
        .ends_with(b"installed")
}

/// True when `tool` is on PATH; with CI set, a missing tool fails the test instead.
fn have(tool: &str, how: &str) -> bool {
    let there = sh(&format!("command -v {tool}")).status.success();
    if !there {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing ({how}), and CI must not skip"
        );
        eprintln!("skipping: {tool} is missing ({how})");
    }
    there
}

/// Runs scripts/build-deb on the target directory this test was built in (so it packs the
/// binary just built), and returns the .deb it printed.
fn build_deb() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_kvmnet"));
    let target = bin.parent().and_then(Path::parent).expect("target/release");
    let o = Command::new(manifest_dir().join("scripts/build-deb"))
        .env("CARGO_TARGET_DIR", target)
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/build-deb runs");
    assert!(o.status.success(), "scripts/build-deb failed");
    let out = String::from_utf8_lossy(&o.stdout);
    let deb = PathBuf::from(out.lines().last().expect("the .deb's path").trim());
    assert!(deb.is_file(), "{deb:?}");
    deb
}

fn check_contents(deb: &Path) {
    let list = ok(&format!("dpkg-deb -c {}", deb.display()));
    let mut want = vec![
        "./usr/bin/kvmnet".to_string(),
        format!(".{UNIT}"),
        "./usr/share/man/man1/kvmnet.1.gz".into(),
        "./usr/share/man/man1/kvmnet-apply.1.gz".into(),
        "./usr/share/man/man1/kvmnet-daemon.1.gz".into(),
        "./usr/share/bash-completion/completions/kvmnet".into(),
        "./usr/share/zsh/vendor-completions/_kvmnet".into(),
        "./usr/share/fish/vendor_completions.d/kvmnet.fish".into(),
        "./usr/share/doc/kvmnet/README.md".into(),
        "./etc/kvmnet/".into(),
    ];
    for e in std::fs::read_dir(manifest_dir().join("examples")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        want.push(format!("./usr/share/doc/kvmnet/examples/{name}"));
    }
    let paths: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for w in &want {
        assert!(paths.contains(&w.as_str()), "{w} missing from\n{list}");
    }
    // /etc/kvmnet/ holds nothing: the spec is the operator's, not a conffile.
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("./etc/kvmnet/") && *p != "./etc/kvmnet/"),
        "{list}"
    );

    let depends = ok(&format!("dpkg-deb -f {} Depends", deb.display()));
    let deps: Vec<&str> = depends
        .trim()
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .collect();
    for d in ["nftables", "iproute2", "libc6"] {
        assert!(deps.contains(&d), "Depends: {depends}");
    }
}

/// The installed unit: checked by systemd-analyze, enabled by the maintainer scripts, and
/// its ExecStart as words.
fn check_unit() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).expect("the unit is installed");
    if have("systemd-analyze", "Debian package systemd") {
        ok(&format!("systemd-analyze verify {UNIT}"));
    }
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/kvmnet.service").exists(),
        "postinst enables the unit"
    );
    assert!(
        unit.contains(&format!("ConditionPathExists={SPEC}")),
        "{unit}"
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let argv: Vec<String> = exec.split_whitespace().map(String::from).collect();
    assert_eq!(argv[0], "/usr/bin/kvmnet", "{exec}");
    assert!(argv.iter().any(|a| a == SPEC), "{exec}");
    argv
}

/// Starts `argv` in namespace `ns` as systemd would start the unit (Type=notify), and
/// waits for READY=1.
fn start_as_unit(argv: &[String], ns: &str, state_dir: &Path) -> Daemon {
    let notify = state_dir.with_extension("notify");
    let _ = std::fs::remove_file(&notify);
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .env("KVMNET_STATE_DIR", state_dir)
        .env("NOTIFY_SOCKET", &notify)
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut d = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 256];
    let mut ready = false;
    while !ready && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            ready = buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1");
        }
        if let Ok(Some(status)) = d.0.try_wait() {
            panic!("the daemon exited before READY=1: {status}");
        }
    }
    let _ = std::fs::remove_file(&notify);
    assert!(ready, "no READY=1 within 20 s");
    d
}

#[test]
fn deb_installs_and_its_unit_runs_the_daemon() {
    if !privileged() || !have("cargo-deb", "cargo install cargo-deb --locked") {
        return;
    }
    assert!(
        !package_installed() && !Path::new(SPEC).exists(),
        "kvmnet is installed on this machine (or {SPEC} exists): this test installs and \
         purges the package, so it runs only where neither is"
    );
    let deb = build_deb();
    check_contents(&deb);

    let mut ns = Namespaces::new();
    let host = ns.add("deb");
    let _installed = Installed::new(&deb);
    let argv = check_unit();
    assert!(Path::new("/etc/kvmnet").is_dir());
    assert!(Path::new("/usr/share/man/man1/kvmnet-daemon.1.gz").is_file());

    std::fs::write(
        SPEC,
        "version: 1\nnetworks:\n  lab:\n    mode: isolated\n    bridge: kd-br\n    ipv4: 10.78.0.1/24\nvms:\n  a:\n    ports: [ { network: lab, name: kd-a } ]\n",
    )
    .unwrap();
    let daemon = start_as_unit(&argv, &host, &ns.state_dir);
    ok(&format!("ip -n {host} link show kd-br"));
    ok(&format!("ip -n {host} link show kd-a"));
    // The installed binary answers through the daemon's API in the same scope.
    let status = ok(&format!(
        "ip netns exec {host} env KVMNET_STATE_DIR={} /usr/bin/kvmnet status --json",
        ns.state_dir.display()
    ));
    assert!(status.contains("kd-br"), "{status}");
    drop(daemon);
    ok(&format!(
        "ip netns exec {host} env KVMNET_STATE_DIR={} /usr/bin/kvmnet destroy",
        ns.state_dir.display()
    ));
    let links = ok(&format!("ip -n {host} -o link"));
    assert_eq!(links.lines().count(), 1, "only lo is left: {links}");
}
