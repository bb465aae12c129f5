//! `routed`: a subnet the host routes without translation; the LAN's router needs a route
//! to it through the host.

use super::nat::GATEWAY;
use super::{Fields, NetworkMode, Take};
use crate::spec::{Ipv4Cidr, Ipv6Cidr, Mode, Network};

pub(crate) struct Routed;

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Required(GATEWAY),
    uplink: Take::Elsewhere,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Refused("on a routed network kvmnet is the router"),
    ipv6: Take::Optional,
    routed_by_host: true,
    forwarding: true,
    own: &[],
};

impl NetworkMode for Routed {
    fn mode(&self) -> Mode {
        Mode::Routed
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }

    fn leaving(&self, _net: &Network, subnet: Ipv4Cidr) -> Option<String> {
        Some(format!("ip saddr {subnet} return"))
    }

    fn entering(&self, _net: &Network, subnet: Ipv4Cidr) -> Vec<String> {
        vec![format!("ip daddr {subnet} return")]
    }

    fn leaving6(&self, _net: &Network, prefix: Ipv6Cidr) -> Option<String> {
        Some(format!("ip6 saddr {prefix} return"))
    }

    fn entering6(&self, _net: &Network, prefix: Ipv6Cidr) -> Vec<String> {
        vec![format!("ip6 daddr {prefix} return")]
    }
}
