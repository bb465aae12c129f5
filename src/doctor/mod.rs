//! `kvmnet doctor`: a troubleshooting checklist of the spec in force (the one `kvmnet show`
//! prints) against the live host. The checks are pure ([`checks`]); this module gathers the
//! host facts they look at, in the scope's namespace (the process is in it already), and
//! prints the results as text or JSON.

mod arp_probe;
pub mod checks;
mod dhcp_probe;
mod packet_socket;
mod probe6;

use serde_json::json;

use crate::engine::{self, EngineError};
use checks::{Check, Facts, Status};

/// The spec in force in `scope`: the newest recorded one, or the empty spec.
fn spec_in_force(scope: &str) -> Result<(String, crate::spec::Spec), EngineError> {
    let (source, text) = crate::show::recorded(scope)?
        .unwrap_or_else(|| ("(none)".to_string(), b"version: 1\n".to_vec()));
    let (id, _) = crate::host_macs::host_identity(scope);
    let spec = engine::parse(&source, &text, &id)?;
    Ok((source, spec))
}

/// Reads what the checks of `spec` look at.
fn gather(scope: &str, spec: &crate::spec::Spec) -> Facts {
    let sysctls = checks::sysctl_keys(spec)
        .into_iter()
        .map(|k| {
            let v = crate::backend::sysctl::read(&k);
            (k, v)
        })
        .collect();
    let (forward_drops, forward_drops_error) = match forward_drops() {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let (foreign_firewalls, foreign_firewalls_error) =
        match crate::backend::nftables::foreign_firewalls() {
            Ok(f) => (f, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
    let (links, links_error) = match links() {
        Ok(l) => (l, None),
        Err(e) => (Default::default(), Some(e)),
    };
    // The two checks that wait (the forwarding databases read over time, the ARP probes'
    // answers) wait at once.
    let daemon_running =
        crate::daemon::api::daemon_listening(&crate::statedir::StateDir::for_scope(scope).dir);
    let (learned, gateway_answers, dhcp_answers, probes6) = std::thread::scope(|s| {
        let arp = s.spawn(|| gateway_answers(spec, &links));
        let dhcp = s.spawn(|| dhcp_answers(spec, &links, daemon_running));
        let v6 = s.spawn(|| probes6(spec, &links, daemon_running));
        let learned = learned(spec, &links);
        (
            learned,
            arp.join().unwrap_or_default(),
            dhcp.join().unwrap_or_default(),
            v6.join().unwrap_or_default(),
        )
    });
    Facts {
        scope: scope.to_string(),
        sysctls,
        forward_drops,
        forward_drops_error,
        foreign_firewalls,
        foreign_firewalls_error,
        links_error,
        daemon_running,
        dhcp_answers,
        learned,
        gateway_answers,
        probes6,
        links,
        ovn: spec
            .ovn
            .as_ref()
            .filter(|o| !o.networks.is_empty())
            .map(|o| crate::ovn::report::facts(scope, o)),
        ..host_facts(spec)
    }
}

/// The RA probes (each IPv6 network's up bridge) and DNS probes (each address a `dns`
/// network's service listens on), all at once, while a daemon runs.
fn probes6(
    spec: &crate::spec::Spec,
    links: &std::collections::BTreeMap<String, crate::snapshot::LinkSnap>,
    daemon_running: bool,
) -> checks::v6::Probes6 {
    // A router sends at most one RA per 3 s (RFC 4861 10, MIN_DELAY_BETWEEN_RAS): one sent
    // just before the solicitation delays the answer that long. The probe ends at the first.
    const RA_WAIT: std::time::Duration = std::time::Duration::from_millis(3500);
    const DNS_WAIT: std::time::Duration = std::time::Duration::from_millis(700);
    if !daemon_running {
        return Default::default();
    }
    let ra_nets: Vec<(usize, (&crate::spec::Network, crate::types::Mac))> = spec
        .networks
        .values()
        .filter(|n| n.mode.routed_by_host() && n.ipv6.is_some())
        .filter_map(|n| {
            let l = links.get(&n.bridge).filter(|l| l.up && l.oper_up)?;
            Some((n, l.mac?))
        })
        .enumerate()
        .collect();
    std::thread::scope(|s| {
        let ra: Vec<_> = ra_nets
            .into_iter()
            .map(|(i, (n, br_mac))| {
                // Locally administered, this process's own, apart from the DHCP probes'.
                let pid = std::process::id().to_be_bytes();
                let mac = crate::types::Mac([0x02, 0x6c, pid[2], pid[3], (i >> 8) as u8, i as u8]);
                let h = s.spawn(move || probe6::ra(&n.bridge, br_mac, i, mac, RA_WAIT));
                (n.name.clone(), h)
            })
            .collect();
        let dns: Vec<_> = spec
            .networks
            .values()
            .filter(|n| n.dns.is_some())
            .map(|n| {
                let addrs = crate::spec::dns::listen_addrs(n);
                // What is asked: the PTR of the IPv4 gateway, which the service answers from
                // its own zone (an IPv6 reverse name it may ask upstream, which can be slow).
                let ask = n.ipv4.map(|g| std::net::IpAddr::V4(g.addr));
                let probes: Vec<_> = addrs
                    .into_iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let id = (std::process::id() as u16).wrapping_add(i as u16);
                        let q = ask.unwrap_or(a);
                        (a, s.spawn(move || probe6::dns(a, q, id, DNS_WAIT)))
                    })
                    .collect();
                (n.name.clone(), probes)
            })
            .collect();
        let dhcp6: Vec<_> = spec
            .networks
            .values()
            .filter(|n| checks::v6::serves_dhcp6(n))
            .filter_map(|n| {
                let l = links.get(&n.bridge).filter(|l| l.up && l.oper_up)?;
                Some((n, l.mac?))
            })
            .enumerate()
            .map(|(i, (n, br_mac))| {
                let pid = std::process::id().to_be_bytes();
                let mac = crate::types::Mac([0x02, 0x6d, pid[2], pid[3], (i >> 8) as u8, i as u8]);
                let h = s.spawn(move || probe6::dhcp6(&n.bridge, br_mac, i, mac, DNS_WAIT));
                (n.name.clone(), h)
            })
            .collect();
        let panicked = "the probe panicked".to_string();
        checks::v6::Probes6 {
            ra: ra
                .into_iter()
                .map(|(n, h)| (n, h.join().unwrap_or_else(|_| Err(panicked.clone()))))
                .collect(),
            dhcp6: dhcp6
                .into_iter()
                .map(|(n, h)| (n, h.join().unwrap_or_else(|_| Err(panicked.clone()))))
                .collect(),
            dns: dns
                .into_iter()
                .map(|(n, ps)| {
                    let r = ps
                        .into_iter()
                        .map(|(a, h)| (a, h.join().unwrap_or_else(|_| Err(panicked.clone()))))
                        .collect();
                    (n, r)
                })
                .collect(),
        }
    })
}

/// What a DHCPDISCOVER on each DHCP network's (up) bridge gets back, probed at once, while
/// a daemon runs: the server is the daemon's.
fn dhcp_answers(
    spec: &crate::spec::Spec,
    links: &std::collections::BTreeMap<String, crate::snapshot::LinkSnap>,
    daemon_running: bool,
) -> std::collections::BTreeMap<String, dhcp_probe::Outcome> {
    const WAIT: std::time::Duration = std::time::Duration::from_millis(700);
    if !daemon_running {
        return Default::default();
    }
    let nets: Vec<(usize, &crate::spec::Network)> = spec
        .networks
        .values()
        .filter(|n| n.dhcp.is_some() && links.get(&n.bridge).is_some_and(|l| l.up))
        .enumerate()
        .collect();
    std::thread::scope(|s| {
        let probes: Vec<_> = nets
            .into_iter()
            .map(|(i, n)| {
                // Locally administered, and this process's own: no guest has it.
                let pid = std::process::id().to_be_bytes();
                let mac = crate::types::Mac([0x02, 0x6b, pid[2], pid[3], (i >> 8) as u8, i as u8]);
                let h = s.spawn(move || dhcp_probe::probe(&n.bridge, i, mac, WAIT));
                (n.name.clone(), h)
            })
            .collect();
        probes
            .into_iter()
            .map(|(name, h)| {
                (
                    name,
                    h.join()
                        .unwrap_or_else(|_| Err("the probe panicked".into())),
                )
            })
            .collect()
    })
}

/// Who else answers ARP for each gateway address, probed on its bridge (up bridges only: a
/// probe on a down link goes nowhere). The probes run at once, one thread per bridge, so
/// doctor waits the probe's time once, however many networks there are.
fn gateway_answers(
    spec: &crate::spec::Spec,
    links: &std::collections::BTreeMap<String, crate::snapshot::LinkSnap>,
) -> std::collections::BTreeMap<String, Result<Vec<crate::types::Mac>, String>> {
    const WAIT: std::time::Duration = std::time::Duration::from_millis(400);
    std::thread::scope(|s| {
        let probes: Vec<_> = checks::gateways(spec)
            .into_iter()
            .filter_map(|(br, gw, _)| {
                let l = links.get(br).filter(|l| l.up)?;
                let mac = l.mac?;
                let name = std::ffi::CString::new(br).ok()?;
                // SAFETY: a valid C string.
                let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
                Some((
                    br,
                    s.spawn(move || arp_probe::who_answers(ifindex, mac, gw, WAIT)),
                ))
            })
            .collect();
        probes
            .into_iter()
            .map(|(br, h)| {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the probe panicked")));
                (br.to_string(), r.map_err(|e| e.to_string()))
            })
            .collect()
    })
}

/// The facts of the checks in `checks_host.rs`.
fn host_facts(spec: &crate::spec::Spec) -> Facts {
    let (users, uids) = checks::owner_keys(spec);
    let devices = checks::DEVICES
        .iter()
        .map(|(path, _)| (path.to_string(), device(path)))
        .collect();
    let lro = checks::bridged_uplinks(spec)
        .into_keys()
        .map(|dev| {
            let v = crate::backend::ethtool::read(dev)
                .ok()
                .and_then(|r| r.values.get("lro").map(|&v| v == 1));
            (dev.to_string(), v)
        })
        .collect();
    Facts {
        users: users
            .into_iter()
            .map(|u| {
                let uid = crate::backend::tap::uid_of(&u);
                (u, uid)
            })
            .collect(),
        uids: uids.into_iter().map(|n| (n, uid_has_user(n))).collect(),
        devices,
        lro,
        ..Facts::default()
    }
}

/// How `path` stands: missing, or whether it opens for reading and writing.
fn device(path: &str) -> checks::Device {
    if !std::path::Path::new(path).exists() {
        return checks::Device::Missing;
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => checks::Device::Usable,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => checks::Device::NoAccess,
        // Opening may fail for other reasons (no hardware support behind /dev/kvm): it is there
        // and allowed, which is what the check is about.
        Err(_) => checks::Device::Usable,
    }
}

/// Whether a passwd entry has `uid` (`getpwuid_r`).
fn uid_has_user(uid: u32) -> bool {
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain old data; zeroed is valid.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the given sizes.
        let r =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if r == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        return r == 0 && !result.is_null();
    }
}

/// Reads of the forwarding databases [`learned`] makes, and the time between them: a MAC
/// two guests share moves between their ports as each sends, so one read may see it once.
/// Over 720 ms, while the gateways' ARP probes wait for answers on other threads: doctor
/// stays under a second at 1,000 ports (BENCHMARKS.md). Reads 100 ms apart missed a MAC two
/// guests share when one of them sends every 100 ms (the reads kept its phase).
const FDB_READS: usize = 7;
const FDB_GAP: std::time::Duration = std::time::Duration::from_millis(120);

/// The MACs `bridges` learned (dynamic entries: not permanent, not static, not a port's
/// own), as `(bridge, port, mac)`, over [`FDB_READS`] reads.
fn learned(
    spec: &crate::spec::Spec,
    links: &std::collections::BTreeMap<String, crate::snapshot::LinkSnap>,
) -> Vec<(String, String, crate::types::Mac)> {
    const NUD_NOARP: u16 = 0x40;
    const NUD_PERMANENT: u16 = 0x80;
    const NTF_SELF: u8 = 0x02;
    let mut out = Vec::new();
    let Ok(mut nl) = crate::backend::rtnl::Netlink::open() else {
        return out;
    };
    let bridges = checks::spec_bridges(spec);
    if bridges.is_empty() {
        return out;
    }
    for i in 0..FDB_READS {
        if i > 0 {
            std::thread::sleep(FDB_GAP);
        }
        let Ok(entries) = nl.fdb() else { break };
        for e in entries {
            if e.state & (NUD_NOARP | NUD_PERMANENT) != 0 || e.flags & NTF_SELF != 0 {
                continue;
            }
            let Some(port) = name_of(e.index) else {
                continue;
            };
            let Some(br) = links.get(&port).and_then(|l| l.master.clone()) else {
                continue;
            };
            if bridges.contains(&br.as_str()) && !out.contains(&(br.clone(), port.clone(), e.mac)) {
                out.push((br, port, e.mac));
            }
        }
    }
    out
}

/// The name of interface `index`.
fn name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(s.to_string_lossy().into_owned())
}

/// The scope's links by name.
fn links() -> Result<std::collections::BTreeMap<String, crate::snapshot::LinkSnap>, String> {
    let mut nl = crate::backend::rtnl::Netlink::open().map_err(|e| e.to_string())?;
    let snap = crate::observe::read_links(&mut nl).map_err(|e| e.to_string())?;
    Ok(snap
        .links
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect())
}

/// Other tables' forward chains with policy drop: nftables' (iptables-nft's among them),
/// and legacy iptables' FORWARD when its filter table is loaded here.
fn forward_drops() -> Result<Vec<(String, String, String)>, String> {
    let mut out = crate::backend::nftables::foreign_forward_drops().map_err(|e| e.to_string())?;
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    if legacy.lines().any(|t| t == "filter") {
        let o = std::process::Command::new("iptables-legacy")
            .args(["-w", "-S", "FORWARD"])
            .output()
            .ok()
            .filter(|o| o.status.success());
        let policy_drop = o.is_some_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "-P FORWARD DROP")
        });
        if policy_drop {
            out.push(("ip".into(), "filter".into(), "FORWARD".into()));
        }
    }
    out.dedup();
    Ok(out)
}

/// Runs every check in `scope` and prints the results; returns whether any failed.
pub fn run(scope: &str, as_json: bool, chassis: Option<&str>) -> Result<bool, EngineError> {
    let (source, mut spec) = spec_in_force(scope)?;
    // `--chassis` names this host's chassis; without it the OVN checks take the one kvmnet
    // last made this host.
    if let Some(o) = spec.ovn.as_mut() {
        o.local = chassis.map(String::from);
    }
    let facts = gather(scope, &spec);
    let results = checks::all(&spec, &facts);
    if as_json {
        println!("{}", to_json(&source, &results));
    } else {
        print!("{}", render(&source, &results));
    }
    Ok(results.iter().any(|c| c.status == Status::Fail))
}

fn to_json(source: &str, results: &[Check]) -> serde_json::Value {
    let checks: Vec<_> = results
        .iter()
        .map(|c| {
            json!({
                "id": c.id, "status": c.status.as_str(), "subject": c.subject,
                "message": c.message, "fix": c.fix,
            })
        })
        .collect();
    json!({ "spec": source, "checks": checks })
}

/// One line a result (`status id message`: the message names its subject), the fix
/// indented under it, and a count.
fn render(source: &str, results: &[Check]) -> String {
    let mut out = format!("Spec in force: {source}\n");
    for c in results {
        let status = c.status.as_str();
        out.push_str(&format!("{status:<5} {:<20} {}\n", c.id, c.message));
        if !c.fix.is_empty() {
            out.push_str(&format!("{:<26} fix: {}\n", "", c.fix));
        }
    }
    let count = |s| results.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "{} ok, {} warn, {} fail\n",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}
