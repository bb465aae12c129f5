//! `GET /v1/debug/watch`: the notification cache's view of the host against a whole fresh
//! read. Apart from the API in `mod.rs` because it serves tests and doubters, not operators,
//! and comparing two snapshots is a concern of its own.

use serde_json::{Value, json};

use super::{Shared, api};
use crate::error::observe_kind;
use crate::observe::Observer;

/// `GET /v1/debug/watch`: the cached observation against a whole fresh read, for tests and
/// for anyone who doubts the cache. Lists the links and the other parts that differ.
pub(super) fn watch_check(sh: &Shared) -> api::Response {
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
        (Err(e), _) | (_, Err(e)) => {
            return api::Response::failed(observe_kind(&e), e.to_string());
        }
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
