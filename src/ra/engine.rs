//! When to advertise (RFC 4861 6.2.4 and 6.2.6), without I/O: time and randomness are passed
//! in, so every rule is a unit test.
//!
//! - Unsolicited RAs every random interval between MinRtrAdvInterval and MaxRtrAdvInterval;
//!   the first [`MAX_INITIAL_RTR_ADVERTISEMENTS`] at most [`MAX_INITIAL_RTR_ADVERT_INTERVAL`]
//!   apart, so a guest that boots with the network learns it quickly.
//! - A router solicitation is answered after a random delay of up to [`MAX_RA_DELAY_TIME`],
//!   never sooner than [`MIN_DELAY_BETWEEN_RAS`] after the last multicast RA, and not at all
//!   when an RA is due before that anyway: a flood of RSes yields one RA per 3 s.

use std::time::{Duration, Instant};

pub const MAX_INITIAL_RTR_ADVERT_INTERVAL: Duration = Duration::from_secs(16);
pub const MAX_INITIAL_RTR_ADVERTISEMENTS: u8 = 3;
pub const MIN_DELAY_BETWEEN_RAS: Duration = Duration::from_secs(3);
pub const MAX_RA_DELAY_TIME: Duration = Duration::from_millis(500);

/// MaxRtrAdvInterval and MinRtrAdvInterval for a router lifetime (RFC 4861 6.2.1: the
/// lifetime is at least MaxRtrAdvInterval; radvd's defaults make it three times that).
pub fn intervals(router_lifetime_secs: u32) -> (Duration, Duration) {
    let max = if router_lifetime_secs == 0 {
        600
    } else {
        (router_lifetime_secs / 3).clamp(4, 600)
    };
    let min = (max / 3).max(3);
    (
        Duration::from_secs(u64::from(min)),
        Duration::from_secs(u64::from(max)),
    )
}

/// The advertising schedule of one interface.
#[derive(Clone, Debug)]
pub struct Schedule {
    min: Duration,
    max: Duration,
    /// Initial advertisements still to send at the short interval.
    initial_left: u8,
    /// When the next RA goes out (unsolicited, or an answer to an RS).
    next: Instant,
    last_sent: Option<Instant>,
    /// RSes received and ignored because an RA was due soon enough anyway.
    pub solicitations_merged: u64,
}

impl Schedule {
    /// A schedule whose first RA is due at once.
    pub fn new(now: Instant, router_lifetime_secs: u32) -> Schedule {
        let (min, max) = intervals(router_lifetime_secs);
        Schedule {
            min,
            max,
            initial_left: MAX_INITIAL_RTR_ADVERTISEMENTS,
            next: now,
            last_sent: None,
            solicitations_merged: 0,
        }
    }

    /// When the next RA is due.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Whether an RA is due at `now`; if so it counts as sent, and the next one is
    /// scheduled with `rand` (uniform in [0, 1)) choosing the interval.
    pub fn poll(&mut self, now: Instant, rand: f64) -> bool {
        if now < self.next {
            return false;
        }
        self.last_sent = Some(now);
        let mut interval = self.min + (self.max - self.min).mul_f64(rand.clamp(0.0, 1.0));
        if self.initial_left > 0 {
            self.initial_left -= 1;
            interval = interval.min(MAX_INITIAL_RTR_ADVERT_INTERVAL);
        }
        self.next = now + interval;
        true
    }

    /// A valid router solicitation arrived at `now`; `rand` in [0, 1) picks the delay.
    pub fn solicited(&mut self, now: Instant, rand: f64) {
        let mut at = now + MAX_RA_DELAY_TIME.mul_f64(rand.clamp(0.0, 1.0));
        if let Some(last) = self.last_sent {
            at = at.max(last + MIN_DELAY_BETWEEN_RAS);
        }
        if self.next <= at {
            self.solicitations_merged += 1;
        } else {
            self.next = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn intervals_follow_the_lifetime_within_rfc_bounds() {
        assert_eq!(intervals(1800), (200 * S, 600 * S));
        assert_eq!(intervals(30), (3 * S, 10 * S));
        assert_eq!(intervals(12), (3 * S, 4 * S));
        assert_eq!(intervals(9000), (200 * S, 600 * S));
        assert_eq!(intervals(0), (200 * S, 600 * S));
        for l in [12, 13, 60, 600, 1800, 9000] {
            let (min, max) = intervals(l);
            assert!(max.as_secs() >= 4 && max.as_secs() <= 1800, "{l}");
            assert!(min.as_secs() >= 3 && min <= max.mul_f64(0.75), "{l}");
            assert!(
                u64::from(l) >= max.as_secs(),
                "lifetime {l} below MaxRtrAdvInterval"
            );
        }
    }

    #[test]
    fn first_ra_at_once_then_three_fast_then_slow() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1800);
        assert!(s.poll(t0, 0.99));
        // Initial ones: at most 16 s apart even though the interval would be ~600 s.
        assert_eq!(s.due(), t0 + 16 * S);
        let t1 = s.due();
        assert!(!s.poll(t1 - Duration::from_millis(1), 0.5));
        assert!(s.poll(t1, 0.99));
        let t2 = s.due();
        assert_eq!(t2, t1 + 16 * S);
        assert!(s.poll(t2, 0.99));
        // The initial ones are spent: now between Min (200 s) and Max (600 s).
        let t3 = s.due();
        assert!(s.poll(t3, 0.0));
        assert_eq!(s.due(), t3 + 200 * S);
        let t4 = s.due();
        assert!(s.poll(t4, 0.5));
        assert_eq!(s.due(), t4 + 400 * S);
    }

    #[test]
    fn a_solicitation_is_answered_within_half_a_second() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1800);
        for _ in 0..4 {
            let t = s.due();
            s.poll(t, 0.5);
        }
        let now = s.due() - 100 * S;
        s.solicited(now, 0.5);
        assert_eq!(s.due(), now + Duration::from_millis(250));
    }

    #[test]
    fn answers_are_rate_limited_to_one_per_three_seconds() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1800);
        for _ in 0..4 {
            let t = s.due();
            s.poll(t, 0.5);
        }
        let sent = s.due() - 300 * S;
        s.solicited(sent, 0.0);
        assert!(s.poll(sent, 0.5));
        // A burst of RSes right after: one answer, 3 s after the last RA.
        let mut answers = 0;
        let mut now = sent;
        for i in 0..100 {
            now = sent + Duration::from_millis(10 * i);
            s.solicited(now, 0.0);
            if s.poll(now, 0.5) {
                answers += 1;
            }
        }
        assert_eq!(answers, 0);
        assert_eq!(s.due(), sent + MIN_DELAY_BETWEEN_RAS);
        assert!(s.solicitations_merged >= 98);
        assert!(s.poll(sent + MIN_DELAY_BETWEEN_RAS, 0.5));
        let _ = now;
    }

    #[test]
    fn a_solicitation_never_delays_an_ra_already_due() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1800);
        s.poll(t0, 0.5);
        let due = s.due();
        s.solicited(due - Duration::from_millis(100), 0.99);
        assert_eq!(s.due(), due);
    }
}
