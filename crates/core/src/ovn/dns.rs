//! A network's `dns` on OVN: one `DNS` row on its logical switch, and the DNS servers its
//! DHCP hands out. Pure, like [`super::model`].
//!
//! OVN answers DNS in ovn-controller: a UDP query to port 53 from a port of a switch with
//! `dns_records` is looked up there, whatever address it was sent to; a name the records
//! hold is answered (A, AAAA, and PTR for reverse names the records hold), with the
//! address it was sent to as the source; any other query goes on to that address
//! untouched. So the names are the kernel backend's (`VM.DOMAIN`, bare `VM` without a
//! domain, and `records`), and what answers the rest is whatever server the guest asks:
//! DHCP hands out `dhcp.dns`, else `dns.forwarders` (the spec's names answered by OVN on
//! the way, the rest by the forwarders), else the gateway (the spec's names only: OVN's
//! router serves no DNS, so other names get no answer).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::{NbParent, NbRow, NbVal};
use crate::spec::dns::qualify;
use crate::spec::model::Network;

/// The DNS servers DHCP hands out on `net` (see the module's comment).
pub fn dhcp_servers(net: &Network) -> Vec<Ipv4Addr> {
    if let Some(d) = net.dhcp.as_ref().filter(|d| !d.dns.is_empty()) {
        return d.dns.clone();
    }
    let Some(dns) = &net.dns else {
        return Vec::new();
    };
    let fwd: Vec<Ipv4Addr> = dns
        .forwarders
        .iter()
        .flatten()
        .filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        })
        .collect();
    if !fwd.is_empty() {
        return fwd;
    }
    net.ipv4.iter().map(|c| c.addr).collect()
}

/// The search domain DHCP hands out: `dhcp.domain`, else `dns.domain`.
pub fn dhcp_domain(net: &Network) -> Option<&str> {
    net.dhcp
        .as_ref()
        .and_then(|d| d.domain.as_deref())
        .or_else(|| net.dns.as_ref()?.domain.as_deref())
}

/// The reverse name of `a` (`10.0.80.10.in-addr.arpa`, nibbles under `ip6.arpa`).
fn reverse(a: IpAddr) -> String {
    match a {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let mut s = String::new();
            for b in a.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s + "ip6.arpa"
        }
    }
}

/// `net`'s `DNS` row: each VM with an address on it (`vms`: VM name -> its ports'
/// addresses, declared or picked from the pool) and each record, forward and reverse. A
/// name a record holds is not taken by a VM with a pool address (validation refuses one
/// that a declared address has). `None` without `dns`.
pub fn row(net: &Network, vms: &BTreeMap<String, Vec<IpAddr>>) -> Option<NbRow> {
    let dns = net.dns.as_ref()?;
    let domain = dns.domain.as_deref();
    // OVN looks names up without the final dot.
    let name = |n: &str| qualify(n, domain).trim_end_matches('.').to_string();
    let mut fwd: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    for (n, addrs) in &dns.records {
        fwd.insert(name(n), addrs.clone());
    }
    let mut ptr: BTreeMap<String, String> = BTreeMap::new();
    for (vm, addrs) in vms {
        let n = name(vm);
        if fwd.contains_key(&n) || addrs.is_empty() {
            continue;
        }
        for a in addrs {
            ptr.entry(reverse(*a)).or_insert_with(|| n.clone());
        }
        fwd.insert(n, addrs.clone());
    }
    for (n, addrs) in &fwd {
        for a in addrs {
            ptr.entry(reverse(*a)).or_insert_with(|| n.clone());
        }
    }
    let mut records: BTreeMap<String, String> = fwd
        .into_iter()
        .map(|(n, a)| {
            let list: Vec<String> = a.iter().map(ToString::to_string).collect();
            (n, list.join(" "))
        })
        .collect();
    records.extend(ptr);
    Some(NbRow {
        table: "DNS".into(),
        key: net.name.clone(),
        columns: [("records".to_string(), NbVal::Map(records))].into(),
        parent: Some(NbParent {
            table: "Logical_Switch".into(),
            key: net.name.clone(),
            column: "dns_records".into(),
        }),
    })
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
    dhcp: { range: 10.80.0.100-10.80.0.109 }
    dns:
      domain: Vm.Test
      records: { api: 10.80.0.50, www.example.com.: [10.80.0.60, "2001:db8::60"] }
vms:
  a:
    host: hv1
    ports: [ { network: web, ipv4: 10.80.0.10 } ]
  p:
    host: hv1
    ports: [ { network: web, mac: "52:54:00:00:00:99" } ]
"#;

    fn model() -> Vec<NbRow> {
        let spec = parse(SPEC, &HostIdentity::default()).expect("valid");
        super::super::model::rows(spec.ovn.as_ref().expect("ovn"))
    }

    #[test]
    fn vms_and_records_answer_forward_and_reverse() {
        let rows = model();
        let dns = rows
            .iter()
            .find(|r| r.table == "DNS" && r.key == "web")
            .expect("a DNS row");
        let NbVal::Map(rec) = &dns.columns["records"] else {
            panic!()
        };
        assert_eq!(rec["a.vm.test"], "10.80.0.10");
        assert_eq!(rec["10.0.80.10.in-addr.arpa"], "a.vm.test");
        assert_eq!(rec["api.vm.test"], "10.80.0.50");
        assert_eq!(rec["www.example.com"], "10.80.0.60 2001:db8::60");
        assert_eq!(
            rec["0.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"],
            "www.example.com"
        );
        // The pool port's VM answers with the address picked for it.
        let lsp = rows
            .iter()
            .filter(|r| r.table == "Logical_Switch_Port")
            .map(|r| r.columns["addresses"].to_string())
            .find(|a| a.contains("52:54:00:00:00:99"))
            .expect("the pool port");
        let picked = &rec["p.vm.test"];
        assert!(lsp.contains(&format!("{picked}\"")), "{lsp} {picked}");
        assert_eq!(
            dns.parent.as_ref().map(|p| p.column.as_str()),
            Some("dns_records")
        );
        // DHCP hands out the gateway (no forwarders) and the domain.
        let dhcp = rows
            .iter()
            .find(|r| r.table == "DHCP_Options")
            .expect("dhcp");
        let NbVal::Map(o) = &dhcp.columns["options"] else {
            panic!()
        };
        assert_eq!(o["dns_server"], "{10.80.0.1}");
        assert_eq!(o["domain_name"], "\"vm.test\"");
    }

    #[test]
    fn forwarders_are_handed_out_when_written() {
        let text = SPEC.replace(
            "      domain: Vm.Test\n",
            "      domain: Vm.Test\n      forwarders: [198.51.100.53]\n",
        );
        let spec = parse(&text, &HostIdentity::default()).expect("valid");
        let net = &spec.ovn.as_ref().expect("ovn").networks["web"];
        assert_eq!(
            dhcp_servers(net),
            vec!["198.51.100.53".parse::<Ipv4Addr>().unwrap()]
        );
    }
}
