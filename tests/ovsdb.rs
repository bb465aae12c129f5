//! The OVSDB client against real `ovsdb-server`s holding OVN's Northbound schema: a
//! standalone server, and a three-server Raft cluster whose leader is killed.
//!
//! What it proves: transactions and their errors; the replica follows changes made by
//! another client (`ovn-nbctl`), set and map differences included; after the server
//! restarts or the leader dies, `ensure_connected` finds the (new) leader and the replica
//! catches up with what changed while it was away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvmnet::ovn::ovsdb::{Atom, Client, Datum, OvsdbError, Remote, Replica, Row};
use kvmnet::ovn::owned::{OWNER_KEY, OwnedError, Parent, Wanted, converge, converge_ops};
use serde_json::json;

const SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";
const DB: &str = "OVN_Northbound";
const WAIT: Duration = Duration::from_secs(10);

fn tools_present() -> bool {
    let ok = Path::new(SCHEMA).exists()
        && Command::new("ovsdb-server")
            .arg("--version")
            .output()
            .is_ok()
        && Command::new("ovn-nbctl").arg("--version").output().is_ok();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("ovsdb-server, ovn-nbctl and the NB schema must be installed under CI");
    }
    ok
}

/// A scratch folder, removed (with the servers in it stopped first) when dropped.
struct Lab {
    dir: PathBuf,
    servers: Vec<Option<Child>>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let dir = std::env::temp_dir().join(format!("kvmnet-ovsdb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab {
            dir,
            servers: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn tool(&self, args: &[&str]) {
        let out = Command::new("ovsdb-tool").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ovsdb-tool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts server `i` on database file `db`, serving `sN.sock`.
    fn start(&mut self, i: usize, db: &str) {
        let sock = self.path(&format!("s{i}.sock"));
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("ovsdb-server")
            .arg(self.path(db))
            .arg(format!("--remote=punix:{}", sock.display()))
            .arg(format!(
                "--unixctl={}",
                self.path(&format!("s{i}.ctl")).display()
            ))
            .arg(format!(
                "--log-file={}",
                self.path(&format!("s{i}.log")).display()
            ))
            .arg("--no-chdir")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if self.servers.len() <= i {
            self.servers.resize_with(i + 1, || None);
        }
        self.servers[i] = Some(child);
        let t = Instant::now();
        while !sock.exists() {
            assert!(t.elapsed() < WAIT, "ovsdb-server {i} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn remote(&self, i: usize) -> Remote {
        Remote::Unix(self.path(&format!("s{i}.sock")))
    }

    /// Whether server `i` has joined the cluster as a member.
    fn cluster_member(&self, i: usize) -> bool {
        let out = Command::new("ovs-appctl")
            .arg("-t")
            .arg(self.path(&format!("s{i}.ctl")))
            .args(["cluster/status", DB])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("Status: cluster member")
    }

    fn nbctl(&self, i: usize, args: &[&str]) -> String {
        let out = Command::new("ovn-nbctl")
            .arg(format!("--db={}", self.remote(i)))
            .args(["--timeout=10"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ovn-nbctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn switch_named<'a>(
    r: &'a Replica,
    name: &str,
) -> Option<(&'a String, &'a kvmnet::ovn::ovsdb::Row)> {
    r.table("Logical_Switch").find(|(_, row)| {
        row.get("name")
            .and_then(Datum::single)
            .and_then(Atom::as_str)
            == Some(name)
    })
}

fn insert_switch(c: &Client, name: &str) -> String {
    let res = c
        .transact(vec![json!({"op": "insert", "table": "Logical_Switch",
            "row": {"name": name, "external_ids": ["map", [["kvmnet-owner", "test"]]]}})])
        .unwrap();
    res[0]["uuid"][1].as_str().unwrap().to_string()
}

#[test]
fn standalone_server_transactions_monitor_and_restart() {
    if !tools_present() {
        return;
    }
    let mut lab = Lab::new("solo");
    lab.tool(&["create", lab.path("nb.db").to_str().unwrap(), SCHEMA]);
    lab.start(0, "nb.db");

    let mut c = Client::connect(&[lab.remote(0)], DB, WAIT).unwrap();
    c.echo().unwrap();
    c.monitor(&[
        ("Logical_Switch", &[]),
        ("Logical_Switch_Port", &["name", "addresses"]),
    ])
    .unwrap();
    let ours = insert_switch(&c, "ours");
    assert!(c.wait_until(WAIT, |r| r.row("Logical_Switch", &ours).is_some()));

    // Another client's changes reach the replica: a map gains and loses a key, a set of
    // references grows.
    lab.nbctl(
        0,
        &[
            "ls-add",
            "theirs",
            "--",
            "set",
            "Logical_Switch",
            "theirs",
            "external_ids:a=1",
            "external_ids:b=2",
        ],
    );
    lab.nbctl(
        0,
        &["remove", "Logical_Switch", "theirs", "external_ids", "a"],
    );
    lab.nbctl(
        0,
        &[
            "lsp-add",
            "theirs",
            "p1",
            "--",
            "lsp-set-addresses",
            "p1",
            "52:54:00:00:00:01 10.0.0.1",
        ],
    );
    assert!(c.wait_until(WAIT, |r| {
        switch_named(r, "theirs").is_some_and(|(_, row)| {
            row.get("external_ids") == Some(&Datum::map([("b", "2")]))
                && row.get("ports").is_some_and(|p| p.atoms().count() == 1)
        }) && r.table("Logical_Switch_Port").count() == 1
    }));

    // A failed transaction says which operation failed and changes nothing.
    let err = c
        .transact(vec![
            json!({"op": "insert", "table": "Logical_Switch", "row": {"name": "x"}}),
            json!({"op": "insert", "table": "Logical_Switch", "row": {"no_such_column": 1}}),
        ])
        .unwrap_err();
    assert!(matches!(err, OvsdbError::Txn { index: 1, .. }), "{err}");
    assert_eq!(
        lab.nbctl(
            0,
            &[
                "--bare",
                "--columns=name",
                "find",
                "Logical_Switch",
                "name=x"
            ]
        ),
        ""
    );

    // The server restarts; meanwhile another client removes a switch. The replica catches up.
    lab.kill(0);
    std::thread::sleep(Duration::from_millis(100));
    assert!(c.transact(vec![]).is_err());
    lab.start(0, "nb.db");
    lab.nbctl(0, &["ls-del", "theirs"]);
    assert!(c.ensure_connected().unwrap());
    assert!(c.wait_until(WAIT, |r| switch_named(r, "theirs").is_none()
        && r.row("Logical_Switch", &ours).is_some()
        && r.table("Logical_Switch_Port").count() == 0));
    assert!(!c.ensure_connected().unwrap(), "a live connection is kept");

    // A server that does not serve the database is refused with its name.
    let err = Client::connect(&[lab.remote(0)], "No_Such_DB", WAIT)
        .err()
        .unwrap();
    assert!(err.to_string().contains("No_Such_DB"), "{err}");
    let err = Client::connect(&[Remote::Unix(lab.path("absent.sock"))], DB, WAIT)
        .err()
        .unwrap();
    assert!(matches!(err, OvsdbError::Connect { .. }), "{err}");
}

#[test]
fn cluster_follows_the_leader() {
    if !tools_present() {
        return;
    }
    let mut lab = Lab::new("raft");
    let raft = |i: usize| format!("unix:{}", lab.path(&format!("s{i}.raft")).display());
    lab.tool(&[
        "create-cluster",
        lab.path("s0.db").to_str().unwrap(),
        SCHEMA,
        &raft(0),
    ]);
    for i in 1..3 {
        lab.tool(&[
            "join-cluster",
            lab.path(&format!("s{i}.db")).to_str().unwrap(),
            DB,
            &raft(i),
            &raft(0),
        ]);
    }
    for i in 0..3 {
        lab.start(i, &format!("s{i}.db"));
    }
    // Killing the leader before the others have joined would leave a cluster of one.
    let t = Instant::now();
    while !(0..3).all(|i| lab.cluster_member(i)) {
        assert!(
            t.elapsed() < WAIT * 3,
            "the servers did not join the cluster"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let remotes: Vec<Remote> = (0..3).map(|i| lab.remote(i)).collect();
    let t = Instant::now();
    let mut c = loop {
        match Client::connect(&remotes, DB, WAIT) {
            Ok(c) => break c,
            Err(e) => assert!(t.elapsed() < WAIT * 3, "no leader: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    c.monitor(&[("Logical_Switch", &[])]).unwrap();
    let before = insert_switch(&c, "before");
    assert!(c.wait_until(WAIT, |r| r.row("Logical_Switch", &before).is_some()));

    let leader = remotes.iter().position(|r| r == c.remote()).unwrap();
    lab.kill(leader);
    let t = Instant::now();
    loop {
        match c.ensure_connected() {
            Ok(_) => break,
            Err(e) => assert!(t.elapsed() < WAIT * 3, "no new leader: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_ne!(c.remote(), &remotes[leader]);
    let after = insert_switch(&c, "after");
    assert!(
        c.wait_until(WAIT, |r| r.row("Logical_Switch", &before).is_some()
            && r.row("Logical_Switch", &after).is_some())
    );
}

fn wanted(names: &[&str], dns: &str) -> Vec<Wanted> {
    names
        .iter()
        .map(|n| Wanted {
            name: n.to_string(),
            columns: Row::from([("other_config".to_string(), Datum::map([("subnet", dns)]))]),
            external_ids: vec![("kvmnet-network".into(), n.to_string())],
        })
        .collect()
}

/// Converges host-a's switches to `names`.
fn switches(c: &Client, names: &[&str]) -> Result<bool, OwnedError> {
    converge(
        c,
        "Logical_Switch",
        "host-a",
        &wanted(names, "10.0.0.0/24"),
        None,
    )
}

fn names(r: &Replica) -> Vec<String> {
    let mut v: Vec<String> = r
        .table("Logical_Switch")
        .filter_map(|(_, row)| {
            row.get("name")
                .and_then(Datum::single)
                .and_then(Atom::as_str)
        })
        .map(String::from)
        .collect();
    v.sort();
    v
}

/// Marked rows converge to what is wanted, hand edits are repaired, foreign rows are never
/// touched (nor shadowed by a name), and two writers converging at once make no duplicate.
#[test]
fn owned_rows_converge_without_touching_foreign_ones() {
    if !tools_present() {
        return;
    }
    let mut lab = Lab::new("owned");
    lab.tool(&["create", lab.path("nb.db").to_str().unwrap(), SCHEMA]);
    lab.start(0, "nb.db");
    lab.nbctl(
        0,
        &[
            "ls-add",
            "foreign",
            "--",
            "set",
            "Logical_Switch",
            "foreign",
            "other_config:subnet=198.51.100.0/24",
        ],
    );
    let foreign_before = lab.nbctl(0, &["list", "Logical_Switch", "foreign"]);

    let client = || {
        let mut c = Client::connect(&[lab.remote(0)], DB, WAIT).unwrap();
        c.monitor(&[("Logical_Switch", &[])]).unwrap();
        c
    };
    let c = client();
    assert!(switches(&c, &["a", "b"]).unwrap());
    assert!(!switches(&c, &["a", "b"]).unwrap());
    assert_eq!(names(&c.replica()), ["a", "b", "foreign"]);
    let owner = lab.nbctl(
        0,
        &[
            "get",
            "Logical_Switch",
            "a",
            &format!("external_ids:{OWNER_KEY}"),
        ],
    );
    assert_eq!(owner, "host-a");

    // A hand edit of a marked row is repaired; a row no longer wanted goes.
    lab.nbctl(
        0,
        &[
            "set",
            "Logical_Switch",
            "a",
            "other_config:subnet=192.0.2.0/24",
        ],
    );
    assert!(
        c.wait_until(WAIT, |r| r.table("Logical_Switch").any(|(_, row)| row
            .get("other_config")
            .and_then(|d| d.get("subnet"))
            == Some("192.0.2.0/24")))
    );
    assert!(switches(&c, &["a"]).unwrap());
    assert_eq!(
        lab.nbctl(0, &["get", "Logical_Switch", "a", "other_config:subnet"]),
        "\"10.0.0.0/24\""
    );
    assert!(c.wait_until(WAIT, |r| names(r) == ["a", "foreign"]));

    // A wanted name that a foreign row holds is refused, and nothing changes.
    let err = switches(&c, &["a", "foreign"]).unwrap_err();
    assert!(matches!(err, OwnedError::Foreign { .. }), "{err}");
    assert_eq!(
        lab.nbctl(0, &["list", "Logical_Switch", "foreign"]),
        foreign_before
    );

    stale_view_is_refused(&lab, &client);
    concurrent_writers_converge(&lab, &client);
    assert_eq!(
        lab.nbctl(0, &["list", "Logical_Switch", "foreign"]),
        foreign_before
    );
}

fn stale_view_is_refused(lab: &Lab, client: &dyn Fn() -> Client) {
    // A transaction made from a view another writer has since changed is refused whole: the
    // second of two hosts inserting the same row does not duplicate it.
    let want = wanted(&["x"], "10.2.0.0/24");
    let race = |c: &Client| converge(c, "Logical_Switch", "race", &want, None).unwrap();
    let (c1, c2) = (client(), client());
    let stale = converge_ops(&c1.replica(), "Logical_Switch", "race", &want, None).unwrap();
    assert!(race(&c2));
    let err = c1.transact(stale).unwrap_err();
    assert!(matches!(err, OvsdbError::Txn { index: 0, .. }), "{err}");
    let found = lab.nbctl(
        0,
        &[
            "--bare",
            "--columns=name",
            "find",
            "Logical_Switch",
            "name=x",
        ],
    );
    assert_eq!(found, "x");
    assert!(!race(&c1));
}

fn concurrent_writers_converge(lab: &Lab, client: &dyn Fn() -> Client) {
    // Two writers at once, round after round: never a duplicate.
    for round in 0..10 {
        let want: Vec<String> = (0..5).map(|i| format!("r{round}-{i}")).collect();
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let (c1, c2) = (client(), client());
        let w = wanted(&want, "10.1.0.0/24");
        std::thread::scope(|s| {
            let t1 = s.spawn(|| converge(&c1, "Logical_Switch", "shared", &w, None).unwrap());
            let t2 = s.spawn(|| converge(&c2, "Logical_Switch", "shared", &w, None).unwrap());
            t1.join().unwrap();
            t2.join().unwrap();
        });
        let listed = lab.nbctl(
            0,
            &[
                "--bare",
                "--columns=name",
                "find",
                "Logical_Switch",
                "external_ids:kvmnet-owner=shared",
            ],
        );
        let mut got: Vec<&str> = listed.split_whitespace().collect();
        got.sort();
        assert_eq!(got, want, "round {round}");
    }
}

/// Rows under a parent (a switch's ports): inserted into it and taken out of it in the
/// converging transaction, another switch's ports (marked or foreign) left alone.
#[test]
fn owned_children_converge_under_their_parent() {
    if !tools_present() {
        return;
    }
    let mut lab = Lab::new("children");
    lab.tool(&["create", lab.path("nb.db").to_str().unwrap(), SCHEMA]);
    lab.start(0, "nb.db");
    lab.nbctl(0, &["ls-add", "foreign", "--", "lsp-add", "foreign", "f1"]);
    let mut c = Client::connect(&[lab.remote(0)], DB, WAIT).unwrap();
    c.monitor(&[("Logical_Switch", &[]), ("Logical_Switch_Port", &[])])
        .unwrap();
    assert!(switches(&c, &["s1", "s2"]).unwrap());
    let uuid_of = |name: &str| {
        let r = c.replica();
        switch_named(&r, name).map(|(u, _)| u.clone()).unwrap()
    };
    let (s1, s2) = (uuid_of("s1"), uuid_of("s2"));
    let ports = |parent: &str, names: &[&str]| {
        let p = Parent {
            table: "Logical_Switch",
            uuid: parent,
            column: "ports",
        };
        let want: Vec<Wanted> = names
            .iter()
            .map(|n| Wanted {
                name: n.to_string(),
                columns: Row::from([(
                    "addresses".to_string(),
                    Datum::atom(Atom::str(format!(
                        "52:54:00:00:00:0{} 10.0.0.{}",
                        n.len(),
                        n.len()
                    ))),
                )]),
                external_ids: Vec::new(),
            })
            .collect();
        converge(&c, "Logical_Switch_Port", "host-a", &want, Some(&p)).unwrap()
    };
    assert!(ports(&s1, &["a", "bb"]));
    assert!(ports(&s2, &["ccc"]));
    assert!(!ports(&s1, &["a", "bb"]));
    let listed = |ls: &str| lab.nbctl(0, &["lsp-list", ls]);
    assert!(listed("s1").contains("(a)") && listed("s1").contains("(bb)"));
    assert!(listed("s2").contains("(ccc)"));
    // Dropping a port takes it out of its switch and out of the table; s2's stays.
    assert!(ports(&s1, &["a"]));
    assert!(!listed("s1").contains("(bb)"));
    assert_eq!(
        lab.nbctl(
            0,
            &[
                "--bare",
                "--columns=name",
                "find",
                "Logical_Switch_Port",
                "name=bb"
            ]
        ),
        ""
    );
    assert!(listed("s2").contains("(ccc)"));
    assert!(listed("foreign").contains("(f1)"));
    // A port name a foreign switch's port holds is refused.
    let p = Parent {
        table: "Logical_Switch",
        uuid: &s1,
        column: "ports",
    };
    let clash = vec![Wanted {
        name: "f1".into(),
        columns: Row::new(),
        external_ids: Vec::new(),
    }];
    let err = converge(&c, "Logical_Switch_Port", "host-a", &clash, Some(&p)).unwrap_err();
    assert!(matches!(err, OwnedError::Foreign { .. }), "{err}");
}
