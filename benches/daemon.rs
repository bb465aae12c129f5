//! The daemon's footprint: resident memory with 1,000 ports and 1,000 DHCP leases, and its
//! CPU use while idle (reconcile loop and DHCP server running, nothing to do). Needs root
//! and perfdhcp (Debian package kea-admin), which hands out the leases.
//!
//!   cargo bench --bench daemon

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

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the daemon benchmark needs root");
        return;
    }
    let ports = 1000;
    let id = std::process::id();
    let host = format!("kvbd{id}");
    let perf = format!("kvbdp{id}");
    let dir = std::env::temp_dir().join(format!("kvmnet-bench-daemon-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = String::from(
        "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: bd-n\n    ipv4: 10.150.0.1/16\n    dhcp: { range: 10.150.100.0-10.150.120.255, lease_time: 1h }\n    host_access: [ { proto: udp, ports: [67] } ]\nvms:\n",
    );
    let _ = writeln!(
        spec,
        "  perf: {{ ports: [ {{ network: n, name: bd-perf, kind: veth, netns: {perf}, antispoof: false, dhcp_client: true }} ] }}"
    );
    for i in 0..ports {
        let _ = writeln!(
            spec,
            "  vm{i}: {{ ports: [ {{ network: n, name: bd{i}, ipv4: 10.150.{}.{} }} ] }}",
            1 + i / 250,
            2 + i % 250
        );
    }
    let spec_path = dir.join("spec.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args([
            "daemon",
            "--spec",
            spec_path.to_str().unwrap(),
            "--netns",
            &host,
        ])
        .env("KVMNET_STATE_DIR", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join(format!("netns-{host}")).join("api.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = daemon.id();
    // perfdhcp relays from its own address (udp 67 to the gateway, which guests may reach
    // only where `host_access` lets them: the spec does): a static one outside the range, not a port's
    // reservation (the server takes no relayed request from a guest port's address). The
    // port leaves its far end's address alone (`dhcp_client`), so it is set here.
    sh(&format!("ip -n {perf} addr add 10.150.0.2/16 dev eth0"));
    // 1,000 clients through perfdhcp, relaying via the gateway address.
    let out = sh(&format!(
        "ip netns exec {perf} perfdhcp -4 -r 250 -p 8 -R {ports} 10.150.0.1 2>&1 || true"
    ));
    let leases = sh(&format!(
        "KVMNET_STATE_DIR={} {} leases --netns {host} --json",
        dir.display(),
        env!("CARGO_BIN_EXE_kvmnet")
    ));
    let bound = leases.matches("\"bound\"").count();
    std::thread::sleep(Duration::from_secs(3));
    let rss_kib = proc_field(pid, "status", "VmRSS:").unwrap_or(0);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let t0 = cpu_ticks(pid);
    let idle = Duration::from_secs(20);
    std::thread::sleep(idle);
    let cpu = (cpu_ticks(pid) - t0) as f64 / hz / idle.as_secs_f64() * 100.0;
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["destroy", "--netns", &host])
        .env("KVMNET_STATE_DIR", &dir)
        .output();
    let _ = sh(&format!(
        "ip netns del {host}; ip netns del {perf} 2>/dev/null || true"
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let perf_summary: Vec<&str> = out.lines().filter(|l| l.contains("drops")).collect();
    println!(
        "kvmnet daemon with {ports} tap ports and {bound} bound DHCP leases (perfdhcp: {perf_summary:?})"
    );
    println!();
    println!("| what | measured | goal |");
    println!("|---|---|---|");
    println!(
        "| resident memory (VmRSS) | {:.1} MiB | under 30 MiB |",
        rss_kib as f64 / 1024.0
    );
    println!(
        "| idle CPU (reconcile every 2 s, DHCP serving), over {} s | {cpu:.2} % of one core | |",
        idle.as_secs()
    );
}
