//! The DNS service without sockets: a query in, what to send out (an answer, a question
//! to an upstream server). Zones answer their names; everything else comes from the cache
//! or is forwarded, with identical questions joined into one upstream query. Time is
//! passed in.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};

use super::cache::{Cache, Key};
use super::zone::{LeaseAt, ZoneData};
use super::{Client, Leased, Limits, NetworkCounters, Out, Stats, Via, Zone};
use crate::dhcp::limit::{Bucket, take};

/// The UDP payload size kvmnet offers and asks for (the DNS flag day 2020 value: no IP
/// fragmentation on any usual path).
pub const EDNS_SIZE: u16 = 1232;

struct ZoneState {
    zone: Zone,
    data: ZoneData,
    counters: NetworkCounters,
}

/// A client waiting for a forwarded answer.
struct Waiter {
    client: Client,
    id: u16,
    query: Query,
    /// The client's EDNS payload size, if it sent OPT.
    edns: Option<u16>,
    rd: bool,
}

struct Pending {
    key: Key,
    query: Query,
    servers: Vec<SocketAddr>,
    attempt: usize,
    tcp: bool,
    id: u16,
    deadline: Instant,
    waiters: Vec<Waiter>,
}

pub(crate) struct Engine {
    zones: Vec<ZoneState>,
    /// The bound leases last handed over, kept for zones set later.
    leases: Vec<LeaseAt>,
    serial: u32,
    /// The host's resolvers, for zones without `forwarders`.
    host_resolvers: Vec<IpAddr>,
    cache: Cache,
    /// Per client address and the rate it was given (so an idle one can be forgotten).
    buckets: HashMap<(IpAddr, u32), Bucket>,
    pending: HashMap<u64, Pending>,
    by_key: HashMap<Key, u64>,
    per_client: HashMap<IpAddr, usize>,
    next_token: u64,
    pub limits: Limits,
    pub stats: Stats,
    random: Box<dyn FnMut() -> u16 + Send>,
}

fn upstream_id(servers: &[SocketAddr]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    servers.hash(&mut h);
    h.finish()
}

impl Engine {
    pub fn new(limits: Limits, random: Box<dyn FnMut() -> u16 + Send>) -> Engine {
        Engine {
            zones: Vec::new(),
            leases: Vec::new(),
            serial: 0,
            host_resolvers: Vec::new(),
            cache: Cache::new(
                limits.cache_entries,
                limits.max_ttl,
                limits.max_negative_ttl,
            ),
            buckets: HashMap::new(),
            pending: HashMap::new(),
            by_key: HashMap::new(),
            per_client: HashMap::new(),
            next_token: 1,
            limits,
            stats: Stats::default(),
            random,
        }
    }

    /// Replaces the zones (counters of networks that stay are kept).
    pub fn set_zones(&mut self, zones: Vec<Zone>, serial: u32) {
        self.serial = serial;
        let mut old: HashMap<String, NetworkCounters> = self
            .zones
            .drain(..)
            .map(|z| (z.zone.network, z.counters))
            .collect();
        self.zones = zones
            .into_iter()
            .map(|z| ZoneState {
                data: ZoneData::new(&z, serial, &self.leases),
                counters: old.remove(&z.network).unwrap_or_default(),
                zone: z,
            })
            .collect();
    }

    /// The DHCP servers' bound leases as they are at `now_unix` (wall clock) = `now`;
    /// the zones' leased names follow. False when nothing changed.
    pub fn set_leases(&mut self, leases: &[Leased], now_unix: u64, now: Instant) -> bool {
        let at: Vec<LeaseAt> = leases
            .iter()
            .map(|l| LeaseAt {
                network: l.network.clone(),
                mac: l.mac,
                ip: l.ip,
                until: (l.expires_unix != u64::MAX).then(|| {
                    let left = l.expires_unix.saturating_sub(now_unix);
                    now + std::time::Duration::from_secs(left)
                }),
            })
            .collect();
        // The same leases a second later differ only in their `until` by the clocks'
        // drift: not worth rebuilding the zones for.
        let same = at.len() == self.leases.len()
            && at.iter().zip(&self.leases).all(|(a, b)| {
                (&a.network, a.mac, a.ip) == (&b.network, b.mac, b.ip)
                    && match (a.until, b.until) {
                        (Some(x), Some(y)) => {
                            x.max(y) - x.min(y) < std::time::Duration::from_secs(2)
                        }
                        (x, y) => x == y,
                    }
            });
        if same {
            return false;
        }
        self.leases = at;
        for z in &mut self.zones {
            z.data = ZoneData::new(&z.zone, self.serial, &self.leases);
        }
        true
    }

    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.zones.iter().map(|z| &z.zone)
    }

    pub fn set_host_resolvers(&mut self, r: Vec<IpAddr>) {
        self.host_resolvers = r;
    }

    pub fn network_counters(&self) -> Vec<(String, NetworkCounters)> {
        self.zones
            .iter()
            .map(|z| (z.zone.network.clone(), z.counters.clone()))
            .collect()
    }

    pub fn cache_entries(&self) -> usize {
        self.cache.len()
    }

    /// The servers zone `i` forwards to: its own, or the host's (never its own gateway).
    fn servers(&self, i: usize) -> Vec<SocketAddr> {
        let z = &self.zones[i].zone;
        let list = z.forwarders.as_ref().unwrap_or(&self.host_resolvers);
        list.iter()
            .filter(|a| !self.zones.iter().any(|z| z.zone.listen.contains(a)))
            .map(|a| SocketAddr::new(*a, 53))
            .collect()
    }

    /// A query from `client` on zone `client.zone`'s listener.
    pub fn query(&mut self, client: Client, bytes: &[u8], now: Instant) -> Vec<Out> {
        let Some(zs) = self.zones.get_mut(client.zone) else {
            return Vec::new();
        };
        zs.counters.queries += 1;
        let r = zs.zone.rate_limit;
        let rate = f64::from(r);
        if !take(&mut self.buckets, (client.addr.ip(), r), now, rate, rate) {
            zs.counters.dropped_rate += 1;
            return Vec::new();
        }
        let m = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.stats.malformed += 1;
                return formerr(client, bytes);
            }
        };
        if m.metadata.message_type != MessageType::Query {
            self.stats.malformed += 1;
            return Vec::new();
        }
        let edns = m.edns.as_ref().map(|e| e.max_payload().max(512));
        let w = |query: Query| Waiter {
            client,
            id: m.metadata.id,
            query,
            edns,
            rd: m.metadata.recursion_desired,
        };
        let refuse = |code| {
            let q = m.queries.first().cloned().unwrap_or_default();
            reply(
                &w(q),
                code,
                Vec::new(),
                Vec::new(),
                false,
                &mut Stats::default(),
            )
        };
        if m.metadata.op_code != OpCode::Query {
            return vec![refuse(ResponseCode::NotImp)];
        }
        if m.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return vec![refuse(ResponseCode::BADVERS)];
        }
        let [q] = m.queries.as_slice() else {
            return vec![refuse(ResponseCode::FormErr)];
        };
        if q.query_class() != DNSClass::IN
            || matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
        {
            return vec![refuse(ResponseCode::Refused)];
        }
        let waiter = w(q.clone());
        let zs = &mut self.zones[client.zone];
        if let Some(a) = zs.data.answer(q.name(), q.query_type(), now) {
            zs.counters.local += 1;
            return vec![reply(
                &waiter,
                a.rcode,
                a.answers,
                a.authority,
                true,
                &mut self.stats,
            )];
        }
        self.forward(waiter, now)
    }

    /// A name that is not the zone's: from the cache, or asked upstream.
    fn forward(&mut self, w: Waiter, now: Instant) -> Vec<Out> {
        let servers = self.servers(w.client.zone);
        let counters = &mut self.zones[w.client.zone].counters;
        if servers.is_empty() {
            counters.failed += 1;
            return vec![reply(
                &w,
                ResponseCode::Refused,
                vec![],
                vec![],
                false,
                &mut self.stats,
            )];
        }
        let key = Key {
            name: w.query.name().to_lowercase(),
            qtype: w.query.query_type(),
            qclass: w.query.query_class(),
            upstream: upstream_id(&servers),
        };
        if let Some(hit) = self.cache.get(&key, now) {
            counters.cache_hits += 1;
            let out = reply(
                &w,
                hit.rcode,
                hit.answers,
                hit.authorities,
                false,
                &mut self.stats,
            );
            return vec![out];
        }
        let ip = w.client.addr.ip();
        let held = self.per_client.get(&ip).copied().unwrap_or(0);
        if held >= self.limits.pending_per_client || self.pending.len() >= self.limits.max_pending {
            counters.dropped_pending += 1;
            return Vec::new();
        }
        counters.forwarded += 1;
        *self.per_client.entry(ip).or_default() += 1;
        if let Some(t) = self.by_key.get(&key)
            && let Some(p) = self.pending.get_mut(t)
        {
            p.waiters.push(w);
            return Vec::new();
        }
        let token = self.next_token;
        self.next_token += 1;
        let mut p = Pending {
            key: key.clone(),
            query: w.query.clone(),
            servers,
            attempt: 0,
            tcp: false,
            id: 0,
            deadline: now,
            waiters: vec![w],
        };
        let out = self.ask(token, &mut p, now);
        self.by_key.insert(key, token);
        self.pending.insert(token, p);
        vec![out]
    }

    /// The question of `p` to its current server, with a fresh ID.
    fn ask(&mut self, token: u64, p: &mut Pending, now: Instant) -> Out {
        p.id = (self.random)();
        let mut m = Message::new(p.id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(p.query.clone());
        let mut e = Edns::new();
        e.set_max_payload(EDNS_SIZE);
        m.set_edns(e);
        let wait = if p.tcp {
            self.limits.upstream_tcp_timeout
        } else {
            self.limits.upstream_timeout
        };
        p.deadline = now + wait;
        self.stats.upstream_queries += 1;
        self.stats.upstream_tcp += u64::from(p.tcp);
        Out::Ask {
            token,
            server: p.servers[p.attempt % p.servers.len()],
            bytes: m.to_vec().unwrap_or_default(),
            tcp: p.tcp,
        }
    }

    /// The next attempt of `token` (another server, or the same one again), or SERVFAIL
    /// for its waiters when the attempts are used up.
    fn retry(&mut self, token: u64, now: Instant) -> Vec<Out> {
        let Some(mut p) = self.pending.remove(&token) else {
            return Vec::new();
        };
        p.attempt += 1;
        p.tcp = false;
        let attempts = p.servers.len().clamp(2, 4);
        if p.attempt < attempts {
            let out = self.ask(token, &mut p, now);
            self.pending.insert(token, p);
            return vec![out];
        }
        self.finish(token, p, ResponseCode::ServFail, Vec::new(), Vec::new())
    }

    /// Answers every waiter of `p` and forgets it.
    fn finish(
        &mut self,
        token: u64,
        p: Pending,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
    ) -> Vec<Out> {
        self.by_key.remove(&p.key);
        let mut out = vec![Out::Done { token }];
        for w in &p.waiters {
            let ip = w.client.addr.ip();
            if let Some(n) = self.per_client.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_client.remove(&ip);
                }
            }
            if let Some(z) = self.zones.get_mut(w.client.zone)
                && rcode == ResponseCode::ServFail
            {
                z.counters.failed += 1;
            }
            let (a, au) = (answers.clone(), authorities.clone());
            out.push(reply(w, rcode, a, au, false, &mut self.stats));
        }
        out
    }

    /// An upstream server's answer to attempt `token` (from the server it was sent to:
    /// the socket is connected to it).
    pub fn upstream(&mut self, token: u64, bytes: &[u8], now: Instant) -> Vec<Out> {
        let Some(p) = self.pending.get_mut(&token) else {
            return Vec::new();
        };
        let Ok(m) = Message::from_vec(bytes) else {
            self.stats.upstream_bad += 1;
            return Vec::new();
        };
        let q = m.queries.first();
        let matches = m.metadata.message_type == MessageType::Response
            && m.metadata.id == p.id
            && m.queries.len() == 1
            && q.is_some_and(|q| {
                q.name() == p.query.name()
                    && q.query_type() == p.query.query_type()
                    && q.query_class() == p.query.query_class()
            });
        if !matches {
            // Not the answer to this question (a forgery or a stray): keep waiting.
            self.stats.upstream_bad += 1;
            return Vec::new();
        }
        if m.metadata.truncation && !p.tcp {
            p.tcp = true;
            let mut p = self.pending.remove(&token).expect("pending");
            let out = self.ask(token, &mut p, now);
            self.pending.insert(token, p);
            return vec![out];
        }
        let rcode = m.metadata.response_code;
        if matches!(
            rcode,
            ResponseCode::ServFail
                | ResponseCode::Refused
                | ResponseCode::NotImp
                | ResponseCode::FormErr
        ) {
            return self.retry(token, now);
        }
        let p = self.pending.remove(&token).expect("pending");
        self.cache.put(p.key.clone(), &m, now);
        self.finish(token, p, rcode, m.answers, m.authorities)
    }

    /// The socket of attempt `token` failed (refused, unreachable, connection closed).
    pub fn upstream_failed(&mut self, token: u64, now: Instant) -> Vec<Out> {
        self.retry(token, now)
    }

    /// Once in a while: attempts past their deadline are retried, idle buckets and
    /// expired answers forgotten.
    pub fn tick(&mut self, now: Instant) -> Vec<Out> {
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        let mut out = Vec::new();
        for t in late {
            self.stats.upstream_timeouts += 1;
            out.extend(self.retry(t, now));
        }
        self.buckets.retain(|(_, r), b| {
            let r = f64::from(*r);
            !b.is_full(now, r, r)
        });
        self.cache.prune(now);
        out
    }

    /// When the next attempt times out, if any waits.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }
}

/// FORMERR for a message too broken to read, when at least its ID is there.
fn formerr(client: Client, bytes: &[u8]) -> Vec<Out> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Vec::new();
    }
    let mut m = Message::new(
        u16::from_be_bytes([bytes[0], bytes[1]]),
        MessageType::Response,
        OpCode::Query,
    );
    m.metadata.response_code = ResponseCode::FormErr;
    m.to_vec()
        .map(|bytes| vec![Out::Reply { client, bytes }])
        .unwrap_or_default()
}

/// The answer to `w`, cut to what the client can take over UDP (its EDNS size, else 512
/// bytes): too big, it goes with no records and TC set, and the client asks over TCP.
fn reply(
    w: &Waiter,
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    authoritative: bool,
    stats: &mut Stats,
) -> Out {
    let mut m = Message::new(w.id, MessageType::Response, OpCode::Query);
    m.metadata.response_code = rcode;
    m.metadata.authoritative = authoritative;
    m.metadata.recursion_desired = w.rd;
    m.metadata.recursion_available = true;
    m.add_query(w.query.clone());
    m.answers = answers;
    m.authorities = authorities;
    if w.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_SIZE);
        m.set_edns(e);
    }
    let mut bytes = m.to_vec().unwrap_or_default();
    let limit = match w.client.via {
        Via::Tcp(_) => usize::from(u16::MAX),
        Via::Udp(_) => usize::from(w.edns.unwrap_or(512).min(EDNS_SIZE.max(512))),
    };
    if bytes.len() > limit {
        stats.truncated += 1;
        bytes = m.truncate().to_vec().unwrap_or_default();
    }
    Out::Reply {
        client: w.client,
        bytes,
    }
}
