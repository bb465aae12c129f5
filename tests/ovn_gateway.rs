//! A nat network on a real three-chassis OVN (tests/common/ovn_lab.rs): hv1 and hv2 are
//! gateway chassis (priorities 1 and 2) whose `ovn.external.uplink` is a veth to an
//! "external" namespace holding the next hop and a host behind it; a guest on hv3 and one
//! on hv1 share one `isolate_ports` network. The guests reach the external host, which sees
//! the SNAT address, not theirs; they cannot reach each other but reach their gateway; when
//! the active gateway chassis dies the other takes the SNAT over (the outage is measured and
//! printed); a guest on a second nat network takes its address from OVN's DHCPv6
//! (`ra.mode: dhcpv6`) and reaches the far host from it through NAT66; a guest on a routed
//! network leaves through the same gateway and is seen by its own address; status and doctor
//! show a gateway's uplink, and doctor fails it (with its fix)
//! once it is out of `br-ex`; destroy on every chassis leaves the Northbound rows as they
//! were.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{
    EXT_FAR as FAR, EXT_SNAT as SNAT, EXT6_FAR as FAR6, EXT6_SNAT as SNAT6, OvnLab, ovn_present,
    wait_ping,
};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn spec(lab: &OvnLab, a_ns: &str, b_ns: &str, c_ns: &str, d_ns: &str) -> String {
    format!(
        r#"{head}networks:
  web:
    backend: ovn
    mode: nat
    ipv4: 10.81.0.1/24
    ipv6: fd00:81::1/64
    isolate_ports: true
  six:
    backend: ovn
    mode: nat
    ipv4: 10.82.0.1/24
    ipv6: fd00:82::1/64
    ra: {{ mode: dhcpv6 }}
    dhcp: {{ range6: "fd00:82::100-fd00:82::1ff" }}
  lan:
    backend: ovn
    mode: routed
    ipv4: 10.83.0.1/24
vms:
  d:
    host: hv3
    ports:
      - {{ network: lan, name: gwd, kind: veth, netns: {d_ns}, mac: "52:54:00:83:00:0d", ipv4: 10.83.0.13 }}
  c:
    host: hv3
    ports:
      - {{ network: six, name: gwc, kind: veth, netns: {c_ns}, mac: "52:54:00:82:00:0c", ipv4: 10.82.0.12 }}
  a:
    host: hv3
    ports:
      - {{ network: web, name: gwa, kind: veth, netns: {a_ns}, mac: "52:54:00:81:00:0a", ipv4: 10.81.0.10 }}
  b:
    host: hv1
    ports:
      - {{ network: web, name: gwb, kind: veth, netns: {b_ns}, mac: "52:54:00:81:00:0b", ipv4: 10.81.0.11 }}
"#,
        head = lab.spec_head(3, &[(1, 1), (2, 2)], &OvnLab::external_section6("xup")),
    )
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A ping every 100 ms from `ns` to `ip`, its replies' timestamps read as they come.
struct Pinger {
    child: std::process::Child,
    replies: std::sync::mpsc::Receiver<f64>,
}

impl Pinger {
    fn start(ns: &str, ip: &str) -> Pinger {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-D", "-n", "-i", "0.1", ip])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping runs");
        let out = child.stdout.take().unwrap();
        let (tx, replies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // "[1765000000.123456] 64 bytes from ...": the reply's arrival time.
                let t = line
                    .strip_prefix('[')
                    .and_then(|l| l.split(']').next())
                    .and_then(|t| t.parse::<f64>().ok());
                if let Some(t) = t.filter(|_| line.contains("bytes from")) {
                    let _ = tx.send(t);
                }
            }
        });
        Pinger { child, replies }
    }

    /// The first reply after `since` (epoch seconds), waiting at most `limit`.
    fn first_after(&self, since: f64, limit: Duration) -> Option<f64> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.replies.recv_timeout(left) {
                Ok(t) if t > since => return Some(t),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both guests reach the far host through the gateway, which sees the SNAT address; they
/// reach their gateway but not each other.
fn nat_and_isolation(far: &str, a_ns: &str, b_ns: &str) {
    for g in [a_ns, b_ns] {
        wait_ping(g, FAR);
        assert_eq!(
            source_seen(far, FAR, g),
            SNAT,
            "the far host sees the SNAT address"
        );
        assert_eq!(tcp_source_seen(far, 8080, g, FAR, 8080), SNAT);
        assert!(pings(g, "10.81.0.1"), "{g} reaches its gateway");
    }
    // isolate_ports: a and b (on different chassis) cannot reach each other, either way.
    assert!(
        !pings(a_ns, "10.81.0.11"),
        "isolated ports reach each other"
    );
    assert!(
        !pings(b_ns, "10.81.0.10"),
        "isolated ports reach each other"
    );
    assert_eq!(tcp_source_seen(b_ns, 22, a_ns, "10.81.0.11", 22), "");
}

/// `status --json`'s gateway uplink on chassis `i` (null on a chassis that is no gateway).
fn gateway_uplink_status(lab: &OvnLab, i: usize) -> serde_json::Value {
    let ns = lab.chassis[i - 1].ns.clone();
    let out = lab.ns.kvmnet_ok(&["status", "--json", "--netns", &ns]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["ovn"]["gateway_uplink"].clone()
}

/// The standby gateway hv1's uplink: status shows it in `br-ex` and mapped, and doctor
/// passes `ovn-gateway-uplink`; taken out of `br-ex` by hand, doctor fails it with its fix
/// and status shows it out; the next apply puts it back. hv3 is no gateway: none shown.
fn gateway_uplink_reported(lab: &OvnLab, file: &SpecFile) {
    assert_eq!(
        gateway_uplink_status(lab, 1),
        serde_json::json!({"uplink": "xup", "bridge": "br-ex", "physnet": "kvmnet-ext",
            "device": true, "in_bridge": true, "held_by": "br-ex", "mapped": true,
            "mapped_to": "br-ex"})
    );
    assert!(gateway_uplink_status(lab, 3).is_null());
    assert!(lab.doctor(3, "ovn-gateway-uplink").1.is_empty());
    let (_, checks) = lab.doctor(1, "ovn-gateway-uplink");
    assert!(
        checks.len() == 1 && checks[0]["status"] == "ok",
        "{checks:?}"
    );
    lab.vsctl(1, "del-port br-ex xup");
    let (code, checks) = lab.doctor(1, "ovn-gateway-uplink");
    assert_eq!(code, 1, "{checks:?}");
    let c = &checks[0];
    assert_eq!(c["status"], "fail", "{c}");
    assert!(
        c["message"].as_str().unwrap().contains(
            "the uplink xup is not in its Open vSwitch bridge br-ex (it is in no bridge)"
        ),
        "{c}"
    );
    assert!(
        c["fix"].as_str().unwrap().contains("add-port br-ex xup"),
        "{c}"
    );
    assert_eq!(gateway_uplink_status(lab, 1)["in_bridge"], false);
    lab.kvm(1, &["apply", file.path()]);
    assert_eq!(lab.vsctl(1, "port-to-br xup").trim(), "br-ex");
    assert_eq!(lab.doctor(1, "ovn-gateway-uplink").1[0]["status"], "ok");
}

/// NAT66: both guests form their SLAAC addresses from the router port's RA and reach the
/// far host over IPv6, which sees the gateway's external IPv6 address, not theirs.
fn nat66(far: &str, a_ns: &str, b_ns: &str) {
    for (g, host) in [(a_ns, "a"), (b_ns, "b")] {
        // The RA answers a solicitation; the periodic ones come minutes apart.
        let slaac = format!("fd00:81::5054:ff:fe81:{host}/64");
        wait_addr6(g, &slaac, 20, "rdisc6 -1 -r 1 -w 500 eth0 >/dev/null");
        assert_eq!(
            source_seen(far, FAR6, g),
            SNAT6,
            "{g}: NAT66 to the far host"
        );
    }
}

/// DHCPv6 on a nat network (`ra.mode: dhcpv6`): OVN's DHCPv6 gives c the address kvmnet
/// picked from `range6` (the one its port lists), and c reaches the far host from it, which
/// sees the gateway's external IPv6 address.
fn dhcpv6_behind_nat66(lab: &OvnLab, far: &str, c_ns: &str) {
    let listed = lab.nbctl("get Logical_Switch_Port gwc addresses");
    let picked = listed
        .split([' ', '"', '[', ']'])
        .find(|w| w.starts_with("fd00:82::"))
        .unwrap_or_else(|| panic!("no DHCPv6 address in {listed}"))
        .to_string();
    let work = std::env::temp_dir().join(unique("ovn-gw-dhcp6"));
    std::fs::create_dir_all(&work).unwrap();
    // Its link-local address first: dhclient sends from it.
    wait_addr6_ll(c_ns);
    let env = dhcp6_events(c_ns, &work, "c", "");
    let _ = std::fs::remove_dir_all(&work);
    assert!(env.contains(&format!("new_ip6_address={picked}")), "{env}");
    ok_in(
        c_ns,
        &format!("ip -6 addr add {picked}/64 dev eth0 valid_lft 600 preferred_lft 600 nodad"),
    );
    // The default route comes from the router port's RA (the M flag, no prefix to form an
    // address from): solicited, since OVN's periodic ones come minutes apart.
    let t = Instant::now();
    while !ok_in(c_ns, "ip -6 route show default").contains("via fe80::") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{c_ns}: no IPv6 default route"
        );
        let _ = in_ns(c_ns, "rdisc6 -1 -r 1 -w 500 eth0 >/dev/null");
    }
    wait_ping(c_ns, FAR6);
    assert_eq!(
        source_seen(far, FAR6, c_ns),
        SNAT6,
        "NAT66 from the DHCPv6 address"
    );
}

/// Until `ns`'s eth0 has its link-local address out of duplicate address detection.
fn wait_addr6_ll(ns: &str) {
    let t = Instant::now();
    while !ok_in(ns, "ip -6 -o addr show dev eth0 scope link")
        .lines()
        .any(|l| !l.contains("tentative") && l.contains("fe80::"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{ns}: no link-local address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn nat_gateway_failover_and_isolation() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(3);
    for i in 1..=3 {
        lab.start_controller(i);
    }
    let before = lab.nb_rows();
    let (ext, far) = lab.external(&[1, 2]);
    // The external network routes the routed network's subnet back to kvmnet's router.
    ok_in(&ext, &format!("ip route add 10.83.0.0/24 via {SNAT}"));
    let a_ns = lab.ns.reserve("gwa");
    let b_ns = lab.ns.reserve("gwb");
    let c_ns = lab.ns.reserve("gwc");
    let d_ns = lab.ns.reserve("gwd");
    let file = SpecFile::new(&spec(&lab, &a_ns, &b_ns, &c_ns, &d_ns));
    for i in 1..=3 {
        lab.kvm(i, &["apply", file.path()]);
    }
    // The uplink is in br-ex on the gateway chassis only.
    assert_eq!(lab.vsctl(1, "port-to-br xup").trim(), "br-ex");
    assert_eq!(lab.vsctl(2, "port-to-br xup").trim(), "br-ex");
    assert!(lab.vsctl(3, "list-br").lines().all(|b| b != "br-ex"));
    for g in [&a_ns, &b_ns] {
        ok_in(
            g,
            "ethtool -K eth0 tx off >/dev/null && ip route replace default via 10.81.0.1",
        );
    }
    ok_in(&c_ns, "ethtool -K eth0 tx off >/dev/null");
    ok_in(
        &d_ns,
        "ethtool -K eth0 tx off >/dev/null && ip route replace default via 10.83.0.1",
    );
    lab.wait_up("gwa");
    lab.wait_up("gwb");
    lab.wait_up("gwc");
    lab.wait_up("gwd");
    // The higher priority holds the gateway port.
    lab.wait_active("hv2");
    // OVN's tunnel BFD intervals (default 1000 ms, 3 missed: ~3 s to notice a dead
    // gateway), set by hand to compare in BENCHMARKS.md; kvmnet leaves NB_Global alone.
    let bfd = std::env::var("OVN_GATEWAY_BFD_MS").unwrap_or_default();
    if !bfd.is_empty() {
        lab.nbctl(&format!(
            "set NB_Global . options:bfd-min-rx={bfd} options:bfd-min-tx={bfd}"
        ));
        lab.nbctl("--wait=hv sync");
    }

    nat_and_isolation(&far, &a_ns, &b_ns);
    nat66(&far, &a_ns, &b_ns);
    dhcpv6_behind_nat66(&lab, &far, &c_ns);
    // A routed network leaves through the same gateway, with its own address (no NAT).
    wait_ping(&d_ns, FAR);
    assert_eq!(
        source_seen(&far, FAR, &d_ns),
        "10.83.0.13",
        "routed: no NAT"
    );
    gateway_uplink_reported(&lab, &file);

    // hv2's ovn-controller stopping is no outage: its ovs-vswitchd keeps forwarding with
    // the flows it has, BFD stays up, and hv2 keeps the gateway port.
    let pinger = Pinger::start(&a_ns, FAR);
    assert!(
        pinger.first_after(0.0, Duration::from_secs(5)).is_some(),
        "pings flow before the failure"
    );
    lab.stop_controller(2);
    let t = now();
    std::thread::sleep(Duration::from_secs(2));
    let mut gaps = Vec::new();
    let mut last = t;
    while let Ok(r) = pinger.replies.try_recv() {
        gaps.push(r - last);
        last = r;
    }
    assert!(
        gaps.len() >= 10 && gaps.iter().all(|g| *g < 0.5),
        "pings flow while hv2's ovn-controller is down: {gaps:?}"
    );
    assert_eq!(lab.active_gateway(), "hv2");

    // Failover: hv2's ovs-vswitchd dies too (the host is gone); BFD on the tunnels tells
    // hv1 and hv3, and hv1 takes the gateway port over.
    let t0 = now();
    lab.crash(2, "ovs-vswitchd");
    let back = pinger
        .first_after(t0, Duration::from_secs(30))
        .expect("the far host is reached again through hv1");
    drop(pinger);
    println!(
        "ovn gateway failover (BFD {}): {:.0} ms from the active gateway's death to the first reply",
        if bfd.is_empty() {
            "OVN's default"
        } else {
            &bfd
        },
        (back - t0) * 1000.0
    );
    lab.wait_active("hv1");
    assert_eq!(source_seen(&far, FAR, &a_ns), SNAT, "SNAT moved to hv1");
    assert_eq!(source_seen(&far, FAR, &b_ns), SNAT);

    // Destroy on every chassis (hv2's database is still there; its daemons are not).
    for i in [3, 2, 1] {
        lab.kvm(i, &["destroy"]);
    }
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy leaves exactly the rows that were there"
    );
    assert!(lab.vsctl(1, "list-br").lines().all(|b| b != "br-ex"));
}
