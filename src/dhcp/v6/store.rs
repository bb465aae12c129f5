//! The DHCPv6 lease table of one network: addresses as `u128`, bindings keyed by the
//! client's (DUID, IAID) and remembering the Ethernet source they were made from. The
//! journal that makes it survive a crash is the DHCPv4 server's (`super::super::journal`),
//! holding [`Lease6`] records.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv6Addr;

use super::{Lease6, Scope6};
use crate::dhcp::store::{KEEP_FREED_SECS, State, client_id_text, parse_client_id};
use crate::spec::Mac;

/// A client's identity for a binding: its DUID and the IA_NA's IAID.
pub(crate) type Client = (Box<[u8]>, u32);

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub duid: Box<[u8]>,
    pub iaid: u32,
    /// The Ethernet source of the message that made the binding (see the module contract).
    pub mac: Mac,
    pub state: State,
    /// Unix seconds; `u64::MAX` for an infinite lease.
    pub expires: u64,
    /// Until when a DECLINE of a new binding is believed (memory only, as in DHCPv4).
    pub probe_until: u64,
}

impl Entry {
    pub fn holds_at(&self, now: u64) -> bool {
        self.state.holds() && self.expires > now
    }
    fn client(&self) -> Client {
        (self.duid.clone(), self.iaid)
    }
}

/// Invariants: every pool address below `cursor` that was ever used has an entry;
/// `reusable` holds pool addresses whose entry is free, oldest first; `expiry` every entry
/// in a holding state.
pub(crate) struct Table {
    pub network: String,
    entries: HashMap<u128, Entry>,
    by_client: HashMap<Client, Vec<u128>>,
    /// Pool addresses each Ethernet source holds now (offered or bound): see
    /// [`super::Limits6::max_per_mac`].
    per_mac: HashMap<Mac, u32>,
    pool: Option<(u128, u128)>,
    reserved: HashMap<u128, Mac>,
    excluded: Vec<u128>,
    cursor: u128,
    reusable: BTreeSet<(u64, u128)>,
    expiry: BTreeSet<(u64, u128)>,
}

impl Table {
    pub fn new(network: &str) -> Table {
        Table {
            network: network.to_string(),
            entries: HashMap::new(),
            by_client: HashMap::new(),
            per_mac: HashMap::new(),
            pool: None,
            reserved: HashMap::new(),
            excluded: Vec::new(),
            cursor: 0,
            reusable: BTreeSet::new(),
            expiry: BTreeSet::new(),
        }
    }

    /// Load a journal record (before [`Table::configure`]): the last record per address wins.
    pub fn load(&mut self, l: &Lease6, now: u64) {
        let (Ok(mac), Some(mut state), Some(duid)) = (
            l.mac.parse::<Mac>(),
            State::parse(&l.state),
            parse_client_id(&l.duid),
        ) else {
            return;
        };
        if state.holds() && l.expires_unix <= now {
            state = State::Expired;
        }
        let ip = u128::from(l.ip);
        if let Some(old) = self.entries.remove(&ip) {
            self.forget_client(&old.client(), ip);
        }
        self.by_client
            .entry((duid.clone(), l.iaid))
            .or_default()
            .push(ip);
        self.entries.insert(
            ip,
            Entry {
                duid,
                iaid: l.iaid,
                mac,
                state,
                expires: l.expires_unix,
                probe_until: 0,
            },
        );
    }

    /// (Re)build the indexes for a scope (or none: the network is gone, its leases stay).
    pub fn configure(&mut self, scope: Option<&Scope6>) {
        self.pool = scope
            .and_then(|s| s.pool)
            .map(|(a, b)| (u128::from(a), u128::from(b)))
            .filter(|(a, b)| a <= b);
        self.reserved = scope
            .map(|s| {
                s.reservations
                    .iter()
                    .map(|r| (u128::from(r.ip), r.mac))
                    .collect()
            })
            .unwrap_or_default();
        self.excluded = scope
            .map(|s| vec![u128::from(s.server_ip)])
            .unwrap_or_default();
        self.cursor = self.pool.map_or(0, |p| p.0);
        self.reusable.clear();
        self.expiry.clear();
        self.per_mac.clear();
        let ips: Vec<u128> = self.entries.keys().copied().collect();
        for ip in ips {
            let e = self.entries[&ip].clone();
            self.index(ip, &e);
        }
    }

    pub fn is_pool_ip(&self, ip: u128) -> bool {
        self.pool.is_some_and(|(a, b)| a <= ip && ip <= b)
            && !self.reserved.contains_key(&ip)
            && !self.excluded.contains(&ip)
    }

    /// Addresses in the range, saturating at `u64::MAX` (a range may span a whole /64).
    pub fn pool_size(&self) -> u64 {
        self.pool
            .map_or(0, |(a, b)| u64::try_from(b - a + 1).unwrap_or(u64::MAX))
    }

    /// Pool addresses free now (never used, released or expired), saturating.
    pub fn free_count(&self) -> u64 {
        let Some((_, b)) = self.pool else { return 0 };
        let used_below_cursor = self
            .entries
            .iter()
            .filter(|(ip, e)| self.is_pool_ip(**ip) && e.state.holds())
            .count() as u128;
        let fresh = (b + 1).saturating_sub(self.cursor);
        let below = self.cursor.saturating_sub(self.pool.map_or(0, |p| p.0));
        u64::try_from(fresh + below.saturating_sub(used_below_cursor)).unwrap_or(u64::MAX)
    }

    /// The share of the pool that is free, in percent (0 without a pool).
    pub fn free_percent(&self, holding: usize) -> u128 {
        let Some((a, b)) = self.pool else { return 0 };
        let size = b - a + 1;
        let free = size.saturating_sub(holding as u128);
        free.saturating_mul(100) / size.max(1)
    }

    /// Pool entries in a holding state (cheap enough: it is the expiry index).
    pub fn holding(&self) -> usize {
        self.expiry.len()
    }

    fn index(&mut self, ip: u128, e: &Entry) {
        let pool = self.is_pool_ip(ip);
        if e.state.holds() {
            self.expiry.insert((e.expires, ip));
            if pool && matches!(e.state, State::Offered | State::Bound) {
                *self.per_mac.entry(e.mac).or_default() += 1;
            }
        } else if pool {
            self.reusable.insert((e.expires, ip));
        }
    }

    fn unindex(&mut self, ip: u128, e: &Entry) {
        self.expiry.remove(&(e.expires, ip));
        self.reusable.remove(&(e.expires, ip));
        if e.state.holds()
            && self.is_pool_ip(ip)
            && matches!(e.state, State::Offered | State::Bound)
            && let Some(n) = self.per_mac.get_mut(&e.mac)
        {
            *n -= 1;
            if *n == 0 {
                self.per_mac.remove(&e.mac);
            }
        }
    }

    fn forget_client(&mut self, c: &Client, ip: u128) {
        if let Some(v) = self.by_client.get_mut(c) {
            v.retain(|&x| x != ip);
            if v.is_empty() {
                self.by_client.remove(c);
            }
        }
    }

    /// Replace the entry at `ip`, keeping every index right.
    pub fn set(&mut self, ip: u128, new: Entry) {
        if let Some(old) = self.entries.remove(&ip) {
            self.unindex(ip, &old);
            self.forget_client(&old.client(), ip);
        }
        self.index(ip, &new);
        let v = self.by_client.entry(new.client()).or_default();
        if !v.contains(&ip) {
            v.push(ip);
        }
        self.entries.insert(ip, new);
    }

    pub fn get(&self, ip: u128) -> Option<&Entry> {
        self.entries.get(&ip)
    }

    /// Move the entry at `ip` to `state` until `expires`.
    pub fn change_state(&mut self, ip: u128, state: State, expires: u64) {
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

    /// Pool addresses held now (offered or bound) by this Ethernet source.
    pub fn held_by_mac(&self, mac: &Mac) -> u32 {
        self.per_mac.get(mac).copied().unwrap_or(0)
    }

    /// The entries of a client (DUID, IAID), with their addresses.
    pub fn of_client<'a>(&'a self, c: &Client) -> impl Iterator<Item = (u128, &'a Entry)> + 'a {
        self.by_client
            .get(c)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.entries.get(ip).map(|e| (*ip, e)))
    }

    /// The address the client holds now (offered or bound), pool or reserved.
    pub fn held(&self, c: &Client, now: u64) -> Option<u128> {
        self.of_client(c)
            .filter(|(ip, e)| {
                matches!(e.state, State::Offered | State::Bound)
                    && e.expires > now
                    && (self.is_pool_ip(*ip) || self.reserved.contains_key(ip))
            })
            .max_by_key(|(_, e)| e.expires)
            .map(|(ip, _)| ip)
    }

    fn is_free(&self, ip: u128, now: u64) -> bool {
        self.entries.get(&ip).is_none_or(|e| !e.holds_at(now))
    }

    /// Whether pool address `ip` may go to client `c` now.
    pub fn can_assign(&self, c: &Client, ip: u128, now: u64) -> bool {
        self.is_pool_ip(ip)
            && match self.entries.get(&ip) {
                Some(e) if e.holds_at(now) => {
                    e.client() == *c && matches!(e.state, State::Offered | State::Bound)
                }
                _ => true,
            }
    }

    /// A pool address for client `c`: the one it holds, else its hint if free, else its
    /// previous one if free, else a never-used one, else the longest-free one.
    pub fn allocate(&mut self, c: &Client, hint: Option<u128>, now: u64) -> Option<u128> {
        if let Some(ip) = self.held(c, now).filter(|ip| self.is_pool_ip(*ip)) {
            return Some(ip);
        }
        if let Some(h) = hint
            && self.is_pool_ip(h)
            && self.is_free(h, now)
        {
            return Some(h);
        }
        if let Some((ip, _)) = self
            .of_client(c)
            .filter(|(ip, e)| {
                self.is_pool_ip(*ip) && matches!(e.state, State::Released | State::Expired)
            })
            .max_by_key(|(_, e)| e.expires)
        {
            return Some(ip);
        }
        if let Some((_, b)) = self.pool {
            while self.cursor <= b {
                let ip = self.cursor;
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

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The records a compacted journal keeps: everything but free entries older than a day.
    pub fn journal_records(&self, now: u64, out: &mut Vec<Lease6>) {
        for (ip, e) in &self.entries {
            let keep = match e.state {
                State::Offered => false,
                State::Bound | State::Declined => true,
                State::Released | State::Expired => e.expires.saturating_add(KEEP_FREED_SECS) > now,
            };
            if keep {
                out.push(self.record(*ip, e));
            }
        }
    }

    /// The journal record of the entry at `ip`.
    pub fn record(&self, ip: u128, e: &Entry) -> Lease6 {
        Lease6 {
            mac: e.mac.to_string(),
            ip: Ipv6Addr::from(ip),
            network: self.network.clone(),
            expires_unix: e.expires,
            state: e.state.as_str().to_string(),
            reserved: self.reserved.get(&ip) == Some(&e.mac),
            duid: client_id_text(&e.duid),
            iaid: e.iaid,
        }
    }

    /// Leases as operators see them (offers included, long-freed ones not), by address.
    pub fn leases(&self, now: u64, out: &mut Vec<Lease6>) {
        let mut ips: Vec<&u128> = self.entries.keys().collect();
        ips.sort();
        for ip in ips {
            let e = &self.entries[ip];
            let show = match e.state {
                State::Offered | State::Bound | State::Declined => e.expires > now,
                State::Released => e.expires.saturating_add(KEEP_FREED_SECS) > now,
                State::Expired => false,
            };
            if show {
                out.push(self.record(*ip, e));
            }
        }
    }
}
