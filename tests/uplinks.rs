//! host.uplinks on this kernel: an existing NIC's MTU set, kept and restored; a bond spec
//! refused at run time (this kernel has no bonding) rolls back and leaves the host as it was.
//! Bonds themselves are tested in QEMU guests (tests/bond.rs).

mod common;
use common::*;

fn mtu(ns: &str, dev: &str) -> String {
    ok_in(ns, &format!("cat /sys/class/net/{dev}/mtu"))
        .trim()
        .to_string()
}

#[test]
fn nic_mtu_is_set_kept_and_restored() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("upl");
    ok(&format!(
        "ip -n {host} link add eth3 mtu 1400 type veth peer name eth3p mtu 9000 && ip -n {host} link set eth3 up"
    ));
    let before = fingerprint(&host, &[]);
    let spec = SpecFile::new("version: 1\nhost:\n  uplinks:\n    eth3:\n      mtu: 9000\n");
    let plan = ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host]);
    assert!(plan.contains("~ mtu eth3: 1400 -> 9000"), "{plan}");
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(mtu(&host, "eth3"), "9000");
    assert!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .starts_with("No changes"),
        "apply is not idempotent"
    );

    // Drift: changed by hand, put back by the next apply (the original stays 1400).
    ok(&format!("ip -n {host} link set eth3 mtu 1500"));
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(mtu(&host, "eth3"), "9000");

    // A spec without the entry restores the MTU eth3 had before kvmnet first changed it.
    let other = SpecFile::new("version: 1\n");
    let plan = ns.kvmnet_ok(&["plan", other.path(), "--netns", &host]);
    assert!(plan.contains("~ mtu eth3: 9000 -> 1400"), "{plan}");
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(mtu(&host, "eth3"), "1400");
    assert_eq!(
        fingerprint(&host, &[]),
        before,
        "destroy left something behind"
    );
    assert!(
        ns.kvmnet_ok(&["destroy", "--netns", &host])
            .contains("No changes")
    );
}

#[test]
fn bond_failure_rolls_back() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("bnd");
    ok(&format!(
        "ip -n {host} link add eth1 type veth peer name eth1p && ip -n {host} link add eth2 type veth peer name eth2p \
         && ip -n {host} link set eth1 up && ip -n {host} link set eth2 up \
         && ip -n {host} addr add 198.51.100.2/24 dev eth1 \
         && ip -n {host} route add 203.0.113.0/24 via 198.51.100.1 dev eth1"
    ));
    let before = fingerprint(&host, &[]);
    let spec = SpecFile::new(
        "version: 1\nhost:\n  uplinks:\n    bond0:\n      mode: 802.3ad\n      members: [eth1, eth2]\n      lacp_rate: fast\n",
    );
    let o = ns.kvmnet(&["apply", spec.path(), "--netns", &host]);
    let err = String::from_utf8_lossy(&o.stderr);
    if o.status.success() {
        // A kernel with bonding: then it must have worked and destroy must undo it.
        assert!(ok_in(&host, "cat /proc/net/bonding/bond0").contains("802.3ad"));
        ns.kvmnet_ok(&["destroy", "--netns", &host]);
    } else {
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("bond0"), "{err}");
    }
    assert_eq!(fingerprint(&host, &[]), before, "the host changed:\n{err}");
}
