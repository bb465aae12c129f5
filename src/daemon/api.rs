//! The daemon's local API: HTTP/1.1 with JSON bodies on a Unix socket in the state directory.
//! Root only by default: the socket is mode 0600 and every connection's peer credentials are
//! checked (`KVMNET_API_UIDS=0,1000` widens it).

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

fn read_request(s: &mut UnixStream) -> Option<(String, String, Vec<u8>)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    if len > 16 << 20 {
        return None;
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((method, path, body))
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
    let uid = peer_uid(&s).unwrap_or(u32::MAX);
    if !allowed_uids().contains(&uid) {
        write_response(
            &mut s,
            &Response::error(403, format!("uid {uid} may not use the kvmnet API")),
        );
        return;
    }
    let Some((method, path, body)) = read_request(&mut s) else {
        write_response(&mut s, &Response::error(400, "malformed request"));
        return;
    };
    let body = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                write_response(
                    &mut s,
                    &Response::error(400, format!("body is not JSON: {e}")),
                );
                return;
            }
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
    let sock = socket_path(state_dir);
    let mut s = UnixStream::connect(&sock).ok()?;
    Some(call_on(&mut s, method, path, body))
}

fn call_on(s: &mut UnixStream, method: &str, path: &str, body: &Value) -> Result<Value, ApiError> {
    let io = |source| ApiError::Io {
        path: "api.sock".into(),
        source,
    };
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: kvmnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
    .map_err(io)?;
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
