//! The monitored view of a database: the rows of the tables a client monitors, kept current
//! by `monitor_cond_since`'s initial contents and its `update3` notifications.
//!
//! Why keep one: planning against NB must not re-read 10,000 rows for every apply (the
//! add-one-port cost would grow with the database), and after a reconnect the server sends
//! only what changed since the last transaction the replica has seen.

use std::collections::BTreeMap;

use serde_json::Value;

use super::OvsdbError;
use super::datum::{Atom, ColumnKind, Datum};

/// A row: column name to value. Columns at their default value may be absent (the server
/// omits them from initial and insert updates).
pub type Row = BTreeMap<String, Datum>;

/// The server's id for "no transaction": what a first `monitor_cond_since` asks from.
pub const ZERO_TXN: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Clone, Debug, Default)]
pub struct Replica {
    /// Table name -> row UUID -> row.
    pub tables: BTreeMap<String, BTreeMap<String, Row>>,
    /// The last transaction the replica includes (`ZERO_TXN` before the first).
    pub last_txn: String,
    /// Column kinds of the monitored tables, from the schema: how a `modify` applies.
    kinds: BTreeMap<String, BTreeMap<String, ColumnKind>>,
    /// The default atom of each scalar column, by table: a monitor leaves a column at its
    /// default out of the rows it sends.
    defaults: BTreeMap<String, BTreeMap<String, Atom>>,
    /// Incremented on every change: waiters compare it.
    pub generation: u64,
    /// The rows changed since [`Replica::take_touched`] last ran, once [`Replica::track`]
    /// asked for them: what a view built on the replica has to look at again.
    touched: Option<Touched>,
}

/// Rows changed since a view of the replica was last brought up to date.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Everything may have changed (the replica was cleared, or nothing was taken yet):
    /// build the view again.
    pub all: bool,
    /// (table, UUID) of each row inserted, modified or deleted, with the differences
    /// (column, difference) it was modified by, in order, when it was only modified (and
    /// not too often): a view can then change what it holds of the row by the members that
    /// came and went, where reading a port group of 2,500 again took a millisecond. `None`
    /// for a row inserted or deleted meanwhile.
    pub rows: BTreeMap<(String, String), Option<Diffs>>,
}

/// A row's modifications: each (column, difference), in order.
pub type Diffs = Vec<(String, Datum)>;

/// Past this many differences kept for one row, the row counts as changed whole: a row an
/// operator's script edits in a loop does not hold every edit until the next plan.
const DIFFS_KEPT: usize = 16;

impl Touched {
    /// Records an update of `table`'s row `uuid`: `diff` for a modify, `None` otherwise.
    fn record(&mut self, table: &str, uuid: &str, diff: Option<&Row>) {
        let id = (table.to_string(), uuid.to_string());
        let kept = self.rows.entry(id).or_insert_with(|| Some(Vec::new()));
        match (kept.as_mut(), diff) {
            (Some(v), Some(d)) if v.len() + d.len() <= DIFFS_KEPT => {
                v.extend(d.iter().map(|(c, d)| (c.clone(), d.clone())));
            }
            _ => *kept = None,
        }
    }
}

impl Replica {
    /// An empty replica for the tables of `schema` (a `get_schema` result) named in `tables`.
    pub fn new(schema: &Value, tables: &[&str]) -> Result<Replica, OvsdbError> {
        let mut kinds = BTreeMap::new();
        let mut defaults = BTreeMap::new();
        for t in tables {
            let cols = schema["tables"][*t]["columns"]
                .as_object()
                .ok_or_else(|| OvsdbError::Schema(format!("no table {t} in the schema")))?;
            let k = cols
                .iter()
                .map(|(name, c)| (name.clone(), ColumnKind::of_type(&c["type"])))
                .collect();
            kinds.insert(t.to_string(), k);
            let d = cols
                .iter()
                .filter(|(_, c)| ColumnKind::of_type(&c["type"]) == ColumnKind::Scalar)
                .filter_map(|(name, c)| Some((name.clone(), scalar_default(&c["type"])?)))
                .collect();
            defaults.insert(t.to_string(), d);
        }
        Ok(Replica {
            tables: tables
                .iter()
                .map(|t| (t.to_string(), BTreeMap::new()))
                .collect(),
            last_txn: ZERO_TXN.to_string(),
            kinds,
            defaults,
            generation: 0,
            touched: None,
        })
    }

    /// Starts keeping the rows that change, for one view built on the replica (the first
    /// [`Replica::take_touched`] says: everything).
    pub fn track(&mut self) {
        self.touched = Some(Touched {
            all: true,
            ..Default::default()
        });
    }

    /// The rows changed since the last call (everything, when not tracked).
    pub fn take_touched(&mut self) -> Touched {
        match &mut self.touched {
            Some(t) => std::mem::take(t),
            None => Touched {
                all: true,
                ..Default::default()
            },
        }
    }

    pub fn table(&self, name: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(name).into_iter().flat_map(|t| t.iter())
    }

    /// How a column's values compare and change: by its type in the schema (a column the
    /// schema does not have counts as a scalar).
    pub fn kind(&self, table: &str, column: &str) -> ColumnKind {
        self.kinds
            .get(table)
            .and_then(|k| k.get(column))
            .copied()
            .unwrap_or(ColumnKind::Scalar)
    }

    /// A scalar column's value when a row leaves it out: its type's default (RFC 7047
    /// section 5.2.1: "", 0, false).
    pub fn default_of(&self, table: &str, column: &str) -> Option<&Atom> {
        self.defaults.get(table)?.get(column)
    }

    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    /// Forgets every row: the server could not send a delta and sends everything again.
    pub fn clear(&mut self) {
        for rows in self.tables.values_mut() {
            rows.clear();
        }
        if let Some(t) = &mut self.touched {
            t.all = true;
            t.rows.clear();
        }
        self.generation += 1;
    }

    /// Applies a `<table-updates2>` object (ovsdb-server(7) 4.1.14).
    pub fn apply(&mut self, updates: &Value, last_txn: Option<&str>) -> Result<(), OvsdbError> {
        let bad = |what: &str| OvsdbError::Protocol(format!("table-updates2: {what}"));
        let updates = updates.as_object().ok_or_else(|| bad("not an object"))?;
        for (table, rows) in updates {
            let rows = rows.as_object().ok_or_else(|| bad("rows not an object"))?;
            let kinds = self.kinds.get(table).cloned().unwrap_or_default();
            let stored = self.tables.entry(table.clone()).or_default();
            for (uuid, update) in rows {
                let (op, body) = update
                    .as_object()
                    .and_then(|o| o.iter().next())
                    .ok_or_else(|| bad("empty row update"))?;
                let touched = self.touched.as_mut().filter(|t| !t.all);
                match op.as_str() {
                    "initial" | "insert" => {
                        stored.insert(uuid.clone(), read_row(body).ok_or_else(|| bad("row"))?);
                        if let Some(t) = touched {
                            t.record(table, uuid, None);
                        }
                    }
                    "modify" => {
                        let diff = read_row(body).ok_or_else(|| bad("row"))?;
                        if let Some(t) = touched {
                            t.record(table, uuid, Some(&diff));
                        }
                        let row = stored.entry(uuid.clone()).or_default();
                        for (col, d) in diff {
                            let kind = kinds.get(&col).copied().unwrap_or(ColumnKind::Scalar);
                            match row.get_mut(&col) {
                                Some(old) => old.apply_diff(kind, d),
                                None => {
                                    // Absent means the default: the diff against an empty
                                    // set or map is the new value itself.
                                    row.insert(col, d);
                                }
                            }
                        }
                    }
                    "delete" => {
                        stored.remove(uuid);
                        if let Some(t) = touched {
                            t.record(table, uuid, None);
                        }
                    }
                    other => return Err(bad(&format!("unknown row update {other}"))),
                }
            }
        }
        if let Some(t) = last_txn {
            self.last_txn = t.to_string();
        }
        self.generation += 1;
        Ok(())
    }
}

fn read_row(v: &Value) -> Option<Row> {
    v.as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), Datum::from_json(v)?)))
        .collect()
}

/// The default atom of a scalar column's type, when it has one a row may leave out.
fn scalar_default(t: &Value) -> Option<Atom> {
    let base = match t {
        Value::String(s) => s.as_str(),
        Value::Object(o) => match &o["key"] {
            Value::String(s) => s.as_str(),
            k => k["type"].as_str()?,
        },
        _ => return None,
    };
    Some(match base {
        "string" => Atom::str(""),
        "integer" => Atom::Integer(0),
        "boolean" => Atom::Boolean(false),
        "real" => Atom::Real(0.0),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::ovsdb::datum::Atom;
    use serde_json::json;

    fn schema() -> Value {
        json!({"tables": {"T": {"columns": {
            "name": {"type": "string"},
            "ports": {"type": {"key": "uuid", "min": 0, "max": "unlimited"}},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
        }}}})
    }

    #[test]
    fn inserts_modifies_and_deletes() {
        let mut r = Replica::new(&schema(), &["T"]).unwrap();
        r.apply(
            &json!({"T": {"u1": {"initial": {"name": "a", "external_ids": ["map", [["k", "1"]]]}}}}),
            Some("t1"),
        )
        .unwrap();
        r.apply(
            &json!({"T": {"u1": {"modify": {"name": "b", "ports": ["uuid", "p1"], "external_ids": ["map", [["k", "1"], ["j", "2"]]]}}}}),
            Some("t2"),
        )
        .unwrap();
        let row = r.row("T", "u1").unwrap();
        assert_eq!(row["name"], Datum::atom(Atom::str("b")));
        assert_eq!(row["ports"], Datum::atom(Atom::Uuid("p1".into())));
        assert_eq!(row["external_ids"], Datum::map([("j", "2")]));
        assert_eq!(r.last_txn, "t2");
        r.apply(&json!({"T": {"u1": {"delete": null}}}), None)
            .unwrap();
        assert!(r.row("T", "u1").is_none());
        assert!(r.apply(&json!({"T": {"u1": {"frob": {}}}}), None).is_err());
        assert!(r.apply(&json!([1]), None).is_err());
        assert!(Replica::new(&schema(), &["Nope"]).is_err());
    }
}
