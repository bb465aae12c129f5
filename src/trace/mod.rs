//! `kvmnet trace`: the model's walk of one packet (`kvmnet_core::trace`) through the spec in
//! force, printed hop by hop; with `--live`, the same packet sent for real and the kernel's
//! verdicts read back ([`live`]).

use serde_json::{Value, json};

use crate::cli::TraceArgs;
use crate::engine::{self, EngineError};
use kvmnet_core::trace::{self as model, Hop, Packet, Trace, Verdict};

pub mod live;

/// Runs the trace; true when the packet gets there (and, with `--live`, the kernel agrees).
pub fn run(a: &TraceArgs, scope: &str) -> Result<bool, EngineError> {
    let (source, text) = match &a.spec {
        Some(f) => crate::cli::read_spec(f)?,
        None => crate::show::recorded(scope)?.ok_or_else(|| {
            EngineError::Usage(
                "no spec was applied in this scope: apply one, or give one with --spec".into(),
            )
        })?,
    };
    let (id, _) = crate::host_macs::host_identity(scope);
    let spec = engine::parse(&source, &text, &id)?;
    let usage = |e: model::TraceError| EngineError::Usage(e.to_string());
    let opts = model::Options {
        ipv6: a.ipv6,
        source: a.source,
    };
    let packet = model::packet(&spec, &a.from, &a.to, &a.proto, opts).map_err(usage)?;
    if a.live && (packet.v6() || a.source.is_some()) {
        return Err(EngineError::Usage(
            "--live sends IPv4 probes from the port's own address only: trace an IPv6 or --source packet without it".into(),
        ));
    }
    let trace = model::walk(&spec, &packet);
    let kernel = if a.live {
        Some(live::run(&packet)?)
    } else {
        None
    };
    let agree = kernel.as_ref().map(|k| live::compare(&trace, k));
    let reached = trace.verdict() == Verdict::Accept;
    if a.json {
        println!(
            "{}",
            to_json(
                &packet,
                &trace,
                &source,
                kernel.as_ref().zip(agree.as_ref())
            )
        );
    } else {
        print!("{}", render(&packet, &trace, &source));
        if let (Some(k), Some(c)) = (&kernel, &agree) {
            print!("{}", live::render(k, c));
        }
    }
    Ok(reached && agree.is_none_or(|c| c.agree))
}

/// `a/0 (t-a) 10.0.0.10 -> b/0 (t-b) 10.0.0.11 tcp/22`.
fn headline(p: &Packet<'_>) -> String {
    let from = p.saddr;
    let to = match &p.dest {
        model::Dest::Port(d, a) => format!("{} {a}", model::port_label(d)),
        model::Dest::Host(a) => format!("the host {a}"),
        model::Dest::Addr(a) => a.to_string(),
    };
    format!("{} {from} -> {to} {}", model::port_label(p.src), p.l4)
}

/// `spec.yaml:12:9`, where the hop's rule is written.
fn at(h: &Hop, source: &str) -> Option<String> {
    h.loc.map(|l| format!("{source}:{l}"))
}

fn render(p: &Packet<'_>, t: &Trace, source: &str) -> String {
    let mut out = format!("trace {}\n", headline(p));
    for h in &t.hops {
        let mut line = format!(
            "{:<13} {:<8} {}",
            h.stage.as_str(),
            h.verdict.as_str(),
            h.rule
        );
        if let (Some(c), Some(r)) = (&h.chain, &h.nft) {
            line.push_str(&format!(" [{c}: {r}]"));
        }
        if let Some(a) = at(h, source) {
            line.push_str(&format!("  ({a})"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let end = match t.stopped_by() {
        None => "verdict: accept (it gets there)".to_string(),
        Some(h) => format!("verdict: {} at {}", h.verdict.as_str(), h.stage.as_str()),
    };
    out.push_str(&end);
    out.push('\n');
    out
}

fn to_json(
    p: &Packet<'_>,
    t: &Trace,
    source: &str,
    kernel: Option<(&live::Kernel, &live::Comparison)>,
) -> Value {
    let hops: Vec<Value> = t
        .hops
        .iter()
        .map(|h| {
            json!({
                "stage": h.stage,
                "verdict": h.verdict,
                "rule": h.rule,
                "chain": h.chain,
                "nft": h.nft,
                "field": h.field,
                "at": at(h, source),
            })
        })
        .collect();
    let mut v = json!({
        "packet": headline(p),
        "verdict": t.verdict(),
        "stopped_at": t.stopped_by().map(|h| h.stage),
        "nft_verdict": t.nft_verdict(),
        "spec": source,
        "hops": hops,
    });
    if let Some((k, c)) = kernel {
        v["live"] = live::to_json(k, c);
    }
    v
}
