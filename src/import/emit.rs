//! The imported spec as YAML, in the order and style of the README's examples. Names are
//! quoted (a VM called `no` or `1e3` stays a name); everything else is written plain. The
//! same input always gives the same text.

use std::fmt::Write;

use super::model::{Mode, Network, Port, Qos, Shape, Spec};

pub fn spec(s: &Spec) -> String {
    let mut out = String::from(
        "# Imported from libvirt XML by `kvmnet import libvirt`.\nversion: 1\nnetworks:\n",
    );
    for n in s.networks.values() {
        network(&mut out, n);
    }
    if s.vms.is_empty() {
        out.push_str("vms: {}\n");
        return out;
    }
    out.push_str("vms:\n");
    for vm in s.vms.values() {
        let _ = writeln!(out, "  {}:\n    ports:", quote(&vm.name));
        for p in &vm.ports {
            port(&mut out, p);
        }
    }
    out
}

/// `s` as a YAML double-quoted scalar: whatever the XML held, the output stays well-formed
/// YAML (quotes, backslashes and control characters escaped), so a value kvmnet cannot take
/// is refused by the validator by name instead of breaking the file.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() || c == '\u{feff}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(q, "\\u{:04x}", u32::from(c));
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

fn network(out: &mut String, n: &Network) {
    let _ = writeln!(out, "  {}:\n    mode: {}", quote(&n.name), n.mode.word());
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "    {k}: {v}");
        }
    };
    line("bridge", n.bridge.as_deref().map(quote));
    line("ipv4", n.ipv4.map(|(a, l)| format!("{a}/{l}")));
    line("mtu", n.mtu.map(|m| m.to_string()));
    line("uplink", n.uplink.as_deref().map(quote));
    if let Mode::Direct(m) = n.mode {
        line("direct_mode", Some(m.to_string()));
    }
    line(
        "nat",
        n.nat_egress
            .as_ref()
            .map(|e| format!("{{ egress: {} }}", quote(e))),
    );
    line("bandwidth", n.bandwidth.clone());
    line("isolate_ports", n.isolate_ports.then(|| "true".to_string()));
    if let Some(d) = &n.dhcp {
        if d.range.is_none() && d.lease_secs.is_none() && d.domain.is_none() {
            out.push_str("    dhcp: {}\n");
        } else {
            out.push_str("    dhcp:\n");
            if let Some((a, b)) = d.range {
                let _ = writeln!(out, "      range: {a}-{b}");
            }
            if let Some(s) = d.lease_secs {
                let _ = writeln!(out, "      lease_time: {s}");
            }
            if let Some(dom) = &d.domain {
                let _ = writeln!(out, "      domain: {}", quote(dom));
            }
        }
    }
}

fn port(out: &mut String, p: &Port) {
    let _ = writeln!(out, "      - network: {}", quote(&p.network));
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "        {k}: {v}");
        }
    };
    line("name", p.name.as_deref().map(quote));
    line("mac", p.mac.clone());
    line("ipv4", p.ipv4.map(|a| a.to_string()));
    line("antispoof", p.antispoof.map(|a| a.to_string()));
    line("queues", p.queues.map(|q| q.to_string()));
    if let Some(q) = &p.qos {
        qos(out, q);
    }
}

fn qos(out: &mut String, q: &Qos) {
    if q.inbound.is_none() && q.outbound.is_none() && q.floor.is_none() {
        return;
    }
    out.push_str("        qos:\n");
    for (k, s) in [("inbound", &q.inbound), ("outbound", &q.outbound)] {
        if let Some(s) = s {
            let _ = writeln!(out, "          {k}: {}", shape(s));
        }
    }
    if let Some(f) = &q.floor {
        let _ = writeln!(out, "          floor: {f}");
    }
}

fn shape(s: &Shape) -> String {
    let mut t = format!("{{ rate: {}", s.rate);
    if let Some(c) = &s.ceil {
        let _ = write!(t, ", ceil: {c}");
    }
    if let Some(b) = &s.burst {
        let _ = write!(t, ", burst: {b}");
    }
    t.push_str(" }");
    t
}
