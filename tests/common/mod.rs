//! Shared helpers for the privileged tests: throwaway namespaces that are always removed,
//! running kvmnet, and a fingerprint of everything a namespace contains.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// True when the test may run. Without root it skips, unless CI is set: there a skip would
/// hide a broken setup, so it fails.
pub fn privileged() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root, and CI must not skip it"
        );
        eprintln!("skipping: needs root");
    }
    root
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique, short name for this test process (namespace names end up in interface-free
/// places only, but keep them short for readability in `ip netns`).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("kvt{}{}-{tag}", std::process::id() % 100000, n)
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs")
}

/// Runs a shell command and panics with its output when it fails.
pub fn ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn in_ns(ns: &str, cmd: &str) -> Output {
    sh(&format!(
        "ip netns exec {ns} sh -c '{}'",
        cmd.replace('\'', r"'\''")
    ))
}

pub fn ok_in(ns: &str, cmd: &str) -> String {
    ok(&format!(
        "ip netns exec {ns} sh -c '{}'",
        cmd.replace('\'', r"'\''")
    ))
}

/// Namespaces that are deleted when the guard drops, test passed or not.
pub struct Namespaces {
    pub names: Vec<String>,
    pub state_dir: PathBuf,
}

impl Namespaces {
    pub fn new() -> Namespaces {
        let state_dir = std::env::temp_dir().join(unique("state"));
        Namespaces {
            names: Vec::new(),
            state_dir,
        }
    }

    /// Creates a namespace with loopback up.
    pub fn add(&mut self, tag: &str) -> String {
        let n = unique(tag);
        ok(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        self.names.push(n.clone());
        n
    }

    /// A name to hand to kvmnet (it creates the namespace); removed at the end if it exists.
    pub fn reserve(&mut self, tag: &str) -> String {
        let n = unique(tag);
        self.names.push(n.clone());
        n
    }

    /// Runs the kvmnet binary with this test's state directory.
    pub fn kvmnet(&self, args: &[&str]) -> Output {
        self.kvmnet_env(args, &[])
    }

    pub fn kvmnet_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kvmnet"));
        c.args(args).env("KVMNET_STATE_DIR", &self.state_dir);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().expect("kvmnet runs")
    }

    /// kvmnet that must succeed; returns stdout.
    pub fn kvmnet_ok(&self, args: &[&str]) -> String {
        let o = self.kvmnet(args);
        assert!(
            o.status.success(),
            "kvmnet {args:?} failed ({:?})\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = sh(&format!("ip netns del {n} 2>/dev/null"));
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Writes a spec into a temporary file that lives as long as the returned guard.
pub struct SpecFile(pub PathBuf);

impl SpecFile {
    pub fn new(text: &str) -> SpecFile {
        let p = std::env::temp_dir().join(format!("{}.yaml", unique("spec")));
        std::fs::write(&p, text).unwrap();
        SpecFile(p)
    }
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn strip_volatile(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            // Counters, indexes and timers change on their own or when a device is made
            // again; everything an operator configures is kept.
            for k in [
                "ifindex",
                "stats64",
                "stats",
                "link_index",
                "inet6_addr_gen_mode",
                "num_tx_queues",
                "num_rx_queues",
                "valid_life_time",
                "preferred_life_time",
                "hello_timer",
                "tcn_timer",
                "topology_change_timer",
                "gc_timer",
                "link_netnsid",
                "operstate",
                "flags",
                // A bridge port's STP state follows its carrier, which a tap gets while kvmnet
                // holds it open and loses when kvmnet lets go, noticed by the kernel a moment
                // later: like operstate, not configuration.
                "state",
                "addr_info6",
            ] {
                m.remove(k);
            }
            m.retain(|k, _| !k.ends_with("_timer"));
            for (_, x) in m.iter_mut() {
                strip_volatile(x);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_volatile),
        _ => {}
    }
}

fn json_of(cmd: &str) -> serde_json::Value {
    let o = sh(cmd);
    let mut v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    strip_volatile(&mut v);
    // A device made again gets a new index and so a new place in dumps; order by name.
    if let Some(a) = v.as_array_mut() {
        a.sort_by_key(|x| x["ifname"].as_str().unwrap_or("").to_string());
    }
    v
}

/// Everything in a namespace that kvmnet could change: links with their details, IPv4
/// addresses, routes of all tables, the whole nftables ruleset, the sysctls named.
pub fn fingerprint(ns: &str, sysctls: &[&str]) -> String {
    let links = json_of(&format!("ip -n {ns} -d -j link show"));
    let addrs = json_of(&format!("ip -n {ns} -4 -j addr show"));
    let routes = json_of(&format!("ip -n {ns} -4 -j route show table all"));
    let nft = sh(&format!("ip netns exec {ns} nft list ruleset"));
    let tc = sh(&format!("ip netns exec {ns} tc qdisc show"));
    let mut s = format!(
        "links {}\naddrs {}\nroutes {}\nnft {}\ntc {}\n",
        serde_json::to_string_pretty(&links).unwrap(),
        serde_json::to_string_pretty(&addrs).unwrap(),
        serde_json::to_string_pretty(&routes).unwrap(),
        normalize_nft(&String::from_utf8_lossy(&nft.stdout)),
        {
            // Listed in device-index order, which re-created devices change.
            let mut lines: Vec<String> = String::from_utf8_lossy(&tc.stdout)
                .lines()
                .map(String::from)
                .collect();
            lines.sort();
            lines.join("\n")
        }
    );
    for k in sysctls {
        let o = sh(&format!("ip netns exec {ns} sysctl -n {k}"));
        s.push_str(&format!(
            "sysctl {k} = {}",
            String::from_utf8_lossy(&o.stdout)
        ));
    }
    s
}

/// What of IPv6 kvmnet could change in a namespace, besides nftables (see [`fingerprint`]):
/// global addresses, routes of all tables, and forwarding.
pub fn fingerprint6(ns: &str) -> String {
    let addrs = json_of(&format!("ip -n {ns} -6 -j addr show scope global"));
    let routes = json_of(&format!("ip -n {ns} -6 -j route show table all"));
    let fwd = sh(&format!(
        "ip netns exec {ns} sysctl -n net.ipv6.conf.all.forwarding"
    ));
    format!(
        "addrs6 {}\nroutes6 {}\nforwarding6 {}",
        serde_json::to_string_pretty(&addrs).unwrap(),
        serde_json::to_string_pretty(&routes).unwrap(),
        String::from_utf8_lossy(&fwd.stdout)
    )
}

/// nft's listing with the chains, sets and maps of each table in name order and set
/// elements sorted: nft lists them in the order they were made, and an object removed and
/// made again (as a rollback does) comes last, though nothing about it changed. Rules keep
/// their order: it is what they mean.
pub fn normalize_nft(text: &str) -> String {
    let mut out = String::new();
    let mut items: Vec<Vec<String>> = Vec::new();
    let mut item: Option<Vec<String>> = None;
    for line in text.lines() {
        if line.starts_with("table ") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if line == "}" {
            items.sort();
            for i in items.drain(..) {
                out.push_str(&i.join("\n"));
                out.push('\n');
            }
            out.push_str("}\n");
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        match item.as_mut() {
            Some(lines) => {
                lines.push(line.to_string());
                if line == "\t}" {
                    items.push(sort_elements(item.take().unwrap()));
                }
            }
            None if line.starts_with("\t") && line.ends_with('{') => {
                item = Some(vec![line.to_string()]);
            }
            // Table-level lines (the comment, flags) stay first.
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A set's or map's lines with its elements in one sorted line.
fn sort_elements(lines: Vec<String>) -> Vec<String> {
    if !(lines[0].starts_with("\tset ") || lines[0].starts_with("\tmap ")) {
        return lines;
    }
    let Some(at) = lines
        .iter()
        .position(|l| l.trim_start().starts_with("elements = {"))
    else {
        return lines;
    };
    let end = lines[at..]
        .iter()
        .position(|l| l.trim_end().ends_with('}'))
        .map_or(lines.len() - 1, |i| at + i);
    let joined: String = lines[at..=end]
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" ");
    let inner = joined
        .trim_start_matches("elements = {")
        .trim_end_matches('}');
    let mut elements: Vec<String> = inner
        .split(',')
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    elements.sort();
    let mut out = lines[..at].to_vec();
    out.push(format!("\t\telements = {{ {} }}", elements.join(", ")));
    out.extend_from_slice(&lines[end + 1..]);
    out
}

/// Names of all namespaces whose name starts with `prefix`.
pub fn namespaces_with(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Sends a UDP datagram from `client_ns` to `server_ip` (a UDP echo that answers with the
/// source address it saw, run in `server_ns`). Returns that address: how the far side sees
/// the client (NAT or not).
pub fn source_seen(server_ns: &str, server_ip: &str, client_ns: &str) -> String {
    let port = 20000 + (COUNTER.fetch_add(1, Ordering::SeqCst) % 20000);
    let (family, any) = if server_ip.contains(':') {
        ("AF_INET6", "::")
    } else {
        ("AF_INET", "0.0.0.0")
    };
    let server = format!(
        "import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\ns.bind(('{any}',{port}))\ns.settimeout(20)\nd,a=s.recvfrom(100)\ns.sendto(a[0].encode(),a)\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", server_ns, "python3", "-c", &server])
        .spawn()
        .expect("python3 runs");
    let client = format!(
        "import socket,sys\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\ns.settimeout(1)\nfor i in range(10):\n  s.sendto(b'x',('{server_ip}',{port}))\n  try:\n    print(s.recvfrom(100)[0].decode()); sys.exit(0)\n  except socket.timeout:\n    pass\nsys.exit(1)\n"
    );
    let o = Command::new("ip")
        .args(["netns", "exec", client_ns, "python3", "-c", &client])
        .output()
        .expect("python3 runs");
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

pub fn pings(ns: &str, ip: &str) -> bool {
    in_ns(
        ns,
        &format!("ping -c1 -W1 {ip} >/dev/null 2>&1 || ping -c2 -W1 {ip}"),
    )
    .status
    .success()
}

/// Serves TCP on `port` in `server_ns` (answering each connection with the peer address it
/// saw) while `client_ns` connects to `ip:dport`. Returns the answer, empty when none came.
pub fn tcp_source_seen(
    server_ns: &str,
    port: u16,
    client_ns: &str,
    ip: &str,
    dport: u16,
) -> String {
    // The server listens for as long as the client tries (20 tries of up to 1.2 s), and is
    // stopped when the client gives up: listening only 8 s, a rule that took longer than
    // that to reach the chassis on a loaded machine read as a connection refused.
    let server = format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(4)\ns.settimeout(30)\ntry:\n  c,a=s.accept(); c.sendall(a[0].encode()); c.close()\nexcept socket.timeout:\n  pass\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", server_ns, "python3", "-c", &server])
        .spawn()
        .expect("python3 runs");
    let client = format!(
        "import socket,time,sys\nfor i in range(20):\n  try:\n    c=socket.create_connection(('{ip}',{dport}),timeout=1); print(c.recv(100).decode()); sys.exit(0)\n  except OSError:\n    time.sleep(0.2)\nsys.exit(1)\n"
    );
    let o = Command::new("ip")
        .args(["netns", "exec", client_ns, "python3", "-c", &client])
        .output()
        .expect("python3 runs");
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A `kvmnet daemon` child, stopped (SIGTERM, then SIGKILL after 5 s) when dropped.
pub struct Daemon(pub std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A script for dhclient/dhcpcd that records each event's environment in `dir/NAME.REASON`.
pub fn hook(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.sh"));
    let d = dir.display();
    std::fs::write(
        &p,
        format!("#!/bin/sh\nenv | grep -E '^(reason|new_)' > {d}/{name}.tmp; mv {d}/{name}.tmp {d}/{name}.$reason\n"),
    )
    .unwrap();
    ok(&format!("chmod +x {}", p.display()));
    p
}

pub fn env_of(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `dhclient -6` once (-1) in `ns` (stateless with `-S`); its events land in `work`.
pub fn dhclient6(ns: &str, work: &Path, extra: &str) -> std::process::Output {
    let script = hook(work, "dhc");
    let w = work.display();
    in_ns(
        ns,
        &format!(
            "timeout 30 dhclient -6 -1 {extra} -sf {} -lf {w}/dhc.leases -pf {w}/dhc.pid eth0",
            script.display()
        ),
    )
}

/// `dhclient -6` (stateless with `-S`) once in `ns`, stopped once it has its answer (it
/// stays in the background otherwise): the environment of its events.
pub fn dhcp6_events(ns: &str, work: &std::path::Path, tag: &str, extra: &str) -> String {
    let w = work.join(tag);
    std::fs::create_dir_all(&w).unwrap();
    let out = dhclient6(ns, &w, extra);
    let _ = in_ns(
        ns,
        &format!("kill $(cat {}/dhc.pid) 2>/dev/null", w.display()),
    );
    assert!(out.status.success(), "dhclient -6 {extra} in {ns}: {out:?}");
    std::fs::read_dir(&w)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("dhc."))
        .map(|e| env_of(&e.path()))
        .collect()
}

/// Waits until `ns`'s eth0 holds global IPv6 address `addr` (with its prefix, as `ip`
/// shows it) out of duplicate address detection, running `poke` (a shell command, such as
/// a router solicitation) between looks; fails after `secs` seconds.
pub fn wait_addr6(ns: &str, addr: &str, secs: u64, poke: &str) {
    let t = std::time::Instant::now();
    loop {
        let a = ok_in(ns, "ip -6 -o addr show dev eth0 scope global");
        if a.lines()
            .any(|l| l.contains(&format!(" {addr} ")) && !l.contains("tentative"))
        {
            return;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(secs),
            "{ns}: no {addr}: {a}"
        );
        let _ = in_ns(ns, poke);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
