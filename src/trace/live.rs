//! `kvmnet trace --live`: the packet sent for real from a veth port's namespace, and the
//! kernel's verdicts on it read with nftables tracing, to check the model against the kernel.
//!
//! For the few hundred milliseconds of a probe, kvmnet adds a table of its own,
//! `bridge kvmnet-trace-PID`, whose one rule (bridge prerouting, before the guard) sets
//! `meta nftrace` on exactly the probe: its input port, addresses, protocol and a source port
//! (or ICMP id) chosen for it. `nft monitor trace` reports every rule the probe meets; only
//! the events of kvmnet's own tables are kept. The table is removed before the command
//! returns, also on an error; SIGINT, SIGTERM and SIGHUP are held while it exists, so an
//! interrupt ends the command only after the table is gone. No other table is touched.
//!
//! A tap's far end is the VM's NIC inside QEMU, which holds the tap's file descriptor:
//! nothing can be written into it from outside, so tap ports (and macvtap ports, whose
//! traffic no host hook sees) are traced by the model only.

use std::io::{BufRead, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::backend::netns;
use crate::engine::EngineError;
use crate::spec::PortKind;
use kvmnet_core::trace::{L4, Packet, Trace, Verdict, port_label};

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("--live: {0}")]
    Unsupported(String),
    #[error("--live: cannot run nft ({0})")]
    Nft(String),
    #[error("--live: cannot send the probe from namespace {ns}: {error}")]
    Send { ns: String, error: std::io::Error },
    #[error("--live: {0}")]
    Netns(#[from] crate::backend::netns::NetnsError),
}

impl From<LiveError> for EngineError {
    fn from(e: LiveError) -> EngineError {
        match e {
            LiveError::Unsupported(_) => EngineError::Usage(e.to_string()),
            LiveError::Netns(n) => EngineError::Netns(n),
            e => EngineError::Usage(e.to_string()),
        }
    }
}

/// One event of the probe in kvmnet's tables: a rule it matched, or a base chain's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `inet forward`, `bridge guard-ip4`.
    pub chain: String,
    /// The rule as nft lists it (counters and kvmnet's hash comment left out); `None` for a
    /// chain's policy or end.
    pub rule: Option<String>,
    /// `accept`, `drop`, `reject`, `jump fw-in-...`, `return`, `continue`.
    pub verdict: String,
}

/// What the kernel did with the probe.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The namespace the probe was sent from.
    pub from_ns: String,
    pub events: Vec<Event>,
}

impl Kernel {
    /// The first event that stopped the probe, if one did.
    pub fn stop(&self) -> Option<&Event> {
        self.events
            .iter()
            .find(|e| e.verdict == "drop" || e.verdict == "reject")
    }

    pub fn verdict(&self) -> Verdict {
        match self.stop() {
            Some(e) if e.verdict == "reject" => Verdict::Reject,
            Some(_) => Verdict::Drop,
            None => Verdict::Accept,
        }
    }
}

/// Whether model and kernel agree, and how it reads.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub agree: bool,
    pub summary: String,
}

/// Sends the packet and collects the kernel's verdicts on it.
pub fn run(p: &Packet<'_>) -> Result<Kernel, LiveError> {
    let ns = injectable(p)?;
    let id = probe_id();
    let held = SignalsHeld::new();
    let monitor = Monitor::start()?;
    // The monitor subscribes to trace events once it runs; nft prints nothing when it has.
    std::thread::sleep(Duration::from_millis(300));
    let table = TraceTable::add(p, id)?;
    let sent = send(&ns, p, id);
    if sent.is_ok() {
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(table);
    let lines = monitor.stop();
    drop(held);
    // The socket stays open until the trace is read: a SYN is not cut short.
    drop(sent?);
    Ok(Kernel {
        from_ns: ns,
        events: lines.iter().filter_map(|l| parse_event(l)).collect(),
    })
}

/// The namespace a probe can be sent from: a veth port's far end.
fn injectable(p: &Packet<'_>) -> Result<String, LiveError> {
    let src = p.src;
    let why = match (src.kind, &src.netns) {
        (PortKind::Veth, Some(ns)) if netns::exists(ns) => return Ok(ns.clone()),
        (PortKind::Veth, Some(ns)) => {
            format!("namespace {ns} of {} does not exist", port_label(src))
        }
        (PortKind::Veth, None) => format!("{} has no namespace to send from", port_label(src)),
        (PortKind::Tap, _) => format!(
            "{} is a tap: its far end is the VM's NIC inside QEMU, which holds the tap, so nothing can be sent from it but by the guest; the model's trace stands alone",
            port_label(src)
        ),
        (PortKind::Macvtap, _) => format!(
            "{} is a macvtap port: its traffic crosses no host hook, so there is no kernel verdict to read",
            port_label(src)
        ),
    };
    Err(LiveError::Unsupported(why))
}

/// The probe's source port (or ICMP id): one per process, away from the usual ephemeral
/// range's start.
fn probe_id() -> u16 {
    40_000 + (std::process::id() % 20_000) as u16
}

/// SIGINT, SIGTERM and SIGHUP held (pending) while the trace table exists; released, and
/// so delivered, when dropped.
struct SignalsHeld(libc::sigset_t);

impl SignalsHeld {
    fn new() -> SignalsHeld {
        // SAFETY: sigset operations on local, initialised sets.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SignalsHeld(old)
        }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in `new`.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// `nft monitor trace`, its lines collected by a thread.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start() -> Result<Monitor, LiveError> {
        let mut child = Command::new("nft")
            .args(["monitor", "trace"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LiveError::Nft(e.to_string()))?;
        let out = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(mut v) = sink.lock() {
                    v.push(l);
                }
            }
        });
        Ok(Monitor {
            child,
            lines,
            reader: Some(reader),
        })
    }

    fn stop(mut self) -> Vec<String> {
        self.end();
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn end(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.end();
    }
}

/// The temporary table whose one rule marks the probe for tracing; deleted when dropped.
struct TraceTable(String);

impl TraceTable {
    fn add(p: &Packet<'_>, id: u16) -> Result<TraceTable, LiveError> {
        let name = format!("kvmnet-trace-{}", std::process::id());
        let saddr = p.saddr;
        let l4 = match p.l4 {
            L4::Icmp | L4::Icmpv6(_) => format!("icmp type echo-request icmp id {id}"),
            L4::Tcp(d) => format!("tcp sport {id} tcp dport {d}"),
            L4::Udp(d) => format!("udp sport {} udp dport {d}", udp_sport(p.l4, id)),
        };
        let script = format!(
            "table bridge {name} {{\n\tcomment \"kvmnet trace, removed when the trace ends\"\n\tchain probe {{\n\t\ttype filter hook prerouting priority -350; policy accept;\n\t\tiifname \"{}\" ip saddr {saddr} ip daddr {} {l4} meta nftrace set 1\n\t}}\n}}\n",
            p.src.name,
            p.dest.addr()
        );
        let table = TraceTable(name);
        nft_script(&script)?;
        Ok(table)
    }
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        let _ = nft_script(&format!("delete table bridge {}\n", self.0));
    }
}

fn nft_script(script: &str) -> Result<(), LiveError> {
    let mut c = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LiveError::Nft(e.to_string()))?;
    if let Some(mut i) = c.stdin.take() {
        let _ = i.write_all(script.as_bytes());
    }
    let out = c
        .wait_with_output()
        .map_err(|e| LiveError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(LiveError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// A DHCP request (udp/67) goes from the client port, as the model takes it.
fn udp_sport(l4: L4, id: u16) -> u16 {
    if l4 == L4::Udp(67) { 68 } else { id }
}

/// Sends the probe from inside `ns`; the socket is kept (returned) until the trace is read,
/// so a TCP connection attempt is not cut short.
fn send(ns: &str, p: &Packet<'_>, id: u16) -> Result<OwnedFd, LiveError> {
    // The caller refuses IPv6 packets: the probes are IPv4 sockets.
    let std::net::IpAddr::V4(daddr) = p.dest.addr() else {
        return Err(LiveError::Send {
            ns: ns.to_string(),
            error: std::io::Error::other("an IPv6 packet: --live sends IPv4 probes only"),
        });
    };
    let mac = p.src.mac.0;
    let r = netns::with_netns(ns, || match p.l4 {
        L4::Icmp | L4::Icmpv6(_) => ping(daddr, id),
        L4::Tcp(d) => syn(daddr, id, d),
        L4::Udp(67) => datagram(daddr, 68, 67, &dhcp_request(mac)),
        L4::Udp(d) => datagram(daddr, id, d, b"kvmnet trace probe"),
    })?;
    r.map_err(|error| LiveError::Send {
        ns: ns.to_string(),
        error,
    })
}

fn sockaddr(a: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: an all-zero sockaddr_in is valid; the fields are set below.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = port.to_be();
    s.sin_addr.s_addr = u32::from(a).to_be();
    s
}

const SA_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;

fn socket(ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket bound to `sport` on any address (re-usable, as a probe's port may linger).
fn bound(ty: i32, sport: u16) -> std::io::Result<OwnedFd> {
    let fd = socket(ty, 0)?;
    let one: libc::c_int = 1;
    let sa = sockaddr(Ipv4Addr::UNSPECIFIED, sport);
    // SAFETY: valid descriptor, option and address of the stated sizes.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            SA_LEN,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

fn send_to(fd: &OwnedFd, buf: &[u8], to: Ipv4Addr, port: u16) -> std::io::Result<()> {
    let sa = sockaddr(to, port);
    // SAFETY: valid descriptor, buffer and address of the stated sizes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            SA_LEN,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn datagram(to: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = bound(libc::SOCK_DGRAM, sport)?;
    send_to(&fd, payload, to, dport)?;
    Ok(fd)
}

/// A SYN: a non-blocking connect, left in progress.
fn syn(to: Ipv4Addr, sport: u16, dport: u16) -> std::io::Result<OwnedFd> {
    let fd = bound(libc::SOCK_STREAM | libc::SOCK_NONBLOCK, sport)?;
    let sa = sockaddr(to, dport);
    // SAFETY: valid descriptor and address.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            SA_LEN,
        )
    };
    let e = std::io::Error::last_os_error();
    if r != 0 && e.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(e);
    }
    Ok(fd)
}

/// An ICMP echo request with identifier `id`, from a raw socket.
fn ping(to: Ipv4Addr, id: u16) -> std::io::Result<OwnedFd> {
    let fd = socket(libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    let mut m = [0u8; 16];
    m[0] = 8;
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&1u16.to_be_bytes());
    m[8..].copy_from_slice(b"kvmnet-t");
    let sum = checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    send_to(&fd, &m, to, 0)?;
    Ok(fd)
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A DHCPDISCOVER for `mac`: what the guard lets a port send to udp/67.
fn dhcp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut m = vec![0u8; 240];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&0x6b76_6e74u32.to_be_bytes());
    m[28..34].copy_from_slice(&mac);
    m[236..240].copy_from_slice(&[99, 130, 83, 99]);
    m.extend_from_slice(&[53, 1, 1, 255]);
    m
}

/// One line of `nft monitor trace` in a table named `kvmnet`:
/// `trace id 1a2b3c4d inet kvmnet forward rule oifname vmap @net_to (verdict jump to-n)`.
fn parse_event(line: &str) -> Option<Event> {
    let rest = line.strip_prefix("trace id ")?;
    let mut w = rest.splitn(5, ' ');
    let (_, family, table, chain, what) = (w.next()?, w.next()?, w.next()?, w.next()?, w.next()?);
    if table != crate::nft::TABLE {
        return None;
    }
    let chain = format!("{family} {chain}");
    if let Some(r) = what.strip_prefix("rule ") {
        let i = r.rfind(" (verdict ")?;
        let verdict = r[i + 10..].trim_end().trim_end_matches(')').to_string();
        let text = clean_rule(&r[..i]);
        // A reject is a drop to the kernel; the rule says which it was (nft lists an IPv4
        // one as `reject with icmp port-unreachable`).
        let verdict = if verdict == "drop" && text.split(' ').any(|w| w == "reject") {
            "reject".to_string()
        } else {
            verdict
        };
        return Some(Event {
            chain,
            rule: Some(text),
            verdict,
        });
    }
    let verdict = what
        .strip_prefix("policy ")
        .or_else(|| what.strip_prefix("verdict "))?;
    Some(Event {
        chain,
        rule: None,
        // A base chain's policy line goes on with the packet's mark: the verdict is its
        // first word.
        verdict: verdict.split_whitespace().next().unwrap_or("").to_string(),
    })
}

/// A rule as nft lists it, without its counter values and kvmnet's hash comment.
fn clean_rule(text: &str) -> String {
    let mut t = text.trim().to_string();
    if let Some(i) = t.rfind(" comment \"") {
        t.truncate(i);
    }
    let words: Vec<&str> = t.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if words[i] == "counter" && words.get(i + 1) == Some(&"packets") {
            out.push("counter");
            i += 5;
            continue;
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

/// Model against kernel: the same verdict from kvmnet's rules, stopped in the same chain.
/// A probe the model stops outside nftables (at L2, or for want of a neighbour) is stopped
/// before or after the rules, which let it through or never see it.
pub fn compare(model: &Trace, k: &Kernel) -> Comparison {
    let want = model.nft_verdict();
    let got = k.verdict();
    let model_chain = model.stopped_by().and_then(|h| h.chain.clone());
    let kernel_chain = k.stop().map(|e| e.chain.clone());
    let outside = model.verdict().stops() && want == Verdict::Accept;
    // The model's rule may hand the packet to the chain that drops it (`goto CHAIN`).
    let handed_to = |c: &str| {
        let name = c.split_once(' ').map_or(c, |(_, n)| n);
        model
            .stopped_by()
            .and_then(|h| h.nft.as_deref())
            .is_some_and(|r| {
                r.ends_with(&format!("goto {name}")) || r.ends_with(&format!("jump {name}"))
            })
    };
    let same_chain = model_chain == kernel_chain || kernel_chain.as_deref().is_some_and(handed_to);
    let agree = if k.events.is_empty() {
        outside
    } else {
        want == got && same_chain
    };
    let kernel_words = match (k.events.is_empty(), k.stop()) {
        (true, _) => "the kernel's rules never saw the probe".to_string(),
        (false, None) => "kvmnet's rules let the probe through".to_string(),
        (false, Some(e)) => format!("{} in {}", e.verdict, e.chain),
    };
    let model_words = match model.stopped_by() {
        None => "accept".to_string(),
        Some(h) => match &h.chain {
            Some(c) => format!("{} in {c}", h.verdict.as_str()),
            None => format!(
                "{} at {} (outside nftables)",
                h.verdict.as_str(),
                h.stage.as_str()
            ),
        },
    };
    // The model takes the host to have a route for what it forwards; without one the kernel
    // stops the probe before the forward hook, where no rule of kvmnet's runs.
    let routed = k
        .events
        .iter()
        .any(|e| e.chain == "inet forward" || e.chain == "inet input");
    let hint = if !agree && !k.events.is_empty() && !routed {
        " (the probe never reached inet forward or input: has the host a route for it?)"
    } else {
        ""
    };
    let summary = format!(
        "{}: kernel {kernel_words}; model {model_words}{hint}",
        if agree { "agree" } else { "DISAGREE" }
    );
    Comparison { agree, summary }
}

pub fn render(k: &Kernel, c: &Comparison) -> String {
    let mut out = format!(
        "live: probe sent from namespace {}; kvmnet's rules it met:\n",
        k.from_ns
    );
    for e in &k.events {
        let line = match &e.rule {
            Some(r) => format!("  {:<24} {r} (verdict {})\n", e.chain, e.verdict),
            None => format!("  {:<24} (end of chain: {})\n", e.chain, e.verdict),
        };
        out.push_str(&line);
    }
    out.push_str(&format!("live: {}\n", c.summary));
    out
}

pub fn to_json(k: &Kernel, c: &Comparison) -> Value {
    json!({
        "from_netns": k.from_ns,
        "verdict": k.verdict(),
        "chain": k.stop().map(|e| e.chain.clone()),
        "agree": c.agree,
        "summary": c.summary,
        "events": k.events.iter().map(|e| json!({
            "chain": e.chain, "rule": e.rule, "verdict": e.verdict,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_lines_of_kvmnets_tables_only() {
        let l = r#"trace id 309d1671 inet kvmnet input rule udp dport 5555 counter packets 0 bytes 0 reject comment "00aa" (verdict drop)"#;
        assert_eq!(
            parse_event(l),
            Some(Event {
                chain: "inet input".into(),
                rule: Some("udp dport 5555 counter reject".into()),
                verdict: "reject".into()
            })
        );
        let l = "trace id 1 inet kvmnet fw-in-1 rule ip saddr 10.96.0.0/24 udp dport 53 counter packets 1 bytes 29 reject with icmp port-unreachable comment \"0a\" (verdict drop)";
        assert_eq!(parse_event(l).unwrap().verdict, "reject");
        let l = "trace id 309d1671 inet kvmnet forward rule iifname vmap @net_from (verdict jump from-n)";
        assert_eq!(parse_event(l).unwrap().verdict, "jump from-n");
        let l = "trace id 309d1671 inet kvmnet pf policy accept ";
        assert_eq!(parse_event(l).unwrap().verdict, "accept");
        assert!(parse_event("trace id 1 bridge kvmnet-trace-1 probe policy accept").is_none());
        assert!(parse_event("trace id 1 inet kvmnet pf packet: iif \"br0\"").is_none());
    }

    fn event(chain: &str, rule: &str, verdict: &str) -> Event {
        Event {
            chain: chain.into(),
            rule: Some(rule.into()),
            verdict: verdict.into(),
        }
    }

    fn stopped(chain: &str, nft: &str, verdict: Verdict) -> Trace {
        use kvmnet_core::trace::{Hop, Stage};
        Trace {
            hops: vec![Hop {
                stage: Stage::Guard,
                verdict,
                rule: String::new(),
                chain: Some(chain.into()),
                nft: Some(nft.into()),
                field: None,
                loc: None,
            }],
        }
    }

    #[test]
    fn model_and_kernel_agree_on_verdict_and_chain() {
        let model = stopped(
            "bridge guard-ip4",
            "udp dport 68 counter drop",
            Verdict::Drop,
        );
        let k = |chain: &str, verdict: &str| Kernel {
            from_ns: "g".into(),
            events: vec![event(chain, "x", verdict)],
        };
        assert!(compare(&model, &k("bridge guard-ip4", "drop")).agree);
        assert!(!compare(&model, &k("bridge guard-ip4", "reject")).agree);
        assert!(!compare(&model, &k("inet forward", "drop")).agree);
        // A rule that hands the packet to a chain that counts and drops it.
        let counted = stopped(
            "bridge guard-ip4",
            "udp dport 68 counter goto guard-drop-dhcp-server",
            Verdict::Drop,
        );
        assert!(compare(&counted, &k("bridge guard-drop-dhcp-server", "drop")).agree);
        // Nothing seen agrees only with a stop outside nftables.
        let none = Kernel {
            from_ns: "g".into(),
            events: vec![],
        };
        assert!(!compare(&model, &none).agree);
    }

    #[test]
    fn the_icmp_checksum_verifies() {
        let mut m = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, 1, 2, 3];
        let s = checksum(&m);
        m[2..4].copy_from_slice(&s.to_be_bytes());
        assert_eq!(checksum(&m), 0);
    }
}
