//! Rate allowances: token buckets per client MAC, per bridge (direct and relayed apart) and
//! per network for the low-pool admission rate. How they combine, and why, is in the module
//! docs ("Allowances"). Time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

use super::{Limits, ServerStats};
use crate::spec::Mac;

pub(crate) struct Bucket {
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

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + refill).min(burst);
        self.last = now;
    }

    /// Whether the bucket has refilled by `now` (it would start full anyway).
    pub(crate) fn is_full(&self, now: Instant, rate: f64, burst: f64) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }

    /// Take a token if more than `floor` would be left.
    fn take_above(&mut self, now: Instant, rate: f64, burst: f64, floor: f64) -> bool {
        self.refill(now, rate, burst);
        if self.tokens >= floor + 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Token bucket per key; a rate that is not finite means no limit.
pub(crate) fn take<K: Hash + Eq>(
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
            .take_above(now, rate, burst, 0.0)
}

/// Forget buckets that have refilled: they would start full anyway.
fn prune<K>(map: &mut HashMap<K, Bucket>, now: Instant, rate: f64, burst: f64) {
    map.retain(|_, b| {
        b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < burst
    });
}

/// The bucket of `key`, made full on first use. Looked up by `&str`: no allocation per
/// packet once it exists.
fn shared<'a>(
    map: &'a mut HashMap<String, Bucket>,
    key: &str,
    now: Instant,
    burst: f64,
) -> &'a mut Bucket {
    if !map.contains_key(key) {
        map.insert(key.to_string(), Bucket::full(burst, now));
    }
    map.get_mut(key).expect("just inserted")
}

/// Where a message comes from, as far as allowances go.
pub(crate) struct Sender<'a> {
    /// The bridge it came in on.
    pub bridge: &'a str,
    pub relayed: bool,
    /// Its `chaddr`.
    pub mac: Mac,
    /// The MAC has a reservation on this network.
    pub reserved: bool,
}

#[derive(Default)]
pub(crate) struct Allowances {
    mac: HashMap<Mac, Bucket>,
    /// Per bridge, for messages sent on it directly.
    bridge: HashMap<String, Bucket>,
    /// Per bridge, for relayed messages, whatever their relay address: the sender can
    /// rotate `giaddr` and, on a port without anti-spoofing, its IP source, but not the
    /// bridge it sends on.
    relay: HashMap<String, Bucket>,
    /// Per network: the low-pool admission rate.
    pub low_pool: HashMap<String, Bucket>,
}

impl Allowances {
    /// Whether a message from `from` is served now; counts a drop in `stats`.
    pub fn admit(
        &mut self,
        limits: &Limits,
        stats: &mut ServerStats,
        from: &Sender<'_>,
        now: Instant,
    ) -> bool {
        let Sender {
            bridge,
            relayed,
            mac,
            reserved,
        } = *from;
        let (rate, burst) = (limits.per_interface_rate, limits.per_interface_burst);
        let map = if relayed {
            &mut self.relay
        } else {
            &mut self.bridge
        };
        let shared = rate.is_finite().then(|| shared(map, bridge, now, burst));
        // A pool MAC is charged to the shared allowance in any case: see whether it has a
        // token before a bucket is made for a MAC that may be invented.
        if let Some(b) = &shared
            && !reserved
            && b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate < 1.0
        {
            stats.dropped_rate_interface += 1;
            return false;
        }
        let own = take(
            &mut self.mac,
            mac,
            now,
            limits.per_mac_rate,
            limits.per_mac_burst,
        );
        let Some(shared) = shared else {
            return true;
        };
        if own && reserved {
            return true;
        }
        // Over its own allowance a MAC may use only the top half of the shared one.
        let floor = if own { 0.0 } else { burst / 2.0 };
        if shared.take_above(now, rate, burst, floor) {
            return true;
        }
        if own {
            stats.dropped_rate_interface += 1;
        } else {
            stats.dropped_rate_mac += 1;
        }
        false
    }

    /// Forget idle buckets.
    pub fn prune(&mut self, limits: &Limits, now: Instant) {
        let l = limits;
        prune(&mut self.mac, now, l.per_mac_rate, l.per_mac_burst);
        for m in [&mut self.bridge, &mut self.relay] {
            prune(m, now, l.per_interface_rate, l.per_interface_burst);
        }
        let admit = l.low_pool_admit_rate;
        prune(&mut self.low_pool, now, admit, admit.max(1.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            per_mac_rate: 1.0,
            per_mac_burst: 4.0,
            per_interface_rate: 1.0,
            per_interface_burst: 20.0,
            ..Limits::default()
        }
    }

    fn from(mac: u8, relayed: bool, reserved: bool) -> Sender<'static> {
        Sender {
            bridge: "br0",
            relayed,
            mac: Mac([2, 0, 0, 0, 0, mac]),
            reserved,
        }
    }

    fn served(
        a: &mut Allowances,
        l: &Limits,
        mac: u8,
        reserved: bool,
        n: usize,
        t: Instant,
    ) -> usize {
        let mut st = ServerStats::default();
        let s = from(mac, false, reserved);
        (0..n).filter(|_| a.admit(l, &mut st, &s, t)).count()
    }

    /// Someone sending in a reserved client's name spends its own allowance, then the top
    /// half of the shared one; the client itself is still served from the rest.
    #[test]
    fn a_forger_cannot_spend_a_reserved_clients_allowance() {
        let (mut a, l, t) = (Allowances::default(), limits(), Instant::now());
        assert_eq!(served(&mut a, &l, 9, true, 100, t), 4 + 10);
        assert_eq!(
            served(&mut a, &l, 9, true, 1, t),
            0,
            "only the lower half is left"
        );
        // The lower half still serves pool clients within their own allowances: a hog took
        // at most half.
        let n: usize = (21..=30).map(|m| served(&mut a, &l, m, false, 1, t)).sum();
        assert_eq!(n, 10);
        assert_eq!(
            served(&mut a, &l, 31, false, 1, t),
            0,
            "shared allowance used up"
        );
        // A second later the reserved client has one token of its own again.
        let t = t + Duration::from_secs(1);
        assert_eq!(served(&mut a, &l, 9, true, 1, t), 1);
    }

    /// A pool client whose allowance a forger spent is still served while the bridge is
    /// not flooded.
    #[test]
    fn a_forger_cannot_lock_out_a_pool_client() {
        let (mut a, l, t) = (Allowances::default(), limits(), Instant::now());
        assert_eq!(served(&mut a, &l, 1, false, 6, t), 6, "4 own + 2 over");
        assert_eq!(
            served(&mut a, &l, 1, false, 1, t),
            1,
            "the victim's own request"
        );
        // Unlimited rates limit nothing.
        let free = Limits {
            per_mac_rate: f64::INFINITY,
            per_interface_rate: f64::INFINITY,
            ..l
        };
        assert_eq!(served(&mut a, &free, 1, false, 1000, t), 1000);
    }

    /// Relayed messages draw on the bridge's relay allowance, whatever their relay address.
    #[test]
    fn relayed_messages_share_one_allowance_per_bridge() {
        let (mut a, l, t) = (Allowances::default(), limits(), Instant::now());
        let mut st = ServerStats::default();
        let n = (0..100u8)
            .filter(|&i| a.admit(&l, &mut st, &from(i, true, false), t))
            .count();
        assert_eq!(n, 20);
        assert_eq!(st.dropped_rate_interface, 80);
        // Direct messages have their own.
        assert_eq!(served(&mut a, &l, 200, false, 1, t), 1);
    }
}
