//! The chassis's Open_vSwitch database as the converge reads it: the root row's
//! `external_ids` and bridges, and every bridge, port and interface by name. Pure: read from
//! a [`Replica`], so the diff is testable without a server.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::ChassisError;
use crate::ovn::ovsdb::{Atom, ColumnKind, Datum, Replica, Row};
use crate::ovn::owned::OWNER_KEY;

/// The tables (and the columns of each) the chassis client monitors.
pub const MONITORED: &[(&str, &[&str])] = &[
    ("Open_vSwitch", &["external_ids", "bridges", "ssl"]),
    (
        "SSL",
        &["private_key", "certificate", "ca_cert", "external_ids"],
    ),
    (
        "Bridge",
        &[
            "name",
            "ports",
            "external_ids",
            "datapath_type",
            "fail_mode",
            "other_config",
        ],
    ),
    ("Port", &["name", "interfaces", "external_ids"]),
    ("Interface", &["name", "type", "external_ids", "error"]),
];

#[derive(Clone, Debug)]
pub struct BridgeSeen {
    pub uuid: String,
    pub owner: Option<String>,
    pub datapath_type: String,
    pub fail_mode: Option<String>,
    pub disable_in_band: Option<String>,
    /// The `ports` column as stored: what the `wait` compares.
    pub ports_datum: Datum,
}

#[derive(Clone, Debug)]
pub struct PortSeen {
    pub uuid: String,
    pub owner: Option<String>,
    /// The name of the bridge holding it (none: an orphan about to be collected).
    pub bridge: Option<String>,
    /// Whether any `external_ids` key is ovn-controller's (`ovn-*`): its tunnel and patch
    /// ports, which go with the bridge they sit on.
    pub ovn_made: bool,
    /// The `iface-id` of its interface named like the port, and that interface's UUID.
    pub iface: Option<(String, Option<String>)>,
    /// What ovs-vswitchd says is wrong with that interface (its `error` column).
    pub iface_error: Option<String>,
    pub interfaces_datum: Datum,
    pub external_ids_datum: Datum,
}

/// The root's `SSL` row.
#[derive(Clone, Debug)]
pub struct SslSeen {
    pub uuid: String,
    pub owner: Option<String>,
    /// `private_key`, `certificate`, `ca_cert`.
    pub files: [Option<String>; 3],
}

/// What the converge reads.
#[derive(Clone, Debug)]
pub struct Observed {
    pub root: String,
    pub external_ids: BTreeMap<String, String>,
    pub external_ids_datum: Datum,
    pub bridges_datum: Datum,
    pub bridges: BTreeMap<String, BridgeSeen>,
    pub ports: BTreeMap<String, PortSeen>,
    pub ssl: Option<SslSeen>,
}

fn text(row: &Row, col: &str) -> Option<String> {
    row.get(col)
        .and_then(Datum::single)
        .and_then(Atom::as_str)
        .map(String::from)
}

fn uuids(d: Option<&Datum>) -> Vec<String> {
    d.map(|d| {
        d.atoms()
            .filter_map(Atom::as_uuid)
            .map(String::from)
            .collect()
    })
    .unwrap_or_default()
}

fn string_map(d: Option<&Datum>) -> BTreeMap<String, String> {
    match d {
        Some(Datum::Map(m)) => m
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A column's value, its default when the replica does not hold it.
fn column(row: &Row, col: &str, kind: ColumnKind) -> Datum {
    row.get(col).cloned().unwrap_or(match kind {
        ColumnKind::Map => Datum::Map(BTreeMap::new()),
        _ => Datum::empty_set(),
    })
}

impl Observed {
    pub fn read(r: &Replica) -> Result<Observed, ChassisError> {
        let (root, row) = r.table("Open_vSwitch").next().ok_or(ChassisError::NoRoot)?;
        let mut obs = Observed {
            root: root.clone(),
            external_ids: string_map(row.get("external_ids")),
            external_ids_datum: column(row, "external_ids", ColumnKind::Map),
            bridges_datum: column(row, "bridges", ColumnKind::Set),
            bridges: BTreeMap::new(),
            ports: BTreeMap::new(),
            ssl: uuids(row.get("ssl")).first().and_then(|u| {
                let s = r.table("SSL").find(|(id, _)| *id == u)?.1;
                Some(SslSeen {
                    uuid: u.clone(),
                    owner: string_map(s.get("external_ids")).remove(OWNER_KEY),
                    files: ["private_key", "certificate", "ca_cert"].map(|c| text(s, c)),
                })
            }),
        };
        let mut holder: BTreeMap<String, String> = BTreeMap::new();
        for (uuid, b) in r.table("Bridge") {
            let Some(name) = text(b, "name") else {
                continue;
            };
            let ports = uuids(b.get("ports"));
            for p in ports {
                holder.insert(p, name.clone());
            }
            let ids = string_map(b.get("external_ids"));
            obs.bridges.insert(
                name,
                BridgeSeen {
                    uuid: uuid.clone(),
                    owner: ids.get(OWNER_KEY).cloned(),
                    datapath_type: text(b, "datapath_type").unwrap_or_default(),
                    fail_mode: text(b, "fail_mode"),
                    disable_in_band: string_map(b.get("other_config"))
                        .get("disable-in-band")
                        .cloned(),
                    ports_datum: column(b, "ports", ColumnKind::Set),
                },
            );
        }
        for (uuid, p) in r.table("Port") {
            let Some(name) = text(p, "name") else {
                continue;
            };
            let ids = string_map(p.get("external_ids"));
            let iface = uuids(p.get("interfaces")).into_iter().find_map(|i| {
                let row = r.row("Interface", &i)?;
                (text(row, "name").as_deref() == Some(name.as_str())).then(|| {
                    let ids = string_map(row.get("external_ids"));
                    (i.clone(), ids, text(row, "error"))
                })
            });
            obs.ports.insert(
                name,
                PortSeen {
                    uuid: uuid.clone(),
                    owner: ids.get(OWNER_KEY).cloned(),
                    bridge: holder.get(uuid).cloned(),
                    ovn_made: ids.keys().any(|k| k.starts_with("ovn-")),
                    iface_error: iface.as_ref().and_then(|(_, _, e)| e.clone()),
                    iface: iface.map(|(u, ids, _)| (u, ids.get(IFACE_ID).cloned())),
                    interfaces_datum: column(p, "interfaces", ColumnKind::Set),
                    external_ids_datum: column(p, "external_ids", ColumnKind::Map),
                },
            );
        }
        Ok(obs)
    }

    /// The ports of bridge `name`, by name.
    pub fn ports_of<'a>(
        &'a self,
        bridge: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a PortSeen)> {
        self.ports
            .iter()
            .filter(move |(_, p)| p.bridge.as_deref() == Some(bridge))
    }

    /// The `wait` operations that fail the transaction if anything the diff read has
    /// changed since: the root row's `external_ids` and bridge list, each bridge's and each
    /// port's row by name (absent ones staying absent), and the set of `owner`'s ports and
    /// bridges. Interfaces are not waited on: ovn-controller writes their `external_ids`
    /// (`ovn-installed`), and kvmnet changes only its own keys there with a `mutate`.
    pub fn waits(&self, owner: &str, bridges: &[&str], ports: &[&str]) -> Vec<Value> {
        let wait = |table: &str, cond: Value, columns: Value, rows: Value| {
            json!({"op": "wait", "timeout": 0, "table": table, "where": cond,
                "columns": columns, "until": "==", "rows": rows})
        };
        let mut ops = vec![wait(
            "Open_vSwitch",
            json!([["_uuid", "==", ["uuid", self.root]]]),
            json!(["external_ids", "bridges"]),
            json!([{"external_ids": self.external_ids_datum.to_json(),
                "bridges": self.bridges_datum.to_json()}]),
        )];
        for b in bridges {
            let rows = self.bridges.get(*b).map(|s| {
                vec![json!({"_uuid": ["uuid", s.uuid], "ports": s.ports_datum.to_json()})]
            });
            ops.push(wait(
                "Bridge",
                json!([["name", "==", b]]),
                json!(["_uuid", "ports"]),
                json!(rows.unwrap_or_default()),
            ));
        }
        for p in ports {
            let rows = self.ports.get(*p).map(|s| {
                vec![json!({"_uuid": ["uuid", s.uuid],
                    "interfaces": s.interfaces_datum.to_json(),
                    "external_ids": s.external_ids_datum.to_json()})]
            });
            ops.push(wait(
                "Port",
                json!([["name", "==", p]]),
                json!(["_uuid", "interfaces", "external_ids"]),
                json!(rows.unwrap_or_default()),
            ));
        }
        let mark = json!([["external_ids", "includes", ["map", [[OWNER_KEY, owner]]]]]);
        for (table, seen) in [
            (
                "Bridge",
                self.bridges
                    .values()
                    .filter(|b| b.owner.as_deref() == Some(owner))
                    .map(|b| b.uuid.clone())
                    .collect::<Vec<_>>(),
            ),
            (
                "Port",
                self.ports
                    .values()
                    .filter(|p| p.owner.as_deref() == Some(owner))
                    .map(|p| p.uuid.clone())
                    .collect(),
            ),
        ] {
            let rows: Vec<Value> = seen.iter().map(|u| json!({"_uuid": ["uuid", u]})).collect();
            ops.push(wait(table, mark.clone(), json!(["_uuid"]), json!(rows)));
        }
        ops
    }
}

/// The Interface `external_ids` key ovn-controller binds a logical port by.
pub const IFACE_ID: &str = "iface-id";
