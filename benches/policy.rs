//! Per-port policy at scale: is the per-packet cost flat as ports grow, and what does adding
//! one port cost on a host with 1,000 of them? Each port has anti-spoofing, a stateful
//! firewall and shaping both ways. Needs root and iperf3.
//!
//!   cargo bench --bench policy

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn spec(others: usize, extra: bool, a: &str, b: &str) -> String {
    let fw =
        "firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22, 5201] } ] } }";
    let q = "qos: { inbound: { rate: 5gbit }, outbound: { rate: 5gbit } }";
    let mut s = String::from(
        "version: 1\nnetworks:\n  n: { mode: nat, bridge: bp-n, ipv4: 10.160.0.1/16 }\nvms:\n",
    );
    let _ = writeln!(
        s,
        "  a: {{ ports: [ {{ network: n, name: bp-a, kind: veth, netns: {a}, ipv4: 10.160.0.2, {fw} }} ] }}"
    );
    let _ = writeln!(
        s,
        "  b: {{ ports: [ {{ network: n, name: bp-b, kind: veth, netns: {b}, ipv4: 10.160.0.3, {fw} }} ] }}"
    );
    for i in 0..others + usize::from(extra) {
        let _ = writeln!(
            s,
            "  o{i}: {{ ports: [ {{ network: n, name: bpo{i}, ipv4: 10.160.{}.{}, {fw}, {q} }} ] }}",
            1 + i / 250,
            2 + i % 250
        );
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Run {
    /// `kvmnet apply` on its own: reads the whole host, plans, applies.
    add_one_ms: f64,
    /// `kvmnet apply` with a daemon running for the scope: the daemon plans from what it
    /// keeps of the host (current through the kernel's notifications) and applies.
    add_one_daemon_ms: f64,
    remove_one_daemon_ms: f64,
    gbit: f64,
}

/// Medians of timed `apply`s of `plus` (one port more) and of `base` after it (that port
/// removed again), in ms.
fn time_adds(kv: &dyn Fn(&[&str]), plus: &str, base: &str, host: &str, n: usize) -> (f64, f64) {
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        kv(&["apply", plus, "--netns", host]);
        adds.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        kv(&["apply", base, "--netns", host]);
        removes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(adds), median(removes))
}

fn run(others: usize, dir: &std::path::Path) -> Run {
    let id = format!("{}{others}", std::process::id());
    let (host, a, b) = (
        format!("kvbp{id}"),
        format!("kvbpa{id}"),
        format!("kvbpb{id}"),
    );
    let kv = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(args)
            .env("KVMNET_STATE_DIR", dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let base = dir.join(format!("base{others}.yaml"));
    let plus = dir.join(format!("plus{others}.yaml"));
    std::fs::write(&base, spec(others, false, &a, &b)).unwrap();
    std::fs::write(&plus, spec(others, true, &a, &b)).unwrap();
    let (base_s, plus_s) = (base.to_str().unwrap(), plus.to_str().unwrap());
    kv(&["apply", base_s, "--netns", &host]);
    // Adding one port (and removing it again), timed as the whole command.
    let (add_one_ms, _) = time_adds(&kv, plus_s, base_s, &host, 3);
    // The same with a daemon serving the scope (the CLI hands it the spec).
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", base_s, "--netns", &host])
        .env("KVMNET_STATE_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join(format!("netns-{host}")).join("api.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "the daemon did not start");
    kv(&["apply", plus_s, "--netns", &host]);
    kv(&["apply", base_s, "--netns", &host]);
    let (add_one_daemon_ms, remove_one_daemon_ms) = time_adds(&kv, plus_s, base_s, &host, 7);
    // SAFETY: signalling the child we spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    // Guest to guest through the bridge, the firewall of both and the antispoof sets. The
    // removals above leave the kernel releasing devices for a while: let it finish, so
    // that it is the per-packet cost that is measured.
    std::thread::sleep(Duration::from_secs(2));
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &b, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut rates = Vec::new();
    for _ in 0..5 {
        let out = sh(&format!(
            "ip netns exec {a} iperf3 -c 10.160.0.3 -t 4 -O 1 -J"
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        rates.push(
            v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap()
                / 1e9,
        );
    }
    let _ = srv.kill();
    let _ = srv.wait();
    kv(&["destroy", "--netns", &host]);
    let _ = sh(&format!("ip netns del {host} 2>/dev/null || true"));
    Run {
        add_one_ms,
        add_one_daemon_ms,
        remove_one_daemon_ms,
        gbit: median(rates),
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the policy benchmark needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvmnet-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let small = run(10, &dir);
    let large = run(1000, &dir);
    let none = run(0, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "per-port policy at scale (medians: 3 standalone applies, 7 through the daemon, 5 iperf3 runs; every port: antispoof, firewall, shaping both ways)"
    );
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!(
        "| iperf3 guest to guest, 0 other ports | {:.2} Gbit/s |",
        none.gbit
    );
    println!(
        "| iperf3 guest to guest, 1,000 other ports | {:.2} Gbit/s |",
        large.gbit
    );
    println!(
        "| ratio (1,000 / 0) | {:.3} (goal: within 5%) |",
        large.gbit / none.gbit
    );
    println!(
        "| add one port, host with 10 ports | {:.0} ms |",
        small.add_one_ms
    );
    println!(
        "| add one port, host with 1,000 ports | {:.0} ms |",
        large.add_one_ms
    );
    println!(
        "| ratio (1,000 / 10) | {:.1} |",
        large.add_one_ms / small.add_one_ms
    );
    println!(
        "| add one port through the daemon, host with 10 ports | {:.1} ms |",
        small.add_one_daemon_ms
    );
    println!(
        "| add one port through the daemon, host with 1,000 ports | {:.1} ms |",
        large.add_one_daemon_ms
    );
    println!(
        "| ratio through the daemon (1,000 / 10) | {:.1} (goal: at most 2) |",
        large.add_one_daemon_ms / small.add_one_daemon_ms
    );
    println!(
        "| remove one port through the daemon, 10 / 1,000 ports | {:.1} / {:.1} ms |",
        small.remove_one_daemon_ms, large.remove_one_daemon_ms
    );
}
