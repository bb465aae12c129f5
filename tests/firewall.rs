//! Per-port stateful firewall: allowed ports connect and others do not, connection and rate
//! limits hold, outbound rules apply, replies always pass, and log lines name VM and port.

mod common;
use common::*;

/// Listens on `ports` in `ns` for a few seconds, holding every connection open.
fn listen(ns: &str, ports: &[u16]) -> std::process::Child {
    let script = format!(
        "import socket,select,time\nls=[]\nfor p in {ports:?}:\n  s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',p)); s.listen(64); ls.append(s)\nheld=[]\nend=time.time()+12\nwhile time.time()<end:\n  r,_,_=select.select(ls,[],[],0.2)\n  for s in r:\n    c,a=s.accept(); held.append(c)\n"
    );
    let c = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    c
}

/// Opens `n` connections to ip:port from `ns` (kept open together); how many succeeded.
fn connects(ns: &str, ip: &str, port: u16, n: usize) -> usize {
    let script = format!(
        "import socket\nok=0\ncs=[]\nfor i in range({n}):\n  try:\n    cs.append(socket.create_connection(('{ip}',{port}),timeout=1)); ok+=1\n  except OSError:\n    pass\nprint(ok)\n"
    );
    ok_in(ns, &format!("python3 -c \"{script}\""))
        .trim()
        .parse()
        .unwrap()
}

struct LogAllNetns(String);
impl LogAllNetns {
    /// Kernel log lines from a non-initial namespace are dropped unless this is 1.
    fn on() -> LogAllNetns {
        let p = "/proc/sys/net/netfilter/nf_log_all_netns";
        let old = std::fs::read_to_string(p).unwrap_or_else(|_| "0".into());
        let _ = std::fs::write(p, "1");
        LogAllNetns(old)
    }
}
impl Drop for LogAllNetns {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/netfilter/nf_log_all_netns", self.0.trim());
    }
}

#[test]
fn per_port_firewall_both_directions() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("fwl");
    let g = ns.reserve("fl");
    let (srv, cli) = (format!("{g}srv"), format!("{g}cli"));
    ns.names.extend([srv.clone(), cli.clone()]);
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  n: {{ mode: nat, bridge: w-n, ipv4: 10.64.0.1/24 }}
vms:
  srv:
    ports:
      - network: n
        name: w-srv
        kind: veth
        netns: {srv}
        ipv4: 10.64.0.10
        firewall:
          inbound:
            policy: drop
            rules:
              - {{ proto: tcp, ports: [22], log: true }}
              - {{ proto: tcp, ports: ["80-81"], connlimit: 2 }}
              - {{ proto: tcp, ports: [8080], rate: 3/minute }}
              - {{ proto: icmp, icmp_types: [echo-request], rate: 5/second }}
          outbound:
            rules:
              - {{ proto: tcp, ports: [25], action: reject }}
  cli: {{ ports: [ {{ network: n, name: w-cli, kind: veth, netns: {cli}, ipv4: 10.64.0.11 }} ] }}
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(plan.starts_with("No changes"), "{plan}");

    let _log = LogAllNetns::on();
    let mut srv_l = listen(&srv, &[22, 23, 80, 8080]);
    let mut cli_l = listen(&cli, &[25, 26]);
    // Inbound: allowed port yes, anything else no.
    assert_eq!(
        connects(&cli, "10.64.0.10", 22, 1),
        1,
        "allowed port blocked"
    );
    assert_eq!(
        connects(&cli, "10.64.0.10", 23, 1),
        0,
        "port outside the rules reachable"
    );
    // connlimit: two at once, not three.
    assert_eq!(
        connects(&cli, "10.64.0.10", 80, 3),
        2,
        "connlimit not enforced"
    );
    // rate: three new connections a minute.
    assert_eq!(
        connects(&cli, "10.64.0.10", 8080, 6),
        3,
        "rate limit not enforced"
    );
    // ICMP echo rate: a flood is cut down, single pings pass.
    assert!(pings(&cli, "10.64.0.10"));
    let flood = ok_in(&cli, "ping -c 40 -i 0.01 -q 10.64.0.10 || true");
    let received: usize = flood
        .split(", ")
        .find(|s| s.ends_with("received"))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(received < 20, "ICMP rate not enforced: {flood}");
    // Outbound: rejected port, others fine; replies to the VM's own connections pass even
    // though inbound is drop-by-default.
    assert_eq!(
        connects(&srv, "10.64.0.11", 25, 1),
        0,
        "outbound reject not enforced"
    );
    assert_eq!(
        connects(&srv, "10.64.0.11", 26, 1),
        1,
        "outbound traffic blocked"
    );
    // The host itself is subject to the VM's inbound rules too.
    assert_eq!(connects(&host, "10.64.0.10", 23, 1), 0);
    assert_eq!(connects(&host, "10.64.0.10", 22, 1), 1);
    // Log lines name VM and port.
    let dmesg = ok("dmesg");
    assert!(
        dmesg
            .lines()
            .any(|l| l.contains("kvmnet srv/w-srv in:") && l.contains("DPT=22")),
        "no log line for the logged rule"
    );
    let _ = srv_l.kill();
    let _ = cli_l.kill();
    let _ = srv_l.wait();
    let _ = cli_l.wait();
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
