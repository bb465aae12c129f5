//! Runs a plan against the kernel. Steps run in order; consecutive steps of one sort are sent
//! to the kernel together (pipelined netlink requests) because that is where the time goes
//! with many ports. On any failure the steps already done are undone in reverse order.

mod kinds;

use std::collections::HashMap;

use crate::backend::rtnl::{
    BondOptions, Netlink, NetlinkError, NewLinkKind, Request, Route6Info, RouteInfo,
};
use crate::backend::{ethtool, macvtap, netns, nftables, sysctl, tap, tc};
use crate::plan::{Change, Step};
use crate::spec::{BondMode, LACP_RATES, XMIT_HASH_POLICIES};
use crate::state::BondLink;
use crate::state::{
    Addr, GuestEnd, PortKind, PortLink, Route, ShapeState, guest_alias, parse_alias,
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Tap(#[from] tap::TapError),
    /// Boxed, like the next: its messages carry names and an OS error.
    #[error(transparent)]
    Ethtool(Box<ethtool::EthtoolError>),
    /// Boxed: its messages carry paths, and every `Result` of this module pays for the
    /// largest variant.
    #[error(transparent)]
    Macvtap(Box<macvtap::MacvtapError>),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    Nft(#[from] nftables::NftError),
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Tc(#[from] tc::TcError),
    #[error("traffic control: {0}")]
    TrafficControl(String),
    #[error("interface '{0}' not found")]
    NoSuchLink(String),
    #[error("refusing to delete '{0}': it does not carry kvmnet's mark")]
    NotOurs(String),
    #[error("bond {0}: unknown {1} '{2}'")]
    BondOption(String, &'static str, String),
    #[error("{0}: cannot be changed in place")]
    InPlace(String),
    #[error("injected failure after step {0} (KVMNET_FAIL_AFTER)")]
    Injected(usize),
    /// Boxed, like the others carrying names.
    #[error(transparent)]
    Nb(Box<crate::ovn::nb::NbError>),
    #[error("the plan changes OVN Northbound rows but names no Northbound database")]
    NoNb,
    #[error(transparent)]
    Chassis(Box<crate::ovn::local::LocalError>),
}

impl From<crate::ovn::local::LocalError> for ApplyError {
    fn from(e: crate::ovn::local::LocalError) -> Self {
        ApplyError::Chassis(Box::new(e))
    }
}

impl From<crate::ovn::nb::NbError> for ApplyError {
    fn from(e: crate::ovn::nb::NbError) -> Self {
        ApplyError::Nb(Box::new(e))
    }
}

impl From<ethtool::EthtoolError> for ApplyError {
    fn from(e: ethtool::EthtoolError) -> Self {
        ApplyError::Ethtool(Box::new(e))
    }
}

impl From<macvtap::MacvtapError> for ApplyError {
    fn from(e: macvtap::MacvtapError) -> Self {
        ApplyError::Macvtap(Box::new(e))
    }
}

/// Where a run of steps stopped.
#[derive(Debug)]
pub struct Stopped {
    /// The steps that were done, in any order.
    pub done: Vec<usize>,
    /// The steps that failed, the one reported first. Each may be half done: when several
    /// requests of one batch were in flight together, any of them may have been refused
    /// after part of its work (a tap made but not attached, say), so every one gets its
    /// inverse tried as clean-up, not only the first.
    pub failed: Vec<usize>,
    pub error: ApplyError,
}

/// Something that can carry out steps.
pub trait Executor {
    fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>>;
}

#[derive(Debug)]
pub struct Failure {
    pub step: usize,
    pub error: ApplyError,
    /// Errors met while undoing; empty when the rollback was clean.
    pub rollback_errors: Vec<String>,
}

/// Runs `steps`, stopping with an injected failure after `fail_after` steps when set. On
/// failure everything done is undone (in reverse) before returning.
pub fn apply(
    exec: &mut dyn Executor,
    steps: &[Step],
    fail_after: Option<usize>,
) -> Result<(), Failure> {
    let limit = fail_after.unwrap_or(usize::MAX).min(steps.len());
    let Stopped {
        mut done,
        failed,
        error,
    } = match exec.run(&steps[..limit]) {
        Ok(()) if fail_after.is_some_and(|k| k <= steps.len()) => Stopped {
            done: (0..limit).collect(),
            failed: Vec::new(),
            error: ApplyError::Injected(limit),
        },
        Ok(()) => return Ok(()),
        Err(e) => *e,
    };
    let failed_at = failed.first().copied().unwrap_or(limit);
    // Best effort, newest first: a failed step may have left something behind, or nothing
    // (then its inverse fails, and that is no error of the rollback).
    let mut failed = failed;
    failed.sort_unstable();
    for i in failed.iter().rev() {
        let _ = exec.run(&[steps[*i].inverse()]);
    }
    done.sort_unstable();
    let undo: Vec<Step> = done.iter().rev().map(|i| steps[*i].inverse()).collect();
    let mut rollback_errors = Vec::new();
    if let Err(stop) = exec.run(&undo) {
        let at = stop.failed.first().copied().unwrap_or(0);
        rollback_errors.push(format!("undo {}: {}", undo[at], stop.error));
        // Keep going: undo whatever else of the batch and after it can be undone, reporting
        // every error.
        let mut rest: Vec<usize> = stop.failed[1..].to_vec();
        rest.extend(at + 1..undo.len());
        let undone: std::collections::HashSet<usize> = stop.done.iter().copied().collect();
        rest.retain(|i| !undone.contains(i));
        rest.sort_unstable();
        rest.dedup();
        for i in rest {
            if let Err(e) = exec.run(std::slice::from_ref(&undo[i])) {
                rollback_errors.push(format!("undo {}: {}", undo[i], e.error));
            }
        }
    }
    Err(Failure {
        step: failed_at + 1,
        error,
        rollback_errors,
    })
}

/// Deletes the links of this namespace that a kvmnet made and was killed before it marked
/// (see [`crate::backend::rtnl::HALF_MADE_GROUP`]): one request, nothing when none.
pub fn remove_half_made() -> Result<(), ApplyError> {
    Ok(Netlink::open()?.delete_group(crate::backend::rtnl::HALF_MADE_GROUP)?)
}

/// The real thing: netlink, tun ioctls, nft, /proc/sys.
pub struct Kernel {
    nl: Netlink,
    scope: String,
    guests: HashMap<String, Netlink>,
    index: HashMap<String, u32>,
    /// Links that carry kvmnet's mark, or that this run created: the only ones it may delete.
    deletable: std::collections::HashSet<String>,
    /// The OVN Northbound database the plan's row changes go to.
    nb: Option<String>,
}

/// The traffic control a port's record asks for, in the tc backend's terms.
pub fn port_tc(
    dev: &str,
    qos_in: Option<ShapeState>,
    qos_out: Option<ShapeState>,
    mirror: Option<String>,
) -> tc::PortTc {
    let rate = |s: ShapeState| tc::Rate {
        bits_per_sec: s.rate,
        ceil_bits_per_sec: (s.ceil > 0).then_some(s.ceil),
        burst_bytes: (s.burst > 0).then_some(s.burst),
        cburst_bytes: None,
    };
    tc::PortTc {
        dev: dev.to_string(),
        inbound: qos_in.map(rate),
        outbound: qos_out.map(rate),
        ifb: None,
        mirror_to: mirror,
    }
}

fn link_tc(p: &PortLink) -> tc::PortTc {
    port_tc(&p.name, p.qos_in, p.qos_out, p.mirror.clone())
}

/// A link's full configuration in one request: what every kvmnet-made link gets set.
fn configure(
    index: u32,
    mac: crate::spec::Mac,
    mtu: u32,
    master: Option<u32>,
    up: bool,
    alias: String,
) -> Request {
    Request::SetLink {
        index,
        name: None,
        mac: Some(mac),
        mtu: Some(mtu),
        master,
        up: Some(up),
        alias: Some(alias),
        netns_fd: None,
    }
}

fn set_up(index: u32) -> Request {
    let mut r = Request::set_link(index);
    if let Request::SetLink { up, .. } = &mut r {
        *up = Some(true);
    }
    r
}

/// The host end of a port, attached to bridge `master` (0: released).
fn configure_port(p: &PortLink, index: u32, master: u32) -> Request {
    configure(index, p.mac, p.mtu, Some(master), p.up, p.alias())
}

/// A bond's options as netlink numbers, only those its mode has (the kernel refuses the
/// others). `primary`: None on creation (no members yet), else the member's index or 0.
fn bond_options(
    b: &BondLink,
    create: bool,
    primary: Option<u32>,
) -> Result<BondOptions, ApplyError> {
    let bad = |what, v: &str| ApplyError::BondOption(b.name.clone(), what, v.to_string());
    let mode = BondMode::parse(&b.mode).ok_or_else(|| bad("mode", &b.mode))?;
    let pos = |list: &[&str], v: &str, what| {
        list.iter()
            .position(|x| *x == v)
            .map(|i| i as u8)
            .ok_or_else(|| bad(what, v))
    };
    let lacp = mode == BondMode::Lacp;
    Ok(BondOptions {
        mode: create.then(|| mode.number()),
        miimon: Some(b.miimon),
        lacp_rate: if lacp {
            Some(pos(&LACP_RATES, &b.lacp_rate, "lacp_rate")?)
        } else {
            None
        },
        xmit_hash_policy: if mode.hashes() {
            Some(pos(
                &XMIT_HASH_POLICIES,
                &b.xmit_hash_policy,
                "xmit_hash_policy",
            )?)
        } else {
            None
        },
        min_links: lacp.then_some(b.min_links),
        primary: primary.filter(|_| mode.has_primary()),
    })
}

/// What takes a veth far end's IPv6 from `old` (as found; `None` for a new far end) to
/// `new`, in three steps run in this order among the IPv4 ones: the old default route
/// removed, the address changed, the new default route added (its gateway is on-link
/// through the prefix route the kernel adds with the address). The address is added
/// without duplicate address detection, like the gateway's on the bridge: kvmnet has
/// checked it is unique on the network (the guard keeps other guests from claiming it), and
/// a tentative address could not be a source for the second or so DAD takes, where the
/// IPv4 one works at once.
fn guest_requests6(index: u32, old: Option<&GuestEnd>, new: &GuestEnd) -> [Vec<Request>; 3] {
    let (old_addr, old_gw) = (old.and_then(|g| g.addr6), old.and_then(|g| g.gateway6));
    let mut out: [Vec<Request>; 3] = Default::default();
    if old_gw != new.gateway6 {
        if let Some(gw) = old_gw {
            out[0].push(Request::DelRoute6(Route6Info::default_via(gw, index)));
        }
        if let Some(gw) = new.gateway6 {
            out[2].push(Request::NewRoute6(Route6Info::default_via(gw, index)));
        }
    }
    if old_addr != new.addr6 {
        if let Some(addr) = old_addr {
            out[1].push(Request::DelAddr6 { index, addr });
        }
        if let Some(addr) = new.addr6 {
            out[1].push(Request::NewAddr6 { index, addr });
        }
    }
    out
}

fn route_info(route: &Route, oif: u32) -> RouteInfo {
    RouteInfo {
        table: route.table,
        dst: route.dst,
        gateway: route.gateway,
        oif: Some(oif),
        protocol: route.protocol,
        scope: route.scope,
        route_type: 1,
        priority: route.metric,
        prefsrc: route.prefsrc,
    }
}

impl Kernel {
    pub fn new(scope: &str) -> Result<Kernel, ApplyError> {
        Ok(Kernel {
            nl: Netlink::open()?,
            scope: scope.to_string(),
            guests: HashMap::new(),
            index: HashMap::new(),
            deletable: Default::default(),
            nb: None,
        })
    }

    /// Sends the plan's OVN Northbound row changes to `remotes`.
    pub fn with_nb(mut self, remotes: Option<String>) -> Kernel {
        self.nb = remotes;
        self
    }

    /// Row changes of OVN's Northbound database, as one transaction.
    fn nb_rows(&self, changes: &[&Change<kvmnet_core::ovn::NbRow>]) -> Result<(), ApplyError> {
        let remotes = self.nb.as_deref().ok_or(ApplyError::NoNb)?;
        Ok(crate::ovn::nb::execute(remotes, changes)?)
    }

    /// Learns afresh the indexes of `names` (and whether kvmnet marked them): one lookup each
    /// for a few, one dump of every link for many.
    fn refresh_names(&mut self, names: &[&str]) -> Result<(), ApplyError> {
        if names.len() > 32 {
            return self.refresh_index();
        }
        for n in names {
            self.index.remove(*n);
            if let Some(l) = self.nl.link_by_name(n)? {
                if l.alias.as_deref().and_then(parse_alias).is_some() {
                    self.deletable.insert(l.name.clone());
                }
                self.index.insert(l.name, l.index);
            }
        }
        Ok(())
    }

    fn refresh_index(&mut self) -> Result<(), ApplyError> {
        let links = self.nl.links_without_stats()?;
        for l in &links {
            if l.alias.as_deref().and_then(parse_alias).is_some() {
                self.deletable.insert(l.name.clone());
            }
        }
        self.index = links.into_iter().map(|l| (l.name, l.index)).collect();
        Ok(())
    }

    fn idx(&mut self, name: &str) -> Result<u32, ApplyError> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        match self.nl.link_by_name(name)? {
            Some(l) => {
                self.index.insert(name.to_string(), l.index);
                Ok(l.index)
            }
            None => Err(ApplyError::NoSuchLink(name.to_string())),
        }
    }

    fn guest(&mut self, ns: &str) -> Result<&mut Netlink, ApplyError> {
        if !self.guests.contains_key(ns) {
            let nl = netns::with_netns(ns, Netlink::open)??;
            self.guests.insert(ns.to_string(), nl);
        }
        Ok(self.guests.get_mut(ns).expect("just inserted"))
    }

    fn one(nl: &mut Netlink, req: Request) -> Result<(), ApplyError> {
        nl.execute(std::slice::from_ref(&req))
            .pop()
            .unwrap_or(Ok(()))
            .map_err(ApplyError::from)
    }

    fn master_index(&mut self, master: &Option<String>) -> Result<u32, ApplyError> {
        match master {
            Some(m) => self.idx(m),
            None => Ok(0),
        }
    }

    /// Sets the guest end of a veth port to `to`, from `from` when known.
    fn configure_guest(
        &mut self,
        port: &PortLink,
        from: Option<&PortLink>,
    ) -> Result<(), ApplyError> {
        let PortKind::Veth { netns: ns, guest } = &port.kind else {
            return Ok(());
        };
        let old = from.and_then(|f| match &f.kind {
            PortKind::Veth { guest, .. } => Some(guest.clone()),
            PortKind::Tap { .. } | PortKind::Macvtap { .. } => None,
        });
        let nl = self.guest(ns)?;
        let link = nl
            .link_by_name(&guest.name)?
            .ok_or_else(|| ApplyError::NoSuchLink(format!("{ns}/{}", guest.name)))?;
        let mut reqs = vec![configure(
            link.index,
            guest.mac,
            guest.mtu,
            None,
            guest.up,
            guest_alias(&port.name),
        )];
        let old_addr = old.as_ref().and_then(|g| g.addr);
        let old_gw = old.as_ref().and_then(|g| g.gateway);
        let default = |gw| RouteInfo {
            table: 254,
            dst: crate::spec::Ipv4Cidr::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            gateway: Some(gw),
            oif: Some(link.index),
            protocol: 3,
            scope: 0,
            route_type: 1,
            priority: None,
            prefsrc: None,
        };
        if old_gw != guest.gateway
            && let Some(gw) = old_gw
        {
            reqs.push(Request::DelRoute(default(gw)));
        }
        let [del6, addrs6, add6] = guest_requests6(link.index, old.as_ref(), guest);
        reqs.extend(del6);
        reqs.extend(addrs6);
        if old_addr != guest.addr {
            if let Some(a) = old_addr {
                reqs.push(Request::DelAddr {
                    index: link.index,
                    addr: a,
                });
            }
            if let Some(a) = guest.addr {
                reqs.push(Request::NewAddr {
                    index: link.index,
                    addr: a,
                    broadcast: Addr::with_standard_broadcast(a).broadcast,
                });
            }
        }
        if old_gw != guest.gateway
            && let Some(gw) = guest.gateway
        {
            reqs.push(Request::NewRoute(default(gw)));
        }
        reqs.extend(add6);
        for r in nl.execute(&reqs) {
            r?;
        }
        Ok(())
    }

    /// Makes taps so that no moment leaves one behind unmarked: each is opened (alive only
    /// while its descriptor is), given its IPv6 setting and its whole configuration, mark
    /// included, in one pipelined batch, and only then made persistent. A kill at any point
    /// leaves either nothing or a marked tap that the next apply repairs or destroy removes.
    /// In chunks, to stay well under the open-files limit.
    fn create_taps(&mut self, taps: &[(usize, &PortLink)], results: &mut [Result<(), ApplyError>]) {
        const CHUNK: usize = 256;
        for chunk in taps.chunks(CHUNK) {
            let mut open = Vec::with_capacity(chunk.len());
            let mut masters = HashMap::new();
            let mut reqs = Vec::with_capacity(chunk.len());
            for &(i, p) in chunk {
                let PortKind::Tap { owner, multi_queue } = &p.kind else {
                    unreachable!("create_taps takes taps");
                };
                let made = tap::open_tap(&p.name, *owner, *multi_queue)
                    .map_err(ApplyError::from)
                    .and_then(|fd| {
                        // A bridge port needs no IPv6 of its own: the host's is on the
                        // bridge.
                        if p.master.is_some() {
                            sysctl::disable_ipv6(&p.name)?;
                        }
                        let index = tap::index_of(&p.name)
                            .ok_or_else(|| ApplyError::NoSuchLink(p.name.clone()))?;
                        let master = self.master_index(&p.master)?;
                        Ok((fd, index, master))
                    });
                match made {
                    Ok((fd, index, master)) => {
                        let mut req = configure_port(p, index, master);
                        if let Request::SetLink {
                            alias, up, master, ..
                        } = &mut req
                        {
                            *alias = Some(p.alias_before_tc());
                            *master = None;
                            // Up only once closed: while kvmnet holds it the tap has carrier,
                            // and a port that comes up with carrier and loses it a moment
                            // later costs the bridge an enable and a disable each.
                            *up = Some(false);
                        }
                        reqs.push(req);
                        masters.insert(i, master);
                        open.push((i, p, fd, index));
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
            let configured = self.nl.execute(&reqs);
            let mut ups = Vec::new();
            let mut owners = Vec::new();
            for ((i, p, fd, index), r) in open.into_iter().zip(configured) {
                // Refused (a full bridge, say): the device goes when `fd` closes.
                results[i] = r
                    .map_err(ApplyError::from)
                    .and_then(|()| tap::persist(&fd, &p.name).map_err(ApplyError::from));
                if results[i].is_ok() {
                    self.deletable.insert(p.name.clone());
                    self.index.insert(p.name.clone(), index);
                    let mut r = Request::set_link(index);
                    if let Request::SetLink { up, master, .. } = &mut r {
                        *up = Some(p.up);
                        *master = Some(masters[&i]);
                    }
                    ups.push(r);
                    owners.push(i);
                }
            }
            for (i, r) in owners.into_iter().zip(self.nl.execute(&ups)) {
                if let Err(e) = r {
                    results[i] = Err(e.into());
                }
            }
        }
    }

    fn create_ports(&mut self, ports: &[&PortLink]) -> Vec<Result<(), ApplyError>> {
        let mut results: Vec<Result<(), ApplyError>> = ports.iter().map(|_| Ok(())).collect();
        let taps: Vec<(usize, &PortLink)> = ports
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, PortKind::Tap { .. }))
            .map(|(i, p)| (i, *p))
            .collect();
        self.create_taps(&taps, &mut results);
        for (i, p) in ports.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let master = match self.master_index(&p.master) {
                Ok(m) => m,
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
            };
            match &p.kind {
                PortKind::Tap { .. } => {}
                PortKind::Macvtap {
                    uplink,
                    mode,
                    owner,
                } => {
                    results[i] = self.create_macvtap(p, uplink, *mode, *owner);
                }
                PortKind::Veth { .. } => results[i] = self.create_veth(p, master),
            }
        }
        // Traffic control once every port of the batch exists (a mirror needs its target).
        let shaped: Vec<usize> = (0..ports.len())
            .filter(|&i| results[i].is_ok() && ports[i].has_tc())
            .collect();
        if !shaped.is_empty() {
            let want: Vec<tc::PortTc> = shaped.iter().map(|&i| link_tc(ports[i])).collect();
            if let Err(e) = tc::Tc::open().and_then(|mut t| t.apply_many(&want).map(|_| ())) {
                let msg = e.to_string();
                for &i in &shaped {
                    results[i] = Err(ApplyError::TrafficControl(msg.clone()));
                }
            }
            self.record_tc(ports, &shaped, &mut results);
        }
        // Bridge-port flags exist only once a port is enslaved.
        let mut reqs = Vec::new();
        let mut owners = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            if results[i].is_ok() && p.isolated && p.master.is_some() {
                match self.idx(&p.name) {
                    Ok(index) => {
                        reqs.push(Request::SetBridgePort {
                            index,
                            isolated: true,
                        });
                        owners.push(i);
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        for (i, r) in owners.into_iter().zip(self.nl.execute(&reqs)) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
        results
    }

    /// A veth port: both ends in one request (the far end into its namespace), then the host
    /// end's IPv6 off and up on its bridge, then the far end's addresses.
    fn create_veth(&mut self, p: &PortLink, master: u32) -> Result<(), ApplyError> {
        let PortKind::Veth { netns: ns, guest } = &p.kind else {
            unreachable!("create_veth takes veths");
        };
        let fd = netns::open(ns)?;
        use std::os::fd::AsRawFd;
        Self::one(
            &mut self.nl,
            Request::NewLink {
                name: p.name.clone(),
                kind: NewLinkKind::Veth {
                    peer_name: guest.name.clone(),
                    peer_mac: Some(guest.mac),
                    peer_mtu: Some(guest.mtu),
                    peer_alias: Some(guest_alias(&p.name)),
                    peer_netns_fd: Some(fd.as_raw_fd()),
                },
                mac: Some(p.mac),
                mtu: Some(p.mtu),
                alias: Some(p.alias_before_tc()),
                master: if master == 0 { None } else { Some(master) },
                // A bridge port comes up once its IPv6 is off (as a tap does).
                up: p.up && master == 0,
            },
        )?;
        self.index.remove(&p.name);
        self.deletable.insert(p.name.clone());
        if master != 0 {
            sysctl::disable_ipv6(&p.name)?;
            if p.up {
                let index = self.idx(&p.name)?;
                Self::one(&mut self.nl, set_up(index))?;
            }
        }
        self.configure_guest(p, None)
    }

    /// The full mark, with the port's shaping and mirror in it, once that traffic control is
    /// in place: a mark that named them before would make a run killed in between look done.
    fn record_tc(
        &mut self,
        ports: &[&PortLink],
        shaped: &[usize],
        results: &mut [Result<(), ApplyError>],
    ) {
        let mut reqs = Vec::new();
        let mut owners = Vec::new();
        for &i in shaped {
            if results[i].is_err() {
                continue;
            }
            match self.idx(&ports[i].name) {
                Ok(index) => {
                    let mut r = Request::set_link(index);
                    if let Request::SetLink { alias, .. } = &mut r {
                        *alias = Some(ports[i].alias());
                    }
                    reqs.push(r);
                    owners.push(i);
                }
                Err(e) => results[i] = Err(e),
            }
        }
        for (i, r) in owners.into_iter().zip(self.nl.execute(&reqs)) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
    }

    /// A macvtap on `uplink`, up, with the VM's MAC, and its character device given to
    /// `owner`.
    fn create_macvtap(
        &mut self,
        p: &PortLink,
        uplink: &str,
        mode: crate::spec::DirectMode,
        owner: Option<u32>,
    ) -> Result<(), ApplyError> {
        let lower = self.idx(uplink)?;
        self.create_link(Request::NewLink {
            name: p.name.clone(),
            kind: NewLinkKind::Macvtap {
                lower,
                mode: mode.kernel_value(),
            },
            mac: Some(p.mac),
            mtu: Some(p.mtu),
            alias: Some(p.alias_before_tc()),
            master: None,
            up: p.up,
        })?;
        if let Some(uid) = owner {
            let index = self.idx(&p.name)?;
            macvtap::set_owner(&p.name, index, uid)?;
        }
        Ok(())
    }

    /// Makes a link kvmnet owns from `RTM_NEWLINK` (which, made here, an undo may delete).
    fn create_link(&mut self, req: Request) -> Result<(), ApplyError> {
        let Request::NewLink { name, .. } = &req else {
            unreachable!("create_link takes a NewLink request");
        };
        let name = name.clone();
        Self::one(&mut self.nl, req)?;
        self.index.remove(&name);
        self.deletable.insert(name);
        Ok(())
    }

    fn delete_links(&mut self, names: &[&str]) -> Vec<Result<(), ApplyError>> {
        let mut results = Vec::with_capacity(names.len());
        let mut reqs = Vec::new();
        let mut owners = Vec::new();
        if let Err(e) = self.refresh_names(names) {
            return names
                .iter()
                .map(|_| Err(ApplyError::NoSuchLink(e.to_string())))
                .collect();
        }
        for (i, n) in names.iter().enumerate() {
            if !self.deletable.contains(*n) {
                results.push(Err(if self.index.contains_key(*n) {
                    ApplyError::NotOurs(n.to_string())
                } else {
                    ApplyError::NoSuchLink(n.to_string())
                }));
                continue;
            }
            match self.idx(n) {
                Ok(index) => {
                    reqs.push(index);
                    owners.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        // One group delete instead of one request per link: the kernel then waits for RCU
        // once, not once per device (1,000 ports: well under a second instead of ~20 s).
        for (i, r) in owners.into_iter().zip(self.nl.delete_links(&reqs)) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
        for n in names {
            self.index.remove(*n);
        }
        results
    }

    /// Deletes ports, and with them (in the same group deletion: each one waits for the
    /// kernel's RCU grace period) the IFBs that shaped their outbound traffic.
    fn delete_ports(&mut self, ports: &[&PortLink]) -> Vec<Result<(), ApplyError>> {
        let ifbs: Vec<String> = ports
            .iter()
            .filter(|p| p.qos_out.is_some())
            .map(|p| tc::ifb_name(&p.name))
            .filter(|n| self.index.contains_key(n) || self.idx(n).is_ok())
            .collect();
        let names: Vec<&str> = ports
            .iter()
            .map(|p| p.name.as_str())
            .chain(ifbs.iter().map(String::as_str))
            .collect();
        let mut results = self.delete_links(&names);
        // An IFB that is not there or not kvmnet's is left alone, as before.
        results.truncate(ports.len());
        results
    }
}

impl Executor for Kernel {
    fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>> {
        let mut done = Vec::new();
        let mut i = 0;
        while i < steps.len() {
            // Batch runs of port creations and deletions: the bulk of any large apply.
            let run_end = |pred: &dyn Fn(&Step) -> bool| {
                let mut j = i;
                while j < steps.len() && pred(&steps[j]) {
                    j += 1;
                }
                j
            };
            let creates = run_end(&|s| matches!(s, Step::Port(Change::Create(_))));
            let deletes = run_end(&|s| matches!(s, Step::Port(Change::Delete(_))));
            // Changes to kvmnet's nftables tables: one transaction, all or nothing.
            let nft_end = run_end(&|s| matches!(s, Step::Nft(_)));
            // OVN Northbound rows: one transaction too.
            let nb_end = run_end(&|s| matches!(s, Step::Nb(_)));
            let results: Vec<Result<(), ApplyError>> = if nb_end > i {
                let changes: Vec<&Change<kvmnet_core::ovn::NbRow>> = steps[i..nb_end]
                    .iter()
                    .map(|s| match s {
                        Step::Nb(c) => c,
                        _ => unreachable!("run of Nb"),
                    })
                    .collect();
                match self.nb_rows(&changes) {
                    Ok(()) => changes.iter().map(|_| Ok(())).collect(),
                    Err(e) => vec![Err(e)],
                }
            } else if nft_end > i + 1 {
                let changes: Vec<&crate::nft::NftChange> = steps[i..nft_end]
                    .iter()
                    .map(|s| match s {
                        Step::Nft(c) => c,
                        _ => unreachable!("run of Nft"),
                    })
                    .collect();
                match nftables::change(&changes) {
                    Ok(()) => changes.iter().map(|_| Ok(())).collect(),
                    // Nothing of the transaction happened: the first change is the one that
                    // failed, the others were not done.
                    Err(e) => vec![Err(e.into())],
                }
            } else if creates > i + 1 {
                let ports: Vec<&PortLink> = steps[i..creates]
                    .iter()
                    .map(|s| match s {
                        Step::Port(Change::Create(p)) => p,
                        _ => unreachable!("run of port creations"),
                    })
                    .collect();
                self.create_ports(&ports)
            } else if deletes > i + 1 {
                let ports: Vec<&PortLink> = steps[i..deletes]
                    .iter()
                    .map(|s| match s {
                        Step::Port(Change::Delete(p)) => p,
                        _ => unreachable!("run of port deletions"),
                    })
                    .collect();
                self.delete_ports(&ports)
            } else {
                vec![self.run_single(&steps[i])]
            };
            let n = results.len();
            let mut failed = Vec::new();
            let mut first_err = None;
            for (k, r) in results.into_iter().enumerate() {
                match r {
                    Ok(()) => done.push(i + k),
                    Err(e) => {
                        failed.push(i + k);
                        first_err.get_or_insert(e);
                    }
                }
            }
            if let Some(error) = first_err {
                return Err(Box::new(Stopped {
                    done,
                    failed,
                    error,
                }));
            }
            i += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs namespace steps in one batch, as the kernel executor runs a run of port steps:
    /// a step on a name starting `bad` is refused, the others go through.
    #[derive(Default)]
    struct Fake {
        ran: Vec<String>,
    }

    impl Executor for Fake {
        fn run(&mut self, steps: &[Step]) -> Result<(), Box<Stopped>> {
            let (mut done, mut failed) = (Vec::new(), Vec::new());
            for (i, s) in steps.iter().enumerate() {
                let Step::Netns(c) = s else {
                    unreachable!("namespace steps only");
                };
                self.ran.push(s.to_string());
                if c.object().name.starts_with("bad") && matches!(c, Change::Create(_)) {
                    failed.push(i);
                } else {
                    done.push(i);
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            Err(Box::new(Stopped {
                done,
                failed,
                error: ApplyError::NoSuchLink("refused".into()),
            }))
        }
    }

    fn netns(name: &str) -> crate::plan::Netns {
        crate::plan::Netns {
            name: name.to_string(),
        }
    }

    fn ns(names: &[&str]) -> Vec<Step> {
        names
            .iter()
            .map(|n| Step::Netns(Change::Create(netns(n))))
            .collect()
    }

    /// A far end's IPv6 changes in order (the old route out, the addresses, the new route
    /// in: a gateway is on-link only once its prefix's address is there), and an update
    /// undone runs the other way round.
    #[test]
    fn guest_ipv6_requests_take_the_old_route_out_first() {
        let end = |a: Option<&str>, g: Option<&str>| GuestEnd {
            name: "eth0".into(),
            mac: Default::default(),
            mtu: 1500,
            up: true,
            addr: None,
            gateway: None,
            addr6: a.map(|a| a.parse().unwrap()),
            gateway6: g.map(|g| g.parse().unwrap()),
            dhcp: false,
        };
        let none = end(None, None);
        let set = end(Some("fd00:64::10/64"), Some("fd00:64::1"));
        let [del, addrs, add] = guest_requests6(7, None, &set);
        assert!(del.is_empty());
        assert!(matches!(&addrs[..], [Request::NewAddr6 { index: 7, .. }]));
        assert!(matches!(&add[..], [Request::NewRoute6(r)] if r.oif == Some(7)));
        let [del, addrs, add] = guest_requests6(7, Some(&set), &none);
        assert!(matches!(&del[..], [Request::DelRoute6(_)]));
        assert!(matches!(&addrs[..], [Request::DelAddr6 { .. }]));
        assert!(add.is_empty());
        assert!(
            guest_requests6(7, Some(&set), &set)
                .iter()
                .all(Vec::is_empty)
        );
    }

    #[test]
    fn every_refused_step_of_a_batch_is_cleaned_up_then_every_done_one_undone() {
        let steps = ns(&["a", "b", "bad1", "c", "bad2"]);
        let mut fake = Fake::default();
        let f = apply(&mut fake, &steps, None).unwrap_err();
        assert_eq!(f.step, 3, "the first refusal is the one reported");
        assert!(f.rollback_errors.is_empty());
        let undo: Vec<&str> = fake.ran[5..].iter().map(String::as_str).collect();
        let want: Vec<String> = ["bad2", "bad1", "c", "b", "a"]
            .iter()
            .map(|n| Step::Netns(Change::Delete(netns(n))).to_string())
            .collect();
        assert_eq!(undo, want.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn an_injected_failure_undoes_exactly_the_steps_before_it() {
        let steps = ns(&["a", "b", "c"]);
        let mut fake = Fake::default();
        let f = apply(&mut fake, &steps, Some(2)).unwrap_err();
        assert!(matches!(f.error, ApplyError::Injected(2)));
        assert_eq!(fake.ran.len(), 4, "{:?}", fake.ran);
        assert_eq!(
            fake.ran[2],
            Step::Netns(Change::Delete(netns("b"))).to_string()
        );
        assert_eq!(
            fake.ran[3],
            Step::Netns(Change::Delete(netns("a"))).to_string()
        );
    }
}
