//! Metrics: a real Prometheus scrapes the daemon's read-only listener, `promtool` checks the
//! exposition and the alerting rules, and a guard drop caused on purpose shows in
//! `kvmnet_guard_drops_total`. Everything runs inside namespaces the test makes: the daemon,
//! its listener and Prometheus in the scope's namespace, the guests in their own.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const A_MAC: &str = "52:54:00:73:00:0a";
const B_MAC: &str = "52:54:00:73:00:0b";
const LISTEN: &str = "127.0.0.1:9465";
const PROMETHEUS: &str = "127.0.0.1:9466";

/// A process killed (and reaped) when dropped, test passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

/// The value of the sample whose name and labels start as `series` (`name{a="b",...`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A temporary directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec(a: &str, b: &str) -> SpecFile {
    SpecFile::new(&format!(
        r#"version: 1
networks:
  mlab:
    mode: nat
    bridge: m-lab
    ipv4: 10.73.0.1/24
    dhcp: {{ range: 10.73.0.100-10.73.0.199 }}
vms:
  a: {{ ports: [ {{ network: mlab, name: m-a, kind: veth, netns: {a}, mac: "{A_MAC}", ipv4: 10.73.0.10, firewall: {{ inbound: {FW} }} }} ] }}
  b:
    ports:
      - network: mlab
        name: m-b
        kind: veth
        netns: {b}
        mac: "{B_MAC}"
        ipv4: 10.73.0.11
        qos: {{ inbound: {{ rate: 10mbit }} }}
        firewall: {{ inbound: {FW} }}
"#
    ))
}

/// The inbound policy of both ports: one chain, shared (no rule keeps per-port state).
const FW: &str = "{ policy: drop, rules: [ { proto: icmp } ] }";

/// The daemon started in the scope's namespace `host`, so that its listener is bound there
/// too. With nsenter, not `ip netns exec`: that would also give it a mount namespace of its
/// own, where the guest namespaces it makes would not be seen by anyone else.
fn daemon(ns: &Namespaces, spec: &str, host: &str) -> Daemon {
    daemon_reconciling(ns, spec, host, "300")
}

/// [`daemon`], reconciling every `ms` milliseconds.
fn daemon_reconciling(ns: &Namespaces, spec: &str, host: &str, ms: &str) -> Daemon {
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{host}"))
        .arg(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec, "--netns", host])
        .args(["--metrics-listen", LISTEN])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_RECONCILE_MS", ms)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    wait_until("the daemon's API socket", 15, || sock.exists());
    Daemon(child)
}

fn scrape(host: &str, path: &str) -> String {
    ok_in(host, &format!("curl -sSf http://{LISTEN}{path}"))
}

/// A real Prometheus in `host`, scraping the listener every second; its data in `dir`.
fn prometheus(host: &str, dir: &TempDir) -> Killed {
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n  - job_name: kvmnet\n    static_configs: [ {{ targets: ['{LISTEN}'] }} ]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", host, "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.0.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus runs (Debian package prometheus)");
    Killed(child)
}

/// What Prometheus's query API answers for `query`.
fn query(host: &str, query: &str) -> serde_json::Value {
    let o = in_ns(
        host,
        &format!("curl -sS -G http://{PROMETHEUS}/api/v1/query --data-urlencode 'query={query}'"),
    );
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Firewall drops on b show on b only, though a has the same policy and so the same chain:
/// the host tries a port b's inbound policy drops (routed to b, so counted by b's address),
/// then a does over the bridge (counted by b's mark).
fn firewall_counted_per_port(host: &str, a: &str) {
    let a_port = "network=\"mlab\",vm=\"a\",port=\"m-a\",direction=\"inbound\"";
    let b_port = "network=\"mlab\",vm=\"b\",port=\"m-b\",direction=\"inbound\"";
    let read = |family: &str, labels: &str| {
        let text = scrape(host, "/metrics");
        sample(&text, &format!("{family}{{{labels}}}"))
            .unwrap_or_else(|| panic!("no {family}{{{labels}}}:\n{text}"))
    };
    let drops = |labels: &str| read("kvmnet_firewall_drops_total", labels);
    let _ = in_ns(host, "timeout 2 bash -c \"echo > /dev/tcp/10.73.0.11/80\"");
    let routed = drops(b_port);
    // A SYN and at least one retransmission.
    assert!(routed >= 2.0, "{routed} firewall drops on b, routed");
    let _ = in_ns(a, "timeout 2 bash -c \"echo > /dev/tcp/10.73.0.11/81\"");
    let bridged = drops(b_port);
    assert!(
        bridged >= routed + 2.0,
        "{bridged} drops on b after a's, {routed} before"
    );
    assert_eq!(
        drops(a_port),
        0.0,
        "a shares b's policy chain but dropped nothing"
    );
    assert_eq!(read("kvmnet_firewall_rejects_total", b_port), 0.0);
    let text = scrape(host, "/metrics");
    let policy = text
        .lines()
        .find(|l| l.starts_with("kvmnet_firewall_policy_drops_total{policy=\"fw-in-"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        policy.is_some_and(|p| p >= 4.0),
        "the shared chain counts what b dropped:\n{text}"
    );
}

/// A real Prometheus sees the firewall's drops per port: b's, and none on a that shares its
/// policy.
fn prometheus_sees_firewall_drops(host: &str) {
    let fw = |port: &str| {
        let q = format!("kvmnet_firewall_drops_total{{port=\"{port}\",direction=\"inbound\"}}");
        query(host, &q)["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
    };
    wait_until("Prometheus to scrape b's firewall drops", 30, || {
        fw("m-b").is_some_and(|n| n >= 4.0)
    });
    assert_eq!(fw("m-a"), Some(0.0));
}

#[test]
fn prometheus_scrapes_guard_drops_port_counters_and_dhcp() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("mh");
    let g = ns.reserve("mg");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone()]);
    let spec = spec(&a, &b);
    let _daemon = daemon(&ns, spec.path(), &host);
    wait_until("the guest's link to the gateway", 15, || {
        pings(&a, "10.73.0.1")
    });

    // A guard drop on purpose: the guest sends from an address that is not its own.
    ok_in(
        &a,
        "ip addr add 10.73.0.99/24 dev eth0 && for i in 1 2 3; do ping -c 1 -W 1 -I 10.73.0.99 10.73.0.1; done; true",
    );
    firewall_counted_per_port(&host, &a);
    // DHCP: a discover from the guest (no lease is kept: the guest has a static address).
    let _ = in_ns(&a, "timeout 5 busybox udhcpc -i eth0 -n -q -s /bin/true");

    let text = scrape(&host, "/metrics");
    let dir = TempDir::new("metrics");
    let file = dir.0.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    ok(&format!("promtool check metrics < {}", file.display()));

    // Labels come in this order: network, vm, port, then the family's own.
    let a_port = "network=\"mlab\",vm=\"a\",port=\"m-a\"";
    let b_port = "network=\"mlab\",vm=\"b\",port=\"m-b\"";
    let drops = format!("kvmnet_guard_drops_total{{{a_port},reason=\"ip\"}}");
    assert!(
        sample(&text, &drops).is_some_and(|v| v >= 1.0),
        "no guard drops by reason ip:\n{text}"
    );
    let mac = drops.replace("\"ip\"", "\"mac\"");
    assert_eq!(sample(&text, &mac), Some(0.0), "{text}");
    let counter = |family: &str, labels: &str| {
        sample(&text, &format!("{family}{{{labels}}}"))
            .unwrap_or_else(|| panic!("no {family}{{{labels}}}:\n{text}"))
    };
    let bytes = counter("kvmnet_port_receive_bytes_total", a_port);
    let packets = counter("kvmnet_port_receive_packets_total", a_port);
    assert!(packets >= 4.0, "pings were sent: {packets} packets");
    assert!(
        bytes >= packets * 42.0 && bytes <= packets * 1600.0,
        "{bytes} bytes for {packets} packets"
    );
    let inbound = |l: &str| format!("{l},direction=\"inbound\"");
    counter("kvmnet_shaping_drops_total", &inbound(b_port));
    counter("kvmnet_shaping_overlimits_total", &inbound(b_port));
    assert_eq!(
        sample(&text, "kvmnet_dhcp_pool_addresses{network=\"mlab\"}"),
        Some(100.0)
    );
    assert!(
        sample(
            &text,
            "kvmnet_dhcp_requests_total{network=\"mlab\",type=\"discover\"}"
        )
        .is_some_and(|v| v >= 1.0),
        "{text}"
    );
    assert!(sample(&text, "kvmnet_applies_total").is_some_and(|v| v >= 1.0));
    assert!(text.contains("kvmnet_build_info{version="), "{text}");
    assert!(
        text.contains("kvmnet_reconcile_duration_seconds_bucket"),
        "{text}"
    );

    // The same series on the API socket.
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    let api = ok(&format!(
        "curl -sSf --unix-socket {} http://kvmnet/metrics",
        sock.display()
    ));
    assert!(api.contains("kvmnet_guard_drops_total{"), "{api}");

    // The listener is read-only and serves nothing of the control API.
    let status = |args: &str| {
        ok_in(
            &host,
            &format!("curl -s -o /dev/null -w '%{{http_code}}' {args}"),
        )
    };
    assert_eq!(status(&format!("-X POST http://{LISTEN}/metrics")), "405");
    assert_eq!(status(&format!("http://{LISTEN}/v1/status")), "404");
    assert_eq!(
        status(&format!("-X POST -d '{{}}' http://{LISTEN}/v1/apply")),
        "404"
    );
    assert!(scrape(&host, "/").contains("/metrics"));

    // A real Prometheus sees the guard drops.
    let _prometheus = prometheus(&host, &dir);
    let q = "kvmnet_guard_drops_total{port=\"m-a\",reason=\"ip\"}";
    wait_until("Prometheus to scrape the guard drops", 60, || {
        let v = query(&host, q);
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(|n| n >= 3.0)
    });
    prometheus_sees_firewall_drops(&host);
    let up = query(&host, "up{job=\"kvmnet\"}");
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
}

#[test]
fn the_contrib_alerts_and_dashboard_are_well_formed() {
    let rules = manifest_dir().join("contrib/prometheus-alerts.yml");
    ok(&format!("promtool check rules {}", rules.display()));
    let text = std::fs::read_to_string(manifest_dir().join("contrib/grafana-dashboard.json"))
        .expect("the dashboard");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.iter().any(|p| p["type"] == "heatmap"));
    for p in panels {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().unwrap_or("");
            assert!(
                e.contains("kvmnet_"),
                "a panel's query is not kvmnet's: {e}"
            );
        }
    }
}

/// What a scrape costs at 1,000 guarded, firewalled (a tenth with chains of their own) and
/// shaped ports, with the DHCP server running: a measurement, not a test, so it asserts
/// nothing about time. Run it with
/// `cargo test --release --test metrics -- --ignored --nocapture scrape_cost`.
#[test]
#[ignore]
fn scrape_cost_at_1000_ports() {
    if !privileged() {
        return;
    }
    use std::fmt::Write as _;
    let mut ns = Namespaces::new();
    let host = ns.add("ms");
    let mut text = String::from(
        "version: 1\nnetworks:\n  n: { mode: nat, bridge: ms-n, ipv4: 10.161.0.1/16, dhcp: { range: 10.161.200.1-10.161.250.250 } }\nvms:\n",
    );
    let q = "qos: { inbound: { rate: 5gbit }, outbound: { rate: 5gbit } }";
    for i in 0..1000 {
        let log = if i % 10 == 0 { ", log: true" } else { "" };
        let _ = writeln!(
            text,
            "  o{i}: {{ ports: [ {{ network: n, name: mso{i}, ipv4: 10.161.{}.{}, firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: tcp, ports: [22]{log} }} ] }} }}, {q} }} ] }}",
            1 + i / 250,
            2 + i % 250
        );
    }
    let spec = SpecFile::new(&text);
    // No reconcile during the scrapes: at 1,000 ports it would compete for the CPU.
    let daemon = daemon_reconciling(&ns, spec.path(), &host, "600000");
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", daemon.0.id())).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // utime and stime, fields 14 and 15 (the 12th and 13th after the name), in ticks.
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks * 1000.0 / 100.0
    };
    let cpu_before = cpu();
    let (times, size) = timed_scrapes(&host, LISTEN);
    let cpu_ms = (cpu() - cpu_before) / 21.0;
    let lines = scrape(&host, "/metrics").lines().count();
    eprintln!(
        "scrape at 1,000 ports: median {:.1} ms, min {:.1} ms, max {:.1} ms, daemon CPU {cpu_ms:.1} ms a scrape (user and kernel, all threads; {size} bytes, {lines} lines, 21 scrapes)",
        times[10], times[0], times[20]
    );
    node_exporter_reference(&host);
}

/// 21 scrapes of `http://ADDR/metrics` from inside `host`: the sorted wall times (ms) and
/// the size of the last.
fn timed_scrapes(host: &str, addr: &str) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..21 {
        let out = ok_in(
            host,
            &format!(
                "curl -sSf -o /dev/null -w '%{{time_total}} %{{size_download}}' http://{addr}/metrics"
            ),
        );
        let mut w = out.split(' ');
        times.push(w.next().unwrap().parse::<f64>().unwrap() * 1e3);
        size = w.next().unwrap().parse::<usize>().unwrap();
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (times, size)
}

/// The reference: node_exporter (Debian's prometheus-node-exporter) scraping the same
/// namespace's interfaces (its netdev and netclass collectors only), timed the same way.
fn node_exporter_reference(host: &str) {
    if sh("command -v prometheus-node-exporter").status.code() != Some(0) {
        eprintln!("node_exporter reference: prometheus-node-exporter is not installed");
        return;
    }
    const NE: &str = "127.0.0.1:9109";
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", host, "prometheus-node-exporter"])
        .args([
            &format!("--web.listen-address={NE}"),
            "--collector.disable-defaults",
        ])
        .args(["--collector.netdev", "--collector.netclass"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _ne = Daemon(child);
    let up = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        in_ns(host, &format!("curl -sf -o /dev/null http://{NE}/metrics"))
            .status
            .success()
    });
    assert!(up, "node_exporter did not start");
    let (times, size) = timed_scrapes(host, NE);
    eprintln!(
        "node_exporter (netdev and netclass) on the same interfaces: median {:.1} ms, min {:.1} ms, max {:.1} ms ({size} bytes, 21 scrapes)",
        times[10], times[0], times[20]
    );
}
