//! Golden tests for the pure layers: spec + observed snapshot -> plan. One folder per case
//! under tests/golden/ with `spec.yaml`, an optional `snapshot.json` (the host as observed;
//! empty host when absent) and `plan.txt` (the expected plan, or the expected errors).
//! `UPDATE_GOLDEN=1 cargo test --test golden` rewrites the expectations; review the diff.
//! Derived MACs are made for one fixed host identity, and settled against the snapshot as a
//! plan does (ports that exist keep theirs), and against an optional `macs.json` (the MACs the
//! host remembers giving out).

use std::path::Path;

use kvmnet::desired;
use kvmnet::plan;
use kvmnet::snapshot::{AddrSnap, LinkSnap, RouteSnap, Snapshot};
use kvmnet::spec;

/// The fixed host identity of every case.
#[path = "common/model.rs"]
mod model;

fn id() -> spec::HostIdentity {
    spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host").unwrap()
}

/// The spec with its derived MACs settled against `snap` and the case's `macs.json`, as a
/// plan has it.
fn settled(spec: spec::Spec, snap: &Snapshot, dir: &Path) -> spec::Spec {
    let remembered = || match std::fs::read_to_string(dir.join("macs.json")) {
        Ok(t) => serde_json::from_str(&t).expect("macs.json parses"),
        Err(_) => Default::default(),
    };
    kvmnet::host_macs::settle(&spec, snap, remembered)
        .expect("a free MAC for every port")
        .unwrap_or(spec)
}

fn run_case(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("spec.yaml")).expect("spec.yaml");
    let spec = match spec::parse(&text, &id()) {
        Ok(s) => s,
        Err(errs) => {
            return errs
                .iter()
                .map(|e| format!("error {e}\n"))
                .collect::<String>();
        }
    };
    let snap: Snapshot = match std::fs::read_to_string(dir.join("snapshot.json")) {
        Ok(t) => serde_json::from_str(&t).expect("snapshot.json parses"),
        Err(_) => Snapshot {
            scope: "host".into(),
            ..Default::default()
        },
    };
    let spec = settled(spec, &snap, dir);
    let want = match desired::desired(&spec, &snap) {
        Ok(w) => w,
        Err(errs) => {
            return errs
                .iter()
                .map(|e| format!("conflict {e}\n"))
                .collect::<String>();
        }
    };
    let have = desired::observed(&snap, &desired::Interest::of(&want));
    let p = plan::diff(&want, &have);
    let mut out = p.render();
    // Every plan must be undoable: the inverse of the inverse is the step itself, and a
    // failure at any step leaves a model host as it was.
    for s in &p.steps {
        assert_eq!(&s.inverse().inverse(), s);
    }
    model::every_failure_rolls_back(&p.steps, dir);
    out.push_str("--- json\n");
    out.push_str(&serde_json::to_string_pretty(&p.to_json()).unwrap());
    out.push('\n');
    out
}

#[test]
fn golden_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "expected the golden cases under {root:?}");
    let mut failures = Vec::new();
    for dir in dirs {
        let got = run_case(&dir);
        let file = dir.join("plan.txt");
        if update {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "== {}\n-- expected\n{want}\n-- got\n{got}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Builds the snapshot a host would show once `want` is in place.
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn synth(want: &kvmnet::state::HostState, base: &Snapshot) -> Snapshot {
    use kvmnet::state::{PortKind, guest_alias};
    let mut s = Snapshot {
        scope: base.scope.clone(),
        users: base.users.clone(),
        sysctl_originals: base.sysctl_originals.clone(),
        mtu_originals: base.mtu_originals.clone(),
        // The Northbound database as the OVN rows' steps leave it.
        nb: want.nb.clone(),
        ..Default::default()
    };
    // Foreign interfaces kvmnet touches, as they end up.
    let mut touched: std::collections::BTreeMap<String, LinkSnap> = Default::default();
    fn foreign<'a>(
        touched: &'a mut std::collections::BTreeMap<String, LinkSnap>,
        base: &Snapshot,
        name: &str,
    ) -> Option<&'a mut LinkSnap> {
        // kvmnet's own links are rebuilt from `want` (or gone), never carried over.
        let l = base.link(name).filter(|l| l.alias.is_none())?.clone();
        Some(touched.entry(name.to_string()).or_insert(l))
    }
    for (name, mtu) in &want.mtus {
        if let Some(l) = foreign(&mut touched, base, name) {
            l.mtu = *mtu;
        }
    }
    for u in want
        .uplinks
        .values()
        .filter(|u| !want.bonds.contains_key(&u.name))
    {
        if let Some(l) = foreign(&mut touched, base, &u.name) {
            l.master = u.master.clone();
        }
    }
    // Members join bonds after leaving a bridge, as the plan orders it.
    for m in want.members.values() {
        let mtu = m
            .bond
            .as_ref()
            .and_then(|b| want.bonds.get(b))
            .map(|b| b.mtu);
        if let Some(l) = foreign(&mut touched, base, &m.name) {
            l.master = m.bond.clone();
            l.mtu = mtu.unwrap_or(l.mtu);
        }
    }
    for b in want.bonds.values() {
        s.links.push(LinkSnap {
            name: b.name.clone(),
            kind: "bond".into(),
            mac: base.link(&b.home).and_then(|l| l.mac),
            mtu: b.mtu,
            up: b.up,
            master: want.uplinks.get(&b.name).and_then(|u| u.master.clone()),
            alias: Some(b.alias()),
            bond: Some(kvmnet::snapshot::BondSnap {
                mode: b.mode.clone(),
                miimon: b.miimon,
                lacp_rate: b.lacp_rate.clone(),
                xmit_hash_policy: b.xmit_hash_policy.clone(),
                min_links: b.min_links,
                primary: b.primary.clone(),
            }),
            ..Default::default()
        });
    }
    s.links.extend(touched.into_values());
    for b in want.bridges.values() {
        s.links.push(LinkSnap {
            name: b.name.clone(),
            kind: "bridge".into(),
            mac: Some(b.mac),
            mtu: b.mtu,
            up: b.up,
            alias: Some(b.alias()),
            shaping: want.shaping.get(&b.name).cloned(),
            ..Default::default()
        });
    }
    for p in want.ports.values() {
        let mut l = LinkSnap {
            name: p.name.clone(),
            mac: Some(p.mac),
            mtu: p.mtu,
            up: p.up,
            isolated: p.isolated,
            tc_drift: !p.tc_ok,
            master: p.master.clone(),
            alias: Some(p.alias()),
            ..Default::default()
        };
        match &p.kind {
            PortKind::Tap { owner, multi_queue } => {
                l.kind = "tun".into();
                l.tun_owner = *owner;
                l.tun_multi_queue = *multi_queue;
            }
            PortKind::Macvtap {
                uplink,
                mode,
                owner,
            } => {
                l.kind = "macvtap".into();
                l.macvtap = Some(kvmnet::snapshot::MacvtapSnap {
                    link: Some(uplink.clone()),
                    mode: Some(*mode),
                    dev_owner: *owner,
                });
                // The uplink stays as it was.
                if s.link(uplink).is_none()
                    && let Some(u) = base.link(uplink)
                {
                    s.links.push(u.clone());
                }
            }
            PortKind::Veth { netns, guest } => {
                l.kind = "veth".into();
                let g = s.netns.entry(netns.clone()).or_default();
                g.owned = want.netns.contains(netns);
                g.links.push(LinkSnap {
                    name: guest.name.clone(),
                    kind: "veth".into(),
                    mac: Some(guest.mac),
                    mtu: guest.mtu,
                    up: guest.up,
                    alias: Some(guest_alias(&p.name)),
                    ..Default::default()
                });
                if let Some(a) = guest.addr {
                    g.addrs.push(AddrSnap {
                        dev: guest.name.clone(),
                        addr: a,
                        broadcast: kvmnet::state::Addr::with_standard_broadcast(a).broadcast,
                    });
                }
                if let Some(gw) = guest.gateway {
                    g.routes.push(RouteSnap {
                        dev: guest.name.clone(),
                        dst: "0.0.0.0/0".parse().unwrap(),
                        gateway: Some(gw),
                        metric: None,
                        table: 254,
                        protocol: 3,
                        scope: 0,
                        prefsrc: None,
                    });
                }
                if let Some(a) = guest.addr6 {
                    g.addrs6.push(kvmnet::snapshot::Addr6Snap {
                        dev: guest.name.clone(),
                        addr: a,
                    });
                }
                if let Some(gw) = guest.gateway6 {
                    g.routes6.push(kvmnet::snapshot::Route6Snap {
                        dev: guest.name.clone(),
                        dst: "::/0".parse().unwrap(),
                        gateway: Some(gw),
                        table: 254,
                        protocol: 3,
                    });
                }
            }
        }
        s.links.push(l);
    }
    for v in want.vxlans.values() {
        // The underlay stays as it was.
        if s.link(&v.underlay).is_none()
            && let Some(u) = base.link(&v.underlay)
        {
            s.links.push(u.clone());
            s.addrs
                .extend(base.addrs.iter().filter(|a| a.dev == v.underlay).cloned());
        }
        s.links.push(LinkSnap {
            name: v.name.clone(),
            kind: "vxlan".into(),
            mtu: v.mtu,
            up: v.up,
            master: v.master.clone(),
            alias: Some(v.alias()),
            vxlan: Some(kvmnet::snapshot::VxlanSnap {
                vni: v.vni,
                link: Some(v.underlay.clone()),
                local: Some(v.local),
                group: v.group,
                port: v.port,
                learning: v.learning,
            }),
            fdb: want.fdb.get(&v.name).cloned().unwrap_or_default(),
            ..Default::default()
        });
    }
    for v in want.vlans.values() {
        // A vlan network's uplink stays as it was, except that it is up.
        if v.port.is_none()
            && s.link(&v.parent).is_none()
            && let Some(u) = base.link(&v.parent)
        {
            let mut u = u.clone();
            u.up = true;
            s.links.push(u);
            s.addrs
                .extend(base.addrs.iter().filter(|a| a.dev == v.parent).cloned());
        }
        s.links.push(LinkSnap {
            name: v.name.clone(),
            kind: "vlan".into(),
            mtu: v.mtu,
            up: v.up,
            master: v.master.clone(),
            isolated: v.isolated,
            alias: Some(v.alias()),
            vlan: Some(kvmnet::snapshot::VlanSnap {
                id: v.vid,
                link: Some(v.parent.clone()),
            }),
            ..Default::default()
        });
    }
    for (dev, addrs) in &want.addrs {
        for a in addrs {
            s.addrs.push(AddrSnap {
                dev: dev.clone(),
                addr: a.cidr,
                broadcast: a.broadcast,
            });
        }
    }
    for (dev, addrs) in &want.addrs6 {
        for a in addrs {
            s.addrs6.push(kvmnet::snapshot::Addr6Snap {
                dev: dev.clone(),
                addr: *a,
            });
        }
    }
    for (dev, routes) in &want.routes {
        for r in routes {
            s.routes.push(RouteSnap {
                dev: dev.clone(),
                dst: r.dst,
                gateway: r.gateway,
                metric: r.metric,
                table: r.table,
                protocol: r.protocol,
                scope: r.scope,
                prefsrc: r.prefsrc,
            });
        }
    }
    for (dev, vals) in &want.ethtool {
        let mut e = base.ethtool.get(dev).cloned().unwrap_or_default();
        e.values.extend(vals.iter().map(|(k, v)| (k.clone(), *v)));
        for (k, v) in vals.iter().filter(|(k, _)| k.contains('.')) {
            e.max.entry(k.clone()).or_insert(*v);
        }
        s.ethtool.insert(dev.clone(), e);
        // A foreign interface whose settings are restored stays as it was.
        if s.link(dev).is_none()
            && let Some(l) = base.link(dev)
        {
            s.links.push(l.clone());
        }
    }
    s.nft = want.nft.clone();
    s.sysctls = want
        .sysctls
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    s
}

/// Observing a host that already matches the spec must plan nothing: apply is idempotent.
#[test]
fn applied_state_plans_no_changes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut checked = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let dir = e.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("spec.yaml")) else {
            continue;
        };
        let Ok(spec) = spec::parse(&text, &id()) else {
            continue;
        };
        let base: Snapshot = std::fs::read_to_string(dir.join("snapshot.json"))
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or(Snapshot {
                scope: "host".into(),
                ..Default::default()
            });
        let spec = settled(spec, &base, &dir);
        let Ok(want) = desired::desired(&spec, &base) else {
            continue;
        };
        let after = synth(&want, &base);
        // Bringing an uplink up is a one-time action, planned only while it is down.
        let mut want = want;
        want.raise.retain(|l| after.link(l).is_some_and(|x| !x.up));
        let have = desired::observed(&after, &desired::Interest::of(&want));
        let p = plan::diff(&want, &have);
        assert!(
            p.is_empty(),
            "{}: second plan not empty:\n{}",
            dir.display(),
            p.render()
        );
        // And planning again from the applied host (MACs settled and desired recomputed) is
        // still empty: settling against the applied host changes no MAC.
        let spec = settled(spec, &after, &dir);
        let want2 = desired::desired(&spec, &after).expect("desired on applied host");
        let have2 = desired::observed(&after, &desired::Interest::of(&want2));
        let p2 = plan::diff(&want2, &have2);
        assert!(
            p2.is_empty(),
            "{}: re-plan not empty:\n{}",
            dir.display(),
            p2.render()
        );
        checked += 1;
    }
    assert!(checked >= 5);
}

/// `SYNTH_CASE=nat-fresh cargo test --test golden print_applied_snapshot -- --nocapture`
/// prints the snapshot of a host after applying that case: a starting point for drift cases.
#[test]
fn print_applied_snapshot() {
    let Ok(case) = std::env::var("SYNTH_CASE") else {
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case);
    let spec = spec::parse(
        &std::fs::read_to_string(dir.join("spec.yaml")).unwrap(),
        &id(),
    )
    .unwrap();
    let base: Snapshot =
        serde_json::from_str(&std::fs::read_to_string(dir.join("snapshot.json")).unwrap()).unwrap();
    let spec = settled(spec, &base, &dir);
    let want = desired::desired(&spec, &base).unwrap();
    println!(
        "{}",
        serde_json::to_string_pretty(&synth(&want, &base)).unwrap()
    );
}
