//! The OVN backend's firewall on a real two-chassis OVN (tests/common/ovn_lab.rs), one lab
//! for the file: a rule's `from` is an address set, and a guest outside it cannot reach the
//! port one inside it reaches; widening `from` lets it in. A logging rule's hits appear in
//! ovn-controller's log as ACL log lines naming the ACL, and a flood of hits writes at most
//! the log meter's rate of lines while every packet of the flood still passes (an ACL's
//! meter limits its log lines, not its traffic: why a rule's `rate` is refused on OVN).

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

use std::time::{Duration, Instant};

/// The log meter's rate and burst (crates/core/src/ovn/firewall.rs).
const LOG_RATE: usize = 10;
const LOG_BURST: usize = 10;

fn spec(lab: &OvnLab, ns: &[String; 3], from: &str) -> String {
    format!(
        r#"{head}networks:
  fwnet:
    backend: ovn
    mode: isolated
    ipv4: 10.82.0.1/24
vms:
  a:
    host: hv1
    ports:
      - network: fwnet
        name: fwa
        kind: veth
        netns: {a}
        mac: "52:54:00:82:00:0a"
        ipv4: 10.82.0.10
        firewall:
          inbound:
            policy: drop
            rules:
              - {{ proto: tcp, ports: [22], from: {from} }}
              - {{ proto: icmp }}
              - {{ proto: udp, ports: [9000], log: true }}
  b:
    host: hv2
    ports:
      - {{ network: fwnet, name: fwb, kind: veth, netns: {b}, mac: "52:54:00:82:00:0b", ipv4: 10.82.0.11 }}
  c:
    host: hv2
    ports:
      - {{ network: fwnet, name: fwc, kind: veth, netns: {c}, mac: "52:54:00:82:00:0c", ipv4: 10.82.0.12 }}
"#,
        head = lab.spec_head(2, &[], ""),
        a = ns[0],
        b = ns[1],
        c = ns[2],
    )
}

/// Lines of every chassis's ovn-controller log that are ACL log lines of a UDP packet to
/// port 9000.
fn log_lines(lab: &OvnLab) -> Vec<String> {
    lab.chassis
        .iter()
        .filter_map(|c| std::fs::read_to_string(c.dir.join("ovn-controller.log")).ok())
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| l.contains("acl_log") && l.contains("tp_dst=9000"))
        .collect()
}

/// UDP datagrams to 10.82.0.10:9000 from `client_ns`, each from a socket of its own (a
/// new connection, so each meets the logging ACL), for `secs` at `per_sec`: (sent,
/// received by `server_ns`).
fn udp_flood(server_ns: &str, client_ns: &str, secs: f64, per_sec: u32) -> (usize, usize) {
    let server = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9000))\ns.settimeout(2)\nn=0\ntry:\n  while True:\n    s.recv(64); n+=1\nexcept socket.timeout:\n  pass\nprint(n)\n";
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", server_ns, "python3", "-c", server])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    std::thread::sleep(Duration::from_millis(300));
    let client = format!(
        "import socket,time\nn=0\nend=time.time()+{secs}\nwhile time.time()<end:\n  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.sendto(b'x',('10.82.0.10',9000)); s.close(); n+=1; time.sleep(1.0/{per_sec})\nprint(n)\n"
    );
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", client_ns, "python3", "-c", &client])
        .output()
        .expect("python3 runs");
    let sent: usize = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("a count");
    let out = child.wait_with_output().expect("the receiver ends");
    let got: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a count");
    (sent, got)
}

/// Only b, inside `from`, reaches a's port 22; c, outside it, does not, while its ping
/// (another rule) flows. Widening `from` to take c in lets c in.
fn from_is_an_address_set(lab: &OvnLab, ns: &[String; 3]) {
    let [a, b, c] = ns;
    let set = lab.nbctl("--bare --columns=name,addresses list Address_Set");
    assert!(set.contains("10.82.0.11"), "{set}");
    let acl = lab.nbctl("--bare --columns=match find ACL priority=2000");
    assert!(acl.contains("ip4.src == $kvmnet_as_"), "{acl}");
    wait_ping(b, "10.82.0.10");
    wait_ping(c, "10.82.0.10");
    assert_eq!(tcp_source_seen(a, 22, b, "10.82.0.10", 22), "10.82.0.11");
    assert_eq!(
        tcp_source_seen(a, 22, c, "10.82.0.10", 22),
        "",
        "c, outside the rule's from, connected"
    );
    assert!(pings(c, "10.82.0.10"), "c's ping is another rule's");

    let wider = SpecFile::new(&spec(lab, ns, "10.82.0.8/29"));
    let lsp = lab.nbctl("--bare --columns=_uuid list Logical_Switch_Port");
    eprintln!("{}", lab.kvm(1, &["plan", wider.path()]));
    lab.kvm(1, &["apply", wider.path()]);
    lab.nbctl("--wait=hv sync");
    let set = lab.nbctl("--bare --columns=addresses list Address_Set");
    assert_eq!(set.trim(), "10.82.0.8/29", "one set, the new one");
    assert_eq!(
        lab.nbctl("--bare --columns=_uuid list Logical_Switch_Port"),
        lsp,
        "the ports are untouched"
    );
    assert_eq!(tcp_source_seen(a, 22, c, "10.82.0.10", 22), "10.82.0.12");
    assert_eq!(tcp_source_seen(a, 22, b, "10.82.0.10", 22), "10.82.0.11");
}

/// A logging rule's hit is an ACL log line naming the ACL; a flood of hits writes no more
/// than the meter lets through, and every datagram of it still arrives.
fn log_is_metered(lab: &OvnLab, ns: &[String; 3]) {
    let [a, b, _] = ns;
    let meter = lab.nbctl("--bare --columns=name,unit,fair list Meter");
    assert!(
        meter.contains("kvmnet_acl_log") && meter.contains("pktps"),
        "{meter}"
    );
    let (sent, got) = udp_flood(a, b, 0.2, 10);
    assert!(sent > 0 && got == sent, "{got} of {sent} arrived");
    let t = Instant::now();
    while log_lines(lab).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "no ACL log line");
        std::thread::sleep(Duration::from_millis(100));
    }
    let line = log_lines(lab)[0].clone();
    assert!(
        line.contains("name=\"kvmnet-kvmnet_fw_") && line.contains("verdict=allow"),
        "{line}"
    );

    // Quiet for a second: the meter's bucket refills to its burst.
    std::thread::sleep(Duration::from_secs(2));
    let before = log_lines(lab).len();
    let secs = 3.0;
    let (sent, got) = udp_flood(a, b, secs, 400);
    std::thread::sleep(Duration::from_secs(2));
    let lines = log_lines(lab).len() - before;
    // At most: the meter's rate over the flood's seconds and two more of slack for its
    // edges, and its burst.
    let most = LOG_RATE * (secs as usize + 2) + LOG_BURST;
    assert!(sent > 5 * most, "the flood sent only {sent}");
    assert!(
        got * 10 >= sent * 9,
        "the meter limits log lines, not traffic: {got} of {sent} arrived"
    );
    assert!(
        lines >= 1 && lines <= most,
        "{lines} log lines for {sent} hits (at most {most})"
    );
    eprintln!("log flood: {sent} sent, {got} arrived, {lines} log lines (at most {most})");

    // The meter is what holds the lines down: taken off the ACL by hand, a flood writes a
    // line a hit; an apply puts it back.
    let uuid = lab.nbctl("--bare --columns=_uuid find ACL log=true");
    lab.nbctl(&format!("clear ACL {} meter", uuid.trim()));
    lab.nbctl("--wait=hv sync");
    std::thread::sleep(Duration::from_secs(1));
    let before = log_lines(lab).len();
    let (sent, _) = udp_flood(a, b, 1.0, 400);
    std::thread::sleep(Duration::from_secs(2));
    let unmetered = log_lines(lab).len() - before;
    assert!(
        unmetered * 10 >= sent * 9,
        "without the meter, {unmetered} lines for {sent} hits"
    );
    eprintln!("without the meter: {sent} hits, {unmetered} log lines");
    let file = SpecFile::new(&spec(lab, ns, "10.82.0.11/32"));
    assert!(lab.kvm(1, &["plan", file.path()]).contains("meter"));
    lab.kvm(1, &["apply", file.path()]);
    assert!(lab.kvm(1, &["plan", file.path()]).contains("No changes"));
}

#[test]
fn firewall_address_sets_and_metered_logs() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(2);
    lab.start_controller(1);
    lab.start_controller(2);
    let before = lab.nb_rows();
    let ns = [
        lab.ns.reserve("fwa"),
        lab.ns.reserve("fwb"),
        lab.ns.reserve("fwc"),
    ];
    let file = SpecFile::new(&spec(&lab, &ns, "10.82.0.11/32"));
    lab.kvm(1, &["apply", file.path()]);
    lab.kvm(2, &["apply", file.path()]);
    lab.sbctl("--timeout=30 wait-until Chassis hv1");
    lab.sbctl("--timeout=30 wait-until Chassis hv2");
    for (n, lsp) in ns.iter().zip(["fwa", "fwb", "fwc"]) {
        ok_in(n, "ethtool -K eth0 tx off >/dev/null");
        lab.wait_up(lsp);
    }

    log_is_metered(&lab, &ns);
    from_is_an_address_set(&lab, &ns);

    lab.kvm(2, &["destroy"]);
    lab.kvm(1, &["destroy"]);
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy leaves no address set, meter or band behind"
    );
}
