//! Series read at scrape time: the ports' link, shaping, guard and firewall counters from the
//! kernel (one dump per kind of counter, whatever the number of ports), and the DHCP
//! server's counters and pools from a copy taken under its lock. Kernel counters are shown
//! as they are: a port made again starts from zero, which Prometheus takes as a reset.
//!
//! The kernel's counters are written straight from what was read ([`Collector`]), not kept
//! in metric families: at 1,000 ports a scrape has some 20,000 series, and building a family
//! of each took longer than reading the kernel.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::PortInfo;
use crate::backend::counters::{self, CounterError, Dropped, raw_key};
use crate::backend::rtnl::LinkStats;
use crate::backend::tc::{Stats, ifb_name};
use crate::dhcp::{NetworkStats, ServerHandle};
use crate::log::Level;
use crate::nft::{CountedBy, GuardDropReason, counting_set};

type Links = HashMap<String, (u32, LinkStats)>;
/// A family of link counters: name, help, and its counter of a link.
type LinkFamily = (&'static str, &'static str, fn(&LinkStats) -> u64);

/// What one scrape read of the kernel, and the ports it is about. A source that could not be
/// read is `None` (and logged): its series are left out.
#[derive(Debug)]
struct Read {
    ports: Arc<Vec<PortInfo>>,
    links: Option<Links>,
    qdiscs: Option<HashMap<u32, Stats>>,
    /// Per reason, in the order of [`GuardDropReason::ALL`]: interface -> packets.
    guard: Option<Vec<HashMap<String, u64>>>,
    /// Packets the firewall's drop and reject rules counted, by chain.
    firewall: Option<HashMap<String, Dropped>>,
    /// Per counting set, in the order of [`FW_SETS`]: key -> packets.
    firewall_ports: Option<Vec<HashMap<u128, u64>>>,
    up: Vec<(&'static str, bool)>,
}

fn record<T>(
    up: &mut Vec<(&'static str, bool)>,
    source: &'static str,
    r: Result<T, CounterError>,
) -> Option<T> {
    up.push((source, r.is_ok()));
    r.map_err(|e| crate::log::line(Level::Warning, &format!("kvmnet: metrics: {e}")))
        .ok()
}

/// The firewall's counting sets: (inbound, reject, what the port is looked up by). Traffic
/// routed to a port carries no mark of ours and is counted by its destination address.
const FW_SETS: [(bool, bool, CountedBy); 8] = [
    (false, false, CountedBy::Mark),
    (false, true, CountedBy::Mark),
    (true, false, CountedBy::Mark),
    (true, false, CountedBy::Ipv4),
    (true, false, CountedBy::Ipv6),
    (true, true, CountedBy::Mark),
    (true, true, CountedBy::Ipv4),
    (true, true, CountedBy::Ipv6),
];

/// The shared firewall chains' drops and rejects, and every firewalled port's (two dumps
/// that run one after the other on one thread).
type FirewallRead = (
    Result<HashMap<String, Dropped>, CounterError>,
    Option<Result<Vec<HashMap<u128, u64>>, CounterError>>,
);

fn read_firewall(firewalled: bool) -> FirewallRead {
    // Shared chains are `fw-in-` and `fw-out-` and a hash of their rules; a port's own
    // chain is counted per port below, as every port is.
    let chains = counters::rule_drops(|c| c.starts_with("fw-in-") || c.starts_with("fw-out-"));
    let ports = firewalled.then(|| {
        let sets: Vec<&str> = FW_SETS
            .iter()
            .map(|&(i, r, k)| counting_set(i, r, k))
            .collect();
        counters::firewall_drops(&sets)
    });
    (chains, ports)
}

/// Registers the per-port series, read now. The four sources are read at once, each on a
/// thread of its own (threads start in this thread's namespace, the scope's).
pub(super) fn ports(r: &mut Registry, ports: Arc<Vec<PortInfo>>) {
    let guarded = ports.iter().any(|p| !p.guarded.is_empty());
    let firewalled = ports.iter().any(|p| p.firewall.is_some());
    let sets: Vec<&str> = GuardDropReason::ALL.iter().map(|r| r.set()).collect();
    let (links, qdiscs, guard, (firewall, firewall_ports)) = std::thread::scope(|s| {
        let qdiscs = s.spawn(counters::root_qdisc_stats);
        let guard = s.spawn(|| guarded.then(|| counters::guard_drops(&sets)));
        let firewall = s.spawn(|| read_firewall(firewalled));
        let links = counters::link_stats();
        let join = "reading counters does not panic";
        (
            links,
            qdiscs.join().expect(join),
            guard.join().expect(join),
            firewall.join().expect(join),
        )
    });
    let mut up = Vec::new();
    let read = Read {
        links: record(&mut up, "links", links),
        qdiscs: record(&mut up, "qdiscs", qdiscs),
        guard: guard.and_then(|g| record(&mut up, "guard", g)),
        firewall: record(&mut up, "firewall", firewall),
        firewall_ports: firewall_ports.and_then(|f| record(&mut up, "firewall_ports", f)),
        ports,
        up,
    };
    r.register_collector(Box::new(read));
}

/// One counter family: its descriptor, then a sample per label set.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (L, i64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn labels(p: &PortInfo) -> [(&'static str, &str); 3] {
    [
        ("network", p.network.as_str()),
        ("vm", p.vm.as_str()),
        ("port", p.port.as_str()),
    ]
}

fn with<'a>(p: &'a PortInfo, name: &'static str, value: &'a str) -> [(&'static str, &'a str); 4] {
    let [n, v, port] = labels(p);
    [n, v, port, (name, value)]
}

impl Collector for Read {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        if let Some(links) = &self.links {
            self.link_families(&mut enc, links)?;
            if let Some(q) = &self.qdiscs {
                self.shaping(&mut enc, links, q)?;
            }
        }
        if let Some(g) = &self.guard {
            self.guard_drops(&mut enc, g)?;
        }
        if let Some(f) = &self.firewall_ports {
            self.firewall_ports(&mut enc, f)?;
        }
        if let Some(f) = &self.firewall {
            self.firewall(&mut enc, f)?;
        }
        gauges(
            &mut enc,
            "scrape_source_up",
            "Whether the kernel's counters of this source could be read at this scrape",
            self.up
                .iter()
                .map(|(s, ok)| ([("source", *s)], i64::from(*ok))),
        )
    }
}

impl Read {
    fn link_families(&self, enc: &mut DescriptorEncoder, links: &Links) -> fmt::Result {
        let fams: [LinkFamily; 6] = [
            (
                "port_receive_bytes",
                "Bytes the host received on the port (sent by the VM)",
                |s| s.rx_bytes,
            ),
            (
                "port_transmit_bytes",
                "Bytes the host sent on the port (to the VM)",
                |s| s.tx_bytes,
            ),
            (
                "port_receive_packets",
                "Packets the host received on the port (sent by the VM)",
                |s| s.rx_packets,
            ),
            (
                "port_transmit_packets",
                "Packets the host sent on the port (to the VM)",
                |s| s.tx_packets,
            ),
            (
                "port_receive_drops",
                "Packets from the VM the port's device dropped",
                |s| s.rx_dropped,
            ),
            (
                "port_transmit_drops",
                "Packets to the VM the port's device dropped",
                |s| s.tx_dropped,
            ),
        ];
        for (name, help, value) in fams {
            let samples = self
                .ports
                .iter()
                .filter_map(|p| links.get(&p.port).map(|(_, s)| (labels(p), value(s))));
            counters(enc, name, help, samples)?;
        }
        Ok(())
    }

    /// Towards the VM: the port's own root qdisc; from it: its IFB's.
    fn shaping(
        &self,
        enc: &mut DescriptorEncoder,
        links: &Links,
        qdiscs: &HashMap<u32, Stats>,
    ) -> fmt::Result {
        let mut shaped = Vec::new();
        for p in self.ports.iter() {
            for (on, direction, dev) in [
                (p.shaped_in, "inbound", None),
                (p.shaped_out, "outbound", Some(ifb_name(&p.port))),
            ] {
                let dev = dev.as_deref().unwrap_or(&p.port);
                if let (true, Some(s)) = (on, links.get(dev).and_then(|(i, _)| qdiscs.get(i))) {
                    shaped.push((p, direction, *s));
                }
            }
        }
        counters(
            enc,
            "shaping_drops",
            "Packets the port's shaping dropped, by direction (inbound: to the VM)",
            shaped
                .iter()
                .map(|(p, d, s)| (with(p, "direction", d), u64::from(s.drops))),
        )?;
        counters(
            enc,
            "shaping_overlimits",
            "Times the port's shaping held packets back over its rate, by direction",
            shaped
                .iter()
                .map(|(p, d, s)| (with(p, "direction", d), u64::from(s.overlimits))),
        )
    }

    fn guard_drops(
        &self,
        enc: &mut DescriptorEncoder,
        sets: &[HashMap<String, u64>],
    ) -> fmt::Result {
        let samples = self
            .ports
            .iter()
            .filter(|p| !p.guarded.is_empty())
            .flat_map(|p| {
                GuardDropReason::ALL
                    .iter()
                    .zip(sets)
                    .map(move |(reason, set)| {
                        let n = p.guarded.iter().filter_map(|i| set.get(i)).sum();
                        (with(p, "reason", reason.word()), n)
                    })
            });
        counters(
            enc,
            "guard_drops",
            "Frames the guard (antispoof) dropped, by reason",
            samples,
        )
    }

    /// Every firewalled port's drops and rejects by direction, whether its chain is shared
    /// or its own: the sum of its elements in the counting sets (by its mark, and inbound by
    /// its addresses too).
    fn firewall_ports(
        &self,
        enc: &mut DescriptorEncoder,
        sets: &[HashMap<u128, u64>],
    ) -> fmt::Result {
        let mut rows = Vec::new();
        for p in self.ports.iter() {
            let Some(fw) = &p.firewall else { continue };
            for (inbound, on, direction) in [
                (true, fw.inbound, "inbound"),
                (false, fw.outbound, "outbound"),
            ] {
                if !on {
                    continue;
                }
                let mut d = Dropped::default();
                for (&(i, reject, key), set) in FW_SETS.iter().zip(sets) {
                    if i != inbound {
                        continue;
                    }
                    let n: u64 = match key {
                        // Keys as the kernel keeps them: a mark in host order, addresses in
                        // network order.
                        CountedBy::Mark => set.get(&raw_key(&fw.mark.to_ne_bytes())).copied(),
                        CountedBy::Ipv4 => fw
                            .ipv4
                            .and_then(|a| set.get(&raw_key(&a.octets())).copied()),
                        CountedBy::Ipv6 => Some(
                            fw.ipv6
                                .iter()
                                .filter_map(|a| set.get(&raw_key(&a.octets())))
                                .sum(),
                        ),
                    }
                    .unwrap_or(0);
                    if reject {
                        d.rejects += n;
                    } else {
                        d.drops += n;
                    }
                }
                rows.push((with(p, "direction", direction), d));
            }
        }
        counters(
            enc,
            "firewall_drops",
            "Packets the port's firewall dropped, by direction (inbound: to the VM)",
            rows.iter().map(|(l, d)| (*l, d.drops)),
        )?;
        counters(
            enc,
            "firewall_rejects",
            "Packets the port's firewall rejected, by direction (inbound: to the VM)",
            rows.iter().map(|(l, d)| (*l, d.rejects)),
        )
    }

    /// Per shared chain: what the ports of one policy dropped and rejected together.
    fn firewall(
        &self,
        enc: &mut DescriptorEncoder,
        chains: &HashMap<String, Dropped>,
    ) -> fmt::Result {
        let shared: Vec<_> = chains
            .iter()
            .filter_map(|(c, d)| {
                let direction = if c.starts_with("fw-in-") {
                    "inbound"
                } else if c.starts_with("fw-out-") {
                    "outbound"
                } else {
                    return None;
                };
                Some(([("policy", c.as_str()), ("direction", direction)], *d))
            })
            .collect();
        counters(
            enc,
            "firewall_policy_drops",
            "Packets dropped by a firewall policy chain shared by ports with the same rules",
            shared.iter().map(|(l, d)| (*l, d.drops)),
        )?;
        counters(
            enc,
            "firewall_policy_rejects",
            "Packets rejected by a firewall policy chain shared by ports with the same rules",
            shared.iter().map(|(l, d)| (*l, d.rejects)),
        )
    }
}

/// The DHCP server's counters and pools, copied under its lock.
#[derive(Debug)]
struct Dhcp(Vec<NetworkStats>);

/// Registers the per-network DHCP series: requests by message type, NAKs, the pool's size
/// and free addresses.
pub(super) fn dhcp(r: &mut Registry, h: &ServerHandle) {
    r.register_collector(Box::new(Dhcp(h.network_stats())));
}

impl Collector for Dhcp {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let net = |n: &NetworkStats| [("network", n.network.clone())];
        let requests = self.0.iter().flat_map(|n| {
            n.counters
                .by_type()
                .map(|(ty, v)| ([("network", n.network.as_str()), ("type", ty)], v))
        });
        counters(
            &mut enc,
            "dhcp_requests",
            "DHCPv4 messages received from clients, by message type",
            requests,
        )?;
        counters(
            &mut enc,
            "dhcp_naks",
            "DHCPNAKs sent",
            self.0.iter().map(|n| (net(n), n.counters.nak)),
        )?;
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauges(
            &mut enc,
            "dhcp_pool_addresses",
            "Addresses in the network's DHCP range (0: no pool)",
            self.0.iter().map(|n| (net(n), count(n.pool_size))),
        )?;
        gauges(
            &mut enc,
            "dhcp_pool_free_addresses",
            "Addresses of the DHCP pool free to hand out",
            self.0.iter().map(|n| (net(n), count(n.pool_free))),
        )
    }
}

/// The DNS service's per-network counters, copied under its lock.
#[derive(Debug)]
struct Dns(Vec<crate::dns::NetworkStats>);

/// Registers the per-network DNS series: queries, how they were answered, cache hits.
pub(super) fn dns(r: &mut Registry, h: &crate::dns::ServerHandle) {
    r.register_collector(Box::new(Dns(h.network_stats())));
}

impl Collector for Dns {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let net = |n: &crate::dns::NetworkStats| [("network", n.network.clone())];
        counters(
            &mut enc,
            "dns_queries",
            "DNS queries received from guests (UDP and TCP)",
            self.0.iter().map(|n| (net(n), n.counters.queries)),
        )?;
        counters(
            &mut enc,
            "dns_cache_hits",
            "DNS queries answered from the cache of forwarded answers",
            self.0.iter().map(|n| (net(n), n.counters.cache_hits)),
        )?;
        let outcomes = self.0.iter().flat_map(|n| {
            let c = &n.counters;
            [
                ("local", c.local),
                ("cache", c.cache_hits),
                ("forwarded", c.forwarded),
                ("failed", c.failed),
                ("rate_limited", c.dropped_rate),
                ("too_many_pending", c.dropped_pending),
            ]
            .map(|(how, v)| ([("network", n.network.as_str()), ("outcome", how)], v))
        });
        counters(
            &mut enc,
            "dns_answers",
            "DNS queries by outcome: answered from the network's names, from the cache, forwarded upstream, failed (SERVFAIL or REFUSED), or dropped",
            outcomes,
        )
    }
}

#[derive(Debug)]
struct Dhcp6(Vec<crate::dhcp::v6::NetworkStats6>);

/// Registers the per-network DHCPv6 series: requests by message type, the pool's size and
/// free addresses (both saturate at 2^63: a range6 may span a /64).
pub(super) fn dhcp6(r: &mut Registry, h: &crate::dhcp::v6::ServerHandle6) {
    r.register_collector(Box::new(Dhcp6(h.network_stats())));
}

impl Collector for Dhcp6 {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let net = |n: &crate::dhcp::v6::NetworkStats6| [("network", n.network.clone())];
        let requests = self.0.iter().flat_map(|n| {
            n.counters
                .by_type()
                .map(|(ty, v)| ([("network", n.network.as_str()), ("type", ty)], v))
        });
        counters(
            &mut enc,
            "dhcp6_requests",
            "DHCPv6 messages received from clients, by message type",
            requests,
        )?;
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        gauges(
            &mut enc,
            "dhcp6_pool_addresses",
            "Addresses in the network's DHCPv6 range (0: no pool)",
            self.0.iter().map(|n| (net(n), count(n.pool_size))),
        )?;
        gauges(
            &mut enc,
            "dhcp6_pool_free_addresses",
            "Addresses of the DHCPv6 pool free to hand out",
            self.0.iter().map(|n| (net(n), count(n.pool_free))),
        )
    }
}
