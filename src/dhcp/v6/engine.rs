//! The DHCPv6 server's decisions: one received message in, at most one answer out, with the
//! bindings to journal. No I/O but the journal's buffered appends; time is passed in.

use std::collections::{HashMap, HashSet};
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::Instant;

use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, IANA, IAPD, Message, MessageType, OptionCode, Status,
    StatusCode,
};
use dhcproto::{Decodable, Encodable, Name};

use super::net::{Out6, Rx6};
use super::store::{Client, Entry, Table};
use super::{Lease6, Limits6, NetworkCounters6, NetworkStats6, Scope6, Stats6};
use crate::dhcp::journal::Journal;
use crate::dhcp::limit::{Allowances, Sender, take};
use crate::dhcp::store::State;
use crate::dhcp::{DhcpError, ServerStats};
use crate::log::{self, Level};
use crate::spec::Mac;

/// A DUID is at most 128 bytes (RFC 8415 11.1).
const MAX_DUID: usize = 128;

pub(crate) struct Engine {
    scopes: Vec<Scope6>,
    by_iface: HashMap<String, usize>,
    /// Per scope: reserved MAC -> address; guarded MACs.
    reserved: Vec<HashMap<Mac, u128>>,
    guarded: Vec<HashSet<Mac>>,
    tables: HashMap<String, Table>,
    pub limits: Limits6,
    pub stats: Stats6,
    by_network: HashMap<String, NetworkCounters6>,
    journal: Journal<Lease6>,
    needs_sync: bool,
    allowances: Allowances,
    duid: Vec<u8>,
}

/// What one IA_NA gets.
enum Grant {
    Address(u128),
    None(Status),
}

/// A parsed request with what every handler needs.
struct Req {
    msg: Message,
    si: usize,
    mac: Mac,
    duid: Option<Vec<u8>>,
}

fn ia_nas(m: &Message) -> impl Iterator<Item = &IANA> {
    m.opts()
        .get_all(OptionCode::IANA)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IANA(ia) => Some(ia),
            _ => None,
        })
}

fn ia_addrs(ia: &IANA) -> impl Iterator<Item = Ipv6Addr> + '_ {
    ia.opts
        .get_all(OptionCode::IAAddr)
        .unwrap_or_default()
        .iter()
        .filter_map(|o| match o {
            DhcpOption::IAAddr(a) => Some(a.addr),
            _ => None,
        })
}

fn status(code: Status, msg: &str) -> DhcpOption {
    DhcpOption::StatusCode(StatusCode {
        status: code,
        msg: msg.to_string(),
    })
}

fn in_prefix(p: crate::spec::Ipv6Cidr, a: Ipv6Addr) -> bool {
    let a = crate::spec::Ipv6Cidr {
        addr: a,
        prefix: p.prefix,
    };
    a.network() == p.network()
}

fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

impl Engine {
    pub fn open(state_dir: &Path, now: u64) -> Result<Engine, DhcpError> {
        let (journal, records) = Journal::<Lease6>::open(state_dir)?;
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
            guarded: Vec::new(),
            tables,
            limits: Limits6::default(),
            stats: Stats6::default(),
            by_network: HashMap::new(),
            journal,
            needs_sync: false,
            allowances: Allowances::default(),
            duid: Vec::new(),
        })
    }

    pub fn set_duid(&mut self, duid: Vec<u8>) {
        self.duid = duid;
    }

    pub fn duid(&self) -> &[u8] {
        &self.duid
    }

    pub fn scopes(&self) -> &[Scope6] {
        &self.scopes
    }

    pub fn set_scopes(&mut self, scopes: Vec<Scope6>, now: u64) {
        self.by_iface = scopes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.interface.clone(), i))
            .collect();
        self.reserved = scopes
            .iter()
            .map(|s| {
                s.reservations
                    .iter()
                    .map(|r| (r.mac, u128::from(r.ip)))
                    .collect()
            })
            .collect();
        self.guarded = scopes
            .iter()
            .map(|s| s.guarded_macs.iter().copied().collect())
            .collect();
        for t in self.tables.values_mut() {
            t.configure(None);
        }
        for s in &scopes {
            let t = self
                .tables
                .entry(s.network.clone())
                .or_insert_with(|| Table::new(&s.network));
            t.configure(Some(s));
            t.sweep(now);
        }
        self.scopes = scopes;
    }

    pub fn leases(&self, now: u64) -> Vec<Lease6> {
        let mut names: Vec<&String> = self.tables.keys().collect();
        names.sort();
        let mut out = Vec::new();
        for n in names {
            self.tables[n].leases(now, &mut out);
        }
        out
    }

    pub fn network_stats(&self) -> Vec<NetworkStats6> {
        let mut out: Vec<NetworkStats6> = self
            .scopes
            .iter()
            .map(|s| {
                let t = self.tables.get(&s.network);
                NetworkStats6 {
                    network: s.network.clone(),
                    counters: self.by_network.get(&s.network).cloned().unwrap_or_default(),
                    pool_size: t.map_or(0, Table::pool_size),
                    pool_free: t.map_or(0, Table::free_count),
                }
            })
            .collect();
        out.sort_by(|a, b| a.network.cmp(&b.network));
        out
    }

    /// Write what this batch journaled; sync it when a Reply depends on it. False when the
    /// bindings could not be made durable (their Replies must not be sent).
    pub fn commit(&mut self) -> bool {
        if !self.journal.has_pending() && !self.needs_sync {
            return true;
        }
        let sync = std::mem::take(&mut self.needs_sync);
        match self.journal.flush(sync) {
            Ok(()) => {
                self.stats.journal_syncs += u64::from(sync);
                true
            }
            Err(e) => {
                log::line(Level::Error, &format!("kvmnet dhcp6: {e}"));
                self.stats.journal_errors += 1;
                false
            }
        }
    }

    /// Once a second: expire leases, forget idle buckets, compact the journal.
    pub fn tick(&mut self, now: u64, mono: Instant) {
        for t in self.tables.values_mut() {
            t.sweep(now);
        }
        self.allowances.prune(&self.limits.rates, mono);
        let live: usize = self.tables.values().map(Table::entry_count).sum();
        if self.journal.wants_compaction(live) {
            let mut recs = Vec::with_capacity(live);
            for t in self.tables.values() {
                t.journal_records(now, &mut recs);
            }
            match self.journal.compact(&recs) {
                Ok(()) => self.stats.journal_compactions += 1,
                Err(e) => {
                    log::line(Level::Error, &format!("kvmnet dhcp6: compacting: {e}"));
                    self.stats.journal_errors += 1;
                }
            }
        }
    }

    /// One received message on `iface`.
    pub fn handle(&mut self, iface: &str, rx: &Rx6, now: u64, mono: Instant) -> Option<Out6> {
        self.stats.received += 1;
        let si = *self.by_iface.get(iface)?;
        let Ok(msg) = Message::from_bytes(&rx.data) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let kind = msg.msg_type();
        self.count(si, kind);
        if !is_link_local(rx.src) {
            self.stats.dropped_source += 1;
            return None;
        }
        let req = self.check(si, rx.mac, msg)?;
        let from = Sender {
            bridge: iface,
            relayed: false,
            mac: rx.mac,
            reserved: self.reserved[si].contains_key(&rx.mac),
        };
        let mut drops = ServerStats::default();
        if !self
            .allowances
            .admit(&self.limits.rates, &mut drops, &from, mono)
        {
            self.stats.dropped_rate_mac += drops.dropped_rate_mac;
            self.stats.dropped_rate_interface += drops.dropped_rate_interface;
            return None;
        }
        let (reply, needs_sync) = match kind {
            MessageType::InformationRequest => (self.information(&req), false),
            MessageType::Confirm => (self.confirm(&req)?, false),
            MessageType::Release => (self.release(&req, now), false),
            MessageType::Decline => (self.decline(&req, now), false),
            _ => self.assign(&req, now, mono)?,
        };
        self.needs_sync |= needs_sync;
        let kind = reply.msg_type();
        let bytes = reply.to_vec().ok()?;
        if kind == MessageType::Advertise {
            self.stats.advertise += 1;
        } else {
            self.stats.reply += 1;
        }
        Some(Out6 {
            socket: rx.socket,
            dest: rx.src,
            bytes,
            needs_sync,
        })
    }

    fn count(&mut self, si: usize, kind: MessageType) {
        let c = self
            .by_network
            .entry(self.scopes[si].network.clone())
            .or_default();
        match kind {
            MessageType::Solicit => c.solicit += 1,
            MessageType::Request => c.request += 1,
            MessageType::Confirm => c.confirm += 1,
            MessageType::Renew => c.renew += 1,
            MessageType::Rebind => c.rebind += 1,
            MessageType::Release => c.release += 1,
            MessageType::Decline => c.decline += 1,
            MessageType::InformationRequest => c.information_request += 1,
            _ => c.other += 1,
        }
    }

    /// RFC 8415 16: what each message type must and must not carry.
    fn check(&mut self, si: usize, mac: Mac, msg: Message) -> Option<Req> {
        use MessageType as M;
        let kind = msg.msg_type();
        let (server_id, client_id) = match kind {
            M::Solicit | M::Rebind | M::Confirm => (Some(false), true),
            M::Request | M::Renew | M::Release | M::Decline => (Some(true), true),
            M::InformationRequest => (None, false),
            _ => {
                self.stats.ignored += 1;
                return None;
            }
        };
        let duid = match msg.opts().get(OptionCode::ClientId) {
            Some(DhcpOption::ClientId(d)) if !d.is_empty() && d.len() <= MAX_DUID => {
                Some(d.clone())
            }
            Some(_) => None,
            None => None,
        };
        if client_id && duid.is_none() {
            self.stats.dropped_malformed += 1;
            return None;
        }
        let sid = match msg.opts().get(OptionCode::ServerId) {
            Some(DhcpOption::ServerId(s)) => Some(s.as_slice() == self.duid.as_slice()),
            _ => None,
        };
        let sid_ok = match server_id {
            Some(true) => sid == Some(true),
            Some(false) => sid.is_none(),
            None => sid != Some(false),
        };
        // An information-request carries no IA (RFC 8415 16.12).
        let ia_ok = kind != M::InformationRequest || msg.opts().get(OptionCode::IANA).is_none();
        if !sid_ok {
            self.stats.dropped_server_id += 1;
            return None;
        }
        if !ia_ok {
            self.stats.dropped_malformed += 1;
            return None;
        }
        Some(Req { msg, si, mac, duid })
    }

    /// A Reply or Advertise to `req` with the server and client identifiers.
    fn answer(&self, kind: MessageType, req: &Req) -> Message {
        let mut m = Message::new_with_id(kind, req.msg.xid());
        let o = m.opts_mut();
        o.insert(DhcpOption::ServerId(self.duid.clone()));
        if let Some(d) = &req.duid {
            o.insert(DhcpOption::ClientId(d.clone()));
        }
        m
    }

    /// The network's DNS servers and domains (RFC 3646), when it has any.
    fn dns_options(&self, si: usize, o: &mut DhcpOptions) {
        let s = &self.scopes[si];
        if !s.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServers(s.dns.clone()));
        }
        let names: Vec<Name> = s
            .domains
            .iter()
            .filter_map(|d| Name::from_ascii(d).ok())
            .collect();
        if !names.is_empty() {
            o.insert(DhcpOption::DomainSearchList(names));
        }
    }

    fn information(&self, req: &Req) -> Message {
        let mut m = self.answer(MessageType::Reply, req);
        self.dns_options(req.si, m.opts_mut());
        m
    }

    /// Confirm (RFC 8415 18.3.3): are the client's addresses on this link? No answer when it
    /// names none.
    fn confirm(&self, req: &Req) -> Option<Message> {
        let prefix = self.scopes[req.si].prefix;
        let addrs: Vec<Ipv6Addr> = ia_nas(&req.msg).flat_map(ia_addrs).collect();
        if addrs.is_empty() {
            return None;
        }
        let on_link = addrs.iter().all(|a| in_prefix(prefix, *a));
        let mut m = self.answer(MessageType::Reply, req);
        m.opts_mut().insert(if on_link {
            status(Status::Success, "all addresses are on link")
        } else {
            status(Status::NotOnLink, "not on this link")
        });
        Some(m)
    }

    fn client(req: &Req, ia: &IANA) -> Client {
        let duid = req.duid.as_deref().unwrap_or_default();
        (duid.into(), ia.id)
    }

    /// Release (RFC 8415 18.3.7): the holder's bindings named in it are freed.
    fn release(&mut self, req: &Req, now: u64) -> Message {
        let mut m = self.answer(MessageType::Reply, req);
        let network = self.scopes[req.si].network.clone();
        for ia in ia_nas(&req.msg) {
            let c = Self::client(req, ia);
            let mut any = false;
            for a in ia_addrs(ia) {
                any |= self.end_binding(&network, &c, req.mac, u128::from(a), |_| {
                    Some((State::Released, now))
                });
            }
            if !any {
                m.opts_mut().insert(DhcpOption::IANA(no_binding(
                    ia.id,
                    "no binding for this IA",
                )));
            }
        }
        m.opts_mut().insert(status(Status::Success, "released"));
        m
    }

    /// Decline (RFC 8415 18.3.8): the address is kept out of use, if the client has just
    /// been given it.
    fn decline(&mut self, req: &Req, now: u64) -> Message {
        let mut m = self.answer(MessageType::Reply, req);
        let network = self.scopes[req.si].network.clone();
        let hold = now + u64::from(self.limits.decline_hold_secs);
        for ia in ia_nas(&req.msg) {
            let c = Self::client(req, ia);
            let mut any = false;
            for a in ia_addrs(ia) {
                any |= self.end_binding(&network, &c, req.mac, u128::from(a), |e| {
                    (now <= e.probe_until).then_some((State::Declined, hold))
                });
            }
            if !any {
                m.opts_mut().insert(DhcpOption::IANA(no_binding(
                    ia.id,
                    "no binding for this IA",
                )));
            }
        }
        m.opts_mut().insert(status(Status::Success, "declined"));
        m
    }

    /// End the binding at `ip` if `c` holds it bound from Ethernet source `mac` and `to`
    /// agrees; journal the change. False (counted) when someone else's.
    fn end_binding(
        &mut self,
        network: &str,
        c: &Client,
        mac: Mac,
        ip: u128,
        to: impl Fn(&Entry) -> Option<(State, u64)>,
    ) -> bool {
        let Some(t) = self.tables.get_mut(network) else {
            return false;
        };
        let Some(e) = t.get(ip) else { return false };
        let holder = e.state == State::Bound && e.duid == c.0 && e.iaid == c.1 && e.mac == mac;
        let Some((state, until)) = to(e).filter(|_| holder) else {
            self.stats.dropped_not_holder += 1;
            return false;
        };
        t.change_state(ip, state, until);
        let e = t.get(ip).expect("just set").clone();
        self.journal.append(&t.record(ip, &e));
        true
    }
}

fn no_binding(iaid: u32, msg: &str) -> IANA {
    let mut opts = DhcpOptions::new();
    opts.insert(status(Status::NoBinding, msg));
    IANA {
        id: iaid,
        t1: 0,
        t2: 0,
        opts,
    }
}

#[path = "assign.rs"]
mod assign;
#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
