//! Network modes, one file each. A mode says which network fields it takes (its row of the
//! field grid, [`Fields`]), reads the fields only it has, contributes the objects under its
//! network's bridge to the desired host, and says what the host's routing lets in and out of
//! it. Everything else about a network (the bridge, the gateway's address, DHCP, the ports,
//! policy) is the same for every mode and lives with the layer that makes it.
//!
//! Adding a mode is a file here implementing [`NetworkMode`], its arm in `spec::Mode` and
//! one line in [`Mode::behaviour`].

use crate::desired::{BridgeDraft, Build};
use crate::nft::Parts;
use crate::spec::validate::NetReader;
use crate::spec::{Ipv4Cidr, Ipv6Cidr, Mode, Network};

mod bridge;
mod direct;
mod isolated;
mod nat;
mod routed;
mod vlan;
mod vxlan;

/// How a mode takes one of the network fields that not every mode has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// May be given.
    Optional,
    /// Must be given; the text says what it is for (after "missing required field 'F'; ").
    Required(&'static str),
    /// Must not be given; the text says why and what to do instead.
    Refused(&'static str),
    /// Belongs to other modes: refused with the field's own "applies only to" message.
    Elsewhere,
    /// The mode reads it itself ([`NetworkMode::read_own`]).
    Own,
}

/// One mode's row of the field grid.
#[derive(Debug)]
pub(crate) struct Fields {
    /// `bridge`: `Optional` (derived from the network's name when absent) or `Refused` for a
    /// mode with no bridge.
    pub bridge: Take,
    pub ipv4: Take,
    pub uplink: Take,
    /// `dhcp` where the mode takes `ipv4` as `Optional` is refused without `ipv4`: the
    /// server answers from the host's address.
    pub dhcp: Take,
    pub isolate_ports: Take,
    /// `ipv6_prefixes`: `Optional` on L2 segments of a LAN; `Refused(why)` elsewhere.
    pub ipv6_prefixes: Take,
    /// `ipv6` (the gateway's address and prefix) and with it `ra`: `Optional` where kvmnet
    /// is the router; `Refused(why)` on L2 segments of a LAN.
    pub ipv6: Take,
    /// The host is the network's router (nat, routed, isolated): `bandwidth`, floors and
    /// `host_access` apply, and the firewall's per-network chains exist.
    pub routed_by_host: bool,
    /// The host forwards between the network and the outside (needs `ip_forward`).
    pub forwarding: bool,
    /// Fields only this mode reads ([`NetworkMode::read_own`]); other modes refuse them.
    pub own: &'static [&'static str],
}

/// One network mode: its part in each layer.
pub(crate) trait NetworkMode: Sync {
    fn mode(&self) -> Mode;

    fn fields(&self) -> &'static Fields;

    /// Reads the fields in [`Fields::own`] (and those taken as [`Take::Own`]) into the
    /// network's draft.
    fn read_own(&self, _r: &mut NetReader<'_, '_>) {}

    /// Adds the network's objects to the desired host: by default its bridge, with the
    /// gateway's address and whatever [`NetworkMode::lower`] hangs under it.
    fn contribute(&self, b: &mut Build<'_>, net: &Network, npath: &str) {
        b.bridge_network(net, npath);
    }

    /// The device the mode puts under its bridge (a VXLAN or VLAN device, a host uplink),
    /// and what that changes of the bridge (MAC, MTU, addresses).
    fn lower(&self, _b: &mut Build<'_>, _net: &Network, _npath: &str, _br: &mut BridgeDraft) {}

    /// Routed networks: the rule of `from-NET` that lets the network's traffic leave
    /// through the host, if any.
    fn leaving(&self, _net: &Network, _subnet: Ipv4Cidr) -> Option<String> {
        None
    }

    /// Routed networks: the rules of `to-NET` that let traffic in from outside.
    fn entering(&self, _net: &Network, _subnet: Ipv4Cidr) -> Vec<String> {
        Vec::new()
    }

    /// Routed networks: address translation (nat's masquerade and port forwards).
    fn translation(&self, _net: &Network, _subnet: Ipv4Cidr, _out: &mut Parts) {}

    /// [`NetworkMode::leaving`] for the network's IPv6 prefix.
    fn leaving6(&self, _net: &Network, _prefix: Ipv6Cidr) -> Option<String> {
        None
    }

    /// [`NetworkMode::entering`] for the network's IPv6 prefix.
    fn entering6(&self, _net: &Network, _prefix: Ipv6Cidr) -> Vec<String> {
        Vec::new()
    }

    /// [`NetworkMode::translation`] for the network's IPv6 prefix (NAT66).
    fn translation6(&self, _net: &Network, _prefix: Ipv6Cidr, _out: &mut Parts) {}

    /// The message for one of this mode's own fields ([`Fields::own`]) given on a network
    /// of mode `here`.
    fn refusal(&self, field: &str, here: Mode) -> String {
        format!(
            "{field} applies only to mode {}; a {} network has no {field} (remove it)",
            self.mode().as_str(),
            here.as_str()
        )
    }
}

impl Mode {
    /// The mode's behaviour in every layer.
    pub(crate) fn behaviour(self) -> &'static dyn NetworkMode {
        match self {
            Mode::Nat => &nat::Nat,
            Mode::Routed => &routed::Routed,
            Mode::Isolated => &isolated::Isolated,
            Mode::Bridge => &bridge::Bridge,
            Mode::Vxlan => &vxlan::Vxlan,
            Mode::Direct => &direct::Direct,
            Mode::Vlan => &vlan::Vlan,
        }
    }

    /// The network has a bridge (every mode but direct).
    pub fn has_bridge(self) -> bool {
        !matches!(self.behaviour().fields().bridge, Take::Refused(_))
    }

    /// The host is the network's router: nat, routed and isolated.
    pub fn routed_by_host(self) -> bool {
        self.behaviour().fields().routed_by_host
    }

    /// The host forwards the network's traffic: nat and routed.
    pub fn forwarding(self) -> bool {
        self.behaviour().fields().forwarding
    }
}

/// Every mode, in the order the spec's messages list them.
pub const ALL: [Mode; 7] = [
    Mode::Nat,
    Mode::Routed,
    Mode::Isolated,
    Mode::Bridge,
    Mode::Vlan,
    Mode::Vxlan,
    Mode::Direct,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_answers_for_itself() {
        for m in ALL {
            assert_eq!(m.behaviour().mode(), m);
        }
    }

    #[test]
    fn own_fields_belong_to_one_mode() {
        let mut seen = std::collections::BTreeMap::new();
        for m in ALL {
            for f in m.behaviour().fields().own {
                assert!(seen.insert(*f, m).is_none(), "{f} is own to two modes");
            }
        }
    }

    /// The fields a network of `m` needs to be valid.
    fn minimal(m: Mode) -> &'static str {
        match m {
            Mode::Nat | Mode::Routed | Mode::Isolated => "ipv4: 10.9.0.1/24",
            Mode::Bridge | Mode::Direct => "uplink: eth9",
            Mode::Vlan => "uplink: eth9\n    vlan: 10",
            Mode::Vxlan => "vni: 7\n    underlay: eth9\n    remotes: [192.0.2.2]",
        }
    }

    fn errors(m: Mode, extra: &str) -> Vec<crate::spec::SpecError> {
        let text = format!(
            "version: 1\nnetworks:\n  n:\n    mode: {}\n    {}\n    {extra}\n",
            m.as_str(),
            minimal(m)
        );
        let id =
            crate::spec::HostIdentity::from_machine_id("6b766d6e657474657374000000000001", "host")
                .unwrap();
        crate::spec::parse(&text, &id).err().unwrap_or_default()
    }

    #[test]
    fn every_mode_reads_its_minimal_network() {
        for m in ALL {
            assert!(
                errors(m, "").is_empty(),
                "{}: {:?}",
                m.as_str(),
                errors(m, "")
            );
        }
    }

    #[test]
    fn a_field_of_another_mode_is_refused_with_its_owners_words() {
        for owner in ALL {
            for field in owner.behaviour().fields().own {
                for m in ALL.into_iter().filter(|m| *m != owner) {
                    let errs = errors(m, &format!("{field}: 1"));
                    let want = owner.behaviour().refusal(field, m);
                    assert!(
                        errs.iter()
                            .any(|e| e.path == format!("networks.n.{field}") && e.message == want),
                        "{field} on {}: {errs:?}",
                        m.as_str()
                    );
                }
            }
        }
    }

    #[test]
    fn a_refused_field_says_why() {
        for m in ALL {
            let f = m.behaviour().fields();
            for (name, take, value) in [
                ("ipv4", f.ipv4, "10.9.0.1/24"),
                ("dhcp", f.dhcp, "{}"),
                ("isolate_ports", f.isolate_ports, "true"),
            ] {
                if let Take::Refused(why) = take {
                    let errs = errors(m, &format!("{name}: {value}"));
                    assert!(
                        errs.iter().any(|e| e.message == why),
                        "{name} on {}: {errs:?}",
                        m.as_str()
                    );
                }
            }
        }
    }

    #[test]
    fn only_direct_has_no_bridge() {
        for m in ALL {
            assert_eq!(m.has_bridge(), m != Mode::Direct, "{}", m.as_str());
        }
    }
}
