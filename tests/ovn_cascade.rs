//! The cascade: one spec, VMs spread over many chassis of a real OVN (tests/common/ovn_lab.rs,
//! every chassis a namespace with its own ovsdb-server, ovs-vswitchd and ovn-controller),
//! kvmnet applying it on every chassis, and every VM reaching a reference VM on the first
//! chassis across the Geneve tunnels. The chassis count is `KVMNET_CASCADE_CHASSIS`
//! (default 20), the VMs per chassis `KVMNET_CASCADE_VMS` (default 1; 5 on 20 chassis is
//! the 100 ports of BENCHMARKS.md's port-up latency). What each chassis's daemons take (RSS
//! and CPU, from /proc) and each port's latency are printed for BENCHMARKS.md.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

use std::fmt::Write as _;
use std::time::{Duration, Instant};

fn spec(lab: &OvnLab, guests: &[String]) -> String {
    let mut s = format!(
        "version: 1\novn:\n  nb: {}\n  sb: {}\n  datapath: netdev\n  chassis:\n",
        lab.nb(),
        lab.sb()
    );
    for (i, c) in lab.chassis.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {}: {{ encap_ip: {}, ovs: \"{}\" }}",
            c.name,
            c.encap_ip,
            lab.ovs_db(i + 1)
        );
    }
    s.push_str(
        "networks:\n  casc:\n    backend: ovn\n    mode: routed\n    ipv4: 10.81.0.1/24\nvms:\n",
    );
    let per = guests.len() / lab.chassis.len();
    for (i, ns) in guests.iter().enumerate() {
        let _ = writeln!(
            s,
            "  c{i}:\n    host: hv{}\n    ports:\n      - {{ network: casc, name: casc{i}, kind: veth, \
             netns: {ns}, mac: \"52:54:00:81:00:{:02x}\", ipv4: 10.81.0.{} }}",
            i / per + 1,
            i + 10,
            i + 10
        );
    }
    s
}

/// The `up` of every logical switch port, by name: one read for all of a chassis's ports.
fn ups(lab: &OvnLab) -> std::collections::BTreeMap<String, bool> {
    lab.nbctl("--format=csv --no-headings --data=bare --columns=name,up list Logical_Switch_Port")
        .lines()
        .filter_map(|l| {
            let (name, up) = l.split_once(',')?;
            Some((name.to_string(), up == "true"))
        })
        .collect()
}

/// Each of `ports` (logical port, guest namespace) from `done` to `up` in NB and, unless it
/// is on the reference VM's chassis, to its first ping of the reference VM: polled
/// together, so no port waits for another's poll.
fn latencies(
    lab: &OvnLab,
    ports: &[(String, String)],
    done: Instant,
    ping: bool,
) -> (Vec<Duration>, Vec<Duration>) {
    let pings: Vec<_> = ports
        .iter()
        .filter(|_| ping)
        .map(|(_, g)| {
            let g = g.clone();
            std::thread::spawn(move || {
                poll(&format!("{g} to reach the reference VM"), || {
                    in_ns(&g, "ping -c1 -W0.2 10.81.0.10").status.success()
                });
                done.elapsed()
            })
        })
        .collect();
    let mut up: std::collections::BTreeMap<&str, Duration> = Default::default();
    poll("the chassis's ports up", || {
        let now = ups(lab);
        for (p, _) in ports {
            if now.get(p) == Some(&true) {
                up.entry(p.as_str()).or_insert_with(|| done.elapsed());
            }
        }
        up.len() == ports.len()
    });
    let pinged = pings.into_iter().map(|h| h.join().unwrap()).collect();
    (up.into_values().collect(), pinged)
}

/// Resident memory (KiB) and CPU time (s) of the daemon of pid file `pf`.
fn usage(pf: &std::path::Path) -> (u64, f64) {
    let pid = std::fs::read_to_string(pf).unwrap().trim().to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss, ticks as f64 / hz)
}

/// Polls `ready` every 20 ms, for at most 30 s.
fn poll(what: &str, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `p`th percentile (nearest rank).
fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[((v.len() * p).div_ceil(100)).clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

const DAEMONS: [&str; 3] = ["ovsdb-server", "ovs-vswitchd", "ovn-controller"];

/// Per daemon: RSS (KiB) and CPU seconds, summed over the chassis; with the largest
/// per-chassis total RSS.
fn footprint(lab: &OvnLab) -> (Vec<(u64, f64)>, u64) {
    let mut sum = vec![(0u64, 0f64); DAEMONS.len()];
    let mut max = 0;
    for c in &lab.chassis {
        let mut total = 0;
        for (k, d) in DAEMONS.iter().enumerate() {
            let (rss, cpu) = usage(&c.dir.join(format!("{d}.pid")));
            sum[k].0 += rss;
            sum[k].1 += cpu;
            total += rss;
        }
        max = max.max(total);
    }
    (sum, max)
}

#[test]
fn every_chassis_reaches_the_reference_vm() {
    if !privileged() || !ovn_present() {
        return;
    }
    let n: usize = std::env::var("KVMNET_CASCADE_CHASSIS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    assert!((2..=200).contains(&n), "KVMNET_CASCADE_CHASSIS: 2 to 200");
    let per: usize = std::env::var("KVMNET_CASCADE_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    assert!(
        per >= 1 && n * per <= 240,
        "KVMNET_CASCADE_VMS: at least 1, at most 240 VMs in all"
    );
    let t = Instant::now();
    let mut lab = OvnLab::start_bare(n);
    for i in 1..=n {
        lab.start_controller(i);
    }
    let started = t.elapsed();
    let guests: Vec<String> = (0..n * per)
        .map(|i| lab.ns.reserve(&format!("cs{i}")))
        .collect();
    let file = SpecFile::new(&spec(&lab, &guests));

    // Chassis by chassis: apply, then the port's latency to `up` in NB and to its first
    // ping of the reference VM (from the second chassis on), across the tunnels.
    let t = Instant::now();
    let (mut to_up, mut to_ping) = (Vec::new(), Vec::new());
    for i in 1..=n {
        let ns = lab.chassis[i - 1].ns.clone();
        let ch = format!("hv{i}");
        let o = lab
            .ns
            .kvmnet(&["apply", file.path(), "--netns", &ns, "--chassis", &ch]);
        assert!(
            o.status.success(),
            "apply on {ch}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let done = Instant::now();
        let mine: Vec<(String, String)> = ((i - 1) * per..i * per)
            .map(|k| (format!("casc{k}"), guests[k].clone()))
            .collect();
        for (_, g) in &mine {
            ok_in(g, "ethtool -K eth0 tx off >/dev/null");
        }
        let (up, pinged) = latencies(&lab, &mine, done, i > 1);
        to_up.extend(up);
        to_ping.extend(pinged);
    }
    let applied = t.elapsed();
    // Every VM reaches the reference VM (c0, on hv1), and the reference VM the last one.
    for g in &guests[1..] {
        wait_ping(g, "10.81.0.10");
    }
    wait_ping(&guests[0], &format!("10.81.0.{}", guests.len() - 1 + 10));
    let reached = t.elapsed();
    let (busy, _) = footprint(&lab);
    std::thread::sleep(Duration::from_secs(5));
    let (idle, max_rss) = footprint(&lab);
    let mut report = format!(
        "cascade: {n} chassis started in {:.1} s, applied on all (one by one, each waited for) in {:.1} s, all pinging after {:.1} s\n\
         port latency after its chassis's apply ({per} per chassis): up in NB median {} p99 {} ({} ports); first ping median {} p99 {} ({} ports)\n",
        started.as_secs_f64(),
        applied.as_secs_f64(),
        reached.as_secs_f64(),
        ms(pct(&mut to_up, 50)),
        ms(pct(&mut to_up, 99)),
        to_up.len(),
        ms(pct(&mut to_ping, 50)),
        ms(pct(&mut to_ping, 99)),
        to_ping.len()
    );
    for (k, d) in DAEMONS.iter().enumerate() {
        let _ = writeln!(
            report,
            "  {d:<15} RSS {:>6} KiB/chassis   CPU {:>5.2} s/chassis so far, idle {:>5.1}% of a core/chassis",
            idle[k].0 / n as u64,
            idle[k].1 / n as f64,
            (idle[k].1 - busy[k].1) / n as f64 / 5.0 * 100.0
        );
    }
    let _ = writeln!(report, "  largest chassis total RSS {max_rss} KiB");
    eprint!("{report}");
    // Both lines of the table hold something: the numbers are read, not assumed.
    assert!(idle.iter().all(|(rss, _)| *rss > 0));
}
