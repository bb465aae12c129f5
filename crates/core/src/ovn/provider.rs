//! Provider networks: `bridge` and `vlan` networks on OVN. Such a network is a logical
//! switch with a localnet port (tagged with the VLAN id on a `vlan` network) on the physical
//! network of its uplink; each chassis holds that uplink in an Open vSwitch bridge of its own
//! and maps the physical network to it (`ovn-bridge-mappings`). Guests leave by the uplink
//! of the chassis they run on, not by a tunnel: their frames are on the physical segment.
//!
//! The physical network is named after the uplink, not the network, so every network on one
//! uplink (the untagged `bridge` one and each VLAN) shares one bridge per chassis, as the
//! VLANs of one trunk share one wire.

use std::collections::BTreeSet;

use super::{NbParent, NbRow, NbVal};
use crate::spec::model::{Mode, Network};
use crate::spec::ovn::Ovn;

/// What every provider physical network's name starts with. A chassis's
/// `ovn-bridge-mappings` entries of this prefix (and [`crate::spec::ovn::EXTERNAL_PHYSNET`])
/// are kvmnet's: those no longer wanted are taken out, others' are left.
pub const PHYSNET_PREFIX: &str = "kvmnet-pn-";

/// Whether `net` is a provider network: its guests are on its uplink's segment.
pub fn is_provider(net: &Network) -> bool {
    matches!(net.mode, Mode::Bridge | Mode::Vlan)
}

/// The interface a provider network leaves by on every chassis.
pub fn uplink_of(net: &Network) -> Option<&str> {
    match net.mode {
        Mode::Bridge => net.uplink.as_deref(),
        Mode::Vlan => net.vlan.as_ref().map(|v| v.uplink.as_str()),
        _ => None,
    }
}

/// The physical network of `uplink`.
pub fn physnet(uplink: &str) -> String {
    format!("{PHYSNET_PREFIX}{uplink}")
}

/// The Open vSwitch bridge holding `uplink` on each chassis: `kvpn-UPLINK`, shortened with
/// a hash when that exceeds an interface name (the bridge's internal port is one).
pub fn bridge(uplink: &str) -> String {
    crate::spec::naming::fit("kvpn-", uplink)
}

/// The uplinks of the spec's provider networks: each chassis holds every one of them.
pub fn uplinks(ovn: &Ovn) -> BTreeSet<String> {
    ovn.networks
        .values()
        .filter_map(uplink_of)
        .map(String::from)
        .collect()
}

/// The localnet port's key and name on network `net`.
pub fn localnet_name(net: &str) -> String {
    format!("kvmnet-ln-{net}")
}

/// A provider network's localnet port: `unknown` addresses (every MAC of the segment is
/// behind it), on its uplink's physical network, tagged on a `vlan` network.
pub fn localnet_port(net: &Network) -> Option<NbRow> {
    let uplink = uplink_of(net)?;
    let name = localnet_name(&net.name);
    let tag = net.vlan.as_ref().map(|v| NbVal::Int(i64::from(v.id)));
    let columns = [
        ("name", NbVal::str(&name)),
        ("type", NbVal::str("localnet")),
        ("addresses", NbVal::strs(["unknown"])),
        ("port_security", NbVal::strs::<&str>([])),
        ("options", NbVal::map([("network_name", physnet(uplink))])),
        ("dhcpv4_options", NbVal::set([])),
        ("dhcpv6_options", NbVal::set([])),
        ("tag", NbVal::set(tag)),
    ];
    Some(NbRow {
        table: "Logical_Switch_Port".into(),
        key: name,
        columns: columns
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        parent: Some(NbParent {
            table: "Logical_Switch".into(),
            key: net.name.clone(),
            column: "ports".into(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::model::{chassis_conf, rows};
    use crate::spec::{HostIdentity, parse};

    const SPEC: &str = r#"version: 1
ovn:
  nb: tcp:192.0.2.1:6641
  sb: tcp:192.0.2.1:6642
  chassis:
    hv1: { encap_ip: 192.0.2.11 }
    hv2: { encap_ip: 192.0.2.12 }
networks:
  lan:
    backend: ovn
    mode: bridge
    uplink: eth1
  v100:
    backend: ovn
    mode: vlan
    uplink: eth1
    vlan: 100
    ipv4: 198.51.100.1/24
    dhcp: { range: 198.51.100.100-198.51.100.110 }
  v200:
    backend: ovn
    mode: vlan
    uplink: enp129s0f1np1
    vlan: 200
vms:
  a:
    host: hv1
    ports:
      - { network: v100, name: pa, mac: "52:54:00:00:00:0a", ipv4: 198.51.100.10 }
"#;

    fn row<'a>(rows: &'a [NbRow], key: &str) -> &'a NbRow {
        rows.iter()
            .find(|r| r.table == "Logical_Switch_Port" && r.key == key)
            .unwrap_or_else(|| panic!("no port {key}"))
    }

    #[test]
    fn localnet_ports_share_a_physnet_per_uplink_and_vlan_ones_are_tagged() {
        let mut spec = parse(SPEC, &HostIdentity::default()).expect("valid");
        let ovn = spec.ovn.as_mut().expect("ovn");
        ovn.local = Some("hv2".into());
        let rows = rows(ovn);
        let lan = row(&rows, "kvmnet-ln-lan");
        let v100 = row(&rows, "kvmnet-ln-v100");
        assert_eq!(lan.columns["type"], NbVal::str("localnet"));
        assert_eq!(lan.columns["addresses"], NbVal::strs(["unknown"]));
        assert_eq!(lan.columns["tag"], NbVal::Set(Vec::new()));
        assert_eq!(v100.columns["tag"], NbVal::set([NbVal::Int(100)]));
        // One physical network for both networks on eth1.
        assert_eq!(lan.columns["options"], v100.columns["options"]);
        assert_eq!(
            lan.columns["options"],
            NbVal::map([("network_name", "kvmnet-pn-eth1")])
        );
        // No router on a provider network: OVN's DHCP answers from ipv4, names no router,
        // and hands out the segment's MTU (no tunnel).
        assert!(!rows.iter().any(|r| r.table.starts_with("Logical_Router")));
        let dhcp = rows
            .iter()
            .find(|r| r.table == "DHCP_Options" && r.key == "v100")
            .expect("dhcp");
        let NbVal::Map(o) = &dhcp.columns["options"] else {
            panic!()
        };
        assert_eq!(o["server_id"], "198.51.100.1");
        assert_eq!(o["mtu"], "1500");
        assert!(!o.contains_key("router"));
        // Every chassis (not only a gateway) holds every provider uplink.
        let c = chassis_conf(ovn).expect("hv2 is a chassis");
        assert_eq!(
            c.provider_uplinks.iter().collect::<Vec<_>>(),
            ["enp129s0f1np1", "eth1"]
        );
        assert_eq!(c.gateway_uplink, None);
    }

    #[test]
    fn bridge_names_fit_an_interface_name() {
        assert_eq!(bridge("eth1"), "kvpn-eth1");
        let long = bridge("enp129s0f1np1");
        assert!(long.len() <= 15 && long.starts_with("kvpn-"), "{long}");
        assert_ne!(long, bridge("enp129s0f1np2"));
    }

    /// A port on a provider network with `ipv6_prefixes` lists its SLAAC address in each:
    /// the LAN's router announces them, and port security would drop the address otherwise.
    #[test]
    fn provider_ports_list_their_slaac_addresses_in_the_lans_prefixes() {
        let text = SPEC.replace(
            "    uplink: eth1\n  v100:",
            "    uplink: eth1\n    ipv6_prefixes: [\"2001:db8:1::/64\"]\n  v100:",
        ) + "      - { network: lan, name: pl, mac: \"52:54:00:00:00:0b\" }\n";
        let mut spec = parse(&text, &HostIdentity::default()).expect("valid");
        let ovn = spec.ovn.as_mut().expect("ovn");
        ovn.local = Some("hv1".into());
        let rows = rows(ovn);
        let want = NbVal::strs(["52:54:00:00:00:0b 2001:db8:1:0:5054:ff:fe00:b"]);
        assert_eq!(row(&rows, "pl").columns["addresses"], want);
        assert_eq!(row(&rows, "pl").columns["port_security"], want);
        // Without prefixes, a provider port lists no IPv6 address of its own.
        assert_eq!(
            row(&rows, "pa").columns["addresses"],
            NbVal::strs(["52:54:00:00:00:0a 198.51.100.10"])
        );
    }
}
