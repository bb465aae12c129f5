//! One JSON-RPC 1.0 connection to an OVSDB server (RFC 7047 section 4): requests matched to
//! replies by id, the server's `echo` answered, notifications handed to a callback.
//!
//! A reader thread owns the receiving half. Why a thread and not a poll loop: the caller
//! (an apply, the daemon's reconcile) blocks on one request at a time, while the server may
//! send an `echo` or a monitor update at any moment and drops a client that leaves an echo
//! unanswered (its inactivity probe).

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use super::{OvsdbError, Remote};

/// What the reader passes on: a notification's method and params.
pub type NotificationHandler = Box<dyn Fn(&str, &Value) + Send>;

/// Run by the reader thread on a request's successful result, before the reply is handed
/// over and before any message after it is read: a monitor's initial rows must be in the
/// replica before the updates that follow them.
pub type ReplyHook = Box<dyn FnOnce(&Value) + Send>;

struct Waiter {
    tx: Sender<Result<Value, OvsdbError>>,
    hook: Option<ReplyHook>,
}

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(super::tls::TlsStream),
}

impl Stream {
    fn connect(remote: &Remote, timeout: Duration) -> Result<Stream, OvsdbError> {
        let connected = match remote {
            Remote::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            Remote::Tcp(addr) => connect_tcp(addr, timeout).map(|s| {
                // Requests are small and each waits for its reply.
                let _ = s.set_nodelay(true);
                Stream::Tcp(s)
            }),
            Remote::Ssl(addr) => super::tls::TlsStream::connect(addr, timeout).map(Stream::Tls),
        };
        connected.map_err(|source| OvsdbError::Connect {
            remote: remote.to_string(),
            source,
        })
    }

    fn split(&self) -> std::io::Result<(Box<dyn Read + Send>, Box<dyn Write + Send>)> {
        Ok(match self {
            Stream::Unix(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
            Stream::Tcp(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
            Stream::Tls(s) => (Box::new(s.try_clone()?), Box::new(s.try_clone()?)),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tls(s) => {
                s.shutdown();
                Ok(())
            }
        };
    }
}

/// A TCP connection to `addr` (`host:port`), given up after `timeout` per address it names:
/// an unreachable server is an error within seconds, not after the kernel's retries.
pub(super) fn connect_tcp(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr}: no address"))))
}

/// A live connection. Dropping it closes the socket and joins the reader.
pub struct Connection {
    remote: Remote,
    stream: Stream,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    pending: Pending,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl Connection {
    pub fn open(
        remote: &Remote,
        timeout: Duration,
        on_notify: NotificationHandler,
    ) -> Result<Connection, OvsdbError> {
        let stream = Stream::connect(remote, timeout)?;
        let (read, write) = stream.split().map_err(OvsdbError::Io)?;
        let writer = Arc::new(Mutex::new(write));
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = {
            let (writer, pending, closed) = (writer.clone(), pending.clone(), closed.clone());
            std::thread::Builder::new()
                .name("ovsdb-reader".into())
                .spawn(move || read_loop(read, &writer, &pending, &on_notify, &closed))
                .map_err(OvsdbError::Io)?
        };
        Ok(Connection {
            remote: remote.clone(),
            stream,
            writer,
            pending,
            next_id: AtomicU64::new(1),
            closed,
            reader: Some(reader),
            timeout,
        })
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// Whether the server closed the connection (or it broke).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Sends a request and waits for its reply's `result`; an `error` reply is
    /// [`OvsdbError::Rpc`].
    pub fn call(&self, method: &str, params: Value) -> Result<Value, OvsdbError> {
        self.request(method, params, None)
    }

    /// [`Connection::call`], with `hook` run on the result in the reader thread first.
    pub fn call_then(
        &self,
        method: &str,
        params: Value,
        hook: ReplyHook,
    ) -> Result<Value, OvsdbError> {
        self.request(method, params, Some(hook))
    }

    fn request(
        &self,
        method: &str,
        params: Value,
        hook: Option<ReplyHook>,
    ) -> Result<Value, OvsdbError> {
        if self.is_closed() {
            return Err(OvsdbError::Disconnected(self.remote.to_string()));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel();
        lock(&self.pending).insert(id, Waiter { tx, hook });
        let msg = json!({"method": method, "params": params, "id": id});
        if let Err(e) = send(&self.writer, &msg) {
            lock(&self.pending).remove(&id);
            return Err(OvsdbError::Io(e));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&id);
                Err(OvsdbError::Timeout {
                    method: method.to_string(),
                    after: self.timeout,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(OvsdbError::Disconnected(self.remote.to_string()))
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.stream.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn send(writer: &Mutex<Box<dyn Write + Send>>, msg: &Value) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let mut w = lock(writer);
    w.write_all(&bytes)?;
    w.flush()
}

/// Reads messages until the stream ends, then fails every request still waiting.
fn read_loop(
    read: Box<dyn Read + Send>,
    writer: &Mutex<Box<dyn Write + Send>>,
    pending: &Pending,
    on_notify: &NotificationHandler,
    closed: &AtomicBool,
) {
    // OVSDB messages follow one another with no framing: a streaming JSON reader splits them.
    let messages = serde_json::Deserializer::from_reader(BufReader::new(read)).into_iter::<Value>();
    for msg in messages {
        let Ok(msg) = msg else { break };
        dispatch(msg, writer, pending, on_notify);
    }
    closed.store(true, Ordering::SeqCst);
    for (_, w) in lock(pending).drain() {
        let _ = w.tx.send(Err(OvsdbError::Disconnected(
            "server closed the connection".into(),
        )));
    }
}

fn dispatch(
    msg: Value,
    writer: &Mutex<Box<dyn Write + Send>>,
    pending: &Pending,
    on_notify: &NotificationHandler,
) {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    if let Some(method) = msg.get("method").and_then(Value::as_str) {
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        if method == "echo" && !id.is_null() {
            // RFC 7047 4.1.11: answered with the request's params, or the server hangs up.
            let _ = send(writer, &json!({"result": params, "error": null, "id": id}));
        } else if id.is_null() {
            on_notify(method, &params);
        } else {
            let err = json!({"result": null, "error": "unknown method", "id": id});
            let _ = send(writer, &err);
        }
        return;
    }
    let Some(n) = id.as_u64() else { return };
    let Some(w) = lock(pending).remove(&n) else {
        return;
    };
    let error = msg.get("error").cloned().unwrap_or(Value::Null);
    let reply = if error.is_null() {
        let result = msg.get("result").cloned().unwrap_or(Value::Null);
        if let Some(hook) = w.hook {
            hook(&result);
        }
        Ok(result)
    } else {
        Err(OvsdbError::Rpc(error.to_string()))
    };
    let _ = w.tx.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A fake server on one end of a socket pair: it echoes requests back as results, sends
    /// an echo request of its own first, and a notification.
    #[test]
    fn replies_notifications_and_echo() {
        let dir = std::env::temp_dir().join(format!("kvmnet-ovsdb-rpc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(br#"{"method":"echo","params":["ping"],"id":"e1"}"#)
                .unwrap();
            s.write_all(br#"{"method":"update3","params":["m","t",{}],"id":null}"#)
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut seen = Vec::new();
            let mut messages = serde_json::Deserializer::from_reader(&mut r).into_iter::<Value>();
            while let Some(Ok(m)) = messages.next() {
                if m["id"] == "e1" {
                    seen.push(m.clone());
                    continue;
                }
                let reply = json!({"result": m["params"], "error": null, "id": m["id"]});
                s.write_all(reply.to_string().as_bytes()).unwrap();
                if m["method"] == "last" {
                    break;
                }
            }
            // Dropping the socket hangs up on the client.
            seen
        });
        let notes = Arc::new(Mutex::new(Vec::new()));
        let n2 = notes.clone();
        let remote = Remote::Unix(path.clone());
        let c = Connection::open(
            &remote,
            Duration::from_secs(5),
            Box::new(move |m, p| lock(&n2).push((m.to_string(), p.clone()))),
        )
        .unwrap();
        assert_eq!(c.call("x", json!([1, 2])).unwrap(), json!([1, 2]));
        assert_eq!(c.call("last", json!(["z"])).unwrap(), json!(["z"]));
        let echoed = server.join().unwrap();
        assert_eq!(
            echoed,
            vec![json!({"result": ["ping"], "error": null, "id": "e1"})]
        );
        assert_eq!(lock(&notes)[0].0, "update3");
        // The server is gone: the next call fails instead of hanging.
        std::thread::sleep(Duration::from_millis(50));
        assert!(matches!(
            c.call("y", json!([])),
            Err(OvsdbError::Disconnected(_)) | Err(OvsdbError::Io(_))
        ));
        drop(c);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
