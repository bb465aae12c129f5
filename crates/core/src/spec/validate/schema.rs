//! A JSON Schema (draft-07, what YAML language servers read) of the spec, made from the
//! validator's own model: each object's keys are the field lists the readers check unknown
//! keys against, enumerations come from the model's types (modes, bond modes, hash policies,
//! ICMP types) and the limits from the readers' constants, and each mode's row of the field
//! grid ([`crate::modes::Fields`]) says which network keys that mode requires or refuses.
//! The value shapes (a string, a number in a range, a list of addresses) are written here,
//! one per key; [`build`] reports a key of a field list with no shape, or a shape for a key
//! the readers do not take, so the two cannot drift apart unnoticed (a unit test runs it).
//!
//! The schema checks shape, not meaning: overlapping subnets, unknown uplinks or a range
//! outside its network are for `kvmnet validate`.

use serde_json::{Map, Value, json};

use super::policy::{
    DIRECTION_FIELDS, FIREWALL_FIELDS, ICMP_TYPES, QOS_FIELDS, RULE_FIELDS, SHAPE_FIELDS,
};
use super::*;
use crate::modes::{self, Take};
use crate::spec::model::BondMode;

/// The spec's JSON Schema.
pub fn json_schema() -> Value {
    build().0
}

/// The schema and every mismatch between the shapes written here and the readers' field
/// lists (empty when they agree).
pub(crate) fn build() -> (Value, Vec<String>) {
    let mut s = Shapes::default();
    let network = s.network();
    let vm = s.vm();
    let host = s.host();
    let ovn = s.ovn();
    let top = s.object(
        "the spec",
        TOP_FIELDS,
        vec![
            (
                "version",
                json!({"const": 1, "description": "The spec format's version: 1."}),
            ),
            ("host", host),
            ("networks", names_to(network, "Network name -> network.")),
            ("vms", names_to(vm, "VM name -> VM.")),
            ("ovn", ovn),
        ],
        &["version"],
    );
    let mut schema = json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": "https://kvmnet.invalid/schema/spec-v1.json",
        "title": "kvmnet spec",
        "description": "Declarative networking for a KVM host: its virtual networks and every VM port on them.",
    });
    merge(&mut schema, top);
    (schema, s.mismatches)
}

/// Collects the shapes of each object and what does not match the readers' field lists.
#[derive(Default)]
struct Shapes {
    mismatches: Vec<String>,
}

impl Shapes {
    /// An object taking exactly `fields` (the reader's list), each with its shape.
    fn object(
        &mut self,
        what: &str,
        fields: &[&str],
        shapes: Vec<(&str, Value)>,
        required: &[&str],
    ) -> Value {
        let mut props = Map::new();
        for (k, v) in shapes {
            if !fields.contains(&k) {
                self.mismatches.push(format!(
                    "{what}: shape for '{k}', which the reader does not take"
                ));
            }
            props.insert(k.to_string(), v);
        }
        for f in fields {
            if !props.contains_key(*f) {
                self.mismatches.push(format!(
                    "{what}: the reader takes '{f}' but it has no shape"
                ));
            }
        }
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": props,
            "required": required,
        })
    }

    fn host(&mut self) -> Value {
        let ethtool = self.ethtool();
        let uplink = self.object(
            "an uplink",
            UPLINK_FIELDS,
            vec![
                (
                    "mode",
                    enumeration(BondMode::ALL.iter().map(|m| m.as_str())),
                ),
                ("members", list_of(ifname())),
                ("lacp_rate", enumeration(LACP_RATES)),
                ("xmit_hash_policy", enumeration(XMIT_HASH_POLICIES)),
                ("miimon", int(1, 60_000)),
                ("min_links", int(0, 1024)),
                ("primary", ifname()),
                ("mtu", int(MTU_MIN, MTU_MAX)),
                ("ethtool", ethtool),
            ],
            &[],
        );
        let sysctl = json!({
            "type": "object",
            "description": "Dotted sysctl key -> value, enforced; restored on destroy.",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
        });
        self.object(
            "host",
            HOST_FIELDS,
            vec![
                ("sysctl", sysctl),
                ("tuning", enumeration(["throughput", "latency", "default"])),
                ("backend", backend()),
                (
                    "uplinks",
                    names_to(
                        uplink,
                        "Interface name -> a bond kvmnet builds, or a NIC it tunes.",
                    ),
                ),
            ],
            &[],
        )
    }

    fn network(&mut self) -> Value {
        let dhcp = self.dhcp();
        let dns = self.dns();
        let forward = self.object(
            "a forward",
            FORWARD_FIELDS,
            vec![
                ("proto", enumeration(["tcp", "udp"])),
                ("port", int(1, 65535)),
                (
                    "to",
                    string("The VM whose first port on this network gets the traffic."),
                ),
                ("to_port", int(1, 65535)),
            ],
            &["proto", "port", "to"],
        );
        let nat = self.object(
            "nat",
            NAT_FIELDS,
            vec![
                ("egress", ifname()),
                (
                    "ipv6",
                    json!({"type": "boolean", "description": "Masquerade IPv6 leaving the host (NAT66); default true."}),
                ),
            ],
            &[],
        );
        let ra = self.object(
            "ra",
            ipv6::RA_FIELDS,
            vec![
                ("mode", enumeration(["slaac", "dhcpv6", "slaac+dhcpv6"])),
                ("lifetime", duration()),
            ],
            &[],
        );
        let rule = self.rule();
        let modes = modes::ALL.iter().map(|m| m.as_str());
        let mut net = self.object(
            "a network",
            NET_FIELDS,
            vec![
                ("mode", enumeration(modes)),
                ("bridge", ifname()),
                (
                    "ipv4",
                    cidr4("The gateway's address on the bridge, with the subnet's prefix."),
                ),
                ("mtu", int(MTU_MIN, MTU_MAX)),
                ("uplink", ifname()),
                ("nat", nat),
                ("dhcp", dhcp),
                ("isolate_ports", boolean()),
                ("forwards", list_of(forward)),
                ("vni", int(1, VNI_MAX)),
                ("underlay", ifname()),
                ("remotes", list_of(ipv4())),
                ("group", ipv4()),
                ("port", int(1, 65535)),
                ("bandwidth", rate()),
                (
                    "direct_mode",
                    enumeration(DIRECT_MODES.replace(" or", ",").split(", ")),
                ),
                ("vlan", int(1, VLAN_ID_MAX.into())),
                ("host_access", list_of(rule)),
                (
                    "ipv6_prefixes",
                    list_of(string("An IPv6 prefix, like 2001:db8:7::/64.")),
                ),
                (
                    "ipv6",
                    string("The gateway's IPv6 address on the bridge with the network's prefix, like fd00:122::1/64."),
                ),
                ("ra", ra),
                ("dns", dns),
                ("backend", backend()),
            ],
            &["mode"],
        );
        merge(&mut net, json!({"allOf": mode_rows()}));
        net
    }

    fn dhcp(&mut self) -> Value {
        let route = self.object(
            "a DHCP route",
            ROUTE_FIELDS,
            vec![("to", cidr4("The destination network.")), ("via", ipv4())],
            &["to", "via"],
        );
        self.object(
            "dhcp",
            DHCP_FIELDS,
            vec![
                (
                    "range",
                    string("First-last address of the pool, like 192.168.122.100-192.168.122.254."),
                ),
                ("pool", boolean()),
                ("lease_time", duration()),
                ("dns", list_of(ipv4())),
                ("domain", string("The domain name handed to clients.")),
                ("routes", list_of(route)),
                (
                    "range6",
                    string("First-last address of the DHCPv6 pool, like fd00:122::1000-fd00:122::1fff."),
                ),
                ("dns6", list_of(string("An IPv6 address."))),
            ],
            &[],
        )
    }

    fn dns(&mut self) -> Value {
        let addr = string("An IPv4 or IPv6 address.");
        self.object(
            "dns",
            super::dns::DNS_FIELDS,
            vec![
                (
                    "domain",
                    string("VM names and records answer under it, like vm.test."),
                ),
                ("forwarders", list_of(addr.clone())),
                (
                    "records",
                    json!({
                        "type": "object",
                        "description": "Name -> an address or a list of addresses.",
                        "additionalProperties": {"anyOf": [addr.clone(), list_of(addr)]},
                    }),
                ),
                (
                    "rate_limit",
                    json!({"type": ["integer", "string"], "description": "Queries per second per client, like 500/second."}),
                ),
            ],
            &[],
        )
    }

    fn ovn(&mut self) -> Value {
        let chassis = self.object(
            "a chassis",
            ovn::CHASSIS_FIELDS,
            vec![
                ("encap_ip", ipv4()),
                ("gateway", int(1, 32767)),
                (
                    "ovs",
                    remote("This chassis's Open_vSwitch database, when not ovn.ovs."),
                ),
            ],
            &["encap_ip"],
        );
        let external = self.object(
            "ovn.external",
            ovn::EXTERNAL_FIELDS,
            vec![
                ("uplink", ifname()),
                (
                    "ipv4",
                    cidr4("The gateway router's address on the external network."),
                ),
                ("next_hop", ipv4()),
                (
                    "ipv6",
                    string("The gateway router's IPv6 address on the external network, with its prefix: the nat networks' IPv6 SNAT source (with next_hop6)."),
                ),
                ("next_hop6", string("The external network's IPv6 router (with ipv6).")),
            ],
            &["uplink", "ipv4", "next_hop"],
        );
        let ssl = self.object(
            "ovn.ssl",
            ovn::SSL_FIELDS,
            vec![
                (
                    "private_key",
                    string("This host's private key (PEM): the same path on every host."),
                ),
                ("certificate", string("This host's certificate (PEM).")),
                (
                    "ca_cert",
                    string("The CA certificate the databases' certificates are signed by (PEM)."),
                ),
            ],
            &["private_key", "certificate", "ca_cert"],
        );
        self.object(
            "ovn",
            ovn::OVN_FIELDS,
            vec![
                (
                    "nb",
                    remote(
                        "The Northbound database (a list, or a comma-separated one: a cluster).",
                    ),
                ),
                (
                    "sb",
                    remote("The Southbound database, written into each chassis's ovn-remote."),
                ),
                ("ovs", remote("This host's Open_vSwitch database.")),
                ("datapath", enumeration(ovn::DATAPATHS.iter().copied())),
                ("encap", enumeration(ovn::ENCAPS.iter().copied())),
                ("underlay_mtu", int(1280, 65535)),
                ("chassis", names_to(chassis, "Chassis name -> chassis.")),
                ("external", external),
                ("ssl", ssl),
            ],
            &["nb", "sb", "chassis"],
        )
    }

    fn vm(&mut self) -> Value {
        let port = self.port();
        self.object(
            "a VM",
            VM_FIELDS,
            vec![
                ("ports", list_of(port)),
                (
                    "host",
                    string("The chassis (a name under ovn.chassis) the VM runs on: where its ports on OVN networks are bound."),
                ),
            ],
            &["ports"],
        )
    }

    fn port(&mut self) -> Value {
        let firewall = self.firewall();
        let qos = self.qos();
        let ethtool = self.ethtool();
        self.object(
            "a port",
            PORT_FIELDS,
            vec![
                ("network", string("The network the port is on.")),
                ("name", ifname()),
                ("kind", enumeration(["tap", "veth"])),
                ("mac", mac()),
                ("ipv4", string("The VM's address (with its prefix on bridge networks).")),
                (
                    "ipv6",
                    string("A static IPv6 address inside the network's prefix, like fd00:122::10."),
                ),
                ("owner", json!({"type": ["string", "integer"], "description": "User name or uid allowed to open the tap."})),
                ("queues", int(1, QUEUES_MAX)),
                ("netns", string("veth: the namespace that gets the far end.")),
                ("antispoof", boolean()),
                ("dhcp_client", boolean()),
                ("firewall", firewall),
                ("qos", qos),
                ("mirror", ifname()),
                ("ethtool", ethtool),
                ("vlans", list_of(int(1, VLAN_ID_MAX.into()))),
            ],
            &["network"],
        )
    }

    fn firewall(&mut self) -> Value {
        let rule = self.rule();
        let direction = self.object(
            "a firewall direction",
            DIRECTION_FIELDS,
            vec![
                ("policy", enumeration(["accept", "drop"])),
                ("rules", list_of(rule)),
            ],
            &[],
        );
        self.object(
            "firewall",
            FIREWALL_FIELDS,
            vec![("inbound", direction.clone()), ("outbound", direction)],
            &[],
        )
    }

    fn rule(&mut self) -> Value {
        let port = json!({"type": ["integer", "string"], "description": "A port, or a range like \"8000-8100\"."});
        self.object(
            "a rule",
            RULE_FIELDS,
            vec![
                ("proto", enumeration(["tcp", "udp", "icmp", "any"])),
                ("ports", list_of(port)),
                ("from", string("An IPv4 or IPv6 address or network.")),
                ("to", string("An IPv4 or IPv6 address or network.")),
                (
                    "icmp_types",
                    list_of(enumeration(ICMP_TYPES.iter().copied())),
                ),
                ("connlimit", int(1, 1_000_000)),
                ("rate", string("Packets per unit, like 10/second.")),
                ("action", enumeration(["accept", "drop", "reject"])),
                ("log", boolean()),
            ],
            &[],
        )
    }

    fn qos(&mut self) -> Value {
        let shape = self.object(
            "a shaping direction",
            SHAPE_FIELDS,
            vec![
                ("rate", rate()),
                ("ceil", rate()),
                ("burst", json!({"type": ["string", "integer"]})),
            ],
            &["rate"],
        );
        self.object(
            "qos",
            QOS_FIELDS,
            vec![
                ("inbound", shape.clone()),
                ("outbound", shape),
                ("floor", rate()),
            ],
            &[],
        )
    }

    fn ethtool(&mut self) -> Value {
        let offloads = self.object(
            "offloads",
            OFFLOAD_FIELDS,
            OFFLOAD_FIELDS.iter().map(|k| (*k, boolean())).collect(),
            &[],
        );
        let rings = self.object(
            "rings",
            RING_FIELDS,
            RING_FIELDS.iter().map(|k| (*k, int(1, RING_MAX))).collect(),
            &[],
        );
        let channels = self.object(
            "channels",
            CHANNEL_FIELDS,
            CHANNEL_FIELDS
                .iter()
                .map(|k| (*k, int(1, CHANNEL_MAX)))
                .collect(),
            &[],
        );
        self.object(
            "ethtool",
            ETHTOOL_FIELDS,
            vec![
                ("offloads", offloads),
                ("rings", rings),
                ("channels", channels),
            ],
            &[],
        )
    }
}

/// One `if mode is M then ...` per mode, from its row of the field grid: what it requires,
/// and what it refuses (its own refusals, other modes' own keys, and the keys of a network
/// the host routes on one it does not).
fn mode_rows() -> Vec<Value> {
    modes::ALL
        .iter()
        .map(|m| {
            let row = m.behaviour().fields();
            let grid = [
                ("bridge", row.bridge),
                ("ipv4", row.ipv4),
                ("uplink", row.uplink),
                ("dhcp", row.dhcp),
                ("isolate_ports", row.isolate_ports),
                ("ipv6_prefixes", row.ipv6_prefixes),
                ("ipv6", row.ipv6),
                ("ra", row.ipv6),
            ];
            let required: Vec<&str> = grid
                .iter()
                .filter(|(_, t)| matches!(t, Take::Required(_)))
                .map(|(k, _)| *k)
                .collect();
            let mut refused: Vec<&str> = grid
                .iter()
                .filter(|(_, t)| matches!(t, Take::Refused(_) | Take::Elsewhere))
                .map(|(k, _)| *k)
                .collect();
            for other in modes::ALL.iter().filter(|o| *o != m) {
                let own = other.behaviour().fields().own;
                refused.extend(own.iter().filter(|k| !row.own.contains(k)));
            }
            if !row.routed_by_host {
                refused.extend(["bandwidth", "host_access", "dns"]);
            }
            refused.sort_unstable();
            refused.dedup();
            let forbid: Vec<Value> = refused.iter().map(|k| json!({"required": [k]})).collect();
            json!({
                "if": {"properties": {"mode": {"const": m.as_str()}}, "required": ["mode"]},
                "then": {"required": required, "not": {"anyOf": forbid}},
            })
        })
        .collect()
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        a.extend(b);
    }
}

fn names_to(value: Value, description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "propertyNames": {"pattern": "^[A-Za-z0-9_.-]+$", "maxLength": NAME_MAX},
        "additionalProperties": value,
    })
}

fn enumeration<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    json!({"type": "string", "enum": values.into_iter().collect::<Vec<_>>()})
}

fn list_of(item: Value) -> Value {
    json!({"type": "array", "items": item})
}

fn int(lo: i128, hi: i128) -> Value {
    json!({"type": "integer", "minimum": lo, "maximum": hi})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn string(description: &str) -> Value {
    json!({"type": "string", "description": description})
}

fn backend() -> Value {
    json!({"type": "string", "enum": ovn::BACKENDS, "description": "kernel (this host's bridges) or ovn (OVN's logical switches)."})
}

fn remote(description: &str) -> Value {
    let one = string(&format!(
        "{description} unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT."
    ));
    json!({"anyOf": [one, {"type": "array", "items": {"type": "string"}, "minItems": 1}]})
}

fn ifname() -> Value {
    json!({"type": "string", "description": "An interface name (at most 15 characters).", "maxLength": 15})
}

fn ipv4() -> Value {
    json!({"type": "string", "description": "An IPv4 address.", "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$"})
}

fn cidr4(description: &str) -> Value {
    json!({"type": "string", "description": description, "pattern": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$"})
}

fn mac() -> Value {
    json!({"type": "string", "description": "A MAC address, like 52:54:00:aa:00:10.", "pattern": "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$"})
}

fn rate() -> Value {
    json!({"type": "string", "description": "A rate with its unit, like 100mbit or 1gbit."})
}

fn duration() -> Value {
    json!({"type": ["integer", "string"], "description": "Seconds, or 30m / 1h / 1d."})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_readers_take_has_a_shape_and_no_other() {
        let (_, mismatches) = build();
        assert!(mismatches.is_empty(), "{mismatches:#?}");
    }

    #[test]
    fn each_mode_row_requires_and_refuses_from_the_grid() {
        let (schema, _) = build();
        let rows = &schema["properties"]["networks"]["additionalProperties"]["allOf"];
        let bridge = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["if"]["properties"]["mode"]["const"] == "bridge")
            .unwrap();
        assert_eq!(bridge["then"]["required"], json!(["uplink"]));
        let refused = bridge["then"]["not"]["anyOf"].to_string();
        for k in [
            "ipv4",
            "dhcp",
            "nat",
            "forwards",
            "vni",
            "vlan",
            "direct_mode",
            "host_access",
        ] {
            assert!(refused.contains(&format!("\"{k}\"")), "{k}: {refused}");
        }
        assert!(!refused.contains("\"isolate_ports\""), "{refused}");
    }
}
