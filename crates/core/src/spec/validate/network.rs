//! One network: the fields every mode shares, read against the mode's row of the field grid
//! ([`crate::modes::Fields`]), and forwards; what only one mode has, its file under
//! `modes/` reads.

use super::*;

/// A network being read, handed to its mode for the fields only that mode has
/// ([`crate::modes::NetworkMode::read_own`]).
pub(crate) struct NetReader<'c, 'o> {
    pub(crate) cx: &'c mut Ctx,
    pub(crate) o: &'c Obj<'o>,
    pub(crate) d: &'c mut NetDraft,
    /// The network's name is valid (names derived from it can be made).
    pub(crate) name_ok: bool,
}

/// A row of the field grid for a network whose mode is missing or unknown: every field is
/// read for its own errors, none is refused for the mode.
const ANY_MODE: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Optional,
    uplink: Take::Optional,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Optional,
    ipv6: Take::Optional,
    routed_by_host: true,
    forwarding: false,
    own: &[],
};

pub(super) fn read_network(cx: &mut Ctx, key: &Key, f: &Field) -> NetDraft {
    let name_ok = match check_entity_name(&key.text, "network") {
        Ok(()) => true,
        Err(m) => {
            cx.err(&f.path, key.loc, m);
            false
        }
    };
    let mut d = NetDraft::new(key, &f.path);
    let Some(o) = obj(
        cx,
        f.node,
        &f.path,
        NET_FIELDS,
        "a network (a mapping with mode and its settings)",
    ) else {
        return d;
    };
    d.mode = read_mode(cx, &o);
    d.backend = o
        .get(cx, "backend")
        .and_then(|f| super::ovn::read_backend(cx, &f));
    let fields = d.mode.map_or(&ANY_MODE, |m| m.behaviour().fields());
    let word = d.mode.map_or("", |m| m.as_str());

    read_bridge(cx, &o, &mut d, fields.bridge, name_ok.then_some(key));
    let ipv4_given = read_gateway(cx, &o, &mut d, fields.ipv4, word);
    super::ipv6::read_network_ipv6(cx, &o, &mut d, fields.ipv6, word);
    if let Some(mf) = o.get(cx, "mtu")
        && let Some(n) = int_in(
            cx,
            &mf,
            &format!("an MTU between {MTU_MIN} and {MTU_MAX}"),
            MTU_MIN,
            MTU_MAX,
        )
    {
        d.mtu = u32::try_from(n).ok();
    }
    read_uplink(cx, &o, &mut d, fields.uplink, word);
    read_network_dhcp(cx, &o, &mut d, fields, ipv4_given);
    if let Some(isf) = o.get(cx, "isolate_ports") {
        match fields.isolate_ports {
            Take::Refused(why) => cx.err(&isf.path, isf.loc(), why),
            _ => d.isolate_ports = boolean(cx, &isf).unwrap_or(d.isolate_ports),
        }
    }
    read_bandwidth(cx, &o, &mut d, fields.routed_by_host, word);
    if let Some(hf) = o.get(cx, "host_access") {
        let refused = (!fields.routed_by_host).then_some(word);
        d.host_access = read_host_access(cx, &hf, refused);
    }
    if let Some(pf) = o.get(cx, "ipv6_prefixes") {
        d.ipv6_prefixes = match fields.ipv6_prefixes {
            Take::Refused(why) => {
                cx.err(
                    &pf.path,
                    pf.loc(),
                    format!(
                        "ipv6_prefixes applies to bridge, vlan and vxlan networks, whose router is on the LAN; {why} (remove it)"
                    ),
                );
                Vec::new()
            }
            _ => read_ipv6_prefixes(cx, &pf),
        };
    }
    if let Some(df) = o.get(cx, "dns") {
        let refused = (!fields.routed_by_host).then_some(word);
        d.dns = read_dns(cx, &df, refused);
    }
    if let Some(mode) = d.mode {
        refuse_other_modes_fields(cx, &o, mode);
    }
    let mut r = NetReader {
        cx,
        o: &o,
        d: &mut d,
        name_ok,
    };
    match r.d.mode {
        Some(mode) => mode.behaviour().read_own(&mut r),
        // Mode missing or unknown: the fields whose checks need no mode's context are still
        // checked, so that fixing the mode brings no new errors there.
        None => {
            for m in [Mode::Nat, Mode::Direct] {
                m.behaviour().read_own(&mut r);
            }
        }
    }
    d
}

/// `dhcp`: refused by a mode without an address of the host's, and where the mode takes
/// `ipv4` as optional, only with it (the server answers from it).
fn read_network_dhcp(cx: &mut Ctx, o: &Obj, d: &mut NetDraft, fields: &Fields, ipv4_given: bool) {
    let word = d.mode.map_or("", |m| m.as_str());
    let Some(df) = o.get(cx, "dhcp") else {
        return;
    };
    match fields.dhcp {
        Take::Refused(why) => cx.err(&df.path, df.loc(), why),
        _ if d.mode.is_some() && fields.ipv4 == Take::Optional && !ipv4_given => {
            let from = if d
                .backend
                .is_some_and(|(b, _)| b == crate::spec::NetBackend::Ovn)
            {
                "OVN's DHCP answers on a {word} network only from the network's ipv4 address (no host holds it)"
            } else {
                "kvmnet serves DHCP on a {word} network only from the host's address on it"
            };
            cx.err(
                &df.path,
                df.loc(),
                format!(
                    "{}; set ipv4 (like 10.70.0.1/24) or remove dhcp",
                    from.replace("{word}", word)
                ),
            )
        }
        _ => {
            // Checks against the subnet run only when mode and gateway are sound.
            let subnet = d.mode.and(d.ipv4);
            d.dhcp = read_dhcp(cx, &df, subnet);
        }
    }
}

fn read_mode(cx: &mut Ctx, o: &Obj) -> Option<Mode> {
    let mf = o.required(cx, "mode", &format!("expected {MODES}"))?;
    let m = text(cx, &mf, MODES)?;
    let mode = crate::modes::ALL.into_iter().find(|x| x.as_str() == m);
    if mode.is_none() {
        cx.err(
            &mf.path,
            mf.loc(),
            format!(
                "'{}' is not a network mode; expected {MODES}{}",
                show(&m),
                super::suggest::did_you_mean(&m, &crate::modes::ALL.map(|x| x.as_str()))
            ),
        );
    }
    mode
}

/// `bridge`: given, derived from the network's name (`key`, when that name is valid), or
/// refused by a mode without one.
fn read_bridge(cx: &mut Ctx, o: &Obj, d: &mut NetDraft, take: Take, key: Option<&Key>) {
    if let Take::Refused(why) = take {
        d.bridge = Some(String::new());
        if let Some(bf) = o.get(cx, "bridge") {
            cx.err(&bf.path, bf.loc(), why);
        }
    } else if let Some(bf) = o.get(cx, "bridge") {
        d.bridge_loc = bf.loc();
        d.bridge = read_ifname_field(cx, &bf, "a bridge interface name");
    } else if let Some(key) = key {
        d.bridge = Some(naming::bridge_name(&key.text));
        d.bridge_derived = true;
    }
}

/// `ipv4`, the gateway's address and the subnet; whether it was given at all.
fn read_gateway(cx: &mut Ctx, o: &Obj, d: &mut NetDraft, take: Take, word: &str) -> bool {
    let Some(ipf) = o.get(cx, "ipv4") else {
        if let Take::Required(what) = take {
            cx.err(
                &join(&d.path, "ipv4"),
                o.loc,
                format!("missing required field 'ipv4'; a {word} network needs {what}"),
            );
        }
        return false;
    };
    if let Take::Refused(why) = take {
        cx.err(&ipf.path, ipf.loc(), why);
        return true;
    }
    d.ipv4_loc = ipf.loc();
    if let Some(t) = text(
        cx,
        &ipf,
        "a gateway address with prefix, like 192.168.122.1/24",
    ) {
        match parse_cidr(&t) {
            Err(m) => cx.err(&ipf.path, ipf.loc(), m),
            Ok(c) if d.mode.is_some() => match check_gateway(c) {
                Ok(()) => d.ipv4 = Some(c),
                Err(m) => cx.err(&ipf.path, ipf.loc(), m),
            },
            Ok(_) => {}
        }
    }
    true
}

/// `uplink` of a bridge or direct network (a vlan network reads its own).
fn read_uplink(cx: &mut Ctx, o: &Obj, d: &mut NetDraft, take: Take, word: &str) {
    if take == Take::Own {
        return;
    }
    let Some(uf) = o.get(cx, "uplink") else {
        if let Take::Required(what) = take {
            cx.err(
                &join(&d.path, "uplink"),
                o.loc,
                format!("missing required field 'uplink'; {what}"),
            );
        }
        return;
    };
    if matches!(take, Take::Elsewhere | Take::Refused(_)) {
        cx.err(
            &uf.path,
            uf.loc(),
            format!(
                "uplink applies only to modes bridge, vlan and direct; a {word} network has no uplink (remove it)"
            ),
        );
    } else if let Some(u) = read_ifname_field(cx, &uf, "the host interface to enslave, like eth0") {
        d.uplink = Some((u, uf.loc()));
    }
}

fn read_bandwidth(cx: &mut Ctx, o: &Obj, d: &mut NetDraft, routed_by_host: bool, word: &str) {
    let Some(bf) = o.get(cx, "bandwidth") else {
        return;
    };
    let Some(t) = text(cx, &bf, "a rate like 1gbit") else {
        return;
    };
    match parse_rate(&t) {
        Err(m) => cx.err(&bf.path, bf.loc(), m),
        Ok(_) if !routed_by_host => cx.err(
            &bf.path,
            bf.loc(),
            format!(
                "bandwidth applies to nat, routed and isolated networks, where the host routes traffic into the network; on a {word} network traffic to the VMs is switched past the host"
            ),
        ),
        Ok(v) => d.bandwidth = Some((v, bf.loc())),
    }
}

/// Fields that belong to another mode, each refused with what its mode says about it.
fn refuse_other_modes_fields(cx: &mut Ctx, o: &Obj, mode: Mode) {
    for owner in crate::modes::ALL.into_iter().filter(|m| *m != mode) {
        let owner = owner.behaviour();
        for name in owner.fields().own {
            if let Some(f) = o.get(cx, name) {
                cx.err(&f.path, f.loc(), owner.refusal(name, mode));
            }
        }
    }
}

/// `host_access`: what guests of a nat, routed or isolated network may reach on the host,
/// as firewall rules. Bridge-mode (and other L2) networks are the LAN: the host is not
/// behind them, so there is nothing to restrict.
pub(super) fn read_host_access(
    cx: &mut Ctx,
    f: &Field,
    refused: Option<&str>,
) -> Vec<FirewallRule> {
    if let Some(word) = refused {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "host_access applies to nat, routed and isolated networks; a {word} network is the LAN and guests reach the host there as any LAN host does (remove it)"
            ),
        );
        return Vec::new();
    }
    let Some(items) = list(cx, f, "a list of rules like { proto: tcp, ports: [22] }") else {
        return Vec::new();
    };
    items.iter().filter_map(|i| read_rule(cx, i)).collect()
}

/// `ipv6_prefixes`: the /64 prefixes a LAN's router announces on a bridge, vlan or vxlan
/// network, so the guard lets guarded ports use their SLAAC addresses in them.
pub(super) fn read_ipv6_prefixes(cx: &mut Ctx, f: &Field) -> Vec<Ipv6Cidr> {
    let Some(items) = list(cx, f, "a list of IPv6 /64 prefixes like 2001:db8:7::/64") else {
        return Vec::new();
    };
    let mut out: Vec<Ipv6Cidr> = Vec::new();
    for item in items {
        let Some(t) = text(cx, &item, "an IPv6 /64 prefix like 2001:db8:7::/64") else {
            continue;
        };
        match t.parse::<Ipv6Cidr>() {
            Err(m) => cx.err(&item.path, item.loc(), m),
            Ok(c) if c.prefix != 64 => cx.err(
                &item.path,
                item.loc(),
                format!("{c} is not a /64: SLAAC addresses exist only in /64 prefixes"),
            ),
            Ok(c) if c.network() != c => cx.err(
                &item.path,
                item.loc(),
                format!("{c} has host bits set; did you mean {}?", c.network()),
            ),
            Ok(c) if out.contains(&c) => {
                cx.err(&item.path, item.loc(), format!("{c} is listed twice"))
            }
            Ok(c) => out.push(c),
        }
    }
    out
}

pub(crate) fn read_forward(cx: &mut Ctx, f: &Field) -> Option<ForwardDraft> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        FORWARD_FIELDS,
        "a forward (a mapping with proto, port, to and to_port)",
    )?;
    let mut proto = Some(Proto::Tcp);
    if let Some(pf) = o.get(cx, "proto") {
        proto = text(cx, &pf, "tcp or udp").and_then(|p| match p.as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => {
                cx.err(
                    &pf.path,
                    pf.loc(),
                    format!(
                        "'{}' is not a forwardable protocol; expected tcp or udp",
                        show(&p)
                    ),
                );
                None
            }
        });
    }
    let port = o
        .required(cx, "port", "the port on the host to forward")
        .and_then(|pf| int_in(cx, &pf, "a port between 1 and 65535", 1, 65535));
    let to = o
        .required(cx, "to", "the VM that receives the traffic")
        .and_then(|tf| text(cx, &tf, "a VM name").map(|t| (t, tf.loc())));
    let to_port = match o.get(cx, "to_port") {
        Some(tf) => int_in(cx, &tf, "a port between 1 and 65535", 1, 65535),
        None => port,
    };
    let (to, to_loc) = to?;
    Some(ForwardDraft {
        path: f.path.clone(),
        proto: proto?,
        port: u16::try_from(port?).ok()?,
        to,
        to_loc,
        to_port: u16::try_from(to_port?).ok()?,
    })
}

pub(super) fn check_gateway(c: Ipv4Cidr) -> Result<(), String> {
    if let Some(what) = special(c.addr) {
        return Err(format!(
            "{} is {what}; pick a private subnet such as 192.168.122.1/24",
            c.addr
        ));
    }
    if c.prefix >= 31 {
        return Err(format!(
            "a /{} subnet leaves no room for guests; nat, routed and isolated networks need /30 or shorter, like {}/24",
            c.prefix, c.addr
        ));
    }
    if c.prefix < 8 {
        return Err(format!(
            "a /{} subnet is far larger than any VM network needs and would capture other traffic; use /8 or longer",
            c.prefix
        ));
    }
    if c.addr == c.network().addr {
        return Err(format!(
            "{c} has no host bits: the gateway needs a host address like {}",
            host_hint(c)
        ));
    }
    if c.addr == c.broadcast() {
        return Err(format!(
            "{c} is the subnet's broadcast address: the gateway needs a host address like {}",
            host_hint(c)
        ));
    }
    Ok(())
}

/// Checks an address that must be a usable host address in `net` (gateway `net.addr`).
pub(super) fn check_in_subnet(a: Ipv4Addr, net: Ipv4Cidr, role: &str) -> Result<(), String> {
    let subnet = net.network();
    if !net.contains(a) {
        return Err(format!(
            "{role} {a} is outside the network's subnet {subnet}"
        ));
    }
    if a == subnet.addr {
        return Err(format!("{role} {a} is the network address of {subnet}"));
    }
    if a == net.broadcast() {
        return Err(format!("{role} {a} is the broadcast address of {subnet}"));
    }
    Ok(())
}
