//! The OVN backend on a real two-chassis OVN (tests/common/ovn_lab.rs): one spec applied on
//! each chassis writes the Northbound rows once and binds each VM's port where its `host`
//! says. Guests on the two chassis ping and connect across the tunnel; OVN's DHCP gives a
//! pool guest the address the plan picked and the overlay's MTU; the firewall's allowed port
//! connects and another does not; a forged source is dropped; a row edited by hand is
//! repaired; a failed apply, or a transaction the database refuses, leaves the Northbound
//! database as it was; another's port added to kvmnet's switch is no drift, and destroy
//! refuses to take it along; destroy leaves exactly the rows that were there before (a
//! foreign switch among them).

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present, wait_ping};

fn spec(lab: &OvnLab, a_ns: &str, b_ns: &str) -> String {
    format!(
        r#"{head}networks:
  web:
    backend: ovn
    mode: routed
    ipv4: 10.80.0.1/24
    dhcp: {{ range: 10.80.0.100-10.80.0.200, dns: [10.80.0.1] }}
vms:
  a:
    host: hv1
    ports:
      - network: web
        name: ova
        kind: veth
        netns: {a_ns}
        mac: "52:54:00:80:00:0a"
        ipv4: 10.80.0.10
        firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: tcp, ports: [22] }}, {{ proto: icmp }} ] }} }}
        qos: {{ outbound: {{ rate: 20mbit }} }}
  b:
    host: hv2
    ports:
      - network: web
        name: ovb
        kind: veth
        netns: {b_ns}
        mac: "52:54:00:80:00:0b"
        dhcp_client: true
"#,
        head = lab.spec_head(2, &[], ""),
    )
}

/// b leases its address from OVN's DHCP and reaches a across the tunnel as a's firewall
/// allows, and no further; a forged source from b is dropped.
fn guests_across(lab: &OvnLab, a_ns: &str, b_ns: &str) {
    // OVN's DHCP gives b the address the plan picked for it, and the overlay's MTU.
    let addr = lab.picked("ovb");
    let lease = lab.udhcpc(
        b_ns,
        "eth0",
        &["mtu"],
        "ip=$ip mtu=$mtu router=$router",
        false,
    );
    assert!(
        lease.contains(&format!("ip={addr} mtu=1442 router=10.80.0.1")),
        "OVN's DHCP answered {lease}, not {addr} with the overlay's MTU"
    );

    wait_ping(b_ns, "10.80.0.10");
    // The firewall: 22 is allowed in, 80 is not.
    assert_eq!(tcp_source_seen(a_ns, 22, b_ns, "10.80.0.10", 22), addr);
    assert_eq!(tcp_source_seen(a_ns, 80, b_ns, "10.80.0.10", 80), "");
    // A forged source from b is dropped by port security, while its own address flows.
    ok_in(b_ns, "ip addr add 10.80.0.77/24 dev eth0");
    assert!(
        !in_ns(b_ns, "ping -c2 -W1 -I 10.80.0.77 10.80.0.10")
            .status
            .success()
    );
    assert!(pings(b_ns, "10.80.0.10"));
}

/// iperf3's receiver rate, in Mbit/s, of `client_ns` sending to `ip` for 2 s (on port 22,
/// which a's firewall lets in).
fn mbits(server_ns: &str, client_ns: &str, ip: &str) -> f64 {
    let mut server = std::process::Command::new("ip")
        .args([
            "netns", "exec", server_ns, "timeout", "15", "iperf3", "-s", "-1", "-p", "22",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 runs");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = in_ns(
        client_ns,
        &format!("timeout 10 iperf3 -c {ip} -p 22 -t 2 -J"),
    );
    let _ = server.wait();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("a rate")
        / 1e6
}

/// a's outbound `qos` is an OVN meter: a sends at no more than its rate, while b, which
/// has none, sends to a faster.
fn policed(a_ns: &str, b_ns: &str) {
    let b_ip = ok_in(b_ns, "ip -4 -o addr show dev eth0")
        .split_whitespace()
        .nth(3)
        .and_then(|c| c.split('/').next())
        .expect("b's address")
        .to_string();
    let out = mbits(b_ns, a_ns, &b_ip);
    let back = mbits(a_ns, b_ns, "10.80.0.10");
    assert!(
        out < 24.0,
        "a sent at {out:.1} Mbit/s past its 20mbit meter"
    );
    assert!(
        back > 2.0 * out,
        "unmetered b sent at {back:.1} Mbit/s, metered a at {out:.1}"
    );
}

/// A failure in the Northbound transaction itself (the server refuses it), and one injected
/// after the last step (the local part): nothing of the apply is left, in NB either.
fn injected_failures_roll_back(lab: &OvnLab, file: &str, ns: &str, before: &str) {
    let plan = lab
        .ns
        .kvmnet_ok(&["plan", file, "--json", "--netns", ns, "--chassis", "hv1"]);
    let changes = serde_json::from_str::<serde_json::Value>(&plan).unwrap()["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let first_nb = changes
        .iter()
        .position(|c| c.get("table").is_some())
        .expect("Northbound changes in the plan");
    let apply_failing_after = |k: usize| {
        lab.ns.kvmnet_env(
            &["apply", file, "--netns", ns, "--chassis", "hv1"],
            &[("KVMNET_FAIL_AFTER", &k.to_string())],
        )
    };
    let o = apply_failing_after(first_nb + 3);
    assert!(!o.status.success(), "a refused transaction fails the apply");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("aborted"), "the server's refusal: {err}");
    assert_eq!(
        lab.nb_rows(),
        before,
        "a refused transaction leaves NB as it was"
    );
    let o = apply_failing_after(changes.len());
    assert!(!o.status.success(), "an injected failure fails the apply");
    assert_eq!(
        lab.nb_rows(),
        before,
        "a rolled-back apply leaves NB as it was"
    );
}

#[test]
fn one_spec_on_two_chassis() {
    if !privileged() || !ovn_present() {
        return;
    }
    // Hosts as a distribution leaves them: OVS and ovn-controller running, nothing of OVN
    // configured; kvmnet makes them chassis.
    let mut lab = OvnLab::start_bare(2);
    lab.start_controller(1);
    lab.start_controller(2);
    // Someone else's switch, there before kvmnet and after it.
    lab.nbctl("ls-add foreign -- set logical_switch foreign external_ids:team=infra");
    let before = lab.nb_rows();
    let a_ns = lab.ns.reserve("ova");
    let b_ns = lab.ns.reserve("ovb");
    let file = SpecFile::new(&spec(&lab, &a_ns, &b_ns));
    let hv = |i: usize| lab.chassis[i - 1].ns.clone();
    let kvm = |i: usize, args: &[&str]| {
        let mut a: Vec<&str> = args.to_vec();
        let ns = hv(i);
        let ch = format!("hv{i}");
        a.extend(["--netns", &ns, "--chassis", &ch]);
        lab.ns.kvmnet(&a)
    };
    let okk = |i: usize, args: &[&str]| {
        let o = kvm(i, args);
        assert!(
            o.status.success(),
            "kvmnet {args:?} on hv{i}: {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    injected_failures_roll_back(&lab, file.path(), &hv(1), &before);

    // A switch of the network's name that kvmnet did not make: refused, nothing written.
    lab.nbctl("ls-add web");
    let with_web = lab.nb_rows();
    let o = kvm(1, &["apply", file.path()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a foreign switch named web is refused");
    assert!(
        err.contains(
            "Logical_Switch \"web\" exists in the Northbound database and is not kvmnet's"
        ),
        "{err}"
    );
    assert_eq!(lab.nb_rows(), with_web, "a refused apply writes nothing");
    lab.nbctl("ls-del web");

    let first = okk(1, &["apply", file.path()]);
    assert!(first.contains("ovn-switch web"), "{first}");
    // The second chassis finds the rows made: only its own port is its change.
    let second = okk(2, &["apply", file.path()]);
    assert!(
        !second
            .lines()
            .any(|l| l.contains(" ovn-") && !l.contains(" ovn-chassis ")),
        "NB rows are made once: {second}"
    );
    assert_eq!(
        lab.nbctl("--bare --columns=name find Logical_Switch name=web")
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        1
    );
    lab.sbctl("--timeout=30 wait-until Chassis hv1");
    lab.sbctl("--timeout=30 wait-until Chassis hv2");
    ok_in(&a_ns, "ethtool -K eth0 tx off >/dev/null");
    ok_in(&b_ns, "ethtool -K eth0 tx off >/dev/null");
    lab.wait_up("ova");
    lab.wait_up("ovb");

    guests_across(&lab, &a_ns, &b_ns);
    policed(&a_ns, &b_ns);

    // Idempotent; a row changed by hand is put back.
    assert!(okk(1, &["plan", file.path()]).contains("No changes"));
    lab.nbctl("lsp-set-port-security ova");
    let plan = okk(1, &["plan", file.path()]);
    assert!(plan.contains("ovn-port ova"), "{plan}");
    okk(1, &["apply", file.path()]);
    assert!(okk(2, &["plan", file.path()]).contains("No changes"));
    // The chassis too: a port taken off br-int by hand is put back.
    lab.vsctl(2, "del-port br-int ovb");
    let plan = okk(2, &["plan", file.path()]);
    assert!(
        plan.contains("ovn-chassis hv2") && plan.contains("drifted"),
        "{plan}"
    );
    okk(2, &["apply", file.path()]);
    lab.wait_up("ovb");
    assert!(pings(&b_ns, "10.80.0.10"));
    assert!(okk(2, &["plan", file.path()]).contains("No changes"));

    foreign_port_on_kvmnets_switch(&lab, file.path(), &hv(2));
    okk(2, &["destroy"]);
    okk(1, &["destroy"]);
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy leaves exactly the rows that were there"
    );
}

/// Someone else's port added to kvmnet's switch: kvmnet plans nothing for it, and refuses to
/// delete the switch (which would take the port with it) until it is gone.
fn foreign_port_on_kvmnets_switch(lab: &OvnLab, file: &str, ns: &str) {
    lab.nbctl("lsp-add web intruder -- lsp-set-addresses intruder unknown");
    let kvm = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--netns", ns, "--chassis", "hv2"]);
        lab.ns.kvmnet(&a)
    };
    let plan = kvm(&["plan", file]);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("No changes"),
        "another's port on kvmnet's switch is no drift: {}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let rows = lab.nb_rows();
    let o = kvm(&["destroy"]);
    assert!(
        !o.status.success(),
        "destroy refuses to take the port along"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("intruder"), "{err}");
    assert_eq!(lab.nb_rows(), rows, "a refused destroy leaves NB as it was");
    assert!(lab.nbctl("lsp-list web").contains("intruder"));
    lab.nbctl("lsp-del intruder");
}
