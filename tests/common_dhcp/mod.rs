//! Helpers for the DHCP server tests: a server namespace with a bridge and veth pairs to
//! client namespaces (all removed on drop, passed or failed), the server in a thread or in a
//! child process, a raw DHCP client, and child processes that are killed on drop.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvmnet::backend::netns;
use kvmnet::dhcp::packet::{MessageType, Packet, opt};
use kvmnet::dhcp::{Limits, Reservation, Scope, Server, ServerHandle};
use kvmnet::spec::{Ipv4Cidr, Mac};

// Root check and shell helpers are the suite's common ones.
pub use crate::common::{ok, privileged, sh};

mod child;
mod load;
mod scripts;

// A test binary that imports by name (dhcp6.rs) uses none of these.
#[allow(unused_imports, reason = "each test binary uses a part of these")]
pub use {child::*, load::*, scripts::*};

/// A tool the test needs; with CI set it must be installed.
pub fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is not installed, and CI must not skip this test"
        );
        eprintln!("skipping: {tool} not installed");
    }
    ok
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Tests that load the machine (the flood, perfdhcp, kill -9 under load) take this, so a
/// flood's broadcast storm never counts as another test's packet loss: the kernel's
/// per-CPU backlog is shared by all namespaces.
pub static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn load_lock() -> std::sync::MutexGuard<'static, ()> {
    LOAD.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("kvd{}{}{tag}", std::process::id() % 100000, n)
}

pub fn mac(s: &str) -> Mac {
    s.parse().expect("test MAC")
}

/// A server namespace holding bridge `br0` with the gateway address, and client namespaces
/// each joined to the bridge by a veth pair (`eth0` on the client side).
pub struct Topo {
    pub server_ns: String,
    pub gw: Ipv4Addr,
    pub cidr: Ipv4Cidr,
    pub clients: Vec<String>,
    pub state_dir: PathBuf,
    names: Vec<String>,
    children: Vec<Child>,
}

impl Topo {
    /// `gw_cidr` like "10.71.0.1/24".
    pub fn new(tag: &str, gw_cidr: &str) -> Topo {
        let cidr: Ipv4Cidr = gw_cidr.parse().expect("cidr");
        let server_ns = unique(&format!("{tag}s"));
        let state_dir = std::env::temp_dir().join(unique(&format!("{tag}state")));
        let t = Topo {
            server_ns: server_ns.clone(),
            gw: cidr.addr,
            cidr,
            clients: Vec::new(),
            state_dir,
            names: vec![server_ns.clone()],
            children: Vec::new(),
        };
        netns::create(&server_ns).expect("create server namespace");
        ok(&format!(
            "ip -n {server_ns} link add br0 type bridge && \
             ip -n {server_ns} link set br0 up && \
             ip -n {server_ns} addr add {gw_cidr} dev br0"
        ));
        t
    }

    /// A client namespace whose `eth0` has `mac`; returns its name.
    pub fn add_client(&mut self, tag: &str, mac: &str) -> String {
        self.add_client_on(tag, mac, "br0")
    }

    /// The same on another bridge of the server namespace.
    pub fn add_client_on(&mut self, tag: &str, mac: &str, bridge: &str) -> String {
        let ns = unique(tag);
        netns::create(&ns).expect("create client namespace");
        self.names.push(ns.clone());
        let host = format!("h{}", self.clients.len());
        let s = &self.server_ns;
        ok(&format!(
            "ip -n {s} link add {host} type veth peer name eth0 netns {ns} && \
             ip -n {ns} link set eth0 address {mac} && \
             ip -n {s} link set {host} master {bridge} && \
             ip -n {s} link set {host} up && ip -n {ns} link set eth0 up"
        ));
        self.clients.push(ns.clone());
        ns
    }

    /// Keep `c` running only as long as the topology: killed on drop.
    pub fn adopt(&mut self, c: Child) -> usize {
        self.children.push(c);
        self.children.len() - 1
    }

    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// A scope for `br0` with this topology's subnet.
    pub fn scope(&self, pool: Option<(&str, &str)>, reservations: &[(&str, &str)]) -> Scope {
        Scope {
            network: "test".into(),
            interface: "br0".into(),
            server_ip: self.gw,
            subnet: self.cidr.network(),
            router: Some(self.gw),
            dns: vec![],
            domain: None,
            mtu: None,
            live_mtu: None,
            lease_secs: 600,
            routes: vec![],
            pool: pool.map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())),
            reservations: reservations
                .iter()
                .map(|(m, ip)| Reservation {
                    mac: mac(m),
                    ip: ip.parse().unwrap(),
                    port: format!("port-{m}"),
                })
                .collect(),
        }
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.names.iter().rev() {
            // Processes a test started inside (clients) must not outlive it.
            let _ = sh(&format!(
                "for p in $(ip netns pids {n} 2>/dev/null); do kill -9 $p; done"
            ));
            let _ = netns::delete(n);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The server running in a thread inside a namespace; stopped on drop.
pub struct ServerThread {
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<Server>>,
    pub handle: ServerHandle,
}

impl ServerThread {
    pub fn start(ns: &str, scopes: Vec<Scope>, dir: &Path, limits: Option<Limits>) -> ServerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns, dir, st) = (ns.to_string(), dir.to_path_buf(), stop.clone());
        let join = std::thread::spawn(move || {
            netns::enter(&ns).expect("enter server namespace");
            let mut s = match Server::start(scopes, &dir) {
                Ok(s) => s,
                Err(e) => {
                    tx.send(Err(e.to_string())).unwrap();
                    panic!("server start failed");
                }
            };
            if let Some(l) = limits {
                s.set_limits(l);
            }
            tx.send(Ok(s.handle())).unwrap();
            s.run(&st).expect("server runs");
            s
        });
        let handle = rx
            .recv()
            .expect("server thread answers")
            .unwrap_or_else(|e| panic!("server start: {e}"));
        ServerThread {
            stop,
            join: Some(join),
            handle,
        }
    }

    /// Run a stopped server again (on a thread in `ns`, like the first time).
    pub fn resume(ns: &str, mut server: Server) -> ServerThread {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = server.handle();
        let (ns, st) = (ns.to_string(), stop.clone());
        let join = std::thread::spawn(move || {
            netns::enter(&ns).expect("enter server namespace");
            server.run(&st).expect("server runs");
            server
        });
        ServerThread {
            stop,
            join: Some(join),
            handle,
        }
    }

    pub fn stop(mut self) -> Server {
        self.stop.store(true, Ordering::SeqCst);
        self.join.take().unwrap().join().expect("server thread")
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

/// The address, state and expiry of the lease `h` holds for `mac`.
pub fn bound_ip(h: &ServerHandle, mac: &str) -> Option<(Ipv4Addr, String, u64)> {
    h.leases()
        .into_iter()
        .find(|l| l.mac == mac)
        .map(|l| (l.ip, l.state, l.expires_unix))
}

/// Run `cmd` in `ns` with a shell; the child's output goes to the test's stderr unless
/// redirected in `cmd`.
pub fn spawn_in(ns: &str, cmd: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn in namespace")
}

pub fn in_ns(ns: &str, cmd: &str) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", cmd])
        .output()
        .expect("run in namespace")
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A DHCP client speaking through a UDP socket on port 68 (or 67 when acting as a relay)
/// in a client namespace.
pub struct RawClient {
    pub sock: UdpSocket,
    pub mac: Mac,
    xid: u32,
}

impl RawClient {
    pub fn new(ns: &str, mac_s: &str) -> RawClient {
        Self::bind(ns, mac_s, 68)
    }

    pub fn bind(ns: &str, mac_s: &str, port: u16) -> RawClient {
        let sock = netns::with_netns(ns, || {
            let s = socket2_like(port);
            s.set_broadcast(true).unwrap();
            s
        })
        .expect("enter client namespace");
        RawClient {
            sock,
            mac: mac(mac_s),
            xid: 0x1000 + COUNTER.fetch_add(1, Ordering::SeqCst) as u32 * 0x100,
        }
    }

    /// A request with a fresh xid and the usual parameter request list.
    pub fn packet(&mut self, kind: MessageType) -> Packet {
        self.xid += 1;
        let mut p = Packet::request(self.mac, self.xid, kind);
        p.set(opt::PARAM_LIST, vec![1, 3, 6, 15, 26, 28, 51, 54, 121]);
        p
    }

    pub fn send(&self, p: &Packet, to: Ipv4Addr) {
        self.sock
            .send_to(&p.encode(), SocketAddrV4::new(to, 67))
            .expect("send");
    }

    pub fn broadcast(&self, p: &Packet) {
        self.send(p, Ipv4Addr::BROADCAST)
    }

    /// The next reply to `xid` within `timeout`.
    pub fn recv(&self, xid: u32, timeout: Duration) -> Option<Packet> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = end.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    if let Ok(p) = Packet::parse(&buf[..n])
                        && p.xid == xid
                        && p.op == 2
                    {
                        return Some(p);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Send (broadcast or to `to`) and wait for the answer, retrying like a client does.
    pub fn exchange(&self, p: &Packet, to: Ipv4Addr) -> Option<Packet> {
        for _ in 0..3 {
            self.send(p, to);
            if let Some(r) = self.recv(p.xid, Duration::from_millis(700)) {
                return Some(r);
            }
        }
        None
    }

    /// DISCOVER + REQUEST (broadcast flag set: no address needed to hear the answers).
    pub fn dora(&mut self, server: Ipv4Addr) -> Option<(Ipv4Addr, Packet)> {
        let mut d = self.packet(MessageType::Discover);
        d.flags = 0x8000;
        let offer = self.exchange(&d, Ipv4Addr::BROADCAST)?;
        if offer.message_type() != Some(MessageType::Offer) {
            return None;
        }
        let mut r = self.packet(MessageType::Request);
        r.flags = 0x8000;
        r.set(opt::SERVER_ID, server.octets().to_vec());
        r.set(opt::REQUESTED_IP, offer.yiaddr.octets().to_vec());
        let ack = self.exchange(&r, Ipv4Addr::BROADCAST)?;
        (ack.message_type() == Some(MessageType::Ack)).then_some((ack.yiaddr, ack))
    }
}

/// UDP socket on 0.0.0.0:`port`, bound to eth0, address reusable.
fn socket2_like(port: u16) -> UdpSocket {
    // SAFETY: plain syscalls on a fresh descriptor that is wrapped right away.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let s = <UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for o in [libc::SO_REUSEADDR, libc::SO_BROADCAST] {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                o,
                (&one as *const libc::c_int).cast(),
                4,
            );
        }
        let dev = b"eth0";
        assert_eq!(
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                dev.as_ptr().cast(),
                dev.len() as u32
            ),
            0
        );
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_port = port.to_be();
        assert_eq!(
            libc::bind(
                s.as_raw_fd(),
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32
            ),
            0,
            "bind :{port}: {}",
            std::io::Error::last_os_error()
        );
        s
    }
}

/// Tiny xorshift: random MACs and xids without extra crates.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Parse perfdhcp's report: (sent, received, drops) of the DISCOVER-OFFER and
/// REQUEST-ACK exchanges, and the average delays in ms.
#[derive(Debug, Default)]
pub struct Perf {
    pub sent: [u64; 2],
    pub received: [u64; 2],
    pub drops: [u64; 2],
    pub avg_delay_ms: [f64; 2],
}

pub fn parse_perfdhcp(out: &str) -> Perf {
    let mut p = Perf::default();
    let mut section = None;
    for line in out.lines() {
        let l = line.trim();
        if l.starts_with("***Statistics for: DISCOVER-OFFER") {
            section = Some(0);
        } else if l.starts_with("***Statistics for: REQUEST-ACK") {
            section = Some(1);
        } else if l.starts_with("***") {
            section = None;
        }
        let Some(i) = section else { continue };
        let num = |l: &str| -> Option<f64> {
            l.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
        };
        if l.starts_with("sent packets:") {
            p.sent[i] = num(l).unwrap_or(0.0) as u64;
        } else if l.starts_with("received packets:") {
            p.received[i] = num(l).unwrap_or(0.0) as u64;
        } else if l.starts_with("drops:") {
            p.drops[i] = num(l).unwrap_or(0.0) as u64;
        } else if l.starts_with("avg delay:") {
            p.avg_delay_ms[i] = num(l).unwrap_or(0.0);
        }
    }
    p
}
