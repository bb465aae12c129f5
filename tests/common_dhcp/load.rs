//! Load on the server: a DISCOVER flood, raw clients recording every acknowledged lease,
//! perfdhcp relaying through a client namespace, and the resident memory of a process.
//! Apart from `mod.rs` because these drive and measure the server rather than set it up.

use std::net::Ipv4Addr;

use kvmnet::dhcp::Scope;
use kvmnet::dhcp::packet::MessageType;

use super::{Perf, RawClient, Rng, Topo, in_ns, ok, parse_perfdhcp};

/// Sends DISCOVERs with random client MACs from `ns` as fast as it can until `stop`;
/// returns how many it sent. Like dhcpstarv, minus the spoofed Ethernet source (the server
/// sees only chaddr either way).
pub fn flood(
    ns: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let c = RawClient::new(ns, "52:54:00:ff:ff:ff");
    std::thread::spawn(move || {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut n = 0u64;
        let dst = std::net::SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let r = rng.next().to_be_bytes();
            let m = kvmnet::spec::Mac([0x02, r[1], r[2], r[3], r[4], r[5]]);
            let p = kvmnet::dhcp::packet::Packet::request(m, r[6] as u32, MessageType::Discover);
            if c.sock.send_to(&p.encode(), dst).is_ok() {
                n += 1;
            }
        }
        n
    })
}

/// Raw clients with fresh MACs doing DORA until `stop`; every (MAC, address) ACKed.
pub fn ack_recorder(
    ns: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server: Ipv4Addr,
    seed: u64,
) -> std::thread::JoinHandle<Vec<(String, Ipv4Addr)>> {
    let mut c = RawClient::new(ns, "52:54:00:00:00:01");
    std::thread::spawn(move || {
        let mut rng = Rng(seed);
        let mut acked = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let r = rng.next().to_be_bytes();
            c.mac = kvmnet::spec::Mac([0x52, 0x54, r[0], r[1], r[2], r[3]]);
            if let Some((ip, _)) = c.dora(server) {
                acked.push((c.mac.to_string(), ip));
            }
        }
        acked
    })
}

/// A server namespace with `br0` at `.1/16` and a client namespace at `.2/16` for perfdhcp,
/// which relays (giaddr = its own address) when given the server's address.
pub fn perf_topo(tag: &str, net: &str) -> (Topo, String) {
    let mut t = Topo::new(tag, &format!("{net}.0.1/16"));
    let ns = t.add_client("perf", "52:54:00:00:00:02");
    ok(&format!("ip -n {ns} addr add {net}.0.2/16 dev eth0"));
    (t, ns)
}

pub fn perf_scope(t: &Topo, net: &str) -> Scope {
    let mut s = t.scope(
        Some((&format!("{net}.1.0"), &format!("{net}.254.254"))),
        &[],
    );
    s.lease_secs = 3600;
    s
}

pub fn perfdhcp(ns: &str, rate: u32, secs: u32, clients: u32, server: Ipv4Addr) -> (Perf, String) {
    let o = in_ns(
        ns,
        // -W: after the last send, wait for answers still in flight (else they count as
        // drops).
        &format!("perfdhcp -4 -r {rate} -p {secs} -R {clients} -W 1000000 {server} 2>&1"),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    (parse_perfdhcp(&out), out)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
