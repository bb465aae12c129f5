//! IPv6 on OVN networks, on a real two-chassis OVN (tests/common/ovn_lab.rs), one lab for
//! the file. A routed network's router port announces its prefix: guests on both chassis
//! form their SLAAC addresses from OVN's RA (with the overlay's MTU) and ping each other
//! across the tunnel, and a guest of a second routed network through the router; a static
//! `ipv6` works on a routed and on an isolated network. A guest's forged IPv6 source is
//! dropped while its own flows, and its SLAAC address passes port security because kvmnet
//! lists it there (taken out by hand, the guest's IPv6 is dropped until an apply); a firewall with `policy: drop` lets ICMPv6 echo and TCP 22
//! in over IPv6 and not TCP 80, while neighbour discovery still works. OVN's DNS answers a
//! VM's declared IPv6 address (AAAA and PTR). OVN's RAs reach the
//! guests; so do a guest's own (a limit of OVN 23.03 README states, checked here). With
//! `ra.mode: dhcpv6`, OVN's DHCPv6 gives ISC dhclient the address kvmnet picked (or the
//! declared one), and port security holds the guest to it; `dns6` on a SLAAC network
//! answers Information-requests; `dns` puts the resolver and search list in the RAs.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const A_MAC: &str = "52:54:00:86:00:0a";
const B_MAC: &str = "52:54:00:86:00:0b";
/// The SLAAC (EUI-64) addresses of a and b in fd00:86::/64.
const A_SLAAC: &str = "fd00:86::5054:ff:fe86:a";
const B_SLAAC: &str = "fd00:86::5054:ff:fe86:b";
const B_LL: &str = "fe80::5054:ff:fe86:b";
const C_STATIC: &str = "fd00:87::12";
const F_MAC: &str = "52:54:00:89:00:0f";
const G_STATIC: &str = "fd00:89::77";
/// The link-local address of the router port kvmnet-lrp-six (its MAC is kvmnet's, from
/// the port's name).
const ROUTER_LL: &str = "fe80::86b:28ff:fe5a:ca97";

fn spec(lab: &OvnLab, ns: &[String; 7]) -> String {
    format!(
        r#"{head}networks:
  six:
    backend: ovn
    mode: routed
    ipv4: 10.86.0.1/24
    ipv6: fd00:86::1/64
    dhcp: {{ dns6: ["fd00:86::53"] }}
  sixb:
    backend: ovn
    mode: routed
    ipv4: 10.87.0.1/24
    ipv6: fd00:87::1/64
    ra: {{ mode: slaac }}
    dns: {{ domain: six.test }}
  sixi:
    backend: ovn
    mode: isolated
    ipv4: 10.88.0.1/24
    ipv6: fd00:88::1/64
{sixd}vms:
  a:
    host: hv1
    ports:
      - network: six
        name: v6a
        kind: veth
        netns: {a}
        mac: "{A_MAC}"
        ipv4: 10.86.0.10
  b:
    host: hv2
    ports:
      - network: six
        name: v6b
        kind: veth
        netns: {b}
        mac: "{B_MAC}"
        ipv4: 10.86.0.11
  c:
    host: hv2
    ports:
      - network: sixb
        name: v6c
        kind: veth
        netns: {c}
        mac: "52:54:00:87:00:0c"
        ipv4: 10.87.0.12
        ipv6: "{C_STATIC}"
        firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: tcp, ports: [22] }}, {{ proto: icmp, icmp_types: [echo-request] }} ] }} }}
  d:
    host: hv1
    ports:
      - network: sixi
        name: v6d
        kind: veth
        netns: {d}
        mac: "52:54:00:88:00:0d"
        ipv4: 10.88.0.13
        ipv6: "fd00:88::d"
  e:
    host: hv2
    ports:
      - network: sixi
        name: v6e
        kind: veth
        netns: {e}
        mac: "52:54:00:88:00:0e"
        ipv4: 10.88.0.14
        ipv6: "fd00:88::e"
{dhcp6_vms}"#,
        head = lab.spec_head(2, &[], ""),
        a = ns[0],
        b = ns[1],
        c = ns[2],
        d = ns[3],
        e = ns[4],
        sixd = DHCPV6_NETWORK,
        dhcp6_vms = dhcp6_vms(&ns[5], &ns[6]),
    )
}

/// A routed network whose guests take their address from DHCPv6.
const DHCPV6_NETWORK: &str = r#"  sixd:
    backend: ovn
    mode: routed
    ipv4: 10.89.0.1/24
    ipv6: fd00:89::1/64
    ra: { mode: dhcpv6 }
    dhcp: { range6: "fd00:89::100-fd00:89::1ff", dns6: ["fd00:89::53"], domain: d6.test }
"#;

/// f (an address from the pool) and g (its declared one) on `sixd`, in namespaces f and g.
fn dhcp6_vms(f: &str, g: &str) -> String {
    format!(
        r#"  f:
    host: hv1
    ports:
      - network: sixd
        name: v6f
        kind: veth
        netns: {f}
        mac: "{F_MAC}"
        ipv4: 10.89.0.15
  g:
    host: hv2
    ports:
      - network: sixd
        name: v6g
        kind: veth
        netns: {g}
        mac: "52:54:00:89:00:10"
        ipv4: 10.89.0.16
        ipv6: "{G_STATIC}"
"#
    )
}

fn pings6(ns: &str, ip: &str) -> bool {
    in_ns(
        ns,
        &format!("ping -6 -c1 -W1 {ip} >/dev/null 2>&1 || ping -6 -c2 -W1 {ip}"),
    )
    .status
    .success()
}

fn wait(what: &str, secs: u64, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether `ns`'s eth0 holds `addr`, out of duplicate address detection.
fn has_addr6(ns: &str, addr: &str) -> bool {
    let out = ok_in(ns, "ip -6 -o addr show dev eth0");
    out.lines()
        .any(|l| l.contains(&format!(" {addr}/")) && !l.contains("tentative"))
}

/// TCP over IPv6: serves on `port` in `server_ns` (answering with the peer address it saw)
/// while `client_ns` connects to `[ip]:port`. The answer, empty when none came.
fn tcp6_source_seen(server_ns: &str, client_ns: &str, ip: &str, port: u16) -> String {
    let server = format!(
        "import socket\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',{port}))\ns.listen(4)\ns.settimeout(8)\ntry:\n  c,a=s.accept(); c.sendall(a[0].encode()); c.close()\nexcept socket.timeout:\n  pass\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", server_ns, "python3", "-c", &server])
        .spawn()
        .expect("python3 runs");
    let client = format!(
        "import socket,time,sys\nfor i in range(15):\n  try:\n    c=socket.create_connection(('{ip}',{port}),timeout=1); print(c.recv(100).decode()); sys.exit(0)\n  except OSError:\n    time.sleep(0.2)\nsys.exit(1)\n"
    );
    let o = Command::new("ip")
        .args(["netns", "exec", client_ns, "python3", "-c", &client])
        .output()
        .expect("python3 runs");
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// OVN's RA, solicited with rdisc6, announces the prefix and the overlay's MTU; the guests
/// form their SLAAC addresses from it.
fn slaac(lab: &OvnLab, ns: &[String; 7]) {
    let ra = lab.nbctl("get Logical_Router_Port kvmnet-lrp-six ipv6_ra_configs");
    assert!(
        ra.contains("address_mode=slaac") && ra.contains("send_periodic=\"true\""),
        "{ra}"
    );
    for (n, ll, addr) in [
        (&ns[0], "fe80::5054:ff:fe86:a", A_SLAAC),
        (&ns[1], B_LL, B_SLAAC),
    ] {
        // rdisc6 sends from the link-local address, once it is out of DAD.
        let t = Instant::now();
        while !has_addr6(n, ll) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "no link-local {ll}: {}",
                ok_in(n, "ip -6 addr show dev eth0; sysctl net.ipv6.conf.eth0")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = ok_in(n, "rdisc6 -1 -r 3 -w 1000 eth0");
        eprintln!("OVN's RA: {out}");
        assert!(
            out.contains("fd00:86::/64") && out.contains("1442"),
            "{out}"
        );
        wait(&format!("SLAAC address {addr}"), 15, || has_addr6(n, addr));
    }
}

/// Routing, a static address, the firewall, a forged source.
fn traffic(ns: &[String; 7]) {
    let [a, b, c, d, e, ..] = ns;
    // Across the tunnel on one network, and through the router to the other.
    wait("b to reach a over IPv6", 20, || pings6(b, A_SLAAC));
    assert!(pings6(b, C_STATIC), "b reaches c's static address");
    assert!(pings6(c, B_SLAAC), "c reaches b's SLAAC address");
    // An isolated network: static addresses only, across chassis.
    assert!(
        !ok_in(d, "ip -6 -o addr show dev eth0 scope global").contains("fd00:88::5054"),
        "no SLAAC on an isolated network"
    );
    wait("d to reach e over IPv6", 20, || pings6(d, "fd00:88::e"));
    assert!(pings6(e, "fd00:88::d"));
    // No router holds an isolated OVN network's gateway address: no default route to it,
    // while a routed network's guest has one.
    for family in ["-4", "-6"] {
        let routes = ok_in(d, &format!("ip {family} route show default"));
        assert!(routes.trim().is_empty(), "d: {routes}");
    }
    assert!(ok_in(c, "ip -4 route show default").contains("via 10.87.0.1"));

    // c's firewall: 22 in over IPv6 (through the router), 80 not; the source seen is b's
    // SLAAC address.
    assert_eq!(tcp6_source_seen(c, b, C_STATIC, 22), B_SLAAC);
    assert_eq!(tcp6_source_seen(c, b, C_STATIC, 80), "");
    // Without a rule, a takes 80 (no firewall there).
    assert_eq!(tcp6_source_seen(a, b, A_SLAAC, 80), B_SLAAC);

    // A forged IPv6 source from b is dropped by port security, while its own flows.
    ok_in(b, "ip addr add fd00:86::bad/64 dev eth0 nodad");
    assert!(
        !in_ns(b, "ping -6 -c2 -W1 -I fd00:86::bad fd00:87::12")
            .status
            .success(),
        "a forged source passed"
    );
    assert!(
        !in_ns(b, &format!("ping -6 -c2 -W1 -I fd00:86::bad {A_SLAAC}"))
            .status
            .success(),
        "a forged source passed"
    );
    ok_in(b, "ip addr del fd00:86::bad/64 dev eth0");
    assert!(pings6(b, C_STATIC));
}

/// OVN's DNS answers a VM's declared IPv6 address (AAAA, and its PTR), asked over IPv6.
fn dns_aaaa(ns: &[String; 7]) {
    let c = &ns[2];
    let aaaa = ok_in(
        c,
        "dig +noedns +short +time=2 +tries=3 @fd00:87::1 AAAA c.six.test",
    );
    assert_eq!(aaaa.trim(), C_STATIC, "AAAA of c");
    let ptr = ok_in(
        c,
        &format!("dig +noedns +short +time=2 +tries=3 @fd00:87::1 -x {C_STATIC}"),
    );
    assert_eq!(ptr.trim(), "c.six.test.", "PTR of c's IPv6 address");
}

/// b's SLAAC address passes port security because kvmnet lists it: with b's port security
/// set by hand to its MAC and IPv4 only, b's IPv6 is dropped; the plan names the port and
/// an apply puts the address back.
fn slaac_in_port_security(lab: &OvnLab, ns: &[String; 7], file: &SpecFile) {
    let b = &ns[1];
    lab.nbctl(&format!(
        "--wait=hv lsp-set-port-security v6b \"{B_MAC} 10.86.0.11\""
    ));
    assert!(
        !in_ns(b, &format!("ping -6 -c2 -W1 {A_SLAAC}"))
            .status
            .success(),
        "b's IPv6 passed a port security listing only IPv4"
    );
    let plan = lab.kvm(2, &["plan", file.path()]);
    assert!(plan.contains("ovn-port v6b"), "{plan}");
    lab.kvm(2, &["apply", file.path()]);
    lab.nbctl("--wait=hv sync");
    wait("b's IPv6 back", 10, || pings6(b, A_SLAAC));
}

/// The router advertisements a's eth0 hears while b announces itself as a router with
/// thc-ipv6's fake_router6 and a solicits OVN's: tcpdump's lines.
fn ras_heard(a: &str, b: &str) -> String {
    let dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            a,
            "timeout",
            "9",
            "tcpdump",
            "-l",
            "-n",
            "-i",
            "eth0",
            "icmp6 and ip6[40] == 134",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump runs");
    std::thread::sleep(Duration::from_secs(1));
    let mut fake = Command::new("ip")
        .args([
            "netns",
            "exec",
            b,
            "timeout",
            "6",
            "atk6-fake_router6",
            "eth0",
            "2001:db8:bad::/64",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("fake_router6 runs");
    std::thread::sleep(Duration::from_secs(2));
    let _ = in_ns(a, "rdisc6 -1 -r 2 -w 1000 eth0");
    let _ = fake.wait();
    let out = dump.wait_with_output().expect("tcpdump ends");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// OVN's router advertisements reach a guest, unsolicited as well as solicited. A guest's
/// own RAs reach the others too: OVN 23.03 passes all neighbour discovery over any ACL (a
/// flow of priority 65532 in each ACL stage) and port security lets a port send from its
/// link-local address, so kvmnet has no guard against them on OVN (README, "OVN"). This
/// checks that limit as README states it: it fails when OVN stops passing them.
fn router_advertisements(ns: &[String; 7]) {
    let (a, b) = (&ns[0], &ns[1]);
    let heard = ras_heard(a, b);
    eprintln!("a heard:\n{heard}");
    assert!(
        heard.contains(&format!("{ROUTER_LL} > ")),
        "OVN's RA reaches a: {heard}"
    );
    assert!(
        heard.contains(&format!("{B_LL} > ")),
        "b's RA no longer reaches a: OVN drops guests' RAs now; README's limit is out of date: {heard}"
    );
}

/// A directory for the DHCPv6 clients' leases and events, removed on drop.
struct Work(std::path::PathBuf);

impl Work {
    fn new() -> Work {
        let d = std::env::temp_dir().join(unique("ovn6-dhcp"));
        std::fs::create_dir_all(&d).unwrap();
        Work(d)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ra.mode: dhcpv6` on OVN: the router port's RA tells guests to take their address from
/// DHCPv6 and forms none by SLAAC; OVN's DHCPv6 gives f the address kvmnet picked for it
/// from `range6` (the one its port lists) and g its declared `ipv6`, with `dns6` and the
/// domain; f reaches g from that address, and not from another address of the pool.
fn dhcpv6_stateful(lab: &OvnLab, ns: &[String; 7], work: &std::path::Path) {
    let (f, g) = (&ns[5], &ns[6]);
    wait("f's link-local address", 10, || {
        has_addr6(f, "fe80::5054:ff:fe89:f")
    });
    let ra = ok_in(f, "rdisc6 -1 -r 3 -w 1000 eth0");
    eprintln!("OVN's RA on sixd: {ra}");
    let flag = |name: &str| {
        ra.lines()
            .find(|l| l.trim_start().starts_with(name))
            .map(|l| l.rsplit(':').next().unwrap_or("").trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(flag("Stateful address conf."), "Yes", "{ra}");
    assert_eq!(flag("Autonomous address conf."), "No", "{ra}");
    let listed = lab.nbctl("get Logical_Switch_Port v6f addresses");
    let picked = listed
        .split([' ', '"', '[', ']'])
        .find(|w| w.starts_with("fd00:89::"))
        .unwrap_or_else(|| panic!("no DHCPv6 address in {listed}"))
        .to_string();
    let env = dhcp6_events(f, work, "f", "");
    assert!(env.contains(&format!("new_ip6_address={picked}")), "{env}");
    assert!(env.contains("new_dhcp6_name_servers=fd00:89::53"), "{env}");
    assert!(env.contains("d6.test"), "{env}");
    let env = dhcp6_events(g, work, "g", "");
    assert!(
        env.contains(&format!("new_ip6_address={G_STATIC}")),
        "{env}"
    );
    // SLAAC stays off: no address of the prefix but what DHCPv6 gave.
    std::thread::sleep(Duration::from_secs(1));
    let addrs = ok_in(f, "ip -6 -o addr show dev eth0 scope global");
    assert!(
        !addrs.contains("fd00:89::"),
        "f formed an address itself: {addrs}"
    );
    // As a DHCPv6 client adds it: with lifetimes (kvmnet leaves such addresses to the guest).
    let lft = "valid_lft 600 preferred_lft 600 nodad";
    ok_in(f, &format!("ip -6 addr add {picked}/64 dev eth0 {lft}"));
    wait("f to reach g from its DHCPv6 address", 20, || {
        pings6(f, G_STATIC)
    });
    let other = if picked == "fd00:89::1fe" {
        "fd00:89::1fd"
    } else {
        "fd00:89::1fe"
    };
    ok_in(f, &format!("ip -6 addr add {other}/64 dev eth0 {lft}"));
    let forged = in_ns(f, &format!("ping -6 -c2 -W1 -I {other} {G_STATIC}"));
    assert!(
        !forged.status.success(),
        "f reached g from {other}, a pool address not its own"
    );
    let own = in_ns(f, &format!("ping -6 -c2 -W1 -I {picked} {G_STATIC}"));
    assert!(own.status.success(), "f's own address still works: {own:?}");
}

/// `dhcp.dns6` on a SLAAC network: OVN answers a guest's Information-request with the
/// servers (stateless DHCPv6). A network with `dns` announces the gateway as resolver and
/// its domain as search list in its RAs, as the kernel backend's do.
fn dhcpv6_stateless_and_rdnss(ns: &[String; 7], work: &std::path::Path) {
    let env = dhcp6_events(&ns[0], work, "a", "-S");
    assert!(env.contains("new_dhcp6_name_servers=fd00:86::53"), "{env}");
    let ra = ok_in(&ns[2], "rdisc6 -1 -r 3 -w 1000 eth0");
    assert!(
        ra.lines()
            .any(|l| l.contains("Recursive DNS server") && l.contains("fd00:87::1")),
        "{ra}"
    );
    assert!(
        ra.lines()
            .any(|l| l.contains("DNS search list") && l.contains("six.test")),
        "{ra}"
    );
}

#[test]
fn ipv6_on_ovn_routed_and_isolated_networks() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(2);
    lab.start_controller(1);
    lab.start_controller(2);
    let before = lab.nb_rows();
    let ns = [
        lab.ns.reserve("v6a"),
        lab.ns.reserve("v6b"),
        lab.ns.reserve("v6c"),
        lab.ns.reserve("v6d"),
        lab.ns.reserve("v6e"),
        lab.ns.reserve("v6f"),
        lab.ns.reserve("v6g"),
    ];
    let file = SpecFile::new(&spec(&lab, &ns));
    lab.kvm(1, &["apply", file.path()]);
    lab.kvm(2, &["apply", file.path()]);
    lab.sbctl("--timeout=30 wait-until Chassis hv1");
    lab.sbctl("--timeout=30 wait-until Chassis hv2");
    for (n, lsp) in ns
        .iter()
        .zip(["v6a", "v6b", "v6c", "v6d", "v6e", "v6f", "v6g"])
    {
        ok_in(n, "ethtool -K eth0 tx off >/dev/null");
        lab.wait_up(lsp);
    }

    slaac(&lab, &ns);
    traffic(&ns);
    slaac_in_port_security(&lab, &ns, &file);
    dns_aaaa(&ns);
    router_advertisements(&ns);
    let work = Work::new();
    dhcpv6_stateful(&lab, &ns, &work.0);
    dhcpv6_stateless_and_rdnss(&ns, &work.0);

    for i in [1, 2] {
        let plan = lab.kvm(i, &["plan", file.path()]);
        assert!(plan.contains("No changes"), "hv{i}: {plan}");
    }
    lab.kvm(2, &["destroy"]);
    lab.kvm(1, &["destroy"]);
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy leaves exactly the rows that were there"
    );
}
