//! The walk itself: one method per stage, each mirroring the chain kvmnet writes for it
//! (`crate::nft`, `crate::modes`), in the order the kernel runs them.

use std::net::{IpAddr, Ipv4Addr};

use super::{Dest, Hop, L4, Packet, Stage, Trace, Verdict, by_address, in_prefix6, port_label};
use crate::nft::{NftTable, firewall_verdict, quoted, rule_matches, table_for};
use crate::spec::{
    DirectMode, FirewallRule, Mode, Network, Port, PortKind, RuleAction, RuleProto, Spec,
};

/// Walks `packet` through the spec's ruleset.
pub fn walk(spec: &Spec, packet: &Packet<'_>) -> Trace {
    let mut w = Walk {
        spec,
        table: table_for(spec),
        src: packet.src,
        saddr: packet.saddr,
        v6: packet.v6(),
        daddr: packet.dest.addr(),
        dest: packet.dest.clone(),
        l4: packet.l4,
        dnat: false,
        hops: Vec::new(),
    };
    w.run();
    Trace { hops: w.hops }
}

pub(super) struct Walk<'a> {
    pub(super) spec: &'a Spec,
    pub(super) table: Option<NftTable>,
    pub(super) src: &'a Port,
    pub(super) saddr: IpAddr,
    /// An IPv6 packet.
    pub(super) v6: bool,
    pub(super) daddr: IpAddr,
    dest: Dest<'a>,
    pub(super) l4: L4,
    /// A port forward translated the destination.
    dnat: bool,
    hops: Vec<Hop>,
}

/// A hop's nftables side: the chain (`inet from-nat`) and the rule, if a rule decided it.
pub(super) type Nft = Option<(String, Option<String>)>;

pub(super) fn port_path(p: &Port) -> String {
    format!("vms.{}.ports[{}]", p.vm, p.index)
}

pub(super) fn net_path(n: &Network) -> String {
    format!("networks.{}", n.name)
}

impl<'a> Walk<'a> {
    /// Records a hop; true when it stops the packet.
    pub(super) fn hop(
        &mut self,
        stage: Stage,
        verdict: Verdict,
        rule: String,
        nft: Nft,
        field: Option<String>,
    ) -> bool {
        // The field as written, or the nearest enclosing one that was (a default policy
        // points at its direction, a default guard at its port).
        let mut found = None;
        let mut path = field.clone();
        while let Some(p) = path {
            if let Some(l) = self.spec.locs.get(&p) {
                found = Some((p, l));
                break;
            }
            path = parent(&p);
        }
        let (chain, nft) = nft.map_or((None, None), |(c, r)| (Some(c), r));
        self.hops.push(Hop {
            stage,
            verdict,
            rule,
            chain,
            nft,
            field: found.as_ref().map(|(p, _)| p.clone()).or(field),
            loc: found.map(|(_, l)| l),
        });
        verdict.stops()
    }

    fn daddr(&self) -> IpAddr {
        self.daddr
    }

    /// What finds the neighbour of an address: ARP or neighbour solicitation.
    fn resolution(&self) -> &'static str {
        if self.v6 {
            "neighbour solicitation"
        } else {
            "ARP"
        }
    }

    /// The network field of the packet's family's addresses.
    fn family_field(&self, n: &Network) -> String {
        format!("{}.{}", net_path(n), if self.v6 { "ipv6" } else { "ipv4" })
    }

    fn network(&self, name: &str) -> Option<&'a Network> {
        self.spec.networks.get(name)
    }

    fn run(&mut self) {
        let Some(src_net) = self.network(&self.src.network) else {
            return;
        };
        if self.src.kind == PortKind::Macvtap {
            self.direct(src_net);
            return;
        }
        if self.guard() {
            return;
        }
        self.port_forward();
        if self.firewall(self.src, false) {
            return;
        }
        if !src_net.mode.routed_by_host() {
            self.lan(src_net);
            return;
        }
        if let Dest::Host(addr) = self.dest {
            self.host(src_net, addr);
            return;
        }
        match self.dest_network() {
            Some(d) if d.name == src_net.name => self.same_bridge(src_net),
            d => self.forwarded(src_net, d),
        }
    }

    /// The routed network the destination address is in, if any.
    fn dest_network(&self) -> Option<&'a Network> {
        if let Dest::Port(p, _) = self.dest {
            return self.network(&p.network).filter(|n| n.mode.routed_by_host());
        }
        let d = self.daddr();
        self.spec.networks.values().find(|n| {
            n.mode.routed_by_host()
                && match d {
                    IpAddr::V4(a) => n.ipv4.is_some_and(|g| g.network().contains(a)),
                    IpAddr::V6(a) => n.ipv6.is_some_and(|v| in_prefix6(v.prefix(), a)),
                }
        })
    }

    /// The bridge's guard (`guard`, `guard-ip4`): the packet is the port's own, so only what
    /// a guarded port may never send stops it.
    fn guard(&mut self) -> bool {
        let src = self.src;
        let field = Some(format!("{}.antispoof", port_path(src)));
        if !src.antispoof {
            let rule = format!("{} is not guarded (antispoof: false)", port_label(src));
            return self.hop(Stage::Guard, Verdict::Accept, rule, None, field);
        }
        let IpAddr::V4(saddr) = self.saddr else {
            return self.guard6(field);
        };
        let chain = "bridge guard-ip4".to_string();
        if self.l4 == L4::Udp(68) {
            let rule = "udp/68 is a DHCP client's port: only a DHCP server sends to it, and a guarded port may not be one".to_string();
            let nft = Some((chain, self.guard_rule("guard-ip4", "udp dport 68 ")));
            return self.hop(Stage::Guard, Verdict::Drop, rule, nft, field);
        }
        if src.ipv4.is_none_or(|a| a.addr != saddr) {
            return self.guard_source4(saddr, field);
        }
        let mut rule = format!(
            "{} sends from its own MAC {} and address {}",
            port_label(src),
            src.mac,
            self.saddr
        );
        if self.l4 == L4::Udp(67) {
            rule.push_str(" (udp/67 is taken as a DHCP request from udp/68 for its own MAC)");
        }
        self.hop(
            Stage::Guard,
            Verdict::Accept,
            rule,
            Some((chain, None)),
            field,
        )
    }

    /// An IPv4 source other than the port's `ipv4`: a DHCP client's 0.0.0.0, an address a
    /// port without `ipv4` may use (not claimed by a pinned port or a gateway), or a forgery.
    fn guard_source4(&mut self, saddr: Ipv4Addr, field: Option<String>) -> bool {
        let src = self.src;
        let chain = "bridge guard-ip4".to_string();
        let claimed = || {
            let ports = self.spec.vms.values().flat_map(|v| &v.ports);
            let mut pinned = ports.filter_map(|p| p.ipv4);
            let mut gateways = self.spec.networks.values().filter_map(|n| n.ipv4);
            pinned.any(|a| a.addr == saddr) || gateways.any(|g| g.addr == saddr)
        };
        let (verdict, rule, start) = if saddr.is_unspecified() && self.l4 == L4::Udp(67) {
            (
                Verdict::Accept,
                "a DHCP client asks from 0.0.0.0 before it has an address".to_string(),
                "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
            )
        } else if saddr.is_unspecified() {
            (
                Verdict::Drop,
                "0.0.0.0 is a source for DHCP requests only".to_string(),
                "ip saddr 0.0.0.0 counter",
            )
        } else if let Some(a) = src.ipv4 {
            (
                Verdict::Drop,
                format!(
                    "{} may send from its ipv4 {} only, not {saddr}",
                    port_label(src),
                    a.addr
                ),
                "iifname @ip4_pinned iifname . ip saddr != @port_ip4",
            )
        } else if claimed() {
            (
                Verdict::Drop,
                format!("{saddr} is another port's ipv4 or a gateway's address"),
                "iifname != @ip4_pinned ip saddr @claimed_ip4",
            )
        } else {
            let rule = format!(
                "{} has no ipv4 in the spec: it may send from {saddr}, which no port or gateway claims (a DHCP lease)",
                port_label(src)
            );
            return self.hop(
                Stage::Guard,
                Verdict::Accept,
                rule,
                Some((chain, None)),
                field,
            );
        };
        let nft = Some((chain, self.guard_rule("guard-ip4", start)));
        self.hop(Stage::Guard, verdict, rule, nft, field)
    }

    /// The rule of a guard chain (`guard-ip4`) that starts with `start`, as the ruleset has
    /// it (it drops there, or hands the packet to a chain that counts the drop and drops it).
    pub(super) fn guard_rule(&self, chain: &str, start: &str) -> Option<String> {
        let chain = self
            .table
            .as_ref()?
            .chains
            .get(&format!("bridge {chain}"))?;
        chain
            .rules
            .iter()
            .find(|r| r.text.starts_with(start))
            .map(|r| r.text.clone())
    }

    /// Port forwards (inet nat prerouting): a tcp/udp packet to one of the host's addresses
    /// on a forwarded port goes to the VM instead. The first forward that matches wins.
    fn port_forward(&mut self) {
        let (Dest::Host(_), Some(dport)) = (&self.dest, self.l4.dport()) else {
            return;
        };
        let word = match self.l4 {
            L4::Tcp(_) => "tcp",
            _ => "udp",
        };
        let spec = self.spec;
        let v6 = self.v6;
        let hit = spec.networks.values().find_map(|n| {
            n.forwards
                .iter()
                .enumerate()
                .find(|(_, f)| {
                    f.proto.as_str() == word && f.port == dport && (!v6 || f.to_ip6.is_some())
                })
                .map(|(i, f)| (n, i, f))
        });
        let Some((net, i, fw)) = hit else {
            return;
        };
        let (to, nft) = match fw.to_ip6.filter(|_| v6) {
            Some(a) => (
                IpAddr::V6(a),
                format!(
                    "fib daddr type local {word} dport {dport} dnat ip6 to [{a}]:{}",
                    fw.to_port
                ),
            ),
            None => (
                IpAddr::V4(fw.to_ip),
                format!(
                    "fib daddr type local {word} dport {dport} dnat ip to {}:{}",
                    fw.to_ip, fw.to_port
                ),
            ),
        };
        let rule = format!(
            "port forward {word}/{dport} of the host goes to {} {to} port {}",
            fw.to, fw.to_port
        );
        self.dest = by_address(spec, to);
        self.daddr = to;
        self.l4 = self.l4.with_dport(fw.to_port);
        self.dnat = true;
        let field = Some(format!("{}.forwards[{i}]", net_path(net)));
        let nft = Some(("inet prerouting".to_string(), Some(nft)));
        self.hop(Stage::Nat, Verdict::Continue, rule, nft, field);
    }

    /// The firewall chain a port's traffic jumps to, by the maps kvmnet writes.
    fn firewall_chain(&self, port: &Port, inbound: bool) -> Option<String> {
        let t = self.table.as_ref()?;
        let (marks, policy) = if inbound {
            ("bridge in_mark", "inet in_policy")
        } else {
            ("bridge out_mark", "inet out_policy")
        };
        let key = format!("{} : ", quoted(port.own_interface()));
        let mark = t
            .sets
            .get(marks)?
            .elements
            .iter()
            .find_map(|e| e.strip_prefix(&key))?;
        let jump = format!("{mark} : jump ");
        t.sets
            .get(policy)?
            .elements
            .iter()
            .find_map(|e| e.strip_prefix(&jump))
            .map(|c| format!("inet {c}"))
    }

    /// A port's firewall in one direction (`fw-out-*`/`out-PORT`, `fw-in-*`/`in-PORT`).
    fn firewall(&mut self, port: &'a Port, inbound: bool) -> bool {
        let (stage, word) = if inbound {
            (Stage::FirewallIn, "inbound")
        } else {
            (Stage::FirewallOut, "outbound")
        };
        let fw = port.firewall.as_ref();
        let dir = fw.and_then(|f| if inbound { &f.inbound } else { &f.outbound }.as_ref());
        let base = format!("{}.firewall.{word}", port_path(port));
        let (Some(dir), Some(chain)) = (dir, self.firewall_chain(port, inbound)) else {
            let rule = format!("{} has no {word} firewall", port_label(port));
            return self.hop(stage, Verdict::Accept, rule, None, None);
        };
        let broadcast = matches!(self.daddr(), IpAddr::V4(a) if a.is_broadcast());
        let local = matches!(self.dest, Dest::Host(_)) || broadcast;
        if let L4::Icmpv6(t) = self.l4
            && super::v6::PLUMBING.contains(&t)
        {
            let rule = format!("IPv6 needs neighbour discovery: {t} passes every firewall");
            let nft = Some((chain, Some(crate::nft::IPV6_PLUMBING.to_string())));
            return self.hop(stage, Verdict::Accept, rule, nft, Some(base));
        }
        if !self.v6 && !inbound && self.l4 == L4::Udp(67) && local {
            let nft = "udp sport 68 udp dport 67 fib daddr type { local, broadcast } return";
            let rule = "a DHCP request to the host always leaves the port".to_string();
            let nft = Some((chain, Some(nft.to_string())));
            return self.hop(stage, Verdict::Accept, rule, nft, Some(base));
        }
        let (saddr, daddr) = (self.saddr, self.daddr());
        for (j, r) in dir.rules.iter().enumerate() {
            if !hits(r, saddr, daddr, self.l4) {
                continue;
            }
            let verdict = match r.action {
                RuleAction::Accept => Verdict::Accept,
                RuleAction::Drop => Verdict::Drop,
                RuleAction::Reject => Verdict::Reject,
            };
            // Drops and rejects go to the direction's counting chain (`goto fw-in-drop`).
            let word_v = firewall_verdict(r.action, inbound);
            let rule = format!("{word} rule {j} of {}: {}", port_label(port), describe(r));
            let nft = Some((chain, Some(rule_text(r, &word_v, self.v6))));
            return self.hop(
                stage,
                verdict,
                rule,
                nft,
                Some(format!("{base}.rules[{j}]")),
            );
        }
        let field = Some(format!("{base}.policy"));
        if dir.accept_by_default {
            let rule = format!(
                "no {word} rule of {} matches; policy accept",
                port_label(port)
            );
            self.hop(stage, Verdict::Accept, rule, Some((chain, None)), field)
        } else {
            let rule = format!(
                "no {word} rule of {} matches; policy drop",
                port_label(port)
            );
            let drop = firewall_verdict(RuleAction::Drop, inbound);
            let nft = Some((chain, Some(format!("counter {drop}"))));
            self.hop(stage, Verdict::Drop, rule, nft, field)
        }
    }

    /// A network the host does not route (bridge, vlan, vxlan): a segment of a LAN.
    fn lan(&mut self, net: &'a Network) {
        let same = matches!(self.dest, Dest::Port(p, _) if p.network == net.name);
        if same {
            let rule = format!("bridged on {} (network {})", net.bridge, net.name);
            self.hop(
                Stage::Routing,
                Verdict::Continue,
                rule,
                None,
                Some(net_path(net)),
            );
            if let Dest::Port(p, _) = self.dest
                && self.firewall(p, true)
            {
                return;
            }
            self.arrive();
            return;
        }
        let rule = format!(
            "network {} (mode {}) is a LAN segment: the host does not route it, so {} goes to the LAN (beyond the host, not modelled)",
            net.name,
            net.mode.as_str(),
            self.daddr()
        );
        self.hop(
            Stage::Arrive,
            Verdict::Accept,
            rule,
            None,
            Some(format!("{}.mode", net_path(net))),
        );
    }

    /// A macvtap port: nothing of the host's bridge or IP hooks sees its traffic.
    fn direct(&mut self, net: &'a Network) {
        let mode = net.direct_mode.unwrap_or(DirectMode::Bridge);
        let field = Some(net_path(net));
        let uplink = net.uplink.clone().unwrap_or_default();
        let same = matches!(self.dest, Dest::Port(p, _) if p.network == net.name);
        if same && mode == DirectMode::Private {
            let rule =
                format!("macvtap mode private on {uplink}: its ports never reach each other");
            self.hop(Stage::Routing, Verdict::Drop, rule, None, field);
            return;
        }
        let rule = format!(
            "{} is a macvtap port on {uplink} (mode {}): its traffic never crosses the host's hooks, so no kvmnet rule sees it{}",
            port_label(self.src),
            mode.as_str(),
            if same && mode == DirectMode::Vepa {
                "; between ports only if the switch hairpins"
            } else {
                ""
            }
        );
        self.hop(Stage::Arrive, Verdict::Accept, rule, None, field);
    }

    /// Onto the source's own bridge (with br_netfilter the inet hooks see it, with the
    /// bridge as both input and output interface).
    fn same_bridge(&mut self, net: &'a Network) {
        if let Dest::Addr(a) = self.dest {
            let rule = format!(
                "no port of network {} has {a}: nothing answers {} for it",
                net.name,
                self.resolution()
            );
            let field = Some(self.family_field(net));
            self.hop(Stage::Routing, Verdict::Drop, rule, None, field);
            return;
        }
        let rule = format!("same network {}: bridged on {}", net.name, net.bridge);
        self.hop(
            Stage::Routing,
            Verdict::Continue,
            rule,
            None,
            Some(net_path(net)),
        );
        if net.isolate_ports {
            let rule = format!(
                "ports of {} are isolated: the bridge forwards nothing between them",
                net.name
            );
            let field = Some(format!("{}.isolate_ports", net_path(net)));
            self.hop(Stage::IsolatePorts, Verdict::Drop, rule, None, field);
            return;
        }
        if let Dest::Port(p, _) = self.dest
            && self.firewall(p, true)
        {
            return;
        }
        let br = quoted(&net.bridge);
        let rule = format!("traffic staying on {} is not routing", net.bridge);
        let nft = Some((
            format!("inet from-{}", net.name),
            Some(format!("oifname {br} return")),
        ));
        self.hop(
            Stage::Leaving,
            Verdict::Accept,
            rule.clone(),
            nft,
            Some(net_path(net)),
        );
        let nft = Some((
            format!("inet to-{}", net.name),
            Some(format!("iifname {br} return")),
        ));
        self.hop(
            Stage::Entering,
            Verdict::Accept,
            rule,
            nft,
            Some(net_path(net)),
        );
        self.arrive();
    }

    /// Routed by the host into another network or out of the host. The inet forward chain
    /// runs the destination port's inbound firewall before the networks' checks.
    fn forwarded(&mut self, from: &'a Network, to: Option<&'a Network>) {
        let rule = match to {
            Some(n) => format!(
                "routed by the host from network {} into network {}",
                from.name, n.name
            ),
            None => format!(
                "routed by the host from network {} out towards {}",
                from.name,
                self.daddr()
            ),
        };
        self.hop(
            Stage::Routing,
            Verdict::Continue,
            rule,
            None,
            Some(net_path(from)),
        );
        // The inbound firewall of routed traffic is found by destination address, whatever
        // the route: a port on a LAN segment reached through the host meets it too.
        if let Dest::Port(p, _) = self.dest
            && self.firewall(p, true)
        {
            return;
        }
        if self.leaving(from, to) {
            return;
        }
        if let Some(n) = to
            && self.entering(n)
        {
            return;
        }
        self.masquerade(from, to);
        self.arrive();
    }

    /// `from-NET`: what may leave the source network.
    fn leaving(&mut self, net: &'a Network, to: Option<&'a Network>) -> bool {
        let chain = format!("inet from-{}", net.name);
        let mode = format!("{}.mode", net_path(net));
        let rule = if self.v6 {
            net.ipv6
                .and_then(|v| net.mode.behaviour().leaving6(net, v.prefix()))
        } else {
            net.ipv4
                .and_then(|g| net.mode.behaviour().leaving(net, g.network()))
        };
        if let Some(r) = rule {
            // nat with `nat.egress` leaves only through that interface: taken to be the way
            // out of the host, never another network's bridge.
            let hit = !r.contains("oifname") || to.is_none();
            if hit {
                let why = format!(
                    "network {} (mode {}) may leave",
                    net.name,
                    net.mode.as_str()
                );
                return self.hop(
                    Stage::Leaving,
                    Verdict::Accept,
                    why,
                    Some((chain, Some(r))),
                    Some(mode),
                );
            }
        }
        let why = match net.mode {
            Mode::Isolated => format!(
                "network {} is isolated: nothing leaves it through the host",
                net.name
            ),
            _ if self.v6 && net.ipv6.is_none() => format!(
                "network {} has no ipv6: no IPv6 leaves it through the host",
                net.name
            ),
            _ => format!(
                "network {} leaves only through its nat egress {}",
                net.name,
                net.nat_egress.clone().unwrap_or_default()
            ),
        };
        let field = match net.nat_egress {
            Some(_) => Some(format!("{}.nat.egress", net_path(net))),
            None => Some(mode),
        };
        let nft = Some((chain, Some("counter reject".to_string())));
        self.hop(Stage::Leaving, Verdict::Reject, why, nft, field)
    }

    /// `to-NET`: what may enter the destination network from elsewhere.
    fn entering(&mut self, net: &'a Network) -> bool {
        let chain = format!("inet to-{}", net.name);
        let mode = format!("{}.mode", net_path(net));
        let rules = if self.v6 {
            net.ipv6
                .map(|v| net.mode.behaviour().entering6(net, v.prefix()))
                .unwrap_or_default()
        } else {
            net.ipv4
                .map(|g| net.mode.behaviour().entering(net, g.network()))
                .unwrap_or_default()
        };
        for r in rules {
            // A new connection is not established; `ct status dnat` is a port forward;
            // anything else lets the network's subnet in.
            let (hit, why, field) = if r.contains("ct state established") {
                (false, String::new(), None)
            } else if r.contains("ct status dnat") {
                let why = format!("a port forward may enter network {}", net.name);
                (self.dnat, why, Some(format!("{}.forwards", net_path(net))))
            } else {
                let why = format!(
                    "network {} (mode {}) may be entered",
                    net.name,
                    net.mode.as_str()
                );
                (true, why, Some(mode.clone()))
            };
            if hit {
                return self.hop(
                    Stage::Entering,
                    Verdict::Accept,
                    why,
                    Some((chain, Some(r))),
                    field,
                );
            }
        }
        let why = match net.mode {
            Mode::Nat => format!(
                "network {} (mode nat) lets in only replies and port forwards",
                net.name
            ),
            _ => format!(
                "network {} (mode {}) lets nothing in from elsewhere",
                net.name,
                net.mode.as_str()
            ),
        };
        let nft = Some((chain, Some("counter reject".to_string())));
        self.hop(Stage::Entering, Verdict::Reject, why, nft, Some(mode))
    }

    /// inet nat postrouting: a nat network's guests leave with the host's address.
    fn masquerade(&mut self, net: &'a Network, to: Option<&'a Network>) {
        if net.mode != Mode::Nat {
            return;
        }
        let egress = match &net.nat_egress {
            Some(e) if to.is_none() => format!("oifname {}", quoted(e)),
            Some(_) => return,
            None => format!("oifname != {}", quoted(&net.bridge)),
        };
        let nft = match (self.v6, net.ipv4, net.ipv6) {
            (false, Some(gw), _) => {
                let subnet = gw.network();
                format!("ip saddr {subnet} ip daddr != {subnet} {egress} masquerade")
            }
            // NAT66, unless `nat: { ipv6: false }` routes the prefix untranslated.
            (true, _, Some(v)) if v.nat66 => {
                let p = v.prefix();
                format!("ip6 saddr {p} ip6 daddr != {p} ip6 daddr != ff00::/8 {egress} masquerade")
            }
            _ => return,
        };
        let why =
            "masquerade: it leaves with the host's address on the outgoing interface".to_string();
        let field = Some(format!("{}.mode", net_path(net)));
        let nft = Some(("inet postrouting".to_string(), Some(nft)));
        self.hop(Stage::Nat, Verdict::Continue, why, nft, field);
    }

    /// inet input through `host-NET`: what the network's guests may reach on the host.
    fn host(&mut self, net: &'a Network, addr: IpAddr) {
        let chain = format!("inet host-{}", net.name);
        let np = net_path(net);
        let gw = net.ipv4.map(|g| IpAddr::V4(g.addr));
        let hit = if self.v6 {
            self.host6(net, addr)
                .or_else(|| self.host_access(net, addr))
        } else if self.l4 == L4::Udp(67) && net.dhcp.is_some() {
            Some((
                Verdict::Accept,
                "DHCP to the host is always allowed".to_string(),
                "udp sport 68 udp dport 67 accept".to_string(),
                format!("{np}.dhcp"),
            ))
        } else if self.l4 == L4::Icmp && gw == Some(addr) {
            Some((
                Verdict::Accept,
                "guests may ping their gateway".to_string(),
                format!("ip daddr {addr} icmp type echo-request accept"),
                format!("{np}.ipv4"),
            ))
        } else if matches!(self.l4, L4::Udp(53) | L4::Tcp(53))
            && net.dns.is_some()
            && gw == Some(addr)
        {
            Some((
                Verdict::Accept,
                "kvmnet answers DNS on the gateway".to_string(),
                format!("ip daddr {addr} meta l4proto {{ tcp, udp }} th dport 53 accept"),
                format!("{np}.dns"),
            ))
        } else {
            self.host_access(net, addr)
        };
        let (verdict, why, nft, field) = hit.unwrap_or_else(|| {
            (
                Verdict::Drop,
                format!("nothing in host_access of network {} allows it", net.name),
                "counter drop".to_string(),
                format!("{np}.host_access"),
            )
        });
        if self.hop(
            Stage::HostAccess,
            verdict,
            why,
            Some((chain, Some(nft))),
            Some(field),
        ) {
            return;
        }
        let rule = format!("reaches the host at {addr} (whether anything listens is not modelled)");
        self.hop(Stage::Arrive, Verdict::Accept, rule, None, None);
    }

    /// The first `host_access` rule that matches: verdict, words, nft rule, field.
    pub(super) fn host_access(
        &self,
        net: &Network,
        addr: IpAddr,
    ) -> Option<(Verdict, String, String, String)> {
        let (k, r) = net
            .host_access
            .iter()
            .enumerate()
            .find(|(_, r)| hits(r, self.saddr, addr, self.l4))?;
        let (verdict, word) = match r.action {
            RuleAction::Accept => (Verdict::Accept, "accept"),
            RuleAction::Drop => (Verdict::Drop, "drop"),
            RuleAction::Reject => (Verdict::Reject, "reject"),
        };
        let why = format!(
            "host_access rule {k} of network {}: {}",
            net.name,
            describe(r)
        );
        Some((
            verdict,
            why,
            rule_text(r, word, self.v6),
            format!("{}.host_access[{k}]", net_path(net)),
        ))
    }

    /// Where the packet ends up once every rule let it through.
    fn arrive(&mut self) {
        let (verdict, rule) = match self.dest {
            Dest::Port(p, _) => (
                Verdict::Accept,
                format!("arrives at {} {} {}", port_label(p), self.daddr(), self.l4),
            ),
            Dest::Addr(a) => match self.dest_network() {
                Some(n) => (
                    Verdict::Drop,
                    format!(
                        "no port of network {} has {a}: nothing answers {} for it",
                        n.name,
                        self.resolution()
                    ),
                ),
                None => (
                    Verdict::Accept,
                    format!(
                        "leaves the host towards {a} (by the host's routes; beyond the host is not modelled)"
                    ),
                ),
            },
            Dest::Host(a) => (Verdict::Accept, format!("reaches the host at {a}")),
        };
        let stage = if verdict.stops() {
            Stage::Routing
        } else {
            Stage::Arrive
        };
        let field = match self.dest {
            Dest::Port(p, _) => Some(port_path(p)),
            _ => None,
        };
        self.hop(stage, verdict, rule, None, field);
    }
}

/// The enclosing field path: `a.b[2].c` -> `a.b[2]` -> `a.b` -> `a`.
fn parent(path: &str) -> Option<String> {
    if let Some(p) = path.strip_suffix(']') {
        return p.rfind('[').map(|i| path[..i].to_string());
    }
    path.rfind('.').map(|i| path[..i].to_string())
}

/// Whether a firewall or `host_access` rule matches the packet (a new connection, rate and
/// connection limits not exceeded). An ICMP rule's types match ICMPv6 by their ICMPv6
/// counterparts; a rule with an address of one family never matches the other.
fn hits(r: &FirewallRule, saddr: IpAddr, daddr: IpAddr, l4: L4) -> bool {
    let proto = match (r.proto, l4) {
        (RuleProto::Any, _) => true,
        (RuleProto::Tcp, L4::Tcp(_)) | (RuleProto::Udp, L4::Udp(_)) => true,
        (RuleProto::Icmp, L4::Icmp) => {
            r.icmp_types.is_empty() || r.icmp_types.iter().any(|t| t == "echo-request")
        }
        (RuleProto::Icmp, L4::Icmpv6(t)) => {
            r.icmp_types.is_empty()
                || r.icmp_types
                    .iter()
                    .any(|x| crate::spec::icmpv6_counterpart(x) == Some(t))
        }
        _ => false,
    };
    let ports = r.ports.is_empty()
        || l4
            .dport()
            .is_some_and(|d| r.ports.iter().any(|(a, b)| (*a..=*b).contains(&d)));
    proto
        && ports
        && r.from.is_none_or(|c| contains(c, saddr))
        && r.to.is_none_or(|c| contains(c, daddr))
}

fn contains(c: crate::types::IpCidr, a: IpAddr) -> bool {
    match (c, a) {
        (crate::types::IpCidr::V6(c), IpAddr::V6(a)) => in_prefix6(c, a),
        (c, IpAddr::V4(a)) => c.contains_v4(a),
        _ => false,
    }
}

/// The deciding rule of a firewall or `host_access` rule as kvmnet writes it for the
/// packet's family: a rule covering both families with ICMP types is written once per
/// family, IPv4's first.
fn rule_text(r: &FirewallRule, verdict: &str, v6: bool) -> String {
    let all = rule_matches(r);
    let m = if v6 { all.last() } else { all.first() }
        .cloned()
        .unwrap_or_default();
    let sep = if m.is_empty() { "" } else { " " };
    format!("{m}{sep}counter {verdict}")
}

/// A rule in the spec's words: `tcp 22,80 from 10.0.0.0/8 accept`.
fn describe(r: &FirewallRule) -> String {
    let mut w = vec![
        match r.proto {
            RuleProto::Tcp => "tcp",
            RuleProto::Udp => "udp",
            RuleProto::Icmp => "icmp",
            RuleProto::Any => "any",
        }
        .to_string(),
    ];
    if !r.ports.is_empty() {
        w.push(crate::nft::port_ranges(&r.ports).join(","));
    }
    if !r.icmp_types.is_empty() {
        w.push(r.icmp_types.join(","));
    }
    if let Some(f) = r.from {
        w.push(format!("from {f}"));
    }
    if let Some(t) = r.to {
        w.push(format!("to {t}"));
    }
    w.push(
        match r.action {
            RuleAction::Accept => "accept",
            RuleAction::Drop => "drop",
            RuleAction::Reject => "reject",
        }
        .to_string(),
    );
    w.join(" ")
}
