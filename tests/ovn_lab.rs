//! The OVN lab the OVN backend's tests stand on (`tests/common/ovn_lab.rs`), checked on its
//! own: two chassis on the userspace datapath, a logical switch with a port on each, written
//! with `ovn-nbctl`. Guests ping across the Geneve tunnel, and OVN's port security drops a
//! forged source while the same guest's own traffic flows.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

#[test]
fn two_chassis_switch_with_port_security() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start(2);
    lab.nbctl("ls-add ls1");
    for (i, vm) in [(1, "vm1"), (2, "vm2")] {
        let addr = format!("00:00:00:00:01:0{i} 10.0.0.1{i}");
        lab.nbctl(&format!(
            "lsp-add ls1 {vm} -- lsp-set-addresses {vm} \"{addr}\" -- lsp-set-port-security {vm} \"{addr}\""
        ));
    }
    let vm1 = lab.plug(1, "vm1", "00:00:00:00:01:01", "10.0.0.11/24");
    let vm2 = lab.plug(2, "vm2", "00:00:00:00:01:02", "10.0.0.12/24");
    lab.wait_up("vm1");
    lab.wait_up("vm2");
    assert_eq!(
        lab.sbctl("--bare --columns=name list Chassis")
            .split_whitespace()
            .count(),
        2
    );
    wait_ping(&vm1, "10.0.0.12");
    // A full-size frame crosses the tunnel (the underlay's MTU leaves room for Geneve).
    assert!(
        in_ns(&vm1, "ping -c1 -W2 -M do -s 1472 10.0.0.12")
            .status
            .success()
    );

    // A forged source address from vm1 is dropped by port security; its own still passes.
    ok_in(&vm1, "ip addr add 10.0.0.99/24 dev eth0");
    assert!(
        !in_ns(&vm1, "ping -c2 -W1 -I 10.0.0.99 10.0.0.12")
            .status
            .success()
    );
    assert!(pings(&vm1, "10.0.0.12"));
    assert!(pings(&vm2, "10.0.0.11"));
}
