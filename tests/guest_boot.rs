//! Proves the test-guest harness (tests/common/guest.rs): one guest boots on a persistent tap
//! in a throwaway namespace, and traffic flows both ways between it and the namespace.

#[path = "common/guest.rs"]
mod guest;

use guest::{Guest, Nic};
use std::process::Command;
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> (bool, String) {
    let o = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn ok(cmd: &str) -> String {
    let (success, out) = sh(cmd);
    assert!(success, "command failed: {cmd}\n{out}");
    out
}

/// The namespace, removed when the test ends, passed or not (after the guest: declared first).
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.0));
    }
}

#[test]
fn guest_boots_on_a_tap_and_talks_both_ways() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root, and CI must not skip it"
        );
        eprintln!("skipping: needs root");
        return;
    }
    let ns = Netns(format!("kvg{}", std::process::id() % 100000));
    let n = &ns.0;
    ok(&format!(
        "ip netns add {n} && ip -n {n} link set lo up \
         && ip -n {n} link add br0 type bridge && ip -n {n} addr add 10.77.0.1/24 dev br0 \
         && ip -n {n} link set br0 up \
         && ip -n {n} tuntap add dev gt0 mode tap && ip -n {n} link set gt0 master br0 up"
    ));

    let mac = "52:54:00:77:00:10";
    let t0 = Instant::now();
    let mut g = Guest::builder()
        .name("guest_boot")
        .netns(n)
        .nic(Nic::new("gt0", mac))
        .net(0, "static:10.77.0.10/24:10.77.0.1")
        .script("echo hello from the run script; exit 3")
        .boot();
    let ready = g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
    eprintln!(
        "guest ready after {:.1}s: {ready}",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        guest::field(&ready, "ip").as_deref(),
        Some("10.77.0.10/24"),
        "{ready}"
    );
    assert_eq!(guest::field(&ready, "mac").as_deref(), Some(mac), "{ready}");
    let exit = g.wait_for(guest::RUN_EXIT, Duration::from_secs(30));
    assert!(exit.ends_with("KVMNET-RUN-EXIT 3"), "{exit}");

    let t = Duration::from_secs(60);
    // The namespace reaches the guest ...
    ok(&format!(
        "ip netns exec {n} ping -c 3 -i 0.3 -w 30 10.77.0.10"
    ));
    // ... and the guest reaches the namespace.
    let (code, out) = g.run("ping -c 3 -W 5 10.77.0.1", t);
    assert_eq!(code, 0, "ping from the guest failed:\n{out}");
    assert!(out.contains("3 packets received"), "{out}");
    // The guest sees the MAC the test gave its NIC.
    let seen = g.run_ok("cat /sys/class/net/eth0/address", t);
    assert_eq!(seen.trim(), mac);
    // Status and output come back per command, and the shell keeps going after a failure.
    let (code, out) = g.run("echo partial; printf 'no newline'; false", t);
    assert_eq!((code, out.as_str()), (1, "partial\nno newline"));
    g.write_file("/tmp/f", b"line 1\nline 2 'quoted' $x\n", t);
    assert_eq!(g.run_ok("cat /tmp/f", t), "line 1\nline 2 'quoted' $x");

    let st = g.shutdown(Duration::from_secs(30));
    assert!(st.is_some_and(|s| s.success()), "QEMU exit: {st:?}");
    eprintln!("boot to shutdown: {:.1}s", t0.elapsed().as_secs_f64());
}
