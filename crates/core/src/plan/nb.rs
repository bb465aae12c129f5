//! kvmnet's rows in OVN's Northbound database. The shell runs every such step of a plan
//! as one OVSDB transaction: all of them happen, or none.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::order::Cx;
use super::{Change, Object, Step};
use super::{Set, Setting};
use crate::ovn::{ChassisConf, NbRow, TABLES, columns_of, kind_of};

impl Object for NbRow {
    const OPS: [&'static str; 2] = ["add", "remove"];
    fn kind(&self) -> &'static str {
        kind_of(&self.table)
    }
    fn name(&self) -> String {
        self.key.clone()
    }
    fn fields(&self, o: &mut Map<String, Value>) {
        o.insert("table".into(), json!(self.table));
        let cols: Map<String, Value> = self
            .columns
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        o.insert("columns".into(), Value::Object(cols));
    }
    fn created(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self
            .columns
            .iter()
            .filter(|(k, v)| *k != "name" && !is_empty(v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !shown.is_empty() {
            write!(f, " ({})", shown.join(" "))?;
        }
        Ok(())
    }
    fn changes(from: &Self, to: &Self) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        for c in columns_of(&to.table) {
            let (a, b) = (from.columns.get(*c), to.columns.get(*c));
            if a != b {
                let (a, b) = shown_apart(a, b);
                out.push((*c, a, b));
            }
        }
        if from.parent != to.parent {
            let show = |p: &Option<crate::ovn::NbParent>| {
                p.as_ref()
                    .map_or(String::new(), |p| format!("{} {}", p.table, p.key))
            };
            out.push(("parent", show(&from.parent), show(&to.parent)));
        }
        out
    }
}

/// Sets sharing more than this many members show only their differences.
const SHARED_SHOWN: usize = 8;

/// Two values of a column, as a change shows them. Two large sets (a switch's 2,500 ports,
/// one joining) show what differs and how many members they share: the plan, `--json` and
/// the audit log line of one port more stay one port long. (Found in one walk over both
/// sorted sets: each member searched in the other, three times over, took a millisecond of
/// each apply at 10,000 ports.)
fn shown_apart(a: Option<&crate::ovn::NbVal>, b: Option<&crate::ovn::NbVal>) -> (String, String) {
    use crate::ovn::NbVal;
    if let (Some(NbVal::Set(x)), Some(NbVal::Set(y))) = (a, b) {
        let (shared, only_x, only_y) = crate::ovn::sorted_diff(x, y);
        if shared > SHARED_SHOWN {
            let only = |s: Vec<&NbVal>| {
                let mut parts: Vec<String> = s.into_iter().map(ToString::to_string).collect();
                parts.push(format!("... {shared} shared"));
                format!("[{}]", parts.join(", "))
            };
            return (only(only_x), only(only_y));
        }
    }
    let show = |v: Option<&NbVal>| v.map_or(String::new(), ToString::to_string);
    (show(a), show(b))
}

fn is_empty(v: &crate::ovn::NbVal) -> bool {
    match v {
        crate::ovn::NbVal::Set(s) => s.is_empty(),
        crate::ovn::NbVal::Map(m) => m.is_empty(),
        crate::ovn::NbVal::Str(s) => s.is_empty(),
        _ => false,
    }
}

/// The position of a row's table in [`TABLES`]: a plan lists rows table by table.
fn rank(r: &NbRow) -> usize {
    TABLES
        .iter()
        .position(|(t, _, _)| *t == r.table)
        .unwrap_or(usize::MAX)
}

/// Rows added, changed and removed, table by table.
pub(super) fn changes(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    use std::cmp::Ordering;
    let (want, have) = (&cx.want.nb, &cx.have.nb);
    let mut out: Vec<(usize, Step)> = Vec::new();
    let mut gone: Vec<(usize, Step)> = Vec::new();
    // Both maps are sorted by id: one walk through the two, not a lookup of each row in the
    // other map (40,000 lookups of 20,000 at 10,000 ports). A row the view and the wanted
    // rows share (the same `Arc`) compares equal without a look inside, and has one id:
    // comparing 20,000 pairs of ids took a third of a millisecond.
    let (mut w, mut h) = (want.iter().peekable(), have.iter().peekable());
    loop {
        let order = match (w.peek(), h.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((wid, wr)), Some((hid, hr))) => {
                if Arc::ptr_eq(wr, hr) || Arc::ptr_eq(wid, hid) {
                    debug_assert_eq!(wid, hid, "one row, one id");
                    Ordering::Equal
                } else {
                    wid.cmp(hid)
                }
            }
        };
        match order {
            Ordering::Less => {
                let (_, wr) = w.next().expect("peeked");
                out.push((rank(wr), Step::Nb(Change::Create(NbRow::clone(wr)))));
            }
            Ordering::Greater => {
                let (_, hr) = h.next().expect("peeked");
                gone.push((rank(hr), Step::Nb(Change::Delete(NbRow::clone(hr)))));
            }
            Ordering::Equal => {
                let ((_, wr), (_, hr)) = (w.next().expect("peeked"), h.next().expect("peeked"));
                if hr != wr {
                    out.push((
                        rank(wr),
                        Step::Nb(Change::Update {
                            from: NbRow::clone(hr),
                            to: NbRow::clone(wr),
                        }),
                    ));
                }
            }
        }
    }
    // Deletions after the rest of their table, as they always were.
    out.extend(gone);
    out.sort_by_key(|(r, _)| *r);
    steps.extend(out.into_iter().map(|(_, s)| s));
}

/// This host as an OVN chassis: made, changed (or repaired), or given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chassis;

impl Setting for Chassis {
    type Value = Option<ChassisConf>;
    const KIND: &'static str = "ovn-chassis";
    fn op(from: &Self::Value, to: &Self::Value) -> &'static str {
        match (from, to) {
            (None, Some(_)) => "add",
            (Some(_), None) => "remove",
            _ => "set",
        }
    }
    fn value(v: &Self::Value) -> Value {
        json!(v)
    }
    fn detail(from: &Self::Value, to: &Self::Value, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |c: &ChassisConf| {
            format!(
                "encap {} {}, {} port(s){}",
                c.encap,
                c.encap_ip,
                c.ports.len(),
                c.gateway_uplink
                    .as_ref()
                    .map_or(String::new(), |u| format!(", gateway via {u}")),
            )
        };
        let drifted = if from.as_ref().is_some_and(|h| h.drifted) {
            "; the database drifted"
        } else {
            ""
        };
        match (from, to) {
            (_, Some(t)) => write!(f, " ({}{drifted})", show(t)),
            (Some(h), None) => write!(f, " ({})", show(h)),
            (None, None) => Ok(()),
        }
    }
}

/// The chassis made, repaired or given back, once its ports exist.
pub(super) fn chassis(cx: &mut Cx<'_>, steps: &mut Vec<Step>) {
    let (want, have) = (&cx.want.chassis, &cx.have.chassis);
    if want != have {
        let name = want
            .as_ref()
            .or(have.as_ref())
            .map_or(String::new(), |c| c.name.clone());
        steps.push(Step::Chassis(Set::new(name, have.clone(), want.clone())));
    }
}
