//! A network's `dns` block, and the rules across the spec it brings: names answered twice,
//! VM names that cannot be DNS names, forwarders that would send queries back to kvmnet.

use std::net::IpAddr;

use super::*;
use crate::spec::dns::{self as names, DNS_RATE_DEFAULT, Dns};

pub(super) const DNS_FIELDS: &[&str] = &["domain", "forwarders", "records", "rate_limit"];
/// The most per-client queries per second `rate_limit` takes.
pub(super) const DNS_RATE_MAX: i128 = 10_000_000;

/// `dns` as read, with where each record's name and each forwarder was written.
#[derive(Clone)]
pub(crate) struct DnsDraft {
    pub(crate) dns: Dns,
    pub(crate) records: Vec<(String, String, Loc)>,
    pub(crate) forwarders: Vec<(IpAddr, String, Loc)>,
}

/// `dns`: refused (`refused` names the mode) where the host does not route the network.
pub(super) fn read_dns(cx: &mut Ctx, f: &Field, refused: Option<&str>) -> Option<DnsDraft> {
    if let Some(word) = refused {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "dns applies to nat, routed and isolated networks, where the host is the gateway; a {word} network is the LAN and its guests use the LAN's DNS (remove it)"
            ),
        );
        return None;
    }
    let o = obj(
        cx,
        f.node,
        &f.path,
        DNS_FIELDS,
        "a mapping of DNS settings (use {} for defaults)",
    )?;
    let mut d = DnsDraft {
        dns: Dns {
            domain: None,
            forwarders: None,
            records: Default::default(),
            rate_limit: DNS_RATE_DEFAULT,
        },
        records: Vec::new(),
        forwarders: Vec::new(),
    };
    let mut ok = true;
    if let Some(nf) = o.get(cx, "domain") {
        match text(cx, &nf, "a DNS domain name like vm.test") {
            Some(t) => match check_domain(t.trim_end_matches('.')) {
                Ok(()) => d.dns.domain = Some(t.trim_end_matches('.').to_ascii_lowercase()),
                Err(m) => {
                    cx.err(&nf.path, nf.loc(), m);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    if let Some(ff) = o.get(cx, "forwarders") {
        ok &= read_forwarders(cx, &ff, &mut d);
    }
    if let Some(rf) = o.get(cx, "records") {
        ok &= read_records(cx, &rf, &mut d);
    }
    if let Some(lf) = o.get(cx, "rate_limit") {
        match text(cx, &lf, "a rate like 500/second").map(|t| parse_qps(&t)) {
            Some(Ok(n)) => d.dns.rate_limit = n,
            Some(Err(m)) => {
                cx.err(&lf.path, lf.loc(), m);
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(d)
}

/// `N/second` (or a plain N) as queries per second.
fn parse_qps(t: &str) -> Result<u32, String> {
    let n = t.trim().strip_suffix("/second").unwrap_or(t.trim());
    match n.trim().parse::<i128>() {
        Ok(n) if (1..=DNS_RATE_MAX).contains(&n) => Ok(n as u32),
        _ => Err(format!(
            "'{}' is not a rate; expected queries per second per client, like 500/second (at most {DNS_RATE_MAX})",
            show(t)
        )),
    }
}

/// An address a name answers with, or a server queries go to.
fn dns_address(t: &str, role: &str) -> Result<IpAddr, String> {
    let a: IpAddr = t.trim().parse().map_err(|_| {
        format!(
            "'{}' is not an IPv4 or IPv6 address (like 192.0.2.10 or 2001:db8::10)",
            show(t)
        )
    })?;
    if a.is_unspecified() {
        return Err(format!("{role} {a} is unspecified"));
    }
    if a.is_multicast() {
        return Err(format!("{role} {a} is a multicast address"));
    }
    Ok(a)
}

fn read_forwarders(cx: &mut Ctx, f: &Field, d: &mut DnsDraft) -> bool {
    let Some(items) = list(cx, f, "a list of DNS server addresses") else {
        return false;
    };
    let mut ok = true;
    let mut out = Vec::new();
    for item in items {
        let r = text(cx, &item, "a DNS server's address").map(|t| dns_address(&t, "forwarder"));
        match r {
            Some(Ok(a)) if out.contains(&a) => {
                cx.err(&item.path, item.loc(), format!("{a} is listed twice"));
                ok = false;
            }
            Some(Ok(a)) => {
                out.push(a);
                d.forwarders.push((a, item.path.clone(), item.loc()));
            }
            Some(Err(m)) => {
                cx.err(&item.path, item.loc(), m);
                ok = false;
            }
            None => ok = false,
        }
    }
    d.dns.forwarders = Some(out);
    ok
}

fn read_records(cx: &mut Ctx, f: &Field, d: &mut DnsDraft) -> bool {
    let Some(o) = obj_named(cx, f, "a mapping of names to addresses") else {
        return false;
    };
    let mut ok = true;
    for (key, field) in o.named(cx) {
        if let Some(why) = names::name_problem(&key.text) {
            cx.err(
                &field.path,
                key.loc,
                format!("'{}' is not a valid DNS name: {why}", show(&key.text)),
            );
            ok = false;
            continue;
        }
        let items = match &field.node.kind {
            Kind::Seq(_) => list(cx, &field, "a list of addresses"),
            _ => Some(vec![Field {
                path: field.path.clone(),
                node: field.node,
            }]),
        };
        let mut addrs = Vec::new();
        let before = cx.errors.len();
        for item in items.unwrap_or_default() {
            let r = text(cx, &item, "an IPv4 or IPv6 address").map(|t| dns_address(&t, "address"));
            match r {
                Some(Ok(a)) if !addrs.contains(&a) => addrs.push(a),
                Some(Ok(a)) => cx.err(&item.path, item.loc(), format!("{a} is listed twice")),
                Some(Err(m)) => cx.err(&item.path, item.loc(), m),
                None => {}
            }
        }
        if addrs.is_empty() {
            if !matches!(field.node.kind, Kind::Bad) && cx.errors.len() == before {
                cx.err(
                    &field.path,
                    field.loc(),
                    "a record needs at least one address",
                );
            }
            ok = false;
            continue;
        }
        d.records
            .push((key.text.clone(), field.path.clone(), key.loc));
        d.dns.records.insert(key.text.clone(), addrs);
    }
    ok
}

/// Names answered twice on one network (a VM's and a record's, two VMs' or two records'
/// that differ only in case), VM names that are no DNS names, and forwarders that are the
/// gateway of a network kvmnet serves DNS on (a query would go round in a loop).
pub(super) fn check_dns(cx: &mut Ctx, nets: &[NetDraft], ports: &[&PortDraft]) {
    let gateways: Vec<(IpAddr, &str)> = nets
        .iter()
        .filter(|n| n.dns.is_some())
        .filter_map(|n| Some((IpAddr::V4(n.ipv4?.addr), n.name.as_str())))
        .collect();
    for n in nets {
        let Some(d) = &n.dns else {
            continue;
        };
        for (a, path, loc) in &d.forwarders {
            if let Some((_, g)) = gateways.iter().find(|(g, _)| g == a) {
                cx.err(
                    path,
                    *loc,
                    format!(
                        "{a} is the gateway of network {g}, where kvmnet answers DNS itself: forwarding to it would loop; name an upstream server"
                    ),
                );
            }
        }
        let domain = d.dns.domain.as_deref();
        // (qualified name, what holds it)
        let mut seen: Vec<(String, String)> = Vec::new();
        for p in ports
            .iter()
            .filter(|p| p.network.as_deref() == Some(n.name.as_str()))
        {
            if p.ipv4.is_none() || seen.iter().any(|(_, w)| *w == format!("VM {}", p.vm)) {
                continue;
            }
            let path = p.path.clone();
            let loc = cx.loc_at(&path).unwrap_or_default();
            if let Some(why) = names::name_problem(&p.vm) {
                cx.err(
                    &path,
                    loc,
                    format!(
                        "VM {} answers in DNS on network {} as its name, but '{}' is not a valid DNS name: {why}; rename the VM",
                        p.vm,
                        n.name,
                        show(&p.vm)
                    ),
                );
                continue;
            }
            let q = names::qualify(&p.vm, domain);
            if let Some((_, w)) = seen.iter().find(|(s, _)| *s == q) {
                cx.err(
                    &path,
                    loc,
                    format!("the DNS name {q} of VM {} is {w}'s too", p.vm),
                );
                continue;
            }
            seen.push((q, format!("VM {}", p.vm)));
        }
        for (name, path, loc) in &d.records {
            let q = names::qualify(name, domain);
            match seen.iter().find(|(s, _)| *s == q) {
                Some((_, w)) => cx.err(
                    path,
                    *loc,
                    format!("the record {name} names {q}, which is {w}'s name on network {}; give the record another name", n.name),
                ),
                None => seen.push((q, format!("record {name}"))),
            }
        }
    }
}
