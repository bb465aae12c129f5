//! Adding or removing one port changes only that port's nftables objects: every other chain,
//! rule and set keeps its kernel handle (a rewrite would renumber them all), connections of
//! other ports carry on, and drift of a single element or chain is repaired on its own. Ports
//! with one policy share its chain; a port with a policy of per-port state (here a log prefix)
//! has its own.

mod common;
use common::*;

use std::collections::BTreeMap;

/// Every chain, rule and set of kvmnet's two tables with its handle: `inet chain in-x` ->
/// handle, `inet rule in-x 2` -> handle of the chain's second rule.
fn handles(host: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for fam in ["inet", "bridge"] {
        let text = ok(&format!(
            "ip netns exec {host} nft -a list table {fam} kvmnet"
        ));
        let mut chain = String::new();
        let mut n = 0;
        for line in text.lines() {
            let t = line.trim();
            let Some((body, handle)) = t.rsplit_once("# handle ") else {
                continue;
            };
            let body = body.trim();
            if let Some(c) = body.strip_prefix("chain ") {
                chain = c.trim_end_matches('{').trim().to_string();
                n = 0;
                out.insert(format!("{fam} chain {chain}"), handle.to_string());
            } else if let Some(s) = body
                .strip_prefix("set ")
                .or_else(|| body.strip_prefix("map "))
            {
                chain.clear();
                let s = s.trim_end_matches('{').trim();
                out.insert(format!("{fam} set {s}"), handle.to_string());
            } else if !chain.is_empty() {
                n += 1;
                out.insert(format!("{fam} rule {chain} {n}"), handle.to_string());
            }
        }
    }
    out
}

fn listing(host: &str) -> String {
    ok(&format!(
        "ip netns exec {host} nft list table inet kvmnet; ip netns exec {host} nft list table bridge kvmnet"
    ))
}

fn spec(a: &str, b: &str, with_new: bool) -> String {
    let fw = "firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [5001] } ] } }";
    let logged = "firewall: { inbound: { policy: drop, rules: [ { proto: tcp, ports: [5001], log: true } ] } }";
    let mut s = format!(
        r#"version: 1
networks:
  n: {{ mode: nat, bridge: ni-n, ipv4: 10.66.0.1/24 }}
vms:
  a: {{ ports: [ {{ network: n, name: ni-a, kind: veth, netns: {a}, ipv4: 10.66.0.10, {fw} }} ] }}
  b: {{ ports: [ {{ network: n, name: ni-b, kind: veth, netns: {b}, ipv4: 10.66.0.11, {fw} }} ] }}
  c: {{ ports: [ {{ network: n, name: ni-c, ipv4: 10.66.0.12, {logged} }} ] }}
"#
    );
    if with_new {
        s.push_str(&format!(
            "  new: {{ ports: [ {{ network: n, name: ni-new, ipv4: 10.66.0.20, {fw} }} ] }}\n"
        ));
    }
    s
}

/// A process killed (and reaped) when dropped, so a failed assertion leaves no server behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every handle of `before` is still there with the same number.
fn assert_kept(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>, when: &str) {
    for (k, h) in before {
        assert_eq!(
            after.get(k),
            Some(h),
            "{when}: {k} changed handle (was {h}): the table was rewritten"
        );
    }
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn one_port_changes_only_its_own_objects() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("nfti");
    let g = ns.reserve("ni");
    let (a, b) = (format!("{g}a"), format!("{g}b"));
    ns.names.extend([a.clone(), b.clone()]);
    let base = SpecFile::new(&spec(&a, &b, false));
    let plus = SpecFile::new(&spec(&a, &b, true));
    ns.kvmnet_ok(&["apply", base.path(), "--netns", &host]);
    let before = handles(&host);
    let text = listing(&host);
    // a and b jump to their policy's chain; c, whose rule logs with its own prefix, to its own.
    let shared = text
        .split("10.66.0.10 : jump ")
        .nth(1)
        .and_then(|t| t.split([',', ' ', '\n']).next())
        .expect("a's firewall element")
        .to_string();
    assert!(shared.starts_with("fw-in-"), "{text}");
    assert!(
        text.contains(&format!("10.66.0.11 : jump {shared}")),
        "{text}"
    );
    assert!(text.contains("10.66.0.12 : jump in-ni-c"), "{text}");
    assert!(
        before.contains_key(&format!("inet chain {shared}")),
        "{before:?}"
    );
    assert!(before.contains_key("inet chain in-ni-c"), "{before:?}");
    assert!(!before.contains_key("inet chain in-ni-a"), "{before:?}");
    assert!(before.contains_key("bridge set port_mac"), "{before:?}");

    // A connection to port a, open across the changes that follow.
    let mut server = KillOnDrop(std::process::Command::new("ip")
        .args([
            "netns", "exec", &a, "python3", "-c",
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',5001)); s.listen(4)\nc,_=s.accept()\nwhile True:\n  d=c.recv(100)\n  if not d: break\n  c.sendall(d)\n",
        ])
        .spawn()
        .unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let client = std::process::Command::new("ip")
        .args([
            "netns", "exec", &b, "python3", "-c",
            "import socket,time\nc=socket.create_connection(('10.66.0.10',5001),timeout=3)\nc.sendall(b'x'); assert c.recv(1)==b'x'\ntime.sleep(4)\nc.sendall(b'y'); print('kept' if c.recv(1)==b'y' else 'lost')\n",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));

    // Adding a port of a known policy: the plan adds its set elements, and no chain or rule.
    let plan = ns.kvmnet_ok(&["plan", plus.path(), "--netns", &host]);
    let nft_lines: Vec<&str> = plan.lines().filter(|l| l.contains("nftables")).collect();
    assert!(!nft_lines.is_empty(), "{plan}");
    // The new port's own mark, which its policy map and drop counters are keyed by.
    let mark = plan
        .split("in_mark \"ni-new\" : ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no mark for the new port:\n{plan}"))
        .to_string();
    assert!(
        nft_lines.iter().all(|l| l.starts_with("+ nftables element")
            && (l.contains("ni-new")
                || l.contains("10.66.0.20")
                || l.contains(&format!("in_policy {mark} : jump {shared}"))
                || l.ends_with(&format!("fw_in_drops {mark}"))
                // The new port's link-local address, to its policy's chain and counted.
                || (l.contains("in_policy6 fe80::") && l.contains(&shared))
                || l.contains("fw_in_drops6 fe80::"))),
        "adding a port touches other nftables objects:\n{plan}"
    );
    assert!(
        nft_lines
            .iter()
            .any(|l| l.contains(&format!("in_policy {mark} : jump {shared}"))),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", plus.path(), "--netns", &host]);
    let added = handles(&host);
    assert_kept(&before, &added, "adding a port");
    assert_eq!(added.len(), before.len(), "a chain, rule or set was added");
    let text = listing(&host);
    assert!(
        text.contains(&format!("10.66.0.20 : jump {shared}")),
        "{text}"
    );
    assert!(text.contains("\"ni-new\""), "{text}");
    let again = ns.kvmnet_ok(&["plan", plus.path(), "--netns", &host]);
    assert!(again.starts_with("No changes"), "{again}");

    // Removing it again: its objects go, everything else stays as it was.
    ns.kvmnet_ok(&["apply", base.path(), "--netns", &host]);
    let removed = handles(&host);
    assert_kept(&before, &removed, "removing a port");
    assert!(!removed.keys().any(|k| k.contains("ni-new")), "{removed:?}");
    let text = listing(&host);
    assert!(
        !text.contains("ni-new") && !text.contains("10.66.0.20"),
        "{text}"
    );

    let out = client.wait_with_output().unwrap();
    let _ = server.0.kill();
    let _ = server.0.wait();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "kept",
        "a connection of another port did not survive"
    );

    // The shared chain holds for every port that jumps to it: a port it does not allow is
    // dropped (a timeout, where a host without the firewall would refuse at once).
    for (from, to) in [(&b, "10.66.0.10"), (&a, "10.66.0.11")] {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", from, "python3", "-c",
                &format!("import socket\ntry:\n  socket.create_connection(('{to}',5003),timeout=1.5); print('open')\nexcept TimeoutError: print('dropped')\nexcept ConnectionRefusedError: print('refused')\n"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "dropped",
            "{from} -> {to}:5003 got through the shared chain: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Drift of one element and one chain: each repaired on its own.
    ok(&format!(
        "ip netns exec {host} nft delete element bridge kvmnet guarded '{{ \"ni-b\" }}' && \
         ip netns exec {host} nft flush chain inet kvmnet in-ni-c"
    ));
    let plan = ns.kvmnet_ok(&["plan", base.path(), "--netns", &host]);
    let nft_lines: Vec<&str> = plan.lines().filter(|l| l.contains("nftables")).collect();
    assert_eq!(nft_lines.len(), 2, "{plan}");
    assert!(
        nft_lines
            .iter()
            .any(|l| l.starts_with("+ nftables element bridge guarded \"ni-b\"")),
        "{plan}"
    );
    assert!(
        nft_lines
            .iter()
            .any(|l| l.starts_with("~ nftables chain inet in-ni-c: 0 -> ")),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", base.path(), "--netns", &host]);
    let repaired = handles(&host);
    let untouched: BTreeMap<String, String> = before
        .into_iter()
        .filter(|(k, _)| !k.contains("in-ni-c"))
        .collect();
    assert_kept(&untouched, &repaired, "repairing drift");
    let again = ns.kvmnet_ok(&["plan", base.path(), "--netns", &host]);
    assert!(again.starts_with("No changes"), "{again}");

    // A rule edited by hand (its comment gone) is drift too.
    let rule = repaired[&format!("inet rule {shared} 1")].clone();
    ok(&format!(
        "ip netns exec {host} nft replace rule inet kvmnet {shared} handle {rule} ct state established,related return"
    ));
    let plan = ns.kvmnet_ok(&["plan", base.path(), "--netns", &host]);
    assert!(
        plan.lines()
            .any(|l| l.starts_with(&format!("~ nftables chain inet {shared}"))),
        "{plan}"
    );
    ns.kvmnet_ok(&["apply", base.path(), "--netns", &host]);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
