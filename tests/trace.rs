//! `kvmnet trace` against real traffic: for a matrix of sources, destinations and protocols,
//! the verdict (and the stage that decides it) the trace prints is what a real ping, TCP
//! connect or UDP echo meets, and `--live` reads the same verdict from the kernel. The
//! matrix stops packets at every stage and lets others through; an interrupt during
//! `--live` leaves no trace table behind.

mod common;
use common::*;

use std::process::{Child, Command};

/// Listeners that are killed when dropped, test passed or not.
struct Listeners(Vec<Child>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Accepts TCP on `tcp` and echoes UDP on `udp` in `ns`, for a minute at most.
fn listen(ns: &str, tcp: &[u16], udp: &[u16]) -> Child {
    let script = format!(
        "import socket,select,time\nls=[]\nfor p in {tcp:?}:\n  s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',p)); s.listen(16); ls.append(s)\nfor p in {udp:?}:\n  s=socket.socket(2,2); s.bind(('0.0.0.0',p)); ls.append(s)\nend=time.time()+60\nwhile time.time()<end:\n  r,_,_=select.select(ls,[],[],0.2)\n  for s in r:\n    if s.type==socket.SOCK_STREAM:\n      c,a=s.accept(); c.close()\n    else:\n      d,a=s.recvfrom(100); s.sendto(d,a)\n"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .spawn()
        .unwrap()
}

/// What real traffic from `ns` to `ip` meets: `accept` (answered), `reject` (refused at once:
/// TCP only) or `drop` (nothing came back; for ICMP and UDP also a reject).
fn real(ns: &str, ip: &str, proto: &str) -> &'static str {
    let script = match proto.split_once('/') {
        None => {
            let ok = in_ns(ns, &format!("ping -c1 -W1 {ip} >/dev/null 2>&1"))
                .status
                .success();
            return if ok { "accept" } else { "drop" };
        }
        Some(("tcp", port)) => format!(
            "import socket\ns=socket.socket(); s.settimeout(1.5)\ntry:\n  s.connect(('{ip}',{port})); print('accept')\nexcept socket.timeout:\n  print('drop')\nexcept OSError:\n  print('reject')\n"
        ),
        Some((_, port)) => format!(
            "import socket\ns=socket.socket(2,2); s.settimeout(1.5); s.sendto(b'x',('{ip}',{port}))\ntry:\n  s.recvfrom(100); print('accept')\nexcept OSError:\n  print('drop')\n"
        ),
    };
    let out = ok_in(ns, &format!("python3 -c \"{script}\""));
    match out.trim() {
        "accept" => "accept",
        "reject" => "reject",
        _ => "drop",
    }
}

/// One case: from VM, trace's DEST, the address real traffic goes to, protocol, the verdict
/// and the stage that decides it (`arrive` when it gets there).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const CASES: &[Case] = &[
    // Neighbours on a nat network.
    ("a", "b", "10.95.0.11", "icmp", "accept", "arrive"),
    ("a", "b", "10.95.0.11", "tcp/22", "accept", "arrive"),
    ("a", "b", "10.95.0.11", "tcp/23", "drop", "firewall-in"),
    ("a", "b", "10.95.0.11", "tcp/25", "reject", "firewall-out"),
    ("a", "b", "10.95.0.11", "udp/68", "drop", "guard"),
    ("a", "10.95.0.99", "10.95.0.99", "icmp", "drop", "routing"),
    // Isolated ports, an isolated network.
    ("c", "d", "10.97.0.11", "icmp", "drop", "isolate-ports"),
    (
        "c",
        "198.51.100.2",
        "198.51.100.2",
        "icmp",
        "reject",
        "leaving",
    ),
    ("a", "c", "10.97.0.10", "icmp", "reject", "entering"),
    // Out of the host, masqueraded or routed.
    (
        "a",
        "198.51.100.2",
        "198.51.100.2",
        "tcp/80",
        "accept",
        "arrive",
    ),
    (
        "r",
        "198.51.100.2",
        "198.51.100.2",
        "udp/5300",
        "accept",
        "arrive",
    ),
    // Between networks: nat -> routed passes, routed -> nat only for a forward; the
    // destination's inbound firewall comes before the networks' checks.
    ("a", "r", "10.96.0.10", "icmp", "accept", "arrive"),
    ("r", "a", "10.95.0.10", "icmp", "reject", "entering"),
    ("r", "b", "10.95.0.11", "udp/53", "reject", "firewall-in"),
    ("r", "b", "10.95.0.11", "icmp", "reject", "entering"),
    // The host.
    ("a", "host", "10.95.0.1", "icmp", "accept", "arrive"),
    ("a", "10.97.0.1", "10.97.0.1", "icmp", "drop", "host-access"),
    ("a", "host", "10.95.0.1", "tcp/53", "accept", "arrive"),
    ("b", "host", "10.95.0.1", "tcp/25", "reject", "host-access"),
    ("b", "host", "10.95.0.1", "tcp/26", "drop", "host-access"),
    // A port forward, from another network and from an isolated one.
    ("r", "host", "10.96.0.1", "tcp/2222", "accept", "arrive"),
    ("c", "host", "10.97.0.1", "tcp/2222", "reject", "leaving"),
    // A forward back onto the network it comes from (hairpin), and an isolated guest's
    // gateway.
    ("a", "host", "10.95.0.1", "tcp/2222", "accept", "arrive"),
    ("c", "host", "10.97.0.1", "icmp", "accept", "arrive"),
];

fn spec(g: &str) -> String {
    format!(
        r#"version: 1
networks:
  lan:
    mode: nat
    bridge: q-lan
    ipv4: 10.95.0.1/24
    forwards: [ {{ proto: tcp, port: 2222, to: b, to_port: 22 }} ]
    host_access:
      - {{ proto: tcp, ports: [53] }}
      - {{ proto: tcp, ports: [25], action: reject }}
  rt: {{ mode: routed, bridge: q-rt, ipv4: 10.96.0.1/24 }}
  iso: {{ mode: isolated, bridge: q-iso, ipv4: 10.97.0.1/24, isolate_ports: true }}
vms:
  a:
    ports:
      - network: lan
        name: q-a
        kind: veth
        netns: {g}a
        ipv4: 10.95.0.10
        firewall:
          outbound:
            rules:
              - {{ proto: tcp, ports: [25], action: reject }}
  b:
    ports:
      - network: lan
        name: q-b
        kind: veth
        netns: {g}b
        ipv4: 10.95.0.11
        firewall:
          inbound:
            policy: drop
            rules:
              - {{ proto: tcp, ports: [22] }}
              - {{ proto: icmp, icmp_types: [echo-request] }}
              - {{ proto: udp, ports: [53], from: 10.96.0.0/24, action: reject }}
  r: {{ ports: [ {{ network: rt, name: q-r, kind: veth, netns: {g}r, ipv4: 10.96.0.10 }} ] }}
  c: {{ ports: [ {{ network: iso, name: q-c, kind: veth, netns: {g}c, ipv4: 10.97.0.10 }} ] }}
  d: {{ ports: [ {{ network: iso, name: q-d, kind: veth, netns: {g}d, ipv4: 10.97.0.11 }} ] }}
  t: {{ ports: [ {{ network: lan, name: q-t, ipv4: 10.95.0.20 }} ] }}
"#
    )
}

fn trace_json(ns: &Namespaces, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let o = ns.kvmnet(args);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "kvmnet {args:?}: no JSON\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// One case of the matrix: the trace's verdict and stage, its exit status, real traffic
/// and `--live`. Returns what disagreed.
fn check(ns: &Namespaces, host: &str, g: &str, case: &Case) -> Vec<String> {
    let &(from, dest, ip, proto, verdict, stage) = case;
    let name = format!("{from} -> {dest} {proto}");
    let mut failures = Vec::new();
    let (code, v) = trace_json(ns, &["trace", from, dest, proto, "--netns", host, "--json"]);
    let stopped = v["stopped_at"].as_str().unwrap_or("arrive");
    if (v["verdict"].as_str(), stopped) != (Some(verdict), stage) {
        failures.push(format!(
            "{name}: trace says {} at {stopped}, expected {verdict} at {stage}",
            v["verdict"]
        ));
    }
    let want_code = if verdict == "accept" { 0 } else { 1 };
    if code != Some(want_code) {
        failures.push(format!("{name}: exit {code:?}, expected {want_code}"));
    }
    // Real traffic: ICMP and UDP see a reject as silence.
    let seen = real(&format!("{g}{from}"), ip, proto);
    let expect_seen = match (verdict, proto.starts_with("tcp")) {
        ("reject", false) => "drop",
        (v, _) => v,
    };
    if seen != expect_seen {
        failures.push(format!(
            "{name}: real traffic met {seen}, trace says {verdict}"
        ));
    }
    let live = [
        "trace", from, dest, proto, "--netns", host, "--json", "--live",
    ];
    let (code, v) = trace_json(ns, &live);
    if v["live"]["agree"] != serde_json::json!(true) || code != Some(want_code) {
        failures.push(format!(
            "{name}: --live (exit {code:?}): {}",
            v["live"]["summary"]
        ));
    }
    failures
}

/// An interrupt while the probe is out ends the command once its table is gone.
fn interrupt_during_live(ns: &Namespaces, host: &str) {
    let mut live = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["trace", "a", "b", "--netns", host, "--live"])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let during = ok(&format!("ip netns exec {host} nft list tables"));
    ok(&format!("kill -INT {}", live.id()));
    let status = live.wait().unwrap();
    assert!(
        during.contains("kvmnet-trace"),
        "no trace table while probing: {during}"
    );
    assert!(!status.success(), "the interrupt was lost: {status:?}");
    // Nothing of the trace is left: kvmnet's two tables, no trace table.
    let tables = ok(&format!("ip netns exec {host} nft list tables"));
    assert_eq!(tables.lines().count(), 2, "{tables}");
    assert!(!tables.contains("kvmnet-trace"), "{tables}");
}

#[test]
fn trace_agrees_with_real_traffic_and_the_kernel() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("qh");
    let wan = ns.add("qw");
    let g = ns.reserve("q");
    for v in ["a", "b", "r", "c", "d"] {
        ns.names.push(format!("{g}{v}"));
    }
    ok(&format!(
        "ip -n {host} link add wan0 type veth peer name eth0 netns {wan} && ip -n {host} addr add 198.51.100.1/24 dev wan0 && ip -n {host} link set wan0 up && ip -n {wan} addr add 198.51.100.2/24 dev eth0 && ip -n {wan} link set eth0 up && ip -n {wan} route add 10.96.0.0/24 via 198.51.100.1"
    ));
    let s = SpecFile::new(&spec(&g));
    ns.kvmnet_ok(&["apply", s.path(), "--netns", &host]);
    let _listeners = Listeners(vec![
        listen(&format!("{g}b"), &[22], &[53, 68]),
        listen(&host, &[53, 26], &[]),
        listen(&wan, &[80], &[5300]),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let failures: Vec<String> = CASES
        .iter()
        .flat_map(|c| check(&ns, &host, &g, c))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The text form names each hop's rule and spec line; --spec traces a file.
    let args = [
        "trace",
        "a",
        "b",
        "tcp/22",
        "--spec",
        s.path(),
        "--netns",
        &host,
    ];
    let text = ns.kvmnet_ok(&args);
    let fw_in = text.lines().find(|l| l.starts_with("firewall-in")).unwrap();
    assert!(fw_in.contains("tcp dport { 22 } counter return"), "{text}");
    assert!(fw_in.ends_with(&format!("({}:36:17)", s.path())), "{text}");
    assert!(
        text.ends_with("verdict: accept (it gets there)\n"),
        "{text}"
    );

    // The same spec from standard input: the same hops, its lines named as stdin's.
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["trace", "a", "b", "tcp/22", "--spec", "-", "--netns", &host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut c.stdin.take().unwrap(),
        &std::fs::read(s.path()).unwrap(),
    )
    .unwrap();
    let o = c.wait_with_output().unwrap();
    let piped = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{piped}");
    assert_eq!(piped, text.replace(s.path(), "(stdin)"));

    // A tap's far end belongs to QEMU: --live refuses, the model still answers.
    let o = ns.kvmnet(&["trace", "t", "b", "--netns", &host, "--live"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tap"));
    ns.kvmnet_ok(&["trace", "t", "b", "--netns", &host]);
    // Bad input is exit 2.
    for bad in [
        ["a", "nobody", "icmp"],
        ["a", "b", "sctp/1"],
        ["zz", "b", "icmp"],
    ] {
        let o = ns.kvmnet(&["trace", bad[0], bad[1], bad[2], "--netns", &host]);
        assert_eq!(o.status.code(), Some(2), "{bad:?}");
    }
    interrupt_during_live(&ns, &host);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
