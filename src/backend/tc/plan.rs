//! A port's QoS and mirrors: the ops that make what the kernel has match what is asked.
//! Pure.

use std::collections::BTreeSet;

use super::model::{DevTc, Mirred, MirredKind, PortTc, QdiscOptions, TcObserved, TcOp, ifb_alias};
use super::rate::HtbParams;
use super::{
    CLSACT_HANDLE, ETH_P_ALL, HTB_CLASS, HTB_HANDLE, HTB_R2Q, LEAF_HANDLE, LEAF_LIMIT,
    PARENT_EGRESS, PARENT_INGRESS, PRIO_MIRROR_IN, PRIO_MIRROR_OUT, PRIO_REDIRECT, TC_H_INGRESS,
    TC_H_ROOT, TC_U32_TERMINAL, TcError,
};
use crate::backend::rtnl::IFNAMSIZ;

/// A filter the port needs.
pub(super) struct WantFilter {
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
    check_mirror(port, obs, &ifb)?;
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
        return Err(ifb_taken(port, &ifb, i));
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

/// A mirror target must exist and be neither the port nor its IFB.
fn check_mirror(port: &PortTc, obs: &TcObserved, ifb: &str) -> Result<(), TcError> {
    let Some(m) = &port.mirror_to else {
        return Ok(());
    };
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
    Ok(())
}

/// The port's IFB name is taken by a link that is not the port's IFB.
fn ifb_taken(port: &PortTc, ifb: &str, link: &DevTc) -> TcError {
    TcError::Conflict(match link.kind.as_deref() {
        Some("ifb") => format!(
            "IFB {ifb} belongs to another port ({})",
            link.alias.as_deref().unwrap_or_default()
        ),
        kind => format!(
            "{ifb}, the IFB name of port {}, is taken by a link of kind {}",
            port.dev,
            kind.unwrap_or("none")
        ),
    })
}

/// An IFB kvmnet may use and delete for `port`: an IFB that does not name another port in
/// its alias (one made by hand with the derived name counts as the port's).
pub(super) fn ifb_is_ours(link: &DevTc, port: &str) -> bool {
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
pub(super) fn root_ops(dev: &str, want: Option<&HtbParams>, obs: &DevTc, ops: &mut Vec<TcOp>) {
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
pub(super) fn clsact_ops(
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
pub(super) fn filter_ok(obs: &DevTc, w: &WantFilter, target: Option<u32>) -> bool {
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

pub(super) fn check_name(name: &str, what: &str) -> Result<(), TcError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ':', '\0', ' ']) {
        return Err(TcError::Invalid {
            what: format!("{what} '{name}'"),
            reason: "not a valid interface name (1 to 15 bytes, no '/', ':' or space)".into(),
        });
    }
    Ok(())
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
