//! `kvmnet bench` in a namespace the test makes: throwaway ports with and without policy
//! measured and removed again (the host, its state and its namespaces as before, also after
//! ctrl-C), the same beside a running daemon (which lends the ports for a lease, its
//! accepted spec untouched), `--between` two VMs' veth ports, and a clear refusal for a
//! tap. No timing is asserted: only that every figure
//! is there and sane.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
];

/// The spec of the test's host: a small nat network, two veth VMs (web2 with a firewall
/// that lets bench's ports in) and a tap VM.
fn spec_text(g1: &str, g2: &str) -> String {
    format!(
        r#"version: 1
networks:
  lab: {{ mode: nat, bridge: kvb-lab, ipv4: 10.78.0.1/24, dhcp: {{ range: 10.78.0.100-10.78.0.200 }} }}
vms:
  web1: {{ ports: [ {{ network: lab, name: lab-web1, kind: veth, netns: {g1}, ipv4: 10.78.0.10 }} ] }}
  web2:
    ports:
      - network: lab
        name: lab-web2
        kind: veth
        netns: {g2}
        ipv4: 10.78.0.11
        firewall:
          inbound:
            policy: drop
            rules:
              - {{ proto: tcp, ports: ["5201-5203"] }}
              - {{ proto: udp, ports: [5201] }}
  vm3: {{ ports: [ {{ network: lab, name: lab-vm3 }} ] }}
"#
    )
}

/// One bench at a time: the leftover cleanup below must not take another test's bench
/// namespaces, and two benches would share the two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The host's configuration: [`fingerprint`] without nftables' packet and byte counters,
/// which count the traffic bench makes through the rules (what it is for).
fn config(ns: &str) -> String {
    fingerprint(ns, SYSCTLS)
        .split("counter packets ")
        .enumerate()
        .map(|(i, part)| match i {
            0 => part.to_string(),
            _ => {
                let rest = part.split_once(" bytes ").map_or(part, |(_, r)| r);
                let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                format!("counter{rest}")
            }
        })
        .collect()
}

/// Removes namespaces of a bench that died before its own cleanup (a failed test), which
/// bench names `kvmnet-bench-PID-TAG`; those that were there before are left alone.
struct BenchLeftovers(Vec<String>);

impl Drop for BenchLeftovers {
    fn drop(&mut self) {
        for n in namespaces_with("kvmnet-bench-") {
            if !self.0.contains(&n) {
                let _ = sh(&format!("ip netns del {n}"));
            }
        }
    }
}

/// The state directory's files that say what is in force (the audit log, which records
/// the bench, is left out).
fn state_files(ns: &Namespaces, host: &str) -> Vec<(String, Option<Vec<u8>>)> {
    let dir = ns.state_dir.join(format!("netns-{host}"));
    [
        "applied-spec.yaml",
        "accepted-spec.yaml",
        "state.json",
        "macs.json",
        "pending.json",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(dir.join(f)).ok()))
    .collect()
}

fn stdout_json(o: &std::process::Output) -> Value {
    assert!(
        o.status.success(),
        "bench failed ({:?})\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

fn samples(m: &Value) -> Vec<f64> {
    m["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

/// Every metric of every configuration is there, with sane numbers.
fn check_report(v: &Value, configs: &[&str]) {
    assert!(v["tool"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    assert!(
        v["tool_note"]
            .as_str()
            .unwrap()
            .starts_with("measured with"),
        "{v}"
    );
    let rounds = v["rounds"].as_u64().unwrap();
    assert!(rounds >= 3, "{v}");
    let have: Vec<&str> = v["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(have, configs);
    for c in v["configurations"].as_array().unwrap() {
        let m = &c["metrics"];
        for key in ["tcp_1_stream", "tcp_4_streams"] {
            let s = samples(&m[key]);
            assert_eq!(s.len() as u64, rounds, "{key}: {m}");
            assert!(s.iter().all(|x| *x > 0.0), "{key}: {m}");
            assert!(m[key]["median"].as_f64().unwrap() > 0.0);
            assert!(m[key]["iqr"].as_f64().unwrap() >= 0.0);
        }
        for key in ["udp_loss_100M", "udp_loss_1G"] {
            let s = samples(&m[key]);
            assert!(s.iter().all(|x| (0.0..=100.0).contains(x)), "{key}: {m}");
        }
        let p50 = samples(&m["latency_p50"]);
        let p99 = samples(&m["latency_p99"]);
        let p999 = samples(&m["latency_p99_9"]);
        for i in 0..p50.len() {
            assert!(0.0 < p50[i] && p50[i] <= p99[i] && p99[i] <= p999[i], "{m}");
        }
        let med = |k: &str| m[k]["median"].as_f64().unwrap();
        assert!(med("latency_p50") <= med("latency_p99"));
        assert!(med("latency_p99") <= med("latency_p99_9"));
    }
}

fn xml_well_formed(path: &Path) {
    let o = Command::new("xmllint")
        .arg("--noout")
        .arg(path)
        .output()
        .expect("xmllint runs (libxml2-utils)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("<svg") && text.contains("with policy"));
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn throwaway_ports_are_measured_and_removed() {
    if !privileged() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _leftovers = BenchLeftovers(namespaces_with("kvmnet-bench-"));
    let mut ns = Namespaces::new();
    let host = ns.reserve("bh");
    let (g1, g2) = (ns.reserve("bg1"), ns.reserve("bg2"));
    let spec = SpecFile::new(&spec_text(&g1, &g2));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let before = config(&host);
    let state = state_files(&ns, &host);
    let namespaces = namespaces_with("kvmnet-bench-");

    let svg = std::env::temp_dir().join(format!("{}.svg", unique("bench")));
    let svg_s = svg.to_str().unwrap();
    let o = ns.kvmnet(&[
        "bench", "--netns", &host, "--json", "--svg", svg_s, "--quick",
    ]);
    let v = stdout_json(&o);
    check_report(&v, &["with policy", "without policy"]);
    assert!(v["network"].as_str().unwrap().starts_with("lab "), "{v}");
    xml_well_formed(&svg);
    let _ = std::fs::remove_file(&svg);

    assert_eq!(config(&host), before);
    assert_eq!(state_files(&ns, &host), state);
    assert_eq!(namespaces_with("kvmnet-bench-"), namespaces);
    assert!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .contains("No changes")
    );

    interrupted_bench_leaves_nothing(&ns, &host, &before, &state, &namespaces);
}

/// A bench interrupted once its ports exist puts the host back before it exits.
fn interrupted_bench_leaves_nothing(
    ns: &Namespaces,
    host: &str,
    before: &str,
    state: &[(String, Option<Vec<u8>>)],
    namespaces: &[String],
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["bench", "--netns", host, "--quick", "--json"])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("bench's ports", || {
        sh(&format!("ip -n {host} link show kvbench-nb"))
            .status
            .success()
    });
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = wait_for(&mut child);
    assert!(!o.status.success(), "an interrupted bench fails");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("interrupted"),
        "{o:?}"
    );
    assert_eq!(config(host), before);
    assert_eq!(state_files(ns, host), state);
    assert_eq!(namespaces_with("kvmnet-bench-"), namespaces);
}

/// A child killed when dropped (a failed assertion must not leave a bench running).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's output, killing it after 60 s (a bench that hangs fails the test).
fn wait_for(child: &mut std::process::Child) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = std::process::Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    let _ = child.stdout.take().unwrap().read_to_end(&mut out.stdout);
    let _ = child.stderr.take().unwrap().read_to_end(&mut out.stderr);
    out
}

#[test]
fn beside_a_daemon_lent_ports_and_between_two_vms() {
    if !privileged() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _leftovers = BenchLeftovers(namespaces_with("kvmnet-bench-"));
    let mut ns = Namespaces::new();
    let host = ns.add("bd");
    let (g1, g2) = (ns.reserve("bg1"), ns.reserve("bg2"));
    let spec = SpecFile::new(&spec_text(&g1, &g2));
    let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec.path(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_RECONCILE_MS", "300")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    wait_until("daemon API socket", || sock.exists());
    let before = config(&host);
    let state = state_files(&ns, &host);
    assert!(
        state
            .iter()
            .any(|(f, t)| f == "accepted-spec.yaml" && t.is_some())
    );

    // Throwaway ports lent by the daemon for a lease: measured, then gone, and the
    // accepted spec never held them.
    let namespaces = namespaces_with("kvmnet-bench-");
    let v = stdout_json(&ns.kvmnet(&["bench", "--netns", &host, "--quick", "--json"]));
    check_report(&v, &["with policy", "without policy"]);
    assert_eq!(config(&host), before);
    assert_eq!(state_files(&ns, &host), state);
    assert_eq!(namespaces_with("kvmnet-bench-"), namespaces);
    interrupted_bench_leaves_nothing(&ns, &host, &before, &state, &namespaces);

    // An apply through the daemon meanwhile wins: the ports go, and bench says why it fails.
    let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["bench", "--netns", &host, "--quick", "--json"])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    wait_until("bench's ports", || {
        sh(&format!("ip -n {host} link show kvbench-nb"))
            .status
            .success()
    });
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(
        !sh(&format!("ip -n {host} link show kvbench-nb"))
            .status
            .success()
    );
    let o = wait_for(&mut child.0);
    assert!(!o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the daemon removed bench's ports"),
        "{o:?}"
    );
    assert_eq!(config(&host), before);
    assert_eq!(state_files(&ns, &host), state);
    assert_eq!(namespaces_with("kvmnet-bench-"), namespaces);

    let o = ns.kvmnet(&[
        "bench",
        "--netns",
        &host,
        "--between",
        "web1",
        "web2",
        "--quick",
        "--json",
    ]);
    let v = stdout_json(&o);
    check_report(&v, &["web1 to web2"]);
    assert_eq!(v["configurations"][0]["server"]["port"], "lab-web2");

    // A tap's far end is inside a VM: refused with the reason.
    let o = ns.kvmnet(&["bench", "--netns", &host, "--between", "web1", "vm3"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("VM 'vm3' has no veth port") && err.contains("lab-vm3 (tap)"),
        "{err}"
    );

    assert_eq!(config(&host), before);
    assert_eq!(state_files(&ns, &host), state);
}
