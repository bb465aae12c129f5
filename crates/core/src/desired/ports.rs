//! Every VM port as a device: tap, veth (with its far end in the VM's namespace) or
//! macvtap, with its trunk's VLAN sub-interfaces.

use super::*;

/// Far ends of veth ports already placed: one name per namespace, and the namespaces
/// that have their default route, per family.
#[derive(Default)]
struct GuestEnds {
    names: BTreeSet<(String, String)>,
    routed: BTreeSet<String>,
    routed6: BTreeSet<String>,
}

impl Build<'_> {
    pub(super) fn ports(&mut self) {
        let spec = self.spec;
        // Built at the end in one pass: cheaper than thousands of inserts into the map.
        let mut port_links: Vec<(String, PortLink)> = Vec::with_capacity(spec.vms.len());
        let mut ends = GuestEnds::default();
        for vm in spec.vms.values() {
            for port in &vm.ports {
                let Some(net) = spec.networks.get(&port.network) else {
                    continue;
                };
                if let Some(link) = self.port(vm, port, net, &mut ends) {
                    port_links.push((port.name.clone(), link));
                }
            }
        }
        self.st.ports = port_links.into_iter().collect();
        if let Some(ovn) = &spec.ovn {
            self.ovn_ports(ovn);
        }
    }

    /// The ports of VMs on this chassis on OVN networks: devices like any other, on no
    /// bridge (the chassis's Open vSwitch takes them), at the overlay's MTU.
    fn ovn_ports(&mut self, ovn: &crate::spec::Ovn) {
        let mut ends = GuestEnds::default();
        for p in ovn.local_ports() {
            let Some(net) = ovn.networks.get(&p.port.network) else {
                continue;
            };
            let vm = crate::spec::Vm {
                name: p.port.vm.clone(),
                ports: Vec::new(),
            };
            if let Some(link) = self.port(&vm, &p.port, net, &mut ends) {
                self.st.ports.insert(p.port.name.clone(), link);
            }
        }
    }

    /// One port and its trunk; `None` for a macvtap whose network failed its checks (which
    /// has said so already).
    fn port(
        &mut self,
        vm: &crate::spec::Vm,
        port: &crate::spec::Port,
        net: &Network,
        ends: &mut GuestEnds,
    ) -> Option<PortLink> {
        let spec = self.spec;
        // Written out only for an error.
        let ppath = || {
            format!(
                "{}[{}]",
                path_join(&path_join("vms", &vm.name), "ports"),
                port.index
            )
        };
        if self.links.foreign(&port.name).is_some() {
            self.conflict(
                format!("{}.name", ppath()),
                format!(
                    "interface '{}' already exists and is not managed by kvmnet; choose another port name",
                    port.name
                ),
            );
        }
        let dnet = self.direct.get(net.name.as_str()).cloned();
        let on_ovn = spec
            .ovn
            .as_ref()
            .filter(|o| o.networks.contains_key(&net.name));
        let mtu = self.port_mtu(net, dnet.as_ref(), on_ovn);
        let owner = self.owner_uid(port, &ppath);
        let passthrough_mac = dnet.as_ref().and_then(|d| d.passthrough_mac);
        let kind = match port.kind {
            SpecPortKind::Tap => PortKind::Tap {
                owner,
                multi_queue: port.queues > 1,
            },
            SpecPortKind::Macvtap => {
                // A network whose uplink failed its checks has already said so.
                let d = dnet.as_ref()?;
                PortKind::Macvtap {
                    uplink: d.uplink.clone(),
                    mode: d.mode,
                    // The kernel makes the node root's; root is what no owner means.
                    owner: Some(owner.unwrap_or(0)),
                }
            }
            SpecPortKind::Veth => {
                // On OVN only nat and routed networks have a router holding the gateway
                // address: an isolated or provider network's is no one's to route through.
                let router = on_ovn.is_none()
                    || matches!(net.mode, crate::spec::Mode::Nat | crate::spec::Mode::Routed);
                self.veth(port, net, mtu, router, ends, &ppath)
            }
        };
        self.trunk(port, mtu, &ppath);
        let direct = dnet.is_some();
        let native = port.has_native();
        Some(PortLink {
            name: port.name.clone(),
            vm: vm.name.clone(),
            network: net.name.clone(),
            master: (!direct && native && on_ovn.is_none()).then(|| net.bridge.clone()),
            // A macvtap is the VM's NIC itself on the uplink's segment: it carries the VM's
            // MAC (in passthrough, the uplink's, which it inherits).
            mac: if direct {
                passthrough_mac.unwrap_or(port.mac)
            } else {
                host_end_mac(port.mac)
            },
            mtu,
            up: true,
            // On OVN, isolation is the switch's (ACLs), not a bridge port flag.
            isolated: net.isolate_ports && native && on_ovn.is_none(),
            qos_in: port
                .qos
                .as_ref()
                .and_then(|q| q.inbound.as_ref())
                .map(ShapeState::from_shape),
            qos_out: port
                .qos
                .as_ref()
                .and_then(|q| q.outbound.as_ref())
                .map(ShapeState::from_shape),
            mirror: port.mirror.clone(),
            tc_ok: true,
            kind,
        })
    }

    /// The uid a port's `owner` names (a user looked up on this host); a conflict, and
    /// `None`, when there is no such user.
    fn owner_uid(&mut self, port: &crate::spec::Port, ppath: &dyn Fn() -> String) -> Option<u32> {
        let (spec, snap) = (self.spec, self.snap);
        match &port.owner {
            None => None,
            Some(Owner::Uid(u)) => Some(*u),
            Some(Owner::User(name)) => match snap.users.get(name) {
                Some(u) => Some(*u),
                None => {
                    self.errors.push(conflict(
                        spec,
                        format!("{}.owner", ppath()),
                        format!("no user '{name}' on this host"),
                    ));
                    None
                }
            },
        }
    }

    /// A port's MTU: its direct network's, the OVN network's for guests, else its bridge's.
    fn port_mtu(
        &self,
        net: &Network,
        dnet: Option<&DirectNet>,
        on_ovn: Option<&crate::spec::Ovn>,
    ) -> u32 {
        match (dnet, on_ovn) {
            (Some(d), _) => d.mtu,
            (None, Some(o)) => o.guest_mtu(net),
            (None, None) => self
                .st
                .bridges
                .get(&net.bridge)
                .map_or(DEFAULT_MTU, |b| b.mtu),
        }
    }

    /// A veth port: its far end in the VM's namespace (made when kvmnet may own it), with the
    /// port's address and, for the first port of a namespace that can have one (`router`:
    /// its network has a gateway that routes), its default route.
    fn veth(
        &mut self,
        port: &crate::spec::Port,
        net: &Network,
        mtu: u32,
        router: bool,
        ends: &mut GuestEnds,
        ppath: &dyn Fn() -> String,
    ) -> PortKind {
        let ns = port.netns.clone().unwrap_or_default();
        let gname = guest_ifname(port.index);
        if !ends.names.insert((ns.clone(), gname.clone())) {
            self.conflict(
                format!("{}.netns", ppath()),
                format!(
                    "another veth port already puts its {gname} into namespace '{ns}'; give each VM its own namespace"
                ),
            );
        }
        if let Some(g) = self.snap.netns.get(&ns) {
            // A far end of another kvmnet port is fine: that port is either this one or one
            // being removed (removals run before creations).
            let clash = g.links.iter().any(|l| {
                l.name == gname
                    && l.alias
                        .as_deref()
                        .and_then(parse_alias)
                        .is_none_or(|a| a.port.is_none())
            });
            if clash {
                self.conflict(
                    format!("{}.netns", ppath()),
                    format!("namespace '{ns}' already has an {gname} that kvmnet did not create"),
                );
            }
            if g.owned {
                self.st.netns.insert(ns.clone());
            }
        } else {
            self.st.netns.insert(ns.clone());
        }
        // One default route per namespace: the first port that can have one.
        let gateway = match (net.ipv4, port.ipv4) {
            (Some(gw), Some(_)) if router && ends.routed.insert(ns.clone()) => Some(gw.addr),
            _ => None,
        };
        // IPv6 alike, via the gateway's own address: it is in the spec (the bridge's
        // link-local address follows the bridge's MAC) and on-link through the prefix route
        // the kernel adds with the port's address. Networks of the LAN's router
        // (`ipv6_prefixes`) have no gateway of kvmnet's: their router announces itself.
        let gateway6 = match (net.ipv6, port.ipv6) {
            (Some(v6), Some(_)) if router && ends.routed6.insert(ns.clone()) => {
                Some(v6.gateway.addr)
            }
            _ => None,
        };
        // A trunk that tags its own VLAN carries nothing untagged: the VM addresses its VLAN
        // sub-interfaces itself.
        let configured = !port.dhcp_client && port.has_native();
        PortKind::Veth {
            netns: ns,
            guest: GuestEnd {
                name: gname,
                mac: port.mac,
                mtu,
                up: true,
                // A DHCP client in the namespace configures it instead.
                addr: port.ipv4.filter(|_| configured),
                gateway: gateway.filter(|_| configured),
                addr6: port.ipv6_cidr(net).filter(|_| configured),
                gateway6: gateway6.filter(|_| configured),
                dhcp: port.dhcp_client,
            },
        }
    }

    /// Trunk ports: one sub-interface per tagged VLAN, on that VLAN's bridge.
    fn trunk(&mut self, port: &crate::spec::Port, mtu: u32, ppath: &dyn Fn() -> String) {
        for (i, t) in port.trunk.iter().enumerate() {
            let Some(tnet) = self.spec.networks.get(&t.network) else {
                continue;
            };
            if self.links.foreign(&t.device).is_some() {
                self.conflict(
                    format!("{}.vlans[{i}]", ppath()),
                    format!(
                        "interface '{}' (this port's VLAN {} sub-interface) already exists and is not managed by kvmnet",
                        t.device, t.vid
                    ),
                );
            }
            let tmtu = self
                .st
                .bridges
                .get(&tnet.bridge)
                .map_or(DEFAULT_MTU, |b| b.mtu);
            if tmtu > mtu {
                // A bridge takes the smallest MTU of its ports: the sub-interface (never
                // above this port's MTU) would pull the VLAN's bridge down for every guest
                // on it, and the host would never match the spec.
                self.conflict(
                    format!("{}.vlans[{i}]", ppath()),
                    format!(
                        "VLAN {}'s network '{}' has MTU {tmtu}, more than this port's {mtu}: its sub-interface '{}' would pull bridge '{}' down to {mtu}; give network '{}' mtu: {mtu} (or less), or raise the MTU of this port's network",
                        t.vid, tnet.name, t.device, tnet.bridge, tnet.name
                    ),
                );
            }
            self.st.vlans.insert(
                t.device.clone(),
                VlanLink {
                    name: t.device.clone(),
                    network: tnet.name.clone(),
                    parent: port.name.clone(),
                    vid: t.vid,
                    port: Some(port.name.clone()),
                    master: Some(tnet.bridge.clone()),
                    // A VLAN device never exceeds its lower device's MTU.
                    mtu: tmtu.min(mtu),
                    up: true,
                    isolated: tnet.isolate_ports,
                },
            );
        }
    }
}
