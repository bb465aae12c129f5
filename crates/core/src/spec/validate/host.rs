//! The `host` section: version, sysctls, uplinks and bonds.

use super::*;

#[derive(Clone)]
pub(crate) struct UplinkDraft {
    pub(super) name: String,
    pub(super) key_loc: Loc,
    pub(super) path: String,
    /// Members with where each is written; empty for a plain NIC.
    pub(super) members: Vec<(String, Loc, String)>,
    pub(super) is_bond: bool,
    /// Set only when every field passed its checks.
    pub(super) uplink: Option<Uplink>,
    /// Offloads, rings and channels: of the NIC, or of every member of the bond.
    pub(super) ethtool: Option<Ethtool>,
}

/// One entry of `host.uplinks`: an existing interface (its `mtu` and `ethtool`) or a bond
/// kvmnet makes (any bond field makes it one).
pub(super) fn read_uplink(cx: &mut Ctx, key: &Key, f: &Field) -> UplinkDraft {
    let before = cx.errors.len();
    let mut d = UplinkDraft {
        name: key.text.clone(),
        key_loc: key.loc,
        path: f.path.clone(),
        members: Vec::new(),
        is_bond: false,
        uplink: None,
        ethtool: None,
    };
    let name_ok = match check_ifname(&key.text) {
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
        UPLINK_FIELDS,
        "an uplink (a mapping with mode and members for a bond, or mtu and ethtool for an existing interface)",
    ) else {
        return d;
    };
    if let Some(ef) = o.get(cx, "ethtool") {
        d.ethtool = read_ethtool(cx, &ef);
    }
    let mtu = o.get(cx, "mtu").and_then(|mf| {
        int_in(
            cx,
            &mf,
            &format!("an MTU between {MTU_MIN} and {MTU_MAX}"),
            MTU_MIN,
            MTU_MAX,
        )
        .and_then(|n| u32::try_from(n).ok())
    });
    d.is_bond = BOND_FIELDS
        .iter()
        .any(|k| o.entries.iter().any(|(x, _)| x.text == *k));
    let bond = if d.is_bond {
        let mode = read_bond_mode(cx, &o);
        read_bond_members(cx, &o, &mut d);
        read_bond_options(cx, &o, mode, &d.members)
    } else {
        None
    };
    if cx.errors.len() == before && name_ok {
        d.uplink = Some(Uplink {
            name: d.name.clone(),
            bond,
            mtu,
        });
    }
    d
}

/// A bond's required `mode`.
fn read_bond_mode(cx: &mut Ctx, o: &Obj) -> Option<BondMode> {
    o.required(cx, "mode", &format!("a bond needs its mode: {BOND_MODES}"))
        .and_then(|mf| {
            let t = text(cx, &mf, BOND_MODES)?;
            let m = BondMode::parse(&t);
            if m.is_none() {
                cx.err(
                    &mf.path,
                    mf.loc(),
                    format!(
                        "'{}' is not a bond mode; expected {BOND_MODES}{}",
                        show(&t),
                        super::suggest::did_you_mean(&t, &BondMode::ALL.map(|m| m.as_str()))
                    ),
                );
            }
            m
        })
}

/// A bond's required `members`, into `d`: each once, none the bond itself.
fn read_bond_members(cx: &mut Ctx, o: &Obj, d: &mut UplinkDraft) {
    let Some(mf) = o.required(
        cx,
        "members",
        "a bond needs the host interfaces it joins, like members: [eth1, eth2]",
    ) else {
        return;
    };
    let Some(items) = list(cx, &mf, "a list of interface names") else {
        return;
    };
    if items.is_empty() {
        cx.err(
            &mf.path,
            mf.loc(),
            "members is empty; list the host interfaces the bond joins, like [eth1, eth2]",
        );
    }
    for item in items {
        let Some(m) = read_ifname_field(cx, &item, "an interface name") else {
            continue;
        };
        if d.members.iter().any(|(x, _, _)| *x == m) {
            cx.err(
                &item.path,
                item.loc(),
                format!("member '{m}' is listed twice"),
            );
        } else if m == d.name {
            cx.err(
                &item.path,
                item.loc(),
                format!("'{m}' is the bond itself; a bond's members are other host interfaces"),
            );
        } else {
            d.members.push((m, item.loc(), item.path.clone()));
        }
    }
}

/// A bond's optional settings, each refused in a `mode` it does not apply to; the bond,
/// when its mode was read.
fn read_bond_options(
    cx: &mut Ctx,
    o: &Obj,
    mode: Option<BondMode>,
    members: &[(String, Loc, String)],
) -> Option<Bond> {
    let only = |cx: &mut Ctx, field: &str, ok: bool, modes: &str| -> Option<Field<'_>> {
        let f = o.get(cx, field)?;
        match mode {
            Some(m) if !ok => {
                cx.err(
                    &f.path,
                    f.loc(),
                    format!(
                        "{field} applies only to mode {modes}; a bond in mode {} has no {field} (remove it)",
                        m.as_str()
                    ),
                );
                None
            }
            _ => Some(f),
        }
    };
    let choice = |cx: &mut Ctx, f: &Field, names: &[&str], what: &str| -> Option<String> {
        let expected = names.join(", ");
        let t = text(cx, f, &expected)?;
        if names.contains(&t.as_str()) {
            Some(t)
        } else {
            cx.err(
                &f.path,
                f.loc(),
                format!("'{}' is not a {what}; expected {expected}", show(&t)),
            );
            None
        }
    };
    let lacp = mode == Some(BondMode::Lacp);
    let lacp_rate = only(cx, "lacp_rate", lacp || mode.is_none(), "802.3ad")
        .and_then(|f| choice(cx, &f, &LACP_RATES, "lacp_rate"));
    let xmit_hash_policy = only(
        cx,
        "xmit_hash_policy",
        mode.is_none_or(|m| m.hashes()),
        "802.3ad or balance-xor",
    )
    .and_then(|f| choice(cx, &f, &XMIT_HASH_POLICIES, "transmit hash policy"));
    let min_links = only(cx, "min_links", lacp || mode.is_none(), "802.3ad")
        .and_then(|f| int_in(cx, &f, "a number of members between 0 and 1024", 0, 1024))
        .and_then(|n| u32::try_from(n).ok());
    let miimon = o
        .get(cx, "miimon")
        .and_then(|f| int_in(cx, &f, "milliseconds between 1 and 60000", 1, 60_000))
        .and_then(|n| u32::try_from(n).ok());
    let primary = only(
        cx,
        "primary",
        mode.is_none_or(|m| m.has_primary()),
        "active-backup, balance-tlb or balance-alb",
    )
    .and_then(|f| {
        let p = read_ifname_field(cx, &f, "the member that is active whenever it is up")?;
        if !members.iter().any(|(m, _, _)| *m == p) {
            cx.err(
                &f.path,
                f.loc(),
                format!("primary '{p}' is not a member of this bond; name one of its members"),
            );
            return None;
        }
        Some(p)
    });
    mode.map(|mode| Bond {
        mode,
        members: members.iter().map(|(m, _, _)| m.clone()).collect(),
        lacp_rate,
        xmit_hash_policy,
        miimon,
        min_links,
        primary,
    })
}

/// Uplinks against the rest of the spec: a bond's name is one more interface kvmnet creates
/// and must not clash; a member belongs to one bond only and is used through its bond, never
/// directly (a bridge uplink, a NAT egress, a VXLAN underlay). OVN networks take no bond at
/// all: `ovn::check_bonds` says so for them.
pub(super) fn uplink_checks(
    cx: &mut Ctx,
    nets: &[NetDraft],
    ports: &[&PortDraft],
    uplinks: &[UplinkDraft],
    ovn_nets: &[String],
) {
    let created = created_interfaces(nets, ports, uplinks);
    for u in uplinks {
        if let Some((_, what)) = created.iter().find(|(c, _)| *c == u.name) {
            cx.err(
                &u.path,
                u.key_loc,
                format!(
                    "'{}' is {what}, an interface kvmnet creates; an uplink is a bond or an existing host interface",
                    u.name
                ),
            );
        }
    }
    let owner = member_checks(cx, uplinks, &created);
    for n in nets.iter().filter(|n| !ovn_nets.contains(&n.name)) {
        network_uses(cx, n, uplinks, &owner);
    }
}

/// The interfaces kvmnet creates: bridges, VXLAN devices and (when there are uplinks to
/// compare them with, which is rare) the ports.
fn created_interfaces<'a>(
    nets: &'a [NetDraft],
    ports: &'a [&'a PortDraft],
    uplinks: &[UplinkDraft],
) -> Vec<(&'a str, What<'a>)> {
    let mut created: Vec<(&str, What)> = Vec::new();
    for n in nets {
        if let Some(b) = &n.bridge {
            created.push((b, What::Bridge(&n.name)));
        }
        if let Some(v) = &n.vxlan {
            created.push((&v.device, What::Vxlan(&n.name)));
        }
    }
    // Only uplinks and bond members are looked up here, and there are few of them.
    if !uplinks.is_empty() {
        for p in ports {
            if let Some(name) = &p.name {
                created.push((name, What::Port(p.index, &p.vm)));
            }
        }
    }
    created
}

/// Each bond member: in one bond only, no uplink entry itself and no interface kvmnet
/// creates. Gives each member's bond.
fn member_checks<'a>(
    cx: &mut Ctx,
    uplinks: &'a [UplinkDraft],
    created: &[(&str, What)],
) -> HashMap<&'a str, &'a UplinkDraft> {
    let mut owner: HashMap<&str, &UplinkDraft> = HashMap::new();
    let mut all: Vec<(&str, Loc, &str, &UplinkDraft)> = uplinks
        .iter()
        .flat_map(|u| {
            u.members
                .iter()
                .map(move |(m, l, p)| (m.as_str(), *l, p.as_str(), u))
        })
        .collect();
    all.sort_by_key(|x| x.1);
    for (m, loc, path, u) in all {
        if let Some(other) = owner.get(m) {
            cx.err(
                path,
                loc,
                format!(
                    "'{m}' is already a member of bond {}; an interface can join only one bond",
                    other.name
                ),
            );
            continue;
        }
        owner.insert(m, u);
        if let Some(other) = uplinks.iter().find(|x| x.name == m) {
            let what = if other.is_bond {
                "a bond"
            } else {
                "an uplink entry"
            };
            cx.err(
                path,
                loc,
                format!(
                    "'{m}' is {what} of host.uplinks itself; a member is a plain host interface"
                ),
            );
        }
        if let Some((_, what)) = created.iter().find(|(c, _)| *c == m) {
            cx.err(
                path,
                loc,
                format!("'{m}' is {what}, an interface kvmnet creates; a member is an existing host interface"),
            );
        }
    }
    owner
}

/// A kernel network's interfaces from the host (uplink, NAT egress, VXLAN underlay) are
/// bonds, not their members; and a macvtap network does not sit on a bond kvmnet builds.
fn network_uses(
    cx: &mut Ctx,
    n: &NetDraft,
    uplinks: &[UplinkDraft],
    owner: &HashMap<&str, &UplinkDraft>,
) {
    let used = |cx: &mut Ctx, name: &str, path: &str, loc: Loc, role: &str| {
        if let Some(b) = owner.get(name) {
            cx.err(
                path,
                loc,
                format!(
                    "'{name}' is a member of bond {}; use the bond as {role} (write {})",
                    b.name, b.name
                ),
            );
        }
    };
    if let Some((u, loc)) = &n.uplink {
        used(cx, u, &join(&n.path, "uplink"), *loc, "the uplink");
    }
    if let Some((e, loc)) = &n.egress {
        used(
            cx,
            e,
            &join(&join(&n.path, "nat"), "egress"),
            *loc,
            "the egress",
        );
    }
    if let Some(v) = &n.vxlan {
        let path = join(&n.path, "underlay");
        let loc = cx.loc_at(&path).unwrap_or(n.key_loc);
        used(cx, &v.underlay, &path, loc, "the underlay");
    }
    if let Some(v) = n.vlan.as_ref().filter(|_| n.uplink.is_none()) {
        used(
            cx,
            &v.uplink,
            &join(&n.path, "uplink"),
            n.vlan_uplink_loc,
            "the uplink",
        );
    }
    if n.mode.is_some_and(|m| !m.has_bridge())
        && let Some((u, loc)) = &n.uplink
        && uplinks.iter().any(|x| x.is_bond && x.name == *u)
    {
        cx.err(
            &join(&n.path, "uplink"),
            *loc,
            format!(
                "'{u}' is a bond of host.uplinks; macvtap ports on a bond kvmnet builds are not supported (use a bridge or vlan network on the bond, or a host interface)"
            ),
        );
    }
}

/// A name -> value mapping: the keys are free, so no unknown-field check.
pub(super) fn obj_named<'a>(cx: &mut Ctx, f: &Field<'a>, what: &str) -> Option<Obj<'a>> {
    match &f.node.kind {
        Kind::Map(e) => Some(Obj {
            path: f.path.clone(),
            loc: f.loc(),
            entries: e,
        }),
        _ => obj(cx, f.node, &f.path, &[], what),
    }
}

pub(super) fn read_version(cx: &mut Ctx, f: &Field) -> Option<u32> {
    if let Kind::Scalar(s) = &f.node.kind
        && let Some(n) = s.as_int()
    {
        if n == 1 {
            return Some(1);
        }
        cx.err(
            &f.path,
            f.loc(),
            format!("unsupported spec version {n}; this kvmnet understands version 1"),
        );
        return None;
    }
    if !matches!(f.node.kind, Kind::Bad) {
        cx.err(
            &f.path,
            f.loc(),
            format!("expected the number 1, found {}", f.node.describe()),
        );
    }
    None
}

/// The values, and for each key where its value sits (loc, path).
pub(super) type Sysctl = (BTreeMap<String, String>, BTreeMap<String, (Loc, String)>);

pub(super) fn read_sysctl(cx: &mut Ctx, f: &Field) -> Option<Sysctl> {
    let o = obj_named(cx, f, "a mapping of sysctl names to values")?;
    let mut values = BTreeMap::new();
    let mut where_ = BTreeMap::new();
    for (key, field) in o.named(cx) {
        if let Err(m) = check_sysctl_key(&key.text) {
            cx.err(&field.path, key.loc, m);
            continue;
        }
        let Some(v) = text(cx, &field, "a value (a string or a number)") else {
            continue;
        };
        if v.trim().is_empty() {
            cx.err(
                &field.path,
                field.loc(),
                "the value is empty; write the value to set, like \"1\"",
            );
            continue;
        }
        if v.contains(['\n', '\r']) {
            cx.err(
                &field.path,
                field.loc(),
                "the value spans several lines; a sysctl value must be a single line",
            );
            continue;
        }
        where_.insert(key.text.clone(), (field.loc(), field.path.clone()));
        values.insert(key.text.clone(), v);
    }
    Some((values, where_))
}

pub(crate) fn read_ifname_field(cx: &mut Ctx, f: &Field, what: &str) -> Option<String> {
    let name = text(cx, f, what)?;
    match check_ifname(&name) {
        Ok(()) => Some(name),
        Err(m) => {
            cx.err(&f.path, f.loc(), m);
            None
        }
    }
}
