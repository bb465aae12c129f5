//! A QEMU guest on a dual-stack `nat` network served by `kvmnet daemon`: it gets IPv4 from
//! the DHCP pool (busybox `udhcpc`, the guest's /init) and IPv6 by the kernel's SLAAC from
//! the daemon's router advertisements (the guest's busybox has no `udhcpc6`), resolves its
//! own name (from its lease), another VM's and `records` names with busybox `nslookup`
//! against the gateway over both families, and pings the gateway over both. Everything is
//! read back from the guest's console.

mod common;
use common::*;

#[path = "common/guest.rs"]
mod guest;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GW4: &str = "198.51.100.1";
const GW6: &str = "fd00:db8:67::1";

/// The addresses busybox `nslookup` printed for the name asked (not the server's).
fn answers(out: &str) -> Vec<String> {
    out.split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one guest boot shared by every check: boots under TCG are the slow part"
)]
fn qemu_guest_gets_v4_and_v6_and_resolves_names_over_both() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("gdh");
    let wan = ns.add("gdw");
    let web = ns.reserve("gdv");
    ok(&format!(
        "ip link add up0 netns {host} type veth peer name eth0 netns {wan} && \
         ip -n {host} addr add 203.0.113.1/24 dev up0 && ip -n {host} link set up0 up && \
         ip -n {wan} addr add 203.0.113.2/24 dev eth0 && ip -n {wan} link set eth0 up && \
         ip -n {host} route add default via 203.0.113.2"
    ));
    let mac = "52:54:00:67:00:20";
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  dual:
    mode: nat
    bridge: gd-br
    ipv4: {GW4}/24
    ipv6: {GW6}/64
    ra: {{ mode: slaac }}
    dhcp: {{ range: 198.51.100.100-198.51.100.150, lease_time: 1h }}
    dns:
      domain: vm.test
      records: {{ api: 198.51.100.50, api6: "fd00:db8:67::50" }}
vms:
  guest:
    ports: [ {{ network: dual, name: gd-tap, mac: "{mac}" }} ]
  web:
    ports: [ {{ network: dual, name: gd-web, kind: veth, netns: {web}, ipv4: 198.51.100.10, ipv6: "fd00:db8:67::10" }} ]
"#
    ));
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["daemon", "--spec", spec.path(), "--netns", &host])
            .env("KVMNET_STATE_DIR", &ns.state_dir)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sock.exists(), "daemon did not start");

    let mut g = guest::Guest::builder()
        .name("guest_dual")
        .netns(&host)
        .nic(guest::Nic::new("gd-tap", mac))
        .net(0, "dhcp")
        .boot();
    let ready = g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
    let ip4 = guest::field(&ready, "ip").unwrap_or_default();
    let ip4 = ip4.split('/').next().unwrap_or_default().to_string();
    let last: u8 = ip4
        .rsplit('.')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    assert!(
        ip4.starts_with("198.51.100.") && (100..=150).contains(&last),
        "a pool address by udhcpc: {ready}"
    );
    let t = Duration::from_secs(90);

    // SLAAC: the EUI-64 address of the NIC's MAC in the network's prefix.
    let eui = "fd00:db8:67:0:5054:ff:fe67:20";
    let (code, out) = g.run(
        "for i in $(seq 60); do ip -6 addr show dev eth0 scope global | grep -q 'inet6 fd00:db8:67:' \
         && ! ip -6 addr show dev eth0 scope global | grep -q tentative && break; sleep 1; done; \
         ip -6 addr show dev eth0 scope global; ip -6 route show default",
        t,
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{eui}/64")), "SLAAC address: {out}");
    assert!(
        out.contains("default via fe80:"),
        "default route to the gateway's link-local: {out}"
    );

    // Both families reach the gateway.
    let (code, out) = g.run(&format!("ping -c 2 -W 3 {GW4}"), t);
    assert_eq!(code, 0, "ping {GW4}:\n{out}");
    let (code, out) = g.run(&format!("ping -6 -c 2 -W 3 {GW6}"), t);
    assert_eq!(code, 0, "ping -6 {GW6}:\n{out}");

    // Names, asked over IPv4 and over IPv6: the guest's own (from its lease), web's
    // (declared, both families) and the records.
    for server in [GW4, GW6] {
        let ask = |g: &mut guest::Guest, q: &str| {
            let (code, out) = g.run(&format!("nslookup {q} {server}"), t);
            assert_eq!(code, 0, "nslookup {q} {server}:\n{out}");
            answers(&out)
        };
        assert_eq!(ask(&mut g, "guest.vm.test"), [ip4.as_str()], "via {server}");
        let w = ask(&mut g, "web.vm.test");
        assert!(
            w.contains(&"198.51.100.10".to_string()) && w.contains(&"fd00:db8:67::10".to_string()),
            "via {server}: {w:?}"
        );
        assert_eq!(
            ask(&mut g, "api.vm.test"),
            ["198.51.100.50"],
            "via {server}"
        );
        assert_eq!(
            ask(&mut g, "-type=AAAA api6.vm.test"),
            ["fd00:db8:67::50"],
            "via {server}"
        );
        let rev = g.run_ok(&format!("nslookup {ip4} {server}"), t);
        assert!(rev.contains("guest.vm.test"), "via {server}: {rev}");
    }
    let (code, out) = g.run(&format!("nslookup nope.vm.test {GW4}"), t);
    assert!(
        code != 0 && out.contains("NXDOMAIN"),
        "an unknown name: {code} {out}"
    );
    let st = g.shutdown(Duration::from_secs(30));
    assert!(st.is_some_and(|s| s.success()), "QEMU exit: {st:?}");
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
