//! Port forwards on a NAT network: from the wan, from the host itself, and from another guest
//! of the same network (hairpin); from the guest a forward leads to only without br_netfilter.

mod common;
use common::*;

#[test]
fn port_forwards_from_outside_host_and_guests() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("fwh");
    let wan = ns.add("fww");
    let g = ns.reserve("fg");
    let (web, other) = (format!("{g}web"), format!("{g}oth"));
    ns.names.extend([web.clone(), other.clone()]);
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 203.0.113.1/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 203.0.113.2/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 203.0.113.2"
    ));
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  n:
    mode: nat
    bridge: f-n
    ipv4: 10.63.0.1/24
    forwards:
      - {{ proto: tcp, port: 2222, to: web, to_port: 22 }}
vms:
  web: {{ ports: [ {{ network: n, kind: veth, netns: {web}, ipv4: 10.63.0.10 }} ] }}
  other: {{ ports: [ {{ network: n, kind: veth, netns: {other}, ipv4: 10.63.0.11 }} ] }}
"#
    ));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);

    // From the wan: the guest sees the wan's address (no source translation inbound).
    assert_eq!(
        tcp_source_seen(&web, 22, &wan, "203.0.113.1", 2222),
        "203.0.113.2"
    );
    // From the host itself, to its own uplink address.
    assert_eq!(
        tcp_source_seen(&web, 22, &host, "203.0.113.1", 2222),
        "203.0.113.1"
    );
    // From another guest of the same network, through the host's address (hairpin).
    assert_eq!(
        tcp_source_seen(&web, 22, &other, "203.0.113.1", 2222),
        "10.63.0.1"
    );
    // From the guest the forward leads to: only when the host routes the translated packet
    // back (masqueraded through the gateway). With br_netfilter calling the IP hooks for
    // bridged traffic, the kernel bridges it back onto the port it came in by instead, and
    // a bridge sends no frame back out of its own port (no hairpin mode, which would also
    // reflect the guest's broadcasts to it and fail its IPv6 duplicate address detection).
    let brnf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let with_brnf = |on: u8| ok_in(&host, &format!("echo {on} > {brnf}"));
    if in_ns(&host, &format!("test -e {brnf}")).status.success() {
        with_brnf(1);
        assert_eq!(tcp_source_seen(&web, 22, &web, "203.0.113.1", 2222), "");
        with_brnf(0);
    }
    assert_eq!(
        tcp_source_seen(&web, 22, &web, "203.0.113.1", 2222),
        "10.63.0.1"
    );
    // Ports that are not forwarded stay closed.
    assert_eq!(tcp_source_seen(&web, 23, &wan, "203.0.113.1", 23), "");

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
