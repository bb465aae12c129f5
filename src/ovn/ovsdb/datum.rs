//! OVSDB values (RFC 7047 section 5.1) as plain Rust values, and the column kinds that
//! decide how a monitor's `modify` diff applies to them.
//!
//! Every column value is held as a [`Datum`]: a set of atoms or a map. A scalar column is a
//! set of one, which is also how the wire may write a one-element set (a bare atom), so
//! reading never needs the schema; applying a diff does (see [`ColumnKind`]).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

/// One OVSDB atom.
#[derive(Clone, Debug)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    /// A row's UUID (`["uuid", "..."]`).
    Uuid(String),
    /// A row inserted earlier in the same transaction (`["named-uuid", "name"]`).
    NamedUuid(String),
}

impl Atom {
    pub fn str(s: impl Into<String>) -> Atom {
        Atom::String(s.into())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Atom::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<&str> {
        match self {
            Atom::Uuid(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Atom::Integer(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Atom::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Atom::Integer(_) => 0,
            Atom::Real(_) => 1,
            Atom::Boolean(_) => 2,
            Atom::String(_) => 3,
            Atom::Uuid(_) => 4,
            Atom::NamedUuid(_) => 5,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    /// Reads an atom; `None` when the value is not one (a set, a map, an object...).
    pub fn from_json(v: &Value) -> Option<Atom> {
        match v {
            Value::Bool(b) => Some(Atom::Boolean(*b)),
            Value::String(s) => Some(Atom::String(s.clone())),
            Value::Number(n) => n
                .as_i64()
                .map(Atom::Integer)
                .or_else(|| n.as_f64().map(Atom::Real)),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some("uuid"), Some(u)) => Some(Atom::Uuid(u.to_string())),
                (Some("named-uuid"), Some(n)) => Some(Atom::NamedUuid(n.to_string())),
                _ => None,
            },
            _ => None,
        }
    }
}

// Reals are ordered by `total_cmp` so that atoms can live in sets and map keys; OVSDB itself
// never puts NaN in a database.
impl Ord for Atom {
    fn cmp(&self, other: &Atom) -> Ordering {
        match (self, other) {
            (Atom::Integer(a), Atom::Integer(b)) => a.cmp(b),
            (Atom::Real(a), Atom::Real(b)) => a.total_cmp(b),
            (Atom::Boolean(a), Atom::Boolean(b)) => a.cmp(b),
            (Atom::String(a), Atom::String(b))
            | (Atom::Uuid(a), Atom::Uuid(b))
            | (Atom::NamedUuid(a), Atom::NamedUuid(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Atom {
    fn partial_cmp(&self, other: &Atom) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Atom {
    fn eq(&self, other: &Atom) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Atom {}

/// A column's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    /// Also a scalar column's value: a set of one.
    Set(BTreeSet<Atom>),
    Map(BTreeMap<Atom, Atom>),
}

impl Datum {
    pub fn atom(a: Atom) -> Datum {
        Datum::Set(BTreeSet::from([a]))
    }

    pub fn empty_set() -> Datum {
        Datum::Set(BTreeSet::new())
    }

    pub fn set(atoms: impl IntoIterator<Item = Atom>) -> Datum {
        Datum::Set(atoms.into_iter().collect())
    }

    pub fn map<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Datum {
        Datum::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (Atom::String(k.into()), Atom::String(v.into())))
                .collect(),
        )
    }

    /// The one atom of a scalar (or a one-element set).
    pub fn single(&self) -> Option<&Atom> {
        match self {
            Datum::Set(s) if s.len() == 1 => s.iter().next(),
            _ => None,
        }
    }

    pub fn atoms(&self) -> impl Iterator<Item = &Atom> {
        let v: Vec<&Atom> = match self {
            Datum::Set(s) => s.iter().collect(),
            Datum::Map(_) => Vec::new(),
        };
        v.into_iter()
    }

    /// A string-to-string map's value for `key` (`external_ids`, `options`...).
    pub fn get(&self, key: &str) -> Option<&str> {
        match self {
            Datum::Map(m) => m.get(&Atom::str(key)).and_then(Atom::as_str),
            Datum::Set(_) => None,
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Datum::Set(s) if s.len() == 1 => s.iter().next().map(Atom::to_json).unwrap_or_default(),
            Datum::Set(s) => json!(["set", s.iter().map(Atom::to_json).collect::<Vec<_>>()]),
            Datum::Map(m) => json!([
                "map",
                m.iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    pub fn from_json(v: &Value) -> Option<Datum> {
        if let Some(a) = Atom::from_json(v) {
            return Some(Datum::atom(a));
        }
        let arr = v.as_array().filter(|a| a.len() == 2)?;
        let items = arr[1].as_array()?;
        match arr[0].as_str()? {
            "set" => items
                .iter()
                .map(Atom::from_json)
                .collect::<Option<_>>()
                .map(Datum::Set),
            "map" => items
                .iter()
                .map(|p| {
                    let p = p.as_array().filter(|p| p.len() == 2)?;
                    Some((Atom::from_json(&p[0])?, Atom::from_json(&p[1])?))
                })
                .collect::<Option<_>>()
                .map(Datum::Map),
            _ => None,
        }
    }

    /// Applies a monitor's `modify` difference (ovsdb-server(7), "Update2 notification"):
    /// a scalar takes the new value; a set toggles the elements named; a map removes the
    /// pairs named with the value it holds, and sets the others.
    pub fn apply_diff(&mut self, kind: ColumnKind, diff: Datum) {
        match (kind, self, diff) {
            (ColumnKind::Scalar, this, d) => *this = d,
            (ColumnKind::Set, Datum::Set(old), Datum::Set(d)) => {
                for a in d {
                    if !old.remove(&a) {
                        old.insert(a);
                    }
                }
            }
            (ColumnKind::Map, Datum::Map(old), Datum::Map(d)) => {
                for (k, v) in d {
                    if old.get(&k) == Some(&v) {
                        old.remove(&k);
                    } else {
                        old.insert(k, v);
                    }
                }
            }
            // A column read before as a bare atom (an empty map is written `["map", []]`,
            // an empty set `["set", []]`, so only a kind the schema and the wire disagree on
            // lands here): the new value wins.
            (_, this, d) => *this = d,
        }
    }
}

/// How a column's monitor difference applies: by the column's type in the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Exactly one atom (`min` 1, `max` 1, no value type): a difference is the new value.
    Scalar,
    /// Any other set, optional scalars (0 or 1 atoms) included.
    Set,
    Map,
}

impl ColumnKind {
    /// The kind of a column from its `type` in a schema (RFC 7047 section 3.2).
    pub fn of_type(t: &Value) -> ColumnKind {
        let Some(o) = t.as_object() else {
            return ColumnKind::Scalar;
        };
        if o.contains_key("value") {
            return ColumnKind::Map;
        }
        let min = o.get("min").and_then(Value::as_u64).unwrap_or(1);
        let max = match o.get("max") {
            None => Some(1),
            Some(v) => v.as_u64(),
        };
        if min == 1 && max == Some(1) {
            ColumnKind::Scalar
        } else {
            ColumnKind::Set
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datum_round_trips() {
        for text in [
            r#""a""#,
            "7",
            "1.5",
            "true",
            r#"["uuid","5b0e5c30-1a34-4c0b-8a34-000000000001"]"#,
            r#"["set",[]]"#,
            r#"["set",[1,2,3]]"#,
            r#"["map",[]]"#,
            r#"["map",[["k","v"],["x","y"]]]"#,
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let d = Datum::from_json(&v).unwrap();
            assert_eq!(Datum::from_json(&d.to_json()), Some(d), "{text}");
        }
        assert_eq!(Datum::from_json(&json!({"a": 1})), None);
        assert_eq!(Datum::from_json(&json!(["set", [{"a": 1}]])), None);
        assert_eq!(Datum::from_json(&json!(["map", [["k"]]])), None);
    }

    #[test]
    fn diffs_apply_by_kind() {
        let mut s = Datum::set([Atom::Integer(1), Atom::Integer(2)]);
        s.apply_diff(
            ColumnKind::Set,
            Datum::set([Atom::Integer(2), Atom::Integer(3)]),
        );
        assert_eq!(s, Datum::set([Atom::Integer(1), Atom::Integer(3)]));

        let mut m = Datum::map([("a", "1"), ("b", "2")]);
        m.apply_diff(
            ColumnKind::Map,
            Datum::map([("a", "1"), ("b", "9"), ("c", "3")]),
        );
        assert_eq!(m, Datum::map([("b", "9"), ("c", "3")]));

        // An optional column going from "x" to "y" arrives as the set difference {x, y}.
        let mut o = Datum::atom(Atom::str("x"));
        o.apply_diff(
            ColumnKind::Set,
            Datum::set([Atom::str("x"), Atom::str("y")]),
        );
        assert_eq!(o, Datum::atom(Atom::str("y")));

        let mut n = Datum::atom(Atom::str("x"));
        n.apply_diff(ColumnKind::Scalar, Datum::atom(Atom::str("y")));
        assert_eq!(n, Datum::atom(Atom::str("y")));
    }

    #[test]
    fn kinds_from_schema_types() {
        assert_eq!(ColumnKind::of_type(&json!("string")), ColumnKind::Scalar);
        assert_eq!(
            ColumnKind::of_type(&json!({"key": "string"})),
            ColumnKind::Scalar
        );
        assert_eq!(
            ColumnKind::of_type(&json!({"key": "string", "min": 0, "max": 1})),
            ColumnKind::Set
        );
        assert_eq!(
            ColumnKind::of_type(&json!({"key": "string", "min": 0, "max": "unlimited"})),
            ColumnKind::Set
        );
        assert_eq!(
            ColumnKind::of_type(
                &json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"})
            ),
            ColumnKind::Map
        );
    }
}
