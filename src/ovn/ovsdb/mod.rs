//! An OVSDB client (RFC 7047, with ovsdb-server's `monitor_cond_since` and `update3`):
//! what the OVN backend speaks to the Northbound database and to a chassis's Open_vSwitch
//! database.
//!
//! - [`Remote`]: where a database is (`unix:PATH`, `tcp:HOST:PORT`, `ssl:HOST:PORT`, or a comma-separated
//!   list of them for a Raft cluster).
//! - [`Client`]: a connection to the cluster's leader, `transact`, and a [`Replica`] of the
//!   monitored tables kept current by the server's notifications. After a lost connection,
//!   [`Client::ensure_connected`] finds the leader again and asks only for the transactions
//!   it missed.
//! - `rpc`: the JSON-RPC connection (a reader thread answers the server's echo probes).
//! - `datum`: OVSDB values as Rust values, and how a monitor's difference applies to them.
//!
//! Why our own and not a crate: the Rust OVSDB clients on crates.io (`ovsdb`, `ovsdb-client`)
//! are early (0.0.x), async-only (a tokio runtime the rest of kvmnet does not use), and do not
//! implement `monitor_cond_since` or following a cluster's leader, which the NB view needs.
//! The protocol is JSON-RPC over a stream; serde_json does the JSON.

pub mod datum;
pub mod replica;
pub mod rpc;
pub mod tls;
pub mod tls_files;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use datum::{Atom, ColumnKind, Datum};
pub use replica::{Replica, Row, ZERO_TXN};
use rpc::Connection;

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("{remote}: {why}")]
    Remote { remote: String, why: String },
    #[error("cannot connect to {remote}: {source}")]
    Connect {
        remote: String,
        source: std::io::Error,
    },
    #[error("OVSDB connection: {0}")]
    Io(std::io::Error),
    #[error("the OVSDB server answered something unreadable: {0}")]
    Protocol(String),
    #[error("the OVSDB server refused the request: {0}")]
    Rpc(String),
    #[error("OVSDB transaction failed at operation {index}: {error}{}", details.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Txn {
        index: usize,
        error: String,
        details: Option<String>,
    },
    #[error("no answer to {method} within {after:?}")]
    Timeout { method: String, after: Duration },
    #[error("OVSDB connection lost: {0}")]
    Disconnected(String),
    #[error("database {db}: no leader among {tried}")]
    NoLeader { db: String, tried: String },
    #[error("OVSDB schema: {0}")]
    Schema(String),
}

/// Where an OVSDB server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Unix(PathBuf),
    /// `host:port` as `TcpStream::connect` takes it (`[::1]:6641` for IPv6).
    Tcp(String),
    /// The same, over TLS with the process's files (see [`tls`]).
    Ssl(String),
}

impl Remote {
    /// One remote or a comma-separated list, in OVN's syntax (`unix:/run/ovn/ovnnb_db.sock`,
    /// `tcp:172.31.0.1:6641,tcp:172.31.0.2:6641`).
    pub fn parse_list(text: &str) -> Result<Vec<Remote>, OvsdbError> {
        let list: Vec<Remote> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Remote::parse)
            .collect::<Result<_, _>>()?;
        if list.is_empty() {
            return Err(OvsdbError::Remote {
                remote: text.to_string(),
                why: "no remote given".into(),
            });
        }
        Ok(list)
    }

    pub fn parse(text: &str) -> Result<Remote, OvsdbError> {
        let bad = |why: &str| OvsdbError::Remote {
            remote: text.to_string(),
            why: why.to_string(),
        };
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("unix: needs a socket path"));
            }
            return Ok(Remote::Unix(PathBuf::from(path)));
        }
        for (prefix, make) in [
            ("tcp:", Remote::Tcp as fn(String) -> Remote),
            ("ssl:", Remote::Ssl),
        ] {
            let Some(hp) = text.strip_prefix(prefix) else {
                continue;
            };
            let port_ok = hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(bad(&format!(
                    "{prefix} needs HOST:PORT (an IPv6 host in brackets)"
                )));
            }
            return Ok(make(hp.to_string()));
        }
        Err(bad("a remote is unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT"))
    }
}

impl fmt::Display for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Remote::Unix(p) => write!(f, "unix:{}", p.display()),
            Remote::Tcp(a) => write!(f, "tcp:{a}"),
            Remote::Ssl(a) => write!(f, "ssl:{a}"),
        }
    }
}

/// The replica and a condition variable signalled on every change to it.
type Shared = Arc<(Mutex<Replica>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Replica> {
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection to one database on the leader of its cluster (or its only server).
pub struct Client {
    remotes: Vec<Remote>,
    db: String,
    timeout: Duration,
    conn: Connection,
    shared: Shared,
    /// The monitored tables and, for each, the columns asked for (all when empty).
    monitored: Vec<(String, Vec<String>)>,
    /// The connection's server holds a standalone database: it stays the one to use for as
    /// long as the connection lasts, with no need to ask again (a round trip, 0.4-2 ms
    /// while ovn-northd keeps the server busy, twice per apply).
    standalone: bool,
}

impl Client {
    /// Connects to the first of `remotes` that serves `db` as its cluster's leader (any
    /// server of a standalone database).
    pub fn connect(remotes: &[Remote], db: &str, timeout: Duration) -> Result<Client, OvsdbError> {
        let shared: Shared = Arc::default();
        let (conn, role) = connect_leader(remotes, db, timeout, &shared)?;
        Ok(Client {
            remotes: remotes.to_vec(),
            db: db.to_string(),
            timeout,
            conn,
            shared,
            monitored: Vec::new(),
            standalone: role == Some(Role::Standalone),
        })
    }

    /// The remote this client is connected to.
    pub fn remote(&self) -> &Remote {
        self.conn.remote()
    }

    pub fn get_schema(&self) -> Result<Value, OvsdbError> {
        self.conn.call("get_schema", json!([self.db]))
    }

    pub fn echo(&self) -> Result<(), OvsdbError> {
        let v = self.conn.call("echo", json!(["kvmnet"]))?;
        if v != json!(["kvmnet"]) {
            return Err(OvsdbError::Protocol(format!("echo answered {v}")));
        }
        Ok(())
    }

    /// Runs one transaction: `ops` are RFC 7047 operations (5.2). Fails with the first
    /// operation's error, the commit's included (a result past the last operation).
    pub fn transact(&self, ops: Vec<Value>) -> Result<Vec<Value>, OvsdbError> {
        let mut params = vec![json!(self.db)];
        params.extend(ops);
        let result = self.conn.call("transact", Value::Array(params))?;
        let results = result
            .as_array()
            .ok_or_else(|| OvsdbError::Protocol(format!("transact answered {result}")))?;
        for (index, r) in results.iter().enumerate() {
            if let Some(e) = r.get("error").and_then(Value::as_str) {
                return Err(OvsdbError::Txn {
                    index,
                    error: e.to_string(),
                    details: r.get("details").and_then(Value::as_str).map(String::from),
                });
            }
        }
        Ok(results.clone())
    }

    /// Starts monitoring `tables` (each with the columns to follow; all when empty): the
    /// replica holds their rows from now on.
    pub fn monitor(&mut self, tables: &[(&str, &[&str])]) -> Result<(), OvsdbError> {
        let schema = self.get_schema()?;
        let names: Vec<&str> = tables.iter().map(|(t, _)| *t).collect();
        *lock(&self.shared) = Replica::new(&schema, &names)?;
        self.monitored = tables
            .iter()
            .map(|(t, c)| (t.to_string(), c.iter().map(|s| s.to_string()).collect()))
            .collect();
        self.monitor_since()
    }

    /// Asks for what changed since the replica's last transaction; the reply is applied by
    /// the reader thread, before any update that follows it.
    fn monitor_since(&self) -> Result<(), OvsdbError> {
        let requests: serde_json::Map<String, Value> = self
            .monitored
            .iter()
            .map(|(t, cols)| {
                let req = if cols.is_empty() {
                    json!([{}])
                } else {
                    json!([{"columns": cols}])
                };
                (t.clone(), req)
            })
            .collect();
        let since = lock(&self.shared).last_txn.clone();
        let shared = self.shared.clone();
        self.conn.call_then(
            "monitor_cond_since",
            json!([self.db, "kvmnet", requests, since]),
            Box::new(move |result: &Value| apply_monitor_reply(&shared, result)),
        )?;
        Ok(())
    }

    /// The monitored rows as they are now.
    pub fn replica(&self) -> MutexGuard<'_, Replica> {
        lock(&self.shared)
    }

    /// Waits until `ready` holds of the replica, or `timeout` passes; whether it held.
    pub fn wait_until(&self, timeout: Duration, ready: impl Fn(&Replica) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut r = lock(&self.shared);
        loop {
            if ready(&r) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            r = self
                .shared
                .1
                .wait_timeout(r, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Reconnects (to the leader) if the connection was lost or its server is no longer the
    /// leader, and resumes the monitor from the replica's last transaction. Whether it had
    /// to.
    pub fn ensure_connected(&mut self) -> Result<bool, OvsdbError> {
        let leader = || {
            let role = leader_state(&self.conn, &self.db).ok().flatten();
            role.map(|r| r != Role::Follower)
        };
        if !self.conn.is_closed()
            && (self.standalone || leader().unwrap_or(self.remotes.len() == 1))
        {
            return Ok(false);
        }
        let (conn, role) = connect_leader(&self.remotes, &self.db, self.timeout, &self.shared)?;
        self.conn = conn;
        self.standalone = role == Some(Role::Standalone);
        if !self.monitored.is_empty() {
            self.monitor_since()?;
        }
        Ok(true)
    }
}

/// Applies a `monitor_cond_since` reply: `[found, last_txn_id, table-updates2]`. Without
/// `found` the server sends every row, so the replica starts over.
fn apply_monitor_reply(shared: &Shared, result: &Value) {
    let (found, txn, updates) = (&result[0], &result[1], &result[2]);
    let mut r = lock(shared);
    if found != &Value::Bool(true) {
        r.clear();
    }
    // A reply the replica cannot read leaves it as it was; the next reconcile re-reads.
    let _ = r.apply(updates, txn.as_str());
    shared.1.notify_all();
}

/// The reader thread's handler for `update3` notifications.
fn notification_handler(shared: Shared) -> rpc::NotificationHandler {
    Box::new(move |method, params| {
        if method != "update3" {
            return;
        }
        let mut r = lock(&shared);
        let _ = r.apply(&params[2], params[1].as_str());
        shared.1.notify_all();
    })
}

/// What a server is to a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Not clustered (also a server without the `_Server` database, older than OVS 2.9,
    /// which knows no clusters).
    Standalone,
    /// The leader of its cluster, and connected to it.
    Leader,
    Follower,
}

/// What the server this connection reaches is to `db`. `None` when `_Server` does not list
/// the database yet (a server that has just started), but `list_dbs` does.
fn leader_state(conn: &Connection, db: &str) -> Result<Option<Role>, OvsdbError> {
    let select = json!(["_Server", {"op": "select", "table": "Database",
        "where": [["name", "==", db]], "columns": ["model", "leader", "connected"]}]);
    let result = match conn.call("transact", select) {
        Ok(r) => r,
        Err(OvsdbError::Rpc(e)) if e.contains("unknown database") => {
            return Ok(Some(Role::Standalone));
        }
        Err(e) => return Err(e),
    };
    if let Some(row) = result[0]["rows"].get(0) {
        return Ok(Some(if row["model"] != "clustered" {
            Role::Standalone
        } else if row["leader"] == true && row["connected"] == true {
            Role::Leader
        } else {
            Role::Follower
        }));
    }
    let dbs = conn.call("list_dbs", json!([]))?;
    if dbs.as_array().is_some_and(|l| l.iter().any(|d| d == db)) {
        return Ok(None);
    }
    Err(OvsdbError::Remote {
        remote: conn.remote().to_string(),
        why: format!("does not serve database {db}"),
    })
}

/// A connection to the first of `remotes` that leads `db`'s cluster (or serves it
/// standalone), with what it is to `db` (`None`: a lone server just starting).
fn connect_leader(
    remotes: &[Remote],
    db: &str,
    timeout: Duration,
    shared: &Shared,
) -> Result<(Connection, Option<Role>), OvsdbError> {
    let mut tried = Vec::new();
    for remote in remotes {
        let checked = Connection::open(remote, timeout, notification_handler(shared.clone()))
            .and_then(|conn| leader_state(&conn, db).map(|leader| (conn, leader)));
        match checked {
            Ok((conn, Some(role @ (Role::Standalone | Role::Leader)))) => {
                return Ok((conn, Some(role)));
            }
            // A lone server cannot be anything but the one to use.
            Ok((conn, None)) if remotes.len() == 1 => return Ok((conn, None)),
            Ok((_, None)) => tried.push(format!("{remote} (starting)")),
            Ok((_, Some(Role::Follower))) => tried.push(format!("{remote} (not the leader)")),
            // One server that cannot be reached or does not serve the database: its own
            // error says it best.
            Err(e) if remotes.len() == 1 => return Err(e),
            Err(e) => tried.push(format!("{remote} ({e})")),
        }
    }
    Err(OvsdbError::NoLeader {
        db: db.to_string(),
        tried: tried.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_parse() {
        assert_eq!(
            Remote::parse_list("unix:/run/ovn/ovnnb_db.sock").unwrap(),
            vec![Remote::Unix("/run/ovn/ovnnb_db.sock".into())]
        );
        assert_eq!(
            Remote::parse_list("tcp:192.0.2.1:6641, tcp:[2001:db8::1]:6641").unwrap(),
            vec![
                Remote::Tcp("192.0.2.1:6641".into()),
                Remote::Tcp("[2001:db8::1]:6641".into())
            ]
        );
        for bad in [
            "",
            "unix:",
            "tcp:1.2.3.4",
            "tcp::6641",
            "tcp:h:0",
            "ssl:h",
            "h:6641",
        ] {
            assert!(Remote::parse_list(bad).is_err(), "{bad}");
        }
        assert_eq!(Remote::Tcp("h:1".into()).to_string(), "tcp:h:1");
        assert_eq!(
            Remote::parse("ssl:192.0.2.1:6641").unwrap(),
            Remote::Ssl("192.0.2.1:6641".into())
        );
        assert_eq!(Remote::Ssl("h:1".into()).to_string(), "ssl:h:1");
    }
}
