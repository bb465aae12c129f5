//! DHCP throughput and latency: kvmnet's server (through `kvmnet daemon`) against dnsmasq,
//! on the same topology in the same run. perfdhcp (Debian package kea-admin) acts as a relay
//! from a guest namespace; each server is driven at rising rates until it loses exchanges.
//! Needs root, perfdhcp and dnsmasq.
//!
//!   cargo bench --bench dhcp

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

/// perfdhcp's report: both exchanges' drops, the DISCOVER-OFFER average delay.
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
            "ip netns exec {perf_ns} perfdhcp -4 -r {rate} -p {SECS} -R 1000000 -W 1000000 10.170.0.1 2>&1"
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
        eprintln!("the DHCP benchmark needs root");
        return;
    }
    let id = std::process::id();
    let (host, perf) = (format!("kvbh{id}"), format!("kvbhp{id}"));
    let dir = std::env::temp_dir().join(format!("kvmnet-bench-dhcp-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.yaml");
    std::fs::write(
        &spec,
        format!(
            "version: 1\nnetworks:\n  n:\n    mode: isolated\n    bridge: bh-n\n    ipv4: 10.170.0.1/16\n    dhcp: {{ range: 10.170.16.0-10.170.255.250, lease_time: 1h }}\n    host_access: [ {{ proto: udp, ports: [67] }} ]\nvms:\n  perf: {{ ports: [ {{ network: n, name: bh-perf, kind: veth, netns: {perf}, antispoof: false, dhcp_client: true }} ] }}\n"
        ),
    )
    .unwrap();
    let kvmnet = env!("CARGO_BIN_EXE_kvmnet");

    // kvmnet: the daemon applies the spec and serves DHCP.
    let daemon = Command::new(kvmnet)
        .args(["daemon", "--spec", spec.to_str().unwrap(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_sock(&dir.join(format!("netns-{host}")).join("api.sock"));
    // perfdhcp relays from its own address (udp 67 to the gateway, which guests may reach
    // only where `host_access` lets them: the spec does): a static one outside the range, not a port's
    // reservation (the server takes no relayed request from a guest port's address). The
    // port leaves its far end's address alone (`dhcp_client`), so it is set here.
    sh(&format!("ip -n {perf} addr add 10.170.0.2/16 dev eth0"));
    let kv = sweep(&perf, "kvmnet");
    stop(daemon);

    // dnsmasq on the very same bridge (the daemon left the networking in place), with a
    // fresh lease space and no DNS.
    let dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &host,
            "dnsmasq",
            "--no-daemon",
            "--conf-file=/dev/null",
            "--interface=bh-n",
            "--bind-interfaces",
            "--port=0",
            "--no-ping",
            "--dhcp-authoritative",
            "--leasefile-ro",
            "--dhcp-lease-max=1000000",
            "--dhcp-range=10.170.16.0,10.170.255.250,1h",
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
    println!("DHCP: highest perfdhcp rate with zero loss ({SECS} s per step; steps {RATES:?}/s)");
    println!();
    println!("| server | zero-loss rate | avg DISCOVER-OFFER delay at that rate |");
    println!("|---|---|---|");
    println!("| kvmnet | {}/s | {:.3} ms |", kv.0, kv.1);
    println!("| dnsmasq | {}/s | {:.3} ms |", dm.0, dm.1);
}
