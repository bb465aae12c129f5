//! The guard is an allow-list: attacks from a guest, with real attack tools (dsniff, thc-ipv6,
//! yersinia) and crafted frames (scapy), each shown failing while the same guest's
//! legitimate traffic still flows.

mod common;
use common::*;

const A_MAC: &str = "52:54:00:71:00:0a";
const B_MAC: &str = "52:54:00:71:00:0b";
const M_MAC: &str = "52:54:00:71:00:0c";
const N_MAC: &str = "52:54:00:72:00:0d";

/// Runs tests/common/frames.py (scapy) in `ns`, with the system's Python (Debian's
/// python3-scapy is installed for it, not for another python3 first on PATH).
fn frames(ns: &str, args: &str) {
    let script = manifest_dir().join("tests/common/frames.py");
    ok_in(ns, &format!("/usr/bin/python3 {} {args}", script.display()));
}

/// Runs an attack tool in `ns` for `secs` seconds (they run until stopped; yersinia stops
/// at the first key on its stdin, so it gets one that stays open).
fn tool(ns: &str, cmd: &str, secs: u32) {
    let _ = in_ns(
        ns,
        &format!(
            "sleep {} | timeout -s INT {secs} {cmd} >/dev/null 2>&1",
            secs + 1
        ),
    );
}

/// An attack tool running in `ns` until dropped, then killed outright: some (arpspoof)
/// undo their work when asked to stop, so the tests look while they run.
struct Running(std::process::Child);

impl Running {
    fn start(ns: &str, cmd: &str) -> Running {
        let c = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("exec {cmd}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the tool runs");
        Running(c)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP listener in a namespace, counting what arrives until it is read.
struct Listener(std::process::Child);

impl Listener {
    fn udp(ns: &str, port: u16, v6: bool) -> Listener {
        let (fam, any) = if v6 {
            ("AF_INET6", "::")
        } else {
            ("AF_INET", "0.0.0.0")
        };
        // Counts datagrams until its stdin closes (or 10 s pass), then drains the socket.
        let script = format!(
            "import socket,select,sys\ns=socket.socket(socket.{fam},socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\ns.bind(('{any}',{port}))\nn=0\nwhile True:\n  r=select.select([s,sys.stdin],[],[],10)[0]\n  if not r: break\n  if s in r:\n    s.recvfrom(2000); n+=1\n  if sys.stdin in r and not sys.stdin.read(1): break\ns.setblocking(False)\ntry:\n  while True:\n    s.recvfrom(2000); n+=1\nexcept OSError:\n  pass\nprint(n)\n"
        );
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        std::thread::sleep(std::time::Duration::from_millis(400));
        Listener(child)
    }

    /// How many datagrams arrived (after a short wait for stragglers).
    fn count(mut self) -> usize {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(self.0.stdin.take());
        let out = self.0.wait_with_output().expect("listener ends");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }
}

fn neigh_mac(ns: &str, ip: &str) -> String {
    ok_in(ns, &format!("ip neigh show {ip}"))
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

fn ll(mac: &str) -> String {
    let m: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    format!(
        "fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}",
        m[0] ^ 2,
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    )
}

/// The lab: a nat network with victims a and b and attacker m; a bridge network on an uplink
/// whose far end is namespace `lan` (the physical switch), with attacker n on it.
struct Lab {
    /// Removed (with every namespace of the lab) when the lab is dropped.
    _ns: Namespaces,
    host: String,
    a: String,
    b: String,
    m: String,
    n: String,
    lan: String,
    _spec: SpecFile,
}

fn lab() -> Lab {
    let mut ns = Namespaces::new();
    let host = ns.add("gh");
    let lan = ns.add("glan");
    let g = ns.reserve("gg");
    let (a, b, m, n) = (
        format!("{g}a"),
        format!("{g}b"),
        format!("{g}m"),
        format!("{g}n"),
    );
    ns.names
        .extend([a.clone(), b.clone(), m.clone(), n.clone()]);
    ok(&format!(
        "ip -n {host} link add g-up type veth peer name eth0 netns {lan} && ip -n {host} link set g-up up && ip -n {lan} link set eth0 up && ip -n {lan} addr add 10.72.0.1/24 dev eth0"
    ));
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  lab:
    mode: nat
    bridge: g-lab
    ipv4: 10.71.0.1/24
    dhcp: {{}}
  lan:
    mode: bridge
    bridge: g-lanbr
    uplink: g-up
vms:
  a: {{ ports: [ {{ network: lab, name: g-a, kind: veth, netns: {a}, mac: "{A_MAC}", ipv4: 10.71.0.10 }} ] }}
  b: {{ ports: [ {{ network: lab, name: g-b, kind: veth, netns: {b}, mac: "{B_MAC}", ipv4: 10.71.0.11 }} ] }}
  m: {{ ports: [ {{ network: lab, name: g-m, kind: veth, netns: {m}, mac: "{M_MAC}", ipv4: 10.71.0.12 }} ] }}
  n: {{ ports: [ {{ network: lan, name: g-n, kind: veth, netns: {n}, mac: "{N_MAC}", ipv4: 10.72.0.12/24 }} ] }}
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    for x in [&a, &b, &m] {
        assert!(pings(x, "10.71.0.1"), "{x} cannot reach the gateway");
    }
    assert!(pings(&n, "10.72.0.1"), "n cannot reach the LAN");
    // Link-local addresses are usable once duplicate address detection is over.
    for x in [&a, &b, &m, &n] {
        let _ = in_ns(
            x,
            "for i in $(seq 50); do [ -z \"$(ip -6 addr show dev eth0 tentative)\" ] && break; sleep 0.1; done",
        );
    }
    Lab {
        _ns: ns,
        host,
        a,
        b,
        m,
        n,
        lan,
        _spec: spec,
    }
}

fn bridge_mac(host: &str, br: &str) -> String {
    ok(&format!("ip -n {host} -br link show {br}"))
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string()
}

fn bridge_ll(host: &str, br: &str) -> String {
    ok(&format!(
        "ip -n {host} -6 -br addr show dev {br} scope link"
    ))
    .split_whitespace()
    .nth(2)
    .map(|a| a.split('/').next().unwrap().to_string())
    .expect("the bridge has a link-local address")
}

#[test]
fn arp_poisoning_and_mac_flooding() {
    if !privileged() {
        return;
    }
    let l = lab();
    let (host, a, m) = (&l.host, &l.a, &l.m);
    let gw_mac = neigh_mac(a, "10.71.0.1");
    assert!(!gw_mac.is_empty());
    // dsniff's arpspoof from m, telling a that m is the gateway and the host that m is a
    // (looked at while it runs: it puts things right when it stops).
    {
        let _to_a = Running::start(m, "arpspoof -i eth0 -t 10.71.0.10 10.71.0.1");
        let _to_host = Running::start(m, "arpspoof -i eth0 -t 10.71.0.1 10.71.0.10");
        std::thread::sleep(std::time::Duration::from_secs(4));
        let _ = in_ns(a, "ping -c1 -W1 10.71.0.1");
        assert_eq!(neigh_mac(a, "10.71.0.1"), gw_mac, "arpspoof poisoned a");
        assert!(
            !ok(&format!("ip -n {host} neigh show 10.71.0.10")).contains(M_MAC),
            "arpspoof poisoned the host"
        );
    }
    assert!(
        pings(m, "10.71.0.1") && pings(m, "10.71.0.10"),
        "m's own traffic"
    );

    // dsniff's macof: thousands of random source MACs; the bridge learns none.
    tool(m, "macof -i eth0 -n 3000", 5);
    let fdb = ok(&format!("bridge -n {host} fdb show br g-lab"));
    let learnt = fdb
        .lines()
        .filter(|l| !l.contains("permanent") && !l.contains("52:54:00:71:"))
        .count();
    assert_eq!(learnt, 0, "the bridge learnt flooded MACs:\n{fdb}");
    assert!(
        pings(a, "10.71.0.11"),
        "a and b lost each other after macof"
    );
}

#[test]
fn neighbour_discovery_spoofing() {
    if !privileged() {
        return;
    }
    let l = lab();
    let (host, a, m) = (&l.host, &l.a, &l.m);
    // thc-ipv6's parasite6 answers every neighbour solicitation with m's MAC.
    let b_ll = ll(B_MAC);
    {
        let _parasite = Running::start(m, "atk6-parasite6 eth0");
        std::thread::sleep(std::time::Duration::from_millis(800));
        let _ = in_ns(
            a,
            &format!("ip neigh flush dev eth0; ping -6 -c2 -W1 {b_ll}%eth0"),
        );
        assert_eq!(
            neigh_mac(a, &b_ll),
            B_MAC,
            "parasite6 poisoned a's entry for b"
        );
    }
    // Unsolicited override advertisements for the bridge's link-local address, crafted
    // and from thc-ipv6's fake_advertise6.
    let br_ll = bridge_ll(host, "g-lab");
    let br_mac = bridge_mac(host, "g-lab");
    assert!(
        in_ns(a, &format!("ping -6 -c1 -W1 {br_ll}%eth0"))
            .status
            .success()
    );
    frames(m, &format!("na {M_MAC} {br_ll} ff02::1 33:33:00:00:00:01"));
    tool(
        m,
        &format!("atk6-fake_advertise6 -n 3 -w 0 eth0 {br_ll} ff02::1 {M_MAC}"),
        2,
    );
    assert_eq!(
        neigh_mac(a, &br_ll),
        br_mac,
        "a's entry for the gateway was overridden"
    );
    // Advertising its own address with another guest's MAC is refused too.
    let m_ll = ll(M_MAC);
    assert!(
        in_ns(a, &format!("ping -6 -c1 -W1 {m_ll}%eth0"))
            .status
            .success()
    );
    frames(
        m,
        &format!("na_own_target_foreign_ll {M_MAC} ff02::1 33:33:00:00:00:01 {B_MAC}"),
    );
    assert_eq!(neigh_mac(a, &m_ll), M_MAC, "m advertised itself at b's MAC");
    assert!(
        in_ns(m, &format!("ping -6 -c1 -W1 {br_ll}%eth0"))
            .status
            .success()
    );
}

#[test]
fn rogue_routers_and_redirects() {
    if !privileged() {
        return;
    }
    let l = lab();
    let (host, a, b, m) = (&l.host, &l.a, &l.b, &l.m);
    // thc-ipv6's fake_router6, plain, fragmented and behind a destination header: nobody
    // installs a route or a prefix from a guest.
    ok_in(b, "sysctl -qw net.ipv6.conf.eth0.accept_ra=2");
    tool(m, "atk6-fake_router6 eth0 2001:db8:66::/64", 3);
    tool(m, "atk6-fake_router6 -F eth0 2001:db8:67::/64", 2);
    tool(m, "atk6-fake_router6 -D eth0 2001:db8:68::/64", 2);
    let r6 = ok_in(b, "ip -6 route show; ip -6 addr show");
    assert!(!r6.contains("2001:db8:6"), "a rogue RA was accepted:\n{r6}");
    // Redirects, crafted and from thc-ipv6's redir6: a keeps its own way to b.
    let (a_ll, b_ll, m_ll) = (ll(A_MAC), ll(B_MAC), ll(M_MAC));
    let br_ll = bridge_ll(host, "g-lab");
    ok_in(a, "sysctl -qw net.ipv6.conf.eth0.accept_redirects=1");
    frames(
        m,
        &format!("redirect {M_MAC} {a_ll} {A_MAC} 2001:db8:99::1 {m_ll}"),
    );
    tool(
        m,
        &format!("atk6-redir6 eth0 {a_ll} 2001:db8:99::1 {br_ll} {m_ll} {M_MAC}"),
        2,
    );
    let route = ok_in(
        a,
        "ip -6 route show cache; ip -6 route get 2001:db8:99::1 2>&1 || true",
    );
    assert!(!route.contains(&m_ll), "a took a redirect: {route}");
    assert!(
        in_ns(a, &format!("ping -6 -c1 -W1 {b_ll}%eth0"))
            .status
            .success()
    );
}

#[test]
fn dhcp_starvation_and_bridge_protocols() {
    if !privileged() {
        return;
    }
    let l = lab();
    let (host, m) = (&l.host, &l.m);
    // yersinia's DHCP starvation (random MACs, and its own MAC with random chaddrs): no
    // request reaches the server.
    let dhcp = Listener::udp(host, 67, false);
    tool(m, "yersinia dhcp -attack 1 -interface eth0", 3);
    tool(m, "yersinia dhcp -M -attack 1 -interface eth0", 2);
    assert_eq!(dhcp.count(), 0, "DHCP starvation reached the host");
    // yersinia's STP (configuration BPDUs, a root claim) and CDP from n, and crafted STP,
    // LLDP and CDP frames: nothing reaches the uplink's far side (a physical switch with BPDU
    // guard would shut the host's port).
    let capture = std::process::Command::new("ip")
        .args([
            "netns", "exec", &l.lan, "timeout", "7", "tcpdump", "-nei", "eth0", "-c", "1",
            "ether dst 01:80:c2:00:00:00 or ether dst 01:80:c2:00:00:0e or ether dst 01:00:0c:cc:cc:cc",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump runs");
    std::thread::sleep(std::time::Duration::from_millis(800));
    tool(&l.n, "yersinia stp -attack 1 -interface eth0", 2);
    tool(&l.n, "yersinia stp -M -attack 4 -interface eth0", 2);
    tool(&l.n, "yersinia cdp -attack 1 -interface eth0", 1);
    frames(&l.n, &format!("bpdu {N_MAC}"));
    let captured = capture.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&captured.stdout).trim().is_empty(),
        "BPDU/LLDP/CDP left through the uplink: {}",
        String::from_utf8_lossy(&captured.stdout)
    );
    assert!(pings(&l.n, "10.72.0.1"), "n's own traffic to the LAN");
    let srv = Listener::udp(host, 67, false);
    frames(m, &format!("dhcp {M_MAC} 0.0.0.0 {M_MAC} discover"));
    assert!(srv.count() > 0, "m's own DHCP discover was lost");
}

#[test]
fn tagged_frames_do_not_pass() {
    if !privileged() {
        return;
    }
    let l = lab();
    let (host, a, m) = (&l.host, &l.a, &l.m);
    assert!(pings(host, "10.71.0.11"));
    let b_at_host = neigh_mac(host, "10.71.0.11");
    let host_mac = bridge_mac(host, "g-lab");
    // A priority-tagged ARP reply claiming b's address: receivers take VLAN 0 as untagged.
    frames(
        m,
        &format!("tagged_arp {M_MAC} 10.71.0.11 {host_mac} 10.71.0.1"),
    );
    assert_eq!(
        neigh_mac(host, "10.71.0.11"),
        b_at_host,
        "tagged ARP poisoned the host"
    );
    // Tagged IPv4 with a forged source (VLAN 0 and VLAN 5): a receives nothing, while the
    // same datagram untagged from m's own address arrives.
    let rx = Listener::udp(a, 5099, false);
    frames(
        m,
        &format!("tagged_udp {M_MAC} 10.71.0.11 {A_MAC} 10.71.0.10 0"),
    );
    frames(
        m,
        &format!("tagged_udp {M_MAC} 10.71.0.12 {A_MAC} 10.71.0.10 5"),
    );
    assert_eq!(rx.count(), 0, "a tagged datagram reached a");
    let rx = Listener::udp(a, 5099, false);
    frames(
        m,
        &format!("udp {M_MAC} 10.71.0.12 {A_MAC} 10.71.0.10 5099"),
    );
    assert!(rx.count() > 0, "m's own datagram was lost");
}

#[test]
fn dhcp_only_as_a_client_of_its_own_mac() {
    if !privileged() {
        return;
    }
    let l = lab();
    let (host, a, m) = (&l.host, &l.a, &l.m);
    // DHCP from m for another client's MAC (a discover, a release of b's address, a
    // decline), or as a relay: none reaches the server; m's own request does.
    let srv = Listener::udp(host, 67, false);
    frames(m, &format!("dhcp {M_MAC} 0.0.0.0 {B_MAC} discover"));
    frames(
        m,
        &format!("dhcp {M_MAC} 10.71.0.12 {B_MAC} release 10.71.0.11"),
    );
    frames(
        m,
        &format!("dhcp {M_MAC} 10.71.0.12 {B_MAC} decline 10.71.0.11"),
    );
    frames(
        m,
        &format!("dhcp {M_MAC} 10.71.0.12 {M_MAC} request 0.0.0.0 10.71.0.12"),
    );
    assert_eq!(srv.count(), 0, "foreign or relayed DHCP reached the server");
    let srv = Listener::udp(host, 67, false);
    frames(
        m,
        &format!("dhcp {M_MAC} 10.71.0.12 {M_MAC} request 10.71.0.12"),
    );
    assert!(srv.count() > 0, "m's own DHCP request was lost");
    // DHCPv6 server replies from a guest reach no client.
    let rx6 = Listener::udp(a, 546, true);
    frames(m, &format!("dhcp6_reply {M_MAC} ff02::1"));
    frames(m, &format!("dhcp6_reply {M_MAC} {}", ll(A_MAC)));
    assert_eq!(
        rx6.count(),
        0,
        "a DHCPv6 reply from a guest reached a client"
    );
}
