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
//! The rtnetlink plumbing (socket, message builder, parsers) is a trimmed copy of
//! `backend::netlink`'s, whose helpers are private.

// An API module: the binary need not use every item.
#![allow(dead_code)]

use super::netlink::{attr_string, attr_u32, attrs, messages, parse_error, u32_at, u64_at};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::netlink::{Netlink, NetlinkError};

// ---- protocol constants (linux/netlink.h, rtnetlink.h, pkt_sched.h, pkt_cls.h, ...) ----

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const IFLA_EXT_MASK: u16 = 29;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const RTM_SETLINK: u16 = 19;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_GETQDISC: u16 = 38;
const NLM_F_ECHO: u16 = 0x8;
const RTM_NEWTCLASS: u16 = 40;
const RTM_DELTCLASS: u16 = 41;
const RTM_GETTCLASS: u16 = 42;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;

const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_INFO_KIND: u16 = 1;
const IFF_UP: u32 = 0x1;
const IFNAMSIZ: usize = 16;

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
const TCA_U32_DIVISOR: u16 = 4;
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
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_PIPE: i32 = 3;
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
/// iproute2's default MTU for rate tables and burst.
const RTAB_MTU: u32 = 1600;
/// iproute2's default `HZ` when /proc/net/psched says nothing useful.
const DEFAULT_HZ: u64 = 100;

const SNDBUF: libc::c_int = 1 << 20;
const RCVBUF: libc::c_int = 4 << 20;
const RECV_BUF_LEN: usize = 256 * 1024;
const WINDOW: usize = 128;
const WINDOW_BYTES: usize = 128 * 1024;
const DUMP_RETRIES: usize = 5;

// ---- errors ----

#[derive(Debug, thiserror::Error)]
pub enum TcError {
    #[error("netlink socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request; `ext` is its extended-ack message when it gave one.
    #[error("{op}: {source}{}", ext.as_ref().map(|m| format!(" (kernel: {m})")).unwrap_or_default())]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
        ext: Option<String>,
    },
    #[error("{what} {name} does not exist")]
    NoDevice { what: &'static str, name: String },
    /// The port's settings cannot be turned into a tc tree.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// Something already in place that kvmnet will not touch.
    #[error("{0}")]
    Conflict(String),
    /// A link change through [`Netlink`] failed.
    #[error("{op}: {source}")]
    Link {
        op: String,
        #[source]
        source: NetlinkError,
    },
    #[error("{op}: unexpected netlink reply: {reason}")]
    Protocol { op: String, reason: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<TcError>),
}

impl TcError {
    /// The errno the kernel or the socket reported, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TcError::Socket { source, .. } | TcError::Kernel { source, .. } => {
                source.raw_os_error()
            }
            TcError::Link { source, .. } => source.errno(),
            _ => None,
        }
    }

    fn from_list(mut errors: Vec<TcError>) -> Result<(), TcError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(TcError::Many(errors)),
        }
    }
}

fn kernel_err(op: String, errno: i32, ext: Option<String>) -> TcError {
    TcError::Kernel {
        op,
        source: io::Error::from_raw_os_error(errno),
        ext,
    }
}

// ---- what kvmnet asks for ----

/// A shaping rate. Bits per second, as operators write them ("100mbit"); the kernel keeps
/// bytes per second, so rates are truncated to a multiple of 8 bits.
///
/// `burst`/`cburst` default to [`DEFAULT_BURST_MS`] worth of the rate (at least what `tc`
/// would choose). `tc`'s own default on a high-resolution-timer kernel is 1600 bytes, one
/// packet: whenever HTB's watchdog fires late (a busy CPU) the tokens it could not store are
/// lost, and a loaded 2-core machine measured 2-8% under the rate at 100 Mbit/s; with 4 ms the
/// rate held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub bits_per_sec: u64,
    /// Ceiling (may borrow up to); defaults to `bits_per_sec`. With one class per device
    /// there is nothing to borrow from, so the effective rate is `bits_per_sec`.
    pub ceil_bits_per_sec: Option<u64>,
    pub burst_bytes: Option<u32>,
    pub cburst_bytes: Option<u32>,
}

impl Rate {
    pub fn bits(bits_per_sec: u64) -> Rate {
        Rate {
            bits_per_sec,
            ceil_bits_per_sec: None,
            burst_bytes: None,
            cburst_bytes: None,
        }
    }

    pub fn mbit(m: u64) -> Rate {
        Rate::bits(m * 1_000_000)
    }

    /// The exact HTB class parameters the kernel will report for this rate.
    pub fn htb_params(&self, clock: &Psched) -> Result<HtbParams, TcError> {
        let invalid = |reason: String| TcError::Invalid {
            what: format!("rate {} bit/s", self.bits_per_sec),
            reason,
        };
        let rate = self.bits_per_sec / 8;
        let ceil = self.ceil_bits_per_sec.unwrap_or(self.bits_per_sec) / 8;
        if rate == 0 {
            return Err(invalid("must be at least 8 bit/s".into()));
        }
        if ceil < rate {
            return Err(invalid(format!(
                "ceil {} bit/s is below the rate",
                ceil * 8
            )));
        }
        let default = |r: u64| {
            let ms = (r * DEFAULT_BURST_MS / 1000).min(u64::from(u32::MAX)) as u32;
            ms.max(clock.default_burst(r))
        };
        let burst = self.burst_bytes.unwrap_or_else(|| default(rate));
        let cburst = self.cburst_bytes.unwrap_or_else(|| default(ceil));
        let ticks = |r: u64, size: u32, what: &str| {
            clock
                .xmittime(r, size)
                .ok_or_else(|| invalid(format!("{what} of {size} bytes is too large")))
        };
        Ok(HtbParams {
            rate,
            ceil,
            buffer: ticks(rate, burst, "burst")?,
            cbuffer: ticks(ceil, cburst, "cburst")?,
            // What the kernel derives when given none (rate / r2q, kept to 1000..200000),
            // sent explicitly so it does not warn about "big" quanta at high rates.
            quantum: (rate / u64::from(HTB_R2Q)).clamp(1000, 200_000) as u32,
            prio: 0,
        })
    }
}

/// One VM port's traffic control.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortTc {
    /// The host end of the port.
    pub dev: String,
    /// Traffic to the VM: shaped at `dev`'s root.
    pub inbound: Option<Rate>,
    /// Traffic from the VM: redirected to the IFB and shaped at its root.
    pub outbound: Option<Rate>,
    /// The IFB's name; [`ifb_name`] of `dev` when None.
    pub ifb: Option<String>,
    /// Copy both directions of `dev`'s traffic to this device.
    pub mirror_to: Option<String>,
}

impl PortTc {
    pub fn new(dev: &str) -> PortTc {
        PortTc {
            dev: dev.to_string(),
            inbound: None,
            outbound: None,
            ifb: None,
            mirror_to: None,
        }
    }

    /// The name of this port's IFB (whether or not it needs one).
    pub fn ifb_dev(&self) -> String {
        self.ifb.clone().unwrap_or_else(|| ifb_name(&self.dev))
    }
}

/// The IFB name for a port: "ifb-" + the port name when that fits in 15 bytes, else as much
/// of it as fits plus a hash of the whole name, so distinct ports get distinct IFBs.
pub fn ifb_name(port: &str) -> String {
    let full = format!("ifb-{port}");
    if full.len() < IFNAMSIZ {
        return full;
    }
    let hash = format!("{:04x}", fnv1a(port.as_bytes()) & 0xffff);
    let head: String = port.chars().take(IFNAMSIZ - 1 - 4 - 5).collect();
    format!("ifb-{head}-{hash}")
}

/// The alias kvmnet puts on the IFBs it makes, naming the port: marks them as its own.
pub fn ifb_alias(port: &str) -> String {
    format!("kvmnet ifb of {port}")
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

// ---- the scheduler clock (/proc/net/psched), as iproute2 reads it ----

/// The conversion factors iproute2's `tc_core_init` and `get_hz` derive from
/// /proc/net/psched. Kept in [`TcObserved`] so [`plan`] stays pure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Psched {
    /// Scheduler ticks per microsecond (15.625 on current kernels: a tick is 64 ns).
    pub tick_in_usec: f64,
    /// The `HZ` iproute2 uses for default bursts (1e9 with high-resolution timers).
    pub hz: u64,
}

impl Default for Psched {
    fn default() -> Psched {
        Psched {
            tick_in_usec: 1000.0 / 64.0,
            hz: 1_000_000_000,
        }
    }
}

impl Psched {
    /// Parse the contents of /proc/net/psched.
    pub fn parse(s: &str) -> Option<Psched> {
        let v: Vec<u32> = s
            .split_whitespace()
            .map(|w| u32::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        if v.len() < 3 || v[1] == 0 {
            return None;
        }
        let (mut t2us, us2t, clock_res) = (v[0], v[1], v[2]);
        // iproute2's compatibility hack for nanosecond clocks.
        if clock_res == 1_000_000_000 {
            t2us = us2t;
        }
        let clock_factor = f64::from(clock_res) / 1e6;
        let hz = match v.get(3) {
            Some(&d) if v[2] == 1_000_000 && d != 0 => u64::from(d),
            _ => DEFAULT_HZ,
        };
        Some(Psched {
            tick_in_usec: f64::from(t2us) / f64::from(us2t) * clock_factor,
            hz,
        })
    }

    pub fn read() -> Psched {
        std::fs::read_to_string("/proc/net/psched")
            .ok()
            .and_then(|s| Psched::parse(&s))
            .unwrap_or_default()
    }

    /// iproute2's `tc_calc_xmittime`: ticks to send `size` bytes at `rate` bytes/s (whole
    /// microseconds first, as it does). None if it does not fit the kernel's u32.
    pub fn xmittime(&self, rate: u64, size: u32) -> Option<u32> {
        let usec = (1e6 * (f64::from(size) / rate as f64)).min(f64::from(u32::MAX)) as u32;
        let ticks = f64::from(usec) * self.tick_in_usec;
        (ticks <= f64::from(u32::MAX)).then_some(ticks as u32)
    }

    /// iproute2's `tc_calc_xmitsize`: bytes sent in `ticks` at `rate` bytes/s.
    pub fn xmitsize(&self, rate: u64, ticks: u32) -> u64 {
        (rate as f64 * (f64::from(ticks) / self.tick_in_usec) / 1e6) as u64
    }

    /// iproute2's default HTB burst: rate / HZ + MTU.
    pub fn default_burst(&self, rate: u64) -> u32 {
        (rate / self.hz.max(1) + u64::from(RTAB_MTU)).min(u64::from(u32::MAX)) as u32
    }
}

// ---- what the kernel has ----

/// HTB class parameters in the kernel's units: rates in bytes/s, buffers in scheduler ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HtbParams {
    pub rate: u64,
    pub ceil: u64,
    pub buffer: u32,
    pub cbuffer: u32,
    pub quantum: u32,
    pub prio: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub bytes: u64,
    pub packets: u64,
    pub drops: u32,
    pub overlimits: u32,
    pub requeues: u32,
    pub qlen: u32,
    pub backlog: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QdiscOptions {
    Htb {
        version: u32,
        r2q: u32,
        defcls: u32,
        direct_qlen: Option<u32>,
    },
    /// pfifo / bfifo: `struct tc_fifo_qopt`.
    Fifo { limit: u32 },
    /// Anything else (or none): the raw TCA_OPTIONS payload.
    Other(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    pub options: QdiscOptions,
    pub stats: Stats,
}

impl Qdisc {
    /// A default qdisc the kernel attached by itself (handle 0: noqueue, pfifo_fast, mq).
    pub fn is_default(&self) -> bool {
        self.handle == 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// `tcm_info`: the handle of the class's leaf qdisc.
    pub leaf: u32,
    pub htb: Option<HtbParams>,
    pub stats: Stats,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirred {
    /// [`TCA_EGRESS_REDIR`] or [`TCA_EGRESS_MIRROR`] (or the ingress variants).
    pub eaction: i32,
    /// The control after the action: [`TC_ACT_STOLEN`], [`TC_ACT_PIPE`], [`TC_ACT_UNSPEC`]...
    pub control: i32,
    pub ifindex: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub kind: String,
    pub index: u32,
    pub mirred: Option<Mirred>,
    pub stats: Stats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct U32Key {
    /// Mask and value as they sit in the packet (network byte order, shown as a number).
    pub mask: u32,
    pub val: u32,
    pub off: i32,
    pub offmask: i32,
}

/// A u32 filter node (`fh 800::800`): a selector, maybe a flowid, actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct U32Node {
    pub flags: u8,
    /// The selector's fields other than the keys (offshift, offmask, off, offoff, hoff,
    /// hmask), all zero for a plain match.
    pub sel_rest: [u8; 13],
    pub keys: Vec<U32Key>,
    pub classid: Option<u32>,
    pub actions: Vec<Action>,
}

impl U32Node {
    /// `match u32 0 0`: one key that matches everything.
    pub fn matches_all(&self) -> bool {
        self.sel_rest == [0; 13]
            && self.keys
                == [U32Key {
                    mask: 0,
                    val: 0,
                    off: 0,
                    offmask: 0,
                }]
    }
}

/// One entry of a filter dump. For u32, a priority shows as several entries: the filter
/// itself (handle 0), its hash table (`800:`, with a divisor) and its nodes (`800::800`, with
/// `u32` set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub parent: u32,
    pub prio: u16,
    /// Host byte order ([`ETH_P_ALL`] for "all").
    pub protocol: u16,
    pub kind: String,
    pub chain: u32,
    pub handle: u32,
    pub u32: Option<U32Node>,
}

/// The tc state of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevTc {
    pub name: String,
    pub ifindex: u32,
    /// Link kind ("veth", "tun", "ifb", ...).
    pub kind: Option<String>,
    pub up: bool,
    pub alias: Option<String>,
    pub qdiscs: Vec<Qdisc>,
    pub classes: Vec<Class>,
    pub filters: Vec<Filter>,
}

impl DevTc {
    pub fn root(&self) -> Option<&Qdisc> {
        self.qdiscs.iter().find(|q| q.parent == TC_H_ROOT)
    }
    /// The ingress or clsact qdisc.
    pub fn ingress(&self) -> Option<&Qdisc> {
        self.qdiscs.iter().find(|q| q.parent == TC_H_INGRESS)
    }
    /// Filter nodes (u32 nodes, or entries of other classifiers) at `parent`/`prio`.
    fn entries_at(&self, parent: u32, prio: u16) -> impl Iterator<Item = &Filter> {
        self.filters
            .iter()
            .filter(move |f| f.parent == parent && f.prio == prio)
    }
}

/// What [`plan`] needs to know about one port: its device, its IFB and its mirror target.
#[derive(Clone, Debug, PartialEq)]
pub struct TcObserved {
    /// None: the port device does not exist.
    pub dev: Option<DevTc>,
    /// The IFB named by the port ([`PortTc::ifb_dev`]), if a link of that name exists.
    pub ifb: Option<DevTc>,
    /// Indexes of the other devices the port refers to (its mirror target), when they exist.
    pub links: BTreeMap<String, u32>,
    pub clock: Psched,
}

// ---- the plan ----

/// Which way a mirred action sends packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirredKind {
    /// `mirred egress redirect` (control `stolen`).
    Redirect,
    /// `mirred egress mirror` (control `continue`, so later filters still run).
    Mirror,
}

impl MirredKind {
    fn eaction(self) -> i32 {
        match self {
            MirredKind::Redirect => TCA_EGRESS_REDIR,
            MirredKind::Mirror => TCA_EGRESS_MIRROR,
        }
    }
    fn control(self) -> i32 {
        match self {
            MirredKind::Redirect => TC_ACT_STOLEN,
            MirredKind::Mirror => TC_ACT_UNSPEC,
        }
    }
}

/// One change. Devices are named; the executor resolves them to indexes when it runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TcOp {
    /// Create an IFB, up, with `alias` marking it as kvmnet's.
    CreateIfb {
        name: String,
        alias: String,
    },
    SetUp {
        dev: String,
    },
    DeleteIfb {
        name: String,
    },
    /// `qdisc add dev D root handle 1: htb default 1` (r2q 10).
    AddHtbRoot {
        dev: String,
    },
    /// `class replace dev D parent 1: classid 1:1 htb ...`: create or change.
    SetHtbClass {
        dev: String,
        params: HtbParams,
    },
    /// `qdisc replace dev D parent 1:1 handle 10: pfifo limit 1000`.
    SetLeaf {
        dev: String,
    },
    /// Remove the root qdisc and everything under it.
    DeleteRoot {
        dev: String,
    },
    AddClsact {
        dev: String,
    },
    /// Remove the ingress or clsact qdisc and its filters.
    DeleteIngress {
        dev: String,
    },
    /// `filter add dev D parent P prio N protocol all u32 match u32 0 0 action mirred ...`.
    AddFilter {
        dev: String,
        parent: u32,
        prio: u16,
        mirred: MirredKind,
        target: String,
    },
    /// Remove every filter of priority `prio` at `parent`.
    DeleteFilter {
        dev: String,
        parent: u32,
        prio: u16,
    },
    /// `qdisc add dev D root handle 1: htb default 2`: a network's shaping tree.
    AddShapingRoot {
        dev: String,
    },
    /// `class replace dev D parent P classid 1:C htb ...`: create or change.
    SetClass {
        dev: String,
        class: u16,
        parent: u32,
        params: HtbParams,
    },
    /// `qdisc replace dev D parent 1:C handle C: pfifo limit 1000`.
    SetClassLeaf {
        dev: String,
        class: u16,
    },
    /// `class del dev D classid 1:C` (its leaf goes with it).
    DeleteClass {
        dev: String,
        class: u16,
    },
    /// `filter add dev D parent 1: prio C protocol all u32 match ether dst MAC classid 1:C`.
    AddClassifier {
        dev: String,
        prio: u16,
        dst_mac: [u8; 6],
        class: u16,
    },
}

fn parent_name(p: u32) -> String {
    match p {
        PARENT_INGRESS => "ingress".into(),
        PARENT_EGRESS => "egress".into(),
        TC_H_ROOT => "root".into(),
        p => handle_str(p),
    }
}

/// "1:1", "10:", "ffff:fff2".
pub fn handle_str(h: u32) -> String {
    let (maj, min) = (h >> 16, h & 0xffff);
    if min == 0 {
        format!("{maj:x}:")
    } else {
        format!("{maj:x}:{min:x}")
    }
}

impl fmt::Display for TcOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcOp::CreateIfb { name, .. } => write!(f, "create ifb {name}"),
            TcOp::SetUp { dev } => write!(f, "set {dev} up"),
            TcOp::DeleteIfb { name } => write!(f, "delete ifb {name}"),
            TcOp::AddHtbRoot { dev } => write!(f, "add qdisc htb 1: at the root of {dev}"),
            TcOp::SetHtbClass { dev, params } => write!(
                f,
                "set htb class 1:1 of {dev} (rate {} bit/s, ceil {} bit/s)",
                params.rate * 8,
                params.ceil * 8
            ),
            TcOp::SetLeaf { dev } => {
                write!(f, "set qdisc pfifo 10: under class 1:1 of {dev}")
            }
            TcOp::DeleteRoot { dev } => write!(f, "delete the root qdisc of {dev}"),
            TcOp::AddClsact { dev } => write!(f, "add qdisc clsact to {dev}"),
            TcOp::DeleteIngress { dev } => write!(f, "delete the ingress qdisc of {dev}"),
            TcOp::AddFilter {
                dev,
                parent,
                prio,
                mirred,
                target,
            } => write!(
                f,
                "add filter {} prio {prio} of {dev}: mirred {} to {target}",
                parent_name(*parent),
                match mirred {
                    MirredKind::Redirect => "redirect",
                    MirredKind::Mirror => "mirror",
                }
            ),
            TcOp::DeleteFilter { dev, parent, prio } => {
                write!(
                    f,
                    "delete filter {} prio {prio} of {dev}",
                    parent_name(*parent)
                )
            }
            TcOp::AddShapingRoot { dev } => {
                write!(
                    f,
                    "add qdisc htb 1: (default class 1:2) at the root of {dev}"
                )
            }
            TcOp::SetClass {
                dev, class, params, ..
            } => write!(
                f,
                "set htb class 1:{class:x} of {dev} (rate {} bit/s, ceil {} bit/s)",
                params.rate * 8,
                params.ceil * 8
            ),
            TcOp::SetClassLeaf { dev, class } => {
                write!(
                    f,
                    "set qdisc pfifo {class:x}: under class 1:{class:x} of {dev}"
                )
            }
            TcOp::DeleteClass { dev, class } => write!(f, "delete class 1:{class:x} of {dev}"),
            TcOp::AddClassifier {
                dev,
                prio,
                dst_mac,
                class,
            } => write!(
                f,
                "add filter 1: prio {prio} of {dev}: destination {} to class 1:{class:x}",
                crate::types::Mac(*dst_mac)
            ),
        }
    }
}

/// A filter the port needs.
struct WantFilter {
    parent: u32,
    prio: u16,
    mirred: MirredKind,
    target: String,
}

/// The ops that make `obs` match `port`: empty when it already does. Pure.
pub fn plan(port: &PortTc, obs: &TcObserved) -> Result<Vec<TcOp>, TcError> {
    let Some(dev) = &obs.dev else {
        return Err(TcError::NoDevice {
            what: "port device",
            name: port.dev.clone(),
        });
    };
    let ifb = port.ifb_dev();
    check_name(&ifb, "IFB name")?;
    if let Some(m) = &port.mirror_to {
        if *m == port.dev || *m == ifb {
            return Err(TcError::Invalid {
                what: format!("port {}", port.dev),
                reason: format!("cannot mirror to {m}: it is the port itself or its IFB"),
            });
        }
        if !obs.links.contains_key(m) {
            return Err(TcError::NoDevice {
                what: "mirror target",
                name: m.clone(),
            });
        }
    }
    let inbound = port.inbound.map(|r| r.htb_params(&obs.clock)).transpose()?;
    let outbound = port
        .outbound
        .map(|r| r.htb_params(&obs.clock))
        .transpose()?;
    let ifb_ours = obs.ifb.as_ref().is_some_and(|i| ifb_is_ours(i, &port.dev));
    if let Some(i) = &obs.ifb
        && outbound.is_some()
        && !ifb_ours
    {
        return Err(TcError::Conflict(match i.kind.as_deref() {
            Some("ifb") => format!(
                "IFB {ifb} belongs to another port ({})",
                i.alias.as_deref().unwrap_or_default()
            ),
            kind => format!(
                "{ifb}, the IFB name of port {}, is taken by a link of kind {}",
                port.dev,
                kind.unwrap_or("none")
            ),
        }));
    }

    let mut ops = Vec::new();
    // 1. The IFB and its tree, before anything redirects to it.
    let mut ifb_index = None;
    if let Some(params) = &outbound {
        match &obs.ifb {
            None => {
                ops.push(TcOp::CreateIfb {
                    name: ifb.clone(),
                    alias: ifb_alias(&port.dev),
                });
                root_ops(&ifb, Some(params), &DevTc::default(), &mut ops);
            }
            Some(i) => {
                ifb_index = Some(i.ifindex);
                if !i.up {
                    ops.push(TcOp::SetUp { dev: ifb.clone() });
                }
                root_ops(&ifb, Some(params), i, &mut ops);
                if i.ingress().is_some() {
                    ops.push(TcOp::DeleteIngress { dev: ifb.clone() });
                }
            }
        }
    }
    // 2. The port's root: shaping toward the VM.
    root_ops(&port.dev, inbound.as_ref(), dev, &mut ops);
    // 3. The port's clsact: mirrors first, then the redirect that steals the packet.
    let mut want = Vec::new();
    if let Some(m) = &port.mirror_to {
        want.push(WantFilter {
            parent: PARENT_INGRESS,
            prio: PRIO_MIRROR_IN,
            mirred: MirredKind::Mirror,
            target: m.clone(),
        });
        want.push(WantFilter {
            parent: PARENT_EGRESS,
            prio: PRIO_MIRROR_OUT,
            mirred: MirredKind::Mirror,
            target: m.clone(),
        });
    }
    if outbound.is_some() {
        want.push(WantFilter {
            parent: PARENT_INGRESS,
            prio: PRIO_REDIRECT,
            mirred: MirredKind::Redirect,
            target: ifb.clone(),
        });
    }
    let mut index_of = |name: &str| {
        if name == ifb {
            ifb_index
        } else {
            obs.links.get(name).copied()
        }
    };
    clsact_ops(&port.dev, &want, dev, &mut index_of, &mut ops);
    // 4. An IFB no longer needed, once nothing redirects to it.
    if outbound.is_none() && ifb_ours {
        ops.push(TcOp::DeleteIfb { name: ifb });
    }
    Ok(ops)
}

/// An IFB kvmnet may use and delete for `port`: an IFB that does not name another port in
/// its alias (one made by hand with the derived name counts as the port's).
fn ifb_is_ours(link: &DevTc, port: &str) -> bool {
    link.kind.as_deref() == Some("ifb")
        && link
            .alias
            .as_ref()
            .is_none_or(|a| !a.starts_with("kvmnet ifb of ") || *a == ifb_alias(port))
}

/// Whether the live state is exactly what `port` asks for.
pub fn matches(port: &PortTc, observed: &TcObserved) -> bool {
    plan(port, observed).is_ok_and(|ops| ops.is_empty())
}

/// Ops for `dev`'s root: the HTB tree for `want`, or the default qdisc.
fn root_ops(dev: &str, want: Option<&HtbParams>, obs: &DevTc, ops: &mut Vec<TcOp>) {
    let root = obs.root().filter(|q| !q.is_default());
    let Some(params) = want else {
        if root.is_some() {
            ops.push(TcOp::DeleteRoot { dev: dev.into() });
        }
        return;
    };
    let ours = root.is_some_and(|q| {
        q.kind == "htb"
            && q.handle == HTB_HANDLE
            && matches!(q.options, QdiscOptions::Htb { r2q, defcls, .. }
                if r2q == HTB_R2Q && defcls == HTB_CLASS & 0xffff)
    });
    // Anything under the HTB besides class 1:1 and its leaf means rebuilding.
    let foreign_class = obs
        .classes
        .iter()
        .any(|c| c.handle >> 16 == HTB_HANDLE >> 16 && c.handle != HTB_CLASS);
    let foreign_qdisc = obs.qdiscs.iter().any(|q| {
        q.parent != TC_H_ROOT
            && q.parent != TC_H_INGRESS
            && q.parent >> 16 == HTB_HANDLE >> 16
            && q.parent != HTB_CLASS
    });
    if !ours || foreign_class || foreign_qdisc {
        if root.is_some() {
            ops.push(TcOp::DeleteRoot { dev: dev.into() });
        }
        ops.push(TcOp::AddHtbRoot { dev: dev.into() });
        ops.push(TcOp::SetHtbClass {
            dev: dev.into(),
            params: *params,
        });
        ops.push(TcOp::SetLeaf { dev: dev.into() });
        return;
    }
    // Filters on the HTB or its class: none wanted (the default class does the job).
    let stray: BTreeSet<(u32, u16)> = obs
        .filters
        .iter()
        .filter(|f| f.parent == HTB_HANDLE || f.parent == HTB_CLASS)
        .map(|f| (f.parent, f.prio))
        .collect();
    for (parent, prio) in stray {
        ops.push(TcOp::DeleteFilter {
            dev: dev.into(),
            parent,
            prio,
        });
    }
    let class = obs.classes.iter().find(|c| c.handle == HTB_CLASS);
    let class_ok = class.is_some_and(|c| {
        c.kind == "htb" && c.parent == TC_H_ROOT && c.htb.as_ref() == Some(params)
    });
    if !class_ok {
        ops.push(TcOp::SetHtbClass {
            dev: dev.into(),
            params: *params,
        });
    }
    let leaf_ok = obs.qdiscs.iter().any(|q| {
        q.parent == HTB_CLASS
            && q.handle == LEAF_HANDLE
            && q.kind == "pfifo"
            && q.options == QdiscOptions::Fifo { limit: LEAF_LIMIT }
    });
    if !leaf_ok || class.is_none() {
        ops.push(TcOp::SetLeaf { dev: dev.into() });
    }
}

/// Ops for `dev`'s clsact and its filters.
fn clsact_ops(
    dev: &str,
    want: &[WantFilter],
    obs: &DevTc,
    index_of: &mut impl FnMut(&str) -> Option<u32>,
    ops: &mut Vec<TcOp>,
) {
    let ingress = obs.ingress();
    if want.is_empty() {
        if ingress.is_some() {
            ops.push(TcOp::DeleteIngress { dev: dev.into() });
        }
        return;
    }
    let add = |w: &WantFilter| TcOp::AddFilter {
        dev: dev.into(),
        parent: w.parent,
        prio: w.prio,
        mirred: w.mirred,
        target: w.target.clone(),
    };
    if ingress.is_none_or(|q| q.kind != "clsact" || q.handle != CLSACT_HANDLE) {
        if ingress.is_some() {
            ops.push(TcOp::DeleteIngress { dev: dev.into() });
        }
        ops.push(TcOp::AddClsact { dev: dev.into() });
        ops.extend(want.iter().map(add));
        return;
    }
    let present: BTreeSet<(u32, u16)> = obs
        .filters
        .iter()
        .filter(|f| f.parent == PARENT_INGRESS || f.parent == PARENT_EGRESS)
        .map(|f| (f.parent, f.prio))
        .collect();
    let mut dels = Vec::new();
    let mut adds = Vec::new();
    for &(parent, prio) in &present {
        if !want.iter().any(|w| w.parent == parent && w.prio == prio) {
            dels.push(TcOp::DeleteFilter {
                dev: dev.into(),
                parent,
                prio,
            });
        }
    }
    for w in want {
        let target = index_of(&w.target);
        if filter_ok(obs, w, target) {
            continue;
        }
        if present.contains(&(w.parent, w.prio)) {
            dels.push(TcOp::DeleteFilter {
                dev: dev.into(),
                parent: w.parent,
                prio: w.prio,
            });
        }
        adds.push(add(w));
    }
    ops.extend(dels);
    ops.extend(adds);
}

/// Exactly one u32 match-all node with the one wanted mirred action at the filter's place.
fn filter_ok(obs: &DevTc, w: &WantFilter, target: Option<u32>) -> bool {
    let Some(target) = target else {
        return false;
    };
    let mut nodes = 0;
    for f in obs.entries_at(w.parent, w.prio) {
        if f.kind != "u32" || f.protocol != ETH_P_ALL || f.chain != 0 {
            return false;
        }
        let Some(n) = &f.u32 else {
            continue;
        };
        nodes += 1;
        let action_ok = match n.actions.as_slice() {
            [a] => {
                a.kind == "mirred"
                    && a.mirred
                        == Some(Mirred {
                            eaction: w.mirred.eaction(),
                            control: w.mirred.control(),
                            ifindex: target,
                        })
            }
            _ => false,
        };
        if !(action_ok && n.matches_all() && n.flags & TC_U32_TERMINAL != 0 && n.classid.is_none())
        {
            return false;
        }
    }
    nodes == 1
}

fn check_name(name: &str, what: &str) -> Result<(), TcError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ':', '\0', ' ']) {
        return Err(TcError::Invalid {
            what: format!("{what} '{name}'"),
            reason: "not a valid interface name (1 to 15 bytes, no '/', ':' or space)".into(),
        });
    }
    Ok(())
}

// ---- message building ----

struct MsgBuf {
    buf: Vec<u8>,
}

impl MsgBuf {
    fn new() -> MsgBuf {
        MsgBuf { buf: Vec::new() }
    }
    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> usize {
        self.align();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        start
    }
    fn end(&mut self, start: usize) {
        self.align();
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }
    fn ifinfomsg(&mut self, index: u32, flags: u32, change: u32) {
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&index.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&change.to_ne_bytes());
    }
    fn tcmsg(&mut self, ifindex: u32, handle: u32, parent: u32, info: u32) {
        self.buf
            .extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        self.buf.extend_from_slice(&ifindex.to_ne_bytes());
        self.buf.extend_from_slice(&handle.to_ne_bytes());
        self.buf.extend_from_slice(&parent.to_ne_bytes());
        self.buf.extend_from_slice(&info.to_ne_bytes());
    }
    fn attr(&mut self, ty: u16, data: &[u8]) {
        self.align();
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
    }
    fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }
    fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v);
    }
    /// Start a nested attribute. `ty` is sent as given: tc's TCA_OPTIONS go without
    /// NLA_F_NESTED, as iproute2 sends them (some qdiscs' options are plain structs).
    fn nest_begin(&mut self, ty: u16) -> usize {
        self.align();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        start
    }
    fn nest_end(&mut self, start: usize) {
        self.align();
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
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
    let opts = b.nest_begin(TCA_OPTIONS);
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
    let opts = b.nest_begin(TCA_OPTIONS);
    let acts = b.nest_begin(TCA_U32_ACT);
    let first = b.nest_begin(1);
    b.attr_str(TCA_ACT_KIND, "mirred");
    let aopts = b.nest_begin(TCA_ACT_OPTIONS | NLA_F_NESTED);
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
fn encode_tc(b: &mut MsgBuf, op: &TcOp, ifindex: u32, target: u32, seq: u32, clock: &Psched) {
    let ack = NLM_F_REQUEST | NLM_F_ACK;
    let create = ack | NLM_F_CREATE | NLM_F_EXCL;
    match op {
        TcOp::AddHtbRoot { .. } => {
            let s = b.begin(RTM_NEWQDISC, create, seq);
            b.tcmsg(ifindex, HTB_HANDLE, TC_H_ROOT, 0);
            b.attr_str(TCA_KIND, "htb");
            let o = b.nest_begin(TCA_OPTIONS);
            // struct tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts.
            let mut g = Vec::with_capacity(20);
            for v in [HTB_VERSION, HTB_R2Q, HTB_CLASS & 0xffff, 0, 0] {
                g.extend_from_slice(&v.to_ne_bytes());
            }
            b.attr(TCA_HTB_INIT, &g);
            b.nest_end(o);
            b.end(s);
        }
        TcOp::SetHtbClass { params, .. } => {
            let s = b.begin(RTM_NEWTCLASS, ack | NLM_F_CREATE, seq);
            b.tcmsg(ifindex, HTB_CLASS, HTB_HANDLE, 0);
            b.attr_str(TCA_KIND, "htb");
            htb_class_options(b, params, clock);
            b.end(s);
        }
        TcOp::SetLeaf { .. } => {
            let s = b.begin(RTM_NEWQDISC, ack | NLM_F_CREATE | NLM_F_REPLACE, seq);
            b.tcmsg(ifindex, LEAF_HANDLE, HTB_CLASS, 0);
            b.attr_str(TCA_KIND, "pfifo");
            b.attr_u32(TCA_OPTIONS, LEAF_LIMIT);
            b.end(s);
        }
        TcOp::DeleteRoot { .. } => {
            let s = b.begin(RTM_DELQDISC, ack, seq);
            b.tcmsg(ifindex, 0, TC_H_ROOT, 0);
            b.end(s);
        }
        TcOp::AddClsact { .. } => {
            let s = b.begin(RTM_NEWQDISC, create, seq);
            b.tcmsg(ifindex, CLSACT_HANDLE, TC_H_INGRESS, 0);
            b.attr_str(TCA_KIND, "clsact");
            b.end(s);
        }
        TcOp::DeleteIngress { .. } => {
            let s = b.begin(RTM_DELQDISC, ack, seq);
            b.tcmsg(ifindex, 0, TC_H_INGRESS, 0);
            b.end(s);
        }
        TcOp::AddFilter {
            parent,
            prio,
            mirred,
            ..
        } => {
            let s = b.begin(RTM_NEWTFILTER, create, seq);
            b.tcmsg(ifindex, 0, *parent, filter_info(*prio, ETH_P_ALL));
            b.attr_str(TCA_KIND, "u32");
            u32_mirred_options(b, *mirred, target);
            b.end(s);
        }
        TcOp::DeleteFilter { parent, prio, .. } => {
            // Protocol 0 matches the filter whatever its protocol; handle 0 takes all nodes.
            let s = b.begin(RTM_DELTFILTER, ack, seq);
            b.tcmsg(ifindex, 0, *parent, filter_info(*prio, 0));
            b.end(s);
        }
        TcOp::AddShapingRoot { .. } => {
            let s = b.begin(RTM_NEWQDISC, create, seq);
            b.tcmsg(ifindex, HTB_HANDLE, TC_H_ROOT, 0);
            b.attr_str(TCA_KIND, "htb");
            let o = b.nest_begin(TCA_OPTIONS);
            let mut g = Vec::with_capacity(20);
            for v in [HTB_VERSION, HTB_R2Q, u32::from(SHAPING_DEFAULT_CLASS), 0, 0] {
                g.extend_from_slice(&v.to_ne_bytes());
            }
            b.attr(TCA_HTB_INIT, &g);
            b.nest_end(o);
            b.end(s);
        }
        TcOp::SetClass {
            class,
            parent,
            params,
            ..
        } => {
            let s = b.begin(RTM_NEWTCLASS, ack | NLM_F_CREATE, seq);
            b.tcmsg(ifindex, class_handle(*class), *parent, 0);
            b.attr_str(TCA_KIND, "htb");
            htb_class_options(b, params, clock);
            b.end(s);
        }
        TcOp::SetClassLeaf { class, .. } => {
            let s = b.begin(RTM_NEWQDISC, ack | NLM_F_CREATE | NLM_F_REPLACE, seq);
            b.tcmsg(ifindex, u32::from(*class) << 16, class_handle(*class), 0);
            b.attr_str(TCA_KIND, "pfifo");
            b.attr_u32(TCA_OPTIONS, LEAF_LIMIT);
            b.end(s);
        }
        TcOp::DeleteClass { class, .. } => {
            let s = b.begin(RTM_DELTCLASS, ack, seq);
            b.tcmsg(ifindex, class_handle(*class), 0, 0);
            b.end(s);
        }
        TcOp::AddClassifier {
            prio,
            dst_mac,
            class,
            ..
        } => {
            let s = b.begin(RTM_NEWTFILTER, create, seq);
            b.tcmsg(ifindex, 0, HTB_HANDLE, filter_info(*prio, ETH_P_ALL));
            b.attr_str(TCA_KIND, "u32");
            let opts = b.nest_begin(TCA_OPTIONS);
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
        TcOp::CreateIfb { .. } | TcOp::SetUp { .. } | TcOp::DeleteIfb { .. } => {
            unreachable!("link ops are encoded by encode_link")
        }
    }
}

/// Append the message(s) for a link op, selecting the link by name.
fn encode_link(b: &mut MsgBuf, op: &TcOp, seqs: &mut impl FnMut() -> u32) {
    let ack = NLM_F_REQUEST | NLM_F_ACK;
    match op {
        TcOp::CreateIfb { name, alias } => {
            // Made down: it comes up once its IPv6 is off (see `Tc::execute`).
            let s = b.begin(RTM_NEWLINK, ack | NLM_F_CREATE | NLM_F_EXCL, seqs());
            b.ifinfomsg(0, 0, 0);
            b.attr_str(IFLA_IFNAME, name);
            let li = b.nest_begin(IFLA_LINKINFO | NLA_F_NESTED);
            b.attr_str(IFLA_INFO_KIND, "ifb");
            b.nest_end(li);
            b.end(s);
            // RTM_NEWLINK ignores IFLA_IFALIAS: set it right after (same window, in order).
            let s = b.begin(RTM_SETLINK, ack, seqs());
            b.ifinfomsg(0, 0, 0);
            b.attr_str(IFLA_IFNAME, name);
            // The alias length is the attribute length: no NUL.
            b.attr(IFLA_IFALIAS, alias.as_bytes());
            b.end(s);
        }
        TcOp::SetUp { dev } => {
            let s = b.begin(RTM_SETLINK, ack, seqs());
            b.ifinfomsg(0, IFF_UP, IFF_UP);
            b.attr_str(IFLA_IFNAME, dev);
            b.end(s);
        }
        TcOp::DeleteIfb { name } => {
            let s = b.begin(RTM_DELLINK, ack, seqs());
            b.ifinfomsg(0, 0, 0);
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
    b.buf
}

impl TcOp {
    fn is_link_op(&self) -> bool {
        matches!(
            self,
            TcOp::CreateIfb { .. } | TcOp::SetUp { .. } | TcOp::DeleteIfb { .. }
        )
    }
    /// The device a tc op acts on.
    fn dev(&self) -> &str {
        match self {
            TcOp::CreateIfb { name, .. } | TcOp::DeleteIfb { name } => name,
            TcOp::SetUp { dev }
            | TcOp::AddHtbRoot { dev }
            | TcOp::SetHtbClass { dev, .. }
            | TcOp::SetLeaf { dev }
            | TcOp::DeleteRoot { dev }
            | TcOp::AddClsact { dev }
            | TcOp::DeleteIngress { dev }
            | TcOp::AddFilter { dev, .. }
            | TcOp::DeleteFilter { dev, .. }
            | TcOp::AddShapingRoot { dev }
            | TcOp::SetClass { dev, .. }
            | TcOp::SetClassLeaf { dev, .. }
            | TcOp::DeleteClass { dev, .. }
            | TcOp::AddClassifier { dev, .. } => dev,
        }
    }
}

// ---- parsing ----

fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

/// The common part of RTM_NEWQDISC/NEWTCLASS/NEWTFILTER: (ifindex, handle, parent, info,
/// attributes).
fn parse_tcmsg(p: &[u8]) -> Option<(u32, u32, u32, u32, &[u8])> {
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

fn parse_stats2(v: &[u8]) -> Stats {
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

fn parse_qdisc(p: &[u8]) -> Option<(u32, Qdisc)> {
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

fn parse_class(p: &[u8]) -> Option<Class> {
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

fn parse_actions(v: &[u8]) -> Vec<Action> {
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

fn parse_filter(p: &[u8]) -> Option<Filter> {
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

/// Link facts from an RTM_NEWLINK (no tc state yet).
fn parse_link(p: &[u8]) -> Option<DevTc> {
    if p.len() < 16 {
        return None;
    }
    let index = u32_at(p, 4);
    let up = u32_at(p, 8) & IFF_UP != 0;
    let (mut name, mut kind, mut alias) = (String::new(), None, None);
    for (t, v) in attrs(&p[16..]) {
        match t {
            IFLA_IFNAME => name = attr_string(v),
            IFLA_IFALIAS => {
                let a = attr_string(v);
                alias = (!a.is_empty()).then_some(a);
            }
            IFLA_LINKINFO => {
                for (t, d) in attrs(v) {
                    if t == IFLA_INFO_KIND {
                        kind = Some(attr_string(d));
                    }
                }
            }
            _ => {}
        }
    }
    Some(DevTc {
        name,
        ifindex: index,
        kind,
        up,
        alias,
        ..DevTc::default()
    })
}

// ---- the socket ----

fn sockopt(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: val is a valid c_int for the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; zeroed is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa
}

/// A tc client: an rtnetlink socket bound in one network namespace.
pub struct Tc {
    fd: OwnedFd,
    /// The network namespace the socket lives in, to open a [`Netlink`] there.
    netns: File,
    seq: u32,
    rbuf: Vec<u8>,
    clock: Psched,
}

impl Tc {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Tc, TcError> {
        let sock = |op, source| TcError::Socket { op, source };
        // SAFETY: plain syscall; the fd is wrapped right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(sock("socket(NETLINK_ROUTE)", io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        if sockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, SNDBUF).is_err() {
            let _ = sockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, SNDBUF);
        }
        if sockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = sockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        let _ = sockopt(raw, SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let _ = sockopt(raw, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        let sa = kernel_addr();
        // SAFETY: sa is a valid sockaddr_nl.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(sock("bind", io::Error::last_os_error()));
        }
        let netns = File::open("/proc/thread-self/ns/net")
            .map_err(|e| sock("open the current network namespace", e))?;
        Ok(Tc {
            fd,
            netns,
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            rbuf: vec![0; RECV_BUF_LEN],
            clock: Psched::read(),
        })
    }

    /// The socket's netlink port: notifications this socket's requests cause carry it.
    pub fn portid(&self) -> u32 {
        // SAFETY: zeroed sockaddr_nl is valid; getsockname fills at most `len` bytes.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: as above, on a descriptor we own.
        let r = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        if r == 0 { sa.nl_pid } else { 0 }
    }

    /// A socket in the namespace `netns_fd` refers to (the calling thread switches there for
    /// the `socket` call and back).
    pub fn open_in(netns_fd: RawFd) -> Result<Tc, TcError> {
        let sock = |op, source| TcError::Socket { op, source };
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| sock("open the current network namespace", e))?;
        // SAFETY: plain syscalls on descriptors we hold.
        if unsafe { libc::setns(netns_fd, libc::CLONE_NEWNET) } != 0 {
            return Err(sock("enter network namespace", io::Error::last_os_error()));
        }
        let res = Tc::open();
        // SAFETY: as above.
        if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "fatal: cannot switch back to the original network namespace: {}",
                io::Error::last_os_error()
            );
            std::process::abort();
        }
        res
    }

    /// [`crate::backend::sysctl::disable_ipv6`] in this client's network namespace (sysctls
    /// are written in the calling thread's).
    fn disable_ipv6(&self, dev: &str) -> Result<(), String> {
        use std::os::fd::AsFd;
        crate::backend::netns::with_netns_fd(self.netns.as_fd(), "of the tc client", || {
            crate::backend::sysctl::disable_ipv6(dev)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// The scheduler clock factors this client computes with.
    pub fn clock(&self) -> Psched {
        self.clock
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        super::netlink::send_to_kernel(self.fd.as_raw_fd(), buf)
    }

    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // SAFETY: rbuf is valid for writing rbuf.len() bytes.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rbuf.as_mut_ptr().cast(),
                    self.rbuf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if r >= 0 {
                let n = r as usize;
                if n > self.rbuf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink message of {n} bytes truncated"),
                    ));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Run a dump; returns the payloads of the replies. Retries when a concurrent change
    /// interrupted it.
    fn dump(&mut self, op: &str, ty: u16, header: &[u8]) -> Result<Vec<Vec<u8>>, TcError> {
        for _ in 0..DUMP_RETRIES {
            let seq = self.next_seq();
            let mut b = MsgBuf::new();
            let start = b.begin(ty, NLM_F_REQUEST | NLM_F_DUMP, seq);
            b.buf.extend_from_slice(header);
            b.end(start);
            self.send(&b.buf).map_err(|e| TcError::Socket {
                op: "send dump request",
                source: e,
            })?;
            let mut interrupted = false;
            let mut payloads = Vec::new();
            'recv: loop {
                let n = self.recv().map_err(|e| TcError::Socket {
                    op: "receive dump",
                    source: e,
                })?;
                for m in messages(&self.rbuf[..n]) {
                    if m.seq != seq {
                        continue;
                    }
                    if m.flags & NLM_F_DUMP_INTR != 0 {
                        interrupted = true;
                    }
                    match m.ty {
                        NLMSG_DONE => {
                            let err = m.payload.get(0..4).map(|b| i32_at(b, 0)).unwrap_or(0);
                            if err < 0 {
                                return Err(kernel_err(op.to_string(), -err, None));
                            }
                            break 'recv;
                        }
                        NLMSG_ERROR => {
                            let (errno, _, ext) =
                                parse_error(&m).ok_or_else(|| TcError::Protocol {
                                    op: op.to_string(),
                                    reason: "short error message".into(),
                                })?;
                            if errno != 0 {
                                return Err(kernel_err(op.to_string(), errno, ext));
                            }
                        }
                        NLMSG_NOOP | NLMSG_OVERRUN => {}
                        _ => payloads.push(m.payload.to_vec()),
                    }
                }
            }
            if !interrupted {
                return Ok(payloads);
            }
        }
        Err(TcError::Protocol {
            op: op.to_string(),
            reason: format!(
                "dump kept being interrupted by concurrent changes ({DUMP_RETRIES} tries)"
            ),
        })
    }

    /// Send `b` (messages whose sequence numbers are the keys of `pending`) in one datagram
    /// and collect their acks. Failures go to `errors[pending[seq]]`.
    fn transact(
        &mut self,
        b: &MsgBuf,
        mut pending: HashMap<u32, usize>,
        errors: &mut [Option<(i32, Option<String>)>],
    ) -> Result<(), TcError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.send(&b.buf).map_err(|e| TcError::Socket {
            op: "send tc requests",
            source: e,
        })?;
        while !pending.is_empty() {
            let n = self.recv().map_err(|e| TcError::Socket {
                op: "receive acks",
                source: e,
            })?;
            for m in messages(&self.rbuf[..n]) {
                if m.ty != NLMSG_ERROR {
                    continue;
                }
                let Some((errno, seq, ext)) = parse_error(&m) else {
                    continue;
                };
                if let Some(i) = pending.remove(&seq)
                    && errno != 0
                {
                    errors[i].get_or_insert((errno, ext));
                }
            }
        }
        Ok(())
    }

    /// Link facts by name; None if there is no such link.
    fn link(&mut self, name: &str) -> Result<Option<DevTc>, TcError> {
        if check_name(name, "link").is_err() {
            return Ok(None);
        }
        let op = format!("look up link {name}");
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        let s = b.begin(RTM_GETLINK, NLM_F_REQUEST, seq);
        b.ifinfomsg(0, 0, 0);
        b.attr_str(IFLA_IFNAME, name);
        b.end(s);
        self.send(&b.buf).map_err(|e| TcError::Socket {
            op: "send link request",
            source: e,
        })?;
        loop {
            let n = self.recv().map_err(|e| TcError::Socket {
                op: "receive link reply",
                source: e,
            })?;
            for m in messages(&self.rbuf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.ty {
                    NLMSG_ERROR => {
                        let (errno, _, ext) = parse_error(&m).ok_or_else(|| TcError::Protocol {
                            op: op.clone(),
                            reason: "short error message".into(),
                        })?;
                        return match errno {
                            libc::ENODEV => Ok(None),
                            0 => Err(TcError::Protocol {
                                op,
                                reason: "ack without a link".into(),
                            }),
                            e => Err(kernel_err(op, e, ext)),
                        };
                    }
                    RTM_NEWLINK => {
                        return parse_link(m.payload)
                            .map(Some)
                            .ok_or_else(|| TcError::Protocol {
                                op,
                                reason: "short link message".into(),
                            });
                    }
                    _ => {}
                }
            }
        }
    }

    /// One request that is not a dump; `None` when the kernel has no such object. The kernel
    /// answers a qdisc request as a notification to every tc listener, and to the asker only
    /// when it asks for an echo (those listeners see this socket's port on it).
    fn get_one(&mut self, op: &str, ty: u16, header: &[u8]) -> Result<Option<Vec<u8>>, TcError> {
        let seq = self.next_seq();
        let mut b = MsgBuf::new();
        // With an ack asked for, an answer always ends: the kernel sends nothing at all for
        // an object it would not dump (the placeholder on an unused ingress hook).
        let start = b.begin(ty, NLM_F_REQUEST | NLM_F_ECHO | NLM_F_ACK, seq);
        b.buf.extend_from_slice(header);
        b.end(start);
        self.send(&b.buf).map_err(|e| TcError::Socket {
            op: "send request",
            source: e,
        })?;
        let mut answer = None;
        loop {
            let n = self.recv().map_err(|e| TcError::Socket {
                op: "receive reply",
                source: e,
            })?;
            for m in messages(&self.rbuf[..n]) {
                if m.seq != seq {
                    continue;
                }
                if m.ty != NLMSG_ERROR {
                    answer = Some(m.payload.to_vec());
                    continue;
                }
                let (errno, _, ext) = parse_error(&m).ok_or_else(|| TcError::Protocol {
                    op: op.to_string(),
                    reason: "short error message".into(),
                })?;
                return match errno {
                    0 => Ok(answer),
                    libc::ENOENT | libc::EINVAL | libc::ENODEV => Ok(None),
                    e => Err(kernel_err(op.to_string(), e, ext)),
                };
            }
        }
    }

    /// One device's qdiscs, asked for where they can sit (the root, the ingress hook and the
    /// leaf of each class) rather than dumped: the kernel dumps every device's qdiscs
    /// whatever the request says, which costs milliseconds on a host with 1,000 ports.
    fn qdiscs_of(&mut self, ifindex: u32, name: &str) -> Result<Vec<Qdisc>, TcError> {
        let mut hdr = MsgBuf::new();
        hdr.tcmsg(ifindex, 0, 0, 0);
        let classes: Vec<Class> = self
            .dump(&format!("list classes of {name}"), RTM_GETTCLASS, &hdr.buf)?
            .iter()
            .filter_map(|p| parse_class(p))
            .collect();
        let mut parents = vec![TC_H_ROOT, TC_H_INGRESS];
        parents.extend(classes.iter().map(|c| c.handle));
        let mut out: Vec<Qdisc> = Vec::new();
        for parent in parents {
            let mut hdr = MsgBuf::new();
            hdr.tcmsg(ifindex, 0, parent, 0);
            let op = format!("read the qdisc of {name} at {}", parent_name(parent));
            let Some(p) = self.get_one(&op, RTM_GETQDISC, &hdr.buf)? else {
                continue;
            };
            // The placeholder on an unused hook is not a qdisc a dump would show.
            if let Some((_, q)) = parse_qdisc(&p)
                && q.kind != "noop"
                && !out
                    .iter()
                    .any(|o| o.handle == q.handle && o.parent == q.parent)
            {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// A device's tc state, read device by device (see [`Tc::qdiscs_of`]).
    fn observe_one(&mut self, name: &str, planned: bool) -> Result<Option<DevTc>, TcError> {
        let Some(mut d) = self.link(name)? else {
            return Ok(None);
        };
        d.qdiscs = self.qdiscs_of(d.ifindex, name)?;
        self.fill_dev_at(&mut d, planned)?;
        Ok(Some(d))
    }

    /// [`Tc::observe_devs`], device by device.
    pub fn observe_devs_few(&mut self, names: &[&str]) -> Result<Vec<DevTc>, TcError> {
        let mut out = Vec::new();
        for name in names {
            if let Some(d) = self.observe_one(name, false)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Qdiscs of every device, by ifindex (the kernel dumps them all at once).
    fn all_qdiscs(&mut self) -> Result<HashMap<u32, Vec<Qdisc>>, TcError> {
        let mut hdr = MsgBuf::new();
        hdr.tcmsg(0, 0, 0, 0);
        let mut out: HashMap<u32, Vec<Qdisc>> = HashMap::new();
        for p in self.dump("list qdiscs", RTM_GETQDISC, &hdr.buf)? {
            if let Some((ifindex, q)) = parse_qdisc(&p) {
                out.entry(ifindex).or_default().push(q);
            }
        }
        Ok(out)
    }

    /// Every link, by name, from one dump: cheaper than a lookup per name for many ports.
    fn all_links(&mut self) -> Result<HashMap<String, DevTc>, TcError> {
        let mut hdr = MsgBuf::new();
        hdr.ifinfomsg(0, 0, 0);
        // No counters: the kernel's costliest part of a link message.
        hdr.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        Ok(self
            .dump("list links", RTM_GETLINK, &hdr.buf)?
            .iter()
            .filter_map(|p| parse_link(p))
            .map(|d| (d.name.clone(), d))
            .collect())
    }

    /// Classes and filters of a device whose link facts and qdiscs are known.
    fn fill_dev(&mut self, dev: &mut DevTc) -> Result<(), TcError> {
        self.fill_dev_at(dev, false)
    }

    /// [`Tc::fill_dev`]; with `planned`, filters only where [`plan`] looks (kvmnet's HTB,
    /// its class, the clsact hooks): a classless leaf has no filters to read, and other
    /// classes are replaced with the whole tree anyway.
    fn fill_dev_at(&mut self, dev: &mut DevTc, planned: bool) -> Result<(), TcError> {
        let mut hdr = MsgBuf::new();
        hdr.tcmsg(dev.ifindex, 0, 0, 0);
        let op = format!("list classes of {}", dev.name);
        dev.classes = self
            .dump(&op, RTM_GETTCLASS, &hdr.buf)?
            .iter()
            .filter_map(|p| parse_class(p))
            .collect();
        // Filter blocks: on each classful qdisc and class, and on clsact/ingress.
        let mut parents: Vec<u32> = Vec::new();
        for q in &dev.qdiscs {
            if q.is_default() {
                continue;
            }
            match q.kind.as_str() {
                "clsact" => parents.extend([PARENT_INGRESS, PARENT_EGRESS]),
                "ingress" => parents.push(CLSACT_HANDLE),
                _ if planned && q.handle != HTB_HANDLE => {}
                _ => parents.push(q.handle),
            }
        }
        parents.extend(
            dev.classes
                .iter()
                .map(|c| c.handle)
                .filter(|h| !planned || *h == HTB_CLASS),
        );
        let mut filters = Vec::new();
        for parent in parents {
            let mut hdr = MsgBuf::new();
            hdr.tcmsg(dev.ifindex, 0, parent, 0);
            let op = format!("list filters of {} at {}", dev.name, parent_name(parent));
            match self.dump(&op, RTM_GETTFILTER, &hdr.buf) {
                Ok(ps) => filters.extend(ps.iter().filter_map(|p| parse_filter(p)).map(|mut f| {
                    f.parent = parent;
                    f
                })),
                // Classless qdiscs have no filter block to dump.
                Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        dev.filters = filters;
        Ok(())
    }

    /// The tc state of one device; None if it does not exist.
    pub fn observe_dev(&mut self, name: &str) -> Result<Option<DevTc>, TcError> {
        self.observe_one(name, false)
    }

    /// What [`plan`] needs for `port`.
    pub fn observe(&mut self, port: &PortTc) -> Result<TcObserved, TcError> {
        Ok(self.observe_many(std::slice::from_ref(port))?.remove(0))
    }

    /// [`Tc::observe`] for many ports at once: the kernel dumps the qdiscs of every device
    /// whatever the request says, so this dumps them once for all ports.
    pub fn observe_many(&mut self, ports: &[PortTc]) -> Result<Vec<TcObserved>, TcError> {
        self.observe_ports(ports, ports.len() <= 4)
    }

    /// [`Tc::observe_many`]: with `few`, device by device ([`Tc::qdiscs_of`]); otherwise
    /// from one dump of every qdisc and one of every link, cheaper for many ports.
    pub fn observe_ports(
        &mut self,
        ports: &[PortTc],
        few: bool,
    ) -> Result<Vec<TcObserved>, TcError> {
        let dumped = if few {
            None
        } else {
            Some((self.all_qdiscs()?, self.all_links()?))
        };
        let mut out = Vec::with_capacity(ports.len());
        for port in ports {
            let get = |tc: &mut Tc, name: &str| -> Result<Option<DevTc>, TcError> {
                let Some((qdiscs, links)) = &dumped else {
                    return tc.observe_one(name, true);
                };
                let Some(mut d) = links.get(name).cloned() else {
                    return Ok(None);
                };
                d.qdiscs = qdiscs.get(&d.ifindex).cloned().unwrap_or_default();
                tc.fill_dev_at(&mut d, true)?;
                Ok(Some(d))
            };
            let dev = get(self, &port.dev)?;
            let ifb = get(self, &port.ifb_dev())?;
            let mut links = BTreeMap::new();
            if let Some(m) = &port.mirror_to {
                let target = match &dumped {
                    Some((_, all)) => all.get(m).cloned(),
                    None => self.link(m)?,
                };
                if let Some(l) = target {
                    links.insert(m.clone(), l.ifindex);
                }
            }
            out.push(TcObserved {
                dev,
                ifb,
                links,
                clock: self.clock,
            });
        }
        Ok(out)
    }

    /// Run `ops` in three pipelined rounds: link creations, tc changes, link deletions (the
    /// order [`plan`] produces). The kernel carries on past a failed request; every failure is
    /// reported, naming its op.
    pub fn execute(&mut self, ops: &[TcOp]) -> Result<(), TcError> {
        let mut errors: Vec<Option<(i32, Option<String>)>> = vec![None; ops.len()];
        let mut early = Vec::new();
        // Round 1: IFBs to create or bring up.
        let round1: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i], TcOp::CreateIfb { .. } | TcOp::SetUp { .. }))
            .collect();
        self.run_link_ops(ops, &round1, &mut errors)?;
        // The IFBs made, without IPv6 (an IFB carries frames, not host addresses: see
        // `sysctl::disable_ipv6`), then up.
        let made: Vec<usize> = round1
            .iter()
            .copied()
            .filter(|&k| errors[k].is_none() && matches!(ops[k], TcOp::CreateIfb { .. }))
            .collect();
        let mut ups = Vec::with_capacity(made.len());
        for &k in &made {
            let dev = ops[k].dev().to_string();
            if let Err(e) = self.disable_ipv6(&dev) {
                errors[k] = Some((libc::EIO, Some(e)));
            }
            ups.push(TcOp::SetUp { dev });
        }
        let mut up_errors = vec![None; ups.len()];
        let all: Vec<usize> = (0..ups.len()).collect();
        self.run_link_ops(&ups, &all, &mut up_errors)?;
        for (&k, e) in made.iter().zip(up_errors) {
            if e.is_some() && errors[k].is_none() {
                errors[k] = e;
            }
        }
        // Round 2: tc changes, with names resolved now that the IFBs exist.
        let mut index: HashMap<String, Option<u32>> = HashMap::new();
        for op in ops.iter().filter(|o| !o.is_link_op()) {
            let mut names = vec![op.dev().to_string()];
            if let TcOp::AddFilter { target, .. } = op {
                names.push(target.clone());
            }
            for n in names {
                if let Entry::Vacant(e) = index.entry(n) {
                    let ix = self.link(e.key())?.map(|l| l.ifindex);
                    e.insert(ix);
                }
            }
        }
        let mut i = 0;
        let tc_ops: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].is_link_op()).collect();
        while i < tc_ops.len() {
            let mut b = MsgBuf::new();
            let mut pending = HashMap::new();
            while i < tc_ops.len() && pending.len() < WINDOW && b.buf.len() < WINDOW_BYTES {
                let k = tc_ops[i];
                i += 1;
                let op = &ops[k];
                let Some(ifindex) = index[op.dev()] else {
                    early.push(TcError::NoDevice {
                        what: "device",
                        name: format!("{} (needed to {op})", op.dev()),
                    });
                    continue;
                };
                let target = match op {
                    TcOp::AddFilter { target, .. } => match index[target.as_str()] {
                        Some(t) => t,
                        None => {
                            early.push(TcError::NoDevice {
                                what: "device",
                                name: format!("{target} (needed to {op})"),
                            });
                            continue;
                        }
                    },
                    _ => 0,
                };
                let seq = self.next_seq();
                pending.insert(seq, k);
                let clock = self.clock;
                encode_tc(&mut b, op, ifindex, target, seq, &clock);
            }
            self.transact(&b, pending, &mut errors)?;
        }
        // Round 3: IFBs to delete, all in one go: one RTM_DELLINK each would cost an RCU
        // barrier each (~20 ms). One already gone counts as deleted.
        let mut doomed = Vec::new();
        for (k, op) in ops.iter().enumerate() {
            if let TcOp::DeleteIfb { name } = op
                && let Some(l) = self.link(name)?
            {
                doomed.push((k, l.ifindex));
            }
        }
        if !doomed.is_empty() {
            let indexes: Vec<u32> = doomed.iter().map(|&(_, ix)| ix).collect();
            match Netlink::open_in(self.netns.as_raw_fd()) {
                Ok(mut nl) => {
                    for (&(k, _), r) in doomed.iter().zip(nl.delete_links(&indexes)) {
                        if let Err(source) = r {
                            early.push(TcError::Link {
                                op: ops[k].to_string(),
                                source,
                            });
                        }
                    }
                }
                Err(source) => early.push(TcError::Link {
                    op: "delete IFBs".into(),
                    source,
                }),
            }
        }
        let mut all = early;
        for (op, e) in ops.iter().zip(errors) {
            if let Some((errno, ext)) = e {
                all.push(kernel_err(op.to_string(), errno, ext));
            }
        }
        TcError::from_list(all)
    }

    fn run_link_ops(
        &mut self,
        ops: &[TcOp],
        which: &[usize],
        errors: &mut [Option<(i32, Option<String>)>],
    ) -> Result<(), TcError> {
        for chunk in which.chunks(WINDOW / 2) {
            let mut b = MsgBuf::new();
            let mut pending = HashMap::new();
            for &k in chunk {
                let mut seqs = || {
                    let s = self.next_seq();
                    pending.insert(s, k);
                    s
                };
                encode_link(&mut b, &ops[k], &mut seqs);
            }
            self.transact(&b, pending, errors)?;
        }
        Ok(())
    }

    /// Make the port's tc match `port` (replace semantics: only what differs changes). Returns
    /// the ops it ran. After a failure the port may be half-changed; applying the previous
    /// `PortTc` again is the way back (plans are computed from what is there).
    pub fn apply(&mut self, port: &PortTc) -> Result<Vec<TcOp>, TcError> {
        self.apply_many(std::slice::from_ref(port))
    }

    /// [`Tc::apply`] for many ports: one observation, one pipelined execution. Nothing runs
    /// if any port cannot be planned.
    pub fn apply_many(&mut self, ports: &[PortTc]) -> Result<Vec<TcOp>, TcError> {
        let observed = self.observe_many(ports)?;
        let mut ops = Vec::new();
        let mut errors = Vec::new();
        for (port, obs) in ports.iter().zip(&observed) {
            match plan(port, obs) {
                Ok(o) => ops.extend(o),
                Err(e) => errors.push(e),
            }
        }
        TcError::from_list(errors)?;
        self.execute(&ops)?;
        Ok(ops)
    }

    /// Remove a port's tc: its root and ingress/clsact qdiscs (with their classes and
    /// filters) and its IFB — `ifb`, or [`ifb_name`] of `dev` when None; the IFB is deleted
    /// only if it is an IFB not marked as another port's. Missing things are fine; keeps
    /// going and reports every error.
    pub fn clear(&mut self, dev: &str, ifb: Option<&str>) -> Result<(), TcError> {
        self.clear_many(&[(dev, ifb)])
    }

    /// [`Tc::clear`] for many ports at once (IFBs deleted together).
    pub fn clear_many(&mut self, ports: &[(&str, Option<&str>)]) -> Result<(), TcError> {
        let ports: Vec<PortTc> = ports
            .iter()
            .map(|(dev, ifb)| PortTc {
                ifb: ifb.map(str::to_string),
                ..PortTc::new(dev)
            })
            .collect();
        let observed = self.observe_many(&ports)?;
        let mut ops = Vec::new();
        for (port, obs) in ports.iter().zip(&observed) {
            ops.extend(clear_ops(port, obs));
        }
        self.execute(&ops)
    }
}

/// What removing everything tc from `port` takes. Pure.
pub fn clear_ops(port: &PortTc, obs: &TcObserved) -> Vec<TcOp> {
    let mut ops = Vec::new();
    if let Some(d) = &obs.dev {
        if d.root().is_some_and(|q| !q.is_default()) {
            ops.push(TcOp::DeleteRoot {
                dev: port.dev.clone(),
            });
        }
        if d.ingress().is_some() {
            ops.push(TcOp::DeleteIngress {
                dev: port.dev.clone(),
            });
        }
    }
    if obs.ifb.as_ref().is_some_and(|i| ifb_is_ours(i, &port.dev)) {
        ops.push(TcOp::DeleteIfb {
            name: port.ifb_dev(),
        });
    }
    ops
}

/// [`Tc::observe_dev`] in the calling thread's namespace.
pub fn observe_dev(dev: &str) -> Result<Option<DevTc>, TcError> {
    Tc::open()?.observe_dev(dev)
}

/// [`Tc::observe`] in the calling thread's namespace.
pub fn observe(port: &PortTc) -> Result<TcObserved, TcError> {
    Tc::open()?.observe(port)
}

/// [`Tc::apply`] in the calling thread's namespace.
pub fn apply(port: &PortTc) -> Result<Vec<TcOp>, TcError> {
    Tc::open()?.apply(port)
}

/// [`Tc::clear`] in the calling thread's namespace.
pub fn clear(dev: &str, ifb: Option<&str>) -> Result<(), TcError> {
    Tc::open()?.clear(dev, ifb)
}

// ---- network shaping: a network's bandwidth and its VMs' floors, at its bridge ----
//
// Traffic the host routes into a nat/routed/isolated network leaves through the bridge
// device, so the bridge's root is where the network's total is capped and where a VM's floor
// can be guaranteed against its neighbours (libvirt's `floor` works the same way):
//
//   1: htb default 2
//   └─ 1:1   rate = ceil = bandwidth
//      ├─ 1:2   rate = what the floors leave (at least 1%), ceil = bandwidth  (everyone else)
//      └─ 1:C   rate = floor, ceil = bandwidth, one per VM with a floor (C >= 0x10)
//   each leaf class with a `C: pfifo`, and a u32 filter at prio C sending frames for the VM's
//   MAC to 1:C.
//
// One filter per floor means a lookup per floor per packet; floors are few (they are
// guarantees, which must add up to no more than the network's bandwidth).

/// The class of traffic to VMs without a floor.
pub const SHAPING_DEFAULT_CLASS: u16 = 2;
/// Floor classes (and their filters' priorities) are numbered from here.
pub const FLOOR_CLASS_MIN: u16 = 0x10;

/// The wanted shaping tree of a bridge.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shaping {
    pub dev: String,
    /// bits/s.
    pub bandwidth: u64,
    pub floors: Vec<FloorTc>,
}

/// One VM's guaranteed share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FloorTc {
    /// The VM's MAC: the destination of the frames the class carries.
    pub mac: [u8; 6],
    /// bits/s.
    pub rate: u64,
    pub class: u16,
}

impl Shaping {
    /// The default class's guaranteed rate: the bandwidth the floors leave, but never less
    /// than 1% of it, so VMs without a floor always get through.
    pub fn default_rate(&self) -> u64 {
        let floors: u64 = self.floors.iter().map(|f| f.rate).sum();
        self.bandwidth
            .saturating_sub(floors)
            .max(self.bandwidth / 100)
            .max(8)
    }

    /// Every class with its parent and parameters, the root's child first.
    fn classes(&self, clock: &Psched) -> Result<Vec<(u16, u32, HtbParams)>, TcError> {
        let class = |rate: u64| Rate {
            bits_per_sec: rate,
            ceil_bits_per_sec: Some(self.bandwidth.max(rate)),
            burst_bytes: None,
            cburst_bytes: None,
        };
        let mut out = vec![
            (1, TC_H_ROOT, Rate::bits(self.bandwidth).htb_params(clock)?),
            (
                SHAPING_DEFAULT_CLASS,
                HTB_CLASS,
                class(self.default_rate()).htb_params(clock)?,
            ),
        ];
        for f in &self.floors {
            if f.class < FLOOR_CLASS_MIN {
                return Err(TcError::Invalid {
                    what: format!("floor class 1:{:x} of {}", f.class, self.dev),
                    reason: format!("floor classes start at 1:{FLOOR_CLASS_MIN:x}"),
                });
            }
            out.push((f.class, HTB_CLASS, class(f.rate).htb_params(clock)?));
        }
        Ok(out)
    }
}

fn class_handle(class: u16) -> u32 {
    HTB_HANDLE | u32::from(class)
}

/// `match ether dst MAC` as iproute2 packs it: offsets relative to the network header, kept
/// 4-byte aligned (-16: two bytes before the Ethernet header and the MAC's first two; -12:
/// the other four).
fn dst_mac_keys(mac: &[u8; 6]) -> [U32Key; 2] {
    [
        U32Key {
            mask: 0x0000_ffff,
            val: u32::from_be_bytes([0, 0, mac[0], mac[1]]),
            off: -16,
            offmask: 0,
        },
        U32Key {
            mask: 0xffff_ffff,
            val: u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
            off: -12,
            offmask: 0,
        },
    ]
}

/// The MAC a classifier's keys match, if they are exactly [`dst_mac_keys`].
fn keys_dst_mac(keys: &[U32Key]) -> Option<[u8; 6]> {
    let [a, b] = keys else { return None };
    let (x, y) = (a.val.to_be_bytes(), b.val.to_be_bytes());
    let mac = [x[2], x[3], y[0], y[1], y[2], y[3]];
    (dst_mac_keys(&mac) == [*a, *b]).then_some(mac)
}

/// Whether `dev`'s root is a shaping tree (whatever is in it).
fn is_shaping_root(dev: &DevTc) -> bool {
    dev.root().is_some_and(|q| {
        q.kind == "htb"
            && q.handle == HTB_HANDLE
            && matches!(q.options, QdiscOptions::Htb { r2q, defcls, .. }
                if r2q == HTB_R2Q && defcls == u32::from(SHAPING_DEFAULT_CLASS))
    })
}

/// The classifier node of the filter at `prio` under 1:, if that priority holds exactly one.
fn classifier_at(dev: &DevTc, prio: u16) -> Option<&U32Node> {
    let mut nodes = dev.entries_at(HTB_HANDLE, prio).filter_map(|f| {
        f.u32
            .as_ref()
            .filter(|_| f.kind == "u32" && f.protocol == ETH_P_ALL)
    });
    let node = nodes.next()?;
    nodes.next().is_none().then_some(node)
}

/// The shaping `dev` carries, read back from its tree: `None` when its root is not one.
/// Floors whose class or filter is missing are left out; [`plan_shaping`] of the result
/// against `dev` is empty exactly when the tree is intact.
pub fn read_shaping(dev: &DevTc) -> Option<Shaping> {
    if !is_shaping_root(dev) {
        return None;
    }
    let class = |c: u16| {
        dev.classes
            .iter()
            .find(|k| k.handle == class_handle(c) && k.kind == "htb")
            .and_then(|k| k.htb)
    };
    let bandwidth = class(1).map_or(0, |p| p.ceil * 8);
    let prios: BTreeSet<u16> = dev
        .filters
        .iter()
        .filter(|f| f.parent == HTB_HANDLE)
        .map(|f| f.prio)
        .collect();
    let mut floors = Vec::new();
    for prio in prios {
        let Some(node) = classifier_at(dev, prio) else {
            continue;
        };
        let (Some(mac), Some(classid)) = (keys_dst_mac(&node.keys), node.classid) else {
            continue;
        };
        let c = (classid & 0xffff) as u16;
        if classid >> 16 != HTB_HANDLE >> 16 || c != prio {
            continue;
        }
        if let Some(p) = class(c) {
            floors.push(FloorTc {
                mac,
                rate: p.rate * 8,
                class: c,
            });
        }
    }
    Some(Shaping {
        dev: dev.name.clone(),
        bandwidth,
        floors,
    })
}

/// The ops that give `dev` the tree `want` (none: no shaping), changing only what differs:
/// adding a VM's floor adds its class, leaf and filter and retunes the default class. Pure.
pub fn plan_shaping(
    want: Option<&Shaping>,
    dev: &DevTc,
    clock: &Psched,
) -> Result<Vec<TcOp>, TcError> {
    let name = dev.name.clone();
    let root = dev.root().filter(|q| !q.is_default());
    let mut ops = Vec::new();
    let Some(want) = want else {
        if is_shaping_root(dev) {
            ops.push(TcOp::DeleteRoot { dev: name });
        }
        return Ok(ops);
    };
    let classes = want.classes(clock)?;
    let filters: BTreeMap<u16, [u8; 6]> = want.floors.iter().map(|f| (f.class, f.mac)).collect();
    if filters.len() != want.floors.len() {
        return Err(TcError::Invalid {
            what: format!("shaping of {name}"),
            reason: "two floors share a class".into(),
        });
    }
    let build = |ops: &mut Vec<TcOp>| {
        ops.push(TcOp::AddShapingRoot { dev: name.clone() });
        for (class, parent, params) in &classes {
            ops.push(TcOp::SetClass {
                dev: name.clone(),
                class: *class,
                parent: *parent,
                params: *params,
            });
        }
        for (class, _, _) in classes.iter().skip(1) {
            ops.push(TcOp::SetClassLeaf {
                dev: name.clone(),
                class: *class,
            });
        }
        for (class, mac) in &filters {
            ops.push(TcOp::AddClassifier {
                dev: name.clone(),
                prio: *class,
                dst_mac: *mac,
                class: *class,
            });
        }
    };
    if !is_shaping_root(dev) {
        if root.is_some() {
            ops.push(TcOp::DeleteRoot { dev: name.clone() });
        }
        build(&mut ops);
        return Ok(ops);
    }
    // Filters: at 1: only our classifiers, one per floor; none anywhere else in the tree.
    let mut stray: BTreeSet<(u32, u16)> = dev
        .filters
        .iter()
        .filter(|f| f.parent >> 16 == HTB_HANDLE >> 16)
        .map(|f| (f.parent, f.prio))
        .filter(|(parent, prio)| {
            *parent != HTB_HANDLE
                || !filters.get(prio).is_some_and(|mac| {
                    classifier_at(dev, *prio).is_some_and(|n| {
                        keys_dst_mac(&n.keys) == Some(*mac)
                            && n.classid == Some(class_handle(*prio))
                            && n.sel_rest == [0; 13]
                    })
                })
        })
        .collect();
    // Classes: a class under the wrong parent cannot move; it is deleted and made again.
    let wanted: BTreeMap<u16, (u32, HtbParams)> =
        classes.iter().map(|(c, p, h)| (*c, (*p, *h))).collect();
    let mut delete_classes = Vec::new();
    let mut set_classes = Vec::new();
    for c in &dev.classes {
        if c.handle >> 16 != HTB_HANDLE >> 16 {
            continue;
        }
        let minor = (c.handle & 0xffff) as u16;
        match wanted.get(&minor) {
            Some((parent, _)) if *parent == c.parent && c.kind == "htb" => {}
            _ if minor == 1 => {
                // The top class is wrong: rebuild the whole tree.
                ops.push(TcOp::DeleteRoot { dev: name.clone() });
                build(&mut ops);
                return Ok(ops);
            }
            _ => delete_classes.push(minor),
        }
    }
    // A class with filters pointing at it cannot be deleted: those filters go first.
    for f in dev
        .filters
        .iter()
        .filter(|f| f.parent >> 16 == HTB_HANDLE >> 16)
    {
        let target = f.u32.as_ref().and_then(|n| n.classid);
        if target.is_some_and(|t| delete_classes.iter().any(|c| class_handle(*c) == t)) {
            stray.insert((f.parent, f.prio));
        }
    }
    for (parent, prio) in &stray {
        ops.push(TcOp::DeleteFilter {
            dev: name.clone(),
            parent: *parent,
            prio: *prio,
        });
    }
    for c in &delete_classes {
        ops.push(TcOp::DeleteClass {
            dev: name.clone(),
            class: *c,
        });
    }
    for (class, parent, params) in &classes {
        let live = dev
            .classes
            .iter()
            .find(|k| k.handle == class_handle(*class) && !delete_classes.contains(class));
        if live.is_none_or(|k| k.htb.as_ref() != Some(params)) {
            set_classes.push(TcOp::SetClass {
                dev: name.clone(),
                class: *class,
                parent: *parent,
                params: *params,
            });
        }
    }
    ops.extend(set_classes);
    for (class, _, _) in classes.iter().skip(1) {
        let leaf_ok = !delete_classes.contains(class)
            && dev.qdiscs.iter().any(|q| {
                q.parent == class_handle(*class)
                    && q.handle == u32::from(*class) << 16
                    && q.kind == "pfifo"
                    && q.options == QdiscOptions::Fifo { limit: LEAF_LIMIT }
            });
        if !leaf_ok {
            ops.push(TcOp::SetClassLeaf {
                dev: name.clone(),
                class: *class,
            });
        }
    }
    for (class, mac) in &filters {
        let present = !stray.contains(&(HTB_HANDLE, *class))
            && dev.entries_at(HTB_HANDLE, *class).next().is_some();
        if !present {
            ops.push(TcOp::AddClassifier {
                dev: name.clone(),
                prio: *class,
                dst_mac: *mac,
                class: *class,
            });
        }
    }
    Ok(ops)
}

impl Tc {
    /// The tc state of each named device that exists.
    pub fn observe_devs(&mut self, names: &[&str]) -> Result<Vec<DevTc>, TcError> {
        if names.len() <= 4 {
            return self.observe_devs_few(names);
        }
        let mut qdiscs = self.all_qdiscs()?;
        let mut out = Vec::new();
        for name in names {
            let Some(mut dev) = self.link(name)? else {
                continue;
            };
            dev.qdiscs = qdiscs.remove(&dev.ifindex).unwrap_or_default();
            self.fill_dev(&mut dev)?;
            out.push(dev);
        }
        Ok(out)
    }

    /// Give `dev` the shaping `want` (none: remove it). Returns the ops it ran.
    pub fn apply_shaping(
        &mut self,
        dev: &str,
        want: Option<&Shaping>,
    ) -> Result<Vec<TcOp>, TcError> {
        let Some(live) = self.observe_dev(dev)? else {
            if want.is_none() {
                return Ok(Vec::new());
            }
            return Err(TcError::NoDevice {
                what: "bridge",
                name: dev.to_string(),
            });
        };
        let ops = plan_shaping(want, &live, &self.clock)?;
        self.execute(&ops)?;
        Ok(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
