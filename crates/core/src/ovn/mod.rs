//! OVN's Northbound rows as plain data: what the spec's OVN networks are there ([`model`]),
//! and rows as observed, in one shape so the plan compares them like any other object.
//!
//! A row is known by its table and a key of kvmnet's (`external_ids:kvmnet-key`), not by
//! its UUID: every host that applies the spec computes the same keys, so they converge on
//! the same rows. References between kvmnet's rows are by key too ([`NbVal::Ref`]); the
//! shell turns them into UUIDs (or named UUIDs of rows made in the same transaction).
//!
//! Rows of tables that are not roots (a switch's ports, a router's NAT rules, a port
//! group's ACLs) live only while a row refers to them: [`NbRow::parent`] names that row and
//! its column, which the shell mutates (never overwrites), so ports others put on
//! kvmnet's switches stay. A meter's band is the exception: `bands` must hold one from the
//! meter's insert on, so it is an ordinary column of the meter, referring to its band.

pub mod dns;
pub mod firewall;
pub mod forwards;
pub mod memo;
pub mod model;
pub mod provider;
mod router;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `external_ids` key marking a row as kvmnet's; its value names the deployment.
pub const OWNER_KEY: &str = "kvmnet-owner";
/// The `external_ids` key holding a row's key.
pub const KEY_KEY: &str = "kvmnet-key";
/// The owner value kvmnet writes: every host applying a spec writes the same.
pub const OWNER: &str = "kvmnet";

/// A column's value. Sets are kept sorted, so equal sets compare equal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NbVal {
    Str(String),
    Int(i64),
    Bool(bool),
    /// A kvmnet row of `table`, by key.
    /// Shared: a view of the database reads a port group's or a switch's 2,500 members
    /// again whenever one joins, each a copy of the reference it keeps for the row.
    Ref {
        table: std::sync::Arc<str>,
        key: std::sync::Arc<str>,
    },
    /// A row that is not kvmnet's, by UUID (only ever observed).
    Uuid(String),
    Set(Vec<NbVal>),
    Map(BTreeMap<String, String>),
    /// A map of integers (a QoS row's `bandwidth`); an empty map is always [`NbVal::Map`].
    IntMap(BTreeMap<String, i64>),
}

impl NbVal {
    pub fn str(s: impl Into<String>) -> NbVal {
        NbVal::Str(s.into())
    }

    /// A set of strings, sorted.
    pub fn strs<S: Into<String>>(items: impl IntoIterator<Item = S>) -> NbVal {
        NbVal::set(items.into_iter().map(|s| NbVal::Str(s.into())))
    }

    pub fn set(items: impl IntoIterator<Item = NbVal>) -> NbVal {
        let mut v: Vec<NbVal> = items.into_iter().collect();
        v.sort();
        v.dedup();
        NbVal::Set(v)
    }

    pub fn map<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> NbVal {
        NbVal::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A reference to kvmnet's row `key` of `table`. (The tables kvmnet writes have one
    /// shared name each: a port group's 2,500 members made a copy of it each.)
    pub fn reference(table: &str, key: impl AsRef<str>) -> NbVal {
        static NAMES: std::sync::OnceLock<Vec<std::sync::Arc<str>>> = std::sync::OnceLock::new();
        let names = NAMES.get_or_init(|| TABLES.iter().map(|(t, _, _)| (*t).into()).collect());
        let table = match names.iter().find(|n| ***n == *table) {
            Some(n) => std::sync::Arc::clone(n),
            None => table.into(),
        };
        NbVal::Ref {
            table,
            key: key.as_ref().into(),
        }
    }
}

impl NbVal {
    /// As plain JSON: sets as arrays, maps as objects, references as `Table:key`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        match self {
            NbVal::Str(s) | NbVal::Uuid(s) => json!(s),
            NbVal::Int(i) => json!(i),
            NbVal::Bool(b) => json!(b),
            NbVal::Ref { table, key } => json!(format!("{table}:{key}")),
            NbVal::Set(v) => Value::Array(v.iter().map(NbVal::to_json).collect()),
            NbVal::Map(m) => json!(m),
            NbVal::IntMap(m) => json!(m),
        }
    }
}

impl std::fmt::Display for NbVal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbVal::Str(s) => write!(f, "{s:?}"),
            NbVal::Int(i) => write!(f, "{i}"),
            NbVal::Bool(b) => write!(f, "{b}"),
            NbVal::Ref { table, key } => write!(f, "{table}:{key}"),
            NbVal::Uuid(u) => write!(f, "{u}"),
            NbVal::Set(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
            NbVal::Map(m) => {
                let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{{{}}}", pairs.join(", "))
            }
            NbVal::IntMap(m) => {
                let pairs: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{{{}}}", pairs.join(", "))
            }
        }
    }
}

/// What this host is as an OVN chassis: its Open_vSwitch database's `external_ids`, the
/// gateway's uplink in `br-ex`, the provider networks' uplinks, and the VM ports it binds on
/// `br-int`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChassisConf {
    /// The chassis name (`system-id`).
    pub name: String,
    /// Its Open_vSwitch database.
    pub ovs: String,
    /// The Southbound database (`ovn-remote`).
    pub sb: String,
    pub encap: String,
    pub encap_ip: std::net::Ipv4Addr,
    pub datapath: String,
    /// On a gateway chassis: the interface put in `br-ex`.
    pub gateway_uplink: Option<String>,
    /// The uplinks of the provider (`bridge` and `vlan`) networks, each put in a bridge of
    /// its own (see [`provider`]), on every chassis.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub provider_uplinks: std::collections::BTreeSet<String>,
    /// Device -> logical switch port (`iface-id`).
    pub ports: BTreeMap<String, String>,
    /// What ovn-controller reaches an `ssl:` Southbound database with: the Open_vSwitch
    /// database's `SSL` row, which ovn-controller reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<crate::spec::ovn::Ssl>,
    /// Observed only: the database is not as this was applied (edited by hand, or by
    /// another tool), so a plan converges it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drifted: bool,
}

/// The row whose column refers to a row of a table that is not a root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NbParent {
    pub table: String,
    pub key: String,
    pub column: String,
}

/// One kvmnet row: its table, key, the columns kvmnet sets (every column of
/// [`columns_of`] its table), and its parent when its table is not a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbRow {
    pub table: String,
    pub key: String,
    pub columns: BTreeMap<String, NbVal>,
    pub parent: Option<NbParent>,
}

impl NbRow {
    /// The key a host state holds the row under: unique across tables.
    pub fn id(&self) -> String {
        NbRow::id_of(&self.table, &self.key)
    }

    /// The id of row `key` of `table` (see [`NbRow::id`]).
    pub fn id_of(table: &str, key: &str) -> String {
        format!("{table} {key}")
    }

    /// The `name` column, where the table has one.
    pub fn name(&self) -> Option<&str> {
        match self.columns.get("name") {
            Some(NbVal::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// What kvmnet writes of each table it uses: (table, columns compared and set, the columns
/// holding its children, which are mutated instead). The shell monitors exactly these.
pub const TABLES: &[(&str, &[&str], &[&str])] = &[
    (
        "Logical_Switch",
        &["name", "other_config"],
        &["ports", "qos_rules", "dns_records"],
    ),
    (
        "Logical_Switch_Port",
        &[
            "name",
            "type",
            "addresses",
            "port_security",
            "options",
            "dhcpv4_options",
            "dhcpv6_options",
            "tag",
        ],
        &[],
    ),
    ("DHCP_Options", &["cidr", "options"], &[]),
    (
        "QoS",
        &["priority", "direction", "match", "action", "bandwidth"],
        &[],
    ),
    (
        "Logical_Router",
        &["name"],
        &["ports", "nat", "static_routes", "load_balancer"],
    ),
    (
        "Logical_Router_Port",
        &[
            "name",
            "mac",
            "networks",
            "ha_chassis_group",
            "ipv6_ra_configs",
        ],
        &[],
    ),
    ("HA_Chassis_Group", &["name"], &["ha_chassis"]),
    ("HA_Chassis", &["chassis_name", "priority"], &[]),
    ("NAT", &["type", "logical_ip", "external_ip"], &[]),
    (
        "Logical_Router_Static_Route",
        &["ip_prefix", "nexthop"],
        &[],
    ),
    (
        "Load_Balancer",
        &["name", "vips", "protocol", "options"],
        &[],
    ),
    ("DNS", &["records"], &[]),
    ("Port_Group", &["name", "ports"], &["acls"]),
    (
        "ACL",
        &[
            "direction",
            "priority",
            "match",
            "action",
            "log",
            "name",
            "meter",
        ],
        &[],
    ),
    ("Address_Set", &["name", "addresses"], &[]),
    // Meter_Band is not a root table, but no child column holds it: its meter's `bands`
    // (set of one or more) is written with the meter, in the same insert.
    ("Meter", &["name", "unit", "bands", "fair"], &[]),
    ("Meter_Band", &["action", "rate", "burst_size"], &[]),
];

/// The columns kvmnet sets in `table` (empty for a table it does not use).
pub fn columns_of(table: &str) -> &'static [&'static str] {
    TABLES
        .iter()
        .find(|(t, _, _)| *t == table)
        .map_or(&[], |(_, c, _)| c)
}

/// The columns of `table` that hold kvmnet's children.
pub fn children_of(table: &str) -> &'static [&'static str] {
    TABLES
        .iter()
        .find(|(t, _, _)| *t == table)
        .map_or(&[], |(_, _, c)| c)
}

/// The table a reference column points into.
pub fn ref_table(table: &str, column: &str) -> Option<&'static str> {
    Some(match (table, column) {
        ("Logical_Switch", "ports") | ("Port_Group", "ports") => "Logical_Switch_Port",
        ("Logical_Switch_Port", "dhcpv4_options" | "dhcpv6_options") => "DHCP_Options",
        ("Logical_Switch", "qos_rules") => "QoS",
        ("Logical_Router", "ports") => "Logical_Router_Port",
        ("Logical_Router", "nat") => "NAT",
        ("Logical_Router", "static_routes") => "Logical_Router_Static_Route",
        ("Logical_Router_Port", "ha_chassis_group") => "HA_Chassis_Group",
        ("HA_Chassis_Group", "ha_chassis") => "HA_Chassis",
        ("Port_Group", "acls") => "ACL",
        ("Meter", "bands") => "Meter_Band",
        ("Logical_Router", "load_balancer") => "Load_Balancer",
        ("Logical_Switch", "dns_records") => "DNS",
        _ => return None,
    })
}

/// The word a plan shows for a row of `table`.
pub fn kind_of(table: &str) -> &'static str {
    match table {
        "Logical_Switch" => "ovn-switch",
        "Logical_Switch_Port" => "ovn-port",
        "DHCP_Options" => "ovn-dhcp",
        "QoS" => "ovn-qos",
        "Logical_Router" => "ovn-router",
        "Logical_Router_Port" => "ovn-router-port",
        "HA_Chassis_Group" => "ovn-gateway-group",
        "HA_Chassis" => "ovn-gateway-chassis",
        "NAT" => "ovn-nat",
        "Logical_Router_Static_Route" => "ovn-route",
        "Port_Group" => "ovn-port-group",
        "ACL" => "ovn-acl",
        "Address_Set" => "ovn-address-set",
        "Meter" => "ovn-meter",
        "Meter_Band" => "ovn-meter-band",
        "Load_Balancer" => "ovn-forward",
        "DNS" => "ovn-dns",
        _ => "ovn-row",
    }
}

/// Of two sorted sets (the core's and a view's alike are sorted, without repeats, as
/// [`NbVal::set`] makes them): how many members they share, those only `was` has, and those
/// only `now` has. One walk over both: a port group of 2,500 searched member by member, three
/// times, took 0.3 ms.
pub fn sorted_diff<'a>(
    was: &'a [NbVal],
    now: &'a [NbVal],
) -> (usize, Vec<&'a NbVal>, Vec<&'a NbVal>) {
    let (mut i, mut j, mut shared) = (0, 0, 0);
    let (mut only_was, mut only_now) = (Vec::new(), Vec::new());
    while i < was.len() && j < now.len() {
        match was[i].cmp(&now[j]) {
            std::cmp::Ordering::Less => {
                only_was.push(&was[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                only_now.push(&now[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    only_was.extend(&was[i..]);
    only_now.extend(&now[j..]);
    (shared, only_was, only_now)
}
