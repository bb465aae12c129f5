//! Stable derived names and MACs. Stable means: the same spec gives the same names on every
//! host and every run, so re-applying never renames anything.

use super::model::Mac;

/// Linux's limit for interface names (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// FNV-1a: tiny, dependency-free, and fixed forever (std's hasher may change between releases).
pub fn fnv1a(data: &[u8]) -> u64 {
    fnv1a_from(FNV1A_BASIS, data)
}

/// FNV-1a's state before any byte.
pub const FNV1A_BASIS: u64 = 0xcbf29ce484222325;

/// FNV-1a from state `h` (what [`fnv1a`] had after the bytes before `data`): the hash of a
/// text goes on from where that of its start stopped.
pub fn fnv1a_from(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `prefix` + `body`, or when that is too long, `prefix` + as much of `body` as fits + a short
/// hash of the whole body, so distinct long names stay distinct.
pub(crate) fn fit(prefix: &str, body: &str) -> String {
    let full = format!("{prefix}{body}");
    if full.len() <= IFNAME_MAX {
        return full;
    }
    let hash = format!("{:04x}", fnv1a(body.as_bytes()) & 0xffff);
    let room = IFNAME_MAX - prefix.len() - hash.len() - 1;
    let head: String = body.chars().take(room).collect();
    format!("{prefix}{head}-{hash}")
}

pub fn bridge_name(network: &str) -> String {
    fit("kvbr-", network)
}

/// The VXLAN device of a `vxlan` network.
pub fn vxlan_name(network: &str) -> String {
    fit("vx-", network)
}

/// An 802.1Q sub-interface of `parent` (an uplink or a trunk port): `PARENT.VID`, the name
/// `ip link` users expect, or when that exceeds 15 characters `PREFIX` + VID + a hash of the
/// parent, so it stays stable and distinct.
pub fn vlan_name(prefix: &str, parent: &str, vid: u16) -> String {
    let full = format!("{parent}.{vid}");
    if full.len() <= IFNAME_MAX {
        return full;
    }
    format!("{prefix}{vid}-{:06x}", fnv1a(parent.as_bytes()) & 0xff_ffff)
}

/// The sub-interface of a vlan network's uplink.
pub fn uplink_vlan_name(uplink: &str, vid: u16) -> String {
    vlan_name("vl", uplink, vid)
}

/// The sub-interface of a trunk port for one of its VLANs.
pub fn trunk_vlan_name(port: &str, vid: u16) -> String {
    vlan_name("vt", port, vid)
}

pub fn port_name(vm: &str, index: usize) -> String {
    fit("kv-", &format!("{vm}-{index}"))
}

/// The MAC kvmnet derived for a port before it derived them per host (see [`super::macs`]):
/// 52:54:00 and 24 bits of VM and port name. Ports that carry it keep it, since their VMs
/// were started with it.
pub fn legacy_vm_mac(vm: &str, port_name: &str) -> Mac {
    let h = fnv1a(format!("{vm}/{port_name}").as_bytes()).to_be_bytes();
    Mac([0x52, 0x54, 0x00, h[0], h[1], h[2]])
}

/// The host end of a port: the VM's MAC with 0xfe first, so a bridge (which takes the lowest
/// port MAC unless told otherwise) never adopts it and the VM's own MAC stays unique on the L2.
pub fn host_end_mac(vm_mac: Mac) -> Mac {
    let mut b = vm_mac.0;
    b[0] = 0xfe;
    Mac(b)
}

/// A bridge's own MAC, fixed so it does not change as ports come and go.
pub fn bridge_mac(network: &str) -> Mac {
    let h = fnv1a(format!("bridge/{network}").as_bytes()).to_be_bytes();
    Mac([0x52, 0x54, 0x00, h[0], h[1], h[2]])
}

/// The bridge of a `vxlan` network: the segment spans hosts, so its MAC also depends on this
/// host's tunnel endpoint (two hosts' bridges must never share one).
pub fn overlay_bridge_mac(network: &str, local: std::net::Ipv4Addr) -> Mac {
    let h = fnv1a(format!("bridge/{network}/{local}").as_bytes()).to_be_bytes();
    Mac([0x52, 0x54, 0x00, h[0], h[1], h[2]])
}

/// The bridge of a `vlan` network: the VLAN spans hosts, so its MAC also depends on this
/// host's uplink (two hosts' bridges on one VLAN must never share one).
pub fn vlan_bridge_mac(network: &str, uplink_mac: Mac) -> Mac {
    let h = fnv1a(format!("bridge/{network}/{uplink_mac}").as_bytes()).to_be_bytes();
    Mac([0x52, 0x54, 0x00, h[0], h[1], h[2]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_stay_distinct() {
        assert_eq!(bridge_name("default"), "kvbr-default");
        assert_eq!(port_name("web1", 0), "kv-web1-0");
        let a = bridge_name("a-very-long-network-name-1");
        let b = bridge_name("a-very-long-network-name-2");
        assert!(a.len() <= IFNAME_MAX && b.len() <= IFNAME_MAX);
        assert_ne!(a, b);
        let p = port_name("some-really-long-vm-name", 3);
        assert!(p.len() <= IFNAME_MAX, "{p}");
    }

    #[test]
    fn vlan_names_fit() {
        assert_eq!(uplink_vlan_name("eth1", 10), "eth1.10");
        assert_eq!(trunk_vlan_name("web1-eth0", 4094), "web1-eth0.4094");
        let a = uplink_vlan_name("enp0s31f6-long", 4094);
        let b = uplink_vlan_name("enp0s31f6-lonh", 4094);
        assert!(a.len() <= IFNAME_MAX && a.starts_with("vl4094-"), "{a}");
        assert_ne!(a, b);
        assert!(trunk_vlan_name("a-fifteen-chars", 20).starts_with("vt20-"));
    }

    #[test]
    fn macs_are_unicast_and_local() {
        let m = legacy_vm_mac("web1", "kv-web1-0");
        assert!(!m.is_multicast());
        assert_eq!(m.0[0] & 2, 2);
        assert_eq!(host_end_mac(m).0[0], 0xfe);
        assert_eq!(legacy_vm_mac("web1", "kv-web1-0"), m);
    }
}
