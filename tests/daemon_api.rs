//! The daemon's API is an HTTP/1.1 server its clients can rely on: curl with chunked uploads
//! and `Expect: 100-continue`, clients served at once (one that stalls delays nobody), and
//! malformed requests answered with the right 4xx. Error bodies name the error's kind, which
//! the CLI's exit status follows. `KVMNET_FAIL_AFTER` is a CLI test hook that never reaches
//! the daemon.

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = "version: 1\nnetworks:\n  n:\n    mode: nat\n    bridge: h-n\n    ipv4: 10.99.0.1/24\nvms:\n  a: { ports: [ { network: n, name: h-a } ] }\n";

fn start(ns: &Namespaces, spec: &str, host: &str) -> (Daemon, PathBuf) {
    let child = Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(["daemon", "--spec", spec, "--netns", host])
        .env("KVMNET_STATE_DIR", &ns.state_dir)
        .env("KVMNET_API_TIMEOUT_MS", "3000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = ns.state_dir.join(format!("netns-{host}")).join("api.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Daemon(child), sock)
}

/// Sends `req` as it is and returns the whole answer.
fn raw(sock: &Path, req: &[u8]) -> String {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// POSTs `body` to `/v1/apply` as JSON; the status and the answer's body.
fn post_apply(sock: &Path, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = body.to_string();
    let answer = raw(
        sock,
        format!(
            "POST /v1/apply HTTP/1.1\r\nHost: kvmnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let (_, json) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {answer:?}"));
    let v = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    (status_of(&answer), v)
}

fn curl(args: &str) -> std::process::Output {
    sh(&format!("curl -sS --max-time 20 {args}"))
}

fn link_exists(host: &str, name: &str) -> bool {
    sh(&format!("ip -n {host} link show {name}"))
        .status
        .success()
}

#[test]
fn curl_uploads_chunked_and_with_expect_100_continue() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("cu");
    let spec = SpecFile::new(SPEC);
    let (_d, sock) = start(&ns, spec.path(), &host);
    let s = sock.display();
    let o = curl(&format!("-f --unix-socket {s} http://kvmnet/v1/status"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status is JSON");
    assert_eq!(v["networks"][0]["bridge"], "h-n", "{v}");

    // A chunked upload of a spec (curl sends the file in chunks as it reads it).
    let plus_b = SpecFile::new(&format!(
        "{SPEC}  b: {{ ports: [ {{ network: n, name: h-b }} ] }}\n"
    ));
    let o = curl(&format!(
        "-f -v --unix-socket {s} -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/yaml' \
         --data-binary @{} 'http://kvmnet/v1/apply?source=chunked.yaml'",
        plus_b.path()
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("> Transfer-Encoding: chunked") && !err.contains("> Content-Length"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("h-b"));
    assert!(link_exists(&host, "h-b"));

    // Expect: 100-continue: curl waits for the interim answer (up to 15 s here) before it
    // sends the body; it comes at once.
    let plus_c = SpecFile::new(&format!(
        "{SPEC}  c: {{ ports: [ {{ network: n, name: h-c }} ] }}\n"
    ));
    let t = Instant::now();
    let o = curl(&format!(
        "-f -v --expect100-timeout 15 --unix-socket {s} -H 'Expect: 100-continue' \
         -H 'Content-Type: application/yaml' --data-binary @{} http://kvmnet/v1/apply",
        plus_c.path()
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "curl waited for 100-continue"
    );
    assert!(link_exists(&host, "h-c") && !link_exists(&host, "h-b"));
    // The same with a chunked body, and JSON instead of YAML.
    let body = serde_json::json!({ "spec": SPEC, "source": "json" }).to_string();
    let o = curl(&format!(
        "-f -v --expect100-timeout 15 --unix-socket {s} -H 'Expect: 100-continue' \
         -H 'Transfer-Encoding: chunked' -H 'Content-Type: application/json' \
         --data-binary '{body}' http://kvmnet/v1/apply"
    ));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!link_exists(&host, "h-c"));
    // The CLI, through the daemon, still works.
    ns.kvmnet_ok(&["apply", plus_b.path(), "--netns", &host]);
    assert!(link_exists(&host, "h-b"));
    drop(_d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

/// A client that sends half a request and waits: `python3`'s socket, as a broken or hostile
/// client would.
fn stalled_client(sock: &Path) -> std::process::Child {
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect('{}')\n\
         s.sendall(b'POST /v1/apply HTTP/1.1\\r\\nHost: kvmnet\\r\\nContent-Length: 100\\r\\n\\r\\nversion')\n\
         s.settimeout(20)\nprint(s.recv(200).decode().split('\\r\\n')[0])\nsys.stdout.flush()\n",
        sock.display()
    );
    Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn a_stalled_client_delays_nobody_and_malformed_requests_get_4xx() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("st");
    let spec = SpecFile::new(SPEC);
    let (_d, sock) = start(&ns, spec.path(), &host);
    let stalled: Vec<_> = (0..4).map(|_| stalled_client(&sock)).collect();
    std::thread::sleep(Duration::from_millis(200));
    // Others are answered at once, several at a time, the CLI among them.
    let t = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_kvmnet"))
                .args(["status", "--netns", &host, "--json"])
                .env("KVMNET_STATE_DIR", &ns.state_dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in clients {
        let c = c.wait_with_output().unwrap();
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
        assert!(String::from_utf8_lossy(&c.stdout).contains("h-n"));
    }
    // A server taking one client at a time would answer nobody before the first stalled
    // client's time (3 s) is up.
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "status waited for the stalled clients: {:?}",
        t.elapsed()
    );
    // The stalled ones get 408 once their time is up.
    for c in stalled {
        let o = c.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "HTTP/1.1 408 Request Timeout"
        );
    }

    let s = sock.display();
    let req = |line: &str, fields: &str, body: &str| {
        status_of(&raw(
            &sock,
            format!("{line}\r\nHost: kvmnet\r\n{fields}\r\n{body}").as_bytes(),
        ))
    };
    assert_eq!(req("GET /v1/nope HTTP/1.1", "", ""), 404);
    let answer = raw(&sock, b"GET /v1/apply HTTP/1.1\r\nHost: kvmnet\r\n\r\n");
    assert_eq!(status_of(&answer), 405);
    assert!(answer.contains("Allow: POST"), "{answer}");
    assert_eq!(status_of(&raw(&sock, b"garbage\r\n\r\n")), 400);
    assert_eq!(
        status_of(&raw(&sock, b"GET /v1/status HTTP/1.1\r\n\r\n")),
        400,
        "no Host"
    );
    assert_eq!(req("GET /v1/status HTTP/2.0", "", ""), 505);
    assert_eq!(req("GET /v1/status HTTP/1.1", "Bad Field : x\r\n", ""), 400);
    assert_eq!(req("GET /v1/status HTTP/1.1", "Expect: tea\r\n", ""), 417);
    assert_eq!(
        req(
            "POST /v1/apply HTTP/1.1",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            "0\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        req("POST /v1/apply HTTP/1.1", "Content-Length: 1, 2\r\n", "ab"),
        400
    );
    assert_eq!(
        req(
            "POST /v1/apply HTTP/1.1",
            "Transfer-Encoding: gzip, chunked\r\n",
            "0\r\n\r\n"
        ),
        501
    );
    assert_eq!(
        req(
            "POST /v1/apply HTTP/1.1",
            "Transfer-Encoding: chunked\r\n",
            "zz\r\n"
        ),
        400
    );
    assert_eq!(
        req(
            "POST /v1/apply HTTP/1.1",
            "Content-Length: 999999999999\r\n",
            ""
        ),
        413
    );
    // curl's -X POST without a body sends no length: /v1/apply needs one.
    let o = curl(&format!(
        "-o /dev/null -w '%{{http_code}}' --unix-socket {s} -X POST http://kvmnet/v1/apply"
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "411");
    let o = curl(&format!(
        "-o /dev/null -w '%{{http_code}}' --unix-socket {s} -H 'Content-Type: application/json' \
         -d '{{\"spec\": \"version: 1\\n\"' http://kvmnet/v1/apply"
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "400");
    // A head that never ends is cut off.
    let big = format!(
        "GET /v1/status HTTP/1.1\r\nHost: kvmnet\r\nX: {}\r\n\r\n",
        "y".repeat(70_000)
    );
    assert_eq!(status_of(&raw(&sock, big.as_bytes())), 431);
    // A user the API does not admit (able to reach the socket) is refused.
    let o = sh(&format!(
        "setpriv --reuid 65534 --regid 65534 --clear-groups --inh-caps +dac_override \
         --ambient-caps +dac_override curl -sS -o /dev/null -w '%{{http_code}}' --unix-socket {s} \
         http://kvmnet/v1/status"
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "403");
    // 32 clients at once hold every connection: one more is answered 503 at once, and served
    // again once they are timed out.
    let mut holders = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,sys,time\nss=[]\nfor i in range(32):\n  s=socket.socket(socket.AF_UNIX); s.connect('{s}'); s.sendall(b'GET /v1/status HTTP/1.1\\r\\n'); ss.append(s)\nprint('ready'); sys.stdout.flush(); time.sleep(8)\n"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    holders
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = curl(&format!(
        "-o /dev/null -w '%{{http_code}}' --unix-socket {s} http://kvmnet/v1/status"
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "503");
    std::thread::sleep(Duration::from_millis(3500));
    let o = curl(&format!(
        "-o /dev/null -w '%{{http_code}}' --unix-socket {s} http://kvmnet/v1/status"
    ));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "200");
    let _ = holders.kill();
    let _ = holders.wait();
    // After all that, the daemon serves as before and has changed nothing.
    assert!(link_exists(&host, "h-a"));
    let o = curl(&format!("-f --unix-socket {s} http://kvmnet/v1/status"));
    assert!(o.status.success());
    drop(_d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

#[test]
fn the_failure_hook_is_the_cli_s_only() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("fa");
    let spec = SpecFile::new(SPEC);
    let (d, sock) = start(&ns, spec.path(), &host);
    let plus_b = SpecFile::new(&format!(
        "{SPEC}  b: {{ ports: [ {{ network: n, name: h-b }} ] }}\n"
    ));
    // The API refuses the field...
    let body =
        serde_json::json!({ "spec": std::fs::read_to_string(&plus_b.0).unwrap(), "fail_after": 1 });
    let (status, v) = post_apply(&sock, &body);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["kind"], "usage", "{v}");
    assert!(v["error"].as_str().unwrap().contains("test hook"), "{v}");
    assert!(!link_exists(&host, "h-b"));
    // ... also as a query field of the YAML form (which the CLI sends).
    let answer = raw(
        &sock,
        format!(
            "POST /v1/apply?fail_after=1 HTTP/1.1\r\nHost: kvmnet\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n{}",
            body["spec"].as_str().unwrap().len(),
            body["spec"].as_str().unwrap()
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(!link_exists(&host, "h-b"));
    // ... and the CLI refuses the hook while a daemon runs (exit 2, nothing changed).
    for args in [
        &["apply", plus_b.path(), "--netns", &host][..],
        &["destroy", "--netns", &host][..],
    ] {
        let o = ns.kvmnet_env(args, &[("KVMNET_FAIL_AFTER", "1")]);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("KVMNET_FAIL_AFTER"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(!link_exists(&host, "h-b") && link_exists(&host, "h-a"));
    // Without a daemon the hook works as it always did: fail after step 1, roll back.
    drop(d);
    let o = ns.kvmnet_env(
        &["apply", plus_b.path(), "--netns", &host],
        &[("KVMNET_FAIL_AFTER", "1")],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(!link_exists(&host, "h-b"));
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}

/// Every error of an apply through the API names its kind beside the fields it always had:
/// a spec that does not validate, one that does not fit the host, a change refused while
/// another awaits confirmation. The CLI's exit status follows the kind.
#[test]
fn error_bodies_name_their_kind() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("ek");
    let spec = SpecFile::new(SPEC);
    let (_d, sock) = start(&ns, spec.path(), &host);

    // Invalid: located errors, as before, and the kind.
    let (status, v) = post_apply(
        &sock,
        &serde_json::json!({ "spec": "version: 1\nnetworks: { n: { mode: nat, bogus: 1 } }\n", "source": "bad.yaml" }),
    );
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["kind"], "invalid", "{v}");
    assert_eq!(v["source"], "bad.yaml", "{v}");
    assert_eq!(v["changes"], serde_json::json!([]), "{v}");
    assert!(
        v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "networks.n.bogus"),
        "{v}"
    );

    // Conflict: the spec is valid, but a port's name is taken by an interface kvmnet does not
    // own.
    assert!(
        sh(&format!("ip -n {host} link add h-x type bridge"))
            .status
            .success()
    );
    let taken = format!("{SPEC}  x: {{ ports: [ {{ network: n, name: h-x }} ] }}\n");
    let (status, v) = post_apply(&sock, &serde_json::json!({ "spec": taken }));
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["kind"], "conflict", "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not managed by kvmnet"),
        "{v}"
    );
    let taken = SpecFile::new(&taken);
    let o = ns.kvmnet(&["apply", taken.path(), "--netns", &host]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not managed by kvmnet"));
    let o = ns.kvmnet(&["apply", taken.path(), "--netns", &host, "--json"]);
    let cli: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(cli["kind"], "conflict", "{cli}");

    // Busy: a change awaits confirmation; no other is taken meanwhile.
    let plus_b = format!("{SPEC}  b: {{ ports: [ {{ network: n, name: h-b }} ] }}\n");
    let (status, v) = post_apply(
        &sock,
        &serde_json::json!({ "spec": plus_b, "confirm_within": 120 }),
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = post_apply(&sock, &serde_json::json!({ "spec": SPEC }));
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["kind"], "busy", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("awaits confirmation"),
        "{v}"
    );
    let o = ns.kvmnet(&["apply", spec.path(), "--netns", &host]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("awaits confirmation"));
    assert!(link_exists(&host, "h-b"));

    ns.kvmnet_ok(&["confirm", "--netns", &host]);
    drop(_d);
    ns.kvmnet_ok(&["destroy", "--netns", &host]);
}
