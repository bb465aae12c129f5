//! The command line: parse arguments, call the library, render text or JSON. Exit status:
//! 0 success, 1 runtime failure (after rollback), 2 invalid spec or usage (nothing changed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::apply::{self, Kernel};
use crate::backend::netns;
use crate::desired::{self, managed_sysctls};
use crate::observe::Observer;
use crate::plan::{self, Plan, Step};
use crate::spec::{self, Spec, SpecError};
use crate::status;

#[derive(Parser)]
#[command(
    name = "kvmnet",
    version,
    about = "Declarative networking for KVM hosts"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Scope {
    /// Operate inside this network namespace (created if missing); nothing outside it is
    /// touched except guest namespaces the spec names.
    #[arg(long, value_name = "NS")]
    netns: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check a spec and report every error with its field and line:column.
    Validate { file: PathBuf },
    /// Show what apply would change.
    Plan {
        file: PathBuf,
        #[command(flatten)]
        scope: Scope,
    },
    /// Make the host match the spec; roll back on failure.
    Apply {
        file: PathBuf,
        #[command(flatten)]
        scope: Scope,
    },
    /// Remove everything kvmnet created, give moved addresses back, restore sysctls.
    Destroy {
        #[command(flatten)]
        scope: Scope,
    },
    /// Networks and ports with live state and counters.
    Status {
        #[command(flatten)]
        scope: Scope,
    },
}

const EXIT_RUNTIME: u8 = 1;
const EXIT_INVALID: u8 = 2;

enum Fail {
    /// Bad input: nothing was changed.
    Invalid(String, Vec<SpecError>),
    Runtime(String),
}

fn print_errors(file: &str, errors: &[SpecError], as_json: bool) {
    for e in errors {
        eprintln!(
            "{file}:{}:{}: {}: {}",
            e.loc.line, e.loc.col, e.path, e.message
        );
    }
    if as_json {
        let v: Vec<_> = errors
            .iter()
            .map(|e| json!({ "path": e.path, "line": e.loc.line, "column": e.loc.col, "message": e.message }))
            .collect();
        println!("{}", json!({ "changes": [], "errors": v }));
    }
}

fn load(file: &Path) -> Result<Spec, Fail> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| {
        Fail::Invalid(
            name.clone(),
            vec![SpecError {
                path: String::new(),
                loc: spec::Loc { line: 1, col: 1 },
                message: format!("cannot read the spec: {e}"),
            }],
        )
    })?;
    spec::parse_bytes(&bytes).map_err(|errs| Fail::Invalid(name, errs))
}

/// Switch this (still single-threaded) process into the sandbox namespace.
fn enter(ns: &Option<String>) -> Result<String, Fail> {
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
        return Err(Fail::Invalid(
            "--netns".into(),
            vec![SpecError {
                path: "--netns".into(),
                loc: spec::Loc { line: 0, col: 0 },
                message: format!("'{ns}' is not a namespace name ([A-Za-z0-9_.-], at most 64)"),
            }],
        ));
    }
    if !netns::exists(ns) {
        netns::create(ns).map_err(|e| Fail::Runtime(e.to_string()))?;
    }
    netns::enter(ns).map_err(|e| Fail::Runtime(e.to_string()))?;
    Ok(ns.clone())
}

struct Planned {
    plan: Plan,
    /// sysctls the spec enforces (the rest of the sysctl steps are restores).
    managed: BTreeSet<String>,
    observer: Observer,
    /// Held from observation to the end of apply.
    _lock: std::fs::File,
}

fn make_plan(spec: Option<&Spec>, scope: &str, file: &str) -> Result<Planned, Fail> {
    let observer = Observer::new(scope);
    let lock = observer
        .state_dir
        .lock()
        .map_err(|e| Fail::Runtime(e.to_string()))?;
    let snap = observer
        .snapshot(spec)
        .map_err(|e| Fail::Runtime(format!("cannot read the host: {e}")))?;
    let empty = Spec {
        version: 1,
        host: Default::default(),
        networks: Default::default(),
        vms: Default::default(),
        locs: Default::default(),
    };
    let spec = spec.unwrap_or(&empty);
    let want = desired::desired(spec, &snap).map_err(|e| Fail::Invalid(file.to_string(), e))?;
    let uplinks: BTreeSet<String> = want.uplinks.keys().cloned().collect();
    let keys: BTreeSet<String> = want.sysctls.keys().cloned().collect();
    let have = desired::observed(&snap, &uplinks, &keys);
    Ok(Planned {
        plan: plan::diff(&want, &have),
        managed: managed_sysctls(spec).into_keys().collect(),
        observer,
        _lock: lock,
    })
}

fn fail_after() -> Result<Option<usize>, Fail> {
    match std::env::var("KVMNET_FAIL_AFTER") {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| {
            Fail::Invalid(
                "KVMNET_FAIL_AFTER".into(),
                vec![SpecError {
                    path: "KVMNET_FAIL_AFTER".into(),
                    loc: spec::Loc { line: 0, col: 0 },
                    message: format!("'{v}' is not a step number"),
                }],
            )
        }),
    }
}

fn execute(p: Planned, scope: &str, as_json: bool) -> Result<(), Fail> {
    let fail_after = fail_after()?;
    if p.plan.is_empty() {
        if as_json {
            println!("{}", p.plan.to_json());
        } else {
            print!("{}", p.plan.render());
        }
        return Ok(());
    }
    // Remember first values of sysctls before touching them: written (and synced) before
    // the change, so even a crash mid-apply cannot lose them.
    let sd = &p.observer.state_dir;
    let before = sd.load().map_err(|e| Fail::Runtime(e.to_string()))?;
    let mut during = before.clone();
    for s in &p.plan.steps {
        if let Step::SetSysctl { key, from, .. } = s
            && p.managed.contains(key)
        {
            during
                .sysctl_originals
                .entry(key.clone())
                .or_insert(from.clone());
        }
    }
    if during != before {
        sd.save(&during).map_err(|e| Fail::Runtime(e.to_string()))?;
    }
    let mut kernel = Kernel::new(scope).map_err(|e| Fail::Runtime(e.to_string()))?;
    match apply::apply(&mut kernel, &p.plan.steps, fail_after) {
        Ok(()) => {
            let mut after = during.clone();
            after.sysctl_originals.retain(|k, _| p.managed.contains(k));
            if after != during {
                sd.save(&after).map_err(|e| Fail::Runtime(e.to_string()))?;
            }
            if as_json {
                println!("{}", p.plan.to_json());
            } else {
                print!("{}", p.plan.render());
                println!("Applied {} changes.", p.plan.steps.len());
            }
            Ok(())
        }
        Err(f) => {
            if during != before {
                let _ = sd.save(&before);
            }
            let mut msg = format!(
                "step {} ({}) failed: {}; the {} steps before it were rolled back",
                f.step,
                p.plan
                    .steps
                    .get(f.step.saturating_sub(1))
                    .map_or(String::new(), |s| s.to_string()),
                f.error,
                f.step.saturating_sub(1)
            );
            if !f.rollback_errors.is_empty() {
                msg.push_str(&format!(
                    "; ROLLBACK INCOMPLETE, check the host: {}",
                    f.rollback_errors.join("; ")
                ));
            }
            if as_json {
                println!(
                    "{}",
                    json!({ "changes": [], "error": msg, "rolled_back": f.rollback_errors.is_empty() })
                );
            }
            Err(Fail::Runtime(msg))
        }
    }
}

fn run(cli: Cli) -> Result<(), (Fail, bool)> {
    match cli.command {
        Command::Validate { file } => {
            let spec = load(&file).map_err(|f| (f, false))?;
            let ports: usize = spec.vms.values().map(|v| v.ports.len()).sum();
            println!(
                "{}: valid ({} networks, {} VMs, {} ports)",
                file.display(),
                spec.networks.len(),
                spec.vms.len(),
                ports
            );
            Ok(())
        }
        Command::Plan { file, scope } => {
            let j = scope.json;
            let spec = load(&file).map_err(|f| (f, j))?;
            let s = enter(&scope.netns).map_err(|f| (f, j))?;
            let p = make_plan(Some(&spec), &s, &file.display().to_string()).map_err(|f| (f, j))?;
            if j {
                println!("{}", p.plan.to_json());
            } else {
                print!("{}", p.plan.render());
            }
            Ok(())
        }
        Command::Apply { file, scope } => {
            let j = scope.json;
            let spec = load(&file).map_err(|f| (f, j))?;
            let s = enter(&scope.netns).map_err(|f| (f, j))?;
            let p = make_plan(Some(&spec), &s, &file.display().to_string()).map_err(|f| (f, j))?;
            execute(p, &s, j).map_err(|f| (f, j))
        }
        Command::Destroy { scope } => {
            let j = scope.json;
            let s = enter(&scope.netns).map_err(|f| (f, j))?;
            let p = make_plan(None, &s, "(destroy)").map_err(|f| (f, j))?;
            execute(p, &s, j).map_err(|f| (f, j))
        }
        Command::Status { scope } => {
            let j = scope.json;
            let s = enter(&scope.netns).map_err(|f| (f, j))?;
            let snap = Observer::new(&s)
                .snapshot(None)
                .map_err(|e| (Fail::Runtime(format!("cannot read the host: {e}")), j))?;
            let v = status::status_json(&snap);
            if j {
                println!("{v}");
            } else {
                print!("{}", status::render(&v));
            }
            Ok(())
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((Fail::Invalid(file, errors), as_json)) => {
            print_errors(&file, &errors, as_json);
            ExitCode::from(EXIT_INVALID)
        }
        Err((Fail::Runtime(msg), _)) => {
            eprintln!("kvmnet: {msg}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
