//! Unit tests of the engine: packets in, replies out, time passed in.

use super::super::Reservation;
use super::*;
use std::net::SocketAddrV4;
use std::time::Duration;

struct T {
    e: Engine,
    dir: std::path::PathBuf,
    /// Unix seconds; the monotonic clock moves with it.
    now: u64,
    mono0: Instant,
}

impl Drop for T {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scope() -> Scope {
    Scope {
        network: "n".into(),
        interface: "br0".into(),
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        subnet: "10.0.0.0/24".parse().unwrap(),
        router: Some(Ipv4Addr::new(10, 0, 0, 1)),
        dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
        domain: Some("example.test".into()),
        mtu: Some(1400),
        live_mtu: None,
        lease_secs: 100,
        routes: vec![(
            "198.51.100.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 0, 0, 254),
        )],
        pool: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101))),
        reservations: vec![Reservation {
            mac: Mac([2, 0, 0, 0, 0, 9]),
            ip: Ipv4Addr::new(10, 0, 0, 9),
            port: "p9".into(),
        }],
    }
}

fn engine(tag: &str) -> T {
    let dir = std::env::temp_dir().join(format!("kvmnet-dhcp-unit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut e = Engine::open(&dir, 1000).unwrap();
    e.set_scopes(vec![scope()], 1000);
    T {
        e,
        dir,
        now: 1000,
        mono0: Instant::now(),
    }
}

impl T {
    /// Send as a well-behaved client does: from `ciaddr` (a relay: from `giaddr`).
    fn send(&mut self, p: &Packet) -> Option<(Packet, Dest)> {
        let src = if p.giaddr.is_unspecified() {
            p.ciaddr
        } else {
            p.giaddr
        };
        self.send_from(p, src)
    }

    fn send_from(&mut self, p: &Packet, src: Ipv4Addr) -> Option<(Packet, Dest)> {
        let rx = Rx {
            socket: 0,
            src: SocketAddrV4::new(src, if p.giaddr.is_unspecified() { 68 } else { 67 }),
            dst: Ipv4Addr::BROADCAST,
            data: p.encode(),
        };
        let mono = self.mono0 + Duration::from_secs(self.now - 1000);
        let o = self.e.handle("br0", 0, &rx, self.now, mono);
        assert!(self.e.commit());
        o.map(|o| (Packet::parse(&o.bytes).unwrap(), o.dest))
    }
}

fn mac(m: u8) -> Mac {
    Mac([2, 0, 0, 0, 0, m])
}

fn req(m: u8, kind: MessageType) -> Packet {
    let mut p = Packet::request(mac(m), u32::from(m), kind);
    p.set(opt::PARAM_LIST, vec![1, 3, 6, 15, 26, 121]);
    p
}

#[test]
fn dora_options_and_states() {
    let mut t = engine("dora");
    let (offer, dest) = t.send(&req(1, MessageType::Discover)).unwrap();
    assert_eq!(offer.message_type(), Some(MessageType::Offer));
    let ip = offer.yiaddr;
    assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 100));
    assert!(matches!(dest, Dest::Hardware { .. }));
    assert_eq!(offer.get_u32(opt::LEASE_TIME), Some(100));
    assert_eq!(offer.get_u32(opt::RENEWAL_T1), Some(50));
    assert_eq!(offer.get_u32(opt::REBINDING_T2), Some(87));
    assert_eq!(
        offer.get_ip(opt::SUBNET_MASK),
        Some(Ipv4Addr::new(255, 255, 255, 0))
    );
    assert_eq!(offer.get_u16(opt::MTU), Some(1400));
    let routes =
        super::super::packet::decode_classless_routes(offer.get(opt::CLASSLESS_ROUTES).unwrap())
            .unwrap();
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[1].0.prefix, 0, "default route included");
    let mut r = req(1, MessageType::Request);
    r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
    r.set(opt::REQUESTED_IP, ip.octets().to_vec());
    let (ack, _) = t.send(&r).unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(t.e.leases(t.now)[0].state, "bound");
    // Another client asking for that address in INIT-REBOOT is refused.
    let mut r2 = req(2, MessageType::Request);
    r2.set(opt::REQUESTED_IP, ip.octets().to_vec());
    let (nak, dest) = t.send(&r2).unwrap();
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(dest, Dest::Broadcast);
    // The pool has one address left; a third client finds none after the second.
    let (o2, _) = t.send(&req(2, MessageType::Discover)).unwrap();
    assert_eq!(o2.yiaddr, Ipv4Addr::new(10, 0, 0, 101));
    assert!(t.send(&req(3, MessageType::Discover)).is_none());
    assert_eq!(t.e.stats.dropped_pool_exhausted, 1);
    // The reserved client always gets its address, even asking for another.
    let mut d9 = req(9, MessageType::Discover);
    d9.set(opt::REQUESTED_IP, vec![10, 0, 0, 100]);
    let (o9, _) = t.send(&d9).unwrap();
    assert_eq!(o9.yiaddr, Ipv4Addr::new(10, 0, 0, 9));
    // Renewal: unicast to ciaddr.
    let mut renew = req(1, MessageType::Request);
    renew.ciaddr = ip;
    t.now += 60;
    let (ack, dest) = t.send(&renew).unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert_eq!(dest, Dest::Unicast(ip));
    assert_eq!(t.e.leases(t.now)[0].expires_unix, t.now + 100);
    // Release frees it.
    let mut rel = req(1, MessageType::Release);
    rel.ciaddr = ip;
    rel.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
    assert!(t.send(&rel).is_none());
    assert!(
        t.e.leases(t.now)
            .iter()
            .any(|l| l.ip == ip && l.state == "released")
    );
    // Restart on the same journal: the release survives, the offer to 2 does not.
    let (dir, now) = (t.dir.clone(), t.now);
    let T { e, .. } = &mut t;
    let placeholder =
        std::env::temp_dir().join(format!("kvmnet-dhcp-unit-ph-{}", std::process::id()));
    let old = std::mem::replace(e, Engine::open(&placeholder, now).unwrap());
    drop(old); // releases the lock on `dir`
    let _ = std::fs::remove_dir_all(&placeholder);
    let mut e = Engine::open(&dir, now).unwrap();
    e.set_scopes(vec![scope()], now);
    let ls = e.leases(now);
    assert!(
        ls.iter().any(|l| l.ip == ip && l.state == "released"),
        "{ls:?}"
    );
    assert!(!ls.iter().any(|l| l.state == "offered"));
}

#[test]
fn relayed_only_from_its_own_bridge() {
    let mut t = engine("relay");
    let mut other = scope();
    other.network = "other".into();
    other.interface = "br1".into();
    other.server_ip = Ipv4Addr::new(10, 1, 0, 1);
    other.router = Some(other.server_ip);
    other.subnet = "10.1.0.0/24".parse().unwrap();
    other.pool = Some((Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 0, 110)));
    other.reservations.clear();
    t.e.set_scopes(vec![scope(), other], t.now);
    let mut d = req(1, MessageType::Discover);
    d.giaddr = Ipv4Addr::new(10, 0, 0, 7);
    d.set(opt::RELAY_AGENT_INFO, vec![1, 1, 7]);
    let (offer, dest) = t.send(&d).unwrap();
    assert_eq!(dest, Dest::Relay(Ipv4Addr::new(10, 0, 0, 7)));
    assert_eq!(offer.giaddr, Ipv4Addr::new(10, 0, 0, 7));
    assert_eq!(offer.options.last().unwrap().0, opt::RELAY_AGENT_INFO);
    // A guest on br0 claiming to relay for br1's subnet gets nothing from br1's pool.
    d.giaddr = Ipv4Addr::new(10, 1, 0, 7);
    assert!(t.send(&d).is_none());
    assert_eq!(t.e.stats.dropped_no_scope, 1);
    // A NAK to a relay carries the broadcast bit.
    let mut r = req(2, MessageType::Request);
    r.giaddr = Ipv4Addr::new(10, 0, 0, 7);
    r.set(opt::REQUESTED_IP, vec![192, 0, 2, 1]);
    let (nak, dest) = t.send(&r).unwrap();
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert!(nak.broadcast_flag());
    assert_eq!(dest, Dest::Relay(Ipv4Addr::new(10, 0, 0, 7)));
}

#[test]
fn inform_and_a_hog_takes_at_most_half() {
    let mut t = engine("inform");
    t.e.limits = Limits {
        per_interface_rate: 0.001,
        per_interface_burst: 40.0,
        ..Limits::default()
    };
    let mut inf = req(5, MessageType::Inform);
    inf.ciaddr = Ipv4Addr::new(10, 0, 0, 50);
    let (ack, dest) = t.send(&inf).unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert!(ack.yiaddr.is_unspecified());
    assert!(ack.get(opt::LEASE_TIME).is_none());
    assert_eq!(ack.get_ips(opt::DNS), vec![Ipv4Addr::new(10, 0, 0, 53)]);
    assert_eq!(dest, Dest::Unicast(Ipv4Addr::new(10, 0, 0, 50)));
    assert!(t.e.leases(t.now).is_empty());
    // One MAC hammering: its own allowance (16, each packet also charged to the shared 40),
    // then the shared one only down to half: 20 in all.
    let answered = (0..100).filter(|_| t.send(&inf).is_some()).count();
    assert_eq!(answered + 1, 20, "{:?}", t.e.stats);
    assert!(t.e.stats.dropped_rate_mac > 0);
    // The other half serves other clients.
    let mut other = req(6, MessageType::Inform);
    other.ciaddr = Ipv4Addr::new(10, 0, 0, 51);
    assert!(t.send(&other).is_some());
}

/// DORA for `m` (with client identifier `cid`); the address it got.
fn bind(t: &mut T, m: u8, cid: Option<&[u8]>) -> Ipv4Addr {
    let with_cid = |mut p: Packet| {
        if let Some(c) = cid {
            p.set(opt::CLIENT_ID, c.to_vec());
        }
        p
    };
    let (offer, _) = t.send(&with_cid(req(m, MessageType::Discover))).unwrap();
    let mut r = with_cid(req(m, MessageType::Request));
    r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
    r.set(opt::REQUESTED_IP, offer.yiaddr.octets().to_vec());
    let (ack, _) = t.send(&r).unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    ack.yiaddr
}

fn state_of(t: &T, ip: Ipv4Addr) -> String {
    t.e.leases(t.now)
        .into_iter()
        .find(|l| l.ip == ip)
        .map_or("none".into(), |l| l.state)
}

fn release(m: u8, ip: Ipv4Addr, cid: Option<&[u8]>) -> Packet {
    let mut p = req(m, MessageType::Release);
    p.ciaddr = ip;
    p.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
    if let Some(c) = cid {
        p.set(opt::CLIENT_ID, c.to_vec());
    }
    p
}

fn decline(m: u8, ip: Ipv4Addr, cid: Option<&[u8]>) -> Packet {
    let mut p = req(m, MessageType::Decline);
    p.set(opt::REQUESTED_IP, ip.octets().to_vec());
    p.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
    if let Some(c) = cid {
        p.set(opt::CLIENT_ID, c.to_vec());
    }
    p
}

/// A RELEASE counts only from the holder's address with its MAC and client identifier; a
/// DECLINE only from its MAC and client identifier, just after a new binding.
#[test]
fn release_and_decline_only_from_the_holder() {
    let mut t = engine("holder");
    let cid: &[u8] = &[1, 2, 0, 0, 0, 0, 1];
    let victim = bind(&mut t, 1, Some(cid));
    assert_eq!(
        t.e.leases(t.now)[0].client_id.as_deref(),
        Some("01:02:00:00:00:00:01")
    );
    // In the victim's name, from another guest's address or from no address: ignored.
    let attacker = Ipv4Addr::new(10, 0, 0, 66);
    for src in [attacker, Ipv4Addr::UNSPECIFIED] {
        assert!(t.send_from(&release(1, victim, Some(cid)), src).is_none());
    }
    // From the victim's address (only IP spoofing gets there) without its client id.
    assert!(t.send(&release(1, victim, None)).is_none());
    assert!(t.send(&release(1, victim, Some(&[9]))).is_none());
    assert_eq!(t.e.stats.dropped_not_holder, 4);
    assert_eq!(state_of(&t, victim), "bound");
    // A DECLINE long after the binding, even with the right MAC and client id.
    t.now += 61;
    assert!(t.send(&decline(1, victim, Some(cid))).is_none());
    assert_eq!(state_of(&t, victim), "bound");
    // A REQUEST in the victim's name for its own address (a renewal, an INIT-REBOOT) opens
    // no window for a DECLINE.
    let mut reboot = req(1, MessageType::Request);
    reboot.set(opt::REQUESTED_IP, victim.octets().to_vec());
    reboot.set(opt::CLIENT_ID, cid.to_vec());
    assert_eq!(
        t.send(&reboot).unwrap().0.message_type(),
        Some(MessageType::Ack)
    );
    assert!(t.send(&decline(1, victim, Some(cid))).is_none());
    assert_eq!(t.e.stats.dropped_not_holder, 6);
    assert_eq!(state_of(&t, victim), "bound");
    // The victim itself releases.
    assert!(t.send(&release(1, victim, Some(cid))).is_none());
    assert_eq!(state_of(&t, victim), "released");
    // A client that has just been given an address declines it (in the window), and a
    // DECLINE with another MAC is not even looked at.
    let fresh = bind(&mut t, 2, None);
    assert!(t.send(&decline(3, fresh, None)).is_none());
    assert_eq!(t.e.stats.ignored, 1);
    t.now += 5;
    assert!(t.send(&decline(2, fresh, None)).is_none());
    assert_eq!(state_of(&t, fresh), "declined");
    // The client id survives a restart (it is in the journal).
    let mut e = reopen(&mut t);
    let ls = e.leases(t.now);
    let l = ls.iter().find(|l| l.ip == victim).unwrap();
    assert_eq!(l.client_id.as_deref(), Some("01:02:00:00:00:00:01"));
    assert!(e.commit());
}

/// Stop the engine (releasing the journal's lock) and open another on the same journal.
fn reopen(t: &mut T) -> Engine {
    let placeholder = t.dir.with_extension("placeholder");
    let old = std::mem::replace(&mut t.e, Engine::open(&placeholder, t.now).unwrap());
    drop(old);
    let _ = std::fs::remove_dir_all(&placeholder);
    let mut e = Engine::open(&t.dir, t.now).unwrap();
    e.set_scopes(vec![scope()], t.now);
    e
}

fn pool_scope(last: u8) -> Scope {
    let mut s = scope();
    s.pool = Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, last)));
    s
}

/// Bare REQUESTs (INIT-REBOOT, SELECTING without a DISCOVER) from invented MACs bind no more
/// of the pool than DISCOVERs would: below a tenth free, two new clients a second.
#[test]
fn bare_requests_pass_the_discover_admission() {
    let mut t = engine("bare");
    t.e.set_scopes(vec![pool_scope(199)], t.now);
    let held = bind(&mut t, 200, None);
    let mut acks = 0;
    for i in 0..100u8 {
        let mut p = Packet::request(Mac([2, 9, 0, 0, 1, i]), u32::from(i), MessageType::Request);
        if i % 2 == 0 {
            p.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        }
        p.set(opt::REQUESTED_IP, vec![10, 0, 0, 100 + i]);
        if let Some((r, _)) = t.send(&p)
            && r.message_type() == Some(MessageType::Ack)
        {
            acks += 1;
        }
    }
    // 99 free (one is held, and asking for it is NAKed): 90 bind before the guard starts at
    // 9 free, then the 2 its bucket holds.
    assert_eq!(acks, 90 + 2, "{:?}", t.e.stats);
    assert!(t.e.stats.dropped_pool_guard > 0);
    // The reservation is always answered; the holder of a pool address renews.
    assert_eq!(bind(&mut t, 9, None), Ipv4Addr::new(10, 0, 0, 9));
    let mut renew = req(200, MessageType::Request);
    renew.ciaddr = held;
    assert_eq!(
        t.send(&renew).unwrap().0.message_type(),
        Some(MessageType::Ack)
    );
    // Two more new clients a second.
    t.now += 1;
    let mut d = req(201, MessageType::Discover);
    d.flags = FLAG_BROADCAST;
    assert!(t.send(&d).is_some());
}

/// A relay must not be a guest port: its address and source must be outside the pool, not
/// reserved, not leased, not the server's; and giaddr rotation shares one allowance.
#[test]
fn relays_are_not_guest_ports() {
    let mut t = engine("relayguest");
    let mut s = scope();
    s.reservations.push(Reservation {
        mac: mac(50),
        ip: Ipv4Addr::new(10, 0, 0, 50),
        port: "p50".into(),
    });
    t.e.set_scopes(vec![s], t.now);
    assert_eq!(bind(&mut t, 50, None), Ipv4Addr::new(10, 0, 0, 50));
    // The reservation goes away; the address stays one the server leased.
    t.e.set_scopes(vec![scope()], t.now);
    let relay = |giaddr: [u8; 4], m: u8| {
        let mut d = req(m, MessageType::Discover);
        d.giaddr = giaddr.into();
        d
    };
    let good = Ipv4Addr::new(10, 0, 0, 7);
    for bad in [
        [10, 0, 0, 9],
        [10, 0, 0, 100],
        [10, 0, 0, 1],
        [10, 0, 0, 50],
        [10, 0, 0, 255],
    ] {
        assert!(t.send(&relay(bad, 1)).is_none(), "{bad:?}");
        assert!(
            t.send_from(&relay([10, 0, 0, 7], 1), bad.into()).is_none(),
            "{bad:?}"
        );
    }
    assert!(
        t.send_from(&relay([10, 0, 0, 7], 1), Ipv4Addr::UNSPECIFIED)
            .is_none()
    );
    assert_eq!(t.e.stats.dropped_relay, 11);
    assert_eq!(
        t.send(&relay([10, 0, 0, 7], 1)).unwrap().1,
        Dest::Relay(good)
    );
    // Rotating giaddr (and source) over the rest of the subnet: one allowance.
    t.e.limits = Limits {
        per_interface_rate: 0.001,
        per_interface_burst: 20.0,
        ..Limits::default()
    };
    let served = (10..90u8)
        .filter(|&i| {
            let mut inf = relay([10, 0, 0, i], i);
            inf.set(opt::MESSAGE_TYPE, vec![MessageType::Inform as u8]);
            t.send(&inf).is_some()
        })
        .count();
    assert_eq!(served, 20);
    // Direct clients have their own allowance.
    assert!(t.send(&req(9, MessageType::Discover)).is_some());
}

/// An answer never goes to a `ciaddr` or source outside the network.
#[test]
fn ciaddr_outside_the_network_is_ignored() {
    let mut t = engine("ciaddr");
    let outside = Ipv4Addr::new(192, 0, 2, 77);
    let mut inf = req(5, MessageType::Inform);
    inf.ciaddr = outside;
    assert!(t.send(&inf).is_none());
    inf.ciaddr = Ipv4Addr::UNSPECIFIED;
    assert!(t.send_from(&inf, outside).is_none());
    inf.ciaddr = Ipv4Addr::new(10, 0, 0, 255);
    assert!(t.send(&inf).is_none(), "the broadcast address is no host");
    assert_eq!(t.e.stats.dropped_foreign_ciaddr, 3);
    inf.ciaddr = Ipv4Addr::new(10, 0, 0, 60);
    assert_eq!(t.send(&inf).unwrap().1, Dest::Unicast(inf.ciaddr));
    // A REQUEST with such a ciaddr is answered as if ciaddr were 0.
    let (offer, _) = t.send(&req(1, MessageType::Discover)).unwrap();
    let mut r = req(1, MessageType::Request);
    r.ciaddr = outside;
    r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
    r.set(opt::REQUESTED_IP, offer.yiaddr.octets().to_vec());
    let (ack, dest) = t.send_from(&r, Ipv4Addr::UNSPECIFIED).unwrap();
    assert_eq!(ack.message_type(), Some(MessageType::Ack));
    assert!(matches!(dest, Dest::Hardware { .. }), "{dest:?}");
    // A renewal of an address outside the network: NAK, broadcast.
    let mut renew = req(1, MessageType::Request);
    renew.ciaddr = outside;
    let (nak, dest) = t.send(&renew).unwrap();
    assert_eq!(nak.message_type(), Some(MessageType::Nak));
    assert_eq!(dest, Dest::Broadcast);
}

#[test]
fn without_a_spec_mtu_a_live_mtu_below_1500_is_told() {
    // The reserved client each time: it gets its address however often it asks.
    let mut t = engine("livemtu");
    let mut s = scope();
    s.mtu = None;
    t.e.set_scopes(vec![s], t.now);
    let mtu_of = |t: &mut T, m: u8| {
        t.send(&req(m, MessageType::Discover))
            .unwrap()
            .0
            .get_u16(opt::MTU)
    };
    assert_eq!(mtu_of(&mut t, 9), None, "nothing known: guests keep 1500");
    t.e.set_live_mtus(&[("br0".into(), Some(1450))]);
    assert_eq!(
        mtu_of(&mut t, 9),
        Some(1450),
        "a VXLAN network's derived MTU"
    );
    t.e.set_live_mtus(&[("br0".into(), Some(9000))]);
    assert_eq!(
        mtu_of(&mut t, 9),
        None,
        "jumbo bridges are not forced on guests"
    );
    let mut s = scope();
    s.mtu = Some(1400);
    t.e.set_scopes(vec![s], t.now);
    t.e.set_live_mtus(&[("br0".into(), Some(1300))]);
    assert_eq!(mtu_of(&mut t, 9), Some(1400), "the spec's mtu wins");
}
