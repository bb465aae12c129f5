//! Qdiscs, classes and filters (with their actions and counters) read back from dumps.

use super::model::{Action, Class, Filter, Mirred, Qdisc, QdiscOptions, Stats, U32Key, U32Node};
use super::rate::HtbParams;
use super::{
    TCA_ACT_INDEX, TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_ACT_STATS, TCA_CHAIN, TCA_HTB_CEIL64,
    TCA_HTB_DIRECT_QLEN, TCA_HTB_INIT, TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_KIND, TCA_MIRRED_PARMS,
    TCA_OPTIONS, TCA_STATS_BASIC, TCA_STATS_PKT64, TCA_STATS_QUEUE, TCA_STATS2, TCA_U32_ACT,
    TCA_U32_CLASSID, TCA_U32_SEL,
};
use crate::backend::netlink::attr::{i32_at, u32_at, u64_at};
use crate::backend::netlink::{attr_string, attr_u32, attrs};

/// The common part of RTM_NEWQDISC/NEWTCLASS/NEWTFILTER: (ifindex, handle, parent, info,
/// attributes).
pub(super) fn parse_tcmsg(p: &[u8]) -> Option<(u32, u32, u32, u32, &[u8])> {
    (p.len() >= 20).then(|| {
        (
            u32_at(p, 4),
            u32_at(p, 8),
            u32_at(p, 12),
            u32_at(p, 16),
            &p[20..],
        )
    })
}

pub(super) fn parse_stats2(v: &[u8]) -> Stats {
    let mut s = Stats::default();
    for (t, d) in attrs(v) {
        match t {
            TCA_STATS_BASIC if d.len() >= 12 => {
                s.bytes = u64_at(d, 0);
                if s.packets == 0 {
                    s.packets = u64::from(u32_at(d, 8));
                }
            }
            TCA_STATS_PKT64 if d.len() >= 8 => s.packets = u64_at(d, 0),
            TCA_STATS_QUEUE if d.len() >= 20 => {
                s.qlen = u32_at(d, 0);
                s.backlog = u32_at(d, 4);
                s.drops = u32_at(d, 8);
                s.requeues = u32_at(d, 12);
                s.overlimits = u32_at(d, 16);
            }
            _ => {}
        }
    }
    s
}

pub(super) fn parse_qdisc(p: &[u8]) -> Option<(u32, Qdisc)> {
    let (ifindex, handle, parent, _, rest) = parse_tcmsg(p)?;
    let mut kind = String::new();
    let mut opts: &[u8] = &[];
    let mut stats = Stats::default();
    for (t, v) in attrs(rest) {
        match t {
            TCA_KIND => kind = attr_string(v),
            TCA_OPTIONS => opts = v,
            TCA_STATS2 => stats = parse_stats2(v),
            _ => {}
        }
    }
    let options = match kind.as_str() {
        "htb" => {
            let mut o = QdiscOptions::Htb {
                version: 0,
                r2q: 0,
                defcls: 0,
                direct_qlen: None,
            };
            if let QdiscOptions::Htb {
                version,
                r2q,
                defcls,
                direct_qlen,
            } = &mut o
            {
                for (t, v) in attrs(opts) {
                    match t {
                        TCA_HTB_INIT if v.len() >= 12 => {
                            *version = u32_at(v, 0);
                            *r2q = u32_at(v, 4);
                            *defcls = u32_at(v, 8);
                        }
                        TCA_HTB_DIRECT_QLEN => *direct_qlen = attr_u32(v),
                        _ => {}
                    }
                }
            }
            o
        }
        "pfifo" | "bfifo" if opts.len() >= 4 => QdiscOptions::Fifo {
            limit: u32_at(opts, 0),
        },
        _ => QdiscOptions::Other(opts.to_vec()),
    };
    Some((
        ifindex,
        Qdisc {
            kind,
            handle,
            parent,
            options,
            stats,
        },
    ))
}

pub(super) fn parse_class(p: &[u8]) -> Option<Class> {
    let (_, handle, parent, info, rest) = parse_tcmsg(p)?;
    let mut c = Class {
        kind: String::new(),
        handle,
        parent,
        leaf: info,
        htb: None,
        stats: Stats::default(),
    };
    let mut opts: &[u8] = &[];
    for (t, v) in attrs(rest) {
        match t {
            TCA_KIND => c.kind = attr_string(v),
            TCA_OPTIONS => opts = v,
            TCA_STATS2 => c.stats = parse_stats2(v),
            _ => {}
        }
    }
    if c.kind == "htb" {
        let (mut rate64, mut ceil64) = (None, None);
        let mut parms = None;
        for (t, v) in attrs(opts) {
            match t {
                TCA_HTB_PARMS if v.len() >= 44 => parms = Some(v),
                TCA_HTB_RATE64 if v.len() >= 8 => rate64 = Some(u64_at(v, 0)),
                TCA_HTB_CEIL64 if v.len() >= 8 => ceil64 = Some(u64_at(v, 0)),
                _ => {}
            }
        }
        c.htb = parms.map(|v| HtbParams {
            rate: rate64.unwrap_or(u64::from(u32_at(v, 8))),
            ceil: ceil64.unwrap_or(u64::from(u32_at(v, 20))),
            buffer: u32_at(v, 24),
            cbuffer: u32_at(v, 28),
            quantum: u32_at(v, 32),
            prio: u32_at(v, 40),
        });
    }
    Some(c)
}

pub(super) fn parse_actions(v: &[u8]) -> Vec<Action> {
    let mut out: Vec<(u16, Action)> = Vec::new();
    for (order, a) in attrs(v) {
        let mut act = Action {
            kind: String::new(),
            index: 0,
            mirred: None,
            stats: Stats::default(),
        };
        let mut opts: &[u8] = &[];
        for (t, d) in attrs(a) {
            match t {
                TCA_ACT_KIND => act.kind = attr_string(d),
                TCA_ACT_OPTIONS => opts = d,
                TCA_ACT_INDEX => act.index = attr_u32(d).unwrap_or(0),
                TCA_ACT_STATS => act.stats = parse_stats2(d),
                _ => {}
            }
        }
        if act.kind == "mirred" {
            for (t, d) in attrs(opts) {
                if t == TCA_MIRRED_PARMS && d.len() >= 28 {
                    act.index = u32_at(d, 0);
                    act.mirred = Some(Mirred {
                        control: i32_at(d, 8),
                        eaction: i32_at(d, 20),
                        ifindex: u32_at(d, 24),
                    });
                }
            }
        }
        out.push((order, act));
    }
    out.sort_by_key(|(o, _)| *o);
    out.into_iter().map(|(_, a)| a).collect()
}

pub(super) fn parse_filter(p: &[u8]) -> Option<Filter> {
    let (_, handle, parent, info, rest) = parse_tcmsg(p)?;
    let mut f = Filter {
        parent,
        prio: (info >> 16) as u16,
        protocol: u16::from_be((info & 0xffff) as u16),
        kind: String::new(),
        chain: 0,
        handle,
        u32: None,
    };
    let mut opts: &[u8] = &[];
    for (t, v) in attrs(rest) {
        match t {
            TCA_KIND => f.kind = attr_string(v),
            TCA_OPTIONS => opts = v,
            TCA_CHAIN => f.chain = attr_u32(v).unwrap_or(0),
            _ => {}
        }
    }
    if f.kind == "u32" {
        let mut node = U32Node {
            flags: 0,
            sel_rest: [0; 13],
            keys: Vec::new(),
            classid: None,
            actions: Vec::new(),
        };
        let mut has_sel = false;
        for (t, v) in attrs(opts) {
            match t {
                TCA_U32_SEL if v.len() >= 16 => {
                    has_sel = true;
                    node.flags = v[0];
                    node.sel_rest[0] = v[1];
                    node.sel_rest[1..].copy_from_slice(&v[4..16]);
                    let nkeys = usize::from(v[2]);
                    for k in 0..nkeys {
                        let o = 16 + 16 * k;
                        if v.len() < o + 16 {
                            break;
                        }
                        node.keys.push(U32Key {
                            mask: u32::from_be(u32_at(v, o)),
                            val: u32::from_be(u32_at(v, o + 4)),
                            off: i32_at(v, o + 8),
                            offmask: i32_at(v, o + 12),
                        });
                    }
                }
                TCA_U32_CLASSID => node.classid = attr_u32(v),
                TCA_U32_ACT => node.actions = parse_actions(v),
                _ => {}
            }
        }
        if has_sel {
            f.u32 = Some(node);
        }
    }
    Some(f)
}
