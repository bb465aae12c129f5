//! Ports: the host ends of VM NICs (taps, veths, macvtaps).

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Object, Step};
use crate::state::{PortKind, PortLink, ShapeState};

impl Object for PortLink {
    fn kind(&self) -> &'static str {
        self.kind_name()
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("vm".into(), json!(self.vm));
        o.insert("network".into(), json!(self.network));
        o.insert("bridge".into(), json!(self.master));
        o.insert("mac".into(), json!(self.mac.to_string()));
        o.insert("mtu".into(), json!(self.mtu));
        match &self.kind {
            PortKind::Tap { owner, multi_queue } => {
                o.insert("owner".into(), json!(owner));
                o.insert("multi_queue".into(), json!(multi_queue));
            }
            PortKind::Macvtap {
                uplink,
                mode,
                owner,
            } => {
                o.insert("uplink".into(), json!(uplink));
                o.insert("direct_mode".into(), json!(mode.as_str()));
                o.insert("owner".into(), json!(owner));
            }
            PortKind::Veth { netns, guest } => {
                o.insert("netns".into(), json!(netns));
                o.insert("guest_mac".into(), json!(guest.mac.to_string()));
                o.insert(
                    "guest_ipv4".into(),
                    json!(guest.addr.map(|a| a.to_string())),
                );
                o.insert(
                    "guest_gateway".into(),
                    json!(guest.gateway.map(|a| a.to_string())),
                );
                // Only where there is IPv6, so an IPv4-only port reads as it always did.
                if let Some(a) = guest.addr6 {
                    o.insert("guest_ipv6".into(), json!(a.to_string()));
                }
                if let Some(a) = guest.gateway6 {
                    o.insert("guest_gateway6".into(), json!(a.to_string()));
                }
            }
        }
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let PortKind::Macvtap {
            uplink,
            mode,
            owner,
        } = &self.kind
        {
            write!(
                f,
                " (vm {}, on {uplink} mode {}, mac {}, mtu {}",
                self.vm,
                mode.as_str(),
                self.mac,
                self.mtu
            )?;
            if let Some(o) = owner {
                write!(f, ", owner uid {o}")?;
            }
            return write!(f, ")");
        }
        write!(
            f,
            " (vm {}, bridge {}, mtu {}",
            self.vm,
            self.master.as_deref().unwrap_or("-"),
            self.mtu
        )?;
        match &self.kind {
            PortKind::Tap { owner, multi_queue } => {
                if let Some(o) = owner {
                    write!(f, ", owner uid {o}")?;
                }
                if *multi_queue {
                    write!(f, ", multiqueue")?;
                }
            }
            PortKind::Macvtap { .. } => {}
            PortKind::Veth { netns, guest } => {
                write!(f, ", guest {netns}/{} mac {}", guest.name, guest.mac)?;
                if let Some(a) = guest.addr {
                    write!(f, " ipv4 {a}")?;
                }
                if let Some(a) = guest.addr6 {
                    write!(f, " ipv6 {a}")?;
                }
            }
        }
        write!(f, ")")
    }
    fn changes(a: &Self, b: &Self) -> Vec<(&'static str, String, String)> {
        vec![
            ("mac", a.mac.to_string(), b.mac.to_string()),
            ("mtu", a.mtu.to_string(), b.mtu.to_string()),
            ("up", a.up.to_string(), b.up.to_string()),
            ("isolated", a.isolated.to_string(), b.isolated.to_string()),
            ("qos", qos_word(a), qos_word(b)),
            (
                "mirror",
                a.mirror.clone().unwrap_or("-".into()),
                b.mirror.clone().unwrap_or("-".into()),
            ),
            (
                "bridge",
                a.master.clone().unwrap_or_default(),
                b.master.clone().unwrap_or_default(),
            ),
            ("vm", a.vm.clone(), b.vm.clone()),
            ("network", a.network.clone(), b.network.clone()),
            ("guest", guest_word(a), guest_word(b)),
            ("device owner", owner_word(a), owner_word(b)),
        ]
    }
}

fn qos_word(p: &PortLink) -> String {
    let s = |q: &Option<ShapeState>| {
        q.map_or("-".to_string(), |q| {
            let mut w = format!("{}bit", q.rate);
            if q.ceil > 0 {
                w.push_str(&format!(" ceil {}bit", q.ceil));
            }
            if q.burst > 0 {
                w.push_str(&format!(" burst {}b", q.burst));
            }
            w
        })
    };
    let mut w = format!("in {} out {}", s(&p.qos_in), s(&p.qos_out));
    if !p.tc_ok {
        w.push_str(" (live tc differs)");
    }
    w
}

fn guest_word(p: &PortLink) -> String {
    match &p.kind {
        PortKind::Veth { guest, .. } => {
            let mut w = format!(
                "mac {} mtu {} up {} ipv4 {} gateway {}",
                guest.mac,
                guest.mtu,
                guest.up,
                guest.addr.map_or("-".into(), |x| x.to_string()),
                guest.gateway.map_or("-".into(), |x| x.to_string())
            );
            // Only where there is IPv6, so an IPv4-only port reads as it always did.
            if guest.addr6.is_some() || guest.gateway6.is_some() {
                w.push_str(&format!(
                    " ipv6 {} gateway6 {}",
                    guest.addr6.map_or("-".into(), |x| x.to_string()),
                    guest.gateway6.map_or("-".into(), |x| x.to_string())
                ));
            }
            w
        }
        PortKind::Tap { .. } | PortKind::Macvtap { .. } => String::new(),
    }
}

fn owner_word(p: &PortLink) -> String {
    match &p.kind {
        PortKind::Macvtap { owner, .. } => owner.map_or("-".into(), |o| format!("uid {o}")),
        _ => String::new(),
    }
}

fn guest_missing(p: &PortLink) -> bool {
    matches!(&p.kind, PortKind::Veth { guest, .. } if guest.mtu == 0)
}

/// A port found that cannot become the one wanted in place.
fn must_remake(have: &PortLink, want: &PortLink) -> bool {
    have.needs_replace(want) || guest_missing(have)
}

/// The ports this plan removes, for good or to make again.
pub(super) fn remade(cx: &Cx<'_>) -> BTreeSet<String> {
    let (want, have) = (&cx.want.ports, &cx.have.ports);
    have.iter()
        .filter(|(name, h)| want.get(*name).is_none_or(|w| must_remake(h, w)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// The ports this plan makes, new or again: they start from their defaults.
pub(super) fn made(cx: &Cx<'_>) -> BTreeSet<String> {
    let have = &cx.have.ports;
    cx.want
        .ports
        .iter()
        .filter(|(name, w)| have.get(*name).is_none_or(|h| must_remake(h, w)))
        .map(|(_, w)| w.name.clone())
        .collect()
}

/// Ports that go away leave first, so a new port may take the name their far end had;
/// changed ports come after the new ones: a change may mirror to a port made here.
pub(super) fn changes(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let (want, have) = (&cx.want.ports, &cx.have.ports);
    for (name, p) in have {
        if !want.contains_key(name) {
            steps.push(Step::Port(Change::Delete(p.clone())));
        }
    }
    let mut updates = Vec::new();
    for (name, p) in want {
        match have.get(name) {
            None => steps.push(Step::Port(Change::Create(p.clone()))),
            Some(h) if must_remake(h, p) => {
                steps.push(Step::Port(Change::Delete(h.clone())));
                steps.push(Step::Port(Change::Create(p.clone())));
            }
            Some(h) if h != p => updates.push(Step::Port(Change::Update {
                from: h.clone(),
                to: p.clone(),
            })),
            _ => {}
        }
    }
    steps.extend(updates);
}
