//! The built-in DHCPv6 server against real clients (ISC `dhclient -6`, dhcpcd): a
//! reservation by the port's MAC, pool addresses, information-request with DNS servers,
//! Release, leases kept across a restart. Each test builds its own namespaces (removed on
//! drop, passed or failed) and runs as root; without root it skips, unless CI is set.

mod common;
mod common_dhcp;

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common_dhcp::{have, in_ns, ok, privileged, unique, wait_for};
use kvmnet::backend::netns;
use kvmnet::dhcp::v6::{Lease6, Reservation6, Scope6, Server6, ServerHandle6};
use kvmnet::spec::Mac;

const PREFIX: &str = "fd00:db8:6::";

/// A server namespace with bridge `br0` and client namespaces joined to it by veth pairs
/// (`eth0` inside), all removed on drop.
struct Topo6 {
    server_ns: String,
    names: Vec<String>,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Topo6 {
    fn new(tag: &str) -> Topo6 {
        let server_ns = unique(&format!("{tag}6s"));
        netns::create(&server_ns).expect("server namespace");
        ok(&format!(
            "ip -n {server_ns} link add br0 type bridge && \
             ip netns exec {server_ns} sysctl -qw net.ipv6.conf.br0.accept_dad=0 && \
             ip -n {server_ns} link set br0 up && \
             ip -n {server_ns} addr add {PREFIX}1/64 dev br0 nodad"
        ));
        Topo6 {
            names: vec![server_ns.clone()],
            server_ns,
            children: Vec::new(),
            dir: std::env::temp_dir().join(unique(&format!("{tag}6d"))),
        }
    }

    fn add_client(&mut self, tag: &str, mac: &str) -> String {
        let ns = unique(tag);
        netns::create(&ns).expect("client namespace");
        self.names.push(ns.clone());
        let host = format!("h{}", self.names.len());
        let s = &self.server_ns;
        ok(&format!(
            "ip -n {s} link add {host} type veth peer name eth0 netns {ns} && \
             ip -n {ns} link set eth0 address {mac} && \
             ip netns exec {ns} sysctl -qw net.ipv6.conf.eth0.accept_dad=0 && \
             ip -n {s} link set {host} master br0 && \
             ip -n {s} link set {host} up && ip -n {ns} link set eth0 up && \
             ip -n {ns} link set lo up"
        ));
        wait_for("link-local addresses", Duration::from_secs(10), || {
            let c = in_ns(&ns, "ip -6 addr show dev eth0 scope link");
            let b = in_ns(s, "ip -6 addr show dev br0 scope link");
            let ready = |o: &std::process::Output| {
                let t = String::from_utf8_lossy(&o.stdout).to_string();
                t.contains("fe80") && !t.contains("tentative")
            };
            ready(&c) && ready(&b)
        });
        ns
    }

    fn scope(&self, reservations: &[(&str, &str)]) -> Scope6 {
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        Scope6 {
            network: "t6".into(),
            interface: "br0".into(),
            server_ip: a(&format!("{PREFIX}1")),
            prefix: format!("{PREFIX}/64").parse().unwrap(),
            dns: vec![a(&format!("{PREFIX}53"))],
            domains: vec!["v6.example".into()],
            lease_secs: 600,
            pool: Some((a(&format!("{PREFIX}1000")), a(&format!("{PREFIX}10ff")))),
            reservations: reservations
                .iter()
                .map(|(m, ip)| Reservation6 {
                    mac: m.parse::<Mac>().unwrap(),
                    ip: a(ip),
                    port: "vm".into(),
                })
                .collect(),
            guarded_macs: vec![],
            addresses: true,
        }
    }
}

impl Drop for Topo6 {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = netns::delete(n);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server in a thread inside the server namespace; stopped on drop.
struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    handle: ServerHandle6,
}

impl Running {
    fn start(ns: &str, scopes: Vec<Scope6>, dir: &Path) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns, dir, s) = (ns.to_string(), dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            netns::enter(&ns).expect("enter namespace");
            let mut server = Server6::start(scopes, &dir).expect("start");
            tx.send(server.handle()).unwrap();
            server.run(&s).expect("run");
        });
        let handle = rx.recv_timeout(Duration::from_secs(10)).expect("started");
        Running {
            stop,
            thread: Some(thread),
            handle,
        }
    }

    fn leases(&self) -> Vec<Lease6> {
        self.handle.leases()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A script for dhclient/dhcpcd that records each event's environment in `dir/NAME.REASON`.
fn hook(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.sh"));
    let d = dir.display();
    std::fs::write(
        &p,
        format!("#!/bin/sh\nenv | grep -E '^(reason|new_)' > {d}/{name}.tmp; mv {d}/{name}.tmp {d}/{name}.$reason\n"),
    )
    .unwrap();
    ok(&format!("chmod +x {}", p.display()));
    p
}

fn env_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `dhclient -6` once (-1) in `ns` (stateless with `-S`); its events land in `work`.
fn dhclient6(ns: &str, work: &Path, extra: &str) -> std::process::Output {
    let script = hook(work, "dhc");
    let w = work.display();
    in_ns(
        ns,
        &format!(
            "timeout 30 dhclient -6 -1 {extra} -sf {} -lf {w}/dhc.leases -pf {w}/dhc.pid eth0",
            script.display()
        ),
    )
}

#[test]
fn real_clients_get_reservations_pool_addresses_and_dns() {
    if !privileged() || !have("dhclient") || !have("dhcpcd") {
        return;
    }
    let mut t = Topo6::new("rc");
    let resv_mac = "02:00:5e:00:60:0a";
    let a = t.add_client("rca", resv_mac);
    let b = t.add_client("rcb", "02:00:5e:00:60:0b");
    let c = t.add_client("rcc", "02:00:5e:00:60:0c");
    let work = t.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let scope = t.scope(&[(resv_mac, &format!("{PREFIX}10"))]);
    let server = Running::start(&t.server_ns, vec![scope.clone()], &t.dir.join("state"));

    // dhclient -6 from the reserved port: the reservation, by its MAC.
    let wa = work.join("a");
    std::fs::create_dir_all(&wa).unwrap();
    let out = dhclient6(&a, &wa, "");
    assert!(out.status.success(), "dhclient -6: {out:?}");
    let env = env_of(&wa.join("dhc.BOUND6"));
    assert!(
        env.contains(&format!("new_ip6_address={PREFIX}10")),
        "{env}"
    );
    assert!(
        env.contains(&format!("new_dhcp6_name_servers={PREFIX}53")),
        "{env}"
    );

    // dhclient -6 from another port: a pool address.
    let wb = work.join("b");
    std::fs::create_dir_all(&wb).unwrap();
    let out = dhclient6(&b, &wb, "");
    assert!(out.status.success(), "dhclient -6: {out:?}");
    let env = env_of(&wb.join("dhc.BOUND6"));
    let pool_b = env
        .lines()
        .find_map(|l| l.strip_prefix("new_ip6_address="))
        .expect("an address")
        .parse::<Ipv6Addr>()
        .unwrap();
    assert!((scope.pool.unwrap().0..=scope.pool.unwrap().1).contains(&pool_b));

    // dhcpcd (DHCPv6 only, without waiting for an RA): another pool address.
    let wc = work.join("c");
    std::fs::create_dir_all(&wc).unwrap();
    let script = hook(&wc, "dcd");
    std::fs::write(
        wc.join("dhcpcd.conf"),
        "noipv6rs\nia_na 1\nnooption rapid_commit\n",
    )
    .unwrap();
    let out = in_ns(
        &c,
        &format!(
            "mount -t tmpfs kvmnet-test /var/lib/dhcpcd; \
             timeout 30 dhcpcd -f {w}/dhcpcd.conf -6 -1 -B -t 20 -c {s} eth0",
            w = wc.display(),
            s = script.display()
        ),
    );
    assert!(out.status.success(), "dhcpcd: {out:?}");
    let env = env_of(&wc.join("dcd.BOUND6"));
    assert!(env.contains("new_dhcp6_ia_na1_ia_addr1="), "{env}");
    let pool_c = env
        .lines()
        .find_map(|l| l.strip_prefix("new_dhcp6_ia_na1_ia_addr1="))
        .unwrap()
        .parse::<Ipv6Addr>()
        .unwrap();
    assert_ne!(pool_c, pool_b, "never the same address twice");

    let leases = server.leases();
    let bound = |ip: Ipv6Addr| leases.iter().any(|l| l.ip == ip && l.state == "bound");
    let resv: Ipv6Addr = format!("{PREFIX}10").parse().unwrap();
    assert!(bound(resv) && bound(pool_b) && bound(pool_c), "{leases:?}");
    assert!(
        leases
            .iter()
            .any(|l| l.ip == resv && l.reserved && l.mac == resv_mac)
    );

    // Information-request (dhclient -6 -S): DNS servers and the domain list.
    let wi = work.join("i");
    std::fs::create_dir_all(&wi).unwrap();
    let out = dhclient6(&b, &wi, "-S");
    assert!(out.status.success(), "dhclient -6 -S: {out:?}");
    let env = std::fs::read_dir(&wi)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("dhc."))
        .map(|e| env_of(&e.path()))
        .collect::<String>();
    assert!(
        env.contains(&format!("new_dhcp6_name_servers={PREFIX}53")),
        "{env}"
    );
    assert!(env.contains("new_dhcp6_domain_search=v6.example"), "{env}");

    // Release (dhclient -6 -r) frees the pool address.
    let out = in_ns(
        &b,
        &format!(
            "timeout 20 dhclient -6 -r -sf {s} -lf {w}/dhc.leases -pf {w}/dhc.pid eth0",
            s = wb.join("dhc.sh").display(),
            w = wb.display()
        ),
    );
    assert!(out.status.success(), "dhclient -6 -r: {out:?}");
    wait_for("the release", Duration::from_secs(5), || {
        server
            .leases()
            .iter()
            .any(|l| l.ip == pool_b && l.state == "released")
    });

    // A restart keeps the bindings: the reserved and dhcpcd's address stay bound.
    drop(server);
    let server = Running::start(&t.server_ns, vec![scope], &t.dir.join("state"));
    let leases = server.leases();
    assert!(
        leases.iter().any(|l| l.ip == pool_c && l.state == "bound"),
        "{leases:?}"
    );
}
