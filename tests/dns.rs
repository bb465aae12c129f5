//! The daemon's DNS service with real clients: `dig` from guest namespaces for the
//! network's names (A, AAAA, PTR, NXDOMAIN with SOA), names forwarded to a dnsmasq in a wan
//! namespace (cached past the upstream's death, for their TTL only), truncation and TCP on
//! both sides, queries from the uplink side left unanswered, the per-client rate limit
//! holding a flooding guest while another is served, and listeners following the spec.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// `dig` in `ns` against `server`, one try of one second: its full output.
fn dig(ns: &str, server: &str, args: &str) -> String {
    let o = in_ns(ns, &format!("dig @{server} +time=1 +tries=1 {args}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn short(ns: &str, args: &str) -> String {
    dig(ns, "10.64.0.1", &format!("+short {args}"))
        .trim()
        .to_string()
}

fn spec(web: &str, hog: &str, with_dns: bool) -> String {
    let big: Vec<String> = (100..200).map(|i| format!("10.64.0.{i}")).collect();
    let dns = if with_dns {
        format!(
            r#"
    dns:
      domain: vm.test
      forwarders: [203.0.113.2]
      rate_limit: 50/second
      records:
        api: 10.64.0.50
        api6: "fd00:64::50"
        big: [{}]"#,
            big.join(", ")
        )
    } else {
        String::new()
    };
    format!(
        r#"version: 1
networks:
  n:
    mode: nat
    bridge: dns-n
    ipv4: 10.64.0.1/24{dns}
vms:
  web: {{ ports: [ {{ network: n, kind: veth, netns: {web}, ipv4: 10.64.0.10 }} ] }}
  hog: {{ ports: [ {{ network: n, kind: veth, netns: {hog}, ipv4: 10.64.0.11 }} ] }}
"#
    )
}

/// A dnsmasq in `wan` on 203.0.113.2, stopped when dropped.
struct Upstream(std::process::Child);

impl Upstream {
    fn start(wan: &str) -> Upstream {
        let txt: Vec<String> = (0..10)
            .map(|i| format!("\"{}\"", format!("{i}").repeat(250)))
            .collect();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                wan,
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
            ])
            .args([
                "--listen-address=203.0.113.2",
                "--bind-interfaces",
                "--port=53",
                "--pid-file=",
            ])
            .args(["--local-ttl=60", "--address=/www.example.test/198.51.100.7"])
            .arg("--host-record=short.example.test,198.51.100.8,2")
            .arg(format!("--txt-record=txt.example.test,{}", txt.join(",")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq starts");
        let up = Upstream(child);
        wait_until("dnsmasq in the wan", || {
            dig(wan, "203.0.113.2", "+short www.example.test").contains("198.51.100.7")
        });
        up
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metrics(ns: &Namespaces, host: &str) -> String {
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    ok(&format!(
        "curl -sSf --unix-socket {} http://kvmnet/metrics",
        sock.display()
    ))
}

fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one daemon, every promise checked against it in turn"
)]
fn guests_resolve_names_and_forwarded_names_and_nothing_leaks() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("dnsh");
    let wan = ns.add("dnsw");
    let g = ns.reserve("dg");
    let (web, hog) = (format!("{g}web"), format!("{g}hog"));
    ns.names.extend([web.clone(), hog.clone()]);
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 203.0.113.1/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 203.0.113.2/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 203.0.113.2 && \
         ip -n {wan} route add 10.64.0.0/24 via 203.0.113.1"
    ));
    let upstream = Upstream::start(&wan);
    let file = SpecFile::new(&spec(&web, &hog, true));
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["daemon", "--spec", file.path(), "--netns", &host])
            .env("KVMNET_STATE_DIR", &ns.state_dir)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the DNS service", || {
        short(&web, "web.vm.test") == "10.64.0.10"
    });

    // The network's names, forward and reverse, both families.
    assert_eq!(short(&web, "hog.vm.test"), "10.64.0.11");
    assert_eq!(short(&web, "API.vm.test"), "10.64.0.50");
    assert_eq!(short(&web, "AAAA api6.vm.test"), "fd00:64::50");
    assert_eq!(short(&web, "-x 10.64.0.10"), "web.vm.test.");
    assert_eq!(short(&web, "-x fd00:64::50"), "api6.vm.test.");
    let nx = dig(&web, "10.64.0.1", "nope.vm.test");
    assert!(
        nx.contains("status: NXDOMAIN") && nx.contains("flags: qr aa"),
        "{nx}"
    );
    assert!(nx.contains("AUTHORITY: 1") && nx.contains("SOA"), "{nx}");
    let nodata = dig(&web, "10.64.0.1", "AAAA web.vm.test");
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    assert!(nodata.contains("SOA"), "{nodata}");
    let nx = dig(&web, "10.64.0.1", "-x 10.64.0.99");
    assert!(
        nx.contains("status: NXDOMAIN"),
        "private reverse names stay here: {nx}"
    );
    // The host itself may ask (over lo).
    assert_eq!(
        String::from_utf8_lossy(
            &in_ns(&host, "dig @10.64.0.1 +short +time=1 +tries=1 web.vm.test").stdout
        )
        .trim(),
        "10.64.0.10"
    );

    // Too big for UDP: TC without EDNS, then the whole answer over TCP.
    let tc = dig(&web, "10.64.0.1", "+noedns +ignore big.vm.test");
    assert!(tc.contains(" tc") && tc.contains("ANSWER: 0"), "{tc}");
    let full = dig(&web, "10.64.0.1", "+noedns big.vm.test");
    assert!(full.contains("ANSWER: 100"), "{full}");
    let tcp = dig(&web, "10.64.0.1", "+tcp +short big.vm.test");
    assert_eq!(tcp.lines().count(), 100, "{tcp}");

    // Forwarded, and answered from the cache.
    assert_eq!(short(&web, "www.example.test"), "198.51.100.7");
    assert_eq!(short(&web, "short.example.test"), "198.51.100.8");
    // A TXT of 2.5 kB: the upstream truncates over UDP, the service asks again over TCP,
    // and the client (whose UDP answer is truncated in turn) gets it over TCP.
    let txt = dig(&web, "10.64.0.1", "TXT txt.example.test");
    assert!(
        txt.contains("ANSWER: 1") && txt.contains(&"9".repeat(250)),
        "{txt}"
    );
    drop(upstream);
    let cached = dig(&web, "10.64.0.1", "www.example.test");
    assert!(
        cached.contains("198.51.100.7"),
        "cache after the upstream is gone: {cached}"
    );
    assert!(short(&web, "short.example.test").contains("198.51.100.8"));
    std::thread::sleep(Duration::from_millis(2500));
    let expired = dig(&web, "10.64.0.1", "short.example.test");
    assert!(
        !expired.contains("198.51.100.8"),
        "a 2 s TTL expires: {expired}"
    );
    let m = metrics(&ns, &host);
    assert!(
        metric(&m, "kvmnet_dns_cache_hits_total{network=\"n\"}") >= 2,
        "{m}"
    );
    assert!(
        metric(&m, "kvmnet_dns_queries_total{network=\"n\"}") >= 15,
        "{m}"
    );

    // From the uplink side: the gateway's address is routed to the host and answers ping,
    // but DNS asked there (or at the uplink's address) is not answered, UDP or TCP.
    assert!(
        pings(&wan, "10.64.0.1"),
        "the gateway is reachable from the wan"
    );
    for (server, tcp) in [
        ("10.64.0.1", ""),
        ("10.64.0.1", "+tcp"),
        ("203.0.113.1", ""),
    ] {
        let out = dig(&wan, server, &format!("{tcp} web.vm.test"));
        assert!(
            !out.contains("ANSWER SECTION") && !out.contains("status:"),
            "{server} {tcp}: {out}"
        );
    }

    // A flooding guest is held to its allowance; the other is served meanwhile.
    let names = TempFile::new("web.vm.test A\nwww.example.test A\n");
    let flood = Command::new("ip")
        .args([
            "netns",
            "exec",
            &hog,
            "dnsperf",
            "-s",
            "10.64.0.1",
            "-l",
            "3",
            "-Q",
            "3000",
            "-q",
            "10000",
            "-t",
            "1",
            "-d",
        ])
        .arg(&names.0)
        .output()
        .expect("dnsperf runs");
    let report = String::from_utf8_lossy(&flood.stdout).into_owned();
    let mut served = 0;
    for _ in 0..10 {
        served += usize::from(short(&web, "api.vm.test") == "10.64.0.50");
    }
    let completed: u64 = report
        .lines()
        .find(|l| l.contains("Queries completed:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        completed <= 50 * 3 + 50 + 60,
        "the hog got {completed} answers:\n{report}"
    );
    assert!(
        completed >= 100,
        "the hog is served within its allowance:\n{report}"
    );
    assert_eq!(served, 10, "the other guest is served");
    let m = metrics(&ns, &host);
    assert!(
        metric(
            &m,
            "kvmnet_dns_answers_total{network=\"n\",outcome=\"rate_limited\"}"
        ) > 3000,
        "{m}"
    );

    // Listeners follow the spec: without dns nothing answers, with it again it does.
    std::fs::write(&file.0, spec(&web, &hog, false)).unwrap();
    ok(&format!("kill -HUP {}", _daemon.0.id()));
    wait_until("the listener to close", || {
        !dig(&web, "10.64.0.1", "web.vm.test").contains("status:")
    });
    let rules = ok_in(&host, "nft list ruleset");
    assert!(
        !rules.contains("th dport 53"),
        "no DNS rule without dns:\n{rules}"
    );
    std::fs::write(&file.0, spec(&web, &hog, true)).unwrap();
    ok(&format!("kill -HUP {}", _daemon.0.id()));
    wait_until("the listener to open", || {
        short(&web, "web.vm.test") == "10.64.0.10"
    });
}

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let p = std::env::temp_dir().join(unique("dnsq"));
        std::fs::write(&p, text).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
