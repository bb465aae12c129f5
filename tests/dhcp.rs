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

fn write_script(path: &std::path::Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `KEY=value` lines of a file a client script wrote.
fn env_file(path: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// Test 1: three real clients get their reservations, a fourth MAC a pool address, and the
/// options arrive as each client reports them.
#[test]
fn real_clients_get_reservations_pool_and_options() {
    if !privileged() || !have("busybox") || !have("dhclient") || !have("dhcpcd") {
        return;
    }
    let mut t = Topo::new("rc", "10.71.0.1/24");
    let (m_u, m_d, m_c, m_p) = (
        "52:54:00:71:00:11",
        "52:54:00:71:00:12",
        "52:54:00:71:00:13",
        "52:54:00:71:00:99",
    );
    let ns_u = t.add_client("u", m_u);
    let ns_d = t.add_client("d", m_d);
    let ns_c = t.add_client("c", m_c);
    let ns_p = t.add_client("p", m_p);
    let mut scope = t.scope(
        Some(("10.71.0.100", "10.71.0.150")),
        &[(m_u, "10.71.0.11"), (m_d, "10.71.0.12"), (m_c, "10.71.0.13")],
    );
    scope.dns = vec![Ipv4Addr::new(10, 71, 0, 53), Ipv4Addr::new(10, 71, 0, 54)];
    scope.domain = Some("kvm.example".into());
    scope.mtu = Some(1400);
    scope.lease_secs = 900;
    scope.routes = vec![(
        "198.51.100.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 71, 0, 254),
    )];
    let server = ServerThread::start(&t.server_ns, vec![scope], &t.state_dir, None);
    let work = t.state_dir.join("clients");
    std::fs::create_dir_all(&work).unwrap();
    let w = work.display().to_string();

    // busybox udhcpc: its script receives the options as variables; it applies nothing.
    write_script(&work.join("udhcpc.sh"), &format!("env > {w}/udhcpc-$(cat {w}/tag).$1"));
    let udhcpc = |ns: &str, tag: &str| {
        std::fs::write(work.join("tag"), tag).unwrap();
        let o = in_ns(
            ns,
            &format!(
                "busybox udhcpc -f -q -n -t 5 -T 1 -i eth0 -s {w}/udhcpc.sh \
                 -O staticroutes -O mtu -O dns -O domain -x hostname:{tag}"
            ),
        );
        assert!(
            o.status.success(),
            "udhcpc failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        env_file(&work.join(format!("udhcpc-{tag}.bound")))
    };
    let u = udhcpc(&ns_u, "vmu");
    assert_eq!(u["ip"], "10.71.0.11");
    assert_eq!(u["subnet"], "255.255.255.0");
    assert_eq!(u["router"], "10.71.0.1");
    assert_eq!(u["dns"].trim(), "10.71.0.53 10.71.0.54");
    assert_eq!(u["domain"], "kvm.example");
    assert_eq!(u["mtu"], "1400");
    assert_eq!(u["lease"], "900");
    assert_eq!(u["serverid"], "10.71.0.1");
    assert_eq!(
        u["staticroutes"],
        "198.51.100.0/24 10.71.0.254 0.0.0.0/0 10.71.0.1",
        "RFC 3442: the default route rides along in option 121"
    );

    // The pool client.
    let p = udhcpc(&ns_p, "vmp");
    let pip: Ipv4Addr = p["ip"].parse().unwrap();
    assert!(
        (Ipv4Addr::new(10, 71, 0, 100)..=Ipv4Addr::new(10, 71, 0, 150)).contains(&pip),
        "{pip}"
    );

    // ISC dhclient, with Debian's dhclient.conf (it asks for mtu and option 121).
    write_script(
        &work.join("dhclient.sh"),
        &format!("env | grep -E '^(reason|new_)' > {w}/dhclient.$reason"),
    );
    let d = t.adopt(spawn_in(
        &ns_d,
        &format!(
            "exec dhclient -d -1 -sf {w}/dhclient.sh -lf {w}/dhclient.leases \
             -pf {w}/dhclient.pid eth0 2>{w}/dhclient.log"
        ),
    ));
    wait_for("dhclient BOUND", Duration::from_secs(20), || {
        work.join("dhclient.BOUND").exists()
    });
    let _ = t.child(d).kill();
    let d = env_file(&work.join("dhclient.BOUND"));
    assert_eq!(d["new_ip_address"], "10.71.0.12");
    assert_eq!(d["new_routers"], "10.71.0.1");
    assert_eq!(d["new_domain_name_servers"], "10.71.0.53 10.71.0.54");
    assert_eq!(d["new_domain_name"], "kvm.example");
    assert_eq!(d["new_interface_mtu"], "1400");
    assert_eq!(d["new_dhcp_lease_time"], "900");
    assert_eq!(d["new_dhcp_renewal_time"], "450");
    assert_eq!(d["new_dhcp_rebinding_time"], "787");
    assert_eq!(
        d["new_rfc3442_classless_static_routes"],
        "24 198 51 100 10 71 0 254 0 10 71 0 1"
    );

    // dhcpcd: a full exchange that configures the namespace's eth0, then exits (-1). Its
    // lease database is global (/var/lib/dhcpcd): a tmpfs in this mount namespace (ip netns
    // exec makes one) keeps the host's untouched and old leases out.
    write_script(
        &work.join("dhcpcd.sh"),
        &format!("env | grep -E '^(reason|new_)' > {w}/dhcpcd.$reason"),
    );
    let o = in_ns(
        &ns_c,
        &format!(
            "mount -t tmpfs kvmnet-test /var/lib/dhcpcd && \
             timeout 30 dhcpcd -f /dev/null -B -1 -4 --noarp -t 20 -c {w}/dhcpcd.sh \
             -o classless_static_routes -o interface_mtu -o domain_name_servers \
             -o domain_name eth0"
        ),
    );
    assert!(
        o.status.success(),
        "dhcpcd failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c = env_file(&work.join("dhcpcd.BOUND"));
    assert_eq!(c["new_ip_address"], "10.71.0.13");
    assert_eq!(c["new_routers"], "10.71.0.1");
    assert_eq!(c["new_domain_name_servers"], "10.71.0.53 10.71.0.54");
    assert_eq!(c["new_domain_name"], "kvm.example");
    assert_eq!(c["new_interface_mtu"], "1400");
    assert_eq!(c["new_dhcp_lease_time"], "900");
    assert_eq!(
        c["new_classless_static_routes"],
        "198.51.100.0/24 10.71.0.254 0.0.0.0/0 10.71.0.1"
    );
    let addr = in_ns(&ns_c, "ip -4 -o addr show dev eth0");
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains("10.71.0.13/24"),
        "dhcpcd applied the address"
    );

    // The server's view.
    let leases = server.handle.leases();
    let find = |m: &str| {
        leases
            .iter()
            .find(|l| l.mac == m)
            .unwrap_or_else(|| panic!("no lease for {m}: {leases:?}"))
    };
    for (m, ip, reserved) in [
        (m_u, "10.71.0.11", true),
        (m_d, "10.71.0.12", true),
        (m_c, "10.71.0.13", true),
        (m_p, p["ip"].as_str(), false),
    ] {
        let l = find(m);
        assert_eq!((l.ip.to_string().as_str(), l.state.as_str(), l.reserved), (ip, "bound", reserved));
        assert_eq!(l.network, "test");
    }
    assert_eq!(find(m_u).hostname.as_deref(), Some("vmu"));
    let st = server.handle.stats();
    assert!(st.ack >= 4 && st.offer >= 4, "{st:?}");
    assert_eq!(st.nak, 0, "{st:?}");
    let server = server.stop();
    // The journal has the same bindings.
    let on_disk = kvmnet::dhcp::read_leases(&t.state_dir).unwrap();
    assert_eq!(on_disk.iter().filter(|l| l.state == "bound").count(), 4, "{on_disk:?}");
    drop(server);
}
