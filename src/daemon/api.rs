//! The daemon's local API: HTTP/1.1 with JSON bodies on a Unix socket in the state directory.
//! Root only by default: the socket is mode 0600 and every connection's peer credentials are
//! checked (`KVMNET_API_UIDS=0,1000` widens it).
//!
//! A request may also carry a spec as its whole body (`Content-Type: application/yaml`), with
//! the other fields in the query string: the handler sees the same JSON object as if it had
//! been sent as `{"spec": TEXT, ...}`. The CLI uses this form: a spec of 1,000 VMs is a quarter
//! of a megabyte, and escaping it into JSON and parsing it back cost more than planning the
//! one port that changed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("daemon answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("daemon sent a malformed answer: {0}")]
    Malformed(String),
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("api.sock")
}

pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub peer_uid: u32,
}

pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    pub fn ok(body: Value) -> Response {
        Response { status: 200, body }
    }
    pub fn error(status: u16, msg: impl Into<String>) -> Response {
        Response {
            status,
            body: json!({ "error": msg.into() }),
        }
    }
}

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

pub fn bind(state_dir: &Path) -> Result<UnixListener, ApiError> {
    let path = socket_path(state_dir);
    let io = |source| ApiError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(io)?;
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

struct RawRequest {
    method: String,
    /// The path with its query string, as sent.
    target: String,
    content_type: String,
    body: Vec<u8>,
}

fn read_request(s: &mut UnixStream) -> Option<RawRequest> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut len = 0usize;
    let mut content_type = String::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = v.trim().to_ascii_lowercase();
            }
        }
    }
    if len > 16 << 20 {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(RawRequest {
        method,
        target,
        content_type,
        body,
    })
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

fn write_response(s: &mut UnixStream, resp: &Response) {
    let body = resp.body.to_string();
    let reason = match resp.status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        _ => "Error",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        resp.status,
        body.len()
    );
}

/// Serves one connection with `handler`.
pub fn serve_one(mut s: UnixStream, handler: &mut dyn FnMut(Request) -> Response) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    // A client that stops reading must not hold the daemon (a finished plan waits for the
    // answer to be written before it lets go of the state directory).
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let uid = peer_uid(&s).unwrap_or(u32::MAX);
    if !allowed_uids().contains(&uid) {
        write_response(
            &mut s,
            &Response::error(403, format!("uid {uid} may not use the kvmnet API")),
        );
        return;
    }
    let Some(raw) = read_request(&mut s) else {
        write_response(&mut s, &Response::error(400, "malformed request"));
        return;
    };
    let method = raw.method.clone();
    let path = raw.target.split('?').next().unwrap_or("").to_string();
    let body = match request_body(raw) {
        Ok(v) => v,
        Err(e) => {
            write_response(&mut s, &Response::error(400, e));
            return;
        }
    };
    let resp = handler(Request {
        method,
        path,
        body,
        peer_uid: uid,
    });
    write_response(&mut s, &resp);
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
    let query: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    exchange(state_dir, "POST", &target, "application/yaml", spec)
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
    let io = |source| ApiError::Io {
        path: "api.sock".into(),
        source,
    };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: kvmnet\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io)?;
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
        let target = format!("/v1/apply?source={}&fail_after=3", percent_encode(source));
        let v = request_body(raw(&target, "application/yaml", "version: 1\n")).unwrap();
        assert_eq!(
            v,
            json!({ "spec": "version: 1\n", "source": source, "fail_after": "3" })
        );
        assert_eq!(number(&v, "fail_after"), Some(3));
        assert_eq!(number(&json!({ "fail_after": 3 }), "fail_after"), Some(3));
        assert_eq!(number(&v, "confirm_within"), None);
        // A name of digits stays a name.
        let v = request_body(raw("/v1/apply?source=007", "application/yaml", "")).unwrap();
        assert_eq!(v["source"], "007");
        let j = request_body(raw("/v1/apply", "application/json", r#"{"spec":"x"}"#)).unwrap();
        assert_eq!(j, json!({ "spec": "x" }));
        assert_eq!(request_body(raw("/v1/x", "", "")).unwrap(), Value::Null);
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
