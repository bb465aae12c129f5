//! kvmnet's rows in an OVSDB database: how they are marked, and how a table is made to
//! hold exactly the rows wanted, whoever else writes to it.
//!
//! - **Marked.** Every row kvmnet makes carries `external_ids:kvmnet-owner=OWNER` in the
//!   transaction that inserts it. A row without the mark is never updated or deleted, and a
//!   wanted row whose name a foreign row already has is refused ([`OwnedError::Foreign`]):
//!   two switches of one name would make `ovn-nbctl` and operators guess.
//! - **Converged, not duplicated.** Two hosts may apply the same spec at once. Each
//!   transaction starts with a `wait` (RFC 7047 5.2.6, timeout 0) that the table's marked
//!   rows are exactly the ones the replica showed when the transaction was made; if another
//!   writer changed them in between, the server refuses the whole transaction, the replica
//!   catches up, and the changes are worked out again. So two appliers never both insert a
//!   row, and a duplicate left by anything else is removed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ovsdb::{Atom, Client, ColumnKind, Datum, OvsdbError, Replica, Row};

/// The `external_ids` key of kvmnet's mark.
pub const OWNER_KEY: &str = "kvmnet-owner";

#[derive(Debug, thiserror::Error)]
pub enum OwnedError {
    #[error(
        "{table} {name:?} exists and is not kvmnet's (no external_ids:{OWNER_KEY}): rename one, or remove the other by hand"
    )]
    Foreign { table: String, name: String },
    #[error("{table}: other writers kept changing kvmnet's rows; gave up after {tries} tries")]
    Contended { table: String, tries: u32 },
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
}

/// A row kvmnet wants, by its `name` column (the mark is added).
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub name: String,
    /// Columns to set, `name` and `external_ids` aside.
    pub columns: Row,
    /// `external_ids` besides the mark.
    pub external_ids: Vec<(String, String)>,
}

fn name_of(row: &Row) -> Option<&str> {
    row.get("name")
        .and_then(Datum::single)
        .and_then(Atom::as_str)
}

fn owner_of(row: &Row) -> Option<&str> {
    row.get("external_ids").and_then(|d| d.get(OWNER_KEY))
}

impl Wanted {
    fn full_row(&self, owner: &str) -> Row {
        let mut row = self.columns.clone();
        row.insert("name".into(), Datum::atom(Atom::str(self.name.clone())));
        let mut ids: Vec<(String, String)> = self.external_ids.clone();
        ids.push((OWNER_KEY.into(), owner.into()));
        row.insert("external_ids".into(), Datum::map(ids));
        row
    }
}

/// Whether a stored value (absent: the column's default) equals the wanted one.
fn same(kind: ColumnKind, stored: Option<&Datum>, want: &Datum) -> bool {
    match stored {
        Some(s) => s == want,
        None => match (kind, want) {
            (ColumnKind::Set, Datum::Set(s)) => s.is_empty(),
            (ColumnKind::Map, Datum::Map(m)) => m.is_empty(),
            (_, d) => d.single().is_some_and(|a| match a {
                Atom::Integer(i) => *i == 0,
                Atom::Real(r) => *r == 0.0,
                Atom::Boolean(b) => !b,
                Atom::String(s) => s.is_empty(),
                Atom::Uuid(_) | Atom::NamedUuid(_) => false,
            }),
        },
    }
}

fn row_json(row: &Row) -> Value {
    Value::Object(row.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

fn by_uuid(uuid: &str) -> Value {
    json!([["_uuid", "==", ["uuid", uuid]]])
}

/// The row whose reference column holds the rows being converged (a switch's `ports`, a
/// bridge's `ports`): rows are inserted into it and taken out of it, and only the rows it
/// holds count as the ones to converge.
#[derive(Clone, Copy, Debug)]
pub struct Parent<'a> {
    pub table: &'a str,
    pub uuid: &'a str,
    pub column: &'a str,
}

impl Parent<'_> {
    fn holds(&self, replica: &Replica, uuid: &str) -> bool {
        replica
            .row(self.table, self.uuid)
            .and_then(|r| r.get(self.column))
            .is_some_and(|d| d.atoms().any(|a| a.as_uuid() == Some(uuid)))
    }

    fn mutate(&self, how: &str, refs: Value) -> Value {
        json!({"op": "mutate", "table": self.table, "where": by_uuid(self.uuid),
            "mutations": [[self.column, how, ["set", [refs]]]]})
    }
}

/// The operations that make `table` hold exactly `wanted` among the rows marked with
/// `owner` (under `parent`, when given), starting with the `wait` on the table's marked rows
/// the replica shows. Only the `wait` when nothing differs.
pub fn converge_ops(
    replica: &Replica,
    table: &str,
    owner: &str,
    wanted: &[Wanted],
    parent: Option<&Parent>,
) -> Result<Vec<Value>, OwnedError> {
    let mut marked: Vec<(&String, &Row)> = replica
        .table(table)
        .filter(|(_, r)| owner_of(r) == Some(owner))
        .collect();
    marked.sort_by(|a, b| a.0.cmp(b.0));
    let seen: Vec<Value> = marked
        .iter()
        .map(|(u, _)| json!({"_uuid": ["uuid", u]}))
        .collect();
    let ours: Vec<(&String, &Row)> = marked
        .into_iter()
        .filter(|(u, _)| parent.is_none_or(|p| p.holds(replica, u)))
        .collect();
    let mut ops = vec![json!({"op": "wait", "timeout": 0, "table": table,
        "where": [["external_ids", "includes", ["map", [[OWNER_KEY, owner]]]]],
        "columns": ["_uuid"], "until": "==", "rows": seen})];
    let remove = |ops: &mut Vec<Value>, uuid: &str| {
        if let Some(p) = parent {
            ops.push(p.mutate("delete", json!(["uuid", uuid])));
        }
        ops.push(json!({"op": "delete", "table": table, "where": by_uuid(uuid)}));
    };
    for (i, w) in wanted.iter().enumerate() {
        let mut mine = ours
            .iter()
            .filter(|(_, r)| name_of(r) == Some(w.name.as_str()));
        let want = w.full_row(owner);
        match mine.next() {
            Some((uuid, row)) => {
                let changed: Row = want
                    .iter()
                    .filter(|(c, d)| !same(replica.kind(table, c), row.get(*c), d))
                    .map(|(c, d)| (c.clone(), d.clone()))
                    .collect();
                if !changed.is_empty() {
                    ops.push(
                        json!({"op": "update", "table": table, "where": by_uuid(uuid),
                        "row": row_json(&changed)}),
                    );
                }
            }
            None => {
                if replica
                    .table(table)
                    .any(|(_, r)| name_of(r) == Some(w.name.as_str()))
                {
                    return Err(OwnedError::Foreign {
                        table: table.to_string(),
                        name: w.name.clone(),
                    });
                }
                let named = format!("row{i}");
                ops.push(
                    json!({"op": "insert", "table": table, "row": row_json(&want),
                    "uuid-name": named}),
                );
                if let Some(p) = parent {
                    ops.push(p.mutate("insert", json!(["named-uuid", named])));
                }
            }
        }
        // Duplicates (of an earlier writer that did not wait): the first by UUID stays.
        for (uuid, _) in mine {
            remove(&mut ops, uuid);
        }
    }
    for (uuid, row) in &ours {
        let name = name_of(row).unwrap_or_default();
        if !wanted.iter().any(|w| w.name == name) {
            remove(&mut ops, uuid);
        }
    }
    Ok(ops)
}

/// Makes `table` hold exactly `wanted` among `owner`'s rows, under `parent` when given (see
/// the module's comment); whether anything had to change. The client must monitor `table`
/// (and the parent's table).
pub fn converge(
    client: &Client,
    table: &str,
    owner: &str,
    wanted: &[Wanted],
    parent: Option<&Parent>,
) -> Result<bool, OwnedError> {
    const TRIES: u32 = 20;
    let mut changed = false;
    for _ in 0..TRIES {
        let (ops, generation) = {
            let r = client.replica();
            (
                converge_ops(&r, table, owner, wanted, parent)?,
                r.generation,
            )
        };
        if ops.len() == 1 {
            return Ok(changed);
        }
        match client.transact(ops) {
            // Check again once the replica shows this transaction: what another writer did
            // meanwhile may need more.
            Ok(_) => changed = true,
            Err(OvsdbError::Txn { index: 0, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        client.wait_until(deadline - Instant::now(), |r| r.generation != generation);
    }
    Err(OwnedError::Contended {
        table: table.to_string(),
        tries: TRIES,
    })
}
