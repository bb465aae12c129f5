use super::tests::cited_rules_exist;
use super::*;

const SPEC: &str = r#"version: 1
networks:
  lan:
    mode: nat
    bridge: t6-lan
    ipv4: 10.70.0.1/24
    ipv6: fd00:70::1/64
    dns: {}
    forwards: [ { proto: tcp, port: 2222, to: b, to_port: 22 } ]
  iso: { mode: isolated, bridge: t6-iso, ipv4: 10.71.0.1/24, ipv6: "fd00:71::1/64" }
  rt: { mode: routed, bridge: t6-rt, ipv4: 10.72.0.1/24, ipv6: "2001:db8:72::1/64" }
vms:
  a:
    ports:
      - { network: lan, name: t6-a, ipv4: 10.70.0.10, ipv6: "fd00:70::10" }
  b:
    ports:
      - network: lan
        name: t6-b
        ipv4: 10.70.0.11
        ipv6: "fd00:70::11"
        firewall:
          inbound:
            policy: drop
            rules:
              - { proto: tcp, ports: [22] }
              - { proto: tcp, ports: [80], from: 10.70.0.0/24 }
              - { proto: icmp, icmp_types: [echo-request], from: "fd00:70::10" }
  c: { ports: [ { network: iso, name: t6-c } ] }
  r: { ports: [ { network: rt, name: t6-r, ipv6: "2001:db8:72::10", antispoof: false } ] }
"#;

fn spec() -> Spec {
    let id = crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host")
        .unwrap();
    crate::spec::parse(SPEC, &id).unwrap()
}

fn trace(spec: &Spec, from: &str, to: &str, proto: &str, opts: Options) -> Trace {
    let p = packet(spec, from, to, proto, opts).unwrap();
    assert!(p.v6(), "{from} -> {to} {proto} is IPv6");
    let t = walk(spec, &p);
    cited_rules_exist(spec, &t);
    t
}

fn v6(s: &Spec, from: &str, to: &str, proto: &str) -> Trace {
    let opts = Options {
        ipv6: true,
        source: None,
    };
    trace(s, from, to, proto, opts)
}

fn forged(s: &Spec, from: &str, src: &str, to: &str, proto: &str) -> Trace {
    let opts = Options {
        ipv6: false,
        source: Some(src.parse().unwrap()),
    };
    trace(s, from, to, proto, opts)
}

/// The stopping hop's (or the last hop's) stage, verdict and nft rule.
fn end(t: &Trace) -> (&'static str, Verdict, Option<String>) {
    let h = t.stopped_by().or(t.hops.last()).unwrap();
    (h.stage.as_str(), t.verdict(), h.nft.clone())
}

#[test]
fn a_forged_ipv6_source_stops_at_the_guard() {
    let s = spec();
    let t = forged(&s, "a", "fd00:70::11", "b", "tcp/22");
    assert_eq!(
        end(&t),
        (
            "guard",
            Verdict::Drop,
            Some("iifname . ip6 saddr != @port_ip6 iifname . ip6 saddr != @pool_ip6 counter goto guard-drop-ip".into())
        ),
        "{t:#?}"
    );
    assert_eq!(t.hops[0].chain.as_deref(), Some("bridge guard-ip6"));
    // Its own addresses pass: the declared one, the link-local and the SLAAC one of its MAC.
    let a = source(&s, "a").unwrap();
    let slaac = a.mac.slaac("fd00:70::".parse().unwrap()).to_string();
    let ll = a.mac.link_local().to_string();
    for own in ["fd00:70::10", slaac.as_str(), ll.as_str()] {
        let t = forged(&s, "a", own, "fd00:70::11", "tcp/22");
        assert_eq!(t.hops[0].verdict, Verdict::Accept, "{own}: {t:#?}");
    }
    // An unguarded port may send from anything.
    let t = forged(&s, "r", "2001:db8:72::99", "2001:db8:72::1", "icmpv6");
    assert_eq!(t.hops[0].verdict, Verdict::Accept);
    // The unspecified source: duplicate address detection only.
    let t = forged(&s, "a", "::", "fd00:70::11", "icmpv6/nd-neighbor-solicit");
    assert_eq!(t.hops[0].verdict, Verdict::Accept, "{t:#?}");
    let t = forged(&s, "a", "::", "fd00:70::11", "udp/53");
    assert_eq!(
        end(&t).2.as_deref(),
        Some("ip6 saddr :: counter goto guard-drop-ip")
    );
}

#[test]
fn router_advertisements_and_dhcpv6_server_messages_stop_at_the_guard() {
    let s = spec();
    for ty in ["nd-router-advert", "nd-redirect", "router-renumbering"] {
        let t = v6(&s, "a", "b", &format!("icmpv6/{ty}"));
        let (stage, verdict, nft) = end(&t);
        assert_eq!((stage, verdict), ("guard", Verdict::Drop), "{ty}");
        assert!(nft.unwrap().ends_with("counter goto guard-drop-ra"));
    }
    let t = v6(&s, "a", "b", "udp/546");
    assert_eq!(
        end(&t).2.as_deref(),
        Some("udp dport 546 counter goto guard-drop-dhcp-server")
    );
    // The unguarded port's RA meets the host's input rules, which do not take it.
    let t = v6(&s, "r", "host", "icmpv6/nd-router-advert");
    assert_eq!(end(&t).0, "host-access");
    assert_eq!(t.verdict(), Verdict::Drop);
}

#[test]
fn ipv6_through_an_inbound_drop_policy() {
    let s = spec();
    // An allowed TCP port (a rule without address: both families).
    let t = v6(&s, "a", "b", "tcp/22");
    assert_eq!(end(&t).0, "arrive", "{t:#?}");
    assert_eq!(t.verdict(), Verdict::Accept);
    let fw = t
        .hops
        .iter()
        .find(|h| h.stage == Stage::FirewallIn)
        .unwrap();
    assert_eq!(fw.verdict, Verdict::Accept);
    assert_eq!(
        fw.field.as_deref(),
        Some("vms.b.ports[0].firewall.inbound.rules[0]")
    );
    assert!(t.hops.last().unwrap().rule.contains("fd00:70::11"));
    // A rule with an IPv4 `from` never matches IPv6: the policy drops it.
    let t = v6(&s, "a", "b", "tcp/80");
    assert_eq!(
        end(&t),
        (
            "firewall-in",
            Verdict::Drop,
            Some("counter goto fw-in-drop".into())
        )
    );
    // ICMPv6 echo from the one address the rule names, not from another of a's.
    assert_eq!(v6(&s, "a", "b", "icmpv6").verdict(), Verdict::Accept);
    let ll = source(&s, "a").unwrap().mac.link_local().to_string();
    let t = forged(&s, "a", &ll, "fd00:70::11", "icmpv6");
    assert_eq!(end(&t).0, "firewall-in");
    assert_eq!(t.verdict(), Verdict::Drop);
    // Neighbour discovery passes any firewall.
    let t = v6(&s, "a", "b", "icmpv6/nd-neighbor-advert");
    assert_eq!(t.verdict(), Verdict::Accept, "{t:#?}");
    let fw = t
        .hops
        .iter()
        .find(|h| h.stage == Stage::FirewallIn)
        .unwrap();
    assert_eq!(fw.nft.as_deref(), Some(crate::nft::IPV6_PLUMBING));
}

#[test]
fn ipv6_between_networks_out_of_the_host_and_to_it() {
    let s = spec();
    // NAT66 on the way out.
    let t = v6(&s, "a", "2001:db8:99::1", "tcp/443");
    assert_eq!(t.verdict(), Verdict::Accept);
    let nat = t.hops.iter().find(|h| h.stage == Stage::Nat).unwrap();
    assert!(
        nat.nft
            .as_deref()
            .unwrap()
            .starts_with("ip6 saddr fd00:70::/64 ")
    );
    // A nat network lets nothing new in; an isolated one nothing out; routed both ways.
    let t = v6(&s, "r", "b", "tcp/22");
    assert_eq!(end(&t).0, "entering");
    let t = v6(&s, "c", "2001:db8:72::10", "icmpv6");
    assert_eq!((end(&t).0, t.verdict()), ("leaving", Verdict::Reject));
    let t = v6(&s, "a", "r", "icmpv6");
    assert_eq!(t.verdict(), Verdict::Accept, "{t:#?}");
    // Nobody has the address: nothing answers neighbour solicitation.
    let t = v6(&s, "a", "fd00:70::99", "icmpv6");
    assert_eq!((end(&t).0, t.verdict()), ("routing", Verdict::Drop));
    // The host: ping of the gateway, DNS where kvmnet answers it, nothing else.
    assert_eq!(v6(&s, "a", "host", "icmpv6").verdict(), Verdict::Accept);
    assert_eq!(v6(&s, "a", "host", "udp/53").verdict(), Verdict::Accept);
    assert_eq!(v6(&s, "c", "host", "udp/53").verdict(), Verdict::Drop);
    assert_eq!(v6(&s, "a", "host", "tcp/22").verdict(), Verdict::Drop);
    // A port forward to b's declared ipv6.
    let t = v6(&s, "a", "host", "tcp/2222");
    let nat = &t.hops[1];
    assert_eq!(
        nat.nft.as_deref(),
        Some("fib daddr type local tcp dport 2222 dnat ip6 to [fd00:70::11]:22")
    );
}

#[test]
fn the_family_of_a_packet() {
    let s = spec();
    let p = |to: &str, proto: &str, opts| packet(&s, "a", to, proto, opts);
    let d = Options::default();
    assert!(!p("b", "icmp", d).unwrap().v6());
    assert!(p("b", "icmpv6", d).unwrap().v6());
    assert!(p("fd00:70::11", "tcp/22", d).unwrap().v6());
    assert!(
        p(
            "b",
            "icmp",
            Options {
                ipv6: true,
                source: None
            }
        )
        .unwrap()
        .v6()
    );
    // A port without ipv4 sends IPv6 (from its SLAAC address here).
    assert!(packet(&s, "c", "host", "icmp", d).unwrap().v6());
    let two = Options {
        ipv6: false,
        source: Some("10.70.0.10".parse().unwrap()),
    };
    assert!(matches!(
        p("fd00:70::11", "icmp", two),
        Err(TraceError::TwoFamilies(..))
    ));
    assert!(matches!(
        p("10.70.0.11", "icmpv6", d),
        Err(TraceError::Icmp6OverIpv4(_))
    ));
    assert!(L4::parse("icmpv6/bogus").is_err());
    assert_eq!(
        L4::parse("icmpv6/nd-neighbor-advert"),
        Ok(L4::Icmpv6("nd-neighbor-advert"))
    );
}

#[test]
fn a_forged_ipv4_source_stops_at_the_guard_too() {
    let s = spec();
    let opts = Options {
        ipv6: false,
        source: Some("10.70.0.11".parse().unwrap()),
    };
    let t = walk(&s, &packet(&s, "a", "10.70.0.1", "icmp", opts).unwrap());
    cited_rules_exist(&s, &t);
    assert_eq!(
        end(&t).2.as_deref(),
        Some("iifname @ip4_pinned iifname . ip saddr != @port_ip4 counter goto guard-drop-ip")
    );
}
