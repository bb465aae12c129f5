//! Traffic control for VM ports over raw rtnetlink: per-port QoS both ways and port mirroring.
//!
//! Directions are the VM's, as in libvirt. Seen from the host end of a port (a tap, or the host
//! end of a veth):
//!
//! - `inbound` (to the VM) leaves the host through the port device: HTB at its root,
//!   `1: htb default 1` -> class `1:1` (rate/ceil/burst/cburst) -> leaf `10: pfifo`.
//! - `outbound` (from the VM) arrives on the port's ingress. It is shaped, not policed: a u32
//!   match-all filter on the port's clsact ingress redirects it to an IFB device, whose root
//!   carries the same HTB tree.
//! - `mirror_to`: u32 match-all filters with `mirred egress mirror` on the port's clsact
//!   ingress and egress copy both directions to the monitor device.
//!
//! What this kernel offers decided the shapes (see DESIGN.md, "Facts about the machines"):
//! no gact/police/matchall/flower, so u32 `match u32 0 0` stands in for match-all; no
//! fq_codel/sfq/prio, so the leaf is pfifo; `clsact` exists (it comes with the ingress qdisc),
//! so one clsact carries the ingress redirect and both mirror filters, independent of the root
//! qdisc. The mirror action's control is `continue` (TC_ACT_UNSPEC), not `pipe`: a filter whose
//! actions end in `pipe` ends classification, and the redirect to the IFB at the next priority
//! would never run.
//!
//! The module is plain data plus a small executor: [`Tc::observe`] reads the live state into a
//! [`TcObserved`], [`plan`] (pure) diffs it against a [`PortTc`] into [`TcOp`]s, and
//! [`Tc::execute`] runs them. [`Tc::apply`] chains the three, with replace semantics.
//!
//! Files by concern: `rate` (rates in HTB's units, the scheduler clock), `model` (what
//! kvmnet asks for, what the kernel has, the ops), `plan` (a port's QoS and mirrors),
//! `shaping` (a network's bandwidth and floors at its bridge), `encode` (ops as messages),
//! `parse` (qdiscs, classes, filters and their stats read back), `client` (the socket and
//! the executor). Framing and links are the shared `netlink` and `rtnl` modules'.

mod client;
mod encode;
mod model;
mod parse;
mod plan;
mod rate;
mod shaping;
#[cfg(test)]
mod tests;

use super::netlink::{NetlinkError, kernel_err};

pub use client::Tc;
pub use encode::message_bytes;
pub use model::{
    Action, Class, DevTc, Filter, Mirred, MirredKind, PortTc, Qdisc, QdiscOptions, Stats,
    TcObserved, TcOp, U32Key, U32Node, handle_str, ifb_alias, ifb_name,
};
pub use plan::{clear_ops, matches, plan};
pub use rate::{HtbParams, Psched, Rate};
pub use shaping::{
    FLOOR_CLASS_MIN, FloorTc, SHAPING_DEFAULT_CLASS, Shaping, plan_shaping, read_shaping,
};

// ---- attribute numbers (linux/pkt_sched.h, pkt_cls.h, tc_act/tc_mirred.h) ----

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_STATS2: u16 = 7;
const TCA_CHAIN: u16 = 11;
const TCA_STATS_BASIC: u16 = 1;
const TCA_STATS_QUEUE: u16 = 3;
const TCA_STATS_PKT64: u16 = 8;

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_CTAB: u16 = 3;
const TCA_HTB_RTAB: u16 = 4;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `HTB_VER >> 16`: the kernel refuses any other version.
const HTB_VERSION: u32 = 3;
const HTB_R2Q: u32 = 10;

const TCA_U32_CLASSID: u16 = 1;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TC_U32_TERMINAL: u8 = 1;

const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_ACT_INDEX: u16 = 3;
const TCA_ACT_STATS: u16 = 4;
const TCA_MIRRED_PARMS: u16 = 2;

/// `TC_ACT_*` controls (what happens after an action).
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_STOLEN: i32 = 4;
/// `tc_mirred.eaction`.
pub const TCA_EGRESS_REDIR: i32 = 1;
pub const TCA_EGRESS_MIRROR: i32 = 2;

/// Handles (`major:minor` packed as `major << 16 | minor`).
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// Parent of the ingress/clsact qdisc.
pub const TC_H_INGRESS: u32 = 0xffff_fff1;
pub const CLSACT_HANDLE: u32 = 0xffff_0000;
/// Filter parents on a clsact qdisc.
pub const PARENT_INGRESS: u32 = 0xffff_fff2;
pub const PARENT_EGRESS: u32 = 0xffff_fff3;
pub const HTB_HANDLE: u32 = 0x0001_0000;
pub const HTB_CLASS: u32 = 0x0001_0001;
pub const LEAF_HANDLE: u32 = 0x0010_0000;
/// Packets the leaf pfifo holds. IFBs start with txqueuelen 32, which would otherwise be the
/// limit of HTB's implicit leaf there: far too short for a shaper at hundreds of Mbit/s.
pub const LEAF_LIMIT: u32 = 1000;
/// Filter priorities on the port's clsact. Distinct across ingress and egress on purpose: u32
/// keeps one list of hash tables per qdisc and dumps every table of the same priority under
/// each filter, so equal priorities on the two sides would show up on both.
pub const PRIO_MIRROR_IN: u16 = 1;
pub const PRIO_REDIRECT: u16 = 2;
pub const PRIO_MIRROR_OUT: u16 = 3;
pub const ETH_P_ALL: u16 = 0x0003;

/// Default HTB burst, in milliseconds of the rate (see [`Rate`]).
pub const DEFAULT_BURST_MS: u64 = 4;

// ---- errors ----

/// What can go wrong with traffic control. Framing, socket and kernel refusals are the
/// shared [`NetlinkError`] (in its words: `netlink socket: ...`, `OP: ERROR (kernel: ...)`,
/// `unexpected netlink reply`); the rest is tc's own.
#[derive(Debug, thiserror::Error)]
pub enum TcError {
    /// The socket, the framing or the kernel: a request refused, a reply that made no sense.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{what} {name} does not exist")]
    NoDevice { what: &'static str, name: String },
    /// The port's settings cannot be turned into a tc tree.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// Something already in place that kvmnet will not touch.
    #[error("{0}")]
    Conflict(String),
    /// A link change of a tc op (an IFB's) through [`crate::backend::rtnl::Netlink`] failed.
    #[error("{op}: {source}")]
    Link {
        op: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<TcError>),
}

impl TcError {
    /// The errno the kernel or the socket reported, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TcError::Netlink(e) | TcError::Link { source: e, .. } => e.errno(),
            _ => None,
        }
    }

    fn kernel(op: String, errno: i32, ext: Option<String>) -> TcError {
        TcError::Netlink(kernel_err(op, errno, ext))
    }

    fn from_list(mut errors: Vec<TcError>) -> Result<(), TcError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(TcError::Many(errors)),
        }
    }
}
