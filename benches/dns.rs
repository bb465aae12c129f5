//! DNS throughput and latency: kvmnet's DNS service (through `kvmnet daemon`) against
//! dnsmasq in the same namespace, on the same bridge address, in the same run. dnsperf runs
//! in a guest namespace (a veth port) and asks for the network's own names (100 records)
//! and for forwarded names already in each server's cache (100 names an upstream dnsmasq in
//! a wan namespace answers with a TTL of an hour). Needs root, dnsperf and dnsmasq.
//!
//!   cargo bench --bench dns
//!
//! For each server and set of names: the most queries per second dnsperf completes
//! (as fast as it can, 100 queries outstanding, 10 s), and latency percentiles at a fixed
//! 5,000 queries per second (`dnsperf -v`, every answer's latency).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SECS: u32 = 10;

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cleanup(Vec<String>, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.0 {
            sh(&format!("ip netns del {n} 2>/dev/null"));
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn spawn(args: &[&str]) -> Killed {
    Killed(
        Command::new(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Queries per second completed, as dnsperf reports it.
fn qps(out: &str) -> f64 {
    out.lines()
        .find(|l| l.contains("Queries per second:"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

/// Latency percentiles (ms) of the answers in a `dnsperf -v` run, and how many were lost.
fn percentiles(out: &str) -> (Vec<f64>, String) {
    let mut l: Vec<f64> = out
        .lines()
        .filter(|x| x.starts_with("> "))
        .filter_map(|x| x.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect();
    l.sort_by(f64::total_cmp);
    let at = |p: f64| {
        l.get(((l.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let lost = out
        .lines()
        .find(|x| x.contains("Queries lost:"))
        .unwrap_or("")
        .trim()
        .to_string();
    (vec![at(0.5), at(0.9), at(0.99), at(0.999)], lost)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dns bench: needs root; skipped");
        return;
    }
    let tag = std::process::id() % 100000;
    let (host, wan, guest) = (
        format!("kvbd{tag}h"),
        format!("kvbd{tag}w"),
        format!("kvbd{tag}g"),
    );
    let state = std::env::temp_dir().join(format!("kvbd{tag}-state"));
    let _clean = Cleanup(
        vec![guest.clone(), host.clone(), wan.clone()],
        state.clone(),
    );
    ok(&format!(
        "ip netns add {host} && ip netns add {wan} && ip -n {host} link set lo up && ip -n {wan} link set lo up && \
         ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 203.0.113.1/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 203.0.113.2/24 dev eth0 && ip -n {wan} link set eth0 up"
    ));
    let _up = spawn(&[
        "ip",
        "netns",
        "exec",
        &wan,
        "dnsmasq",
        "-k",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--listen-address=203.0.113.2",
        "--bind-interfaces",
        "--local-ttl=3600",
        "--address=/example.test/198.51.100.7",
    ]);
    let records: Vec<String> = (0..100)
        .map(|i| format!("r{i}: 10.66.1.{}", i + 1))
        .collect();
    let spec = state.with_extension("yaml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: kvbd-n\n    ipv4: 10.66.0.1/24\n    \
             host_access: [ {{ proto: udp, ports: [5353] }} ]\n    dns:\n      domain: vm.test\n      \
             forwarders: [203.0.113.2]\n      rate_limit: 10000000/second\n      records: {{ {} }}\n\
             vms:\n  g: {{ ports: [ {{ network: n, kind: veth, netns: {guest}, ipv4: 10.66.0.10 }} ] }}\n",
            records.join(", ")
        ),
    )
    .unwrap();
    let _daemon = Killed(
        Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args([
                "daemon",
                "--spec",
                &spec.display().to_string(),
                "--netns",
                &host,
            ])
            .env("KVMNET_STATE_DIR", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !sh(&format!(
        "ip netns exec {guest} dig @10.66.0.1 +short +time=1 +tries=1 r1.vm.test"
    ))
    .contains("10.66.1.2")
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    measure(&host, &guest, &state);
}

/// dnsmasq beside the daemon, then each server with each set of names.
fn measure(host: &str, guest: &str, state: &std::path::Path) {
    let hosts: Vec<String> = (0..100)
        .map(|i| format!("--host-record=r{i}.vm.test,10.66.1.{}", i + 1))
        .collect();
    let mut args = vec![
        "ip",
        "netns",
        "exec",
        host,
        "dnsmasq",
        "-k",
        "--no-resolv",
        "--no-hosts",
        "--pid-file=",
        "--listen-address=10.66.0.1",
        "--bind-interfaces",
        "--port=5353",
        "--server=203.0.113.2",
        "--cache-size=10000",
        "--local-ttl=60",
    ];
    args.extend(hosts.iter().map(String::as_str));
    let _dnsmasq = spawn(&args);
    let dir = state.join("q");
    std::fs::create_dir_all(&dir).unwrap();
    let local = dir.join("local");
    let fwd = dir.join("forwarded");
    std::fs::write(
        &local,
        (0..100)
            .map(|i| format!("r{i}.vm.test A\n"))
            .collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &fwd,
        (0..100)
            .map(|i| format!("f{i}.example.test A\n"))
            .collect::<String>(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let dnsperf = |port: u16, file: &std::path::Path, extra: &str| {
        sh(&format!(
            "ip netns exec {guest} dnsperf -s 10.66.0.1 -p {port} -d {} -t 2 {extra}",
            file.display()
        ))
    };
    println!(
        "| server | names | queries/s (max) | p50 / p90 / p99 / p99.9 ms at 5,000 q/s | lost at 5,000 q/s |"
    );
    println!("|---|---|---|---|---|");
    for (name, port) in [("kvmnet", 53u16), ("dnsmasq", 5353)] {
        for (what, file) in [("local", &local), ("cached forwarded", &fwd)] {
            dnsperf(port, file, "-n 2"); // warm the cache
            let q = qps(&dnsperf(port, file, &format!("-l {SECS} -q 100")));
            let (p, lost) = percentiles(&dnsperf(port, file, "-l 5 -Q 5000 -v"));
            println!(
                "| {name} | {what} | {q:.0} | {:.3} / {:.3} / {:.3} / {:.3} | {lost} |",
                p[0], p[1], p[2], p[3]
            );
        }
    }
}
