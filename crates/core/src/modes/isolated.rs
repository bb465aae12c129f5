//! `isolated`: a subnet with the host as its gateway and nothing beyond: guests reach each
//! other and what the network's `host_access` opens on the host.

use super::nat::GATEWAY;
use super::{Fields, NetworkMode, Take};
use crate::spec::Mode;

pub(crate) struct Isolated;

static FIELDS: Fields = Fields {
    bridge: Take::Optional,
    ipv4: Take::Required(GATEWAY),
    uplink: Take::Elsewhere,
    dhcp: Take::Optional,
    isolate_ports: Take::Optional,
    ipv6_prefixes: Take::Refused("on a isolated network kvmnet is the router"),
    ipv6: Take::Optional,
    routed_by_host: true,
    forwarding: false,
    own: &[],
};

impl NetworkMode for Isolated {
    fn mode(&self) -> Mode {
        Mode::Isolated
    }

    fn fields(&self) -> &'static Fields {
        &FIELDS
    }
}
