//! A port's policy features: firewall, shaping, offloads.

use super::*;
use crate::spec::{IpCidr, icmpv6_counterpart};

/// A rate in the largest unit that divides it: 1gbit, 250mbit, 1500kbit, 12bit.
pub fn show_rate(bps: u64) -> String {
    for (unit, scale) in [
        ("tbit", 1_000_000_000_000),
        ("gbit", 1_000_000_000),
        ("mbit", 1_000_000),
        ("kbit", 1_000),
    ] {
        if bps >= scale && bps.is_multiple_of(scale) {
            return format!("{}{unit}", bps / scale);
        }
    }
    format!("{bps}bit")
}

/// An `ethtool` mapping (offloads, rings, channels) of a port or a host interface; `None` if
/// any of it is wrong (each problem reported at its line).
pub(super) fn read_ethtool(cx: &mut Ctx, f: &Field) -> Option<Ethtool> {
    let before = cx.errors.len();
    let o = obj(
        cx,
        f.node,
        &f.path,
        ETHTOOL_FIELDS,
        "a mapping with offloads, rings and channels",
    )?;
    let mut settings = BTreeMap::new();
    if let Some(of) = o.get(cx, "offloads")
        && let Some(oo) = obj(
            cx,
            of.node,
            &of.path,
            OFFLOAD_FIELDS,
            "a mapping of offloads to true or false, like { tso: false }",
        )
    {
        for key in OFFLOAD_FIELDS {
            if let Some(kf) = oo.get(cx, key)
                && let Some(b) = boolean(cx, &kf)
            {
                settings.insert(key.to_string(), u32::from(b));
            }
        }
    }
    for (group, fields, max) in [
        ("rings", RING_FIELDS, RING_MAX),
        ("channels", CHANNEL_FIELDS, CHANNEL_MAX),
    ] {
        let Some(gf) = o.get(cx, group) else { continue };
        let what = format!("a mapping with {}", fields.join(", "));
        let Some(go) = obj(cx, gf.node, &gf.path, fields, &what) else {
            continue;
        };
        for key in fields {
            if let Some(kf) = go.get(cx, key)
                && let Some(n) = int_in(
                    cx,
                    &kf,
                    &format!("a {group} count between 1 and {max}"),
                    1,
                    max,
                )
            {
                settings.insert(format!("{group}.{key}"), n as u32);
            }
        }
    }
    (cx.errors.len() == before).then(|| Ethtool {
        settings,
        path: f.path.clone(),
    })
}

// ---------------------------------------------------------------------------------------
// Per-port firewall

pub(super) const FIREWALL_FIELDS: &[&str] = &["inbound", "outbound"];
pub(super) const DIRECTION_FIELDS: &[&str] = &["policy", "rules"];
pub(super) const RULE_FIELDS: &[&str] = &[
    "proto",
    "ports",
    "from",
    "to",
    "icmp_types",
    "connlimit",
    "rate",
    "action",
    "log",
];
pub(super) const ICMP_TYPES: &[&str] = &[
    "echo-reply",
    "destination-unreachable",
    "source-quench",
    "redirect",
    "echo-request",
    "router-advertisement",
    "router-solicitation",
    "time-exceeded",
    "parameter-problem",
    "timestamp-request",
    "timestamp-reply",
    "info-request",
    "info-reply",
    "address-mask-request",
    "address-mask-reply",
];

pub(super) fn read_firewall(cx: &mut Ctx, f: &Field) -> Option<Firewall> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        FIREWALL_FIELDS,
        "a firewall (a mapping with inbound and/or outbound)",
    )?;
    let mut fw = Firewall::default();
    let mut ok = true;
    for (name, slot) in [("inbound", &mut fw.inbound), ("outbound", &mut fw.outbound)] {
        if let Some(df) = o.get(cx, name) {
            match read_direction(cx, &df) {
                Some(d) => *slot = Some(d),
                None => ok = false,
            }
        }
    }
    ok.then_some(fw)
}

pub(super) fn read_direction(cx: &mut Ctx, f: &Field) -> Option<FirewallDirection> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        DIRECTION_FIELDS,
        "a direction (a mapping with policy and rules)",
    )?;
    let mut d = FirewallDirection {
        accept_by_default: true,
        rules: Vec::new(),
    };
    let mut ok = true;
    if let Some(pf) = o.get(cx, "policy") {
        match text(cx, &pf, "accept or drop").as_deref() {
            Some("accept") => d.accept_by_default = true,
            Some("drop") => d.accept_by_default = false,
            Some(p) => {
                cx.err(
                    &pf.path,
                    pf.loc(),
                    format!("'{}' is not a policy; expected accept or drop", show(p)),
                );
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(rf) = o.get(cx, "rules") {
        match list(cx, &rf, "a list of rules") {
            Some(items) => {
                for item in items {
                    match read_rule(cx, &item) {
                        Some(r) => d.rules.push(r),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    ok.then_some(d)
}

pub(super) fn read_port_range(cx: &mut Ctx, f: &Field) -> Option<(u16, u16)> {
    let t = text(cx, f, "a port or a range like 8000-8100")?;
    let parse = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let r = match t.split_once('-') {
        Some((a, b)) => parse(a).zip(parse(b)).filter(|(a, b)| a <= b),
        None => parse(&t).map(|p| (p, p)),
    };
    if r.is_none() {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "'{}' is not a port (1-65535) or a range low-high like 8000-8100",
                show(&t)
            ),
        );
    }
    r
}

pub(super) fn read_rule(cx: &mut Ctx, f: &Field) -> Option<FirewallRule> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        RULE_FIELDS,
        "a rule (a mapping with proto, ports, from, to, action, ...)",
    )?;
    let errors_before = cx.errors.len();
    let mut r = FirewallRule {
        proto: RuleProto::Any,
        ports: Vec::new(),
        from: None,
        to: None,
        icmp_types: Vec::new(),
        connlimit: None,
        rate: None,
        action: RuleAction::Accept,
        log: false,
    };
    if let Some(pf) = o.get(cx, "proto") {
        r.proto = rule_proto(cx, &pf).unwrap_or(r.proto);
    }
    if let Some(pf) = o.get(cx, "ports") {
        if !matches!(r.proto, RuleProto::Tcp | RuleProto::Udp) {
            cx.err(&pf.path, pf.loc(), "ports need proto: tcp or proto: udp");
        } else if let Some(items) = list(cx, &pf, "a list of ports") {
            for item in items {
                if let Some(p) = read_port_range(cx, &item) {
                    r.ports.push(p);
                }
            }
        }
    }
    rule_addresses(cx, &o, &mut r);
    rule_icmp_types(cx, &o, &mut r);
    if let Some(cf) = o.get(cx, "connlimit") {
        r.connlimit = int_in(
            cx,
            &cf,
            "a connection count between 1 and 1000000",
            1,
            1_000_000,
        )
        .map(|n| n as u32);
    }
    if let Some(rf) = o.get(cx, "rate") {
        r.rate = rule_rate(cx, &rf);
    }
    if let Some(af) = o.get(cx, "action") {
        r.action = rule_action(cx, &af).unwrap_or(r.action);
    }
    if let Some(lf) = o.get(cx, "log")
        && let Some(b) = boolean(cx, &lf)
    {
        r.log = b;
    }
    (cx.errors.len() == errors_before).then_some(r)
}

fn rule_proto(cx: &mut Ctx, pf: &Field) -> Option<RuleProto> {
    match text(cx, pf, "tcp, udp, icmp or any").as_deref()? {
        "tcp" => Some(RuleProto::Tcp),
        "udp" => Some(RuleProto::Udp),
        "icmp" => Some(RuleProto::Icmp),
        "any" => Some(RuleProto::Any),
        p => {
            cx.err(
                &pf.path,
                pf.loc(),
                format!(
                    "'{}' is not a protocol; expected tcp, udp, icmp or any",
                    show(p)
                ),
            );
            None
        }
    }
}

/// `from` and `to`, which must be of one family when both are given.
fn rule_addresses(cx: &mut Ctx, o: &Obj, r: &mut FirewallRule) {
    for (name, slot) in [("from", &mut r.from), ("to", &mut r.to)] {
        if let Some(af) = o.get(cx, name) {
            *slot = read_addr_match(cx, &af);
        }
    }
    if let (Some(f), Some(t)) = (r.from, r.to)
        && f.is_v6() != t.is_v6()
        && let Some(tf) = o.get(cx, "to")
    {
        cx.err(
            &tf.path,
            tf.loc(),
            format!("from {f} and to {t} are of two families, so the rule could match nothing: write one rule per family"),
        );
    }
}

/// `icmp_types` (with `proto: icmp`), by name; an IPv6 rule needs one with an ICMPv6
/// counterpart. After [`rule_addresses`], whose family it checks against.
fn rule_icmp_types(cx: &mut Ctx, o: &Obj, r: &mut FirewallRule) {
    let Some(tf) = o.get(cx, "icmp_types") else {
        return;
    };
    if r.proto != RuleProto::Icmp {
        cx.err(&tf.path, tf.loc(), "icmp_types need proto: icmp");
    } else if let Some(items) = list(cx, &tf, "a list of ICMP type names") {
        for item in items {
            let Some(t) = text(cx, &item, "an ICMP type name") else {
                continue;
            };
            if ICMP_TYPES.contains(&t.as_str()) {
                r.icmp_types.push(t);
            } else {
                cx.err(
                    &item.path,
                    item.loc(),
                    format!(
                        "'{}' is not an ICMP type; expected one of: {}{}",
                        show(&t),
                        ICMP_TYPES.join(", "),
                        super::suggest::did_you_mean(&t, ICMP_TYPES)
                    ),
                );
            }
        }
    }
    if r.from.or(r.to).is_some_and(|c| c.is_v6())
        && !r.icmp_types.is_empty()
        && !r.icmp_types.iter().any(|t| icmpv6_counterpart(t).is_some())
    {
        cx.err(
            &tf.path,
            tf.loc(),
            "none of these ICMP types has an ICMPv6 counterpart, and the rule's from/to is IPv6: it could match nothing",
        );
    }
}

/// `rate: N/second` (or minute, hour, day).
fn rule_rate(cx: &mut Ctx, rf: &Field) -> Option<(u32, String)> {
    let t = text(cx, rf, "a rate like 10/second")?;
    let parsed = t.split_once('/').and_then(|(n, u)| {
        let n: u32 = n.trim().parse().ok().filter(|n| *n > 0)?;
        let u = u.trim();
        ["second", "minute", "hour", "day"]
            .contains(&u)
            .then(|| (n, u.to_string()))
    });
    if parsed.is_none() {
        cx.err(
            &rf.path,
            rf.loc(),
            format!(
                "'{}' is not a rate; expected N/second, N/minute, N/hour or N/day",
                show(&t)
            ),
        );
    }
    parsed
}

fn rule_action(cx: &mut Ctx, af: &Field) -> Option<RuleAction> {
    match text(cx, af, "accept, drop or reject").as_deref()? {
        "accept" => Some(RuleAction::Accept),
        "drop" => Some(RuleAction::Drop),
        "reject" => Some(RuleAction::Reject),
        a => {
            cx.err(
                &af.path,
                af.loc(),
                format!(
                    "'{}' is not an action; expected accept, drop or reject",
                    show(a)
                ),
            );
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Traffic shaping

pub(super) const QOS_FIELDS: &[&str] = &["inbound", "outbound", "floor"];
pub(super) const SHAPE_FIELDS: &[&str] = &["rate", "ceil", "burst"];

/// `100mbit`, `1gbit`, `500kbit`, `64000bit`; `bps` units are bytes per second, as in tc.
pub(crate) fn parse_rate(t: &str) -> Result<u64, String> {
    let t = t.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{t}' is not a rate; expected a number and a unit, like 100mbit"))?;
    let mult: f64 = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => {
            return Err(format!(
                "'{t}' has no known unit; use bit, kbit, mbit, gbit, tbit (or bps, kbps, mbps, gbps for bytes per second)"
            ));
        }
    };
    let v = n * mult;
    if !(8.0..=1.6e13).contains(&v) {
        return Err(format!("{t} is out of range (8bit to 16tbit)"));
    }
    Ok(v as u64)
}

/// `15k`, `1m`, `1600` (bytes).
pub(super) fn parse_size(t: &str) -> Result<u32, String> {
    let t = t.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{t}' is not a size; expected bytes like 1600, 15k or 1m"))?;
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1024,
        "m" | "mb" => 1024 * 1024,
        _ => return Err(format!("'{t}' has no known unit; use b, k or m")),
    };
    u32::try_from(n * mult)
        .ok()
        .filter(|v| *v >= 64)
        .ok_or_else(|| format!("{t} is out of range (64 bytes to 4g)"))
}

pub(super) fn read_shape(cx: &mut Ctx, f: &Field) -> Option<Shape> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        SHAPE_FIELDS,
        "a rate (a mapping with rate and optional ceil and burst)",
    )?;
    let errors_before = cx.errors.len();
    let read = |cx: &mut Ctx, name: &str, what: &str| -> Option<u64> {
        let rf = o.get(cx, name)?;
        let t = text(cx, &rf, what)?;
        match parse_rate(&t) {
            Ok(v) => Some(v),
            Err(m) => {
                cx.err(&rf.path, rf.loc(), m);
                None
            }
        }
    };
    let rate = read(cx, "rate", "a rate like 100mbit");
    let ceil = read(cx, "ceil", "a rate like 200mbit");
    let mut burst = None;
    if let Some(bf) = o.get(cx, "burst")
        && let Some(t) = text(cx, &bf, "a size like 15k")
    {
        match parse_size(&t) {
            Ok(v) => burst = Some(v),
            Err(m) => cx.err(&bf.path, bf.loc(), m),
        }
    }
    if rate.is_none() && cx.errors.len() == errors_before {
        cx.err(
            &join(&f.path, "rate"),
            o.loc,
            "missing required field 'rate'; give the shaping rate, like 100mbit",
        );
    }
    let rate = rate?;
    if let Some(c) = ceil
        && c < rate
    {
        let cf = o.get(cx, "ceil").expect("ceil was read");
        cx.err(
            &cf.path,
            cf.loc(),
            "ceil is below rate; it must be at least the rate",
        );
        return None;
    }
    (cx.errors.len() == errors_before).then_some(Shape {
        rate_bps: rate,
        ceil_bps: ceil,
        burst_bytes: burst,
    })
}

pub(super) fn read_qos(cx: &mut Ctx, f: &Field) -> Option<Qos> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        QOS_FIELDS,
        "qos (a mapping with inbound and/or outbound)",
    )?;
    let mut q = Qos::default();
    if let Some(i) = o.get(cx, "inbound") {
        q.inbound = Some(read_shape(cx, &i)?);
    }
    if let Some(i) = o.get(cx, "outbound") {
        q.outbound = Some(read_shape(cx, &i)?);
    }
    if let Some(ff) = o.get(cx, "floor") {
        let t = text(cx, &ff, "a rate like 100mbit")?;
        match parse_rate(&t) {
            Ok(v) => q.floor_bps = Some(v),
            Err(m) => {
                cx.err(&ff.path, ff.loc(), m);
                return None;
            }
        }
    }
    Some(q)
}

/// A rule's `from` or `to`: an IPv4 or IPv6 network, or one address (a /32 or /128).
fn read_addr_match(cx: &mut Ctx, af: &Field) -> Option<IpCidr> {
    let t = text(
        cx,
        af,
        "an IPv4 or IPv6 network like 10.0.0.0/8 or 2001:db8::/32",
    )?;
    let parsed = if t.contains(':') {
        let c = if t.contains('/') {
            t.parse::<Ipv6Cidr>()
        } else {
            t.parse::<std::net::Ipv6Addr>()
                .map(|a| Ipv6Cidr {
                    addr: a,
                    prefix: 128,
                })
                .map_err(|_| format!("'{}' is not an IPv6 address", show(&t)))
        };
        c.map(|c| (IpCidr::V6(c), IpCidr::V6(c.network())))
    } else {
        let c = if t.contains('/') {
            parse_cidr(&t)
        } else {
            parse_ip(&t).map(|a| Ipv4Cidr::new(a, 32))
        };
        c.map(|c| (IpCidr::V4(c), IpCidr::V4(c.network())))
    };
    match parsed {
        Ok((c, net)) if c == net => Some(c),
        Ok((c, net)) => {
            cx.err(
                &af.path,
                af.loc(),
                format!("{c} has host bits set; did you mean {net}?"),
            );
            None
        }
        Err(m) => {
            cx.err(&af.path, af.loc(), m);
            None
        }
    }
}
