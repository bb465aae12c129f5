//! kvmnet's DNS service for guests: each network with `dns` is answered on its gateway's
//! addresses (UDP and TCP port 53).
//!
//! - [`zones`] turns a spec into one [`Zone`] per network with `dns`: pure.
//! - The engine (no sockets, time passed in) answers the zone's names authoritatively (A,
//!   AAAA, PTR; NXDOMAIN and NODATA with the zone's SOA), serves everything else from a
//!   cache that honours TTLs and negative caching (RFC 2308), and forwards misses to the
//!   network's `forwarders` (the host's own resolvers by default), joining identical
//!   questions into one upstream query. Messages are read and written with hickory-proto.
//! - Names of VMs whose ports take their addresses from a pool come from the DHCP servers'
//!   leases ([`Leased`], handed over by the daemon once a second): see "Leased names".
//! - [`Server`] runs it on one thread with `poll`: listeners per network, one connected UDP
//!   socket per upstream attempt (a fresh source port and a random ID each: an off-path
//!   forger has to guess both), TCP to the upstream when its UDP answer is truncated.
//!
//! # Never an open resolver
//!
//! Every listener is bound to the gateway's address *and* to one device
//! (`SO_BINDTODEVICE`): the network's bridge, and `lo` so the host itself can ask. A query
//! for the gateway's address that arrives on any other interface (an uplink: Linux accepts
//! any local address on any interface) matches no socket and is never answered; the
//! guests' nftables rules allow port 53 to the gateway only on networks with `dns`.
//!
//! # Leased names
//!
//! A VM port without a declared address of a family gets one from the DHCPv4 (DHCPv6)
//! pool; its VM answers as `VM.DOMAIN` with that address (A, AAAA) and the address's PTR
//! names the VM, the way libvirt's dnsmasq does. Only the spec says which name a lease
//! gets: the lease's MAC must be a port of that VM on that network (written or derived in
//! the spec), and a name a client sends (DHCP option 12 or 81, DHCPv6's FQDN) is never
//! used, so a guest cannot claim another VM's name. On guarded ports the bridge holds a
//! guest to its own MAC, so a lease names the port it came from. A VM with a declared
//! address of a family keeps it: its leases of that family give no name.
//!
//! Only bound leases count, until they expire, are released or move: the daemon hands
//! the servers' current leases over once a second, and the engine drops a lease at its
//! expiry even between hand-overs. Their TTL is the lease's remaining time capped at
//! [`zone::LOCAL_TTL`]: a resolver must not keep an address past the lease that gave
//! it (another guest may get it next), and a renewal to another address or a release
//! shows within a minute.
//!
//! # Fairness
//!
//! Each client address has its own allowance (`rate_limit` queries per second, as much
//! again in a burst); queries beyond it are dropped, not answered (an answer would make
//! the service an amplifier). A client also holds at most [`Limits::pending_per_client`]
//! forwarded questions at once, so one guest asking for endless random names cannot fill
//! the table of outstanding upstream queries that every guest's cache misses need.

mod cache;
mod engine;
#[cfg(test)]
mod engine_tests;
mod mmsg;
mod net;
mod resolv;
mod zone;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::spec::{Ipv4Cidr, Ipv6Cidr, Mac, Spec};
use engine::Engine;

/// What the service answers on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    pub network: String,
    /// The bridge the listeners are bound to.
    pub interface: String,
    /// The gateway's addresses: where the listeners are.
    pub listen: Vec<IpAddr>,
    pub domain: Option<String>,
    /// Fully qualified names and their addresses ([`crate::spec::dns::names`]).
    pub names: Vec<(String, IpAddr)>,
    /// Subnets whose reverse names this zone answers (NXDOMAIN for unknown addresses).
    pub subnets: Vec<Ipv4Cidr>,
    /// The IPv6 prefix likewise (ip6.arpa): pool and SLAAC addresses that name no one are
    /// NXDOMAIN here, not asked upstream.
    pub subnets6: Vec<Ipv6Cidr>,
    /// `None`: the host's resolvers.
    pub forwarders: Option<Vec<IpAddr>>,
    /// Queries per second per client.
    pub rate_limit: u32,
    /// The ports on the network whose leases give their VM a name.
    pub lease_ports: Vec<LeasePort>,
}

/// A port whose leased addresses answer for its VM's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasePort {
    pub mac: Mac,
    /// The VM's fully qualified name (`VM.DOMAIN.`).
    pub name: String,
    /// The VM has a declared address of the family on this network: it wins, leases of
    /// that family give no name.
    pub v4_declared: bool,
    pub v6_declared: bool,
}

/// An address a DHCP server has bound (state `bound`; not offered, released, declined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leased {
    pub network: String,
    pub mac: Mac,
    pub ip: IpAddr,
    /// Unix seconds; `u64::MAX`: infinite.
    pub expires_unix: u64,
}

/// The ports of `network` whose leases name their VM: every port of a VM on it (its MAC
/// from the spec), with whether that VM declares an address of each family there. Pure.
fn lease_ports(spec: &Spec, network: &str, domain: Option<&str>) -> Vec<LeasePort> {
    let mut out = Vec::new();
    for vm in spec.vms.values() {
        let ports: Vec<_> = vm.ports.iter().filter(|p| p.network == network).collect();
        let v4_declared = ports.iter().any(|p| p.ipv4.is_some());
        let v6_declared = ports.iter().any(|p| p.ipv6.is_some());
        let name = crate::spec::dns::qualify(&vm.name, domain);
        out.extend(ports.iter().map(|p| LeasePort {
            mac: p.mac,
            name: name.clone(),
            v4_declared,
            v6_declared,
        }));
    }
    out
}

/// The zones a spec asks for: networks with `dns` and a gateway. Pure; by network name.
pub fn zones(spec: &Spec) -> Vec<Zone> {
    spec.networks
        .iter()
        .filter_map(|(name, net)| {
            let dns = net.dns.as_ref()?;
            let listen = crate::spec::dns::listen_addrs(net);
            if listen.is_empty() {
                return None;
            }
            Some(Zone {
                network: name.clone(),
                interface: net.bridge.clone(),
                listen,
                domain: dns.domain.clone(),
                names: crate::spec::dns::names(spec, name),
                subnets: net.ipv4.iter().copied().collect(),
                subnets6: net.ipv6.iter().map(|v| v.prefix()).collect(),
                forwarders: dns.forwarders.clone(),
                rate_limit: dns.rate_limit,
                lease_ports: lease_ports(spec, name, dns.domain.as_deref()),
            })
        })
        .collect()
}

/// Bounds on what the service holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub cache_entries: usize,
    /// Longest a positive answer is kept, whatever its TTL (1 day).
    pub max_ttl: u32,
    /// Longest a negative answer is kept (RFC 2308 suggests 1 to 3 hours).
    pub max_negative_ttl: u32,
    /// Outstanding upstream questions, in all.
    pub max_pending: usize,
    /// Forwarded questions one client may wait for at once.
    pub pending_per_client: usize,
    pub upstream_timeout: Duration,
    pub upstream_tcp_timeout: Duration,
    /// Client TCP connections at once; beyond, the oldest is closed.
    pub max_tcp: usize,
    /// A client TCP connection with nothing to do is closed after this (RFC 7766 6.2.3).
    pub tcp_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cache_entries: 50_000,
            max_ttl: 86_400,
            max_negative_ttl: 3600,
            max_pending: 2048,
            pending_per_client: 64,
            upstream_timeout: Duration::from_millis(1500),
            upstream_tcp_timeout: Duration::from_secs(3),
            max_tcp: 256,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// One network's queries since the daemon started (metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    /// Every query received (over UDP and TCP).
    pub queries: u64,
    /// Answered from the zone's own names.
    pub local: u64,
    pub cache_hits: u64,
    /// Sent on to an upstream server (cache misses).
    pub forwarded: u64,
    /// Answered SERVFAIL or REFUSED: no upstream answered, or there is none.
    pub failed: u64,
    /// Over the client's allowance: dropped.
    pub dropped_rate: u64,
    /// The client (or the service) already waited for too many forwarded answers: dropped.
    pub dropped_pending: u64,
}

/// Counters of the whole service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub malformed: u64,
    pub truncated: u64,
    pub upstream_queries: u64,
    pub upstream_tcp: u64,
    pub upstream_timeouts: u64,
    /// Upstream messages that were not the answer to the question asked.
    pub upstream_bad: u64,
    pub send_errors: u64,
    /// Listeners that could not be opened (their interface is missing); retried.
    pub listeners_waiting: Vec<String>,
}

/// A network's counters, as [`ServerHandle::network_stats`] copies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkStats {
    pub network: String,
    pub counters: NetworkCounters,
}

/// How a query came in (and its answer goes back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Listener socket number.
    Udp(usize),
    /// Client connection number.
    Tcp(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Client {
    pub zone: usize,
    pub addr: SocketAddr,
    pub via: Via,
}

/// What the engine wants sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Out {
    Reply {
        client: Client,
        bytes: Vec<u8>,
    },
    /// Attempt `token` of an upstream question (replaces its previous attempt's socket).
    Ask {
        token: u64,
        server: SocketAddr,
        bytes: Vec<u8>,
        tcp: bool,
    },
    /// The question is answered: close its socket.
    Done {
        token: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS listener {addr} on {interface}: {op}: {source}")]
    Listen {
        interface: String,
        addr: SocketAddr,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("DNS service: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn lock(m: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // The engine's state is updated in steps that each keep it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    // SAFETY: writes at most 2 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 2, 0) };
    if n != 2 {
        // Never seen on Linux >= 3.17; the source port is still random.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return (t ^ (t >> 16)) as u16;
    }
    u16::from_ne_bytes(b)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn serial() -> u32 {
    unix_now() as u32
}

/// Where the service reads the DHCP servers' bound leases from (the daemon's handles).
pub type LeaseSource = Box<dyn FnMut() -> Vec<Leased> + Send>;

/// A running DNS service. Create it in the network namespace whose bridges it serves.
pub struct Server {
    shared: Arc<Mutex<Engine>>,
    leases: Option<LeaseSource>,
    sockets: net::Sockets,
    resolv: resolv::Watch,
    last_tick: Instant,
    last_error: Option<String>,
}

/// Counters of a running service, read from another thread.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Mutex<Engine>>,
}

impl ServerHandle {
    pub fn network_stats(&self) -> Vec<NetworkStats> {
        lock(&self.shared)
            .network_counters()
            .into_iter()
            .map(|(network, counters)| NetworkStats { network, counters })
            .collect()
    }
    pub fn stats(&self) -> Stats {
        lock(&self.shared).stats.clone()
    }
    pub fn cache_entries(&self) -> usize {
        lock(&self.shared).cache_entries()
    }
}

impl Server {
    /// Opens the zones' listeners (a zone whose bridge or address is not there yet is
    /// retried every second) and reads the host's resolvers.
    pub fn start(zones: Vec<Zone>) -> Result<Server, DnsError> {
        let mut engine = Engine::new(Limits::default(), Box::new(random_id));
        let mut resolv = resolv::Watch::new(resolv::RESOLV_CONF);
        engine.set_host_resolvers(resolv.read().unwrap_or_default());
        let mut sockets = net::Sockets::default();
        let r = sockets.sync(&zones);
        engine.set_zones(zones, serial());
        engine.stats.listeners_waiting = sockets.waiting();
        let mut s = Server {
            shared: Arc::new(Mutex::new(engine)),
            leases: None,
            sockets,
            resolv,
            last_tick: Instant::now(),
            last_error: None,
        };
        s.report(r.err());
        Ok(s)
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    pub fn set_limits(&mut self, limits: Limits) {
        lock(&self.shared).limits = limits;
    }

    /// Read bound leases from `source` now and once a second from now on: VM ports with
    /// pool addresses answer by name (see "Leased names" above).
    pub fn set_lease_source(&mut self, source: LeaseSource) {
        self.leases = Some(source);
        self.pull_leases();
    }

    fn pull_leases(&mut self) {
        if let Some(f) = &mut self.leases {
            let leases = f();
            let now_unix = unix_now();
            lock(&self.shared).set_leases(&leases, now_unix, Instant::now());
        }
    }

    /// Replaces the zones (spec re-applied): listeners of removed networks close, new ones
    /// open. Call it on the thread that runs [`Server::run`] (the sockets go into its
    /// namespace).
    pub fn update(&mut self, zones: Vec<Zone>) {
        let r = self.sockets.sync(&zones);
        let mut e = lock(&self.shared);
        e.set_zones(zones, serial());
        e.stats.listeners_waiting = self.sockets.waiting();
        drop(e);
        self.report(r.err());
        self.pull_leases();
    }

    fn report(&mut self, err: Option<DnsError>) {
        let err = err.map(|e| e.to_string());
        if err.is_some() && err != self.last_error {
            crate::log::line(
                crate::log::Level::Error,
                &format!("kvmnet dns: {}", err.as_deref().unwrap_or_default()),
            );
        }
        self.last_error = err;
    }

    /// Serve until `stop` is set (checked at least every 100 ms).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), DnsError> {
        let mut rx = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let wait = {
                let e = lock(&self.shared);
                let until = e
                    .next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()));
                until.map_or(Duration::from_millis(100), |u| {
                    u.min(Duration::from_millis(100))
                })
            };
            self.sockets.poll(wait, &mut rx)?;
            let now = Instant::now();
            let mut out = Vec::new();
            {
                let mut e = lock(&self.shared);
                for r in rx.drain(..) {
                    out.extend(match r {
                        net::Rx::Query { client, data } => e.query(client, &data, now),
                        net::Rx::Upstream { token, data } => e.upstream(token, &data, now),
                        net::Rx::UpstreamFailed { token } => e.upstream_failed(token, now),
                    });
                }
                if e.next_deadline().is_some_and(|d| d <= now) {
                    out.extend(e.tick(now));
                }
            }
            let errors = self.sockets.send(out, &mut rx);
            if errors > 0 {
                lock(&self.shared).stats.send_errors += errors;
            }
            if self.last_tick.elapsed() >= Duration::from_secs(1) {
                self.tick();
            }
        }
        Ok(())
    }

    /// Once a second: idle state forgotten, missing listeners retried, the host's
    /// resolvers re-read when `/etc/resolv.conf` changed.
    fn tick(&mut self) {
        self.last_tick = Instant::now();
        self.pull_leases();
        let now = Instant::now();
        let zones: Vec<Zone> = {
            let mut e = lock(&self.shared);
            let out = e.tick(now);
            let mut rx = Vec::new();
            drop(e);
            self.sockets.send(out, &mut rx);
            let mut e = lock(&self.shared);
            if let Some(r) = self.resolv.changed() {
                e.set_host_resolvers(r);
            }
            e.zones().cloned().collect()
        };
        self.sockets
            .expire_idle(now, lock(&self.shared).limits.tcp_idle);
        let r = self.sockets.sync(&zones);
        lock(&self.shared).stats.listeners_waiting = self.sockets.waiting();
        self.report(r.err());
    }
}

/// The engine without sockets, for fuzzers: one zone (`fuzz.test`, 10.0.0.0/24, the
/// gateway 10.0.0.1, a VM `web1` at .10), one forwarder (192.0.2.53). [`FuzzServer::feed`]
/// is a query from a guest; [`FuzzServer::upstream`] is the forwarder's answer to the
/// last question asked.
#[doc(hidden)]
pub struct FuzzServer {
    engine: Engine,
    now: Instant,
    last_token: Option<u64>,
    last_id: u16,
}

impl FuzzServer {
    pub fn new() -> FuzzServer {
        let mut n = 0u16;
        let mut engine = Engine::new(
            Limits::default(),
            Box::new(move || {
                n = n.wrapping_add(1);
                n
            }),
        );
        engine.set_zones(
            vec![Zone {
                network: "fuzz".into(),
                interface: "br0".into(),
                listen: vec!["10.0.0.1".parse().expect("addr")],
                domain: Some("fuzz.test".into()),
                names: vec![("web1.fuzz.test.".into(), "10.0.0.10".parse().expect("addr"))],
                subnets: vec!["10.0.0.1/24".parse().expect("net")],
                subnets6: Vec::new(),
                forwarders: Some(vec!["192.0.2.53".parse().expect("addr")]),
                rate_limit: u32::MAX,
                lease_ports: Vec::new(),
            }],
            1,
        );
        FuzzServer {
            engine,
            now: Instant::now(),
            last_token: None,
            last_id: 0,
        }
    }

    fn take(&mut self, out: Vec<Out>) -> Vec<Vec<u8>> {
        let mut replies = Vec::new();
        for o in out {
            match o {
                Out::Reply { bytes, .. } => replies.push(bytes),
                Out::Ask { token, bytes, .. } => {
                    self.last_token = Some(token);
                    self.last_id = u16::from_be_bytes([bytes[0], bytes[1]]);
                }
                Out::Done { .. } => {}
            }
        }
        replies
    }

    /// A query over UDP (`tcp` false) or TCP; the answers sent to clients.
    pub fn feed(&mut self, data: &[u8], tcp: bool, advance_ms: u16) -> Vec<Vec<u8>> {
        self.now += Duration::from_millis(u64::from(advance_ms));
        let via = if tcp { Via::Tcp(1) } else { Via::Udp(0) };
        let client = Client {
            zone: 0,
            addr: "10.0.0.20:5353".parse().expect("addr"),
            via,
        };
        let mut out = self.engine.query(client, data, self.now);
        out.extend(self.engine.tick(self.now));
        self.take(out)
    }

    /// The upstream's answer (its first two bytes replaced by the ID asked with, so
    /// mutated answers get past the ID check); the answers sent to clients.
    pub fn upstream(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        let Some(t) = self.last_token else {
            return Vec::new();
        };
        let mut d = data.to_vec();
        if d.len() >= 2 {
            d[..2].copy_from_slice(&self.last_id.to_be_bytes());
        }
        let out = self.engine.upstream(t, &d, self.now);
        self.take(out)
    }
}

impl Default for FuzzServer {
    fn default() -> Self {
        FuzzServer::new()
    }
}
