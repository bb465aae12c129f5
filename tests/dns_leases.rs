//! Names from leases, with real clients against `kvmnet daemon`: a pool-only veth guest
//! gets an address from busybox `udhcpc` (and one from `dhclient -6`), and `dig` finds its
//! VM's name at those addresses (A, AAAA, PTR, a TTL no longer than the usual one); after
//! the releases the name is gone (NXDOMAIN). A guest that sends another VM's name in its
//! DHCP hostname and FQDN options takes no name but its own, while its own name works.

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GW: &str = "198.51.100.1";

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// `dig` in `ns` against the gateway, one try of one second: its full output.
fn dig(ns: &str, args: &str) -> String {
    let o = in_ns(ns, &format!("dig @{GW} +time=1 +tries=1 {args}"));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn short(ns: &str, args: &str) -> String {
    dig(ns, &format!("+short {args}")).trim().to_string()
}

fn status(ns: &str, args: &str) -> String {
    let out = dig(ns, args);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string()
}

/// busybox udhcpc once in `ns` (`extra` options); the address its script configured.
fn udhcpc(ns: &str, script: &str, extra: &str) -> String {
    let out = ok_in(
        ns,
        &format!("busybox udhcpc -i eth0 -n -q -t 5 -T 1 -s {script} {extra} 2>&1"),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("LEASE "))
        .unwrap_or_else(|| panic!("no lease: {out}"))
        .trim()
        .to_string()
}

/// `dhclient -6` once in `ns`; the address from its BOUND6 event (`release`: releases).
fn dhclient6(ns: &str, work: &std::path::Path, release: bool) -> String {
    let w = work.display();
    let hook = work.join("dhc.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\n[ \"$reason\" = BOUND6 ] && echo \"$new_ip6_address\" > {w}/bound6\nexit 0\n"),
    )
    .unwrap();
    ok(&format!("chmod +x {}", hook.display()));
    let what = if release { "-r" } else { "-1" };
    let o = in_ns(
        ns,
        &format!(
            "timeout 30 dhclient -6 {what} -sf {} -lf {w}/dhc.leases -pf {w}/dhc.pid eth0",
            hook.display()
        ),
    );
    assert!(o.status.success(), "dhclient -6 {what} in {ns}: {o:?}");
    std::fs::read_to_string(work.join("bound6"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn ttl_of(answer: &str, name: &str) -> u32 {
    answer
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one daemon, a lease's name from bind to release, and the take-over attempt"
)]
fn leased_addresses_answer_by_vm_name_until_released_and_guests_cannot_claim_names() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("dlh");
    let g = ns.reserve("dl");
    let (web, p1, p2) = (format!("{g}w"), format!("{g}1"), format!("{g}2"));
    ns.names.extend([web.clone(), p1.clone(), p2.clone()]);
    let spec = SpecFile::new(&format!(
        r#"version: 1
networks:
  n:
    mode: isolated
    bridge: dl-n
    ipv4: {GW}/24
    ipv6: fd00:db8:65::1/64
    ra: {{ mode: dhcpv6 }}
    dhcp: {{ range: 198.51.100.100-198.51.100.199, range6: fd00:db8:65::1000-fd00:db8:65::10ff, lease_time: 10m }}
    dns: {{ domain: vm.test, records: {{ api: 198.51.100.50 }} }}
vms:
  web: {{ ports: [ {{ network: n, name: dl-web, kind: veth, netns: {web}, ipv4: 198.51.100.10 }} ] }}
  pool1: {{ ports: [ {{ network: n, name: dl-p1, kind: veth, netns: {p1}, mac: "52:54:00:65:00:01", dhcp_client: true }} ] }}
  pool2: {{ ports: [ {{ network: n, name: dl-p2, kind: veth, netns: {p2}, mac: "52:54:00:65:00:02", dhcp_client: true }} ] }}
"#
    ));
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(["daemon", "--spec", spec.path(), "--netns", &host])
            .env("KVMNET_STATE_DIR", &ns.state_dir)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the DNS service", || {
        short(&web, "web.vm.test") == "198.51.100.10"
    });
    let script = ns.state_dir.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr flush dev \"$interface\" scope global; \
         ip addr add \"$ip/$mask\" dev \"$interface\"; echo \"LEASE $ip\"; \
         [ -n \"$LEASE_FILE\" ] && echo $ip > $LEASE_FILE ;; esac; exit 0\n",
    )
    .unwrap();
    ok(&format!("chmod +x {}", script.display()));
    let script = script.display().to_string();
    assert_eq!(
        status(&web, "pool1.vm.test"),
        "NXDOMAIN",
        "no lease, no name"
    );

    // pool2 asks for its lease in pool1's name (hostname) and web's (FQDN): it gets an
    // address, and only its own name.
    let ip2 = udhcpc(&p2, &script, "-x hostname:pool1 -F web.vm.test");
    let leases = ns.kvmnet_ok(&["leases", "--netns", &host, "--json"]);
    assert!(
        leases.contains("\"hostname\":\"pool1\"") || leases.contains("\"hostname\": \"pool1\""),
        "the server got the forged hostname: {leases}"
    );
    wait_until("pool2's name", || short(&web, "pool2.vm.test") == ip2);
    assert_eq!(
        status(&web, "pool1.vm.test"),
        "NXDOMAIN",
        "a guest's hostname option claims no name"
    );
    assert_eq!(short(&web, "web.vm.test"), "198.51.100.10");
    assert_eq!(short(&web, &format!("-x {ip2}")), "pool2.vm.test.");
    assert!(pings(&p2, GW), "pool2's own traffic flows");

    // pool1's lease names pool1, forward and reverse, with a TTL no longer than a minute.
    let ip1 = udhcpc(&p1, &script, "");
    assert_ne!(ip1, ip2);
    wait_until("pool1's name", || short(&web, "pool1.vm.test") == ip1);
    assert_eq!(short(&p2, "pool1.vm.test"), ip1, "asked by another guest");
    assert_eq!(short(&web, &format!("-x {ip1}")), "pool1.vm.test.");
    let ttl = ttl_of(&dig(&web, "+noall +answer pool1.vm.test"), "pool1.vm.test.");
    assert!((1..=60).contains(&ttl), "TTL {ttl}");
    assert_eq!(short(&web, "api.vm.test"), "198.51.100.50");

    // DHCPv6: the pool address answers as pool1's AAAA and names it back.
    let work = ns.state_dir.join("p1-6");
    std::fs::create_dir_all(&work).unwrap();
    wait_until("pool1's link-local address", || {
        let o = in_ns(&p1, "ip -6 addr show dev eth0 scope link");
        let t = String::from_utf8_lossy(&o.stdout).to_string();
        t.contains("fe80") && !t.contains("tentative")
    });
    let v6 = dhclient6(&p1, &work, false);
    assert!(v6.starts_with("fd00:db8:65::1"), "pool address: {v6}");
    wait_until("pool1's AAAA", || short(&web, "AAAA pool1.vm.test") == v6);
    assert_eq!(short(&web, &format!("-x {v6}")), "pool1.vm.test.");

    // Released (DHCPv6 Release, then DHCPRELEASE from a running udhcpc told by SIGUSR2;
    // Debian's udhcpc 1.35 with `-q -R` quits before it counts as bound and releases
    // nothing): the name and its reverse
    // names go.
    dhclient6(&p1, &work, true);
    wait_until("the AAAA to go", || {
        short(&web, "AAAA pool1.vm.test").is_empty()
    });
    assert_eq!(
        status(&web, &format!("-x {v6}")),
        "NXDOMAIN",
        "the prefix's reverse names stay here"
    );
    assert_eq!(
        short(&web, "pool1.vm.test"),
        ip1,
        "the IPv4 lease still counts"
    );
    let again = ok_in(
        &p1,
        &format!(
            "f={dir}/p1.lease; rm -f $f; \
             LEASE_FILE=$f busybox udhcpc -f -i eth0 -t 5 -T 1 -s {script} >/dev/null 2>&1 & p=$!; \
             for i in $(seq 100); do [ -s $f ] && break; sleep 0.1; done; \
             kill -USR2 $p; sleep 0.5; kill $p; cat $f",
            dir = ns.state_dir.display()
        ),
    );
    assert_eq!(again.trim(), ip1, "the same address, then released");
    wait_until("pool1's name to go", || {
        status(&web, "pool1.vm.test") == "NXDOMAIN"
    });
    assert_eq!(status(&web, &format!("-x {ip1}")), "NXDOMAIN");
    assert_eq!(short(&web, "pool2.vm.test"), ip2, "pool2 keeps its name");
}
