//! kvmnet's built-in DHCPv4 server (RFC 2131/2132, relay per RFC 1542/3046, classless routes
//! per RFC 3442).
//!
//! - [`scopes`] turns a spec into one [`Scope`] per network with `dhcp:` and a gateway: pure.
//! - [`Server`] serves them: one UDP socket per bridge (bound to 0.0.0.0:67 on that device)
//!   plus a send-only packet socket for answers to clients that have no address yet.
//! - Leases live in `STATE_DIR/leases.journal` (see `store`): every binding is on disk before
//!   its DHCPACK is sent, so a `kill -9` loses none and never hands an address out twice.
//!
//! Who a client is: its Ethernet address (`chaddr`). The client identifier (option 61) is
//! echoed and recorded with the binding, but it is not the key: a VM's port is its identity
//! here, and reservations are written by MAC.
//!
//! The server is authoritative for its scopes: a request for an address it did not hand out
//! is answered (ACK when the address is free for that client, NAK otherwise) instead of
//! ignored, so clients recover at once when the server's state was lost or the spec changed.
//!
//! # What a guest can forge, and what the server takes from it
//!
//! Everything in a DHCP message is written by the sender. On a guarded port (`antispoof`)
//! the bridge drops client messages whose `chaddr` is not the port's MAC or whose `giaddr` is
//! set, and IPv4 from other sources, so there `chaddr` names the port. On its own (ports with
//! `antispoof: false`, and as a second line everywhere) the server holds to these rules:
//!
//! - **Who may end a lease.** A RELEASE counts only if it names the lease's MAC, carries the
//!   client identifier recorded with the binding (if one was), and, unless relayed, comes
//!   from the released address itself (RFC 2131 4.4.6: the client releases from its address).
//!   A DECLINE counts only if it names the lease's MAC and client identifier, and arrives
//!   while the client can still be checking a binding it has just been given: within
//!   [`Limits::decline_window_secs`] of an ACK that made a new binding (DISCOVER/REQUEST or
//!   INIT-REBOOT for an address it did not hold bound); a renewal opens no window. Anything
//!   else is ignored ([`ServerStats::dropped_not_holder`]).
//! - **Allowances** ([`Limits`]): token buckets. Every client MAC has its own allowance, and
//!   every bridge a shared one (relayed requests a second shared one per bridge). A packet
//!   from a reserved MAC within its own allowance is served without touching the shared one,
//!   so a flood of invented MACs cannot crowd out reservations. A pool MAC's packets are
//!   always charged to the shared allowance, since anyone can invent MACs. A packet over its
//!   MAC's allowance is not dropped for that: it may still use the top half of the shared
//!   allowance. Why: `chaddr` is forgeable, so an allowance keyed by it alone could be spent
//!   by someone else, and a guest sending a handful of packets a second in a victim's name
//!   would lock the victim out. Here, to crowd out a client, a sender must push the whole
//!   bridge's shared allowance below half, which starves every unreserved client alike and
//!   is what the shared allowance bounds in any case; one MAC hammering (a broken client)
//!   still cannot take more than half of it.
//! - **Relays.** A relayed message (`giaddr` set) is served on the bridge it came in on, and
//!   only if both its relay address (`giaddr`) and its IP source are host addresses of that
//!   bridge's network that no guest port can hold: not the server's address, not in the pool
//!   range, not a reservation, and not an address the server has leased (a record kept from
//!   an earlier range). So a relay is a host on the bridge with a static address outside the
//!   range, like perfdhcp in the tests; a guest holding a lease cannot pose as one. Relayed
//!   messages are charged to the bridge's relay allowance whatever their `giaddr`: rotating
//!   `giaddr` gains nothing. Answers go to `giaddr`, port 67.
//! - **New bindings** (a pool address the MAC does not hold offered or bound) pass the same
//!   admission as a DISCOVER, whether they come from a DISCOVER or from a REQUEST that skipped
//!   it (SELECTING, INIT-REBOOT, a renewal the server has no record of): the offer cap
//!   (offers hold at most a share of the pool; the oldest is recycled) and, when the pool
//!   runs low, the low-pool admission rate. A REQUEST thus gets no more than the DISCOVER it
//!   skipped. Reservations are always answered.
//! - **Where answers go.** `ciaddr` is used as a destination only when it is a host address
//!   of the network: an INFORM with another `ciaddr`, or without one from a source outside
//!   the network, is not answered; an ACK to a request with such a `ciaddr` goes to the
//!   client's MAC or is broadcast, as if `ciaddr` were 0.

mod engine;
mod journal;
pub(crate) mod limit;
mod net;
pub(crate) use net::{cvt, ifindex, ip_udp_ports, setopt};
pub mod packet;
mod store;
pub mod v6;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::spec::{Ipv4Cidr, Mac, Spec};
use engine::Engine;

/// What the server hands out on one network (one bridge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub network: String,
    /// The bridge the server listens on.
    pub interface: String,
    /// The server identifier: the gateway address on the bridge.
    pub server_ip: Ipv4Addr,
    /// Network address and prefix.
    pub subnet: Ipv4Cidr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// The network's `mtu` from the spec (option 26).
    pub mtu: Option<u32>,
    /// The interface's MTU as the host has it, read by the server every second. Without an
    /// `mtu` in the spec, one below 1500 (a VXLAN network's, derived from its underlay) is
    /// what guests are told: they would assume 1500, and the bridge drops their full-size
    /// frames.
    pub live_mtu: Option<u32>,
    /// `u32::MAX` means infinite.
    pub lease_secs: u32,
    /// Classless static routes (option 121): destination, router.
    pub routes: Vec<(Ipv4Cidr, Ipv4Addr)>,
    /// Pool for MACs without a reservation, inclusive; `None` serves reservations only.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub reservations: Vec<Reservation>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    /// The port (host-side device) the reservation comes from, for messages.
    pub port: String,
}

/// The scopes a spec asks for: networks with `dhcp:` and a gateway address; reservations
/// from the ports on that network that have an `ipv4`. A network with `dns` and no
/// `dhcp.dns` hands out the gateway as DNS server, and its `dns.domain` when `dhcp` has no
/// `domain`. Pure and deterministic (networks by
/// name, ports in VM and list order).
pub fn scopes(spec: &Spec) -> Vec<Scope> {
    let mut out = Vec::new();
    for (name, net) in &spec.networks {
        let (Some(dhcp), Some(gw)) = (&net.dhcp, net.ipv4) else {
            continue;
        };
        let reservations = spec
            .vms
            .values()
            .flat_map(|vm| vm.ports.iter())
            .filter(|p| &p.network == name)
            .filter_map(|p| {
                p.ipv4.map(|ip| Reservation {
                    mac: p.mac,
                    ip: ip.addr,
                    port: p.name.clone(),
                })
            })
            .collect();
        out.push(Scope {
            network: name.clone(),
            interface: net.bridge.clone(),
            server_ip: gw.addr,
            subnet: gw.network(),
            router: Some(gw.addr),
            dns: dns_servers(dhcp, net),
            domain: dhcp
                .domain
                .clone()
                .or_else(|| net.dns.as_ref()?.domain.clone()),
            mtu: net.mtu,
            live_mtu: None,
            lease_secs: u32::try_from(dhcp.lease_time_secs).unwrap_or(u32::MAX),
            routes: dhcp.routes.iter().map(|r| (r.to, r.via)).collect(),
            pool: if dhcp.pool { dhcp.range } else { None },
            reservations,
        });
    }
    out
}

/// The DNS servers handed out (option 6): those `dhcp.dns` lists; without a list, the
/// gateway where kvmnet answers DNS there (`dns`); else none.
fn dns_servers(dhcp: &crate::spec::Dhcp, net: &crate::spec::Network) -> Vec<Ipv4Addr> {
    if !dhcp.dns.is_empty() || net.dns.is_none() {
        return dhcp.dns.clone();
    }
    net.ipv4.map(|g| g.addr).into_iter().collect()
}

/// One lease as kept in the journal and shown to operators.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Lease {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub network: String,
    /// Unix seconds (for `released`: when it was released). `u64::MAX`: infinite.
    pub expires_unix: u64,
    pub hostname: Option<String>,
    /// "offered" | "bound" | "declined" | "released"
    pub state: String,
    /// The address is this MAC's reservation in the spec.
    pub reserved: bool,
    /// The client identifier (option 61) the client bound with, as colon-separated hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Counters since start. Message counters count requests received and replies sent.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ServerStats {
    pub received: u64,
    pub discover: u64,
    pub request: u64,
    pub decline: u64,
    pub release: u64,
    pub inform: u64,
    /// DHCPREQUEST by client state (RFC 2131 4.3.2).
    pub request_selecting: u64,
    pub request_init_reboot: u64,
    pub request_renewing: u64,
    pub request_rebinding: u64,
    pub relayed: u64,
    pub offer: u64,
    pub ack: u64,
    pub nak: u64,
    /// Not a well-formed DHCP request from an Ethernet client.
    pub dropped_malformed: u64,
    /// Relayed with a giaddr no scope covers, or that names another network than the bridge
    /// it came in on (a guest cannot draw from another network's pool by forging giaddr).
    pub dropped_no_scope: u64,
    /// Relayed from an address that is not a relay's: a guest port's (see "Relays" above),
    /// the server's own, or none.
    pub dropped_relay: u64,
    /// A RELEASE or DECLINE naming a client's lease that did not come from that client (see
    /// "Who may end a lease" above).
    pub dropped_not_holder: u64,
    /// A `ciaddr` (INFORM) or packet source outside the network: no answer is sent there.
    pub dropped_foreign_ciaddr: u64,
    /// Over its MAC's allowance while the shared allowance was below half.
    pub dropped_rate_mac: u64,
    /// The shared allowance of the bridge (direct or relayed) was used up.
    pub dropped_rate_interface: u64,
    /// No free pool address (or no pool) for a client without a reservation.
    pub dropped_pool_exhausted: u64,
    /// Pool nearly full: a new client over the admission rate.
    pub dropped_pool_guard: u64,
    /// Meant for another server, or a DECLINE/RELEASE for an address the client does not hold.
    pub ignored: u64,
    /// Outstanding offers recycled because of the offer cap.
    pub offers_evicted: u64,
    pub send_errors: u64,
    pub journal_syncs: u64,
    pub journal_errors: u64,
    pub journal_compactions: u64,
    /// Interfaces of scopes that do not exist (yet); retried every second.
    pub interfaces_waiting: Vec<String>,
}

/// One network's DHCP messages since the daemon started (metrics): requests received by
/// message type, and NAKs sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkCounters {
    pub discover: u64,
    pub request: u64,
    pub decline: u64,
    pub release: u64,
    pub inform: u64,
    /// Any other message type a client sent (not answered).
    pub other: u64,
    pub nak: u64,
}

impl NetworkCounters {
    fn count(&mut self, kind: packet::MessageType) {
        use packet::MessageType as M;
        match kind {
            M::Discover => self.discover += 1,
            M::Request => self.request += 1,
            M::Decline => self.decline += 1,
            M::Release => self.release += 1,
            M::Inform => self.inform += 1,
            _ => self.other += 1,
        }
    }

    /// The requests by message type, as metrics label them.
    pub fn by_type(&self) -> [(&'static str, u64); 6] {
        [
            ("discover", self.discover),
            ("request", self.request),
            ("decline", self.decline),
            ("release", self.release),
            ("inform", self.inform),
            ("other", self.other),
        ]
    }
}

/// A served network's counters and pool, as [`ServerHandle::network_stats`] copies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkStats {
    pub network: String,
    pub counters: NetworkCounters,
    /// Addresses in the range (reservations inside it included), 0 without a pool.
    pub pool_size: u64,
    /// Pool addresses neither leased, offered, declined nor reserved.
    pub pool_free: u64,
}

/// Rate limits and pool guards. Rates are packets per second; a rate that is not finite is
/// no limit. See "Flood protection" above for how the allowances combine.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// A client MAC's own allowance.
    pub per_mac_rate: f64,
    pub per_mac_burst: f64,
    /// The shared allowance of a bridge; relayed requests have a second one per bridge.
    pub per_interface_rate: f64,
    pub per_interface_burst: f64,
    /// How long an offered address is held for the client's REQUEST.
    pub offer_hold_secs: u32,
    /// How long a declined address stays out of use.
    pub decline_hold_secs: u32,
    /// How long after a new binding a DECLINE of it is believed (the client's address
    /// conflict check, RFC 5227, takes under 10 s).
    pub decline_window_secs: u32,
    /// At most this share of the pool (percent, at least 8 addresses) is tied up in offers;
    /// beyond it the oldest offer is recycled.
    pub max_offers_percent: u32,
    /// Below this share of free pool addresses (percent) ...
    pub low_pool_percent: u32,
    /// ... clients that hold nothing are admitted at this rate per network.
    pub low_pool_admit_rate: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_mac_rate: 4.0,
            per_mac_burst: 16.0,
            per_interface_rate: 5000.0,
            per_interface_burst: 10000.0,
            offer_hold_secs: 30,
            decline_hold_secs: 600,
            decline_window_secs: 60,
            max_offers_percent: 25,
            low_pool_percent: 10,
            low_pool_admit_rate: 2.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP lease state {path}: {source}")]
    State {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP lease state {path} is in use by another kvmnet DHCP server; stop it first")]
    Locked { path: String },
    #[error("DHCP socket on {interface}: {op}: {source}")]
    Socket {
        interface: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCP scope for network {network}: {message}")]
    Scope { network: String, message: String },
    #[error("DHCP server: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn check_scopes(scopes: &[Scope]) -> Result<(), DhcpError> {
    let bad = |s: &Scope, m: String| {
        Err(DhcpError::Scope {
            network: s.network.clone(),
            message: m,
        })
    };
    for (i, s) in scopes.iter().enumerate() {
        if s.interface.is_empty() || s.interface.len() > 15 {
            return bad(s, format!("'{}' is not an interface name", s.interface));
        }
        if !s.subnet.contains(s.server_ip) {
            return bad(
                s,
                format!("server address {} is outside {}", s.server_ip, s.subnet),
            );
        }
        if s.lease_secs == 0 {
            return bad(s, "lease time is 0".into());
        }
        if let Some((a, b)) = s.pool
            && (a > b || !s.subnet.contains(a) || !s.subnet.contains(b))
        {
            return bad(
                s,
                format!("pool {a}-{b} is not a range inside {}", s.subnet),
            );
        }
        let (mut macs, mut ips) = (HashSet::new(), HashSet::new());
        for r in &s.reservations {
            let host = s.subnet.contains(r.ip)
                && r.ip != s.server_ip
                && r.ip != s.subnet.network().addr
                && r.ip != s.subnet.broadcast();
            if !host {
                return bad(
                    s,
                    format!(
                        "reservation {} for {} is not a host address of {}",
                        r.ip, r.mac, s.subnet
                    ),
                );
            }
            if !macs.insert(r.mac) || !ips.insert(r.ip) {
                return bad(
                    s,
                    format!("reservation {} for {} is given twice", r.ip, r.mac),
                );
            }
        }
        for o in &scopes[..i] {
            if o.network == s.network || o.interface == s.interface {
                return bad(
                    s,
                    format!(
                        "shares its name or interface {} with network {}",
                        s.interface, o.network
                    ),
                );
            }
        }
    }
    Ok(())
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A running DHCP server. Create it in the network namespace whose bridges it serves.
pub struct Server {
    shared: Arc<Mutex<Engine>>,
    sockets: net::Sockets,
    last_tick: Instant,
    /// The last socket error reported, so a lasting one is logged once.
    last_error: Option<String>,
}

/// Read-only access to a server's leases and counters from another thread while
/// [`Server::run`] blocks.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Mutex<Engine>>,
}

fn lock(m: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // A panic while holding the lock leaves the engine usable: its state is updated in steps
    // that each keep the table consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ServerHandle {
    pub fn leases(&self) -> Vec<Lease> {
        lock(&self.shared).leases(now_unix())
    }
    pub fn stats(&self) -> ServerStats {
        lock(&self.shared).stats.clone()
    }
    /// Per network counters and pool, copied under the lock (held for microseconds: the
    /// server is never kept waiting by a scrape).
    pub fn network_stats(&self) -> Vec<NetworkStats> {
        lock(&self.shared).network_stats()
    }
}

impl Server {
    /// Opens one UDP socket per scope, bound to 0.0.0.0:67 with SO_BINDTODEVICE=interface,
    /// SO_BROADCAST, SO_REUSEADDR; loads leases from `state_dir/leases.journal`. The sockets
    /// belong to the calling thread's network namespace. A scope whose interface does not
    /// exist yet is retried every second (see [`ServerStats::interfaces_waiting`]).
    pub fn start(scopes: Vec<Scope>, state_dir: &Path) -> Result<Server, DhcpError> {
        check_scopes(&scopes)?;
        let mut engine = Engine::open(state_dir, now_unix())?;
        let mut sockets = net::Sockets::new()?;
        sockets.sync(&scopes)?;
        engine.set_scopes(scopes, now_unix());
        engine.stats.interfaces_waiting = sockets.waiting();
        Ok(Server {
            shared: Arc::new(Mutex::new(engine)),
            sockets,
            last_tick: Instant::now(),
            last_error: None,
        })
    }

    /// Serve until `stop` is set (checked at least every 100 ms). Once a second: leases
    /// expire, idle rate buckets are forgotten, the journal is compacted when it has grown,
    /// and missing or recreated bridges get their socket (re)opened.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), DhcpError> {
        let mut batch = net::Batch::default();
        while !stop.load(Ordering::Relaxed) {
            self.sockets.poll(Duration::from_millis(100), &mut batch)?;
            if !batch.is_empty() {
                self.serve(&mut batch);
            }
            if self.last_tick.elapsed() >= Duration::from_secs(1) {
                self.tick();
            }
        }
        Ok(())
    }

    /// Answer one batch of received packets: decide, make the bindings durable with one
    /// sync, then send.
    fn serve(&mut self, batch: &mut net::Batch) {
        let now = now_unix();
        let mono = Instant::now();
        let mut acks = Vec::with_capacity(batch.len());
        let mut errors = 0;
        let mut e = lock(&self.shared);
        for rx in batch.drain() {
            let iface = self.sockets.interface(rx.socket);
            // The interface's MTU as it is now (one ioctl): a bridge's MTU follows its
            // ports, so the second-old value of the last tick may be stale after an apply.
            if let Some(m) = self.sockets.mtu_of(rx.socket) {
                e.set_live_mtus(&[(iface.to_string(), Some(m))]);
            }
            match e.handle(iface, rx.socket, &rx, now, mono) {
                Some(o) if o.needs_sync => acks.push(o),
                // Offers, NAKs and INFORM answers promise nothing: out at once.
                Some(o) => errors += u64::from(self.sockets.send(&o).is_err()),
                None => {}
            }
        }
        let durable = e.commit();
        drop(e);
        if durable {
            for o in &acks {
                errors += u64::from(self.sockets.send(o).is_err());
            }
        } // else: not on disk, so not acknowledged; the clients retry
        if errors > 0 {
            lock(&self.shared).stats.send_errors += errors;
        }
    }

    fn tick(&mut self) {
        self.last_tick = Instant::now();
        let mut e = lock(&self.shared);
        e.tick(now_unix(), Instant::now());
        let err = self.sockets.sync(e.scopes()).err().map(|e| e.to_string());
        e.set_live_mtus(&self.sockets.mtus());
        if err.is_some() && err != self.last_error {
            crate::log::line(
                crate::log::Level::Error,
                &format!("kvmnet dhcp: {}", err.as_deref().unwrap_or_default()),
            );
        }
        self.last_error = err;
        e.stats.interfaces_waiting = self.sockets.waiting();
    }

    /// Replace the scopes (spec re-applied): open and close sockets as needed, keep leases.
    /// New sockets go into the namespace the server was started in, whichever thread calls.
    /// On a socket error the new scopes are still in force (the failed interface is retried
    /// every second) and the error is returned.
    pub fn update(&mut self, scopes: Vec<Scope>) -> Result<(), DhcpError> {
        check_scopes(&scopes)?;
        let r = self.sockets.sync(&scopes);
        let mut e = lock(&self.shared);
        e.set_scopes(scopes, now_unix());
        e.set_live_mtus(&self.sockets.mtus());
        e.stats.interfaces_waiting = self.sockets.waiting();
        r
    }

    pub fn set_limits(&mut self, limits: Limits) {
        lock(&self.shared).limits = limits;
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.handle().leases()
    }

    pub fn stats(&self) -> ServerStats {
        self.handle().stats()
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }
}

/// The server without sockets, for fuzzers and property tests: every input is a packet
/// received on the bridge of one scope (`br0`, 10.0.0.0/24 with the gateway at .1, a pool
/// .100-.199, a reservation of 02:00:00:00:00:09 at .9), answered as [`Server`] would, with
/// its journal in `state_dir`. Time is passed in.
#[doc(hidden)]
pub struct FuzzServer {
    engine: Engine,
    now: u64,
    mono: Instant,
}

impl FuzzServer {
    pub fn open(state_dir: &Path) -> Result<FuzzServer, DhcpError> {
        let now = 1_000_000;
        let mut engine = Engine::open(state_dir, now)?;
        let gw = Ipv4Addr::new(10, 0, 0, 1);
        engine.set_scopes(
            vec![Scope {
                network: "fuzz".into(),
                interface: "br0".into(),
                server_ip: gw,
                subnet: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 24),
                router: Some(gw),
                dns: vec![gw],
                domain: Some("fuzz.example".into()),
                mtu: Some(1500),
                live_mtu: None,
                lease_secs: 600,
                routes: vec![(Ipv4Cidr::new(Ipv4Addr::new(198, 51, 100, 0), 24), gw)],
                pool: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 199))),
                reservations: vec![Reservation {
                    mac: Mac([2, 0, 0, 0, 0, 9]),
                    ip: Ipv4Addr::new(10, 0, 0, 9),
                    port: "fuzz9".into(),
                }],
            }],
            now,
        );
        Ok(FuzzServer {
            engine,
            now,
            mono: Instant::now(),
        })
    }

    /// `advance` seconds pass (with the once-a-second upkeep), then `data` arrives from
    /// `src` (its IP source; port 67 when it has a `giaddr`, else 68) to `dst`. Returns the
    /// answer's bytes, if the server would send one.
    pub fn feed(
        &mut self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        data: &[u8],
        advance: u32,
    ) -> Option<Vec<u8>> {
        if advance > 0 {
            self.now += u64::from(advance);
            self.mono += Duration::from_secs(u64::from(advance));
            self.engine.tick(self.now, self.mono);
        }
        let port = match packet::Packet::parse(data) {
            Ok(p) if !p.giaddr.is_unspecified() => packet::SERVER_PORT,
            _ => packet::CLIENT_PORT,
        };
        let rx = net::Rx {
            socket: 0,
            src: std::net::SocketAddrV4::new(src, port),
            dst,
            data: data.to_vec(),
        };
        let out = self.engine.handle("br0", 0, &rx, self.now, self.mono);
        let durable = self.engine.commit();
        out.filter(|o| durable || !o.needs_sync).map(|o| o.bytes)
    }

    pub fn leases(&self) -> Vec<Lease> {
        self.engine.leases(self.now)
    }

    pub fn stats(&self) -> ServerStats {
        self.engine.stats.clone()
    }
}

/// Read the leases from a state directory without a running server (for `kvmnet leases`):
/// the last record per address, without expired ones (releases of the last day stay),
/// sorted by network and address. Offers are never on disk.
pub fn read_leases(state_dir: &Path) -> Result<Vec<Lease>, DhcpError> {
    let now = now_unix();
    let mut last: std::collections::BTreeMap<(String, Ipv4Addr), Lease> = Default::default();
    for l in journal::read_journal::<Lease>(state_dir)? {
        last.insert((l.network.clone(), l.ip), l);
    }
    Ok(last
        .into_values()
        .filter(|l| match l.state.as_str() {
            "bound" | "offered" | "declined" => l.expires_unix > now,
            "released" => l.expires_unix.saturating_add(store::KEEP_FREED_SECS) > now,
            _ => false,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
version: 1
networks:
  lan:
    mode: nat
    bridge: kvbr-lan
    ipv4: 10.9.0.1/24
    mtu: 1400
    dhcp:
      range: 10.9.0.100-10.9.0.199
      lease_time: 1h
      dns: [10.9.0.53]
      domain: lan.example
      routes: [{ to: 198.51.100.0/24, via: 10.9.0.254 }]
  plain:
    mode: isolated
    ipv4: 10.8.0.1/24
  nopool:
    mode: isolated
    ipv4: 10.7.0.1/24
    dhcp: { range: 10.7.0.100-10.7.0.110, pool: false }
vms:
  a:
    ports:
      - { network: lan, name: a-eth0, mac: "52:54:00:00:00:01", ipv4: 10.9.0.10 }
  b:
    ports:
      - { network: lan, mac: "52:54:00:00:00:02" }
      - { network: plain, ipv4: 10.8.0.10 }
"#;

    /// Mutated requests through the whole engine: no panic, every answer parses, and no
    /// address is ever bound outside the pool or reservations. (A fuzzer drives the same
    /// entry point for longer.)
    #[test]
    fn fuzz_server_survives_mutated_requests() {
        use packet::{MessageType, Packet, opt};
        let dir = std::env::temp_dir().join(format!("kvmnet-dhcp-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut f = FuzzServer::open(&dir).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let kinds = [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Decline,
            MessageType::Release,
            MessageType::Inform,
        ];
        for i in 0..3000u32 {
            let r = rnd().to_be_bytes();
            let mac = Mac([2, 0, 0, 0, r[0] & 1, r[1] & 15]);
            let mut p = Packet::request(mac, i, kinds[usize::from(r[2]) % kinds.len()]);
            p.set(opt::REQUESTED_IP, vec![10, 0, 0, r[3]]);
            if r[4] & 1 == 1 {
                p.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
            }
            if r[4] & 2 == 2 {
                p.ciaddr = Ipv4Addr::new(10, 0, 0, r[5]);
            }
            if r[4] & 4 == 4 {
                p.giaddr = Ipv4Addr::new(10, 0, r[6] & 1, r[7]);
            }
            let mut bytes = p.encode();
            for _ in 0..(r[6] & 3) {
                let at = rnd() as usize % bytes.len();
                bytes[at] = rnd() as u8;
            }
            if r[7] & 7 == 0 {
                bytes.truncate(rnd() as usize % bytes.len());
            }
            let src = Ipv4Addr::new(10, 0, 0, r[5] & 0x0f);
            if let Some(reply) = f.feed(src, Ipv4Addr::BROADCAST, &bytes, u32::from(r[0] >> 7)) {
                let q = Packet::parse(&reply).expect("answers parse");
                assert_eq!(q.op, packet::BOOTREPLY);
            }
        }
        let leases = f.leases();
        assert!(leases.iter().any(|l| l.state == "bound"), "{:?}", f.stats());
        for l in &leases {
            let o = l.ip.octets()[3];
            assert!(
                (100..=199).contains(&o) || (o == 9 && l.mac == "02:00:00:00:00:09"),
                "{l:?}"
            );
        }
        drop(f);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A network with `dns` hands out the gateway (and its domain) unless `dhcp` says
    /// otherwise.
    #[test]
    fn dns_networks_hand_out_the_gateway() {
        let text = r#"
version: 1
networks:
  a:
    mode: nat
    ipv4: 10.9.0.1/24
    dhcp: { range: 10.9.0.100-10.9.0.199 }
    dns: { domain: vm.test }
  b:
    mode: nat
    ipv4: 10.8.0.1/24
    dhcp: { range: 10.8.0.100-10.8.0.199, dns: [192.0.2.53], domain: b.test }
    dns: { domain: vm.test }
  c:
    mode: nat
    ipv4: 10.7.0.1/24
    dhcp: { range: 10.7.0.100-10.7.0.199 }
"#;
        let spec = crate::spec::parse(text, &Default::default()).expect("valid spec");
        let all = scopes(&spec);
        assert_eq!(all[0].dns, vec![Ipv4Addr::new(10, 9, 0, 1)]);
        assert_eq!(all[0].domain.as_deref(), Some("vm.test"));
        assert_eq!(all[1].dns, vec![Ipv4Addr::new(192, 0, 2, 53)]);
        assert_eq!(all[1].domain.as_deref(), Some("b.test"));
        assert!(all[2].dns.is_empty() && all[2].domain.is_none());
    }

    #[test]
    fn scopes_from_spec() {
        let spec = crate::spec::parse(SPEC, &Default::default()).expect("valid spec");
        let all = scopes(&spec);
        assert_eq!(
            all.iter().map(|s| s.network.as_str()).collect::<Vec<_>>(),
            ["lan", "nopool"]
        );
        let s = &all[0];
        assert_eq!(s.interface, spec.networks["lan"].bridge);
        assert_eq!(s.server_ip, Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(s.subnet.to_string(), "10.9.0.0/24");
        assert_eq!(s.router, Some(Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(s.dns, vec![Ipv4Addr::new(10, 9, 0, 53)]);
        assert_eq!(s.domain.as_deref(), Some("lan.example"));
        assert_eq!(s.mtu, Some(1400));
        assert_eq!(s.lease_secs, 3600);
        assert_eq!(
            s.pool,
            Some((Ipv4Addr::new(10, 9, 0, 100), Ipv4Addr::new(10, 9, 0, 199)))
        );
        assert_eq!(
            s.routes,
            vec![(
                "198.51.100.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 9, 0, 254)
            )]
        );
        assert_eq!(
            s.reservations,
            vec![Reservation {
                mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
                ip: Ipv4Addr::new(10, 9, 0, 10),
                port: "a-eth0".into(),
            }]
        );
        assert_eq!(all[1].pool, None, "pool: false");
        assert!(check_scopes(&all).is_ok());
        let mut twice = vec![s.clone(), s.clone()];
        twice[1].network = "other".into();
        assert!(check_scopes(&twice).is_err());
    }
}
