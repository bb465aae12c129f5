//! `forwards` and `dns` on a nat network on a real three-chassis OVN
//! (tests/common/ovn_lab.rs), and the external side learning where the gateway went.
//!
//! hv1 and hv2 are gateway chassis (priorities 1 and 2) whose `ovn.external.uplink` is a
//! veth into a bridge in an "external" namespace holding the next hop, with a far host
//! behind it running a DNS server (dnsmasq) that the network names as its forwarder. Guest
//! a is on hv3, b on hv1, c (a pool address, from OVN's DHCP) on hv3.
//!
//! - The far host reaches a's port 22 at `external.ipv4:2222` (and over IPv6 at
//!   `[external.ipv6]:2222`, a declaring `ipv6`), b's port 80 at `:8080` and
//!   b's UDP port 53 at `:5353` (the guests see the far host's address); ports not
//!   forwarded do not connect, and `:8080` reaches b only, though a listens on 80 too.
//! - Guests reach the forwards at `external.ipv4` too (hairpin), another guest's and their
//!   own, through the gateway chassis, seen as `external.ipv4`; again after failover.
//! - c's DHCP lease names the forwarder and the domain; from a guest, OVN answers the VMs'
//!   names (declared and picked addresses), a record and a PTR whatever server is asked
//!   (the forwarder's own answer for a VM name is different, so the answer is OVN's); other
//!   names reach the forwarder; sent to the gateway, a name OVN does not hold gets no
//!   answer at all.
//! - Rows changed by hand are planned and put back; destroy leaves NB as it was.
//! - The active gateway dies: the new one announces the router's address (gratuitous ARP),
//!   the external bridge moves the router's MAC to hv1's link, and the far host reaches the
//!   forward again with nothing sent by the guests meanwhile. The MAC does not change (a
//!   distributed gateway port has one MAC on every chassis); what moves is where the
//!   external network finds it. Here the SNAT address and the forwards' VIPs are the
//!   gateway port's own address, which ovn-controller announces for the port it claims
//!   with or without `nat-addresses=router` (a run without the option passes too); the
//!   option adds NAT and load balancer addresses other than the port's own.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{
    EXT_FAR as FAR, EXT_SNAT as SNAT, EXT6_FAR as FAR6, EXT6_SNAT as SNAT6, OvnLab, ovn_present,
};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spec(lab: &OvnLab, a_ns: &str, b_ns: &str, c_ns: &str) -> String {
    format!(
        r#"{head}networks:
  web:
    backend: ovn
    mode: nat
    ipv4: 10.82.0.1/24
    ipv6: fd00:82::1/64
    dhcp: {{ range: 10.82.0.100-10.82.0.109 }}
    forwards:
      - {{ proto: tcp, port: 2222, to: a, to_port: 22 }}
      - {{ proto: tcp, port: 8080, to: b, to_port: 80 }}
      - {{ proto: udp, port: 5353, to: b, to_port: 53 }}
    dns:
      domain: vm.test
      forwarders: [{FAR}]
      records: {{ api: 10.82.0.50 }}
vms:
  a:
    host: hv3
    ports:
      - {{ network: web, name: fwa, kind: veth, netns: {a_ns}, mac: "52:54:00:82:00:0a", ipv4: 10.82.0.10, ipv6: "fd00:82::a" }}
  b:
    host: hv1
    ports:
      - {{ network: web, name: fwb, kind: veth, netns: {b_ns}, mac: "52:54:00:82:00:0b", ipv4: 10.82.0.11 }}
  c:
    host: hv3
    ports:
      - {{ network: web, name: fwc, kind: veth, netns: {c_ns}, mac: "52:54:00:82:00:0c" }}
"#,
        head = lab.spec_head(3, &[(1, 1), (2, 2)], &OvnLab::external_section6("xup")),
    )
}

/// A child process stopped when dropped (listeners, dnsmasq, tcpdump).
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_in(ns: &str, args: &[&str]) -> Proc {
    let mut a = vec!["netns", "exec", ns];
    a.extend(args);
    Proc(
        Command::new("ip")
            .args(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs"),
    )
}

/// A TCP service in `ns` on `port` that tells each client `TAG CLIENT_ADDRESS`.
fn listen(ns: &str, port: u16, tag: &str) -> Proc {
    let py = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(8)\nwhile True:\n  c,a=s.accept(); c.sendall(('{tag} '+a[0]).encode()); c.close()\n"
    );
    spawn_in(ns, &["python3", "-c", &py])
}

/// [`listen`] over IPv6 only, beside an IPv4 one on the same port.
fn listen6(ns: &str, port: u16, tag: &str) -> Proc {
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',{port}))\ns.listen(8)\nwhile True:\n  c,a=s.accept(); c.sendall(('{tag} '+a[0]).encode()); c.close()\n"
    );
    spawn_in(ns, &["python3", "-c", &py])
}

/// A UDP service in `ns` on `port` that answers each datagram with `TAG CLIENT_ADDRESS`.
fn listen_udp(ns: &str, port: u16, tag: &str) -> Proc {
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',{port}))\nwhile True:\n  d,a=s.recvfrom(100); s.sendto(('{tag} '+a[0]).encode(),a)\n"
    );
    spawn_in(ns, &["python3", "-c", &py])
}

/// Datagrams from `ns` to `ip:port` until one is answered (at most 10 tries): the answer.
fn ask_udp(ns: &str, ip: &str, port: u16) -> Option<String> {
    let py = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(1)\nfor i in range(10):\n  s.sendto(b'hi',('{ip}',{port}))\n  try:\n    print(s.recv(100).decode()); sys.exit(0)\n  except OSError:\n    pass\nsys.exit(1)\n"
    );
    let o = in_ns(ns, &format!("python3 -c \"{py}\""));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// One connection from `ns` to `ip:port` within 2 s: what the service said, if it answered.
fn connect(ns: &str, ip: &str, port: u16) -> Option<String> {
    let py = format!(
        "import socket,sys\ntry:\n  c=socket.create_connection(('{ip}',{port}),timeout=2); print(c.recv(100).decode())\nexcept OSError:\n  sys.exit(1)\n"
    );
    let o = in_ns(ns, &format!("python3 -c \"{py}\""));
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Connects until the service answers (flows take a moment after an apply), at most 20 s.
fn connect_soon(ns: &str, ip: &str, port: u16) -> String {
    let t = Instant::now();
    loop {
        if let Some(s) = connect(ns, ip, port) {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{ns} never reached {ip}:{port}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The far host's DNS server: it knows `far.example`, answers `a.vm.test` with an address
/// that is not a's (so an answer with a's is OVN's), and says NXDOMAIN for the rest of
/// `vm.test`.
fn dnsmasq(far: &str) -> Proc {
    let p = spawn_in(
        far,
        &[
            "dnsmasq",
            "-k",
            "-C",
            "/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={FAR}"),
            "--address=/far.example/203.0.113.77",
            "--address=/a.vm.test/203.0.113.66",
            "--local=/vm.test/",
            "--pid-file=",
            "--user=root",
        ],
    );
    let t = Instant::now();
    while !dig(far, FAR, "far.example").contains("203.0.113.77") {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "dnsmasq did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

/// `dig` from `ns` to `server` (`-x ADDRESS` for a reverse lookup): its full output.
/// Without EDNS, as glibc's resolver asks: OVN 23.03's ovn-controller leaves a query with
/// an OPT record unanswered and passes it on.
fn dig(ns: &str, server: &str, q: &str) -> String {
    String::from_utf8_lossy(
        &in_ns(ns, &format!("dig +noedns +time=2 +tries=1 @{server} {q}")).stdout,
    )
    .into_owned()
}

/// The answer section's data (`dig +short`) of a query for `q`.
fn answer(ns: &str, server: &str, q: &str) -> String {
    String::from_utf8_lossy(
        &in_ns(
            ns,
            &format!("dig +short +noedns +time=2 +tries=1 @{server} {q}"),
        )
        .stdout,
    )
    .trim()
    .to_string()
}

/// `/etc/netns/NS/resolv.conf`, which `ip netns exec NS` puts over `/etc/resolv.conf`:
/// a guest's own resolver configuration, removed when dropped.
struct NetnsResolv(std::path::PathBuf);

impl NetnsResolv {
    fn new(ns: &str, text: &str) -> NetnsResolv {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
        NetnsResolv(dir)
    }
}

impl Drop for NetnsResolv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The far host reaches a and b through the forwards only, and is seen as itself.
fn forwards(a_ns: &str, b_ns: &str, far: &str) {
    let _a22 = listen(a_ns, 22, "a");
    let _a80 = listen(a_ns, 80, "a");
    let _a2223 = listen(a_ns, 2223, "a");
    let _b80 = listen(b_ns, 80, "b");
    assert_eq!(connect_soon(far, SNAT, 2222), format!("a {FAR}"));
    assert_eq!(connect_soon(far, SNAT, 8080), format!("b {FAR}"));
    for _ in 0..5 {
        assert_eq!(connect(far, SNAT, 8080), Some(format!("b {FAR}")));
    }
    // UDP goes by its own load balancer.
    let _b53 = listen_udp(b_ns, 53, "b");
    assert_eq!(ask_udp(far, SNAT, 5353), Some(format!("b {FAR}")));
    // Not forwarded: the guests' own ports, and a port a listens on.
    for port in [22, 80, 2223] {
        assert_eq!(
            connect(far, SNAT, port),
            None,
            "port {port} is not forwarded"
        );
    }
    // Nor are the guests reachable by their own addresses from outside.
    assert_eq!(connect(far, "10.82.0.10", 22), None);
    // Over IPv6 (NAT66's external address), to a's declared ipv6, the client's address
    // kept; b declares none, so its forward is IPv4 only.
    let _a22v6 = listen6(a_ns, 22, "a6");
    let _b80v6 = listen6(b_ns, 80, "b6");
    assert_eq!(connect_soon(far, SNAT6, 2222), format!("a6 {FAR6}"));
    assert_eq!(connect(far, SNAT6, 8080), None, "b has no IPv6 forward");
    assert_eq!(connect(far, SNAT6, 22), None, "port 22 is not forwarded");
}

/// Guests of the network reach its forwards at `external.ipv4` too (hairpin), from any
/// chassis, to another guest and to themselves. OVN's router takes a guest's packet to the
/// active gateway chassis, where it leaves by the SNAT (as any packet to an outside address
/// does) and comes straight back to the load balancer: the guest reached is shown
/// `external.ipv4` as the client, where the kernel backend shows the gateway. The far host
/// is still seen as itself.
fn hairpin(a_ns: &str, b_ns: &str, far: &str) {
    let _a22 = listen(a_ns, 22, "a");
    let _b80 = listen(b_ns, 80, "b");
    let _b53 = listen_udp(b_ns, 53, "b");
    // a is on hv3, b on hv1; the gateway is active on hv2.
    assert_eq!(connect_soon(a_ns, SNAT, 8080), format!("b {SNAT}"));
    assert_eq!(connect_soon(b_ns, SNAT, 2222), format!("a {SNAT}"));
    assert_eq!(ask_udp(a_ns, SNAT, 5353), Some(format!("b {SNAT}")));
    assert_eq!(connect_soon(a_ns, SNAT, 2222), format!("a {SNAT}"));
    assert_eq!(connect_soon(b_ns, SNAT, 8080), format!("b {SNAT}"));
    // Ports that are not forwarded stay closed from inside too.
    assert_eq!(connect(a_ns, SNAT, 80), None);
    assert_eq!(connect(far, SNAT, 2222), Some(format!("a {FAR}")));
}

/// c leases from OVN's DHCP, which names the forwarder and the domain; OVN answers the
/// spec's names whichever server is asked, the forwarder the rest.
fn dhcp_and_dns(lab: &OvnLab, a_ns: &str, c_ns: &str) {
    let lease = lab.udhcpc(
        c_ns,
        "eth0",
        &["dns", "domain"],
        "ip=$ip dns=$dns domain=$domain",
        true,
    );
    let c_ip = lease
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ip="))
        .expect("an address")
        .to_string();
    assert!(
        lease.contains(&format!("dns={FAR} domain=vm.test")),
        "{lease}"
    );
    for (ns, server) in [(a_ns, "10.82.0.1"), (a_ns, FAR), (c_ns, FAR)] {
        assert_eq!(answer(ns, server, "a.vm.test"), "10.82.0.10", "{server}");
        assert_eq!(answer(ns, server, "B.vm.test"), "10.82.0.11", "{server}");
        assert_eq!(answer(ns, server, "c.vm.test"), c_ip, "{server}");
        assert_eq!(answer(ns, server, "api.vm.test"), "10.82.0.50", "{server}");
        assert_eq!(
            answer(ns, server, "-x 10.82.0.11"),
            "b.vm.test.",
            "{server}"
        );
    }
    // The guest's own resolver (glibc), set up from its lease: `a` is searched under the
    // domain and answered by OVN (the forwarder would say 203.0.113.66).
    let _resolv = NetnsResolv::new(c_ns, &format!("nameserver {FAR}\nsearch vm.test\n"));
    let hosts = ok_in(c_ns, "getent ahostsv4 a");
    assert!(hosts.starts_with("10.82.0.10 "), "{hosts}");
    // Other names go on to the server asked: the forwarder answers them (SNAT'd out).
    assert_eq!(answer(c_ns, FAR, "far.example"), "203.0.113.77");
    assert!(dig(a_ns, FAR, "nope.vm.test").contains("status: NXDOMAIN"));
    // Asked of the gateway, a name OVN does not hold gets no DNS answer at all.
    let out = dig(a_ns, "10.82.0.1", "nope.vm.test");
    assert!(!out.contains("status:"), "{out}");
}

/// Rows changed by hand are planned and put back.
fn drift(lab: &OvnLab, file: &SpecFile, a_ns: &str, far: &str) {
    assert!(lab.kvm(1, &["plan", file.path()]).contains("No changes"));
    lab.nbctl("lb-del kvmnet-fwd-tcp");
    let uuid = lab.nbctl("--bare --columns=_uuid find DNS external_ids:kvmnet-key=web");
    lab.nbctl(&format!(
        "set DNS {} records:a.vm.test=10.82.0.99",
        uuid.trim()
    ));
    let plan = lab.kvm(1, &["plan", file.path()]);
    assert!(
        plan.contains("ovn-forward kvmnet-fwd-tcp") && plan.contains("ovn-dns web"),
        "{plan}"
    );
    lab.kvm(1, &["apply", file.path()]);
    assert!(lab.kvm(2, &["plan", file.path()]).contains("No changes"));
    lab.nbctl("--wait=hv sync");
    let _a22 = listen(a_ns, 22, "a");
    assert_eq!(connect_soon(far, SNAT, 2222), format!("a {FAR}"));
    assert_eq!(answer(a_ns, "10.82.0.1", "a.vm.test"), "10.82.0.10");
}

/// The bridge port `xbr` in `x` forwards `mac` to.
fn fdb_port(x: &str, mac: &str) -> String {
    ok_in(x, "bridge fdb show br xbr")
        .lines()
        .find(|l| l.starts_with(mac) && !l.contains("permanent"))
        .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        .unwrap_or_default()
}

/// hv2 dies; hv1 takes the gateway port and announces the router's address, so the
/// external bridge learns the router's MAC is now behind hv1's link before any guest
/// sends anything, and the far host reaches the forward again. The MAC itself does not
/// change (a distributed gateway port keeps its MAC on every chassis): what moves is where
/// the external network finds it.
fn failover(lab: &OvnLab, x: &str, a_ns: &str, far: &str) {
    let mac = lab
        .nbctl("get Logical_Router_Port kvmnet-lrp-ext mac")
        .trim()
        .trim_matches('"')
        .to_string();
    assert_eq!(fdb_port(x, &mac), "x2", "the router's MAC is behind hv2");
    let neigh = ok_in(x, &format!("ip neigh show {SNAT}"));
    assert!(neigh.contains(&mac), "{neigh}");
    let _a22 = listen(a_ns, 22, "a");
    let mut garp = spawn_in(
        x,
        &[
            "timeout",
            "40",
            "tcpdump",
            "-n",
            "-l",
            "-e",
            "-c",
            "1",
            "-i",
            "x1",
            &format!("arp and ether src {mac}"),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    lab.crash(2, "ovs-vswitchd");
    lab.wait_active("hv1");
    let mut seen = String::new();
    std::io::Read::read_to_string(garp.0.stdout.as_mut().unwrap(), &mut seen).unwrap();
    assert!(
        seen.contains(&format!("Reply {SNAT} is-at {mac}"))
            || seen.contains(&format!("Request who-has {SNAT} tell {SNAT}")),
        "no gratuitous ARP for {SNAT} from hv1: {seen:?}"
    );
    let t = Instant::now();
    while fdb_port(x, &mac) != "x1" {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the external bridge still sends the router's MAC to {}",
            fdb_port(x, &mac)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok_in(x, &format!("ip neigh show {SNAT}")).contains(&mac));
    assert_eq!(connect_soon(far, SNAT, 2222), format!("a {FAR}"));
    // The hairpin moved with the gateway: a reaches its own forward through hv1 now.
    assert_eq!(connect_soon(a_ns, SNAT, 2222), format!("a {SNAT}"));
}

#[test]
fn forwards_dns_and_gateway_announcements() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(3);
    for i in 1..=3 {
        lab.start_controller(i);
    }
    let before = lab.nb_rows();
    let (x, far) = lab.external(&[1, 2]);
    let _dns = dnsmasq(&far);
    let a_ns = lab.ns.reserve("fwa");
    let b_ns = lab.ns.reserve("fwb");
    let c_ns = lab.ns.reserve("fwc");
    let file = SpecFile::new(&spec(&lab, &a_ns, &b_ns, &c_ns));
    for i in 1..=3 {
        lab.kvm(i, &["apply", file.path()]);
    }
    for g in [&a_ns, &b_ns] {
        ok_in(
            g,
            "ethtool -K eth0 tx off >/dev/null && ip route replace default via 10.82.0.1",
        );
    }
    ok_in(&c_ns, "ethtool -K eth0 tx off >/dev/null");
    for p in ["fwa", "fwb", "fwc"] {
        lab.wait_up(p);
    }
    lab.wait_active("hv2");

    forwards(&a_ns, &b_ns, &far);
    hairpin(&a_ns, &b_ns, &far);
    dhcp_and_dns(&lab, &a_ns, &c_ns);
    drift(&lab, &file, &a_ns, &far);
    failover(&lab, &x, &a_ns, &far);

    for i in [3, 2, 1] {
        lab.kvm(i, &["destroy"]);
    }
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy leaves exactly the rows that were there"
    );
}
