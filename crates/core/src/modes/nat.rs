//! `nat`: a routed subnet behind the host, masqueraded when it leaves (optionally only
//! through `nat.egress`), with port forwards (DNAT) from the host's addresses to guests.

use std::collections::BTreeMap;

use super::{Fields, NetworkMode, Take};
use crate::nft::{Base, Parts, quoted};
use crate::spec::validate::{
    NAT_FIELDS, NetReader, boolean, list, obj, read_forward, read_ifname_field,
};
use crate::spec::{Ipv4Cidr, Ipv6Cidr, Mode, Network};

pub(crate) struct Nat;

pub(super) const GATEWAY: &str = "the gateway address and subnet, like 192.168.122.1/24";

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Required(GATEWAY),
    uplink: Take::Elsewhere,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Refused("on a nat network kvmnet is the router"),
    ipv6: Take::Optional,
    routed_by_host: true,
    forwarding: true,
    own: &["nat", "forwards"],
};

impl NetworkMode for Nat {
    fn mode(&self) -> Mode {
        Mode::Nat
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }

    fn read_own(&self, r: &mut NetReader<'_, '_>) {
        let cx = &mut *r.cx;
        if let Some(nf) = r.o.get(cx, "nat")
            && let Some(no) = obj(
                cx,
                nf.node,
                &nf.path,
                NAT_FIELDS,
                "a mapping (with egress, ipv6)",
            )
        {
            if let Some(ef) = no.get(cx, "egress")
                && let Some(e) = read_ifname_field(cx, &ef, "the host interface NAT leaves through")
            {
                r.d.egress = Some((e, ef.loc()));
            }
            if let Some(vf) = no.get(cx, "ipv6")
                && let Some(b) = boolean(cx, &vf)
            {
                r.d.v6.nat66 = Some((b, vf.loc()));
            }
        }
        let Some(ff) = r.o.get(cx, "forwards") else {
            return;
        };
        let Some(items) = list(cx, &ff, "a list of forwards") else {
            return;
        };
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
                r.d.forwards.push(fw);
            }
        }
    }

    fn refusal(&self, field: &str, here: Mode) -> String {
        if field == "nat" {
            format!(
                "nat settings apply only to mode nat; this network is mode {}",
                here.as_str()
            )
        } else {
            "forwards apply only to nat networks; guests of other modes are reached directly"
                .to_string()
        }
    }

    fn leaving(&self, net: &Network, subnet: Ipv4Cidr) -> Option<String> {
        let egress = net
            .nat_egress
            .as_ref()
            .map_or(String::new(), |e| format!(" oifname {}", quoted(e)));
        Some(format!("ip saddr {subnet}{egress} return"))
    }

    fn entering(&self, net: &Network, subnet: Ipv4Cidr) -> Vec<String> {
        let egress = net
            .nat_egress
            .as_ref()
            .map_or(String::new(), |e| format!("iifname {} ", quoted(e)));
        let mut r = vec![format!(
            "{egress}ip daddr {subnet} ct state established,related return"
        )];
        if !net.forwards.is_empty() {
            // Forwarded ports: connections translated towards a guest may come in.
            r.push(format!("ip daddr {subnet} ct status dnat return"));
        }
        r
    }

    fn translation(&self, net: &Network, subnet: Ipv4Cidr, out: &mut Parts) {
        masquerade(net, subnet, out);
    }

    fn leaving6(&self, net: &Network, prefix: Ipv6Cidr) -> Option<String> {
        Some(format!(
            "ip6 saddr {prefix}{} return",
            egress(net, "oifname")
        ))
    }

    fn entering6(&self, net: &Network, prefix: Ipv6Cidr) -> Vec<String> {
        // With or without NAT66 a nat network is reached only through what its guests
        // opened and its port forwards.
        let iif = egress(net, "iifname").trim_start().to_string();
        let iif = if iif.is_empty() { iif } else { iif + " " };
        let mut r = vec![format!(
            "{iif}ip6 daddr {prefix} ct state established,related return"
        )];
        if net.forwards.iter().any(|f| f.to_ip6.is_some()) {
            r.push(format!("ip6 daddr {prefix} ct status dnat return"));
        }
        r
    }

    fn translation6(&self, net: &Network, prefix: Ipv6Cidr, out: &mut Parts) {
        masquerade6(net, prefix, out);
    }
}

/// ` oifname "eth0"` (or `iifname`) when NAT leaves through `nat.egress` only.
fn egress(net: &Network, word: &str) -> String {
    net.nat_egress
        .as_ref()
        .map_or(String::new(), |e| format!(" {word} {}", quoted(e)))
}

/// NAT66: guests' IPv6 leaving the prefix takes the host's address (unless `nat.ipv6` is
/// false, for a prefix the outside routes back); port forwards to guests that declare an
/// `ipv6` come in over IPv6 as well.
fn masquerade6(net: &Network, prefix: Ipv6Cidr, out: &mut Parts) {
    let br = &net.bridge;
    let fwds: Vec<_> = net.forwards.iter().filter(|f| f.to_ip6.is_some()).collect();
    for fw in &fwds {
        let rule = format!(
            "fib daddr type local {} dport {} dnat ip6 to [{}]:{}",
            fw.proto.as_str(),
            fw.port,
            fw.to_ip6.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED),
            fw.to_port
        );
        out.hook(Base::NatPre, rule.clone());
        out.hook(Base::NatOutput, rule);
    }
    if !net.ipv6.is_some_and(|v| v.nat66) {
        return;
    }
    let egress = match &net.nat_egress {
        Some(e) => format!("oifname {}", quoted(e)),
        None => format!("oifname != {}", quoted(br)),
    };
    out.hook(
        Base::NatPost,
        format!(
            "ip6 saddr {prefix} ip6 daddr != {prefix} ip6 daddr != ff00::/8 {egress} masquerade"
        ),
    );
    if !fwds.is_empty() {
        out.hook(
            Base::NatPost,
            format!(
                "ip6 saddr {prefix} oifname {} ct status dnat masquerade",
                quoted(br)
            ),
        );
    }
}

/// Guests' traffic leaving the subnet takes the host's address; port forwards come in.
fn masquerade(net: &Network, subnet: Ipv4Cidr, out: &mut Parts) {
    let br = &net.bridge;
    for fw in &net.forwards {
        // To any of the host's own addresses, from outside and from the host itself.
        let rule = format!(
            "fib daddr type local {} dport {} dnat ip to {}:{}",
            fw.proto.as_str(),
            fw.port,
            fw.to_ip,
            fw.to_port
        );
        out.hook(Base::NatPre, rule.clone());
        out.hook(Base::NatOutput, rule);
    }
    // No translation towards local multicast and broadcast (DHCP, mDNS, ...).
    out.hook(
        Base::NatPost,
        format!("ip saddr {subnet} ip daddr 224.0.0.0/24 return"),
    );
    out.hook(
        Base::NatPost,
        format!("ip saddr {subnet} ip daddr 255.255.255.255 return"),
    );
    let egress = match &net.nat_egress {
        Some(e) => format!("oifname {}", quoted(e)),
        None => format!("oifname != {}", quoted(br)),
    };
    out.hook(
        Base::NatPost,
        format!("ip saddr {subnet} ip daddr != {subnet} {egress} masquerade"),
    );
    if !net.forwards.is_empty() {
        // A guest reaching a forward of its own network (hairpin): the answer must come back
        // through the host, not straight from the other guest.
        out.hook(
            Base::NatPost,
            format!(
                "ip saddr {subnet} oifname {} ct status dnat masquerade",
                quoted(br)
            ),
        );
    }
}
