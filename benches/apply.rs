//! Apply speed against the lower bound: the same objects created by `ip -batch` + `nft -f`
//! (what a hand-written script at its best would do), measured in the same run, each in a
//! fresh network namespace. Needs root.
//!
//!   cargo bench --bench apply               # 1,000 tap ports, 5 rounds
//!   KVMNET_BENCH_PORTS=200 KVMNET_BENCH_ROUNDS=3 cargo bench --bench apply

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &str) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let o = cmd.output().unwrap();
    let d = t.elapsed();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn tap(i: usize) -> String {
    format!("bt{i}")
}

/// With `v6`, the network has `ipv6` and every port a declared `ipv6` address
/// (`KVMNET_BENCH_IPV6=1`).
fn spec(ports: usize, v6: bool) -> String {
    let mut s = String::from(
        "version: 1\nnetworks:\n  default:\n    mode: nat\n    bridge: virbr0\n    ipv4: 10.200.0.1/16\n",
    );
    if v6 {
        s.push_str("    ipv6: fd00:200::1/64\n");
    }
    s.push_str("vms:\n");
    for i in 0..ports {
        let addr = if v6 {
            format!(", ipv6: \"fd00:200::{:x}\"", i + 16)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "  vm{i}:\n    ports: [ {{ network: default, name: {}{addr} }} ]",
            tap(i)
        );
    }
    s
}

/// The same objects kvmnet creates, as an iproute2 batch and an nft script.
fn baseline(ports: usize, nft_rules: &str, v6: bool) -> (String, String) {
    let mut ip = String::from(
        "link add virbr0 type bridge\nlink set virbr0 address 52:54:00:22:78:4e mtu 1500 alias \"kvmnet network=default\" up\naddr add 10.200.0.1/16 brd + dev virbr0\n",
    );
    if v6 {
        ip.push_str("addr add fd00:200::1/64 dev virbr0 nodad\n");
    }
    for i in 0..ports {
        let t = tap(i);
        let _ = writeln!(ip, "tuntap add dev {t} mode tap vnet_hdr");
        let _ = writeln!(
            ip,
            "link set {t} address fe:54:00:00:{:02x}:{:02x} mtu 1500 master virbr0 alias \"kvmnet vm=vm{i} network=default\" up",
            i / 256,
            i % 256
        );
    }
    (ip, nft_rules.to_string())
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the apply benchmark needs root");
        return;
    }
    let ports: usize = std::env::var("KVMNET_BENCH_PORTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rounds: usize = std::env::var("KVMNET_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let kvmnet = env!("CARGO_BIN_EXE_kvmnet");
    let dir = std::env::temp_dir().join(format!("kvmnet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec_path = dir.join("spec.yaml");
    let v6 = std::env::var("KVMNET_BENCH_IPV6").is_ok_and(|v| v == "1");
    std::fs::write(&spec_path, spec(ports, v6)).unwrap();
    let state = dir.join("state");

    let mut kv_apply = Vec::new();
    let mut kv_noop = Vec::new();
    let mut kv_destroy = Vec::new();
    let mut base = Vec::new();
    let mut nft_text = String::new();
    for r in 0..rounds {
        let ns = format!("kvbench{}-{r}", std::process::id());
        sh(&format!("ip netns add {ns}"));
        let run = |args: &[&str]| {
            let mut c = Command::new(kvmnet);
            c.args(args).env("KVMNET_STATE_DIR", &state);
            c
        };
        let sp = spec_path.to_str().unwrap();
        kv_apply.push(timed(&mut run(&["apply", sp, "--netns", &ns])));
        kv_noop.push(timed(&mut run(&["apply", sp, "--netns", &ns])));
        if nft_text.is_empty() {
            // Every table kvmnet made (the inet one and the bridge guard's, with each
            // port's set elements): the namespace holds nothing else.
            let o = Command::new("ip")
                .args(["netns", "exec", &ns, "nft", "list", "ruleset"])
                .output()
                .unwrap();
            nft_text = String::from_utf8_lossy(&o.stdout).into_owned();
        }
        kv_destroy.push(timed(&mut run(&["destroy", "--netns", &ns])));
        sh(&format!("ip netns del {ns}"));

        let ns = format!("kvbase{}-{r}", std::process::id());
        sh(&format!("ip netns add {ns}"));
        let (ip, nft) = baseline(ports, &nft_text, v6);
        let ipf = dir.join("batch.ip");
        let nftf = dir.join("rules.nft");
        std::fs::write(&ipf, ip).unwrap();
        std::fs::write(&nftf, nft).unwrap();
        let t = Instant::now();
        sh(&format!(
            "ip -n {ns} -batch {} && ip netns exec {ns} nft -f {} && ip netns exec {ns} sysctl -qw net.ipv4.ip_forward=1{}",
            ipf.display(),
            nftf.display(),
            if v6 {
                " net.ipv6.conf.all.forwarding=1"
            } else {
                ""
            }
        ));
        base.push(t.elapsed());
        sh(&format!("ip netns del {ns}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (a, n, d, b) = (
        median(kv_apply),
        median(kv_noop),
        median(kv_destroy),
        median(base),
    );
    println!(
        "apply of one NAT network{} with {ports} tap ports, median of {rounds} rounds, fresh namespace each",
        if v6 {
            " with IPv6 (every port with an ipv6)"
        } else {
            ""
        }
    );
    println!();
    println!("| what | time |");
    println!("|---|---|");
    println!(
        "| `ip -batch` + `nft -f` (lower bound) | {:.1} ms |",
        b.as_secs_f64() * 1e3
    );
    println!("| `kvmnet apply` | {:.1} ms |", a.as_secs_f64() * 1e3);
    println!(
        "| ratio kvmnet / lower bound | {:.2}x |",
        a.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "| `kvmnet apply` again, nothing to change | {:.1} ms |",
        n.as_secs_f64() * 1e3
    );
    println!("| `kvmnet destroy` | {:.1} ms |", d.as_secs_f64() * 1e3);
}
