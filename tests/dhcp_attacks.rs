//! Attacks on the built-in DHCP server from a guest on the same bridge, with nothing in front
//! of the server (as on a port with `antispoof: false`): forged RELEASE and DECLINE, pool
//! exhaustion by REQUESTs that skip DISCOVER, relayed messages with rotating `giaddr`,
//! answers steered to a foreign `ciaddr`, and the lease journal on a disk that fills up. Each
//! attack fails while the victim's and the attacker's own DHCP keep working. Root; each test
//! builds its own namespaces (removed on drop).

mod common;
mod common_dhcp;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common_dhcp::*;
use kvmnet::dhcp::packet::{MessageType, Packet, opt};
use kvmnet::dhcp::{Limits, ServerHandle};

/// busybox udhcpc in `ns`, running on (it renews on SIGUSR1) with a script that configures
/// the address and logs each event as `EVENT IP` to `log`; its pid and the log.
fn udhcpc_forever(t: &mut Topo, ns: &str, work: &Path, tag: &str) -> (u32, PathBuf) {
    let script = work.join(format!("{tag}.sh"));
    let log = work.join(format!("{tag}.log"));
    write_script(
        &script,
        &format!(
            "echo \"$1 $ip\" >> {log}\n\
             case $1 in\n\
             bound|renew) ip addr flush dev $interface; ip addr add $ip/$subnet dev $interface;;\n\
             deconfig) ip addr flush dev $interface;;\n\
             esac",
            log = log.display()
        ),
    );
    // `ip netns exec` and `sh -c exec` keep the pid: it is udhcpc's.
    let i = t.adopt(spawn_in(
        ns,
        &format!(
            "exec busybox udhcpc -f -i eth0 -t 20 -T 1 -s {} >/dev/null 2>&1",
            script.display()
        ),
    ));
    (t.child(i).id(), log)
}

fn events(log: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(e, ip)| (e.to_string(), ip.trim().to_string()))
        .collect()
}

fn lease_of(h: &ServerHandle, mac: &str) -> Option<kvmnet::dhcp::Lease> {
    h.leases().into_iter().find(|l| l.mac == mac)
}

fn one_shot_udhcpc(ns: &str, work: &Path, tag: &str) -> Option<Ipv4Addr> {
    let script = work.join(format!("{tag}.once.sh"));
    let out = work.join(format!("{tag}.once"));
    write_script(
        &script,
        &format!("[ \"$1\" = bound ] && echo $ip > {}", out.display()),
    );
    let o = in_ns(
        ns,
        &format!(
            "busybox udhcpc -f -q -n -t 4 -T 1 -i eth0 -s {} >/dev/null 2>&1",
            script.display()
        ),
    );
    o.status.success().then_some(())?;
    std::fs::read_to_string(out).ok()?.trim().parse().ok()
}

/// A guest sends RELEASE and DECLINE in another guest's name (its MAC and client identifier,
/// which it can see in the victim's broadcasts): the victim keeps its address through its
/// renewals and nobody else can take it; the attacker's own RELEASE still works.
#[test]
fn forged_release_and_decline_do_not_move_the_victim() {
    if !privileged() || !have("busybox") {
        return;
    }
    let mut t = Topo::new("rl", "10.91.0.1/24");
    let (mv, ma, mo) = (
        "52:54:00:91:00:0a",
        "52:54:00:91:00:0b",
        "52:54:00:91:00:0c",
    );
    let ns_v = t.add_client("v", mv);
    let ns_a = t.add_client("a", ma);
    let ns_o = t.add_client("o", mo);
    let scope = t.scope(Some(("10.91.0.100", "10.91.0.140")), &[]);
    let limits = Limits {
        decline_window_secs: 1,
        ..Limits::default()
    };
    let server = ServerThread::start(&t.server_ns, vec![scope], &t.state_dir, Some(limits));
    let h = server.handle.clone();
    let work = t.state_dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (udhcpc, log) = udhcpc_forever(&mut t, &ns_v, &work, "victim");
    wait_for("the victim's lease", Duration::from_secs(10), || {
        lease_of(&h, mv).is_some_and(|l| l.state == "bound")
    });
    let victim = lease_of(&h, mv).unwrap();
    // What the attacker sees in the victim's broadcasts: udhcpc's client id is 01 + MAC.
    let mut cid = vec![1u8];
    cid.extend_from_slice(&mac(mv).0);
    assert_eq!(
        victim.client_id.as_deref(),
        Some(format!("01:{mv}").as_str())
    );
    std::thread::sleep(Duration::from_millis(1500)); // past the victim's DECLINE window

    // The attacker: from no address, then from its own (a pool lease it got legitimately).
    let mut a = RawClient::new(&ns_a, ma);
    let forged = |a: &mut RawClient, kind: MessageType| {
        let mut p = a.packet(kind);
        p.chaddr[..6].copy_from_slice(&mac(mv).0);
        p.set(opt::SERVER_ID, t.gw.octets().to_vec());
        p.set(opt::CLIENT_ID, cid.clone());
        match kind {
            MessageType::Release => p.ciaddr = victim.ip,
            _ => p.set(opt::REQUESTED_IP, victim.ip.octets().to_vec()),
        }
        p
    };
    for kind in [MessageType::Release, MessageType::Decline] {
        let p = forged(&mut a, kind);
        a.broadcast(&p);
    }
    let (own, _) = a.dora(t.gw).expect("the attacker's own DHCP works");
    ok(&format!("ip -n {ns_a} addr add {own}/24 dev eth0"));
    for kind in [MessageType::Release, MessageType::Decline] {
        let p = forged(&mut a, kind);
        a.send(&p, t.gw);
        a.broadcast(&p);
    }
    wait_for("the forgeries to be seen", Duration::from_secs(3), || {
        h.stats().dropped_not_holder >= 6
    });

    // Nobody else gets the victim's address.
    let mut o = RawClient::new(&ns_o, mo);
    let mut p = o.packet(MessageType::Request);
    p.flags = 0x8000;
    p.set(opt::REQUESTED_IP, victim.ip.octets().to_vec());
    let nak = o.exchange(&p, Ipv4Addr::BROADCAST).expect("answered");
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    // The victim renews twice on the same address and never loses it.
    for n in 1..=2 {
        // SAFETY: plain syscall; the pid is the udhcpc this test started.
        unsafe { libc::kill(udhcpc as i32, libc::SIGUSR1) };
        wait_for("a renewal", Duration::from_secs(5), || {
            events(&log).iter().filter(|(e, _)| e != "deconfig").count() > n
        });
    }
    let ev = events(&log);
    let renewals = ev.iter().filter(|(e, _)| e == "renew").count();
    assert!(renewals >= 2, "{ev:?}");
    let bound: Vec<_> = ev
        .iter()
        .filter(|(e, _)| e == "bound" || e == "renew")
        .collect();
    assert!(
        bound.iter().all(|(_, ip)| *ip == victim.ip.to_string()),
        "{ev:?}"
    );
    assert_eq!(
        ev.iter().filter(|(e, _)| e == "deconfig").count(),
        1,
        "only udhcpc's start: {ev:?}"
    );
    let l = lease_of(&h, mv).unwrap();
    assert_eq!((l.ip, l.state.as_str()), (victim.ip, "bound"));

    // The attacker releases its own address, from it.
    let mut rel = a.packet(MessageType::Release);
    rel.ciaddr = own;
    rel.set(opt::SERVER_ID, t.gw.octets().to_vec());
    a.send(&rel, t.gw);
    wait_for("the attacker's release", Duration::from_secs(3), || {
        h.leases()
            .iter()
            .any(|l| l.ip == own && l.state == "released")
    });
    eprintln!("{:?}", h.stats());
}

/// A guest binds pool addresses with REQUESTs that skip DISCOVER (INIT-REBOOT and SELECTING
/// style, invented MACs): it gets no more than DISCOVERs would give, the reserved guest and a
/// pool client that arrives after the attack still get leases.
#[test]
fn bare_requests_do_not_exhaust_the_pool() {
    if !privileged() || !have("busybox") {
        return;
    }
    let _load = load_lock();
    let mut t = Topo::new("px", "10.92.0.1/24");
    let (mr, ma, mp) = (
        "52:54:00:92:00:0a",
        "52:54:00:92:00:0b",
        "52:54:00:92:00:0c",
    );
    let ns_r = t.add_client("r", mr);
    let ns_a = t.add_client("a", ma);
    let ns_p = t.add_client("p", mp);
    let scope = t.scope(Some(("10.92.0.100", "10.92.0.199")), &[(mr, "10.92.0.10")]);
    let server = ServerThread::start(&t.server_ns, vec![scope], &t.state_dir, None);
    let h = server.handle.clone();
    let work = t.state_dir.join("work");
    std::fs::create_dir_all(&work).unwrap();

    let a = RawClient::new(&ns_a, ma);
    let mut rng = Rng(0x5eed_1234_5678_9abc);
    let t0 = Instant::now();
    let mut sent = 0u32;
    while t0.elapsed() < Duration::from_secs(1) {
        for i in 0..100u8 {
            let r = rng.next().to_be_bytes();
            let m = kvmnet::spec::Mac([0x02, r[1], r[2], r[3], r[4], r[5]]);
            let mut p = Packet::request(
                m,
                u32::from_be_bytes([r[0], r[6], r[7], i]),
                MessageType::Request,
            );
            p.flags = 0x8000;
            if i % 2 == 0 {
                p.set(opt::SERVER_ID, t.gw.octets().to_vec()); // SELECTING, no DISCOVER
            }
            p.set(opt::REQUESTED_IP, vec![10, 92, 0, 100 + i]);
            a.broadcast(&p);
            sent += 1;
        }
    }
    let attack_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let bound = |h: &ServerHandle| {
        h.leases()
            .iter()
            .filter(|l| l.state == "bound" && !l.reserved)
            .count()
    };
    let taken = bound(&h);
    let st = h.stats();
    eprintln!("{sent} bare REQUESTs in {attack_secs:.2} s bound {taken} of 100; {st:?}");
    // Below a tenth free, 2 new clients a second (bucket of 2).
    assert!(taken >= 90, "the attack ran ({taken})");
    assert!(
        (taken as f64) <= 90.0 + 2.0 + 2.0 * attack_secs + 1.0,
        "{taken} pool addresses bound"
    );
    assert!(st.dropped_pool_guard > 0, "{st:?}");

    // The reserved guest, and a new pool client once the attack stops.
    assert_eq!(
        one_shot_udhcpc(&ns_r, &work, "r"),
        Some(Ipv4Addr::new(10, 92, 0, 10))
    );
    std::thread::sleep(Duration::from_millis(1000));
    let ip = one_shot_udhcpc(&ns_p, &work, "p").expect("a pool lease after the attack");
    assert!(ip.octets()[3] >= 100, "{ip}");
}

/// A host on the bridge posing as a relay rotates `giaddr` over the subnet: its messages
/// share one allowance; a guest that holds a lease cannot relay at all; the reserved guest
/// is served meanwhile.
#[test]
fn relay_with_rotating_giaddr_is_limited() {
    if !privileged() || !have("busybox") {
        return;
    }
    let _load = load_lock();
    let mut t = Topo::new("gr", "10.93.0.1/24");
    let (mr, ma) = ("52:54:00:93:00:0a", "52:54:00:93:00:0b");
    let ns_r = t.add_client("r", mr);
    let ns_a = t.add_client("a", ma);
    let scope = t.scope(Some(("10.93.0.100", "10.93.0.199")), &[(mr, "10.93.0.10")]);
    let limits = Limits {
        per_interface_rate: 50.0,
        per_interface_burst: 50.0,
        ..Limits::default()
    };
    let server = ServerThread::start(&t.server_ns, vec![scope], &t.state_dir, Some(limits));
    let h = server.handle.clone();
    let work = t.state_dir.join("work");
    std::fs::create_dir_all(&work).unwrap();

    // A guest with a lease relaying from its leased address: refused.
    let (leased, _) = RawClient::new(&ns_a, ma).dora(t.gw).expect("lease");
    ok(&format!("ip -n {ns_a} addr add {leased}/24 dev eth0"));
    let mut relay = RawClient::bind(&ns_a, ma, 67);
    let mut d = relay.packet(MessageType::Discover);
    d.giaddr = leased;
    assert!(relay.exchange(&d, t.gw).is_none());
    assert!(h.stats().dropped_relay >= 1);

    // The same guest on a static address outside the range, rotating giaddr.
    ok(&format!(
        "ip -n {ns_a} addr flush dev eth0 && ip -n {ns_a} addr add 10.93.0.66/24 dev eth0"
    ));
    let relay = RawClient::bind(&ns_a, ma, 67);
    let before = h.stats().offer;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st2 = stop.clone();
    let gw = t.gw;
    let flood = std::thread::spawn(move || {
        let mut rng = Rng(0xfeed_beef_0bad_cafe);
        let mut n = 0u64;
        while !st2.load(std::sync::atomic::Ordering::Relaxed) {
            let r = rng.next().to_be_bytes();
            let m = kvmnet::spec::Mac([0x02, r[1], r[2], r[3], r[4], r[5]]);
            let mut p = Packet::request(
                m,
                u32::from_be_bytes([r[0], r[6], r[7], 0]),
                MessageType::Discover,
            );
            p.giaddr = Ipv4Addr::new(10, 93, 0, 20 + (n % 70) as u8);
            p.hops = 1;
            let _ = relay
                .sock
                .send_to(&p.encode(), std::net::SocketAddrV4::new(gw, 67));
            n += 1;
        }
        n
    });
    let t0 = Instant::now();
    // The reserved guest meanwhile.
    let got = one_shot_udhcpc(&ns_r, &work, "r");
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t0.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    let st = h.stats();
    let offers = st.offer - before;
    eprintln!("{sent} relayed DISCOVERs over 70 giaddrs in {secs:.2} s: {offers} offers; {st:?}");
    assert!(sent > 1000, "the flood ran ({sent})");
    assert_eq!(
        got,
        Some(Ipv4Addr::new(10, 93, 0, 10)),
        "reserved guest served"
    );
    // One allowance for all of them: 50 at once, 50 a second (one offer is the guest's).
    assert!(
        (offers as f64) <= 50.0 + 50.0 * secs + 2.0,
        "{offers} offers in {secs:.2} s"
    );
    assert!(st.dropped_rate_interface > 0, "{st:?}");
}

/// INFORM and REQUEST with a `ciaddr` outside the network (here a host that the bridge also
/// reaches): the server sends it nothing; the same guest's INFORM from its own address is
/// answered.
#[test]
fn no_answer_to_a_foreign_ciaddr() {
    if !privileged() {
        return;
    }
    let mut t = Topo::new("ci", "10.94.0.1/24");
    let (ma, mb) = ("52:54:00:94:00:0a", "52:54:00:94:00:0b");
    let ns_a = t.add_client("a", ma);
    let ns_b = t.add_client("b", mb);
    // Another subnet on the same bridge: the bystander the attacker aims the answers at.
    let s = &t.server_ns;
    ok(&format!("ip -n {s} route add 192.0.2.0/24 dev br0"));
    ok(&format!(
        "ip -n {ns_b} addr add 192.0.2.77/24 dev eth0 && ip -n {ns_b} route add 10.94.0.0/24 dev eth0"
    ));
    assert!(
        common::pings(s, "192.0.2.77"),
        "the server reaches the bystander"
    );
    let scope = t.scope(Some(("10.94.0.100", "10.94.0.140")), &[]);
    let server = ServerThread::start(&t.server_ns, vec![scope], &t.state_dir, None);
    let h = server.handle.clone();
    let bystander = RawClient::new(&ns_b, mb);
    let mut a = RawClient::new(&ns_a, ma);
    let foreign = Ipv4Addr::new(192, 0, 2, 77);

    let mut inf = a.packet(MessageType::Inform);
    inf.ciaddr = foreign;
    a.broadcast(&inf);
    let mut d = a.packet(MessageType::Discover);
    d.flags = 0x8000;
    let offer = a.exchange(&d, Ipv4Addr::BROADCAST).expect("offer");
    let mut r = a.packet(MessageType::Request);
    r.ciaddr = foreign;
    r.set(opt::SERVER_ID, t.gw.octets().to_vec());
    r.set(opt::REQUESTED_IP, offer.yiaddr.octets().to_vec());
    a.broadcast(&r);
    for xid in [inf.xid, r.xid] {
        assert!(
            bystander.recv(xid, Duration::from_millis(800)).is_none(),
            "an answer reached {foreign}"
        );
    }
    assert_eq!(h.stats().dropped_foreign_ciaddr, 1);
    assert!(
        lease_of(&h, ma).is_some_and(|l| l.state == "bound"),
        "the REQUEST itself was served"
    );

    // The guest's own INFORM, from its address.
    ok(&format!(
        "ip -n {ns_a} addr add {}/24 dev eth0",
        offer.yiaddr
    ));
    let mut inf = a.packet(MessageType::Inform);
    inf.ciaddr = offer.yiaddr;
    let ack = a.exchange(&inf, t.gw).expect("INFORM answered");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
}

/// Not a test on its own: with `KVMNET_DHCP_ATTACK_SERVER` set (by the full-disk test, which
/// re-executes this binary to kill it with SIGKILL) this process is the server. The value is
/// JSON: `{"ns": .., "dir": .., "gw": "10.95.0.1/24", "pool": [a, b]}`.
#[test]
fn server_process() {
    let Ok(cfg) = std::env::var("KVMNET_DHCP_ATTACK_SERVER") else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&cfg).expect("config JSON");
    let s = |k: &str| v[k].as_str().expect("string field").to_string();
    let gw: kvmnet::spec::Ipv4Cidr = s("gw").parse().unwrap();
    let ip = |i: usize| v["pool"][i].as_str().unwrap().parse().unwrap();
    let scope = kvmnet::dhcp::Scope {
        network: "test".into(),
        interface: "br0".into(),
        server_ip: gw.addr,
        subnet: gw.network(),
        router: Some(gw.addr),
        dns: vec![],
        domain: None,
        mtu: None,
        live_mtu: None,
        lease_secs: 3600,
        routes: vec![],
        pool: Some((ip(0), ip(1))),
        reservations: vec![],
    };
    kvmnet::backend::netns::enter(&s("ns")).expect("enter namespace");
    let mut server = kvmnet::dhcp::Server::start(vec![scope], Path::new(&s("dir"))).expect("start");
    println!("SERVER READY");
    let stop = std::sync::atomic::AtomicBool::new(false);
    server.run(&stop).expect("run");
}

fn spawn_server(t: &mut Topo, dir: &Path) -> usize {
    use std::io::BufRead;
    let cfg = serde_json::json!({
        "ns": t.server_ns,
        "dir": dir,
        "gw": format!("{}/24", t.gw),
        "pool": [format!("{}", Ipv4Addr::from(u32::from(t.gw) + 99)), format!("{}", Ipv4Addr::from(u32::from(t.gw) + 139))],
    });
    let mut c = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "server_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KVMNET_DHCP_ATTACK_SERVER", cfg.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("re-exec the test binary as the server");
    let out = c.stdout.take().unwrap();
    let i = t.adopt(c);
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("SERVER READY") => break,
            Some(Ok(_)) => continue,
            _ => panic!("the server process did not start"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    i
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}

/// The lease journal on a 64 KiB tmpfs (in a private mount namespace) that fills up: the
/// write that finds no room takes part of a line and fails; it is cut back, no ACK goes out;
/// once there is room the client is bound, and after a kill -9 the restarted server has the
/// binding (the partial line did not swallow it). Journal files end up 0600.
#[test]
fn full_disk_loses_no_acknowledged_binding() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    if !privileged() || !have("unshare") {
        return;
    }
    let mut t = Topo::new("df", "10.95.0.1/24");
    let mc = "52:54:00:95:00:0a";
    let ns_c = t.add_client("c", mc);
    let mnt = t.state_dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size=64k,mode=0700 kvmnet-test {} && echo ready && exec sleep 600",
            mnt.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("unshare");
    let line = std::io::BufReader::new(holder.stdout.take().unwrap())
        .lines()
        .next();
    assert!(matches!(line, Some(Ok(ref l)) if l == "ready"), "{line:?}");
    let pid = holder.id();
    t.adopt(holder);
    // The tmpfs as the holder sees it.
    let dir = PathBuf::from(format!("/proc/{pid}/root{}", mnt.display()));
    let journal = dir.join("leases.journal");
    // A journal (from an older version: 0644) whose page has 40 bytes left.
    std::fs::write(&journal, vec![b'\n'; 4096 - 40]).unwrap();
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let srv = spawn_server(&mut t, &dir);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&journal), 0o600);
    assert_eq!(mode(&dir.join("leases.lock")), 0o600);

    // Fill the disk.
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    while filler.write_all(&[0u8; 4096]).is_ok() {}
    drop(filler);
    let mut c = RawClient::new(&ns_c, mc);
    assert!(c.dora(t.gw).is_none(), "no ACK without room on disk");
    assert_eq!(
        file_len(&journal),
        4096 - 40,
        "the partial line was cut off"
    );
    assert!(std::fs::read(&journal).unwrap().iter().all(|&b| b == b'\n'));

    // Room again: the binding is made, acknowledged and survives a kill -9.
    std::fs::remove_file(dir.join("filler")).unwrap();
    let (ip, _) = c.dora(t.gw).expect("bound once there is room");
    t.child(srv).kill().unwrap();
    t.child(srv).wait().unwrap();
    let disk = kvmnet::dhcp::read_leases(&dir).unwrap();
    assert!(
        disk.iter()
            .any(|l| l.mac == mc && l.ip == ip && l.state == "bound"),
        "{disk:?}"
    );
    let _srv = spawn_server(&mut t, &dir);
    let mut p = c.packet(MessageType::Request);
    p.flags = 0x8000;
    p.set(opt::REQUESTED_IP, ip.octets().to_vec());
    let ack = c.exchange(&p, Ipv4Addr::BROADCAST).expect("answered");
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    let mut other = RawClient::new(&ns_c, "52:54:00:95:00:0b");
    let mut p = other.packet(MessageType::Request);
    p.flags = 0x8000;
    p.set(opt::REQUESTED_IP, ip.octets().to_vec());
    let nak = other.exchange(&p, Ipv4Addr::BROADCAST).expect("answered");
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
}

/// yersinia's DHCP starvation (DISCOVERs from random Ethernet sources and `chaddr`s, as fast
/// as it can) from one guest: offers never hold more than a quarter of the pool, the
/// reserved guest gets its lease during the attack and a pool guest right after it.
#[test]
fn yersinia_dhcp_starvation_fails() {
    if !privileged() || !have("yersinia") || !have("dhclient") || !have("busybox") {
        return;
    }
    let _load = load_lock();
    let mut t = Topo::new("ys", "10.96.0.1/24");
    let (mr, ma, mp) = (
        "52:54:00:96:00:0a",
        "52:54:00:96:00:0b",
        "52:54:00:96:00:0c",
    );
    let ns_r = t.add_client("r", mr);
    let ns_a = t.add_client("a", ma);
    let ns_p = t.add_client("p", mp);
    let scope = t.scope(Some(("10.96.0.100", "10.96.0.139")), &[(mr, "10.96.0.10")]);
    let server = ServerThread::start(&t.server_ns, vec![scope], &t.state_dir, None);
    let h = server.handle.clone();
    let work = t.state_dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let w = work.display();
    // yersinia stops at the first key on stdin: give it one that stays open, then closes.
    // It writes yersinia.log where it runs.
    let attack = t.adopt(spawn_in(
        &ns_a,
        &format!(
            "cd {w} && sleep 3 | exec yersinia dhcp -attack 1 -interface eth0 >/dev/null 2>&1"
        ),
    ));
    std::thread::sleep(Duration::from_millis(500));
    // The reserved guest: ISC dhclient (its packet socket filters in the kernel; see the
    // flood test in tests/dhcp.rs).
    write_script(
        &work.join("dhclient.sh"),
        &format!(
            "env | grep -E '^(reason|new_)' > {w}/dhc.tmp; mv {w}/dhc.tmp {w}/dhclient.$reason"
        ),
    );
    let d = t.adopt(spawn_in(
        &ns_r,
        &format!(
            "exec dhclient -d -1 -sf {w}/dhclient.sh -lf {w}/dhclient.leases -pf {w}/dhclient.pid eth0 2>/dev/null"
        ),
    ));
    let t0 = Instant::now();
    wait_for(
        "the reserved guest's lease",
        Duration::from_secs(10),
        || work.join("dhclient.BOUND").exists(),
    );
    let took = t0.elapsed();
    let _ = t.child(d).kill();
    let offers = h
        .leases()
        .iter()
        .filter(|l| l.state == "offered" && !l.reserved)
        .count();
    let _ = t.child(attack).wait();
    let st = h.stats();
    eprintln!("yersinia: reserved guest bound in {took:?}, {offers} offers held; {st:?}");
    assert!(st.received > 10_000, "the attack ran: {st:?}");
    assert!(st.dropped_rate_interface > 0, "{st:?}");
    assert!(
        offers <= 10,
        "offers are capped at a quarter of 40: {offers}"
    );
    let bound = std::fs::read_to_string(work.join("dhclient.BOUND")).unwrap();
    assert!(bound.contains("new_ip_address=10.96.0.10"), "{bound}");
    // Right after the attack, a pool guest.
    let ip = one_shot_udhcpc(&ns_p, &work, "p").expect("a pool lease after the attack");
    assert!(ip.octets()[3] >= 100, "{ip}");
}
