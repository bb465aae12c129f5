//! Direct networks: ports are macvtap devices on an uplink. Real frames go through the
//! macvtaps' character devices, as QEMU would send them: guest to guest (bridge mode), guest
//! to a peer on the uplink's segment, and not guest to guest in private mode. Idempotence,
//! owner drift, destroy that leaves the uplink and a foreign macvlan alone, rollback at every
//! step, and a /dev/tapN name clash with another namespace's macvtap refused.

mod common;
use common::*;

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::time::{Duration, Instant};

const MAC_A: [u8; 6] = [0x52, 0x54, 0x00, 0xde, 0x00, 0x0a];
const MAC_B: [u8; 6] = [0x52, 0x54, 0x00, 0xde, 0x00, 0x0b];
const IP_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const IP_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const IP_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// macvtap queues start with IFF_VNET_HDR: every frame carries a 10-byte virtio_net_hdr.
const VNET_HDR: usize = 10;

fn spec(mode: &str) -> String {
    format!(
        r#"version: 1
networks:
  lan:
    mode: direct
    uplink: up0
    direct_mode: {mode}
vms:
  a:
    ports:
      - {{ network: lan, name: dva, mac: "52:54:00:de:00:0a", ipv4: 198.51.100.10/24, owner: 65534 }}
  b:
    ports:
      - {{ network: lan, name: dvb, mac: "52:54:00:de:00:0b" }}
"#
    )
}

/// The VM side of a macvtap: its character device, opened through a node of our own (the
/// /dev/tapN name is per-namespace ifindex, /dev is shared by all namespaces).
struct Nic {
    file: File,
    _dir: tempdir::Dir,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn ifindex(ns: &str, dev: &str) -> u32 {
    ok(&format!(
        "ip netns exec {ns} cat /sys/class/net/{dev}/ifindex"
    ))
    .trim()
    .parse()
    .unwrap()
}

/// (major, minor) of the macvtap's character device, from the namespace's own sysfs.
fn devnum(ns: &str, dev: &str) -> (u32, u32) {
    let i = ifindex(ns, dev);
    let t = ok(&format!(
        "ip netns exec {ns} cat /sys/class/net/{dev}/macvtap/tap{i}/dev"
    ));
    let (a, b) = t.trim().split_once(':').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

fn open_nic(ns: &str, dev: &str) -> Nic {
    let (major, minor) = devnum(ns, dev);
    let dir = std::env::temp_dir().join(unique("mvt"));
    std::fs::create_dir_all(&dir).unwrap();
    let node = dir.join("tap");
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    // SAFETY: mknod on a path we own.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&node)
        .unwrap();
    Nic {
        file,
        _dir: tempdir::Dir(dir),
    }
}

impl Nic {
    fn send(&mut self, frame: &[u8]) {
        let mut buf = vec![0u8; VNET_HDR];
        buf.extend_from_slice(frame);
        self.file.write_all(&buf).unwrap();
    }

    /// The first frame `want` accepts within `timeout`; `None` if none came. Every frame seen
    /// is offered to `also` first (to answer ARP from the segment, say).
    fn recv_until(
        &mut self,
        timeout: Duration,
        want: &dyn Fn(&[u8]) -> bool,
        also: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        while Instant::now() < end {
            match self.file.read(&mut buf) {
                Ok(n) if n > VNET_HDR => {
                    let f = buf[VNET_HDR..n].to_vec();
                    if let Some(reply) = also(&f) {
                        self.send(&reply);
                    }
                    if want(&f) {
                        return Some(f);
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        None
    }

    fn recv(&mut self, timeout: Duration, want: &dyn Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
        self.recv_until(timeout, want, &mut |_| None)
    }
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// ARP (op 1 request, 2 reply) from `sha`/`spa` about `tpa`.
fn arp(op: u16, sha: [u8; 6], spa: Ipv4Addr, tha: [u8; 6], tpa: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0, 1, 8, 0, 6, 4];
    p.extend_from_slice(&op.to_be_bytes());
    p.extend_from_slice(&sha);
    p.extend_from_slice(&spa.octets());
    p.extend_from_slice(&tha);
    p.extend_from_slice(&tpa.octets());
    let dst = if op == 1 { [0xff; 6] } else { tha };
    eth(dst, sha, 0x0806, &p)
}

fn is_arp(f: &[u8], op: u16, spa: Ipv4Addr, tpa: Ipv4Addr) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x06]
        && f[20..22] == op.to_be_bytes()
        && f[28..32] == spa.octets()
        && f[38..42] == tpa.octets()
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"kvmnet direct test payload");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    eth(dst_mac, src_mac, 0x0800, &ip)
}

fn is_echo_reply(f: &[u8], from: Ipv4Addr, id: u16) -> bool {
    f.len() >= 42
        && f[12..14] == [0x08, 0x00]
        && f[23] == 1
        && f[26..30] == from.octets()
        && f[34] == 0
        && f[38..40] == id.to_be_bytes()
}

/// Answers ARP requests for `ip` with `mac`, as a guest's stack would.
fn arp_responder(mac: [u8; 6], ip: Ipv4Addr) -> impl FnMut(&[u8]) -> Option<Vec<u8>> {
    move |f: &[u8]| {
        if f.len() >= 42
            && f[12..14] == [0x08, 0x06]
            && f[20..22] == [0, 1]
            && f[38..42] == ip.octets()
        {
            let sha: [u8; 6] = f[22..28].try_into().unwrap();
            let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
            Some(arp(2, mac, ip, sha, spa))
        } else {
            None
        }
    }
}

/// A resolves the wan peer with ARP, then pings it: real replies from the peer's kernel.
fn reaches_wan(a: &mut Nic) {
    a.send(&arp(1, MAC_A, IP_A, [0; 6], IP_WAN));
    let reply = a
        .recv(Duration::from_secs(3), &|f| is_arp(f, 2, IP_WAN, IP_A))
        .expect("the wan peer answers A's ARP through the uplink");
    let wan_mac: [u8; 6] = reply[22..28].try_into().unwrap();
    a.send(&icmp_echo(MAC_A, wan_mac, IP_A, IP_WAN, 0x4b56));
    let mut responder = arp_responder(MAC_A, IP_A);
    a.recv_until(
        Duration::from_secs(3),
        &|f| is_echo_reply(f, IP_WAN, 0x4b56),
        &mut responder,
    )
    .expect("the wan peer answers A's ping");
}

/// A asks for B's address; whether B sees the broadcast and A gets B's answer.
fn a_reaches_b(a: &mut Nic, b: &mut Nic, timeout: Duration) -> bool {
    a.send(&arp(1, MAC_A, IP_A, [0; 6], IP_B));
    let Some(req) = b.recv(timeout, &|f| is_arp(f, 1, IP_A, IP_B)) else {
        return false;
    };
    assert_eq!(req[6..12], MAC_A, "the request arrives with A's MAC");
    b.send(&arp(2, MAC_B, IP_B, MAC_A, IP_A));
    a.recv(timeout, &|f| is_arp(f, 2, IP_B, IP_A) && f[0..6] == MAC_A)
        .is_some()
}

fn link_json(ns: &str, dev: &str) -> serde_json::Value {
    serde_json::from_str(&ok(&format!("ip -n {ns} -d -j link show {dev}"))).unwrap()
}

fn plan_len(ns: &Namespaces, spec: &str, host: &str) -> usize {
    let out = ns.kvmnet_ok(&["plan", spec, "--netns", host, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["changes"].as_array().unwrap().len()
}

/// For every K, failing after step K leaves the namespace as it was.
fn rollback_every_k(ns: &Namespaces, spec: &str, host: &str) {
    let n = plan_len(ns, spec, host);
    assert!(n >= 2, "plan too short: {n}");
    let before = fingerprint(host, &[]);
    for k in 1..=n {
        let ks = k.to_string();
        let o = ns.kvmnet_env(
            &["apply", spec, "--netns", host],
            &[("KVMNET_FAIL_AFTER", ks.as_str())],
        );
        assert_eq!(o.status.code(), Some(1), "K={k}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("ROLLBACK INCOMPLETE"), "K={k}: {stderr}");
        assert_eq!(
            fingerprint(host, &[]),
            before,
            "K={k} of {n}: not rolled back"
        );
    }
}

#[test]
fn direct_network_macvtap_ports() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("dh");
    let wan = ns.add("dw");
    ok(&format!(
        "ip -n {host} link add up0 type veth peer name up0p netns {wan} && \
         ip -n {host} link set up0 up && \
         ip -n {wan} addr add {IP_WAN}/24 dev up0p && ip -n {wan} link set up0p up && \
         ip -n {host} link add link up0 name fmv0 type macvlan mode bridge"
    ));
    let pristine = fingerprint(&host, &[]);
    let uplink_before = link_json(&host, "up0");
    let foreign_before = link_json(&host, "fmv0");

    // Rollback from nothing, at every step.
    let bridge = SpecFile::new(&spec("bridge"));
    rollback_every_k(&ns, bridge.path(), &host);

    let out = ns.kvmnet_ok(&["apply", bridge.path(), "--netns", &host]);
    assert!(out.contains("macvtap dva"), "{out}");
    assert_eq!(
        plan_len(&ns, bridge.path(), &host),
        0,
        "re-apply plans nothing"
    );

    // The devices: macvtap on up0, bridge mode, the VM's MAC, up.
    let d = ok(&format!("ip -n {host} -d -j link show dva"));
    let v: serde_json::Value = serde_json::from_str(&d).unwrap();
    let l = &v[0];
    assert_eq!(l["linkinfo"]["info_kind"], "macvtap", "{d}");
    assert_eq!(l["linkinfo"]["info_data"]["mode"], "bridge", "{d}");
    assert_eq!(l["address"], "52:54:00:de:00:0a", "{d}");
    assert_eq!(l["link"], "up0", "{d}");
    assert!(
        l["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{d}"
    );
    // The node QEMU opens is there and belongs to the owner.
    let idx = ifindex(&host, "dva");
    let md = std::fs::metadata(format!("/dev/tap{idx}")).unwrap();
    assert!(md.file_type().is_char_device());
    let (major, minor) = devnum(&host, "dva");
    assert_eq!(md.rdev(), libc::makedev(major, minor));
    assert_eq!(md.uid(), 65534);

    // Drift: the owner changed by hand is put back.
    ok(&format!("chown 0 /dev/tap{idx}"));
    assert_eq!(plan_len(&ns, bridge.path(), &host), 1);
    ns.kvmnet_ok(&["apply", bridge.path(), "--netns", &host]);
    assert_eq!(
        std::fs::metadata(format!("/dev/tap{idx}")).unwrap().uid(),
        65534
    );

    collision_with_another_namespace(&mut ns, idx);

    {
        let mut a = open_nic(&host, "dva");
        let mut b = open_nic(&host, "dvb");
        assert!(
            a_reaches_b(&mut a, &mut b, Duration::from_secs(3)),
            "bridge mode: A and B reach each other through the macvtaps"
        );
        reaches_wan(&mut a);
    }

    // Private mode: the ports are made again; they reach the segment, not each other.
    let private = SpecFile::new(&spec("private"));
    let p = ns.kvmnet_ok(&["plan", private.path(), "--netns", &host]);
    assert!(
        p.contains("- macvtap dva") && p.contains("+ macvtap dva"),
        "{p}"
    );
    // Rollback of a replacement, at every step.
    rollback_every_k(&ns, private.path(), &host);
    ns.kvmnet_ok(&["apply", private.path(), "--netns", &host]);
    assert_eq!(plan_len(&ns, private.path(), &host), 0);
    {
        let mut a = open_nic(&host, "dva");
        let mut b = open_nic(&host, "dvb");
        assert!(
            !a_reaches_b(&mut a, &mut b, Duration::from_secs(1)),
            "private mode: B must not see A's frames"
        );
        reaches_wan(&mut a);
    }

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(link_json(&host, "up0"), uplink_before, "uplink changed");
    assert_eq!(
        link_json(&host, "fmv0"),
        foreign_before,
        "foreign macvlan changed"
    );
    assert_eq!(fingerprint(&host, &[]), pristine, "destroy left something");
}

/// A macvtap in another namespace with the same interface index as `taken` (whose
/// /dev/tapN, owned by uid 65534, belongs to a port of the first namespace): kvmnet must not
/// give that node away, and must say why.
fn collision_with_another_namespace(ns: &mut Namespaces, taken: u32) {
    let other = ns.add("dx");
    ok(&format!(
        "ip -n {other} link add xu0 type veth peer name xu0p && ip -n {other} link set xu0 up"
    ));
    // Interface indexes grow one by one in a namespace: fill up to just below `taken`.
    // `n`: the highest index made so far.
    let mut n = ifindex(&other, "xu0p").max(ifindex(&other, "xu0"));
    loop {
        let next = n + 1;
        assert!(next <= taken, "cannot line up indexes ({next} > {taken})");
        if next == taken {
            break;
        }
        ok(&format!(
            "ip -n {other} link add link xu0 name fill{next} type macvlan"
        ));
        n = ifindex(&other, &format!("fill{next}"));
    }
    let s = SpecFile::new(
        "version: 1\nnetworks:\n  lan: { mode: direct, uplink: xu0 }\nvms:\n  x:\n    ports:\n      - { network: lan, name: dvx, owner: 1234 }\n",
    );
    let before = fingerprint(&other, &[]);
    let o = ns.kvmnet(&["apply", s.path(), "--netns", &other]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "/dev/tap{taken} is not the character device of macvtap 'dvx'"
        )),
        "{err}"
    );
    assert!(!err.contains("ROLLBACK INCOMPLETE"), "{err}");
    assert_eq!(fingerprint(&other, &[]), before, "not rolled back");
    let md = std::fs::metadata(format!("/dev/tap{taken}")).unwrap();
    assert_eq!(md.uid(), 65534, "the other namespace's node was given away");
}
