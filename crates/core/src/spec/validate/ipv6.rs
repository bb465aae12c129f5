//! IPv6 fields: a routed network's `ipv6` (gateway and prefix) and `ra`, a port's `ipv6`,
//! and the rules across the spec (prefixes that overlap, addresses used twice, forwarding
//! turned off under a network that needs it).

use std::net::Ipv6Addr;

use super::*;
use crate::spec::ipv6::{RA_LIFETIME_DEFAULT, RA_LIFETIME_MAX};
use crate::spec::{Ra, RaMode};

pub(crate) const RA_FIELDS: &[&str] = &["mode", "lifetime"];
pub(crate) const RA_MODES: &str = "slaac, dhcpv6 or slaac+dhcpv6";

/// What a network's draft holds of IPv6.
#[derive(Clone, Debug, Default)]
pub(crate) struct V6Draft {
    /// `ipv6` was written (even if it failed its checks): ports may then declare `ipv6`
    /// without a second complaint.
    pub(crate) given: bool,
    /// Set only when the gateway passed every check.
    pub(crate) gateway: Option<Ipv6Cidr>,
    pub(crate) loc: Loc,
    pub(crate) ra: Ra,
    /// `nat.ipv6`, with where it was written.
    pub(crate) nat66: Option<(bool, Loc)>,
}

/// `ipv6` and `ra` of one network; `take` is the mode's row for `ipv6`.
pub(super) fn read_network_ipv6(cx: &mut Ctx, o: &Obj, d: &mut NetDraft, take: Take, word: &str) {
    let rf = o.get(cx, "ra");
    if let Some(rf) = &rf {
        d.v6.ra = read_ra(cx, rf).unwrap_or_default();
    }
    let Some(f) = o.get(cx, "ipv6") else {
        if let Some(rf) = rf {
            cx.err(
                &rf.path,
                rf.loc(),
                "ra needs the network's ipv6 (the gateway address and prefix, like fd00:122::1/64)",
            );
        }
        return;
    };
    match take {
        Take::Refused(why) => {
            cx.err(&f.path, f.loc(), why);
            return;
        }
        Take::Elsewhere => {
            cx.err(
                &f.path,
                f.loc(),
                format!(
                    "ipv6 applies to nat, routed and isolated networks; a {word} network has none"
                ),
            );
            return;
        }
        _ => {}
    }
    d.v6.given = true;
    d.v6.loc = f.loc();
    let Some(t) = text(
        cx,
        &f,
        "the gateway's IPv6 address with prefix, like fd00:122::1/64",
    ) else {
        return;
    };
    match t
        .parse::<Ipv6Cidr>()
        .and_then(|c| check_gateway6(c, d.v6.ra.mode))
    {
        Ok(c) => d.v6.gateway = Some(c),
        Err(m) => cx.err(&f.path, f.loc(), m),
    }
}

/// `ra: { mode, lifetime }`.
fn read_ra(cx: &mut Ctx, f: &Field) -> Option<Ra> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        RA_FIELDS,
        "a mapping (with mode and lifetime)",
    )?;
    let mut ra = Ra::default();
    if let Some(mf) = o.get(cx, "mode")
        && let Some(m) = text(cx, &mf, RA_MODES)
    {
        match RaMode::parse(&m) {
            None => cx.err(
                &mf.path,
                mf.loc(),
                format!("'{}' is not an RA mode; expected {RA_MODES}", show(&m)),
            ),
            Some(m) => ra.mode = m,
        }
    }
    if let Some(lf) = o.get(cx, "lifetime") {
        match parse_duration(&lf) {
            Err(m) => cx.err(&lf.path, lf.loc(), m),
            Ok(s) if s != 0 && !(12..=u64::from(RA_LIFETIME_MAX)).contains(&s) => cx.err(
                &lf.path,
                lf.loc(),
                format!(
                    "a router lifetime of {s}s is out of range; RFC 4861 allows 0 (not a default router) or up to {RA_LIFETIME_MAX}s, and kvmnet needs at least 12s to advertise in between (default {}m)",
                    RA_LIFETIME_DEFAULT / 60
                ),
            ),
            Ok(s) => ra.lifetime_secs = u32::try_from(s).unwrap_or(RA_LIFETIME_DEFAULT),
        }
    }
    Some(ra)
}

/// Why an address cannot be a gateway's or a guest's, if it cannot.
fn special6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    if a.is_unspecified() {
        Some("the unspecified address")
    } else if a.is_loopback() {
        Some("the loopback address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if s[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address (the bridge has its own)")
    } else if a.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

pub(super) fn check_gateway6(c: Ipv6Cidr, mode: RaMode) -> Result<Ipv6Cidr, String> {
    if let Some(w) = special6(c.addr) {
        return Err(format!(
            "{} is {w}; pick a ULA prefix such as fd00:122::1/64",
            c.addr
        ));
    }
    if mode.autonomous() && c.prefix != 64 {
        return Err(format!(
            "{c} is not a /64: guests form SLAAC addresses (ra mode {}) only in /64 prefixes; use {}",
            mode.as_str(),
            Ipv6Cidr { prefix: 64, ..c }
        ));
    }
    if !(48..=120).contains(&c.prefix) {
        return Err(format!(
            "a /{} prefix does not fit a VM network; use /64",
            c.prefix
        ));
    }
    if c.addr == c.network().addr {
        return Err(format!(
            "{c} has no host bits: that is the prefix's subnet-router anycast address; the gateway needs a host address like {}",
            Ipv6Addr::from(u128::from(c.addr) | 1)
        ));
    }
    Ok(c)
}

/// A port's `ipv6`: inside its network's prefix (or one of its `ipv6_prefixes`), not the
/// gateway's.
pub(super) fn read_port_ipv6(cx: &mut Ctx, o: &Obj, d: &mut PortDraft, nets: Option<&[NetDraft]>) {
    let net = nets
        .zip(d.network.as_deref())
        .and_then(|(ns, name)| ns.iter().find(|n| n.name == name))
        .map(|n| (n, n.mode));
    let Some(f) = o.get(cx, "ipv6") else {
        return;
    };
    d.ipv6_loc = f.loc();
    let Some(t) = text(cx, &f, "an IPv6 address like fd00:122::10") else {
        return;
    };
    match port_ipv6(&t, net) {
        Ok(a) => d.ipv6 = a,
        Err(m) => cx.err(&f.path, f.loc(), m),
    }
}

fn port_ipv6(t: &str, net: Option<(&NetDraft, Option<Mode>)>) -> Result<Option<Ipv6Addr>, String> {
    let (a, prefix) = match t.split_once('/') {
        Some(_) => {
            let c: Ipv6Cidr = t.parse()?;
            (c.addr, Some(c.prefix))
        }
        None => (
            t.parse::<Ipv6Addr>()
                .map_err(|_| format!("'{}' is not an IPv6 address", show(t)))?,
            None,
        ),
    };
    if let Some(w) = special6(a) {
        return Err(format!("{a} is {w}"));
    }
    let Some((n, mode)) = net else {
        return Ok(None);
    };
    if let Some(gw) = n.v6.gateway {
        let net6 = gw.network();
        if prefix.is_some_and(|p| p != gw.prefix) {
            return Err(format!(
                "the prefix differs from network {}'s /{}; write the bare address {a}",
                n.name, gw.prefix
            ));
        }
        if !contains6(net6, a) {
            return Err(format!("{a} is outside network {}'s prefix {net6}", n.name));
        }
        if a == gw.addr {
            return Err(format!(
                "{a} is the gateway's address on network {}",
                n.name
            ));
        }
        if a == net6.addr {
            return Err(format!(
                "{a} is the subnet-router anycast address of {net6}; give the guest its own address"
            ));
        }
        return Ok(Some(a));
    }
    if n.v6.given || mode.is_none() {
        // The network's own ipv6 failed its checks (reported there) or its mode is unknown.
        return Ok(None);
    }
    if !n.ipv6_prefixes.is_empty() {
        if n.ipv6_prefixes.iter().any(|c| contains6(*c, a)) {
            return Ok(Some(a));
        }
        let list: Vec<String> = n.ipv6_prefixes.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{a} is outside network {}'s ipv6_prefixes ({})",
            n.name,
            list.join(", ")
        ));
    }
    Err(format!(
        "network {} has no IPv6; give it ipv6 (nat, routed, isolated) or ipv6_prefixes (bridge, vlan, vxlan), or remove this address",
        n.name
    ))
}

pub(crate) fn contains6(net: Ipv6Cidr, a: Ipv6Addr) -> bool {
    Ipv6Cidr { addr: a, ..net }.network() == net.network()
}

fn overlaps6(a: Ipv6Cidr, b: Ipv6Cidr) -> bool {
    contains6(a, b.network().addr) || contains6(b, a.network().addr)
}

/// Every rule across the spec about IPv6, one after another.
pub(super) fn check_ipv6(
    cx: &mut Ctx,
    nets: &[NetDraft],
    ports: &[&PortDraft],
    sysctl: Option<&Sysctl>,
) {
    check_prefixes(cx, nets);
    check_port_ipv6(cx, ports);
    check_forwarding6(cx, nets, sysctl);
}

/// No two networks share IPv6 addresses: neither their own prefixes nor a LAN's
/// `ipv6_prefixes`.
fn check_prefixes(cx: &mut Ctx, nets: &[NetDraft]) {
    let mut all: Vec<(&NetDraft, Ipv6Cidr, String, Loc)> = Vec::new();
    for n in nets {
        if let Some(gw) = n.v6.gateway {
            all.push((n, gw.network(), join(&n.path, "ipv6"), n.v6.loc));
        }
        for (i, c) in n.ipv6_prefixes.iter().enumerate() {
            let path = format!("{}[{i}]", join(&n.path, "ipv6_prefixes"));
            let loc = cx.loc_at(&path).unwrap_or(n.key_loc);
            all.push((n, *c, path, loc));
        }
    }
    all.sort_by_key(|e| e.3);
    for (i, (n, c, path, loc)) in all.iter().enumerate() {
        if let Some((other, oc, ..)) = all[..i]
            .iter()
            .find(|(o, oc, ..)| o.name != n.name && overlaps6(*oc, *c))
        {
            cx.err(
                path,
                *loc,
                format!(
                    "prefix {c} overlaps {oc} of network {}; networks need separate IPv6 prefixes",
                    other.name
                ),
            );
        }
    }
}

/// A port's `ipv6` is used once per network.
fn check_port_ipv6(cx: &mut Ctx, ports: &[&PortDraft]) {
    let mut with: Vec<&PortDraft> = ports.iter().copied().filter(|p| p.ipv6.is_some()).collect();
    with.sort_by_key(|p| p.ipv6_loc);
    let mut seen: HashMap<(&str, Ipv6Addr), &PortDraft> = HashMap::new();
    for p in with {
        let (Some(net), Some(a)) = (&p.network, p.ipv6) else {
            continue;
        };
        if let Some(other) = seen.get(&(net.as_str(), a)) {
            cx.err(
                &join(&p.path, "ipv6"),
                p.ipv6_loc,
                format!(
                    "{a} is already assigned to port {} of VM {} on network {net}",
                    other.index, other.vm
                ),
            );
        } else {
            seen.insert((net.as_str(), a), p);
        }
    }
}

/// IPv6 forwarding turned off by the spec under a nat or routed network with `ipv6`.
fn check_forwarding6(cx: &mut Ctx, nets: &[NetDraft], sysctl: Option<&Sysctl>) {
    let Some((values, where_)) = sysctl else {
        return;
    };
    let needs: Vec<&str> = nets
        .iter()
        .filter(|n| n.v6.gateway.is_some() && n.mode.is_some_and(Mode::forwarding))
        .map(|n| n.name.as_str())
        .collect();
    if needs.is_empty() {
        return;
    }
    let key = crate::desired::IP6_FORWARD;
    if values
        .get(key)
        .is_some_and(|v| v.trim().parse::<i64>() == Ok(0))
        && let Some((loc, path)) = where_.get(key)
    {
        cx.err(
            path,
            *loc,
            format!(
                "{key}=0 turns off IPv6 forwarding, but the IPv6 of {} needs it; remove this setting or set it to 1",
                needs.join(", ")
            ),
        );
    }
}
