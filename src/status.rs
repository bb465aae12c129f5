//! `kvmnet status`: what kvmnet owns here, with live state and counters. Needs no spec: every
//! object is recognised by its mark. OVN networks are added by [`with_ovn`] from what OVN's
//! databases say (see `ovn::report`): each VM port's chassis and `up`, each network's logical
//! flow count, each provider networks' uplink on this chassis (its bridge, whether it is in
//! it, whether its physical network is mapped), and the problems ovs-vswitchd reports with
//! this chassis's ports.

use serde_json::{Value, json};

use crate::snapshot::{LinkSnap, Snapshot};
use crate::state::{guest_alias, parse_alias};

fn counters(l: &LinkSnap) -> Value {
    let s = l.stats.clone().unwrap_or_default();
    json!({ "rx_bytes": s.rx_bytes, "rx_packets": s.rx_packets, "tx_bytes": s.tx_bytes, "tx_packets": s.tx_packets })
}

fn state_word(l: &LinkSnap) -> &'static str {
    match (l.up, l.oper_up) {
        (true, true) => "up",
        (true, false) => "no-carrier",
        _ => "down",
    }
}

pub fn status_json(snap: &Snapshot) -> Value {
    let mut networks = Vec::new();
    let mut ports = Vec::new();
    let mut bonds = Vec::new();
    for l in &snap.links {
        let Some(a) = l.alias.as_deref().and_then(parse_alias) else {
            continue;
        };
        let addrs: Vec<String> = snap
            .addrs
            .iter()
            .filter(|x| x.dev == l.name)
            .map(|x| x.addr.to_string())
            .collect();
        if l.kind == "vlan" {
            // VLAN sub-interfaces show as the bridges' members, not as ports.
            continue;
        }
        if a.bond {
            let members: Vec<&str> = snap
                .links
                .iter()
                .filter(|x| x.master.as_deref() == Some(&l.name))
                .map(|x| x.name.as_str())
                .collect();
            bonds.push(json!({
                "bond": l.name, "mode": l.bond.as_ref().map(|b| b.mode.clone()),
                "state": state_word(l), "members": members, "ipv4": addrs,
                "mtu": l.mtu, "bridge": l.master, "counters": counters(l),
            }));
        } else if l.kind == "bridge" {
            let uplinks: Vec<&str> = snap
                .links
                .iter()
                .filter(|x| x.master.as_deref() == Some(&l.name))
                .filter(|x| {
                    x.alias
                        .as_deref()
                        .and_then(parse_alias)
                        .is_none_or(|a| a.bond)
                })
                .map(|x| x.name.as_str())
                .collect();
            networks.push(json!({
                "network": a.network, "bridge": l.name, "state": state_word(l),
                "mac": l.mac.map(|m| m.to_string()), "mtu": l.mtu, "ipv4": addrs,
                "uplinks": uplinks,
                "ports": snap.links.iter().filter(|x| x.master.as_deref() == Some(&l.name)).count(),
                "counters": counters(l),
            }));
        } else {
            let kind = match l.kind.as_str() {
                "tun" => "tap",
                k => k,
            };
            let mut guest = Value::Null;
            if let Some(ns) = &a.netns {
                let mark = guest_alias(&l.name);
                if let Some(g) = snap.netns.get(ns)
                    && let Some(gl) = g.links.iter().find(|x| x.alias.as_deref() == Some(&mark))
                {
                    let gaddrs: Vec<String> = g
                        .addrs
                        .iter()
                        .filter(|x| x.dev == gl.name)
                        .map(|x| x.addr.to_string())
                        .collect();
                    guest = json!({ "netns": ns, "name": gl.name, "state": state_word(gl),
                            "mac": gl.mac.map(|m| m.to_string()), "ipv4": gaddrs });
                }
            }
            ports.push(json!({
                "port": l.name, "vm": a.vm, "network": a.network, "kind": kind,
                "bridge": l.master, "state": state_word(l),
                "mac": l.mac.map(|m| m.to_string()), "mtu": l.mtu,
                "owner": l.tun_owner.or(l.macvtap.as_ref().and_then(|m| m.dev_owner)),
                "multi_queue": l.tun_multi_queue,
                "uplink": l.macvtap.as_ref().and_then(|m| m.link.clone()),
                "guest": guest, "counters": counters(l),
            }));
        }
    }
    json!({
        "scope": snap.scope,
        "networks": networks,
        "ports": ports,
        "bonds": bonds,
        "nftables": snap.nft.as_ref().map(|t| json!({ "table": format!("{} {}", crate::nft::FAMILY, crate::nft::TABLE), "rules": t.rule_count() })),
        "sysctls_changed": snap.sysctl_originals.keys().collect::<Vec<_>>(),
    })
}

/// `v` with the OVN part (`ovn` key) when kvmnet has anything on OVN; unchanged otherwise.
pub fn with_ovn(mut v: Value, ovn: Option<Value>) -> Value {
    if let (Some(o), Some(obj)) = (ovn, v.as_object_mut()) {
        obj.insert("ovn".into(), o);
    }
    v
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => x.clone(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The status as text: one section per part of the status, in the order shown.
pub fn render(v: &Value) -> String {
    let nets = v["networks"].as_array().cloned().unwrap_or_default();
    let ports = v["ports"].as_array().cloned().unwrap_or_default();
    let bonds = v["bonds"].as_array().cloned().unwrap_or_default();
    let ovn = v.get("ovn").filter(|o| o.is_object());
    if nets.is_empty() && ports.is_empty() && bonds.is_empty() {
        if let Some(o) = ovn {
            return ovn_render(o);
        }
        return format!(
            "kvmnet manages nothing in {}.\n",
            v["scope"].as_str().unwrap_or("this namespace")
        );
    }
    let mut out = networks_table(&nets);
    if !ports.is_empty() {
        out.push('\n');
        out.push_str(&ports_table(&ports));
    }
    if !bonds.is_empty() {
        out.push('\n');
        out.push_str(&bonds_table(&bonds));
    }
    if let Some(n) = v["nftables"].as_object() {
        out.push_str(&format!(
            "\nnftables: table {} with {} rules\n",
            s(&n["table"]),
            n["rules"]
        ));
    }
    if let Some(o) = ovn {
        out.push('\n');
        out.push_str(&ovn_render(o));
    }
    out
}

/// The OVN part: its networks, their VM ports as OVN binds them, this chassis's provider
/// uplinks, and what could not be read or is wrong.
fn ovn_render(o: &Value) -> String {
    let nets = o["networks"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                s(&n["network"]),
                s(&n["flows"]),
                n["ports"].as_array().map_or(0, Vec::len).to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "OVN: northbound {}, southbound {}, this chassis {}\n",
        s(&o["nb"]),
        s(&o["sb"]),
        s(&o["chassis"])
    );
    out.push_str(&table(&["OVN NETWORK", "FLOWS", "PORTS"], &rows));
    let ports: Vec<Vec<String>> = nets
        .iter()
        .flat_map(|n| {
            let net = s(&n["network"]);
            n["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |p| {
                    vec![
                        s(&p["port"]),
                        net.clone(),
                        s(&p["chassis"]),
                        s(&p["up"]),
                        s(&p["addresses"]),
                    ]
                })
        })
        .collect();
    if !ports.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["OVN PORT", "NETWORK", "CHASSIS", "UP", "ADDRESSES"],
            &ports,
        ));
    }
    let uplink = |p: &Value| {
        vec![
            s(&p["uplink"]),
            s(&p["bridge"]),
            s(&p["physnet"]),
            s(&p["device"]),
            s(&p["in_bridge"]),
            s(&p["mapped"]),
        ]
    };
    // The gateway's uplink (on a gateway chassis), then the provider networks'.
    for (first, rows) in [
        (
            "OVN GATEWAY UPLINK",
            o["gateway_uplink"]
                .is_object()
                .then(|| uplink(&o["gateway_uplink"]))
                .into_iter()
                .collect::<Vec<_>>(),
        ),
        (
            "OVN UPLINK",
            o["providers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(uplink)
                .collect(),
        ),
    ] {
        if !rows.is_empty() {
            out.push('\n');
            out.push_str(&table(
                &[first, "BRIDGE", "PHYSNET", "DEVICE", "IN BRIDGE", "MAPPED"],
                &rows,
            ));
        }
    }
    for e in o["port_errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("chassis port error: {}\n", s(e)));
    }
    for e in o["errors"].as_array().into_iter().flatten() {
        out.push_str(&format!("could not read: {}\n", s(e)));
    }
    out
}

/// Received and sent traffic, as BYTES/PACKETS each.
fn traffic(counters: &Value) -> (String, String) {
    (
        format!("{}/{}", counters["rx_bytes"], counters["rx_packets"]),
        format!("{}/{}", counters["tx_bytes"], counters["tx_packets"]),
    )
}

fn networks_table(nets: &[Value]) -> String {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            let (rx, tx) = traffic(&n["counters"]);
            vec![
                s(&n["network"]),
                s(&n["bridge"]),
                s(&n["state"]),
                s(&n["ipv4"]),
                s(&n["uplinks"]),
                s(&n["mtu"]),
                s(&n["ports"]),
                rx,
                tx,
            ]
        })
        .collect();
    table(
        &[
            "NETWORK",
            "BRIDGE",
            "STATE",
            "IPV4",
            "UPLINK",
            "MTU",
            "PORTS",
            "RX BYTES/PKTS",
            "TX BYTES/PKTS",
        ],
        &rows,
    )
}

fn ports_table(ports: &[Value]) -> String {
    let rows: Vec<Vec<String>> = ports
        .iter()
        .map(|p| {
            let (gmac, gip) = if p["guest"].is_null() {
                ("-".to_string(), "-".to_string())
            } else {
                (s(&p["guest"]["mac"]), s(&p["guest"]["ipv4"]))
            };
            let (rx, tx) = traffic(&p["counters"]);
            vec![
                s(&p["port"]),
                s(&p["vm"]),
                s(&p["network"]),
                s(&p["kind"]),
                s(&p["bridge"]),
                s(&p["state"]),
                s(&p["mac"]),
                gmac,
                gip,
                rx,
                tx,
            ]
        })
        .collect();
    table(
        &[
            "PORT",
            "VM",
            "NETWORK",
            "KIND",
            "BRIDGE",
            "STATE",
            "HOST MAC",
            "GUEST MAC",
            "GUEST IPV4",
            "RX BYTES/PKTS",
            "TX BYTES/PKTS",
        ],
        &rows,
    )
}

fn bonds_table(bonds: &[Value]) -> String {
    let rows: Vec<Vec<String>> = bonds
        .iter()
        .map(|b| {
            vec![
                s(&b["bond"]),
                s(&b["mode"]),
                s(&b["state"]),
                s(&b["members"]),
                s(&b["ipv4"]),
                s(&b["mtu"]),
                s(&b["bridge"]),
            ]
        })
        .collect();
    table(
        &["BOND", "MODE", "STATE", "MEMBERS", "IPV4", "MTU", "BRIDGE"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovn_provider_uplinks_are_a_table_of_their_own() {
        let v = json!({"scope": "host", "networks": [], "ports": [], "bonds": [],
            "ovn": {"nb": "unix:/nb", "sb": "unix:/sb", "chassis": "hv1", "networks": [],
                "providers": [{"uplink": "pup", "bridge": "kvpn-pup", "physnet": "kvmnet-pn-pup",
                    "device": true, "in_bridge": false, "held_by": null, "mapped": null,
                    "mapped_to": null}],
                "gateway_uplink": {"uplink": "eth1", "bridge": "br-ex", "physnet": "kvmnet-ext",
                    "device": true, "in_bridge": true, "held_by": "br-ex", "mapped": true,
                    "mapped_to": "br-ex"},
                "port_errors": [], "errors": []}});
        let text = render(&v);
        assert!(
            text.contains("OVN UPLINK  BRIDGE    PHYSNET        DEVICE  IN BRIDGE  MAPPED\n")
                && text.contains("pup         kvpn-pup  kvmnet-pn-pup  true    false      -\n"),
            "{text}"
        );
        assert!(
            text.contains("OVN GATEWAY UPLINK  BRIDGE  PHYSNET     DEVICE  IN BRIDGE  MAPPED\n")
                && text
                    .contains("eth1                br-ex   kvmnet-ext  true    true       true\n"),
            "{text}"
        );
    }
}
