//! What `kvmnet bench` prints: a table of medians with their interquartile ranges, or one
//! JSON object with every sample (so a reader can compute anything else from it).

use serde_json::{Value, json};

use super::{Bench, Figure, SETTLED, SETTLED_LOSS_POINTS, stats};

/// Digits worth printing for a unit: throughput to 10 Mbit/s, loss to 0.01 point, latency
/// to the microsecond.
fn decimals(unit: &str) -> usize {
    match unit {
        "µs" => 0,
        _ => 2,
    }
}

/// "12.31 Gbit/s ±0.40" (median and interquartile range).
fn cell(f: &Figure) -> String {
    let Some(s) = stats::summary(&f.samples) else {
        return "-".into();
    };
    let d = decimals(f.unit);
    format!("{:.d$} {} (IQR {:.d$})", s.median, f.unit, s.iqr())
}

/// The report as text: what was measured where and with what, then one line per figure
/// and one column per configuration.
pub fn text(b: &Bench) -> String {
    let mut out = String::new();
    let place = b
        .network
        .as_ref()
        .map_or(String::new(), |n| format!(" on network {n}"));
    out.push_str(&format!("kvmnet bench{place}, {}\n", b.tool.describe()));
    for c in &b.configs {
        out.push_str(&format!(
            "  {}: {} ({}, {}) -> {} ({}, {}); policy: {}\n",
            c.name,
            c.client.port,
            c.client.addr,
            c.client.netns,
            c.server.port,
            c.server.addr,
            c.server.netns,
            c.policy
        ));
    }
    out.push_str(&format!(
        "{} rounds, {}; each bulk run {} s, latency over {} round trips of 64 bytes\n\n",
        b.rounds,
        match b.settled {
            true => "spread settled".to_string(),
            false => format!(
                "spread not settled within the round limit (IQR above {:.0} % of the median somewhere)",
                SETTLED * 100.0
            ),
        },
        b.secs,
        b.round_trips
    ));
    let cells: Vec<Vec<String>> = b
        .configs
        .iter()
        .map(|c| c.figures.iter().map(cell).collect())
        .collect();
    let width = cells.iter().flatten().map(|s| s.chars().count()).max();
    let width = width.unwrap_or(0).max(16);
    out.push_str(&format!("{:<16}", ""));
    for c in &b.configs {
        out.push_str(&format!("  {:<width$}", c.name));
    }
    out.push('\n');
    let labels = b
        .configs
        .first()
        .map(|c| c.figures.as_slice())
        .unwrap_or(&[]);
    for (i, f) in labels.iter().enumerate() {
        out.push_str(&format!("{:<16}", f.label));
        for row in &cells {
            let v = row.get(i).map_or("-", String::as_str);
            out.push_str(&format!("  {v:<width$}"));
        }
        out.push('\n');
    }
    out.push_str(concat!(
        "\nEach figure: median over the rounds (IQR: interquartile range, the spread of the middle half).\n",
        "Throughput is what the receiver got; UDP loss is the share of datagrams sent at that rate that\n",
        "never arrived; latency is one 64-byte request and its answer over TCP, p50/p99/p99.9 of each round.\n"
    ));
    out
}

fn figure_json(f: &Figure) -> Value {
    let s = stats::summary(&f.samples);
    json!({
        "unit": f.unit,
        "samples": f.samples,
        "median": s.map(|s| s.median),
        "q1": s.map(|s| s.q1),
        "q3": s.map(|s| s.q3),
        "iqr": s.map(|s| s.iqr()),
    })
}

/// The report as one JSON object.
pub fn json(b: &Bench) -> Value {
    let end = |e: &super::Endpoint| json!({ "port": e.port, "netns": e.netns, "ipv4": e.addr.to_string() });
    let configs: Vec<Value> = b
        .configs
        .iter()
        .map(|c| {
            let metrics: serde_json::Map<String, Value> = c
                .figures
                .iter()
                .map(|f| (f.key.clone(), figure_json(f)))
                .collect();
            json!({
                "name": c.name,
                "policy": c.policy,
                "client": end(&c.client),
                "server": end(&c.server),
                "metrics": metrics,
            })
        })
        .collect();
    json!({
        "tool": match &b.tool {
            super::Tool::Iperf3(v) => v.clone(),
            super::Tool::Own => "kvmnet".to_string(),
        },
        "tool_note": b.tool.describe(),
        "network": b.network,
        "rounds": b.rounds,
        "settled": b.settled,
        "settled_when": { "iqr_over_median": SETTLED, "loss_iqr_points": SETTLED_LOSS_POINTS },
        "bulk_seconds": b.secs,
        "round_trips": b.round_trips,
        "configurations": configs,
    })
}
