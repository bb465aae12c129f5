//! Reads the live host into a `Snapshot`: links, addresses and routes of the namespace kvmnet
//! runs in, guest namespaces of interest, kvmnet's own nftables table, sysctls of interest.
//! Read-only: observing never changes anything.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use crate::backend::rtnl::{BondOptions, LinkInfo, Netlink, NetlinkError, RTPROT_RA};
use crate::backend::{netns, nftables, sysctl, tap};
use crate::borrowed::Borrowed;
use crate::desired::managed_sysctls;
use crate::snapshot::{
    Addr6Snap, AddrSnap, BondSnap, EthtoolSnap, LinkSnap, MacvtapSnap, NetnsSnap, Route6Snap,
    RouteSnap, Snapshot, Stats, VlanSnap, VxlanSnap,
};
use crate::spec::{BondMode, DirectMode, LACP_RATES, Owner, PortKind, Spec, XMIT_HASH_POLICIES};
use crate::state::{MARK, parse_alias};
use crate::statedir::{StateDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Nft(#[from] nftables::NftError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Tc(#[from] crate::backend::tc::TcError),
    #[error(transparent)]
    Events(#[from] crate::backend::events::EventsError),
    /// Boxed: its messages carry a remote and names.
    #[error(transparent)]
    Nb(Box<crate::ovn::nb::NbError>),
    #[error(transparent)]
    Chassis(Box<crate::ovn::local::LocalError>),
}

impl From<crate::ovn::local::LocalError> for ObserveError {
    fn from(e: crate::ovn::local::LocalError) -> Self {
        ObserveError::Chassis(Box::new(e))
    }
}

impl From<crate::ovn::nb::NbError> for ObserveError {
    fn from(e: crate::ovn::nb::NbError) -> Self {
        ObserveError::Nb(Box::new(e))
    }
}

/// The traffic control each port's mark records, for the ports that have any.
pub(crate) fn port_tcs(links: &[LinkSnap]) -> Vec<(usize, crate::backend::tc::PortTc)> {
    links
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let a = l.alias.as_deref().and_then(parse_alias)?;
            (a.qos_in.is_some() || a.qos_out.is_some() || a.mirror.is_some()).then(|| {
                (
                    i,
                    crate::apply::port_tc(&l.name, a.qos_in, a.qos_out, a.mirror.clone()),
                )
            })
        })
        .collect()
}

/// Marks ports whose live traffic control is not what their mark records.
fn check_tc(links: &mut [LinkSnap]) -> Result<(), ObserveError> {
    let (at, wanted): (Vec<usize>, Vec<_>) = port_tcs(links).into_iter().unzip();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut tc = crate::backend::tc::Tc::open()?;
    let live = tc.observe_many(&wanted)?;
    for ((i, w), o) in at.into_iter().zip(&wanted).zip(&live) {
        links[i].tc_drift = !crate::backend::tc::matches(w, o);
    }
    Ok(())
}

/// The kvmnet bridges with a root qdisc of their own: those that may have a shaping tree.
pub(crate) fn shaped_bridges(links: &[LinkSnap]) -> Vec<&str> {
    links
        .iter()
        .filter(|l| l.kind == "bridge" && l.qdisc.is_some())
        .filter(|l| l.alias.as_deref().and_then(parse_alias).is_some())
        .map(|l| l.name.as_str())
        .collect()
}

/// The shaping trees of `bridges`, read back (`few`: device by device, not from a dump of
/// every device's qdiscs).
pub(crate) fn read_shaping_of(
    t: &mut crate::backend::tc::Tc,
    bridges: &[&str],
    few: bool,
) -> Result<Vec<(String, crate::state::Shaping)>, ObserveError> {
    use crate::backend::tc;
    if bridges.is_empty() {
        return Ok(Vec::new());
    }
    let clock = t.clock();
    let devs = if few {
        t.observe_devs_few(bridges)?
    } else {
        t.observe_devs(bridges)?
    };
    let mut out = Vec::new();
    for dev in devs {
        let Some(sh) = tc::read_shaping(&dev) else {
            continue;
        };
        let intact = tc::plan_shaping(Some(&sh), &dev, &clock).is_ok_and(|ops| ops.is_empty());
        out.push((dev.name.clone(), sh.to_state(intact)));
    }
    Ok(out)
}

/// Reads back the shaping tree of every kvmnet bridge that has one. A bridge without a root
/// qdisc of its own (`noqueue`, the default) costs nothing.
fn read_shaping(links: &mut [LinkSnap]) -> Result<(), ObserveError> {
    let bridges = shaped_bridges(links);
    if bridges.is_empty() {
        return Ok(());
    }
    let mut t = crate::backend::tc::Tc::open()?;
    for (name, sh) in read_shaping_of(&mut t, &bridges, false)? {
        if let Some(l) = links.iter_mut().find(|l| l.name == name) {
            l.shaping = Some(sh);
        }
    }
    Ok(())
}

/// The mark on a guest namespace's loopback that says kvmnet created it for `scope`.
pub fn netns_mark(scope: &str) -> String {
    format!("{MARK} guest-of={scope}")
}

/// Links, addresses and routes of the namespace the socket lives in (`owned` left false).
pub fn read_links(nl: &mut Netlink) -> Result<NetnsSnap, NetlinkError> {
    read_links_with(nl, true)
}

/// [`read_links`]; without `counters` the links carry no traffic counters (cheaper to read).
fn read_links_with(nl: &mut Netlink, counters: bool) -> Result<NetnsSnap, NetlinkError> {
    let links = if counters {
        nl.links()?
    } else {
        nl.links_without_stats()?
    };
    Ok(netns_snap(&links, nl.addrs()?, nl.routes()?, counters))
}

/// What links, addresses and routes read from the kernel mean in a snapshot.
pub(crate) fn netns_snap(
    links: &[LinkInfo],
    addrs: Vec<crate::backend::rtnl::AddrInfo>,
    routes: Vec<crate::backend::rtnl::RouteInfo>,
    counters: bool,
) -> NetnsSnap {
    let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let name_of = |i: u32| names.get(&i).cloned();
    let snaps = links
        .iter()
        .map(|l| {
            let mut s = link_snap(l, &name_of);
            if !counters {
                s.stats = None;
            }
            s
        })
        .collect();
    NetnsSnap {
        owned: false,
        links: snaps,
        addrs: addr_snaps(addrs, &name_of),
        routes: route_snaps(routes, &name_of),
        addrs6: Vec::new(),
        routes6: Vec::new(),
    }
}

/// [`read_links`] of a guest namespace, with what kvmnet sets of IPv6 on a veth port's far
/// end: permanent global addresses and IPv6 default routes, but those the kernel learns from
/// router advertisements (SLAAC's and a DHCPv6 client's are the guest's own).
fn read_guest_links(nl: &mut Netlink) -> Result<NetnsSnap, NetlinkError> {
    let links = nl.links()?;
    let mut snap = netns_snap(&links, nl.addrs()?, nl.routes()?, true);
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let name_of = |i: u32| names.get(&i).map(|n| n.to_string());
    snap.addrs6 = nl
        .permanent_addrs6()?
        .into_iter()
        .filter_map(|(i, addr)| {
            Some(Addr6Snap {
                dev: name_of(i)?,
                addr,
            })
        })
        .collect();
    snap.routes6 = nl
        .routes6()?
        .into_iter()
        .filter(|r| r.dst.prefix == 0 && r.route_type == 1 && r.protocol != RTPROT_RA)
        .filter_map(|r| {
            Some(Route6Snap {
                dev: name_of(r.oif?)?,
                dst: r.dst,
                gateway: r.gateway,
                table: r.table,
                protocol: r.protocol,
            })
        })
        .collect();
    Ok(snap)
}

/// Global IPv6 addresses, named. Read at every snapshot: a host has few (the gateway
/// addresses of kvmnet's bridges, an uplink's), so each device is looked up by index.
fn read_addrs6(nl: &mut Netlink) -> Result<Vec<Addr6Snap>, ObserveError> {
    let mut names: std::collections::HashMap<u32, Option<String>> =
        std::collections::HashMap::new();
    let mut out = Vec::new();
    for (i, addr) in nl.addrs6()? {
        if let std::collections::hash_map::Entry::Vacant(e) = names.entry(i) {
            e.insert(nl.link_by_index(i)?.map(|l| l.name));
        }
        if let Some(Some(dev)) = names.get(&i) {
            out.push(Addr6Snap {
                dev: dev.clone(),
                addr,
            });
        }
    }
    Ok(out)
}

/// Addresses with their devices named (those of unknown devices left out).
pub(crate) fn addr_snaps(
    addrs: Vec<crate::backend::rtnl::AddrInfo>,
    name_of: &dyn Fn(u32) -> Option<String>,
) -> Vec<AddrSnap> {
    addrs
        .into_iter()
        .filter_map(|a| {
            Some(AddrSnap {
                dev: name_of(a.index)?,
                addr: a.addr,
                broadcast: a.broadcast,
            })
        })
        .collect()
}

/// Unicast routes with their devices named: local and broadcast ones are the kernel's.
pub(crate) fn route_snaps(
    routes: Vec<crate::backend::rtnl::RouteInfo>,
    name_of: &dyn Fn(u32) -> Option<String>,
) -> Vec<RouteSnap> {
    routes
        .into_iter()
        .filter(|r| r.route_type == 1)
        .filter_map(|r| {
            Some(RouteSnap {
                dev: name_of(r.oif?)?,
                dst: r.dst,
                gateway: r.gateway,
                metric: r.priority,
                table: r.table,
                protocol: r.protocol,
                scope: r.scope,
                prefsrc: r.prefsrc,
            })
        })
        .collect()
}

/// A link as a snapshot shows it; `name_of` names the links it refers to by index.
pub(crate) fn link_snap(l: &LinkInfo, name_of: &dyn Fn(u32) -> Option<String>) -> LinkSnap {
    LinkSnap {
        name: l.name.clone(),
        kind: l.kind.clone().unwrap_or_default(),
        mac: l.mac,
        mtu: l.mtu,
        master: l.master.and_then(name_of),
        up: l.admin_up,
        oper_up: l.oper_up,
        alias: l.alias.clone().filter(|a| !a.is_empty()),
        tun_owner: l.tun.as_ref().and_then(|t| t.owner),
        tun_multi_queue: l.tun.as_ref().is_some_and(|t| t.multi_queue),
        isolated: l.brport_isolated.unwrap_or(false),
        tc_drift: false,
        stats: Some(Stats {
            rx_bytes: l.stats.rx_bytes,
            rx_packets: l.stats.rx_packets,
            tx_bytes: l.stats.tx_bytes,
            tx_packets: l.stats.tx_packets,
        }),
        vxlan: l.vxlan.as_ref().map(|v| VxlanSnap {
            vni: v.vni,
            link: v.link.and_then(name_of),
            local: v.local,
            group: v.group,
            port: v.port,
            learning: v.learning,
        }),
        fdb: Vec::new(),
        qdisc: l.qdisc.clone().filter(|q| q != "noqueue"),
        shaping: None,
        // Foreign macvlans count too: a passthrough port needs its uplink alone.
        macvtap: matches!(l.kind.as_deref(), Some("macvtap" | "macvlan")).then(|| MacvtapSnap {
            link: l.peer_index.and_then(name_of),
            mode: l.macvlan_mode.and_then(DirectMode::from_kernel),
            dev_owner: (l.kind.as_deref() == Some("macvtap"))
                .then(|| crate::backend::macvtap::node_owner(&l.name, l.index))
                .flatten(),
        }),
        vlan: l.vlan_id.map(|id| VlanSnap {
            id,
            link: l.peer_index.and_then(name_of),
        }),
        bond: l.bond.as_ref().map(|b| bond_snap(b, name_of)),
    }
}

/// Option numbers as their kernel names; lacp_rate only where the kernel reports it.
fn bond_snap(b: &BondOptions, name_of: &dyn Fn(u32) -> Option<String>) -> BondSnap {
    let name = |list: &[&str], n: Option<u8>| {
        n.and_then(|n| list.get(usize::from(n)))
            .map_or(String::new(), |s| s.to_string())
    };
    BondSnap {
        mode: b
            .mode
            .and_then(BondMode::from_number)
            .map_or(String::new(), |m| m.as_str().to_string()),
        miimon: b.miimon.unwrap_or(0),
        lacp_rate: name(&LACP_RATES, b.lacp_rate),
        xmit_hash_policy: name(&XMIT_HASH_POLICIES, b.xmit_hash_policy),
        min_links: b.min_links.unwrap_or(0),
        primary: b.primary.and_then(name_of),
    }
}

/// The flood entries (all-zeros MAC, with a destination) of kvmnet's VXLAN devices, except
/// the one the kernel keeps for a device's own group.
fn read_fdb(nl: &mut Netlink, links: &mut [LinkSnap]) -> Result<(), NetlinkError> {
    let ours =
        |l: &LinkSnap| l.vxlan.is_some() && l.alias.as_deref().and_then(parse_alias).is_some();
    if !links.iter().any(ours) {
        return Ok(());
    }
    let index: HashMap<String, u32> = nl
        .links_without_stats()?
        .into_iter()
        .map(|l| (l.name, l.index))
        .collect();
    let entries = nl.fdb()?;
    for l in links.iter_mut().filter(|l| ours(l)) {
        let Some(&i) = index.get(&l.name) else {
            continue;
        };
        let group = l.vxlan.as_ref().and_then(|v| v.group);
        l.fdb = entries
            .iter()
            .filter(|e| e.index == i && e.mac.is_zero())
            .filter_map(|e| e.dst)
            .filter(|d| Some(*d) != group)
            .collect();
        l.fdb.sort();
    }
    Ok(())
}

fn read_netns(name: &str, scope: &str) -> Result<NetnsSnap, ObserveError> {
    let mut snap = netns::with_netns(name, || -> Result<_, NetlinkError> {
        let mut nl = Netlink::open()?;
        read_guest_links(&mut nl)
    })??;
    let mark = netns_mark(scope);
    snap.owned = snap
        .links
        .iter()
        .any(|l| l.name == "lo" && l.alias.as_deref() == Some(mark.as_str()));
    Ok(snap)
}

/// Whether namespace `name`'s loopback carries kvmnet's mark for `scope`.
fn marked_ours(name: &str, scope: &str) -> bool {
    let mark = netns_mark(scope);
    netns::with_netns(name, || -> Result<_, NetlinkError> {
        Netlink::open()?.link_by_name("lo")
    })
    .ok()
    .and_then(Result::ok)
    .flatten()
    .is_some_and(|lo| lo.alias.as_deref() == Some(mark.as_str()))
}

/// Names under /run/netns (the namespaces `ip netns` knows).
fn named_namespaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                // A placeholder (a create killed before its mount) is no namespace.
                .filter(|n| !netns::is_placeholder_named(n))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub struct Observer {
    pub scope: String,
    pub state_dir: StateDir,
    /// Whether links carry traffic counters: status shows them, planning needs none.
    pub counters: bool,
}

impl Observer {
    pub fn new(scope: &str) -> Observer {
        Observer {
            scope: scope.to_string(),
            state_dir: StateDir::for_scope(scope),
            counters: true,
        }
    }

    /// Everything the pure layers need to plan `spec` (or a destroy when `spec` is `None`).
    pub fn snapshot(&self, spec: Option<&Spec>) -> Result<Snapshot, ObserveError> {
        self.snapshot_with(spec, &BTreeSet::new())
    }

    /// Like `snapshot`, also reading the sysctls in `extra_sysctls` (a revert needs the ones
    /// the state it goes back to had).
    pub fn snapshot_with(
        &self,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<Snapshot, ObserveError> {
        let want_nft = spec.and_then(crate::nft::table_for);
        self.snapshot_for(spec, want_nft.as_ref(), extra_sysctls)
    }

    /// [`Observer::snapshot_with`], given the spec's nftables tables (made already).
    pub fn snapshot_for(
        &self,
        spec: Option<&Spec>,
        want_nft: Option<&crate::nft::NftTable>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<Snapshot, ObserveError> {
        let mut snap = self.snapshot_but_nft(spec, extra_sysctls)?;
        snap.nft = nftables::observe(want_nft)?;
        Ok(snap)
    }

    /// [`Observer::snapshot_with`] but for the nftables tables (`None`): those are read
    /// according to the tables wanted ([`nftables::observe`]), which a plan makes meanwhile.
    pub fn snapshot_but_nft(
        &self,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
    ) -> Result<Snapshot, ObserveError> {
        let mut nl = Netlink::open()?;
        let NetnsSnap {
            mut links,
            addrs,
            routes,
            ..
        } = read_links_with(&mut nl, self.counters)?;
        check_tc(&mut links)?;
        read_shaping(&mut links)?;
        self.complete(spec, extra_sysctls, &mut nl, links, addrs, routes, None)
    }

    /// The rest of a snapshot, around links (with their traffic control), addresses, routes
    /// and nftables tables read already: what has no change notifications (sysctls, ethtool,
    /// the state directory, users, other namespaces) is read now.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn complete(
        &self,
        spec: Option<&Spec>,
        extra_sysctls: &BTreeSet<String>,
        nl: &mut Netlink,
        mut links: Vec<LinkSnap>,
        addrs: Vec<AddrSnap>,
        routes: Vec<RouteSnap>,
        nft: Option<crate::nft::NftTable>,
    ) -> Result<Snapshot, ObserveError> {
        read_fdb(nl, &mut links)?;
        let netns = self.read_guest_namespaces(&referenced_namespaces(spec, &links))?;
        let state = self.state_dir.load()?;
        let ethtool = read_ethtool(ethtool_devices(spec, &state.borrowed), &links);
        let keys = sysctl_keys(spec, &state.borrowed, extra_sysctls);
        let users = port_owner_uids(spec);
        let sysctl_readonly = keys
            .iter()
            .filter(|k| !sysctl::writable(k))
            .cloned()
            .collect();
        let sysctls = keys.into_iter().map(|k| {
            let v = sysctl::read(&k);
            (k, v)
        });

        let addrs6 = read_addrs6(nl)?;
        let mut snap = Snapshot {
            scope: self.scope.clone(),
            links,
            addrs,
            addrs6,
            routes,
            netns,
            nft,
            sysctls: sysctls.collect(),
            sysctl_readonly,
            users,
            ethtool,
            ..Snapshot::default()
        };
        state.borrowed.fill(&mut snap);
        Ok(snap)
    }

    /// The guest namespaces of this scope: those in `referenced`, read whole, and any other
    /// whose loopback carries our mark for this scope.
    fn read_guest_namespaces(
        &self,
        referenced: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, NetnsSnap>, ObserveError> {
        let current = if self.scope == "host" {
            None
        } else {
            Some(self.scope.clone())
        };
        let mut netns_snaps = BTreeMap::new();
        for ns in named_namespaces() {
            if Some(&ns) == current.as_ref() {
                continue;
            }
            // Namespaces we reference are read whole. Any other is ours only if its loopback
            // carries our mark: one look at `lo`, not a dump of what may be a busy host.
            if !referenced.contains(&ns) && !marked_ours(&ns, &self.scope) {
                continue;
            }
            match read_netns(&ns, &self.scope) {
                Ok(s) => {
                    if referenced.contains(&ns) || s.owned {
                        netns_snaps.insert(ns, s);
                    }
                }
                Err(_) if !referenced.contains(&ns) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(netns_snaps)
    }
}

/// Guest namespaces kvmnet refers to: those the spec names and those our veth ports point
/// to. (Others may still be ours: [`Observer::read_guest_namespaces`] looks for the mark.)
fn referenced_namespaces(spec: Option<&Spec>, links: &[LinkSnap]) -> BTreeSet<String> {
    let mut guests: BTreeSet<String> = BTreeSet::new();
    if let Some(spec) = spec {
        for vm in spec.vms.values() {
            for p in &vm.ports {
                if let Some(ns) = &p.netns {
                    guests.insert(ns.clone());
                }
            }
        }
    }
    for l in links
        .iter()
        .filter(|l| l.alias.as_deref().is_some_and(|a| a.contains("netns=")))
    {
        if let Some(ns) = l
            .alias
            .as_deref()
            .and_then(parse_alias)
            .and_then(|a| a.netns)
        {
            guests.insert(ns);
        }
    }
    guests
}

/// The interfaces whose ethtool settings matter: what the spec configures, and foreign
/// interfaces with recorded originals.
fn ethtool_devices(spec: Option<&Spec>, borrowed: &Borrowed) -> BTreeSet<String> {
    let mut devs: BTreeSet<String> = borrowed.ethtool.keys().cloned().collect();
    if let Some(spec) = spec {
        devs.extend(spec.host.ethtool.keys().cloned());
        for vm in spec.vms.values() {
            for p in vm.ports.iter().filter(|p| p.ethtool.is_some()) {
                devs.insert(p.name.clone());
            }
        }
    }
    devs
}

/// The ethtool settings of those of `devs` that exist (one that cannot be read is left out).
fn read_ethtool(devs: BTreeSet<String>, links: &[LinkSnap]) -> BTreeMap<String, EthtoolSnap> {
    let mut ethtool = BTreeMap::new();
    for dev in devs {
        if links.iter().any(|l| l.name == dev)
            && let Ok(r) = crate::backend::ethtool::read(&dev)
        {
            ethtool.insert(
                dev,
                EthtoolSnap {
                    values: r.values,
                    max: r.max,
                },
            );
        }
    }
    ethtool
}

/// The sysctls to read: those with recorded originals, `extra`, and those the spec manages.
fn sysctl_keys(
    spec: Option<&Spec>,
    borrowed: &Borrowed,
    extra: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut keys: BTreeSet<String> = borrowed.sysctls.keys().cloned().collect();
    keys.extend(extra.iter().cloned());
    if let Some(spec) = spec {
        keys.extend(managed_sysctls(spec).into_keys());
    }
    keys
}

/// The uids of the users that own the spec's tap and macvtap ports (unknown users left out).
fn port_owner_uids(spec: Option<&Spec>) -> BTreeMap<String, u32> {
    let mut users = BTreeMap::new();
    let Some(spec) = spec else {
        return users;
    };
    for vm in spec.vms.values() {
        for p in &vm.ports {
            if let (PortKind::Tap | PortKind::Macvtap, Some(Owner::User(u))) = (p.kind, &p.owner)
                && let Some(uid) = tap::uid_of(u)
            {
                users.insert(u.clone(), uid);
            }
        }
    }
    users
}
