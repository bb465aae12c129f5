//! Rates as HTB takes them: bits per second turned into the kernel's bytes and scheduler
//! ticks, with the conversions iproute2 derives from /proc/net/psched.

use super::{DEFAULT_BURST_MS, HTB_R2Q, TcError};

/// iproute2's default MTU for rate tables and burst.
pub(super) const RTAB_MTU: u32 = 1600;
/// iproute2's default `HZ` when /proc/net/psched says nothing useful.
const DEFAULT_HZ: u64 = 100;

/// A shaping rate. Bits per second, as operators write them ("100mbit"); the kernel keeps
/// bytes per second, so rates are truncated to a multiple of 8 bits.
///
/// `burst`/`cburst` default to [`DEFAULT_BURST_MS`] worth of the rate (at least what `tc`
/// would choose). `tc`'s own default on a high-resolution-timer kernel is 1600 bytes, one
/// packet: whenever HTB's watchdog fires late (a busy CPU) the tokens it could not store are
/// lost, and a loaded 2-core machine measured 2-8% under the rate at 100 Mbit/s; with 4 ms the
/// rate held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub bits_per_sec: u64,
    /// Ceiling (may borrow up to); defaults to `bits_per_sec`. With one class per device
    /// there is nothing to borrow from, so the effective rate is `bits_per_sec`.
    pub ceil_bits_per_sec: Option<u64>,
    pub burst_bytes: Option<u32>,
    pub cburst_bytes: Option<u32>,
}

impl Rate {
    pub fn bits(bits_per_sec: u64) -> Rate {
        Rate {
            bits_per_sec,
            ceil_bits_per_sec: None,
            burst_bytes: None,
            cburst_bytes: None,
        }
    }

    pub fn mbit(m: u64) -> Rate {
        Rate::bits(m * 1_000_000)
    }

    /// The exact HTB class parameters the kernel will report for this rate.
    pub fn htb_params(&self, clock: &Psched) -> Result<HtbParams, TcError> {
        let invalid = |reason: String| TcError::Invalid {
            what: format!("rate {} bit/s", self.bits_per_sec),
            reason,
        };
        let rate = self.bits_per_sec / 8;
        let ceil = self.ceil_bits_per_sec.unwrap_or(self.bits_per_sec) / 8;
        if rate == 0 {
            return Err(invalid("must be at least 8 bit/s".into()));
        }
        if ceil < rate {
            return Err(invalid(format!(
                "ceil {} bit/s is below the rate",
                ceil * 8
            )));
        }
        let default = |r: u64| {
            let ms = (r * DEFAULT_BURST_MS / 1000).min(u64::from(u32::MAX)) as u32;
            ms.max(clock.default_burst(r))
        };
        let burst = self.burst_bytes.unwrap_or_else(|| default(rate));
        let cburst = self.cburst_bytes.unwrap_or_else(|| default(ceil));
        let ticks = |r: u64, size: u32, what: &str| {
            clock
                .xmittime(r, size)
                .ok_or_else(|| invalid(format!("{what} of {size} bytes is too large")))
        };
        Ok(HtbParams {
            rate,
            ceil,
            buffer: ticks(rate, burst, "burst")?,
            cbuffer: ticks(ceil, cburst, "cburst")?,
            // What the kernel derives when given none (rate / r2q, kept to 1000..200000),
            // sent explicitly so it does not warn about "big" quanta at high rates.
            quantum: (rate / u64::from(HTB_R2Q)).clamp(1000, 200_000) as u32,
            prio: 0,
        })
    }
}

// ---- the scheduler clock (/proc/net/psched), as iproute2 reads it ----

/// The conversion factors iproute2's `tc_core_init` and `get_hz` derive from
/// /proc/net/psched. Kept in [`TcObserved`] so [`plan`] stays pure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Psched {
    /// Scheduler ticks per microsecond (15.625 on current kernels: a tick is 64 ns).
    pub tick_in_usec: f64,
    /// The `HZ` iproute2 uses for default bursts (1e9 with high-resolution timers).
    pub hz: u64,
}

impl Default for Psched {
    fn default() -> Psched {
        Psched {
            tick_in_usec: 1000.0 / 64.0,
            hz: 1_000_000_000,
        }
    }
}

impl Psched {
    /// Parse the contents of /proc/net/psched.
    pub fn parse(s: &str) -> Option<Psched> {
        let v: Vec<u32> = s
            .split_whitespace()
            .map(|w| u32::from_str_radix(w, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        if v.len() < 3 || v[1] == 0 {
            return None;
        }
        let (mut t2us, us2t, clock_res) = (v[0], v[1], v[2]);
        // iproute2's compatibility hack for nanosecond clocks.
        if clock_res == 1_000_000_000 {
            t2us = us2t;
        }
        let clock_factor = f64::from(clock_res) / 1e6;
        let hz = match v.get(3) {
            Some(&d) if v[2] == 1_000_000 && d != 0 => u64::from(d),
            _ => DEFAULT_HZ,
        };
        Some(Psched {
            tick_in_usec: f64::from(t2us) / f64::from(us2t) * clock_factor,
            hz,
        })
    }

    pub fn read() -> Psched {
        std::fs::read_to_string("/proc/net/psched")
            .ok()
            .and_then(|s| Psched::parse(&s))
            .unwrap_or_default()
    }

    /// iproute2's `tc_calc_xmittime`: ticks to send `size` bytes at `rate` bytes/s (whole
    /// microseconds first, as it does). None if it does not fit the kernel's u32.
    pub fn xmittime(&self, rate: u64, size: u32) -> Option<u32> {
        let usec = (1e6 * (f64::from(size) / rate as f64)).min(f64::from(u32::MAX)) as u32;
        let ticks = f64::from(usec) * self.tick_in_usec;
        (ticks <= f64::from(u32::MAX)).then_some(ticks as u32)
    }

    /// iproute2's `tc_calc_xmitsize`: bytes sent in `ticks` at `rate` bytes/s.
    pub fn xmitsize(&self, rate: u64, ticks: u32) -> u64 {
        (rate as f64 * (f64::from(ticks) / self.tick_in_usec) / 1e6) as u64
    }

    /// iproute2's default HTB burst: rate / HZ + MTU.
    pub fn default_burst(&self, rate: u64) -> u32 {
        (rate / self.hz.max(1) + u64::from(RTAB_MTU)).min(u64::from(u32::MAX)) as u32
    }
}

// ---- what the kernel has ----

/// HTB class parameters in the kernel's units: rates in bytes/s, buffers in scheduler ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HtbParams {
    pub rate: u64,
    pub ceil: u64,
    pub buffer: u32,
    pub cbuffer: u32,
    pub quantum: u32,
    pub prio: u32,
}
