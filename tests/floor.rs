//! A network's `bandwidth` and its VMs' `qos.floor`: the host's traffic into the network is
//! capped at the bandwidth, a VM with a floor keeps its share against a busy neighbour, a VM
//! alone borrows up to the whole bandwidth, and adding a floor leaves the others' classes be.

mod common;
use common::*;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An iperf3 server for one test in `ns`.
fn server(ns: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 runs")
}

/// Mbit/s on the wire (TCP payload scaled to whole frames) that `client_ns` got through to
/// each of `servers` (namespace, address), all sending at once.
fn concurrent(client_ns: &str, servers: &[(&str, &str)]) -> Vec<f64> {
    let mut srv: Vec<Child> = servers.iter().map(|(ns, _)| server(ns)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let clients: Vec<_> = servers
        .iter()
        .map(|(_, ip)| {
            let cmd = format!("iperf3 -c {ip} -t 4 -O 1 -J");
            let ns = client_ns.to_string();
            std::thread::spawn(move || ok_in(&ns, &cmd))
        })
        .collect();
    let rates = clients
        .into_iter()
        .map(|c| {
            let out = c.join().expect("client thread");
            let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
            let goodput = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .unwrap()
                / 1e6;
            goodput * 1514.0 / 1448.0
        })
        .collect();
    for s in &mut srv {
        let _ = s.wait();
    }
    rates
}

fn spec(a: &str, b: &str, c_floor: Option<&str>, bandwidth: Option<&str>) -> String {
    let bw = bandwidth.map_or(String::new(), |b| format!(", bandwidth: {b}"));
    let c_qos = c_floor.map_or(String::new(), |f| format!(", qos: {{ floor: {f} }}"));
    format!(
        r#"version: 1
networks:
  n: {{ mode: isolated, bridge: f-n, ipv4: 10.66.0.1/24{bw} }}
vms:
  a: {{ ports: [ {{ network: n, name: f-a, kind: veth, netns: {a}, ipv4: 10.66.0.10, mac: "52:54:00:66:00:10", qos: {{ floor: 70mbit }} }} ] }}
  b: {{ ports: [ {{ network: n, name: f-b, kind: veth, netns: {b}, ipv4: 10.66.0.11, mac: "52:54:00:66:00:11" }} ] }}
  c: {{ ports: [ {{ network: n, name: f-c, kind: veth, netns: {a}c, ipv4: 10.66.0.12, mac: "52:54:00:66:00:12"{c_qos} }} ] }}
"#
    )
}

/// `tc -s class show dev f-n`, one line per class: "1:10 parent 1:1 ... Sent N bytes".
fn classes(host: &str) -> Vec<String> {
    let out = ok_in(host, "tc -s class show dev f-n");
    let mut lines = Vec::new();
    let mut cur = String::new();
    for l in out.lines() {
        if l.starts_with("class ") {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            cur = l.to_string();
        } else if let Some(sent) = l.trim().strip_prefix("Sent ") {
            cur.push_str(&format!(" Sent {}", sent.split(' ').next().unwrap_or("")));
        }
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

fn sent(classes: &[String], id: &str) -> u64 {
    let line = classes
        .iter()
        .find(|l| l.starts_with(&format!("class htb {id} ")))
        .unwrap_or_else(|| panic!("no class {id} in {classes:#?}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn floors_guarantee_shares_of_the_network_bandwidth() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("flr");
    let g = ns.reserve("fg");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone(), format!("{a}c")]);
    let text = spec(&a, &b, None, Some("100mbit"));
    let file = SpecFile::new(&text);
    ns.kvmnet_ok(&["apply", file.path(), "--netns", &host]);
    assert!(
        ns.kvmnet_ok(&["plan", file.path(), "--netns", &host])
            .starts_with("No changes")
    );

    // Both VMs pull as hard as they can: a keeps its 70, b gets what is left.
    let both = concurrent(&host, &[(&a, "10.66.0.10"), (&b, "10.66.0.11")]);
    eprintln!(
        "bandwidth 100mbit, a floor 70mbit, b none: a {:.1}, b {:.1} Mbit/s",
        both[0], both[1]
    );
    assert!(
        both[0] >= 63.0,
        "a got {:.1} Mbit/s with a 70mbit floor",
        both[0]
    );
    assert!(both[1] >= 15.0, "b got {:.1} Mbit/s: starved", both[1]);
    assert!(
        both[0] + both[1] <= 110.0,
        "together {:.1} Mbit/s, over the 100mbit bandwidth",
        both[0] + both[1]
    );
    // Alone, b borrows up to the whole bandwidth, and no more.
    let alone = concurrent(&host, &[(&b, "10.66.0.11")]);
    eprintln!("b alone: {:.1} Mbit/s", alone[0]);
    assert!(
        (88.0..=110.0).contains(&alone[0]),
        "b alone got {:.1} Mbit/s of 100",
        alone[0]
    );

    // Drift: a's classifier removed by hand is noticed and put back.
    ok_in(&host, "tc filter del dev f-n parent 1: prio 16");
    let plan = ns.kvmnet_ok(&["plan", file.path(), "--netns", &host]);
    assert!(plan.contains("~ shaping f-n"), "{plan}");
    ns.kvmnet_ok(&["apply", file.path(), "--netns", &host]);
    assert!(
        ns.kvmnet_ok(&["plan", file.path(), "--netns", &host])
            .starts_with("No changes")
    );
    let filters = ok_in(&host, "tc filter show dev f-n");
    assert!(filters.contains("flowid 1:10"), "{filters}");

    // A new floor adds its own class; a's class is left as it was (its counters keep
    // counting: a class made again would start from zero).
    let before = classes(&host);
    let a_sent = sent(&before, "1:10");
    assert!(a_sent > 0, "{before:#?}");
    let text = spec(&a, &b, Some("20mbit"), Some("100mbit"));
    let file = SpecFile::new(&text);
    let plan = ns.kvmnet_ok(&["plan", file.path(), "--netns", &host]);
    assert!(plan.contains("52:54:00:66:00:12 20mbit (1:11)"), "{plan}");
    ns.kvmnet_ok(&["apply", file.path(), "--netns", &host]);
    let after = classes(&host);
    assert!(sent(&after, "1:10") >= a_sent, "{before:#?}\n{after:#?}");
    assert!(
        after
            .iter()
            .any(|l| l.contains("class htb 1:11 parent 1:1")),
        "{after:#?}"
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains("class htb 1:2 parent 1:1") && l.contains("rate 10Mbit")),
        "the default class keeps what the floors leave: {after:#?}"
    );

    // Without a bandwidth, the bridge goes back to no queue at all.
    let text = spec(&a, &b, None, None);
    let bad = SpecFile::new(&text);
    let out = ns.kvmnet(&["plan", bad.path(), "--netns", &host]);
    assert_eq!(out.status.code(), Some(2), "a floor without a bandwidth");
    let text = text.replace(", qos: { floor: 70mbit }", "");
    let file = SpecFile::new(&text);
    ns.kvmnet_ok(&["apply", file.path(), "--netns", &host]);
    let qdisc = ok_in(&host, "tc qdisc show dev f-n");
    assert!(qdisc.contains("noqueue"), "{qdisc}");
    assert!(
        ns.kvmnet_ok(&["plan", file.path(), "--netns", &host])
            .starts_with("No changes")
    );
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
