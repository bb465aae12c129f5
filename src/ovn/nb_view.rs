//! kvmnet's rows in the Northbound replica, as the core's [`NbRow`]s, kept up to date row
//! by row.
//!
//! Why incremental: turning every one of 10,000 ports' rows into an [`NbRow`] for each
//! plan and each transaction cost more than the rest of adding one port together. The
//! view is built once, then only the rows the replica says changed ([`Touched`]) and the
//! children whose parent changed are looked at again.
//!
//! What a row becomes depends on more than the row: a reference is a [`NbVal::Ref`] when
//! the row it names is kvmnet's, and a child's parent is whichever kvmnet row lists it.
//! References change with the rows that hold them (OVSDB removes a weak reference to a
//! deleted row from the referring row, and refuses to delete a row a strong one names),
//! and parents are followed through their child columns; but a row that becomes kvmnet's,
//! stops being, or changes key in place can change how other rows read, so then the view
//! is built again whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use super::ovsdb::replica::{Diffs, Touched};
use super::ovsdb::{Atom, ColumnKind, Datum, Replica, Row};
use kvmnet_core::ovn::memo::RowMap;
use kvmnet_core::ovn::{
    KEY_KEY, NbParent, NbRow, NbVal, OWNER, OWNER_KEY, TABLES, children_of, columns_of, ref_table,
};

/// kvmnet's rows in a replica: as the core sees them, and where each is.
#[derive(Default)]
pub(super) struct Owned {
    /// kvmnet's rows by id ([`NbRow::id`]), as a plan reads them. Shared with the plans
    /// made from the view: a plan's copy of 20,000 rows is 20,000 reference counts, not
    /// 20,000 rows (nor ids) copied and freed.
    pub(super) by_id: RowMap,
    /// (table, key) -> UUID.
    pub(super) uuids: BTreeMap<(String, String), String>,
    /// Per table, the UUIDs of kvmnet's rows (what each transaction's `wait` expects).
    pub(super) by_table: BTreeMap<&'static str, BTreeSet<String>>,
    /// UUID -> (table, key) of kvmnet's rows.
    keys: HashMap<String, (String, String)>,
    /// UUID -> the reference to the row, for the rows of `keys`: what a set of references
    /// to it reads as.
    refs: HashMap<String, NbVal>,
    /// A child's UUID -> the kvmnet row whose child column holds it.
    /// (Shared by a parent's children: a switch's 2,500 ports are read again as children
    /// whenever one joins.)
    parents: HashMap<String, Arc<NbParent>>,
    /// A kvmnet parent's UUID -> the children its child columns hold.
    kids: HashMap<String, Vec<String>>,
    /// Every row of the tables kvmnet writes, kvmnet's or not.
    known: HashSet<String>,
    /// The named rows that are not kvmnet's, by table and name, and how many share each:
    /// what an insert must not collide with. Kept here so that a port added at 10,000
    /// does not look through the 10,000 rows of its table (2-3 ms) for one foreign name.
    foreign: HashMap<(&'static str, String), usize>,
    /// UUID -> (table, name) of the rows counted in `foreign`.
    foreign_of: HashMap<String, (&'static str, String)>,
}

pub(super) fn key_of(row: &Row) -> Option<&str> {
    let ids = row.get("external_ids")?;
    (ids.get(OWNER_KEY) == Some(OWNER)).then(|| ids.get(KEY_KEY))?
}

fn table_name(t: &str) -> Option<&'static str> {
    TABLES.iter().map(|(n, _, _)| *n).find(|n| *n == t)
}

impl Owned {
    /// The view of `r`, built whole.
    pub(super) fn of(r: &Replica) -> Owned {
        let mut o = Owned::default();
        let mut all = Vec::new();
        for (t, _, _) in TABLES {
            o.by_table.entry(t).or_default();
            for (uuid, row) in r.table(t) {
                o.known.insert(uuid.clone());
                o.add_foreign(t, uuid, row);
                if let Some(k) = key_of(row) {
                    o.add_key(t, uuid, k);
                    all.push((t.to_string(), uuid.clone()));
                }
            }
        }
        for (t, uuid) in &all {
            o.add_kids(r, t, uuid);
        }
        for (t, uuid) in &all {
            o.redo_row(r, t, uuid);
        }
        o
    }

    /// Brings the view up to `r`, which changed in `touched` since the view last saw it.
    pub(super) fn update(&mut self, r: &Replica, touched: Touched) {
        if touched.all {
            *self = Owned::of(r);
            return;
        }
        let rows: Vec<(&'static str, &String, Option<&Diffs>)> = touched
            .rows
            .iter()
            .filter_map(|((t, u), d)| Some((table_name(t)?, u, d.as_ref())))
            .collect();
        // A row that became kvmnet's, stopped being, or changed key in place changes how
        // others read: build again (an operator's hand edit, not a plan's work).
        for (t, uuid, _) in &rows {
            let now = r.row(t, uuid).map(key_of);
            let before = self.keys.get(*uuid).map(|(_, k)| k.as_str());
            let flipped = match (now, before) {
                (Some(now), Some(before)) => now != Some(before),
                (Some(now), None) => now.is_some() && self.known.contains(*uuid),
                (None, _) => false,
            };
            if flipped {
                *self = Owned::of(r);
                return;
            }
        }
        // kvmnet's rows that were only modified change by their differences (see
        // `modify_in_place`); the others are read again whole.
        let (modified, rows) = self.split_modified(r, rows);
        let toggled = self.toggled_kids(&modified);
        let members_before = self.members_before(&modified);
        let mut redo: BTreeSet<(String, String)> = BTreeSet::new();
        // The parent each child of a touched row had: only children whose parent changed
        // are read again (a port joining a switch of 2,500 leaves the 2,500 as they were).
        let mut had: HashMap<String, Arc<NbParent>> = HashMap::default();
        for (t, uuid) in &rows {
            had.extend(self.drop_kids(uuid));
            self.refs.remove(*uuid);
            if let Some((_, key)) = self.keys.remove(*uuid) {
                self.by_id.remove(NbRow::id_of(t, &key).as_str());
                self.uuids.remove(&(t.to_string(), key));
                self.by_table.entry(t).or_default().remove(*uuid);
            }
            self.known.remove(*uuid);
            self.drop_foreign(uuid);
        }
        for (t, uuid) in &rows {
            if let Some(row) = r.row(t, uuid) {
                self.known.insert(uuid.to_string());
                self.add_foreign(t, uuid, row);
                if let Some(k) = key_of(row) {
                    self.add_key(t, uuid, k);
                    redo.insert((t.to_string(), uuid.to_string()));
                }
            }
        }
        let mut kids: Vec<String> = had.keys().cloned().collect();
        for (t, uuid) in &rows {
            if self.keys.contains_key(*uuid) {
                kids.extend(self.add_kids(r, t, uuid));
            }
        }
        for (t, uuid, diffs) in &modified {
            self.modify_in_place(r, t, uuid, diffs, &members_before);
        }
        // A child a modified row gained or lost had, before all this, the parent noted
        // then (which a row read whole may have taken off it since).
        for (k, before) in toggled {
            match before {
                Some(p) => had.insert(k.clone(), p),
                None => had.remove(&k),
            };
            kids.push(k);
        }
        kids.retain(|k| self.parents.get(k) != had.get(k));
        redo.extend(self.owned_of(&kids));
        for (t, uuid) in &redo {
            self.redo_row(r, t, uuid);
        }
    }

    /// Splits `rows` (each with its differences, when it was only modified) into kvmnet's
    /// rows that were only modified, and the others.
    #[allow(clippy::type_complexity)]
    fn split_modified<'a>(
        &self,
        r: &Replica,
        rows: Vec<(&'static str, &'a String, Option<&'a Diffs>)>,
    ) -> (
        Vec<(&'static str, &'a str, &'a Diffs)>,
        Vec<(&'static str, &'a String)>,
    ) {
        let mut modified = Vec::new();
        let mut whole = Vec::new();
        for (t, uuid, d) in rows {
            let in_view = self
                .keys
                .get(uuid)
                .is_some_and(|(kt, k)| kt == t && self.row(t, k).is_some());
            match d {
                Some(d) if in_view && r.row(t, uuid).is_some() => {
                    modified.push((t, uuid.as_str(), d))
                }
                _ => whole.push((t, uuid)),
            }
        }
        (modified, whole)
    }

    /// The children that the child columns of `modified` rows gained or lost, each with the
    /// parent it has now, before any of them changes.
    fn toggled_kids(
        &self,
        modified: &[(&'static str, &str, &Diffs)],
    ) -> HashMap<String, Option<Arc<NbParent>>> {
        let mut out: HashMap<String, Option<Arc<NbParent>>> = HashMap::default();
        for (t, _, diffs) in modified {
            let kid_cols = children_of(t);
            for (_, d) in diffs.iter().filter(|(c, _)| kid_cols.contains(&c.as_str())) {
                for u in d.atoms().filter_map(Atom::as_uuid) {
                    out.entry(u.to_string())
                        .or_insert_with(|| self.parents.get(u).cloned());
                }
            }
        }
        out
    }

    /// What each member that the large sets of `modified` rows gained or lost read as before
    /// any of them changes: a member leaving is found by that (its row may be gone by now,
    /// and a reference to it with it).
    fn members_before(
        &self,
        modified: &[(&'static str, &str, &Diffs)],
    ) -> HashMap<String, Option<NbVal>> {
        let mut out: HashMap<String, Option<NbVal>> = HashMap::default();
        for (t, _, diffs) in modified {
            let kid_cols = children_of(t);
            for (_, d) in diffs
                .iter()
                .filter(|(c, _)| !kid_cols.contains(&c.as_str()))
            {
                for a in d.atoms() {
                    if let Atom::Uuid(u) = a {
                        out.entry(u.clone()).or_insert_with(|| self.member(a));
                    }
                }
            }
        }
        out
    }

    /// Changes kvmnet's row `uuid`, which was only modified, by its differences: the
    /// children its child columns gained or lost, and the members its large sets gained or
    /// lost. A port joining a switch of 2,500 and a port group of 2,500 was both read again
    /// whole, each member looked up (2 ms at 10,000 ports); now it is one child and one
    /// member. What the row reads as is what reading it whole gives (a test checks it).
    fn modify_in_place(
        &mut self,
        r: &Replica,
        t: &'static str,
        uuid: &str,
        diffs: &Diffs,
        before: &HashMap<String, Option<NbVal>>,
    ) {
        let (Some(row), Some((_, key))) = (r.row(t, uuid), self.keys.get(uuid).cloned()) else {
            return;
        };
        let kid_cols = children_of(t);
        for (col, d) in diffs.iter().filter(|(c, _)| kid_cols.contains(&c.as_str())) {
            let parent = Arc::new(NbParent {
                table: t.to_string(),
                key: key.clone(),
                column: col.clone(),
            });
            for u in d.atoms().filter_map(Atom::as_uuid) {
                let now_in = matches!(row.get(col), Some(Datum::Set(s)) if s.contains(&Atom::Uuid(u.to_string())));
                let list = self.kids.entry(uuid.to_string()).or_default();
                if now_in {
                    if !list.iter().any(|k| k == u) {
                        list.push(u.to_string());
                    }
                    self.parents.insert(u.to_string(), Arc::clone(&parent));
                } else {
                    list.retain(|k| k != u);
                    if self.parents.get(u).is_some_and(|p| **p == *parent) {
                        self.parents.remove(u);
                    }
                }
            }
        }
        let id = NbRow::id_of(t, &key);
        let Some(old) = self.by_id.get(id.as_str()).cloned() else {
            return;
        };
        let mut new = NbRow::clone(&old);
        let cols = columns_of(t);
        let changed: BTreeSet<&str> = diffs
            .iter()
            .map(|(c, _)| c.as_str())
            .filter(|c| cols.contains(c))
            .collect();
        for col in changed {
            let col_diffs = diffs.iter().filter(|(c, _)| c == col).map(|(_, d)| d);
            let v = self
                .toggled(
                    r,
                    (t, col),
                    row.get(col),
                    old.columns.get(col),
                    col_diffs,
                    before,
                )
                .unwrap_or_else(|| to_val(r, t, col, row.get(col), &self.refs));
            new.columns.insert(col.to_string(), v);
        }
        new.parent = self.parents.get(uuid).map(|p| NbParent::clone(p));
        if new != *old {
            self.by_id.insert(id.into(), Arc::new(new));
        }
    }

    /// A set column's new value: `was` with the members `diffs` name added or taken
    /// away as `now` (the replica's value) has them, a member taken away found by what it
    /// read as `before`. `None` when it must be read whole: not a set, or a member that does
    /// not read as one value of its own (see [`Self::member`]).
    fn toggled<'d>(
        &self,
        r: &Replica,
        (t, col): (&str, &str),
        now: Option<&Datum>,
        was: Option<&NbVal>,
        diffs: impl Iterator<Item = &'d Datum>,
        before: &HashMap<String, Option<NbVal>>,
    ) -> Option<NbVal> {
        let (Some(NbVal::Set(was)), Some(Datum::Set(now))) = (was, now) else {
            return None;
        };
        // (A scalar's difference is its new value, not members coming and going.)
        if r.kind(t, col) != ColumnKind::Set {
            return None;
        }
        let mut v = was.clone();
        for d in diffs {
            let Datum::Set(d) = d else { return None };
            for a in d {
                if now.contains(a) {
                    let val = self.member(a)?;
                    if let Err(i) = v.binary_search(&val) {
                        v.insert(i, val);
                    }
                    continue;
                }
                let val = match a {
                    Atom::Uuid(u) => before.get(u).cloned().flatten()?,
                    other => self.member(other)?,
                };
                if let Ok(i) = v.binary_search(&val) {
                    v.remove(i);
                }
            }
        }
        Some(NbVal::Set(v))
    }

    /// What one member of a set reads as, when no other member can read as the same (so
    /// that it can be added or taken away alone): a reference to a row of kvmnet's is
    /// that row's only while the row is the one of its key.
    fn member(&self, a: &Atom) -> Option<NbVal> {
        match a {
            Atom::Uuid(u) | Atom::NamedUuid(u) => match self.refs.get(u) {
                Some(v @ NbVal::Ref { table, key }) => {
                    let id = (table.to_string(), key.to_string());
                    (self.uuids.get(&id) == Some(u)).then(|| v.clone())
                }
                Some(_) => None,
                None => Some(NbVal::Uuid(u.clone())),
            },
            Atom::Real(_) => None,
            other => Some(atom_val(other, &self.refs)),
        }
    }

    /// Counts `row` in `foreign` when it has a name and is not kvmnet's.
    fn add_foreign(&mut self, t: &'static str, uuid: &str, row: &Row) {
        if key_of(row).is_some() {
            return;
        }
        let Some(name) = row
            .get("name")
            .and_then(Datum::single)
            .and_then(Atom::as_str)
        else {
            return;
        };
        let id = (t, name.to_string());
        *self.foreign.entry(id.clone()).or_default() += 1;
        self.foreign_of.insert(uuid.to_string(), id);
    }

    fn drop_foreign(&mut self, uuid: &str) {
        let Some(id) = self.foreign_of.remove(uuid) else {
            return;
        };
        if let Some(n) = self.foreign.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.foreign.remove(&id);
            }
        }
    }

    /// Whether a row of `table` named `name` is there that is not kvmnet's.
    pub(super) fn foreign_named(&self, table: &str, name: &str) -> bool {
        table_name(table).is_some_and(|t| self.foreign.contains_key(&(t, name.to_string())))
    }

    fn add_key(&mut self, t: &'static str, uuid: &str, key: &str) {
        let id = (t.to_string(), key.to_string());
        self.uuids.insert(id.clone(), uuid.to_string());
        self.refs
            .insert(uuid.to_string(), NbVal::reference(&id.0, id.1.as_str()));
        self.keys.insert(uuid.to_string(), id);
        self.by_table.entry(t).or_default().insert(uuid.to_string());
    }

    /// Records the children `uuid`'s child columns hold; those children.
    fn add_kids(&mut self, r: &Replica, t: &str, uuid: &str) -> Vec<String> {
        let (Some(row), Some((_, key))) = (r.row(t, uuid), self.keys.get(uuid)) else {
            return Vec::new();
        };
        let mut kids = Vec::new();
        for col in children_of(t) {
            let parent = Arc::new(NbParent {
                table: t.to_string(),
                key: key.clone(),
                column: col.to_string(),
            });
            for a in row.get(*col).into_iter().flat_map(Datum::atoms) {
                if let Some(u) = a.as_uuid() {
                    self.parents.insert(u.to_string(), Arc::clone(&parent));
                    kids.push(u.to_string());
                }
            }
        }
        self.kids.insert(uuid.to_string(), kids.clone());
        kids
    }

    /// Forgets the children `uuid` held; each with the parent it had.
    fn drop_kids(&mut self, uuid: &str) -> Vec<(String, Arc<NbParent>)> {
        let Some(kids) = self.kids.remove(uuid) else {
            return Vec::new();
        };
        kids.into_iter()
            .filter_map(|k| {
                let p = self.parents.remove(&k)?;
                Some((k, p))
            })
            .collect()
    }

    /// (table, UUID) of those of `uuids` that are kvmnet's rows.
    fn owned_of(&self, uuids: &[String]) -> Vec<(String, String)> {
        uuids
            .iter()
            .filter_map(|u| Some((self.keys.get(u)?.0.clone(), u.clone())))
            .collect()
    }

    /// Reads `uuid` again into `rows`, when it is kvmnet's and still there.
    fn redo_row(&mut self, r: &Replica, t: &str, uuid: &str) {
        let (Some(row), Some((_, key))) = (r.row(t, uuid), self.keys.get(uuid)) else {
            return;
        };
        let columns = columns_of(t)
            .iter()
            .map(|c| (c.to_string(), to_val(r, t, c, row.get(*c), &self.refs)))
            .collect();
        let row = NbRow {
            table: t.to_string(),
            key: key.clone(),
            columns,
            parent: self.parents.get(uuid).map(|p| NbParent::clone(p)),
        };
        let row = Arc::new(row);
        self.by_id.insert(row.id().into(), row);
    }

    pub(super) fn row(&self, table: &str, key: &str) -> Option<&NbRow> {
        self.by_id
            .get(NbRow::id_of(table, key).as_str())
            .map(|r| &**r)
    }
}

fn atom_val(a: &Atom, refs: &HashMap<String, NbVal>) -> NbVal {
    match a {
        Atom::Integer(i) => NbVal::Int(*i),
        Atom::Boolean(b) => NbVal::Bool(*b),
        Atom::String(s) => NbVal::Str(s.clone()),
        Atom::Real(f) => NbVal::Str(f.to_string()),
        Atom::Uuid(u) | Atom::NamedUuid(u) => match refs.get(u) {
            Some(r) => r.clone(),
            None => NbVal::Uuid(u.clone()),
        },
    }
}

/// A column's value as the core writes it: maps as maps, sets (references among them) as
/// sorted sets, scalars bare.
fn to_val(
    r: &Replica,
    table: &str,
    col: &str,
    d: Option<&Datum>,
    refs: &HashMap<String, NbVal>,
) -> NbVal {
    let kind = r.kind(table, col);
    match d {
        Some(Datum::Map(m)) if m.values().any(|v| v.as_i64().is_some()) => NbVal::IntMap(
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_i64()?)))
                .collect(),
        ),
        Some(Datum::Map(m)) => NbVal::Map(
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect(),
        ),
        None if kind == ColumnKind::Map => NbVal::Map(BTreeMap::new()),
        None if kind == ColumnKind::Scalar => r
            .default_of(table, col)
            .map_or(NbVal::Set(Vec::new()), |a| atom_val(a, refs)),
        Some(Datum::Set(s)) if kind == ColumnKind::Set || ref_table(table, col).is_some() => {
            NbVal::set(s.iter().map(|a| atom_val(a, refs)))
        }
        Some(Datum::Set(s)) => s
            .iter()
            .next()
            .map_or(NbVal::Set(Vec::new()), |a| atom_val(a, refs)),
        None => NbVal::Set(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Every table kvmnet writes, every column a set of strings, references and children
    /// sets of UUIDs: enough for the view's bookkeeping.
    fn schema() -> Value {
        let mut tables = serde_json::Map::new();
        for (t, cols, children) in TABLES {
            let mut c = serde_json::Map::new();
            for col in cols.iter() {
                let key = if ref_table(t, col).is_some() {
                    "uuid"
                } else {
                    "string"
                };
                c.insert(
                    col.to_string(),
                    json!({"type": {"key": key, "min": 0, "max": "unlimited"}}),
                );
            }
            for col in children.iter() {
                c.insert(
                    col.to_string(),
                    json!({"type": {"key": "uuid", "min": 0, "max": "unlimited"}}),
                );
            }
            c.insert(
                "external_ids".into(),
                json!({"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}),
            );
            tables.insert(t.to_string(), json!({ "columns": c }));
        }
        json!({ "tables": tables })
    }

    fn ours(key: &str) -> Value {
        json!(["map", [[OWNER_KEY, OWNER], [KEY_KEY, key]]])
    }

    fn uuids(u: &[&str]) -> Value {
        json!([
            "set",
            u.iter().map(|u| json!(["uuid", u])).collect::<Vec<_>>()
        ])
    }

    fn same(a: &Owned, b: &Owned) -> bool {
        let kids = |o: &Owned| -> BTreeMap<String, BTreeSet<String>> {
            o.kids
                .iter()
                .filter(|(_, k)| !k.is_empty())
                .map(|(p, k)| (p.clone(), k.iter().cloned().collect()))
                .collect()
        };
        a.by_id == b.by_id
            && a.uuids == b.uuids
            && a.refs == b.refs
            && a.by_table == b.by_table
            && a.foreign == b.foreign
            && a.parents == b.parents
            && kids(a) == kids(b)
    }

    /// After each change, the view kept up to date equals one built whole: inserts, a
    /// port joining a switch, one moving to another's switch, deletes, a foreign row
    /// becoming kvmnet's, and a key changed in place.
    #[test]
    fn kept_up_to_date_equals_built_whole() {
        let tables: Vec<&str> = TABLES.iter().map(|(t, _, _)| *t).collect();
        let mut r = Replica::new(&schema(), &tables).unwrap();
        r.track();
        let mut view = Owned::default();
        let steps = [
            json!({
                "Logical_Switch": {
                    "s": {"initial": {"name": "web", "ports": uuids(&["p1", "p2"]), "external_ids": ours("web")}},
                    "f": {"initial": {"name": "theirs", "ports": uuids(&["p3"])}}},
                "Logical_Switch_Port": {
                    "p1": {"initial": {"name": "a", "external_ids": ours("a")}},
                    "p2": {"initial": {"name": "b", "external_ids": ours("b")}},
                    "p3": {"initial": {"name": "c"}}},
                "Port_Group": {"g": {"initial": {"name": "pg", "ports": uuids(&["p1"]), "external_ids": ours("pg")}}}
            }),
            json!({
                "Logical_Switch_Port": {"p4": {"insert": {"name": "d", "external_ids": ours("d")}}},
                "Logical_Switch": {"s": {"modify": {"ports": uuids(&["p4"])}}}
            }),
            json!({"Logical_Switch": {
                "s": {"modify": {"ports": uuids(&["p2"])}},
                "f": {"modify": {"ports": uuids(&["p2"])}}}}),
            json!({
                "Logical_Switch_Port": {"p1": {"delete": null}},
                "Logical_Switch": {"s": {"modify": {"ports": uuids(&["p1"])}}},
                "Port_Group": {"g": {"modify": {"ports": uuids(&["p1"])}}}
            }),
            json!({"Logical_Switch_Port": {"p3": {"modify": {"external_ids": ours("c")}}}}),
            json!({"Logical_Switch_Port": {"p4": {"modify": {"external_ids": json!(["map", [[KEY_KEY, "d"]]])}}}}),
            json!({"Logical_Switch_Port": {"p4": {"modify": {"external_ids": json!(["map", [[KEY_KEY, "e"]]])}}}}),
            // Foreign names come, change and go.
            json!({"Logical_Switch_Port": {"p5": {"insert": {"name": "x"}}, "p6": {"insert": {"name": "x"}}}}),
            // (A modify of a set column is the members that change: this test's names are sets.)
            json!({"Logical_Switch": {"f": {"modify": {"name": ["set", ["theirs", "other"]]}}}}),
            json!({"Logical_Switch_Port": {"p5": {"delete": null}}}),
        ];
        for (i, u) in steps.iter().enumerate() {
            r.apply(u, None).unwrap();
            let touched = r.take_touched();
            assert_eq!(touched.all, i == 0, "step {i}");
            view.update(&r, touched);
            assert!(same(&view, &Owned::of(&r)), "step {i}");
        }
        // The moved port has no parent of kvmnet's; the one joining has web.
        assert_eq!(view.row("Logical_Switch_Port", "b").unwrap().parent, None);
        let d = view.row("Logical_Switch_Port", "e").unwrap();
        assert_eq!(d.parent.as_ref().unwrap().key, "web");
        assert!(view.row("Logical_Switch_Port", "a").is_none());
        assert!(view.row("Logical_Switch_Port", "c").is_some());
        assert!(view.foreign_named("Logical_Switch", "other"));
        assert!(!view.foreign_named("Logical_Switch", "theirs"));
        assert!(!view.foreign_named("Logical_Switch", "web"), "kvmnet's own");
        assert!(
            view.foreign_named("Logical_Switch_Port", "x"),
            "one of two left"
        );
        assert!(
            !view.foreign_named("Logical_Switch_Port", "c"),
            "became kvmnet's"
        );
    }

    /// kvmnet's rows only modified change in place, also over several updates between
    /// two plans: ports joining and leaving a switch and a port group, one moving between
    /// two of kvmnet's switches, a member leaving with its row deleted, one coming and
    /// going again. Each time the view equals one built whole, and a switch whose ports
    /// alone changed keeps its copy.
    #[test]
    fn modified_rows_change_in_place() {
        let tables: Vec<&str> = TABLES.iter().map(|(t, _, _)| *t).collect();
        let mut r = Replica::new(&schema(), &tables).unwrap();
        r.track();
        let lsps = |names: &[&str]| -> Value {
            let rows: serde_json::Map<String, Value> = names
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        json!({"initial": {"name": n, "external_ids": ours(n)}}),
                    )
                })
                .collect();
            Value::Object(rows)
        };
        r.apply(
            &json!({
                "Logical_Switch": {
                    "s": {"initial": {"name": "web", "ports": uuids(&["p1", "p2", "p3"]), "external_ids": ours("web")}},
                    "t": {"initial": {"name": "db", "ports": uuids(&["p4"]), "external_ids": ours("db")}}},
                "Logical_Switch_Port": lsps(&["p1", "p2", "p3", "p4"]),
                "Port_Group": {"g": {"initial": {"name": "pg", "ports": uuids(&["p1", "p2", "p4"]), "external_ids": ours("pg")}}}
            }),
            None,
        )
        .unwrap();
        let mut view = Owned::default();
        let touched = r.take_touched();
        view.update(&r, touched);
        let windows: Vec<Vec<Value>> = vec![
            // A port joins a switch and the port group.
            vec![json!({
                "Logical_Switch_Port": {"p5": {"insert": {"name": "p5", "external_ids": ours("p5")}}},
                "Logical_Switch": {"s": {"modify": {"ports": uuids(&["p5"])}}},
                "Port_Group": {"g": {"modify": {"ports": uuids(&["p5"])}}}
            })],
            // One moves from one of kvmnet's switches to the other, in two updates.
            vec![
                json!({"Logical_Switch": {"s": {"modify": {"ports": uuids(&["p2"])}}}}),
                json!({"Logical_Switch": {"t": {"modify": {"ports": uuids(&["p2"])}}}}),
            ],
            // Back, in one.
            vec![json!({"Logical_Switch": {
                "t": {"modify": {"ports": uuids(&["p2"])}},
                "s": {"modify": {"ports": uuids(&["p2"])}}}})],
            // Deleted: the port group loses it as the row goes.
            vec![json!({
                "Logical_Switch_Port": {"p1": {"delete": null}},
                "Logical_Switch": {"s": {"modify": {"ports": uuids(&["p1"])}}},
                "Port_Group": {"g": {"modify": {"ports": uuids(&["p1"])}}}
            })],
            // Out of the group and in again, and another out, before the next plan.
            vec![
                json!({"Port_Group": {"g": {"modify": {"ports": uuids(&["p4", "p2"])}}}}),
                json!({"Port_Group": {"g": {"modify": {"ports": uuids(&["p4"])}}}}),
            ],
            // Inserted, joined and deleted again between two plans.
            vec![
                json!({
                    "Logical_Switch_Port": {"p6": {"insert": {"name": "p6", "external_ids": ours("p6")}}},
                    "Logical_Switch": {"t": {"modify": {"ports": uuids(&["p6"])}}},
                    "Port_Group": {"g": {"modify": {"ports": uuids(&["p6"])}}}
                }),
                json!({
                    "Logical_Switch_Port": {"p6": {"delete": null}},
                    "Logical_Switch": {"t": {"modify": {"ports": uuids(&["p6"])}}},
                    "Port_Group": {"g": {"modify": {"ports": uuids(&["p6"])}}}
                }),
            ],
            // Another external id on kvmnet's switch: its key stays.
            vec![
                json!({"Logical_Switch": {"s": {"modify": {"external_ids": ["map", [["note", "x"]]]}}}}),
            ],
        ];
        for (i, w) in windows.iter().enumerate() {
            let switch = view.by_id.get("Logical_Switch web").cloned();
            for u in w {
                r.apply(u, None).unwrap();
            }
            let touched = r.take_touched();
            assert!(!touched.all);
            view.update(&r, touched);
            assert!(same(&view, &Owned::of(&r)), "window {i}");
            let now = view.by_id.get("Logical_Switch web").unwrap();
            assert!(
                Arc::ptr_eq(now, switch.as_ref().unwrap()),
                "window {i}: the switch whose children alone changed keeps its copy"
            );
        }
        let pg = view.row("Port_Group", "pg").unwrap();
        assert_eq!(
            pg.columns["ports"],
            NbVal::set(["p4", "p5"].map(|k| NbVal::reference("Logical_Switch_Port", k))).clone()
        );
    }
}
