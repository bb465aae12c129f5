use super::*;
use crate::nft::table_for;

const SPEC: &str = r#"version: 1
networks:
  lan:
    mode: nat
    bridge: t-lan
    ipv4: 10.70.0.1/24
    dhcp: {}
    forwards: [ { proto: tcp, port: 2222, to: b, to_port: 22 } ]
    host_access:
      - { proto: tcp, ports: [53] }
      - { proto: tcp, ports: [25], action: reject }
      - { proto: udp, ports: [5353], from: 10.70.0.11 }
  iso: { mode: isolated, bridge: t-iso, ipv4: 10.71.0.1/24, isolate_ports: true }
  rt: { mode: routed, bridge: t-rt, ipv4: 10.72.0.1/24, dns: {} }
  out: { mode: nat, bridge: t-out, ipv4: 10.73.0.1/24, nat: { egress: wan0 } }
vms:
  a:
    ports:
      - network: lan
        name: t-a
        ipv4: 10.70.0.10
        firewall:
          outbound:
            rules:
              - { proto: tcp, ports: [25], action: reject }
              - { proto: udp, ports: [9000-9100], to: 10.72.0.0/24, action: drop }
  b:
    ports:
      - network: lan
        name: t-b
        ipv4: 10.70.0.11
        firewall:
          inbound:
            policy: drop
            rules:
              - { proto: tcp, ports: [22, 80] }
              - { proto: icmp, icmp_types: [echo-request] }
              - { proto: udp, ports: [53], from: 10.72.0.0/24, action: reject }
  c: { ports: [ { network: iso, name: t-c, ipv4: 10.71.0.10 } ] }
  d: { ports: [ { network: iso, name: t-d, ipv4: 10.71.0.11 } ] }
  r: { ports: [ { network: rt, name: t-r, ipv4: 10.72.0.10, antispoof: false } ] }
  o: { ports: [ { network: out, name: t-o, ipv4: 10.73.0.10 }, { network: lan, name: t-o1 } ] }
"#;

fn spec() -> Spec {
    let id = crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host")
        .unwrap();
    crate::spec::parse(SPEC, &id).unwrap()
}

fn run(spec: &Spec, from: &str, to: &str, proto: &str) -> Trace {
    let p = packet(spec, from, to, proto, Options::default()).unwrap();
    let t = walk(spec, &p);
    cited_rules_exist(spec, &t);
    t
}

/// Every rule a hop cites is a rule of the chain it names, as kvmnet writes the ruleset.
pub(super) fn cited_rules_exist(spec: &Spec, t: &Trace) {
    let table = table_for(spec).unwrap();
    for h in &t.hops {
        let (Some(chain), Some(rule)) = (&h.chain, &h.nft) else {
            continue;
        };
        let c = table
            .chains
            .get(chain)
            .unwrap_or_else(|| panic!("no chain {chain}: {h:?}"));
        assert!(
            c.rules.iter().any(|r| &r.text == rule),
            "{chain} has no rule `{rule}`: {:#?}",
            c.rules
        );
    }
}

fn stages(t: &Trace) -> Vec<(&'static str, &'static str)> {
    t.hops
        .iter()
        .map(|h| (h.stage.as_str(), h.verdict.as_str()))
        .collect()
}

/// The verdict and the stage that decided it (`arrive` when it got there).
fn outcome(t: &Trace) -> (Verdict, &'static str) {
    let last = t.stopped_by().or(t.hops.last()).unwrap();
    (t.verdict(), last.stage.as_str())
}

#[test]
fn a_ping_between_neighbours_passes_every_stage_in_order() {
    let s = spec();
    let t = run(&s, "a", "b", "icmp");
    assert_eq!(
        stages(&t),
        [
            ("guard", "accept"),
            ("firewall-out", "accept"),
            ("routing", "continue"),
            ("firewall-in", "accept"),
            ("leaving", "accept"),
            ("entering", "accept"),
            ("arrive", "accept"),
        ]
    );
    // Each hop points at the spec: the inbound rule that let it in is line 37.
    let fw_in = &t.hops[3];
    assert_eq!(
        fw_in.field.as_deref(),
        Some("vms.b.ports[0].firewall.inbound.rules[1]")
    );
    assert_eq!(fw_in.loc.map(|l| l.line), Some(37));
    assert_eq!(
        fw_in.nft.as_deref(),
        Some("icmp type { echo-request } counter return")
    );
    assert!(fw_in.chain.as_deref().unwrap().starts_with("inet fw-in-"));
    // The guard's default points at the port.
    assert_eq!(t.hops[0].field.as_deref(), Some("vms.a.ports[0]"));
    assert_eq!(t.nft_verdict(), Verdict::Accept);
}

/// DNS to the gateway is let in where the network has `dns`, over UDP and TCP, and
/// nowhere else.
#[test]
fn dns_to_the_gateway_only_where_the_network_has_dns() {
    let s = spec();
    for proto in ["udp/53", "tcp/53"] {
        let t = run(&s, "r", "10.72.0.1", proto);
        let hop = t
            .hops
            .iter()
            .find(|h| h.stage == Stage::HostAccess)
            .unwrap();
        assert_eq!(hop.verdict, Verdict::Accept, "{:#?}", t.hops);
        assert_eq!(hop.field.as_deref(), Some("networks.rt.dns"));
    }
    let t = run(&s, "c", "10.71.0.1", "udp/53");
    assert_eq!(outcome(&t), (Verdict::Drop, "host-access"), "{:#?}", t.hops);
}

#[test]
fn each_stage_can_stop_a_packet() {
    let s = spec();
    let cases: &[(&str, &str, &str, Verdict, &str)] = &[
        // The guard: a guest may not send to a DHCP client's port.
        ("a", "b", "udp/68", Verdict::Drop, "guard"),
        // The source's outbound firewall.
        ("a", "b", "tcp/25", Verdict::Reject, "firewall-out"),
        ("a", "r", "udp/9050", Verdict::Drop, "firewall-out"),
        // The destination's inbound firewall: its policy, and a rule with a source.
        ("a", "b", "tcp/23", Verdict::Drop, "firewall-in"),
        ("r", "b", "udp/53", Verdict::Reject, "firewall-in"),
        // Bridge port isolation.
        ("c", "d", "icmp", Verdict::Drop, "isolate-ports"),
        // Isolation between networks.
        ("c", "8.8.8.8", "icmp", Verdict::Reject, "leaving"),
        ("c", "a", "icmp", Verdict::Reject, "leaving"),
        ("o", "r", "icmp", Verdict::Reject, "leaving"),
        ("r", "a", "icmp", Verdict::Reject, "entering"),
        ("a", "c", "icmp", Verdict::Reject, "entering"),
        // What guests reach on the host.
        ("a", "10.71.0.1", "icmp", Verdict::Drop, "host-access"),
        ("b", "host", "tcp/25", Verdict::Reject, "host-access"),
        ("a", "host", "tcp/26", Verdict::Drop, "host-access"),
        ("a", "host", "udp/5353", Verdict::Drop, "host-access"),
        ("c", "host", "udp/67", Verdict::Drop, "host-access"),
        // Nobody has the address.
        ("a", "10.70.0.99", "icmp", Verdict::Drop, "routing"),
        ("r", "10.70.0.99", "icmp", Verdict::Reject, "entering"),
    ];
    for (from, to, proto, verdict, stage) in cases {
        let t = run(&s, from, to, proto);
        assert_eq!(
            outcome(&t),
            (*verdict, *stage),
            "{from} -> {to} {proto}: {:#?}",
            t.hops
        );
    }
}

#[test]
fn what_gets_through() {
    let s = spec();
    let cases: &[(&str, &str, &str)] = &[
        ("a", "b", "tcp/22"),
        ("a", "b/t-b", "tcp/80"),
        ("a", "10.70.0.11", "icmp"),
        ("a", "r", "icmp"),          // nat -> routed
        ("r", "10.72.0.10", "icmp"), // itself's network, unguarded
        ("a", "8.8.8.8", "tcp/443"),
        ("o", "8.8.8.8", "icmp"), // nat with an egress, out of the host
        ("r", "8.8.8.8", "udp/53"),
        ("a", "host", "icmp"),
        ("a", "host", "tcp/53"),
        ("b", "host", "udp/5353"),
        ("a", "host", "udp/67"),
        ("r", "10.70.0.1", "tcp/2222"), // a port forward, from another network
        ("a", "10.73.0.1", "tcp/2222"), // at any of the host's addresses
    ];
    for (from, to, proto) in cases {
        let t = run(&s, from, to, proto);
        assert_eq!(
            outcome(&t),
            (Verdict::Accept, "arrive"),
            "{from} -> {to} {proto}: {:#?}",
            t.hops
        );
    }
}

#[test]
fn a_port_forward_is_translated_before_the_firewalls_look() {
    let s = spec();
    let t = run(&s, "r", "10.70.0.1", "tcp/2222");
    let nat = &t.hops[1];
    assert_eq!((nat.stage, nat.verdict), (Stage::Nat, Verdict::Continue));
    assert_eq!(
        nat.nft.as_deref(),
        Some("fib daddr type local tcp dport 2222 dnat ip to 10.70.0.11:22")
    );
    assert_eq!(nat.field.as_deref(), Some("networks.lan.forwards[0]"));
    // The inbound firewall sees port 22 (allowed), and the nat network lets the forward in.
    let entering = t.hops.iter().find(|h| h.stage == Stage::Entering).unwrap();
    assert!(
        entering
            .nft
            .as_deref()
            .unwrap()
            .contains("ct status dnat return")
    );
    assert!(t.hops.last().unwrap().rule.contains("b/0"));
    // From an isolated network the forward is translated, then refused on the way out.
    let t = run(&s, "c", "host", "tcp/2222");
    assert_eq!(outcome(&t), (Verdict::Reject, "leaving"));
}

#[test]
fn nat_masquerades_what_leaves_for_elsewhere() {
    let s = spec();
    let t = run(&s, "a", "r", "icmp");
    let m = t.hops.iter().find(|h| h.stage == Stage::Nat).unwrap();
    assert_eq!(
        m.nft.as_deref(),
        Some("ip saddr 10.70.0.0/24 ip daddr != 10.70.0.0/24 oifname != \"t-lan\" masquerade")
    );
    let t = run(&s, "o", "8.8.8.8", "icmp");
    let m = t.hops.iter().find(|h| h.stage == Stage::Nat).unwrap();
    assert!(
        m.nft
            .as_deref()
            .unwrap()
            .ends_with("oifname \"wan0\" masquerade")
    );
    // Between ports of one nat network nothing is translated.
    assert!(
        run(&s, "a", "b", "icmp")
            .hops
            .iter()
            .all(|h| h.stage != Stage::Nat)
    );
}

#[test]
fn stops_outside_nftables_are_not_nft_verdicts() {
    let s = spec();
    let t = run(&s, "c", "d", "icmp");
    assert_eq!(t.verdict(), Verdict::Drop);
    assert_eq!(t.nft_verdict(), Verdict::Accept);
    let t = run(&s, "a", "b", "tcp/23");
    assert_eq!(t.nft_verdict(), Verdict::Drop);
}

#[test]
fn an_unguarded_port_says_so() {
    let s = spec();
    let t = run(&s, "r", "8.8.8.8", "icmp");
    assert_eq!(t.hops[0].stage, Stage::Guard);
    assert!(t.hops[0].rule.contains("antispoof: false"));
    assert_eq!(t.hops[0].field.as_deref(), Some("vms.r.ports[0].antispoof"));
    // A guarded port's udp/68 is the guard's; an unguarded one's is not.
    assert_eq!(
        outcome(&run(&s, "r", "8.8.8.8", "udp/68")),
        (Verdict::Accept, "arrive")
    );
}

#[test]
fn arguments() {
    let s = spec();
    assert_eq!(L4::parse("icmp"), Ok(L4::Icmp));
    assert_eq!(L4::parse("tcp/22"), Ok(L4::Tcp(22)));
    assert_eq!(L4::parse("udp/53"), Ok(L4::Udp(53)));
    for bad in ["tcp", "tcp/0", "udp/x", "icmp/8", "sctp/1", "tcp/70000"] {
        assert!(L4::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        source(&s, "zz").unwrap_err(),
        TraceError::UnknownVm("zz".into())
    );
    assert!(matches!(
        source(&s, "a/3"),
        Err(TraceError::UnknownPort { .. })
    ));
    assert_eq!(
        packet(&s, "o/1", "a", "icmp", Options::default()).unwrap_err(),
        TraceError::NoAddress("o/1 (t-o1)".into(), "ipv6")
    );
    assert_eq!(
        packet(&s, "o/1", "10.70.0.10", "icmp", Options::default()).unwrap_err(),
        TraceError::NoAddress("o/1 (t-o1)".into(), "ipv4")
    );
    assert_eq!(source(&s, "o/t-o").unwrap().name, "t-o");
    let a = source(&s, "a").unwrap();
    assert_eq!(
        destination(&s, a, "host", false),
        Ok(Dest::Host("10.70.0.1".parse().unwrap()))
    );
    assert!(matches!(destination(&s, a, "10.72.0.10", false), Ok(Dest::Port(p, _)) if p.vm == "r"));
    assert!(matches!(
        destination(&s, a, "10.72.0.1", false),
        Ok(Dest::Host(_))
    ));
    assert!(matches!(
        destination(&s, a, "1.2.3.4", false),
        Ok(Dest::Addr(_))
    ));
    assert!(matches!(destination(&s, a, "o", false), Ok(Dest::Port(p, _)) if p.name == "t-o"));
    assert!(matches!(
        destination(&s, a, "nope", false),
        Err(TraceError::BadDestination(_))
    ));
    assert_eq!(
        destination(&s, a, "o/1", false),
        Err(TraceError::DestinationWithoutAddress(
            "o/1 (t-o1)".into(),
            "ipv4"
        ))
    );
}

const LAN_SPEC: &str = r#"version: 1
networks:
  office: { mode: bridge, bridge: t-office, uplink: eth9 }
  dmz: { mode: direct, uplink: eth8, direct_mode: private }
vms:
  p: { ports: [ { network: office, name: t-p, kind: veth, netns: x, ipv4: 192.168.1.50/24 } ] }
  q:
    ports:
      - network: office
        name: t-q
        ipv4: 192.168.1.51/24
        firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [443] } ] } }
  m: { ports: [ { network: dmz, ipv4: 192.168.2.10/24 } ] }
  n: { ports: [ { network: dmz, ipv4: 192.168.2.11/24 } ] }
"#;

fn lan_spec() -> Spec {
    let id = crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host")
        .unwrap();
    crate::spec::parse(LAN_SPEC, &id).unwrap()
}

#[test]
fn a_lan_segment_meets_the_firewalls_and_nothing_of_the_hosts_routing() {
    let s = lan_spec();
    let t = run(&s, "p", "q", "tcp/443");
    assert_eq!(outcome(&t), (Verdict::Accept, "arrive"));
    assert!(t.hops.iter().all(|h| h.stage != Stage::Leaving));
    assert_eq!(
        outcome(&run(&s, "p", "q", "tcp/22")),
        (Verdict::Drop, "firewall-in")
    );
    // Beyond its own ports, a LAN segment's traffic is the LAN's.
    let t = run(&s, "p", "192.168.1.1", "icmp");
    assert_eq!(outcome(&t), (Verdict::Accept, "arrive"));
    assert!(t.hops.last().unwrap().rule.contains("goes to the LAN"));
}

#[test]
fn macvtap_ports_meet_no_rule_only_their_mode() {
    let s = lan_spec();
    let t = run(&s, "m", "n", "icmp");
    assert_eq!(outcome(&t), (Verdict::Drop, "routing"));
    assert!(t.hops[0].rule.contains("private"));
    assert_eq!(t.nft_verdict(), Verdict::Accept);
    let t = run(&s, "m", "8.8.8.8", "icmp");
    assert_eq!(stages(&t), [("arrive", "accept")]);
    assert!(t.hops[0].rule.contains("no kvmnet rule sees it"));
}
