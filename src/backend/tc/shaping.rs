//! Network shaping: a network's bandwidth and its VMs' floors, at its bridge.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{DevTc, QdiscOptions, TcOp, U32Key, U32Node};
use super::rate::{HtbParams, Psched, Rate};
use super::{ETH_P_ALL, HTB_CLASS, HTB_HANDLE, HTB_R2Q, LEAF_LIMIT, TC_H_ROOT, TcError};

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
pub use crate::state::FLOOR_CLASS_MIN;

impl Shaping {
    /// The tree to build on `dev` for the shaping kvmnet wants there.
    pub fn of(dev: &str, want: &crate::state::Shaping) -> Shaping {
        Shaping {
            dev: dev.to_string(),
            bandwidth: want.bandwidth,
            floors: want
                .floors
                .iter()
                .map(|(mac, f)| FloorTc {
                    mac: mac.0,
                    rate: f.rate,
                    class: f.class,
                })
                .collect(),
        }
    }

    /// The shaping this live tree holds, as kvmnet's state records it.
    pub fn to_state(&self, intact: bool) -> crate::state::Shaping {
        crate::state::Shaping {
            bandwidth: self.bandwidth,
            floors: self
                .floors
                .iter()
                .map(|f| {
                    (
                        crate::types::Mac(f.mac),
                        crate::state::FloorClass {
                            rate: f.rate,
                            class: f.class,
                        },
                    )
                })
                .collect(),
            intact,
        }
    }
}

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

pub(super) fn class_handle(class: u16) -> u32 {
    HTB_HANDLE | u32::from(class)
}

/// `match ether dst MAC` as iproute2 packs it: offsets relative to the network header, kept
/// 4-byte aligned (-16: two bytes before the Ethernet header and the MAC's first two; -12:
/// the other four).
pub(super) fn dst_mac_keys(mac: &[u8; 6]) -> [U32Key; 2] {
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
pub(super) fn keys_dst_mac(keys: &[U32Key]) -> Option<[u8; 6]> {
    let [a, b] = keys else { return None };
    let (x, y) = (a.val.to_be_bytes(), b.val.to_be_bytes());
    let mac = [x[2], x[3], y[0], y[1], y[2], y[3]];
    (dst_mac_keys(&mac) == [*a, *b]).then_some(mac)
}

/// Whether `dev`'s root is a shaping tree (whatever is in it).
pub(super) fn is_shaping_root(dev: &DevTc) -> bool {
    dev.root().is_some_and(|q| {
        q.kind == "htb"
            && q.handle == HTB_HANDLE
            && matches!(q.options, QdiscOptions::Htb { r2q, defcls, .. }
                if r2q == HTB_R2Q && defcls == u32::from(SHAPING_DEFAULT_CLASS))
    })
}

/// The classifier node of the filter at `prio` under 1:, if that priority holds exactly one.
pub(super) fn classifier_at(dev: &DevTc, prio: u16) -> Option<&U32Node> {
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

/// A bridge's wanted shaping tree.
struct Tree<'a> {
    dev: &'a str,
    /// (class, parent, parameters), the root's child first.
    classes: Vec<(u16, u32, HtbParams)>,
    /// The classifiers: class (and priority) -> the MAC whose frames it takes.
    filters: BTreeMap<u16, [u8; 6]>,
}

impl Tree<'_> {
    /// The ops that make the whole tree on a device without one.
    fn build(&self, ops: &mut Vec<TcOp>) {
        let dev = || self.dev.to_string();
        ops.push(TcOp::AddShapingRoot { dev: dev() });
        for (class, parent, params) in &self.classes {
            ops.push(TcOp::SetClass {
                dev: dev(),
                class: *class,
                parent: *parent,
                params: *params,
            });
        }
        for (class, _, _) in self.classes.iter().skip(1) {
            ops.push(TcOp::SetClassLeaf {
                dev: dev(),
                class: *class,
            });
        }
        for (class, mac) in &self.filters {
            ops.push(TcOp::AddClassifier {
                dev: dev(),
                prio: *class,
                dst_mac: *mac,
                class: *class,
            });
        }
    }
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
    let tree = Tree {
        dev: &name,
        classes: want.classes(clock)?,
        filters: want.floors.iter().map(|f| (f.class, f.mac)).collect(),
    };
    if tree.filters.len() != want.floors.len() {
        return Err(TcError::Invalid {
            what: format!("shaping of {name}"),
            reason: "two floors share a class".into(),
        });
    }
    if !is_shaping_root(dev) {
        if root.is_some() {
            ops.push(TcOp::DeleteRoot { dev: name.clone() });
        }
        tree.build(&mut ops);
        return Ok(ops);
    }
    Ok(retune(dev, &tree))
}

/// Filters in the tree that are not wanted: at 1: only our classifiers, one per floor; none
/// anywhere else.
fn stray_filters(dev: &DevTc, filters: &BTreeMap<u16, [u8; 6]>) -> BTreeSet<(u32, u16)> {
    dev.filters
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
        .collect()
}

/// Classes of the tree to delete: unwanted, or under the wrong parent (a class cannot
/// move; it is deleted and made again). None when the top class is wrong: then the whole
/// tree is rebuilt.
fn classes_to_delete(dev: &DevTc, classes: &[(u16, u32, HtbParams)]) -> Option<Vec<u16>> {
    let wanted: BTreeMap<u16, u32> = classes.iter().map(|(c, p, _)| (*c, *p)).collect();
    let mut delete = Vec::new();
    for c in &dev.classes {
        if c.handle >> 16 != HTB_HANDLE >> 16 {
            continue;
        }
        let minor = (c.handle & 0xffff) as u16;
        match wanted.get(&minor) {
            Some(parent) if *parent == c.parent && c.kind == "htb" => {}
            _ if minor == 1 => return None,
            _ => delete.push(minor),
        }
    }
    Some(delete)
}

/// The ops that bring the shaping tree on `dev` to `tree`, changing only what differs.
fn retune(dev: &DevTc, tree: &Tree<'_>) -> Vec<TcOp> {
    let name = || tree.dev.to_string();
    let mut ops = Vec::new();
    let mut stray = stray_filters(dev, &tree.filters);
    let Some(delete_classes) = classes_to_delete(dev, &tree.classes) else {
        ops.push(TcOp::DeleteRoot { dev: name() });
        tree.build(&mut ops);
        return ops;
    };
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
            dev: name(),
            parent: *parent,
            prio: *prio,
        });
    }
    for c in &delete_classes {
        ops.push(TcOp::DeleteClass {
            dev: name(),
            class: *c,
        });
    }
    for (class, parent, params) in &tree.classes {
        let live = dev
            .classes
            .iter()
            .find(|k| k.handle == class_handle(*class) && !delete_classes.contains(class));
        if live.is_none_or(|k| k.htb.as_ref() != Some(params)) {
            ops.push(TcOp::SetClass {
                dev: name(),
                class: *class,
                parent: *parent,
                params: *params,
            });
        }
    }
    for (class, _, _) in tree.classes.iter().skip(1) {
        let leaf_ok = !delete_classes.contains(class)
            && dev.qdiscs.iter().any(|q| {
                q.parent == class_handle(*class)
                    && q.handle == u32::from(*class) << 16
                    && q.kind == "pfifo"
                    && q.options == QdiscOptions::Fifo { limit: LEAF_LIMIT }
            });
        if !leaf_ok {
            ops.push(TcOp::SetClassLeaf {
                dev: tree.dev.to_string(),
                class: *class,
            });
        }
    }
    for (class, mac) in &tree.filters {
        let present = !stray.contains(&(HTB_HANDLE, *class))
            && dev.entries_at(HTB_HANDLE, *class).next().is_some();
        if !present {
            ops.push(TcOp::AddClassifier {
                dev: tree.dev.to_string(),
                prio: *class,
                dst_mac: *mac,
                class: *class,
            });
        }
    }
    ops
}
