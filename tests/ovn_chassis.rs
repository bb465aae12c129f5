//! The OVN backend's chassis side (`kvmnet::ovn::chassis`) on real chassis: bare
//! Open_vSwitch databases with ovs-vswitchd and ovn-controller, made OVN chassis by
//! kvmnet's converge alone.
//!
//! What it proves: both chassis register in the Southbound database with their tunnel
//! endpoints; VM ports attached by kvmnet bind (`up=true`) and guests on the two chassis
//! ping across Geneve; a gateway chassis gets `br-ex` with its uplink and the bridge mapping,
//! and a guest on a localnet switch reaches the external network through it; what an
//! operator and ovn-controller left (a foreign `external_ids` key, a foreign bridge, a
//! foreign port on a `br-int` ovn-controller made) is untouched by converge and by remove;
//! a converged chassis converges again with no step and no transaction (counted in the
//! database's own log); a port whose interface does not exist is reported and a port no
//! longer wanted removed; two appliers converging one chassis at once both succeed without
//! duplicating anything; remove restores the borrowed keys exactly (a prior `ovn-encap-ip`
//! back, keys that did not exist deleted) and takes away the bridge kvmnet made.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

use std::time::Duration;

use kvmnet::ovn::chassis::{
    self, ChassisOriginals, ChassisPort, ChassisWanted, DatapathType, EncapType, GatewayUplink,
};
use kvmnet::ovn::ovsdb::{Client, Remote};

const OWNER: &str = "ovn-chassis-test";

fn wanted(lab: &OvnLab, i: usize, ports: &[&str], uplink: Option<&str>) -> ChassisWanted {
    ChassisWanted {
        system_id: lab.chassis[i - 1].name.clone(),
        ovn_remote: lab.sb(),
        encap_type: EncapType::Geneve,
        encap_ip: lab.chassis[i - 1].encap_ip.parse().unwrap(),
        datapath_type: DatapathType::Netdev,
        gateway: uplink.map(GatewayUplink::new),
        providers: Vec::new(),
        ports: ports
            .iter()
            .map(|vm| ChassisPort {
                ifname: format!("p-{vm}"),
                iface_id: vm.to_string(),
            })
            .collect(),
        ssl: None,
    }
}

fn connect(lab: &OvnLab, i: usize) -> Client {
    let remote = Remote::parse(&lab.ovs_db(i)).unwrap();
    chassis::connect(&[remote], Duration::from_secs(10)).unwrap()
}

/// How many transactions kvmnet committed to chassis `i`'s database: each carries its
/// comment, and a standalone ovsdb-server appends every committed transaction, comment
/// included, to the database file.
fn kvmnet_commits(lab: &OvnLab, i: usize) -> usize {
    let db = std::fs::read(lab.chassis[i - 1].dir.join("conf.db")).unwrap();
    String::from_utf8_lossy(&db)
        .matches(&format!("kvmnet: chassis {OWNER}"))
        .count()
}

/// The ports of `bridge`, ovn-controller's tunnel (`ovn-*`) and patch (`patch-*`) ports
/// aside.
fn ports(lab: &OvnLab, i: usize, bridge: &str) -> Vec<String> {
    lab.vsctl(i, &format!("list-ports {bridge}"))
        .lines()
        .filter(|p| !p.starts_with("ovn-") && !p.starts_with("patch-"))
        .map(String::from)
        .collect()
}

/// A value on chassis 1, as `ovs-vsctl get` prints it.
fn get(lab: &OvnLab, what: &str) -> String {
    lab.vsctl(1, &format!("get {what}")).trim().to_string()
}

/// What an operator sees of chassis `i` that kvmnet must give back as it found it.
fn view(lab: &OvnLab, i: usize) -> String {
    let mut v = lab.vsctl(i, "get Open_vSwitch . external_ids");
    for b in lab.vsctl(i, "list-br").lines() {
        v += &format!("\n{b}: {:?}", ports(lab, i, b));
    }
    v
}

/// hv1 as a host with OVN installed and in use by someone else too: ovn-controller
/// running (it makes br-int), a foreign port on br-int, a foreign bridge, a foreign key,
/// and an ovn-encap-ip from an earlier setup. Returns both chassis's views.
fn foreign_setup(lab: &mut OvnLab) -> [String; 2] {
    let hv1 = lab.chassis[0].ns.clone();
    lab.start_controller(1);
    lab.vsctl(1, "--timeout=10 wait-until Bridge br-int");
    ok_in(
        &hv1,
        "ip link add fp0 type veth peer name fp1 && ip link add fx0 type veth peer name fx1",
    );
    lab.vsctl(
        1,
        "set Open_vSwitch . external_ids:site=lab-a external_ids:ovn-encap-ip=172.31.0.99 \
         -- add-port br-int fp0 -- set interface fp0 external_ids:iface-id=someone-else \
         -- add-br br-foreign -- set bridge br-foreign datapath_type=netdev -- add-port br-foreign fx0",
    );
    [view(lab, 1), view(lab, 2)]
}

/// Guests vm1 and vm3 on hv1, vm2 on hv2; hv1's uplink ext0 to an external namespace; in NB,
/// switch ls1 (vm1, vm2) and switch ext (vm3 and a localnet port on physnet kvmnet-ext).
fn guests(lab: &mut OvnLab) -> [String; 3] {
    let hv1 = lab.chassis[0].ns.clone();
    let vm1 = lab.guest(1, "vm1", "00:00:00:00:02:01", "10.0.0.11/24");
    let vm2 = lab.guest(2, "vm2", "00:00:00:00:02:02", "10.0.0.12/24");
    let vm3 = lab.guest(1, "vm3", "00:00:00:00:02:03", "192.0.2.10/24");
    // hv1's uplink, to an external namespace.
    let ext = lab.ns.add("ext");
    ok(&format!(
        "ip -n {hv1} link add ext0 type veth peer name eth0 netns {ext} && ip -n {hv1} link set ext0 up"
    ));
    ok_in(
        &ext,
        "ip link set eth0 up && ip addr add 192.0.2.254/24 dev eth0",
    );
    lab.nbctl(
        "ls-add ls1 -- lsp-add ls1 vm1 -- lsp-set-addresses vm1 \"00:00:00:00:02:01 10.0.0.11\" \
         -- lsp-add ls1 vm2 -- lsp-set-addresses vm2 \"00:00:00:00:02:02 10.0.0.12\" \
         -- ls-add ext -- lsp-add ext vm3 -- lsp-set-addresses vm3 \"00:00:00:00:02:03 192.0.2.10\" \
         -- lsp-add ext ln -- lsp-set-type ln localnet -- lsp-set-addresses ln unknown \
         -- lsp-set-options ln network_name=kvmnet-ext",
    );
    [vm1, vm2, vm3]
}

/// Two appliers converge hv2 at once (two hosts applying one spec, say): both succeed and
/// hv2 holds one br-int and one port, where without the `wait`s the later transaction would
/// insert them again and fail on the names' uniqueness. `o2` gets what either recorded.
fn converge_concurrently(lab: &OvnLab, w2: &ChassisWanted, o2: &mut ChassisOriginals) {
    let (c2, c2b) = (connect(lab, 2), connect(lab, 2));
    let twice = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let mut o = ChassisOriginals::default();
            chassis::converge(&c2b, OWNER, w2, &mut o).map(|_| o)
        });
        let mine = chassis::converge(&c2, OWNER, w2, o2);
        (mine, other.join().unwrap())
    });
    let (Ok(_), Ok(other)) = twice else {
        panic!("{twice:?}");
    };
    for (k, v) in other.external_ids {
        o2.external_ids.entry(k).or_insert(v);
    }
    assert_eq!(
        lab.vsctl(2, "--bare --columns=name find Port name=p-vm2")
            .trim(),
        "p-vm2"
    );
    assert_eq!(lab.vsctl(2, "list-br").split_whitespace().count(), 2);
}

/// Both chassis register with their tunnel endpoints; ports bind; guests ping across; the
/// gateway chassis's br-ex holds the uplink, the physnet maps to it, and a guest on a
/// localnet switch reaches the external network.
fn check_bound(lab: &OvnLab, [vm1, vm2, vm3]: &[String; 3]) {
    for c in ["hv1", "hv2"] {
        lab.sbctl(&format!("wait-until Chassis {c}"));
    }
    let encaps = lab.sbctl("--bare --columns=chassis_name,ip list Encap");
    for (c, ip) in [("hv1", "172.31.0.1"), ("hv2", "172.31.0.2")] {
        let pair = format!("{c}\n{ip}");
        assert!(encaps.contains(&pair), "{pair} not in {encaps}");
    }
    for vm in ["vm1", "vm2", "vm3"] {
        lab.wait_up(vm);
    }
    wait_ping(vm1, "10.0.0.12");
    assert!(pings(vm2, "10.0.0.11"));
    assert_eq!(ports(lab, 1, "br-ex"), ["ext0"]);
    assert_eq!(
        get(lab, "Open_vSwitch . external_ids:ovn-bridge-mappings"),
        "\"kvmnet-ext:br-ex\""
    );
    wait_ping(vm3, "192.0.2.254");
}

/// A port whose interface the kernel side did not make is reported; a port of kvmnet's no
/// longer wanted is taken off br-int.
fn missing_interface_reported(lab: &OvnLab, w2: &ChassisWanted, o2: &mut ChassisOriginals) {
    let c2 = connect(lab, 2);
    let errors = |r: &kvmnet::ovn::ovsdb::Replica| chassis::port_errors(r, OWNER).unwrap();
    assert_eq!(errors(&c2.replica()), Vec::<String>::new());
    let mut w = w2.clone();
    w.ports.push(ChassisPort {
        ifname: "p-absent".into(),
        iface_id: "absent".into(),
    });
    chassis::converge(&c2, OWNER, &w, o2).unwrap();
    c2.wait_until(Duration::from_secs(10), |r| !errors(r).is_empty());
    let e = errors(&c2.replica());
    assert!(
        e.len() == 1 && e[0].contains("p-absent") && e[0].contains("No such device"),
        "{e:?}"
    );
    assert_eq!(
        chassis::converge(&c2, OWNER, w2, o2).unwrap(),
        ["ovs: remove port p-absent from br-int"]
    );
    assert_eq!(ports(lab, 2, "br-int"), ["p-vm2"]);
}

#[test]
fn bare_chassis_converged_bound_and_given_back() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(2);
    let before = foreign_setup(&mut lab);
    let vms = guests(&mut lab);

    let w1 = wanted(&lab, 1, &["vm1", "vm3"], Some("ext0"));
    let w2 = wanted(&lab, 2, &["vm2"], None);
    let (c1, c2) = (connect(&lab, 1), connect(&lab, 2));
    let (mut o1, mut o2) = (ChassisOriginals::default(), ChassisOriginals::default());

    // The plan says what will change, and changes nothing.
    let s1 = chassis::steps(&c1.replica(), OWNER, &w1, &o1).unwrap();
    let s2 = chassis::steps(&c2.replica(), OWNER, &w2, &o2).unwrap();
    for s in [
        "ovs: set Open_vSwitch external_ids:ovn-encap-ip=172.31.0.1 (was 172.31.0.99)",
        "ovs: set Open_vSwitch external_ids:system-id=hv1",
        "ovs: set Open_vSwitch external_ids:ovn-bridge-mappings=kvmnet-ext:br-ex",
        "ovs: add bridge br-ex (datapath_type netdev)",
        "ovs: add port ext0 to br-ex",
        "ovs: add port p-vm1 to br-int (iface-id vm1)",
    ] {
        assert!(s1.iter().any(|l| l == s), "{s} not in {s1:#?}");
    }
    assert!(!s1.iter().any(|l| l.contains("bridge br-int")), "{s1:#?}");
    assert!(
        s2.iter()
            .any(|l| l == "ovs: add bridge br-int (datapath_type netdev, fail_mode secure)"),
        "{s2:#?}"
    );
    assert_eq!(kvmnet_commits(&lab, 1) + kvmnet_commits(&lab, 2), 0);
    assert_eq!([view(&lab, 1), view(&lab, 2)], before);

    let planned = chassis::plan(&c1.replica(), OWNER, &w1, &o1).unwrap();
    let done = chassis::converge(&c1, OWNER, &w1, &mut o1).unwrap();
    assert_eq!(done, s1);
    assert_eq!(planned.originals, o1);
    converge_concurrently(&lab, &w2, &mut o2);
    // hv2's ovn-controller starts after kvmnet made its br-int (a host being set up).
    lab.start_controller(2);
    assert_eq!(
        o1.external_ids.get("ovn-encap-ip"),
        Some(&Some("172.31.0.99".to_string()))
    );
    assert_eq!(o1.external_ids.get("system-id"), Some(&None));
    assert!(!o1.external_ids.contains_key("site"));
    check_bound(&lab, &vms);
    missing_interface_reported(&lab, &w2, &mut o2);

    // What is not kvmnet's is as it was.
    assert_eq!(ports(&lab, 1, "br-foreign"), ["fx0"]);
    assert!(ports(&lab, 1, "br-int").contains(&"fp0".to_string()));
    assert_eq!(
        get(&lab, "Interface fp0 external_ids:iface-id"),
        "someone-else"
    );
    assert_eq!(get(&lab, "Open_vSwitch . external_ids:site"), "lab-a");

    // Converged: no step, and another converge commits nothing (the count moved above, so
    // it would move again).
    let commits = [kvmnet_commits(&lab, 1), kvmnet_commits(&lab, 2)];
    assert!(commits.iter().all(|&n| n >= 1), "{commits:?}");
    assert_eq!(
        chassis::steps(&c1.replica(), OWNER, &w1, &o1).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        chassis::steps(&c2.replica(), OWNER, &w2, &o2).unwrap(),
        Vec::<String>::new()
    );
    assert!(
        chassis::converge(&c1, OWNER, &w1, &mut o1)
            .unwrap()
            .is_empty()
    );
    assert!(
        chassis::converge(&c2, OWNER, &w2, &mut o2)
            .unwrap()
            .is_empty()
    );
    assert_eq!([kvmnet_commits(&lab, 1), kvmnet_commits(&lab, 2)], commits);

    // Remove gives everything back as it was found. hv2 is being given up: its
    // ovn-controller stops first (running, it would make a br-int of its own again).
    lab.stop_controller(2);
    assert!(
        !chassis::removal_steps(&c1.replica(), OWNER, &o1)
            .unwrap()
            .is_empty()
    );
    chassis::remove(&c1, OWNER, &o1).unwrap();
    chassis::remove(&c2, OWNER, &o2).unwrap();
    assert_eq!([view(&lab, 1), view(&lab, 2)], before);
    assert_eq!(
        get(&lab, "Open_vSwitch . external_ids:ovn-encap-ip"),
        "\"172.31.0.99\""
    );
    assert_eq!(
        chassis::removal_steps(&c1.replica(), OWNER, &o1).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        chassis::removal_steps(&c2.replica(), OWNER, &o2).unwrap(),
        Vec::<String>::new()
    );
}
