//! The protocol: one received packet in, at most one reply out (RFC 2131 section 4.3), with
//! rate limits and pool guards in front. No sockets here; time is passed in.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use super::journal::Journal;
use super::limit::{Allowances, Bucket, Sender, take};
use super::net::{Dest, Outgoing, Rx};
use super::packet::{
    BOOTREQUEST, FLAG_BROADCAST, MessageType, Packet, encode_classless_routes, opt,
};
use super::store::{Binding, Entry, State, Table};
use super::{DhcpError, Lease, Limits, NetworkCounters, NetworkStats, Scope, ServerStats};
use crate::log::{self, Level};
use crate::spec::{Ipv4Cidr, Mac};

pub(crate) struct Engine {
    scopes: Vec<Scope>,
    by_iface: HashMap<String, usize>,
    /// Per scope: reserved MAC -> address.
    reserved: Vec<HashMap<Mac, Ipv4Addr>>,
    tables: HashMap<String, Table>,
    pub limits: Limits,
    pub stats: ServerStats,
    /// Per network: messages by type, NAKs (metrics). Kept while the network goes away and
    /// comes back, as counters must not go down.
    by_network: HashMap<String, NetworkCounters>,
    journal: Journal<Lease>,
    needs_sync: bool,
    allowances: Allowances,
}

fn ip32(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

fn hostname(p: &Packet) -> Option<String> {
    let h = p.get(opt::HOSTNAME)?;
    (!h.is_empty() && h.len() <= 63 && h.iter().all(|b| b.is_ascii_graphic()))
        .then(|| String::from_utf8_lossy(h).into_owned())
}

impl Engine {
    pub fn open(state_dir: &Path, now: u64) -> Result<Engine, DhcpError> {
        let (journal, records) = Journal::<Lease>::open(state_dir)?;
        let mut tables: HashMap<String, Table> = HashMap::new();
        for r in &records {
            tables
                .entry(r.network.clone())
                .or_insert_with(|| Table::new(&r.network))
                .load(r, now);
        }
        for t in tables.values_mut() {
            t.configure(None);
        }
        Ok(Engine {
            scopes: Vec::new(),
            by_iface: HashMap::new(),
            reserved: Vec::new(),
            tables,
            limits: Limits::default(),
            stats: ServerStats::default(),
            by_network: HashMap::new(),
            journal,
            needs_sync: false,
            allowances: Allowances::default(),
        })
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    pub fn set_scopes(&mut self, scopes: Vec<Scope>, now: u64) {
        self.by_iface = scopes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.interface.clone(), i))
            .collect();
        self.reserved = scopes
            .iter()
            .map(|s| s.reservations.iter().map(|r| (r.mac, r.ip)).collect())
            .collect();
        for s in &scopes {
            self.tables
                .entry(s.network.clone())
                .or_insert_with(|| Table::new(&s.network));
        }
        for (name, t) in self.tables.iter_mut() {
            t.sweep(now);
            t.configure(scopes.iter().find(|s| &s.network == name));
        }
        self.scopes = scopes;
    }

    /// The interfaces' MTUs as the host has them now, by interface name.
    pub fn set_live_mtus(&mut self, mtus: &[(String, Option<u32>)]) {
        for s in &mut self.scopes {
            if let Some((_, m)) = mtus.iter().find(|(i, _)| *i == s.interface) {
                s.live_mtu = *m;
            }
        }
    }

    /// Counts for scope `si`'s network (metrics).
    fn count(&mut self, si: usize, f: impl FnOnce(&mut NetworkCounters)) {
        let network = self.scopes[si].network.as_str();
        if !self.by_network.contains_key(network) {
            self.by_network
                .insert(network.to_string(), NetworkCounters::default());
        }
        f(self.by_network.get_mut(network).expect("just inserted"));
    }

    /// Each served network's counters and pool: a copy, taken in microseconds.
    pub fn network_stats(&self) -> Vec<NetworkStats> {
        self.scopes
            .iter()
            .map(|s| {
                let t = self.tables.get(&s.network);
                NetworkStats {
                    network: s.network.clone(),
                    counters: self.by_network.get(&s.network).cloned().unwrap_or_default(),
                    pool_size: t.map_or(0, Table::pool_size),
                    pool_free: t.map_or(0, Table::free_count),
                }
            })
            .collect()
    }

    pub fn leases(&self, now: u64) -> Vec<Lease> {
        let mut out = Vec::new();
        for t in self.tables.values() {
            t.leases(now, &mut out);
        }
        out.sort_by(|a, b| (&a.network, a.ip).cmp(&(&b.network, b.ip)));
        out
    }

    /// Write what this batch journaled; sync it when an ACK depends on it. False when the
    /// bindings could not be made durable (their ACKs must not be sent).
    pub fn commit(&mut self) -> bool {
        if !self.journal.has_pending() && !self.needs_sync {
            return true;
        }
        let sync = std::mem::take(&mut self.needs_sync);
        match self.journal.flush(sync) {
            Ok(()) => {
                if sync {
                    self.stats.journal_syncs += 1;
                }
                true
            }
            Err(e) => {
                log::line(Level::Error, &format!("kvmnet dhcp: {e}"));
                self.stats.journal_errors += 1;
                false
            }
        }
    }

    /// Once a second: expire leases, forget idle rate buckets, compact the journal.
    pub fn tick(&mut self, now: u64, mono: Instant) {
        for t in self.tables.values_mut() {
            t.sweep(now);
        }
        self.allowances.prune(&self.limits, mono);
        let live: usize = self.tables.values().map(|t| t.entry_count()).sum();
        if self.journal.wants_compaction(live) {
            let mut recs = Vec::with_capacity(live);
            for t in self.tables.values() {
                t.journal_records(now, &mut recs);
            }
            match self.journal.compact(&recs) {
                Ok(()) => self.stats.journal_compactions += 1,
                Err(e) => {
                    log::line(Level::Error, &format!("kvmnet dhcp: compacting: {e}"));
                    self.stats.journal_errors += 1;
                }
            }
        }
    }

    /// One received packet. `iface` is the interface it came in on, `socket` its socket.
    pub fn handle(
        &mut self,
        iface: &str,
        socket: usize,
        rx: &Rx,
        now: u64,
        mono: Instant,
    ) -> Option<Outgoing> {
        self.stats.received += 1;
        let (req, mac, kind) = self.request(rx)?;
        let relayed = !req.giaddr.is_unspecified();
        let si = self.scope_of(iface, &req)?;
        if relayed && !self.relay_address_ok(si, req.giaddr, *rx.src.ip()) {
            self.stats.dropped_relay += 1;
            return None;
        }
        let reserved = self.reserved[si].get(&mac).copied();
        let from = Sender {
            bridge: iface,
            relayed,
            mac,
            reserved: reserved.is_some(),
        };
        if !self
            .allowances
            .admit(&self.limits, &mut self.stats, &from, mono)
        {
            return None;
        }
        self.count(si, |c| c.count(kind));
        let mut cx = Cx {
            scope: &self.scopes[si],
            table: self
                .tables
                .get_mut(&self.scopes[si].network)
                .expect("a table per scope"),
            stats: &mut self.stats,
            limits: &self.limits,
            journal: &mut self.journal,
            needs_sync: &mut self.needs_sync,
            low_pool_buckets: &mut self.allowances.low_pool,
            req: &req,
            rx,
            mac,
            reserved,
            now,
            mono,
        };
        let (reply, dest, needs_sync) = match kind {
            MessageType::Discover => cx.discover()?,
            MessageType::Request => cx.request()?,
            MessageType::Decline => {
                cx.decline();
                return None;
            }
            MessageType::Release => {
                cx.release();
                return None;
            }
            MessageType::Inform => cx.inform()?,
            _ => {
                cx.stats.dropped_malformed += 1;
                return None;
            }
        };
        if reply.message_type() == Some(MessageType::Nak) {
            self.count(si, |c| c.nak += 1);
        }
        let bytes = fit(reply, &req);
        Some(Outgoing {
            socket,
            dest,
            bytes,
            needs_sync,
        })
    }
}

impl Engine {
    /// A client request as it must be to be served: a BOOTREQUEST with a message type, from a
    /// unicast MAC that is not all zeros.
    fn request(&mut self, rx: &Rx) -> Option<(Packet, Mac, MessageType)> {
        let req = match Packet::parse(&rx.data) {
            Ok(p) if p.op == BOOTREQUEST => p,
            _ => {
                self.stats.dropped_malformed += 1;
                return None;
            }
        };
        let (Some(mac), Some(kind)) = (req.mac(), req.message_type()) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        if mac.is_zero() || mac.is_multicast() {
            self.stats.dropped_malformed += 1;
            return None;
        }
        Some((req, mac, kind))
    }

    /// The scope that serves `req` received on `iface`.
    fn scope_of(&mut self, iface: &str, req: &Packet) -> Option<usize> {
        let here = self.by_iface.get(iface).copied();
        let si = if req.giaddr.is_unspecified() {
            here
        } else {
            self.stats.relayed += 1;
            // The relay's address names the client's subnet. Every scope is a local bridge,
            // so a real relay for it sits on that bridge: one that names another network
            // is a guest forging giaddr to reach another pool.
            self.scopes
                .iter()
                .position(|s| s.subnet.contains(req.giaddr))
                .filter(|&si| Some(si) == here)
        };
        if si.is_none() {
            self.stats.dropped_no_scope += 1;
        }
        si
    }

    /// Whether a message relayed with `giaddr` from IP source `src` may be served on scope
    /// `si`'s bridge: both must be addresses no guest port can hold (see "Relays" in the
    /// module docs).
    fn relay_address_ok(&self, si: usize, giaddr: Ipv4Addr, src: Ipv4Addr) -> bool {
        let s = &self.scopes[si];
        let Some(t) = self.tables.get(&s.network) else {
            return false;
        };
        let ok = |a: Ipv4Addr| {
            let ip = ip32(a);
            is_host_of(s, a)
                && !t.in_pool_range(ip)
                && !t.is_reserved_ip(ip)
                && t.entry(ip).is_none()
        };
        ok(giaddr) && ok(src)
    }
}

/// A host address of the scope's network other than the server's.
fn is_host_of(s: &Scope, a: Ipv4Addr) -> bool {
    s.subnet.contains(a)
        && a != s.server_ip
        && a != s.subnet.network().addr
        && a != s.subnet.broadcast()
}

/// Encode within the client's maximum message size (option 57, at least 576 bytes with IP
/// and UDP headers), dropping the least essential options first.
fn fit(mut p: Packet, req: &Packet) -> Vec<u8> {
    let max = usize::from(req.get_u16(opt::MAX_SIZE).unwrap_or(576).max(576)) - 28;
    let mut bytes = p.encode();
    for code in [
        opt::MS_CLASSLESS_ROUTES,
        opt::DOMAIN,
        opt::CLASSLESS_ROUTES,
        opt::DNS,
    ] {
        if bytes.len() <= max {
            break;
        }
        p.remove(code);
        bytes = p.encode();
    }
    bytes
}

/// What one request is handled with.
struct Cx<'a> {
    scope: &'a Scope,
    table: &'a mut Table,
    stats: &'a mut ServerStats,
    limits: &'a Limits,
    journal: &'a mut Journal<Lease>,
    needs_sync: &'a mut bool,
    low_pool_buckets: &'a mut HashMap<String, Bucket>,
    req: &'a Packet,
    rx: &'a Rx,
    mac: Mac,
    reserved: Option<Ipv4Addr>,
    now: u64,
    mono: Instant,
}

type Reply = (Packet, Dest, bool);

impl Cx<'_> {
    fn relayed(&self) -> bool {
        !self.req.giaddr.is_unspecified()
    }

    /// `ciaddr`, when it is a host address of this network: the only kind an answer is
    /// sent to.
    fn ciaddr_here(&self) -> Option<Ipv4Addr> {
        Some(self.req.ciaddr).filter(|&c| is_host_of(self.scope, c))
    }

    /// RFC 2131 4.1: where an OFFER or ACK goes.
    fn dest(&self, yiaddr: Ipv4Addr) -> Dest {
        let r = self.req;
        if self.relayed() {
            Dest::Relay(r.giaddr)
        } else if let Some(ci) = self.ciaddr_here() {
            Dest::Unicast(ci)
        } else if r.broadcast_flag() || yiaddr.is_unspecified() {
            Dest::Broadcast
        } else {
            Dest::Hardware {
                ip: yiaddr,
                mac: self.mac,
                src: self.scope.server_ip,
            }
        }
    }

    fn options(&self, p: &mut Packet, lease: bool) {
        let s = self.scope;
        p.set(opt::SERVER_ID, s.server_ip.octets().to_vec());
        if lease {
            p.set(opt::LEASE_TIME, s.lease_secs.to_be_bytes().to_vec());
            if s.lease_secs != u32::MAX {
                let t = u64::from(s.lease_secs);
                p.set(opt::RENEWAL_T1, ((t / 2) as u32).to_be_bytes().to_vec());
                p.set(
                    opt::REBINDING_T2,
                    ((t * 7 / 8) as u32).to_be_bytes().to_vec(),
                );
            }
        }
        p.set(opt::SUBNET_MASK, s.subnet.netmask().to_be_bytes().to_vec());
        p.set(opt::BROADCAST, s.subnet.broadcast().octets().to_vec());
        if let Some(r) = s.router {
            p.set(opt::ROUTER, r.octets().to_vec());
        }
        if !s.dns.is_empty() {
            p.set(opt::DNS, s.dns.iter().flat_map(|a| a.octets()).collect());
        }
        if let Some(d) = &s.domain {
            p.set(opt::DOMAIN, d.as_bytes().to_vec());
        }
        if let Some(m) = s.mtu.or(s.live_mtu.filter(|&m| m < 1500)) {
            p.set(opt::MTU, (m.clamp(68, 65535) as u16).to_be_bytes().to_vec());
        }
        // RFC 3442: only to clients that ask; such a client ignores option 3, so the default
        // route goes into the list too.
        let want = [opt::CLASSLESS_ROUTES, opt::MS_CLASSLESS_ROUTES]
            .into_iter()
            .filter(|&c| self.req.requested(c))
            .collect::<Vec<_>>();
        if !want.is_empty() && !s.routes.is_empty() {
            let mut routes = s.routes.clone();
            if let Some(gw) = s.router
                && !routes.iter().any(|(d, _)| d.prefix == 0)
            {
                routes.push((Ipv4Cidr::new(Ipv4Addr::UNSPECIFIED, 0), gw));
            }
            let enc = encode_classless_routes(&routes);
            for c in want {
                p.set(c, enc.clone());
            }
        }
        self.echo(p);
    }

    /// RFC 6842: echo the client identifier; RFC 3046: the relay agent option goes last.
    fn echo(&self, p: &mut Packet) {
        for code in [opt::CLIENT_ID, opt::RELAY_AGENT_INFO] {
            if let Some(v) = self.req.get(code) {
                p.set(code, v.to_vec());
            }
        }
    }

    fn discover(&mut self) -> Option<Reply> {
        self.stats.discover += 1;
        let (now, mac) = (self.now, self.mac);
        let until = now + u64::from(self.limits.offer_hold_secs);
        let host = hostname(self.req);
        let ip = match self.reserved {
            Some(r) => {
                self.table.offer(ip32(r), mac, host, until, now);
                r
            }
            None => {
                if self.table.pool_size() == 0 {
                    self.stats.dropped_pool_exhausted += 1;
                    return None;
                }
                if self.table.held_pool_ip(&mac, now).is_none() && !self.admit_new()? {
                    return None;
                }
                let Some(ip) = self
                    .table
                    .allocate(&mac, self.req.get_ip(opt::REQUESTED_IP), now)
                else {
                    self.stats.dropped_pool_exhausted += 1;
                    return None;
                };
                self.table.offer(ip, mac, host, until, now);
                Ipv4Addr::from(ip)
            }
        };
        let mut p = Packet::reply_to(self.req, MessageType::Offer);
        p.yiaddr = ip;
        self.options(&mut p, true);
        self.stats.offer += 1;
        Some((p, self.dest(ip), false))
    }

    /// Guards for a pool client that holds nothing yet: the low-pool admission rate and the
    /// offer cap. `Some(false)`: dropped.
    fn admit_new(&mut self) -> Option<bool> {
        let size = self.table.pool_size();
        let l = self.limits;
        if self.table.free_count() * 100 < size * u64::from(l.low_pool_percent)
            && !take(
                self.low_pool_buckets,
                self.scope.network.clone(),
                self.mono,
                l.low_pool_admit_rate,
                l.low_pool_admit_rate.max(1.0),
            )
        {
            self.stats.dropped_pool_guard += 1;
            return Some(false);
        }
        let cap = (size * u64::from(l.max_offers_percent) / 100).max(8);
        while self.table.offers_count() as u64 >= cap && self.table.evict_oldest_offer(self.now) {
            self.stats.offers_evicted += 1;
        }
        Some(true)
    }

    /// The address a REQUEST asks for, by client state (RFC 2131 4.3.2); `None` when it is
    /// not for this server or names none.
    fn requested_address(&mut self) -> Option<Ipv4Addr> {
        let r = self.req;
        let ciaddr = (!r.ciaddr.is_unspecified()).then_some(r.ciaddr);
        let ip = if let Some(sid) = r.get_ip(opt::SERVER_ID) {
            self.stats.request_selecting += 1;
            if sid != self.scope.server_ip {
                // The client took another server's offer.
                self.table.drop_offer(&self.mac, self.now);
                self.stats.ignored += 1;
                return None;
            }
            r.get_ip(opt::REQUESTED_IP).or(ciaddr)
        } else if let Some(ip) = r.get_ip(opt::REQUESTED_IP).filter(|_| ciaddr.is_none()) {
            self.stats.request_init_reboot += 1;
            Some(ip)
        } else if let Some(ci) = ciaddr {
            let bcast = self.rx.dst.is_broadcast() || self.rx.dst == self.scope.subnet.broadcast();
            if bcast || self.relayed() {
                self.stats.request_rebinding += 1;
            } else {
                self.stats.request_renewing += 1;
            }
            Some(ci)
        } else {
            None
        };
        if ip.is_none() {
            self.stats.dropped_malformed += 1;
        }
        ip
    }

    fn request(&mut self) -> Option<Reply> {
        self.stats.request += 1;
        let r = self.req;
        let ip = self.requested_address()?;
        let ok = self.scope.subnet.contains(ip)
            && match self.reserved {
                Some(res) => res == ip,
                None => self.table.can_assign(&self.mac, ip32(ip), self.now),
            };
        if !ok {
            let why = if !self.scope.subnet.contains(ip) {
                format!("{ip} is not on this network ({})", self.scope.subnet)
            } else {
                format!("{ip} is not available to this client")
            };
            return Some(self.nak(&why));
        }
        // A pool address this MAC does not hold is a new binding, whether or not a DISCOVER
        // came first: it passes the DISCOVER's admission (offer cap, low-pool rate).
        if self.reserved.is_none()
            && !self.table.is_held_by(ip32(ip), &self.mac, self.now)
            && !self.admit_new()?
        {
            return None;
        }
        let lease = self.scope.lease_secs;
        let expires = if lease == u32::MAX {
            u64::MAX
        } else {
            self.now + u64::from(lease)
        };
        // A client checks an address it has just been given (and may DECLINE it); it does
        // not check one it renews.
        let probe_until = if self.table.is_bound_to(ip32(ip), &self.mac, self.now) {
            0
        } else {
            self.now + u64::from(self.limits.decline_window_secs)
        };
        let b = Binding {
            mac: self.mac,
            hostname: hostname(r),
            client_id: r.get(opt::CLIENT_ID).map(Box::from),
            expires,
            probe_until,
        };
        for rec in self.table.bind(ip32(ip), b, self.now) {
            self.journal.append(&rec);
        }
        *self.needs_sync = true;
        let mut p = Packet::reply_to(r, MessageType::Ack);
        p.ciaddr = r.ciaddr;
        p.yiaddr = ip;
        self.options(&mut p, true);
        self.stats.ack += 1;
        Some((p, self.dest(ip), true))
    }

    fn nak(&mut self, why: &str) -> Reply {
        let mut p = Packet::reply_to(self.req, MessageType::Nak);
        p.set(opt::SERVER_ID, self.scope.server_ip.octets().to_vec());
        p.set(opt::MESSAGE, why.as_bytes().to_vec());
        self.echo(&mut p);
        self.stats.nak += 1;
        // RFC 2131 4.1: a NAK is broadcast, or sent to the relay with the broadcast bit set.
        if self.relayed() {
            p.flags |= FLAG_BROADCAST;
            (p, Dest::Relay(self.req.giaddr), false)
        } else {
            (p, Dest::Broadcast, false)
        }
    }

    fn for_us(&mut self) -> bool {
        match self.req.get_ip(opt::SERVER_ID) {
            Some(sid) if sid != self.scope.server_ip => {
                self.stats.ignored += 1;
                false
            }
            _ => true,
        }
    }

    /// Whether the client identifier of the request matches the one recorded with `e`
    /// (when one was).
    fn same_client_id(&self, e: &Entry) -> bool {
        e.client_id
            .as_deref()
            .is_none_or(|id| self.req.get(opt::CLIENT_ID) == Some(id))
    }

    /// DHCPDECLINE: believed only from the holder of a binding it has just been given (see
    /// "Who may end a lease" in the module docs).
    fn decline(&mut self) {
        self.stats.decline += 1;
        if !self.for_us() {
            return;
        }
        let r = self.req;
        let Some(ip) = r
            .get_ip(opt::REQUESTED_IP)
            .or((!r.ciaddr.is_unspecified()).then_some(r.ciaddr))
        else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let (mac, now) = (self.mac, self.now);
        let Some(e) = self
            .table
            .entry(ip32(ip))
            .filter(|e| e.mac == mac && e.holds_at(now))
        else {
            self.stats.ignored += 1;
            return;
        };
        if !self.same_client_id(e) || e.state != State::Bound || e.probe_until <= now {
            self.stats.dropped_not_holder += 1;
            return;
        }
        let until = now + u64::from(self.limits.decline_hold_secs);
        if let Some(rec) = self.table.decline(ip32(ip), &mac, until, now) {
            log::line(
                Level::Warning,
                &format!(
                    "kvmnet dhcp: {mac} declined {ip} on {} (in use by another host?)",
                    self.scope.network
                ),
            );
            self.journal.append(&rec);
        }
    }

    /// DHCPRELEASE: believed only from the holder, sent from the released address unless
    /// relayed (see "Who may end a lease" in the module docs).
    fn release(&mut self) {
        self.stats.release += 1;
        if !self.for_us() {
            return;
        }
        let (ip, mac, now) = (self.req.ciaddr, self.mac, self.now);
        let Some(e) = self
            .table
            .entry(ip32(ip))
            .filter(|e| e.mac == mac && matches!(e.state, State::Bound | State::Offered))
        else {
            self.stats.ignored += 1;
            return;
        };
        if !self.same_client_id(e) || (!self.relayed() && *self.rx.src.ip() != ip) {
            self.stats.dropped_not_holder += 1;
            return;
        }
        if let Some(rec) = self.table.release(ip32(ip), &mac, now) {
            self.journal.append(&rec);
        }
    }

    /// DHCPINFORM: configuration only; no address, no lease time (RFC 2131 4.3.5). Answered
    /// at `ciaddr` or the packet's source only inside this network.
    fn inform(&mut self) -> Option<Reply> {
        self.stats.inform += 1;
        let r = self.req;
        let src = *self.rx.src.ip();
        let dest = if !r.ciaddr.is_unspecified() {
            self.ciaddr_here().map(|ci| {
                if self.relayed() {
                    Dest::Relay(r.giaddr)
                } else {
                    Dest::Unicast(ci)
                }
            })
        } else if self.relayed() {
            Some(Dest::Relay(r.giaddr))
        } else if src.is_unspecified() {
            Some(Dest::Broadcast)
        } else {
            is_host_of(self.scope, src).then_some(Dest::Unicast(src))
        };
        let Some(dest) = dest else {
            self.stats.dropped_foreign_ciaddr += 1;
            return None;
        };
        let mut p = Packet::reply_to(r, MessageType::Ack);
        p.ciaddr = r.ciaddr;
        self.options(&mut p, false);
        self.stats.ack += 1;
        Some((p, dest, false))
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
