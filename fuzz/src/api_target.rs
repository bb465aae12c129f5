//! The daemon's API request reader: raw bytes of one connection in, what the handler would
//! be given (or the error the client gets) out.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};

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

/// The adapter between the targets and the API's request reading: it runs `api::serve_one`
/// (the daemon's own connection handling, from a root peer) over a socket pair, recording
/// what the handler is given. The pure HTTP parser underneath is checked on its own in
/// [`api`].
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
    let seen = std::sync::Mutex::new(None);
    api::serve_one(server, 0, &|req: api::Request| {
        *seen.lock().unwrap() = Some(ApiOutcome::Request {
            method: req.method,
            path: req.path,
            body: req.body,
        });
        api::Response::ok(Value::Null)
    });
    let seen = seen.into_inner().unwrap();
    if let Some(w) = writer {
        w.join().expect("writer");
    }
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    if bytes.is_empty() {
        // A client that closes without a byte gets no answer.
        assert!(answer.is_empty(), "an answer to nothing: {answer:?}");
        return ApiOutcome::Refused {
            status: 400,
            message: "nothing was sent".into(),
        };
    }
    let (status, body) = read_answer(&answer);
    match seen {
        Some(req) => {
            assert_eq!(status, 200, "the handler's answer was not sent");
            req
        }
        None => {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("an error answer without an error: {body:?}"));
            // The refusal of a peer itself, not a request that quotes its words (an error
            // about a bad request line shows the line).
            assert!(
                !(status == 403
                    && message.starts_with("uid ")
                    && message.ends_with("may not use the kvmnet API")),
                "run as root or set KVMNET_API_UIDS to this uid: {body}"
            );
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
/// and a path without its query; anything refused is refused with a 4xx and a message. The
/// same bytes, read as the fields and spec of a CLI request, make the round trip of
/// [`cli_round_trip`].
pub fn api(data: &[u8]) {
    // The pure parser: a request it takes is within the bytes; a refusal names a status.
    match kvmnet::daemon::http::parse_request(data) {
        Ok((_, used)) => assert!(used <= data.len(), "used {used} of {}", data.len()),
        Err(e) => assert!((400..=505).contains(&e.status()), "{e:?}"),
    }
    cli_round_trip(data);
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
            // 4xx; 501 for a transfer coding other than chunked (RFC 9112 6.1), 505 for a
            // version other than HTTP/1.x (RFC 9110 15.6.6).
            assert!(
                (400..500).contains(&status) || status == 501 || status == 505,
                "status {status}: {message}"
            );
            assert!(!message.is_empty());
        }
    }
}

/// What the CLI sends reads back as it was sent: `data` is `key NUL value NUL ... spec`, the
/// client (`api::call_with_spec`, as `kvmnet apply` calls it) sends it to a socket served by
/// `api::serve_one`, and the handler must see the spec and every field (the last of a
/// repeated key; `spec` is the body's). A spec that is not UTF-8 is refused with a 400.
pub fn cli_round_trip(data: &[u8]) {
    let parts: Vec<String> = data
        .split(|&b| b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let (_, pairs) = parts.split_last().expect("split gives one part at least");
    let spec = data.rsplit(|&b| b == 0).next().expect("one part at least");
    let fields: Vec<(&str, String)> = pairs
        .chunks(2)
        .take(8)
        .map(|kv| (kv[0].as_str(), kv.get(1).cloned().unwrap_or_default()))
        .collect();

    // A directory of this call's own (calls may run in parallel threads), left empty.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kvmnet-fuzz-api-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let sock = api::socket_path(&dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).expect("bind");
    let seen = std::sync::Mutex::new(None);
    let answer = std::thread::scope(|s| {
        let client = s.spawn(|| api::call_with_spec(&dir, "/v1/apply", &fields, spec));
        let (conn, _) = listener.accept().expect("accept");
        api::serve_one(conn, 0, &|req: api::Request| {
            *seen.lock().unwrap() = Some(req.body);
            api::Response::ok(serde_json::json!({}))
        });
        client.join().expect("client")
    });
    let seen = seen.into_inner().unwrap();
    drop(listener);
    let _ = std::fs::remove_file(&sock);
    std::fs::remove_dir(&dir).expect("the socket's directory is left empty");

    let answer = answer.expect("the client found the socket");
    let Ok(text) = std::str::from_utf8(spec) else {
        assert!(
            seen.is_none(),
            "a spec that is not UTF-8 reached the handler"
        );
        assert!(
            matches!(
                answer,
                Err(kvmnet::daemon::api::ApiError::Status { status: 400, .. })
            ),
            "{answer:?}"
        );
        return;
    };
    answer.expect("the request was refused");
    let body = seen.expect("the handler saw the request");
    assert_eq!(body["spec"], text, "spec");
    let mut want = serde_json::Map::new();
    for (k, v) in &fields {
        want.insert(k.to_string(), Value::String(v.clone()));
    }
    want.insert("spec".into(), Value::String(text.to_string()));
    assert_eq!(body, Value::Object(want), "fields {fields:?}");
}
