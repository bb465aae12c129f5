//! The protocol: one received packet in, at most one reply out (RFC 2131 section 4.3), with
//! rate limits and pool guards in front. No sockets here; time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use super::net::{Dest, Outgoing, Rx};
use super::packet::{
    BOOTREQUEST, FLAG_BROADCAST, MessageType, Packet, encode_classless_routes, opt,
};
use super::store::{Journal, Table};
use super::{DhcpError, Lease, Limits, Scope, ServerStats};
use crate::spec::{Ipv4Cidr, Mac};

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token bucket per key; a rate that is not finite means no limit.
fn take<K: Hash + Eq>(
    map: &mut HashMap<K, Bucket>,
    key: K,
    now: Instant,
    rate: f64,
    burst: f64,
) -> bool {
    !rate.is_finite()
        || map
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now))
            .take(now, rate, burst)
}

/// Forget buckets that have refilled: they would start full anyway.
fn prune<K>(map: &mut HashMap<K, Bucket>, now: Instant, rate: f64, burst: f64) {
    map.retain(|_, b| {
        b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
    });
}

pub(crate) struct Engine {
    scopes: Vec<Scope>,
    by_iface: HashMap<String, usize>,
    /// Per scope: reserved MAC -> address.
    reserved: Vec<HashMap<Mac, Ipv4Addr>>,
    tables: HashMap<String, Table>,
    pub limits: Limits,
    pub stats: ServerStats,
    journal: Journal,
    needs_sync: bool,
    mac_buckets: HashMap<Mac, Bucket>,
    iface_buckets: HashMap<String, Bucket>,
    relay_buckets: HashMap<Ipv4Addr, Bucket>,
    low_pool_buckets: HashMap<String, Bucket>,
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
        let (journal, records) = Journal::open(state_dir)?;
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
            journal,
            needs_sync: false,
            mac_buckets: HashMap::new(),
            iface_buckets: HashMap::new(),
            relay_buckets: HashMap::new(),
            low_pool_buckets: HashMap::new(),
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
                eprintln!("kvmnet dhcp: {e}");
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
        let l = &self.limits;
        prune(&mut self.mac_buckets, mono, l.per_mac_rate, l.per_mac_burst);
        prune(
            &mut self.iface_buckets,
            mono,
            l.per_interface_rate,
            l.per_interface_burst,
        );
        prune(
            &mut self.relay_buckets,
            mono,
            l.per_interface_rate,
            l.per_interface_burst,
        );
        let live: usize = self.tables.values().map(|t| t.entry_count()).sum();
        if self.journal.wants_compaction(live) {
            let mut recs = Vec::with_capacity(live);
            for t in self.tables.values() {
                t.journal_records(now, &mut recs);
            }
            match self.journal.compact(&recs) {
                Ok(()) => self.stats.journal_compactions += 1,
                Err(e) => {
                    eprintln!("kvmnet dhcp: compacting: {e}");
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
        let relayed = !req.giaddr.is_unspecified();
        let here = self.by_iface.get(iface).copied();
        let si = if relayed {
            self.stats.relayed += 1;
            // The relay's address names the client's subnet. Every scope is a local bridge,
            // so a real relay for it sits on that bridge: one that names another network
            // is a guest forging giaddr to reach another pool.
            self.scopes
                .iter()
                .position(|s| s.subnet.contains(req.giaddr))
                .filter(|&si| Some(si) == here)
        } else {
            here
        };
        let Some(si) = si else {
            self.stats.dropped_no_scope += 1;
            return None;
        };
        let reserved = self.reserved[si].get(&mac).copied();
        let l = &self.limits;
        if reserved.is_none() {
            let ok = if relayed {
                take(
                    &mut self.relay_buckets,
                    req.giaddr,
                    mono,
                    l.per_interface_rate,
                    l.per_interface_burst,
                )
            } else if !l.per_interface_rate.is_finite() {
                true
            } else {
                // Looked up by &str: no allocation per packet.
                let (rate, burst) = (l.per_interface_rate, l.per_interface_burst);
                match self.iface_buckets.get_mut(iface) {
                    Some(b) => b.take(mono, rate, burst),
                    None => {
                        let mut b = Bucket::full(burst, mono);
                        let ok = b.take(mono, rate, burst);
                        self.iface_buckets.insert(iface.to_string(), b);
                        ok
                    }
                }
            };
            if !ok {
                self.stats.dropped_rate_interface += 1;
                return None;
            }
        }
        if !take(
            &mut self.mac_buckets,
            mac,
            mono,
            l.per_mac_rate,
            l.per_mac_burst,
        ) {
            self.stats.dropped_rate_mac += 1;
            return None;
        }
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
            low_pool_buckets: &mut self.low_pool_buckets,
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
            MessageType::Inform => cx.inform(),
            _ => {
                cx.stats.dropped_malformed += 1;
                return None;
            }
        };
        let bytes = fit(reply, &req);
        Some(Outgoing {
            socket,
            dest,
            bytes,
            needs_sync,
        })
    }
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
    journal: &'a mut Journal,
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

    /// RFC 2131 4.1: where an OFFER or ACK goes.
    fn dest(&self, yiaddr: Ipv4Addr) -> Dest {
        let r = self.req;
        if self.relayed() {
            Dest::Relay(r.giaddr)
        } else if !r.ciaddr.is_unspecified() {
            Dest::Unicast(r.ciaddr)
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
        if let Some(m) = s.mtu {
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

    fn request(&mut self) -> Option<Reply> {
        self.stats.request += 1;
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
        let Some(ip) = ip else {
            self.stats.dropped_malformed += 1;
            return None;
        };
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
        let lease = self.scope.lease_secs;
        let expires = if lease == u32::MAX {
            u64::MAX
        } else {
            self.now + u64::from(lease)
        };
        for rec in self
            .table
            .bind(ip32(ip), self.mac, hostname(r), expires, self.now)
        {
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
        let until = self.now + u64::from(self.limits.decline_hold_secs);
        match self.table.decline(ip32(ip), &self.mac, until, self.now) {
            Some(rec) => {
                eprintln!(
                    "kvmnet dhcp: {} declined {ip} on {} (in use by another host?)",
                    self.mac, self.scope.network
                );
                self.journal.append(&rec);
            }
            None => self.stats.ignored += 1,
        }
    }

    fn release(&mut self) {
        self.stats.release += 1;
        if !self.for_us() {
            return;
        }
        match self
            .table
            .release(ip32(self.req.ciaddr), &self.mac, self.now)
        {
            Some(rec) => self.journal.append(&rec),
            None => self.stats.ignored += 1,
        }
    }

    /// DHCPINFORM: configuration only; no address, no lease time (RFC 2131 4.3.5).
    fn inform(&mut self) -> Reply {
        self.stats.inform += 1;
        let r = self.req;
        let mut p = Packet::reply_to(r, MessageType::Ack);
        p.ciaddr = r.ciaddr;
        self.options(&mut p, false);
        self.stats.ack += 1;
        let dest = if self.relayed() {
            Dest::Relay(r.giaddr)
        } else if !r.ciaddr.is_unspecified() {
            Dest::Unicast(r.ciaddr)
        } else if !self.rx.src.ip().is_unspecified() {
            Dest::Unicast(*self.rx.src.ip())
        } else {
            Dest::Broadcast
        };
        (p, dest, false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Reservation;
    use super::*;
    use std::net::SocketAddrV4;

    struct T {
        e: Engine,
        dir: std::path::PathBuf,
        now: u64,
    }

    impl Drop for T {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn scope() -> Scope {
        Scope {
            network: "n".into(),
            interface: "br0".into(),
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            subnet: "10.0.0.0/24".parse().unwrap(),
            router: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
            domain: Some("example.test".into()),
            mtu: Some(1400),
            lease_secs: 100,
            routes: vec![(
                "198.51.100.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 0, 0, 254),
            )],
            pool: Some((Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(10, 0, 0, 101))),
            reservations: vec![Reservation {
                mac: Mac([2, 0, 0, 0, 0, 9]),
                ip: Ipv4Addr::new(10, 0, 0, 9),
                port: "p9".into(),
            }],
        }
    }

    fn engine(tag: &str) -> T {
        let dir =
            std::env::temp_dir().join(format!("kvmnet-dhcp-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut e = Engine::open(&dir, 1000).unwrap();
        e.set_scopes(vec![scope()], 1000);
        T { e, dir, now: 1000 }
    }

    impl T {
        fn send(&mut self, p: &Packet) -> Option<(Packet, Dest)> {
            let rx = Rx {
                socket: 0,
                src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
                dst: Ipv4Addr::BROADCAST,
                data: p.encode(),
            };
            let o = self.e.handle("br0", 0, &rx, self.now, Instant::now());
            assert!(self.e.commit());
            o.map(|o| (Packet::parse(&o.bytes).unwrap(), o.dest))
        }
    }

    fn mac(m: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, m])
    }

    fn req(m: u8, kind: MessageType) -> Packet {
        let mut p = Packet::request(mac(m), u32::from(m), kind);
        p.set(opt::PARAM_LIST, vec![1, 3, 6, 15, 26, 121]);
        p
    }

    #[test]
    fn dora_options_and_states() {
        let mut t = engine("dora");
        let (offer, dest) = t.send(&req(1, MessageType::Discover)).unwrap();
        assert_eq!(offer.message_type(), Some(MessageType::Offer));
        let ip = offer.yiaddr;
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 100));
        assert!(matches!(dest, Dest::Hardware { .. }));
        assert_eq!(offer.get_u32(opt::LEASE_TIME), Some(100));
        assert_eq!(offer.get_u32(opt::RENEWAL_T1), Some(50));
        assert_eq!(offer.get_u32(opt::REBINDING_T2), Some(87));
        assert_eq!(
            offer.get_ip(opt::SUBNET_MASK),
            Some(Ipv4Addr::new(255, 255, 255, 0))
        );
        assert_eq!(offer.get_u16(opt::MTU), Some(1400));
        let routes = super::super::packet::decode_classless_routes(
            offer.get(opt::CLASSLESS_ROUTES).unwrap(),
        )
        .unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[1].0.prefix, 0, "default route included");
        let mut r = req(1, MessageType::Request);
        r.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        r.set(opt::REQUESTED_IP, ip.octets().to_vec());
        let (ack, _) = t.send(&r).unwrap();
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(t.e.leases(t.now)[0].state, "bound");
        // Another client asking for that address in INIT-REBOOT is refused.
        let mut r2 = req(2, MessageType::Request);
        r2.set(opt::REQUESTED_IP, ip.octets().to_vec());
        let (nak, dest) = t.send(&r2).unwrap();
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        assert_eq!(dest, Dest::Broadcast);
        // The pool has one address left; a third client finds none after the second.
        let (o2, _) = t.send(&req(2, MessageType::Discover)).unwrap();
        assert_eq!(o2.yiaddr, Ipv4Addr::new(10, 0, 0, 101));
        assert!(t.send(&req(3, MessageType::Discover)).is_none());
        assert_eq!(t.e.stats.dropped_pool_exhausted, 1);
        // The reserved client always gets its address, even asking for another.
        let mut d9 = req(9, MessageType::Discover);
        d9.set(opt::REQUESTED_IP, vec![10, 0, 0, 100]);
        let (o9, _) = t.send(&d9).unwrap();
        assert_eq!(o9.yiaddr, Ipv4Addr::new(10, 0, 0, 9));
        // Renewal: unicast to ciaddr.
        let mut renew = req(1, MessageType::Request);
        renew.ciaddr = ip;
        t.now += 60;
        let (ack, dest) = t.send(&renew).unwrap();
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert_eq!(dest, Dest::Unicast(ip));
        assert_eq!(t.e.leases(t.now)[0].expires_unix, t.now + 100);
        // Release frees it.
        let mut rel = req(1, MessageType::Release);
        rel.ciaddr = ip;
        rel.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        assert!(t.send(&rel).is_none());
        assert!(
            t.e.leases(t.now)
                .iter()
                .any(|l| l.ip == ip && l.state == "released")
        );
        // Restart on the same journal: the release survives, the offer to 2 does not.
        let (dir, now) = (t.dir.clone(), t.now);
        let T { e, .. } = &mut t;
        let placeholder =
            std::env::temp_dir().join(format!("kvmnet-dhcp-unit-ph-{}", std::process::id()));
        let old = std::mem::replace(e, Engine::open(&placeholder, now).unwrap());
        drop(old); // releases the lock on `dir`
        let _ = std::fs::remove_dir_all(&placeholder);
        let mut e = Engine::open(&dir, now).unwrap();
        e.set_scopes(vec![scope()], now);
        let ls = e.leases(now);
        assert!(
            ls.iter().any(|l| l.ip == ip && l.state == "released"),
            "{ls:?}"
        );
        assert!(!ls.iter().any(|l| l.state == "offered"));
    }

    #[test]
    fn relayed_only_from_its_own_bridge() {
        let mut t = engine("relay");
        let mut other = scope();
        other.network = "other".into();
        other.interface = "br1".into();
        other.server_ip = Ipv4Addr::new(10, 1, 0, 1);
        other.router = Some(other.server_ip);
        other.subnet = "10.1.0.0/24".parse().unwrap();
        other.pool = Some((Ipv4Addr::new(10, 1, 0, 100), Ipv4Addr::new(10, 1, 0, 110)));
        other.reservations.clear();
        t.e.set_scopes(vec![scope(), other], t.now);
        let mut d = req(1, MessageType::Discover);
        d.giaddr = Ipv4Addr::new(10, 0, 0, 7);
        d.set(opt::RELAY_AGENT_INFO, vec![1, 1, 7]);
        let (offer, dest) = t.send(&d).unwrap();
        assert_eq!(dest, Dest::Relay(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(offer.giaddr, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(offer.options.last().unwrap().0, opt::RELAY_AGENT_INFO);
        // A guest on br0 claiming to relay for br1's subnet gets nothing from br1's pool.
        d.giaddr = Ipv4Addr::new(10, 1, 0, 7);
        assert!(t.send(&d).is_none());
        assert_eq!(t.e.stats.dropped_no_scope, 1);
        // A NAK to a relay carries the broadcast bit.
        let mut r = req(2, MessageType::Request);
        r.giaddr = Ipv4Addr::new(10, 0, 0, 7);
        r.set(opt::REQUESTED_IP, vec![192, 0, 2, 1]);
        let (nak, dest) = t.send(&r).unwrap();
        assert_eq!(nak.message_type(), Some(MessageType::Nak));
        assert!(nak.broadcast_flag());
        assert_eq!(dest, Dest::Relay(Ipv4Addr::new(10, 0, 0, 7)));
    }

    #[test]
    fn inform_and_rate_limit() {
        let mut t = engine("inform");
        let mut inf = req(5, MessageType::Inform);
        inf.ciaddr = Ipv4Addr::new(10, 0, 0, 50);
        let (ack, dest) = t.send(&inf).unwrap();
        assert_eq!(ack.message_type(), Some(MessageType::Ack));
        assert!(ack.yiaddr.is_unspecified());
        assert!(ack.get(opt::LEASE_TIME).is_none());
        assert_eq!(ack.get_ips(opt::DNS), vec![Ipv4Addr::new(10, 0, 0, 53)]);
        assert_eq!(dest, Dest::Unicast(Ipv4Addr::new(10, 0, 0, 50)));
        assert!(t.e.leases(t.now).is_empty());
        // One MAC hammering: the bucket (16) runs dry.
        let mut answered = 0;
        for _ in 0..40 {
            if t.send(&inf).is_some() {
                answered += 1;
            }
        }
        assert!(answered < 20, "{answered}");
        assert!(t.e.stats.dropped_rate_mac > 0);
    }
}
