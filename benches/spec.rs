//! CPU cost of the pure layers as the number of VM ports grows: parsing and validating the
//! spec (from scratch and through `SpecCache` after one VM was added), desired state, observed
//! state and the diff. No root needed: the observed host is synthesised in-process from the
//! desired state, as a host looks once the spec is applied.
//!
//!   cargo bench --bench spec [-- WORD]   (WORD: run only the rows naming it)

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use kvmnet::desired;
use kvmnet::plan;
use kvmnet::snapshot::{AddrSnap, LinkSnap, RouteSnap, Snapshot};
use kvmnet::spec;
use kvmnet::state::{HostState, PortKind};

fn spec_text(others: usize, extra: bool) -> String {
    let fw =
        "firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22, 5201] } ] } }";
    let q = "qos: { inbound: { rate: 5gbit }, outbound: { rate: 5gbit } }";
    let mut s = String::from(
        "version: 1\nnetworks:\n  n: { mode: nat, bridge: bp-n, ipv4: 10.160.0.1/16 }\nvms:\n",
    );
    for i in 0..others + usize::from(extra) {
        let _ = writeln!(
            s,
            "  o{i}: {{ ports: [ {{ network: n, name: bpo{i}, ipv4: 10.160.{}.{}, {fw}, {q} }} ] }}",
            1 + i / 250,
            2 + i % 250
        );
    }
    s
}

/// The host as it looks once `want` is in place (bridges, tap ports, addresses, routes,
/// nftables, sysctls): what observation would return after an apply.
fn applied(want: &HostState) -> Snapshot {
    let mut s = Snapshot {
        scope: "host".into(),
        ..Default::default()
    };
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
        if let PortKind::Tap { owner, multi_queue } = &p.kind {
            l.kind = "tun".into();
            l.tun_owner = *owner;
            l.tun_multi_queue = *multi_queue;
        }
        s.links.push(l);
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
    s.nft = want.nft.clone();
    s.sysctls = want
        .sysctls
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    s
}

/// Best and median wall time of `f` in milliseconds, over enough runs to be stable. The best
/// is the one to compare on a busy machine: other work only ever adds time.
fn time<T>(mut f: impl FnMut() -> T) -> (f64, f64) {
    let start = Instant::now();
    black_box(f());
    let once = start.elapsed().as_secs_f64();
    let runs = ((0.5 / once.max(1e-6)) as usize).clamp(9, 2000);
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2])
}

fn main() {
    let sizes = [10usize, 1000];
    // Derived MACs are made for one fixed host.
    let id = spec::HostIdentity::new([7; 16], "host");
    // `cargo bench --bench spec -- WORD` runs only the rows whose name contains WORD.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut rows: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let mut row = |name: &str, f: &mut dyn FnMut(usize) -> (f64, f64)| {
        if !only.is_empty() && !only.iter().any(|w| name.contains(w.as_str())) {
            return;
        }
        let v = sizes.iter().map(|&n| f(n)).collect();
        rows.push((name.to_string(), v));
    };
    row("spec::parse_bytes", &mut |n| {
        let t = spec_text(n, false);
        time(|| spec::parse_bytes(t.as_bytes(), &id).unwrap())
    });
    row("SpecCache, one VM added", &mut |n| {
        let (base, plus) = (spec_text(n, false), spec_text(n, true));
        let mut cache = spec::SpecCache::default();
        // Alternate so every measured call sees a one-VM change against the cached text.
        let mut flip = false;
        cache.parse_bytes(base.as_bytes(), &id).unwrap();
        time(|| {
            flip = !flip;
            let t = if flip { &plus } else { &base };
            cache.parse_bytes(t.as_bytes(), &id).unwrap()
        })
    });
    // A host with nothing of kvmnet's yet, whose sysctls exist.
    let fresh = |s: &spec::Spec| Snapshot {
        scope: "host".into(),
        sysctls: desired::managed_sysctls(s)
            .into_keys()
            .map(|k| (k, Some("0".to_string())))
            .collect(),
        ..Default::default()
    };
    row("desired::desired", &mut |n| {
        let s = spec::parse(&spec_text(n, false), &id).unwrap();
        let empty = fresh(&s);
        time(|| desired::desired(&s, &empty).unwrap())
    });
    row("desired::observed (applied host)", &mut |n| {
        let s = spec::parse(&spec_text(n, false), &id).unwrap();
        let want = desired::desired(&s, &fresh(&s)).unwrap();
        let snap = applied(&want);
        let interest = desired::Interest::of(&want);
        time(|| desired::observed(&snap, &interest))
    });
    row("plan::diff (one VM added)", &mut |n| {
        let s = spec::parse(&spec_text(n, false), &id).unwrap();
        let want = desired::desired(&s, &fresh(&s)).unwrap();
        let snap = applied(&want);
        let plus = spec::parse(&spec_text(n, true), &id).unwrap();
        let want_plus = desired::desired(&plus, &snap).unwrap();
        let have = desired::observed(&snap, &desired::Interest::of(&want_plus));
        assert!(!plan::diff(&want_plus, &have).is_empty());
        time(|| plan::diff(&want_plus, &have))
    });
    row("host_macs::settle (one VM added)", &mut |n| {
        let s = spec::parse(&spec_text(n, false), &id).unwrap();
        let snap = applied(&desired::desired(&s, &fresh(&s)).unwrap());
        let plus = spec::parse(&spec_text(n, true), &id).unwrap();
        assert!(
            kvmnet::host_macs::settle(&plus, &snap, Default::default)
                .unwrap()
                .is_none()
        );
        time(|| kvmnet::host_macs::settle(&plus, &snap, Default::default).unwrap())
    });
    row("desired+observed+diff (one VM added)", &mut |n| {
        let s = spec::parse(&spec_text(n, false), &id).unwrap();
        let snap = applied(&desired::desired(&s, &fresh(&s)).unwrap());
        let plus = spec::parse(&spec_text(n, true), &id).unwrap();
        time(|| {
            let want = desired::desired(&plus, &snap).unwrap();
            let have = desired::observed(&snap, &desired::Interest::of(&want));
            plan::diff(&want, &have)
        })
    });
    println!(
        "{:<40} {:>21} {:>21}",
        "ms: best (median)", "10 VMs", "1000 VMs"
    );
    for (name, v) in rows {
        let cell = |(best, median): (f64, f64)| format!("{best:.3} ({median:.3})");
        println!("{name:<40} {:>21} {:>21}", cell(v[0]), cell(v[1]));
    }
}
