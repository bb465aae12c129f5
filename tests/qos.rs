//! Per-port shaping in both directions (HTB at the port for traffic to the VM, an IFB for
//! traffic from it) measured with iperf3, and mirroring seen by tcpdump on a monitor port.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::Duration;

/// Mbit/s received by an iperf3 server in `server_ns` from a client in `client_ns`.
fn iperf(server_ns: &str, server_ip: &str, client_ns: &str) -> f64 {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 runs");
    std::thread::sleep(Duration::from_millis(500));
    let out = ok_in(client_ns, &format!("iperf3 -c {server_ip} -t 3 -O 1 -J"));
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e6
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn shaping_both_directions_and_mirroring() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("qos");
    let g = ns.reserve("qg");
    let (vm, srv, mon) = (format!("{g}vm"), format!("{g}srv"), format!("{g}mon"));
    ns.names.extend([vm.clone(), srv.clone(), mon.clone()]);
    let text = format!(
        r#"version: 1
networks:
  n: {{ mode: isolated, bridge: q-n, ipv4: 10.65.0.1/24 }}
vms:
  vm:
    ports:
      - network: n
        name: q-vm
        kind: veth
        netns: {vm}
        ipv4: 10.65.0.10
        qos: {{ inbound: {{ rate: 100mbit }}, outbound: {{ rate: 50mbit, burst: 64k }} }}
        mirror: q-mon
  srv: {{ ports: [ {{ network: n, name: q-srv, kind: veth, netns: {srv}, ipv4: 10.65.0.11 }} ] }}
  mon: {{ ports: [ {{ network: n, name: q-mon, kind: veth, netns: {mon}, ipv4: 10.65.0.12 }} ] }}
"#
    );
    let spec = SpecFile::new(&text);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .starts_with("No changes")
    );
    // The IFB carries frames, not host addresses: made without IPv6, and up.
    let ifb = ok(&format!("ip -n {host} -o link show type ifb"));
    let ifb = ifb.split(": ").nth(1).expect("one IFB").trim().to_string();
    assert_eq!(
        ok(&format!(
            "ip netns exec {host} cat /proc/sys/net/ipv6/conf/{ifb}/disable_ipv6"
        ))
        .trim(),
        "1"
    );
    assert!(
        ok(&format!("ip -n {host} link show {ifb}")).contains(",UP"),
        "IFB not up"
    );

    // To the VM at 100 Mbit/s, from it at 50: within 10%.
    // The shaper counts whole frames; iperf3 reports TCP payload: 1448 of every 1514 bytes.
    let wire = |goodput: f64| goodput * 1514.0 / 1448.0;
    let inbound = iperf(&vm, "10.65.0.10", &srv);
    let outbound = iperf(&srv, "10.65.0.11", &vm);
    eprintln!(
        "shaped: inbound {inbound:.1} Mbit/s goodput, {:.1} on the wire (100); outbound {outbound:.1}, {:.1} (50)",
        wire(inbound),
        wire(outbound)
    );
    assert!(
        (90.0..=110.0).contains(&wire(inbound)),
        "inbound {inbound} Mbit/s for 100mbit"
    );
    assert!(
        (45.0..=55.0).contains(&wire(outbound)),
        "outbound {outbound} Mbit/s for 50mbit"
    );

    // Mirror: the monitor sees both directions of the mirrored port's traffic.
    let mut dump = Command::new("ip")
        .args([
            "netns", "exec", &mon, "tcpdump", "-l", "-n", "-i", "eth0", "-c", "6", "icmp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump runs");
    std::thread::sleep(Duration::from_millis(800));
    ok_in(&srv, "ping -c 3 -i 0.2 10.65.0.10");
    let out = {
        std::thread::sleep(Duration::from_millis(500));
        let _ = dump.kill();
        dump.wait_with_output().unwrap()
    };
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("10.65.0.11 > 10.65.0.10: ICMP echo request"),
        "{seen}"
    );
    assert!(
        seen.contains("10.65.0.10 > 10.65.0.11: ICMP echo reply"),
        "{seen}"
    );

    // A hand edit shows as drift and apply repairs it; a new rate is an in-place change.
    ok(&format!(
        "ip netns exec {host} tc class change dev q-vm parent 1: classid 1:1 htb rate 1mbit"
    ));
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(
        plan.contains("~ veth q-vm") && plan.contains("live tc differs"),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .starts_with("No changes")
    );
    let faster = SpecFile::new(&text.replace("rate: 100mbit", "rate: 200mbit"));
    let plan = ns.kvmnet_ok(&["plan", faster.path(), "--netns", &host]);
    assert!(
        plan.contains("~ veth q-vm") && !plan.contains("- veth"),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", faster.path(), "--netns", &host]);
    let class = ok(&format!("ip netns exec {host} tc class show dev q-vm"));
    assert!(class.contains("rate 200Mbit"), "{class}");

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    let left = ok(&format!("ip -n {host} -o link show"));
    assert!(!left.contains("ifb-"), "IFB left behind: {left}");
}
