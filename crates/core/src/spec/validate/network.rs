//! One network: its mode and the fields each mode takes, forwards, VXLAN.

use super::*;

#[allow(
    clippy::too_many_lines,
    reason = "the field-by-mode grid; to become one file per mode (#14)"
)]
pub(super) fn read_network(cx: &mut Ctx, key: &Key, f: &Field) -> NetDraft {
    let name_ok = match check_entity_name(&key.text, "network") {
        Ok(()) => true,
        Err(m) => {
            cx.err(&f.path, key.loc, m);
            false
        }
    };
    let mut d = NetDraft {
        name: key.text.clone(),
        key_loc: key.loc,
        path: f.path.clone(),
        mode: None,
        bridge: None,
        bridge_loc: key.loc,
        bridge_derived: false,
        ipv4: None,
        ipv4_loc: key.loc,
        mtu: None,
        uplink: None,
        egress: None,
        dhcp: None,
        isolate_ports: false,
        forwards: Vec::new(),
        vxlan: None,
        bandwidth: None,
        direct_mode: None,
        vlan: None,
        vlan_loc: key.loc,
        vlan_uplink_loc: key.loc,
        host_access: Vec::new(),
        ipv6_prefixes: Vec::new(),
    };
    let Some(o) = obj(
        cx,
        f.node,
        &f.path,
        NET_FIELDS,
        "a network (a mapping with mode and its settings)",
    ) else {
        return d;
    };

    let mut mode_known = false;
    if let Some(mf) = o.required(cx, "mode", &format!("expected {MODES}"))
        && let Some(m) = text(cx, &mf, MODES)
    {
        d.mode = match m.as_str() {
            "nat" => Some(Mode::Nat),
            "routed" => Some(Mode::Routed),
            "isolated" => Some(Mode::Isolated),
            "bridge" => Some(Mode::Bridge),
            "vxlan" => Some(Mode::Vxlan),
            "direct" => Some(Mode::Direct),
            "vlan" => Some(Mode::Vlan),
            _ => {
                cx.err(
                    &mf.path,
                    mf.loc(),
                    format!("'{}' is not a network mode; expected {MODES}", show(&m)),
                );
                None
            }
        };
        mode_known = d.mode.is_some();
    }
    let mode = d.mode;

    if mode == Some(Mode::Direct) {
        // No bridge at all: the ports are macvtap devices on the uplink.
        d.bridge = Some(String::new());
        if let Some(bf) = o.get(cx, "bridge") {
            cx.err(
                &bf.path,
                bf.loc(),
                "a direct network has no bridge: its ports are macvtap devices on the uplink (remove bridge, or use mode bridge)",
            );
        }
    } else if let Some(bf) = o.get(cx, "bridge") {
        d.bridge_loc = bf.loc();
        d.bridge = read_ifname_field(cx, &bf, "a bridge interface name");
    } else if name_ok {
        d.bridge = Some(naming::bridge_name(&key.text));
        d.bridge_derived = true;
    }

    // ipv4
    let ipf = o.get(cx, "ipv4");
    match (&ipf, mode) {
        (Some(ipf), Some(Mode::Direct)) => {
            cx.err(
                &ipf.path,
                ipf.loc(),
                "a direct network takes no ipv4: the host has no address on it (its guests sit on the uplink's segment and use that network's gateway); remove ipv4",
            );
        }
        (Some(ipf), Some(Mode::Bridge)) => {
            cx.err(
                &ipf.path,
                ipf.loc(),
                "a bridge network takes no ipv4: the host keeps its addresses on the uplink \
                 (they move to the bridge); remove ipv4 or use mode nat, routed or isolated",
            );
        }
        (None, Some(m)) if !matches!(m, Mode::Bridge | Mode::Vxlan | Mode::Direct | Mode::Vlan) => {
            cx.err(
                &join(&f.path, "ipv4"),
                o.loc,
                format!(
                    "missing required field 'ipv4'; a {} network needs the gateway address and subnet, like 192.168.122.1/24",
                    m.as_str()
                ),
            );
        }
        (Some(ipf), _) => {
            d.ipv4_loc = ipf.loc();
            if let Some(t) = text(
                cx,
                ipf,
                "a gateway address with prefix, like 192.168.122.1/24",
            ) {
                match parse_cidr(&t) {
                    Err(m) => cx.err(&ipf.path, ipf.loc(), m),
                    Ok(c) if mode.is_some() => match check_gateway(c) {
                        Ok(()) => d.ipv4 = Some(c),
                        Err(m) => cx.err(&ipf.path, ipf.loc(), m),
                    },
                    Ok(_) => {}
                }
            }
        }
        (None, _) => {}
    }

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

    let mut vlan_uplink = None;
    match (o.get(cx, "uplink"), mode) {
        (Some(uf), Some(m)) if !matches!(m, Mode::Bridge | Mode::Direct | Mode::Vlan) => {
            cx.err(
                &uf.path,
                uf.loc(),
                format!(
                    "uplink applies only to modes bridge, vlan and direct; a {} network has no uplink (remove it)",
                    m.as_str()
                ),
            );
        }
        (Some(uf), Some(Mode::Vlan)) => {
            d.vlan_uplink_loc = uf.loc();
            vlan_uplink = read_ifname_field(
                cx,
                &uf,
                "the host interface that carries the VLAN tagged, like eth1",
            );
        }
        (None, Some(Mode::Vlan)) => {
            cx.err(
                &join(&f.path, "uplink"),
                o.loc,
                "missing required field 'uplink'; a vlan network needs the host interface that carries its tagged frames, like eth1",
            );
        }
        (Some(uf), _) => {
            if let Some(u) = read_ifname_field(cx, &uf, "the host interface to enslave, like eth0")
            {
                d.uplink = Some((u, uf.loc()));
            }
        }
        (None, Some(Mode::Bridge)) => {
            cx.err(
                &join(&f.path, "uplink"),
                o.loc,
                "missing required field 'uplink'; a bridge network needs the host interface to enslave, like eth0",
            );
        }
        (None, Some(Mode::Direct)) => {
            cx.err(
                &join(&f.path, "uplink"),
                o.loc,
                "missing required field 'uplink'; a direct network needs the host interface its macvtap ports sit on, like eth0",
            );
        }
        (None, _) => {}
    }

    if let Some(nf) = o.get(cx, "nat") {
        if let Some(m) = mode
            && m != Mode::Nat
        {
            cx.err(
                &nf.path,
                nf.loc(),
                format!(
                    "nat settings apply only to mode nat; this network is mode {}",
                    m.as_str()
                ),
            );
        } else if let Some(no) = obj(cx, nf.node, &nf.path, NAT_FIELDS, "a mapping (with egress)")
            && let Some(ef) = no.get(cx, "egress")
            && let Some(e) = read_ifname_field(cx, &ef, "the host interface NAT leaves through")
        {
            d.egress = Some((e, ef.loc()));
        }
    }

    if let Some(df) = o.get(cx, "dhcp") {
        if mode == Some(Mode::Direct) {
            cx.err(
                &df.path,
                df.loc(),
                "kvmnet serves no DHCP on a direct network: the host has no address there; its guests use the uplink segment's DHCP server (remove dhcp)",
            );
        } else if mode == Some(Mode::Bridge) {
            cx.err(
                &df.path,
                df.loc(),
                "kvmnet serves no DHCP on a bridge network: its guests sit on the uplink's LAN \
                 and use that LAN's DHCP server; remove dhcp",
            );
        } else if let Some(m @ (Mode::Vxlan | Mode::Vlan)) = mode
            && ipf.is_none()
        {
            cx.err(
                &df.path,
                df.loc(),
                format!(
                    "kvmnet serves DHCP on a {} network only from the host's address on it; \
                     set ipv4 (like 10.70.0.1/24) or remove dhcp",
                    m.as_str()
                ),
            );
        } else {
            // Checks against the subnet run only when mode and gateway are sound.
            let subnet = if mode_known { d.ipv4 } else { None };
            d.dhcp = read_dhcp(cx, &df, subnet);
        }
    }
    if let Some(isf) = o.get(cx, "isolate_ports") {
        if mode == Some(Mode::Direct) {
            cx.err(
                &isf.path,
                isf.loc(),
                "isolate_ports is a bridge setting; on a direct network use direct_mode: private (ports reach the uplink's segment, not each other)",
            );
        } else if let Some(b) = boolean(cx, &isf) {
            d.isolate_ports = b;
        }
    }
    match (o.get(cx, "direct_mode"), mode) {
        (Some(df), Some(m)) if m != Mode::Direct => cx.err(
            &df.path,
            df.loc(),
            format!(
                "direct_mode applies only to mode direct; a {} network has no direct_mode (remove it)",
                m.as_str()
            ),
        ),
        (Some(df), _) => {
            if let Some(t) = text(cx, &df, DIRECT_MODES) {
                match DirectMode::parse(&t) {
                    Some(dm) => d.direct_mode = Some((dm, df.loc())),
                    None => cx.err(
                        &df.path,
                        df.loc(),
                        format!("'{}' is not a direct mode; expected {DIRECT_MODES}", show(&t)),
                    ),
                }
            }
        }
        (None, Some(Mode::Direct)) => d.direct_mode = Some((DirectMode::Bridge, o.loc)),
        (None, _) => {}
    }
    if let Some(bf) = o.get(cx, "bandwidth")
        && let Some(t) = text(cx, &bf, "a rate like 1gbit")
    {
        match (parse_rate(&t), mode) {
            (Err(m), _) => cx.err(&bf.path, bf.loc(), m),
            (Ok(_), Some(m)) if mode_known && !matches!(m, Mode::Nat | Mode::Routed | Mode::Isolated) => {
                cx.err(
                    &bf.path,
                    bf.loc(),
                    format!(
                        "bandwidth applies to nat, routed and isolated networks, where the host routes traffic into the network; on a {} network traffic to the VMs is switched past the host",
                        m.as_str()
                    ),
                )
            }
            (Ok(v), _) => d.bandwidth = Some((v, bf.loc())),
        }
    }
    if let Some(ff) = o.get(cx, "forwards") {
        if mode_known && mode != Some(Mode::Nat) {
            cx.err(
                &ff.path,
                ff.loc(),
                "forwards apply only to nat networks; guests of other modes are reached directly",
            );
        } else if let Some(items) = list(cx, &ff, "a list of forwards") {
            let mut seen = BTreeMap::new();
            for item in items {
                if let Some(fw) = read_forward(cx, &item) {
                    if let Some(first) = seen.insert((fw.proto, fw.port), fw.path.clone()) {
                        cx.err(
                            &fw.path,
                            item.loc(),
                            format!(
                                "{} port {} is already forwarded by {first}",
                                fw.proto.as_str(),
                                fw.port
                            ),
                        );
                    }
                    d.forwards.push(fw);
                }
            }
        }
    }
    match (o.get(cx, "vlan"), mode) {
        (Some(vf), Some(Mode::Vlan)) => {
            d.vlan_loc = vf.loc();
            let id = int_in(
                cx,
                &vf,
                &format!("a VLAN id between 1 and {VLAN_ID_MAX}"),
                1,
                i128::from(VLAN_ID_MAX),
            )
            .and_then(|n| u16::try_from(n).ok());
            if let (Some(id), Some(uplink)) = (id, vlan_uplink) {
                d.vlan = Some(Vlan {
                    id,
                    device: naming::uplink_vlan_name(&uplink, id),
                    uplink,
                });
            }
        }
        (None, Some(Mode::Vlan)) => {
            cx.err(
                &join(&f.path, "vlan"),
                o.loc,
                format!(
                    "missing required field 'vlan'; a vlan network needs its 802.1Q VLAN id (1 to {VLAN_ID_MAX}), like vlan: 10"
                ),
            );
        }
        (Some(vf), Some(m)) => {
            cx.err(
                &vf.path,
                vf.loc(),
                format!(
                    "vlan applies only to mode vlan; a {} network has no VLAN id (remove it, or use mode: vlan)",
                    m.as_str()
                ),
            );
        }
        _ => {}
    }
    if let Some(hf) = o.get(cx, "host_access") {
        d.host_access = read_host_access(cx, &hf, mode);
    }
    if let Some(pf) = o.get(cx, "ipv6_prefixes") {
        d.ipv6_prefixes = read_ipv6_prefixes(cx, &pf, mode);
    }
    if mode == Some(Mode::Vxlan) {
        if name_ok {
            d.vxlan = read_vxlan(cx, &o, &f.path, &key.text);
        }
    } else if let Some(m) = mode {
        for k in VXLAN_FIELDS {
            if let Some(vf) = o.get(cx, k) {
                cx.err(
                    &vf.path,
                    vf.loc(),
                    format!(
                        "{k} applies only to mode vxlan; a {} network has no {k} (remove it)",
                        m.as_str()
                    ),
                );
            }
        }
    }
    d
}

/// `host_access`: what guests of a nat, routed or isolated network may reach on the host,
/// as firewall rules. Bridge-mode (and other L2) networks are the LAN: the host is not
/// behind them, so there is nothing to restrict.
pub(super) fn read_host_access(cx: &mut Ctx, f: &Field, mode: Option<Mode>) -> Vec<FirewallRule> {
    if let Some(m) = mode.filter(|m| !matches!(m, Mode::Nat | Mode::Routed | Mode::Isolated)) {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "host_access applies to nat, routed and isolated networks; a {} network is the LAN and guests reach the host there as any LAN host does (remove it)",
                m.as_str()
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
pub(super) fn read_ipv6_prefixes(cx: &mut Ctx, f: &Field, mode: Option<Mode>) -> Vec<Ipv6Cidr> {
    if let Some(m) = mode.filter(|m| !matches!(m, Mode::Bridge | Mode::Vlan | Mode::Vxlan)) {
        let why = if m == Mode::Direct {
            "direct ports are not guarded (macvtap bypasses the host's bridge)".to_string()
        } else {
            format!("on a {} network kvmnet is the router", m.as_str())
        };
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "ipv6_prefixes applies to bridge, vlan and vxlan networks, whose router is on the LAN; {why} (remove it)"
            ),
        );
        return Vec::new();
    }
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

/// The vxlan settings of a `mode: vxlan` network; `None` if any of them is wrong (each
/// problem reported).
#[allow(clippy::too_many_lines, reason = "one arm per vxlan field")]
pub(super) fn read_vxlan(cx: &mut Ctx, o: &Obj, path: &str, network: &str) -> Option<Vxlan> {
    let before = cx.errors.len();
    let vni = o
        .required(
            cx,
            "vni",
            "a vxlan network needs its VXLAN network identifier (1 to 16777215), like vni: 4242",
        )
        .and_then(|vf| {
            int_in(
                cx,
                &vf,
                &format!("a VNI between 1 and {VNI_MAX}"),
                1,
                VNI_MAX,
            )
        });
    let underlay = o
        .required(
            cx,
            "underlay",
            "a vxlan network needs the host interface that carries the tunnel, like eth0",
        )
        .and_then(|uf| read_ifname_field(cx, &uf, "the host interface that carries the tunnel"));
    let port = match o.get(cx, "port") {
        Some(pf) => int_in(cx, &pf, "a UDP port between 1 and 65535", 1, 65535),
        None => Some(i128::from(VXLAN_PORT)),
    };
    let mut remotes = Vec::new();
    let rf = o.get(cx, "remotes");
    if let Some(rf) = &rf
        && let Some(items) = list(cx, rf, "a list of IPv4 addresses of the other hosts")
    {
        for item in items {
            let Some(t) = text(cx, &item, "an IPv4 address") else {
                continue;
            };
            match parse_ip(&t).and_then(|a| match special(a) {
                Some(w) => Err(format!(
                    "remote {a} is {w}; a remote is the unicast IPv4 address of another host"
                )),
                None => Ok(a),
            }) {
                Ok(a) if remotes.contains(&a) => cx.err(
                    &item.path,
                    item.loc(),
                    format!("remote {a} is listed twice"),
                ),
                Ok(a) => remotes.push(a),
                Err(m) => cx.err(&item.path, item.loc(), m),
            }
        }
    }
    let mut group = None;
    let gf = o.get(cx, "group");
    if let Some(gf) = &gf {
        if rf.is_some() {
            cx.err(
                &gf.path,
                gf.loc(),
                "give either remotes (unicast peers) or group (multicast), not both",
            );
        } else if let Some(t) = text(cx, gf, "a multicast IPv4 address like 239.1.1.1") {
            match parse_ip(&t) {
                Ok(a) if a.is_multicast() => group = Some(a),
                Ok(a) => cx.err(
                    &gf.path,
                    gf.loc(),
                    format!(
                        "{a} is not a multicast address; a group is in 224.0.0.0/4, like 239.1.1.1 (for unicast peers use remotes)"
                    ),
                ),
                Err(m) => cx.err(&gf.path, gf.loc(), m),
            }
        }
    } else if rf.is_none() {
        cx.err(
            &join(path, "remotes"),
            o.loc,
            "a vxlan network needs its peers: remotes (a list of the other hosts' IPv4 addresses) or group (a multicast address)",
        );
    } else if let Some(rf) = &rf
        && remotes.is_empty()
        && cx.errors.len() == before
    {
        cx.err(
            &rf.path,
            rf.loc(),
            "remotes is empty; list the other hosts' IPv4 addresses",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(Vxlan {
        device: naming::vxlan_name(network),
        vni: u32::try_from(vni?).ok()?,
        underlay: underlay?,
        remotes,
        group,
        port: u16::try_from(port?).ok()?,
    })
}

pub(super) fn read_forward(cx: &mut Ctx, f: &Field) -> Option<ForwardDraft> {
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
