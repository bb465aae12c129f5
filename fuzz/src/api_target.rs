//! The daemon's API request reader: raw bytes of one connection in, what the handler would
//! be given (or the error the client gets) out.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use kvmnet::daemon::api;
use serde_json::Value;

/// What the server makes of one connection's bytes.
#[derive(Debug, PartialEq)]
pub enum ApiOutcome {
    /// The request the daemon's handler would be given.
    Request {
        method: String,
        path: String,
        body: Value,
    },
    /// Answered without reaching the handler.
    Refused { status: u16, message: String },
}

/// Bytes of a connection larger than this are written from a second thread: more might not
/// fit in the socket's buffer before the server reads.
const INLINE_WRITE: usize = 32 << 10;

/// The adapter between the targets and the API's request parsing, and the only place that
/// knows how that parsing is reached: today it runs `api::serve_one` over a socket pair (the
/// request is read from a stream), recording what the handler is given. When the parsing is
/// a pure function of the bytes, call it here instead; nothing else changes.
pub fn api_parse(bytes: &[u8]) -> ApiOutcome {
    let (mut client, server) = UnixStream::pair().expect("socketpair");
    let writer = if bytes.len() <= INLINE_WRITE {
        send_all(&mut client, bytes);
        None
    } else {
        let bytes = bytes.to_vec();
        let mut c = client.try_clone().expect("dup");
        Some(std::thread::spawn(move || send_all(&mut c, &bytes)))
    };
    let mut seen = None;
    api::serve_one(server, &mut |req: api::Request| {
        seen = Some(ApiOutcome::Request {
            method: req.method,
            path: req.path,
            body: req.body,
        });
        api::Response::ok(Value::Null)
    });
    if let Some(w) = writer {
        w.join().expect("writer");
    }
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let (status, body) = read_answer(&answer);
    match seen {
        Some(req) => {
            assert_eq!(status, 200, "the handler's answer was not sent");
            req
        }
        None => {
            assert!(
                !body.contains("may not use the kvmnet API"),
                "run as root or set KVMNET_API_UIDS to this uid: {body}"
            );
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("an error answer without an error: {body:?}"));
            ApiOutcome::Refused { status, message }
        }
    }
}

/// Writes what the socket takes, then ends the client's side: the server sees EOF after the
/// bytes, as from a client that sent them and waits. (The server may stop reading early.)
fn send_all(s: &mut UnixStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
}

/// The status and body of the server's answer, which must be a well-formed HTTP response.
fn read_answer(answer: &[u8]) -> (u16, String) {
    let text = std::str::from_utf8(answer).expect("the answer is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in the answer: {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
    assert_eq!(length, body.len(), "Content-Length differs from the body");
    (status, body.to_string())
}

/// Any connection's bytes: no panic; a request that reaches the handler has a method token
/// and a path without its query; anything refused is refused with a 4xx and a message.
pub fn api(data: &[u8]) {
    match api_parse(data) {
        ApiOutcome::Request { method, path, body } => {
            // Today's reader splits the request line at whitespace and passes any other
            // bytes on (the handler answers 404 to a method it does not know). A stricter
            // reader may add: the method is an RFC 9110 token, the path starts with `/`.
            assert!(
                !method.is_empty() && !method.chars().any(char::is_whitespace),
                "method {method:?}"
            );
            assert!(!path.contains('?'), "path {path:?} keeps its query");
            // What the handlers read from any body, whatever JSON it is.
            for field in ["confirm_within", "fail_after"] {
                let _ = api::number(&body, field);
            }
            let _ = body["spec"].as_str();
        }
        ApiOutcome::Refused { status, message } => {
            assert!((400..500).contains(&status), "status {status}: {message}");
            assert!(!message.is_empty());
        }
    }
}
