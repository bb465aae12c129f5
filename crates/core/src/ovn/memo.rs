//! [`super::model::rows`] for a process that plans one spec again and again, a little
//! changed each time (the daemon): each network's rows are kept while its ports and the
//! rest of the spec's OVN part stay as they were. When its ports change, its switch-wide
//! rows are made again (a few: the switch, DHCP, isolation, DNS), and of its ports' own
//! rows only those of the ports whose entry or picked addresses changed. Anything else of
//! the OVN part changed, everything is made again.
//!
//! The rows are shared (`Arc`), and a row made again that equals the one kept stays the one
//! kept. After observing, [`RowsMemo::adopt`] has the wanted rows that equal observed ones
//! take the observed copies: the daemon's view of the database keeps a row's copy until
//! the row changes there, so from the next plan on, the comparison of an unchanged row is
//! of two pointers, not of two rows. At 10,000 ports, one port added, comparing took 14 ms
//! and making the rows 28 (8 now, most of it the firewalls' port groups, made whole).
//!
//! What this gives is always exactly what [`super::model::rows`] gives (a test checks it
//! through adds, removals, edits and head changes).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

// foldhash: hashing the 2,500 port names and row ids of the network that changed, at every
// plan, with the standard library's SipHash took a fifth of making the network again.
use foldhash::{HashMap, HashSet};

use super::NbRow;
use super::{firewall, model};
use crate::spec::ovn::{Ovn, OvnPort};

/// The rows by id, as a host state holds them. A copy shares the map until one of the two
/// is changed (then that one is copied whole): a daemon's view of the database hands one to
/// every plan, and copying 20,000 rows' entries for each took a millisecond of one port more
/// at 10,000 ports. The ids are shared too: a copy made on a change copies no text.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RowMap(Arc<BTreeMap<Arc<str>, Arc<NbRow>>>);

impl RowMap {
    pub fn new() -> RowMap {
        RowMap::default()
    }

    /// Whether another copy shares this map (so that changing it copies it first).
    pub fn is_shared(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }
}

impl std::fmt::Debug for RowMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Deref for RowMap {
    type Target = BTreeMap<Arc<str>, Arc<NbRow>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for RowMap {
    /// The map to change: this copy's own, copied first when another shares it.
    fn deref_mut(&mut self) -> &mut Self::Target {
        Arc::make_mut(&mut self.0)
    }
}

impl FromIterator<(Arc<str>, Arc<NbRow>)> for RowMap {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Arc<NbRow>)>>(iter: I) -> RowMap {
        RowMap(Arc::new(iter.into_iter().collect()))
    }
}

impl IntoIterator for RowMap {
    type Item = (Arc<str>, Arc<NbRow>);
    type IntoIter = std::collections::btree_map::IntoIter<Arc<str>, Arc<NbRow>>;

    fn into_iter(self) -> Self::IntoIter {
        Arc::unwrap_or_clone(self.0).into_iter()
    }
}

impl<'a> IntoIterator for &'a RowMap {
    type Item = (&'a Arc<str>, &'a Arc<NbRow>);
    type IntoIter = std::collections::btree_map::Iter<'a, Arc<str>, Arc<NbRow>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// What [`RowsMemo::rows`] made last (see the module's comment).
#[derive(Default)]
pub struct RowsMemo {
    /// The spec's OVN part the kept rows were made from, but for its ports.
    head: Option<Ovn>,
    /// Each network's ports and rows (by id, in the order the model lists them).
    nets: HashMap<String, Kept>,
    /// Where each kept row is: its network's or its firewall group's rows. (Not its place
    /// there: that moves for every row after a port joining or leaving, and keeping it up
    /// to date cost as much as the rest of making the network again. [`RowsMemo::adopt`]
    /// finds the few it needs.)
    places: HashMap<Arc<str>, Place>,
    /// Each firewall's port group, by name: kept while its ports stay the same (a port
    /// group of 2,500 made again, with its ACLs, for every firewall at every plan took most
    /// of a millisecond at 10,000 ports).
    groups: HashMap<Arc<str>, GroupKept>,
    /// The map the last call gave, handed back by its user ([`RowsMemo::give_back`]) to be
    /// changed where the rows changed, rather than made again from every row.
    last: Option<RowMap>,
    /// The ids of the router rows and the tail rows the last call made (made anew each
    /// call: see [`model::router_rows`], [`model::tail_rows`]).
    router_ids: Vec<Arc<str>>,
    tail_ids: Vec<Arc<str>>,
    /// Calls whose map was the last one changed (tests check the path is taken).
    #[cfg(test)]
    patched: usize,
    /// The ids of the rows made anew and not yet adopted (a row this process creates is
    /// adopted at the plan after, once the database has it): the only ones
    /// [`RowsMemo::adopt`] looks at.
    fresh: HashSet<Arc<str>>,
}

#[derive(Default)]
struct Kept {
    ports: Vec<OvnPort>,
    rows: Vec<(Arc<str>, Arc<NbRow>)>,
    /// How many of `rows` are the network's own (the switch, DHCP...): they come first.
    shared: usize,
    /// Each port's own rows, by its name (see [`Own`]).
    own: HashMap<String, Own>,
    /// Counts the times the network was made: an entry of `own` not marked with the last
    /// count is of a port that left.
    made: u64,
}

/// Where the memo keeps a row (see [`RowsMemo::places`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Place {
    Net(Arc<str>),
    Group(Arc<str>),
}

/// A firewall's port group as made last: its ports, the address sets its rules name, and
/// its rows (the port group and its ACLs).
struct GroupKept {
    ports: Vec<String>,
    sets: BTreeSet<String>,
    rows: Rows,
}

/// A port's own rows in its network's kept rows.
struct Own {
    /// What was picked for the port.
    picks: Picks,
    /// Where its rows are in [`Kept::rows`].
    rows: std::ops::Range<usize>,
    /// Where the port is in [`Kept::ports`].
    port: usize,
    /// The [`Kept::made`] that last saw the port.
    seen: u64,
}

/// What was picked for a port: its rows read nothing else of the other ports.
type Picks = (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>);

/// The spec's OVN part but for its ports: what every network's rows may read.
fn head_of(ovn: &Ovn) -> Ovn {
    let Ovn {
        nb,
        sb,
        ovs,
        datapath,
        encap,
        underlay_mtu,
        chassis,
        external,
        ssl,
        networks,
        ports: _,
        local,
    } = ovn;
    Ovn {
        nb: nb.clone(),
        sb: sb.clone(),
        ovs: ovs.clone(),
        datapath: datapath.clone(),
        encap: encap.clone(),
        underlay_mtu: *underlay_mtu,
        chassis: chassis.clone(),
        external: external.clone(),
        ssl: ssl.clone(),
        networks: networks.clone(),
        ports: Vec::new(),
        local: local.clone(),
    }
}

/// Rows by id, in the order the model lists them.
type Rows = Vec<(Arc<str>, Arc<NbRow>)>;

/// What making a network again changed: the rows it no longer has, and those made anew
/// (new copies: rows it kept are the copies the map holds).
#[derive(Default)]
struct Delta {
    removed: Vec<Arc<str>>,
    made: Rows,
}

/// What changed since the last call's map (see [`RowsMemo::patch`]): the router and tail
/// rows made now, each network made again with the rows it had, the rows of networks gone.
struct Parts<'a> {
    router: &'a [(Arc<str>, Arc<NbRow>)],
    changed: &'a [Delta],
    gone: &'a [(Arc<str>, Arc<NbRow>)],
    tail: &'a [(Arc<str>, Arc<NbRow>)],
}

fn same_ports(kept: &[OvnPort], now: &[&OvnPort]) -> bool {
    kept.len() == now.len() && kept.iter().zip(now).all(|(a, b)| a == *b)
}

impl RowsMemo {
    /// Every row `ovn` wants, by id: [`super::model::rows`], made again only where it
    /// changed.
    pub fn rows(&mut self, ovn: &Ovn) -> RowMap {
        let head = head_of(ovn);
        if self.head.as_ref() != Some(&head) {
            self.nets.clear();
            self.groups.clear();
            self.places.clear();
            self.fresh.clear();
            self.last = None;
            self.head = Some(head);
        }
        let fresh = |rows: Vec<NbRow>| -> Vec<(Arc<str>, Arc<NbRow>)> {
            rows.into_iter()
                .map(|r| (r.id().into(), Arc::new(r)))
                .collect()
        };
        let router = fresh(model::router_rows(ovn));
        let nets = model::by_network(ovn);
        // Each network made again, with the rows it had.
        let mut changed: Vec<Delta> = Vec::new();
        for (net, ports) in &nets {
            if !self
                .nets
                .get(&net.name)
                .is_some_and(|k| same_ports(&k.ports, ports))
            {
                changed.push(self.make_again(ovn, net, ports));
            }
        }
        let mut gone = Vec::new();
        if self.nets.len() != nets.len() {
            let named: HashSet<&str> = nets.iter().map(|(n, _)| n.name.as_str()).collect();
            let (keep, drop): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.nets)
                .into_iter()
                .partition(|(n, _)| named.contains(n.as_str()));
            self.nets = keep;
            gone.extend(drop.into_values().flat_map(|k| k.rows));
            self.places.retain(|_, p| match p {
                Place::Net(n) => named.contains(&**n),
                Place::Group(_) => true,
            });
        }
        let tail = self.tail(ovn, fresh);
        self.fresh
            .extend(router.iter().map(|(id, _)| Arc::clone(id)));
        let patched = self.last.take().and_then(|map| {
            let parts = Parts {
                router: &router,
                changed: &changed,
                gone: &gone,
                tail: &tail,
            };
            self.patch(map, parts, nets.iter().map(|(n, _)| n.name.as_str()))
        });
        #[cfg(test)]
        {
            self.patched += usize::from(patched.is_some());
        }
        self.router_ids = router.iter().map(|(id, _)| Arc::clone(id)).collect();
        self.tail_ids = tail.iter().map(|(id, _)| Arc::clone(id)).collect();
        patched.unwrap_or_else(|| {
            let mut all = router;
            for (net, _) in &nets {
                all.extend(self.nets[&net.name].rows.iter().cloned());
            }
            all.extend(tail);
            // Sorted runs, merged: and of two rows of one id, the later one, as `collect`
            // keeps.
            all.into_iter().collect()
        })
    }

    /// The map the last call gave (as its user left it: the user adopted rows through
    /// [`RowsMemo::adopt`] only), for the next call to change where the rows changed.
    /// At 10,000 ports, making the map of 20,000 rows again, and freeing the last one,
    /// took a millisecond of each plan.
    pub fn give_back(&mut self, map: RowMap) {
        self.last = Some(map);
    }

    /// `map` (what the last call gave) changed by `parts`: the rows that went taken out, the
    /// rows made anew put in. `None` when the result does not hold exactly one row per id
    /// of the networks `nets` kept and `parts` (two parts making one id: then the whole map
    /// is made again, in order, as the model's rows are).
    fn patch<'a>(
        &self,
        mut map: RowMap,
        parts: Parts,
        nets: impl Iterator<Item = &'a str>,
    ) -> Option<RowMap> {
        let new_ids = |rows: &[(Arc<str>, Arc<NbRow>)]| -> HashSet<Arc<str>> {
            rows.iter().map(|(id, _)| Arc::clone(id)).collect()
        };
        let mut take_out = |old: &mut dyn Iterator<Item = &Arc<str>>, now: &HashSet<Arc<str>>| {
            for id in old.filter(|id| !now.contains(*id)) {
                map.remove(id);
            }
        };
        take_out(&mut self.router_ids.iter(), &new_ids(parts.router));
        take_out(&mut self.tail_ids.iter(), &new_ids(parts.tail));
        take_out(
            &mut parts.gone.iter().map(|(id, _)| id),
            &HashSet::default(),
        );
        for d in parts.changed {
            take_out(&mut d.removed.iter(), &HashSet::default());
        }
        let mut put_in = |rows: &[(Arc<str>, Arc<NbRow>)]| {
            for (id, row) in rows {
                if !map.get(id).is_some_and(|r| Arc::ptr_eq(r, row)) {
                    map.insert(Arc::clone(id), Arc::clone(row));
                }
            }
        };
        put_in(parts.router);
        for d in parts.changed {
            put_in(&d.made);
        }
        put_in(parts.tail);
        let rows: usize = nets.map(|n| self.nets[n].rows.len()).sum();
        (map.len() == parts.router.len() + rows + parts.tail.len()).then_some(map)
    }

    /// Makes network `net`'s rows again: a port whose entry and picked addresses did not
    /// change keeps its rows as they are (2,500 ports of one network, one of them new, are
    /// one port's rows made), and a row made again equal to the kept one stays the kept copy.
    /// What is kept of the network is changed in place: rebuilding its indexes (every
    /// port's name, every row's place) took a millisecond of each plan at 10,000 ports.
    /// What changed (see [`Delta`]).
    fn make_again(
        &mut self,
        ovn: &Ovn,
        net: &crate::spec::model::Network,
        ports: &[&OvnPort],
    ) -> Delta {
        let Kept {
            ports: old_ports,
            rows: old_rows,
            shared: old_shared,
            mut own,
            made: count,
        } = self.nets.remove(&net.name).unwrap_or_default();
        let count = count + 1;
        // The rows made here, new copies or kept; the old rows of the ports carried over.
        let mut made: Rows = Vec::new();
        let mut here: HashSet<Arc<str>> = HashSet::default();
        let mut carried = vec![false; old_rows.len()];
        // A row made again takes the kept copy when equal: looked for among the network's
        // own rows and the port's (a row is the network's or one port's).
        let mut keep = |r: NbRow, before: &[(Arc<str>, Arc<NbRow>)]| {
            let id: Arc<str> = r.id().into();
            here.insert(Arc::clone(&id));
            let row = match before.iter().find(|(b, _)| *b == id) {
                Some((_, b)) if **b == r => Arc::clone(b),
                _ => {
                    let row = Arc::new(r);
                    made.push((Arc::clone(&id), Arc::clone(&row)));
                    row
                }
            };
            (id, row)
        };
        let (shared, addrs, switch) = model::network_parts(ovn, net, ports);
        let old_head = &old_rows[..old_shared];
        let mut rows: Rows = Vec::with_capacity(old_rows.len() + 4);
        rows.extend(shared.into_iter().map(|r| keep(r, old_head)));
        let shared = rows.len();
        for (i, p) in ports.iter().enumerate() {
            let name = p.port.name.as_str();
            let picks = addrs.of(name);
            let start = rows.len();
            let o = own.get_mut(name);
            let before = o.as_ref().map_or(&[][..], |o| &old_rows[o.rows.clone()]);
            match &o {
                Some(o) if o.picks == picks && old_ports[o.port] == **p => {
                    rows.extend(before.iter().cloned());
                    carried[o.rows.clone()].fill(true);
                }
                _ => {
                    let again = model::port_rows(net, &p.port, &addrs, &switch);
                    rows.extend(again.into_iter().map(|r| keep(r, before)));
                }
            }
            let now = Own {
                picks,
                rows: start..rows.len(),
                port: i,
                seen: count,
            };
            match o {
                Some(o) => *o = now,
                None => {
                    own.insert(name.to_string(), now);
                }
            }
        }
        if own.len() != ports.len() {
            own.retain(|_, o| o.seen == count);
        }
        self.fresh.extend(made.iter().map(|(id, _)| Arc::clone(id)));
        let removed: Vec<Arc<str>> = old_rows
            .iter()
            .zip(&carried)
            .filter(|((id, _), c)| !**c && !here.contains(id))
            .map(|((id, _), _)| Arc::clone(id))
            .collect();
        self.place(&net.name, &removed, &made);
        let ports = ports.iter().map(|p| (*p).clone()).collect();
        let kept = Kept {
            ports,
            rows,
            shared,
            own,
            made: count,
        };
        self.nets.insert(net.name.clone(), kept);
        Delta { removed, made }
    }

    /// Network `net`'s rows in [`RowsMemo::places`]: those it no longer has out (unless
    /// another network has them now), those made anew in.
    fn place(&mut self, net: &str, removed: &[Arc<str>], made: &Rows) {
        for id in removed {
            if matches!(self.places.get(id), Some(Place::Net(n)) if **n == *net) {
                self.places.remove(id);
            }
        }
        let name = Place::Net(net.into());
        for (id, _) in made {
            self.places.insert(Arc::clone(id), name.clone());
        }
    }

    /// The rows after the networks' ([`model::tail_rows`]): each firewall's port group and
    /// ACLs as kept while its ports stay the same, else made again; the rows the groups
    /// share and the forwards' made anew. The rows made anew are fresh (to be adopted).
    fn tail(&mut self, ovn: &Ovn, fresh: impl Fn(Vec<NbRow>) -> Rows) -> Rows {
        let mut tail: Rows = Vec::new();
        let mut sets = BTreeSet::new();
        let mut named = HashSet::default();
        for g in firewall::groups(ovn) {
            let name: Arc<str> = g.name.as_str().into();
            let same = self.groups.get(&name).is_some_and(|k| {
                k.ports.len() == g.ports.len() && k.ports.iter().zip(&g.ports).all(|(a, b)| a == b)
            });
            if !same {
                // The rows the group had out of the places first: the ones made now mostly
                // have the same ids.
                if let Some(old) = self.groups.remove(&name) {
                    self.unplace(&old.rows, &name);
                }
                let mut made_sets = BTreeSet::new();
                let rows = fresh(g.rows(&mut made_sets));
                self.fresh.extend(rows.iter().map(|(id, _)| Arc::clone(id)));
                for (id, _) in &rows {
                    self.places
                        .insert(Arc::clone(id), Place::Group(Arc::clone(&name)));
                }
                let ports = g.ports.iter().map(|p| p.to_string()).collect();
                let kept = GroupKept {
                    ports,
                    sets: made_sets,
                    rows,
                };
                self.groups.insert(Arc::clone(&name), kept);
            }
            let k = &self.groups[&name];
            sets.extend(k.sets.iter().cloned());
            tail.extend(k.rows.iter().cloned());
            named.insert(name);
        }
        if self.groups.len() != named.len() {
            let gone: Vec<Arc<str>> = (self.groups.keys())
                .filter(|n| !named.contains(*n))
                .cloned()
                .collect();
            for n in gone {
                let old = self.groups.remove(&n).expect("listed above");
                self.unplace(&old.rows, &n);
            }
        }
        let shared = firewall::shared_rows(&sets, tail.iter().map(|(_, r)| &**r));
        let rest = fresh(shared.into_iter().chain(model::forward_rows(ovn)).collect());
        self.fresh.extend(rest.iter().map(|(id, _)| Arc::clone(id)));
        tail.extend(rest);
        tail
    }

    /// Takes group `name`'s rows `rows` out of [`RowsMemo::places`], but those placed
    /// elsewhere since (or again).
    fn unplace(&mut self, rows: &Rows, name: &Arc<str>) {
        let here = Place::Group(Arc::clone(name));
        for (id, _) in rows {
            if self.places.get(id) == Some(&here) {
                self.places.remove(id);
            }
        }
    }

    /// Each row of `want` made anew and not adopted yet that equals `have`'s row of its id
    /// takes `have`'s copy, here and in what is kept (see the module's comment); it is
    /// adopted then. The other rows took theirs before: walking all 20,000 rows of 10,000
    /// ports to find the few new ones took a millisecond. (A kept row whose copy in the
    /// database changes later, by another's hand, compares whole from then on: slower, the
    /// same plan.)
    pub fn adopt(&mut self, want: &mut RowMap, have: &RowMap) {
        let mut fresh = std::mem::take(&mut self.fresh);
        // By place: the copies to put where the memo keeps those rows.
        let mut adopted: HashMap<Place, Rows> = HashMap::default();
        fresh.retain(|id| {
            let Some(w) = want.get_mut(id) else {
                return false;
            };
            let Some(hr) = have.get(id) else {
                // Not in the database yet: adopted once it is.
                return true;
            };
            if Arc::ptr_eq(w, hr) {
                return false;
            }
            if **w != **hr {
                return true;
            }
            *w = Arc::clone(hr);
            if let Some(place) = self.places.get(id) {
                adopted
                    .entry(place.clone())
                    .or_default()
                    .push((Arc::clone(id), Arc::clone(hr)));
            }
            false
        });
        self.fresh = fresh;
        for (place, rows) in adopted {
            let slots = match place {
                Place::Net(n) => self.nets.get_mut(&*n).map(|k| &mut k.rows),
                Place::Group(g) => self.groups.get_mut(&g).map(|k| &mut k.rows),
            };
            if let Some(slots) = slots {
                put_copies(slots, rows);
            }
        }
    }
}

/// Puts the database's copies `rows` (by id) in `slots`, where the memo keeps those rows.
/// Found in one walk over them, by the id's address: the ids the memo hands out are the ones
/// it keeps. One it does not find so (an id made again meanwhile) is looked for by its text.
fn put_copies(slots: &mut Rows, rows: Rows) {
    let mut at: HashMap<*const u8, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (Arc::as_ptr(id).cast::<u8>(), i))
        .collect();
    let mut put = vec![false; rows.len()];
    for slot in slots.iter_mut() {
        if let Some(i) = at.remove(&Arc::as_ptr(&slot.0).cast::<u8>()) {
            slot.1 = Arc::clone(&rows[i].1);
            put[i] = true;
            if at.is_empty() {
                break;
            }
        }
    }
    for ((id, row), _) in rows.iter().zip(&put).filter(|(_, p)| !**p) {
        if let Some(slot) = slots.iter_mut().find(|s| s.0 == *id) {
            slot.1 = Arc::clone(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{HostIdentity, parse};

    const HEAD: &str = r#"version: 1
ovn:
  nb: tcp:192.0.2.1:6641
  sb: tcp:192.0.2.1:6642
  chassis:
    hv1: { encap_ip: 172.31.0.1 }
networks:
  web:
    backend: ovn
    mode: routed
    ipv4: 10.80.0.1/16
    dhcp: { range: 10.80.200.1-10.80.200.200 }
    dns: { domain: web.test }
  lan:
    backend: ovn
    mode: isolated
    ipv4: 10.81.0.1/16
    isolate_ports: true
vms:
"#;

    fn spec(head: &str, vms: &[(usize, &str, &str)]) -> Ovn {
        let mut text = head.to_string();
        for (i, net, fw) in vms {
            text.push_str(&format!(
                "  v{i}:\n    host: hv1\n    ports:\n      - {{ network: {net}, mac: \"52:54:00:00:00:{i:02x}\"{fw} }}\n"
            ));
        }
        parse(&text, &HostIdentity::default())
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"))
            .ovn
            .expect("an OVN part")
    }

    fn made(ovn: &Ovn) -> RowMap {
        model::rows(ovn)
            .into_iter()
            .map(|r| (r.id().into(), Arc::new(r)))
            .collect()
    }

    const FW: &str =
        ", firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22] } ] } }";

    /// Thirty VMs, a third on lan, each with a firewall.
    fn thirty_vms() -> Vec<(usize, &'static str, &'static str)> {
        (0..30)
            .map(|i| (i, if i % 3 == 0 { "lan" } else { "web" }, FW))
            .collect()
    }

    /// The head, its isolation turned off when `changed`.
    fn head_at(changed: bool) -> String {
        if changed {
            HEAD.replace("isolate_ports: true", "isolate_ports: false")
        } else {
            HEAD.to_string()
        }
    }

    /// What the database holds after a plan: the same rows, its own copies.
    fn copies(rows: &RowMap) -> RowMap {
        rows.iter()
            .map(|(id, r)| (id.clone(), Arc::new(NbRow::clone(r))))
            .collect()
    }

    /// Through adds, removals, a firewall edited, a network emptied and the head changed,
    /// the memo gives what the model gives; rows that did not change keep their copy, and
    /// adopted copies are kept.
    #[test]
    fn gives_what_the_model_gives() {
        let mut vms = thirty_vms();
        let mut memo = RowsMemo::default();
        let first = memo.rows(&spec(HEAD, &vms));
        assert_eq!(first, made(&spec(HEAD, &vms)));

        // What the database holds: equal rows, other copies. Adopted, they are what the
        // next call gives for unchanged networks.
        let have: RowMap = copies(&first);
        let mut want = first.clone();
        memo.adopt(&mut want, &have);
        assert!(want.iter().all(|(id, r)| Arc::ptr_eq(r, &have[id])));

        vms.push((30, "web", ""));
        let second = memo.rows(&spec(HEAD, &vms));
        assert_eq!(second, made(&spec(HEAD, &vms)));
        let lan_port = "Logical_Switch_Port v0-lan";
        let kept = second
            .iter()
            .filter(|(id, _)| &***id == lan_port || id.contains("lan"))
            .filter(|(id, r)| have.get(*id).is_some_and(|h| Arc::ptr_eq(h, r)))
            .count();
        assert!(
            kept > 0,
            "the unchanged network's rows are the adopted copies"
        );
        let web_switch = second
            .iter()
            .find(|(id, _)| id.starts_with("Logical_Switch ") && id.ends_with("web"))
            .expect("the web switch");
        assert!(
            Arc::ptr_eq(web_switch.1, &have[web_switch.0]),
            "a row made again equal to the kept one stays the kept (adopted) copy"
        );
        let ports_kept = second
            .iter()
            .filter(|(id, _)| id.starts_with("Logical_Switch_Port ") && have.contains_key(*id))
            .all(|(id, r)| Arc::ptr_eq(r, &have[id]));
        assert!(
            ports_kept,
            "the other ports of the network that changed keep their rows"
        );

        // Rows made while the database does not have them yet (a first apply) are adopted
        // at the plan after, though that plan makes nothing anew.
        let mut memo = RowsMemo::default();
        let mut want = memo.rows(&spec(HEAD, &vms));
        memo.adopt(&mut want, &RowMap::new());
        let have: RowMap = copies(&want);
        let mut again = memo.rows(&spec(HEAD, &vms));
        memo.adopt(&mut again, &have);
        assert!(again.iter().all(|(id, r)| Arc::ptr_eq(r, &have[id])));
        let third = memo.rows(&spec(HEAD, &vms));
        let kept_as_adopted = |prefix: &str| {
            let mut rows = third.iter().filter(|(id, _)| id.starts_with(prefix));
            rows.clone().count() > 0 && rows.all(|(id, r)| Arc::ptr_eq(r, &have[id]))
        };
        assert!(
            kept_as_adopted("Logical_Switch_Port "),
            "ports kept as adopted"
        );
        assert!(
            kept_as_adopted("Port_Group kvmnet_fw") && kept_as_adopted("ACL kvmnet_fw"),
            "firewall groups kept as adopted"
        );
        // A group made again (a port joined it) is kept as adopted too, once the database
        // has it.
        vms.push((31, "web", FW));
        let mut fourth = memo.rows(&spec(HEAD, &vms));
        memo.adopt(&mut fourth, &have);
        // The database's copies after: its own of the rows that did not change.
        let have: RowMap = fourth
            .iter()
            .map(|(id, r)| match have.get(id).filter(|h| Arc::ptr_eq(h, r)) {
                Some(h) => (id.clone(), Arc::clone(h)),
                None => (id.clone(), Arc::new(NbRow::clone(r))),
            })
            .collect();
        let mut fifth = memo.rows(&spec(HEAD, &vms));
        memo.adopt(&mut fifth, &have);
        let sixth = memo.rows(&spec(HEAD, &vms));
        let mut groups = sixth
            .iter()
            .filter(|(id, _)| id.starts_with("Port_Group kvmnet_fw"));
        assert!(
            groups.clone().count() > 0 && groups.all(|(id, r)| Arc::ptr_eq(r, &have[id])),
            "a group made again kept as adopted"
        );

        for step in 0..4 {
            match step {
                0 => vms.retain(|v| v.0 != 4),
                1 => vms[2].2 = "",
                2 => vms.retain(|v| v.1 != "lan"),
                _ => {}
            }
            let head = head_at(step == 3);
            let ovn = spec(&head, &vms);
            assert_eq!(memo.rows(&ovn), made(&ovn), "step {step}");
        }
    }

    /// The map given back is changed where the rows changed, and is what the model gives:
    /// through adds, removals, an edit, a network emptied and back, the same spec again,
    /// and a head changed; with the database's copies adopted between calls.
    #[test]
    fn a_map_given_back_is_changed_in_place() {
        let mut vms = thirty_vms();
        let mut memo = RowsMemo::default();
        let mut have = RowMap::new();
        let mut calls = 0;
        for step in 0..9 {
            match step {
                1 => vms.push((30, "web", FW)),
                2 => vms.retain(|v| v.0 != 4),
                3 => vms[2].2 = "",
                4 => vms.retain(|v| v.1 != "lan"),
                5 => vms.extend((40..45).map(|i| (i, "lan", FW))),
                7 => vms.push((50, "web", "")),
                _ => {}
            }
            let head = head_at(step == 8);
            let ovn = spec(&head, &vms);
            let mut want = memo.rows(&ovn);
            calls += 1;
            assert_eq!(want, made(&ovn), "step {step}");
            memo.adopt(&mut want, &have);
            // The database takes the plan: its own copies of the rows.
            have = copies(&want);
            memo.give_back(want);
        }
        // Every call but the first and the one after the head changed was a change.
        assert_eq!(memo.patched, calls - 2);
    }

    /// A copy of a map shares it until one of the two changes; the one changed is copied
    /// first, and the other stays as it was.
    #[test]
    fn a_copy_shares_the_map_until_one_changes() {
        let view = made(&spec(&head_at(false), &thirty_vms()));
        let mut plan = view.clone();
        assert!(view.is_shared() && plan.is_shared());
        assert!(std::ptr::eq(&*view, &*plan), "one map, not two");
        let (id, row) = plan
            .iter()
            .next()
            .map(|(i, r)| (i.clone(), r.clone()))
            .unwrap();
        plan.remove(&id);
        assert!(!view.is_shared() && !plan.is_shared());
        assert_eq!(view.len(), plan.len() + 1);
        assert!(Arc::ptr_eq(&view[&id], &row), "the view keeps its row");
        let mut alone = plan.clone();
        drop(plan);
        assert!(!alone.is_shared());
        let at = &*alone as *const _;
        alone.insert(id, row);
        assert!(
            std::ptr::eq(at, &*alone),
            "changed in place when not shared"
        );
        assert_eq!(alone, view);
        let listed: Vec<_> = (&alone).into_iter().map(|(i, _)| i.clone()).collect();
        let owned: Vec<_> = alone.into_iter().map(|(i, _)| i).collect();
        assert_eq!(listed, owned);
    }
}
