//! Firewalls cover IPv6 and ports without `ipv4`, an outbound drop policy leaves only the DHCP
//! server reachable, and guests reach the host only where `host_access` says so.

mod common;
use common::*;

const A_MAC: &str = "52:54:00:85:00:0a";

/// TCP from `ns` to `addr` (IPv4, or `fe80::...%eth0`) port `port`: connected, refused or
/// blocked (no answer).
fn tcp(ns: &str, addr: &str, port: u16) -> &'static str {
    let script = format!(
        "import socket\na='{addr}'\nfam=socket.AF_INET6 if ':' in a else socket.AF_INET\nai=socket.getaddrinfo(a,{port},fam,socket.SOCK_STREAM)[0][4]\ns=socket.socket(fam)\ns.settimeout(2)\ntry:\n  s.connect(ai); print('open')\nexcept ConnectionRefusedError:\n  print('refused')\nexcept OSError:\n  print('blocked')\n"
    );
    let o = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output()
        .unwrap();
    match String::from_utf8_lossy(&o.stdout).trim() {
        "open" => "open",
        "refused" => "refused",
        _ => "blocked",
    }
}

/// TCP servers on `ports`, both families, in `ns`, until dropped.
struct Servers(std::process::Child);

impl Servers {
    fn start(ns: &str, ports: &[u16]) -> Servers {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let script = format!(
            "import socket,threading,time\ndef serve(p):\n  s=socket.socket(socket.AF_INET6)\n  s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n  s.bind(('::',p)); s.listen(16)\n  while True:\n    s.accept()[0].close()\nfor p in [{}]:\n  threading.Thread(target=serve,args=(p,),daemon=True).start()\ntime.sleep(120)\n",
            list.join(",")
        );
        let c = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", &script])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
        Servers(c)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts UDP datagrams arriving on `port` in `ns` while `send` runs.
fn udp_count(ns: &str, port: u16, send: impl FnOnce()) -> usize {
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\ns.bind(('0.0.0.0',{port}))\ns.settimeout(2.5)\nn=0\ntry:\n  while True:\n    s.recvfrom(2000); n+=1\nexcept socket.timeout:\n  pass\nprint(n)\n"
    );
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    send();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Sends three datagrams from `ns` (source port `sport`) to `ip:port`, each shaped like a
/// DHCP request of the sender's own MAC (the guard lets nothing else go to port 67), with
/// data after it: a tunnel through a firewall that would let "DHCP" out anywhere.
fn udp_send(ns: &str, sport: u16, ip: &str, port: u16) {
    let script = format!(
        "import socket\nmac=bytes(int(x,16) for x in open('/sys/class/net/eth0/address').read().strip().split(':'))\nmsg=bytes([1,1,6,0])+bytes(24)+mac+bytes(10)+b'tunnel'\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\ns.bind(('0.0.0.0',{sport}))\nfor i in range(3): s.sendto(msg,('{ip}',{port}))\n"
    );
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .output();
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

#[test]
fn firewalls_cover_ipv6_ports_without_ipv4_and_the_dhcp_tunnel() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("vh");
    let wan = ns.add("vw");
    let g = ns.reserve("vg");
    let (a, b, c) = (format!("{g}a"), format!("{g}b"), format!("{g}c"));
    ns.names.extend([a.clone(), b.clone(), c.clone()]);
    ok(&format!(
        "ip -n {host} link add wan0 type veth peer name eth0 netns {wan} && ip -n {host} addr add 198.51.100.1/24 dev wan0 && ip -n {host} link set wan0 up && ip -n {wan} addr add 198.51.100.2/24 dev eth0 && ip -n {wan} link set eth0 up"
    ));
    // a has no ipv4 (its guest sets one itself) and an inbound drop policy with ssh open;
    // c may send nothing.
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  lab:
    mode: nat
    bridge: v-lab
    ipv4: 10.85.0.1/24
    dhcp: {{ pool: false }}
    host_access: [ {{ proto: tcp, ports: [22] }} ]
vms:
  a:
    ports:
      - {{ network: lab, name: v-a, kind: veth, netns: {a}, mac: "{A_MAC}", dhcp_client: true,
          firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: tcp, ports: [22] }} ] }} }} }}
  b: {{ ports: [ {{ network: lab, name: v-b, kind: veth, netns: {b}, ipv4: 10.85.0.11 }} ] }}
  c:
    ports:
      - {{ network: lab, name: v-c, kind: veth, netns: {c}, ipv4: 10.85.0.12,
          firewall: {{ outbound: {{ policy: drop }} }} }}
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    ok_in(&a, "ip addr add 10.85.0.10/24 dev eth0");
    let a_ll = format!("{}%eth0", ll(A_MAC));
    let _a_srv = Servers::start(&a, &[22, 80]);
    let _h_srv = Servers::start(&host, &[22, 80]);
    std::thread::sleep(std::time::Duration::from_millis(1500)); // IPv6 DAD

    // a's inbound policy over IPv4 and over its IPv6 link-local address, from a neighbour
    // (over the bridge) and from the host.
    assert_eq!(tcp(&b, "10.85.0.10", 22), "open");
    assert_eq!(
        tcp(&b, "10.85.0.10", 80),
        "blocked",
        "IPv4 around a's drop policy"
    );
    assert_eq!(tcp(&b, &a_ll, 22), "open");
    assert_eq!(tcp(&b, &a_ll, 80), "blocked", "IPv6 around a's drop policy");
    let host_ll = format!("{}%v-lab", ll(A_MAC));
    assert_eq!(tcp(&host, &host_ll, 22), "open");
    assert_eq!(tcp(&host, &host_ll, 80), "blocked", "host to a over IPv6");
    assert!(
        !in_ns(&b, &format!("ping -6 -c1 -W1 {a_ll}"))
            .status
            .success(),
        "ping6 around a's drop policy"
    );

    // Guests reach the host for ICMP echo to the gateway and what host_access lists.
    assert!(pings(&b, "10.85.0.1"));
    assert_eq!(tcp(&b, "10.85.0.1", 22), "open", "host_access tcp 22");
    assert_eq!(
        tcp(&b, "10.85.0.1", 80),
        "blocked",
        "a host service not listed"
    );
    assert_eq!(
        tcp(&b, "198.51.100.1", 80),
        "blocked",
        "the host's other address"
    );
    let br_ll = ok(&format!(
        "ip -n {host} -6 -br addr show dev v-lab scope link"
    ))
    .split_whitespace()
    .nth(2)
    .map(|x| x.split('/').next().unwrap().to_string())
    .unwrap();
    assert_eq!(
        tcp(&b, &format!("{br_ll}%eth0"), 80),
        "blocked",
        "a host service over the bridge's link-local address"
    );
    assert!(
        in_ns(&b, &format!("ping -6 -c1 -W1 {br_ll}%eth0"))
            .status
            .success()
    );

    // c's outbound drop: nothing leaves, not even UDP to port 67 of another host; its DHCP
    // requests still reach the host's server (as broadcasts, and unicast to the gateway).
    assert!(!pings(&c, "10.85.0.1"));
    assert!(!pings(&c, "198.51.100.2"));
    assert_eq!(
        udp_count(&wan, 67, || udp_send(&c, 68, "198.51.100.2", 67)),
        0,
        "UDP to port 67 tunnelled out past an outbound drop"
    );
    assert_eq!(
        udp_count(&wan, 67, || udp_send(&b, 5000, "198.51.100.2", 67)),
        3,
        "b's datagrams (no firewall) are the control"
    );
    assert!(udp_count(&host, 67, || udp_send(&c, 68, "255.255.255.255", 67)) > 0);
    assert!(udp_count(&host, 67, || udp_send(&c, 68, "10.85.0.1", 67)) > 0);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
