//! The read-only metrics listener (`kvmnet daemon --metrics-listen ADDR:PORT`): Prometheus
//! cannot scrape the root-only API socket. It answers `GET /metrics` (and `GET /`, a page
//! that links to it) and nothing else: no other path, no other method, and nothing of the
//! control API is reachable through it. A request body is never read.
//!
//! The socket is bound by the caller before the daemon enters its scope's namespace, so it
//! listens in the namespace the daemon was started in (the host's, for a system daemon)
//! while the counters are read in the scope's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::MetricsError;
use super::format::{Format, negotiate};
use crate::daemon::http::{HttpError, parse_head};
use crate::log::Level;

/// Scrapes served at once; a scraper that opens more connections gets them closed.
const MAX_CLIENTS: usize = 8;
/// How long a client has to send its request head, and the most it may send.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 16 * 1024;

/// The series now, in the format asked for.
pub type Render = Arc<dyn Fn(Format) -> Result<String, MetricsError> + Send + Sync>;

/// Binds `addr` (`127.0.0.1:9465`, `[::]:9465`) in the calling thread's namespace.
pub fn bind(addr: &str) -> Result<TcpListener, MetricsError> {
    let err = |source| MetricsError::Listen {
        addr: addr.to_string(),
        source,
    };
    let l = TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Accepts scrapers until `stop`, each on a thread of its own (at most [`MAX_CLIENTS`]).
pub fn serve(listener: &TcpListener, stop: &AtomicBool, render: &Render) {
    let busy = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let busy = Arc::clone(&busy);
                let render = Arc::clone(render);
                let spawned = std::thread::Builder::new()
                    .name("kvmnet-metrics".into())
                    .spawn(move || {
                        answer(s, &render);
                        busy.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    crate::log::line(Level::Error, "kvmnet: metrics: cannot start a thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut p = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                unsafe { libc::poll(&mut p, 1, 200) };
            }
            Err(e) => {
                crate::log::line(Level::Error, &format!("kvmnet: metrics listener: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// What the listener answers: status, content type, body, and for 405 what is allowed.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn plain(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

const INDEX: &str = "<html><head><title>kvmnet</title></head><body><h1>kvmnet</h1>\
                     <p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

/// The answer to a request whose head is `head`.
fn route(method: &str, path: &str, accept: Option<&str>, render: &Render) -> Answer {
    if path != "/metrics" && path != "/" {
        return Answer::plain(404, "not found: this listener serves only /metrics");
    }
    if method != "GET" && method != "HEAD" {
        return Answer::plain(405, "this listener is read-only: GET only");
    }
    if path == "/" {
        return Answer {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: INDEX.to_string(),
        };
    }
    let format = negotiate(accept);
    match render(format) {
        Ok(body) => Answer {
            status: 200,
            content_type: format.content_type(),
            body,
        },
        Err(e) => Answer::plain(500, &e.to_string()),
    }
}

fn read_head(s: &mut TcpStream) -> Result<(String, String, Option<String>), u16> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        match parse_head(&buf) {
            Ok((h, _)) => {
                let path = h.path().to_string();
                let accept = h.field("accept").map(str::to_string);
                return Ok((h.method, path, accept));
            }
            Err(HttpError::Incomplete) if buf.len() <= MAX_HEAD => {}
            Err(e) => return Err(e.status()),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return Err(408);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(0),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(408),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Bad Request",
    }
}

fn answer(mut s: TcpStream, render: &Render) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let (a, head_only) = match read_head(&mut s) {
        Ok((method, path, accept)) => (
            route(&method, &path, accept.as_deref(), render),
            method == "HEAD",
        ),
        Err(0) => return,
        Err(status) => (Answer::plain(status, "bad request"), false),
    };
    let allow = if a.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        a.status,
        reason(a.status),
        a.content_type,
        a.body.len()
    );
    let _ = s.write_all(head.as_bytes());
    if !head_only {
        let _ = s.write_all(a.body.as_bytes());
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render() -> Render {
        Arc::new(
            |f: Format| Ok(f.write("# HELP a A.\n# TYPE a counter\na_total 1\n# EOF\n".into())),
        )
    }

    #[test]
    fn only_metrics_and_its_index_are_served_and_only_read() {
        let r = render();
        assert_eq!(route("GET", "/metrics", None, &r).status, 200);
        assert_eq!(route("HEAD", "/metrics", None, &r).status, 200);
        assert_eq!(route("GET", "/", None, &r).status, 200);
        assert_eq!(route("POST", "/metrics", None, &r).status, 405);
        assert_eq!(route("GET", "/v1/status", None, &r).status, 404);
        assert_eq!(route("POST", "/v1/apply", None, &r).status, 404);
        let om = route("GET", "/metrics", Some("application/openmetrics-text"), &r);
        assert!(om.body.ends_with("# EOF\n"));
        assert!(
            route("GET", "/metrics", None, &r)
                .body
                .starts_with("# HELP a_total")
        );
    }
}
