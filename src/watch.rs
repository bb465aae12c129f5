//! Observation for the daemon: the host is read whole once, then kept current from the
//! kernel's change notifications, so planning a one-port change on a host with 1,000 ports
//! reads that port again, not all of them.
//!
//! What the cache holds: links (and, for ports and bridges, whether their traffic control is
//! what their mark records), addresses, routes, and kvmnet's nftables tables. Notifications
//! say which link, which device's traffic control, which chain or set changed; only those
//! are read again. Everything without notifications (sysctls, ethtool settings, the state
//! directory, users, guest namespaces) is read at every plan as before. If notifications are
//! lost (a full socket buffer) or `resync` has passed since the last whole read, the host is
//! read whole again: that also catches the rare change the kernel does not announce (the
//! owner of a macvtap's character device).

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashMapExt};
use std::time::{Duration, Instant};

use crate::backend::events::{Changes, Events};
use crate::backend::nftables::{self, NftCache};
use crate::backend::rtnl::{AddrInfo, LinkInfo, Netlink, RouteInfo};
use crate::backend::tc::{self, PortTc};
use crate::nft::NftTable;
use crate::observe::{self, ObserveError, Observer};
use crate::snapshot::{AddrSnap, LinkSnap, RouteSnap, Snapshot};
use crate::spec::Spec;
use crate::state::Shaping;

struct Cache {
    links: BTreeMap<u32, LinkInfo>,
    /// `links` as a snapshot shows them (no counters, no traffic control), kept in step, in
    /// the order of `snap_keys`. A vector, not a map: a snapshot takes it and gives it back
    /// whole, where moving 3,000 links out of a map and back cost milliseconds.
    snaps: Vec<LinkSnap>,
    /// The index of each of `snaps`, ascending.
    snap_keys: Vec<u32>,
    /// A snapshot has `snaps` (see [`Watch::give_back_links`]).
    snaps_out: bool,
    addrs: Vec<AddrInfo>,
    routes: Vec<RouteInfo>,
    /// Ports with traffic control, by name.
    tc: HashMap<String, PortEntry>,
    /// kvmnet bridges with a shaping tree, read back.
    shaping: HashMap<String, Option<Shaping>>,
    nft: NftCache,
    /// `nft` as tables, patched as it changes; `None` while a plan has it (see
    /// [`Watch::give_back`]) or until made again.
    nft_view: Option<Option<NftTable>>,
    /// Counts the changes to `nft`: a view lent out comes back only if none happened since.
    nft_changes: u64,
    read_at: Instant,
}

/// A port with traffic control: what its mark asks for, and whether the kernel has
/// something else.
struct PortEntry {
    want: PortTc,
    ifb: String,
    drift: bool,
}

/// A cache of what the host holds, and the subscription that keeps it current.
pub struct Watch {
    events: Events,
    /// The socket that reads traffic control back; what its reads cause is not a change.
    tc: tc::Tc,
    cache: Option<Cache>,
    /// `nft_changes` when the nft view was lent to a snapshot.
    lent: Option<u64>,
    /// The nftables tables the last plan wanted: rule texts kvmnet wrote, by hash.
    made: Option<NftTable>,
    /// Read the host whole at least this often.
    pub resync: Duration,
    /// Whole reads and partial ones so far (shown by `GET /v1/debug/watch`).
    pub whole_reads: u64,
    pub partial_reads: u64,
    /// The Northbound rows the last plans wanted, made again only where the spec changed.
    pub nb_rows: kvmnet_core::ovn::memo::RowsMemo,
}

fn names_of(links: &BTreeMap<u32, LinkInfo>, indexes: &BTreeSet<u32>) -> BTreeSet<String> {
    indexes
        .iter()
        .filter_map(|i| links.get(i).map(|l| l.name.clone()))
        .collect()
}

impl Watch {
    /// Subscribes in the current network namespace; the first snapshot reads everything.
    pub fn open() -> Result<Watch, ObserveError> {
        Ok(Watch {
            events: Events::open()?,
            tc: tc::Tc::open()?,
            cache: None,
            lent: None,
            made: None,
            resync: Duration::from_secs(60),
            whole_reads: 0,
            partial_reads: 0,
            nb_rows: Default::default(),
        })
    }

    /// Remembers the tables a plan wanted (their rule texts save asking `nft` for them when
    /// those chains change or go); returns the ones remembered before.
    pub fn remember(&mut self, made: Option<NftTable>) -> Option<NftTable> {
        std::mem::replace(&mut self.made, made)
    }

    /// Takes back the nft tables a snapshot took (as the plan made from it observed them),
    /// so that the next snapshot need not make them again from the cache: unless the cache
    /// changed meanwhile, they are still what it holds, but for what was read for the plan
    /// (rule texts, dropped here since a fresh read would not have them).
    pub fn give_back(&mut self, tables: Option<NftTable>) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        if cache.nft_view.is_some() || self.lent != Some(cache.nft_changes) {
            return;
        }
        let mut tables = tables;
        if let Some(t) = tables.as_mut()
            && !cache.nft.settle(t)
        {
            return;
        }
        self.lent = None;
        cache.nft_view = Some(tables);
    }

    /// Takes back the links a snapshot took (as the plan made from it left them), so that
    /// the next snapshot need not convert or copy them again; ignored if the cache changed
    /// meanwhile. What a snapshot adds to them (traffic-control drift, shaping, macvtap
    /// owners, VXLAN flood entries) is set again by the next one.
    pub fn give_back_links(&mut self, links: Vec<LinkSnap>) {
        let Some(cache) = self.cache.as_mut() else {
            return;
        };
        if !cache.snaps_out || cache.snap_keys.len() != links.len() {
            return;
        }
        cache.snaps_out = false;
        cache.snaps = links;
    }

    /// Forget everything: the next snapshot reads the host whole.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// Brings the cache up to date with the notifications so far (reading the host whole
    /// the first time, after lost notifications, or once `resync` has passed).
    pub fn refresh(&mut self) -> Result<(), ObserveError> {
        // Drain first: whatever changes after this point shows up at the next refresh.
        let changes = self.events.drain(&[self.tc.portid()])?;
        let stale = match &self.cache {
            None => true,
            Some(c) => changes.overflow || c.read_at.elapsed() >= self.resync,
        };
        if stale {
            self.cache = None;
            self.cache = Some(read_whole(&mut Netlink::open()?, &mut self.tc)?);
            self.whole_reads += 1;
        } else if !changes.is_empty() {
            let cache = self.cache.as_mut().expect("checked above");
            let updated = Netlink::open()
                .map_err(ObserveError::from)
                .and_then(|mut nl| update(cache, &mut nl, &mut self.tc, &changes));
            if let Err(e) = updated {
                // Half read, and the notifications are spent: read it all next time.
                self.cache = None;
                return Err(e);
            }
            self.partial_reads += 1;
        }
        Ok(())
    }

    /// What `Observer::snapshot` would read now (without traffic counters), from the cache
    /// brought up to date.
    pub fn snapshot(
        &mut self,
        obs: &Observer,
        spec: Option<&Spec>,
    ) -> Result<Snapshot, ObserveError> {
        self.snapshot_with(obs, spec, || spec.and_then(crate::nft::table_for))
            .map(|(snap, _)| snap)
    }

    /// [`Watch::snapshot`], with the spec's nftables tables made by `want` (on a thread of
    /// its own, while the cache is brought up to date); returns them too.
    pub fn snapshot_with(
        &mut self,
        obs: &Observer,
        spec: Option<&Spec>,
        want: impl FnOnce() -> Option<NftTable> + Send,
    ) -> Result<(Snapshot, Option<NftTable>), ObserveError> {
        // Everything but the nft tables' rule texts (which depend on the tables wanted) is
        // done while those tables are made.
        let (made, snap) = std::thread::scope(|s| {
            let made = s.spawn(want);
            let snap = self.snapshot_parts(obs, spec, &BTreeSet::new());
            (made.join().expect("making nft tables does not panic"), snap)
        });
        let (mut snap, view) = snap?;
        snap.nft = self.nft_observed(view, made.as_ref())?;
        Ok((snap, made))
    }

    /// A snapshot but for its nft tables, and the cache's view of those tables: give both
    /// to [`Watch::nft_observed`] with the tables wanted. (Split so that a plan can make
    /// the tables it wants while the rest is observed and its desired state made.)
    /// `extra_sysctls` are read too (see [`Observer::snapshot_with`]).
    pub fn snapshot_parts(
        &mut self,
        obs: &Observer,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<(Snapshot, Option<NftTable>), ObserveError> {
        self.refresh()?;
        let cache = self.cache.as_mut().expect("refreshed");
        self.lent = Some(cache.nft_changes);
        let a = assemble(cache);
        let snap = obs.complete(
            spec,
            extra_sysctls,
            &mut Netlink::open()?,
            a.links,
            a.addrs,
            a.routes,
            None,
        )?;
        Ok((snap, a.nft))
    }

    /// The nft tables as a snapshot has them, from the view [`Watch::snapshot_parts`] gave
    /// and the tables wanted (whose rule texts save asking `nft` for them).
    pub fn nft_observed(
        &self,
        view: Option<NftTable>,
        want: Option<&NftTable>,
    ) -> Result<Option<NftTable>, ObserveError> {
        Ok(nftables::observe_from(view, want, self.made.as_ref())?)
    }
}

/// The parts of a snapshot the cache holds, in a snapshot's terms.
struct Assembled {
    links: Vec<LinkSnap>,
    addrs: Vec<AddrSnap>,
    routes: Vec<RouteSnap>,
    nft: Option<NftTable>,
}

fn assemble(cache: &mut Cache) -> Assembled {
    let nft = match cache.nft_view.take() {
        Some(view) => view,
        None => cache.nft.table(),
    };
    ensure_snaps(cache);
    let mut links = std::mem::take(&mut cache.snaps);
    cache.snaps_out = true;
    for (l, &i) in links.iter_mut().zip(&cache.snap_keys) {
        // The cache holds exactly the ports with traffic control and the shaped bridges.
        l.tc_drift = cache.tc.get(&l.name).is_some_and(|e| e.drift);
        l.shaping = cache.shaping.get(&l.name).cloned().flatten();
        // No notification says who owns a macvtap's character device: read at every
        // snapshot, as a fresh read would (there are few of them).
        if let Some(m) = l.macvtap.as_mut()
            && l.kind == "macvtap"
        {
            m.dev_owner = crate::backend::macvtap::node_owner(&l.name, i);
        }
    }
    let name_of = |i: u32| cache.links.get(&i).map(|l| l.name.clone());
    Assembled {
        links,
        addrs: observe::addr_snaps(cache.addrs.clone(), &name_of),
        routes: observe::route_snaps(cache.routes.clone(), &name_of),
        nft,
    }
}

/// Makes `snaps` again if a snapshot still has them.
fn ensure_snaps(cache: &mut Cache) {
    if std::mem::take(&mut cache.snaps_out) {
        convert(cache, None);
    }
}

/// The links that refer to others by index (master, lower device, bond primary): their
/// snapshots name those others.
fn refers_to(l: &LinkInfo, changed: &BTreeSet<u32>) -> bool {
    [
        l.master,
        l.vxlan.as_ref().and_then(|v| v.link),
        l.peer_index,
        l.bond.as_ref().and_then(|b| b.primary),
    ]
    .into_iter()
    .flatten()
    .any(|i| changed.contains(&i))
}

/// Converts again the links in `changed` and those that refer to them (all when `None`).
fn convert(cache: &mut Cache, changed: Option<&BTreeSet<u32>>) {
    let links = &cache.links;
    let name_of = |i: u32| links.get(&i).map(|l| l.name.clone());
    match changed {
        None => {
            cache.snap_keys = links.keys().copied().collect();
            cache.snaps = links.values().map(|l| snap_of(l, &name_of)).collect();
        }
        Some(changed) => {
            if cache.snap_keys.iter().any(|i| !links.contains_key(i)) {
                let mut keep = cache.snap_keys.iter().map(|i| links.contains_key(i));
                cache
                    .snaps
                    .retain(|_| keep.next().expect("one key per link"));
                cache.snap_keys.retain(|i| links.contains_key(i));
            }
            for (&i, l) in links {
                if changed.contains(&i) || refers_to(l, changed) {
                    let snap = snap_of(l, &name_of);
                    match cache.snap_keys.binary_search(&i) {
                        Ok(k) => cache.snaps[k] = snap,
                        Err(k) => {
                            cache.snap_keys.insert(k, i);
                            cache.snaps.insert(k, snap);
                        }
                    }
                }
            }
        }
    }
}

fn snap_of(l: &LinkInfo, name_of: &dyn Fn(u32) -> Option<String>) -> LinkSnap {
    let mut s = observe::link_snap(l, name_of);
    s.stats = None;
    s
}

fn read_whole(nl: &mut Netlink, t: &mut tc::Tc) -> Result<Cache, ObserveError> {
    let read_at = Instant::now();
    let links: BTreeMap<u32, LinkInfo> = nl
        .links_without_stats()?
        .into_iter()
        .map(|l| (l.index, l))
        .collect();
    let addrs = nl.addrs()?;
    let routes = nl.routes()?;
    let mut cache = Cache {
        links,
        snaps: Vec::new(),
        snap_keys: Vec::new(),
        snaps_out: false,
        addrs,
        routes,
        tc: HashMap::new(),
        shaping: HashMap::new(),
        nft: NftCache::read()?,
        nft_view: None,
        nft_changes: 0,
        read_at,
    };
    convert(&mut cache, None);
    refresh_tc(&mut cache, t, None)?;
    Ok(cache)
}

/// Reads again what `changes` says changed.
fn update(
    cache: &mut Cache,
    nl: &mut Netlink,
    t: &mut tc::Tc,
    changes: &Changes,
) -> Result<(), ObserveError> {
    // A device's root qdisc kind is a link fact, but changing it announces only a tc change.
    let indexes: BTreeSet<u32> = changes.links.union(&changes.tc).copied().collect();
    // Names the changed devices had before and have now: ports and bridges are found by name.
    let mut dirty = names_of(&cache.links, &indexes);
    for &i in &indexes {
        match nl.link_by_index(i)? {
            Some(l) => {
                cache.links.insert(i, l);
            }
            None => {
                cache.links.remove(&i);
            }
        }
    }
    dirty.extend(names_of(&cache.links, &indexes));
    ensure_snaps(cache);
    convert(cache, Some(&indexes));
    // A device's addresses go with it, announced; only the kernel's own flush of routes
    // through a device that went away or down is not (so routes are read again).
    if changes.addrs {
        cache.addrs = nl.addrs()?;
    } else if !changes.links.is_empty() {
        let links = &cache.links;
        cache.addrs.retain(|a| links.contains_key(&a.index));
    }
    if changes.routes || !changes.links.is_empty() {
        cache.routes = nl.routes()?;
    }
    if !dirty.is_empty() {
        refresh_tc(cache, t, Some(&dirty))?;
    }
    let touched = cache.nft.update(&changes.nft, &changes.nft_elements)?;
    if !touched.is_empty() {
        cache.nft_changes += 1;
        if let Some(view) = cache.nft_view.as_mut() {
            cache.nft.patch(view, &touched);
        }
    }
    Ok(())
}

/// Traffic control of the ports and bridges that need it: all of them (`dirty` None), or
/// those whose devices (the port, its IFB, its mirror target) are in `dirty`. A port's mark
/// changes only with its link, so the others keep what was read before.
fn refresh_tc(
    cache: &mut Cache,
    t: &mut tc::Tc,
    dirty: Option<&BTreeSet<String>>,
) -> Result<(), ObserveError> {
    let snaps: Vec<LinkSnap> = match dirty {
        None => {
            cache.tc.clear();
            cache.shaping.clear();
            cache.snaps.clone()
        }
        Some(d) => {
            let mut names: BTreeSet<&str> = d.iter().map(String::as_str).collect();
            for (port, entry) in &cache.tc {
                let mirror = entry.want.mirror_to.as_ref();
                if d.contains(&entry.ifb) || mirror.is_some_and(|m| d.contains(m)) {
                    names.insert(port);
                }
            }
            let found: Vec<LinkSnap> = cache
                .snaps
                .iter()
                .filter(|l| names.contains(l.name.as_str()))
                .cloned()
                .collect();
            // Dirty names that are no port or bridge any more lose what was read for them.
            for n in d {
                cache.tc.remove(n);
                cache.shaping.remove(n);
            }
            found
        }
    };

    let todo: Vec<PortTc> = observe::port_tcs(&snaps)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if !todo.is_empty() {
        // Device by device when few change; one dump of every qdisc when many do.
        let observed = t.observe_ports(&todo, todo.len() <= 16)?;
        for (want, o) in todo.into_iter().zip(&observed) {
            let drift = !tc::matches(&want, o);
            cache.tc.insert(
                want.dev.clone(),
                PortEntry {
                    ifb: want.ifb_dev(),
                    want,
                    drift,
                },
            );
        }
    }

    let read = observe::shaped_bridges(&snaps);
    if !read.is_empty() {
        let mut found: HashMap<String, Shaping> =
            observe::read_shaping_of(t, &read, read.len() <= 4)?
                .into_iter()
                .collect();
        for b in read {
            cache.shaping.insert(b.to_string(), found.remove(b));
        }
    }
    Ok(())
}
