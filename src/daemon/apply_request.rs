//! `POST /v1/apply`: a spec sent by a client, read from the request, parsed and planned while
//! its record is written aside, recorded as accepted, applied, and from then on enforced.
//! Apart from the rest of the API in `mod.rs` because it is the one request with a
//! transaction of its own (the record put in place before the host changes, put back when
//! the apply is rolled back).

use std::sync::Arc;
use std::time::Instant;

use super::accepted::{self, Accepted, Origin};
use super::{Shared, api, error_response, log, refuse_while_pending};
use crate::engine::{self, EngineError, ErrorKind, Pending};
use crate::log::Level;
use crate::metrics::Operation;
use crate::spec::Spec;
use crate::statedir::InPlace;

/// What `POST /v1/apply` asks for.
struct ApplyRequest<'a> {
    text: &'a str,
    source: String,
    confirm: Option<u64>,
    action: &'static str,
}

/// Reads `POST /v1/apply {"spec": TEXT, "source": NAME, "confirm_within": SECS?,
/// "action": "apply"|"destroy", "chassis": NAME?}` (`chassis`, from `--chassis`, must be
/// the daemon's own). `KVMNET_FAIL_AFTER`'s `fail_after` is a test hook of the
/// CLI: a client cannot make the daemon fail on purpose.
fn apply_fields<'a>(
    req: &'a api::Request,
    chassis: &str,
) -> Result<ApplyRequest<'a>, api::Response> {
    if !req.framed {
        return Err(api::Response::error(
            411,
            "POST /v1/apply needs a body with Content-Length or chunked",
        ));
    }
    let body = &req.body;
    if body.get("fail_after").is_some() {
        return Err(api::Response::failed(
            ErrorKind::Usage,
            "fail_after is a test hook of the command line (KVMNET_FAIL_AFTER), not of the API",
        ));
    }
    if let Some(c) = body["chassis"].as_str().filter(|c| *c != chassis) {
        return Err(api::Response::failed(
            ErrorKind::Usage,
            format!(
                "this daemon is OVN chassis {chassis}, not {c}: restart it with --chassis {c}, or apply without --chassis"
            ),
        ));
    }
    let Some(text) = body["spec"].as_str() else {
        return Err(api::Response::failed(
            ErrorKind::Usage,
            "body needs \"spec\"",
        ));
    };
    let action = match body["action"].as_str() {
        None | Some("apply") => "apply",
        Some("destroy") => "destroy",
        Some(a) => {
            return Err(api::Response::failed(
                ErrorKind::Usage,
                format!("action '{a}' is not apply or destroy"),
            ));
        }
    };
    Ok(ApplyRequest {
        text,
        source: body["source"].as_str().unwrap_or("(api)").to_string(),
        confirm: api::number(body, "confirm_within"),
        action,
    })
}

/// A spec an API client sent, parsed and planned, and its record written beside the accepted
/// spec (when it is a new one), ready to be put in place.
struct Prepared {
    spec: Spec,
    hash: String,
    plan: engine::Planned,
    staged: Option<crate::statedir::Staged>,
}

/// Parses and plans `a`, writing `next` (its record, if it is a new spec) meanwhile.
fn prepare(
    sh: &Shared,
    a: &ApplyRequest<'_>,
    next: Option<&Accepted>,
) -> Result<Prepared, EngineError> {
    let text = a.text.as_bytes();
    std::thread::scope(|scope| {
        // Syncing a new spec to disk takes milliseconds, and more on a busy disk: it is
        // written beside the accepted one while the spec is parsed and planned, and put in
        // place (a rename) only once it is known to be good. Meanwhile the notification cache
        // is brought up to date and the text hashed for the audit log, while the spec is
        // parsed: none depends on another, and the client waits for all. (An error in the
        // refresh shows again, and is reported, when the plan reads the cache.)
        // (One thread for all three: on a busy machine each thread more is a wait more.)
        let aside = scope.spawn(|| {
            let staged = next.map(|n| accepted::stage(&sh.state_dir.dir, n));
            let hash = sh.hasher.lock().expect("lock").hash(text);
            if let Some(w) = sh.watch.lock().expect("lock").as_mut() {
                let _ = w.refresh();
            }
            (hash, staged)
        });
        let parsed = engine::parse_cached(
            &mut sh.specs.lock().expect("lock"),
            &a.source,
            text,
            &sh.identity,
        )
        .and_then(|s| crate::host_macs::as_recorded(s, &sh.scope))
        .map(|s| sh.settled(s));
        let (hash, staged) = aside.join().expect("writing a file does not panic");
        let staged = staged.transpose()?;
        let spec = parsed?;
        let plan = engine::plan_with(
            Some(&spec),
            &sh.scope,
            &a.source,
            sh.watch.lock().expect("lock").as_mut(),
        )?;
        Ok(Prepared {
            spec,
            hash,
            plan,
            staged,
        })
    })
}

/// `POST /v1/apply`: the daemon validates the spec, records it as accepted, applies it and
/// from then on enforces it.
pub(super) fn apply_request(sh: &Arc<Shared>, req: &api::Request) -> api::Response {
    let a = match apply_fields(req, &sh.chassis) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut active = sh.active.lock().expect("lock");
    if let Err(e) = refuse_while_pending(sh) {
        return error_response(&e);
    }
    // The same text again is no new spec.
    let next = (active.accepted.text != a.text.as_bytes()).then(|| {
        active
            .accepted
            .next(Origin::Api, &a.source, a.text.as_bytes().to_vec())
    });
    let Prepared {
        spec,
        hash,
        plan: mut p,
        staged,
    } = match prepare(sh, &a, next.as_ref()) {
        Ok(x) => x,
        Err(e) => return error_response(&e),
    };
    let spec = p.settled.take().unwrap_or(spec);
    let previous_state = match p.state_dir.load() {
        Ok(s) => s,
        Err(e) => return error_response(&e.into()),
    };
    // Accepted before it is applied: renamed into place first, so that no crash of this
    // process can leave the host with a spec a restart would undo. The directory's sync,
    // which makes the rename survive a crash of the machine (the host's networking does not
    // survive that either), runs while the spec is applied, and the client has its answer
    // only once both are done. On a busy disk the sync took 10-20 ms, as long as the rest.
    let in_place = match staged.map(|s| accepted::put_in_place(s, &sh.state_dir.dir)) {
        Some(Err(e)) => return error_response(&e.into()),
        Some(Ok(in_place)) => Some(in_place),
        None => None,
    };
    let next = next.unwrap_or_else(|| active.accepted.clone());
    let (applied, synced, replaced) = execute_while_syncing(sh, &p, &a, &hash, req, in_place);
    if let Err(e) = applied {
        // Rolled back: the spec before stays the accepted one.
        if next.record.seq != active.accepted.record.seq
            && let Err(e) = sh.accept(&active.accepted)
        {
            log(
                Level::Error,
                &format!("cannot restore the accepted spec: {e}"),
            );
        }
        return error_response(&e);
    }
    let mut resp = api::Response::ok(p.plan_json().clone());
    if let Some(Err(e)) = synced {
        resp = api::Response::failed(
            ErrorKind::State,
            format!("applied, but the accepted spec could not be synced to disk: {e}"),
        );
    }
    if let Some(secs) = a.confirm {
        let pending = Pending {
            token: format!(
                "{:x}",
                crate::audit::now_unix() ^ u64::from(std::process::id())
            ),
            deadline_unix: crate::audit::now_unix() + secs,
            previous: p.previous.clone(),
            previous_state,
            previous_spec: Some(String::from_utf8_lossy(&active.accepted.text).into_owned()),
            spec_hash: hash,
            accepted_seq: Some(next.record.seq),
        };
        if let Err(e) = engine::save_pending(&p.state_dir, &pending) {
            resp = error_response(&e);
        }
    }
    sh.set_active(&mut active, spec, next);
    // Giving the plan's inputs back to the cache takes a millisecond or two at 1,000 ports:
    // done after the answer is sent. Until then the state directory stays locked, as it was
    // while the plan ran.
    let sh = Arc::clone(sh);
    resp.after = Some(Box::new(move || {
        // Removed on the freeing thread: unlinking 2 MB took a millisecond or more of the
        // CPU the client wants for its answer. The name is only there to keep the rename
        // from freeing the file's blocks: should the next apply link the spec it replaces to
        // it first, that link goes instead, and only that apply's rename costs more.
        if let Some(replaced) = replaced {
            sh.retire(replaced);
        }
        sh.finish(p);
    }));
    resp
}

/// Applies `p`, the accepted spec's directory synced meanwhile (when a new spec was put in
/// place): what the apply and the sync came to, and the replaced spec's other name, which
/// the caller removes after the answer (see `InPlace::sync_dir`).
fn execute_while_syncing(
    sh: &Shared,
    p: &engine::Planned,
    a: &ApplyRequest<'_>,
    hash: &str,
    req: &api::Request,
    in_place: Option<InPlace>,
) -> (
    Result<(), EngineError>,
    Option<std::io::Result<()>>,
    Option<InPlace>,
) {
    std::thread::scope(|scope| {
        let sync = in_place.map(|i| scope.spawn(move || (i.sync_dir(), i)));
        let started = Instant::now();
        let applied = engine::execute_as(p, a.action, hash, None, req.peer_uid);
        match &applied {
            Ok(()) => sh.metrics.applied(started.elapsed()),
            Err(_) => sh.metrics.failed(Operation::Apply),
        }
        let synced = sync.map(|t| t.join().expect("syncing a directory does not panic"));
        let (synced, replaced) = synced.unzip();
        (applied, synced, replaced)
    })
}
