//! Address assignment: Solicit (with or without rapid commit), Request, Renew, Rebind.

use super::*;

/// The lifetimes and renewal times of a lease of `secs` (`u32::MAX`: infinite).
fn times(secs: u32) -> (u32, u32) {
    if secs == u32::MAX {
        (u32::MAX, u32::MAX)
    } else {
        // RFC 8415 21.4 recommends 0.5 and 0.8 of the shortest preferred lifetime.
        (secs / 2, secs / 5 * 4)
    }
}

fn ia_addr(addr: Ipv6Addr, life: u32) -> DhcpOption {
    DhcpOption::IAAddr(IAAddr {
        addr,
        preferred_life: life,
        valid_life: life,
        opts: DhcpOptions::new(),
    })
}

impl Engine {
    /// Solicit, Request, Renew, Rebind: the answer and whether it waits for a journal sync.
    pub(super) fn assign(&mut self, req: &Req, now: u64, mono: Instant) -> Option<(Message, bool)> {
        let kind = req.msg.msg_type();
        let rapid =
            kind == MessageType::Solicit && req.msg.opts().get(OptionCode::RapidCommit).is_some();
        let commit = kind != MessageType::Solicit || rapid;
        let ias: Vec<IANA> = ia_nas(&req.msg).cloned().collect();
        let mut m = self.answer(
            if commit {
                MessageType::Reply
            } else {
                MessageType::Advertise
            },
            req,
        );
        let mut granted = 0;
        let mut reservation_given = false;
        for ia in &ias {
            let c = Self::client(req, ia);
            let answer = match self.grant(req, &c, ia, now, mono, &mut reservation_given) {
                Grant::Address(ip) => {
                    granted += 1;
                    self.record(req, &c, ip, commit, now);
                    self.ia_granted(req, ia, ip)
                }
                Grant::None(code) => self.ia_refused(kind, ia, code),
            };
            m.opts_mut().insert(DhcpOption::IANA(answer));
        }
        for pd in req.msg.opts().get_all(OptionCode::IAPD).unwrap_or_default() {
            if let DhcpOption::IAPD(pd) = pd {
                m.opts_mut().insert(DhcpOption::IAPD(iapd_refused(pd.id)));
            }
        }
        if granted == 0 && kind == MessageType::Solicit {
            // RFC 8415 18.3.9: an Advertise that says no address will come, never a Reply.
            m.set_msg_type(MessageType::Advertise);
            m.opts_mut()
                .insert(status(Status::NoAddrsAvail, "no addresses available"));
        } else if rapid {
            m.opts_mut().insert(DhcpOption::RapidCommit);
        }
        self.dns_options(req.si, m.opts_mut());
        let sync = commit && granted > 0;
        // A Solicit without rapid commit whose answer says nothing is still answered: the
        // client learns there is a server without addresses for it.
        Some((m, sync))
    }

    /// The address an IA_NA gets: its reservation (by Ethernet source), else from the pool.
    fn grant(
        &mut self,
        req: &Req,
        c: &Client,
        ia: &IANA,
        now: u64,
        mono: Instant,
        reservation_given: &mut bool,
    ) -> Grant {
        let scope = &self.scopes[req.si];
        if !scope.addresses {
            return Grant::None(Status::NoAddrsAvail);
        }
        let network = scope.network.clone();
        let t = self
            .tables
            .get_mut(&network)
            .expect("every scope has a table");
        if let Some(&rip) = self.reserved[req.si].get(&req.mac)
            && !*reservation_given
        {
            // The reservation belongs to the MAC: an entry of the same DUID under another
            // IAID keeps it (that IA asked first); a new DUID from the MAC takes it over (a
            // reinstalled guest).
            let ok = match t.get(rip) {
                Some(e) if e.holds_at(now) => e.duid != c.0 || e.iaid == c.1,
                _ => true,
            };
            if ok {
                *reservation_given = true;
                return Grant::Address(rip);
            }
        }
        let hint = ia_addrs(ia).next().map(u128::from);
        if t.held(c, now).filter(|ip| t.is_pool_ip(*ip)).is_none() {
            if self.guarded[req.si].contains(&req.mac)
                && t.held_by_mac(&req.mac) >= self.limits.max_per_mac
            {
                self.stats.dropped_mac_share += 1;
                return Grant::None(Status::NoAddrsAvail);
            }
            let rate = self.limits.low_pool_admit_rate;
            if t.free_percent(t.holding()) < u128::from(self.limits.low_pool_percent)
                && !take(
                    &mut self.allowances.low_pool,
                    network.clone(),
                    mono,
                    rate,
                    rate.max(1.0),
                )
            {
                self.stats.dropped_pool_guard += 1;
                return Grant::None(Status::NoAddrsAvail);
            }
        }
        match t.allocate(c, hint, now) {
            Some(ip) if t.can_assign(c, ip, now) => Grant::Address(ip),
            _ => {
                self.stats.dropped_pool_exhausted += 1;
                Grant::None(Status::NoAddrsAvail)
            }
        }
    }

    /// Record a grant: bound and journaled when committed, else held as advertised (in
    /// memory only, never downgrading a binding the client has).
    fn record(&mut self, req: &Req, c: &Client, ip: u128, commit: bool, now: u64) {
        let scope = &self.scopes[req.si];
        let lease = scope.lease_secs;
        let t = self
            .tables
            .get_mut(&scope.network)
            .expect("every scope has a table");
        let current = t
            .get(ip)
            .filter(|e| e.duid == c.0 && e.iaid == c.1 && e.holds_at(now))
            .cloned();
        let bound = current.as_ref().filter(|e| e.state == State::Bound);
        if !commit {
            if bound.is_none() {
                let until = now + u64::from(self.limits.offer_hold_secs);
                t.set(ip, entry(c, req.mac, State::Offered, until, 0));
            }
            return;
        }
        let expires = if lease == u32::MAX {
            u64::MAX
        } else {
            now + u64::from(lease)
        };
        // A new binding may be declined for a while (the client's duplicate address check).
        let probe_until = match bound {
            Some(e) => e.probe_until,
            None => now + u64::from(self.limits.decline_window_secs),
        };
        t.set(ip, entry(c, req.mac, State::Bound, expires, probe_until));
        let e = t.get(ip).expect("just set").clone();
        self.journal.append(&t.record(ip, &e));
    }

    /// The IA_NA of an answer that grants `ip`; on Renew and Rebind, the other addresses the
    /// client named go back with lifetimes 0 (RFC 8415 18.3.4: no longer valid).
    fn ia_granted(&self, req: &Req, ia: &IANA, ip: u128) -> IANA {
        let secs = self.scopes[req.si].lease_secs;
        let (t1, t2) = times(secs);
        let mut opts = DhcpOptions::new();
        let ip = Ipv6Addr::from(ip);
        opts.insert(ia_addr(ip, secs));
        if matches!(req.msg.msg_type(), MessageType::Renew | MessageType::Rebind) {
            for old in ia_addrs(ia).filter(|a| *a != ip) {
                opts.insert(ia_addr(old, 0));
            }
        }
        IANA {
            id: ia.id,
            t1,
            t2,
            opts,
        }
    }

    /// The IA_NA of an answer without an address. Renew: NoBinding (RFC 8415 18.3.4);
    /// Rebind: the client's addresses with lifetimes 0 (18.3.5); else NoAddrsAvail.
    fn ia_refused(&self, kind: MessageType, ia: &IANA, code: Status) -> IANA {
        let mut opts = DhcpOptions::new();
        match kind {
            MessageType::Renew => opts.insert(status(Status::NoBinding, "no binding")),
            MessageType::Rebind => {
                for old in ia_addrs(ia) {
                    opts.insert(ia_addr(old, 0));
                }
                opts.insert(status(code, "no addresses available"));
            }
            _ => opts.insert(status(code, "no addresses available")),
        }
        IANA {
            id: ia.id,
            t1: 0,
            t2: 0,
            opts,
        }
    }
}

fn entry(c: &Client, mac: Mac, state: State, expires: u64, probe_until: u64) -> Entry {
    Entry {
        duid: c.0.clone(),
        iaid: c.1,
        mac,
        state,
        expires,
        probe_until,
    }
}

/// Prefix delegation is not offered: every IA_PD is answered NoPrefixAvail.
pub(crate) fn iapd_refused(iaid: u32) -> IAPD {
    let mut opts = DhcpOptions::new();
    opts.insert(status(Status::NoPrefixAvail, "no prefix delegation here"));
    IAPD {
        id: iaid,
        t1: 0,
        t2: 0,
        opts,
    }
}
