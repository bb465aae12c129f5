//! The command line: parse arguments, call the library, render text or JSON. Exit status:
//! 0 success, else the error's kind says ([`crate::engine::ErrorKind::exit_code`]: 1 runtime
//! failure after rollback, 2 invalid spec, conflict, usage or busy with nothing changed;
//! with `plan --detailed-exitcode`, 2 means changes and every error is 1).
//! When a daemon runs for the scope, changing commands go through its API, so the daemon
//! enforces what was applied instead of repairing it away.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use serde_json::{Value, json};

use crate::backend::netns;
use crate::daemon::{self, api};
use crate::engine::{self, EngineError, ErrorKind, Pending, SpecErrors};
use crate::log::{self, Level};
use crate::observe::Observer;
use crate::plan::Plan;
use crate::statedir::StateDir;
use crate::status;

// The arguments, in a file of their own that build.rs includes too: the man pages and
// shell completions it generates come from this one definition.
include!("cli_args.rs");

/// Switch this (still single-threaded) process into the sandbox namespace.
/// The scope `--netns` names (`host` without it), checked but not entered.
fn scope_name(ns: &Option<String>) -> Result<String, EngineError> {
    let Some(ns) = ns else {
        return Ok("host".to_string());
    };
    let valid = !ns.is_empty()
        && ns.len() <= 64
        && ns != "."
        && ns != ".."
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        return Err(engine::invalid(
            "--netns",
            "--netns",
            format!("'{ns}' is not a namespace name ([A-Za-z0-9_.-], at most 64)"),
        ));
    }
    Ok(ns.clone())
}

/// Enters the scope's namespace, creating it if missing (`apply`, `daemon`).
fn enter(ns: &Option<String>) -> Result<String, EngineError> {
    let scope = scope_name(ns)?;
    if let Some(ns) = ns {
        if !netns::exists(ns) {
            netns::create(ns)?;
        }
        netns::enter(ns)?;
    }
    Ok(scope)
}

/// Enters the scope's namespace, which must exist: commands that only read, or remove what
/// is there, never create one (a typo in `--netns` is an error, not a new namespace).
fn enter_existing(ns: &Option<String>) -> Result<String, EngineError> {
    let scope = scope_name(ns)?;
    if let Some(ns) = ns {
        if !netns::exists(ns) {
            return Err(EngineError::Usage(format!(
                "no such namespace '{ns}' (--netns); `kvmnet apply` creates it"
            )));
        }
        netns::enter(ns)?;
    }
    Ok(scope)
}

/// `KVMNET_FAIL_AFTER` (a test hook) is refused while a daemon runs for the scope: the
/// change would go through the daemon, whose API takes no such hook, and applying beside the
/// daemon would race it.
fn refuse_fail_after_with_daemon(scope: &str, fail: Option<usize>) -> Result<(), EngineError> {
    if fail.is_some() && api::daemon_listening(&StateDir::for_scope(scope).dir) {
        return Err(EngineError::Usage(
            "KVMNET_FAIL_AFTER is a test hook for kvmnet without a daemon, and a daemon runs for this scope: stop it, or unset KVMNET_FAIL_AFTER".into(),
        ));
    }
    Ok(())
}

/// This host's identity for derived MACs in `scope`; a warning on stderr when it is not
/// the machine ID and `warn` (commands that plan or change the host).
fn identity(scope: &str, warn: bool) -> crate::spec::HostIdentity {
    let (id, warning) = crate::host_macs::host_identity(scope);
    if let Some(w) = warning.filter(|_| warn) {
        crate::log::line(crate::log::Level::Warning, &format!("kvmnet: warning: {w}"));
    }
    id
}

fn fail_after() -> Result<Option<usize>, EngineError> {
    match std::env::var("KVMNET_FAIL_AFTER") {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| {
            engine::invalid(
                "KVMNET_FAIL_AFTER",
                "KVMNET_FAIL_AFTER",
                format!("'{v}' is not a step number"),
            )
        }),
    }
}

fn print_plan(plan: &Plan, as_json: bool, applied: bool) {
    if as_json {
        println!("{}", plan.to_json());
    } else {
        print!("{}", plan.render());
        if applied && !plan.is_empty() {
            println!("Applied {} changes.", plan.steps.len());
        }
    }
}

/// Asks the scope's daemon, if one runs. A 422 answer carries validation errors.
fn via_daemon(
    scope: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> Option<Result<Value, EngineError>> {
    let sd = StateDir::for_scope(scope);
    Some(daemon_answer(api::call(&sd.dir, method, path, body)?))
}

/// Like [`via_daemon`], with a spec's text sent as it is (no JSON around it).
fn spec_via_daemon(
    scope: &str,
    path: &str,
    fields: &[(&str, String)],
    spec: &[u8],
) -> Option<Result<Value, EngineError>> {
    let sd = StateDir::for_scope(scope);
    Some(daemon_answer(api::call_with_spec(
        &sd.dir, path, fields, spec,
    )?))
}

/// The daemon's answer; an error keeps the kind the daemon gave it ([`ErrorKind`]).
fn daemon_answer(r: Result<Value, api::ApiError>) -> Result<Value, EngineError> {
    match r {
        Ok(v) if v.get("errors").is_some() => {
            let errors = SpecErrors {
                source: v["source"].as_str().unwrap_or("spec").to_string(),
                errors: v["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| crate::spec::SpecError {
                        path: e["path"].as_str().unwrap_or("").to_string(),
                        loc: crate::spec::Loc {
                            line: e["line"].as_u64().unwrap_or(1) as usize,
                            col: e["column"].as_u64().unwrap_or(1) as usize,
                        },
                        message: e["message"].as_str().unwrap_or("").to_string(),
                    })
                    .collect(),
            };
            // A daemon from before kinds sent both as invalid.
            match v["kind"].as_str().and_then(ErrorKind::from_name) {
                Some(ErrorKind::Conflict) => Err(EngineError::Conflict(errors)),
                _ => Err(EngineError::Invalid(errors)),
            }
        }
        Ok(v) => Ok(v),
        Err(e) => Err(e.into()),
    }
}

fn print_changes(v: &Value, as_json: bool) {
    if as_json {
        println!("{v}");
    } else {
        let changes = v["changes"].as_array().cloned().unwrap_or_default();
        if changes.is_empty() {
            println!("No changes: the host matches the spec.");
        }
        for c in &changes {
            println!(
                "{} {} {}",
                match c["op"].as_str() {
                    Some("create" | "add") => "+",
                    Some("delete" | "remove") => "-",
                    _ => "~",
                },
                c["kind"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or("")
            );
        }
        if !changes.is_empty() {
            println!("Applied {} changes (through the daemon).", changes.len());
        }
    }
}

/// Starts the detached process that reverts an unconfirmed change at its deadline.
fn spawn_revert_timer(netns: &Option<String>, token: &str) -> Result<(), EngineError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(EngineError::RevertTimer)?;
    let mut c = std::process::Command::new(exe);
    c.arg("revert-timer").arg("--token").arg(token);
    if let Some(ns) = netns {
        c.arg("--netns").arg(ns);
    }
    c.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid in the child before exec: the timer outlives this command and the
    // operator's session (an SSH connection that drops is the case it exists for).
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    c.spawn().map(|_| ()).map_err(EngineError::RevertTimer)
}

/// The query fields of an apply through the daemon.
fn apply_fields(
    source: String,
    scope: &Scope,
    confirm: Option<u64>,
) -> Vec<(&'static str, String)> {
    let mut fields = vec![("source", source)];
    fields.extend(scope.chassis.clone().map(|c| ("chassis", c)));
    fields.extend(confirm.map(|c| ("confirm_within", c.to_string())));
    fields
}

fn apply_cmd(
    file: PathBuf,
    scope: Scope,
    confirm_within: Option<String>,
) -> Result<(), (EngineError, bool)> {
    let j = scope.json;
    let fail = fail_after().map_err(|e| (e, j))?;
    let confirm = match &confirm_within {
        None => None,
        Some(d) => Some(engine::parse_duration(d).ok_or_else(|| {
            (
                engine::invalid(
                    "--confirm-within",
                    "--confirm-within",
                    format!("'{d}' is not a duration (like 60s, 5m)"),
                ),
                j,
            )
        })?),
    };
    // A running daemon validates the spec itself (with the same messages), from a cache that
    // makes a small change to a large spec cheap: parsing it here first would cost as much.
    // A file goes to it as it is read; a spec the daemon cannot take (not UTF-8) is read
    // again below, where the error is said.
    if file.as_os_str() != "-" {
        let s = scope_name(&scope.netns).map_err(|e| (e, j))?;
        refuse_fail_after_with_daemon(&s, fail).map_err(|e| (e, j))?;
        let fields = apply_fields(file.display().to_string(), &scope, confirm);
        let sd = StateDir::for_scope(&s);
        if let Some(r) = api::call_with_spec_file(&sd.dir, "/v1/apply", &fields, &file) {
            print_changes(&daemon_answer(r).map_err(|e| (e, j))?, j);
            return Ok(());
        }
    }
    let (source, text) = read_spec(&file).map_err(|e| (e, j))?;
    if file.as_os_str() == "-" && std::str::from_utf8(&text).is_ok() {
        let s = scope_name(&scope.netns).map_err(|e| (e, j))?;
        refuse_fail_after_with_daemon(&s, fail).map_err(|e| (e, j))?;
        let fields = apply_fields(source.clone(), &scope, confirm);
        if let Some(r) = spec_via_daemon(&s, "/v1/apply", &fields, &text) {
            print_changes(&r.map_err(|e| (e, j))?, j);
            return Ok(());
        }
    }
    let name = scope_name(&scope.netns).map_err(|e| (e, j))?;
    let id = identity(&name, true);
    let mut spec = engine::parse(&source, &text, &id).map_err(|e| (e, j))?;
    engine::settle_chassis(&mut spec, chassis_of(&scope, &name).as_deref());
    let s = enter(&scope.netns).map_err(|e| (e, j))?;
    let p = engine::plan(Some(&spec), &s, &source).map_err(|e| (e, j))?;
    let previous_state = p.state_dir.load().map_err(|e| (e.into(), j))?;
    let hash = engine::spec_hash(&text);
    engine::execute(&p, "apply", &hash, fail).map_err(|e| (e, j))?;
    crate::show::record(&s, &text).map_err(|e| (e, j))?;
    print_plan(&p.plan, j, true);
    if let Some(secs) = confirm {
        let token = format!("{:x}{:x}", crate::audit::now_unix(), std::process::id());
        let pending = Pending {
            token: token.clone(),
            deadline_unix: crate::audit::now_unix() + secs,
            previous: p.previous.clone(),
            previous_state,
            previous_spec: None,
            spec_hash: hash,
            accepted_seq: None,
        };
        engine::save_pending(&p.state_dir, &pending).map_err(|e| (e, j))?;
        spawn_revert_timer(&scope.netns, &token).map_err(|e| (e, j))?;
        if !j {
            println!(
                "This change reverts in {secs}s unless confirmed: kvmnet confirm{}",
                scope
                    .netns
                    .as_ref()
                    .map_or(String::new(), |n| format!(" --netns {n}"))
            );
        }
    }
    Ok(())
}

/// How a command that did its work came out, for the exit status.
enum Outcome {
    Done,
    /// A plan with changes (exit 2 with `plan --detailed-exitcode`).
    Changes,
    /// `doctor` found a failing check (exit 1).
    ChecksFailed,
    /// `trace`: the packet does not get there, or `--live` disagrees (exit 1).
    Stopped,
}

/// Runs the command.
fn run(cli: Cli) -> Result<Outcome, (EngineError, bool)> {
    match cli.command {
        Command::Plan { file, scope, .. } => plan_cmd(&file, &scope).map(|changes| {
            if changes {
                Outcome::Changes
            } else {
                Outcome::Done
            }
        }),
        Command::Doctor { scope } => doctor_cmd(&scope).map(|failed| match failed {
            true => Outcome::ChecksFailed,
            false => Outcome::Done,
        }),
        Command::Trace(a) => trace_cmd(&a).map(|reached| match reached {
            true => Outcome::Done,
            false => Outcome::Stopped,
        }),
        other => run_other(other).map(|()| Outcome::Done),
    }
}

fn run_other(command: Command) -> Result<(), (EngineError, bool)> {
    match command {
        // (`run` takes plans and doctor, for what they say about changes and checks.)
        Command::Plan { file, scope, .. } => plan_cmd(&file, &scope).map(drop),
        Command::Doctor { scope } => doctor_cmd(&scope).map(drop),
        Command::Trace(a) => trace_cmd(&a).map(drop),
        Command::Validate { file, json } => validate_cmd(&file, json),
        Command::Apply {
            file,
            scope,
            confirm_within,
        } => apply_cmd(file, scope, confirm_within),
        Command::Confirm { netns } => confirm_cmd(&netns),
        Command::Destroy { scope, dry_run } => match dry_run {
            true => destroy_dry_run(&scope),
            false => destroy_cmd(&scope),
        },
        Command::Status { scope } => status_cmd(&scope),
        Command::Leases { scope } => leases_cmd(&scope),
        Command::Daemon {
            spec,
            netns,
            metrics_listen,
            chassis,
        } => daemon_cmd(&spec, &netns, metrics_listen.as_deref(), chassis.as_deref()),
        Command::Show { netns } => enter_existing(&netns)
            .and_then(|s| crate::show::run(&s))
            .map_err(|e| (e, false)),
        Command::Bench {
            scope,
            network,
            between,
            quick,
            duration,
            svg,
        } => {
            let opts = crate::bench::Options {
                network,
                between: between.and_then(|v| Some((v.first()?.clone(), v.get(1)?.clone()))),
                quick,
                duration,
                json: scope.json,
                svg,
            };
            bench_cmd(&scope, &opts)
        }
        Command::Export(a) => scope_name(&a.netns)
            .and_then(|s| crate::export::run(&a, &s))
            .map_err(|e| (e, false)),
        Command::Import(ImportCommand::Libvirt(a)) => {
            crate::import::run(&a).map_err(|e| (e, false))
        }
        Command::RevertTimer { netns, token } => revert_timer_cmd(&netns, &token),
        Command::Completions { shell } => {
            print!("{}", generated(COMPLETIONS, &shell));
            Ok(())
        }
        Command::Man { dir } => man_cmd(&dir),
        Command::Schema => {
            let schema = crate::spec::json_schema();
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(())
        }
    }
}

// MAN_PAGES and COMPLETIONS: what build.rs made from the arguments.
include!(concat!(env!("OUT_DIR"), "/generated_docs.rs"));

/// The generated text named `name` (the build made every name the arguments allow).
fn generated(table: &[(&str, &'static str)], name: &str) -> &'static str {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, text)| text)
}

/// Writes every man page into `dir` (made if missing), and says which.
fn man_cmd(dir: &Path) -> Result<(), (EngineError, bool)> {
    let write = |(name, text): &(&str, &str)| {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join(name), text))
            .map_err(|e| {
                EngineError::Usage(format!(
                    "cannot write {}: {}",
                    dir.join(name).display(),
                    crate::error::io_message(&e)
                ))
            })
    };
    for page in MAN_PAGES {
        write(page).map_err(|e| (e, false))?;
        println!("{}", dir.join(page.0).display());
    }
    Ok(())
}

/// The spec's name in messages and its text: the file's, or standard input's for `-`.
pub(crate) fn read_spec(file: &Path) -> Result<(String, Vec<u8>), EngineError> {
    if file.as_os_str() != "-" {
        return Ok((file.display().to_string(), engine::read(file)?));
    }
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut text).map_err(|error| {
        EngineError::SpecUnreadable {
            file: STDIN.to_string(),
            error,
        }
    })?;
    Ok((STDIN.to_string(), text))
}

/// What errors call a spec read from standard input (`-`).
const STDIN: &str = "(stdin)";

fn validate_cmd(file: &Path, j: bool) -> Result<(), (EngineError, bool)> {
    // Whether a spec is valid does not depend on the host: no warning here.
    let id = identity("host", false);
    let (source, text) = read_spec(file).map_err(|e| (e, j))?;
    let spec = engine::parse(&source, &text, &id).map_err(|e| (e, j))?;
    // OVN networks and their ports live in spec.ovn: counted too.
    let ovn = spec
        .ovn
        .as_ref()
        .map_or((0, 0), |o| (o.networks.len(), o.ports.len()));
    let ports: usize = spec.vms.values().map(|v| v.ports.len()).sum::<usize>() + ovn.1;
    let networks = spec.networks.len() + ovn.0;
    if j {
        let v = json!({
            "valid": true, "source": source, "networks": networks,
            "vms": spec.vms.len(), "ports": ports,
        });
        println!("{v}");
    } else {
        println!(
            "{source}: valid ({networks} networks, {} VMs, {ports} ports)",
            spec.vms.len(),
        );
    }
    Ok(())
}

/// The chassis a command in scope `name` is for, before the spec settles it.
fn chassis_of(scope: &Scope, name: &str) -> Option<String> {
    crate::ovn::local::flagged_or_recorded(
        &crate::statedir::StateDir::for_scope(name),
        scope.chassis.as_deref(),
    )
}

/// Shows the plan; returns whether it has changes.
fn plan_cmd(file: &Path, scope: &Scope) -> Result<bool, (EngineError, bool)> {
    let j = scope.json;
    let name = scope_name(&scope.netns).map_err(|e| (e, j))?;
    let id = identity(&name, true);
    let (source, text) = read_spec(file).map_err(|e| (e, j))?;
    let mut spec = engine::parse(&source, &text, &id).map_err(|e| (e, j))?;
    engine::settle_chassis(&mut spec, chassis_of(scope, &name).as_deref());
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    let p = engine::plan(Some(&spec), &s, &source).map_err(|e| (e, j))?;
    print_plan(&p.plan, j, false);
    Ok(!p.plan.is_empty())
}

/// Runs doctor's checks; returns whether one failed.
fn doctor_cmd(scope: &Scope) -> Result<bool, (EngineError, bool)> {
    let j = scope.json;
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    crate::doctor::run(&s, j, scope.chassis.as_deref()).map_err(|e| (e, j))
}

fn trace_cmd(a: &TraceArgs) -> Result<bool, (EngineError, bool)> {
    let s = enter_existing(&a.netns).map_err(|e| (e, a.json))?;
    crate::trace::run(a, &s).map_err(|e| (e, a.json))
}

fn confirm_cmd(netns: &Option<String>) -> Result<(), (EngineError, bool)> {
    let s = enter_existing(netns).map_err(|e| (e, false))?;
    let confirmed = match via_daemon(&s, "POST", "/v1/confirm", &Value::Null) {
        Some(r) => r.map_err(|e| (e, false))?["confirmed"]
            .as_bool()
            .unwrap_or(false),
        None => engine::confirm(&s).map_err(|e| (e, false))?,
    };
    println!(
        "{}",
        if confirmed {
            "Confirmed: the change stays."
        } else {
            "Nothing to confirm."
        }
    );
    Ok(())
}

fn destroy_cmd(scope: &Scope) -> Result<(), (EngineError, bool)> {
    let j = scope.json;
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    let fail = fail_after().map_err(|e| (e, j))?;
    refuse_fail_after_with_daemon(&s, fail).map_err(|e| (e, j))?;
    let body = json!({ "spec": "version: 1\n", "source": "(destroy)", "action": "destroy" });
    if let Some(r) = via_daemon(&s, "POST", "/v1/apply", &body) {
        print_changes(&r.map_err(|e| (e, j))?, j);
        return Ok(());
    }
    let p = engine::plan(None, &s, "(destroy)").map_err(|e| (e, j))?;
    engine::execute(&p, "destroy", "", fail).map_err(|e| (e, j))?;
    crate::show::forget(&s).map_err(|e| (e, j))?;
    print_plan(&p.plan, j, true);
    Ok(())
}

/// `destroy --dry-run`: the plan destroy would carry out, planned here even when a daemon
/// runs (as `plan` is), and nothing changed.
fn destroy_dry_run(scope: &Scope) -> Result<(), (EngineError, bool)> {
    let j = scope.json;
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    let p = engine::plan(None, &s, "(destroy)").map_err(|e| (e, j))?;
    print_plan(&p.plan, j, false);
    Ok(())
}

fn status_cmd(scope: &Scope) -> Result<(), (EngineError, bool)> {
    let j = scope.json;
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    let v = match via_daemon(&s, "GET", "/v1/status", &Value::Null) {
        Some(r) => r.map_err(|e| (e, j))?,
        None => {
            let snap = Observer::new(&s)
                .snapshot(None)
                .map_err(|e| (e.into(), j))?;
            status::with_ovn(status::status_json(&snap), crate::ovn::report::status(&s))
        }
    };
    if j {
        println!("{v}");
    } else {
        print!("{}", status::render(&v));
    }
    Ok(())
}

fn leases_cmd(scope: &Scope) -> Result<(), (EngineError, bool)> {
    let j = scope.json;
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    let v = match via_daemon(&s, "GET", "/v1/leases", &Value::Null) {
        Some(r) => r.map_err(|e| (e, j))?,
        None => daemon::read_leases(&s).map_err(|e| (e, j))?,
    };
    if j {
        println!("{v}");
    } else {
        print_leases(&v);
    }
    Ok(())
}

/// The leases (DHCPv4 and DHCPv6) as a table, with the time each has left.
fn print_leases(v: &Value) {
    let leases = v["leases"].as_array().cloned().unwrap_or_default();
    if leases.is_empty() {
        println!("No leases.");
    } else {
        println!(
            "{:<12} {:<24} {:<18} {:<9} {:<8} {:<10} HOSTNAME",
            "NETWORK", "ADDRESS", "MAC", "STATE", "RESERVED", "EXPIRES"
        );
    }
    let now = crate::audit::now_unix();
    for l in leases {
        let left = l["expires_unix"].as_u64().unwrap_or(0).saturating_sub(now);
        println!(
            "{:<12} {:<24} {:<18} {:<9} {:<8} {:<10} {}",
            l["network"].as_str().unwrap_or("-"),
            l["ip"].as_str().unwrap_or("-"),
            l["mac"].as_str().unwrap_or("-"),
            l["state"].as_str().unwrap_or("-"),
            if l["reserved"].as_bool().unwrap_or(false) {
                "yes"
            } else {
                "no"
            },
            format!("{left}s"),
            l["hostname"].as_str().unwrap_or("-"),
        );
    }
}

/// Runs `kvmnet bench` in the scope, which must exist.
fn bench_cmd(scope: &Scope, opts: &crate::bench::Options) -> Result<(), (EngineError, bool)> {
    let j = scope.json;
    let s = enter_existing(&scope.netns).map_err(|e| (e, j))?;
    crate::bench::run(&s, opts).map_err(|e| (EngineError::Bench(Box::new(e)), j))
}

fn daemon_cmd(
    spec: &Path,
    netns: &Option<String>,
    metrics_listen: Option<&str>,
    chassis: Option<&str>,
) -> Result<(), (EngineError, bool)> {
    // Bound before entering the scope: Prometheus reaches it in the namespace kvmnet was
    // started in, while the daemon reads counters in its scope's.
    let listener = metrics_listen
        .map(crate::metrics::serve::bind)
        .transpose()
        .map_err(|e| (EngineError::from(e), false))?;
    let s = enter(netns).map_err(|e| (e, false))?;
    daemon::run(&s, spec, listener, chassis).map_err(|e| (e, false))
}

fn revert_timer_cmd(netns: &Option<String>, token: &str) -> Result<(), (EngineError, bool)> {
    let s = enter_existing(netns).map_err(|e| (e, false))?;
    revert_timer(&s, token);
    Ok(())
}

/// The detached timer: at the deadline it reverts the change with `token`, and goes on trying
/// (1 s apart, then up to a minute) until the revert succeeds or the change is confirmed or
/// replaced. Each failed try is in the audit log.
fn revert_timer(scope: &str, token: &str) {
    let sd = StateDir::for_scope(scope);
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        let wait = match engine::load_pending(&sd) {
            Ok(Some(p)) if p.token == token => {
                let now = crate::audit::now_unix();
                if now < p.deadline_unix {
                    std::time::Duration::from_secs((p.deadline_unix - now).min(1))
                } else {
                    match engine::revert_if_due(scope, Some(token), false) {
                        Ok(_) => return,
                        Err(_) => {
                            let wait = backoff;
                            backoff = (backoff * 2).min(std::time::Duration::from_secs(60));
                            wait
                        }
                    }
                }
            }
            // Confirmed, or replaced by a newer change with its own timer.
            Ok(_) => return,
            // Unreadable for now (a disk error): the change still waits for its revert.
            Err(_) => backoff,
        };
        std::thread::sleep(wait);
    }
}

pub fn main() -> ExitCode {
    // With --detailed-exitcode, 2 means "changes": every error, bad usage too, is 1.
    let detailed = std::env::args_os().any(|a| a == "--detailed-exitcode");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if detailed && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(Outcome::Changes) if detailed => ExitCode::from(2),
        Ok(Outcome::ChecksFailed | Outcome::Stopped) => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err((e, as_json)) => {
            // Located errors are one line each, as `validate` prints them; the rest one
            // message.
            match e.spec_errors() {
                Some(errors) => errors
                    .to_string()
                    .lines()
                    .for_each(|l| log::line(Level::Error, l)),
                None => log::line(Level::Error, &format!("kvmnet: {e}")),
            }
            if as_json {
                println!("{}", e.to_json());
            }
            ExitCode::from(if detailed { 1 } else { e.kind().exit_code() })
        }
    }
}
