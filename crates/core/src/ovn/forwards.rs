//! nat networks' `forwards` as Northbound rows: one `Load_Balancer` per protocol on the
//! router `kvmnet`, each forward a VIP `external.ipv4:port` going to `VM_ADDRESS:to_port`,
//! and, with `external.ipv6` and a VM port that declares `ipv6`, `[external.ipv6]:port`
//! going to `[VM_IPV6]:to_port`. Pure, like [`super::model`].
//!
//! A load balancer rather than a `dnat_and_snat` NAT row: NAT rows translate addresses
//! only, so `2222 -> 22` could not be said, and a `dnat_and_snat` of `external.ipv4` would
//! take every port of the address (the SNAT source of all guests) to one VM. A VIP is one
//! address and port: other ports of `external.ipv4` stay the router's, as the kernel
//! backend forwards only the ports written. On a router with a distributed gateway port,
//! OVN applies the load balancer on the active gateway chassis and sends the replies back
//! there to be translated, so the forward moves with the gateway on failover. The client's
//! address is kept (no SNAT), as the kernel backend's DNAT keeps it.
//!
//! Guests reach the forwards at `external.ipv4` too (hairpin) with nothing more: their
//! packet is routed to the gateway port like any packet to an outside address, leaves by
//! the SNAT on the active gateway chassis and comes back to the load balancer there, so the
//! guest reached sees `external.ipv4` as the client, and a guest reaching its own forward
//! works as well (tests/ovn_forwards.rs). So the router needs no `lb_force_snat_ip`,
//! which would hide outside clients' addresses too.

use std::collections::BTreeMap;

use super::{NbParent, NbRow, NbVal};
use crate::spec::model::{Mode, Proto};
use crate::spec::ovn::Ovn;

/// The load balancer holding the forwards of `proto`: its key and name.
pub fn lb_name(proto: Proto) -> String {
    format!("kvmnet-fwd-{}", proto.as_str())
}

/// The load balancers of every nat network's forwards, on the router `kvmnet`; none
/// without `ovn.external` (validation refuses a nat network without it).
pub fn rows(ovn: &Ovn) -> Vec<NbRow> {
    let Some(ext) = &ovn.external else {
        return Vec::new();
    };
    let mut vips: BTreeMap<Proto, BTreeMap<String, String>> = BTreeMap::new();
    for net in ovn.networks.values().filter(|n| n.mode == Mode::Nat) {
        for f in &net.forwards {
            let lb = vips.entry(f.proto).or_default();
            lb.insert(
                format!("{}:{}", ext.ipv4.addr, f.port),
                format!("{}:{}", f.to_ip, f.to_port),
            );
            // Over IPv6 too, to the port's declared `ipv6`, as the kernel backend forwards.
            if let (Some((ext6, _)), Some(to6)) = (ext.ipv6, f.to_ip6) {
                lb.insert(
                    format!("[{}]:{}", ext6.addr, f.port),
                    format!("[{to6}]:{}", f.to_port),
                );
            }
        }
    }
    vips.into_iter()
        .map(|(proto, vips)| {
            let name = lb_name(proto);
            NbRow {
                table: "Load_Balancer".into(),
                key: name.clone(),
                columns: [
                    ("name", NbVal::str(&name)),
                    ("vips", NbVal::Map(vips)),
                    ("protocol", NbVal::strs([proto.as_str()])),
                    ("options", NbVal::map::<&str, &str>([])),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                parent: Some(NbParent {
                    table: "Logical_Router".into(),
                    key: super::model::ROUTER.into(),
                    column: "load_balancer".into(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{HostIdentity, parse};

    const SPEC: &str = r#"version: 1
ovn:
  nb: unix:/run/ovn/ovnnb_db.sock
  sb: unix:/run/ovn/ovnsb_db.sock
  chassis:
    hv1: { encap_ip: 192.0.2.11, gateway: 1 }
  external: { uplink: eth1, ipv4: 198.51.100.2/24, next_hop: 198.51.100.1 }
networks:
  web:
    backend: ovn
    mode: nat
    ipv4: 10.80.0.1/24
    forwards:
      - { proto: tcp, port: 2222, to: a, to_port: 22 }
      - { proto: tcp, port: 8080, to: b, to_port: 80 }
      - { proto: udp, port: 5353, to: a, to_port: 53 }
vms:
  a:
    host: hv1
    ports: [ { network: web, ipv4: 10.80.0.10 } ]
  b:
    host: hv1
    ports: [ { network: web, ipv4: 10.80.0.11 } ]
"#;

    #[test]
    fn one_load_balancer_per_protocol_on_the_router() {
        let spec = parse(SPEC, &HostIdentity::default()).expect("valid");
        let rows = rows(spec.ovn.as_ref().expect("ovn"));
        assert_eq!(rows.len(), 2);
        let tcp = &rows[0];
        assert_eq!(tcp.key, "kvmnet-fwd-tcp");
        assert_eq!(
            tcp.columns["vips"],
            NbVal::map([
                ("198.51.100.2:2222", "10.80.0.10:22"),
                ("198.51.100.2:8080", "10.80.0.11:80"),
            ])
        );
        assert_eq!(tcp.columns["protocol"], NbVal::strs(["tcp"]));
        assert_eq!(
            tcp.parent.as_ref().map(|p| p.column.as_str()),
            Some("load_balancer")
        );
        assert_eq!(
            rows[1].columns["vips"],
            NbVal::map([("198.51.100.2:5353", "10.80.0.10:53")])
        );
        // With external IPv6 and a's declared ipv6, a's forwards are IPv6 VIPs too.
        let text = SPEC
            .replace(
                "next_hop: 198.51.100.1 }",
                "next_hop: 198.51.100.1, ipv6: \"2001:db8:1::2/64\", next_hop6: \"2001:db8:1::1\" }",
            )
            .replace("    ipv4: 10.80.0.1/24\n", "    ipv4: 10.80.0.1/24\n    ipv6: fd00:80::1/64\n")
            .replace(
                "ports: [ { network: web, ipv4: 10.80.0.10 } ]",
                "ports: [ { network: web, ipv4: 10.80.0.10, ipv6: \"fd00:80::10\" } ]",
            );
        let six = parse(&text, &HostIdentity::default()).expect("valid");
        let six = super::rows(six.ovn.as_ref().expect("ovn"));
        assert_eq!(
            six[0].columns["vips"],
            NbVal::map([
                ("198.51.100.2:2222", "10.80.0.10:22"),
                ("198.51.100.2:8080", "10.80.0.11:80"),
                ("[2001:db8:1::2]:2222", "[fd00:80::10]:22"),
            ])
        );
        // The model carries them, on the router it makes.
        let all = super::super::model::rows(spec.ovn.as_ref().expect("ovn"));
        assert!(all.iter().any(|r| r.table == "Load_Balancer"));
    }
}
