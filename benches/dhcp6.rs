//! DHCPv6 throughput and latency: kvmnet's server (through `kvmnet daemon`, every binding
//! synced to disk before its Reply) against dnsmasq, on the same topology in the same run.
//! perfdhcp -6 (Debian package kea-admin) runs in a guest namespace as many clients on one
//! port (Solicit-Advertise-Request-Reply each, to ff02::1:2 from the port's link-local
//! address); each server is driven at rising rates until it loses exchanges.
//! Needs root, perfdhcp and dnsmasq.
//!
//!   cargo bench --bench dhcp6

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RATES: &[u32] = &[250, 500, 750, 1000, 1500, 2000, 3000, 4000, 6000, 8000];
const SECS: u32 = 5;

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Perf {
    sent: u64,
    drops: u64,
    avg_ms: f64,
}

/// perfdhcp's report: both exchanges' drops, the Solicit-Advertise average delay.
fn parse(out: &str) -> Perf {
    let num = |l: &str| -> f64 {
        l.split(':')
            .nth(1)
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let mut p = Perf {
        sent: 0,
        drops: 0,
        avg_ms: 0.0,
    };
    let mut first_delay = true;
    for l in out.lines().map(str::trim) {
        if l.starts_with("sent packets:") {
            p.sent += num(l) as u64;
        } else if l.starts_with("drops:") {
            p.drops += num(l) as u64;
        } else if l.starts_with("avg delay:") && first_delay {
            p.avg_ms = num(l);
            first_delay = false;
        }
    }
    p
}

fn sweep(perf_ns: &str, name: &str) -> (u32, f64) {
    let mut best = (0, 0.0);
    for &rate in RATES {
        let out = sh(&format!(
            "ip netns exec {perf_ns} perfdhcp -6 -l eth0 -r {rate} -p {SECS} -R 1000000 -W 1000000 2>&1"
        ));
        let p = parse(&out);
        eprintln!(
            "{name}: {rate}/s sent {} drops {} avg {:.3} ms",
            p.sent, p.drops, p.avg_ms
        );
        if p.sent == 0 || p.drops > 0 {
            break;
        }
        best = (rate, p.avg_ms);
    }
    best
}

fn wait_sock(path: &std::path::Path) {
    let t = Instant::now();
    while !path.exists() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(mut c: Child) {
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let _ = c.wait();
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the DHCPv6 benchmark needs root");
        return;
    }
    let id = std::process::id();
    let (host, perf) = (format!("kvb6h{id}"), format!("kvb6p{id}"));
    let dir = std::env::temp_dir().join(format!("kvmnet-bench-dhcp6-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.yaml");
    // A pool of 2^20 addresses; the perfdhcp port is not guarded (its one MAC stands for a
    // million clients, which the guard's per-port share would rightly refuse).
    std::fs::write(
        &spec,
        format!(
            "version: 1\nnetworks:\n  n:\n    mode: isolated\n    bridge: b6-n\n    ipv4: 10.171.0.1/24\n    ipv6: fd00:171::1/64\n    ra: {{ mode: dhcpv6 }}\n    dhcp: {{ range6: fd00:171::10:0-fd00:171::1f:ffff, lease_time: 1h }}\nvms:\n  perf: {{ ports: [ {{ network: n, name: b6-perf, kind: veth, netns: {perf}, antispoof: false }} ] }}\n"
        ),
    )
    .unwrap();
    let kvmnet = env!("CARGO_BIN_EXE_kvmnet");
    let daemon = Command::new(kvmnet)
        .args(["daemon", "--spec", spec.to_str().unwrap(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_sock(&dir.join(format!("netns-{host}")).join("api.sock"));
    // perfdhcp sends from the port's link-local address, once it is no longer tentative.
    let t = Instant::now();
    while sh(&format!("ip -n {perf} -6 addr show dev eth0 scope link")).contains("tentative")
        && t.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let kv = sweep(&perf, "kvmnet");
    stop(daemon);

    // dnsmasq on the very same bridge (the daemon left the networking in place).
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--interface=b6-n",
            "--bind-interfaces",
            "--port=0",
            "--dhcp-authoritative",
            "--leasefile-ro",
            "--dhcp-lease-max=1000000",
            "--dhcp-range=fd00:171::10:0,fd00:171::1f:ffff,64,1h",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq runs");
    std::thread::sleep(Duration::from_secs(1));
    let dm = sweep(&perf, "dnsmasq");
    stop(dnsmasq);

    let _ = Command::new(kvmnet)
        .args(["destroy", "--netns", &host])
        .env("KVMNET_STATE_DIR", &dir)
        .output();
    let _ = sh(&format!("ip netns del {host}"));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "DHCPv6: highest perfdhcp -6 rate with zero loss ({SECS} s per step; steps {RATES:?}/s)"
    );
    println!();
    println!("| server | zero-loss rate | avg Solicit-Advertise delay at that rate |");
    println!("|---|---|---|");
    println!("| kvmnet | {}/s | {:.3} ms |", kv.0, kv.1);
    println!("| dnsmasq | {}/s | {:.3} ms |", dm.0, dm.1);
}
