//! The engine's forwarding, fairness and truncation, with time passed in.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::engine::Engine;
use super::{Client, Limits, Out, Via, Zone};

fn engine(rate: u32) -> Engine {
    let mut n = 0u16;
    let mut e = Engine::new(
        Limits::default(),
        Box::new(move || {
            n = n.wrapping_add(7);
            n
        }),
    );
    let big: Vec<(String, std::net::IpAddr)> = (0..100)
        .map(|i| ("big.t.".to_string(), format!("10.0.1.{i}").parse().unwrap()))
        .collect();
    e.set_zones(
        vec![Zone {
            network: "n".into(),
            interface: "br".into(),
            listen: vec!["10.0.0.1".parse().unwrap()],
            domain: Some("t".into()),
            names: big,
            subnets: vec!["10.0.0.1/16".parse().unwrap()],
            subnets6: Vec::new(),
            forwarders: Some(vec![
                "192.0.2.53".parse().unwrap(),
                "192.0.2.54".parse().unwrap(),
            ]),
            rate_limit: rate,
            lease_ports: Vec::new(),
        }],
        1,
    );
    e
}

fn client(last: u8, via: Via) -> Client {
    Client {
        zone: 0,
        addr: SocketAddr::new(format!("10.0.0.{last}").parse().unwrap(), 5353),
        via,
    }
}

fn query(name: &str, id: u16, edns: bool) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    if edns {
        m.set_edns(Edns::new());
    }
    m.to_vec().unwrap()
}

fn replies(out: &[Out]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Out::Reply { bytes, .. } => Some(Message::from_vec(bytes).unwrap()),
            _ => None,
        })
        .collect()
}

fn asked(out: &[Out]) -> Option<(u64, SocketAddr, Message, bool)> {
    out.iter().find_map(|o| match o {
        Out::Ask {
            token,
            server,
            bytes,
            tcp,
        } => Some((*token, *server, Message::from_vec(bytes).unwrap(), *tcp)),
        _ => None,
    })
}

fn answer_to(q: &Message, ttl: u32, tc: bool) -> Vec<u8> {
    let mut m = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata.truncation = tc;
    m.add_query(q.queries[0].clone());
    if !tc {
        m.add_answer(Record::from_rdata(
            q.queries[0].name().clone(),
            ttl,
            RData::A(A::new(198, 51, 100, 7)),
        ));
    }
    m.to_vec().unwrap()
}

#[test]
fn identical_questions_share_one_upstream_query_then_the_cache() {
    let (mut e, t) = (engine(1000), Instant::now());
    let first = e.query(client(10, Via::Udp(1)), &query("www.example.", 1, false), t);
    let (token, server, q, tcp) = asked(&first).expect("forwarded");
    assert_eq!((server.to_string().as_str(), tcp), ("192.0.2.53:53", false));
    assert!(
        e.query(client(11, Via::Udp(1)), &query("WWW.example.", 2, false), t)
            .is_empty()
    );
    // A forged answer with the wrong ID is ignored.
    let mut forged = Message::from_vec(&answer_to(&q, 300, false)).unwrap();
    forged.metadata.id ^= 1;
    assert!(e.upstream(token, &forged.to_vec().unwrap(), t).is_empty());
    let out = e.upstream(token, &answer_to(&q, 300, false), t);
    let r = replies(&out);
    assert_eq!(r.len(), 2, "both waiters answered");
    assert_eq!((r[0].metadata.id, r[1].metadata.id), (1, 2));
    let later = t + Duration::from_secs(100);
    let hit = replies(&e.query(
        client(12, Via::Udp(1)),
        &query("www.example.", 3, false),
        later,
    ));
    assert_eq!(hit[0].answers[0].ttl, 200, "TTL counted down");
    assert_eq!(e.network_counters()[0].1.cache_hits, 1);
}

#[test]
fn truncated_upstream_answers_are_asked_again_over_tcp_then_other_servers_then_servfail() {
    let (mut e, t) = (engine(1000), Instant::now());
    let out = e.query(client(10, Via::Udp(1)), &query("txt.example.", 1, true), t);
    let (token, _, q, _) = asked(&out).unwrap();
    let again = e.upstream(token, &answer_to(&q, 60, true), t);
    let (_, server, _, tcp) = asked(&again).unwrap();
    assert!(tcp, "TC: the same server over TCP");
    assert_eq!(server.to_string(), "192.0.2.53:53");
    // No answer in time: the next server, then SERVFAIL.
    let t2 = t + Duration::from_secs(4);
    let (_, server, _, tcp) = asked(&e.tick(t2)).unwrap();
    assert_eq!((server.to_string().as_str(), tcp), ("192.0.2.54:53", false));
    let out = e.tick(t2 + Duration::from_secs(2));
    let r = replies(&out);
    assert_eq!(r[0].metadata.response_code, ResponseCode::ServFail);
    assert!(out.iter().any(|o| matches!(o, Out::Done { .. })));
}

#[test]
fn a_client_over_its_allowance_or_its_pending_share_is_dropped_alone() {
    let (mut e, t) = (engine(5), Instant::now());
    let served = (0..20)
        .filter(|i| {
            !e.query(client(10, Via::Udp(1)), &query("big.t.", *i, false), t)
                .is_empty()
        })
        .count();
    assert_eq!(served, 5, "the burst is one second's worth");
    assert!(
        !e.query(client(11, Via::Udp(1)), &query("big.t.", 1, false), t)
            .is_empty()
    );
    assert_eq!(e.network_counters()[0].1.dropped_rate, 15);

    let (mut e, t) = (engine(100_000), Instant::now());
    let cap = Limits::default().pending_per_client;
    for i in 0..cap + 10 {
        e.query(
            client(10, Via::Udp(1)),
            &query(&format!("n{i}.example."), 1, false),
            t,
        );
    }
    assert_eq!(e.network_counters()[0].1.dropped_pending, 10);
    let other = e.query(client(11, Via::Udp(1)), &query("x.example.", 1, false), t);
    assert!(
        asked(&other).is_some(),
        "another client still gets its question forwarded"
    );
}

#[test]
fn big_answers_are_truncated_over_udp_only() {
    let (mut e, t) = (engine(1000), Instant::now());
    let udp = replies(&e.query(client(10, Via::Udp(1)), &query("big.t.", 1, false), t));
    assert!(udp[0].metadata.truncation && udp[0].answers.is_empty());
    let edns = replies(&e.query(client(10, Via::Udp(1)), &query("big.t.", 2, true), t));
    assert!(
        edns[0].metadata.truncation,
        "100 A records exceed 1232 bytes too"
    );
    let tcp = replies(&e.query(client(10, Via::Tcp(1)), &query("big.t.", 3, false), t));
    assert_eq!(tcp[0].answers.len(), 100);
    assert!(tcp[0].metadata.authoritative);
}

/// Leases handed over become names (their expiry converted from the wall clock to the
/// engine's), survive new zones, and go when the next hand-over lacks them; the same
/// leases again change nothing.
#[test]
fn leases_follow_the_hand_overs_and_survive_new_zones() {
    use super::{LeasePort, Leased};
    let mac = crate::spec::Mac([0x52, 0x54, 0, 0, 0, 7]);
    let zone = |e: &mut Engine| {
        let mut z: Vec<Zone> = e.zones().cloned().collect();
        z[0].lease_ports = vec![LeasePort {
            mac,
            name: "pool7.t.".into(),
            v4_declared: false,
            v6_declared: false,
        }];
        e.set_zones(z, 2);
    };
    let (mut e, t) = (engine(1000), Instant::now());
    zone(&mut e);
    let ask = |e: &mut Engine, at: Instant| {
        let out = e.query(client(10, Via::Udp(0)), &query("pool7.t.", 1, false), at);
        let m = replies(&out).remove(0);
        (
            m.metadata.response_code,
            m.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(),
        )
    };
    assert_eq!(ask(&mut e, t).0, ResponseCode::NXDomain);
    let lease = Leased {
        network: "n".into(),
        mac,
        ip: "10.0.0.150".parse().unwrap(),
        expires_unix: 1_000_030,
    };
    assert!(e.set_leases(std::slice::from_ref(&lease), 1_000_000, t));
    assert!(!e.set_leases(
        std::slice::from_ref(&lease),
        1_000_001,
        t + Duration::from_secs(1)
    ));
    assert_eq!(ask(&mut e, t), (ResponseCode::NoError, vec![30]));
    zone(&mut e);
    assert_eq!(
        ask(&mut e, t + Duration::from_secs(25)),
        (ResponseCode::NoError, vec![5])
    );
    assert_eq!(
        ask(&mut e, t + Duration::from_secs(31)).0,
        ResponseCode::NXDomain
    );
    assert!(e.set_leases(&[], 1_000_002, t));
    assert_eq!(ask(&mut e, t).0, ResponseCode::NXDomain);
}
