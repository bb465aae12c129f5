//! A VM and its ports.

use super::*;

/// What a port needs to know about its network.
pub(super) struct NetRef {
    mode: Option<Mode>,
    ipv4: Option<Ipv4Cidr>,
}

pub(super) fn read_vm(
    cx: &mut Ctx,
    key: &Key,
    f: &Field,
    nets: Option<&[NetDraft]>,
    ports: &mut Vec<PortDraft>,
) {
    let name_ok = match check_entity_name(&key.text, "VM") {
        Ok(()) => true,
        Err(m) => {
            cx.err(&f.path, key.loc, m);
            false
        }
    };
    let Some(o) = obj(
        cx,
        f.node,
        &f.path,
        VM_FIELDS,
        "a VM (a mapping with ports)",
    ) else {
        return;
    };
    let host = o.get(cx, "host").and_then(|hf| {
        let h = text(cx, &hf, "the name of a chassis under ovn.chassis")?;
        Some((std::sync::Arc::<str>::from(h), hf.loc()))
    });
    let Some(pf) = o.required(cx, "ports", "list the VM's ports (ports: [] for none)") else {
        return;
    };
    let Some(items) = list(cx, &pf, "a list of ports") else {
        return;
    };
    for (i, item) in items.iter().enumerate() {
        if let Some(mut p) = read_port(cx, &key.text, name_ok, i, item, nets) {
            p.host.clone_from(&host);
            ports.push(p);
        }
    }
}

pub(super) fn read_port(
    cx: &mut Ctx,
    vm: &str,
    vm_ok: bool,
    index: usize,
    f: &Field,
    nets: Option<&[NetDraft]>,
) -> Option<PortDraft> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        PORT_FIELDS,
        "a port (a mapping with network and its settings)",
    )?;
    let mut d = PortDraft::new(f, vm, index);
    let net = read_port_network(cx, &o, nets, &mut d);
    read_port_identity(cx, &o, &mut d, net.as_ref(), (vm, vm_ok));
    super::ipv6::read_port_ipv6(cx, &o, &mut d, nets);
    let kind = d.kind;
    if kind == Some(PortKind::Macvtap) {
        refuse_for_macvtap(cx, &o);
    }
    read_tap_and_veth_fields(cx, &o, &mut d);
    read_port_policy(cx, &o, &mut d);
    read_trunk(cx, &o, &mut d, net.as_ref());
    read_port_netns(cx, &o, &mut d);
    Some(d)
}

impl PortDraft {
    /// Port `index` of `vm` at `f`, before any of its fields is read.
    fn new(f: &Field, vm: &str, index: usize) -> PortDraft {
        PortDraft {
            path: f.path.as_str().into(),
            vm: vm.to_string(),
            index,
            network: None,
            name: None,
            name_loc: f.loc(),
            name_derived: false,
            kind: Some(PortKind::Tap),
            mac: None,
            mac_loc: f.loc(),
            mac_derived: false,
            ipv4: None,
            ipv4_loc: f.loc(),
            ipv6: None,
            ipv6_loc: f.loc(),
            owner: None,
            queues: 1,
            netns: None,
            antispoof: true,
            dhcp_client: false,
            firewall: None,
            qos: None,
            mirror: None,
            ethtool: None,
            vlans: Vec::new(),
            host: None,
            ovn_clean: Default::default(),
        }
    }
}

/// `network`: the network the port joins, when it is one of the spec's.
fn read_port_network(
    cx: &mut Ctx,
    o: &Obj,
    nets: Option<&[NetDraft]>,
    d: &mut PortDraft,
) -> Option<NetRef> {
    let mut net: Option<NetRef> = None;
    if let Some(nf) = o.required(cx, "network", "name the network this port joins")
        && let Some(n) = text(cx, &nf, "a network name")
    {
        match nets {
            Some(nets) => match nets.iter().find(|x| x.name == n) {
                Some(x) => {
                    net = Some(NetRef {
                        mode: x.mode,
                        ipv4: x.ipv4,
                    });
                    d.network = Some(n);
                }
                None => {
                    let known: Vec<&str> = nets.iter().map(|x| x.name.as_str()).collect();
                    let hint = if known.is_empty() {
                        "no networks are defined under networks".to_string()
                    } else {
                        format!("defined networks: {}", known.join(", "))
                    };
                    cx.err(
                        &nf.path,
                        nf.loc(),
                        format!("unknown network '{}'; {hint}", show(&n)),
                    );
                }
            },
            None => d.network = Some(n),
        }
    }

    net
}

/// The port's name, kind (a direct network's ports are macvtaps), MAC and address.
fn read_port_identity(
    cx: &mut Ctx,
    o: &Obj,
    d: &mut PortDraft,
    net: Option<&NetRef>,
    (vm, vm_ok): (&str, bool),
) {
    let index = d.index;
    if let Some(nf) = o.get(cx, "name") {
        d.name_loc = nf.loc();
        d.name = read_ifname_field(cx, &nf, "an interface name");
    } else if vm_ok {
        d.name = Some(naming::port_name(vm, index));
        d.name_derived = true;
    }

    let direct = net
        .as_ref()
        .and_then(|n| n.mode)
        .is_some_and(|m| !m.has_bridge());
    if direct {
        d.kind = Some(PortKind::Macvtap);
        // Nothing on a direct port goes through a bridge, so the bridge-based guard has
        // nothing to hook into (see the README).
        d.antispoof = false;
    }
    if let Some(kf) = o.get(cx, "kind") {
        let k = text(cx, &kf, "tap, veth or macvtap").and_then(|k| match k.as_str() {
            "tap" => Some(PortKind::Tap),
            "veth" => Some(PortKind::Veth),
            "macvtap" => Some(PortKind::Macvtap),
            _ => {
                cx.err(
                    &kf.path,
                    kf.loc(),
                    format!(
                        "'{}' is not a port kind; expected tap, veth or macvtap",
                        show(&k)
                    ),
                );
                None
            }
        });
        match k {
            Some(PortKind::Macvtap) if !direct && net.is_some() => {
                cx.err(
                    &kf.path,
                    kf.loc(),
                    "macvtap ports exist only on direct networks (mode: direct); use tap or veth here",
                );
                d.kind = None;
            }
            Some(k @ (PortKind::Tap | PortKind::Veth)) if direct => {
                cx.err(
                    &kf.path,
                    kf.loc(),
                    format!(
                        "a port on direct network {} is a macvtap device on its uplink, not a {}; remove kind (or write kind: macvtap)",
                        d.network.as_deref().unwrap_or(""),
                        if k == PortKind::Tap { "tap" } else { "veth" }
                    ),
                );
                d.kind = None;
            }
            k if !direct => d.kind = k,
            _ => {}
        }
    }

    if let Some(mf) = o.get(cx, "mac") {
        d.mac_loc = mf.loc();
        if let Some(t) = text(cx, &mf, "a MAC address like 52:54:00:12:34:56") {
            match parse_mac(&t).and_then(check_vm_mac) {
                Ok(m) => d.mac = Some(m),
                Err(m) => cx.err(&mf.path, mf.loc(), m),
            }
        }
    } else if d.name.is_some() && vm_ok {
        // Given out once the whole spec is read (see `super::macs`).
        d.mac_derived = true;
    }

    if let Some(af) = o.get(cx, "ipv4") {
        d.ipv4_loc = af.loc();
        if let Some(t) = text(cx, &af, "an IPv4 address") {
            match port_ipv4(&t, net, d.network.as_deref().unwrap_or("")) {
                Ok(a) => d.ipv4 = a,
                Err(m) => cx.err(&af.path, af.loc(), m),
            }
        }
    }
}

/// What a macvtap port cannot do, field by field, each with its reason.
fn refuse_for_macvtap(cx: &mut Ctx, o: &Obj) {
    // What a macvtap port cannot do, field by field, each with its reason.
    let refuse: [(&str, &str); 5] = [
        (
            "queues",
            "a macvtap port needs no queues setting: QEMU opens /dev/tapN once per queue (remove it)",
        ),
        (
            "firewall",
            "a port on a direct network cannot have a firewall: its traffic never passes through the host's IP or bridge hooks (use a bridge network, or filter in the guest)",
        ),
        (
            "qos",
            "qos is not supported on direct (macvtap) ports in this version; use a bridge network for shaped ports",
        ),
        (
            "mirror",
            "mirror is not supported on direct (macvtap) ports in this version; use a bridge network",
        ),
        (
            "dhcp_client",
            "dhcp_client applies only to veth ports; a VM on a macvtap runs its own DHCP client (remove it)",
        ),
    ];
    for (key, why) in refuse {
        if let Some(f) = o.get(cx, key) {
            cx.err(&f.path, f.loc(), why);
        }
    }
    if let Some(af) = o.get(cx, "antispoof")
        && boolean(cx, &af) == Some(true)
    {
        cx.err(
            &af.path,
            af.loc(),
            "anti-spoofing is not enforced on direct (macvtap) ports: their frames never cross a bridge kvmnet guards; remove antispoof (or use a bridge network)",
        );
    }
}

/// Fields of tap ports (owner, queues) and veth ports (dhcp_client), and antispoof.
fn read_tap_and_veth_fields(cx: &mut Ctx, o: &Obj, d: &mut PortDraft) {
    let kind = d.kind;
    if let Some(of) = o.get(cx, "owner") {
        if kind == Some(PortKind::Veth) {
            cx.err(
                &of.path,
                of.loc(),
                "owner applies only to tap ports; a veth port has no owner (remove it)",
            );
        } else {
            d.owner = read_owner(cx, &of);
        }
    }
    if let Some(qf) = o.get(cx, "queues")
        && kind != Some(PortKind::Macvtap)
    {
        if kind == Some(PortKind::Veth) {
            cx.err(
                &qf.path,
                qf.loc(),
                "queues applies only to tap ports; a veth port has no queues setting (remove it)",
            );
        } else if let Some(q) = int_in(
            cx,
            &qf,
            &format!("a queue count between 1 and {QUEUES_MAX}"),
            1,
            QUEUES_MAX,
        ) {
            d.queues = u32::try_from(q).unwrap_or(1);
        }
    }
    if let Some(af) = o.get(cx, "antispoof")
        && kind != Some(PortKind::Macvtap)
        && let Some(b) = boolean(cx, &af)
    {
        d.antispoof = b;
    }
    if let Some(cf) = o.get(cx, "dhcp_client")
        && kind != Some(PortKind::Macvtap)
    {
        if kind == Some(PortKind::Tap) {
            cx.err(
                &cf.path,
                cf.loc(),
                "dhcp_client applies only to veth ports; a VM behind a tap runs its own DHCP client (remove it)",
            );
        } else if let Some(b) = boolean(cx, &cf) {
            d.dhcp_client = b;
        }
    }
}

/// The port's policy: firewall, qos, mirror and ethtool.
fn read_port_policy(cx: &mut Ctx, o: &Obj, d: &mut PortDraft) {
    let kind = d.kind;
    if let Some(ff) = o.get(cx, "firewall")
        && kind != Some(PortKind::Macvtap)
    {
        // The port is found by its interface: neither an address nor the guard is needed.
        d.firewall = read_firewall(cx, &ff).map(std::sync::Arc::new);
    }
    if let Some(qf) = o.get(cx, "qos")
        && kind != Some(PortKind::Macvtap)
    {
        d.qos = read_qos(cx, &qf);
    }
    if let Some(mf) = o.get(cx, "mirror")
        && kind != Some(PortKind::Macvtap)
        && let Some(m) = read_ifname_field(cx, &mf, "the name of the port that receives the copy")
    {
        d.mirror = Some((m, mf.loc(), mf.path.clone()));
    }
    if let Some(ef) = o.get(cx, "ethtool") {
        d.ethtool = read_ethtool(cx, &ef);
    }
}

/// `vlans`: the VLANs a trunk port of a vlan network tags.
fn read_trunk(cx: &mut Ctx, o: &Obj, d: &mut PortDraft, net: Option<&NetRef>) {
    if let Some(vf) = o.get(cx, "vlans") {
        match net.and_then(|n| n.mode) {
            Some(m) if m != Mode::Vlan => cx.err(
                &vf.path,
                vf.loc(),
                format!(
                    "vlans (a trunk port) applies only to ports of vlan networks; network {} is mode {} (remove vlans)",
                    d.network.as_deref().unwrap_or(""),
                    m.as_str()
                ),
            ),
            _ => {
                if let Some(items) = list(cx, &vf, "a list of VLAN ids, like [10, 20]") {
                    for item in items {
                        let Some(id) = int_in(
                            cx,
                            &item,
                            &format!("a VLAN id between 1 and {VLAN_ID_MAX}"),
                            1,
                            i128::from(VLAN_ID_MAX),
                        )
                        .and_then(|n| u16::try_from(n).ok()) else {
                            continue;
                        };
                        if let Some((_, _, first)) = d.vlans.iter().find(|v| v.0 == id) {
                            cx.err(
                                &item.path,
                                item.loc(),
                                format!("VLAN {id} is already listed at {first}"),
                            );
                            continue;
                        }
                        d.vlans.push((id, item.loc(), item.path.clone()));
                    }
                }
            }
        }
    }
}

/// `netns`: where a veth port's far end goes.
fn read_port_netns(cx: &mut Ctx, o: &Obj, d: &mut PortDraft) {
    let kind = d.kind;
    match (o.get(cx, "netns"), kind) {
        (Some(nf), Some(PortKind::Tap)) => {
            cx.err(
                &nf.path,
                nf.loc(),
                "netns applies only to veth ports; a tap port is opened by QEMU (use kind: veth, or remove netns)",
            );
        }
        (Some(nf), Some(PortKind::Macvtap)) => {
            cx.err(
                &nf.path,
                nf.loc(),
                "netns applies only to veth ports; a macvtap port is opened by QEMU through /dev/tapN (remove netns)",
            );
        }
        (Some(nf), _) => {
            if let Some(n) = text(cx, &nf, "a network namespace name") {
                match check_netns(&n) {
                    Ok(()) => d.netns = Some(n),
                    Err(m) => cx.err(&nf.path, nf.loc(), m),
                }
            }
        }
        (None, Some(PortKind::Veth)) => {
            cx.err(
                &join(&d.path, "netns"),
                o.loc,
                "missing required field 'netns'; a veth port needs the network namespace that receives its far end",
            );
        }
        (None, _) => {}
    }
}

pub(super) fn check_vm_mac(m: Mac) -> Result<Mac, String> {
    if m.is_zero() {
        return Err(format!(
            "{m} is the all-zero MAC address; give a unicast address like 52:54:00:12:34:56"
        ));
    }
    if m.is_multicast() {
        return Err(format!(
            "{m} is a multicast address (lowest bit of the first octet set); a NIC needs a unicast address like 52:54:00:12:34:56"
        ));
    }
    if m.0[0] == 0xfe {
        return Err(format!(
            "{m} starts with fe:, which kvmnet reserves for the host end of ports; use another prefix like 52:54:00"
        ));
    }
    Ok(m)
}

pub(super) fn port_ipv4(
    t: &str,
    net: Option<&NetRef>,
    net_name: &str,
) -> Result<Option<Ipv4Cidr>, String> {
    let with_prefix = t.contains('/');
    let parsed = if with_prefix {
        parse_cidr(t)?
    } else {
        Ipv4Cidr::new(parse_ip(t)?, 32)
    };
    if let Some(w) = special(parsed.addr) {
        return Err(format!("{} is {w}", parsed.addr));
    }
    let Some(net) = net else {
        return Ok(None);
    };
    match (net.mode, net.ipv4) {
        (Some(m @ (Mode::Bridge | Mode::Direct)), _)
        | (Some(m @ (Mode::Vxlan | Mode::Vlan)), None) => {
            if !with_prefix {
                return Err(format!(
                    "on {} network {net_name} there is no subnet to take a prefix from; write the address with its prefix, like {}/24",
                    m.as_str(),
                    parsed.addr
                ));
            }
            if parsed.prefix <= 30 {
                if parsed.addr == parsed.network().addr {
                    return Err(format!(
                        "{parsed} has no host bits: it is the network address; give the guest's own address"
                    ));
                }
                if parsed.addr == parsed.broadcast() {
                    return Err(format!(
                        "{parsed} is the broadcast address of its subnet; give the guest's own address"
                    ));
                }
            }
            Ok(Some(parsed))
        }
        (Some(_), Some(gw)) => {
            if with_prefix && parsed.prefix != gw.prefix {
                return Err(format!(
                    "the prefix /{} differs from network {net_name}'s /{}; write the bare address {}",
                    parsed.prefix, gw.prefix, parsed.addr
                ));
            }
            let a = parsed.addr;
            if a == gw.addr {
                return Err(format!(
                    "{a} is the gateway of network {net_name}; give the guest another address in {}",
                    gw.network()
                ));
            }
            check_in_subnet(a, gw, "address")?;
            Ok(Some(Ipv4Cidr::new(a, gw.prefix)))
        }
        _ => Ok(None),
    }
}

pub(super) fn read_owner(cx: &mut Ctx, f: &Field) -> Option<Owner> {
    let Kind::Scalar(s) = &f.node.kind else {
        if !matches!(f.node.kind, Kind::Bad) {
            cx.err(
                &f.path,
                f.loc(),
                format!(
                    "expected a user name or a numeric uid, found {}",
                    f.node.describe()
                ),
            );
        }
        return None;
    };
    if s.is_null() {
        cx.err(
            &f.path,
            f.loc(),
            "missing value; expected a user name or a numeric uid",
        );
        return None;
    }
    if s.as_bool().is_some() || (s.as_int().is_none() && s.looks_like_float()) {
        cx.err(
            &f.path,
            f.loc(),
            format!(
                "expected a user name or a numeric uid, found {}",
                f.node.describe()
            ),
        );
        return None;
    }
    // A quoted all-digit owner is a uid too: useradd refuses all-digit user names.
    let digits = !s.text.is_empty() && s.text.bytes().all(|b| b.is_ascii_digit());
    if s.as_int().is_some() || digits {
        return match s.text.trim_start_matches('+').parse::<u32>() {
            Ok(n) if n < u32::MAX => Some(Owner::Uid(n)),
            _ => {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!(
                        "{} is not a valid uid; expected 0 to {}",
                        show(&s.text),
                        u32::MAX - 1
                    ),
                );
                None
            }
        };
    }
    match check_user(&s.text) {
        Ok(()) => Some(Owner::User(s.text.clone())),
        Err(m) => {
            cx.err(&f.path, f.loc(), m);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Second pass: rules across the whole spec
