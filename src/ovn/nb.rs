//! kvmnet's rows in the Northbound database: read as the core's [`NbRow`]s, and a plan's
//! row changes written as one transaction.
//!
//! A process keeps one monitored connection per Northbound remote ([`with_client`]): a
//! daemon's reconcile reads its replica instead of the database, and a change of one row
//! at 10,000 costs what it costs at 10.
//!
//! **Two appliers at once.** A transaction starts with `wait`s that what it builds on is
//! as the replica shows it: no row of kvmnet's holds a key it inserts (or, inserting many
//! into a table, the table's kvmnet rows are exactly the ones shown), and the rows it
//! changes or deletes are there. In tables whose names the schema indexes, the server's
//! index does the first: a second row of one name breaks its constraint. When another host
//! changed them meanwhile, the server refuses the whole transaction; the replica catches up
//! and the changes are worked out again from what they are meant to leave (a row made,
//! changed to a value, or gone), so two hosts applying one spec end with one copy of each
//! row. Large sets (a port group's ports) change by mutation, member by member: two hosts
//! adding the same member add it once.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::nb_view::{Owned, key_of};
use super::ovsdb::{Atom, Client, Datum, OvsdbError, Remote, Replica};
use crate::plan::Change;
use kvmnet_core::ovn::{
    KEY_KEY, NbParent, NbRow, NbVal, OWNER, OWNER_KEY, TABLES, children_of, sorted_diff,
};

const DB: &str = "OVN_Northbound";
const TIMEOUT: Duration = Duration::from_secs(10);
const TRIES: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum NbError {
    #[error("OVN Northbound database {remote}: {source}")]
    Ovsdb {
        remote: String,
        #[source]
        source: OvsdbError,
    },
    #[error(
        "{table} {name:?} exists in the Northbound database and is not kvmnet's (no external_ids:{OWNER_KEY}): rename the network or port, or remove the other row"
    )]
    Foreign { table: String, name: String },
    #[error(
        "{table} {key} holds {child_table} {child:?}, which is not kvmnet's (no external_ids:{OWNER_KEY}): deleting it would delete that row too; remove that row (or take it off), then run this again"
    )]
    ForeignChild {
        table: String,
        key: String,
        child_table: String,
        child: String,
    },
    #[error(
        "{table} {key}: refers to {to}, which is neither in the database nor made by this change"
    )]
    Dangling {
        table: String,
        key: String,
        to: String,
    },
    #[error("other writers kept changing kvmnet's Northbound rows; gave up after {TRIES} tries")]
    Contended,
}

/// A monitored connection, and the view of kvmnet's rows kept from its replica.
struct Kept {
    client: Client,
    owned: Owned,
}

impl Kept {
    /// Runs `f` on the replica as it is now and kvmnet's rows in it, the view first
    /// brought up to date with what changed since it was last used.
    fn now<R>(&mut self, f: impl FnOnce(&Replica, &Owned) -> R) -> R {
        let mut r = self.client.replica();
        let touched = r.take_touched();
        self.owned.update(&r, touched);
        f(&r, &self.owned)
    }
}

static CLIENTS: Mutex<BTreeMap<String, Kept>> = Mutex::new(BTreeMap::new());

/// Runs `f` on the monitored connection to `remotes`, made (or made again, when the one
/// kept was lost) first.
fn with_client<R>(
    remotes: &str,
    f: impl FnOnce(&mut Kept) -> Result<R, NbError>,
) -> Result<R, NbError> {
    let err = |source| NbError::Ovsdb {
        remote: remotes.to_string(),
        source,
    };
    let mut clients = CLIENTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = clients.get_mut(remotes)
        && c.client.ensure_connected().is_err()
    {
        clients.remove(remotes);
    }
    if !clients.contains_key(remotes) {
        let list = Remote::parse_list(remotes).map_err(err)?;
        let mut c = Client::connect(&list, DB, TIMEOUT).map_err(err)?;
        let mut cols: Vec<(&str, Vec<&str>)> = Vec::new();
        for (t, c, children) in TABLES {
            let mut v: Vec<&str> = c.to_vec();
            v.extend(children.iter());
            v.push("external_ids");
            cols.push((t, v));
        }
        let tables: Vec<(&str, &[&str])> = cols.iter().map(|(t, c)| (*t, c.as_slice())).collect();
        c.monitor(&tables).map_err(err)?;
        c.replica().track();
        let owned = Owned::default();
        clients.insert(remotes.to_string(), Kept { client: c, owned });
    }
    let c = clients.get_mut(remotes).expect("connected above");
    let out = f(c);
    if let Err(NbError::Ovsdb { .. }) = &out {
        clients.remove(remotes);
    }
    out
}

/// kvmnet's rows as the database holds them.
pub fn observe(remotes: &str) -> Result<kvmnet_core::ovn::memo::RowMap, NbError> {
    with_client(remotes, |k| Ok(k.now(|_, owned| owned.by_id.clone())))
}

/// A core value that is one atom (not a set or a map), references resolved by `refer`.
fn to_atom(v: &NbVal, refer: &dyn Fn(&str, &str) -> Option<Atom>) -> Result<Atom, String> {
    Ok(match v {
        NbVal::Str(s) => Atom::String(s.clone()),
        NbVal::Int(i) => Atom::Integer(*i),
        NbVal::Bool(b) => Atom::Boolean(*b),
        NbVal::Uuid(u) => Atom::Uuid(u.clone()),
        NbVal::Ref { table, key } => refer(table, key).ok_or_else(|| format!("{table} {key}"))?,
        NbVal::Set(_) | NbVal::Map(_) | NbVal::IntMap(_) => {
            return Err("a nested value".into());
        }
    })
}

/// A core value as an OVSDB datum, references resolved by `refer`.
fn to_datum(v: &NbVal, refer: &dyn Fn(&str, &str) -> Option<Atom>) -> Result<Datum, String> {
    let atom = |v: &NbVal| to_atom(v, refer);
    Ok(match v {
        NbVal::Set(items) => Datum::Set(items.iter().map(atom).collect::<Result<_, _>>()?),
        NbVal::Map(m) => Datum::map(m.clone()),
        NbVal::IntMap(m) => Datum::Map(
            m.iter()
                .map(|(k, v)| (Atom::str(k.clone()), Atom::Integer(*v)))
                .collect(),
        ),
        other => Datum::atom(atom(other)?),
    })
}

/// Sets sharing more than this many members change by mutation, not by being written whole.
const MUTATE_PAST: usize = 16;

/// A large set column's change as `mutate` mutations: the members it loses and gains. A
/// port joining a firewall's port group of 2,500 ports is one member inserted, where
/// writing the column whole had the server read, compare and store all 2,501 (3-4 ms at
/// 10,000 ports, against 0.05 ms). `None` when the change is better written whole: a small
/// set, or a member that cannot be named.
fn set_mutations(
    column: &str,
    before: Option<&NbVal>,
    after: &NbVal,
    owned: &Owned,
    refer: &dyn Fn(&str, &str) -> Option<Atom>,
) -> Result<Option<Vec<Value>>, String> {
    let (Some(NbVal::Set(was)), NbVal::Set(now)) = (before, after) else {
        return Ok(None);
    };
    let (shared, leaving, joining) = sorted_diff(was, now);
    if shared <= MUTATE_PAST {
        return Ok(None);
    }
    let mut gone = Vec::new();
    for v in leaving {
        // A member leaving is named as the server has it, also when its row goes in the
        // same transaction (`refer` has no name for that one).
        let atom = match v {
            NbVal::Ref { table, key } => {
                match owned.uuids.get(&(table.to_string(), key.to_string())) {
                    Some(u) => Atom::Uuid(u.clone()),
                    None => return Ok(None),
                }
            }
            other => to_atom(other, refer)?,
        };
        gone.push(uuid_ref(&atom));
    }
    let mut new = Vec::new();
    for v in joining {
        new.push(uuid_ref(&to_atom(v, refer)?));
    }
    let mut out = Vec::new();
    if !gone.is_empty() {
        out.push(json!([column, "delete", ["set", gone]]));
    }
    if !new.is_empty() {
        out.push(json!([column, "insert", ["set", new]]));
    }
    Ok(Some(out))
}

fn by_uuid(u: &str) -> Value {
    json!([["_uuid", "==", ["uuid", u]]])
}

fn uuid_ref(a: &Atom) -> Value {
    match a {
        Atom::NamedUuid(n) => json!(["named-uuid", n]),
        Atom::Uuid(u) => json!(["uuid", u]),
        other => other.to_json(),
    }
}

/// Carries out a plan's row changes as one transaction (see the module's comment); `abort`
/// ends it with an `abort` operation, which the server answers by refusing all of it (a
/// test's injected failure).
pub fn execute(remotes: &str, changes: &[&Change<NbRow>], abort: bool) -> Result<(), NbError> {
    with_client(remotes, |k| {
        for _ in 0..TRIES {
            let (ops, generation) =
                k.now(|r, owned| Ok((ops_for(r, owned, changes)?, r.generation)))?;
            let c = &k.client;
            let Some(mut ops) = ops else { return Ok(()) };
            if abort {
                // A test's injected failure (`KVMNET_FAIL_AFTER`): the server undoes the
                // operations before it and answers "aborted".
                ops.push(json!({"op": "abort"}));
            }
            match c.transact(ops) {
                Ok(_) => {
                    // The replica shows the change before the next plan reads it.
                    c.wait_until(Duration::from_secs(5), |r| r.generation != generation);
                    return Ok(());
                }
                // A `wait` failed: another writer changed kvmnet's rows meanwhile.
                Err(OvsdbError::Txn { error, .. }) if error == "timed out" => {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    c.wait_until(deadline - Instant::now(), |r| r.generation != generation);
                }
                // A name taken meanwhile (see `NAME_INDEXED`): worked out again once the
                // replica shows the row. When it shows nothing new, the name was taken
                // before, by nothing the replica follows: the server's error is the answer.
                Err(OvsdbError::Txn { error, .. })
                    if error == "constraint violation"
                        && c.wait_until(Duration::from_secs(2), |r| r.generation != generation) => {
                }
                Err(source) => {
                    return Err(NbError::Ovsdb {
                        remote: remotes.to_string(),
                        source,
                    });
                }
            }
        }
        Err(NbError::Contended)
    })
}

/// Refuses an insert whose name a row kvmnet does not own has already (the view keeps
/// those names: see `Owned::foreign`).
fn refuse_foreign(owned: &Owned, inserts: &[&NbRow]) -> Result<(), NbError> {
    for w in inserts {
        let Some(name) = w.name() else { continue };
        if owned.foreign_named(&w.table, name) {
            return Err(NbError::Foreign {
                table: w.table.clone(),
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

/// Refuses to delete a row of kvmnet's that holds a row kvmnet did not make: a switch
/// another's port was added to, a router another's route or NAT was. Its children are
/// deleted with it (they are not root rows), so the delete would take the other row too.
fn refuse_foreign_children(r: &Replica, owned: &Owned, deletes: &[&NbRow]) -> Result<(), NbError> {
    for h in deletes {
        let Some(row) = owned
            .uuids
            .get(&(h.table.clone(), h.key.clone()))
            .and_then(|u| r.row(&h.table, u))
        else {
            continue;
        };
        for column in children_of(&h.table) {
            let Some(child_table) = kvmnet_core::ovn::ref_table(&h.table, column) else {
                continue;
            };
            let children = row.get(*column).into_iter().flat_map(Datum::atoms);
            for u in children.filter_map(Atom::as_uuid) {
                let Some(child) = r.row(child_table, u).filter(|c| key_of(c).is_none()) else {
                    continue;
                };
                let name = child.get("name").and_then(Datum::single);
                return Err(NbError::ForeignChild {
                    table: h.table.clone(),
                    key: h.key.clone(),
                    child_table: child_table.to_string(),
                    child: name.and_then(Atom::as_str).unwrap_or(u).to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The operations that leave kvmnet's rows as `changes` mean them to be, from what the
/// replica shows; `None` when it shows that already.
fn ops_for(
    r: &Replica,
    owned: &Owned,
    changes: &[&Change<NbRow>],
) -> Result<Option<Vec<Value>>, NbError> {
    // What the rows are to be: each change's result, over what is there.
    let mut target: BTreeMap<(String, String), Option<&NbRow>> = BTreeMap::new();
    for ch in changes {
        let (row, keep) = match ch {
            Change::Create(x) | Change::Update { to: x, .. } => (x, true),
            Change::Delete(x) => (x, false),
        };
        target.insert((row.table.clone(), row.key.clone()), keep.then_some(row));
    }
    let mut inserts: Vec<&NbRow> = Vec::new();
    let mut updates: Vec<(&NbRow, &NbRow)> = Vec::new();
    let mut deletes: Vec<&NbRow> = Vec::new();
    for ((t, k), want) in &target {
        match (owned.row(t, k), want) {
            (None, Some(w)) => inserts.push(w),
            (Some(h), Some(w)) if h != *w => updates.push((h, w)),
            (Some(h), None) => deletes.push(h),
            _ => {}
        }
    }
    if inserts.is_empty() && updates.is_empty() && deletes.is_empty() {
        return Ok(None);
    }
    refuse_foreign(owned, &inserts)?;
    refuse_foreign_children(r, owned, &deletes)?;
    let named: BTreeMap<(String, String), String> = inserts
        .iter()
        .enumerate()
        .map(|(i, w)| ((w.table.clone(), w.key.clone()), format!("row{i}")))
        .collect();
    let refer = |t: &str, k: &str| -> Option<Atom> {
        let id = (t.to_string(), k.to_string());
        if let Some(n) = named.get(&id) {
            return Some(Atom::NamedUuid(n.clone()));
        }
        let gone = matches!(target.get(&id), Some(None));
        owned
            .uuids
            .get(&id)
            .filter(|_| !gone)
            .map(|u| Atom::Uuid(u.clone()))
    };
    let mut ops = waits(owned, &inserts, &updates, &deletes);
    let dangling = |row: &NbRow, to: String| NbError::Dangling {
        table: row.table.clone(),
        key: row.key.clone(),
        to,
    };
    for (i, w) in inserts.iter().enumerate() {
        let mut row = serde_json::Map::new();
        for (c, v) in &w.columns {
            row.insert(
                c.clone(),
                to_datum(v, &refer).map_err(|to| dangling(w, to))?.to_json(),
            );
        }
        row.insert(
            "external_ids".into(),
            Datum::map([(OWNER_KEY, OWNER), (KEY_KEY, w.key.as_str())]).to_json(),
        );
        ops.push(
            json!({"op": "insert", "table": w.table, "row": row, "uuid-name": format!("row{i}")}),
        );
    }
    update_ops(owned, &refer, &updates, &mut ops)?;
    links(owned, &refer, &inserts, &updates, &deletes, &mut ops)?;
    for h in &deletes {
        let uuid = &owned.uuids[&(h.table.clone(), h.key.clone())];
        ops.push(json!({"op": "delete", "table": h.table, "where": by_uuid(uuid)}));
    }
    Ok(Some(ops))
}

/// The changed rows' operations: an `update` of the columns that differ, and a `mutate` of
/// the large sets among them (see [`set_mutations`]).
fn update_ops(
    owned: &Owned,
    refer: &dyn Fn(&str, &str) -> Option<Atom>,
    updates: &[(&NbRow, &NbRow)],
    ops: &mut Vec<Value>,
) -> Result<(), NbError> {
    let dangling = |row: &NbRow, to: String| NbError::Dangling {
        table: row.table.clone(),
        key: row.key.clone(),
        to,
    };
    for (h, w) in updates {
        let uuid = &owned.uuids[&(w.table.clone(), w.key.clone())];
        let mut row = serde_json::Map::new();
        let mut mutations = Vec::new();
        for (c, v) in &w.columns {
            let before = h.columns.get(c);
            if before == Some(v) {
                continue;
            }
            match set_mutations(c, before, v, owned, refer).map_err(|to| dangling(w, to))? {
                Some(m) => mutations.extend(m),
                None => {
                    row.insert(
                        c.clone(),
                        to_datum(v, refer).map_err(|to| dangling(w, to))?.to_json(),
                    );
                }
            }
        }
        if !row.is_empty() {
            ops.push(json!({"op": "update", "table": w.table, "where": by_uuid(uuid), "row": row}));
        }
        if !mutations.is_empty() {
            ops.push(json!({"op": "mutate", "table": w.table, "where": by_uuid(uuid), "mutations": mutations}));
        }
    }
    Ok(())
}

/// The tables whose `name` the Northbound schema indexes: the server itself refuses a
/// second row of one name, so a new key needs no `wait` there (which the server answers by
/// scanning the table: 1 ms a key at 10,000 ports). kvmnet names these rows from their
/// keys, so another writer's copy of a row is a constraint violation, worked out again like
/// a failed `wait`.
const NAME_INDEXED: &[&str] = &[
    "Logical_Switch_Port",
    "Logical_Router_Port",
    "Port_Group",
    "Address_Set",
    "Meter",
    "HA_Chassis_Group",
];

/// Past this many inserts into one table, a transaction waits on the table's whole set of
/// kvmnet rows instead of on each new key (a first apply of 10,000 ports: one wait, not
/// 10,000 scans of the table).
const KEY_WAITS: usize = 32;

/// What the transaction builds on, as `wait`s that fail it when another writer changed it
/// meanwhile, for the tables it changes only: a new row's key is nobody's yet (or, for
/// many, the table's kvmnet rows are the ones the replica shows), and each row it changes
/// or deletes is still there. So adding one port at 10,000 sends a few waits, not the
/// 10,000 UUIDs of every table.
fn waits(
    owned: &Owned,
    inserts: &[&NbRow],
    updates: &[(&NbRow, &NbRow)],
    deletes: &[&NbRow],
) -> Vec<Value> {
    let mut ops = Vec::new();
    let mut new_keys: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for w in inserts {
        new_keys.entry(w.table.as_str()).or_default().push(&w.key);
    }
    for (t, keys) in new_keys {
        if keys.len() > KEY_WAITS {
            let rows: Vec<Value> = owned
                .by_table
                .get(t)
                .into_iter()
                .flatten()
                .map(|u| json!({"_uuid": ["uuid", u]}))
                .collect();
            ops.push(json!({"op": "wait", "timeout": 0, "table": t,
                "where": [["external_ids", "includes", ["map", [[OWNER_KEY, OWNER]]]]],
                "columns": ["_uuid"], "until": "==", "rows": rows}));
            continue;
        }
        if NAME_INDEXED.contains(&t) {
            continue;
        }
        for k in keys {
            ops.push(json!({"op": "wait", "timeout": 0, "table": t,
                "where": [["external_ids", "includes", ["map", [[OWNER_KEY, OWNER], [KEY_KEY, k]]]]],
                "columns": ["_uuid"], "until": "==", "rows": []}));
        }
    }
    let there = updates
        .iter()
        .map(|(h, _)| *h)
        .chain(deletes.iter().copied());
    for h in there {
        if let Some(u) = owned.uuids.get(&(h.table.clone(), h.key.clone())) {
            ops.push(json!({"op": "wait", "timeout": 0, "table": h.table,
                "where": by_uuid(u), "columns": ["_uuid"], "until": "==",
                "rows": [{"_uuid": ["uuid", u]}]}));
        }
    }
    ops
}

/// Children joined to their parents and taken off them, by mutation: a parent's other
/// children (another's ports on kvmnet's switch) stay.
fn links(
    owned: &Owned,
    refer: &dyn Fn(&str, &str) -> Option<Atom>,
    inserts: &[&NbRow],
    updates: &[(&NbRow, &NbRow)],
    deletes: &[&NbRow],
    ops: &mut Vec<Value>,
) -> Result<(), NbError> {
    let mut join: Vec<(&NbParent, &NbRow)> = Vec::new();
    let mut leave: Vec<(&NbParent, &NbRow)> = Vec::new();
    for w in inserts {
        if let Some(p) = &w.parent {
            join.push((p, w));
        }
    }
    for (h, w) in updates {
        if h.parent != w.parent {
            if let Some(p) = &h.parent {
                leave.push((p, h));
            }
            if let Some(p) = &w.parent {
                join.push((p, w));
            }
        }
    }
    for h in deletes {
        if let Some(p) = &h.parent {
            leave.push((p, h));
        }
    }
    // One mutation per parent column and direction, holding every child: thousands of
    // ports joining one switch are one set union in the server, not one each.
    type Grouped = BTreeMap<(String, String, String), (Value, Vec<Value>)>;
    let group = |pairs: Vec<(&NbParent, &NbRow)>| -> Result<Grouped, NbError> {
        let mut g: Grouped = BTreeMap::new();
        for (p, child) in pairs {
            debug_assert!(children_of(&p.table).contains(&p.column.as_str()));
            let Some(parent) = refer(&p.table, &p.key) else {
                // The parent goes too: its children go with it.
                continue;
            };
            let me = refer(&child.table, &child.key).or_else(|| {
                owned
                    .uuids
                    .get(&(child.table.clone(), child.key.clone()))
                    .map(|u| Atom::Uuid(u.clone()))
            });
            let me = me.ok_or_else(|| NbError::Dangling {
                table: child.table.clone(),
                key: child.key.clone(),
                to: format!("{} {}", p.table, p.key),
            })?;
            let target = match &parent {
                Atom::NamedUuid(n) => json!([["_uuid", "==", ["named-uuid", n]]]),
                other => json!([["_uuid", "==", uuid_ref(other)]]),
            };
            g.entry((p.table.clone(), p.key.clone(), p.column.clone()))
                .or_insert_with(|| (target, Vec::new()))
                .1
                .push(uuid_ref(&me));
        }
        Ok(g)
    };
    for (pairs, how) in [(leave, "delete"), (join, "insert")] {
        for ((table, _, column), (target, refs)) in group(pairs)? {
            ops.push(json!({"op": "mutate", "table": table, "where": target,
                "mutations": [[column, how, ["set", refs]]]}));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsp(key: &str) -> NbVal {
        NbVal::reference("Logical_Switch_Port", key)
    }

    fn ports(keys: impl IntoIterator<Item = String>) -> NbVal {
        NbVal::set(keys.into_iter().map(|k| lsp(&k)))
    }

    /// A large set's change is the members it loses (by their UUIDs, also when their rows
    /// go in the same transaction) and gains (new rows by their names in it); a small
    /// one's is written whole.
    #[test]
    fn a_large_set_changes_member_by_member() {
        let mut owned = Owned::default();
        for i in 0..20 {
            owned.uuids.insert(
                ("Logical_Switch_Port".into(), format!("p{i}")),
                format!("u{i}"),
            );
        }
        let refer = |t: &str, k: &str| -> Option<Atom> {
            match k {
                "new" => Some(Atom::NamedUuid("row0".into())),
                "p3" => None,
                _ => owned
                    .uuids
                    .get(&(t.to_string(), k.to_string()))
                    .cloned()
                    .map(Atom::Uuid),
            }
        };
        let was = ports((0..20).map(|i| format!("p{i}")));
        let now = ports(
            (0..20)
                .filter(|i| *i != 3)
                .map(|i| format!("p{i}"))
                .chain(["new".into()]),
        );
        let m = set_mutations("ports", Some(&was), &now, &owned, &refer)
            .unwrap()
            .expect("mutations");
        assert_eq!(
            Value::Array(m),
            json!([
                ["ports", "delete", ["set", [["uuid", "u3"]]]],
                ["ports", "insert", ["set", [["named-uuid", "row0"]]]]
            ])
        );
        let small = ports((0..5).map(|i| format!("p{i}")));
        let smaller = ports((0..4).map(|i| format!("p{i}")));
        assert!(
            set_mutations("ports", Some(&small), &smaller, &owned, &refer)
                .unwrap()
                .is_none()
        );
        // Not a set before (a column written for the first time): written whole.
        assert!(
            set_mutations("ports", None, &now, &owned, &refer)
                .unwrap()
                .is_none()
        );
    }

    /// The walk gives what searching each member in the other set gives, for sets that
    /// overlap at the start, the end, the middle, not at all, and where one is empty.
    #[test]
    fn sorted_diff_is_the_members_searched() {
        let of = |r: std::ops::Range<u32>, skip: u32| -> Vec<NbVal> {
            let NbVal::Set(v) = ports(r.filter(|i| i % skip != 1).map(|i| format!("p{i:03}")))
            else {
                unreachable!()
            };
            v
        };
        let cases = [
            (of(0..50, 7), of(10..60, 5)),
            (of(0..30, 3), of(40..70, 3)),
            (of(0..30, 2), Vec::new()),
            (Vec::new(), of(5..9, 9)),
            (of(0..100, 11), of(0..100, 13)),
        ];
        for (was, now) in &cases {
            let (shared, gone, new) = sorted_diff(was, now);
            let searched = |a: &[NbVal], b: &[NbVal], found: bool| -> Vec<NbVal> {
                a.iter()
                    .filter(|v| b.binary_search(v).is_ok() == found)
                    .cloned()
                    .collect()
            };
            assert_eq!(shared, searched(was, now, true).len());
            assert_eq!(
                gone.into_iter().cloned().collect::<Vec<_>>(),
                searched(was, now, false)
            );
            assert_eq!(
                new.into_iter().cloned().collect::<Vec<_>>(),
                searched(now, was, false)
            );
        }
    }
}
