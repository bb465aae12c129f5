//! `kvmnet doctor`: a troubleshooting checklist of the spec in force (the one `kvmnet show`
//! prints) against the live host. The checks are pure ([`checks`]); this module gathers the
//! host facts they look at, in the scope's namespace (the process is in it already), and
//! prints the results as text or JSON.

pub mod checks;

use serde_json::json;

use crate::engine::{self, EngineError};
use checks::{Check, Facts, Status};

/// The spec in force in `scope`: the newest recorded one, or the empty spec.
fn spec_in_force(scope: &str) -> Result<(String, crate::spec::Spec), EngineError> {
    let (source, text) = crate::show::recorded(scope)?
        .unwrap_or_else(|| ("(none)".to_string(), b"version: 1\n".to_vec()));
    let (id, _) = crate::host_macs::host_identity(scope);
    let spec = engine::parse(&source, &text, &id)?;
    Ok((source, spec))
}

/// Reads what the checks of `spec` look at.
fn gather(scope: &str, spec: &crate::spec::Spec) -> Facts {
    let sysctls = checks::sysctl_keys(spec)
        .into_iter()
        .map(|k| {
            let v = crate::backend::sysctl::read(&k);
            (k, v)
        })
        .collect();
    let (forward_drops, forward_drops_error) = match forward_drops() {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let (links, links_error) = match links() {
        Ok(l) => (l, None),
        Err(e) => (Default::default(), Some(e)),
    };
    Facts {
        scope: scope.to_string(),
        sysctls,
        forward_drops,
        forward_drops_error,
        links,
        links_error,
        daemon_running: crate::daemon::api::daemon_listening(
            &crate::statedir::StateDir::for_scope(scope).dir,
        ),
    }
}

/// The scope's links by name.
fn links() -> Result<std::collections::BTreeMap<String, crate::snapshot::LinkSnap>, String> {
    let mut nl = crate::backend::rtnl::Netlink::open().map_err(|e| e.to_string())?;
    let snap = crate::observe::read_links(&mut nl).map_err(|e| e.to_string())?;
    Ok(snap
        .links
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect())
}

/// Other tables' forward chains with policy drop: nftables' (iptables-nft's among them),
/// and legacy iptables' FORWARD when its filter table is loaded here.
fn forward_drops() -> Result<Vec<(String, String, String)>, String> {
    let mut out = crate::backend::nftables::foreign_forward_drops().map_err(|e| e.to_string())?;
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    if legacy.lines().any(|t| t == "filter") {
        let o = std::process::Command::new("iptables-legacy")
            .args(["-w", "-S", "FORWARD"])
            .output()
            .ok()
            .filter(|o| o.status.success());
        let policy_drop = o.is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "-P FORWARD DROP")
        });
        if policy_drop {
            out.push(("ip".into(), "filter".into(), "FORWARD".into()));
        }
    }
    out.dedup();
    Ok(out)
}

/// Runs every check in `scope` and prints the results; returns whether any failed.
pub fn run(scope: &str, as_json: bool) -> Result<bool, EngineError> {
    let (source, spec) = spec_in_force(scope)?;
    let facts = gather(scope, &spec);
    let results = checks::all(&spec, &facts);
    if as_json {
        println!("{}", to_json(&source, &results));
    } else {
        print!("{}", render(&source, &results));
    }
    Ok(results.iter().any(|c| c.status == Status::Fail))
}

fn to_json(source: &str, results: &[Check]) -> serde_json::Value {
    let checks: Vec<_> = results
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "status": c.status.as_str(), "subject": c.subject,
                "message": c.message, "fix": c.fix,
            })
        })
        .collect();
    json!({ "spec": source, "checks": checks })
}

/// One line a result (`status id message`: the message names its subject), the fix
/// indented under it, and a count.
fn render(source: &str, results: &[Check]) -> String {
    let mut out = format!("Spec in force: {source}\n");
    for c in results {
        let status = c.status.as_str();
        out.push_str(&format!("{status:<5} {:<20} {}\n", c.id, c.message));
        if !c.fix.is_empty() {
            out.push_str(&format!("{:<26} fix: {}\n", "", c.fix));
        }
    }
    let count = |s| results.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "{} ok, {} warn, {} fail\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}
