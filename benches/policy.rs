//! Per-port policy at scale: is the per-packet cost flat as ports grow, and what does adding
//! one port cost on a host with 1,000 of them? Each port has anti-spoofing, a stateful
//! firewall and shaping both ways. Needs root and iperf3.
//!
//!   cargo bench --bench policy
//!
//! The hosts compared (namespaces with 10, 1,000 and 0 other ports) all exist at once, and
//! their measurements alternate: on a machine whose speed drifts from minute to minute, a
//! ratio of two figures taken minutes apart says more about the drift than about kvmnet.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    // KVMNET_BENCH_IPV6=1: the network has IPv6 and every port a declared address.
    let v6 = std::env::var("KVMNET_BENCH_IPV6").is_ok_and(|v| v == "1");
    let net6 = if v6 { ", ipv6: fd00:160::1/64" } else { "" };
    let addr6 = |n: usize| {
        if v6 {
            format!("ipv6: \"fd00:160::{n:x}\", ")
        } else {
            String::new()
        }
    };
    let mut s = format!(
        "version: 1\nnetworks:\n  n: {{ mode: nat, bridge: bp-n, ipv4: 10.160.0.1/16{net6} }}\nvms:\n",
    );
    let _ = writeln!(
        s,
        "  a: {{ ports: [ {{ network: n, name: bp-a, kind: veth, netns: {a}, ipv4: 10.160.0.2, {}{fw} }} ] }}",
        addr6(2)
    );
    let _ = writeln!(
        s,
        "  b: {{ ports: [ {{ network: n, name: bp-b, kind: veth, netns: {b}, ipv4: 10.160.0.3, {}{fw} }} ] }}",
        addr6(3)
    );
    for i in 0..others + usize::from(extra) {
        let _ = writeln!(
            s,
            "  o{i}: {{ ports: [ {{ network: n, name: bpo{i}, ipv4: 10.160.{}.{}, {}{fw}, {q} }} ] }}",
            1 + i / 250,
            2 + i % 250,
            addr6(0x100 + i)
        );
    }
    s
}

/// iperf3 runs per host, taken in pairs (one on each host). A single run on this kind of
/// machine moves by ±20% with nothing changed (a plain bridge without kvmnet does too), so
/// a 5% goal needs many short pairs, not a few long runs.
const IPERF_PAIRS: usize = 21;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A host (namespace) with two guests and `others` more ports, and the spec with one port
/// more.
struct Host {
    others: usize,
    dir: PathBuf,
    ns: String,
    a: String,
    b: String,
    base: String,
    plus: String,
    daemon: Option<Child>,
}

impl Host {
    fn new(others: usize, dir: &Path) -> Host {
        let id = format!("{}{others}", std::process::id());
        let (ns, a, b) = (
            format!("kvbp{id}"),
            format!("kvbpa{id}"),
            format!("kvbpb{id}"),
        );
        let base = dir.join(format!("base{others}.yaml"));
        let plus = dir.join(format!("plus{others}.yaml"));
        std::fs::write(&base, spec(others, false, &a, &b)).unwrap();
        std::fs::write(&plus, spec(others, true, &a, &b)).unwrap();
        let h = Host {
            others,
            dir: dir.to_path_buf(),
            ns,
            a,
            b,
            base: base.to_str().unwrap().to_string(),
            plus: plus.to_str().unwrap().to_string(),
            daemon: None,
        };
        h.kv(&["apply", &h.base]);
        h
    }

    fn kv(&self, args: &[&str]) {
        let o = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(args)
            .args(["--netns", &self.ns])
            .env("KVMNET_STATE_DIR", &self.dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// One timed `apply` adding a port and one removing it again, in ms.
    fn add_remove(&self) -> (f64, f64) {
        let t = Instant::now();
        self.kv(&["apply", &self.plus]);
        let add = ms(t);
        let t = Instant::now();
        self.kv(&["apply", &self.base]);
        (add, ms(t))
    }

    /// Starts a daemon for the host (the CLI then hands it the specs: it plans from what it
    /// keeps of the host, current through the kernel's notifications).
    fn start_daemon(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["daemon", "--spec", &self.base, "--netns", &self.ns])
            .env("KVMNET_STATE_DIR", &self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let sock = self.dir.join(format!("netns-{}", self.ns)).join("api.sock");
        let t = Instant::now();
        while !sock.exists() && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(sock.exists(), "the daemon did not start");
        // Once through, so that neither side is cold.
        self.add_remove();
    }

    fn stop_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: signalling the child we spawned.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let _ = d.wait();
        }
    }

    /// One iperf3 run guest to guest (through the bridge, the firewall of both and the
    /// antispoof sets), in Gbit/s; the server runs in `b`.
    fn iperf(&self) -> f64 {
        let out = sh(&format!(
            "ip netns exec {} iperf3 -c 10.160.0.3 -t 2 -O 1 -J",
            self.a
        ));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap()
            / 1e9
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_daemon();
        let _ = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["destroy", "--netns", &self.ns])
            .env("KVMNET_STATE_DIR", &self.dir)
            .output();
        let _ = sh(&format!("ip netns del {} 2>/dev/null || true", self.ns));
    }
}

fn iperf_server(h: &Host) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &h.b, "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the policy benchmark needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvmnet-bench-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut small = Host::new(10, &dir);
    let mut large = Host::new(1000, &dir);
    let none = Host::new(0, &dir);

    // Adding one port (and removing it again), timed as the whole command, alternating
    // between the hosts: `kvmnet apply` on its own, then with a daemon running for each.
    let (mut alone_s, mut alone_l) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        alone_s.push(small.add_remove().0);
        alone_l.push(large.add_remove().0);
    }
    small.start_daemon();
    large.start_daemon();
    let (mut add_s, mut add_l, mut rm_s, mut rm_l) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..11 {
        let (a, r) = small.add_remove();
        add_s.push(a);
        rm_s.push(r);
        let (a, r) = large.add_remove();
        add_l.push(a);
        rm_l.push(r);
    }
    small.stop_daemon();
    large.stop_daemon();

    // Per-packet cost, alternating between 1,000 other ports and none. The removals above
    // leave the kernel releasing devices for a while: let it finish first.
    std::thread::sleep(Duration::from_secs(2));
    let mut servers = [iperf_server(&large), iperf_server(&none)];
    std::thread::sleep(Duration::from_millis(500));
    // Pairs in alternating order (1,000 first, then 0 first), so that a drift during the
    // run weighs on both sides alike; each pair's ratio is taken on its own.
    let (mut gbit_l, mut gbit_0, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..IPERF_PAIRS {
        let (l, z) = if i % 2 == 0 {
            let l = large.iperf();
            (l, none.iperf())
        } else {
            let z = none.iperf();
            (large.iperf(), z)
        };
        gbit_l.push(l);
        gbit_0.push(z);
        ratios.push(l / z);
    }
    for s in servers.iter_mut() {
        let _ = s.kill();
        let _ = s.wait();
    }
    let others = (small.others, large.others, none.others);
    drop((small, large, none));
    let _ = std::fs::remove_dir_all(&dir);

    let (alone_s, alone_l) = (median(alone_s), median(alone_l));
    let (add_s, add_l) = (median(add_s), median(add_l));
    let (rm_s, rm_l) = (median(rm_s), median(rm_l));
    let (gbit_l, gbit_0) = (median(gbit_l), median(gbit_0));
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = ratios.len();
    let (ratio_q1, ratio_q3) = (ratios[n / 4], ratios[3 * n / 4]);
    let ratio = median(ratios);
    println!(
        "per-port policy at scale (hosts with {}, {} and {} other ports, measured in turn; medians: 3 standalone applies, 11 through the daemon, {} iperf3 pairs; every port: antispoof, firewall, shaping both ways)",
        others.0, others.1, others.2, IPERF_PAIRS
    );
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| iperf3 guest to guest, 0 other ports | {gbit_0:.2} Gbit/s |");
    println!("| iperf3 guest to guest, 1,000 other ports | {gbit_l:.2} Gbit/s |");
    println!(
        "| ratio (1,000 / 0), median of {IPERF_PAIRS} pairs | {ratio:.3} (middle half of the pairs: {ratio_q1:.3}–{ratio_q3:.3}; goal: within 5%) |"
    );
    println!("| add one port, host with 10 ports | {alone_s:.0} ms |");
    println!("| add one port, host with 1,000 ports | {alone_l:.0} ms |");
    println!("| ratio (1,000 / 10) | {:.1} |", alone_l / alone_s);
    println!("| add one port through the daemon, host with 10 ports | {add_s:.1} ms |");
    println!("| add one port through the daemon, host with 1,000 ports | {add_l:.1} ms |");
    println!(
        "| ratio through the daemon (1,000 / 10) | {:.2} (goal: at most 2) |",
        add_l / add_s
    );
    println!("| remove one port through the daemon, 10 / 1,000 ports | {rm_s:.1} / {rm_l:.1} ms |");
}
