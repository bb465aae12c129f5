//! The daemon's Prometheus metrics: `GET /metrics` on the API socket and, with
//! `--metrics-listen`, on a read-only TCP listener ([`serve`]).
//!
//! Two kinds of series. The daemon's own (applies, repairs, reverts, failures, durations,
//! drift) are counted where they happen and kept in [`DaemonMetrics`]. Everything about
//! ports and networks is read from the kernel (link statistics, qdisc statistics, nftables
//! counters) and from the DHCP server's and the DNS service's copies of their counters at
//! each scrape ([`collect`]):
//! nothing is counted twice, and a scrape costs a few dumps whatever the number of ports.
//! The families and their labels are listed in README, "Metrics".

mod collect;
mod format;
pub mod serve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::dhcp::ServerHandle;
use crate::nft::FirewallCounted;
use crate::spec::{PortKind, Spec};

pub use format::{Format, negotiate};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("encoding metrics: {0}")]
    Encode(#[from] std::fmt::Error),
}

/// Label sets: names are fixed words, values come from the spec or the kernel.
pub(crate) type Labels = Vec<(&'static str, String)>;

/// What a scrape needs to know of one port of the enforced spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PortInfo {
    pub network: String,
    pub vm: String,
    pub port: String,
    /// The interfaces the guard sees it on: the port and its trunk's sub-interfaces.
    pub guarded: Vec<String>,
    /// Shaped towards the VM (the port's root qdisc) and from it (its IFB's).
    pub shaped_in: bool,
    pub shaped_out: bool,
    /// Where the firewall counts the port's drops and rejects; `None` without a firewall.
    pub firewall: Option<FirewallCounted>,
}

/// The ports of `spec`, as a scrape labels them.
pub(crate) fn ports_of(spec: &Spec) -> Vec<PortInfo> {
    let mut firewalled = crate::nft::firewall_counted(spec);
    spec.vms
        .values()
        .flat_map(|vm| vm.ports.iter())
        .map(|p| {
            let guarded = if p.antispoof && p.kind != PortKind::Macvtap {
                std::iter::once(p.name.clone())
                    .chain(p.trunk.iter().map(|t| t.device.clone()))
                    .collect()
            } else {
                Vec::new()
            };
            let qos = p.qos.as_ref();
            PortInfo {
                network: p.network.clone(),
                vm: p.vm.clone(),
                port: p.name.clone(),
                guarded,
                shaped_in: qos.is_some_and(|q| q.inbound.is_some()),
                shaped_out: qos.is_some_and(|q| q.outbound.is_some()),
                firewall: firewalled.remove(p.own_interface()),
            }
        })
        .collect()
}

/// What failed, for `kvmnet_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Repair,
    Reload,
    Revert,
}

impl Operation {
    fn word(self) -> &'static str {
        match self {
            Operation::Apply => "apply",
            Operation::Repair => "repair",
            Operation::Reload => "reload",
            Operation::Revert => "revert",
        }
    }
}

/// The daemon's own counters, shared by the reconcile loop, the API and the listener. Every
/// update is an atomic add; no lock is held while the kernel is read.
pub struct DaemonMetrics {
    applies: Counter,
    repairs: Family<Labels, Counter>,
    reverts: Counter,
    failures: Family<Labels, Counter>,
    drift_events: Counter,
    apply_seconds: Histogram,
    reconcile_seconds: Histogram,
    /// Unix time of the last reconcile that left the host converged, in milliseconds (0:
    /// none yet).
    last_reconcile_ms: AtomicU64,
    started: Instant,
    /// The enforced spec's ports, replaced whole when the spec changes.
    ports: Mutex<Arc<Vec<PortInfo>>>,
    /// The DHCPv6 server, once the daemon has started it.
    dhcp6: Mutex<Option<crate::dhcp::v6::ServerHandle6>>,
}

impl Default for DaemonMetrics {
    fn default() -> Self {
        // 5 ms to about 20 s: one port's apply on an idle host to a 1,000-port first apply.
        let buckets = || Histogram::new(exponential_buckets(0.005, 2.0, 13));
        DaemonMetrics {
            applies: Counter::default(),
            repairs: Family::default(),
            reverts: Counter::default(),
            failures: Family::default(),
            drift_events: Counter::default(),
            apply_seconds: buckets(),
            reconcile_seconds: buckets(),
            last_reconcile_ms: AtomicU64::new(0),
            started: Instant::now(),
            ports: Mutex::new(Arc::new(Vec::new())),
            dhcp6: Mutex::new(None),
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl DaemonMetrics {
    /// The spec the daemon enforces from now on.
    pub fn set_spec(&self, spec: &Spec) {
        let ports = Arc::new(ports_of(spec));
        *self.ports.lock().expect("lock") = ports;
    }

    /// The DHCPv6 server whose counters scrapes include.
    pub fn set_dhcp6(&self, h: crate::dhcp::v6::ServerHandle6) {
        *self.dhcp6.lock().expect("lock") = Some(h);
    }

    /// A spec applied (at start, by reload, through the API), and how long it took.
    pub fn applied(&self, took: Duration) {
        self.applies.inc();
        self.apply_seconds.observe(took.as_secs_f64());
    }

    /// One reconcile: how long it took, the kinds of the objects it repaired (none: the
    /// host had not drifted), and whether it succeeded.
    pub fn reconciled<'a>(
        &self,
        took: Duration,
        repaired: impl Iterator<Item = &'a str>,
        ok: bool,
    ) {
        self.reconcile_seconds.observe(took.as_secs_f64());
        let mut drifted = false;
        for kind in repaired {
            drifted = true;
            self.repairs
                .get_or_create(&vec![("kind", kind.to_string())])
                .inc();
        }
        if drifted {
            self.drift_events.inc();
        }
        if ok {
            self.last_reconcile_ms.store(unix_ms(), Ordering::Relaxed);
        }
    }

    pub fn reverted(&self) {
        self.reverts.inc();
    }

    pub fn failed(&self, op: Operation) {
        self.failures
            .get_or_create(&vec![("operation", op.word().to_string())])
            .inc();
    }

    /// The registry of the daemon's own series.
    fn register(&self, r: &mut Registry) {
        r.register(
            "applies",
            "Specs applied by the daemon",
            self.applies.clone(),
        );
        r.register(
            "repairs",
            "Objects repaired after drift, by object kind",
            self.repairs.clone(),
        );
        r.register(
            "reverts",
            "Changes reverted because their confirmation did not come",
            self.reverts.clone(),
        );
        r.register(
            "failures",
            "Applies, repairs, reloads and reverts that failed, by operation",
            self.failures.clone(),
        );
        r.register(
            "drift_events",
            "Reconciles that found the host drifted from the spec",
            self.drift_events.clone(),
        );
        r.register_with_unit(
            "apply_duration",
            "Time to apply a spec",
            Unit::Seconds,
            self.apply_seconds.clone(),
        );
        r.register_with_unit(
            "reconcile_duration",
            "Time of one reconcile (plan, and repair when drifted)",
            Unit::Seconds,
            self.reconcile_seconds.clone(),
        );
        self.register_clock(r);
    }

    fn register_clock(&self, r: &mut Registry) {
        let last = self.last_reconcile_ms.load(Ordering::Relaxed);
        // Before the first successful reconcile: the time since the daemon started.
        let age = if last == 0 {
            self.started.elapsed().as_secs_f64()
        } else {
            unix_ms().saturating_sub(last) as f64 / 1000.0
        };
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(age);
        r.register_with_unit(
            "last_successful_reconcile_age",
            "Time since the last reconcile that left the host as the spec says",
            Unit::Seconds,
            g,
        );
        let ts = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        ts.set(last as f64 / 1000.0);
        r.register_with_unit(
            "last_successful_reconcile_timestamp",
            "Unix time of the last successful reconcile (0: none yet)",
            Unit::Seconds,
            ts,
        );
        let build: Family<Labels, Gauge> = Family::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
            .set(1);
        r.register("build_info", "kvmnet's version, as a label", build);
    }

    /// Every series, in `format`. The DHCP server's handle is cloned out of its lock first:
    /// the kernel is read with no lock of the daemon's held.
    pub fn scrape(
        &self,
        dhcp: &Mutex<Option<ServerHandle>>,
        dns: &Mutex<Option<crate::dns::ServerHandle>>,
        format: Format,
    ) -> Result<String, MetricsError> {
        let handle = dhcp.lock().expect("lock").clone();
        let dns = dns.lock().expect("lock").clone();
        Ok(format.write(self.render_with(handle.as_ref(), dns.as_ref())?))
    }

    /// Every series, as OpenMetrics text: the daemon's own, then what the kernel and the
    /// DHCP server count now.
    pub fn render(&self, dhcp: Option<&ServerHandle>) -> Result<String, MetricsError> {
        self.render_with(dhcp, None)
    }

    /// [`DaemonMetrics::render`], with the DNS service's counters too.
    pub fn render_with(
        &self,
        dhcp: Option<&ServerHandle>,
        dns: Option<&crate::dns::ServerHandle>,
    ) -> Result<String, MetricsError> {
        let mut r = Registry::with_prefix("kvmnet");
        self.register(&mut r);
        let ports = Arc::clone(&self.ports.lock().expect("lock"));
        collect::ports(&mut r, ports);
        if let Some(h) = dhcp {
            collect::dhcp(&mut r, h);
        }
        if let Some(h) = dns {
            collect::dns(&mut r, h);
        }
        let v6 = self.dhcp6.lock().expect("lock").clone();
        if let Some(h) = v6 {
            collect::dhcp6(&mut r, &h);
        }
        let mut out = String::with_capacity(64 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &r)?;
        Ok(out)
    }
}
