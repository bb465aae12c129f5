//! `kvmnet bench`: the data-path methodology of BENCHMARKS.md, built in.
//!
//! Contract: bench measures between two ports' far ends (veth namespaces): TCP throughput
//! with 1 and 4 streams, UDP loss at stepped rates and request/response latency percentiles.
//! Without `--between` it adds throwaway ports to the spec in force ([`ports::Throwaway`]),
//! two with a typical policy and two without, and puts the spec in force back afterwards,
//! on errors and signals too: the host ends as it began and nothing is recorded as applied.
//! Measurements run in rounds, configurations alternating within each (A B, then B A), until
//! every figure's interquartile range is within 10 % of its median (1 point for loss) or the
//! round limit is reached; the report gives median and interquartile range per figure.
//!
//! Layout: `ports` (which ports, and making and removing throwaway ones), `measure` (one
//! run: iperf3 or kvmnet's own sender, the latency loop), `stats` (pure), `report` (text
//! and JSON) and `plot` (SVG).

pub mod lease;
pub mod measure;
pub mod plot;
pub mod ports;
pub mod report;
pub mod stats;

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use measure::{Endpoint, MeasureError, Test, Tool};
use ports::PortsError;

use crate::engine::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Ports(#[from] PortsError),
    #[error("{0}")]
    Measure(#[from] MeasureError),
    #[error(transparent)]
    Plot(#[from] plot::PlotError),
    #[error("--duration must be 1 to 60 seconds")]
    Duration,
}

impl BenchError {
    /// The kind the command's exit status and JSON error follow.
    pub fn kind(&self) -> ErrorKind {
        use PortsError as P;
        match self {
            BenchError::Ports(P::Engine(e)) => e.kind(),
            BenchError::Ports(P::Daemon(e)) => match e.as_ref() {
                crate::daemon::api::ApiError::Status { kind: Some(k), .. } => *k,
                _ => ErrorKind::Daemon,
            },
            BenchError::Ports(P::Pending) => ErrorKind::Busy,
            BenchError::Ports(P::DaemonGone | P::Lost) => ErrorKind::Daemon,
            BenchError::Ports(P::Drift(_)) => ErrorKind::Conflict,
            BenchError::Ports(P::Restore(_) | P::Yaml(_)) => ErrorKind::Host,
            BenchError::Ports(_) | BenchError::Duration => ErrorKind::Usage,
            BenchError::Measure(_) | BenchError::Plot(_) => ErrorKind::Host,
        }
    }
}

/// What `kvmnet bench` was asked.
pub struct Options {
    pub network: Option<String>,
    pub between: Option<(String, String)>,
    pub quick: bool,
    pub duration: Option<u32>,
    pub json: bool,
    pub svg: Option<PathBuf>,
}

/// How much to measure.
pub struct Knobs {
    /// Seconds per bulk run.
    pub secs: u32,
    pub udp_rates: Vec<u64>,
    /// Round trips of the latency loop per run.
    pub round_trips: usize,
    pub min_rounds: usize,
    pub max_rounds: usize,
}

/// Relative spread (IQR / median) under which a figure has settled; loss, which sits near
/// zero, settles at an IQR of one percentage point.
pub const SETTLED: f64 = 0.10;
pub const SETTLED_LOSS_POINTS: f64 = 1.0;

impl Knobs {
    /// The default run takes 40 to 65 s with two configurations (3 to 5 rounds of about 13 s);
    /// `--quick` about 25 s.
    pub fn new(quick: bool, duration: Option<u32>) -> Result<Knobs, BenchError> {
        let secs = duration.unwrap_or(1);
        if !(1..=60).contains(&secs) {
            return Err(BenchError::Duration);
        }
        const M: u64 = 1_000_000;
        Ok(match quick {
            true => Knobs {
                secs,
                udp_rates: vec![100 * M, 1000 * M],
                round_trips: 2000,
                min_rounds: 3,
                max_rounds: 3,
            },
            false => Knobs {
                secs,
                udp_rates: vec![100 * M, 500 * M, 1000 * M, 2000 * M],
                round_trips: 10_000,
                min_rounds: 3,
                max_rounds: 5,
            },
        })
    }

    /// What one round runs for each configuration.
    fn metrics(&self) -> Vec<Metric> {
        let mut v = vec![Metric::Bulk(Test::Tcp(1)), Metric::Bulk(Test::Tcp(4))];
        v.extend(self.udp_rates.iter().map(|&r| Metric::Bulk(Test::Udp(r))));
        v.push(Metric::Latency);
        v
    }
}

#[derive(Clone, Copy, Debug)]
enum Metric {
    Bulk(Test),
    Latency,
}

/// One measured figure of one configuration, one sample per round.
#[derive(Clone, Debug)]
pub struct Figure {
    /// JSON key: tcp_1_stream, udp_loss_1G, latency_p99_9...
    pub key: String,
    /// Text label: "TCP, 1 stream", "UDP loss at 1G", "latency p99.9".
    pub label: String,
    pub unit: &'static str,
    pub samples: Vec<f64>,
}

/// A pair of ports measured, and what was measured on it.
pub struct Config {
    pub name: String,
    /// What policy the ports carry, in words.
    pub policy: String,
    pub client: Endpoint,
    pub server: Endpoint,
    pub figures: Vec<Figure>,
    /// Every round trip of the latency loop (µs), all rounds: the distribution drawn.
    pub rtts: Vec<f64>,
}

impl Config {
    fn new(name: &str, policy: &str, (client, server): (Endpoint, Endpoint)) -> Config {
        Config {
            name: name.into(),
            policy: policy.into(),
            client,
            server,
            figures: Vec::new(),
            rtts: Vec::new(),
        }
    }

    fn push(&mut self, key: String, label: String, unit: &'static str, value: f64) {
        match self.figures.iter_mut().find(|f| f.key == key) {
            Some(f) => f.samples.push(value),
            None => self.figures.push(Figure {
                key,
                label,
                unit,
                samples: vec![value],
            }),
        }
    }

    fn settled(&self) -> bool {
        self.figures.iter().all(|f| {
            let abs = if f.unit == "%" {
                SETTLED_LOSS_POINTS
            } else {
                0.0
            };
            stats::settled(&f.samples, SETTLED, abs)
        })
    }
}

/// A whole bench: what was measured with, where, and the figures.
pub struct Bench {
    pub tool: Tool,
    /// The network of throwaway ports (`None` with `--between`).
    pub network: Option<String>,
    pub rounds: usize,
    pub settled: bool,
    pub secs: u32,
    pub round_trips: usize,
    pub configs: Vec<Config>,
}

/// What the report says the "without policy" ports carry.
const NO_POLICY: &str = "none (antispoof: false, no firewall)";

/// Runs `kvmnet bench` in `scope` (the process is in its namespace already).
pub fn run(scope: &str, opts: &Options) -> Result<(), BenchError> {
    let knobs = Knobs::new(opts.quick, opts.duration)?;
    let tool = Tool::detect();
    install_signal_handlers();
    let bench = match &opts.between {
        Some((a, b)) => {
            let (spec, _, _) = ports::in_force(scope)?;
            let ends = ports::between(&spec, a, b)?;
            let configs = vec![Config::new(
                &format!("{a} to {b}"),
                "as the spec in force has it",
                ends,
            )];
            measure_all(tool, None, configs, &knobs, opts.json)?
        }
        None => {
            let t = ports::Throwaway::make(scope, opts.network.as_deref())?;
            let configs = vec![
                Config::new("with policy", ports::POLICY_WORDS, t.with_policy.clone()),
                Config::new("without policy", NO_POLICY, t.without_policy.clone()),
            ];
            let network = Some(t.network.clone());
            // Measured first, restored second: an error measuring restores on drop.
            let bench = measure_all(tool, network, configs, &knobs, opts.json);
            // Ports a daemon dropped explain a failed measurement better than its symptom.
            t.check()?;
            let bench = bench?;
            t.restore()?;
            bench
        }
    };
    if let Some(path) = &opts.svg {
        plot::write(&bench, path)?;
    }
    match opts.json {
        true => println!("{}", report::json(&bench)),
        false => print!("{}", report::text(&bench)),
    }
    Ok(())
}

/// Rounds of every metric on every configuration until all figures settle or the limit.
fn measure_all(
    tool: Tool,
    network: Option<String>,
    mut configs: Vec<Config>,
    knobs: &Knobs,
    json: bool,
) -> Result<Bench, BenchError> {
    let metrics = knobs.metrics();
    let per_round = (metrics.len() * configs.len()) as u64;
    let bar = progress(json, per_round * knobs.min_rounds as u64);
    let mut servers = measure::Servers::default();
    if matches!(tool, Tool::Iperf3(_)) {
        for c in &configs {
            servers.start(&c.server)?;
        }
    }
    let mut rounds = 0;
    let mut settled = false;
    while rounds < knobs.max_rounds && !(rounds >= knobs.min_rounds && settled) {
        if rounds >= knobs.min_rounds {
            bar.inc_length(per_round);
        }
        // A then B in even rounds, B then A in odd ones, so neither always goes first.
        let order: Vec<usize> = match rounds % 2 {
            0 => (0..configs.len()).collect(),
            _ => (0..configs.len()).rev().collect(),
        };
        for m in &metrics {
            for &i in &order {
                bar.set_message(format!(
                    "round {} · {} · {}",
                    rounds + 1,
                    configs[i].name,
                    metric_words(*m)
                ));
                run_one(&tool, *m, &mut configs[i], knobs)?;
                bar.inc(1);
            }
        }
        rounds += 1;
        settled = configs.iter().all(Config::settled);
    }
    bar.finish_and_clear();
    drop(servers);
    Ok(Bench {
        tool,
        network,
        rounds,
        settled,
        secs: knobs.secs,
        round_trips: knobs.round_trips,
        configs,
    })
}

fn metric_words(m: Metric) -> String {
    match m {
        Metric::Bulk(Test::Tcp(1)) => "TCP, 1 stream".into(),
        Metric::Bulk(Test::Tcp(n)) => format!("TCP, {n} streams"),
        Metric::Bulk(Test::Udp(r)) => format!("UDP loss at {}", measure::rate_name(r)),
        Metric::Latency => "latency".into(),
    }
}

/// One run of `m` on `c`, its figures added to `c`.
fn run_one(tool: &Tool, m: Metric, c: &mut Config, knobs: &Knobs) -> Result<(), BenchError> {
    match m {
        Metric::Bulk(t) => {
            let v = measure::bulk(tool, t, &c.client, &c.server, knobs.secs)?;
            let (key, unit) = match t {
                Test::Tcp(1) => ("tcp_1_stream".to_string(), "Gbit/s"),
                Test::Tcp(n) => (format!("tcp_{n}_streams"), "Gbit/s"),
                Test::Udp(r) => (format!("udp_loss_{}", measure::rate_name(r)), "%"),
            };
            c.push(key, metric_words(m), unit, v);
        }
        Metric::Latency => {
            let rtts = measure::latency(&c.client, &c.server, knobs.round_trips)?;
            let p = stats::percentiles(&rtts, &[50.0, 99.0, 99.9]);
            for ((key, label), v) in [
                ("latency_p50", "latency p50"),
                ("latency_p99", "latency p99"),
                ("latency_p99_9", "latency p99.9"),
            ]
            .into_iter()
            .zip(p)
            {
                c.push(key.into(), label.into(), "µs", v);
            }
            c.rtts.extend(rtts);
        }
    }
    Ok(())
}

/// A progress bar on stderr when both stdout and stderr are terminals and the output is
/// text; hidden otherwise (a hidden bar ignores every update).
fn progress(json: bool, len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if json || !std::io::stdout().is_terminal() || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do here.
    measure::STOP.store(true, Ordering::Relaxed);
}

/// SIGINT, SIGTERM and SIGHUP stop the measurements instead of killing bench, so the
/// throwaway ports are removed before it exits.
fn install_signal_handlers() {
    for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(s, &sa, std::ptr::null_mut());
        }
    }
}
