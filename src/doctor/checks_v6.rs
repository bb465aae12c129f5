//! doctor's IPv6 checks, pure like the others: forwarding where a nat or routed network has
//! `ipv6`, the bridges' `accept_ra`, and whether the daemon's router advertisements and DNS
//! service answer on the networks that have them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{Check, Facts, Status};
use crate::desired::IP6_FORWARD;
use crate::spec::{Network, Spec};

/// A bridge's IPv6 setting (`net.ipv6.conf.BR.KEY`).
pub fn bridge_key(bridge: &str, key: &str) -> String {
    format!("net.ipv6.conf.{bridge}.{key}")
}

/// Networks the host routes that have `ipv6` (the daemon advertises on their bridges).
fn v6_networks(spec: &Spec) -> impl Iterator<Item = &Network> {
    spec.networks
        .values()
        .filter(|n| n.mode.routed_by_host() && n.ipv6.is_some())
}

/// The sysctls the IPv6 checks read.
pub fn sysctl_keys(spec: &Spec) -> Vec<String> {
    let mut keys = vec![IP6_FORWARD.to_string()];
    for n in v6_networks(spec) {
        keys.push(bridge_key(&n.bridge, "forwarding"));
        keys.push(bridge_key(&n.bridge, "accept_ra"));
    }
    keys
}

/// Each address a network's DNS service listens on, and whether a query there was answered.
pub type DnsAnswers = Vec<(IpAddr, Result<bool, String>)>;

/// What the IPv6 probes saw, by network: the prefixes an RA answering a solicitation
/// carried (`None`: no RA), and each DNS listen address with whether it answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probes6 {
    pub ra: BTreeMap<String, Result<Option<Vec<crate::types::Ipv6Cidr>>, String>>,
    pub dns: BTreeMap<String, DnsAnswers>,
    /// Whether an Information-request got the DHCPv6 server's Reply, by network.
    pub dhcp6: BTreeMap<String, Result<bool, String>>,
}

/// Whether the daemon's DHCPv6 server serves `n` (as `kvmnet::dhcp::v6::scopes` decides).
pub fn serves_dhcp6(n: &Network) -> bool {
    n.mode.routed_by_host()
        && n.ipv6
            .is_some_and(|v| n.dhcp.is_some() || v.ra.mode.managed())
}

/// Every IPv6 check, in the order the output lists them.
pub fn all(spec: &Spec, facts: &Facts) -> Vec<Check> {
    let mut out = forwarding6(spec, facts);
    out.extend(accept_ra(spec, facts));
    out.extend(ra_probe(spec, facts));
    out.extend(dhcp6_probe(spec, facts));
    out.extend(dns_probe(spec, facts));
    out
}

/// `forwarding6`: nat and routed networks with `ipv6` need the host to route IPv6
/// (`net.ipv6.conf.all.forwarding`), and to be a router on their bridges (the bridge's
/// `forwarding`): a bridge left at 0 makes the host answer neighbour solicitations without
/// the router flag, and a guest that hears that drops the host from its default routers
/// (RFC 4861 7.2.5) until the next RA.
pub fn forwarding6(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "forwarding6";
    let needing: Vec<&Network> = v6_networks(spec).filter(|n| n.mode.forwarding()).collect();
    let value = facts.sysctl(IP6_FORWARD);
    if needing.is_empty() {
        let seen = value.unwrap_or("missing");
        let msg = format!("{IP6_FORWARD} is {seen}; no nat or routed network has ipv6");
        return vec![Check::ok(ID, IP6_FORWARD, msg)];
    }
    let names: Vec<String> = needing
        .iter()
        .map(|n| format!("{} ({})", n.name, n.mode.as_str()))
        .collect();
    let names = names.join(", ");
    let mut out = Vec::new();
    if value != Some("1") {
        out.push(Check::bad(
            ID,
            Status::Fail,
            IP6_FORWARD,
            format!(
                "{IP6_FORWARD} is {}, but {names} routes IPv6 through this host: guests reach nothing beyond it over IPv6",
                value.unwrap_or("missing")
            ),
            format!(
                "{} (or apply the spec again, which sets it)",
                facts.here(&format!("sysctl -w {IP6_FORWARD}=1"))
            ),
        ));
    }
    for n in &needing {
        let key = bridge_key(&n.bridge, "forwarding");
        // A missing bridge is `carrier`'s to report.
        let Some(v) = facts.sysctl(&key).filter(|v| *v != "1") else {
            continue;
        };
        out.push(Check::bad(
            ID,
            Status::Fail,
            key.clone(),
            format!(
                "{key} is {v}: the host is no IPv6 router on {}'s bridge, so its neighbour advertisements lack the router flag and guests drop it as their default router between RAs",
                n.name
            ),
            facts.here(&format!("sysctl -w {key}=1")),
        ));
    }
    if out.is_empty() {
        let msg = format!("{IP6_FORWARD} is 1 and the bridges forward, as {names} needs");
        out.push(Check::ok(ID, IP6_FORWARD, msg));
    }
    out
}

/// `accept_ra`: a bridge of a network with `ipv6` is the guests' link and the host is their
/// router there, so the host must not take router advertisements heard on it: one would
/// give the host a default route and addresses chosen by a guest. The kernel takes them when
/// `accept_ra` is 2, or 1 while the bridge does not forward. The guard drops guarded ports'
/// RAs and the host's input rules for the network drop RAs from guests, so this is what is
/// left when a port has `antispoof: false` and the ruleset is gone.
pub fn accept_ra(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "accept_ra";
    let mut out = Vec::new();
    let mut fine = Vec::new();
    for n in v6_networks(spec) {
        let key = bridge_key(&n.bridge, "accept_ra");
        let Some(ra) = facts.sysctl(&key) else {
            continue;
        };
        let fwd = facts.sysctl(&bridge_key(&n.bridge, "forwarding"));
        let takes = ra == "2" || (ra == "1" && fwd == Some("0"));
        if !takes {
            fine.push(n.bridge.as_str());
            continue;
        }
        let why = if ra == "2" {
            "accept_ra 2 takes them even on a router".to_string()
        } else {
            "accept_ra 1 takes them while the bridge does not forward".to_string()
        };
        out.push(Check::bad(
            ID,
            Status::Warn,
            key.clone(),
            format!(
                "{} accepts router advertisements from its guests' link ({why}): an RA from a guest would set the host's default route and addresses (the guard and the host's input rules drop guests' RAs; a port with antispoof: false is what is left)",
                n.bridge
            ),
            facts.here(&format!("sysctl -w {key}=0")),
        ));
    }
    if out.is_empty() {
        let msg = if fine.is_empty() {
            "no bridge of a network with ipv6 to look at".to_string()
        } else {
            format!(
                "{} ignore router advertisements from guests",
                super::some_of(&fine)
            )
        };
        out.push(Check::ok(ID, "accept_ra", msg));
    }
    out
}

/// `ra_probe`: a router solicitation from a throwaway client on each IPv6 network's bridge
/// gets the daemon's RA, with the network's prefix.
pub fn ra_probe(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "ra_probe";
    let nets: Vec<&Network> = v6_networks(spec).collect();
    if nets.is_empty() || !facts.daemon_running {
        let why = if nets.is_empty() {
            "no network has ipv6"
        } else {
            "no daemon runs (see daemon)"
        };
        return vec![Check::ok(ID, "ra", format!("not probed: {why}"))];
    }
    let mut out = Vec::new();
    for n in nets {
        let (name, subject) = (&n.name, n.name.clone());
        let prefix = n.ipv6.map(|v| v.prefix());
        // A bridge without carrier (no port up: no VM running) has no link-local address
        // to advertise from, and no guest to hear it: nothing to probe.
        if facts
            .links
            .get(&n.bridge)
            .is_some_and(|l| l.up && !l.oper_up)
        {
            let msg = format!(
                "not probed: {} has no carrier (no port of {name} is up), so nobody hears RAs there yet",
                n.bridge
            );
            out.push(Check::ok(ID, subject, msg));
            continue;
        }
        match facts.probes6.ra.get(name) {
            Some(Ok(Some(p))) if prefix.is_some_and(|x| p.contains(&x)) => out.push(Check::ok(
                ID,
                subject,
                format!(
                    "a router solicitation on {name} got an RA with {}",
                    prefix.map(|p| p.to_string()).unwrap_or_default()
                ),
            )),
            Some(Ok(got)) => {
                let seen = match got {
                    None => "no RA within 3.5 s".to_string(),
                    Some(p) => format!(
                        "an RA without the network's prefix ({})",
                        p.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                out.push(Check::bad(
                    ID,
                    Status::Fail,
                    subject,
                    format!("a router solicitation on {name} got {seen}: guests get no IPv6 address or route"),
                    format!("see the daemon's log for ra lines ({})", facts.here("journalctl -u kvmnet")),
                ));
            }
            Some(Err(e)) => out.push(Check::bad(
                ID,
                Status::Warn,
                subject,
                format!("could not probe {name}: {e}"),
                "",
            )),
            None => out.push(Check::bad(
                ID,
                Status::Warn,
                subject,
                format!("{name} was not probed: its bridge is missing or down (see carrier)"),
                "",
            )),
        }
    }
    out
}

/// `dhcp6_probe`: an Information-request from a throwaway client on the bridge of each
/// network the DHCPv6 server serves gets its Reply (no address is bound).
pub fn dhcp6_probe(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "dhcp6_probe";
    let nets: Vec<&Network> = spec.networks.values().filter(|n| serves_dhcp6(n)).collect();
    if nets.is_empty() || !facts.daemon_running {
        let why = if nets.is_empty() {
            "no network serves DHCPv6"
        } else {
            "no daemon runs (see daemon)"
        };
        return vec![Check::ok(ID, "dhcp6", format!("not probed: {why}"))];
    }
    nets.into_iter()
        .map(|n| {
            let (name, subject) = (&n.name, n.name.clone());
            match facts.probes6.dhcp6.get(name) {
                Some(Ok(true)) => Check::ok(ID, subject, format!("an Information-request on {name} got a Reply")),
                Some(Ok(false)) => Check::bad(
                    ID,
                    Status::Fail,
                    subject,
                    format!("an Information-request on {name} got no Reply within 0.7 s: guests get no DHCPv6 address or DNS servers"),
                    format!("see the daemon's log for dhcp6 lines ({})", facts.here("journalctl -u kvmnet")),
                ),
                Some(Err(e)) => Check::bad(ID, Status::Warn, subject, format!("could not probe {name}: {e}"), ""),
                None => Check::bad(ID, Status::Warn, subject, format!("{name} was not probed: its bridge is missing, down or without carrier (see carrier)"), ""),
            }
        })
        .collect()
}

/// `dns_probe`: a query from the host to each address the DNS service listens on (the
/// gateway's, both families) gets an answer. The service answers the host itself, so no
/// client on the bridge is needed.
pub fn dns_probe(spec: &Spec, facts: &Facts) -> Vec<Check> {
    const ID: &str = "dns_probe";
    let nets: Vec<&Network> = spec.networks.values().filter(|n| n.dns.is_some()).collect();
    if nets.is_empty() || !facts.daemon_running {
        let why = if nets.is_empty() {
            "no network has dns"
        } else {
            "no daemon runs (see daemon)"
        };
        return vec![Check::ok(ID, "dns", format!("not probed: {why}"))];
    }
    let mut out = Vec::new();
    for n in nets {
        let name = &n.name;
        for (addr, r) in facts.probes6.dns.get(name).into_iter().flatten() {
            let subject = format!("{name} {addr}");
            out.push(match r {
                Ok(true) => Check::ok(ID, subject, format!("DNS on {addr} ({name}) answers")),
                Ok(false) => Check::bad(
                    ID,
                    Status::Fail,
                    subject,
                    format!("a query to {addr} ({name}'s DNS) got no answer within 0.7 s: guests resolve nothing"),
                    format!("see the daemon's log for dns lines ({})", facts.here("journalctl -u kvmnet")),
                ),
                Err(e) => Check::bad(ID, Status::Warn, subject, format!("could not query {addr}: {e}"), ""),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Ipv6Cidr;

    const SPEC: &str = "version: 1\nnetworks:\n  n: { mode: nat, bridge: t6-br, ipv4: 10.0.9.1/24, ipv6: \"fd00:9::1/64\" }\n  i: { mode: isolated, bridge: t6-i, ipv4: 10.0.8.1/24 }\n";

    fn spec() -> Spec {
        crate::spec::parse(SPEC, &Default::default()).expect("valid spec")
    }

    fn facts(pairs: &[(&str, &str)]) -> Facts {
        Facts {
            scope: "host".into(),
            sysctls: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect(),
            ..Default::default()
        }
    }

    const FINE: [(&str, &str); 3] = [
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.t6-br.forwarding", "1"),
        ("net.ipv6.conf.t6-br.accept_ra", "1"),
    ];

    fn statuses(c: &[Check]) -> Vec<(&str, Status)> {
        c.iter().map(|c| (c.subject.as_str(), c.status)).collect()
    }

    #[test]
    fn forwarding_of_the_host_and_of_the_bridge() {
        let s = spec();
        assert_eq!(sysctl_keys(&s).len(), 3, "the isolated network has no ipv6");
        let ok = forwarding6(&s, &facts(&FINE));
        assert_eq!(statuses(&ok), [(IP6_FORWARD, Status::Ok)]);
        let mut off = FINE;
        off[0].1 = "0";
        off[1].1 = "0";
        let bad = forwarding6(&s, &facts(&off));
        assert_eq!(
            statuses(&bad),
            [
                (IP6_FORWARD, Status::Fail),
                ("net.ipv6.conf.t6-br.forwarding", Status::Fail)
            ]
        );
        assert_eq!(
            bad[0].fix,
            format!("sysctl -w {IP6_FORWARD}=1 (or apply the spec again, which sets it)")
        );
        // A host whose nat networks have no ipv6 needs nothing.
        let v4 = crate::spec::parse(
            &SPEC.replace(", ipv6: \"fd00:9::1/64\"", ""),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            statuses(&forwarding6(&v4, &facts(&[]))),
            [(IP6_FORWARD, Status::Ok)]
        );
    }

    #[test]
    fn a_bridge_taking_router_advertisements_warns() {
        let s = spec();
        assert_eq!(
            statuses(&accept_ra(&s, &facts(&FINE))),
            [("accept_ra", Status::Ok)]
        );
        let mut two = FINE;
        two[2].1 = "2";
        let w = accept_ra(&s, &facts(&two));
        assert_eq!(
            statuses(&w),
            [("net.ipv6.conf.t6-br.accept_ra", Status::Warn)]
        );
        assert!(w[0].fix.contains("accept_ra=0"));
        // accept_ra 1 takes RAs on a bridge that does not forward; 0 never does.
        let mut host = FINE;
        host[1].1 = "0";
        assert_eq!(accept_ra(&s, &facts(&host))[0].status, Status::Warn);
        host[2].1 = "0";
        assert_eq!(accept_ra(&s, &facts(&host))[0].status, Status::Ok);
    }

    #[test]
    fn probes_name_networks_that_do_not_answer() {
        let s = spec();
        let mut f = facts(&FINE);
        assert!(ra_probe(&s, &f)[0].message.contains("no daemon runs"));
        f.daemon_running = true;
        let p: Ipv6Cidr = "fd00:9::/64".parse().unwrap();
        f.probes6.ra.insert("n".into(), Ok(Some(vec![p])));
        assert_eq!(ra_probe(&s, &f)[0].status, Status::Ok);
        f.probes6.ra.insert("n".into(), Ok(None));
        assert_eq!(ra_probe(&s, &f)[0].status, Status::Fail);
        let other: Ipv6Cidr = "fd00:7::/64".parse().unwrap();
        f.probes6.ra.insert("n".into(), Ok(Some(vec![other])));
        assert_eq!(ra_probe(&s, &f)[0].status, Status::Fail);
        // A bridge without carrier is not probed.
        f.links.insert(
            "t6-br".into(),
            crate::snapshot::LinkSnap {
                name: "t6-br".into(),
                up: true,
                oper_up: false,
                ..Default::default()
            },
        );
        assert_eq!(ra_probe(&s, &f)[0].status, Status::Ok);
        assert_eq!(
            dns_probe(&s, &f)[0].message,
            "not probed: no network has dns"
        );
        // A slaac network without dhcp has no DHCPv6 server; with a DHCPv6 mode it has one.
        assert_eq!(
            dhcp6_probe(&s, &f)[0].message,
            "not probed: no network serves DHCPv6"
        );
        let m = SPEC.replace(
            "ipv6: \"fd00:9::1/64\"",
            "ipv6: \"fd00:9::1/64\", ra: { mode: dhcpv6 }, dhcp: { range6: fd00:9::100-fd00:9::1ff }",
        );
        let managed = crate::spec::parse(&m, &Default::default()).unwrap();
        f.probes6.dhcp6.insert("n".into(), Ok(false));
        assert_eq!(dhcp6_probe(&managed, &f)[0].status, Status::Fail);
    }
}
