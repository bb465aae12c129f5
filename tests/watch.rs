//! The daemon plans from what it keeps of the host, kept current by the kernel's change
//! notifications. After every kind of change (kvmnet's own applies, and hand changes to
//! links, addresses, routes, traffic control, kvmnet's nftables tables and foreign objects)
//! what it keeps must equal a whole fresh read, and it must have got there by reading only
//! what changed (no whole read after the first).

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn spec_text(extra: bool) -> String {
    let mut s = String::from(
        "version: 1
networks:
  n: { mode: nat, bridge: w-br, ipv4: 10.93.0.1/24, bandwidth: 200mbit }
vms:
  a:
    ports:
      - network: n
        name: w-a
        ipv4: 10.93.0.2
        firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22] } ] } }
        qos: { inbound: { rate: 50mbit }, outbound: { rate: 20mbit } }
  b: { ports: [ { network: n, name: w-b, ipv4: 10.93.0.3, qos: { floor: 30mbit } } ] }
  m: { ports: [ { network: n, name: w-m, antispoof: false } ] }
  c: { ports: [ { network: n, name: w-c, ipv4: 10.93.0.4, mirror: w-m } ] }
",
    );
    if extra {
        s.push_str(
            "  d: { ports: [ { network: n, name: w-d, ipv4: 10.93.0.5, qos: { inbound: { rate: 10mbit }, floor: 10mbit } } ] }\n",
        );
    }
    s
}

/// The daemon's own comparison of its cache with a whole fresh read.
fn check(sock: &std::path::Path, what: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).expect("daemon socket");
    write!(
        s,
        "GET /v1/debug/watch HTTP/1.1\r\nHost: kvmnet\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split_once("\r\n\r\n").expect("HTTP answer").1;
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(
        v["consistent"], true,
        "after {what}, the cache differs from the host: {v}"
    );
    v
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn cache_follows_every_kind_of_change() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("wch");
    let spec = SpecFile::new(&spec_text(false));
    // Foreign objects the daemon must see (and leave alone).
    ok(&format!("ip -n {host} link add w-foreign type bridge"));
    let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec.path(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        // Repairs race the checks on purpose; no timed whole read within the test.
        .env("KVMNET_RECONCILE_MS", "300")
        .env("KVMNET_RESYNC_MS", "3600000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _d = Daemon(child);
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    check(&sock, "start");

    let spec2 = SpecFile::new(&spec_text(true));
    let steps: Vec<(&str, String)> = vec![
        ("an apply adding a port", String::new()),
        (
            "an nft element deleted",
            format!(
                "ip netns exec {host} nft delete element bridge kvmnet guarded '{{ \"w-b\" }}'"
            ),
        ),
        (
            "an nft chain flushed",
            // The chain of w-a's policy (shared by the ports that have it).
            format!(
                "ip netns exec {host} nft flush chain inet kvmnet $(ip netns exec {host} nft list map inet kvmnet in_policy4 | grep -o 'fw-in-[0-9a-f]*' | head -1)"
            ),
        ),
        (
            "an nft set flushed",
            format!("ip netns exec {host} nft flush set bridge kvmnet guarded"),
        ),
        (
            "a foreign nft table",
            format!(
                "ip netns exec {host} nft add table inet w-other; ip netns exec {host} nft add chain inet w-other c"
            ),
        ),
        (
            "a port's root qdisc deleted",
            format!("ip netns exec {host} tc qdisc del dev w-a root"),
        ),
        (
            "a port's ingress hook deleted",
            format!(
                "ip netns exec {host} tc qdisc del dev w-a clsact 2>/dev/null || ip netns exec {host} tc qdisc del dev w-a ingress"
            ),
        ),
        (
            "the bridge's shaping tree deleted",
            format!("ip netns exec {host} tc qdisc del dev w-br root"),
        ),
        (
            "the mirror target deleted",
            format!("ip -n {host} link del w-m"),
        ),
        ("a port set down", format!("ip -n {host} link set w-b down")),
        (
            "bridge port isolation flipped",
            format!("ip -n {host} link set dev w-c type bridge_slave isolated on"),
        ),
        (
            "an MTU changed",
            format!("ip -n {host} link set w-c mtu 1400"),
        ),
        (
            "an address added",
            format!("ip -n {host} addr add 10.93.7.1/32 dev w-br"),
        ),
        (
            "a route added",
            format!("ip -n {host} route add 10.93.8.0/24 dev w-br"),
        ),
        (
            "a foreign link renamed",
            format!("ip -n {host} link set w-foreign name w-foreign2"),
        ),
        ("an apply removing a port", String::new()),
    ];
    let mut last = 0;
    for (what, cmd) in &steps {
        match *what {
            "an apply adding a port" => {
                ns.kvmnet_ok(&["apply", spec2.path(), "--netns", &host]);
            }
            "an apply removing a port" => {
                ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
            }
            _ => {
                ok(cmd);
            }
        }
        let v = check(&sock, what);
        assert_eq!(
            v["whole_reads"], 1,
            "after {what}: read the host whole again: {v}"
        );
        let partial = v["partial_reads"].as_u64().unwrap();
        assert!(partial > last, "after {what}: nothing was read again: {v}");
        last = partial;
        // Let the daemon repair what the step broke, and check again after the repair.
        std::thread::sleep(Duration::from_millis(700));
        check(&sock, &format!("the repair after {what}"));
    }
    // Everything was repaired from the cache's view of the host.
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(
        plan.contains("No changes"),
        "the daemon left drift behind: {plan}"
    );
    assert!(
        ok_in(&host, "nft list tables").contains("w-other"),
        "a foreign table was touched"
    );
    assert!(
        ok_in(&host, "ip link show w-foreign2").contains("w-foreign2"),
        "a foreign link was touched"
    );
}
