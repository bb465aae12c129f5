//! Unit tests of tc: plans for given observations, and messages parsed back.

use std::collections::BTreeMap;

use super::parse::{parse_class, parse_filter, parse_qdisc};
use super::*;
use crate::backend::netlink::consts::{RTM_NEWLINK, RTM_NEWTCLASS, RTM_SETLINK};
use crate::backend::netlink::messages;

fn clock() -> Psched {
    Psched::parse("000003e8 00000040 000f4240 3b9aca00\n").unwrap()
}

#[test]
fn psched_as_iproute2_reads_it() {
    let c = clock();
    assert_eq!(c.tick_in_usec, 15.625);
    assert_eq!(c.hz, 1_000_000_000);
    // tc class add ... htb rate 10mbit ceil 20mbit: buffer 20000, cbuffer 10000 ticks.
    assert_eq!(c.default_burst(1_250_000), 1600);
    let p = Rate {
        ceil_bits_per_sec: Some(20_000_000),
        burst_bytes: Some(1600),
        cburst_bytes: Some(1600),
        ..Rate::mbit(10)
    }
    .htb_params(&c)
    .unwrap();
    assert_eq!((p.rate, p.ceil), (1_250_000, 2_500_000));
    assert_eq!((p.buffer, p.cbuffer), (20000, 10000));
    assert_eq!(p.quantum, 125_000);
    assert_eq!(c.xmitsize(p.rate, p.buffer), 1600);
    // kvmnet's default: 4 ms of the rate, at least tc's.
    let p = Rate::mbit(10).htb_params(&c).unwrap();
    assert_eq!(c.xmitsize(p.rate, p.buffer), 5000);
    let p = Rate::bits(800_000).htb_params(&c).unwrap();
    assert_eq!(c.xmitsize(p.rate, p.buffer), 1600);
}

fn fresh(dev: &str, ifindex: u32) -> DevTc {
    DevTc {
        name: dev.into(),
        ifindex,
        kind: Some("veth".into()),
        up: true,
        qdiscs: vec![Qdisc {
            kind: "noqueue".into(),
            handle: 0,
            parent: TC_H_ROOT,
            options: QdiscOptions::Other(Vec::new()),
            stats: Stats::default(),
        }],
        ..DevTc::default()
    }
}

fn observed(dev: Option<DevTc>, ifb: Option<DevTc>) -> TcObserved {
    TcObserved {
        dev,
        ifb,
        links: BTreeMap::from([("pm".to_string(), 7)]),
        clock: clock(),
    }
}

fn full_port() -> PortTc {
    PortTc {
        inbound: Some(Rate::mbit(10)),
        outbound: Some(Rate::mbit(20)),
        mirror_to: Some("pm".into()),
        ..PortTc::new("pa")
    }
}

#[test]
fn plan_for_a_fresh_port() {
    let obs = observed(Some(fresh("pa", 5)), None);
    let ops: Vec<String> = plan(&full_port(), &obs)
        .unwrap()
        .iter()
        .map(|o| o.to_string())
        .collect();
    assert_eq!(
        ops,
        [
            "create ifb ifb-pa",
            "add qdisc htb 1: at the root of ifb-pa",
            "set htb class 1:1 of ifb-pa (rate 20000000 bit/s, ceil 20000000 bit/s)",
            "set qdisc pfifo 10: under class 1:1 of ifb-pa",
            "add qdisc htb 1: at the root of pa",
            "set htb class 1:1 of pa (rate 10000000 bit/s, ceil 10000000 bit/s)",
            "set qdisc pfifo 10: under class 1:1 of pa",
            "add qdisc clsact to pa",
            "add filter ingress prio 1 of pa: mirred mirror to pm",
            "add filter egress prio 3 of pa: mirred mirror to pm",
            "add filter ingress prio 2 of pa: mirred redirect to ifb-pa",
        ]
    );
    // Nothing asked, nothing there: nothing to do.
    assert!(matches(&PortTc::new("pa"), &obs));
}

#[test]
fn plan_refusals() {
    let port = full_port();
    let e = plan(&port, &observed(None, None)).unwrap_err();
    assert_eq!(e.to_string(), "port device pa does not exist");
    let mut obs = observed(Some(fresh("pa", 5)), None);
    obs.links.clear();
    let e = plan(&port, &obs).unwrap_err();
    assert_eq!(e.to_string(), "mirror target pm does not exist");
    let taken = DevTc {
        kind: Some("bridge".into()),
        ..fresh("ifb-pa", 6)
    };
    let e = plan(&port, &observed(Some(fresh("pa", 5)), Some(taken.clone()))).unwrap_err();
    assert!(
        e.to_string().contains("taken by a link of kind bridge"),
        "{e}"
    );
    // Without outbound, a non-IFB of that name is left alone.
    let no_out = PortTc {
        outbound: None,
        ..port.clone()
    };
    let ops = plan(&no_out, &observed(Some(fresh("pa", 5)), Some(taken))).unwrap();
    assert!(!ops.iter().any(|o| matches!(o, TcOp::DeleteIfb { .. })));
    let other = DevTc {
        kind: Some("ifb".into()),
        alias: Some(ifb_alias("pb")),
        ..fresh("ifb-pa", 6)
    };
    let e = plan(&port, &observed(Some(fresh("pa", 5)), Some(other.clone()))).unwrap_err();
    assert!(e.to_string().contains("belongs to another port"), "{e}");
    // ... and is neither deleted when the port needs no IFB, nor cleared.
    let obs = observed(Some(fresh("pa", 5)), Some(other));
    assert!(
        plan(&no_out, &obs)
            .unwrap()
            .iter()
            .all(|o| !matches!(o, TcOp::DeleteIfb { .. }))
    );
    assert!(clear_ops(&no_out, &obs).is_empty());
    let looped = PortTc {
        mirror_to: Some("ifb-pa".into()),
        ..port
    };
    assert!(plan(&looped, &observed(Some(fresh("pa", 5)), None)).is_err());
}

/// What we send parses back, through the dump parsers, into what we meant.
#[test]
fn messages_parse_back() {
    let c = clock();
    let params = Rate {
        ceil_bits_per_sec: Some(80_000_000_000),
        ..Rate::bits(40_000_000_000)
    }
    .htb_params(&c)
    .unwrap();
    let op = TcOp::SetHtbClass {
        dev: "pa".into(),
        params,
    };
    let buf = message_bytes(&op, 5, 0, 1, &c);
    let m = messages(&buf).next().unwrap();
    assert_eq!(m.ty, RTM_NEWTCLASS);
    let class = parse_class(m.payload).unwrap();
    assert_eq!((class.handle, class.parent), (HTB_CLASS, HTB_HANDLE));
    assert_eq!(class.htb, Some(params));

    let op = TcOp::AddFilter {
        dev: "pa".into(),
        parent: PARENT_INGRESS,
        prio: PRIO_MIRROR_IN,
        mirred: MirredKind::Mirror,
        target: "pm".into(),
    };
    let buf = message_bytes(&op, 5, 7, 1, &c);
    let m = messages(&buf).next().unwrap();
    let f = parse_filter(m.payload).unwrap();
    assert_eq!(
        (f.parent, f.prio, f.protocol, f.kind.as_str()),
        (PARENT_INGRESS, 1, ETH_P_ALL, "u32")
    );
    let n = f.u32.unwrap();
    assert!(n.matches_all() && n.flags == TC_U32_TERMINAL && n.classid.is_none());
    assert_eq!(
        n.actions[0].mirred,
        Some(Mirred {
            eaction: TCA_EGRESS_MIRROR,
            control: TC_ACT_UNSPEC,
            ifindex: 7
        })
    );

    let buf = message_bytes(&TcOp::AddHtbRoot { dev: "pa".into() }, 5, 0, 1, &c);
    let (ifindex, q) = parse_qdisc(messages(&buf).next().unwrap().payload).unwrap();
    assert_eq!(ifindex, 5);
    assert_eq!(
        q.options,
        QdiscOptions::Htb {
            version: 3,
            r2q: 10,
            defcls: 1,
            direct_qlen: None
        }
    );
    // An IFB creation is two messages: the link, then its alias.
    let op = TcOp::CreateIfb {
        name: "ifb-pa".into(),
        alias: ifb_alias("pa"),
    };
    let buf = message_bytes(&op, 0, 0, 1, &c);
    let tys: Vec<u16> = messages(&buf).map(|m| m.ty).collect();
    assert_eq!(tys, [RTM_NEWLINK, RTM_SETLINK]);
}

#[test]
fn ifb_names_fit() {
    assert_eq!(ifb_name("kv-web1-0"), "ifb-kv-web1-0");
    let a = ifb_name("abcdefghijklmn1");
    let b = ifb_name("abcdefghijklmn2");
    assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
    assert_ne!(a, b);
}

#[test]
fn bad_rates_are_refused() {
    assert!(Rate::bits(7).htb_params(&clock()).is_err());
    let r = Rate {
        ceil_bits_per_sec: Some(1_000_000),
        ..Rate::mbit(2)
    };
    assert!(r.htb_params(&clock()).is_err());
    let r = Rate {
        burst_bytes: Some(u32::MAX),
        ..Rate::bits(8000)
    };
    assert!(r.htb_params(&clock()).is_err());
}

/// tc's framing failures are the shared netlink error's, in its words, with their errno.
#[test]
fn framing_errors_are_the_netlink_errors() {
    let e = TcError::kernel(
        "add qdisc htb 1: on tap0".into(),
        libc::EEXIST,
        Some("Exclusivity flag on".into()),
    );
    assert!(matches!(e, TcError::Netlink(NetlinkError::Kernel { .. })));
    assert_eq!(e.errno(), Some(libc::EEXIST));
    assert_eq!(
        e.to_string(),
        "add qdisc htb 1: on tap0: File exists (os error 17) (kernel: Exclusivity flag on)"
    );
    let interrupted = TcError::from(NetlinkError::Interrupted {
        op: "list classes of tap0".into(),
        tries: 3,
    });
    assert_eq!(
        interrupted.to_string(),
        "list classes of tap0: unexpected netlink reply: dump kept being interrupted by concurrent changes (3 tries)"
    );
    let many = TcError::Many(vec![e, interrupted]);
    assert_eq!(many.errno(), None);
}
