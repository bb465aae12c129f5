//! The IPv6 side of the walk: the guard's `guard-ip6` chain and the host's IPv6 input rules.
//! Everything else (firewalls, the networks' checks, NAT66) is the same stage as for IPv4,
//! fed the network's IPv6 prefix (`stages.rs`).

use std::net::{IpAddr, Ipv6Addr};

use super::stages::{Walk, net_path};
use super::{L4, Stage, Verdict, port_label};
use crate::spec::Network;

/// ICMPv6 types every firewall lets through whatever its policy (as an IPv4 firewall never
/// sees ARP): `crate::nft::IPV6_PLUMBING`.
pub(super) const PLUMBING: [&str; 8] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-solicit",
    "nd-router-advert",
    "mld-listener-query",
    "mld-listener-report",
    "mld-listener-reduction",
    "mld2-listener-report",
];

/// ICMPv6 types a network's guests may send to the host (the first rule of `host-NET`).
const HOST_PLUMBING: [&str; 6] = [
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-router-solicit",
    "mld-listener-report",
    "mld-listener-reduction",
    "mld2-listener-report",
];

/// A verdict of the host's input rules: verdict, words, nft rule, spec field.
type HostHit = (Verdict, String, String, String);

/// One element of a `ifname . ipv6_addr` set (`"t-a" . fe80::1`, or a range `A-B`) and
/// whether it holds `addr` on `iface`.
fn element_holds(element: &str, iface: &str, addr: Ipv6Addr) -> bool {
    let Some(rest) = element.strip_prefix(&format!("\"{iface}\" . ")) else {
        return false;
    };
    let rest = rest.trim();
    match rest.split_once('-') {
        Some((a, b)) => match (a.trim().parse::<Ipv6Addr>(), b.trim().parse::<Ipv6Addr>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&addr),
            _ => false,
        },
        None => rest.parse::<Ipv6Addr>() == Ok(addr),
    }
}

impl Walk<'_> {
    /// Whether the guard lets the source port send from `addr`: the elements of the
    /// ruleset's `port_ip6` set for its interfaces (its link-local address, its SLAAC
    /// addresses, its declared `ipv6`, whatever else the guard allows).
    fn guard_allows6(&self, addr: Ipv6Addr) -> bool {
        let ifaces = [self.src.name.as_str(), self.src.own_interface()];
        self.table
            .as_ref()
            .and_then(|t| t.sets.get("bridge port_ip6"))
            .is_some_and(|s| {
                s.elements
                    .iter()
                    .any(|e| ifaces.iter().any(|i| element_holds(e, i, addr)))
            })
    }

    /// Which of its addresses the port sends from, in words.
    fn kind_of6(&self, addr: Ipv6Addr) -> &'static str {
        if addr.segments()[0] & 0xffc0 == 0xfe80 {
            "link-local address"
        } else if self.src.ipv6 == Some(addr) {
            "declared ipv6"
        } else if self.spec.networks.get(&self.src.network).is_some_and(|n| {
            n.slaac_prefixes()
                .any(|c| self.src.mac.slaac(c.addr) == addr)
        }) {
            "SLAAC address"
        } else {
            "address the guard allows"
        }
    }

    /// A hop of `guard-ip6` decided by its rule starting with `start`.
    fn guard6_hop(
        &mut self,
        verdict: Verdict,
        rule: String,
        start: &str,
        field: Option<String>,
    ) -> bool {
        let nft = Some((
            "bridge guard-ip6".to_string(),
            self.guard_rule("guard-ip6", start),
        ));
        self.hop(Stage::Guard, verdict, rule, nft, field)
    }

    /// The bridge's guard for IPv6 (`guard`, `guard-ip6`), in the chain's order: no router
    /// messages, no DHCPv6 server, the unspecified source only for duplicate address
    /// detection and listener reports, then the port's own addresses only. A neighbour
    /// advertisement's target is taken to be its source (a port speaking of itself).
    pub(super) fn guard6(&mut self, field: Option<String>) -> bool {
        let IpAddr::V6(saddr) = self.saddr else {
            return false;
        };
        let label = port_label(self.src);
        match self.l4 {
            L4::Icmpv6(t @ ("nd-router-advert" | "nd-redirect" | "router-renumbering")) => {
                let rule = format!(
                    "{t}: a guarded port is no router (its RAs, redirects and renumbering are dropped)"
                );
                return self.guard6_hop(
                    Verdict::Drop,
                    rule,
                    "icmpv6 type { nd-router-advert",
                    field,
                );
            }
            L4::Udp(546) => {
                let rule = "udp/546 is a DHCPv6 client's port: only a DHCPv6 server sends to it, and a guarded port may not be one".to_string();
                return self.guard6_hop(Verdict::Drop, rule, "udp dport 546 ", field);
            }
            _ => {}
        }
        if saddr.is_unspecified() {
            return self.guard6_unspecified(&label, field);
        }
        if !self.guard_allows6(saddr) {
            let rule = format!(
                "{label} may send from its link-local, declared and SLAAC addresses only, not {saddr}"
            );
            return self.guard6_hop(
                Verdict::Drop,
                rule,
                "iifname . ip6 saddr != @port_ip6",
                field,
            );
        }
        let mut rule = format!(
            "{label} sends from its own MAC {} and {} {saddr}",
            self.src.mac,
            self.kind_of6(saddr)
        );
        if self.l4 == L4::Udp(547) {
            rule.push_str(" (udp/547 is taken as a DHCPv6 client's message)");
        }
        let nft = Some(("bridge guard-ip6".to_string(), None));
        self.hop(Stage::Guard, Verdict::Accept, rule, nft, field)
    }

    /// `guard-ip6` on a packet from `::`: duplicate address detection and listener reports
    /// pass (about an address of `label`), anything else is dropped.
    fn guard6_unspecified(&mut self, label: &str, field: Option<String>) -> bool {
        match self.l4 {
            L4::Icmpv6("nd-neighbor-solicit") => {
                let rule = format!(
                    "duplicate address detection from :: (taken to be about an address of {label})"
                );
                self.guard6_hop(
                    Verdict::Accept,
                    rule,
                    "ip6 saddr :: icmpv6 type nd-neighbor-solicit",
                    field,
                )
            }
            L4::Icmpv6("mld-listener-report" | "mld2-listener-report") => {
                let rule = "a multicast listener report from :: (before the port has an address)"
                    .to_string();
                self.guard6_hop(
                    Verdict::Accept,
                    rule,
                    "ip6 saddr :: icmpv6 type { mld",
                    field,
                )
            }
            _ => {
                let rule =
                    ":: is a source for duplicate address detection and listener reports only"
                        .to_string();
                self.guard6_hop(Verdict::Drop, rule, "ip6 saddr :: counter", field)
            }
        }
    }

    /// The host's own IPv6 rules of `host-NET` before `host_access`: neighbour discovery,
    /// ping of the gateway, DNS where kvmnet answers it. DHCPv6 reaches the host only from a
    /// link-local address to ff02::1:2 (not an address trace takes as the host's).
    pub(super) fn host6(&self, net: &Network, addr: IpAddr) -> Option<HostHit> {
        let np = net_path(net);
        let gw = net.ipv6.map(|v| IpAddr::V6(v.gateway.addr));
        match self.l4 {
            L4::Icmpv6(t) if HOST_PLUMBING.contains(&t) => Some((
                Verdict::Accept,
                format!("the bridge's IPv6 needs neighbour discovery: {t} reaches the host"),
                format!("icmpv6 type {{ {} }} accept", HOST_PLUMBING.join(", ")),
                format!("{np}.ipv6"),
            )),
            L4::Icmpv6("echo-request") if gw == Some(addr) => Some((
                Verdict::Accept,
                "guests may ping their gateway".to_string(),
                format!("ip6 daddr {addr} icmpv6 type echo-request accept"),
                format!("{np}.ipv6"),
            )),
            L4::Udp(53) | L4::Tcp(53) if net.dns.is_some() && gw == Some(addr) => Some((
                Verdict::Accept,
                "kvmnet answers DNS on the gateway".to_string(),
                format!("ip6 daddr {addr} meta l4proto {{ tcp, udp }} th dport 53 accept"),
                format!("{np}.dns"),
            )),
            _ => None,
        }
    }
}
