//! What kvmnet asks of a port, what the kernel has on a device, and the ops between them.

use std::collections::BTreeMap;
use std::fmt;

use super::rate::{HtbParams, Psched, Rate};
use super::{
    PARENT_EGRESS, PARENT_INGRESS, TC_ACT_STOLEN, TC_ACT_UNSPEC, TC_H_INGRESS, TC_H_ROOT,
    TCA_EGRESS_MIRROR, TCA_EGRESS_REDIR,
};
use crate::backend::rtnl::IFNAMSIZ;

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

pub(super) fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
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
    pub(super) fn entries_at(&self, parent: u32, prio: u16) -> impl Iterator<Item = &Filter> {
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

/// Which way a mirred action sends packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirredKind {
    /// `mirred egress redirect` (control `stolen`).
    Redirect,
    /// `mirred egress mirror` (control `continue`, so later filters still run).
    Mirror,
}

impl MirredKind {
    pub(super) fn eaction(self) -> i32 {
        match self {
            MirredKind::Redirect => TCA_EGRESS_REDIR,
            MirredKind::Mirror => TCA_EGRESS_MIRROR,
        }
    }
    pub(super) fn control(self) -> i32 {
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

pub(super) fn parent_name(p: u32) -> String {
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

impl TcOp {
    pub(super) fn is_link_op(&self) -> bool {
        matches!(
            self,
            TcOp::CreateIfb { .. } | TcOp::SetUp { .. } | TcOp::DeleteIfb { .. }
        )
    }
    /// The device a tc op acts on.
    pub(super) fn dev(&self) -> &str {
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
