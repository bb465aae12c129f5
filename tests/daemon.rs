//! The daemon keeps the host converged and serves the CLI; unconfirmed changes revert to the
//! exact previous state, with or without a daemon; every change lands in the audit log.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start_daemon(ns: &Namespaces, spec: &str, host: &str) -> Daemon {
    start_daemon_with(ns, spec, host, Stdio::piped(), &[])
}

/// The daemon with its stderr on `stderr` and `env` set; none of systemd's variables that
/// the test's own environment may hold.
fn start_daemon_with(
    ns: &Namespaces,
    spec: &str,
    host: &str,
    stderr: Stdio,
    env: &[(&str, &str)],
) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec, "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_RECONCILE_MS", "300")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    wait_until("daemon API socket", || sock.exists());
    Daemon(child)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn link_exists(host: &str, name: &str) -> bool {
    sh(&format!("ip -n {host} link show {name}"))
        .status
        .success()
}

fn audit(ns: &Namespaces, host: &str) -> Vec<serde_json::Value> {
    let p = ns.state_dir.join(format!("netns-{host}")).join("audit.log");
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn spec_text(extra_port: bool) -> String {
    let mut s = String::from(
        "version: 1\nnetworks:\n  nat:\n    mode: nat\n    bridge: d-nat\n    ipv4: 10.91.0.1/24\nvms:\n  a:\n    ports: [ { network: nat, name: d-a } ]\n",
    );
    if extra_port {
        s.push_str("  b:\n    ports: [ { network: nat, name: d-b } ]\n");
    }
    s
}

#[test]
fn daemon_repairs_drift_and_serves_the_cli() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("dmn");
    let spec = SpecFile::new(&spec_text(false));
    let d = start_daemon(&ns, spec.path(), &host);
    assert!(link_exists(&host, "d-a"));

    // A port deleted by hand comes back.
    ok(&format!("ip -n {host} link del d-a"));
    wait_until("port repaired", || link_exists(&host, "d-a"));
    // kvmnet's table deleted, or flushed by a firewall reload, comes back.
    ok(&format!(
        "ip netns exec {host} nft delete table inet kvmnet"
    ));
    wait_until("table repaired", || {
        sh(&format!("ip netns exec {host} nft list table inet kvmnet"))
            .status
            .success()
    });
    ok(&format!("ip netns exec {host} nft flush table inet kvmnet"));
    wait_until("flushed table repaired", || {
        String::from_utf8_lossy(
            &sh(&format!("ip netns exec {host} nft list table inet kvmnet")).stdout,
        )
        .contains("masquerade")
    });
    let repairs = audit(&ns, &host)
        .into_iter()
        .filter(|e| e["action"] == "repair")
        .count();
    assert!(repairs >= 3, "each repair is audited");

    // The CLI goes through the daemon: status, and apply (the daemon then enforces it).
    let st: serde_json::Value =
        serde_json::from_str(&ns.kvmnet_ok(&["status", "--netns", &host, "--json"])).unwrap();
    assert_eq!(st["networks"][0]["bridge"], "d-nat");
    let spec2 = SpecFile::new(&spec_text(true));
    ns.kvmnet_ok(&["apply", spec2.path(), "--netns", &host]);
    assert!(link_exists(&host, "d-b"));
    ok(&format!("ip -n {host} link del d-b"));
    wait_until("new spec enforced", || link_exists(&host, "d-b"));
    // A large spec replaced through the daemon: the one it replaces, kept under another name
    // while the apply runs (freeing it is left for after the answer), does not stay.
    let scope_dir = ns.state_dir.join(format!("netns-{host}"));
    let padded = |tag: &str| format!("{}#{}\n", spec_text(true), tag.repeat(300 << 10));
    for tag in ["a", "b"] {
        let large = SpecFile::new(&padded(tag));
        ns.kvmnet_ok(&["apply", large.path(), "--netns", &host]);
    }
    let accepted = std::fs::read_to_string(scope_dir.join("accepted-spec.yaml")).unwrap();
    assert!(
        accepted.starts_with(&padded("b")),
        "the last spec is the accepted one"
    );
    wait_until("the replaced spec removed", || {
        !scope_dir.join("accepted-spec.yaml.old").exists()
    });
    // Invalid specs are refused through the daemon too, with exit 2.
    let bad = SpecFile::new("version: 1\nnetworks:\n  x:\n    mode: natt\n");
    let o = ns.kvmnet(&["apply", bad.path(), "--netns", &host]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("networks.x.mode"));
    // So is a file that is not UTF-8, which the CLI stops sending when it reads the bad
    // byte: the daemon refuses the cut body, and the CLI says what is wrong.
    let not_utf8 = SpecFile::new("");
    let mut bytes = spec_text(true).into_bytes();
    bytes.extend(b"# caf\xe9\n");
    std::fs::write(&not_utf8.0, bytes).unwrap();
    let o = ns.kvmnet(&["apply", not_utf8.path(), "--netns", &host]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not UTF-8"));
    assert!(link_exists(&host, "d-b"), "the spec applied before stays");

    // SIGHUP re-reads the spec file the daemon was started with: edited since the daemon
    // last read it, it replaces what was applied through the daemon (unedited, it would not:
    // tests/daemon_state.rs).
    std::fs::write(&spec.0, format!("{}# edited\n", spec_text(false))).unwrap();
    unsafe { libc::kill(d.0.id() as i32, libc::SIGHUP) };
    wait_until("reload removes d-b", || !link_exists(&host, "d-b"));

    // Stopping the daemon leaves networking in place.
    drop(d);
    assert!(link_exists(&host, "d-a") && link_exists(&host, "d-nat"));
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    let actions: Vec<String> = audit(&ns, &host)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert!(
        actions.contains(&"apply".to_string()) && actions.last().unwrap() == "destroy",
        "{actions:?}"
    );
}

/// Runs a daemon with stderr on a file, `JOURNAL_STREAM` naming that file (or not), repairs
/// a deleted port, refuses an invalid spec on SIGHUP, stops; returns what it wrote.
fn daemon_log(journal: Option<bool>) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut ns = Namespaces::new();
    let host = ns.add("jrn");
    let spec = SpecFile::new(&spec_text(false));
    let log_path = ns.state_dir.with_extension("stderr");
    let file = std::fs::File::create(&log_path).unwrap();
    let m = file.metadata().unwrap();
    // The daemon's own stderr, or another file (stderr redirected away from the journal).
    let stream = match journal {
        Some(true) => format!("{}:{}", m.dev(), m.ino()),
        Some(false) => format!("{}:{}", m.dev(), m.ino() + 1),
        None => String::new(),
    };
    let env: Vec<(&str, &str)> = match journal {
        Some(_) => vec![("JOURNAL_STREAM", stream.as_str())],
        None => vec![],
    };
    let d = start_daemon_with(&ns, spec.path(), &host, Stdio::from(file), &env);
    ok(&format!("ip -n {host} link del d-a"));
    wait_until("port repaired", || link_exists(&host, "d-a"));
    std::fs::write(&spec.0, "version: 1\nnetworks:\n  x:\n    mode: natt\n").unwrap();
    unsafe { libc::kill(d.0.id() as i32, libc::SIGHUP) };
    wait_until("reload refused", || {
        std::fs::read_to_string(&log_path).is_ok_and(|t| t.contains("natt"))
    });
    drop(d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_file(&log_path);
    text
}

#[test]
fn daemon_lines_carry_priorities_only_for_the_journal() {
    if !privileged() {
        return;
    }
    let text = daemon_log(Some(true));
    for l in text.lines() {
        assert!(
            ["<3>", "<4>", "<5>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p)),
            "every line has a priority: {l:?} in\n{text}"
        );
    }
    for expected in [
        "<6>kvmnet: applied the accepted spec",
        "<5>kvmnet: repair: ",
        "<4>kvmnet: reload refused, keeping the current spec:",
        "<6>kvmnet: stopped; networking left in place",
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    // Each line of a message is the journal's line: the spec errors under the refusal too.
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("networks.x.mode")),
        "{text}"
    );

    // Not the journal (no JOURNAL_STREAM, or one naming another file): lines as they were.
    for journal in [None, Some(false)] {
        let text = daemon_log(journal);
        assert!(text.contains("kvmnet: repair: "), "{text}");
        assert!(text.contains("networks.x.mode"), "{text}");
        assert!(
            text.lines().all(|l| !l.starts_with('<')),
            "no priorities outside the journal ({journal:?}):\n{text}"
        );
    }
}

/// What a daemon sends to a notify socket until `secs` after its READY=1, with
/// `WATCHDOG_USEC=400000` and `env`.
fn notifications(env: &[(&str, &str)], secs: f64) -> Vec<(Duration, String)> {
    let mut ns = Namespaces::new();
    let host = ns.add("wdg");
    let spec = SpecFile::new(&spec_text(false));
    let path = ns.state_dir.with_extension("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut all = vec![
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
    ];
    all.extend_from_slice(env);
    let start = Instant::now();
    let d = start_daemon_with(&ns, spec.path(), &host, Stdio::null(), &all);
    let mut got = vec![];
    let mut buf = [0u8; 256];
    let mut until = start + Duration::from_secs(20);
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            if &buf[..n] == b"READY=1" {
                until = Instant::now() + Duration::from_secs_f64(secs);
            }
            got.push((
                start.elapsed(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    drop(d);
    let _ = std::fs::remove_file(&path);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    got
}

#[test]
fn daemon_pings_the_watchdog_from_its_loop() {
    if !privileged() {
        return;
    }
    let got = notifications(&[], 1.5);
    let ready = got
        .iter()
        .position(|(_, m)| m == "READY=1")
        .unwrap_or_else(|| panic!("READY=1 in {got:?}"));
    let pings: Vec<Duration> = got[ready..]
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.len() >= 3,
        "repeated WATCHDOG=1 after READY=1: {got:?}"
    );
    // Every 200 ms (half of WATCHDOG_USEC): never a second without one.
    let since_ready = got[ready].0;
    assert!(pings[0] - since_ready < Duration::from_secs(1), "{got:?}");
    for w in pings.windows(2) {
        assert!(w[1] - w[0] < Duration::from_secs(1), "{got:?}");
    }

    // WATCHDOG_PID naming another process: that process is the one watched.
    let got = notifications(&[("WATCHDOG_PID", "1")], 1.0);
    assert!(got.iter().any(|(_, m)| m == "READY=1"), "{got:?}");
    assert!(got.iter().all(|(_, m)| m != "WATCHDOG=1"), "{got:?}");
}

/// A bridge-mode uplink change is the case --confirm-within exists for.
fn uplink_setup(ns: &mut Namespaces) -> (String, String) {
    let host = ns.add("cfh");
    let wan = ns.add("cfw");
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 192.0.2.2/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 192.0.2.1/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 192.0.2.1"
    ));
    (host, wan)
}

const BRIDGED: &str = "version: 1\nhost:\n  sysctl:\n    net.core.somaxconn: \"777\"\nnetworks:\n  lan:\n    mode: bridge\n    bridge: br-lan\n    uplink: up0\n";
const SYSCTLS: &[&str] = &["net.core.somaxconn", "net.ipv4.ip_forward"];

fn confirm_cycle(ns: &Namespaces, host: &str) {
    let before = fingerprint(host, SYSCTLS);
    let spec = SpecFile::new(BRIDGED);
    // Unconfirmed: back to exactly what was there.
    ns.kvmnet_ok(&[
        "apply",
        spec.path(),
        "--netns",
        host,
        "--confirm-within",
        "2s",
    ]);
    assert!(link_exists(host, "br-lan"));
    wait_until("revert", || !link_exists(host, "br-lan"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fingerprint(host, SYSCTLS), before, "revert is not exact");
    // Confirmed: stays.
    ns.kvmnet_ok(&[
        "apply",
        spec.path(),
        "--netns",
        host,
        "--confirm-within",
        "2s",
    ]);
    assert!(
        ns.kvmnet_ok(&["confirm", "--netns", host])
            .contains("Confirmed")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        link_exists(host, "br-lan"),
        "a confirmed change was reverted"
    );
    assert!(
        ns.kvmnet_ok(&["confirm", "--netns", host])
            .contains("Nothing to confirm")
    );
    ns.kvmnet_ok(&["destroy", "--netns", host]);
    assert_eq!(fingerprint(host, SYSCTLS), before);
}

#[test]
fn unconfirmed_change_reverts_without_a_daemon() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let (host, _wan) = uplink_setup(&mut ns);
    confirm_cycle(&ns, &host);
    let actions: Vec<String> = audit(&ns, &host)
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_string())
        .collect();
    assert!(
        actions.contains(&"revert".to_string()) && actions.contains(&"confirm".to_string()),
        "{actions:?}"
    );
}

#[test]
fn unconfirmed_change_reverts_with_a_daemon() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let (host, _wan) = uplink_setup(&mut ns);
    let empty = SpecFile::new("version: 1\n");
    let _d = start_daemon(&ns, empty.path(), &host);
    confirm_cycle(&ns, &host);
}

#[test]
fn daemon_serves_dhcp_reservations_and_pool() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("dhd");
    let g = ns.reserve("dg");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone()]);
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  n:
    mode: nat
    bridge: h-n
    ipv4: 10.93.0.1/24
    dhcp: {{ range: 10.93.0.100-10.93.0.110, lease_time: 10m, dns: [10.93.0.1], domain: lab.test }}
vms:
  a: {{ ports: [ {{ network: n, name: h-a, kind: veth, netns: {a}, mac: "52:54:00:93:00:0a", ipv4: 10.93.0.10, dhcp_client: true }} ] }}
  b: {{ ports: [ {{ network: n, name: h-b, kind: veth, netns: {b}, mac: "52:54:00:93:00:0b", dhcp_client: true }} ] }}
"#
    ));
    let _d = start_daemon(&ns, spec.path(), &host);
    // The far ends come up unaddressed; a real client gets the address.
    assert!(!ok_in(&a, "ip -4 addr show eth0").contains("inet "));
    let script = std::env::temp_dir().join(format!("{}.sh", unique("udhcpc")));
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$mask\" dev \"$interface\"; [ -n \"$router\" ] && ip route replace default via $router; echo \"LEASE $ip $router $dns $domain\" ;; esac\n",
    )
    .unwrap();
    ok(&format!("chmod +x {}", script.display()));
    let run = |n: &str| {
        ok_in(
            n,
            &format!(
                "busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s {}",
                script.display()
            ),
        )
    };
    let out_a = run(&a);
    assert!(
        out_a.contains("LEASE 10.93.0.10 10.93.0.1 10.93.0.1 lab.test"),
        "{out_a}"
    );
    let out_b = run(&b);
    let ip_b = out_b
        .lines()
        .find_map(|l| l.strip_prefix("LEASE "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let last: u8 = ip_b.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        (100..=110).contains(&last),
        "pool address expected, got {out_b}"
    );
    // The daemon leaves what the DHCP client configured alone (reconcile runs every 300 ms).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    assert!(
        ok_in(&a, "ip -4 addr show eth0").contains("10.93.0.10/24"),
        "address taken away"
    );
    assert!(
        ok_in(&a, "ip route").contains("default via 10.93.0.1"),
        "route taken away"
    );
    assert!(pings(&a, "10.93.0.1") && pings(&b, "10.93.0.1"));
    // `kvmnet leases` lists both, through the daemon and without it.
    let v: serde_json::Value =
        serde_json::from_str(&ns.kvmnet_ok(&["leases", "--netns", &host, "--json"])).unwrap();
    let leases = v["leases"].as_array().unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l["ip"] == "10.93.0.10" && l["reserved"] == true),
        "{v}"
    );
    assert!(leases.iter().any(|l| l["ip"] == ip_b.as_str()), "{v}");
    drop(_d);
    let text = ns.kvmnet_ok(&["leases", "--netns", &host]);
    assert!(
        text.contains("10.93.0.10") && text.contains(&ip_b),
        "{text}"
    );
    let _ = std::fs::remove_file(script);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
