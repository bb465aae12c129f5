//! A real VM: QEMU boots the test guest on a tap that kvmnet created; the kvmnet daemon gives
//! it its reserved address by DHCP, and the guest reaches the wan through NAT.

mod common;
use common::*;

#[path = "common/guest.rs"]
mod guest;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn qemu_guest_gets_its_reservation_and_reaches_the_wan() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("vmh");
    let wan = ns.add("vmw");
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 203.0.113.1/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 203.0.113.2/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 203.0.113.2"
    ));
    let mac = "52:54:00:95:00:10";
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  default:
    mode: nat
    bridge: vm-br
    ipv4: 10.95.0.1/24
    dhcp: {{ range: 10.95.0.100-10.95.0.150, lease_time: 1h, dns: [10.95.0.1] }}
vms:
  guest:
    ports: [ {{ network: default, name: vm-tap, mac: "{mac}", ipv4: 10.95.0.10 }} ]
"#
    ));
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec.path(), "--netns", &host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sock.exists(), "daemon did not start");

    let mut g = guest::Guest::builder()
        .netns(&host)
        .nic(guest::Nic::new("vm-tap", mac))
        .net(0, "dhcp")
        .boot();
    let ready = g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
    assert_eq!(
        guest::field(&ready, "ip").as_deref(),
        Some("10.95.0.10/24"),
        "the guest did not get its reservation: {ready}"
    );
    let (code, out) = g.run("ping -c 2 -W 2 203.0.113.2", Duration::from_secs(60));
    assert_eq!(code, 0, "guest cannot reach the wan through NAT:\n{out}");
    let leases = ns.kvmnet_ok(&["leases", "--netns", &host, "--json"]);
    assert!(
        leases.contains("10.95.0.10") && leases.contains(mac),
        "{leases}"
    );
    g.shutdown(Duration::from_secs(30));

    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
