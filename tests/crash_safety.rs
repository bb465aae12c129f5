//! Real failures, not injected ones: the kernel refusing a request in the middle of a
//! pipelined batch is rolled back exactly, and `kvmnet apply` killed with SIGKILL at any
//! moment leaves nothing that the next `apply` or `destroy` cannot recognise as kvmnet's.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `n` guarded taps (every tenth shaped, so some ports get traffic control and a second
/// mark) and `veths` veth ports into namespaces kvmnet makes, on one isolated network.
fn spec(n: usize, veths: usize, guest: &str) -> String {
    let mut s = String::from(
        "version: 1\nnetworks:\n  big:\n    mode: isolated\n    bridge: cbr0\n    ipv4: 10.90.0.1/16\nvms:\n",
    );
    for i in 0..n {
        let qos = if i % 10 == 0 {
            ", qos: { inbound: { rate: 10mbit }, outbound: { rate: 5mbit } }"
        } else {
            ""
        };
        s.push_str(&format!(
            "  v{i}:\n    ports:\n      - {{ network: big, name: ct{i}, ipv4: 10.90.{}.{}{qos} }}\n",
            i / 200 + 1,
            i % 200 + 10
        ));
    }
    for i in 0..veths {
        s.push_str(&format!(
            "  g{i}:\n    ports:\n      - {{ network: big, name: cv{i}, kind: veth, netns: {guest}{i}, ipv4: 10.90.100.{} }}\n",
            i + 10
        ));
    }
    s
}

fn world(host: &str, guest: &str) -> String {
    let mut s = fingerprint(host, &[]);
    for g in namespaces_with(guest) {
        s.push_str(&format!("== netns {g}\n{}", fingerprint(&g, &[])));
    }
    s
}

/// Removes, test passed or not, the namespaces kvmnet made for veth ports.
struct Guests(String);

impl Drop for Guests {
    fn drop(&mut self) {
        for g in namespaces_with(&self.0) {
            let _ = sh(&format!("ip netns del {g}"));
        }
    }
}

/// The first lines where two fingerprints differ (they run to thousands of lines).
fn first_difference(a: &str, b: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let at = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let from = at.saturating_sub(3);
    format!(
        "line {at}:\n--- expected\n{}\n+++ found\n{}",
        a[from..(at + 6).min(a.len())].join("\n"),
        b[from..(at + 6).min(b.len())].join("\n")
    )
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn validate_refuses_more_ports_than_a_bridge_holds() {
    let f = SpecFile::new(&spec(1023, 0, "unused"));
    let ns = Namespaces::new();
    ns.kvmnet_ok(&["validate", f.path()]);
    let f = SpecFile::new(&spec(1024, 0, "unused"));
    let o = ns.kvmnet(&["validate", f.path()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    // The 1,024th port, where its name is written: line 10 + 3 * 1023.
    assert!(
        e.contains(":3079:") && e.contains("vms.v1023.ports[0]") && e.contains("1023 ports"),
        "{e}"
    );
}

#[test]
fn a_refusal_inside_a_pipelined_batch_is_rolled_back_exactly() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("crh");
    let guest = unique("crg");
    let _guests = Guests(guest.clone());
    // Someone attaches 1,010 interfaces of their own to the new bridge while the apply runs
    // (here: when it first runs `nft`, after the bridge exists and before the ports are
    // made). The spec is valid; the kernel refuses the 13th of the 40 taps (EXFULL) while
    // the requests for the others are in flight in the same pipelined batch.
    let mut veths = String::new();
    let mut enslave = String::new();
    for i in 0..1010 {
        veths.push_str(&format!("link add fd{i} type veth peer name fp{i}\n"));
        enslave.push_str(&format!("link set fd{i} master cbr0\n"));
    }
    let veths = SpecFile::new(&veths);
    let enslave = SpecFile::new(&enslave);
    ok(&format!("ip -n {host} -batch {}", veths.path()));
    let bin = std::env::temp_dir().join(unique("crbin"));
    std::fs::create_dir_all(&bin).unwrap();
    let flag = bin.join("once");
    std::fs::write(&flag, "").unwrap();
    let nft = std::process::Command::new("sh")
        .args(["-c", "command -v nft"])
        .output()
        .unwrap();
    let nft = String::from_utf8_lossy(&nft.stdout).trim().to_string();
    std::fs::write(
        bin.join("nft"),
        format!(
            "#!/bin/sh\nif [ -e {flag} ]; then rm -f {flag}; ip -n {host} -batch {b} >/dev/null; fi\nexec {nft} \"$@\"\n",
            flag = flag.display(),
            b = enslave.path(),
        ),
    )
    .unwrap();
    ok(&format!("chmod +x {}/nft", bin.display()));
    let before = world(&host, &guest);
    let big = SpecFile::new(&spec(40, 2, &guest));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = ns.kvmnet_env(&["apply", big.path(), "--netns", &host], &[("PATH", &path)]);
    let _ = std::fs::remove_dir_all(&bin);
    assert!(!flag.exists(), "the interference never ran");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("rolled back") && e.contains("full"), "{e}");
    assert_eq!(
        before,
        world(&host, &guest),
        "apply left something behind: {e}"
    );
}

/// How long a whole apply of `spec` takes here, then destroyed again.
fn apply_time(ns: &Namespaces, spec: &str, host: &str) -> Duration {
    let t = Instant::now();
    ns.kvmnet_ok(&["apply", spec, "--netns", host]);
    let d = t.elapsed();
    ns.kvmnet_ok(&["destroy", "--netns", host]);
    d
}

fn kill_apply_after(ns: &Namespaces, spec: &str, host: &str, after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["apply", spec, "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kvmnet starts");
    std::thread::sleep(after);
    let killed = child.kill().is_ok();
    let status = child.wait().expect("kvmnet reaped");
    killed && !status.success()
}

#[test]
fn apply_killed_at_any_moment_converges_or_destroys() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("crk");
    let guest = unique("crkg");
    let _guests = Guests(guest.clone());
    let f = SpecFile::new(&spec(800, 8, &guest));
    // A foreign interface and table that must outlive every destroy.
    ok_in(
        &host,
        "ip link add foreign0 type bridge && nft add table inet theirs",
    );
    let pristine = world(&host, &guest);
    let full = apply_time(&ns, f.path(), &host);
    assert_eq!(
        pristine,
        world(&host, &guest),
        "destroy after a whole apply"
    );
    let mut kills = 0;
    for (k, pct) in [3u32, 10, 20, 35, 50, 65].into_iter().enumerate() {
        if !kill_apply_after(&ns, f.path(), &host, full * pct / 100) {
            continue; // finished before the kill: nothing to learn from this one
        }
        kills += 1;
        if k % 2 == 0 {
            // The next apply converges: it succeeds and then nothing is left to do.
            ns.kvmnet_ok(&["apply", f.path(), "--netns", &host]);
            let plan = ns.kvmnet_ok(&["plan", f.path(), "--netns", &host, "--json"]);
            let v: serde_json::Value = serde_json::from_str(&plan).unwrap();
            assert_eq!(
                v["changes"],
                serde_json::json!([]),
                "killed at {pct}%: {plan}"
            );
        }
        // And destroy removes everything kvmnet made, killed run or not.
        ns.kvmnet_ok(&["destroy", "--netns", &host]);
        let now = world(&host, &guest);
        assert!(
            pristine == now,
            "killed at {pct}% of {full:?}: debris after destroy:\n{}",
            first_difference(&pristine, &now)
        );
    }
    assert!(
        kills >= 3,
        "only {kills} runs were killed before they finished ({full:?})"
    );
}
