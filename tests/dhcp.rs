//! The built-in DHCPv4 server against real clients (busybox udhcpc, ISC dhclient, dhcpcd),
//! a raw client that walks the RFC 2131 states, perfdhcp as a relay, a kill -9 under load,
//! and a DISCOVER flood. Each test builds its own namespaces (removed on drop) and runs as
//! root; without root it skips, unless CI is set.

mod common_dhcp;

use std::net::Ipv4Addr;
use std::time::Duration;

use common_dhcp::*;
use kvmnet::dhcp::packet::{MessageType, opt};
use kvmnet::dhcp::{Limits, Scope, Server};

/// Not a test on its own: with `KVMNET_DHCP_TEST_SERVER` set (by the kill -9 test, which
/// re-executes this binary), it becomes the server process. The value is JSON:
/// `{"ns": .., "dir": .., "scope": {"gw": "10.1.0.1/16", "pool": [a, b], "lease": secs}}`.
#[test]
fn server_child() {
    let Ok(cfg) = std::env::var("KVMNET_DHCP_TEST_SERVER") else {
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&cfg).expect("config JSON");
    let s = |k: &str| v[k].as_str().expect("string field").to_string();
    let gw: kvmnet::spec::Ipv4Cidr = v["gw"].as_str().unwrap().parse().unwrap();
    let scope = Scope {
        network: "test".into(),
        interface: "br0".into(),
        server_ip: gw.addr,
        subnet: gw.network(),
        router: Some(gw.addr),
        dns: vec![],
        domain: None,
        mtu: None,
        lease_secs: v["lease"].as_u64().unwrap_or(3600) as u32,
        routes: vec![],
        pool: Some((
            v["pool"][0].as_str().unwrap().parse().unwrap(),
            v["pool"][1].as_str().unwrap().parse().unwrap(),
        )),
        reservations: vec![],
    };
    kvmnet::backend::netns::enter(&s("ns")).expect("enter namespace");
    let mut server = Server::start(vec![scope], std::path::Path::new(&s("dir"))).expect("start");
    if v["unlimited"].as_bool().unwrap_or(false) {
        server.set_limits(Limits {
            per_mac_rate: f64::INFINITY,
            per_interface_rate: f64::INFINITY,
            ..Limits::default()
        });
    }
    println!("SERVER READY");
    let stop = std::sync::atomic::AtomicBool::new(false);
    server.run(&stop).expect("run");
}
