//! Router advertisements from the daemon (RFC 4861; RDNSS and DNSSL per RFC 8106) on the
//! bridges of nat, routed and isolated networks with `ipv6`.
//!
//! - [`scopes`] turns a spec into one [`Scope`] per such network: pure.
//! - `engine` decides when to advertise (initial fast RAs, then every random interval
//!   between MinRtrAdvInterval and MaxRtrAdvInterval, answers to solicitations delayed and
//!   rate limited), with time and randomness passed in.
//! - `wire` encodes RAs and checks solicitations; `net` holds the sockets.
//! - [`Service`] runs them on a thread of its own; [`Service::update`] takes the scopes of a
//!   newly accepted spec. A network that goes (or the daemon stopping) gets one last RA with
//!   router lifetime 0, so guests stop using the host as their router at once (6.2.5).
//!
//! What an RA says follows the network's `ra`: the prefix on-link (L) and, in mode slaac,
//! for SLAAC (A); the M and O flags in the DHCPv6 modes; the bridge's MTU as it is when the
//! RA leaves; the bridge's MAC. DNS options appear only when the network has DNS to give
//! ([`dns_options`]). Bridge, vlan and vxlan networks get nothing: their LAN's router
//! announces.
//!
//! A solicitation counts only with hop limit 255 (it was not forwarded) and a valid format;
//! the guard already drops RAs a guest sends, so guests see only these.

mod engine;
mod net;
pub mod wire;

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::log::{Level, line as log};
use crate::spec::{Ipv6Cidr, Network, RaMode, Spec};
use wire::{Advert, PrefixInfo};

/// Prefix lifetimes (radvd's defaults): guests keep their SLAAC addresses a day without
/// hearing from the host, and prefer them four hours.
const VALID_LIFETIME: u32 = 86_400;
const PREFERRED_LIFETIME: u32 = 14_400;

/// What the daemon advertises on one bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub bridge: String,
    pub prefix: Ipv6Cidr,
    pub mode: RaMode,
    pub router_lifetime_secs: u32,
    /// RDNSS servers and DNSSL domains: empty unless the network has DNS to give.
    pub rdnss: Vec<Ipv6Addr>,
    pub dnssl: Vec<String>,
}

impl Scope {
    /// The RA as it goes out now, with the bridge's live MAC and MTU.
    fn advert(&self, mac: Option<crate::spec::Mac>, mtu: Option<u32>, ceasing: bool) -> Advert {
        let (_, max) = engine::intervals(self.router_lifetime_secs);
        Advert {
            managed: self.mode.managed(),
            other: self.mode.other(),
            router_lifetime_secs: if ceasing {
                0
            } else {
                u16::try_from(self.router_lifetime_secs).unwrap_or(u16::MAX)
            },
            source_mac: mac,
            mtu,
            prefixes: vec![PrefixInfo {
                prefix: self.prefix,
                on_link: true,
                autonomous: self.mode.autonomous(),
                valid_secs: VALID_LIFETIME,
                preferred_secs: PREFERRED_LIFETIME,
            }],
            rdnss: self.rdnss.clone(),
            dnssl: self.dnssl.clone(),
            // RFC 8106 5.1: at least MaxRtrAdvInterval; radvd uses twice that.
            dns_lifetime_secs: u32::try_from(max.as_secs() * 2).unwrap_or(u32::MAX),
        }
    }
}

/// The DNS a network's RAs carry: (RDNSS servers, DNSSL domains). DNSSL names the DHCP
/// `domain` when one is set. RDNSS needs an IPv6 resolver for the guests: once a network can
/// have a `dns:` service, its gateway's `ipv6` address goes here (the DHCP `dns` servers are
/// IPv4 and cannot).
pub fn dns_options(net: &Network) -> (Vec<Ipv6Addr>, Vec<String>) {
    let dnssl = net
        .dhcp
        .as_ref()
        .and_then(|d| d.domain.clone())
        .into_iter()
        .collect();
    (Vec::new(), dnssl)
}

/// One scope per network the host routes that has `ipv6`.
pub fn scopes(spec: &Spec) -> Vec<Scope> {
    spec.networks
        .values()
        .filter(|n| n.mode.routed_by_host())
        .filter_map(|n| {
            let v6 = n.ipv6?;
            let (rdnss, dnssl) = dns_options(n);
            Some(Scope {
                bridge: n.bridge.clone(),
                prefix: v6.prefix(),
                mode: v6.ra.mode,
                router_lifetime_secs: v6.ra.lifetime_secs,
                rdnss,
                dnssl,
            })
        })
        .collect()
}

/// One bridge being advertised on.
struct Live {
    scope: Scope,
    sock: Option<net::Sock>,
    schedule: engine::Schedule,
    /// The last error opening or sending, logged once until it changes.
    error: Option<String>,
}

impl Live {
    fn new(scope: Scope, now: Instant) -> Live {
        let schedule = engine::Schedule::new(now, scope.router_lifetime_secs);
        Live {
            scope,
            sock: None,
            schedule,
            error: None,
        }
    }

    /// Opens the socket once the bridge exists (a fresh apply may not have made it yet, and
    /// a bridge made again has a new index).
    fn ensure_socket(&mut self) {
        let index = net::ifindex(&self.scope.bridge);
        if self.sock.as_ref().map(|s| s.ifindex) == index {
            return;
        }
        self.sock = None;
        if let Some(i) = index {
            match net::Sock::open(&self.scope.bridge, i) {
                Ok(s) => self.sock = Some(s),
                Err(e) => self.note(Some(format!("{}: socket: {e}", self.scope.bridge))),
            }
        }
    }

    fn note(&mut self, err: Option<String>) {
        if err.is_some() && err != self.error {
            log(
                Level::Warning,
                &format!("ra: {}", err.as_deref().unwrap_or("")),
            );
        }
        self.error = err;
    }

    fn send(&mut self, ceasing: bool) {
        let Some(s) = &self.sock else { return };
        let (mac, mtu) = net::mac_and_mtu(s.raw(), &self.scope.bridge);
        let msg = self.scope.advert(mac, mtu, ceasing).encode();
        // Before the bridge has a link-local address (no port up yet) there is nothing to
        // send from; the schedule goes on and the next RA tries again.
        let r = s.send_all_nodes(&msg).err();
        let err = r.map(|e| format!("{}: send: {e}", self.scope.bridge));
        self.note(err);
    }

    /// Reads every waiting solicitation into the schedule.
    fn receive(&mut self, now: Instant, rng: &mut Rng) {
        let Some(s) = &self.sock else { return };
        while let Ok(Some(rx)) = s.recv() {
            if rx.hops != Some(255) {
                continue;
            }
            if wire::parse_rs(&rx.msg, rx.src.is_unspecified()).is_ok() {
                self.schedule.solicited(now, rng.unit());
            }
        }
    }
}

/// xorshift64*: the intervals' jitter needs no cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(t ^ u64::from(std::process::id()) | 1)
    }
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The advertising thread, and what the daemon hands it.
pub struct Service {
    pending: Arc<Mutex<Option<Vec<Scope>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    /// Starts advertising `scopes` on a thread in the caller's network namespace.
    pub fn start(scopes: Vec<Scope>) -> Service {
        let pending = Arc::new(Mutex::new(Some(scopes)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (Arc::clone(&pending), Arc::clone(&stop));
        let thread = std::thread::spawn(move || run(&p, &s));
        Service {
            pending,
            stop,
            thread: Some(thread),
        }
    }

    /// The scopes of a newly accepted spec.
    pub fn update(&self, scopes: Vec<Scope>) {
        *self.pending.lock().expect("lock") = Some(scopes);
    }

    /// Sends the final RAs and waits for the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Takes new scopes: kept bridges keep their schedule, gone ones send their last RA.
fn take_scopes(live: &mut BTreeMap<String, Live>, scopes: Vec<Scope>, now: Instant) {
    let mut next = BTreeMap::new();
    for s in scopes {
        let l = match live.remove(&s.bridge) {
            Some(mut l) if l.scope.router_lifetime_secs == s.router_lifetime_secs => {
                l.scope = s.clone();
                l
            }
            _ => Live::new(s.clone(), now),
        };
        next.insert(s.bridge, l);
    }
    for (_, mut gone) in std::mem::replace(live, next) {
        gone.send(true);
    }
}

fn run(pending: &Mutex<Option<Vec<Scope>>>, stop: &AtomicBool) {
    let mut live: BTreeMap<String, Live> = BTreeMap::new();
    let mut rng = Rng::seeded();
    let mut last_check = Instant::now() - Duration::from_secs(2);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if let Some(s) = pending.lock().expect("lock").take() {
            take_scopes(&mut live, s, now);
        }
        if now.duration_since(last_check) >= Duration::from_secs(1) {
            last_check = now;
            live.values_mut().for_each(Live::ensure_socket);
        }
        for l in live.values_mut() {
            l.receive(now, &mut rng);
            if l.sock.is_some() && l.schedule.poll(now, rng.unit()) {
                l.send(false);
            }
        }
        let next = live
            .values()
            .map(|l| l.schedule.due())
            .min()
            .unwrap_or(now + Duration::from_millis(200));
        wait(
            &live,
            next.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200)),
        );
    }
    for l in live.values_mut() {
        l.send(true);
    }
}

/// Sleeps until a solicitation arrives on any socket or `timeout` passes.
fn wait(live: &BTreeMap<String, Live>, timeout: Duration) {
    let mut fds: Vec<libc::pollfd> = live
        .values()
        .filter_map(|l| l.sock.as_ref())
        .map(|s| libc::pollfd {
            fd: s.raw(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(200);
    // SAFETY: `fds` is a live array of its length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
}
