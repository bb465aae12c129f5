//! kvmnet's built-in DHCPv6 server (RFC 8415: IA_NA, rapid commit, information-request with
//! DNS servers and domain list per RFC 3646).
//!
//! Shaped like the DHCPv4 server next door: [`Engine`](engine) decides without I/O (time is
//! passed in), `net` holds the sockets, `store` the lease table, and bindings are written to a
//! journal of the same code and format as DHCPv4's (`STATE_DIR/dhcp/v6/leases.journal`, one
//! JSON [`Lease6`] per line): every binding is on disk before its Reply is sent, so a `kill -9`
//! loses none and never hands an address out twice. Advertised addresses are held in memory
//! only, as DHCPv4 offers are.
//!
//! - [`Server6`] serves one [`Scope6`] per network with `ipv6`, a DHCPv6 RA mode and a pool or
//!   reservations: a UDP socket on `[::]:547` bound to the bridge and joined to ff02::1:2 (it
//!   sends the answers, from the bridge's link-local address to the client's, port 546), and a
//!   packet socket on the bridge that receives the client messages with their Ethernet source.
//! - The server DUID is a DUID-LLT made once from the first served bridge's MAC and the time,
//!   kept in `STATE_DIR/dhcp/v6/server-duid`, so it stays the same across restarts and bridge
//!   re-creations (clients send it back in Request, Renew, Release and Decline).
//! - Relay messages (Relay-forward) are not served: the server answers clients on its
//!   bridges only. IA_TA is not answered (RFC 8415 allows a server to ignore it); an IA_PD is
//!   answered with status NoPrefixAvail, so a client that asks for a prefix learns at once
//!   that it gets none.
//!
//! # Who a client is, and what a guest can forge
//!
//! A binding belongs to the client's DUID (option 1) and the IA_NA's IAID, as RFC 8415 says,
//! and records the **Ethernet source** of the message that made it. The Ethernet source is
//! read from the packet socket (the UDP socket only knows the IPv6 source). On a guarded
//! port (`antispoof`) the bridge drops frames whose source is not the port's MAC, so there the
//! Ethernet source names the port; the DUID and the link-local source address are written by
//! the guest and prove nothing (a DUID-LL's or DUID-LLT's link-layer address and an EUI-64
//! link-local are as forgeable as any other byte; stable-privacy and random link-locals carry
//! no MAC at all). So:
//!
//! - **Reservations** (a port's `ipv6`) are handed to messages whose Ethernet source is the
//!   port's MAC, whatever their DUID: a reinstalled guest with a new DUID gets its address.
//!   The DUID's link-layer address is never used to pick a reservation.
//! - **Who may end a binding.** A Release or Decline counts only if it names the binding's
//!   DUID and IAID, comes from the Ethernet source the binding was made from, and (Decline)
//!   arrives within [`Limits6::decline_window_secs`] of the Reply that made it new. Anything
//!   else is answered NoBinding and changes nothing ([`Stats6::dropped_not_holder`]).
//! - **Allowances** are the DHCPv4 server's ([`crate::dhcp::Limits`]): a token bucket per
//!   Ethernet source and a shared one per bridge; a reserved MAC within its own allowance never
//!   touches the shared one. DUIDs are free to invent, so no allowance is keyed by them.
//! - **Pool share.** A guest can invent DUIDs and IAIDs without end. An Ethernet source that
//!   is a guarded port's MAC may hold at most [`Limits6::max_per_mac`] pool addresses (offered
//!   or bound) at once; beyond that its new IAs get NoAddrsAvail. A MAC on an unguarded port
//!   is itself forgeable, so there (as for DHCPv4) the shared allowance and the low-pool
//!   admission rate bound what a flood can take: below [`Limits6::low_pool_percent`] free,
//!   clients that hold nothing are admitted at [`Limits6::low_pool_admit_rate`] per network.
//! - **Sources.** Only messages from a link-local IPv6 source are served (clients send from
//!   link-local; the server never offers unicast), and answers go back to that source on the
//!   bridge the message came in on. Server messages from guests (UDP 547 -> 546) never reach
//!   another guest: the guard drops them at the port.
//! - **Server identifier.** Request, Renew, Release and Decline must carry this server's DUID
//!   and Solicit, Rebind and Confirm must not carry one (RFC 8415 16); others are ignored.

mod engine;
mod net;
mod store;

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dhcp::DhcpError;
use crate::spec::{Ipv6Cidr, Mac, Spec};
use engine::Engine;

/// What the server hands out on one network (one bridge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope6 {
    pub network: String,
    pub interface: String,
    /// The gateway's address: never handed out.
    pub server_ip: Ipv6Addr,
    /// The network's prefix: Confirm checks addresses against it.
    pub prefix: Ipv6Cidr,
    /// DNS servers (option 23) and domain search list (option 24).
    pub dns: Vec<Ipv6Addr>,
    pub domains: Vec<String>,
    /// `u32::MAX` means infinite.
    pub lease_secs: u32,
    /// Pool for clients without a reservation, inclusive; `None` serves reservations only.
    pub pool: Option<(Ipv6Addr, Ipv6Addr)>,
    pub reservations: Vec<Reservation6>,
    /// MACs of guarded ports on the network: their pool share is capped (see above).
    pub guarded_macs: Vec<Mac>,
    /// Addresses (IA_NA) are served; false answers information-request only (RA mode
    /// `slaac`: the network's DNS still reaches clients that ask).
    pub addresses: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation6 {
    pub mac: Mac,
    pub ip: Ipv6Addr,
    pub port: String,
}

/// One DHCPv6 lease as kept in the journal and shown to operators.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease6 {
    /// The Ethernet source the binding was made from.
    pub mac: String,
    pub ip: Ipv6Addr,
    pub network: String,
    /// Unix seconds (for `released`: when). `u64::MAX`: infinite.
    pub expires_unix: u64,
    /// "offered" (advertised) | "bound" | "declined" | "released"
    pub state: String,
    pub reserved: bool,
    /// The client's DUID as colon-separated hex.
    pub duid: String,
    pub iaid: u32,
}

/// Limits of the DHCPv6 server: the DHCPv4 allowances plus its own pool guards.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits6 {
    /// Per Ethernet source and per bridge (the `per_*` fields are used).
    pub rates: crate::dhcp::Limits,
    /// How long an advertised address is held for the client's Request.
    pub offer_hold_secs: u32,
    pub decline_hold_secs: u32,
    pub decline_window_secs: u32,
    /// Pool addresses a guarded port's MAC may hold at once.
    pub max_per_mac: u32,
    pub low_pool_percent: u32,
    pub low_pool_admit_rate: f64,
}

impl Default for Limits6 {
    fn default() -> Limits6 {
        let rates = crate::dhcp::Limits::default();
        Limits6 {
            offer_hold_secs: rates.offer_hold_secs,
            decline_hold_secs: rates.decline_hold_secs,
            decline_window_secs: rates.decline_window_secs,
            max_per_mac: 16,
            low_pool_percent: rates.low_pool_percent,
            low_pool_admit_rate: rates.low_pool_admit_rate,
            rates,
        }
    }
}

/// Counters since start: requests received, answers sent, drops by reason.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Stats6 {
    pub received: u64,
    pub advertise: u64,
    pub reply: u64,
    /// Not a DHCPv6 client message we could parse, or missing its client identifier.
    pub dropped_malformed: u64,
    /// Not from a link-local source.
    pub dropped_source: u64,
    /// A server identifier that is not ours, or one where none may be.
    pub dropped_server_id: u64,
    pub dropped_not_holder: u64,
    pub dropped_rate_mac: u64,
    pub dropped_rate_interface: u64,
    pub dropped_pool_exhausted: u64,
    pub dropped_pool_guard: u64,
    /// A guarded port's MAC over its pool share.
    pub dropped_mac_share: u64,
    /// Message types a server does not answer (relay, server messages, ...).
    pub ignored: u64,
    pub send_errors: u64,
    pub journal_syncs: u64,
    pub journal_errors: u64,
    pub journal_compactions: u64,
    pub interfaces_waiting: Vec<String>,
}

/// One network's DHCPv6 requests by message type (metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkCounters6 {
    pub solicit: u64,
    pub request: u64,
    pub confirm: u64,
    pub renew: u64,
    pub rebind: u64,
    pub release: u64,
    pub decline: u64,
    pub information_request: u64,
    pub other: u64,
}

impl NetworkCounters6 {
    /// The requests by message type, as metrics label them.
    pub fn by_type(&self) -> [(&'static str, u64); 9] {
        [
            ("solicit", self.solicit),
            ("request", self.request),
            ("confirm", self.confirm),
            ("renew", self.renew),
            ("rebind", self.rebind),
            ("release", self.release),
            ("decline", self.decline),
            ("information-request", self.information_request),
            ("other", self.other),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkStats6 {
    pub network: String,
    pub counters: NetworkCounters6,
    pub pool_size: u64,
    pub pool_free: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Dhcp6Error {
    #[error(transparent)]
    State(#[from] DhcpError),
    #[error("DHCPv6 server DUID {path}: {source}")]
    Duid {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCPv6 socket on {interface}: {op}: {source}")]
    Socket {
        interface: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("DHCPv6 server: {op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The v6 journal's directory inside the DHCP state directory.
pub fn state_dir(dhcp_dir: &Path) -> PathBuf {
    dhcp_dir.join("v6")
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock(m: &Mutex<Engine>) -> MutexGuard<'_, Engine> {
    // As in DHCPv4: the engine's state is updated in steps that each keep it consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-only access to a running server from another thread.
#[derive(Clone)]
pub struct ServerHandle6 {
    shared: Arc<Mutex<Engine>>,
}

impl ServerHandle6 {
    pub fn leases(&self) -> Vec<Lease6> {
        lock(&self.shared).leases(now_unix())
    }
    pub fn stats(&self) -> Stats6 {
        lock(&self.shared).stats.clone()
    }
    pub fn network_stats(&self) -> Vec<NetworkStats6> {
        lock(&self.shared).network_stats()
    }
}

/// A running DHCPv6 server. Its sockets are opened in the network namespace of the thread
/// that calls [`Server6::start`] and [`Server6::update`]: call both from the thread that runs
/// it (the daemon does).
pub struct Server6 {
    shared: Arc<Mutex<Engine>>,
    sockets: net::Sockets,
    last_tick: Instant,
    last_error: Option<String>,
}

impl Server6 {
    /// Loads the journal and the server DUID from `dir` and opens the scopes' sockets (a
    /// scope whose bridge does not exist yet is retried every second).
    pub fn start(scopes: Vec<Scope6>, dir: &Path) -> Result<Server6, Dhcp6Error> {
        let mut engine = Engine::open(dir, now_unix())?;
        let mut sockets = net::Sockets::default();
        let r = sockets.sync(&scopes);
        engine.set_duid(load_duid(dir, &sockets)?);
        engine.set_scopes(scopes, now_unix());
        engine.stats.interfaces_waiting = sockets.waiting();
        r?;
        Ok(Server6 {
            shared: Arc::new(Mutex::new(engine)),
            sockets,
            last_tick: Instant::now(),
            last_error: None,
        })
    }

    /// Serve until `stop` is set (checked at least every 100 ms).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), Dhcp6Error> {
        let mut batch = Vec::new();
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

    /// Decide a batch, make its bindings durable with one sync, then send.
    fn serve(&mut self, batch: &mut Vec<net::Rx6>) {
        let now = now_unix();
        let mono = Instant::now();
        let mut replies = Vec::with_capacity(batch.len());
        let mut errors = 0;
        let mut e = lock(&self.shared);
        for rx in batch.drain(..) {
            let iface = self.sockets.interface(rx.socket).to_string();
            match e.handle(&iface, &rx, now, mono) {
                Some(o) if o.needs_sync => replies.push(o),
                Some(o) => errors += u64::from(self.sockets.send(&o).is_err()),
                None => {}
            }
        }
        let durable = e.commit();
        drop(e);
        if durable {
            for o in &replies {
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
        if err.is_some() && err != self.last_error {
            crate::log::line(
                crate::log::Level::Error,
                &format!("kvmnet dhcp6: {}", err.as_deref().unwrap_or_default()),
            );
        }
        self.last_error = err;
        e.stats.interfaces_waiting = self.sockets.waiting();
    }

    /// Replace the scopes (spec re-applied): sockets opened and closed, leases kept.
    pub fn update(&mut self, scopes: Vec<Scope6>) -> Result<(), Dhcp6Error> {
        let r = self.sockets.sync(&scopes);
        let mut e = lock(&self.shared);
        e.set_scopes(scopes, now_unix());
        e.stats.interfaces_waiting = self.sockets.waiting();
        r
    }

    pub fn set_limits(&mut self, limits: Limits6) {
        lock(&self.shared).limits = limits;
    }

    pub fn handle(&self) -> ServerHandle6 {
        ServerHandle6 {
            shared: self.shared.clone(),
        }
    }
}

const DUID_FILE: &str = "server-duid";
/// Seconds from 1970 to 2000-01-01, the DUID-LLT epoch.
const DUID_EPOCH: u64 = 946_684_800;

/// The server DUID: read from `dir`, or made (DUID-LLT, type 1, hardware type 1) from the
/// first bridge's MAC (or, with none yet, a random locally administered one) and saved.
fn load_duid(dir: &Path, sockets: &net::Sockets) -> Result<Vec<u8>, Dhcp6Error> {
    let path = dir.join(DUID_FILE);
    let err = |source| Dhcp6Error::Duid {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => {
            if let Some(d) = crate::dhcp::store::parse_client_id(t.trim()) {
                return Ok(d.into_vec());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mac = sockets.first_mac().unwrap_or_else(random_mac);
    let time = u32::try_from(now_unix().saturating_sub(DUID_EPOCH)).unwrap_or(0);
    let mut duid = vec![0, 1, 0, 1];
    duid.extend_from_slice(&time.to_be_bytes());
    duid.extend_from_slice(&mac.0);
    let tmp = dir.join(format!("{DUID_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all((crate::dhcp::store::client_id_text(&duid) + "\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(err)?;
    Ok(duid)
}

fn random_mac() -> Mac {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b[0] = (b[0] & 0xfc) | 0x02;
    Mac(b)
}

/// Read the v6 leases from a state directory without a running server (`kvmnet leases`).
pub fn read_leases(dhcp_dir: &Path) -> Result<Vec<Lease6>, DhcpError> {
    let now = now_unix();
    let mut last: BTreeMap<(String, Ipv6Addr), Lease6> = BTreeMap::new();
    for l in crate::dhcp::journal::read_journal::<Lease6>(&state_dir(dhcp_dir))? {
        last.insert((l.network.clone(), l.ip), l);
    }
    Ok(last
        .into_values()
        .filter(|l| match l.state.as_str() {
            "bound" | "offered" | "declined" => l.expires_unix > now,
            "released" => {
                l.expires_unix
                    .saturating_add(crate::dhcp::store::KEEP_FREED_SECS)
                    > now
            }
            _ => false,
        })
        .collect())
}

/// The server without sockets, for fuzzers and tests: one scope on `br0` (fd00:db8::/64,
/// gateway ::1, pool ::1000-::1fff, reservation of 02:00:00:00:00:09 at ::9, a guarded port
/// 02:00:00:00:00:0a); time is passed in.
#[doc(hidden)]
pub struct FuzzServer6 {
    engine: Engine,
    now: u64,
    mono: Instant,
}

impl FuzzServer6 {
    pub fn open(state_dir: &Path) -> Result<FuzzServer6, Dhcp6Error> {
        let now = 1_000_000;
        let mut engine = Engine::open(state_dir, now)?;
        engine.set_duid(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 1]);
        engine.set_scopes(vec![fuzz_scope()], now);
        Ok(FuzzServer6 {
            engine,
            now,
            mono: Instant::now(),
        })
    }

    /// `advance` seconds pass, then `data` arrives from `src` with Ethernet source `mac`.
    /// Returns the answer's bytes and destination, if the server would send one.
    pub fn feed(
        &mut self,
        src: Ipv6Addr,
        mac: Mac,
        data: &[u8],
        advance: u32,
    ) -> Option<(Ipv6Addr, Vec<u8>)> {
        if advance > 0 {
            self.now += u64::from(advance);
            self.mono += Duration::from_secs(u64::from(advance));
            self.engine.tick(self.now, self.mono);
        }
        let rx = net::Rx6 {
            socket: 0,
            src,
            mac,
            data: data.to_vec(),
        };
        let out = self.engine.handle("br0", &rx, self.now, self.mono);
        let durable = self.engine.commit();
        out.filter(|o| durable || !o.needs_sync)
            .map(|o| (o.dest, o.bytes))
    }

    pub fn leases(&self) -> Vec<Lease6> {
        self.engine.leases(self.now)
    }

    pub fn stats(&self) -> Stats6 {
        self.engine.stats.clone()
    }

    pub fn server_duid(&self) -> Vec<u8> {
        self.engine.duid().to_vec()
    }
}

fn fuzz_scope() -> Scope6 {
    let a = |s: &str| s.parse::<Ipv6Addr>().expect("literal");
    Scope6 {
        network: "fuzz".into(),
        interface: "br0".into(),
        server_ip: a("fd00:db8::1"),
        prefix: "fd00:db8::/64".parse().expect("literal"),
        dns: vec![a("fd00:db8::1")],
        domains: vec!["fuzz.example".into()],
        lease_secs: 600,
        pool: Some((a("fd00:db8::1000"), a("fd00:db8::1fff"))),
        reservations: vec![Reservation6 {
            mac: Mac([2, 0, 0, 0, 0, 9]),
            ip: a("fd00:db8::9"),
            port: "fuzz9".into(),
        }],
        guarded_macs: vec![Mac([2, 0, 0, 0, 0, 9]), Mac([2, 0, 0, 0, 0, 0x0a])],
        addresses: true,
    }
}

/// A lease's length on a network without a `dhcp:` block (DHCPv4's default).
const LEASE_DEFAULT_SECS: u32 = 3600;

/// The DHCPv6 scopes a spec asks for: one per network with `ipv6` and either a `dhcp:` block
/// or an RA mode that hands addresses out by DHCPv6. Addresses (IA_NA) are served when the RA
/// mode says so (`dhcpv6`, `slaac+dhcpv6`); information-request (DNS) in every mode.
/// Reservations: the ports on the network with an `ipv6`, by MAC. Pure and deterministic.
pub fn scopes(spec: &Spec) -> Vec<Scope6> {
    let mut out = Vec::new();
    for (name, net) in &spec.networks {
        let Some(v6) = net.ipv6 else { continue };
        let managed = v6.ra.mode.managed();
        if net.dhcp.is_none() && !managed {
            continue;
        }
        let ports = || {
            spec.vms
                .values()
                .flat_map(|vm| vm.ports.iter())
                .filter(|p| &p.network == name)
        };
        let reservations = ports()
            .filter_map(|p| {
                p.ipv6.map(|ip| Reservation6 {
                    mac: p.mac,
                    ip,
                    port: p.name.clone(),
                })
            })
            .collect();
        let dhcp = net.dhcp.as_ref();
        out.push(Scope6 {
            network: name.clone(),
            interface: net.bridge.clone(),
            server_ip: v6.gateway.addr,
            prefix: v6.prefix(),
            // With a `dns:` service and no `dns6` of their own, guests are told the gateway,
            // where the service answers, and its domain (as DHCPv4 and the RAs tell them).
            dns: match dhcp.map(|d| d.dns6.clone()).unwrap_or_default() {
                d if d.is_empty() && net.dns.is_some() => vec![v6.gateway.addr],
                d => d,
            },
            domains: dhcp
                .and_then(|d| d.domain.clone())
                .or_else(|| net.dns.as_ref().and_then(|d| d.domain.clone()))
                .into_iter()
                .collect(),
            lease_secs: dhcp.map_or(LEASE_DEFAULT_SECS, |d| {
                u32::try_from(d.lease_time_secs).unwrap_or(u32::MAX)
            }),
            pool: dhcp.and_then(|d| d.range6).filter(|_| managed),
            reservations,
            guarded_macs: ports().filter(|p| p.antispoof).map(|p| p.mac).collect(),
            addresses: managed,
        });
    }
    out
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    const SPEC: &str = r#"
version: 1
networks:
  managed:
    mode: nat
    bridge: kvbr-m
    ipv4: 10.9.0.1/24
    ipv6: fd00:9::1/64
    ra: { mode: slaac+dhcpv6 }
    dhcp: { range6: "fd00:9::1000-fd00:9::1fff", dns6: ["fd00:9::53"], domain: m.example, lease_time: 2h }
  slaac:
    mode: isolated
    ipv4: 10.8.0.1/24
    ipv6: fd00:8::1/64
    dhcp: { dns6: ["fd00:8::53"] }
  v4only:
    mode: isolated
    ipv4: 10.7.0.1/24
    dhcp: {}
  named:
    mode: isolated
    ipv4: 10.6.0.1/24
    ipv6: fd00:6::1/64
    dhcp: {}
    dns: { domain: n.example }
vms:
  a:
    ports:
      - { network: managed, name: a0, mac: "52:54:00:00:00:01", ipv6: "fd00:9::10" }
      - { network: managed, name: a1, mac: "52:54:00:00:00:02", antispoof: false }
"#;

    #[test]
    fn scopes_from_spec() {
        let spec = crate::spec::parse(SPEC, &Default::default()).expect("valid spec");
        let s = scopes(&spec);
        assert_eq!(
            s.iter().map(|s| s.network.as_str()).collect::<Vec<_>>(),
            ["managed", "named", "slaac"],
            "networks with ipv6 only"
        );
        let m = &s[0];
        assert!(m.addresses);
        assert_eq!(m.interface, "kvbr-m");
        assert_eq!(m.prefix.to_string(), "fd00:9::/64");
        assert_eq!(m.lease_secs, 7200);
        assert_eq!(m.dns, vec!["fd00:9::53".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(m.domains, vec!["m.example".to_string()]);
        assert_eq!(
            m.pool,
            Some((
                "fd00:9::1000".parse().unwrap(),
                "fd00:9::1fff".parse().unwrap()
            ))
        );
        assert_eq!(m.reservations.len(), 1);
        assert_eq!(
            m.reservations[0].ip,
            "fd00:9::10".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(m.guarded_macs, vec![Mac([0x52, 0x54, 0, 0, 0, 1])]);
        // A dns: service and no dns6: the gateway and the service's domain.
        let n = &s[1];
        assert_eq!(n.dns, vec!["fd00:6::1".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(n.domains, vec!["n.example".to_string()]);
        let sl = &s[2];
        assert!(!sl.addresses, "ra mode slaac: information-request only");
        assert_eq!(sl.pool, None);
        assert_eq!(sl.dns.len(), 1);
    }
}
