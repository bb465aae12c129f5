//! One measurement between two ports' far ends, each in its own network namespace: iperf3
//! when it is installed (its `--json` output read here), else kvmnet's own sender; the
//! request/response latency loop is always kvmnet's own, so its percentiles come from every
//! round trip and not from a tool's summary.
//!
//! Programs and threads reach a namespace by `setns` on the calling thread (a child forked
//! from it starts there), not through `ip netns exec`, which also remounts /sys and needs
//! iproute2.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::netns::{self, NetnsError};

/// iperf3's port (TCP control and data, UDP data) and the latency loop's, on the server end.
pub const IPERF_PORT: u16 = 5201;
pub const LATENCY_PORT: u16 = 5202;
/// kvmnet's own sender: TCP bulk on the port after the latency loop's, UDP on iperf3's.
const OWN_TCP_PORT: u16 = LATENCY_PORT + 1;

#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("{0}")]
    Netns(#[from] NetnsError),
    #[error("cannot start iperf3 in namespace {netns}: {source}")]
    Spawn {
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{what} from {from} to {to} failed: {message} (a firewall between the ports must let TCP {IPERF_PORT}-{OWN_TCP_PORT} and UDP {IPERF_PORT} through)"
    )]
    Run {
        what: String,
        from: Ipv4Addr,
        to: Ipv4Addr,
        message: String,
    },
    #[error("interrupted")]
    Interrupted,
}

/// A port's far end: the namespace it is in and its address there.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The port's host-side name, for the report.
    pub port: String,
    pub netns: String,
    pub addr: Ipv4Addr,
}

/// What sends the bulk traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tool {
    /// iperf3, with its version line.
    Iperf3(String),
    /// kvmnet's own TCP and UDP sender (iperf3 is not installed).
    Own,
}

impl Tool {
    /// iperf3 when `iperf3 --version` runs.
    pub fn detect() -> Tool {
        match Command::new("iperf3").arg("--version").output() {
            Ok(o) if o.status.success() => Tool::Iperf3(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("iperf3")
                    .split(" (")
                    .next()
                    .unwrap_or("iperf3")
                    .to_string(),
            ),
            _ => Tool::Own,
        }
    }

    /// How the report names it.
    pub fn describe(&self) -> String {
        match self {
            Tool::Iperf3(v) => format!("measured with iperf3 ({v})"),
            Tool::Own => "measured with kvmnet's own sender (iperf3 not installed)".into(),
        }
    }
}

/// What one run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Test {
    /// TCP throughput with this many parallel streams (Gbit/s).
    Tcp(u32),
    /// UDP loss (%) sending at this rate (bits/s).
    Udp(u64),
}

/// Set by SIGINT, SIGTERM and SIGHUP while bench runs: measurements stop at the next check
/// and the caller puts the host back.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn check_stop() -> Result<(), MeasureError> {
    match STOP.load(Ordering::Relaxed) {
        true => Err(MeasureError::Interrupted),
        false => Ok(()),
    }
}

/// Spawns `cmd` with its network namespace `ns`.
fn spawn_in(ns: &str, cmd: &mut Command) -> Result<Child, MeasureError> {
    netns::with_netns(ns, || cmd.spawn())?.map_err(|source| MeasureError::Spawn {
        netns: ns.to_string(),
        source,
    })
}

/// The iperf3 servers of a bench, one per server end; stopped when dropped.
#[derive(Default)]
pub struct Servers(Vec<Child>);

impl Servers {
    /// Starts an iperf3 server on `at` (bound to its address, so it answers nothing else).
    pub fn start(&mut self, at: &Endpoint) -> Result<(), MeasureError> {
        let mut c = Command::new("iperf3");
        c.args([
            "-s",
            "-B",
            &at.addr.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.0.push(spawn_in(&at.netns, &mut c)?);
        Ok(())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One bulk run of `secs` seconds from `from` to `to`: Gbit/s for TCP, loss % for UDP.
pub fn bulk(
    tool: &Tool,
    test: Test,
    from: &Endpoint,
    to: &Endpoint,
    secs: u32,
) -> Result<f64, MeasureError> {
    check_stop()?;
    let r = match tool {
        Tool::Iperf3(_) => iperf3(test, from, to, secs),
        Tool::Own => match test {
            Test::Tcp(n) => own_tcp(n, from, to, secs),
            Test::Udp(rate) => own_udp(rate, from, to, secs),
        },
    };
    // A signal from the terminal reaches iperf3 too: its failure is the interruption.
    check_stop()?;
    r
}

fn test_name(test: Test) -> String {
    match test {
        Test::Tcp(1) => "TCP (1 stream)".into(),
        Test::Tcp(n) => format!("TCP ({n} streams)"),
        Test::Udp(rate) => format!("UDP at {}", rate_name(rate)),
    }
}

/// A rate as iperf3 takes it: 100M, 1G, 2500M.
pub fn rate_name(bps: u64) -> String {
    match bps {
        b if b % 1_000_000_000 == 0 => format!("{}G", b / 1_000_000_000),
        b if b % 1_000_000 == 0 => format!("{}M", b / 1_000_000),
        b => format!("{b}"),
    }
}

fn iperf3(test: Test, from: &Endpoint, to: &Endpoint, secs: u32) -> Result<f64, MeasureError> {
    let failed = |message: String| MeasureError::Run {
        what: format!("iperf3 {}", test_name(test)),
        from: from.addr,
        to: to.addr,
        message,
    };
    let mut c = Command::new("iperf3");
    c.args(["-c", &to.addr.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-B", &from.addr.to_string(), "-t", &secs.to_string(), "-J"]);
    match test {
        Test::Tcp(n) => c.args(["-P", &n.to_string()]),
        Test::Udp(rate) => c.args(["-u", "-b", &rate_name(rate)]),
    };
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The server may still be starting, or busy finishing the run before: try again shortly.
    let mut last = String::new();
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200));
            check_stop()?;
        }
        let out = wait_or_stop(spawn_in(&from.netns, &mut c)?, &failed)?;
        match read_iperf3(test, &out.stdout) {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(failed(last))
}

/// The child's output once it exits, or `Interrupted` (the child killed) once [`STOP`] is
/// set: an iperf3 whose ports went away (a daemon took back lent ports) would otherwise wait
/// for its lost connection for minutes.
fn wait_or_stop(
    mut child: Child,
    failed: &dyn Fn(String) -> MeasureError,
) -> Result<std::process::Output, MeasureError> {
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(failed(e.to_string())),
        }
        if STOP.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MeasureError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The figure of one iperf3 `-J` report, or its error message.
pub fn read_iperf3(test: Test, json: &[u8]) -> Result<f64, String> {
    let v: Value =
        serde_json::from_slice(json).map_err(|e| format!("iperf3 printed no JSON report ({e})"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    let end = &v["end"];
    let figure = match test {
        Test::Tcp(_) => end["sum_received"]["bits_per_second"]
            .as_f64()
            .map(|b| b / 1e9),
        Test::Udp(_) => end["sum"]["lost_percent"].as_f64().or_else(|| {
            let lost = end["sum"]["lost_packets"].as_f64()?;
            let total = end["sum"]["packets"].as_f64()?;
            (total > 0.0).then(|| 100.0 * lost / total)
        }),
    };
    figure.ok_or_else(|| "iperf3's report has no result".to_string())
}

/// Runs `server` on a thread in `ns` and `client` on another in `client_ns`; the server
/// gets its bound socket's readiness signalled before the client starts.
fn pair<S, C, T>(
    server_ns: &str,
    server: S,
    client_ns: &str,
    client: C,
) -> Result<T, std::io::Error>
where
    S: FnOnce(std::sync::mpsc::Sender<std::io::Result<()>>) -> std::io::Result<()> + Send,
    C: FnOnce() -> std::io::Result<T> + Send,
    T: Send,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let srv_ns = server_ns.to_string();
        let ready = ready_tx.clone();
        let srv = s.spawn(move || {
            netns::enter(&srv_ns).map_err(std::io::Error::other)?;
            server(ready)
        });
        let outcome = match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {
                let cl_ns = client_ns.to_string();
                s.spawn(move || {
                    netns::enter(&cl_ns).map_err(std::io::Error::other)?;
                    client()
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("client thread panicked")))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("server did not start")),
        };
        let served = srv
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("server thread panicked")));
        let value = outcome?;
        served.map(|()| value)
    })
}

/// Accepts `n` connections within 10 s (a client that never comes must not hang bench).
fn accept_n(l: &TcpListener, n: usize) -> std::io::Result<Vec<TcpStream>> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                out.push(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(std::io::Error::other("no connection came within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Connects, trying again for a few seconds: a port just made may not forward yet. (The
/// far end has one address, so it is the source without binding to it.)
fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `count` request/response round trips of 64 bytes over one TCP connection (Nagle off),
/// after a short warm-up; each round trip's time in microseconds.
pub fn latency(from: &Endpoint, to: &Endpoint, count: usize) -> Result<Vec<f64>, MeasureError> {
    check_stop()?;
    const WARMUP: usize = 50;
    let addr = SocketAddr::from((to.addr, LATENCY_PORT));
    let server = move |ready: std::sync::mpsc::Sender<std::io::Result<()>>| {
        let l = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(std::io::Error::new(e.kind(), e.to_string())));
                return Err(e);
            }
        };
        let _ = ready.send(Ok(()));
        let mut s = accept_n(&l, 1)?.remove(0);
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    };
    let client = move || {
        let mut s = connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [7u8; 64];
        let mut times = Vec::with_capacity(count);
        for i in 0..WARMUP + count {
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)?;
            if i >= WARMUP {
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        Ok(times)
    };
    pair(&to.netns, server, &from.netns, client).map_err(|e| MeasureError::Run {
        what: "the latency loop".into(),
        from: from.addr,
        to: to.addr,
        message: e.to_string(),
    })
}

/// kvmnet's own TCP bulk transfer: `streams` connections writing for `secs`; Gbit/s as the
/// receiver counted it.
fn own_tcp(streams: u32, from: &Endpoint, to: &Endpoint, secs: u32) -> Result<f64, MeasureError> {
    let addr = SocketAddr::from((to.addr, OWN_TCP_PORT));
    let received = Arc::new(AtomicU64::new(0));
    let counted = received.clone();
    let n = streams as usize;
    let server = move |ready: std::sync::mpsc::Sender<std::io::Result<()>>| {
        let l = TcpListener::bind(addr);
        let _ = ready.send(
            l.as_ref()
                .map(drop)
                .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
        );
        let conns = accept_n(&l?, n)?;
        std::thread::scope(|s| {
            for mut c in conns {
                let counted = &counted;
                s.spawn(move || {
                    let mut buf = vec![0u8; 1 << 17];
                    while let Ok(k) = c.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        counted.fetch_add(k as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(())
    };
    let client = move || {
        let conns = (0..n)
            .map(|_| connect(addr))
            .collect::<std::io::Result<Vec<_>>>()?;
        let start = Instant::now();
        let end = start + Duration::from_secs(u64::from(secs));
        std::thread::scope(|s| {
            for mut c in conns {
                s.spawn(move || {
                    let buf = vec![0x5au8; 1 << 17];
                    while Instant::now() < end && c.write_all(&buf).is_ok() {}
                });
            }
        });
        Ok(start.elapsed())
    };
    let elapsed = pair(&to.netns, server, &from.netns, client).map_err(|e| MeasureError::Run {
        what: format!("kvmnet's own {}", test_name(Test::Tcp(streams))),
        from: from.addr,
        to: to.addr,
        message: e.to_string(),
    })?;
    Ok(received.load(Ordering::Relaxed) as f64 * 8.0 / elapsed.as_secs_f64() / 1e9)
}

/// kvmnet's own UDP sender: 1,400-byte datagrams paced to `rate` for `secs`; the percentage
/// of those sent that did not arrive.
fn own_udp(rate: u64, from: &Endpoint, to: &Endpoint, secs: u32) -> Result<f64, MeasureError> {
    const SIZE: usize = 1400;
    let addr = SocketAddr::from((to.addr, IPERF_PORT));
    let src = SocketAddr::from((from.addr, 0));
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let got = Arc::new(AtomicU64::new(0));
    let counted = got.clone();
    let server = move |ready: std::sync::mpsc::Sender<std::io::Result<()>>| {
        let sock = UdpSocket::bind(addr);
        let _ = ready.send(
            sock.as_ref()
                .map(drop)
                .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
        );
        let sock = sock?;
        sock.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut buf = [0u8; 2048];
        loop {
            match sock.recv(&mut buf) {
                Ok(_) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                // Quiet for 300 ms after the sender finished: what is late is lost.
                Err(_) if finished.load(Ordering::Relaxed) => return Ok(()),
                Err(_) => {}
            }
        }
    };
    let client = move || {
        let sock = UdpSocket::bind(src)?;
        sock.connect(addr)?;
        let buf = [0u8; SIZE];
        let per_sec = rate as f64 / (SIZE as f64 * 8.0);
        let start = Instant::now();
        let total = Duration::from_secs(u64::from(secs));
        let mut sent = 0u64;
        while start.elapsed() < total {
            let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            // A full socket buffer is loss on the sender's side, as iperf3 counts it too.
            let _ = sock.send(&buf);
            sent += 1;
        }
        done.store(true, Ordering::Relaxed);
        Ok(sent)
    };
    let sent = pair(&to.netns, server, &from.netns, client).map_err(|e| MeasureError::Run {
        what: format!("kvmnet's own {}", test_name(Test::Udp(rate))),
        from: from.addr,
        to: to.addr,
        message: e.to_string(),
    })?;
    let got = got.load(Ordering::Relaxed).min(sent);
    Ok(match sent {
        0 => 100.0,
        s => 100.0 * (s - got) as f64 / s as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_as_iperf3_takes_them() {
        assert_eq!(rate_name(100_000_000), "100M");
        assert_eq!(rate_name(2_000_000_000), "2G");
        assert_eq!(rate_name(2_500_000_000), "2500M");
    }

    #[test]
    fn iperf3_reports() {
        let tcp = br#"{"end":{"sum_received":{"bits_per_second":12.5e9}}}"#;
        assert_eq!(read_iperf3(Test::Tcp(1), tcp), Ok(12.5));
        let udp = br#"{"end":{"sum":{"lost_percent":1.5,"lost_packets":3,"packets":200}}}"#;
        assert_eq!(read_iperf3(Test::Udp(1), udp), Ok(1.5));
        let udp = br#"{"end":{"sum":{"lost_packets":3,"packets":200}}}"#;
        assert_eq!(read_iperf3(Test::Udp(1), udp), Ok(1.5));
        let err = br#"{"start":{},"error":"unable to connect to server: Connection refused"}"#;
        assert!(
            read_iperf3(Test::Tcp(1), err)
                .unwrap_err()
                .contains("unable to connect")
        );
        assert!(read_iperf3(Test::Tcp(1), b"").is_err());
    }
}
