//! `kvmnet trace` over IPv6 against real traffic: for each case the verdict and stage the
//! trace prints are what a real ping, TCP connect or UDP datagram from the guest's
//! namespace meets: a forged IPv6 source stops at the guard while the same guest's own
//! address passes, an allowed TCP port passes an inbound drop policy, another port is
//! dropped by it, NAT66 takes a guest out, an isolated network lets nothing out.

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

/// Accepts TCP over IPv6 on `tcp` in `ns`, for a minute at most.
fn listen6(ns: &str, tcp: &[u16]) -> Child {
    let script = format!(
        "import socket,select,time\nls=[]\nfor p in {tcp:?}:\n  s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('::',p)); s.listen(16); ls.append(s)\nend=time.time()+60\nwhile time.time()<end:\n  r,_,_=select.select(ls,[],[],0.2)\n  for s in r:\n    c,a=s.accept(); c.close()\n"
    );
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .spawn()
        .unwrap()
}

/// What real IPv6 traffic from `ns`, sent from `src`, to `ip` meets: `accept` (answered),
/// `reject` (refused at once: TCP only) or `drop` (nothing came back).
fn real6(ns: &str, src: &str, ip: &str, proto: &str) -> &'static str {
    let script = match proto.split_once('/') {
        None => {
            let ok = in_ns(
                ns,
                &format!("ping -6 -c1 -W1 -I {src} {ip} >/dev/null 2>&1"),
            )
            .status
            .success();
            return if ok { "accept" } else { "drop" };
        }
        Some((_, port)) => format!(
            "import socket\ns=socket.socket(socket.AF_INET6); s.settimeout(1.5); s.bind(('{src}',0))\ntry:\n  s.connect(('{ip}',{port})); print('accept')\nexcept socket.timeout:\n  print('drop')\nexcept OSError:\n  print('reject')\n"
        ),
    };
    let out = ok_in(ns, &format!("python3 -c \"{script}\""));
    match out.trim() {
        "accept" => "accept",
        "reject" => "reject",
        _ => "drop",
    }
}

/// One case: from VM, the source address it sends from (`None`: its own, as trace picks
/// it), trace's DEST, the address real traffic goes to, protocol, the verdict and the
/// stage that decides it (`arrive` when it gets there).
type Case = (
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

const FORGED: &str = "fd00:95::50";

const CASES: &[Case] = &[
    // The guest's own address passes the guard; a forged one stops there.
    ("a", None, "b", "fd00:95::11", "tcp/22", "accept", "arrive"),
    (
        "a",
        Some(FORGED),
        "b",
        "fd00:95::11",
        "tcp/22",
        "drop",
        "guard",
    ),
    (
        "a",
        Some(FORGED),
        "fd00:95::11",
        "fd00:95::11",
        "icmp",
        "drop",
        "guard",
    ),
    // b's inbound drop policy: tcp/22 allowed, tcp/23 dropped, echo only from a.
    (
        "a",
        None,
        "b",
        "fd00:95::11",
        "tcp/23",
        "drop",
        "firewall-in",
    ),
    ("a", None, "b", "fd00:95::11", "icmp", "accept", "arrive"),
    (
        "c",
        None,
        "fd00:95::11",
        "fd00:95::11",
        "icmp",
        "drop",
        "firewall-in",
    ),
    // Out of the host by NAT66; an isolated network lets nothing out.
    (
        "a",
        None,
        "2001:db8:95::2",
        "2001:db8:95::2",
        "tcp/80",
        "accept",
        "arrive",
    ),
    (
        "i",
        None,
        "2001:db8:95::2",
        "2001:db8:95::2",
        "icmp",
        "reject",
        "leaving",
    ),
    // The host: ping of the gateway, nothing on a port host_access does not list.
    ("a", None, "host", "fd00:95::1", "icmp", "accept", "arrive"),
    (
        "a",
        None,
        "host",
        "fd00:95::1",
        "tcp/26",
        "drop",
        "host-access",
    ),
];

fn spec(g: &str) -> String {
    format!(
        r#"version: 1
networks:
  lan:
    mode: nat
    bridge: q6-lan
    ipv4: 10.94.0.1/24
    ipv6: fd00:95::1/64
  iso: {{ mode: isolated, bridge: q6-iso, ipv4: 10.93.0.1/24, ipv6: "fd00:93::1/64" }}
vms:
  a: {{ ports: [ {{ network: lan, name: q6-a, kind: veth, netns: {g}a, ipv4: 10.94.0.10, ipv6: "fd00:95::10" }} ] }}
  c: {{ ports: [ {{ network: lan, name: q6-c, kind: veth, netns: {g}c, ipv4: 10.94.0.12, ipv6: "fd00:95::12" }} ] }}
  b:
    ports:
      - network: lan
        name: q6-b
        kind: veth
        netns: {g}b
        ipv4: 10.94.0.11
        ipv6: "fd00:95::11"
        firewall:
          inbound:
            policy: drop
            rules:
              - {{ proto: tcp, ports: [22] }}
              - {{ proto: icmp, icmp_types: [echo-request], from: "fd00:95::10" }}
  i: {{ ports: [ {{ network: iso, name: q6-i, kind: veth, netns: {g}i, ipv4: 10.93.0.10, ipv6: "fd00:93::10" }} ] }}
"#
    )
}

/// The guests' IPv6 as a guest configures it (kvmnet does not set a veth's `ipv6` in its
/// namespace): its address without duplicate address detection, the gateway as default.
/// The guest's declared address and route, as kvmnet puts them on a veth's far end: this
/// checks they are there rather than adding them.
fn configure(ns: &str, addr: &str, gw: &str) {
    let have = ok_in(ns, "ip -6 addr show dev eth0; ip -6 route show default");
    assert!(
        have.contains(&format!("{addr}/64")) && have.contains(&format!("default via {gw}")),
        "{ns}: kvmnet did not configure {addr} via {gw}:\n{have}"
    );
}

fn check(ns: &Namespaces, host: &str, g: &str, case: &Case) -> Vec<String> {
    let &(from, source, dest, ip, proto, verdict, stage) = case;
    let name = format!("{from} (from {source:?}) -> {dest} {proto}");
    let mut args = vec!["trace", from, dest, proto, "-6", "--netns", host, "--json"];
    if let Some(s) = source {
        args.extend(["--source", s]);
    }
    let o = ns.kvmnet(&args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "{name}: no JSON: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    let mut failures = Vec::new();
    let stopped = v["stopped_at"].as_str().unwrap_or("arrive");
    if (v["verdict"].as_str(), stopped) != (Some(verdict), stage) {
        failures.push(format!(
            "{name}: trace says {} at {stopped}, expected {verdict} at {stage}: {v}",
            v["verdict"]
        ));
    }
    let want_code = if verdict == "accept" { 0 } else { 1 };
    if o.status.code() != Some(want_code) {
        failures.push(format!("{name}: exit {:?}", o.status.code()));
    }
    let own = match from {
        "a" => "fd00:95::10",
        "c" => "fd00:95::12",
        _ => "fd00:93::10",
    };
    let seen = real6(&format!("{g}{from}"), source.unwrap_or(own), ip, proto);
    let expect_seen = match (verdict, proto.starts_with("tcp")) {
        ("reject", false) => "drop",
        (v, _) => v,
    };
    if seen != expect_seen {
        failures.push(format!(
            "{name}: real traffic met {seen}, trace says {verdict}"
        ));
    }
    failures
}

#[test]
fn ipv6_trace_agrees_with_real_traffic() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("q6h");
    let wan = ns.add("q6w");
    let g = ns.reserve("q6");
    for v in ["a", "b", "c", "i"] {
        ns.names.push(format!("{g}{v}"));
    }
    ok(&format!(
        "ip -n {host} link add wan0 type veth peer name eth0 netns {wan} && ip -n {host} addr add 2001:db8:95::1/64 dev wan0 nodad && ip -n {host} link set wan0 up && ip -n {wan} addr add 2001:db8:95::2/64 dev eth0 nodad && ip -n {wan} link set eth0 up"
    ));
    let s = SpecFile::new(&spec(&g));
    ns.kvmnet_ok(&["apply", s.path(), "--netns", &host]);
    configure(&format!("{g}a"), "fd00:95::10", "fd00:95::1");
    // The forged address is configured too: the guest really sends from it.
    ok_in(
        &format!("{g}a"),
        &format!("ip -6 addr add {FORGED}/64 dev eth0 nodad"),
    );
    configure(&format!("{g}b"), "fd00:95::11", "fd00:95::1");
    configure(&format!("{g}c"), "fd00:95::12", "fd00:95::1");
    configure(&format!("{g}i"), "fd00:93::10", "fd00:93::1");
    let _listeners = Listeners(vec![
        listen6(&format!("{g}b"), &[22, 23]),
        listen6(&host, &[26]),
        listen6(&wan, &[80]),
    ]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let failures: Vec<String> = CASES
        .iter()
        .flat_map(|c| check(&ns, &host, &g, c))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The text names the guard's rule and chain; a router advertisement stops there too.
    let text = ns
        .kvmnet(&[
            "trace", "a", "b", "tcp/22", "--source", FORGED, "--netns", &host,
        ])
        .stdout;
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains(
            "[bridge guard-ip6: iifname . ip6 saddr != @port_ip6 iifname . ip6 saddr != @pool_ip6 counter goto guard-drop-ip]"
        ),
        "{text}"
    );
    let o = ns.kvmnet(&[
        "trace",
        "a",
        "b",
        "icmpv6/nd-router-advert",
        "--netns",
        &host,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("verdict: drop at guard"));
    // Two families, icmpv6 over IPv4, and --live with IPv6 are bad input.
    for bad in [
        vec!["a", "fd00:95::11", "icmp", "--source", "10.94.0.10"],
        vec!["a", "10.94.0.11", "icmpv6"],
        vec!["a", "b", "icmp", "-6", "--live"],
    ] {
        let mut args = vec!["trace"];
        args.extend(bad.iter().copied());
        args.extend(["--netns", host.as_str()]);
        assert_eq!(ns.kvmnet(&args).status.code(), Some(2), "{bad:?}");
    }
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
