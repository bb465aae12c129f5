//! The spec's `ovn` section and its networks: the same networks and VM ports, put on OVN's
//! logical switches and routers across hypervisors instead of this host's bridges.
//!
//! A network with `backend: ovn` (or any network, when `host.backend: ovn`) is taken out of
//! [`Spec::networks`] once the spec is read, with the VM ports on it: the kernel's layers
//! never see them. What this host does for them is only its chassis part (the ports of the
//! VMs whose `host` is this chassis, attached to `br-int`); the rest is rows in OVN's
//! Northbound database, the same on every host that applies the spec.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::model::{Ipv4Cidr, Network, Port, Spec};

/// The Open_vSwitch database when `ovn.ovs` is not given: where the distribution's
/// ovsdb-server listens.
pub const OVS_DEFAULT: &str = "unix:/run/openvswitch/db.sock";
/// The physical network name the nat networks' external switch uses, mapped to `br-ex` on
/// gateway chassis (`ovn-bridge-mappings`).
pub const EXTERNAL_PHYSNET: &str = "kvmnet-ext";
/// What Geneve (with OVN's option TLVs) takes from the underlay's MTU, and VXLAN.
pub const GENEVE_OVERHEAD: u32 = 58;
pub const VXLAN_OVERHEAD: u32 = 50;

/// Which backend carries a network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetBackend {
    /// This host's bridges, nftables and tc.
    #[default]
    Kernel,
    /// OVN's logical switches and routers.
    Ovn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovn {
    /// The Northbound database: one remote, or a comma-separated list (a Raft cluster).
    pub nb: String,
    /// The Southbound database, written into each chassis's `ovn-remote`.
    pub sb: String,
    /// This host's Open_vSwitch database (a chassis's own `ovs` wins).
    pub ovs: String,
    /// `system` (the kernel module) or `netdev` (the userspace datapath).
    pub datapath: String,
    /// `geneve` or `vxlan`.
    pub encap: String,
    /// The MTU of the underlay the tunnels cross (`underlay_mtu`, default 1500): what the
    /// tunnel leaves of it is the overlay networks' guests' MTU.
    pub underlay_mtu: u32,
    pub chassis: BTreeMap<String, Chassis>,
    pub external: Option<External>,
    /// The files of `ssl:` remotes (`ovn.ssl`).
    pub ssl: Option<Ssl>,
    /// The networks on OVN, by name (none of them is in [`Spec::networks`]).
    pub networks: BTreeMap<String, Network>,
    /// The VM ports on OVN networks, in VM then port order.
    pub ports: Vec<OvnPort>,
    /// The chassis this host is, once the engine knows (`--chassis`, else the Open_vSwitch
    /// `system-id`, else the hostname); `None` while only the Northbound part is planned.
    pub local: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chassis {
    /// The tunnel endpoint (`ovn-encap-ip`).
    pub encap_ip: Ipv4Addr,
    /// Priority for hosting the nat networks' gateway (an HA chassis group member); `None`:
    /// never a gateway.
    pub gateway: Option<u32>,
    /// This chassis's Open_vSwitch database, when it is not `ovn.ovs`.
    pub ovs: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct External {
    /// The interface each gateway chassis puts in `br-ex`.
    pub uplink: String,
    /// The gateway router's address on the external network: the nat networks' SNAT source.
    pub ipv4: Ipv4Cidr,
    pub next_hop: Ipv4Addr,
    /// The gateway router's IPv6 address there (`ipv6`), the nat networks' IPv6 SNAT
    /// source, and the external router's (`next_hop6`); both or neither.
    pub ipv6: Option<(super::Ipv6Cidr, std::net::Ipv6Addr)>,
}

/// What an `ssl:` remote is reached with (`ovn.ssl`), as OVS's own tools take it
/// (`--private-key`, `--certificate`, `--ca-cert`): this host's key and certificate, and the
/// CA certificate the servers' certificates must chain to. The spec is the same on every
/// host: the paths are, each host's files its own. Also what a chassis's ovn-controller
/// reaches an `ssl:` Southbound database with (the Open_vSwitch database's `SSL` row).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ssl {
    pub private_key: std::path::PathBuf,
    pub certificate: std::path::PathBuf,
    pub ca_cert: std::path::PathBuf,
}

/// What the tunnel of `encap` (`geneve`, `vxlan`) adds to a guest's frame.
pub fn encap_overhead(encap: &str) -> u32 {
    if encap == "vxlan" {
        VXLAN_OVERHEAD
    } else {
        GENEVE_OVERHEAD
    }
}

/// The underlay's MTU when `ovn.underlay_mtu` is not given: Ethernet's.
pub const UNDERLAY_MTU_DEFAULT: u32 = 1500;

/// Whether a remote list (`ovn.nb`, `ovn.sb`, an `ovs`) has an `ssl:` remote: one that
/// needs [`Ssl`].
pub fn has_ssl(remotes: &str) -> bool {
    remotes.split(',').any(|r| r.trim().starts_with("ssl:"))
}

/// A VM port on an OVN network, with the chassis its VM runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvnPort {
    /// Shared by the VM's ports (and between the specs a daemon parses).
    pub host: std::sync::Arc<str>,
    /// Shared between the specs a daemon parses (see [`super::SpecCache`]): an unchanged VM
    /// entry's ports are the same copies from one spec to the next, so what compares them
    /// (the rows' memo, at 10,000 ports) compares two pointers.
    pub port: std::sync::Arc<Port>,
}

impl Ovn {
    /// The MTU guests of OVN networks get: the network's own, else the underlay's
    /// (`underlay_mtu`) less what the tunnel takes; a provider network's guests are on their
    /// segment, with no tunnel in between.
    pub fn guest_mtu(&self, net: &Network) -> u32 {
        if crate::ovn::provider::is_provider(net) {
            return net.mtu.unwrap_or(1500);
        }
        net.mtu.unwrap_or(self.tunnel_room())
    }

    /// The largest guest frame's MTU the tunnels carry: the underlay's less the
    /// encapsulation.
    pub fn tunnel_room(&self) -> u32 {
        self.underlay_mtu
            .saturating_sub(encap_overhead(&self.encap))
    }

    /// The ports this host carries: those of VMs whose `host` is the local chassis.
    pub fn local_ports(&self) -> impl Iterator<Item = &OvnPort> {
        self.ports
            .iter()
            .filter(|p| self.local.as_deref() == Some(&*p.host))
    }

    /// The Open_vSwitch database of chassis `name`.
    pub fn ovs_of(&self, name: &str) -> &str {
        self.chassis
            .get(name)
            .and_then(|c| c.ovs.as_deref())
            .unwrap_or(&self.ovs)
    }
}

impl Spec {
    /// Moves the networks `backend` says are OVN's into `self.ovn` (which must be set when
    /// any is), with `ports`, the VM ports on them (built apart from the VMs' own: see
    /// `validate::build`). Called once the spec is built, before its MACs are derived: OVN
    /// ports get theirs apart, the same on every chassis.
    pub(crate) fn split_ovn(&mut self, ovn_nets: &[String], ports: Vec<OvnPort>) {
        let Some(ovn) = self.ovn.as_mut() else {
            return;
        };
        for name in ovn_nets {
            if let Some(n) = self.networks.remove(name) {
                ovn.networks.insert(name.clone(), n);
            }
        }
        ovn.ports = ports;
    }
}
