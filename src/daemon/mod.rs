//! `kvmnet daemon`: applies the spec at start, keeps the host converged (drift is repaired
//! within a reconcile interval and each repair is logged), re-applies on SIGHUP or an API
//! request, reverts unconfirmed changes when their time is up, and serves the local API.
//! Stopping the daemon leaves the networking in place: VMs keep working.

pub mod api;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::dhcp;
use crate::engine::{self, EngineError, Pending};
use crate::observe::Observer;
use crate::spec::Spec;
use crate::statedir::StateDir;
use crate::status;
use crate::watch::Watch;

/// The spec the daemon enforces now.
struct Active {
    spec: Spec,
    text: Vec<u8>,
}

struct Shared {
    scope: String,
    spec_path: std::path::PathBuf,
    active: Mutex<Active>,
    stop: AtomicBool,
    reload: AtomicBool,
    /// DHCP scopes waiting for the DHCP thread, which `dhcp_kick` wakes.
    dhcp_pending: Mutex<Option<Vec<dhcp::Scope>>>,
    dhcp_kick: AtomicBool,
    dhcp: Mutex<Option<dhcp::ServerHandle>>,
    /// What the host holds, kept current by the kernel's notifications; `None` if the
    /// subscription failed (then every plan reads the host whole).
    watch: Mutex<Option<Watch>>,
    /// Specs parsed before: a new one is parsed only where its VM entries differ.
    specs: Mutex<crate::spec::SpecCache>,
    /// This host's identity for derived MACs, read at start.
    identity: crate::spec::HostIdentity,
    /// Big values done with (a replaced spec, a finished plan), freed by a thread of their
    /// own: freeing a 1,000-port spec and what was planned from it takes milliseconds that
    /// an API client need not wait for.
    retired: Mutex<std::sync::mpsc::Sender<Box<dyn Send>>>,
    /// A plan applied for an API client, finished once the client has its answer.
    finishing: Mutex<Option<engine::Planned>>,
}

impl Shared {
    /// Enforce `spec` from now on, and serve the DHCP it declares.
    fn set_active(&self, active: &mut Active, spec: Spec, text: Vec<u8>) {
        *self.dhcp_pending.lock().expect("lock") = Some(dhcp::scopes(&spec));
        self.dhcp_kick.store(true, Ordering::SeqCst);
        let old = std::mem::replace(active, Active { spec, text });
        self.retire(old);
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
        }
        p.unlock();
        self.retire(p);
    }

    /// Finishes the plan an API request left, if any.
    fn finish_pending(&self) {
        let pending = self.finishing.lock().expect("lock").take();
        if let Some(p) = pending {
            self.finish(p);
        }
    }

    fn retire(&self, value: impl Send + 'static) {
        // If the freeing thread is gone, the value is freed here.
        let _ = self.retired.lock().expect("lock").send(Box::new(value));
    }
}

fn dhcp_dir(scope: &str) -> std::path::PathBuf {
    StateDir::for_scope(scope).dir.join("dhcp")
}

/// The DHCP server's thread: serves until stopped, taking new scopes when kicked.
fn dhcp_thread(sh: Arc<Shared>, mut server: dhcp::Server) {
    loop {
        if let Err(e) = server.run(&sh.dhcp_kick) {
            log(&format!("dhcp: {e}"));
            std::thread::sleep(Duration::from_millis(500));
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        sh.dhcp_kick.store(false, Ordering::SeqCst);
        if let Some(scopes) = sh.dhcp_pending.lock().expect("lock").take()
            && let Err(e) = server.update(scopes)
        {
            log(&format!("dhcp: {e}"));
        }
    }
}

/// Leases from the running server, or from the journal when no daemon runs.
pub fn leases_json(leases: &[dhcp::Lease]) -> Value {
    json!({ "leases": leases })
}

pub fn read_leases(scope: &str) -> Result<Value, EngineError> {
    dhcp::read_leases(&dhcp_dir(scope))
        .map(|l| leases_json(&l))
        .map_err(|e| EngineError::Runtime(e.to_string()))
}

fn log(msg: &str) {
    eprintln!("kvmnet: {msg}");
}

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = path.to_string_lossy();
    let _ = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &*p)
    };
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

/// Waits until `fd` has something to read, or `timeout` passes.
fn wait_readable(fd: &impl std::os::fd::AsRawFd, timeout: Duration) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
}

fn apply_active(sh: &Shared, action: &str) -> Result<usize, EngineError> {
    let mut active = sh.active.lock().expect("lock");
    let mut p = engine::plan_with(
        Some(&active.spec),
        &sh.scope,
        &sh.spec_path.display().to_string(),
        sh.watch.lock().expect("lock").as_mut(),
    )?;
    // Derived MACs settled against the host: enforced (and served DHCP) from now on.
    if let Some(spec) = p.settled.take() {
        let text = active.text.clone();
        sh.set_active(&mut active, spec, text);
    }
    let n = p.plan.steps.len();
    if n == 0 && action == "repair" {
        sh.finish(p);
        return Ok(0);
    }
    if action == "repair" {
        for s in &p.plan.steps {
            log(&format!("repair: {s}"));
        }
    }
    engine::execute(&p, action, &engine::spec_hash(&active.text), None)?;
    sh.finish(p);
    Ok(n)
}

/// The daemon's spec file, read and parsed through its cache.
fn load_cached(
    specs: &Mutex<crate::spec::SpecCache>,
    path: &std::path::Path,
    identity: &crate::spec::HostIdentity,
) -> Result<(Spec, Vec<u8>), EngineError> {
    let text = engine::read(path)?;
    let spec = engine::parse_cached(
        &mut specs.lock().expect("lock"),
        &path.display().to_string(),
        &text,
        identity,
    )?;
    Ok((crate::host_macs::as_recorded(spec, identity.scope())?, text))
}

fn reload(sh: &Shared) {
    match load_cached(&sh.specs, &sh.spec_path, &sh.identity) {
        Ok((spec, text)) => {
            sh.set_active(&mut sh.active.lock().expect("lock"), spec, text);
            match apply_active(sh, "apply") {
                Ok(n) => log(&format!("reloaded {}: {n} changes", sh.spec_path.display())),
                Err(e) => log(&format!("reload failed: {e}")),
            }
        }
        Err(e) => log(&format!("reload refused, keeping the current spec:\n{e}")),
    }
}

fn handle(sh: &Shared, req: api::Request) -> api::Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/v1/status") => match Observer::new(&sh.scope).snapshot(None) {
            Ok(snap) => api::Response::ok(status::status_json(&snap)),
            Err(e) => api::Response::error(500, e.to_string()),
        },
        ("GET", "/v1/leases") => match sh.dhcp.lock().expect("lock").as_ref() {
            Some(h) => api::Response::ok(leases_json(&h.leases())),
            None => match read_leases(&sh.scope) {
                Ok(v) => api::Response::ok(v),
                Err(e) => api::Response::error(500, e.to_string()),
            },
        },
        ("POST", "/v1/reload") => {
            sh.reload.store(true, Ordering::SeqCst);
            api::Response::ok(json!({ "reload": "scheduled" }))
        }
        ("POST", "/v1/confirm") => match engine::confirm(&sh.scope) {
            Ok(c) => api::Response::ok(json!({ "confirmed": c })),
            Err(e) => api::Response::error(500, e.to_string()),
        },
        ("POST", "/v1/apply") => apply_request(sh, &req.body),
        ("GET", "/v1/debug/watch") => watch_check(sh),
        _ => api::Response::error(
            404,
            format!("no such endpoint: {} {}", req.method, req.path),
        ),
    }
}

/// `POST /v1/apply {"spec": TEXT, "source": NAME, "confirm_within": SECS?}`: the daemon
/// validates, applies and from then on enforces that spec.
fn apply_request(sh: &Shared, body: &Value) -> api::Response {
    let Some(text) = body["spec"].as_str() else {
        return api::Response::error(400, "body needs \"spec\"");
    };
    let source = body["source"].as_str().unwrap_or("(api)").to_string();
    let confirm = api::number(body, "confirm_within");
    // The notification cache is brought up to date, and the text hashed for the audit log,
    // while the spec is parsed: none depends on another, and the client waits for all. (An
    // error here shows again, and is reported, when the plan reads the cache.)
    let (parsed, hash) = std::thread::scope(|scope| {
        let refresh = scope.spawn(|| {
            let hash = engine::spec_hash(text.as_bytes());
            if let Some(w) = sh.watch.lock().expect("lock").as_mut() {
                let _ = w.refresh();
            }
            hash
        });
        let parsed = engine::parse_cached(
            &mut sh.specs.lock().expect("lock"),
            &source,
            text.as_bytes(),
            &sh.identity,
        );
        let hash = refresh
            .join()
            .unwrap_or_else(|_| engine::spec_hash(text.as_bytes()));
        (parsed, hash)
    });
    let spec = match parsed {
        Ok(s) => s,
        Err(e) => return invalid_response(e),
    };
    let mut active = sh.active.lock().expect("lock");
    let mut p = match engine::plan_with(
        Some(&spec),
        &sh.scope,
        &source,
        sh.watch.lock().expect("lock").as_mut(),
    ) {
        Ok(p) => p,
        Err(e) => return invalid_response(e),
    };
    let spec = p.settled.take().unwrap_or(spec);
    let previous_state = match p.state_dir.load() {
        Ok(s) => s,
        Err(e) => return api::Response::error(500, e.to_string()),
    };
    let action = body["action"].as_str().unwrap_or("apply");
    let fail_after = api::number(body, "fail_after").map(|k| k as usize);
    if let Err(e) = engine::execute(&p, action, &hash, fail_after) {
        return invalid_response(e);
    }
    let changes = p.plan.to_json();
    if let Some(secs) = confirm {
        let pending = Pending {
            token: format!(
                "{:x}",
                crate::audit::now_unix() ^ u64::from(std::process::id())
            ),
            deadline_unix: crate::audit::now_unix() + secs,
            previous: p.previous.clone(),
            previous_state,
            previous_spec: Some(String::from_utf8_lossy(&active.text).into_owned()),
            spec_hash: hash,
        };
        if let Err(e) = engine::save_pending(&p.state_dir, &pending) {
            return api::Response::error(500, e.to_string());
        }
    }
    sh.set_active(&mut active, spec, text.as_bytes().to_vec());
    // Giving the plan's inputs back to the cache takes a millisecond or two at 1,000 ports:
    // done after the answer is sent (the API thread does it before taking the next client).
    // Until then the state directory stays locked, as it was while the plan ran.
    *sh.finishing.lock().expect("lock") = Some(p);
    api::Response::ok(changes)
}

/// `GET /v1/debug/watch`: the cached observation against a whole fresh read, for tests and
/// for anyone who doubts the cache. Lists the links and the other parts that differ.
fn watch_check(sh: &Shared) -> api::Response {
    let active = sh.active.lock().expect("lock");
    let mut watch = sh.watch.lock().expect("lock");
    let Some(w) = watch.as_mut() else {
        return api::Response::error(404, "this daemon has no notification cache");
    };
    let mut obs = Observer::new(&sh.scope);
    obs.counters = false;
    let cached = w.snapshot(&obs, Some(&active.spec));
    let fresh = obs.snapshot(Some(&active.spec));
    let (cached, fresh) = match (cached, fresh) {
        (Ok(c), Ok(f)) => (c, f),
        (Err(e), _) | (_, Err(e)) => return api::Response::error(500, e.to_string()),
    };
    let differences = snapshot_differences(&cached, &fresh);
    api::Response::ok(json!({
        "consistent": differences.is_empty(),
        "differences": differences,
        "whole_reads": w.whole_reads,
        "partial_reads": w.partial_reads,
    }))
}

/// Where two snapshots differ: `links.NAME` for links, the field name for the rest.
fn snapshot_differences(
    a: &crate::snapshot::Snapshot,
    b: &crate::snapshot::Snapshot,
) -> Vec<String> {
    let by_name = |s: &crate::snapshot::Snapshot| -> std::collections::BTreeMap<String, Value> {
        s.links
            .iter()
            .map(|l| {
                (
                    l.name.clone(),
                    serde_json::to_value(l).unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    let (la, lb) = (by_name(a), by_name(b));
    let mut out: Vec<String> = la
        .keys()
        .chain(lb.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|n| la.get(*n) != lb.get(*n))
        .map(|n| {
            format!(
                "links.{n}: {} / {}",
                la.get(n).unwrap_or(&Value::Null),
                lb.get(n).unwrap_or(&Value::Null)
            )
        })
        .collect();
    let sort = |s: &crate::snapshot::Snapshot| {
        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("links");
            for k in ["addrs", "routes"] {
                if let Some(Value::Array(items)) = o.get_mut(k) {
                    items.sort_by_key(|x| x.to_string());
                }
            }
        }
        v
    };
    let (va, vb) = (sort(a), sort(b));
    if let (Some(oa), Some(ob)) = (va.as_object(), vb.as_object()) {
        for (k, x) in oa {
            if ob.get(k) != Some(x) {
                out.push(format!("{k}: {x} / {}", ob.get(k).unwrap_or(&Value::Null)));
            }
        }
    }
    out
}

fn invalid_response(e: EngineError) -> api::Response {
    match e {
        EngineError::Invalid { source, errors } => api::Response {
            status: 422,
            body: json!({
                "changes": [],
                "source": source,
                "errors": errors.iter().map(|e| json!({
                    "path": e.path, "line": e.loc.line, "column": e.loc.col, "message": e.message
                })).collect::<Vec<_>>()
            }),
        },
        EngineError::Runtime(m) => api::Response::error(500, m),
    }
}

/// Runs the daemon until SIGTERM/SIGINT. The caller has already entered the namespace.
pub fn run(scope: &str, spec_path: &std::path::Path) -> Result<(), EngineError> {
    let sigset = block_signals();
    let specs = Mutex::new(crate::spec::SpecCache::default());
    let (retired, to_free) = std::sync::mpsc::channel::<Box<dyn Send>>();
    std::thread::spawn(move || {
        // Freeing is never urgent: it gives way to requests and to everything else.
        // SAFETY: setpriority on this thread (a Linux thread id is a PRIO_PROCESS target).
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
        }
        to_free.into_iter().for_each(drop)
    });
    let (identity, warning) = crate::host_macs::host_identity(scope);
    if let Some(w) = warning {
        log(&format!("warning: {w}"));
    }
    let (spec, text) = load_cached(&specs, spec_path, &identity)?;
    let scopes = dhcp::scopes(&spec);
    let sh = Arc::new(Shared {
        scope: scope.to_string(),
        spec_path: spec_path.to_path_buf(),
        active: Mutex::new(Active { spec, text }),
        stop: AtomicBool::new(false),
        reload: AtomicBool::new(false),
        dhcp_pending: Mutex::new(None),
        dhcp_kick: AtomicBool::new(false),
        dhcp: Mutex::new(None),
        specs,
        identity,
        retired: Mutex::new(retired),
        finishing: Mutex::new(None),
        watch: Mutex::new(match Watch::open() {
            Ok(mut w) => {
                if let Some(ms) = std::env::var("KVMNET_RESYNC_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                {
                    w.resync = Duration::from_millis(ms);
                }
                Some(w)
            }
            Err(e) => {
                log(&format!(
                    "no kernel notifications ({e}): every plan reads the whole host"
                ));
                None
            }
        }),
    });
    let n = apply_active(&sh, "apply")?;
    log(&format!("applied {}: {n} changes", spec_path.display()));

    // DHCP, on the bridges the spec just made (threads inherit this thread's namespace).
    let server = dhcp::Server::start(scopes, &dhcp_dir(scope))
        .map_err(|e| EngineError::Runtime(format!("dhcp: {e}")))?;
    *sh.dhcp.lock().expect("lock") = Some(server.handle());
    let dhcp_sh = Arc::clone(&sh);
    let dhcp_thread = std::thread::spawn(move || dhcp_thread(dhcp_sh, server));

    let state_dir = StateDir::for_scope(scope);
    let listener = api::bind(&state_dir.dir).map_err(|e| EngineError::Runtime(e.to_string()))?;

    let api_sh = Arc::clone(&sh);
    let api_thread = std::thread::spawn(move || {
        while !api_sh.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((s, _)) => {
                    api::serve_one(s, &mut |req| handle(&api_sh, req));
                    api_sh.finish_pending();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Wake for the next client at once; look at the stop flag now and then.
                    wait_readable(&listener, Duration::from_millis(200));
                }
                Err(e) => {
                    log(&format!("API: {e}"));
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });

    let sig_sh = Arc::clone(&sh);
    std::thread::spawn(move || {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits for one of the signals blocked above.
            if unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {
                continue;
            }
            if sig == libc::SIGHUP {
                sig_sh.reload.store(true, Ordering::SeqCst);
            } else {
                sig_sh.stop.store(true, Ordering::SeqCst);
                break;
            }
        }
    });

    notify("READY=1");
    let interval = Duration::from_millis(
        std::env::var("KVMNET_RECONCILE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000),
    );
    let mut next = Instant::now() + interval;
    while !sh.stop.load(Ordering::SeqCst) {
        if sh.reload.swap(false, Ordering::SeqCst) {
            reload(&sh);
            next = Instant::now() + interval;
        }
        if Instant::now() >= next {
            match engine::revert_if_due(scope, None, false) {
                Ok(Some(p)) => {
                    log("confirmation did not come in time: reverted the last change");
                    if let Some(text) = p.previous_spec
                        && let Ok(spec) =
                            engine::parse("(previous spec)", text.as_bytes(), &sh.identity)
                    {
                        sh.set_active(
                            &mut sh.active.lock().expect("lock"),
                            spec,
                            text.into_bytes(),
                        );
                    }
                }
                Ok(None) => {}
                Err(e) => log(&format!("revert failed: {e}")),
            }
            if let Err(e) = apply_active(&sh, "repair") {
                log(&format!("repair failed: {e}"));
            }
            next = Instant::now() + interval;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    notify("STOPPING=1");
    sh.dhcp_kick.store(true, Ordering::SeqCst);
    let _ = dhcp_thread.join();
    let _ = api_thread.join();
    let _ = std::fs::remove_file(api::socket_path(&state_dir.dir));
    log("stopped; networking left in place");
    Ok(())
}
