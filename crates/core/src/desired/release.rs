//! What kvmnet gives back when a network or bond goes away: uplinks released from bridges
//! and bonds get back the addresses and routes those took, and interfaces kvmnet raised or
//! whose MTU it changed get their own values back.

use super::*;

impl Build<'_> {
    /// Uplinks of bridges that are going away (or that lost their uplink) are released and
    /// get back the addresses and routes the bridge took from them.
    pub(super) fn release_uplinks(&mut self) {
        let Build { snap, st, .. } = self;
        let snap = *snap;
        for l in &snap.links {
            let Some(m) = l.master.as_deref() else {
                continue;
            };
            if (is_ours(l) && !is_our_bond(l)) || st.uplinks.contains_key(&l.name) {
                continue;
            }
            if !snap
                .link(m)
                .is_some_and(|b| b.kind == "bridge" && is_ours(b))
            {
                continue;
            }
            // A bond that stays has its own addresses worked out already.
            let mut addrs = st
                .addrs
                .get(&l.name)
                .cloned()
                .unwrap_or_else(|| addrs_of(snap, &l.name));
            let mut routes = st
                .routes
                .get(&l.name)
                .cloned()
                .unwrap_or_else(|| movable_routes(&snap.routes, &l.name));
            if !st.bridges.contains_key(m) {
                addrs.extend(addrs_of(snap, m));
                routes.extend(movable_routes(&snap.routes, m));
                if let Some(moved) = snap.moved.get(m) {
                    for a in &moved.addrs {
                        if !addrs.contains(a) {
                            addrs.push(*a);
                        }
                    }
                    for r in &moved.routes {
                        if !routes.contains(r) {
                            routes.push(r.clone());
                        }
                    }
                }
            }
            st.uplinks.insert(
                l.name.clone(),
                UplinkLink {
                    name: l.name.clone(),
                    master: None,
                },
            );
            st.addrs.insert(l.name.clone(), addrs);
            st.routes.insert(l.name.clone(), routes);
        }
    }

    /// Bonds that go away: their members are released, and the first one (recorded in the
    /// bond's mark) gets back what the bond held. Members dropped from a bond that stays are
    /// released too; the bond keeps the addresses.
    pub(super) fn release_bonds(&mut self) {
        let Build {
            snap, links, st, ..
        } = self;
        let snap = *snap;
        for l in &snap.links {
            let Some(m) = l.master.as_deref() else {
                continue;
            };
            if is_ours(l) || st.members.contains_key(&l.name) {
                continue;
            }
            if links.get(m).is_some_and(is_our_bond) {
                st.members.insert(
                    l.name.clone(),
                    MemberLink {
                        name: l.name.clone(),
                        bond: None,
                    },
                );
                st.addrs
                    .entry(l.name.clone())
                    .or_insert_with(|| addrs_of(snap, &l.name));
                st.routes
                    .entry(l.name.clone())
                    .or_insert_with(|| movable_routes(&snap.routes, &l.name));
            }
        }
        for b in snap.links.iter().filter(|l| is_our_bond(l)) {
            if st.bonds.contains_key(&b.name) {
                continue;
            }
            let held = st.addrs.remove(&b.name);
            let held_routes = st.routes.remove(&b.name);
            let home = b
                .alias
                .as_deref()
                .and_then(parse_alias)
                .and_then(|a| a.home);
            let Some(home) = home.filter(|h| links.get(h).is_some_and(|l| !is_ours(l))) else {
                continue;
            };
            let mut addrs = st
                .addrs
                .get(&home)
                .cloned()
                .unwrap_or_else(|| addrs_of(snap, &home));
            let mut routes = st
                .routes
                .get(&home)
                .cloned()
                .unwrap_or_else(|| movable_routes(&snap.routes, &home));
            push_new(&mut addrs, &held.unwrap_or_else(|| addrs_of(snap, &b.name)));
            push_new(
                &mut routes,
                &held_routes.unwrap_or_else(|| movable_routes(&snap.routes, &b.name)),
            );
            if let Some(moved) = snap.moved.get(&b.name) {
                push_new(&mut addrs, &moved.addrs);
                push_new(&mut routes, &moved.routes);
            }
            st.members.entry(home.clone()).or_insert(MemberLink {
                name: home.clone(),
                bond: None,
            });
            st.addrs.insert(home.clone(), addrs);
            st.routes.insert(home.clone(), routes);
            st.addrs.insert(b.name.clone(), Vec::new());
            st.routes.insert(b.name.clone(), Vec::new());
        }
    }

    /// Interfaces kvmnet brought up and no longer needs up go back down, unless another
    /// network still sits on them (a direct network's macvtaps, say, need their uplink up);
    /// MTUs kvmnet changed and no longer manages go back to what they were.
    pub(super) fn give_back(&mut self) {
        let Build {
            spec,
            snap,
            links,
            st,
            ..
        } = self;
        let (spec, snap) = (*spec, *snap);
        let needed_up = uplinks_in_use(spec);
        for k in snap.raised.keys() {
            if !needed_up.contains(k) && links.get(k).is_some_and(|l| !is_ours(l) && l.up) {
                st.lower.insert(k.clone());
            }
        }

        // MTUs kvmnet changed and no longer manages go back to what they were.
        for (k, orig) in &snap.mtu_originals {
            if !st.mtus.contains_key(k) && links.get(k).is_some_and(|l| !is_ours(l)) {
                st.mtus.insert(k.clone(), *orig);
            }
        }
    }
}
