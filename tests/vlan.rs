//! 802.1Q vlan networks and trunk ports between two "hypervisors". This kernel has no 8021q,
//! so each hypervisor is a QEMU guest (a Debian kernel with 8021q) that runs this build of
//! kvmnet from the host's root (`host ...`). Their eth1 NICs are taps on one bridge inside a
//! namespace this test made: the "switch port" that carries both VLANs between them.
//!
//! In each guest, kvmnet builds vlan networks 10 and 20 on eth1; guest namespaces stand in for
//! VMs. On hv1 a router VM has a trunk port (native VLAN 10, VLAN 20 tagged).

mod common;
use common::*;

#[path = "common/guest.rs"]
mod guest;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(180);
/// What the guests load before anything else: VLANs, bridges, veth, and the nftables parts
/// kvmnet's anti-spoofing table uses.
const MODULES: &[&str] = &[
    "8021q",
    "bridge",
    "veth",
    "nf_tables",
    "nft_meta_bridge",
    "nft_reject",
    "nft_reject_inet",
    "nft_ct",
];

fn spec(hv: u8, trunk: bool) -> String {
    let mut s = format!(
        r#"version: 1
networks:
  v10: {{ mode: vlan, uplink: eth1, vlan: 10, ipv4: 10.10.0.{hv}/24 }}
  v20: {{ mode: vlan, uplink: eth1, vlan: 20, ipv4: 10.20.0.{hv}/24 }}
vms:
  a{hv}:
    ports: [ {{ network: v10, kind: veth, netns: a, ipv4: 10.10.0.1{hv} }} ]
  b{hv}:
    ports: [ {{ network: v20, kind: veth, netns: b, ipv4: 10.20.0.1{hv} }} ]
"#
    );
    if trunk {
        s.push_str(&format!(
            r#"  r{hv}:
    ports: [ {{ network: v10, name: r-trunk, kind: veth, netns: r, ipv4: 10.10.0.50, vlans: [20] }} ]
"#
        ));
    }
    s
}

struct Hv {
    g: guest::Guest,
    kvmnet: String,
}

impl Hv {
    fn boot(name: &str, ns: &str, taps: [&str; 2], macs: [&str; 2]) -> Hv {
        let mut g = guest::Guest::builder()
            .name(name)
            .netns(ns)
            .nic(guest::Nic::new(taps[0], macs[0]))
            .nic(guest::Nic::new(taps[1], macs[1]))
            .net(0, "none")
            .net(1, "up")
            .modules(MODULES)
            .host_root()
            .memory_mb(384)
            .boot();
        g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
        // State lives in the guest (the host's / is read-only there).
        Hv {
            g,
            kvmnet: format!(
                "host env KVMNET_STATE_DIR=/tmp/kvmnet-state {}",
                env!("CARGO_BIN_EXE_kvmnet")
            ),
        }
    }

    fn sh(&mut self, cmd: &str) -> (i32, String) {
        self.g.run(cmd, T)
    }

    fn ok(&mut self, cmd: &str) -> String {
        self.g.run_ok(cmd, T)
    }

    fn kvmnet(&mut self, args: &str) -> String {
        let cmd = format!("{} {args} 2>&1", self.kvmnet);
        self.ok(&cmd)
    }

    /// The guest's own view of its uplink: everything but counters.
    /// The uplink as kvmnet could change it. The kernel's own IPv6 duplicate address
    /// detection flips a fresh link-local address from `tentative` to settled on its own
    /// schedule, so that flag is left out.
    fn uplink(&mut self) -> String {
        self.ok("host ip -d -o link show eth1; host ip -o addr show dev eth1; host ip -o link show type vlan")
            .replace(" tentative", "")
    }

    fn pings(&mut self, ns: &str, ip: &str) -> bool {
        self.sh(&format!("host ip netns exec {ns} ping -c 2 -W 3 {ip}"))
            .0
            == 0
    }
}

/// tcpdump on the wire (in the test namespace), started before the traffic it should see.
fn capture(ns: &str, dev: &str, filter: &str) -> Child {
    let c = Command::new("ip")
        .args([
            "netns", "exec", ns, "tcpdump", "-l", "-e", "-nn", "-c", "2", "-i", dev,
        ])
        .args(filter.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump runs");
    std::thread::sleep(Duration::from_millis(1500));
    c
}

fn captured(mut c: Child) -> String {
    for _ in 0..100 {
        if let Ok(Some(_)) = c.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn vlans_between_two_hypervisors() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let wire = ns.add("vlwire");
    ok_in(
        &wire,
        "ip link add sw type bridge && ip link set sw up && \
         for t in h1m h1u h2m h2u; do ip tuntap add dev $t mode tap && ip link set $t up; done && \
         ip link set h1u master sw && ip link set h2u master sw",
    );
    let mut hv1 = Hv::boot(
        "vlan-hv1",
        &wire,
        ["h1m", "h1u"],
        ["52:54:00:71:00:01", "52:54:00:71:01:01"],
    );
    let mut hv2 = Hv::boot(
        "vlan-hv2",
        &wire,
        ["h2m", "h2u"],
        ["52:54:00:72:00:01", "52:54:00:72:01:01"],
    );
    // hv2's uplink starts down: kvmnet brings it up for its VLANs, and destroy gives that
    // back (the comparison at the end includes the up state).
    hv2.ok("host ip link set eth1 down");
    let before1 = hv1.uplink();
    let before2 = hv2.uplink();

    for (hv, n, trunk) in [(&mut hv1, 1u8, true), (&mut hv2, 2u8, false)] {
        hv.g.write_file("/host/tmp/vlan.yaml", spec(n, trunk).as_bytes(), T);
        let plan = hv.kvmnet("plan /tmp/vlan.yaml");
        assert!(
            plan.contains("+ vlan eth1.10 (network v10, vlan 10 on eth1"),
            "{plan}"
        );
        if trunk {
            assert!(
                plan.contains("+ vlan r-trunk.20 (network v20, vlan 20 on r-trunk"),
                "{plan}"
            );
        } else {
            // Rollback: fail just before the last step (a VLAN sub-interface), after the
            // first one was made; everything is undone and the uplink is as it was.
            let steps = plan.lines().filter(|l| l.starts_with("+ ")).count();
            let fail = format!(
                "{} apply /tmp/vlan.yaml 2>&1",
                hv.kvmnet.replacen(
                    "host env ",
                    &format!("host env KVMNET_FAIL_AFTER={} ", steps - 1),
                    1
                )
            );
            let (code, out) = hv.sh(&fail);
            assert_eq!(code, 1, "injected failure: {out}");
            assert_eq!(
                hv.uplink(),
                before2,
                "rollback left the uplink changed: {out}"
            );
            let left =
                hv.ok("host ip -o link show type bridge | wc -l; host ip netns list | wc -l");
            assert_eq!(
                left.split_whitespace().collect::<Vec<_>>(),
                ["0", "0"],
                "rollback left objects: {out}"
            );
        }
        hv.kvmnet("apply /tmp/vlan.yaml");
        // Idempotent: the applied host plans nothing.
        let again = hv.kvmnet("plan /tmp/vlan.yaml");
        assert!(again.contains("No changes"), "second plan: {again}");
    }
    let devs = hv1.ok("host ip -d link show eth1.20; host ip -d link show r-trunk.20");
    assert!(devs.contains("vlan protocol 802.1Q id 20"), "{devs}");
    assert!(devs.contains("kvmnet network=v20 trunk=r-trunk"), "{devs}");

    // VLAN 10 spans both hypervisors; the frames on the wire carry tag 10.
    let cap = capture(&wire, "h1u", "vlan 10 and icmp");
    assert!(
        hv1.pings("a", "10.10.0.12"),
        "VM on VLAN 10 cannot reach its peer on hv2"
    );
    let seen = captured(cap);
    assert!(
        seen.contains("802.1Q") && seen.contains("vlan 10,"),
        "no VLAN 10 tag on the wire:\n{seen}"
    );
    // VLAN 20 likewise, tagged 20.
    let cap = capture(&wire, "h2u", "vlan 20 and icmp");
    assert!(
        hv2.pings("b", "10.20.0.11"),
        "VM on VLAN 20 cannot reach its peer on hv1"
    );
    let seen = captured(cap);
    assert!(
        seen.contains("vlan 20,"),
        "no VLAN 20 tag on the wire:\n{seen}"
    );

    // Drift: a VLAN sub-interface deleted by hand is planned and made again.
    hv2.ok("host ip link del eth1.20");
    assert!(
        !hv2.pings("b", "10.20.0.11"),
        "VLAN 20 works without its sub-interface"
    );
    let plan = hv2.kvmnet("plan /tmp/vlan.yaml");
    assert!(
        plan.contains("+ vlan eth1.20 (network v20") && plan.contains("Plan: 1 to add"),
        "{plan}"
    );
    hv2.kvmnet("apply /tmp/vlan.yaml");
    assert!(hv2.pings("b", "10.20.0.11"), "VLAN 20 not repaired");

    // VLAN 10 does not reach VLAN 20: with VLAN 20's subnet on-link, the VLAN 10 VM's ARP
    // stays in VLAN 10 and nobody answers.
    hv1.ok("host ip -n a route add 10.20.0.0/24 dev eth0");
    assert!(
        !hv1.pings("a", "10.20.0.12"),
        "VLAN 10 reached a VM on VLAN 20"
    );
    assert!(
        !hv1.pings("a", "10.20.0.11"),
        "VLAN 10 reached a VM on VLAN 20"
    );

    // The trunk port: VLAN 10 untagged on its eth0, VLAN 20 tagged (the VM makes eth0.20).
    hv1.ok(
        "host ip -n r link add link eth0 name eth0.20 type vlan id 20 && \
         host ip -n r addr add 10.20.0.50/24 dev eth0.20 && host ip -n r link set eth0.20 up",
    );
    assert!(
        hv1.pings("r", "10.10.0.12"),
        "trunk: no native VLAN 10 to hv2"
    );
    assert!(
        hv1.pings("r", "10.20.0.12"),
        "trunk: no tagged VLAN 20 to hv2"
    );
    assert!(
        hv1.pings("r", "10.20.0.11"),
        "trunk: no tagged VLAN 20 on hv1"
    );
    // Inside the VM the frames of VLAN 20 arrive tagged.
    hv1.ok("host ip netns exec r sh -c 'timeout 20 tcpdump -l -e -nn -c 1 -i eth0 vlan 20 and icmp >/tmp/trunk.cap 2>/dev/null & sleep 2; ping -c 2 -W 3 10.20.0.12 >/dev/null; wait'");
    let inside = hv1.ok("cat /host/tmp/trunk.cap");
    assert!(
        inside.contains("vlan 20,"),
        "trunk: no tag on the VM's NIC:\n{inside}"
    );
    // A VM on an access port cannot hop to VLAN 20 by tagging its frames itself: neither to
    // the trunk on its own host nor across the wire. The anti-spoofing rule for tagged frames
    // is what stops it.
    let tag_drops = |hv: &mut Hv| -> u64 {
        let chain = hv.ok("host nft list chain bridge kvmnet guard");
        let line = chain
            .lines()
            .find(|l| l.contains("8021ad"))
            .unwrap_or_else(|| panic!("no rule for tagged frames:\n{chain}"));
        line.split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {line}"))
    };
    let drops_before = tag_drops(&mut hv1);
    hv1.ok("host ip -n a route del 10.20.0.0/24 dev eth0 && \
         host ip -n a link add link eth0 name eth0.20 type vlan id 20 && \
         host ip -n a addr add 10.20.0.98/24 dev eth0.20 && host ip -n a link set eth0.20 up");
    assert!(
        !hv1.pings("a", "10.20.0.50"),
        "access port hopped to the trunk's VLAN 20"
    );
    assert!(
        !hv1.pings("a", "10.20.0.12"),
        "access port hopped to VLAN 20 on hv2"
    );
    assert!(
        tag_drops(&mut hv1) > drops_before,
        "the tagged frames were not dropped by the anti-spoofing rule"
    );
    assert!(hv1.pings("a", "10.10.0.12"), "VLAN 10 broke");

    // Anti-spoofing holds on the tagged VLAN too: another MAC on eth0.20 is dropped.
    hv1.ok("host ip -n r link set eth0.20 address 52:54:00:99:99:99");
    assert!(
        !hv1.pings("r", "10.20.0.12"),
        "trunk: a foreign MAC passed on VLAN 20"
    );

    // Destroy leaves both uplinks as they were.
    for hv in [&mut hv1, &mut hv2] {
        hv.kvmnet("destroy");
        let left = hv.ok("host ip -o link show type vlan | wc -l");
        assert_eq!(left.trim(), "0", "VLAN devices left behind");
    }
    assert_eq!(hv1.uplink(), before1, "hv1's eth1 changed");
    assert_eq!(hv2.uplink(), before2, "hv2's eth1 changed");
    hv1.g.shutdown(Duration::from_secs(30));
    hv2.g.shutdown(Duration::from_secs(30));
}
