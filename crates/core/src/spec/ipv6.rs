//! IPv6 on the networks kvmnet routes (nat, routed, isolated): the gateway's address and
//! prefix, how the daemon's router advertisements tell guests to configure themselves, and
//! the addresses a port may use. Kept apart from the rest of the model so that IPv6's
//! readers, the guard and the firewall ask one place which addresses a port owns.

use std::net::Ipv6Addr;

use super::{Ipv6Cidr, Network, Port, Spec};

/// Router lifetime the daemon announces when `ra.lifetime` is not given (radvd's default,
/// three times its longest interval).
pub const RA_LIFETIME_DEFAULT: u32 = 1800;
/// RFC 4861 6.2.1: AdvDefaultLifetime at most 9000 s.
pub const RA_LIFETIME_MAX: u32 = 9000;

/// How guests configure themselves from the daemon's router advertisements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RaMode {
    /// Addresses from the prefix (A flag), no DHCPv6.
    #[default]
    Slaac,
    /// Addresses from DHCPv6 (M flag); the prefix is on-link but not for SLAAC.
    Dhcpv6,
    /// SLAAC addresses plus DHCPv6 ones (A and M flags).
    SlaacDhcpv6,
}

impl RaMode {
    pub const ALL: [RaMode; 3] = [RaMode::Slaac, RaMode::Dhcpv6, RaMode::SlaacDhcpv6];

    pub fn as_str(&self) -> &'static str {
        match self {
            RaMode::Slaac => "slaac",
            RaMode::Dhcpv6 => "dhcpv6",
            RaMode::SlaacDhcpv6 => "slaac+dhcpv6",
        }
    }

    pub fn parse(s: &str) -> Option<RaMode> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The prefix information option's A flag: guests form SLAAC addresses.
    pub fn autonomous(&self) -> bool {
        matches!(self, RaMode::Slaac | RaMode::SlaacDhcpv6)
    }

    /// The RA's M flag: addresses come from DHCPv6.
    pub fn managed(&self) -> bool {
        matches!(self, RaMode::Dhcpv6 | RaMode::SlaacDhcpv6)
    }

    /// The RA's O flag: other configuration (DNS) comes from DHCPv6. Set with M, as a
    /// client that asks for an address asks for the rest in the same exchange.
    pub fn other(&self) -> bool {
        self.managed()
    }
}

/// `ra`: the router advertisements the daemon sends on the network's bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ra {
    pub mode: RaMode,
    /// Router lifetime in seconds (0: the host is not a default router).
    pub lifetime_secs: u32,
}

impl Default for Ra {
    fn default() -> Ra {
        Ra {
            mode: RaMode::Slaac,
            lifetime_secs: RA_LIFETIME_DEFAULT,
        }
    }
}

/// A routed network's IPv6 (`ipv6`, `ra`, `nat.ipv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetIpv6 {
    /// The gateway's address on the bridge, with the network's prefix length.
    pub gateway: Ipv6Cidr,
    pub ra: Ra,
    /// nat networks: masquerade IPv6 leaving the uplink (NAT66); `nat: { ipv6: false }`
    /// turns it off, for a prefix the outside routes back.
    pub nat66: bool,
}

impl NetIpv6 {
    /// The network's prefix, host bits cleared.
    pub fn prefix(&self) -> Ipv6Cidr {
        self.gateway.network()
    }
}

impl Network {
    /// The /64 prefixes in which a guarded port may use the SLAAC address of its MAC: those
    /// the LAN's router announces (`ipv6_prefixes`) and the network's own, when its RAs let
    /// guests form addresses.
    pub fn slaac_prefixes(&self) -> impl Iterator<Item = Ipv6Cidr> + '_ {
        let own = self
            .ipv6
            .filter(|v| v.gateway.prefix == 64 && v.ra.mode.autonomous())
            .map(|v| v.prefix());
        self.ipv6_prefixes.iter().copied().chain(own)
    }

    /// The DHCPv6 pool (`dhcp.range6`, inclusive) when the network's DHCPv6 server hands
    /// addresses out of it (RA mode `dhcpv6` or `slaac+dhcpv6`): what a guarded port without
    /// `ipv6` may use, as a port without `ipv4` may use what DHCPv4 gives it.
    pub fn dhcp6_pool(&self) -> Option<(Ipv6Addr, Ipv6Addr)> {
        self.ipv6.filter(|v| v.ra.mode.managed())?;
        self.dhcp.as_ref()?.range6
    }
}

impl Port {
    /// The port's `ipv6` with the length of the network prefix it lies in (the network's
    /// `ipv6`, or one of its `ipv6_prefixes`), as a guest configures it on its interface.
    pub fn ipv6_cidr(&self, net: &Network) -> Option<Ipv6Cidr> {
        let a = self.ipv6?;
        let own = net.ipv6.map(|v| v.prefix());
        let prefix = own
            .into_iter()
            .chain(net.ipv6_prefixes.iter().copied())
            .find(|c| c.contains(a))?;
        Some(Ipv6Cidr {
            addr: a,
            prefix: prefix.prefix,
        })
    }

    /// Every IPv6 address the port may use as a source and answers on: its link-local
    /// address, its SLAAC address in each of its network's SLAAC prefixes, and its
    /// declared `ipv6`.
    pub fn ipv6_addresses(&self, spec: &Spec) -> Vec<Ipv6Addr> {
        let mut out = vec![self.mac.link_local()];
        if let Some(net) = spec.networks.get(&self.network) {
            out.extend(net.slaac_prefixes().map(|c| self.mac.slaac(c.addr)));
        }
        if let Some(a) = self.ipv6
            && !out.contains(&a)
        {
            out.push(a);
        }
        out
    }
}
