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

use common::{dhclient6, env_of, hook};
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

/// dhcpcd, DHCPv6 only and without waiting for an RA: the address it got.
fn dhcpcd6(ns: &str, wc: &Path) -> Ipv6Addr {
    std::fs::create_dir_all(wc).unwrap();
    let script = hook(wc, "dcd");
    let conf = "noipv6rs\nia_na 1\nnooption rapid_commit\n";
    std::fs::write(wc.join("dhcpcd.conf"), conf).unwrap();
    // Its lease database is global (/var/lib/dhcpcd): a tmpfs in this mount namespace.
    let out = in_ns(
        ns,
        &format!(
            "mount -t tmpfs kvmnet-test /var/lib/dhcpcd; \
             timeout 30 dhcpcd -f {w}/dhcpcd.conf -6 -1 -B -t 20 -c {s} eth0",
            w = wc.display(),
            s = script.display()
        ),
    );
    assert!(out.status.success(), "dhcpcd: {out:?}");
    let env = env_of(&wc.join("dcd.BOUND6"));
    env.lines()
        .find_map(|l| l.strip_prefix("new_dhcp6_ia_na1_ia_addr1="))
        .unwrap_or_else(|| panic!("no address in {env}"))
        .parse()
        .unwrap()
}

/// Information-request (dhclient -6 -S): DNS servers and the domain list.
fn information_request(ns: &str, wi: &Path) {
    std::fs::create_dir_all(wi).unwrap();
    let out = dhclient6(ns, wi, "-S");
    assert!(out.status.success(), "dhclient -6 -S: {out:?}");
    let env = std::fs::read_dir(wi)
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

    let pool_c = dhcpcd6(&c, &work.join("c"));
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

    information_request(&b, &work.join("i"));

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

/// Waits until `dev` in `ns` has a link-local address that is no longer tentative.
fn link_local_ready(ns: &str, dev: &str) {
    wait_for("a link-local address", Duration::from_secs(15), || {
        let o = in_ns(ns, &format!("ip -6 addr show dev {dev} scope link"));
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.contains("fe80") && !t.contains("tentative")
    });
}

fn start_daemon(ns: &common::Namespaces, spec: &str, host: &str) -> common::Daemon {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec, "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    wait_for("the daemon's API socket", Duration::from_secs(30), || {
        sock.exists()
    });
    common::Daemon(child)
}

/// `kvmnet leases --json`: the DHCPv6 leases as (address, state, mac).
fn leases6(ns: &common::Namespaces, host: &str) -> Vec<(Ipv6Addr, String, String)> {
    let out = ns.kvmnet_ok(&["leases", "--netns", host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("leases JSON");
    v["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["duid"].is_string())
        .map(|l| {
            (
                l["ip"].as_str().unwrap().parse().unwrap(),
                l["state"].as_str().unwrap().to_string(),
                l["mac"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The address `dhclient -6` got, from its BOUND6 event.
fn bound6(work: &Path) -> Ipv6Addr {
    let env = env_of(&work.join("dhc.BOUND6"));
    env.lines()
        .find_map(|l| l.strip_prefix("new_ip6_address="))
        .unwrap_or_else(|| panic!("no address in {env}"))
        .parse()
        .unwrap()
}

/// Through `kvmnet daemon` on a spec: the reservation (to a port whose outbound firewall
/// policy is drop: DHCPv6 client messages still pass) and pool addresses, `kvmnet leases`,
/// a `kill -9` of the daemon that loses no binding and gives none twice, Release; and a
/// guest that sends DHCPv6 server messages to another guest is stopped by the guard while
/// its own DHCPv6 works.
#[test]
fn daemon_serves_dhcp6_durably_and_the_guard_stops_rogue_servers() {
    if !privileged() || !have("dhclient") || !have("python3") {
        return;
    }
    let mut ns = common::Namespaces::new();
    let host = ns.add("d6h");
    let g: Vec<String> = ["d6a", "d6b", "d6c"]
        .iter()
        .map(|t| ns.reserve(t))
        .collect();
    let spec = common::SpecFile::new(&format!(
        "version: 1
networks:
  n:
    mode: isolated
    bridge: d6-br
    ipv4: 10.96.0.1/24
    ipv6: fd00:db8:96::1/64
    ra: {{ mode: dhcpv6 }}
    dhcp: {{ range6: fd00:db8:96::1000-fd00:db8:96::10ff, dns6: [fd00:db8:96::1] }}
vms:
  a: {{ ports: [ {{ network: n, name: d6-a, kind: veth, netns: {a}, mac: \"02:00:5e:00:96:0a\", ipv6: \"fd00:db8:96::10\", firewall: {{ outbound: {{ policy: drop }} }} }} ] }}
  b: {{ ports: [ {{ network: n, name: d6-b, kind: veth, netns: {b}, mac: \"02:00:5e:00:96:0b\" }} ] }}
  c: {{ ports: [ {{ network: n, name: d6-c, kind: veth, netns: {c}, mac: \"02:00:5e:00:96:0c\" }} ] }}
",
        a = g[0],
        b = g[1],
        c = g[2]
    ));
    let daemon = start_daemon(&ns, spec.path(), &host);
    for guest in &g {
        link_local_ready(guest, "eth0");
    }
    let work = ns.state_dir.join("work");
    let dirs: Vec<PathBuf> = ["a", "b", "c", "b2"].iter().map(|d| work.join(d)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let get = |guest: &str, w: &Path| {
        let out = dhclient6(guest, w, "");
        assert!(out.status.success(), "dhclient -6 in {guest}: {out:?}");
        bound6(w)
    };
    let resv: Ipv6Addr = "fd00:db8:96::10".parse().unwrap();
    assert_eq!(
        get(&g[0], &dirs[0]),
        resv,
        "the reservation, by the port's MAC"
    );
    let pool_b = get(&g[1], &dirs[1]);
    assert!(pool_b.segments()[7] >= 0x1000 && pool_b.segments()[7] <= 0x10ff);
    let leases = leases6(&ns, &host);
    assert!(
        leases.contains(&(resv, "bound".into(), "02:00:5e:00:96:0a".into())),
        "{leases:?}"
    );
    assert!(
        leases.contains(&(pool_b, "bound".into(), "02:00:5e:00:96:0b".into())),
        "{leases:?}"
    );
    let table = ns.kvmnet_ok(&["leases", "--netns", &host]);
    assert!(table.contains(&pool_b.to_string()), "{table}");

    // kill -9: the bindings were on disk before their Replies.
    let mut daemon = daemon;
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGKILL) };
    let _ = daemon.0.wait();
    drop(daemon);
    let _ = std::fs::remove_file(ns.state_dir.join(format!("netns-{host}")).join("api.sock"));
    let _daemon = start_daemon(&ns, spec.path(), &host);
    let leases = leases6(&ns, &host);
    assert!(
        leases.contains(&(pool_b, "bound".into(), "02:00:5e:00:96:0b".into())),
        "{leases:?}"
    );
    let pool_c = get(&g[2], &dirs[2]);
    assert!(pool_c != pool_b && pool_c != resv, "never handed out twice");
    // b, with its DUID (kept in its lease file), gets its address again.
    assert_eq!(get(&g[1], &dirs[1]), pool_b);

    // Release frees it.
    let out = in_ns(
        &g[1],
        &format!(
            "timeout 20 dhclient -6 -r -sf {s} -lf {w}/dhc.leases -pf {w}/dhc.pid eth0",
            s = dirs[1].join("dhc.sh").display(),
            w = dirs[1].display()
        ),
    );
    assert!(out.status.success(), "dhclient -6 -r: {out:?}");
    wait_for("the release", Duration::from_secs(5), || {
        leases6(&ns, &host).contains(&(pool_b, "released".into(), "02:00:5e:00:96:0b".into()))
    });

    rogue_server_is_dropped(&g[2], &g[1], &dirs[3]);
}

/// Guest `rogue` sends DHCPv6 Advertise and Reply messages (UDP 547 -> 546) to `victim`'s
/// link-local address: none arrive. The same sender's datagrams on other ports do, and the
/// victim's own DHCPv6 still works.
fn rogue_server_is_dropped(rogue: &str, victim: &str, work: &Path) {
    let ll = |ns: &str| {
        let o = in_ns(ns, "ip -6 -o addr show dev eth0 scope link");
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.split_whitespace()
            .find(|w| w.starts_with("fe80"))
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let victim_ll = ll(victim);
    let listen = |port: u16| {
        std::process::Command::new("ip")
            .args(["netns", "exec", victim, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('::',{port}))\ns.settimeout(4)\nn=0\n\
                 try:\n  while True:\n    s.recv(2048); n+=1\nexcept Exception: pass\nprint(n)"
            ))
            .output()
    };
    let send = |sport: u16, dport: u16| {
        let out = in_ns(
            rogue,
            &format!(
                "python3 -c \"import socket,time\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n\
                 s.bind(('::',{sport}))\ntime.sleep(1)\n\
                 [s.sendto(bytes([t,1,2,3]),('{victim_ll}%eth0',{dport})) for t in (2,7,2,7,2,7)]\""
            ),
        );
        assert!(out.status.success(), "{out:?}");
    };
    for (sport, dport, want) in [(547u16, 546u16, "0"), (40547, 40546, "6")] {
        let got = std::thread::scope(|s| {
            let l = s.spawn(|| listen(dport));
            send(sport, dport);
            l.join().unwrap().expect("listener")
        });
        let n = String::from_utf8_lossy(&got.stdout).trim().to_string();
        assert_eq!(n, want, "{sport} -> {dport}: {got:?}");
    }
    // The rogue's own DHCPv6 client traffic passes.
    std::fs::create_dir_all(work).unwrap();
    let out = dhclient6(rogue, work, "-S");
    assert!(out.status.success(), "dhclient -6 -S: {out:?}");
}

/// Like [`hook`], and on BOUND6 sets the address as Debian's dhclient-script does (`ip -6
/// addr replace ADDRESS dev IF scope global valid_lft ... preferred_lft ...`, a /128); the
/// rest of that script (resolv.conf) would touch the machine's files.
fn configuring_hook(dir: &Path, name: &str) -> PathBuf {
    let p = hook(dir, name);
    let mut s = std::fs::read_to_string(&p).unwrap();
    s.push_str(
        "case \"$reason\" in BOUND6|RENEW6|REBIND6) [ -n \"$new_ip6_address\" ] && \
         ip -6 addr replace \"$new_ip6_address\" dev \"$interface\" scope global \
         valid_lft \"$new_max_life\" preferred_lft \"$new_preferred_life\";; esac\n",
    );
    std::fs::write(&p, s).unwrap();
    p
}

/// The MAC in `ns`'s neighbour entry for `ip` ("" when there is none).
fn neigh_mac(ns: &str, ip: &str) -> String {
    let o = in_ns(ns, &format!("ip -6 neigh show {ip}"));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("")
        .to_string()
}

fn ping6_from(ns: &str, from: &str, to: &str) -> bool {
    in_ns(
        ns,
        &format!(
            "ping -6 -c1 -W1 -I {from} {to} >/dev/null 2>&1 || ping -6 -c2 -W1 -I {from} {to}"
        ),
    )
    .status
    .success()
}

/// Sets `addr` (a /128, no DAD) on `ns`'s eth0, runs `f`, and takes it away again. With
/// lifetimes, like a DHCPv6 client's: a far end's permanent addresses are kvmnet's, and the
/// daemon would take one the spec does not have away.
fn with_addr<T>(ns: &str, addr: &str, f: impl FnOnce() -> T) -> T {
    ok(&format!(
        "ip netns exec {ns} ip -6 addr add {addr}/128 dev eth0 valid_lft 600 preferred_lft 600 nodad"
    ));
    let out = f();
    ok(&format!(
        "ip netns exec {ns} ip -6 addr del {addr}/128 dev eth0"
    ));
    out
}

const P_MAC: &str = "02:00:5e:00:97:0a";
const Q_MAC: &str = "02:00:5e:00:97:0b";
const GW6: &str = "fd00:db8:97::1";
const Q6: &str = "fd00:db8:97::20";

/// The guard lets a guarded port without `ipv6` use the pool address DHCPv6 gave it:
/// `dhclient -6` in guest p gets one, and p pings the gateway from it and answers the host's
/// neighbour solicitations for it. The same guest still cannot send from q's declared
/// address or from an address outside the pool, nor advertise q's address (thc-ipv6's
/// parasite6 and a crafted override advertisement); and q, which declares `ipv6`, may not
/// use the pool.
#[test]
fn a_guarded_port_uses_its_dhcpv6_pool_address_and_nothing_else() {
    if !privileged() || !have("dhclient") || !have("atk6-parasite6") || !have("/usr/bin/python3") {
        return;
    }
    let mut ns = common::Namespaces::new();
    let host = ns.add("p6h");
    let p = ns.add("p6p");
    let q = ns.add("p6q");
    let spec = common::SpecFile::new(&format!(
        "version: 1
networks:
  n:
    mode: isolated
    bridge: p6-br
    ipv4: 10.97.0.1/24
    ipv6: {GW6}/64
    ra: {{ mode: dhcpv6 }}
    dhcp: {{ range6: fd00:db8:97::1000-fd00:db8:97::10ff }}
vms:
  p: {{ ports: [ {{ network: n, name: p6-p, kind: veth, netns: {p}, mac: \"{P_MAC}\" }} ] }}
  q: {{ ports: [ {{ network: n, name: p6-q, kind: veth, netns: {q}, mac: \"{Q_MAC}\", ipv6: \"{Q6}\" }} ] }}
"
    ));
    let _daemon = start_daemon(&ns, spec.path(), &host);
    for guest in [&p, &q] {
        link_local_ready(guest, "eth0");
    }
    let work = ns.state_dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = configuring_hook(&work, "dhc");
    let w = work.display();
    let out = in_ns(
        &p,
        &format!(
            "timeout 30 dhclient -6 -1 -sf {} -lf {w}/dhc.leases -pf {w}/dhc.pid eth0",
            script.display()
        ),
    );
    assert!(out.status.success(), "dhclient -6: {out:?}");
    let x = bound6(&work);
    assert!((0x1000..=0x10ff).contains(&x.segments()[7]), "{x}");
    let x = x.to_string();
    wait_for("the pool address usable", Duration::from_secs(10), || {
        let o = in_ns(&p, "ip -6 addr show dev eth0 scope global");
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.contains(&x) && !t.contains("tentative")
    });
    wait_for(
        "a route to the gateway (the RAs)",
        Duration::from_secs(20),
        || {
            in_ns(&p, &format!("ip -6 route get {GW6}"))
                .status
                .success()
        },
    );

    // Legitimate: from the pool address to the gateway, and the host finding it by ND.
    assert!(ping6_from(&p, &x, GW6), "p cannot use its DHCPv6 address");
    let _ = in_ns(&host, "ip -6 neigh flush dev p6-br");
    assert!(
        in_ns(&host, &format!("ping -6 -c2 -W1 {x}"))
            .status
            .success(),
        "the host cannot reach p's DHCPv6 address"
    );

    // Forged sources: q's declared address, and one of the prefix outside the pool.
    assert!(!with_addr(&p, Q6, || ping6_from(&p, Q6, GW6)));
    assert!(!with_addr(&p, "fd00:db8:97::99", || ping6_from(
        &p,
        "fd00:db8:97::99",
        GW6
    )));
    // q declares its address: the pool is not its.
    let other = if x.ends_with("10fe") {
        "fd00:db8:97::10fd"
    } else {
        "fd00:db8:97::10fe"
    };
    assert!(!with_addr(&q, other, || ping6_from(&q, other, GW6)));
    assert!(ping6_from(&q, Q6, GW6), "q's own address works");

    nd_spoofing_of_q_fails(&host, &p, &q);
    assert!(ping6_from(&p, &x, GW6), "p's pool address still works");
}

/// p claims q's address with parasite6 (an advertisement with p's MAC for every
/// solicitation) and with a crafted unsolicited override advertisement: the host and q keep
/// their true neighbours.
fn nd_spoofing_of_q_fails(host: &str, p: &str, q: &str) {
    let mut parasite = std::process::Command::new("ip")
        .args(["netns", "exec", p, "atk6-parasite6", "eth0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _ = in_ns(host, "ip -6 neigh flush dev p6-br");
    let _ = in_ns(q, "ip -6 neigh flush dev eth0");
    assert!(
        in_ns(host, &format!("ping -6 -c2 -W1 {Q6}"))
            .status
            .success()
    );
    assert!(ping6_from(q, Q6, GW6));
    std::thread::sleep(Duration::from_secs(1));
    let _ = parasite.kill();
    let _ = parasite.wait();
    assert_eq!(neigh_mac(host, Q6), Q_MAC, "the host learned p's MAC for q");
    let gw_mac = neigh_mac(q, GW6);
    assert!(
        !gw_mac.is_empty() && gw_mac != P_MAC,
        "q's gateway is at {gw_mac}"
    );

    let frames = common::manifest_dir().join("tests/common/frames.py");
    ok(&format!(
        "ip netns exec {p} /usr/bin/python3 {} na {P_MAC} {Q6} ff02::1 33:33:00:00:00:01",
        frames.display()
    ));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        neigh_mac(host, Q6),
        Q_MAC,
        "an override advertisement moved q"
    );
}
