//! A network's `dhcp` block.

use super::*;

pub(super) fn read_dhcp(cx: &mut Ctx, f: &Field, subnet: Option<Ipv4Cidr>) -> Option<Dhcp> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        DHCP_FIELDS,
        "a mapping of DHCP settings (use {} for defaults)",
    )?;
    let mut ok = true;
    let mut dhcp = Dhcp {
        range: None,
        pool: true,
        lease_time_secs: LEASE_DEFAULT,
        dns: Vec::new(),
        domain: None,
        routes: Vec::new(),
        range6: None,
        dns6: Vec::new(),
    };
    // Each field read apart: a bad one is reported and the others still read, so one pass
    // names every mistake in the block.
    if let Some(rf) = o.get(cx, "range") {
        dhcp.range = read_pool_range(cx, &rf, subnet);
        ok &= dhcp.range.is_some();
    }
    if let Some(pf) = o.get(cx, "pool") {
        match boolean(cx, &pf) {
            Some(b) => dhcp.pool = b,
            None => ok = false,
        }
    }
    if let Some(lf) = o.get(cx, "lease_time") {
        match read_lease_time(cx, &lf) {
            Some(s) => dhcp.lease_time_secs = s,
            None => ok = false,
        }
    }
    if let Some(df) = o.get(cx, "dns") {
        ok &= read_dns_servers(cx, &df, &mut dhcp.dns);
    }
    if let Some(nf) = o.get(cx, "domain") {
        match text(cx, &nf, "a DNS domain name like example.test") {
            Some(t) => match check_domain(&t) {
                Ok(()) => dhcp.domain = Some(t),
                Err(m) => {
                    cx.err(&nf.path, nf.loc(), m);
                    ok = false;
                }
            },
            None => ok = false,
        }
    }
    if let Some(rf) = o.get(cx, "routes") {
        match list(cx, &rf, "a list of routes ({ to: NET/LEN, via: ADDR })") {
            Some(items) => {
                for item in items {
                    match read_route(cx, &item, subnet) {
                        Some(r) => dhcp.routes.push(r),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    ok &= read_v6(cx, &o, &mut dhcp);
    ok.then_some(dhcp)
}

/// `range`: two addresses in the network's subnet, the gateway outside them.
fn read_pool_range(
    cx: &mut Ctx,
    rf: &Field,
    subnet: Option<Ipv4Cidr>,
) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let t = text(
        cx,
        rf,
        "an address range like 192.168.122.100-192.168.122.254",
    )?;
    let r = parse_range(&t).and_then(|(a, b)| {
        if let Some(net) = subnet {
            check_in_subnet(a, net, "range start")?;
            check_in_subnet(b, net, "range end")?;
            if (a..=b).contains(&net.addr) {
                return Err(format!(
                    "the range {a}-{b} contains the gateway {}; keep the gateway out of the pool",
                    net.addr
                ));
            }
        }
        Ok((a, b))
    });
    r.map_err(|m| cx.err(&rf.path, rf.loc(), m)).ok()
}

/// `lease_time`: a duration DHCP can express, of a minute at least.
fn read_lease_time(cx: &mut Ctx, lf: &Field) -> Option<u64> {
    let why = match parse_duration(lf) {
        Ok(s) if s < LEASE_MIN => format!("a lease of {s}s is too short; use at least 60s"),
        Ok(s) if s > u64::from(u32::MAX - 1) => {
            format!("a lease of {s}s is longer than DHCP can express (136 years)")
        }
        Ok(s) => return Some(s),
        // A node that did not read as YAML was reported where it was read.
        Err(_) if matches!(lf.node.kind, Kind::Bad) => return None,
        Err(m) => m,
    };
    cx.err(&lf.path, lf.loc(), why);
    None
}

/// `dns`: IPv4 addresses a guest can ask (not unspecified, nor special unless loopback),
/// pushed to `out`; false when any is not.
fn read_dns_servers(cx: &mut Ctx, df: &Field, out: &mut Vec<Ipv4Addr>) -> bool {
    let Some(items) = list(cx, df, "a list of IPv4 addresses") else {
        return false;
    };
    let mut ok = true;
    for item in items {
        let Some(t) = text(cx, &item, "an IPv4 address") else {
            ok = false;
            continue;
        };
        match parse_ip(&t).and_then(|a| match special(a) {
            Some(w) if !a.is_loopback() => Err(format!("DNS server {a} is {w}")),
            _ if a.is_unspecified() => Err(format!("DNS server {a} is unspecified")),
            _ => Ok(a),
        }) {
            Ok(a) => out.push(a),
            Err(m) => {
                cx.err(&item.path, item.loc(), m);
                ok = false;
            }
        }
    }
    ok
}

/// `range6` and `dns6`: their syntax. Where they must lie (the network's `ipv6` prefix, the
/// gateway, static addresses, the RA mode) is checked with the network (`check_range6`).
fn read_v6(cx: &mut Ctx, o: &Obj<'_>, dhcp: &mut Dhcp) -> bool {
    let mut ok = true;
    if let Some(rf) = o.get(cx, "range6") {
        let hint = "an IPv6 address range like fd00:122::1000-fd00:122::1fff";
        match text(cx, &rf, hint).map(|t| parse_range6(&t)) {
            Some(Ok(r)) => dhcp.range6 = Some(r),
            Some(Err(m)) => {
                cx.err(&rf.path, rf.loc(), m);
                ok = false;
            }
            None => ok = false,
        }
    }
    if let Some(df) = o.get(cx, "dns6") {
        match list(cx, &df, "a list of IPv6 addresses") {
            Some(items) => {
                for item in items {
                    match text(cx, &item, "an IPv6 address").map(|t| parse_ip6(&t)) {
                        Some(Ok(a)) if a.is_unspecified() || a.is_multicast() => {
                            cx.err(
                                &item.path,
                                item.loc(),
                                format!("DNS server {a} is not a unicast address"),
                            );
                            ok = false;
                        }
                        Some(Ok(a)) => dhcp.dns6.push(a),
                        Some(Err(m)) => {
                            cx.err(&item.path, item.loc(), m);
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    ok
}

fn parse_ip6(s: &str) -> Result<Ipv6Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("'{}' is not an IPv6 address (like fd00:122::10)", show(s)))
}

pub(super) fn parse_range6(t: &str) -> Result<(Ipv6Addr, Ipv6Addr), String> {
    let Some((a, b)) = t.split_once('-') else {
        return Err(format!(
            "'{}' is not an address range; expected START-END like fd00:122::1000-fd00:122::1fff",
            show(t)
        ));
    };
    let (a, b) = (parse_ip6(a)?, parse_ip6(b)?);
    if a > b {
        return Err(format!(
            "the range {a}-{b} is backwards; its start must not be after its end"
        ));
    }
    Ok((a, b))
}

pub(super) fn parse_range(t: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let Some((a, b)) = t.split_once('-') else {
        return Err(format!(
            "'{}' is not an address range; expected START-END like 192.168.122.100-192.168.122.254",
            show(t)
        ));
    };
    let a = parse_ip(a)?;
    let b = parse_ip(b)?;
    if a > b {
        return Err(format!(
            "the range {a}-{b} is backwards; its start must not be after its end"
        ));
    }
    Ok((a, b))
}

pub(super) fn read_route(cx: &mut Ctx, f: &Field, subnet: Option<Ipv4Cidr>) -> Option<DhcpRoute> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        ROUTE_FIELDS,
        "a route (a mapping with to and via)",
    )?;
    let to = o.required(cx, "to", "give the destination network, like 10.9.0.0/16");
    let via = o.required(cx, "via", "give the router's address inside the subnet");
    let to = to.and_then(|tf| {
        let t = text(cx, &tf, "a destination network like 10.9.0.0/16")?;
        let r = parse_cidr(&t).and_then(|c| {
            if c.addr != c.network().addr {
                Err(format!(
                    "{c} has host bits set; a route destination is a network address like {}",
                    c.network()
                ))
            } else {
                Ok(c)
            }
        });
        r.map_err(|m| cx.err(&tf.path, tf.loc(), m)).ok()
    });
    let via = via.and_then(|vf| {
        let t = text(cx, &vf, "the router's IPv4 address")?;
        let r = parse_ip(&t).and_then(|a| match subnet {
            Some(net) => check_in_subnet(a, net, "router").map(|()| a),
            None => Ok(a),
        });
        r.map_err(|m| cx.err(&vf.path, vf.loc(), m)).ok()
    });
    Some(DhcpRoute { to: to?, via: via? })
}
