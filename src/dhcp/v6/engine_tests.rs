use super::*;
use crate::dhcp::v6::FuzzServer6;

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("kvmnet-dhcp6-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Dir(d)
}

const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x42);
const MAC: Mac = Mac([2, 0, 0, 0, 0, 0x42]);

fn duid(n: u8) -> Vec<u8> {
    vec![0, 3, 0, 1, 2, 0, 0, 0, 0, n]
}

fn msg(kind: MessageType, client: &[u8], server: Option<&[u8]>) -> Message {
    let mut m = Message::new_with_id(kind, [1, 2, 3]);
    m.opts_mut().insert(DhcpOption::ClientId(client.to_vec()));
    if let Some(s) = server {
        m.opts_mut().insert(DhcpOption::ServerId(s.to_vec()));
    }
    m
}

fn with_ia(mut m: Message, iaid: u32, addr: Option<Ipv6Addr>) -> Message {
    let mut opts = DhcpOptions::new();
    if let Some(a) = addr {
        opts.insert(DhcpOption::IAAddr(IAAddr {
            addr: a,
            preferred_life: 0,
            valid_life: 0,
            opts: DhcpOptions::new(),
        }));
    }
    m.opts_mut().insert(DhcpOption::IANA(IANA {
        id: iaid,
        t1: 0,
        t2: 0,
        opts,
    }));
    m
}

fn send(f: &mut FuzzServer6, mac: Mac, m: &Message) -> Option<Message> {
    let (dest, bytes) = f.feed(LL, mac, &m.to_vec().unwrap(), 0)?;
    assert_eq!(
        dest, LL,
        "answers go back to the client's link-local address"
    );
    Some(Message::from_bytes(&bytes).expect("answers parse"))
}

fn addr_of(m: &Message) -> Option<Ipv6Addr> {
    ia_nas(m).flat_map(ia_addrs).next()
}

fn status_of(o: &DhcpOptions) -> Option<Status> {
    match o.get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(s)) => Some(s.status),
        _ => None,
    }
}

fn a(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Solicit, Request, Renew, Release from the holder: the whole life of a pool lease.
fn bind(f: &mut FuzzServer6, mac: Mac, client: &[u8], iaid: u32) -> Ipv6Addr {
    let sid = f.server_duid();
    let adv = send(
        f,
        mac,
        &with_ia(msg(MessageType::Solicit, client, None), iaid, None),
    )
    .expect("advertised");
    assert_eq!(adv.msg_type(), MessageType::Advertise);
    let offered = addr_of(&adv).expect("an address");
    let rep = send(
        f,
        mac,
        &with_ia(
            msg(MessageType::Request, client, Some(&sid)),
            iaid,
            Some(offered),
        ),
    )
    .expect("replied");
    assert_eq!(rep.msg_type(), MessageType::Reply);
    assert_eq!(addr_of(&rep), Some(offered));
    offered
}

#[test]
fn pool_lease_lifecycle_and_who_may_release() {
    let d = dir("life");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let sid = f.server_duid();
    let ip = bind(&mut f, MAC, &duid(1), 7);
    assert!((a("fd00:db8::1000")..=a("fd00:db8::1fff")).contains(&ip));
    let l = &f.leases()[0];
    assert_eq!((l.ip, l.state.as_str(), l.iaid), (ip, "bound", 7));
    assert_eq!(l.mac, MAC.to_string());
    // Renew keeps it.
    let r = send(
        &mut f,
        MAC,
        &with_ia(msg(MessageType::Renew, &duid(1), Some(&sid)), 7, Some(ip)),
    )
    .unwrap();
    assert_eq!(addr_of(&r), Some(ip));
    // A Release with the right DUID and IAID but from another Ethernet source is refused.
    let rel = with_ia(msg(MessageType::Release, &duid(1), Some(&sid)), 7, Some(ip));
    send(&mut f, Mac([2, 0, 0, 0, 0, 0x66]), &rel).unwrap();
    assert_eq!(f.leases()[0].state, "bound");
    assert_eq!(f.stats().dropped_not_holder, 1);
    // From the holder it frees.
    send(&mut f, MAC, &rel).unwrap();
    assert_eq!(f.leases()[0].state, "released");
    // Another client now may get it; the first comes back to it if free.
    let again = bind(&mut f, MAC, &duid(1), 7);
    assert_eq!(again, ip, "a returning client gets its previous address");
}

#[test]
fn bindings_survive_a_restart_and_are_never_given_twice() {
    let d = dir("restart");
    let ip = {
        let mut f = FuzzServer6::open(&d.0).unwrap();
        bind(&mut f, MAC, &duid(1), 1)
    };
    let mut f = FuzzServer6::open(&d.0).unwrap();
    assert_eq!(f.leases()[0].ip, ip);
    let other = bind(&mut f, Mac([2, 0, 0, 0, 0, 0x43]), &duid(2), 1);
    assert_ne!(other, ip);
}

#[test]
fn reservation_goes_by_ethernet_source_not_duid() {
    let d = dir("resv");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let reserved = Mac([2, 0, 0, 0, 0, 9]);
    assert_eq!(bind(&mut f, reserved, &duid(1), 1), a("fd00:db8::9"));
    // A reinstalled guest (new DUID) from the same MAC gets it too.
    assert_eq!(bind(&mut f, reserved, &duid(2), 1), a("fd00:db8::9"));
    // A DUID-LL naming the reserved MAC from another port does not.
    let forged = vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 9];
    assert_ne!(bind(&mut f, MAC, &forged, 1), a("fd00:db8::9"));
}

#[test]
fn rapid_commit_information_request_confirm_and_prefix_delegation() {
    let d = dir("misc");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let mut sol = with_ia(msg(MessageType::Solicit, &duid(3), None), 1, None);
    sol.opts_mut().insert(DhcpOption::RapidCommit);
    sol.opts_mut().insert(DhcpOption::IAPD(IAPD {
        id: 5,
        t1: 0,
        t2: 0,
        opts: DhcpOptions::new(),
    }));
    let r = send(&mut f, MAC, &sol).unwrap();
    assert_eq!(r.msg_type(), MessageType::Reply);
    assert!(r.opts().get(OptionCode::RapidCommit).is_some());
    match r.opts().get(OptionCode::IAPD) {
        Some(DhcpOption::IAPD(pd)) => assert_eq!(status_of(&pd.opts), Some(Status::NoPrefixAvail)),
        o => panic!("{o:?}"),
    }
    assert_eq!(f.leases()[0].state, "bound");

    let mut info = Message::new_with_id(MessageType::InformationRequest, [9, 9, 9]);
    info.opts_mut().insert(DhcpOption::ClientId(duid(4)));
    let r = send(&mut f, MAC, &info).unwrap();
    assert_eq!(
        r.opts().get(OptionCode::DomainNameServers),
        Some(&DhcpOption::DomainNameServers(vec![a("fd00:db8::1")]))
    );
    assert!(r.opts().get(OptionCode::DomainSearchList).is_some());

    let ok = with_ia(
        msg(MessageType::Confirm, &duid(3), None),
        1,
        Some(a("fd00:db8::1234")),
    );
    assert_eq!(
        status_of(send(&mut f, MAC, &ok).unwrap().opts()),
        Some(Status::Success)
    );
    let off = with_ia(
        msg(MessageType::Confirm, &duid(3), None),
        1,
        Some(a("fd00:dead::1")),
    );
    assert_eq!(
        status_of(send(&mut f, MAC, &off).unwrap().opts()),
        Some(Status::NotOnLink)
    );
}

#[test]
fn server_identifiers_and_sources_are_checked() {
    let d = dir("sid");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let req = with_ia(
        msg(MessageType::Request, &duid(1), Some(&[0, 3, 9])),
        1,
        None,
    );
    assert!(
        send(&mut f, MAC, &req).is_none(),
        "another server's Request"
    );
    let sol = with_ia(
        msg(MessageType::Solicit, &duid(1), Some(&f.server_duid())),
        1,
        None,
    );
    assert!(
        send(&mut f, MAC, &sol).is_none(),
        "a Solicit may not name a server"
    );
    let bytes = with_ia(msg(MessageType::Solicit, &duid(1), None), 1, None)
        .to_vec()
        .unwrap();
    assert!(
        f.feed(a("fd00:db8::77"), MAC, &bytes, 0).is_none(),
        "not link-local"
    );
    assert_eq!(f.stats().dropped_server_id, 2);
    assert_eq!(f.stats().dropped_source, 1);
}

#[test]
fn a_guarded_port_cannot_drain_the_pool_with_invented_duids() {
    let d = dir("share");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let guarded = Mac([2, 0, 0, 0, 0, 0x0a]);
    let mut got = 0;
    for i in 0..40u8 {
        let adv = send(
            &mut f,
            guarded,
            &with_ia(msg(MessageType::Solicit, &duid(i), None), 1, None),
        );
        if adv.as_ref().and_then(addr_of).is_some() {
            got += 1;
        }
    }
    assert_eq!(got, Limits6::default().max_per_mac);
    assert!(f.stats().dropped_mac_share > 0);
}

#[test]
fn decline_only_while_new() {
    let d = dir("decline");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let sid = f.server_duid();
    let ip = bind(&mut f, MAC, &duid(1), 1);
    let dec = with_ia(msg(MessageType::Decline, &duid(1), Some(&sid)), 1, Some(ip));
    let late = f.feed(LL, MAC, &dec.to_vec().unwrap(), 120);
    assert!(late.is_some());
    assert_eq!(f.leases()[0].state, "bound", "too late to decline");
    let ip2 = bind(&mut f, MAC, &duid(2), 1);
    send(
        &mut f,
        MAC,
        &with_ia(
            msg(MessageType::Decline, &duid(2), Some(&sid)),
            1,
            Some(ip2),
        ),
    );
    assert!(
        f.leases()
            .iter()
            .any(|l| l.ip == ip2 && l.state == "declined")
    );
}

/// Mutated messages through the whole engine: no panic, answers parse, and nothing is bound
/// outside the pool and the reservation. (The fuzz target drives the same entry point.)
#[test]
fn survives_mutated_messages() {
    let d = dir("fuzz");
    let mut f = FuzzServer6::open(&d.0).unwrap();
    let sid = f.server_duid();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let kinds = [
        MessageType::Solicit,
        MessageType::Request,
        MessageType::Renew,
        MessageType::Rebind,
        MessageType::Release,
        MessageType::Decline,
        MessageType::Confirm,
        MessageType::InformationRequest,
    ];
    for _ in 0..3000 {
        let r = rnd().to_be_bytes();
        let kind = kinds[usize::from(r[0]) % kinds.len()];
        let server = (r[1] & 1 == 1).then_some(sid.as_slice());
        let hint = Ipv6Addr::new(0xfd00, 0xdb8, 0, 0, 0, 0, 0, 0x1000 + u16::from(r[2]));
        let mut m = with_ia(
            msg(kind, &duid(r[3] & 7), server),
            u32::from(r[4] & 1),
            Some(hint),
        );
        if r[5] & 1 == 1 {
            m.opts_mut().insert(DhcpOption::RapidCommit);
        }
        let mut bytes = m.to_vec().unwrap();
        for _ in 0..(r[6] & 3) {
            let at = rnd() as usize % bytes.len();
            bytes[at] = rnd() as u8;
        }
        let mac = Mac([2, 0, 0, 0, 0, 8 + (r[7] & 3)]);
        if let Some((_, reply)) = f.feed(LL, mac, &bytes, u32::from(r[7] >> 7)) {
            Message::from_bytes(&reply).expect("answers parse");
        }
    }
    let leases = f.leases();
    assert!(leases.iter().any(|l| l.state == "bound"), "{:?}", f.stats());
    for l in &leases {
        let ok = (a("fd00:db8::1000")..=a("fd00:db8::1fff")).contains(&l.ip)
            || (l.ip == a("fd00:db8::9") && l.mac == "02:00:00:00:00:09");
        assert!(ok, "{l:?}");
    }
}
