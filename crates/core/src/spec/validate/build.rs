//! The second half of the first pass: the `Spec` assembled from the drafts the readers made,
//! each network with its port forwards and each VM with its ports (trunks resolved to their
//! vlan networks). Apart from `mod.rs`, which reads; this only puts together what was read,
//! and gives `None` where a draft lacks what an error was already reported for.

use std::collections::BTreeMap;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::{Ctx, NetDraft, PortDraft, Sysctl};
use crate::spec::model::{Forward, Host, LocMap, Mac, Mode, Network, Port, Spec, Trunk, Vm};
use crate::spec::naming;
use crate::spec::ovn::OvnPort;

/// The ports, drafted and built, and where they go: the VMs keep those on the kernel's
/// networks; those on OVN's (`ovn_nets`) go to the `ovn` section, each with its VM's
/// chassis (its drafts' `host`).
pub(super) struct Ports<'a> {
    pub(super) drafts: &'a [&'a PortDraft],
    /// Built from `drafts`, in their order.
    pub(super) built: Vec<Arc<Port>>,
    pub(super) ovn_nets: &'a [String],
}

/// The spec from every draft, once each has been read and checked; and the ports on OVN
/// networks, in VM then port order. `None` when a draft lacks what an error was already
/// reported for.
pub(super) fn build(
    cx: &mut Ctx,
    version: u32,
    sysctl: Option<Sysctl>,
    nets: Vec<NetDraft>,
    ports: Ports,
    vm_names: Vec<String>,
) -> Option<(Spec, Vec<OvnPort>)> {
    let mut networks = BTreeMap::new();
    for n in nets {
        let network = build_network(n, ports.drafts)?;
        networks.insert(network.name.clone(), network);
    }
    let (vms, ovn_ports) = build_vms(vm_names, ports)?;
    let spec = Spec {
        version,
        host: Host {
            sysctl: sysctl.map(|s| s.0).unwrap_or_default(),
            tuning: None,
            ethtool: BTreeMap::new(),
            uplinks: BTreeMap::new(),
        },
        networks,
        vms,
        locs: LocMap::new(
            std::mem::take(&mut cx.locs).into_iter().collect(),
            std::mem::take(&mut cx.parts),
        ),
        identity: Default::default(),
        ovn: None,
    };
    Some((spec, ovn_ports))
}

/// A network from its draft; its port forwards go to the ports of `ports` they name.
fn build_network(n: NetDraft, ports: &[&PortDraft]) -> Option<Network> {
    if n.mode == Some(Mode::Vxlan) && n.vxlan.is_none() {
        return None;
    }
    if n.mode == Some(Mode::Vlan) && n.vlan.is_none() {
        return None;
    }
    Some(Network {
        mode: n.mode?,
        bridge: n.bridge?,
        ipv4: n.ipv4,
        mtu: n.mtu,
        uplink: n.uplink.map(|u| u.0),
        nat_egress: n.egress.map(|e| e.0),
        dhcp: n.dhcp,
        isolate_ports: n.isolate_ports,
        vxlan: n.vxlan.clone(),
        vlan: n.vlan.clone(),
        bandwidth_bps: n.bandwidth.map(|b| b.0),
        direct_mode: n.direct_mode.map(|m| m.0),
        host_access: n.host_access.clone(),
        ipv6_prefixes: n.ipv6_prefixes.clone(),
        ipv6: n.v6.gateway.map(|gateway| crate::spec::NetIpv6 {
            gateway,
            ra: n.v6.ra,
            nat66: n.mode == Some(Mode::Nat) && n.v6.nat66.is_none_or(|x| x.0),
        }),
        dns: n.dns.as_ref().map(|d| d.dns.clone()),
        forwards: n
            .forwards
            .iter()
            .map(|f| {
                let target = ports.iter().find(|p| {
                    p.vm == f.to
                        && p.network.as_deref() == Some(n.name.as_str())
                        && p.ipv4.is_some()
                })?;
                Some(Forward {
                    proto: f.proto,
                    port: f.port,
                    to: f.to.clone(),
                    to_ip: target.ipv4?.addr,
                    // Forwarded for IPv6 too when the target declares its address.
                    to_ip6: target.ipv6.filter(|_| n.v6.gateway.is_some()),
                    to_port: f.to_port,
                })
            })
            .collect::<Option<Vec<_>>>()?,
        name: n.name,
    })
}

/// The VMs, each with its kernel ports in the order they were read; and the ports on OVN
/// networks, in VM then port order.
fn build_vms(vm_names: Vec<String>, split: Ports) -> Option<(BTreeMap<String, Vm>, Vec<OvnPort>)> {
    let ports = split.built;
    let on_ovn = |p: &Port| split.ovn_nets.contains(&p.network);
    // Each VM's list made at its size: thousands of VMs, most with a port or two.
    let mut counts: HashMap<&str, usize> = HashMap::with_capacity(vm_names.len());
    for p in ports.iter().filter(|p| !on_ovn(p)) {
        *counts.entry(p.vm.as_str()).or_default() += 1;
    }
    let mut vms: BTreeMap<String, Vm> = vm_names
        .into_iter()
        .map(|name| {
            let ports = Vec::with_capacity(counts.get(name.as_str()).copied().unwrap_or(0));
            (name.clone(), Vm { name, ports })
        })
        .collect();
    let mut ovn = Vec::new();
    // A port's chassis is its VM's `host`, which each of the VM's drafts holds.
    let empty: Arc<str> = Arc::from("");
    let hosts = split.drafts.iter().map(|d| d.host.as_ref().map(|h| &h.0));
    for (p, host) in ports.into_iter().zip(hosts) {
        if on_ovn(&p) {
            ovn.push((p, host.unwrap_or(&empty)));
            continue;
        }
        // Built for this spec alone (a full parse), the port is moved; shared with a spec
        // cache, copied.
        let port = Arc::try_unwrap(p).unwrap_or_else(|p| (*p).clone());
        vms.get_mut(&port.vm)?.ports.push(port);
    }
    // Stable: each VM's ports stay in their order. (A spec cache's come sorted already.)
    ovn.sort_by(|a, b| a.0.vm.cmp(&b.0.vm));
    let ovn = ovn
        .into_iter()
        .map(|(port, host)| OvnPort {
            host: Arc::clone(host),
            port,
        })
        .collect();
    Some((vms, ovn))
}

/// Builds ports from their drafts, each trunk's VLANs resolved to the vlan networks of its
/// network's uplink. A spec cache keeps what it built of each VM entry for the next spec
/// with the same networks.
pub(crate) struct PortBuilder {
    /// Network -> its uplink.
    net_uplink: HashMap<String, String>,
    /// (uplink, VLAN id) -> the vlan network serving it.
    vlan_nets: HashMap<(String, u16), String>,
}

impl PortBuilder {
    pub(crate) fn new(nets: &[NetDraft]) -> PortBuilder {
        let vlan_nets = nets
            .iter()
            .filter_map(|n| {
                let v = n.vlan.as_ref()?;
                Some(((v.uplink.clone(), v.id), n.name.clone()))
            })
            .collect();
        let net_uplink = nets
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.vlan.as_ref()?.uplink.clone())))
            .collect();
        PortBuilder {
            net_uplink,
            vlan_nets,
        }
    }

    /// The ports of `drafts`, in their order; `None` when one does not build.
    pub(crate) fn ports<'a>(
        &self,
        drafts: impl IntoIterator<Item = &'a PortDraft>,
    ) -> Option<Vec<Arc<Port>>> {
        drafts
            .into_iter()
            .map(|p| self.port(p).map(Arc::new))
            .collect()
    }

    /// A port from its draft; `None` when the draft lacks what an error was reported for.
    pub(crate) fn port(&self, p: &PortDraft) -> Option<Port> {
        let name = p.name.clone()?;
        let network = p.network.clone()?;
        let mut trunk = Vec::new();
        for (vid, _, _) in &p.vlans {
            let uplink = self.net_uplink.get(&network)?;
            trunk.push(Trunk {
                vid: *vid,
                network: self.vlan_nets.get(&(uplink.clone(), *vid))?.clone(),
                device: naming::trunk_vlan_name(&name, *vid),
            });
        }
        Some(Port {
            trunk,
            network,
            name,
            kind: p.kind?,
            // A derived MAC is given out once the spec is built.
            mac: if p.mac_derived {
                Mac::default()
            } else {
                p.mac?
            },
            mac_derived: p.mac_derived,
            ipv4: p.ipv4,
            ipv6: p.ipv6,
            owner: p.owner.clone(),
            queues: p.queues,
            netns: p.netns.clone(),
            antispoof: p.antispoof,
            dhcp_client: p.dhcp_client,
            firewall: p.firewall.clone(),
            qos: p.qos.clone(),
            mirror: p.mirror.as_ref().map(|m| m.0.clone()),
            ethtool: p.ethtool.clone(),
            index: p.index,
            vm: p.vm.clone(),
        })
    }
}
