//! The spec's firewalls as Northbound rows: ACLs on one port group per distinct firewall,
//! as the kernel backend shares one chain per policy (a new port of a known policy only
//! joins the group).
//!
//! - Accepting rules are `allow-related`: replies and related traffic of what a rule lets
//!   through pass, as the kernel backend's conntrack rules let them.
//! - A rule's `from` (inbound) or `to` (outbound) is an `Address_Set`, one per distinct
//!   set of addresses, named from them (the same on every host), so every ACL about the
//!   same remote shares one set; the match names it as `$name`.
//! - `log: true` is ACL logging through one meter, [`LOG_METER`]: [`LOG_RATE`] lines a
//!   second per ACL (the meter is `fair`, so a noisy rule does not silence another),
//!   so a flood of matching packets cannot flood ovn-controller's log.
//! - `rate` and `connlimit` are refused by validation: an ACL's meter limits only its log
//!   lines, not the traffic it passes, and OVN polices traffic (QoS) in kbps, not in
//!   packets or connections.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::model::{Rows, group_name, subnet};
use super::{NbRow, NbVal};
use crate::spec::model::{Firewall, FirewallDirection, FirewallRule, RuleAction, RuleProto};
use crate::spec::ovn::Ovn;
use crate::types::IpCidr;

/// ACL priorities: under isolation's, rules over the DHCP allowance over a policy's drop.
const PRIO_DHCP: i64 = 2900;
const PRIO_RULES: i64 = 2000;
const PRIO_POLICY: i64 = 1000;

/// The meter logging ACLs' log lines go through.
pub const LOG_METER: &str = "kvmnet_acl_log";
/// Log lines a second per logging ACL: enough to see who knocks, too few to fill a disk
/// (10 a second is under a million lines a day for a rule under a constant flood).
pub const LOG_RATE: i64 = 10;
/// Lines let through at once above the rate, after a quiet spell.
pub const LOG_BURST: i64 = 10;
const LOG_KEY: &str = "acl-log";

/// ACL number `n` of port group `pg`; a logging one's lines go through [`LOG_METER`].
pub(super) fn acl(
    r: &mut Rows,
    pg: &str,
    n: usize,
    (dir, prio): (&str, i64),
    m: String,
    (action, log): (&str, bool),
) {
    let key = format!("{pg}/{n}");
    r.add(
        "ACL",
        &key,
        vec![
            ("direction", NbVal::str(dir)),
            ("priority", NbVal::Int(prio)),
            ("match", NbVal::str(m)),
            ("action", NbVal::str(action)),
            ("log", NbVal::Bool(log)),
            ("name", NbVal::strs(log.then(|| format!("kvmnet-{key}")))),
            ("meter", NbVal::strs(log.then_some(LOG_METER))),
        ],
        Some(("Port_Group", pg, "acls")),
    );
}

/// One port group per distinct firewall (with whether its network serves DHCP, which an
/// outbound drop must let through), holding its ports, with its ACLs.
pub(super) fn firewalls(r: &mut Rows, ovn: &Ovn) {
    let mut sets = BTreeSet::new();
    for g in groups(ovn) {
        r.0.extend(g.rows(&mut sets));
    }
    r.0.extend(shared_rows(&sets, r.0.iter()));
}

/// A distinct firewall's port group: its name, the firewall, whether its network serves
/// DHCP, and its ports (in the spec's order).
pub(super) struct Group<'a> {
    pub(super) name: String,
    fw: &'a Firewall,
    dhcp: bool,
    pub(super) ports: Vec<&'a str>,
}

/// The port groups of the spec's firewalls, by name.
pub(super) fn groups(ovn: &Ovn) -> Vec<Group<'_>> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    // The name is a hash of the firewall's text, made once per distinct firewall: thousands
    // of ports share a handful. A spec cache shares one copy of each between its ports, so
    // a port's is looked up by its address first (hashing each port's firewall took a
    // fifth of the time of making 10,000 ports' rows).
    let mut names: foldhash::HashMap<(&Firewall, bool), String> = Default::default();
    let mut known: foldhash::HashMap<(*const Firewall, bool), String> = Default::default();
    for p in &ovn.ports {
        let Some(fw) = &p.port.firewall else { continue };
        let dhcp = ovn
            .networks
            .get(&p.port.network)
            .is_some_and(|n| n.dhcp.is_some());
        let pg = known.entry((Arc::as_ptr(fw), dhcp)).or_insert_with(|| {
            names
                .entry((fw, dhcp))
                .or_insert_with(|| group_name("kvmnet_fw", &format!("{fw:?}/{dhcp}")))
                .clone()
        });
        match groups.get_mut(pg.as_str()) {
            Some(g) => g.ports.push(&p.port.name),
            None => {
                let g = Group {
                    name: pg.clone(),
                    fw,
                    dhcp,
                    ports: vec![&p.port.name],
                };
                groups.insert(pg.clone(), g);
            }
        }
    }
    groups.into_values().collect()
}

impl Group<'_> {
    /// The group's rows: the port group and its ACLs; the address sets its rules name go
    /// into `sets`.
    pub(super) fn rows(&self, sets: &mut BTreeSet<String>) -> Vec<NbRow> {
        let mut r = Rows(Vec::new());
        let pg = self.name.as_str();
        super::model::port_group(&mut r, pg, self.ports.iter().copied());
        let mut n = 0;
        if let Some(d) = &self.fw.inbound {
            direction(&mut r, (pg, &mut n), d, true, sets);
        }
        if let Some(d) = &self.fw.outbound {
            if self.dhcp && !d.accept_by_default {
                acl(
                    &mut r,
                    pg,
                    n,
                    ("from-lport", PRIO_DHCP),
                    format!("inport == @{pg} && udp.src == 68 && udp.dst == 67"),
                    ("allow", false),
                );
                n += 1;
            }
            direction(&mut r, (pg, &mut n), d, false, sets);
        }
        r.0
    }
}

/// The rows the groups share: the address sets `sets`, and the meter of log lines when one
/// of the groups' rows `made` logs.
pub(super) fn shared_rows<'a>(
    sets: &BTreeSet<String>,
    mut made: impl Iterator<Item = &'a NbRow>,
) -> Vec<NbRow> {
    let mut r = Rows(Vec::new());
    address_sets(&mut r, sets);
    if made.any(|row| row.columns.get("log") == Some(&NbVal::Bool(true))) {
        log_meter(&mut r);
    }
    r.0
}

/// The `Address_Set` a rule's remote address is in: named from the address (OVN takes
/// letters, digits and '_'), so every host and every policy naming it shares one.
pub fn address_set_name(addr: &str) -> String {
    group_name("kvmnet_as", addr)
}

fn address_sets(r: &mut Rows, sets: &BTreeSet<String>) {
    for a in sets {
        let name = address_set_name(a);
        r.add(
            "Address_Set",
            &name,
            vec![("name", NbVal::str(&name)), ("addresses", NbVal::strs([a]))],
            None,
        );
    }
}

/// The meter of ACL log lines: in packets (one a line), dropping above [`LOG_RATE`], each
/// ACL on its own (`fair`). Its band is no root row: the meter's reference keeps it.
fn log_meter(r: &mut Rows) {
    r.add(
        "Meter",
        LOG_KEY,
        vec![
            ("name", NbVal::str(LOG_METER)),
            ("unit", NbVal::str("pktps")),
            (
                "bands",
                NbVal::set([NbVal::reference("Meter_Band", LOG_KEY)]),
            ),
            ("fair", NbVal::set([NbVal::Bool(true)])),
        ],
        None,
    );
    r.add(
        "Meter_Band",
        LOG_KEY,
        vec![
            ("action", NbVal::str("drop")),
            ("rate", NbVal::Int(LOG_RATE)),
            ("burst_size", NbVal::Int(LOG_BURST)),
        ],
        None,
    );
}

/// One direction's rules (first written, highest priority) and its policy.
fn direction(
    r: &mut Rows,
    (pg, n): (&str, &mut usize),
    d: &FirewallDirection,
    inbound: bool,
    sets: &mut BTreeSet<String>,
) {
    let (dir, port) = if inbound {
        ("to-lport", format!("outport == @{pg}"))
    } else {
        ("from-lport", format!("inport == @{pg}"))
    };
    for (i, rule) in d.rules.iter().enumerate() {
        let m = format!("{port} && {}", rule_match(rule, inbound, sets));
        let action = match rule.action {
            RuleAction::Accept => "allow-related",
            RuleAction::Drop => "drop",
            RuleAction::Reject => "reject",
        };
        acl(
            r,
            pg,
            *n,
            (dir, PRIO_RULES - i as i64),
            m,
            (action, rule.log),
        );
        *n += 1;
    }
    if !d.accept_by_default {
        acl(
            r,
            pg,
            *n,
            (dir, PRIO_POLICY),
            format!("{port} && ip"),
            ("drop", false),
        );
        *n += 1;
    }
}

/// ICMP type numbers of the names rules take, for IPv4 and IPv6.
fn icmp_numbers(name: &str) -> (Option<u8>, Option<u8>) {
    match name {
        "echo-reply" => (Some(0), Some(129)),
        "destination-unreachable" => (Some(3), Some(1)),
        "redirect" => (Some(5), Some(137)),
        "echo-request" => (Some(8), Some(128)),
        "router-advertisement" => (Some(9), Some(134)),
        "router-solicitation" => (Some(10), Some(133)),
        "time-exceeded" => (Some(11), Some(3)),
        "parameter-problem" => (Some(12), Some(4)),
        "timestamp-request" => (Some(13), None),
        "timestamp-reply" => (Some(14), None),
        _ => (None, None),
    }
}

/// An ACL match for one rule, after the port part. The remote side is `from` inbound and
/// `to` outbound, as its address set (added to `sets`); a rule without one covers both
/// families.
fn rule_match(rule: &FirewallRule, inbound: bool, sets: &mut BTreeSet<String>) -> String {
    let remote = if inbound { rule.from } else { rule.to };
    let side = if inbound { "src" } else { "dst" };
    let mut parts: Vec<String> = Vec::new();
    let fam = match remote {
        Some(c) => {
            let (v, addr) = match c {
                IpCidr::V4(c) => (4, subnet(c)),
                IpCidr::V6(c) => (6, c.network().to_string()),
            };
            parts.push(format!("ip{v}.{side} == ${}", address_set_name(&addr)));
            sets.insert(addr);
            Some(v)
        }
        None => None,
    };
    match rule.proto {
        RuleProto::Tcp | RuleProto::Udp => {
            let p = if rule.proto == RuleProto::Tcp {
                "tcp"
            } else {
                "udp"
            };
            parts.push(p.to_string());
            if !rule.ports.is_empty() {
                let alts: Vec<String> = rule
                    .ports
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            format!("{p}.dst == {a}")
                        } else {
                            format!("({p}.dst >= {a} && {p}.dst <= {b})")
                        }
                    })
                    .collect();
                parts.push(format!("({})", alts.join(" || ")));
            }
        }
        RuleProto::Icmp => parts.push(icmp_match(&rule.icmp_types, fam)),
        RuleProto::Any => {
            if fam.is_none() {
                parts.push("ip".into());
            }
        }
    }
    parts.join(" && ")
}

/// ICMP of one family or both; a family none of whose types has a number there is left
/// out (a rule about `timestamp-request` is IPv4's only).
fn icmp_match(types: &[String], fam: Option<u8>) -> String {
    let one = |v: u8| {
        let (proto, nums): (&str, Vec<u8>) = if v == 4 {
            (
                "icmp4",
                types.iter().filter_map(|t| icmp_numbers(t).0).collect(),
            )
        } else {
            (
                "icmp6",
                types.iter().filter_map(|t| icmp_numbers(t).1).collect(),
            )
        };
        if types.is_empty() {
            Some(proto.to_string())
        } else if nums.is_empty() {
            None
        } else {
            let list: Vec<String> = nums.iter().map(ToString::to_string).collect();
            Some(format!(
                "({proto} && {proto}.type == {{{}}})",
                list.join(", ")
            ))
        }
    };
    let alts: Vec<String> = match fam {
        Some(v) => one(v).into_iter().collect(),
        None => [one(4), one(6)].into_iter().flatten().collect(),
    };
    match alts.len() {
        0 => "0".into(),
        1 => alts.into_iter().next().unwrap_or_default(),
        _ => format!("({})", alts.join(" || ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::NbRow;
    use crate::spec::{HostIdentity, parse};

    fn rows_of(ports: &str) -> Vec<NbRow> {
        let text = format!(
            r#"version: 1
ovn:
  nb: tcp:192.0.2.1:6641
  sb: tcp:192.0.2.1:6642
  chassis:
    hv1: {{ encap_ip: 192.0.2.11 }}
networks:
  web:
    backend: ovn
    mode: isolated
    ipv4: 10.80.0.1/24
vms:
  a:
    host: hv1
    ports:
{ports}"#
        );
        let spec = parse(&text, &HostIdentity::default()).expect("valid");
        crate::ovn::model::rows(spec.ovn.as_ref().expect("ovn"))
    }

    fn of<'a>(rows: &'a [NbRow], table: &str) -> Vec<&'a NbRow> {
        rows.iter().filter(|r| r.table == table).collect()
    }

    fn matches(rows: &[NbRow]) -> Vec<String> {
        of(rows, "ACL")
            .iter()
            .filter_map(|r| match &r.columns["match"] {
                NbVal::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Two policies naming the same remote share its one address set; an IPv6 remote gets
    /// its own, matched as ip6.
    #[test]
    fn remotes_are_address_sets_shared_by_every_acl_naming_them() {
        let rows = rows_of(
            r#"      - { network: web, name: p1, mac: "52:54:00:00:00:01", firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [22], from: 192.0.2.0/24 } ] } } }
      - { network: web, name: p2, mac: "52:54:00:00:00:02", firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [80], from: 192.0.2.0/24 } ] }, outbound: { policy: accept, rules: [ { proto: any, to: "2001:db8::/64", action: drop } ] } } }
"#,
        );
        let v4 = address_set_name("192.0.2.0/24");
        let v6 = address_set_name("2001:db8::/64");
        let sets = of(&rows, "Address_Set");
        assert_eq!(sets.len(), 2, "{sets:?}");
        for (name, addr) in [(&v4, "192.0.2.0/24"), (&v6, "2001:db8::/64")] {
            let s = sets.iter().find(|r| &r.key == name).expect("the set");
            assert_eq!(s.columns["name"], NbVal::str(name));
            assert_eq!(s.columns["addresses"], NbVal::strs([addr]));
        }
        let m = matches(&rows);
        assert_eq!(
            m.iter()
                .filter(|m| m.contains(&format!("ip4.src == ${v4} && tcp")))
                .count(),
            2,
            "{m:?}"
        );
        assert!(
            m.iter().any(|m| m.ends_with(&format!("ip6.dst == ${v6}"))),
            "{m:?}"
        );
        // No address is written into a match.
        assert!(!m.iter().any(|m| m.contains("192.0.2.")), "{m:?}");
    }

    /// A logging rule's ACL logs through the fair packet meter; without one, no meter rows.
    #[test]
    fn logging_acls_go_through_one_fair_packet_meter() {
        let quiet = rows_of(
            r#"      - { network: web, name: p1, mac: "52:54:00:00:00:01", firewall: { inbound: { policy: drop, rules: [ { proto: icmp } ] } } }
"#,
        );
        assert!(of(&quiet, "Meter").is_empty() && of(&quiet, "Meter_Band").is_empty());
        assert!(
            of(&quiet, "ACL")
                .iter()
                .all(|a| a.columns["meter"] == NbVal::Set(vec![]))
        );

        let rows = rows_of(
            r#"      - { network: web, name: p1, mac: "52:54:00:00:00:01", firewall: { inbound: { policy: drop, rules: [ { proto: icmp, log: true }, { proto: tcp, ports: [22] } ] } } }
"#,
        );
        let acls = of(&rows, "ACL");
        let logged: Vec<&&NbRow> = acls
            .iter()
            .filter(|a| a.columns["log"] == NbVal::Bool(true))
            .collect();
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].columns["meter"], NbVal::strs([LOG_METER]));
        assert_eq!(
            logged[0].columns["name"],
            NbVal::strs([format!("kvmnet-{}", logged[0].key)])
        );
        let meter = of(&rows, "Meter");
        assert_eq!(meter.len(), 1);
        assert_eq!(meter[0].columns["name"], NbVal::str(LOG_METER));
        assert_eq!(meter[0].columns["unit"], NbVal::str("pktps"));
        assert_eq!(meter[0].columns["fair"], NbVal::set([NbVal::Bool(true)]));
        let band = of(&rows, "Meter_Band");
        assert_eq!(
            meter[0].columns["bands"],
            NbVal::set([NbVal::reference("Meter_Band", &band[0].key)])
        );
        assert_eq!(band[0].columns["action"], NbVal::str("drop"));
        assert_eq!(band[0].columns["rate"], NbVal::Int(LOG_RATE));
        assert_eq!(band[0].columns["burst_size"], NbVal::Int(LOG_BURST));
    }
}
