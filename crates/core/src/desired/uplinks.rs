//! Host interfaces a network names as its uplink: what they are, and the bonds and NICs of
//! `host.uplinks` as kvmnet will leave them.

use super::*;

/// What a network's `uplink` (or `underlay`, or a later mode's parent interface) names.
pub enum HostLink<'a> {
    /// A host interface kvmnet does not own.
    Foreign(&'a LinkSnap),
    /// A bond of `host.uplinks`: kvmnet makes it before anything that uses it, so it may not
    /// exist yet; `desired` holds what it will be.
    DeclaredBond,
    /// Something kvmnet created for another purpose (a bridge, a port).
    Ours,
    Missing,
}

/// The one place that decides whether an interface named as an uplink is usable: a foreign
/// host interface, or a bond the spec declares (existing or not).
pub fn resolve_uplink<'a>(spec: &Spec, snap: &'a Snapshot, name: &str) -> HostLink<'a> {
    if spec.declared_bond(name).is_some() {
        return HostLink::DeclaredBond;
    }
    match snap.link(name) {
        None => HostLink::Missing,
        Some(l) if is_ours(l) => HostLink::Ours,
        Some(l) => HostLink::Foreign(l),
    }
}

pub(crate) fn push_new<T: PartialEq + Clone>(into: &mut Vec<T>, from: &[T]) {
    for x in from {
        if !into.contains(x) {
            into.push(x.clone());
        }
    }
}

/// A bond of `host.uplinks` and what it takes from its members: their addresses and routes
/// (as a bridge takes its uplink's), plus what it holds already and what was moved onto it
/// before and has since been deleted by hand.
pub(super) fn bond_state(
    spec: &Spec,
    snap: &Snapshot,
    u: &Uplink,
    st: &mut HostState,
    errors: &mut Vec<SpecError>,
) {
    let Some(b) = &u.bond else { return };
    let path = path_join("host.uplinks", &u.name);
    let before = errors.len();
    let existing = snap.link(&u.name);
    if let Some(l) = existing
        && !is_our_bond(l)
    {
        errors.push(conflict(
            spec,
            path.clone(),
            format!(
                "interface '{}' already exists and is not a bond managed by kvmnet; choose another bond name",
                u.name
            ),
        ));
    }
    let (mut addrs, mut routes) = if existing.is_some_and(is_our_bond) {
        bond_holds(snap, &u.name)
    } else {
        (Vec::new(), Vec::new())
    };
    for (i, m) in b.members.iter().enumerate() {
        let mpath = format!("{}[{i}]", path_join(&path, "members"));
        match snap.link(m) {
            None => errors.push(conflict(
                spec,
                mpath,
                format!("member '{m}' does not exist on this host"),
            )),
            Some(l) if is_ours(l) => errors.push(conflict(
                spec,
                mpath,
                format!("member '{m}' is a device kvmnet created; name a host interface"),
            )),
            // A former bridge-mode uplink of kvmnet's may move into a bond: it is released
            // from that bridge first.
            Some(l)
                if l.master.as_ref().is_some_and(|x| {
                    x != &u.name
                        && !snap
                            .link(x)
                            .is_some_and(|m| m.kind == "bridge" && is_ours(m))
                }) =>
            {
                errors.push(conflict(
                    spec,
                    mpath,
                    format!(
                        "member '{m}' is already enslaved to '{}'; release it first",
                        l.master.as_deref().unwrap_or_default()
                    ),
                ))
            }
            Some(_) => {
                push_new(&mut addrs, &addrs_of(snap, m));
                push_new(&mut routes, &movable_routes(&snap.routes, m));
                st.members.insert(
                    m.clone(),
                    MemberLink {
                        name: m.clone(),
                        bond: Some(u.name.clone()),
                    },
                );
                st.addrs.insert(m.clone(), Vec::new());
                st.routes.insert(m.clone(), Vec::new());
            }
        }
    }
    if errors.len() != before {
        return;
    }
    st.bonds.insert(u.name.clone(), bond_link(u, b));
    st.addrs.insert(u.name.clone(), addrs);
    st.routes.insert(u.name.clone(), routes);
}

/// What kvmnet's bond `name` holds already, and what was moved onto it before and has
/// since been deleted by hand: its addresses and its routes.
fn bond_holds(snap: &Snapshot, name: &str) -> (Vec<Addr>, Vec<Route>) {
    let mut addrs = addrs_of(snap, name);
    let mut routes = movable_routes(&snap.routes, name);
    if let Some(m) = snap.moved.get(name) {
        push_new(&mut addrs, &m.addrs);
        push_new(&mut routes, &m.routes);
    }
    (addrs, routes)
}

/// The bond `u` declares, with the kernel's defaults where it leaves a setting out.
fn bond_link(u: &Uplink, b: &crate::spec::Bond) -> BondLink {
    BondLink {
        name: u.name.clone(),
        mode: b.mode.as_str().to_string(),
        miimon: b.miimon.unwrap_or(MIIMON_DEFAULT),
        lacp_rate: if b.mode == BondMode::Lacp {
            b.lacp_rate.clone().unwrap_or_else(|| "slow".to_string())
        } else {
            String::new()
        },
        xmit_hash_policy: b
            .xmit_hash_policy
            .clone()
            .unwrap_or_else(|| "layer2".to_string()),
        min_links: b.min_links.unwrap_or(0),
        primary: b.primary.clone(),
        mtu: u.mtu.unwrap_or(DEFAULT_MTU),
        home: b.members[0].clone(),
        up: true,
    }
}

/// An existing NIC that `host.uplinks` only tunes.
pub(super) fn nic_state(
    spec: &Spec,
    snap: &Snapshot,
    u: &Uplink,
    st: &mut HostState,
    errors: &mut Vec<SpecError>,
) {
    if u.bond.is_some() {
        return;
    }
    let path = path_join("host.uplinks", &u.name);
    match snap.link(&u.name) {
        None => errors.push(conflict(
            spec,
            path,
            format!("interface '{}' does not exist on this host", u.name),
        )),
        Some(l) if is_ours(l) => errors.push(conflict(
            spec,
            path,
            format!(
                "'{}' is a device kvmnet created; host.uplinks tunes host interfaces",
                u.name
            ),
        )),
        Some(_) => {
            if let Some(m) = u.mtu {
                st.mtus.insert(u.name.clone(), m);
            }
        }
    }
}
