//! The `ovn` section, `backend` (of a network, and `host.backend` for all), a VM's `host`,
//! and what OVN networks refuse: the settings OVN has no counterpart for, or that kvmnet
//! does not put on OVN yet, each refused at its line with the reason. A provider (`bridge`
//! or `vlan`) network's uplink is taken by every chassis's Open vSwitch, so no kernel
//! network and not `ovn.external` may use it too.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::spec::RaMode;
use crate::spec::ovn::{Chassis, External, NetBackend, OVS_DEFAULT, Ovn, Ssl};

pub(super) const OVN_FIELDS: &[&str] = &[
    "nb",
    "sb",
    "ovs",
    "datapath",
    "encap",
    "underlay_mtu",
    "chassis",
    "external",
    "ssl",
];
/// The least `ovn.underlay_mtu`: IPv6's minimum link MTU, so a tunnel over IPv6 works too.
const UNDERLAY_MTU_MIN: i128 = 1280;
pub(super) const SSL_FIELDS: &[&str] = &["private_key", "certificate", "ca_cert"];
pub(super) const CHASSIS_FIELDS: &[&str] = &["encap_ip", "gateway", "ovs"];
pub(super) const EXTERNAL_FIELDS: &[&str] = &["uplink", "ipv4", "next_hop", "ipv6", "next_hop6"];
pub(super) const BACKENDS: &[&str] = &["kernel", "ovn"];
pub(super) const DATAPATHS: &[&str] = &["system", "netdev"];
pub(super) const ENCAPS: &[&str] = &["geneve", "vxlan"];

/// Network fields an OVN network refuses, with why.
const NET_REFUSED: &[(&str, &str)] = &[
    (
        "bridge",
        "an OVN network is a logical switch, not a bridge of this host",
    ),
    (
        "nat",
        "OVN networks leave through ovn.external on the gateway chassis",
    ),
    ("bandwidth", "kvmnet does not shape OVN networks yet"),
    (
        "host_access",
        "the host is not the gateway of an OVN network",
    ),
    (
        "ra.lifetime",
        "OVN 23.03's router advertisements have no router lifetime setting",
    ),
    (
        "dns.rate_limit",
        "ovn-controller answers OVN's DNS and cannot limit queries per client",
    ),
];

/// Port fields a port on an OVN network refuses, with why.
const PORT_REFUSED: &[(&str, &str)] = &[
    ("qos.floor", "OVN meters police a rate; they guarantee none"),
    (
        "qos.inbound.ceil",
        "OVN meters police one rate; there is nothing to borrow up to",
    ),
    (
        "qos.outbound.ceil",
        "OVN meters police one rate; there is nothing to borrow up to",
    ),
    (
        "mirror",
        "OVN's Mirror rows (OVN 23.03) send a port's traffic only to a GRE or ERSPAN tunnel endpoint, not to another port",
    ),
    (
        "vlans",
        "a trunk is a host object; OVN ports are access ports",
    ),
    (
        "ethtool",
        "an OVN port's device belongs to the chassis's Open vSwitch",
    ),
];

/// `ovn` as read.
#[derive(Clone)]
pub(crate) struct OvnDraft {
    ovn: Ovn,
    path: String,
    loc: Loc,
}

fn word(cx: &mut Ctx, f: &Field, allowed: &[&str]) -> Option<String> {
    let t = text(cx, f, &allowed.join(" or "))?;
    if allowed.contains(&t.as_str()) {
        Some(t)
    } else {
        cx.err(
            &f.path,
            f.loc(),
            format!("'{}' is not one of {}", show(&t), allowed.join(", ")),
        );
        None
    }
}

/// `backend`, of a network or of `host`.
pub(super) fn read_backend(cx: &mut Ctx, f: &Field) -> Option<(NetBackend, Loc)> {
    let b = match word(cx, f, BACKENDS)?.as_str() {
        "ovn" => NetBackend::Ovn,
        _ => NetBackend::Kernel,
    };
    Some((b, f.loc()))
}

/// A remote list (`unix:PATH`, `tcp:HOST:PORT`, `ssl:HOST:PORT`): one remote, a
/// comma-separated list of them, or a YAML list (a cluster's servers), as one
/// comma-separated string.
fn remote(cx: &mut Ctx, f: &Field) -> Option<String> {
    if let Kind::Seq(_) = f.node.kind {
        let items = list(cx, f, "a list of OVSDB remotes")?;
        if items.is_empty() {
            cx.err(
                &f.path,
                f.loc(),
                "an empty list names no database; give at least one remote",
            );
            return None;
        }
        let each: Vec<Option<String>> = items.iter().map(|i| remote_text(cx, i)).collect();
        return each
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|r| r.join(","));
    }
    remote_text(cx, f)
}

/// One scalar of remotes (comma-separated).
fn remote_text(cx: &mut Ctx, f: &Field) -> Option<String> {
    let t = text(cx, f, "an OVSDB remote like unix:/run/ovn/ovnnb_db.sock")?;
    let bad = t.split(',').map(str::trim).find(|r| {
        !(r.strip_prefix("unix:").is_some_and(|p| !p.is_empty())
            || ["tcp:", "ssl:"].iter().any(|p| {
                r.strip_prefix(p)
                    .and_then(|hp| hp.rsplit_once(':'))
                    .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok())
            }))
    });
    match bad {
        Some(b) => {
            cx.err(
                &f.path,
                f.loc(),
                format!(
                    "'{}' is not an OVSDB remote; expected unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT (a list, or a comma-separated one, for a cluster)",
                    show(b)
                ),
            );
            None
        }
        None => Some(t),
    }
}

pub(super) fn read_ovn(cx: &mut Ctx, f: &Field) -> Option<OvnDraft> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        OVN_FIELDS,
        "a mapping with nb, sb and chassis",
    )?;
    let nb = o.required(
        cx,
        "nb",
        "name the Northbound database, like unix:/run/ovn/ovnnb_db.sock",
    );
    let sb = o.required(
        cx,
        "sb",
        "name the Southbound database, like unix:/run/ovn/ovnsb_db.sock",
    );
    let ssl = match o.get(cx, "ssl") {
        Some(f) => Some(read_ssl(cx, &f)?),
        None => None,
    };
    let remote = |cx: &mut Ctx, f: &Field| {
        let r = remote(cx, f)?;
        needs_ssl(cx, f, &r, ssl.is_some());
        Some(r)
    };
    let nb = nb.and_then(|f| remote(cx, &f));
    let sb = sb.and_then(|f| remote(cx, &f));
    let ovs = match o.get(cx, "ovs") {
        Some(f) => remote(cx, &f),
        None => Some(OVS_DEFAULT.to_string()),
    };
    let datapath = match o.get(cx, "datapath") {
        Some(f) => word(cx, &f, DATAPATHS),
        None => Some("system".to_string()),
    };
    let encap = match o.get(cx, "encap") {
        Some(f) => word(cx, &f, ENCAPS),
        None => Some("geneve".to_string()),
    };
    let underlay_mtu = match o.get(cx, "underlay_mtu") {
        Some(f) => int_in(
            cx,
            &f,
            &format!("an MTU between {UNDERLAY_MTU_MIN} and {MTU_MAX}"),
            UNDERLAY_MTU_MIN,
            MTU_MAX,
        )
        .and_then(|n| u32::try_from(n).ok()),
        None => Some(crate::spec::ovn::UNDERLAY_MTU_DEFAULT),
    };
    let chassis = o
        .required(
            cx,
            "chassis",
            "list every hypervisor: NAME: { encap_ip: ADDRESS }",
        )
        .and_then(|f| read_chassis(cx, &f, ssl.is_some()));
    let external = match o.get(cx, "external") {
        Some(f) => Some(read_external(cx, &f)?),
        None => None,
    };
    Some(OvnDraft {
        ovn: Ovn {
            nb: nb?,
            sb: sb?,
            ovs: ovs?,
            datapath: datapath?,
            encap: encap?,
            underlay_mtu: underlay_mtu?,
            chassis: chassis?,
            external,
            ssl,
            networks: BTreeMap::new(),
            ports: Vec::new(),
            local: None,
        },
        path: f.path.clone(),
        loc: f.loc(),
    })
}

/// An `ssl:` remote without `ovn.ssl` is refused at the remote: there is nothing to reach it
/// with.
fn needs_ssl(cx: &mut Ctx, f: &Field, remotes: &str, have_ssl: bool) {
    if !have_ssl && crate::spec::ovn::has_ssl(remotes) {
        cx.err(
            &f.path,
            f.loc(),
            "an ssl: remote needs ovn.ssl: { private_key: FILE, certificate: FILE, ca_cert: FILE } (this host's key and certificate, and the CA the servers' certificates are signed by)",
        );
    }
}

/// `ovn.ssl`: three absolute paths.
fn read_ssl(cx: &mut Ctx, f: &Field) -> Option<Ssl> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        SSL_FIELDS,
        "a mapping with private_key, certificate and ca_cert",
    )?;
    let mut file = |key: &str, what: &str| {
        let f = o.required(cx, key, &format!("give the path of {what} (PEM)"))?;
        let t = text(cx, &f, "an absolute file path")?;
        if !t.starts_with('/') {
            cx.err(
                &f.path,
                f.loc(),
                format!("'{}' is not an absolute path", show(&t)),
            );
            return None;
        }
        Some(std::path::PathBuf::from(t))
    };
    let private_key = file("private_key", "this host's private key");
    let certificate = file("certificate", "this host's certificate");
    let ca_cert = file(
        "ca_cert",
        "the CA certificate the servers' certificates are signed by",
    );
    Some(Ssl {
        private_key: private_key?,
        certificate: certificate?,
        ca_cert: ca_cert?,
    })
}

fn read_chassis(cx: &mut Ctx, f: &Field, have_ssl: bool) -> Option<BTreeMap<String, Chassis>> {
    let o = host::obj_named(cx, f, "a mapping of chassis names to chassis")?;
    let mut out = BTreeMap::new();
    let mut ips: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    let mut ok = true;
    for (key, cf) in o.named(cx) {
        let Some(c) = obj(
            cx,
            cf.node,
            &cf.path,
            CHASSIS_FIELDS,
            "a chassis (encap_ip, gateway)",
        ) else {
            ok = false;
            continue;
        };
        let ip = c
            .required(cx, "encap_ip", "give the chassis's tunnel endpoint address")
            .and_then(|f| {
                let t = text(cx, &f, "an IPv4 address")?;
                match parse_ip(&t) {
                    Ok(a) => {
                        if let Some(other) = ips.insert(a, key.text.clone()) {
                            cx.err(
                                &f.path,
                                f.loc(),
                                format!("chassis '{other}' has this encap_ip too"),
                            );
                        }
                        Some(a)
                    }
                    Err(m) => {
                        cx.err(&f.path, f.loc(), m);
                        None
                    }
                }
            });
        let gateway = match c.get(cx, "gateway") {
            Some(g) => int_in(cx, &g, "a gateway priority from 1 to 32767", 1, 32767)
                .map(|n| Some(n as u32)),
            None => Some(None),
        };
        let ovs = match c.get(cx, "ovs") {
            Some(g) => remote(cx, &g)
                .inspect(|r| needs_ssl(cx, &g, r, have_ssl))
                .map(Some),
            None => Some(None),
        };
        match (ip, gateway, ovs) {
            (Some(encap_ip), Some(gateway), Some(ovs)) => {
                out.insert(
                    key.text.clone(),
                    Chassis {
                        encap_ip,
                        gateway,
                        ovs,
                    },
                );
            }
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

fn read_external(cx: &mut Ctx, f: &Field) -> Option<External> {
    let o = obj(
        cx,
        f.node,
        &f.path,
        EXTERNAL_FIELDS,
        "a mapping with uplink, ipv4 and next_hop",
    )?;
    let uplink = o
        .required(
            cx,
            "uplink",
            "name the interface gateway chassis put in br-ex",
        )
        .and_then(|f| {
            let t = text(cx, &f, "an interface name")?;
            check_ifname(&t)
                .map_err(|m| cx.err(&f.path, f.loc(), m))
                .ok()?;
            Some(t)
        });
    let ipv4 = o
        .required(
            cx,
            "ipv4",
            "give the gateway router's address there, like 192.168.100.1/24",
        )
        .and_then(|f| {
            let t = text(cx, &f, "an address with its prefix")?;
            parse_cidr(&t).map_err(|m| cx.err(&f.path, f.loc(), m)).ok()
        });
    let next_hop = o
        .required(cx, "next_hop", "give the external network's router")
        .and_then(|f| {
            let t = text(cx, &f, "an IPv4 address")?;
            let a = parse_ip(&t).map_err(|m| cx.err(&f.path, f.loc(), m)).ok()?;
            if let Some(c) = ipv4
                && !c.contains(a)
            {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!("{a} is not in {c}, the external network"),
                );
                return None;
            }
            Some(a)
        });
    let ipv6 = read_external6(cx, &o);
    Some(External {
        uplink: uplink?,
        ipv4: ipv4?,
        next_hop: next_hop?,
        ipv6: ipv6?,
    })
}

/// `ipv6` and `next_hop6` of `ovn.external`: both or neither, the next hop inside the
/// prefix. `None` when either is wrong (said), `Some(None)` when neither is written.
fn read_external6(cx: &mut Ctx, o: &super::Obj) -> Option<Option<(Ipv6Cidr, Ipv6Addr)>> {
    let (Some(af), Some(nf)) = (o.get(cx, "ipv6"), o.get(cx, "next_hop6")) else {
        for (have, miss, hint) in [
            (
                "ipv6",
                "next_hop6",
                "give the external network's IPv6 router",
            ),
            (
                "next_hop6",
                "ipv6",
                "give the gateway router's IPv6 address there, like 2001:db8:100::1/64",
            ),
        ] {
            if let Some(f) = o.get(cx, have) {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!("{have} needs {miss} beside it: {hint}"),
                );
                return None;
            }
        }
        return Some(None);
    };
    let ipv6 = text(cx, &af, "an IPv6 address with its prefix")?;
    let ipv6: Ipv6Cidr = ipv6
        .parse()
        .map_err(|m: String| cx.err(&af.path, af.loc(), m))
        .ok()?;
    let hop = text(cx, &nf, "an IPv6 address")?;
    let Ok(hop) = hop.parse::<Ipv6Addr>() else {
        cx.err(
            &nf.path,
            nf.loc(),
            format!("'{hop}' is not an IPv6 address"),
        );
        return None;
    };
    if !super::ipv6::contains6(ipv6, hop) || hop == ipv6.addr {
        cx.err(
            &nf.path,
            nf.loc(),
            format!("{hop} is not another address of {ipv6}, the external network"),
        );
        return None;
    }
    Some(Some((ipv6, hop)))
}

/// Where each path was written (see `Ctx::head_index`).
type Index = super::LocIndex;

/// How kvmnet's own logical switch ports' names start (`kvmnet-rp-NET`, `kvmnet-ln-NET`).
const OWN_PREFIX: &str = "kvmnet-";

/// Where network `n` is: its own `backend`, else `host.backend`, else the kernel; with
/// where that was said.
fn backend_of(n: &NetDraft, host_backend: Option<(NetBackend, Loc)>) -> (NetBackend, Loc) {
    n.backend
        .or(host_backend)
        .unwrap_or((NetBackend::Kernel, n.key_loc))
}

/// What the checks of an OVN port read besides the port: the chassis names and which
/// networks are OVN's. A spec cache keeps the stamp its ports passed under
/// ([`PortDraft::ovn_clean`]), and they are not checked again under the same one: at
/// 10,000 ports the checks took a tenth of a daemon's apply.
pub(crate) fn ovn_stamp(
    draft: &OvnDraft,
    host_backend: Option<(NetBackend, Loc)>,
    nets: &[NetDraft],
) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same stamp for the same names in one process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in draft.ovn.chassis.keys() {
        c.hash(&mut h);
    }
    0xffu8.hash(&mut h);
    for n in nets {
        if backend_of(n, host_backend).0 == NetBackend::Ovn {
            n.name.hash(&mut h);
        }
    }
    h.finish().max(1)
}

/// Which networks are OVN's, checked against `ovn` and what OVN refuses; their names.
pub(super) fn ovn_checks(
    cx: &mut Ctx,
    draft: Option<&OvnDraft>,
    host_backend: Option<(NetBackend, Loc)>,
    nets: &[NetDraft],
    ports: &[&PortDraft],
) -> Vec<String> {
    let mut names = Vec::new();
    // The networks' paths are in the head; the parts go in only when a port is checked.
    let mut at = cx.head_index();
    for n in nets {
        let (backend, loc) = backend_of(n, host_backend);
        if backend != NetBackend::Ovn {
            continue;
        }
        names.push(n.name.clone());
        let Some(d) = draft else {
            // A written ovn section that did not validate has said what is wrong already.
            if cx.loc_at("ovn").is_none() {
                cx.err(
                    &join(&n.path, "backend"),
                    loc,
                    "an OVN network needs the ovn section (nb, sb, chassis) to say where OVN is",
                );
            }
            continue;
        };
        check_network(cx, &at, d, n);
    }
    let on_ovn: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    check_forwards(cx, nets, &on_ovn);
    if let Some(d) = draft {
        check_provider_uplinks(cx, d, nets, &on_ovn);
        let stamp = ovn_stamp(d, host_backend, nets);
        let is_due = |p: &&&PortDraft| {
            p.ovn_clean.get() != stamp && p.network.as_deref().is_some_and(|n| on_ovn.contains(n))
        };
        let due: Vec<&PortDraft> = ports.iter().filter(is_due).copied().collect();
        // Only the parts of the VMs checked: one new VM among 10,000 is one part, not
        // 10,000 copied into the index.
        let vms: BTreeSet<String> = due.iter().map(|p| join("vms", &p.vm)).collect();
        if !vms.is_empty() {
            at.add_parts(cx, &vms);
        }
        for p in due {
            check_port(cx, &at, d, p);
        }
    }
    names
}

fn check_network(cx: &mut Ctx, at: &Index, d: &OvnDraft, n: &NetDraft) {
    let mode_path = join(&n.path, "mode");
    let mode_loc = at.get(mode_path.as_str()).unwrap_or(n.key_loc);
    match n.mode {
        Some(Mode::Nat | Mode::Routed | Mode::Isolated | Mode::Bridge | Mode::Vlan) | None => {}
        Some(Mode::Vxlan) => cx.err(
            &mode_path,
            mode_loc,
            "OVN's own overlay replaces VXLAN networks: use mode nat, routed or isolated on OVN (or bridge or vlan for a provider network), or backend: kernel",
        ),
        Some(Mode::Direct) => cx.err(
            &mode_path,
            mode_loc,
            "a direct network is macvtaps on this host's uplink, which OVN does not carry: use backend: kernel",
        ),
    }
    for (field, why) in NET_REFUSED {
        let path = field
            .split('.')
            .fold(n.path.clone(), |p, seg| join(&p, seg));
        if let Some(loc) = at.get(path.as_str()) {
            // `bridge` is derived when not written: only a written one is refused.
            if *field == "bridge" && n.bridge_derived {
                continue;
            }
            cx.err(
                &path,
                loc,
                format!("{field} is not taken on OVN networks: {why} (remove it)"),
            );
        }
    }
    check_dns(cx, n);
    check_mtu(cx, at, d, n);
    let external6 = d.ovn.external.as_ref().is_some_and(|e| e.ipv6.is_some());
    check_ipv6(cx, at, n, external6);
    if matches!(n.mode, Some(Mode::Nat)) {
        match &d.ovn.external {
            None => cx.err(
                &mode_path,
                mode_loc,
                "a nat network on OVN leaves through ovn.external: add it (uplink, ipv4, next_hop)",
            ),
            Some(_) if !d.ovn.chassis.values().any(|c| c.gateway.is_some()) => cx.err(
                &join(&d.path, "chassis"),
                d.loc,
                "a nat network on OVN needs a gateway chassis: give at least one chassis a gateway priority",
            ),
            Some(_) => {}
        }
    }
}

/// `ipv6`, `ra` and DHCPv6 on OVN (see `ovn::model`): a routed or nat network's router
/// port announces SLAAC or DHCPv6, and OVN's DHCPv6 answers for it; an isolated network has no
/// router, so no `ra` and no DHCPv6; a nat network's IPv6 leaves through NAT66 to
/// `ovn.external.ipv6`, so it needs one.
/// An overlay network's `mtu` fits in the tunnel: what the underlay's MTU leaves after
/// the encapsulation. (A provider network's guests are on their own segment.)
fn check_mtu(cx: &mut Ctx, at: &Index, d: &OvnDraft, n: &NetDraft) {
    let Some(mtu) = n.mtu else { return };
    if matches!(n.mode, Some(Mode::Bridge | Mode::Vlan)) {
        return;
    }
    let room = d.ovn.tunnel_room();
    if mtu > room {
        let path = join(&n.path, "mtu");
        let loc = at.get(path.as_str()).unwrap_or(n.key_loc);
        cx.err(
            &path,
            loc,
            format!(
                "mtu {mtu} does not fit in the tunnel: {} adds {} bytes to an underlay of {} (ovn.underlay_mtu), so at most {room}; lower mtu, or raise ovn.underlay_mtu if the underlay carries more",
                d.ovn.encap,
                crate::spec::ovn::encap_overhead(&d.ovn.encap),
                d.ovn.underlay_mtu
            ),
        );
    }
}

fn check_ipv6(cx: &mut Ctx, at: &Index, n: &NetDraft, external6: bool) {
    let ipv6 = join(&n.path, "ipv6");
    if n.mode == Some(Mode::Nat)
        && !external6
        && let Some(loc) = at.get(ipv6.as_str())
    {
        cx.err(
            &ipv6,
            loc,
            "ipv6 on an OVN nat network needs ovn.external's ipv6 and next_hop6: its IPv6 leaves masqueraded to that address (NAT66), through that router (add them, or use mode routed)",
        );
    }
    let ra = join(&n.path, "ra");
    if n.mode == Some(Mode::Isolated)
        && let Some(loc) = at.get(ra.as_str())
    {
        cx.err(
            &ra,
            loc,
            "ra is not taken on isolated OVN networks: an isolated network has no router to advertise, so its ports take static ipv6 addresses only (remove it)",
        );
    }
    let mode = join(&ra, "mode");
    if n.v6.ra.mode == RaMode::SlaacDhcpv6
        && let Some(loc) = at.get(mode.as_str())
    {
        cx.err(
            &mode,
            loc,
            "ra.mode slaac+dhcpv6 is not taken on OVN networks: OVN's router advertisements tell guests either to form SLAAC addresses (slaac) or to take their address from DHCPv6 (dhcpv6), never both (use one of them)",
        );
    }
    // OVN's DHCPv6 answers from the network's router port: a routed or nat network's.
    if !matches!(n.mode, Some(Mode::Routed | Mode::Nat)) {
        for field in ["range6", "dns6"] {
            let path = join(&join(&n.path, "dhcp"), field);
            if let Some(loc) = at.get(path.as_str()) {
                cx.err(
                    &path,
                    loc,
                    format!(
                        "dhcp.{field} is taken on routed and nat OVN networks only: OVN answers DHCPv6 for the router port that announces the prefix, and other networks have none (remove it)"
                    ),
                );
            }
        }
    }
}

/// `dns` on OVN: what OVN's DNS cannot do (see `ovn::dns`).
fn check_dns(cx: &mut Ctx, n: &NetDraft) {
    let Some(dns) = &n.dns else { return };
    let path = join(&n.path, "dns");
    if n.mode == Some(Mode::Isolated) {
        let loc = cx.loc_at(&path).unwrap_or(n.key_loc);
        cx.err(
            &path,
            loc,
            "dns is not taken on isolated OVN networks: OVN answers the queries a guest sends towards a router or a server, and an isolated network has neither (use nat or routed, or remove it)",
        );
    }
    for (a, fpath, loc) in &dns.forwarders {
        if a.is_ipv6() {
            cx.err(
                fpath,
                *loc,
                format!(
                    "{a} is IPv6: an OVN network's DHCP hands out forwarders as IPv4 DNS servers (name an IPv4 server, and an IPv6 one in dhcp.dns6)"
                ),
            );
        }
    }
}

/// Where a network's uplink was written, and the interface: a bridge or direct network's
/// `uplink`, or a vlan network's.
fn uplink_at(n: &NetDraft) -> Option<(&str, Loc)> {
    if let Some(v) = &n.vlan {
        return Some((v.uplink.as_str(), n.vlan_uplink_loc));
    }
    n.uplink.as_ref().map(|(u, l)| (u.as_str(), *l))
}

/// An OVN provider network's uplink belongs to the chassis's Open vSwitch: a kernel network
/// enslaving it (or a VLAN or macvtap on it) would never see a frame, and `ovn.external`'s
/// uplink sits in `br-ex` already.
fn check_provider_uplinks(cx: &mut Ctx, d: &OvnDraft, nets: &[NetDraft], on_ovn: &BTreeSet<&str>) {
    let provider: BTreeMap<&str, &str> = nets
        .iter()
        .filter(|n| on_ovn.contains(n.name.as_str()))
        .filter(|n| matches!(n.mode, Some(Mode::Bridge | Mode::Vlan)))
        .filter_map(|n| uplink_at(n).map(|(u, _)| (u, n.name.as_str())))
        .collect();
    for n in nets {
        let Some((u, loc)) = uplink_at(n) else {
            continue;
        };
        let Some(ovn_net) = provider.get(u) else {
            continue;
        };
        let path = join(&n.path, "uplink");
        if on_ovn.contains(n.name.as_str()) {
            if d.ovn.external.as_ref().is_some_and(|e| e.uplink == u) {
                cx.err(
                    &path,
                    loc,
                    format!("{u} is ovn.external.uplink, which gateway chassis put in br-ex; a provider network needs an interface of its own"),
                );
            }
        } else {
            cx.err(
                &path,
                loc,
                format!("{u} is the uplink of OVN network '{ovn_net}', which every chassis puts in an Open vSwitch bridge; a kernel network cannot use it too"),
            );
        }
    }
}

/// Bonds stay host objects (`host.uplinks`, made by the kernel backend): an OVN network's
/// uplink, and `ovn.external.uplink`, which every chassis (or every gateway chassis) puts
/// in an Open vSwitch bridge, are neither a bond nor one of its members.
pub(super) fn check_bonds(
    cx: &mut Ctx,
    draft: Option<&OvnDraft>,
    nets: &[NetDraft],
    ovn_nets: &[String],
    uplinks: &[super::host::UplinkDraft],
) {
    let bonds: Vec<&super::host::UplinkDraft> = uplinks.iter().filter(|u| u.is_bond).collect();
    if bonds.is_empty() {
        return;
    }
    let bond_of = |name: &str| {
        bonds.iter().find_map(|b| {
            if b.name == name {
                Some(format!("{name} is a bond of host.uplinks"))
            } else {
                b.members
                    .iter()
                    .any(|m| m.0 == name)
                    .then(|| format!("{name} is a member of bond {}", b.name))
            }
        })
    };
    const WHY: &str = "bonds stay host objects, which OVN does not take into its bridges; give it an interface of its own, or put this network on backend: kernel";
    for n in nets.iter().filter(|n| ovn_nets.contains(&n.name)) {
        if let Some((u, loc)) = uplink_at(n)
            && let Some(what) = bond_of(u)
        {
            cx.err(&join(&n.path, "uplink"), loc, format!("{what}: {WHY}"));
        }
    }
    if let Some(e) = draft.and_then(|d| d.ovn.external.as_ref())
        && let Some(what) = bond_of(&e.uplink)
    {
        let path = "ovn.external.uplink";
        let loc = cx.loc_at(path).unwrap_or_default();
        cx.err(
            path,
            loc,
            format!("{what}: bonds stay host objects, which OVN does not take into br-ex; give the gateway chassis an interface of its own"),
        );
    }
}

/// Forwards of OVN nat networks share one address (`ovn.external.ipv4`): a protocol's
/// port can go to one VM only.
fn check_forwards(cx: &mut Ctx, nets: &[NetDraft], on_ovn: &BTreeSet<&str>) {
    let mut seen: BTreeMap<(Proto, u16), String> = BTreeMap::new();
    for n in nets.iter().filter(|n| on_ovn.contains(n.name.as_str())) {
        for f in &n.forwards {
            let path = join(&f.path, "port");
            if let Some(other) = seen.insert((f.proto, f.port), f.path.clone()) {
                let loc = cx.loc_at(&path).unwrap_or_default();
                cx.err(
                    &path,
                    loc,
                    format!(
                        "{} port {} is forwarded by {other} already: OVN nat networks share ovn.external.ipv4, so a port goes to one VM",
                        f.proto.as_str(),
                        f.port
                    ),
                );
            }
        }
    }
}

fn check_port(cx: &mut Ctx, at: &Index, d: &OvnDraft, p: &PortDraft) {
    // Every path below is the port's: its VM entry is found once, not once a field.
    let at = at.scope(&p.path);
    let net = p.network.as_deref().unwrap_or_default();
    match &p.host {
        None => cx.err(
            &p.path,
            at.get(&p.path).unwrap_or_default(),
            format!(
                "network '{net}' is on OVN: set host on VM '{}' to the chassis it runs on (one of {})",
                p.vm,
                d.ovn.chassis.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Some((h, loc)) if !d.ovn.chassis.contains_key(&**h) => cx.err(
            &join(&join("vms", &p.vm), "host"),
            *loc,
            format!(
                "'{}' is not a chassis of ovn.chassis ({})",
                show(h),
                d.ovn.chassis.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        Some(_) => {}
    }
    // kvmnet names its own logical switch ports (router and localnet ports) so: a VM port
    // of such a name would take one's place, and the network would lose its router.
    if let Some(name) = p.name.as_deref().filter(|n| n.starts_with(OWN_PREFIX)) {
        cx.err(
            &join(&p.path, "name"),
            p.name_loc,
            format!(
                "'{}': on OVN, names starting with {OWN_PREFIX} are kvmnet's own logical switch ports (router and localnet ports); rename the port",
                show(name)
            ),
        );
    }
    if p.kind == Some(PortKind::Macvtap) {
        return;
    }
    // Where each refused field was written (the last time), if it was.
    let mut written = [None; PORT_REFUSED.len()];
    let dotted = |field: &str| {
        // A dotted field is a path of its own keys (`qos.floor`), not one quoted key.
        field
            .split('.')
            .fold(p.path.to_string(), |p, seg| join(&p, seg))
    };
    match at.below(&p.path) {
        Some(fields) => {
            for (rest, loc) in fields {
                if let Some(i) = PORT_REFUSED.iter().position(|(f, _)| *f == rest) {
                    written[i] = Some(loc);
                }
            }
        }
        None => {
            for (w, (field, _)) in written.iter_mut().zip(PORT_REFUSED) {
                *w = at.get(&dotted(field));
            }
        }
    }
    for (loc, (field, why)) in written.into_iter().zip(PORT_REFUSED) {
        if let Some(loc) = loc {
            cx.err(
                &dotted(field),
                loc,
                format!("{field} is not taken on OVN ports: {why} (remove it)"),
            );
        }
    }
    let Some(fw) = &p.firewall else {
        return;
    };
    for (dir, fd) in [("inbound", &fw.inbound), ("outbound", &fw.outbound)] {
        let Some(fd) = fd else { continue };
        for (i, r) in fd.rules.iter().enumerate() {
            if r.connlimit.is_none() && r.rate.is_none() {
                continue;
            }
            let rpath = format!("{}.firewall.{dir}.rules[{i}]", p.path);
            if r.connlimit.is_some() {
                let path = join(&rpath, "connlimit");
                let loc = at.get(path.as_str()).unwrap_or_default();
                cx.err(&path, loc, "connlimit has no OVN equivalent (OVN ACLs cannot count a port's connections); remove it on OVN networks");
            }
            if r.rate.is_some() {
                let path = join(&rpath, "rate");
                let loc = at.get(path.as_str()).unwrap_or_default();
                cx.err(
                    &path,
                    loc,
                    "rate has no OVN equivalent (an ACL's meter limits only its log lines, and OVN polices traffic in kbps, not in packets or connections); remove it on OVN networks",
                );
            }
        }
    }
}

/// `ovn` as the spec holds it, once built.
pub(super) fn finish_ovn(
    spec: &mut Spec,
    draft: Option<OvnDraft>,
    nets: &[String],
    ports: Vec<crate::spec::ovn::OvnPort>,
) {
    spec.ovn = draft.map(|d| d.ovn);
    spec.split_ovn(nets, ports);
}
