//! Allocations of one scrape at 1,000 ports: a measurement, not a test (it asserts nothing
//! about the count). The scrape's own code (`DaemonMetrics::render`: the kernel's counters
//! read on their threads, then every series written) runs in this process, in the
//! namespace the ports are in, under an allocator that counts. Run it with
//! `cargo test --release --test metrics_allocs -- --ignored --nocapture`.

mod common;
use common::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: as the caller promised for `l`.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        // SAFETY: as the caller promised.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
#[ignore]
fn allocations_of_a_scrape_at_1000_ports() {
    if !privileged() {
        return;
    }
    use std::fmt::Write as _;
    let mut ns = Namespaces::new();
    let host = ns.add("mal");
    let mut text = String::from(
        "version: 1\nnetworks:\n  n: { mode: nat, bridge: ma-n, ipv4: 10.163.0.1/16 }\nvms:\n",
    );
    let q = "qos: { inbound: { rate: 5gbit }, outbound: { rate: 5gbit } }";
    for i in 0..1000 {
        let _ = writeln!(
            text,
            "  o{i}: {{ ports: [ {{ network: n, name: mao{i}, ipv4: 10.163.{}.{}, firewall: {{ inbound: {{ policy: drop, rules: [ {{ proto: tcp, ports: [22] }} ] }} }}, {q} }} ] }}",
            1 + i / 250,
            2 + i % 250
        );
    }
    let spec_file = SpecFile::new(&text);
    ns.kvmnet_ok(&["apply", spec_file.path(), "--netns", &host]);
    let spec = kvmnet::spec::parse(&text, &kvmnet::spec::HostIdentity::default()).unwrap();
    let m = kvmnet::metrics::DaemonMetrics::default();
    m.set_spec(&spec);
    // Into the namespace: the reading threads the scrape starts inherit it.
    let f = std::fs::File::open(format!("/run/netns/{host}")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a namespace file descriptor; only this thread moves.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    let _ = m.render(None).unwrap();
    let mut per = Vec::new();
    for _ in 0..11 {
        let (a0, b0) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let out = m.render(None).unwrap();
        let (a1, b1) = (
            ALLOCS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        per.push((a1 - a0, b1 - b0, out.len()));
    }
    per.sort();
    let (allocs, bytes, size) = per[5];
    eprintln!(
        "one scrape at 1,000 ports: {allocs} allocations, {:.1} MB allocated in all, {size} bytes of output (median of 11)",
        bytes as f64 / 1e6
    );
}
