//! Attacks from a guest, each shown blocked while the same guest's legitimate traffic still
//! flows. The attacker is a guest namespace writing raw frames on its port.

mod common;
use common::*;

/// Python that writes raw Ethernet frames on eth0 of the namespace it runs in.
const RAW: &str = r#"
import socket, struct, sys, random
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
def mac(t): return bytes(int(x, 16) for x in t.split(":"))
def ip(t): return socket.inet_aton(t)
def csum(b):
    if len(b) % 2: b += b"\0"
    n = sum(struct.unpack("!%dH" % (len(b) // 2), b)); n = (n >> 16) + (n & 0xffff); n += n >> 16
    return (~n) & 0xffff
def arp_reply(src_mac, src_ip, dst_mac, dst_ip):
    return mac(dst_mac) + mac(src_mac) + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac(src_mac) + ip(src_ip) + mac(dst_mac) + ip(dst_ip)
def udp(src_mac, src_ip, sport, dport, payload):
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0, 64, 17, 0, ip(src_ip), ip("255.255.255.255"))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return mac("ff:ff:ff:ff:ff:ff") + mac(src_mac) + b"\x08\x00" + h + u
cmd = sys.argv[1]; a = sys.argv[2:]
if cmd == "arp":        # claim IP a[1] with MAC a[0], broadcast, gratuitous reply
    for _ in range(3): s.send(arp_reply(a[0], a[1], "ff:ff:ff:ff:ff:ff", a[1]))
elif cmd == "udp":      # UDP broadcast from (mac, ip, sport) to dport
    for _ in range(3): s.send(udp(a[0], a[1], int(a[2]), int(a[3]), b"kvmnet-probe"))
elif cmd == "flood":    # frames from random source MACs
    for i in range(int(a[0])):
        src = bytes([0x02] + [random.randrange(256) for _ in range(5)])
        s.send(mac("ff:ff:ff:ff:ff:ff") + src + b"\x88\xb5" + b"\0" * 46)
elif cmd == "ra":       # IPv6 router advertisement from link-local fe80::1 to all nodes
    src_mac = a[0]
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
    src6 = socket.inet_pton(socket.AF_INET6, "fe80::1"); dst6 = socket.inet_pton(socket.AF_INET6, "ff02::1")
    pseudo = src6 + dst6 + struct.pack("!I3xB", len(ra), 58)
    ra = ra[:2] + struct.pack("!H", csum(pseudo + ra)) + ra[4:]
    h = struct.pack("!IHBB", 0x60000000, len(ra), 58, 255) + src6 + dst6
    for _ in range(3): s.send(mac("33:33:00:00:00:01") + mac(src_mac) + b"\x86\xdd" + h + ra)
"#;

fn raw(ns: &str, args: &str) {
    let path = std::env::temp_dir().join(format!("{}.py", unique("raw")));
    std::fs::write(&path, RAW).unwrap();
    ok_in(ns, &format!("python3 {} {args}", path.display()));
    let _ = std::fs::remove_file(path);
}

/// Listens on UDP `port` in `ns` while `send` runs; returns whether anything arrived.
fn udp_receives(ns: &str, port: u16, send: impl FnOnce()) -> bool {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\ns.bind(('0.0.0.0',{port}))\ns.settimeout(2)\ntry:\n  s.recvfrom(100); print('GOT')\nexcept socket.timeout:\n  print('NONE')\n"
    );
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    send();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).contains("GOT")
}

fn neigh_mac(ns: &str, ip: &str) -> String {
    ok_in(ns, &format!("ip neigh show {ip}"))
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn attacks_from_a_guest_are_blocked_and_its_traffic_flows() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("sec");
    let g = ns.reserve("sg");
    let (a, b, m) = (format!("{g}a"), format!("{g}b"), format!("{g}m"));
    ns.names.extend([a.clone(), b.clone(), m.clone()]);
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  lab:
    mode: isolated
    bridge: s-lab
    ipv4: 10.61.0.1/24
vms:
  a: {{ ports: [ {{ network: lab, name: s-a, kind: veth, netns: {a}, mac: "52:54:00:61:00:0a", ipv4: 10.61.0.10 }} ] }}
  b: {{ ports: [ {{ network: lab, name: s-b, kind: veth, netns: {b}, mac: "52:54:00:61:00:0b", ipv4: 10.61.0.11 }} ] }}
  m: {{ ports: [ {{ network: lab, name: s-m, kind: veth, netns: {m}, mac: "52:54:00:61:00:0c", ipv4: 10.61.0.12 }} ] }}
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    let mmac = "52:54:00:61:00:0c";
    for x in [&a, &b, &m] {
        assert!(pings(x, "10.61.0.1"), "{x} cannot reach the gateway");
    }
    assert!(pings(&a, "10.61.0.11") && pings(&a, "10.61.0.12"));
    let gw_mac = neigh_mac(&b, "10.61.0.1");
    let b_mac_at_a = neigh_mac(&a, "10.61.0.11");
    assert!(!gw_mac.is_empty() && !b_mac_at_a.is_empty());

    // Forged source MAC: nothing gets through; the real MAC works again.
    ok_in(&m, "ip link set eth0 address 52:54:00:66:66:66");
    assert!(!pings(&m, "10.61.0.1"), "forged source MAC passed");
    ok_in(&m, &format!("ip link set eth0 address {mmac}"));
    assert!(
        pings(&m, "10.61.0.1"),
        "legitimate traffic blocked after a forged MAC"
    );

    // Forged source IP.
    ok_in(&m, "ip addr add 10.61.0.99/32 dev eth0");
    assert!(
        !in_ns(&m, "ping -c2 -W1 -I 10.61.0.99 10.61.0.1")
            .status
            .success(),
        "forged source IP passed"
    );
    ok_in(&m, "ip addr del 10.61.0.99/32 dev eth0");
    assert!(pings(&m, "10.61.0.1"));

    // ARP claiming the gateway, and claiming another guest: neighbours keep the real MACs.
    raw(&m, &format!("arp {mmac} 10.61.0.1"));
    raw(&m, &format!("arp {mmac} 10.61.0.11"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        neigh_mac(&b, "10.61.0.1"),
        gw_mac,
        "gateway's neighbour entry poisoned"
    );
    assert_eq!(
        neigh_mac(&a, "10.61.0.11"),
        b_mac_at_a,
        "guest's neighbour entry poisoned"
    );
    let host_gw = ok(&format!("ip -n {host} neigh show 10.61.0.11"));
    assert!(
        !host_gw.contains(mmac),
        "host learnt the attacker's claim: {host_gw}"
    );

    // A rogue DHCP server: its offers never reach another guest, from port 67 or any other
    // (clients look only at the destination port); other broadcasts do.
    for sport in [67, 1067] {
        assert!(
            !udp_receives(&b, 68, || raw(
                &m,
                &format!("udp {mmac} 10.61.0.12 {sport} 68")
            )),
            "rogue DHCP from port {sport} passed"
        );
    }
    assert!(
        udp_receives(&b, 5068, || raw(
            &m,
            &format!("udp {mmac} 10.61.0.12 5000 5068")
        )),
        "control broadcast lost"
    );

    // An IPv6 router advertisement from a guest: nobody installs a route from it.
    ok_in(&b, "sysctl -qw net.ipv6.conf.eth0.accept_ra=2");
    raw(&m, &format!("ra {mmac}"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let r6 = ok_in(&b, "ip -6 route show");
    assert!(!r6.contains("fe80::1"), "route from a rogue RA: {r6}");

    // MAC flooding: the bridge learns none of the random sources, guests still talk.
    raw(&m, "flood 2000");
    let fdb = ok(&format!("bridge -n {host} -j fdb show br s-lab"));
    let learnt = fdb.matches("\"mac\":\"02:").count();
    assert_eq!(learnt, 0, "bridge learnt flooded MACs");
    assert!(pings(&a, "10.61.0.11"));

    // The counters show the drops, and antispoof: false lifts the guard.
    let rules = ok(&format!(
        "ip netns exec {host} nft list table bridge kvmnet"
    ));
    assert!(rules.contains("counter packets"), "{rules}");
    let open = SpecFile::new(
        &std::fs::read_to_string(&spec.0)
            .unwrap()
            .replace("ipv4: 10.61.0.12 }", "ipv4: 10.61.0.12, antispoof: false }"),
    );
    ns.kvmnet_ok(&["apply", open.path(), "--netns", &host]);
    ok_in(&m, "ip addr add 10.61.0.98/32 dev eth0");
    assert!(
        in_ns(&m, "ping -c2 -W1 -I 10.61.0.98 10.61.0.1")
            .status
            .success(),
        "antispoof: false still filters"
    );
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn isolated_ports_reach_the_gateway_but_not_each_other() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("iso");
    let g = ns.reserve("ig");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone()]);
    let text = format!(
        r#"version: 1
networks:
  n:
    mode: nat
    bridge: i-n
    ipv4: 10.62.0.1/24
    isolate_ports: true
vms:
  a: {{ ports: [ {{ network: n, name: i-a, kind: veth, netns: {a}, ipv4: 10.62.0.10 }} ] }}
  b: {{ ports: [ {{ network: n, name: i-b, kind: veth, netns: {b}, ipv4: 10.62.0.11 }} ] }}
"#
    );
    let spec = SpecFile::new(&text);
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert!(pings(&a, "10.62.0.1") && pings(&b, "10.62.0.1"));
    assert!(!pings(&a, "10.62.0.11"), "isolated ports reach each other");
    assert!(ok(&format!("ip -n {host} -d link show i-a")).contains("isolated on"));
    // Turning it off is an in-place change.
    let open = SpecFile::new(&text.replace("isolate_ports: true", "isolate_ports: false"));
    let plan = ns.kvmnet_ok(&["plan", open.path(), "--netns", &host]);
    assert!(
        plan.contains("isolated true -> false") && !plan.contains("- veth"),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", open.path(), "--netns", &host]);
    assert!(pings(&a, "10.62.0.11"));
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
