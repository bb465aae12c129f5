//! The DHCP server as a child process (the test binary re-executed), for tests that kill it
//! with SIGKILL or measure its memory apart from the test's own. Apart from `mod.rs`, whose
//! server runs in a thread of the test.

use std::net::Ipv4Addr;

use kvmnet::dhcp::{Limits, Scope, Server};

use super::Topo;

/// Reservation number `i` of a synthetic scope: MAC 02:00:00:00:hi:lo, address in the
/// gateway's /16 at .100.0 upwards.
pub fn reserved_host(gw: kvmnet::spec::Ipv4Cidr, i: u32) -> kvmnet::dhcp::Reservation {
    let o = gw.addr.octets();
    kvmnet::dhcp::Reservation {
        mac: kvmnet::spec::Mac([2, 0, 0, 0, (i >> 8) as u8, i as u8]),
        ip: Ipv4Addr::new(o[0], o[1], 100 + (i / 250) as u8, 1 + (i % 250) as u8),
        port: format!("vm{i}"),
    }
}

/// The body of a test binary's `server_child` test ([`spawn_server_process`] re-executes the
/// binary to run it): with `KVMNET_DHCP_TEST_SERVER` set, this process becomes the server,
/// else it returns at once. The value is JSON:
/// `{"ns": .., "dir": .., "scope": {"gw": "10.1.0.1/16", "pool": [a, b], "lease": secs}}`.
pub fn serve_as_child() {
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
        live_mtu: None,
        lease_secs: v["lease"].as_u64().unwrap_or(3600) as u32,
        routes: vec![],
        pool: Some((
            v["pool"][0].as_str().unwrap().parse().unwrap(),
            v["pool"][1].as_str().unwrap().parse().unwrap(),
        )),
        reservations: (0..v["reservations"].as_u64().unwrap_or(0) as u32)
            .map(|i| reserved_host(gw, i))
            .collect(),
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

/// The server as a child process (this test binary re-executed), for kill -9.
pub fn spawn_server_process(t: &mut Topo, gw: &str, pool: (&str, &str)) -> usize {
    spawn_server_process_with(t, gw, pool, 0)
}

pub fn spawn_server_process_with(
    t: &mut Topo,
    gw: &str,
    pool: (&str, &str),
    reservations: u32,
) -> usize {
    use std::io::BufRead;
    let cfg = serde_json::json!({
        "ns": t.server_ns,
        "dir": t.state_dir,
        "gw": gw,
        "pool": [pool.0, pool.1],
        "lease": 3600,
        "reservations": reservations,
    });
    let mut c = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["server_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("KVMNET_DHCP_TEST_SERVER", cfg.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("re-exec the test binary as the server");
    let out = c.stdout.take().unwrap();
    let i = t.adopt(c);
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("SERVER READY") => break,
            Some(Ok(_)) => continue,
            _ => panic!("the server process did not start"),
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    i
}
