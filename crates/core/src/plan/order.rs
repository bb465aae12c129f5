//! The order steps run in, and what goes with an object made again: both as data.

use std::borrow::Cow;
use std::collections::BTreeSet;

use super::{Kind, Plan, Step};
use super::{
    addr, addr6, bond, bridge, nb, netns, nft, port, route, settings, shaping, vlan, vxlan,
};
use crate::nft::NftPlan;
use crate::state::HostState;

/// What the phases of one plan work from.
pub(super) struct Cx<'a> {
    pub want: &'a HostState,
    /// The host as found, then as the phases before left it: a bond made again is taken
    /// down early (see [`CASCADES`]), and the rest of the plan sees no bond there.
    pub have: Cow<'a, HostState>,
    /// The tables' part of the plan, worked out alongside (taken by its phase).
    pub nft: Option<Box<dyn FnOnce() -> NftPlan + 'a>>,
    /// The bonds of another mode, taken down and made again.
    pub replaced_bonds: BTreeSet<String>,
}

/// One stretch of a plan: the changes of one sort to one or a few kinds of object.
pub struct Phase {
    /// What it changes, and why it comes where it does.
    pub what: &'static str,
    /// The kinds of step it makes.
    pub kinds: &'static [Kind],
    run: fn(&mut Cx<'_>, &mut Vec<Step>),
}

const fn phase(
    what: &'static str,
    kinds: &'static [Kind],
    run: fn(&mut Cx<'_>, &mut Vec<Step>),
) -> Phase {
    Phase { what, kinds, run }
}

use Kind as K;

/// The order of a plan, first to last.
pub const ORDER: &[Phase] = &[
    phase(
        "OVN Northbound rows (one transaction), before this chassis's ports bind to them",
        &[K::Nb],
        nb::changes,
    ),
    phase("namespaces made", &[K::Netns], netns::create),
    phase(
        "NIC MTUs (a bridge or VXLAN device on top was planned with the new MTU)",
        &[K::Mtu],
        settings::mtus,
    ),
    phase(
        "bonds of another mode taken down, with what sits on them (see CASCADES)",
        &[
            K::Vlan,
            K::Fdb,
            K::Vxlan,
            K::Route,
            K::Addr,
            K::Master,
            K::Bond,
            K::BondMember,
        ],
        bond::take_down_replaced,
    ),
    phase(
        "new bonds, before anything that uses them (a bridge enslaving one)",
        &[K::Bond],
        bond::create,
    ),
    phase(
        "bridges made or changed",
        &[K::Bridge],
        bridge::create_update,
    ),
    phase(
        "uplinks enslaved or released",
        &[K::Master],
        settings::masters,
    ),
    phase(
        "old routes out, before addresses move",
        &[K::Route],
        route::delete,
    ),
    phase("old addresses out", &[K::Addr], addr::delete),
    phase("old IPv6 addresses out", &[K::Addr6], addr6::delete),
    phase(
        "primaries cleared of bonds that go, before they lose their members",
        &[K::Bond],
        bond::clear_primaries,
    ),
    phase(
        "members join or leave bonds, once addresses and routes are off them",
        &[K::BondMember],
        bond::members,
    ),
    phase("bonds changed (a primary set)", &[K::Bond], bond::update),
    phase("new addresses", &[K::Addr], addr::add),
    phase("new IPv6 addresses", &[K::Addr6], addr6::add),
    phase("new routes, once addresses are in", &[K::Route], route::add),
    phase(
        "the firewall, before any port comes up",
        &[K::NftTable, K::Nft],
        nft::changes,
    ),
    phase(
        "VLAN sub-interfaces out, before the ports and bridges they hang on",
        &[K::Vlan],
        vlan::delete,
    ),
    phase(
        "ports: gone ones out first (a new port may take the name their far end had), \
         then new and remade ones, then changed ones (a change may mirror to a new port)",
        &[K::Port],
        port::changes,
    ),
    phase(
        "this host as an OVN chassis, once its VM ports exist (and before they go)",
        &[K::Chassis],
        nb::chassis,
    ),
    phase(
        "vlan networks' uplinks brought up",
        &[K::Up],
        settings::raise,
    ),
    phase(
        "uplinks no network needs given back, down",
        &[K::Up],
        settings::lower,
    ),
    phase(
        "VLAN sub-interfaces made, after their lower devices and bridges",
        &[K::Vlan],
        vlan::create,
    ),
    phase(
        "VXLAN devices and their flood entries, after the bridges they join",
        &[K::Vxlan, K::Fdb],
        vxlan::changes,
    ),
    phase(
        "shaping, once the bridges exist and before one goes",
        &[K::Shaping],
        shaping::changes,
    ),
    phase(
        "ethtool settings, once every device exists",
        &[K::Ethtool],
        settings::ethtool,
    ),
    phase(
        "sysctls (forwarding), once the firewall is in place",
        &[K::Sysctl],
        settings::sysctls,
    ),
    phase("bridges removed", &[K::Bridge], bridge::delete),
    phase("bonds removed", &[K::Bond], bond::delete),
    phase("namespaces removed", &[K::Netns], netns::delete),
];

/// Objects that sit on another of kind `under` and go when it is made again (the kernel
/// takes them with it, or they hold on to it).
pub struct Cascade {
    pub under: Kind,
    /// What sits on it, in the order it comes off.
    pub over: &'static [Kind],
}

/// What goes with an object made again. The plan takes it off first, explicitly, and makes
/// it again after, so that every step has an exact inverse.
pub const CASCADES: &[Cascade] = &[
    // A bond of another mode: everything comes off it, then it goes; the rest of the plan
    // then sees no bond and builds it (and what sits on it) like a new one.
    Cascade {
        under: K::Bond,
        over: &[
            K::Vlan,
            K::Vxlan,
            K::Route,
            K::Addr,
            K::Master,
            K::BondMember,
        ],
    },
    // A VXLAN device removed: its flood entries first.
    Cascade {
        under: K::Vxlan,
        over: &[K::Fdb],
    },
    // A port removed or made again: the kernel takes the VLAN sub-interfaces on it (a
    // trunk's) with it.
    Cascade {
        under: K::Port,
        over: &[K::Vlan],
    },
];

/// The kinds that go with an object of kind `under` made again.
pub(super) fn over(under: Kind) -> impl Iterator<Item = Kind> {
    CASCADES
        .iter()
        .filter(move |c| c.under == under)
        .flat_map(|c| c.over.iter().copied())
}

/// Takes everything that sits on `name` (of kind `under`) off `have`, with the steps that do
/// it.
pub(super) fn take_off_all(under: Kind, have: &mut HostState, name: &str, steps: &mut Vec<Step>) {
    for k in over(under) {
        if let Some(take_off) = take_off(k) {
            take_off(have, name, steps);
        }
    }
}

type TakeOff = fn(&mut HostState, &str, &mut Vec<Step>);

/// How objects of kind `k` come off what they sit on, for the kinds cascades take early.
pub(super) fn take_off(k: Kind) -> Option<TakeOff> {
    Some(match k {
        K::Vlan => vlan::take_off,
        K::Vxlan => vxlan::take_off,
        K::Fdb => vxlan::take_off_fdb,
        K::Route => route::take_off,
        K::Addr => addr::take_off,
        K::Master => settings::take_off_master,
        K::BondMember => bond::take_off_members,
        _ => return None,
    })
}

impl Cx<'_> {
    /// The names of the objects this plan removes or makes again that objects of kind `k`
    /// sit on (see [`CASCADES`]).
    pub fn remade_under(&self, k: Kind) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for c in CASCADES.iter().filter(|c| c.over.contains(&k)) {
            match c.under {
                K::Port => names.extend(port::remade(self)),
                K::Bond => names.extend(self.replaced_bonds.iter().cloned()),
                K::Vxlan => names.extend(vxlan::remade(self)),
                _ => {}
            }
        }
        names
    }
}

pub(super) fn diff_with(want: &HostState, have: &HostState, nft: impl FnOnce() -> NftPlan) -> Plan {
    let mut cx = Cx {
        want,
        have: Cow::Borrowed(have),
        nft: Some(Box::new(nft)),
        replaced_bonds: BTreeSet::new(),
    };
    let mut steps = Vec::new();
    for phase in ORDER {
        let start = steps.len();
        (phase.run)(&mut cx, &mut steps);
        if cfg!(test) {
            for s in &steps[start..] {
                assert!(
                    phase.kinds.contains(&s.tag()),
                    "phase {:?} made {s}",
                    phase.what
                );
            }
        }
    }
    Plan { steps }
}
