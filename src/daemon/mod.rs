//! `kvmnet daemon`: applies the spec at start, keeps the host converged (drift is repaired
//! within a reconcile interval and each repair is logged), re-applies on SIGHUP or an API
//! request, reverts unconfirmed changes when their time is up, and serves the local API.
//! Stopping the daemon leaves the networking in place: VMs keep working.
//!
//! Every spec it enforces is written to the state directory before it is applied
//! ([`accepted`]), so that a restart or a reload never undoes what was applied through it.

pub mod accepted;
pub mod api;
mod apply_request;
mod debug_watch;
mod dhcp6;
pub mod ephemeral;
pub mod http;
mod pending;
mod services;
mod start;
mod systemd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::dhcp;
use crate::dns;
use crate::engine::{self, EngineError};
use crate::error::observe_kind;
use crate::log::Level;
use crate::metrics::{DaemonMetrics, Format, Operation};
use crate::observe::Observer;
use crate::spec::Spec;
use crate::statedir::StateDir;
use crate::status;
use crate::watch::Watch;
use accepted::{Accepted, Origin};
use apply_request::apply_request;
use debug_watch::watch_check;
use pending::{pending_at_start, refuse_while_pending, revert_due};
use services::{dhcp_thread, dns_thread, lease_source};
use start::{freeing_thread, host_identity, open_watch, private_state_dir, start_spec};
use systemd::{notify, watchdog_interval};

/// The spec the daemon enforces now, and its record in the state directory.
struct Active {
    spec: Spec,
    accepted: Accepted,
    /// Ephemeral VMs in force: then `spec` is the accepted spec with them added, and the
    /// lease holds the accepted spec's own parsed form.
    lease: Option<ephemeral::Lease>,
}

struct Shared {
    scope: String,
    spec_path: std::path::PathBuf,
    /// `spec_path` as accepted specs record it (absolute, when it can be made so).
    spec_file: String,
    state_dir: StateDir,
    /// Always locked before the scope's state directory (plans take that lock).
    active: Mutex<Active>,
    stop: AtomicBool,
    reload: AtomicBool,
    /// DHCP scopes waiting for the DHCP thread, which `dhcp_kick` wakes.
    dhcp_pending: Mutex<Option<Vec<dhcp::Scope>>>,
    dhcp_kick: AtomicBool,
    dhcp: Mutex<Option<dhcp::ServerHandle>>,
    /// The DHCPv6 server's thread, scopes and handle.
    v6: dhcp6::V6,
    /// Router advertisements on the bridges of networks with `ipv6`, once started.
    ra: Mutex<Option<crate::ra::Service>>,
    /// DNS zones waiting for the DNS thread, which `dns_kick` wakes.
    dns_pending: Mutex<Option<Vec<dns::Zone>>>,
    dns_kick: AtomicBool,
    dns: Mutex<Option<dns::ServerHandle>>,
    /// What the host holds, kept current by the kernel's notifications; `None` if the
    /// subscription failed (then every plan reads the host whole).
    watch: Mutex<Option<Watch>>,
    /// Specs parsed before: a new one is parsed only where its VM entries differ.
    specs: Mutex<crate::spec::SpecCache>,
    /// Hashes the specs sent for the audit log, on from where the last one's start was.
    hasher: Mutex<engine::SpecHasher>,
    /// This host's identity for derived MACs, read at start.
    identity: crate::spec::HostIdentity,
    /// The OVN chassis this host is (`--chassis`, the recorded one, else as the spec
    /// settles it), settled into every spec enforced.
    chassis: String,
    /// Big values done with (a replaced spec, a finished plan), freed by a thread of their
    /// own: freeing a 1,000-port spec and what was planned from it takes milliseconds that
    /// an API client need not wait for.
    retired: Mutex<std::sync::mpsc::Sender<Box<dyn Send>>>,
    metrics: DaemonMetrics,
}

impl Active {
    /// The accepted spec enforced as it is, without ephemeral VMs.
    fn new(spec: Spec, accepted: Accepted) -> Active {
        Active {
            spec,
            accepted,
            lease: None,
        }
    }
}

impl Shared {
    /// `spec` with this host's chassis settled (specs with OVN networks only).
    fn settled(&self, mut spec: Spec) -> Spec {
        engine::settle_chassis(&mut spec, Some(&self.chassis));
        spec
    }

    /// Enforce `spec` (recorded as `accepted`) from now on, and serve the DHCP it declares.
    fn set_active(&self, active: &mut Active, spec: Spec, accepted: Accepted) {
        *self.dhcp_pending.lock().expect("lock") = Some(dhcp::scopes(&spec));
        self.dhcp_kick.store(true, Ordering::SeqCst);
        self.v6.set_spec(&spec);
        if let Some(ra) = self.ra.lock().expect("lock").as_ref() {
            ra.update(crate::ra::scopes(&spec));
        }
        *self.dns_pending.lock().expect("lock") = Some(dns::zones(&spec));
        self.dns_kick.store(true, Ordering::SeqCst);
        self.metrics.set_spec(&spec);
        ephemeral::drop_lease(self, active, "a new spec was accepted");
        let old = std::mem::replace(active, Active::new(spec, accepted));
        self.retire(old);
    }

    /// Records `next` as the accepted spec, before it is applied.
    fn accept(&self, next: &Accepted) -> Result<(), EngineError> {
        Ok(accepted::save(&self.state_dir.dir, next)?)
    }

    /// Done with a plan: the nft tables it observed and the links it was made from go back to
    /// the notification cache (the next plan need not make them again), the rest to the
    /// freeing thread.
    fn finish(&self, mut p: engine::Planned) {
        // Never waits for the cache while holding the state directory's lock: a plan on
        // another thread holds the cache while it waits for that lock. A plan that has the
        // cache now made its own snapshot and has no use for these.
        if let Ok(mut watch) = self.watch.try_lock()
            && let Some(w) = watch.as_mut()
        {
            w.give_back(p.previous.nft.take());
            w.give_back_links(p.take_snapshot_links());
            let wanted = p.take_wanted_nb();
            if !wanted.is_empty() {
                w.nb_rows.give_back(wanted);
            }
        }
        // The view of the Northbound database shares its rows' map with the plan until one
        // of the two changes: let go of the plan's copy now, so that the view, brought up to
        // date at the next plan, changes the map in place rather than copying it whole.
        let observed = std::mem::take(&mut p.previous.nb);
        if observed.is_shared() {
            drop(observed);
        } else {
            self.retire(observed);
        }
        p.unlock();
        self.retire(p);
    }

    fn retire(&self, value: impl Send + 'static) {
        // If the freeing thread is gone, the value is freed here.
        let _ = self.retired.lock().expect("lock").send(Box::new(value));
    }
}

fn dhcp_dir(scope: &str) -> std::path::PathBuf {
    StateDir::for_scope(scope).dir.join("dhcp")
}

/// Leases from the running servers, or from the journals when no daemon runs: DHCPv4's,
/// then DHCPv6's (with their `duid` and `iaid`), in one list.
pub fn leases_json(leases: &[dhcp::Lease], leases6: &[dhcp::v6::Lease6]) -> Value {
    let mut all: Vec<Value> = leases.iter().map(|l| json!(l)).collect();
    all.extend(leases6.iter().map(|l| json!(l)));
    json!({ "leases": all })
}

pub fn read_leases(scope: &str) -> Result<Value, EngineError> {
    let dir = dhcp_dir(scope);
    let v4 = dhcp::read_leases(&dir).map_err(EngineError::Leases)?;
    let v6 = dhcp::v6::read_leases(&dir).map_err(EngineError::Leases)?;
    Ok(leases_json(&v4, &v6))
}

/// A daemon line: `kvmnet: MSG`, with its priority when stderr is the journal.
fn log(level: Level, msg: &str) {
    crate::log::line(level, &format!("kvmnet: {msg}"));
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGHUP, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Brings the host to the enforced spec (`action` "apply", or "repair" for a reconcile), and
/// counts it: a repair's duration and the kinds it repaired, an apply's duration, a failure.
fn apply_active(sh: &Shared, action: &str) -> Result<usize, EngineError> {
    let started = Instant::now();
    let r = plan_and_execute(sh, action);
    let (took, m) = (started.elapsed(), &sh.metrics);
    match (&r, action) {
        (Ok((_, kinds)), "repair") => m.reconciled(took, kinds.iter().copied(), true),
        (Err(_), "repair") => {
            m.reconciled(took, std::iter::empty(), false);
            m.failed(Operation::Repair);
        }
        (Ok(_), _) => m.applied(took),
        (Err(_), _) => m.failed(Operation::Apply),
    }
    r.map(|(n, _)| n)
}

/// Plans from the enforced spec and executes: the number of steps and their kinds.
fn plan_and_execute(sh: &Shared, action: &str) -> Result<(usize, Vec<&'static str>), EngineError> {
    execute_active(sh, &mut sh.active.lock().expect("lock"), action)
}

/// [`plan_and_execute`] with the enforced spec already locked.
fn execute_active(
    sh: &Shared,
    active: &mut Active,
    action: &str,
) -> Result<(usize, Vec<&'static str>), EngineError> {
    let mut p = engine::plan_with(
        Some(&active.spec),
        &sh.scope,
        &sh.spec_path.display().to_string(),
        sh.watch.lock().expect("lock").as_mut(),
    )?;
    // Derived MACs settled against the host: enforced (and served DHCP) from now on.
    if let Some(spec) = p.settled.take() {
        let accepted = active.accepted.clone();
        // The same spec, settled: ephemeral VMs in it stay.
        let lease = active.lease.take();
        sh.set_active(active, spec, accepted);
        active.lease = lease;
    }
    let n = p.plan.steps.len();
    if n == 0 && action == "repair" {
        sh.finish(p);
        return Ok((0, Vec::new()));
    }
    let kinds = p.plan.steps.iter().map(|s| s.kind()).collect();
    if action == "repair" {
        for s in &p.plan.steps {
            log(Level::Notice, &format!("repair: {s}"));
        }
    }
    engine::execute(&p, action, &engine::spec_hash(&active.accepted.text), None)?;
    sh.finish(p);
    Ok((n, kinds))
}

/// SIGHUP or `POST /v1/reload`: the `--spec` file becomes the accepted spec if its content
/// changed since the daemon last read it; otherwise the accepted spec (which may have come
/// through the API since) stays. Either way the host is brought to it.
fn reload(sh: &Shared) {
    let text = match engine::read(&sh.spec_path) {
        Ok(t) => t,
        Err(e) => {
            sh.metrics.failed(Operation::Reload);
            return log(
                Level::Warning,
                &format!("reload refused, keeping the current spec:\n{e}"),
            );
        }
    };
    let file_hash = engine::spec_hash(&text);
    let mut active = sh.active.lock().expect("lock");
    if !accepted::file_wins(Some(&active.accepted.record), &sh.spec_file, &file_hash) {
        let source = active.accepted.record.source.clone();
        ephemeral::drop_lease(sh, &mut active, "reloaded");
        drop(active);
        return match apply_active(sh, "apply") {
            Ok(n) => log(
                Level::Info,
                &format!(
                    "reload: {} is unchanged since it was last read; kept the spec accepted from {source}: {n} changes",
                    sh.spec_path.display()
                ),
            ),
            Err(e) => log(Level::Error, &format!("reload failed: {e}")),
        };
    }
    if let Err(e) = refuse_while_pending(sh) {
        sh.metrics.failed(Operation::Reload);
        return log(Level::Warning, &format!("reload refused: {e}"));
    }
    let spec = match engine::parse_cached(
        &mut sh.specs.lock().expect("lock"),
        &sh.spec_path.display().to_string(),
        &text,
        &sh.identity,
    )
    .and_then(|s| crate::host_macs::as_recorded(s, &sh.scope))
    .map(|s| sh.settled(s))
    {
        Ok(s) => s,
        Err(e) => {
            sh.metrics.failed(Operation::Reload);
            return log(
                Level::Warning,
                &format!("reload refused, keeping the current spec:\n{e}"),
            );
        }
    };
    let mut next = active.accepted.next(Origin::File, &sh.spec_file, text);
    next.record.spec_file_hash = file_hash;
    if let Err(e) = sh.accept(&next) {
        sh.metrics.failed(Operation::Reload);
        return log(
            Level::Warning,
            &format!("reload refused, keeping the current spec: {e}"),
        );
    }
    sh.set_active(&mut active, spec, next);
    drop(active);
    match apply_active(sh, "apply") {
        Ok(n) => log(
            Level::Info,
            &format!("reloaded {}: {n} changes", sh.spec_path.display()),
        ),
        Err(e) => log(Level::Error, &format!("reload failed: {e}")),
    }
}

/// The API's endpoints and the method each takes.
const ENDPOINTS: &[(&str, &str)] = &[
    ("/metrics", "GET"),
    ("/v1/status", "GET"),
    ("/v1/leases", "GET"),
    ("/v1/reload", "POST"),
    ("/v1/confirm", "POST"),
    ("/v1/apply", "POST"),
    ("/v1/ephemeral", "POST"),
    ("/v1/ephemeral/refresh", "POST"),
    ("/v1/ephemeral/release", "POST"),
    ("/v1/debug/watch", "GET"),
];

fn handle(sh: &Arc<Shared>, req: api::Request) -> api::Response {
    let Some(&(_, method)) = ENDPOINTS.iter().find(|(p, _)| *p == req.path) else {
        return api::Response::error(404, format!("no such endpoint: {}", req.path));
    };
    if req.method != method {
        let mut r = api::Response::error(
            405,
            format!("{} takes {method}, not {}", req.path, req.method),
        );
        r.allow = Some(method);
        return r;
    }
    match req.path.as_str() {
        "/v1/status" => match Observer::new(&sh.scope).snapshot(None) {
            Ok(snap) => api::Response::ok(status::with_ovn(
                status::status_json(&snap),
                crate::ovn::report::status(&sh.scope),
            )),
            Err(e) => api::Response::failed(observe_kind(&e), e.to_string()),
        },
        "/v1/leases" => match sh.dhcp.lock().expect("lock").as_ref() {
            Some(h) => {
                let v6 = sh.v6.leases().unwrap_or_default();
                api::Response::ok(leases_json(&h.leases(), &v6))
            }
            None => match read_leases(&sh.scope) {
                Ok(v) => api::Response::ok(v),
                Err(e) => error_response(&e),
            },
        },
        "/v1/reload" => {
            sh.reload.store(true, Ordering::SeqCst);
            api::Response::ok(json!({ "reload": "scheduled" }))
        }
        "/v1/confirm" => match engine::confirm_as(&sh.scope, req.peer_uid) {
            Ok(c) => api::Response::ok(json!({ "confirmed": c })),
            Err(e) => error_response(&e),
        },
        "/v1/apply" => apply_request(sh, &req),
        "/v1/ephemeral" => ephemeral::begin(sh, &req),
        "/v1/ephemeral/refresh" => ephemeral::refresh(sh, &req),
        "/v1/ephemeral/release" => ephemeral::release(sh, &req),
        "/metrics" => metrics_response(sh, Format::Text),
        _ => watch_check(sh),
    }
}

fn metrics_response(sh: &Shared, format: Format) -> api::Response {
    match sh.metrics.scrape(&sh.dhcp, &sh.dns, format) {
        Ok(t) => api::Response::text(format.content_type(), t),
        Err(e) => api::Response::error(500, e.to_string()),
    }
}

/// The answer for `e`: its kind's status; located errors for a spec (what the CLI prints
/// from them), the message otherwise; the kind either way.
fn error_response(e: &EngineError) -> api::Response {
    match e.spec_errors() {
        Some(_) => api::Response::with_status(e.kind().http_status(), e.to_json()),
        None => api::Response::failed(e.kind(), e.to_string()),
    }
}

/// Reloads when asked; every reconcile interval reverts a change whose confirmation did not
/// come and repairs drift. Returns once the daemon is told to stop. Pings systemd's watchdog
/// from this loop, so a loop that is stuck (in a plan, or on a lock) stops the pings and
/// systemd restarts the daemon.
fn reconcile_until_stopped(sh: &Shared) {
    let interval = Duration::from_millis(
        std::env::var("KVMNET_RECONCILE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let watchdog = watchdog_interval(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
    );
    let mut next = Instant::now() + interval;
    let mut next_ping = Instant::now();
    while !sh.stop.load(Ordering::SeqCst) {
        if let Some(every) = watchdog
            && Instant::now() >= next_ping
        {
            notify("WATCHDOG=1");
            next_ping = Instant::now() + every;
        }
        if sh.reload.swap(false, Ordering::SeqCst) {
            reload(sh);
            next = Instant::now() + interval;
        }
        if Instant::now() >= next {
            ephemeral::expire_due(sh);
            revert_due(sh, false);
            if let Err(e) = apply_active(sh, "repair") {
                log(Level::Error, &format!("repair failed: {e}"));
            }
            next = Instant::now() + interval;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP asks for a reload; SIGTERM and SIGINT stop the daemon (and this loop).
fn wait_for_signals(sh: &Shared, sigset: &libc::sigset_t) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits for one of the signals blocked in `run`.
        if unsafe { libc::sigwait(sigset, &mut sig) } != 0 {
            continue;
        }
        if sig == libc::SIGHUP {
            sh.reload.store(true, Ordering::SeqCst);
        } else {
            sh.stop.store(true, Ordering::SeqCst);
            break;
        }
    }
}

/// Serves the metrics listener on a thread of its own until the daemon stops.
fn serve_metrics(sh: &Arc<Shared>, l: std::net::TcpListener) -> std::thread::JoinHandle<()> {
    let sh = Arc::clone(sh);
    std::thread::spawn(move || {
        let s = Arc::clone(&sh);
        let render: crate::metrics::serve::Render =
            Arc::new(move |f| s.metrics.scrape(&s.dhcp, &s.dns, f));
        crate::metrics::serve::serve(&l, &sh.stop, &render);
    })
}

/// The daemon at start: its shared state, its private state directory, and the DHCP scopes
/// and DNS zones of the spec it starts with (its services start on them once the first
/// apply has made the bridges).
struct Started {
    sh: Arc<Shared>,
    state_dir: StateDir,
    scopes: Vec<dhcp::Scope>,
    zones: Vec<dns::Zone>,
}

/// The daemon's shared state, from the spec it starts with ([`start_spec`]).
fn start_shared(
    scope: &str,
    spec_path: &std::path::Path,
    chassis: Option<&str>,
) -> Result<Started, EngineError> {
    let specs = Mutex::new(crate::spec::SpecCache::default());
    let retired = freeing_thread();
    let state_dir = private_state_dir(scope)?;
    let spec_file = std::fs::canonicalize(spec_path)
        .unwrap_or_else(|_| spec_path.to_path_buf())
        .display()
        .to_string();
    let identity = host_identity(scope);
    // The OVN chassis this host is, for specs with OVN networks: as `kvmnet apply` takes it
    // (`--chassis`, the recorded one, the `system-id` of the spec's Open_vSwitch database,
    // the hostname). One name for the daemon's life: a spec sent with another is refused
    // rather than moving the host to another chassis behind its back.
    let known = crate::ovn::local::flagged_or_recorded(&state_dir, chassis);
    let (spec, accepted) = start_spec(
        &state_dir,
        &specs,
        spec_path,
        &spec_file,
        &identity,
        known.as_deref(),
    )?;
    let ch = spec
        .ovn
        .as_ref()
        .and_then(|o| o.local.clone())
        .or(known)
        .unwrap_or_else(engine::hostname);
    let scopes = dhcp::scopes(&spec);
    let zones = dns::zones(&spec);
    let metrics = DaemonMetrics::default();
    metrics.set_spec(&spec);
    let sh = Arc::new(Shared {
        scope: scope.to_string(),
        spec_path: spec_path.to_path_buf(),
        spec_file,
        state_dir: StateDir::for_scope(scope),
        active: Mutex::new(Active::new(spec, accepted)),
        stop: AtomicBool::new(false),
        reload: AtomicBool::new(false),
        dhcp_pending: Mutex::new(None),
        dhcp_kick: AtomicBool::new(false),
        dhcp: Mutex::new(None),
        v6: dhcp6::V6::default(),
        ra: Mutex::new(None),
        dns_pending: Mutex::new(None),
        dns_kick: AtomicBool::new(false),
        dns: Mutex::new(None),
        specs,
        hasher: Mutex::default(),
        identity,
        chassis: ch,
        retired: Mutex::new(retired),
        watch: Mutex::new(open_watch()),
        metrics,
    });
    Ok(Started {
        sh,
        state_dir,
        scopes,
        zones,
    })
}

/// The first apply of the accepted spec, then the revert of a change whose confirmation
/// was already due.
fn converge_at_start(sh: &Shared) -> Result<(), EngineError> {
    let revert_now = pending_at_start(sh)?;
    let n = apply_active(sh, "apply")?;
    log(
        Level::Info,
        &format!("applied the accepted spec: {n} changes"),
    );
    if revert_now {
        revert_due(sh, true);
    }
    Ok(())
}

/// The threads that serve until the daemon stops, joined in this order when it does.
struct Threads {
    dhcp: std::thread::JoinHandle<()>,
    dhcp6: std::thread::JoinHandle<()>,
    dns: std::thread::JoinHandle<()>,
    api: std::thread::JoinHandle<()>,
    metrics: Option<std::thread::JoinHandle<()>>,
}

/// DHCPv4, router advertisements and DHCPv6, on the bridges the spec just made (threads
/// inherit this thread's namespace): the DHCPv4 and DHCPv6 threads.
fn start_dhcp(
    sh: &Arc<Shared>,
    state_dir: &StateDir,
    scopes: Vec<dhcp::Scope>,
) -> Result<(std::thread::JoinHandle<()>, std::thread::JoinHandle<()>), EngineError> {
    let server = dhcp::Server::start(scopes, &dhcp_dir(&sh.scope)).map_err(EngineError::Dhcp)?;
    *sh.dhcp.lock().expect("lock") = Some(server.handle());
    // The journal the server just opened may be new, and made with the default mode.
    state_dir.tighten()?;
    let dhcp_sh = Arc::clone(sh);
    let dhcp_thread = std::thread::spawn(move || dhcp_thread(dhcp_sh, server));
    {
        // Locked in this order everywhere: the active spec, then the advertiser.
        let active = sh.active.lock().expect("lock");
        *sh.ra.lock().expect("lock") =
            Some(crate::ra::Service::start(crate::ra::scopes(&active.spec)));
    }
    let dhcp6_thread = {
        let active = sh.active.lock().expect("lock");
        dhcp6::start(sh, &active.spec, &dhcp_dir(&sh.scope))?
    };
    // The DHCPv6 journal and DUID may be new.
    state_dir.tighten()?;
    Ok((dhcp_thread, dhcp6_thread))
}

/// DHCP, DNS (on the gateways of networks with `dns`, same namespace, same way), the local
/// API, the metrics listener if there is one, and the thread that waits for signals.
fn start_services(
    sh: &Arc<Shared>,
    state_dir: &StateDir,
    scopes: Vec<dhcp::Scope>,
    zones: Vec<dns::Zone>,
    metrics_listener: Option<std::net::TcpListener>,
    sigset: libc::sigset_t,
) -> Result<Threads, EngineError> {
    let (dhcp_thread, dhcp6_thread) = start_dhcp(sh, state_dir, scopes)?;

    let mut dns_server = dns::Server::start(zones).map_err(EngineError::Dns)?;
    dns_server.set_lease_source(lease_source(sh));
    *sh.dns.lock().expect("lock") = Some(dns_server.handle());
    let dns_sh = Arc::clone(sh);
    let dns_thread = std::thread::spawn(move || dns_thread(dns_sh, dns_server));

    let listener = api::bind(&state_dir.dir).map_err(EngineError::Listen)?;
    let api_sh = Arc::clone(sh);
    let api_thread = std::thread::spawn(move || {
        let handler_sh = Arc::clone(&api_sh);
        api::serve(
            &listener,
            &api_sh.stop,
            Arc::new(move |req| handle(&handler_sh, req)),
        );
    });

    let metrics_thread = metrics_listener.map(|l| serve_metrics(sh, l));

    let sig_sh = Arc::clone(sh);
    std::thread::spawn(move || wait_for_signals(&sig_sh, &sigset));
    Ok(Threads {
        dhcp: dhcp_thread,
        dhcp6: dhcp6_thread,
        dns: dns_thread,
        api: api_thread,
        metrics: metrics_thread,
    })
}

/// Wakes the service threads to see that the daemon stops, and waits for each.
fn stop_services(sh: &Shared, threads: Threads) {
    sh.dhcp_kick.store(true, Ordering::SeqCst);
    sh.dns_kick.store(true, Ordering::SeqCst);
    sh.v6.wake();
    let _ = threads.dhcp.join();
    let _ = threads.dhcp6.join();
    if let Some(mut ra) = sh.ra.lock().expect("lock").take() {
        ra.stop();
    }
    let _ = threads.dns.join();
    let _ = threads.api.join();
    if let Some(t) = threads.metrics {
        let _ = t.join();
    }
}

/// Runs the daemon until SIGTERM/SIGINT. The caller has already entered the namespace.
pub fn run(
    scope: &str,
    spec_path: &std::path::Path,
    metrics_listener: Option<std::net::TcpListener>,
    chassis: Option<&str>,
) -> Result<(), EngineError> {
    let sigset = block_signals();
    let Started {
        sh,
        state_dir,
        scopes,
        zones,
    } = start_shared(scope, spec_path, chassis)?;
    converge_at_start(&sh)?;
    let threads = start_services(&sh, &state_dir, scopes, zones, metrics_listener, sigset)?;

    notify("READY=1");
    reconcile_until_stopped(&sh);
    notify("STOPPING=1");
    stop_services(&sh, threads);
    let _ = std::fs::remove_file(api::socket_path(&state_dir.dir));
    log(Level::Info, "stopped; networking left in place");
    Ok(())
}
