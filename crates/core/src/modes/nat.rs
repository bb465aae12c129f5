//! `nat`: a routed subnet behind the host, masqueraded when it leaves (optionally only
//! through `nat.egress`), with port forwards (DNAT) from the host's addresses to guests.

use std::collections::BTreeMap;

use super::{Fields, NetworkMode, Take};
use crate::nft::{Base, Parts, quoted};
use crate::spec::validate::{NAT_FIELDS, NetReader, list, obj, read_forward, read_ifname_field};
use crate::spec::{Ipv4Cidr, Mode, Network};

pub(crate) struct Nat;

pub(super) const GATEWAY: &str = "the gateway address and subnet, like 192.168.122.1/24";

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Required(GATEWAY),
    uplink: Take::Elsewhere,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Refused("on a nat network kvmnet is the router"),
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
            && let Some(no) = obj(cx, nf.node, &nf.path, NAT_FIELDS, "a mapping (with egress)")
            && let Some(ef) = no.get(cx, "egress")
            && let Some(e) = read_ifname_field(cx, &ef, "the host interface NAT leaves through")
        {
            r.d.egress = Some((e, ef.loc()));
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
