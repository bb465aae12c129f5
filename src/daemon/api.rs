//! The daemon's local API: HTTP/1.1 with JSON bodies on a Unix socket in the state directory.
//! Root only by default: the socket is mode 0600 and every connection's peer credentials are
//! checked (`KVMNET_API_UIDS=0,1000` widens it).
//!
//! A request may also carry a spec as its whole body (`Content-Type: application/yaml`), with
//! the other fields in the query string: the handler sees the same JSON object as if it had
//! been sent as `{"spec": TEXT, ...}`. The CLI uses this form: a spec of 1,000 VMs is a quarter
//! of a megabyte, and escaping it into JSON and parsing it back cost more than planning the
//! one port that changed.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{self, HttpError};
use crate::error::ErrorKind;
use crate::log::Level;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// `kind` is what the daemon named in its answer (`None` from a daemon before kinds).
    #[error("daemon answered {status}: {body}")]
    Status {
        status: u16,
        kind: Option<ErrorKind>,
        body: String,
    },
    #[error("daemon sent a malformed answer: {0}")]
    Malformed(String),
}

/// Connections served at once; more are answered 503 at once (a client that stalls holds
/// one for at most the request timeout).
const MAX_CONNECTIONS: usize = 32;
/// Refusals (403, 503) being answered at once, apart from the connections served: a stranger
/// cannot use those up. Beyond this, a connection to refuse is closed without an answer.
const MAX_REFUSING: usize = 4;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("api.sock")
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub peer_uid: u32,
    /// The request said how long its body is (Content-Length or chunked).
    pub framed: bool,
}

/// Work left once the answer is written (the client does not wait for it).
pub type After = Box<dyn FnOnce() + Send>;

pub struct Response {
    pub status: u16,
    pub body: Value,
    /// For 405: the methods the endpoint takes.
    pub allow: Option<&'static str>,
    pub after: Option<After>,
    /// A body that is not JSON, with its content type (`GET /metrics`); `body` is then
    /// not sent.
    pub text: Option<(&'static str, String)>,
}

impl Response {
    pub fn ok(body: Value) -> Response {
        Response::with_status(200, body)
    }
    pub fn with_status(status: u16, body: Value) -> Response {
        Response {
            status,
            body,
            allow: None,
            after: None,
            text: None,
        }
    }
    /// A body of `content_type`, not JSON.
    pub fn text(content_type: &'static str, body: String) -> Response {
        let mut r = Response::with_status(200, Value::Null);
        r.text = Some((content_type, body));
        r
    }
    /// A refusal of the HTTP layer (a malformed request, an unknown endpoint...), which
    /// carries no kind: the status says it all.
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response::with_status(status, json!({ "error": msg.into() }))
    }
    /// An error of `kind`: the kind's status, and its name beside the message, for clients
    /// to act on without reading the message.
    pub fn failed(kind: ErrorKind, msg: impl Into<String>) -> Response {
        Response::with_status(
            kind.http_status(),
            json!({ "error": msg.into(), "kind": kind.name() }),
        )
    }
}

pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

fn peer_uid(s: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn allowed_uids() -> Vec<u32> {
    std::env::var("KVMNET_API_UIDS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0])
}

/// How long a client has to send its whole request (`KVMNET_API_TIMEOUT_MS`, default 10 s).
fn request_timeout() -> Duration {
    Duration::from_millis(
        std::env::var("KVMNET_API_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
    )
}

pub fn bind(state_dir: &Path) -> Result<UnixListener, ApiError> {
    let path = socket_path(state_dir);
    let io = |source| ApiError::Io {
        path: path.display().to_string(),
        source,
    };
    crate::statedir::create_private_dir(state_dir).map_err(io)?;
    // A socket file left by a daemon that died: nobody listens there any more.
    if UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    l.set_nonblocking(true).map_err(io)?;
    Ok(l)
}

/// Whether a daemon listens for this state directory.
pub fn daemon_listening(state_dir: &Path) -> bool {
    UnixStream::connect(socket_path(state_dir)).is_ok()
}

/// Accepts clients until `stop`, each on a thread of its own: a client that is slow to send
/// its request delays nobody else.
pub fn serve(listener: &UnixListener, stop: &AtomicBool, handler: Handler) {
    let counts = Counts::default();
    let allowed = allowed_uids();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => accept(s, &allowed, &counts, &handler),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Wake for the next client at once; look at the stop flag now and then.
                wait_readable(listener, Duration::from_millis(200));
            }
            Err(e) => {
                crate::log::line(Level::Error, &format!("kvmnet: API: {e}"));
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Threads at work: clients served, and clients being refused.
#[derive(Default)]
struct Counts {
    serving: Arc<AtomicUsize>,
    refusing: Arc<AtomicUsize>,
}

/// One thread counted in `count` for as long as it lives (panics included).
struct Counted(Arc<AtomicUsize>);

impl Counted {
    /// Counts one more, unless `max` are counted already.
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Counted> {
        if count.fetch_add(1, Ordering::SeqCst) >= max {
            count.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Counted(Arc::clone(count)))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept(s: UnixStream, allowed: &[u32], counts: &Counts, handler: &Handler) {
    let uid = peer_uid(&s).unwrap_or(u32::MAX);
    if !allowed.contains(&uid) {
        let msg = format!("uid {uid} may not use the kvmnet API");
        return refuse(s, Response::error(403, msg), counts);
    }
    let Some(counted) = Counted::take(&counts.serving, MAX_CONNECTIONS) else {
        let resp = Response::error(503, "too many API clients at once; try again");
        return refuse(s, resp, counts);
    };
    let handler = Arc::clone(handler);
    let spawned = std::thread::Builder::new()
        .name("kvmnet-api".into())
        .spawn(move || {
            let _counted = counted;
            serve_one(s, uid, &*handler);
        });
    if let Err(e) = spawned {
        crate::log::line(
            Level::Error,
            &format!("kvmnet: API: cannot start a thread for a client: {e}"),
        );
    }
}

/// Answers `resp` on a thread of its own (within [`MAX_REFUSING`]), once the request's head
/// has arrived (for at most a second): a client that finds the connection closed before it
/// has sent its request gets a broken pipe, not the answer.
fn refuse(mut s: UnixStream, resp: Response, counts: &Counts) {
    let Some(counted) = Counted::take(&counts.refusing, MAX_REFUSING) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("kvmnet-api-refuse".into())
        .spawn(move || {
            let _counted = counted;
            let _ = s.set_nonblocking(false);
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            let deadline = Instant::now() + Duration::from_secs(1);
            let mut buf = Vec::new();
            while http::head_end(&buf, 0).is_none()
                && buf.len() <= http::MAX_HEAD
                && read_more(&mut s, &mut buf, deadline).is_ok()
            {}
            write_response(&mut s, &resp);
            let _ = s.shutdown(std::net::Shutdown::Write);
            drain(&mut s);
        });
}

/// Waits until `fd` has something to read, or `timeout` passes.
fn wait_readable(fd: &impl AsRawFd, timeout: Duration) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
}

/// Why no request was read.
enum ReadError {
    Http(HttpError),
    Timeout,
    /// The client closed or broke the connection before sending anything.
    Gone,
}

impl From<HttpError> for ReadError {
    fn from(e: HttpError) -> ReadError {
        ReadError::Http(e)
    }
}

/// Reads more of the request into `buf`, waiting until `deadline` at most.
fn read_more(s: &mut UnixStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<(), ReadError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        let _ = s.set_read_timeout(Some(left));
        let old = buf.len();
        buf.resize(old + (64 << 10), 0);
        let r = s.read(&mut buf[old..]);
        buf.truncate(old + *r.as_ref().unwrap_or(&0));
        match r {
            Ok(0) if old == 0 => return Err(ReadError::Gone),
            Ok(0) => return Err(ReadError::Http(HttpError::Incomplete)),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout);
            }
            Err(_) => return Err(ReadError::Gone),
        }
    }
}

/// One request from `s`: the head, then (after `100 Continue` if the client waits for it)
/// the body, all within the request timeout.
fn read_request(s: &mut UnixStream, timeout: Duration) -> Result<http::Request, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut scanned = 0;
    let head_len = loop {
        if let Some(end) = http::head_end(&buf, scanned) {
            break end;
        }
        if buf.len() > http::MAX_HEAD {
            return Err(HttpError::HeadTooLarge.into());
        }
        scanned = buf.len();
        read_more(s, &mut buf, deadline)?;
    };
    let (head, n) = http::parse_head(&buf[..head_len])?;
    if let http::Framing::Length(len) = head.framing {
        buf.reserve(len.saturating_sub(buf.len() - n));
    }
    let mut body = http::BodyReader::new(head.framing);
    body.advance(&buf[n..])?;
    if !body.done() && head.expect_continue && head.minor == 1 {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .map_err(|_| ReadError::Gone)?;
    }
    while !body.done() {
        read_more(s, &mut buf, deadline)?;
        body.advance(&buf[n..])?;
    }
    Ok(http::Request {
        head,
        body: body.into_body(),
    })
}

struct RawRequest {
    method: String,
    /// The path with its query string, as sent.
    target: String,
    content_type: String,
    body: Vec<u8>,
}

/// The JSON object a request stands for: its JSON body, or for a YAML body, `spec` (the body)
/// with the query's fields, as strings (a file named `007` stays `007`: [`number`] reads a
/// numeric field from either form).
fn request_body(raw: RawRequest) -> Result<Value, String> {
    let yaml = raw.content_type.starts_with("application/yaml")
        || raw.content_type.starts_with("text/yaml");
    if !yaml {
        if raw.body.is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&raw.body).map_err(|e| format!("body is not JSON: {e}"));
    }
    let spec = String::from_utf8(raw.body).map_err(|_| "the spec is not UTF-8".to_string())?;
    let mut obj = serde_json::Map::new();
    if let Some((_, query)) = raw.target.split_once('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            obj.insert(percent_decode(k)?, Value::String(percent_decode(v)?));
        }
    }
    obj.insert("spec".into(), Value::String(spec));
    Ok(Value::Object(obj))
}

/// A numeric field of a request: a JSON number, or a string of digits (the YAML form's query).
pub fn number(body: &Value, field: &str) -> Option<u64> {
    match &body[field] {
        Value::String(s) => s.parse().ok(),
        v => v.as_u64(),
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bad = || format!("bad escape in the query: {s}");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

fn write_response(s: &mut UnixStream, resp: &Response) {
    let (content_type, body) = match &resp.text {
        Some((t, b)) => (*t, b.clone()),
        None => ("application/json", resp.body.to_string()),
    };
    let allow = resp
        .allow
        .map_or(String::new(), |a| format!("Allow: {a}\r\n"));
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        body.len()
    );
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|_| s.write_all(body.as_bytes()));
}

/// Reads and drops what a refused client still sends, for a moment: a Unix socket closed
/// with unread data makes the peer's next read fail (ECONNRESET), and the client might lose
/// the answer that says what was wrong.
fn drain(s: &mut UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 8192];
    let mut left: usize = 1 << 20;
    while left > 0 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Serves one connection from `uid` with `handler`: one request, one answer, then whatever
/// the answer left to do. Public for the fuzz targets, which feed it raw connections.
pub fn serve_one(mut s: UnixStream, uid: u32, handler: &(dyn Fn(Request) -> Response + Sync)) {
    let _ = s.set_nonblocking(false);
    // A client that stops reading must not hold a thread for ever (nor, before this thread
    // finishes an apply's plan, the state directory).
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut unread = true;
    let resp = match read_request(&mut s, request_timeout()) {
        Ok(req) => {
            unread = false;
            let framed = req.head.framing != http::Framing::None;
            let raw = RawRequest {
                method: req.head.method.clone(),
                target: req.head.target.clone(),
                content_type: req
                    .head
                    .field("content-type")
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                body: req.body,
            };
            let method = raw.method.clone();
            let path = req.head.path().to_string();
            match request_body(raw) {
                Ok(body) => handler(Request {
                    method,
                    path,
                    body,
                    peer_uid: uid,
                    framed,
                }),
                Err(e) => Response::error(400, e),
            }
        }
        Err(ReadError::Http(e)) => Response::error(e.status(), e.to_string()),
        Err(ReadError::Timeout) => Response::error(408, "the request did not arrive in time"),
        Err(ReadError::Gone) => return,
    };
    write_response(&mut s, &resp);
    let _ = s.shutdown(std::net::Shutdown::Write);
    if unread {
        drain(&mut s);
    }
    if let Some(after) = resp.after {
        after();
    }
}

/// Client side: `None` when no daemon listens for this state directory.
pub fn call(
    state_dir: &Path,
    method: &str,
    path: &str,
    body: &Value,
) -> Option<Result<Value, ApiError>> {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    exchange(state_dir, method, path, "application/json", text.as_bytes())
}

/// Client side of the YAML form: `spec` as the body of a POST to `path`, `fields` in the
/// query string. `None` when no daemon listens for this state directory.
pub fn call_with_spec(
    state_dir: &Path,
    path: &str,
    fields: &[(&str, String)],
    spec: &[u8],
) -> Option<Result<Value, ApiError>> {
    exchange(
        state_dir,
        "POST",
        &target(path, fields),
        "application/yaml",
        spec,
    )
}

/// [`call_with_spec`] with the spec read from `file` as it is sent, in blocks, checked to
/// be UTF-8 on the way: a spec of 10,000 ports (2 MB) read whole into fresh memory first
/// cost the client most of a millisecond of page faults. `None` when no daemon listens, or
/// when the file cannot be sent as it is (unreadable, not UTF-8, or changed while sent):
/// the connection is then dropped before the body is complete, which the daemon refuses,
/// and the caller reads the file itself to say what is wrong.
pub fn call_with_spec_file(
    state_dir: &Path,
    path: &str,
    fields: &[(&str, String)],
    file: &Path,
) -> Option<Result<Value, ApiError>> {
    let mut f = std::fs::File::open(file).ok()?;
    let len = f.metadata().ok()?.len();
    let mut s = UnixStream::connect(socket_path(state_dir)).ok()?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: kvmnet\r\nContent-Type: application/yaml\r\nContent-Length: {len}\r\n\r\n",
        target(path, fields)
    );
    if let Err(e) = s.write_all(head.as_bytes()) {
        return Some(Err(socket_io(e)));
    }
    let mut buf = vec![0u8; 64 * 1024];
    // `carry`: the first bytes of a character the last block ended inside of.
    let (mut sent, mut carry) = (0u64, 0usize);
    loop {
        let n = f.read(&mut buf[carry..]).ok()?;
        if n == 0 {
            break;
        }
        let filled = carry + n;
        let whole = match std::str::from_utf8(&buf[..filled]) {
            Ok(_) => filled,
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return None,
        };
        sent += whole as u64;
        if sent > len {
            return None;
        }
        if let Err(e) = s.write_all(&buf[..whole]) {
            return Some(Err(socket_io(e)));
        }
        buf.copy_within(whole..filled, 0);
        carry = filled - whole;
    }
    if carry != 0 || sent != len {
        return None;
    }
    Some(read_response(&mut s))
}

/// An error on the daemon's socket.
fn socket_io(source: std::io::Error) -> ApiError {
    ApiError::Io {
        path: "api.sock".into(),
        source,
    }
}

/// `path` with `fields` as its query string.
fn target(path: &str, fields: &[(&str, String)]) -> String {
    let query: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

fn exchange(
    state_dir: &Path,
    method: &str,
    target: &str,
    content_type: &str,
    body: &[u8],
) -> Option<Result<Value, ApiError>> {
    let sock = socket_path(state_dir);
    let mut s = UnixStream::connect(&sock).ok()?;
    Some(exchange_on(&mut s, method, target, content_type, body))
}

fn exchange_on(
    s: &mut UnixStream,
    method: &str,
    target: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: kvmnet\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(socket_io)?;
    s.write_all(body).map_err(socket_io)?;
    read_response(s)
}

/// A daemon's answer to the request sent on `s`: the whole of it, the daemon closing the
/// connection after it.
fn read_response(s: &mut UnixStream) -> Result<Value, ApiError> {
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(socket_io)?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| ApiError::Malformed(resp.clone()))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::Malformed(head.to_string()))?;
    let v: Value = serde_json::from_str(body).map_err(|e| ApiError::Malformed(e.to_string()))?;
    if status == 200 || status == 422 {
        Ok(v)
    } else {
        Err(ApiError::Status {
            status,
            kind: v["kind"].as_str().and_then(ErrorKind::from_name),
            body: v["error"].as_str().unwrap_or(body).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(target: &str, content_type: &str, body: &str) -> RawRequest {
        RawRequest {
            method: "POST".into(),
            target: target.into(),
            content_type: content_type.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_yaml_body_reads_as_the_json_form() {
        let source = "/srv/my specs/100%&done=yes.yaml";
        let target = format!(
            "/v1/apply?source={}&confirm_within=3",
            percent_encode(source)
        );
        let v = request_body(raw(&target, "application/yaml", "version: 1\n")).unwrap();
        assert_eq!(
            v,
            json!({ "spec": "version: 1\n", "source": source, "confirm_within": "3" })
        );
        assert_eq!(number(&v, "confirm_within"), Some(3));
        assert_eq!(
            number(&json!({ "confirm_within": 3 }), "confirm_within"),
            Some(3)
        );
        assert_eq!(number(&v, "no_such_field"), None);
        // A name of digits stays a name.
        let v = request_body(raw("/v1/apply?source=007", "application/yaml", "")).unwrap();
        assert_eq!(v["source"], "007");
        let j = request_body(raw("/v1/apply", "application/json", r#"{"spec":"x"}"#)).unwrap();
        assert_eq!(j, json!({ "spec": "x" }));
        assert_eq!(request_body(raw("/v1/x", "", "")).unwrap(), Value::Null);
    }

    /// A fake daemon in `dir`: reads one request, answers `{}`, and gives what it read (a
    /// client that hangs up early leaves it a short body).
    fn fake_daemon(dir: &Path) -> std::thread::JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(socket_path(dir)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = s.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
                let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&got[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|v| v.parse().ok())
                    .unwrap();
                if got.len() >= end + 4 + len {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                    return got;
                }
            }
        })
    }

    /// A spec file goes as it is read: characters of two and four bytes across the blocks it
    /// is read in arrive whole; a file that is not UTF-8 is not sent whole (`None`: the
    /// caller reads it and says what is wrong), and the daemon is left a short body.
    #[test]
    fn a_spec_file_is_sent_as_read_and_only_if_utf8() {
        let dir = std::env::temp_dir().join(format!("kvmnet-api-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("spec.yaml");
        let mut text = String::from("version: 1\n# ");
        for i in 0..60_000 {
            text.push(if i % 3 == 0 { '\u{e9}' } else { '\u{1f600}' });
        }
        text.push('\n');
        std::fs::write(&file, &text).unwrap();
        let server = fake_daemon(&dir);
        let fields = [("source", "s".to_string())];
        let answer = call_with_spec_file(&dir, "/v1/apply", &fields, &file);
        assert_eq!(answer.unwrap().unwrap(), json!({}));
        let got = server.join().unwrap();
        assert!(got.ends_with(text.as_bytes()), "the body is the file");

        std::fs::remove_file(socket_path(&dir)).unwrap();
        let mut bytes = text.clone().into_bytes();
        let at = bytes.len() - 100_000;
        bytes[at] = 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let server = fake_daemon(&dir);
        assert!(call_with_spec_file(&dir, "/v1/apply", &fields, &file).is_none());
        let got = server.join().unwrap();
        assert!(got.len() < bytes.len(), "the body is cut short");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_bodies_and_queries_are_refused() {
        assert!(request_body(raw("/v1/apply?source=%zz", "application/yaml", "")).is_err());
        assert!(request_body(raw("/v1/apply?source=%4", "application/yaml", "")).is_err());
        let mut r = raw("/v1/apply", "application/yaml", "");
        r.body = vec![0xff, 0xfe];
        assert!(request_body(r).is_err());
        assert!(request_body(raw("/v1/apply", "application/json", "{")).is_err());
    }
}
