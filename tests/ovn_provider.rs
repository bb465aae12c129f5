//! Provider networks on a real two-chassis OVN (tests/common/ovn_lab.rs): a `bridge` and a
//! `vlan` network on one uplink, `pup`, which on each chassis is a veth into a "physical"
//! 802.1Q switch (on a third lab machine, no chassis) holding a host on the untagged LAN,
//! one on VLAN 100 and one on VLAN 200. Guests on both chassis reach the
//! physical hosts of their network, and each other through the segment (not the tunnel);
//! the vlan network's frames are tagged 100 on the wire and VLAN 200's host, in the same
//! subnet, is out of reach; OVN's DHCP leases on the vlan network with the segment's MTU; a
//! forged source is dropped while the guest's own flows, over IPv6 as well, from the SLAAC
//! addresses guests form from the LAN router's RAs (`ipv6_prefixes`); `status` shows the uplink in its
//! bridge and mapped, and `doctor`'s `ovn-provider` passes; an uplink renamed away fails it;
//! drift (the uplink out of its bridge, the mapping removed, the tag changed by hand) is
//! named by doctor with its fix, shown by status, and repaired by the next apply. destroy gives the uplinks back (out
//! of every bridge, the bridges gone), puts `ovn-bridge-mappings` back as it was (another
//! tool's mapping kept), and leaves the Northbound rows exactly as before, a foreign switch
//! among them.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The physical hosts: on the untagged LAN, on VLAN 100, and on VLAN 200 (in VLAN 100's
/// subnet, so only the tag keeps it apart).
const LAN_HOST: &str = "192.0.2.1";
const V100_HOST: &str = "198.51.100.1";
const V200_HOST: &str = "198.51.100.2";
/// The LAN's IPv6 prefix (without its `::/64`), which the LAN's router announces.
const LAN6: &str = "2001:db8:90";

fn spec(lab: &OvnLab, g: &Guests) -> String {
    format!(
        r#"{head}networks:
  lan:
    backend: ovn
    mode: bridge
    uplink: pup
    ipv6_prefixes: ["{LAN6}::/64"]
  v100:
    backend: ovn
    mode: vlan
    uplink: pup
    vlan: 100
    ipv4: 198.51.100.254/24
    dhcp: {{ range: 198.51.100.100-198.51.100.109 }}
vms:
  a:
    host: hv1
    ports:
      - {{ network: lan, name: pla, kind: veth, netns: {la}, mac: "52:54:00:90:00:0a", ipv4: 192.0.2.10/24 }}
      - {{ network: v100, name: pva, kind: veth, netns: {va}, mac: "52:54:00:91:00:0a", ipv4: 198.51.100.10 }}
  b:
    host: hv2
    ports:
      - {{ network: lan, name: plb, kind: veth, netns: {lb}, mac: "52:54:00:90:00:0b", ipv4: 192.0.2.11/24 }}
      - {{ network: v100, name: pvb, kind: veth, netns: {vb}, mac: "52:54:00:91:00:0b", dhcp_client: true }}
"#,
        head = lab.spec_head(2, &[], ""),
        la = g.la,
        va = g.va,
        lb = g.lb,
        vb = g.vb,
    )
}

/// The guests' namespaces: a's and b's ports on `lan` and on `v100`.
struct Guests {
    la: String,
    va: String,
    lb: String,
    vb: String,
}

/// The physical segment: an 802.1Q switch, `psw`, on lab machine 3 (whose Open vSwitch
/// is no chassis: this kernel has neither 802.1Q devices nor VLAN-filtering bridges, so a
/// userspace Open vSwitch bridge is the VLAN-aware switch). A trunk port `cI` to each
/// chassis's `pup` (native VLAN 1 untagged: the LAN; VLANs 100 and 200 tagged), and an
/// access port to each physical host. Returns the switch's namespace and the hosts' (LAN,
/// VLAN 100, VLAN 200).
fn segment(lab: &mut OvnLab) -> (String, [String; 3]) {
    let sw = lab.chassis[2].ns.clone();
    lab.vsctl(
        3,
        "add-br psw -- set bridge psw datapath_type=netdev fail_mode=standalone",
    );
    for i in 1..=2 {
        let ch = lab.chassis[i - 1].ns.clone();
        // `tx off` on both ends: the netdev datapath forwards partial checksums unfilled.
        ok(&format!(
            "ip -n {sw} link add c{i} type veth peer name pup netns {ch} \
             && ip -n {sw} link set c{i} up && ip -n {ch} link set pup up \
             && ip netns exec {sw} ethtool -K c{i} tx off >/dev/null \
             && ip netns exec {ch} ethtool -K pup tx off >/dev/null"
        ));
        lab.vsctl(
            3,
            &format!(
                "add-port psw c{i} -- set port c{i} vlan_mode=native-untagged tag=1 trunks=1,100,200"
            ),
        );
    }
    let hosts = [
        ("lanh", LAN_HOST, 1),
        ("v1h", V100_HOST, 100),
        ("v2h", V200_HOST, 200),
    ];
    let mut out = Vec::new();
    for (tag, ip, vid) in hosts {
        let h = lab.ns.add(tag);
        ok(&format!(
            "ip -n {sw} link add {tag} type veth peer name eth0 netns {h} \
             && ip -n {sw} link set {tag} up \
             && ip -n {h} addr add {ip}/24 dev eth0 && ip -n {h} link set eth0 up \
             && ip netns exec {sw} ethtool -K {tag} tx off >/dev/null \
             && ip netns exec {h} ethtool -K eth0 tx off >/dev/null"
        ));
        lab.vsctl(
            3,
            &format!("add-port psw {tag} -- set port {tag} tag={vid}"),
        );
        out.push(h);
    }
    (sw, out.try_into().unwrap())
}

/// tcpdump on the wire, started before the traffic it should see; two frames.
fn capture(ns: &str, dev: &str, filter: &str) -> Child {
    let c = Command::new("ip")
        .args([
            "netns", "exec", ns, "timeout", "15", "tcpdump", "-l", "-e", "-nn", "-c", "2", "-i",
            dev,
        ])
        .args(filter.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump runs");
    std::thread::sleep(Duration::from_millis(1500));
    c
}

fn captured(c: Child) -> String {
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// b's vlan port leases its address from OVN's DHCP on the localnet switch: the one the
/// plan picked, with the segment's MTU (no tunnel) and no router (the LAN has its own).
fn lease(lab: &OvnLab, vb: &str) -> String {
    let addr = lab.picked("pvb");
    let lease = lab.udhcpc(
        vb,
        "eth1",
        &["mtu"],
        "ip=$ip mtu=$mtu router=$router",
        false,
    );
    assert!(
        lease.contains(&format!("ip={addr} mtu=1500 router=\n")),
        "OVN's DHCP answered {lease}, not {addr} with the segment's MTU and no router"
    );
    addr
}

/// Guests reach the physical hosts of their network, VLAN 100's frames are tagged on the
/// wire, VLAN 200's host is out of reach, and guests on two chassis meet on the segment.
fn on_the_segment(lab: &OvnLab, g: &Guests, phys: &str, hosts: &[String; 3]) {
    for ns in [&g.la, &g.lb] {
        wait_ping(ns, LAN_HOST);
    }
    let b_addr = lease(lab, &g.vb);
    for ns in [&g.va, &g.vb] {
        wait_ping(ns, V100_HOST);
    }
    assert_eq!(source_seen(&hosts[1], V100_HOST, &g.vb), b_addr);
    // On the wire from hv1, a's VLAN 100 frames carry the tag; its LAN frames carry none.
    let cap = capture(phys, "c1", "vlan 100 and icmp");
    assert!(pings(&g.va, V100_HOST));
    let seen = captured(cap);
    assert!(
        seen.contains("vlan 100,") && seen.contains("198.51.100.10 > 198.51.100.1"),
        "no VLAN 100 tag on the wire:\n{seen}"
    );
    let cap = capture(phys, "c1", "icmp");
    assert!(pings(&g.la, LAN_HOST));
    let seen = captured(cap);
    assert!(
        seen.contains("192.0.2.10 > 192.0.2.1") && !seen.contains("vlan"),
        "the LAN's frames are not untagged on the wire:\n{seen}"
    );
    // VLAN 200's host, in the same subnet, is not on VLAN 100: neither way.
    assert!(!pings(&g.va, V200_HOST), "VLAN 200 reached from VLAN 100");
    assert!(
        !pings(&hosts[2], "198.51.100.10"),
        "VLAN 100 reached from VLAN 200"
    );
    // a (hv1) and b (hv2) meet through the physical segment, not the tunnel: their frames
    // cross hv2's trunk port.
    let cap = capture(phys, "c2", "icmp and host 192.0.2.10");
    wait_ping(&g.la, "192.0.2.11");
    let seen = captured(cap);
    assert!(
        seen.contains("192.0.2.10 > 192.0.2.11"),
        "a's frames to b did not cross the segment:\n{seen}"
    );
    wait_ping(&g.vb, "198.51.100.10");
}

/// Port security holds on a provider network: a forged source from a is dropped, while its
/// own address flows.
fn forged_source_dropped(g: &Guests) {
    ok_in(&g.la, "ip addr add 192.0.2.77/24 dev eth0");
    assert!(
        !in_ns(&g.la, &format!("ping -c2 -W1 -I 192.0.2.77 {LAN_HOST}"))
            .status
            .success(),
        "a forged source reached the LAN"
    );
    assert!(pings(&g.la, LAN_HOST));
}

/// IPv6 from the LAN's router (`ipv6_prefixes`): with thc-ipv6's `fake_router6` on the LAN
/// host announcing the prefix, guests on both chassis form their SLAAC addresses (which
/// kvmnet lists in their port security) and reach the LAN host; an address of the prefix
/// that is not a's is dropped, while a's own flows.
fn lan_router_ipv6(g: &Guests, lan_host: &str) {
    let router_addr = format!("{LAN6}::1");
    ok_in(
        lan_host,
        &format!("ip -6 addr add {router_addr}/64 dev eth0 nodad"),
    );
    let _router = Bounded(
        Command::new("ip")
            .args(["netns", "exec", lan_host, "timeout", "60"])
            .args(["atk6-fake_router6", "eth0", &format!("{LAN6}::/64")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fake_router6 runs"),
    );
    let slaac = |ns: &str, host: &str| {
        // One zero group: written out, as `ip` (RFC 5952) shows it.
        let want = format!("{LAN6}:0:5054:ff:fe90:{host}");
        wait_addr6(ns, &format!("{want}/64"), 30, "true");
        want
    };
    let (a6, b6) = (slaac(&g.la, "a"), slaac(&g.lb, "b"));
    let ping6 = |ns: &str, from: &str, to: &str| {
        in_ns(ns, &format!("ping -6 -c2 -W1 -I {from} {to}"))
            .status
            .success()
    };
    assert!(ping6(&g.la, &a6, &router_addr), "a reaches the LAN host");
    assert!(ping6(&g.lb, &b6, &router_addr), "b reaches the LAN host");
    assert!(ping6(&g.la, &a6, &b6), "a reaches b on the segment");
    let forged = format!("{LAN6}::77");
    ok_in(
        &g.la,
        &format!("ip -6 addr add {forged}/64 dev eth0 nodad valid_lft 600 preferred_lft 600"),
    );
    assert!(
        !ping6(&g.la, &forged, &router_addr),
        "a forged IPv6 source reached the LAN"
    );
    assert!(
        ping6(&g.la, &a6, &router_addr),
        "a's own address still works"
    );
}

/// A command under `timeout`, stopped when dropped (the test passed or failed) with SIGTERM,
/// which `timeout` passes on to it. SIGKILL would stop `timeout` alone and leave the command
/// running with nothing left to bound it: a fake_router6 outlived a CI run that way.
struct Bounded(std::process::Child);

impl Drop for Bounded {
    fn drop(&mut self) {
        // SAFETY: signalling the child this test spawned, not yet waited for.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// `kvmnet status` of chassis `i`: `--json`'s provider uplink `pup`, and the text.
fn status(lab: &OvnLab, i: usize) -> (serde_json::Value, String) {
    let ns = lab.chassis[i - 1].ns.clone();
    let v: serde_json::Value =
        serde_json::from_str(&lab.ns.kvmnet_ok(&["status", "--json", "--netns", &ns])).unwrap();
    let p = v["ovn"]["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["uplink"] == "pup")
        .cloned()
        .unwrap_or_else(|| panic!("no provider uplink pup in {v}"));
    (p, lab.ns.kvmnet_ok(&["status", "--netns", &ns]))
}

/// The status line of uplink `pup` in the text output, split in words.
fn status_row(text: &str) -> Vec<String> {
    text.lines()
        .find(|l| l.starts_with("pup "))
        .unwrap_or_else(|| panic!("no row for pup:\n{text}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// On healthy chassis, doctor passes `ovn-provider` and status shows the uplink in its
/// bridge and mapped; an uplink gone from the host (renamed on hv2) fails with its fix.
fn provider_reported(lab: &OvnLab) {
    for i in 1..=2 {
        let (_, checks) = lab.doctor(i, "ovn-provider");
        assert_eq!(checks.len(), 1, "hv{i}: {checks:?}");
        assert_eq!(checks[0]["status"], "ok", "hv{i}: {checks:?}");
        assert!(
            checks[0]["message"].as_str().unwrap().contains("lan, v100"),
            "{checks:?}"
        );
        let (p, text) = status(lab, i);
        assert_eq!(
            p,
            serde_json::json!({"uplink": "pup", "bridge": "kvpn-pup",
                "physnet": "kvmnet-pn-pup", "device": true, "in_bridge": true,
                "held_by": "kvpn-pup", "mapped": true, "mapped_to": "kvpn-pup"})
        );
        assert_eq!(
            status_row(&text),
            ["pup", "kvpn-pup", "kvmnet-pn-pup", "true", "true", "true"],
            "{text}"
        );
    }
    let ch = lab.chassis[1].ns.clone();
    ok_in(&ch, "ip link set pup down && ip link set pup name pupgone");
    let (code, checks) = lab.doctor(2, "ovn-provider");
    ok_in(&ch, "ip link set pupgone name pup && ip link set pup up");
    assert_eq!(code, 1, "{checks:?}");
    let c = checks
        .iter()
        .find(|c| c["status"] == "fail")
        .unwrap_or_else(|| panic!("{checks:?}"));
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("the uplink pup does not exist on chassis hv2"),
        "{c}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("ip netns exec {ch} ip link")),
        "{c}"
    );
}

/// The uplink taken out of its bridge and the mapping removed by hand: doctor fails each
/// with its fix, status shows both, and (in [`repaired`]) apply puts them back.
fn provider_broken(lab: &OvnLab) {
    let (code, checks) = lab.doctor(1, "ovn-provider");
    assert_eq!(code, 1, "{checks:?}");
    let failed = |what: &str| {
        checks
            .iter()
            .find(|c| c["status"] == "fail" && c["message"].as_str().unwrap().contains(what))
            .unwrap_or_else(|| panic!("no failure saying {what:?}: {checks:?}"))
            .clone()
    };
    let out = failed("not in its Open vSwitch bridge kvpn-pup (it is in no bridge)");
    let db = lab.ovs_db(1);
    assert!(
        out["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("ovs-vsctl --db={db} add-port kvpn-pup pup")),
        "{out}"
    );
    let unmapped = failed("does not map kvmnet-pn-pup to kvpn-pup (it has no kvmnet-pn-pup)");
    assert!(
        unmapped["fix"].as_str().unwrap().contains(
            "set open_vswitch . external_ids:ovn-bridge-mappings=\"other:br-other,kvmnet-pn-pup:kvpn-pup\""
        ),
        "{unmapped}"
    );
    let (p, text) = status(lab, 1);
    assert_eq!(p["device"], true, "{p}");
    assert_eq!(p["in_bridge"], false, "{p}");
    assert_eq!(p["held_by"], serde_json::Value::Null, "{p}");
    assert_eq!(p["mapped"], false, "{p}");
    assert_eq!(
        status_row(&text),
        ["pup", "kvpn-pup", "kvmnet-pn-pup", "true", "false", "false"],
        "{text}"
    );
    // hv2 was not touched.
    assert_eq!(lab.doctor(2, "ovn-provider").1[0]["status"], "ok");
}

/// Drift is seen and repaired by the next apply: the uplink taken out of its bridge by
/// hand, and the localnet port's tag changed by hand.
fn repaired(lab: &OvnLab, g: &Guests, file: &SpecFile) {
    lab.vsctl(1, "del-port kvpn-pup pup");
    lab.vsctl(
        1,
        "set open_vswitch . external_ids:ovn-bridge-mappings=other:br-other",
    );
    provider_broken(lab);
    lab.nbctl("set Logical_Switch_Port kvmnet-ln-v100 tag=300");
    assert!(
        !pings(&g.va, V100_HOST),
        "VLAN 100 reached with the uplink out"
    );
    let out = lab.kvm(1, &["plan", file.path()]);
    assert!(
        out.contains("ovn-chassis hv1")
            && out.contains("ovn-port kvmnet-ln-v100: tag [300] -> [100]"),
        "the plan does not repair the drift:\n{out}"
    );
    lab.kvm(1, &["apply", file.path()]);
    assert_eq!(lab.vsctl(1, "port-to-br pup").trim(), "kvpn-pup");
    assert_eq!(
        lab.vsctl(1, "get open_vswitch . external_ids:ovn-bridge-mappings")
            .trim()
            .trim_matches('"'),
        "other:br-other,kvmnet-pn-pup:kvpn-pup"
    );
    let (_, checks) = lab.doctor(1, "ovn-provider");
    assert!(
        checks.len() == 1 && checks[0]["status"] == "ok",
        "{checks:?}"
    );
    assert_eq!(
        lab.nbctl("get Logical_Switch_Port kvmnet-ln-v100 tag")
            .trim(),
        "100"
    );
    wait_ping(&g.va, V100_HOST);
    wait_ping(&g.vb, V100_HOST);
}

#[test]
fn provider_networks_bridge_and_vlan() {
    if !privileged() || !ovn_present() {
        return;
    }
    // Machine 3 is the physical switch, not a chassis: its ovn-controller never starts.
    let mut lab = OvnLab::start_bare(3);
    for i in 1..=2 {
        lab.start_controller(i);
    }
    // Another tool's switch and bridge mapping: kvmnet leaves both as they are.
    lab.nbctl("ls-add foreign-sw");
    lab.vsctl(
        1,
        "set open_vswitch . external_ids:ovn-bridge-mappings=other:br-other",
    );
    let before = lab.nb_rows();
    let (phys, hosts) = segment(&mut lab);
    let g = Guests {
        la: lab.ns.reserve("pla"),
        va: lab.ns.reserve("pva"),
        lb: lab.ns.reserve("plb"),
        vb: lab.ns.reserve("pvb"),
    };
    let file = SpecFile::new(&spec(&lab, &g));
    for i in 1..=2 {
        lab.kvm(i, &["apply", file.path()]);
    }
    // Each chassis (neither a gateway) holds the uplink in one bridge for both networks.
    for i in 1..=2 {
        assert_eq!(lab.vsctl(i, "port-to-br pup").trim(), "kvpn-pup");
    }
    assert_eq!(
        lab.vsctl(1, "get open_vswitch . external_ids:ovn-bridge-mappings")
            .trim()
            .trim_matches('"'),
        "other:br-other,kvmnet-pn-pup:kvpn-pup"
    );
    assert_eq!(
        lab.nbctl("get Logical_Switch_Port kvmnet-ln-v100 tag")
            .trim(),
        "100"
    );
    // A VM's second port is eth1 in its namespace.
    for (ns, dev) in [
        (&g.la, "eth0"),
        (&g.va, "eth1"),
        (&g.lb, "eth0"),
        (&g.vb, "eth1"),
    ] {
        ok_in(ns, &format!("ethtool -K {dev} tx off >/dev/null"));
    }
    for p in ["pla", "pva", "plb", "pvb"] {
        lab.wait_up(p);
    }

    on_the_segment(&lab, &g, &phys, &hosts);
    forged_source_dropped(&g);
    lan_router_ipv6(&g, &hosts[0]);

    // A second apply finds nothing to change, on either chassis.
    for i in 1..=2 {
        let out = lab.kvm(i, &["plan", file.path()]);
        assert!(
            out.contains("No changes"),
            "hv{i} still has changes:\n{out}"
        );
    }

    provider_reported(&lab);
    repaired(&lab, &g, &file);

    for i in [2, 1] {
        lab.kvm(i, &["destroy"]);
    }
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy leaves exactly the rows that were there"
    );
    assert_eq!(
        lab.vsctl(1, "get open_vswitch . external_ids:ovn-bridge-mappings")
            .trim()
            .trim_matches('"'),
        "other:br-other"
    );
    for i in 1..=2 {
        assert!(lab.vsctl(i, "list-br").lines().all(|b| b != "kvpn-pup"));
        let ports = lab.vsctl(i, "--bare --columns=name list Port");
        assert!(
            ports.split_whitespace().all(|p| p != "pup"),
            "pup is still an Open vSwitch port on hv{i}"
        );
        // The uplink is back where it was: a plain interface of the chassis, up.
        let link = ok_in(&lab.chassis[i - 1].ns, "ip -o link show pup");
        assert!(
            link.contains("state UP") && !link.contains("master"),
            "{link}"
        );
    }
    assert!(
        !lab.vsctl(2, "get open_vswitch . external_ids")
            .contains("ovn-bridge-mappings"),
        "hv2 had no mapping before kvmnet"
    );
}
