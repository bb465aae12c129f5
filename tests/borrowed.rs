//! Every host setting kvmnet borrows is given back: an uplink's MTU and ethtool values, the
//! addresses and routes a bridge takes from its uplink, sysctls the spec sets or implies.
//! Each foreign interface and setting is compared before the first apply, after a spec that
//! drops some of them, and after destroy. (A vlan network's uplink, brought up and given
//! back down, needs the 8021q module: `tests/vlan.rs` checks it inside QEMU hypervisors.)

mod common;
use common::*;

const SYSCTLS: &[&str] = &["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"];

fn ethtool_k(ns: &str, dev: &str) -> String {
    ok_in(ns, &format!("ethtool -k {dev}"))
}

fn sysctl(ns: &str, key: &str) -> String {
    ok_in(ns, &format!("sysctl -n {key}")).trim().to_string()
}

fn is_up(ns: &str, dev: &str) -> bool {
    let flags = ok(&format!("ip -n {ns} -j link show {dev}"));
    flags.contains("\"UP\"")
}

fn full_spec(guest: &str) -> String {
    format!(
        r#"version: 1
host:
  sysctl:
    net.ipv4.conf.all.rp_filter: "2"
  uplinks:
    up0:
      mtu: 1400
      ethtool: {{ offloads: {{ tso: false }} }}
networks:
  lan:
    mode: bridge
    bridge: br-lan
    uplink: up0
  out:
    mode: nat
    ipv4: 10.55.0.1/24
vms:
  v1:
    ports: [ {{ network: lan, kind: veth, netns: {guest}, ipv4: 192.0.2.10/24 }} ]
"#
    )
}

/// The same host without the nat network, the sysctl and the uplink's tuning.
fn smaller_spec(guest: &str) -> String {
    format!(
        r#"version: 1
networks:
  lan:
    mode: bridge
    bridge: br-lan
    uplink: up0
vms:
  v1:
    ports: [ {{ network: lan, kind: veth, netns: {guest}, ipv4: 192.0.2.10/24 }} ]
"#
    )
}

#[test]
fn destroy_gives_back_every_borrowed_setting() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("bhost");
    let wan = ns.add("bwan");
    let guest = ns.reserve("bg");
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 192.0.2.2/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 192.0.2.1/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 192.0.2.1 metric 50 && \
         ip -n {host} route add 10.99.0.0/16 via 192.0.2.1 && \
         ip link add trunk0 netns {host} type veth peer name trunk1 netns {wan} && \
         ip netns exec {host} sysctl -qw net.ipv4.conf.all.rp_filter=0"
    ));
    let initial = fingerprint(&host, SYSCTLS);
    let initial_offloads = ethtool_k(&host, "up0");
    assert!(!is_up(&host, "trunk0"));

    let full = SpecFile::new(&full_spec(&guest));
    ns.kvmnet_ok(&["apply", full.path(), "--netns", &host]);
    // Each borrowed setting in force.
    assert!(ok(&format!("ip -n {host} link show up0")).contains("mtu 1400"));
    // The whole TSO group, as ethtool(8) counts it, newer bits such as AccECN's included.
    let offloads = ethtool_k(&host, "up0");
    assert!(
        offloads.contains("\ntcp-segmentation-offload: off"),
        "{offloads}"
    );
    assert!(
        offloads.contains("\ttx-tcp-segmentation: off"),
        "{offloads}"
    );
    assert!(
        offloads.contains("\ttx-tcp6-segmentation: off"),
        "{offloads}"
    );
    assert!(ok(&format!("ip -n {host} -4 addr show br-lan")).contains("192.0.2.2/24"));
    assert!(ok(&format!("ip -n {host} route")).contains("10.99.0.0/16 via 192.0.2.1 dev br-lan"));
    assert_eq!(sysctl(&host, "net.ipv4.conf.all.rp_filter"), "2");
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "1");
    assert!(pings(&host, "192.0.2.1"), "host lost its connectivity");

    // A spec that stops asking gives back what it no longer asks for, and only that.
    let smaller = SpecFile::new(&smaller_spec(&guest));
    ns.kvmnet_ok(&["apply", smaller.path(), "--netns", &host]);
    assert_eq!(sysctl(&host, "net.ipv4.conf.all.rp_filter"), "0");
    assert_eq!(sysctl(&host, "net.ipv4.ip_forward"), "0");
    assert!(ok(&format!("ip -n {host} link show up0")).contains("mtu 1500"));
    assert_eq!(ethtool_k(&host, "up0"), initial_offloads);
    assert!(ok(&format!("ip -n {host} -4 addr show br-lan")).contains("192.0.2.2/24"));

    ns.kvmnet_ok(&["apply", full.path(), "--netns", &host]);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(fingerprint(&host, SYSCTLS), initial);
    assert_eq!(ethtool_k(&host, "up0"), initial_offloads);
    assert!(
        pings(&host, "192.0.2.1"),
        "host lost its connectivity after destroy"
    );
    assert!(namespaces_with(&guest).is_empty());
}
