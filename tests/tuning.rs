//! Tuning profiles: a documented sysctl set, overridden by host.sysctl entries, applied where
//! the namespace allows and restored on destroy.

mod common;
use common::*;

const KEYS: &[&str] = &[
    "net.core.somaxconn",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_mtu_probing",
    "net.ipv4.tcp_fastopen",
    "net.ipv4.tcp_slow_start_after_idle",
];

fn get(ns: &str, key: &str) -> String {
    ok_in(ns, &format!("sysctl -n {key}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn profiles_apply_with_overrides_and_restore() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("tune");
    let before = fingerprint(&host, KEYS);
    let spec = SpecFile::new(
        "version: 1\nhost:\n  tuning: throughput\n  sysctl:\n    net.core.somaxconn: \"1234\"\n",
    );
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(
        get(&host, "net.core.somaxconn"),
        "1234",
        "host.sysctl overrides the profile"
    );
    assert_eq!(get(&host, "net.ipv4.tcp_rmem"), "4096 1048576 134217728");
    assert_eq!(get(&host, "net.ipv4.tcp_mtu_probing"), "1");
    assert!(
        ns.kvmnet_ok(&["plan", spec.path(), "--netns", &host])
            .starts_with("No changes")
    );

    // Switching profile: the throughput-only settings go back, the latency ones come in.
    let latency = SpecFile::new("version: 1\nhost:\n  tuning: latency\n");
    ns.kvmnet_ok(&["apply", latency.path(), "--netns", &host]);
    assert_eq!(get(&host, "net.ipv4.tcp_fastopen"), "3");
    assert_eq!(get(&host, "net.ipv4.tcp_slow_start_after_idle"), "0");
    assert_eq!(get(&host, "net.core.somaxconn"), "4096");
    let orig = fingerprint(&host, &["net.ipv4.tcp_rmem"]);
    assert!(
        !orig.contains("134217728"),
        "throughput setting left behind"
    );

    ns.kvmnet_ok(&["destroy", "--netns", &host]);
    assert_eq!(
        fingerprint(&host, KEYS),
        before,
        "destroy did not restore the sysctls"
    );
}
