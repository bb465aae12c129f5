//! The guard (`antispoof`, on by default): an allow-list of what a guarded port may send,
//! checked at the bridge before it learns or forwards anything.
//!
//! A guarded port may send exactly:
//! - frames with its own source MAC, untagged, of type ARP, IPv4 or IPv6, not to the IEEE
//!   reserved group addresses (01:80:c2:00:00:0x: STP, LACP, 802.1X, LLDP...) nor Cisco's
//!   (01:00:0c:cc:cc:cc/cd: CDP, VTP, PVST);
//! - ARP whose sender is its MAC and its address (or 0.0.0.0 in a probe);
//! - IPv4 from its address, or from 0.0.0.0 as a DHCP client (udp 68 -> 67) only; DHCP only
//!   as a client: a BOOTREQUEST without a relay address whose chaddr is its own MAC;
//! - IPv6 from the link-local address of its MAC (EUI-64), its SLAAC addresses in the
//!   network's SLAAC prefixes (`ipv6_prefixes`, and its `ipv6` prefix when RAs allow SLAAC),
//!   its declared `ipv6` or, without one, any address of the network's DHCPv6 pool (the
//!   `range6` the server hands out), or from :: for duplicate address detection and multicast
//!   listener reports; neighbour discovery only about its own addresses (an advertisement's
//!   target, and the link-layer address option of a solicitation or advertisement, must be
//!   its own); DHCPv6 only as a client; no router advertisements, redirects or router
//!   renumbering, and no fragmented ICMPv6 (how RA-guard evasion hides a header).
//!
//! Everything else is dropped, whatever its ports or tags. A port without `ipv4` may use any
//! IPv4 source (its address is not known to the spec: a DHCP pool or the LAN's server) but
//! those of pinned ports and gateways; README's threat model says what that allows. Every drop has its own counter, one rule per
//! reason. Per-port data lives in sets, so the per-packet cost does not depend on the number
//! of ports.
//!
//! Each drop rule goes to the drop chain of its reason (`guard-drop-ip`, ...), where the
//! input interface is looked up in that reason's counting set (`drops_ip`: every guarded
//! interface, each element with a counter) before the frame is dropped. That gives a drop
//! count per port and reason for one hash lookup per *dropped* frame; frames the guard lets
//! through never reach it. A drop chain ends in a plain drop, so an interface missing from a
//! counting set is still dropped, only not counted.

use super::{BRIDGE_FAMILY, Base, Parts, Set, concat, ipv4_text};
use crate::spec::{Mac, Port, PortKind, Spec};

/// Keys read from packet bytes: the link-layer address option of neighbour discovery (right
/// after the 16-byte target), and a DHCP message's chaddr (28 bytes into the BOOTP header).
/// nft types such keys by their width only, so one set of MACs serves both lookups.
const MAC_RAW: &str = "typeof iifname . @th,208,48";
/// The target address of a neighbour solicitation or advertisement (8 bytes into ICMPv6).
const ND_TARGET_RAW: &str = "typeof iifname . @th,64,128";
/// The DHCPv6 pools of ports without `ipv6`, as ranges: by source address and by neighbour
/// discovery target. Interval sets with a concatenated key are the kernel's pipapo sets,
/// whose lookups cost more than a hash's; they hold one element per such port, and only
/// frames whose source is none of the port's exact addresses (the hash sets, looked up
/// first) reach them.
const POOL_IP6: &str = "typeof iifname . ip6 saddr; flags interval";
const POOL_ND_TARGET: &str = "typeof iifname . @th,64,128; flags interval";

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * bytes.len());
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Why the guard dropped a frame: the `reason` of its drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A source MAC that is not the port's (Ethernet, or a DHCP request's chaddr).
    Mac,
    /// An IPv4 or IPv6 source address that is not the port's.
    Ip,
    /// ARP that is not about the port's own MAC and address.
    Arp,
    /// IPv6 neighbour discovery about addresses or MACs that are not the port's.
    Nd,
    /// DHCP or DHCPv6 other than as a client (server or relay messages).
    DhcpServer,
    /// Router advertisements, redirects, router renumbering, fragmented ICMPv6.
    Ra,
    /// VLAN-tagged frames.
    Tagged,
    /// Frames to the IEEE and Cisco reserved group addresses (STP, LLDP, CDP...).
    ReservedMulticast,
    /// An EtherType other than ARP, IPv4 and IPv6.
    Other,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Mac,
        Reason::Ip,
        Reason::Arp,
        Reason::Nd,
        Reason::DhcpServer,
        Reason::Ra,
        Reason::Tagged,
        Reason::ReservedMulticast,
        Reason::Other,
    ];

    /// The label value, as metrics show it.
    pub fn word(self) -> &'static str {
        match self {
            Reason::Mac => "mac",
            Reason::Ip => "ip",
            Reason::Arp => "arp",
            Reason::Nd => "nd",
            Reason::DhcpServer => "dhcp-server",
            Reason::Ra => "ra",
            Reason::Tagged => "tagged",
            Reason::ReservedMulticast => "reserved-multicast",
            Reason::Other => "other",
        }
    }

    /// The counting set of the reason, in the `bridge kvmnet` table: one element with a
    /// counter per guarded interface.
    pub fn set(self) -> &'static str {
        match self {
            Reason::Mac => "drops_mac",
            Reason::Ip => "drops_ip",
            Reason::Arp => "drops_arp",
            Reason::Nd => "drops_nd",
            Reason::DhcpServer => "drops_dhcp_server",
            Reason::Ra => "drops_ra",
            Reason::Tagged => "drops_tagged",
            Reason::ReservedMulticast => "drops_reserved_multicast",
            Reason::Other => "drops_other",
        }
    }

    fn chain(self) -> String {
        concat(&["guard-drop-", self.word()])
    }
}

/// The type of the counting sets. The comment carries `counter` too (see `NftSet`), so
/// observation reads back a set with counters as one.
const COUNTING: &str = "typeof iifname; counter";

/// A guard rule that drops what `matches` matches, counted for `reason`.
fn drop_for(matches: &str, reason: Reason) -> String {
    let sep = if matches.is_empty() { "" } else { " " };
    concat(&[matches, sep, "counter goto ", &reason.chain()])
}

struct Sets {
    guarded: Set,
    /// Per reason, in the order of [`Reason::ALL`].
    drops: Vec<Set>,
    port_mac: Set,
    mac_raw: Set,
    ip4_pinned: Set,
    port_ip4: Set,
    claimed_ip4: Set,
    port_ip6: Set,
    nd_target: Set,
    pool_ip6: Set,
    pool_nd_target: Set,
}

impl Sets {
    fn new() -> Sets {
        Sets {
            guarded: Set::new("guarded", "ifname"),
            drops: Reason::ALL
                .iter()
                .map(|r| Set::new(r.set(), COUNTING))
                .collect(),
            port_mac: Set::new("port_mac", "ifname . ether_addr"),
            mac_raw: Set::new("mac_raw", MAC_RAW),
            ip4_pinned: Set::new("ip4_pinned", "ifname"),
            port_ip4: Set::new("port_ip4", "ifname . ipv4_addr"),
            claimed_ip4: Set::new("claimed_ip4", "ipv4_addr"),
            port_ip6: Set::new("port_ip6", "ifname . ipv6_addr"),
            nd_target: Set::new("nd_target", ND_TARGET_RAW),
            pool_ip6: Set::new("pool_ip6", POOL_IP6),
            pool_nd_target: Set::new("pool_nd_target", POOL_ND_TARGET),
        }
    }

    /// One interface of a guarded port: the port itself, or a trunk's sub-interface (the
    /// VM's MAC holds on each; the VM's link-local address too, as the guest forms it the
    /// same way on every VLAN). Unless the interface is `pinned6` (its port declares `ipv6`
    /// on this network), the network's DHCPv6 pool is its too.
    fn add_interface(&mut self, spec: &Spec, iface: &str, network: &str, mac: Mac, pinned6: bool) {
        let q = concat(&["\"", iface, "\""]);
        self.guarded.elements.push(q.clone());
        for d in &mut self.drops {
            d.elements.push(q.clone());
        }
        self.port_mac
            .elements
            .push(concat(&[&q, " . ", &mac.to_string()]));
        self.mac_raw
            .elements
            .push(concat(&[&q, " . ", &hex(&mac.0)]));
        let net = spec.networks.get(network);
        let addrs = net
            .map(|n| {
                let own = std::iter::once(mac.link_local());
                own.chain(n.slaac_prefixes().map(|c| mac.slaac(c.addr)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| vec![mac.link_local()]);
        if let Some((lo, hi)) = net.and_then(|n| n.dhcp6_pool()).filter(|_| !pinned6) {
            // As DHCPv4 does for a port without `ipv4`: the port may use any address of the
            // pool (the server's binding is not known when the ruleset is written). Static
            // addresses and the gateway are never in it (validate sees to that).
            self.pool_ip6.elements.push(concat(&[
                &q,
                " . ",
                &lo.to_string(),
                "-",
                &hi.to_string(),
            ]));
            self.pool_nd_target.elements.push(concat(&[
                &q,
                " . ",
                &hex(&lo.octets()),
                "-",
                &hex(&hi.octets()),
            ]));
        }
        for a in addrs {
            self.port_ip6
                .elements
                .push(concat(&[&q, " . ", &a.to_string()]));
            self.nd_target
                .elements
                .push(concat(&[&q, " . ", &hex(&a.octets())]));
        }
    }

    fn add_port(&mut self, spec: &Spec, p: &Port) {
        // Pinned like `ipv4` (`ip4_pinned`): on the port's own interface only.
        let own = p.own_interface();
        self.add_interface(
            spec,
            &p.name,
            &p.network,
            p.mac,
            p.ipv6.is_some() && own == p.name,
        );
        for t in &p.trunk {
            let pinned6 = p.ipv6.is_some() && own == t.device;
            self.add_interface(spec, &t.device, &t.network, p.mac, pinned6);
        }
        let slaac = |a| {
            spec.networks
                .get(&p.network)
                .is_some_and(|n| n.slaac_prefixes().any(|c| p.mac.slaac(c.addr) == a))
        };
        if let Some(a) = p.ipv6.filter(|a| !slaac(*a)) {
            // The declared address holds on the port's own network only.
            let q = concat(&["\"", p.own_interface(), "\""]);
            self.port_ip6
                .elements
                .push(concat(&[&q, " . ", &a.to_string()]));
            self.nd_target
                .elements
                .push(concat(&[&q, " . ", &hex(&a.octets())]));
        }
        if let Some(a) = p.ipv4 {
            let q = concat(&["\"", p.own_interface(), "\""]);
            self.ip4_pinned.elements.push(q.clone());
            self.port_ip4
                .elements
                .push(concat(&[&q, " . ", &ipv4_text(a.addr)]));
            self.claimed_ip4.elements.push(ipv4_text(a.addr));
        }
    }
}

pub(super) fn parts(spec: &Spec) -> Parts {
    let mut out = Parts::default();
    let mut sets = Sets::new();
    // Direct ports are macvtap devices: no bridge sees their traffic.
    for p in spec
        .vms
        .values()
        .flat_map(|vm| vm.ports.iter())
        .filter(|p| p.antispoof && p.kind != PortKind::Macvtap)
    {
        sets.add_port(spec, p);
    }
    if sets.guarded.elements.is_empty() {
        return out;
    }
    // A port without ipv4 may not claim a pinned port's address or a gateway's.
    let gateways = spec.networks.values().filter_map(|n| n.ipv4);
    sets.claimed_ip4
        .elements
        .extend(gateways.map(|g| ipv4_text(g.addr)));
    sets.claimed_ip4.elements.sort();
    sets.claimed_ip4.elements.dedup();
    out.hook(Base::BridgePre, "iifname @guarded jump guard");
    chains(&mut out);
    let s = sets;
    for set in s.drops {
        out.set(BRIDGE_FAMILY, set);
    }
    for set in [
        s.guarded,
        s.port_mac,
        s.mac_raw,
        s.ip4_pinned,
        s.port_ip4,
        s.claimed_ip4,
        s.port_ip6,
        s.nd_target,
        s.pool_ip6,
        s.pool_nd_target,
    ] {
        out.set(BRIDGE_FAMILY, set);
    }
    out
}

/// The guard's chains: the checks, by the frame's type, and a drop chain per reason.
fn chains(out: &mut Parts) {
    out.chain(
        BRIDGE_FAMILY,
        "guard".into(),
        vec![
            drop_for("iifname . ether saddr != @port_mac", Reason::Mac),
            // Trunks carry tags on their own sub-interfaces; a tag here is a VM leaving its
            // network (receivers take a priority tag, VLAN 0, as untagged).
            drop_for("ether type { 8021q, 8021ad, 0x9100 }", Reason::Tagged),
            drop_for(
                "ether daddr and ff:ff:ff:ff:ff:f0 == 01:80:c2:00:00:00",
                Reason::ReservedMulticast,
            ),
            drop_for(
                "ether daddr { 01:00:0c:cc:cc:cc, 01:00:0c:cc:cc:cd }",
                Reason::ReservedMulticast,
            ),
            "ether type vmap { arp : goto guard-arp, ip : goto guard-ip4, ip6 : goto guard-ip6 }"
                .into(),
            drop_for("", Reason::Other),
        ],
    );
    out.chain(
        BRIDGE_FAMILY,
        "guard-arp".into(),
        vec![
            drop_for("arp htype != 1", Reason::Arp),
            drop_for("arp ptype != ip", Reason::Arp),
            drop_for("iifname . arp saddr ether != @port_mac", Reason::Arp),
            // A probe (sender 0.0.0.0) is how a guest checks an address is free.
            "arp operation request arp saddr ip 0.0.0.0 return".into(),
            drop_for(
                "iifname @ip4_pinned iifname . arp saddr ip != @port_ip4",
                Reason::Arp,
            ),
            drop_for(
                "iifname != @ip4_pinned arp saddr ip @claimed_ip4",
                Reason::Arp,
            ),
        ],
    );
    out.chain(
        BRIDGE_FAMILY,
        "guard-ip4".into(),
        vec![
            // Server-side DHCP from any port: clients check only the destination port.
            drop_for("udp sport 67", Reason::DhcpServer),
            drop_for("udp dport 68", Reason::DhcpServer),
            // To a DHCP server: a request (op 1), not relayed (giaddr 0), for its own MAC.
            drop_for("udp dport 67 @ih,0,8 != 1", Reason::DhcpServer),
            drop_for("udp dport 67 @ih,192,32 != 0", Reason::DhcpServer),
            drop_for("udp dport 67 iifname . @ih,224,48 != @mac_raw", Reason::Mac),
            "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return".into(),
            drop_for("ip saddr 0.0.0.0", Reason::Ip),
            drop_for(
                "iifname @ip4_pinned iifname . ip saddr != @port_ip4",
                Reason::Ip,
            ),
            drop_for("iifname != @ip4_pinned ip saddr @claimed_ip4", Reason::Ip),
        ],
    );
    out.chain(
        BRIDGE_FAMILY,
        "guard-ip6".into(),
        vec![
            // Neighbour discovery must never be fragmented (RFC 6980): fragments are how an
            // RA or a redirect hides its header from a guard.
            drop_for("exthdr frag exists meta l4proto ipv6-icmp", Reason::Ra),
            drop_for("icmpv6 type { nd-router-advert, nd-redirect, router-renumbering }", Reason::Ra),
            drop_for("udp sport 547", Reason::DhcpServer),
            drop_for("udp dport 546", Reason::DhcpServer),
            // To a DHCPv6 server: client messages only (not advertise, reply, reconfigure,
            // relay-forw or relay-repl).
            drop_for("udp dport 547 @ih,0,8 { 2, 7, 10, 12, 13 }", Reason::DhcpServer),
            // Before it has an address: duplicate address detection of its own addresses
            // and multicast listener reports.
            "ip6 saddr :: icmpv6 type nd-neighbor-solicit iifname . @th,64,128 @nd_target return".into(),
            "ip6 saddr :: icmpv6 type nd-neighbor-solicit iifname . @th,64,128 @pool_nd_target return".into(),
            "ip6 saddr :: icmpv6 type { mld-listener-report, mld2-listener-report } return".into(),
            drop_for("ip6 saddr ::", Reason::Ip),
            // Its exact addresses (a hash lookup) first; its DHCPv6 pool only when none is
            // the source.
            drop_for("iifname . ip6 saddr != @port_ip6 iifname . ip6 saddr != @pool_ip6", Reason::Ip),
            drop_for("icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd_target iifname . @th,64,128 != @pool_nd_target", Reason::Nd),
            drop_for("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } @th,192,8 { 1, 2 } iifname . @th,208,48 != @mac_raw", Reason::Nd),
         ],
    );
    for r in Reason::ALL {
        // Counted where the set has the interface; dropped either way.
        let count = concat(&["iifname @", r.set(), " drop"]);
        out.chain(BRIDGE_FAMILY, r.chain(), vec![count, "drop".into()]);
    }
}
