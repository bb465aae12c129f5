//! Two hosts applying one spec to the same Northbound database at the same moment, round
//! after round (a first apply of many ports, one port more, two more, one fewer, a firewall
//! changed): both applies succeed, and every row kvmnet owns exists once, as the spec says.
//! This is what the transactions' `wait`s are for: a host whose view is stale is refused
//! by the server and works its change out again. The two hosts are two scopes, with other
//! derived MACs for their own ports: the ports on OVN without `mac` must still come out the
//! same on both.

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{OvnLab, ovn_present};

use std::collections::BTreeMap;
use std::fmt::Write as _;

const POLICIES: [&str; 2] = [
    "[ { proto: tcp, ports: [22] } ]",
    "[ { proto: tcp, ports: [80, 443] }, { proto: icmp } ]",
];

/// `ports` VM ports on one routed OVN network with DHCP; `flip` gives port 0 the other
/// firewall.
fn spec(lab: &OvnLab, ports: usize, flip: bool) -> String {
    let mut s = format!(
        "version: 1\novn:\n  nb: {}\n  sb: {}\n  datapath: netdev\n  chassis:\n    \
         hv1: {{ encap_ip: 172.31.0.1, ovs: \"unix:/nonexistent.sock\" }}\nnetworks:\n  \
         conv:\n    backend: ovn\n    mode: routed\n    ipv4: 10.82.0.1/24\n    \
         dhcp: {{ range: 10.82.0.200-10.82.0.250 }}\nvms:\n",
        lab.nb(),
        lab.sb()
    );
    for i in 0..ports {
        let policy = POLICIES[(i + usize::from(flip && i == 0)) % 2];
        // Every third port without a MAC: each host derives it, and the two must agree.
        let mac = if i % 3 == 0 {
            String::new()
        } else {
            format!("mac: \"52:54:00:82:00:{i:02x}\", ")
        };
        let _ = writeln!(
            s,
            "  v{i}:\n    host: hv1\n    ports:\n      - {{ network: conv, name: conv{i}, \
             {mac}ipv4: 10.82.0.{}, firewall: {{ inbound: {{ policy: drop, rules: {policy} }} }} }}",
            i + 10
        );
    }
    s
}

/// kvmnet's rows of `table`, by their key: how many of each.
fn copies(lab: &OvnLab, table: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let listed = lab.nbctl(&format!(
        "--bare --columns=external_ids find {table} external_ids:kvmnet-owner=kvmnet"
    ));
    for ids in listed.lines().filter(|l| !l.trim().is_empty()) {
        let key = ids
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("kvmnet-key="))
            .unwrap_or("?")
            .to_string();
        *out.entry(key).or_default() += 1;
    }
    out
}

#[test]
fn two_hosts_applying_at_once_make_one_copy_of_each_row() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare(0);
    let hosts = [lab.ns.add("cv1"), lab.ns.add("cv2")];
    // 40 ports first: more new rows in a table than a transaction waits on key by key.
    for (round, (ports, flip)) in [
        (40, false),
        (41, false),
        (43, false),
        (42, false),
        (42, true),
    ]
    .into_iter()
    .enumerate()
    {
        let file = SpecFile::new(&spec(&lab, ports, flip));
        let children: Vec<_> = hosts
            .iter()
            .map(|h| {
                std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
                    .args(["apply", file.path(), "--netns", h, "--chassis", "nobody"])
                    .env("KVMNET_STATE_DIR", &lab.ns.state_dir)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("kvmnet runs")
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let lsps = copies(&lab, "Logical_Switch_Port");
        // The VM ports and the router's port on the switch, once each.
        assert_eq!(lsps.len(), ports + 1, "round {round}: {lsps:?}");
        for table in ["Logical_Switch_Port", "Port_Group", "ACL", "DHCP_Options"] {
            let dup: Vec<_> = copies(&lab, table)
                .into_iter()
                .filter(|(_, n)| *n > 1)
                .collect();
            assert!(dup.is_empty(), "round {round}: {table} twice: {dup:?}");
        }
        let groups =
            lab.nbctl("--bare --columns=ports find Port_Group external_ids:kvmnet-owner=kvmnet");
        assert_eq!(
            groups.split_whitespace().count(),
            ports,
            "round {round}: every port in one port group"
        );
        for h in &hosts {
            let plan =
                lab.ns
                    .kvmnet_ok(&["plan", file.path(), "--netns", h, "--chassis", "nobody"]);
            assert!(plan.contains("No changes"), "round {round}: {plan}");
        }
    }
    for h in &hosts {
        lab.ns.kvmnet_ok(&["destroy", "--netns", h]);
    }
    assert!(copies(&lab, "Logical_Switch_Port").is_empty());
}
