//! Leases: the in-memory table of one network. The journal that makes it survive a crash is
//! in `journal`; the table produces the records it writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use super::{Lease, Scope};
use crate::spec::Mac;

/// How long released and expired records are kept (in the journal, and shown as released),
/// so a client that comes back gets its old address again, also after a restart.
pub(crate) const KEEP_FREED_SECS: u64 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Offered,
    Bound,
    Declined,
    Released,
    /// Was offered, bound or declined and ran out; free, kept as a hint for its last owner.
    Expired,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Offered => "offered",
            State::Bound => "bound",
            State::Declined => "declined",
            State::Released => "released",
            State::Expired => "expired",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<State> {
        Some(match s {
            "offered" => State::Offered,
            "bound" => State::Bound,
            "declined" => State::Declined,
            "released" => State::Released,
            "expired" => State::Expired,
            _ => return None,
        })
    }
    /// Whether the state keeps the address from others until `expires`.
    pub(crate) fn holds(self) -> bool {
        matches!(self, State::Offered | State::Bound | State::Declined)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub mac: Mac,
    pub state: State,
    /// Unix seconds; `u64::MAX` for an infinite lease.
    pub expires: u64,
    pub hostname: Option<String>,
    /// The client identifier (option 61) of the request that bound it, if there was one: a
    /// RELEASE or DECLINE must carry the same.
    pub client_id: Option<Box<[u8]>>,
    /// Until when (Unix seconds) the client may still be checking a binding it has just been
    /// given (RFC 5227 probes, RFC 2131 4.4.1): the only time a DECLINE of it is believed.
    /// Kept in memory only: after a restart no old binding is declined, and the client's
    /// next new binding opens the window again.
    pub probe_until: u64,
    /// Order of pool offers, for evicting the oldest.
    offer_seq: u64,
}

/// A binding to record.
pub(crate) struct Binding {
    pub mac: Mac,
    pub hostname: Option<String>,
    pub client_id: Option<Box<[u8]>>,
    pub expires: u64,
    /// See [`Entry::probe_until`]; 0 when the client is not about to check the address.
    pub probe_until: u64,
}

/// A client identifier as operators (and the journal) see it: hex bytes with colons.
pub(crate) fn client_id_text(id: &[u8]) -> String {
    let mut s = String::with_capacity(id.len() * 3);
    for (i, b) in id.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(crate) fn parse_client_id(s: &str) -> Option<Box<[u8]>> {
    s.split(':')
        .map(|h| u8::from_str_radix(h, 16).ok().filter(|_| h.len() == 2))
        .collect::<Option<Vec<u8>>>()
        .map(Vec::into_boxed_slice)
}

impl Entry {
    pub fn holds_at(&self, now: u64) -> bool {
        self.state.holds() && self.expires > now
    }
}

/// The leases of one network plus indexes derived from its scope. Addresses are `u32`.
///
/// Invariants (for "pool addresses": inside the range, not reserved, not the network,
/// broadcast or server address): every pool address below `cursor` has an entry;
/// `fresh` counts pool addresses without an entry; `reusable` holds the pool addresses whose
/// entry is free (released or expired), oldest first; `expiry` holds every entry in a holding
/// state; `offers` the pool entries in state offered.
pub(crate) struct Table {
    pub network: String,
    entries: HashMap<u32, Entry>,
    /// The addresses whose entry names each MAC (usually one; a second while a client moves,
    /// declined or expired ones it left behind).
    by_mac: HashMap<Mac, Vec<u32>>,
    pool: Option<(u32, u32)>,
    reserved_ip: HashMap<u32, Mac>,
    excluded: [u32; 3],
    cursor: u64,
    fresh: u64,
    reusable: BTreeSet<(u64, u32)>,
    expiry: BTreeSet<(u64, u32)>,
    offers: BTreeMap<u64, u32>,
    next_seq: u64,
}

impl Table {
    pub fn new(network: &str) -> Table {
        Table {
            network: network.to_string(),
            entries: HashMap::new(),
            by_mac: HashMap::new(),
            pool: None,
            reserved_ip: HashMap::new(),
            excluded: [0; 3],
            cursor: 0,
            fresh: 0,
            reusable: BTreeSet::new(),
            expiry: BTreeSet::new(),
            offers: BTreeMap::new(),
            next_seq: 0,
        }
    }

    /// Load a journal record (before [`Table::configure`]): the last record per address wins.
    pub fn load(&mut self, l: &Lease, now: u64) {
        let Ok(mac) = l.mac.parse::<Mac>() else {
            return;
        };
        let Some(mut state) = State::parse(&l.state) else {
            return;
        };
        if state.holds() && l.expires_unix <= now {
            state = State::Expired;
        }
        let ip = u32::from(l.ip);
        if let Some(old) = self.entries.get(&ip) {
            let old_mac = old.mac;
            self.forget_owner(old_mac, ip);
        }
        self.add_owner(mac, ip);
        self.entries.insert(
            ip,
            Entry {
                mac,
                state,
                expires: l.expires_unix,
                hostname: l.hostname.clone(),
                client_id: l.client_id.as_deref().and_then(parse_client_id),
                probe_until: 0,
                offer_seq: 0,
            },
        );
    }

    /// (Re)build the indexes for a scope (or none: the network is gone but its leases stay).
    pub fn configure(&mut self, scope: Option<&Scope>) {
        self.pool = scope.and_then(|s| s.pool).and_then(|(a, b)| {
            let (a, b) = (u32::from(a), u32::from(b));
            (a <= b).then_some((a, b))
        });
        self.reserved_ip = scope
            .map(|s| {
                s.reservations
                    .iter()
                    .map(|r| (u32::from(r.ip), r.mac))
                    .collect()
            })
            .unwrap_or_default();
        self.excluded = match scope {
            Some(s) => [
                u32::from(s.subnet.network().addr),
                u32::from(s.subnet.broadcast()),
                u32::from(s.server_ip),
            ],
            None => [0; 3],
        };
        self.reusable.clear();
        self.expiry.clear();
        self.offers.clear();
        self.fresh = 0;
        if let Some((a, b)) = self.pool {
            self.cursor = u64::from(a);
            let mut taken: BTreeSet<u32> = self
                .reserved_ip
                .keys()
                .copied()
                .filter(|ip| (a..=b).contains(ip))
                .collect();
            taken.extend(self.excluded.iter().filter(|ip| (a..=b).contains(*ip)));
            taken.extend(self.entries.keys().filter(|ip| (a..=b).contains(*ip)));
            self.fresh = u64::from(b - a) + 1 - taken.len() as u64;
        }
        let ips: Vec<u32> = self.entries.keys().copied().collect();
        for ip in ips {
            let e = self.entries.get_mut(&ip).expect("listed");
            if e.state == State::Offered {
                self.next_seq += 1;
                e.offer_seq = self.next_seq;
            }
            let e = e.clone();
            self.index(ip, &e);
        }
    }

    pub fn is_pool_ip(&self, ip: u32) -> bool {
        self.pool.is_some_and(|(a, b)| a <= ip && ip <= b)
            && !self.reserved_ip.contains_key(&ip)
            && !self.excluded.contains(&ip)
    }

    pub fn pool_size(&self) -> u64 {
        self.pool.map_or(0, |(a, b)| u64::from(b - a) + 1)
    }

    pub fn free_count(&self) -> u64 {
        self.fresh + self.reusable.len() as u64
    }

    pub fn offers_count(&self) -> usize {
        self.offers.len()
    }

    fn index(&mut self, ip: u32, e: &Entry) {
        let pool = self.is_pool_ip(ip);
        if e.state.holds() {
            self.expiry.insert((e.expires, ip));
            if e.state == State::Offered && pool {
                self.offers.insert(e.offer_seq, ip);
            }
        } else if pool {
            self.reusable.insert((e.expires, ip));
        }
    }

    fn unindex(&mut self, ip: u32, e: &Entry) {
        self.expiry.remove(&(e.expires, ip));
        self.reusable.remove(&(e.expires, ip));
        if e.state == State::Offered {
            self.offers.remove(&e.offer_seq);
        }
    }

    /// Replace the entry at `ip`, keeping every index right.
    fn set(&mut self, ip: u32, mut new: Entry) {
        if new.state == State::Offered {
            self.next_seq += 1;
            new.offer_seq = self.next_seq;
        }
        match self.entries.remove(&ip) {
            Some(old) => {
                self.unindex(ip, &old);
                if old.mac != new.mac {
                    self.forget_owner(old.mac, ip);
                }
            }
            None => {
                if self.is_pool_ip(ip) {
                    self.fresh -= 1;
                }
            }
        }
        self.index(ip, &new);
        self.add_owner(new.mac, ip);
        self.entries.insert(ip, new);
    }

    fn add_owner(&mut self, mac: Mac, ip: u32) {
        let v = self.by_mac.entry(mac).or_default();
        if !v.contains(&ip) {
            v.push(ip);
        }
    }

    fn forget_owner(&mut self, mac: Mac, ip: u32) {
        if let Some(v) = self.by_mac.get_mut(&mac) {
            v.retain(|&x| x != ip);
            if v.is_empty() {
                self.by_mac.remove(&mac);
            }
        }
    }

    /// The entries naming `mac`, with their addresses.
    fn owned<'a>(&'a self, mac: &Mac) -> impl Iterator<Item = (u32, &'a Entry)> + 'a {
        let mac = *mac;
        self.by_mac
            .get(&mac)
            .into_iter()
            .flatten()
            .filter_map(move |ip| {
                self.entries
                    .get(ip)
                    .filter(|e| e.mac == mac)
                    .map(|e| (*ip, e))
            })
    }

    fn change_state(&mut self, ip: u32, state: State, expires: u64) {
        if let Some(mut e) = self.entries.get(&ip).cloned() {
            e.state = state;
            e.expires = expires;
            self.set(ip, e);
        }
    }

    /// Move entries whose time ran out to `expired`.
    pub fn sweep(&mut self, now: u64) {
        while let Some(&(t, ip)) = self.expiry.first() {
            if t > now {
                break;
            }
            self.expiry.pop_first();
            if self
                .entries
                .get(&ip)
                .is_some_and(|e| e.state.holds() && e.expires == t)
            {
                self.change_state(ip, State::Expired, t);
            }
        }
    }

    fn is_free(&self, ip: u32, now: u64) -> bool {
        self.entries.get(&ip).is_none_or(|e| !e.holds_at(now))
    }

    /// The pool address `mac` holds now (offered or bound), if any.
    pub fn held_pool_ip(&self, mac: &Mac, now: u64) -> Option<u32> {
        self.owned(mac)
            .find(|(ip, e)| {
                self.is_pool_ip(*ip)
                    && matches!(e.state, State::Offered | State::Bound)
                    && e.expires > now
            })
            .map(|(ip, _)| ip)
    }

    /// Pick a pool address for `mac`: the one it holds, else the one it asks for if free,
    /// else its previous one if free, else a never-used one, else the longest-free one.
    pub fn allocate(&mut self, mac: &Mac, requested: Option<Ipv4Addr>, now: u64) -> Option<u32> {
        if let Some(ip) = self.held_pool_ip(mac, now) {
            return Some(ip);
        }
        if let Some(r) = requested.map(u32::from)
            && self.is_pool_ip(r)
            && self.is_free(r, now)
        {
            return Some(r);
        }
        // Its previous address, the most recently freed one first.
        if let Some((ip, _)) = self
            .owned(mac)
            .filter(|(ip, e)| {
                self.is_pool_ip(*ip) && matches!(e.state, State::Released | State::Expired)
            })
            .max_by_key(|(_, e)| e.expires)
        {
            return Some(ip);
        }
        if let Some((_, b)) = self.pool {
            while self.cursor <= u64::from(b) {
                let ip = self.cursor as u32;
                self.cursor += 1;
                if self.is_pool_ip(ip) && !self.entries.contains_key(&ip) {
                    return Some(ip);
                }
            }
        }
        if self.reusable.is_empty() && !self.expiry.is_empty() {
            self.sweep(now);
        }
        self.reusable.first().map(|&(_, ip)| ip)
    }

    /// Whether `mac` (not a reserved client) may have pool address `ip` now.
    pub fn can_assign(&self, mac: &Mac, ip: u32, now: u64) -> bool {
        self.is_pool_ip(ip)
            && match self.entries.get(&ip) {
                None => true,
                Some(e) if !e.holds_at(now) => true,
                Some(e) => e.mac == *mac && matches!(e.state, State::Offered | State::Bound),
            }
    }

    /// Record an offer, unless `mac` already has the address bound (a DISCOVER does not undo
    /// a binding).
    pub fn offer(&mut self, ip: u32, mac: Mac, hostname: Option<String>, until: u64, now: u64) {
        if let Some(e) = self.entries.get(&ip)
            && e.mac == mac
            && e.state == State::Bound
            && e.expires > now
        {
            return;
        }
        self.set(
            ip,
            Entry {
                mac,
                state: State::Offered,
                expires: until,
                hostname,
                client_id: None,
                probe_until: 0,
                offer_seq: 0,
            },
        );
    }

    /// Free the oldest outstanding pool offer; false when there is none.
    pub fn evict_oldest_offer(&mut self, now: u64) -> bool {
        match self.offers.first_key_value() {
            Some((_, &ip)) => {
                self.change_state(ip, State::Expired, now);
                true
            }
            None => false,
        }
    }

    /// The client chose another server: free what we offered it.
    pub fn drop_offer(&mut self, mac: &Mac, now: u64) {
        let offered: Vec<u32> = self
            .owned(mac)
            .filter(|(_, e)| e.state == State::Offered)
            .map(|(ip, _)| ip)
            .collect();
        for ip in offered {
            self.change_state(ip, State::Expired, now);
        }
    }

    /// Whether `mac` holds `ip` bound now.
    pub fn is_bound_to(&self, ip: u32, mac: &Mac, now: u64) -> bool {
        self.entries
            .get(&ip)
            .is_some_and(|e| e.mac == *mac && e.state == State::Bound && e.expires > now)
    }

    /// Whether `mac` holds `ip` now, offered or bound.
    pub fn is_held_by(&self, ip: u32, mac: &Mac, now: u64) -> bool {
        self.entries.get(&ip).is_some_and(|e| {
            e.mac == *mac && matches!(e.state, State::Offered | State::Bound) && e.expires > now
        })
    }

    pub fn entry(&self, ip: u32) -> Option<&Entry> {
        self.entries.get(&ip)
    }

    /// Whether `ip` lies in the pool range (reserved or not): any such address may be a
    /// guest's at any moment.
    pub fn in_pool_range(&self, ip: u32) -> bool {
        self.pool.is_some_and(|(a, b)| a <= ip && ip <= b)
    }

    pub fn is_reserved_ip(&self, ip: u32) -> bool {
        self.reserved_ip.contains_key(&ip)
    }

    /// Bind `ip` as `b` says; returns the journal records (the binding, and the release of
    /// what else the MAC held: a client has one address per network).
    pub fn bind(&mut self, ip: u32, b: Binding, now: u64) -> Vec<Lease> {
        let Binding {
            mac,
            hostname,
            client_id,
            expires,
            probe_until,
        } = b;
        let mut out = Vec::with_capacity(1);
        let others: Vec<u32> = self
            .owned(&mac)
            .filter(|(o, e)| *o != ip && matches!(e.state, State::Offered | State::Bound))
            .filter(|(_, e)| e.expires > now)
            .map(|(o, _)| o)
            .collect();
        for old in others {
            self.change_state(old, State::Released, now);
            out.push(self.lease(old).expect("just set"));
        }
        let same = self.entries.get(&ip).filter(|e| e.mac == mac);
        let hostname = hostname.or_else(|| same.and_then(|e| e.hostname.clone()));
        // A renewal does not close a window a new binding opened moments before.
        let probe_until = probe_until.max(same.map_or(0, |e| e.probe_until));
        self.set(
            ip,
            Entry {
                mac,
                state: State::Bound,
                expires,
                hostname,
                client_id,
                probe_until,
                offer_seq: 0,
            },
        );
        out.push(self.lease(ip).expect("just set"));
        out
    }

    /// DHCPDECLINE: the client found `ip` in use. Quarantine it until `until`.
    pub fn decline(&mut self, ip: u32, mac: &Mac, until: u64, now: u64) -> Option<Lease> {
        let e = self.entries.get(&ip)?;
        if e.mac != *mac || !e.holds_at(now) {
            return None;
        }
        self.change_state(ip, State::Declined, until);
        self.lease(ip)
    }

    /// DHCPRELEASE: the client gives `ip` back.
    pub fn release(&mut self, ip: u32, mac: &Mac, now: u64) -> Option<Lease> {
        let e = self.entries.get(&ip)?;
        if e.mac != *mac || !matches!(e.state, State::Bound | State::Offered) {
            return None;
        }
        self.change_state(ip, State::Released, now);
        self.lease(ip)
    }

    pub fn lease(&self, ip: u32) -> Option<Lease> {
        let e = self.entries.get(&ip)?;
        Some(Lease {
            mac: e.mac.to_string(),
            ip: Ipv4Addr::from(ip),
            network: self.network.clone(),
            expires_unix: e.expires,
            hostname: e.hostname.clone(),
            state: e.state.as_str().to_string(),
            reserved: self.reserved_ip.get(&ip) == Some(&e.mac),
            client_id: e.client_id.as_deref().map(client_id_text),
        })
    }

    /// What an operator sees: offers, bindings and quarantines that still run, and releases
    /// of the last day.
    pub fn leases(&self, now: u64, out: &mut Vec<Lease>) {
        for (&ip, e) in &self.entries {
            let live = match e.state {
                State::Expired => false,
                s if s.holds() => e.expires > now,
                _ => e.expires.saturating_add(KEEP_FREED_SECS) > now,
            };
            if live && let Some(l) = self.lease(ip) {
                out.push(l);
            }
        }
    }

    /// Records worth keeping on disk: holding leases, and freed ones for a day.
    pub fn journal_records(&self, now: u64, out: &mut Vec<Lease>) {
        for (&ip, e) in &self.entries {
            let keep = match e.state {
                State::Offered => false,
                s if s.holds() => true,
                _ => e.expires.saturating_add(KEEP_FREED_SECS) > now,
            };
            if keep && let Some(l) = self.lease(ip) {
                out.push(l);
            }
        }
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Ipv4Cidr;

    fn scope(pool: (u8, u8), reserved: &[(u8, u8)]) -> Scope {
        Scope {
            network: "n".into(),
            interface: "br0".into(),
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            subnet: Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 24),
            router: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![],
            domain: None,
            mtu: None,
            live_mtu: None,
            lease_secs: 100,
            routes: vec![],
            pool: Some((
                Ipv4Addr::new(10, 0, 0, pool.0),
                Ipv4Addr::new(10, 0, 0, pool.1),
            )),
            reservations: reserved
                .iter()
                .map(|&(m, ip)| super::super::Reservation {
                    mac: Mac([2, 0, 0, 0, 0, m]),
                    ip: Ipv4Addr::new(10, 0, 0, ip),
                    port: format!("p{m}"),
                })
                .collect(),
        }
    }

    fn ip(last: u8) -> u32 {
        u32::from(Ipv4Addr::new(10, 0, 0, last))
    }

    fn mac(m: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, m])
    }

    fn binding(m: u8, hostname: Option<&str>, expires: u64) -> Binding {
        Binding {
            mac: mac(m),
            hostname: hostname.map(str::to_string),
            client_id: None,
            expires,
            probe_until: 0,
        }
    }

    #[test]
    fn allocation_order_and_reuse() {
        let mut t = Table::new("n");
        t.configure(Some(&scope((10, 13), &[(9, 11)])));
        assert_eq!(t.free_count(), 3); // .11 is reserved
        let now = 1000;
        let a = t.allocate(&mac(1), None, now).unwrap();
        assert_eq!(a, ip(10));
        t.offer(a, mac(1), None, now + 30, now);
        // The same MAC gets the same address; another MAC the next free one, skipping .11.
        assert_eq!(t.allocate(&mac(1), None, now), Some(a));
        let b = t.allocate(&mac(2), None, now).unwrap();
        assert_eq!(b, ip(12));
        t.bind(b, binding(2, None, now + 100), now);
        let c = t
            .allocate(&mac(3), Some(Ipv4Addr::new(10, 0, 0, 12)), now)
            .unwrap();
        assert_eq!(c, ip(13), "a held address is not given on request");
        t.offer(c, mac(3), None, now + 30, now);
        assert_eq!(t.free_count(), 0);
        assert_eq!(t.allocate(&mac(4), None, now), None);
        // Offers run out: the address comes back.
        t.sweep(now + 31);
        assert_eq!(t.free_count(), 2);
        assert!(t.can_assign(&mac(4), ip(10), now + 31));
        assert!(!t.can_assign(&mac(4), ip(12), now + 31));
        assert!(t.can_assign(&mac(2), ip(12), now + 31));
        assert!(!t.can_assign(&mac(4), ip(11), now + 31), "reserved");
        // Release, then the releaser comes back first and gets its old address.
        t.release(b, &mac(2), now + 40).unwrap();
        assert_eq!(t.allocate(&mac(2), None, now + 41), Some(b));
        // Decline quarantines.
        t.bind(ip(10), binding(5, None, now + 500), now + 41);
        t.decline(ip(10), &mac(5), now + 1000, now + 42).unwrap();
        assert!(!t.can_assign(&mac(5), ip(10), now + 43));
        assert_ne!(t.allocate(&mac(5), None, now + 43), Some(ip(10)));
        let mut ls = Vec::new();
        t.leases(now + 43, &mut ls);
        assert!(
            ls.iter()
                .any(|l| l.state == "declined" && l.ip == Ipv4Addr::new(10, 0, 0, 10))
        );
    }

    #[test]
    fn offer_eviction_and_reload() {
        let mut t = Table::new("n");
        let s = scope((10, 19), &[]);
        t.configure(Some(&s));
        for m in 1..=4 {
            let a = t.allocate(&mac(m), None, 0).unwrap();
            t.offer(a, mac(m), None, 30, 0);
        }
        assert_eq!(t.offers_count(), 4);
        assert!(t.evict_oldest_offer(1));
        assert_eq!(t.offers_count(), 3);
        assert!(t.held_pool_ip(&mac(1), 1).is_none());
        let recs = t.bind(ip(11), binding(2, Some("h"), 100), 1);
        // Reload from the records: the binding survives, offers do not.
        let mut u = Table::new("n");
        for r in &recs {
            u.load(r, 2);
        }
        u.configure(Some(&s));
        assert_eq!(u.held_pool_ip(&mac(2), 2), Some(ip(11)));
        assert_eq!(u.free_count(), 9);
        assert!(!u.can_assign(&mac(3), ip(11), 2));
        assert!(u.can_assign(&mac(3), ip(11), 100), "expired at 100");
    }
}
