//! tc ops as rtnetlink messages, laid out as iproute2 lays them out.

use super::model::{MirredKind, TcOp};
use super::rate::{HtbParams, Psched, RTAB_MTU};
use super::shaping::{SHAPING_DEFAULT_CLASS, class_handle, dst_mac_keys};
use super::{
    CLSACT_HANDLE, ETH_P_ALL, HTB_CLASS, HTB_HANDLE, HTB_R2Q, HTB_VERSION, LEAF_HANDLE, LEAF_LIMIT,
    TC_H_INGRESS, TC_H_ROOT, TC_U32_TERMINAL, TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_HTB_CEIL64,
    TCA_HTB_CTAB, TCA_HTB_INIT, TCA_HTB_PARMS, TCA_HTB_RATE64, TCA_HTB_RTAB, TCA_KIND,
    TCA_MIRRED_PARMS, TCA_OPTIONS, TCA_U32_ACT, TCA_U32_CLASSID, TCA_U32_SEL,
};
use crate::backend::netlink::MsgBuf;
use crate::backend::netlink::consts::{
    NLM_F_CREATE, NLM_F_REPLACE, RTM_DELLINK, RTM_DELQDISC, RTM_DELTCLASS, RTM_DELTFILTER,
    RTM_NEWLINK, RTM_NEWQDISC, RTM_NEWTCLASS, RTM_NEWTFILTER, RTM_SETLINK,
};
use crate::backend::rtnl::{
    ACK, CREATE, HALF_MADE_GROUP, IFF_UP, IFLA_GROUP, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_KIND,
    IFLA_LINKINFO, ifinfomsg,
};

/// `struct tcmsg`: family, pads, ifindex, handle, parent, info.
pub(super) fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = libc::AF_UNSPEC as u8;
    for (i, v) in [ifindex, handle, parent, info].into_iter().enumerate() {
        h[4 + 4 * i..8 + 4 * i].copy_from_slice(&v.to_ne_bytes());
    }
    h
}

/// `struct tc_ratespec` as iproute2's `tc_calc_rtable` leaves it: cell_log for a 1600-byte
/// MTU, Ethernet link layer, cell_align -1.
fn ratespec(rate: u64, cell_log: u8) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = cell_log;
    b[1] = 1; // TC_LINKLAYER_ETHERNET
    b[4..6].copy_from_slice(&(-1i16).to_ne_bytes());
    let r32 = if rate >= 1 << 32 {
        u32::MAX
    } else {
        rate as u32
    };
    b[8..12].copy_from_slice(&r32.to_ne_bytes());
    b
}

fn rtab_cell_log() -> u8 {
    let mut cell_log = 0;
    while (RTAB_MTU >> cell_log) > 255 {
        cell_log += 1;
    }
    cell_log
}

/// iproute2's `tc_calc_rtable`: the time to send (i+1) << cell_log bytes, 256 slots. Kernels
/// since 3.8 compute from the rate instead but still take the table.
fn rtab(clock: &Psched, rate: u64, cell_log: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    for i in 0..256u32 {
        let size = (i + 1) << cell_log;
        out.extend_from_slice(&clock.xmittime(rate, size).unwrap_or(u32::MAX).to_ne_bytes());
    }
    out
}

fn htb_class_options(b: &mut MsgBuf, p: &HtbParams, clock: &Psched) {
    let cell_log = rtab_cell_log();
    let opts = b.nest_begin_as_is(TCA_OPTIONS);
    if p.rate >= 1 << 32 {
        b.attr(TCA_HTB_RATE64, &p.rate.to_ne_bytes());
    }
    if p.ceil >= 1 << 32 {
        b.attr(TCA_HTB_CEIL64, &p.ceil.to_ne_bytes());
    }
    // struct tc_htb_opt: rate, ceil, buffer, cbuffer, quantum, level, prio.
    let mut parms = Vec::with_capacity(44);
    parms.extend_from_slice(&ratespec(p.rate, cell_log));
    parms.extend_from_slice(&ratespec(p.ceil, cell_log));
    for v in [p.buffer, p.cbuffer, p.quantum, 0, p.prio] {
        parms.extend_from_slice(&v.to_ne_bytes());
    }
    b.attr(TCA_HTB_PARMS, &parms);
    b.attr(TCA_HTB_RTAB, &rtab(clock, p.rate, cell_log));
    b.attr(TCA_HTB_CTAB, &rtab(clock, p.ceil, cell_log));
    b.nest_end(opts);
}

/// `filter ... u32 match u32 0 0 action mirred egress {redirect|mirror} dev T`, laid out as
/// iproute2 lays it out (actions, then the selector).
fn u32_mirred_options(b: &mut MsgBuf, mirred: MirredKind, target: u32) {
    let opts = b.nest_begin_as_is(TCA_OPTIONS);
    let acts = b.nest_begin_as_is(TCA_U32_ACT);
    let first = b.nest_begin_as_is(1);
    b.attr_str(TCA_ACT_KIND, "mirred");
    let aopts = b.nest_begin(TCA_ACT_OPTIONS);
    // struct tc_mirred: index, capab, action, refcnt, bindcnt, eaction, ifindex.
    let mut parms = Vec::with_capacity(28);
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&0u32.to_ne_bytes());
    parms.extend_from_slice(&mirred.control().to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes());
    parms.extend_from_slice(&0i32.to_ne_bytes());
    parms.extend_from_slice(&mirred.eaction().to_ne_bytes());
    parms.extend_from_slice(&target.to_ne_bytes());
    b.attr(TCA_MIRRED_PARMS, &parms);
    b.nest_end(aopts);
    b.nest_end(first);
    b.nest_end(acts);
    // struct tc_u32_sel (16 bytes) + one struct tc_u32_key (16 bytes of zeros).
    let mut sel = vec![0u8; 32];
    sel[0] = TC_U32_TERMINAL;
    sel[2] = 1; // nkeys
    b.attr(TCA_U32_SEL, &sel);
    b.nest_end(opts);
}

/// The filter's `tcm_info`: priority and protocol (network byte order).
fn filter_info(prio: u16, protocol: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(protocol.to_be())
}

/// Append the message for `op` (a tc op: not a link op) to `b`.
pub(super) fn encode_tc(
    b: &mut MsgBuf,
    op: &TcOp,
    ifindex: u32,
    target: u32,
    seq: u32,
    clock: &Psched,
) {
    match op {
        TcOp::SetHtbClass { .. } | TcOp::SetClass { .. } | TcOp::DeleteClass { .. } => {
            encode_class(b, op, ifindex, seq, clock)
        }
        TcOp::AddFilter { .. } | TcOp::DeleteFilter { .. } | TcOp::AddClassifier { .. } => {
            encode_filter(b, op, ifindex, target, seq)
        }
        TcOp::CreateIfb { .. } | TcOp::SetUp { .. } | TcOp::DeleteIfb { .. } => {
            unreachable!("link ops are encoded by encode_link")
        }
        _ => encode_qdisc(b, op, ifindex, seq),
    }
}

/// `tc qdisc ...` ops.
fn encode_qdisc(b: &mut MsgBuf, op: &TcOp, ifindex: u32, seq: u32) {
    match op {
        TcOp::AddHtbRoot { .. } => htb_root(b, ifindex, seq, HTB_CLASS & 0xffff),
        TcOp::AddShapingRoot { .. } => {
            htb_root(b, ifindex, seq, u32::from(SHAPING_DEFAULT_CLASS));
        }
        TcOp::SetLeaf { .. } => {
            let s = b.begin(RTM_NEWQDISC, ACK | NLM_F_CREATE | NLM_F_REPLACE, seq);
            b.bytes(&tcmsg(ifindex, LEAF_HANDLE, HTB_CLASS, 0));
            b.attr_str(TCA_KIND, "pfifo");
            b.attr_u32(TCA_OPTIONS, LEAF_LIMIT);
            b.end(s);
        }
        TcOp::DeleteRoot { .. } => {
            let s = b.begin(RTM_DELQDISC, ACK, seq);
            b.bytes(&tcmsg(ifindex, 0, TC_H_ROOT, 0));
            b.end(s);
        }
        TcOp::AddClsact { .. } => {
            let s = b.begin(RTM_NEWQDISC, CREATE, seq);
            b.bytes(&tcmsg(ifindex, CLSACT_HANDLE, TC_H_INGRESS, 0));
            b.attr_str(TCA_KIND, "clsact");
            b.end(s);
        }
        TcOp::DeleteIngress { .. } => {
            let s = b.begin(RTM_DELQDISC, ACK, seq);
            b.bytes(&tcmsg(ifindex, 0, TC_H_INGRESS, 0));
            b.end(s);
        }
        TcOp::SetClassLeaf { class, .. } => {
            let s = b.begin(RTM_NEWQDISC, ACK | NLM_F_CREATE | NLM_F_REPLACE, seq);
            b.bytes(&tcmsg(
                ifindex,
                u32::from(*class) << 16,
                class_handle(*class),
                0,
            ));
            b.attr_str(TCA_KIND, "pfifo");
            b.attr_u32(TCA_OPTIONS, LEAF_LIMIT);
            b.end(s);
        }
        _ => unreachable!("encode_qdisc encodes qdisc ops only"),
    }
}

/// `qdisc add dev D root handle 1: htb default DEFCLS` (r2q 10).
fn htb_root(b: &mut MsgBuf, ifindex: u32, seq: u32, defcls: u32) {
    let s = b.begin(RTM_NEWQDISC, CREATE, seq);
    b.bytes(&tcmsg(ifindex, HTB_HANDLE, TC_H_ROOT, 0));
    b.attr_str(TCA_KIND, "htb");
    let o = b.nest_begin_as_is(TCA_OPTIONS);
    // struct tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts.
    let mut g = Vec::with_capacity(20);
    for v in [HTB_VERSION, HTB_R2Q, defcls, 0, 0] {
        g.extend_from_slice(&v.to_ne_bytes());
    }
    b.attr(TCA_HTB_INIT, &g);
    b.nest_end(o);
    b.end(s);
}

/// `tc class ...` ops.
fn encode_class(b: &mut MsgBuf, op: &TcOp, ifindex: u32, seq: u32, clock: &Psched) {
    match op {
        TcOp::SetHtbClass { params, .. } => {
            let s = b.begin(RTM_NEWTCLASS, ACK | NLM_F_CREATE, seq);
            b.bytes(&tcmsg(ifindex, HTB_CLASS, HTB_HANDLE, 0));
            b.attr_str(TCA_KIND, "htb");
            htb_class_options(b, params, clock);
            b.end(s);
        }
        TcOp::SetClass {
            class,
            parent,
            params,
            ..
        } => {
            let s = b.begin(RTM_NEWTCLASS, ACK | NLM_F_CREATE, seq);
            b.bytes(&tcmsg(ifindex, class_handle(*class), *parent, 0));
            b.attr_str(TCA_KIND, "htb");
            htb_class_options(b, params, clock);
            b.end(s);
        }
        TcOp::DeleteClass { class, .. } => {
            let s = b.begin(RTM_DELTCLASS, ACK, seq);
            b.bytes(&tcmsg(ifindex, class_handle(*class), 0, 0));
            b.end(s);
        }
        _ => unreachable!("encode_class encodes class ops only"),
    }
}

/// `tc filter ...` ops; `target` is a mirred action's device.
fn encode_filter(b: &mut MsgBuf, op: &TcOp, ifindex: u32, target: u32, seq: u32) {
    match op {
        TcOp::AddFilter {
            parent,
            prio,
            mirred,
            ..
        } => {
            let s = b.begin(RTM_NEWTFILTER, CREATE, seq);
            b.bytes(&tcmsg(ifindex, 0, *parent, filter_info(*prio, ETH_P_ALL)));
            b.attr_str(TCA_KIND, "u32");
            u32_mirred_options(b, *mirred, target);
            b.end(s);
        }
        TcOp::DeleteFilter { parent, prio, .. } => {
            // Protocol 0 matches the filter whatever its protocol; handle 0 takes all nodes.
            let s = b.begin(RTM_DELTFILTER, ACK, seq);
            b.bytes(&tcmsg(ifindex, 0, *parent, filter_info(*prio, 0)));
            b.end(s);
        }
        TcOp::AddClassifier {
            prio,
            dst_mac,
            class,
            ..
        } => {
            let s = b.begin(RTM_NEWTFILTER, CREATE, seq);
            b.bytes(&tcmsg(
                ifindex,
                0,
                HTB_HANDLE,
                filter_info(*prio, ETH_P_ALL),
            ));
            b.attr_str(TCA_KIND, "u32");
            let opts = b.nest_begin_as_is(TCA_OPTIONS);
            b.attr_u32(TCA_U32_CLASSID, class_handle(*class));
            let keys = dst_mac_keys(dst_mac);
            // struct tc_u32_sel (16 bytes) + the keys (16 bytes each).
            let mut sel = vec![0u8; 16];
            sel[0] = TC_U32_TERMINAL;
            sel[2] = keys.len() as u8;
            for k in keys {
                sel.extend_from_slice(&k.mask.to_be_bytes());
                sel.extend_from_slice(&k.val.to_be_bytes());
                sel.extend_from_slice(&k.off.to_ne_bytes());
                sel.extend_from_slice(&k.offmask.to_ne_bytes());
            }
            b.attr(TCA_U32_SEL, &sel);
            b.nest_end(opts);
            b.end(s);
        }
        _ => unreachable!("encode_filter encodes filter ops only"),
    }
}

/// Append the message(s) for a link op, selecting the link by name.
pub(super) fn encode_link(b: &mut MsgBuf, op: &TcOp, seqs: &mut impl FnMut() -> u32) {
    match op {
        TcOp::CreateIfb { name, alias } => {
            // Made down: it comes up once its IPv6 is off (see `Tc::execute`).
            let s = b.begin(RTM_NEWLINK, CREATE, seqs());
            b.bytes(&ifinfomsg(0, 0, 0));
            b.attr_str(IFLA_IFNAME, name);
            // Born in the half-made group until its mark is set (see `HALF_MADE_GROUP`).
            b.attr_u32(IFLA_GROUP, HALF_MADE_GROUP);
            let li = b.nest_begin(IFLA_LINKINFO);
            b.attr_str(IFLA_INFO_KIND, "ifb");
            b.nest_end(li);
            b.end(s);
            // RTM_NEWLINK ignores IFLA_IFALIAS: set it right after (same window, in order).
            let s = b.begin(RTM_SETLINK, ACK, seqs());
            b.bytes(&ifinfomsg(0, 0, 0));
            b.attr_str(IFLA_IFNAME, name);
            // The alias length is the attribute length: no NUL.
            b.attr(IFLA_IFALIAS, alias.as_bytes());
            b.attr_u32(IFLA_GROUP, 0);
            b.end(s);
        }
        TcOp::SetUp { dev } => {
            let s = b.begin(RTM_SETLINK, ACK, seqs());
            b.bytes(&ifinfomsg(0, IFF_UP, IFF_UP));
            b.attr_str(IFLA_IFNAME, dev);
            b.end(s);
        }
        TcOp::DeleteIfb { name } => {
            let s = b.begin(RTM_DELLINK, ACK, seqs());
            b.bytes(&ifinfomsg(0, 0, 0));
            b.attr_str(IFLA_IFNAME, name);
            b.end(s);
        }
        _ => unreachable!("tc ops are encoded by encode_tc"),
    }
}

/// The netlink message(s) [`Tc::execute`] sends for `op`, with `ifindex` for its device and
/// `target` for a filter's mirred target, numbered from `seq`: for tests and debugging
/// (compare with `strace -e trace=sendmsg -e write=3 tc ...`).
pub fn message_bytes(op: &TcOp, ifindex: u32, target: u32, seq: u32, clock: &Psched) -> Vec<u8> {
    let mut b = MsgBuf::new();
    if op.is_link_op() {
        let mut next = seq;
        let mut seqs = || {
            let s = next;
            next = next.wrapping_add(1);
            s
        };
        encode_link(&mut b, op, &mut seqs);
    } else {
        encode_tc(&mut b, op, ifindex, target, seq, clock);
    }
    b.as_bytes().to_vec()
}
