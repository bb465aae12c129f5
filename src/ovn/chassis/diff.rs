//! Wanted against observed: the steps (text) and the one transaction (OVSDB operations) that
//! make the chassis's database match. Pure.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::observed::{IFACE_ID, Observed};
use super::{ChassisError, ChassisOriginals, ChassisWanted, INTEGRATION_BRIDGE};
use crate::ovn::owned::OWNER_KEY;

/// The steps, the operations (the `waits` first ones are preconditions), and the originals
/// as they are once the operations are committed.
#[derive(Debug)]
pub struct Diff {
    pub steps: Vec<String>,
    pub ops: Vec<Value>,
    pub waits: usize,
    pub originals: ChassisOriginals,
}

/// A row referred to in the transaction: stored, or inserted by it.
#[derive(Clone, Debug)]
enum Ref {
    Uuid(String),
    Named(String),
}

impl Ref {
    fn json(&self) -> Value {
        match self {
            Ref::Uuid(u) => json!(["uuid", u]),
            Ref::Named(n) => json!(["named-uuid", n]),
        }
    }
}

struct BridgeWant {
    name: String,
    /// br-int's settings: `fail_mode=secure`, in-band control off.
    secure: bool,
    datapath: &'static str,
}

struct PortWant {
    name: String,
    bridge: String,
    /// `internal` for a bridge's own port, "" for a kernel interface.
    kind: &'static str,
    iface_id: Option<String>,
}

/// The operations being gathered, applied in an order the server accepts: inserts, then
/// the mutations of stored rows that refer to them.
#[derive(Default)]
struct Edits {
    inserts: Vec<Value>,
    /// New bridges' rows (their `ports` filled as ports are placed).
    new_bridges: BTreeMap<String, (String, Value, Vec<Ref>)>,
    bridge_ports_in: BTreeMap<String, Vec<Ref>>,
    bridge_ports_out: BTreeMap<String, Vec<String>>,
    others: Vec<Value>,
    ids_out: Vec<String>,
    ids_in: Vec<(String, String)>,
    root_bridges_out: Vec<String>,
    /// The root's `ssl`: the row inserted as `ssl` goes in, this row goes out.
    ssl_in: bool,
    ssl_out: Option<String>,
}

fn by_uuid(u: &str) -> Value {
    json!([["_uuid", "==", ["uuid", u]]])
}

fn set(refs: &[Value]) -> Value {
    json!(["set", refs])
}

/// Whether a physical network name is one kvmnet maps (its nat networks' or a provider
/// uplink's).
fn is_kvmnets(physnet: &str) -> bool {
    physnet == super::PHYSNET || physnet.starts_with(kvmnet_core::ovn::provider::PHYSNET_PREFIX)
}

/// `ovn-bridge-mappings` with each of `ours` (physnet, bridge) mapped, kvmnet's mappings no
/// longer wanted taken out, and others' mappings kept in place.
pub fn merge_mappings(current: Option<&str>, ours: &[(&str, &str)]) -> String {
    let mut list: Vec<String> = current
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter(|m| {
            let p = m.split(':').next().unwrap_or_default();
            !is_kvmnets(p) || ours.iter().any(|(o, _)| *o == p)
        })
        .map(String::from)
        .collect();
    for (physnet, bridge) in ours {
        let want = format!("{physnet}:{bridge}");
        match list
            .iter_mut()
            .find(|m| m.split(':').next() == Some(*physnet))
        {
            Some(m) => *m = want,
            None => list.push(want),
        }
    }
    list.join(",")
}

fn wanted_keys(w: &ChassisWanted, obs: &Observed) -> Vec<(String, String)> {
    let mut keys: Vec<(&str, String)> = vec![
        ("system-id", w.system_id.clone()),
        ("ovn-remote", w.ovn_remote.clone()),
        ("ovn-encap-type", w.encap_type.as_str().into()),
        ("ovn-encap-ip", w.encap_ip.to_string()),
        ("ovn-bridge", INTEGRATION_BRIDGE.into()),
        ("ovn-bridge-datapath-type", w.datapath_type.as_str().into()),
    ];
    let ours: Vec<(&str, &str)> = w
        .uplinks()
        .map(|g| (g.physnet.as_str(), g.bridge.as_str()))
        .collect();
    if !ours.is_empty() {
        let current = obs.external_ids.get("ovn-bridge-mappings");
        keys.push((
            "ovn-bridge-mappings",
            merge_mappings(current.map(String::as_str), &ours),
        ));
    }
    keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn wanted_bridges(w: Option<&ChassisWanted>) -> Vec<BridgeWant> {
    let Some(w) = w else {
        return Vec::new();
    };
    let datapath = w.datapath_type.as_str();
    let mut b = vec![BridgeWant {
        name: INTEGRATION_BRIDGE.into(),
        secure: true,
        datapath,
    }];
    b.extend(w.uplinks().map(|g| BridgeWant {
        name: g.bridge.clone(),
        secure: false,
        datapath,
    }));
    b
}

fn wanted_ports(
    w: Option<&ChassisWanted>,
    bridges: &[BridgeWant],
    obs: &Observed,
    owner: &str,
) -> Vec<PortWant> {
    let Some(w) = w else {
        return Vec::new();
    };
    // A bridge kvmnet makes gets its own internal port, as `ovs-vsctl add-br` makes one.
    let mut ports: Vec<PortWant> = bridges
        .iter()
        .filter(|b| {
            obs.bridges
                .get(&b.name)
                .is_none_or(|s| s.owner.as_deref() == Some(owner))
        })
        .map(|b| PortWant {
            name: b.name.clone(),
            bridge: b.name.clone(),
            kind: "internal",
            iface_id: None,
        })
        .collect();
    ports.extend(w.ports.iter().map(|p| PortWant {
        name: p.ifname.clone(),
        bridge: INTEGRATION_BRIDGE.into(),
        kind: "",
        iface_id: Some(p.iface_id.clone()),
    }));
    ports.extend(w.uplinks().map(|g| PortWant {
        name: g.uplink.clone(),
        bridge: g.bridge.clone(),
        kind: "",
        iface_id: None,
    }));
    ports
}

/// The diff of the chassis's database against `wanted` (`None`: nothing wanted, i.e. the
/// removal), with `originals` as recorded so far.
pub fn diff(
    obs: &Observed,
    owner: &str,
    wanted: Option<&ChassisWanted>,
    originals: &ChassisOriginals,
) -> Result<Diff, ChassisError> {
    let mut steps = Vec::new();
    let mut edits = Edits::default();
    let mut originals = originals.clone();
    keys(obs, wanted, &mut originals, &mut steps, &mut edits);
    ssl(obs, owner, wanted, &mut steps, &mut edits);
    let bridges = wanted_bridges(wanted);
    let ports = wanted_ports(wanted, &bridges, obs, owner);
    let gone = bridges_diff(obs, owner, &bridges, &mut steps, &mut edits);
    ports_diff(obs, owner, &ports, &gone, &mut steps, &mut edits)?;

    let mut bridge_names: BTreeSet<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
    bridge_names.extend(
        obs.bridges
            .iter()
            .filter(|(_, b)| b.owner.as_deref() == Some(owner))
            .map(|(n, _)| n.as_str()),
    );
    let mut port_names: BTreeSet<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    port_names.extend(
        obs.ports
            .iter()
            .filter(|(_, p)| p.owner.as_deref() == Some(owner))
            .map(|(n, _)| n.as_str()),
    );
    let mut ops = obs.waits(
        owner,
        &bridge_names.into_iter().collect::<Vec<_>>(),
        &port_names.into_iter().collect::<Vec<_>>(),
    );
    let waits = ops.len();
    edits.emit(obs, &mut ops);
    ops.push(json!({"op": "comment", "comment": format!("kvmnet: chassis {owner}")}));
    Ok(Diff {
        steps,
        ops,
        waits,
        originals,
    })
}

/// The borrowed keys: set what is wanted (recording what was there), give back what was
/// recorded and is no longer wanted.
fn keys(
    obs: &Observed,
    wanted: Option<&ChassisWanted>,
    originals: &mut ChassisOriginals,
    steps: &mut Vec<String>,
    edits: &mut Edits,
) {
    let want = wanted.map(|w| wanted_keys(w, obs)).unwrap_or_default();
    let mut target: Vec<(String, Option<String>)> = want
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect();
    let given_back: Vec<String> = originals
        .external_ids
        .keys()
        .filter(|k| !want.iter().any(|(w, _)| w == *k))
        .cloned()
        .collect();
    for k in &given_back {
        target.push((k.clone(), originals.external_ids.remove(k).flatten()));
    }
    for (key, value) in target {
        let current = obs.external_ids.get(&key);
        if current == value.as_ref() {
            continue;
        }
        if !given_back.contains(&key) {
            originals
                .external_ids
                .entry(key.clone())
                .or_insert_with(|| current.cloned());
        }
        let was = current.map(|c| format!(" (was {c})")).unwrap_or_default();
        edits.ids_out.push(key.clone());
        match value {
            Some(v) => {
                steps.push(format!("ovs: set Open_vSwitch external_ids:{key}={v}{was}"));
                edits.ids_in.push((key, v));
            }
            None => steps.push(format!("ovs: remove Open_vSwitch external_ids:{key}{was}")),
        }
    }
}

/// The root's `SSL` row: made when wanted and there is none, kvmnet's kept to the files
/// wanted, kvmnet's no longer wanted taken out (the row, which nothing else refers to, goes
/// with it). Another's row is left alone.
fn ssl(
    obs: &Observed,
    owner: &str,
    wanted: Option<&ChassisWanted>,
    steps: &mut Vec<String>,
    edits: &mut Edits,
) {
    let want = wanted
        .and_then(|w| w.ssl.as_ref())
        .map(|s| [&s.private_key, &s.certificate, &s.ca_cert].map(|p| p.display().to_string()));
    let ours = obs
        .ssl
        .as_ref()
        .filter(|s| s.owner.as_deref() == Some(owner));
    let row = |files: &[String; 3]| json!({"private_key": files[0], "certificate": files[1], "ca_cert": files[2]});
    match (&obs.ssl, ours, want) {
        (None, _, Some(files)) => {
            steps.push(format!(
                "ovs: set Open_vSwitch ssl (private_key={}, certificate={}, ca_cert={})",
                files[0], files[1], files[2]
            ));
            let mut r = row(&files);
            r["external_ids"] = json!(["map", [[OWNER_KEY, owner]]]);
            edits
                .inserts
                .push(json!({"op": "insert", "table": "SSL", "uuid-name": "ssl", "row": r}));
            edits.ssl_in = true;
        }
        (_, Some(seen), Some(files))
            if seen
                .files
                .iter()
                .zip(&files)
                .any(|(s, f)| s.as_ref() != Some(f)) =>
        {
            steps.push(format!(
                "ovs: update Open_vSwitch ssl (private_key={}, certificate={}, ca_cert={})",
                files[0], files[1], files[2]
            ));
            edits.others.push(
                json!({"op": "update", "table": "SSL", "where": by_uuid(&seen.uuid), "row": row(&files)}),
            );
        }
        (_, Some(seen), None) => {
            steps.push("ovs: remove Open_vSwitch ssl".to_string());
            edits.ssl_out = Some(seen.uuid.clone());
        }
        _ => {}
    }
}

/// Bridges: made when wanted and missing, kvmnet's kept to their settings, kvmnet's no
/// longer wanted deleted. Returns the bridges being deleted (their ports go with them).
fn bridges_diff(
    obs: &Observed,
    owner: &str,
    bridges: &[BridgeWant],
    steps: &mut Vec<String>,
    edits: &mut Edits,
) -> BTreeSet<String> {
    let mut gone = BTreeSet::new();
    for (i, b) in bridges.iter().enumerate() {
        let dp = b.datapath;
        match obs.bridges.get(&b.name) {
            None => {
                let mut row = json!({"name": b.name, "datapath_type": dp,
                    "external_ids": ["map", [[OWNER_KEY, owner]]]});
                let mut text = format!("ovs: add bridge {} (datapath_type {dp}", b.name);
                if b.secure {
                    row["fail_mode"] = json!("secure");
                    row["other_config"] = json!(["map", [["disable-in-band", "true"]]]);
                    text.push_str(", fail_mode secure");
                }
                steps.push(text + ")");
                edits
                    .new_bridges
                    .insert(b.name.clone(), (format!("bridge{i}"), row, Vec::new()));
            }
            Some(s) if s.owner.as_deref() == Some(owner) => {
                let mut row = serde_json::Map::new();
                if s.datapath_type != dp {
                    steps.push(format!("ovs: set bridge {} datapath_type={dp}", b.name));
                    row.insert("datapath_type".into(), json!(dp));
                }
                if b.secure && s.fail_mode.as_deref() != Some("secure") {
                    steps.push(format!("ovs: set bridge {} fail_mode=secure", b.name));
                    row.insert("fail_mode".into(), json!("secure"));
                }
                if !row.is_empty() {
                    edits.others.push(json!({"op": "update", "table": "Bridge",
                        "where": by_uuid(&s.uuid), "row": row}));
                }
                if b.secure && s.disable_in_band.as_deref() != Some("true") {
                    steps.push(format!(
                        "ovs: set bridge {} other_config:disable-in-band=true",
                        b.name
                    ));
                    edits.others.push(json!({"op": "mutate", "table": "Bridge",
                        "where": by_uuid(&s.uuid), "mutations": [
                            ["other_config", "delete", ["set", ["disable-in-band"]]],
                            ["other_config", "insert", ["map", [["disable-in-band", "true"]]]]]}));
                }
            }
            // Borrowed: ovn-controller or the distribution made it.
            Some(_) => {}
        }
    }
    for (name, s) in &obs.bridges {
        if s.owner.as_deref() != Some(owner) || bridges.iter().any(|b| &b.name == name) {
            continue;
        }
        // Anyone else's ports keep the bridge (ovn-controller's own go with it).
        let others: Vec<&str> = obs
            .ports_of(name)
            .filter(|(_, p)| p.owner.as_deref() != Some(owner) && !p.ovn_made)
            .map(|(n, _)| n.as_str())
            .collect();
        if others.is_empty() {
            steps.push(format!("ovs: remove bridge {name}"));
            edits.root_bridges_out.push(s.uuid.clone());
            gone.insert(name.clone());
        } else {
            steps.push(format!(
                "ovs: leave bridge {name} to the ports kvmnet did not add ({}): no longer kvmnet's",
                others.join(", ")
            ));
            edits.others.push(json!({"op": "mutate", "table": "Bridge",
                "where": by_uuid(&s.uuid),
                "mutations": [["external_ids", "delete", ["set", [OWNER_KEY]]]]}));
        }
    }
    gone
}

/// Ports: kvmnet's wanted ones added (or moved to their bridge, their `iface-id` kept
/// right); kvmnet's others taken off their bridge.
fn ports_diff(
    obs: &Observed,
    owner: &str,
    ports: &[PortWant],
    gone: &BTreeSet<String>,
    steps: &mut Vec<String>,
    edits: &mut Edits,
) -> Result<(), ChassisError> {
    for (i, p) in ports.iter().enumerate() {
        let text = p
            .iface_id
            .as_ref()
            .map(|id| format!(" (iface-id {id})"))
            .unwrap_or_default();
        let Some(s) = obs.ports.get(&p.name) else {
            steps.push(format!("ovs: add port {} to {}{text}", p.name, p.bridge));
            let mut ids = vec![json!([OWNER_KEY, owner])];
            ids.extend(p.iface_id.iter().map(|id| json!([IFACE_ID, id])));
            let (iface, port) = (format!("iface{i}"), format!("port{i}"));
            edits
                .inserts
                .push(json!({"op": "insert", "table": "Interface",
                "uuid-name": iface, "row": {"name": p.name, "type": p.kind,
                    "external_ids": ["map", ids]}}));
            edits
                .inserts
                .push(json!({"op": "insert", "table": "Port", "uuid-name": port,
                "row": {"name": p.name, "interfaces": ["named-uuid", iface],
                    "external_ids": ["map", [[OWNER_KEY, owner]]]}}));
            edits.place(obs, &p.bridge, Ref::Named(port));
            continue;
        };
        if s.owner.as_deref() != Some(owner) {
            return Err(ChassisError::ForeignPort {
                port: p.name.clone(),
                bridge: s.bridge.clone(),
                owner: s.owner.clone(),
            });
        }
        if s.bridge.as_deref() != Some(p.bridge.as_str()) {
            steps.push(format!("ovs: move port {} to {}{text}", p.name, p.bridge));
            if let Some(from) = s.bridge.as_ref().and_then(|b| obs.bridges.get(b)) {
                edits
                    .bridge_ports_out
                    .entry(from.uuid.clone())
                    .or_default()
                    .push(s.uuid.clone());
            }
            edits.place(obs, &p.bridge, Ref::Uuid(s.uuid.clone()));
        }
        if let Some((iface, have)) = &s.iface
            && have != &p.iface_id
        {
            let mut m = vec![json!(["external_ids", "delete", ["set", [IFACE_ID]]])];
            match &p.iface_id {
                Some(id) => {
                    steps.push(format!("ovs: set port {} iface-id {id}", p.name));
                    m.push(json!(["external_ids", "insert", ["map", [[IFACE_ID, id]]]]));
                }
                None => steps.push(format!("ovs: clear port {} iface-id", p.name)),
            }
            edits
                .others
                .push(json!({"op": "mutate", "table": "Interface",
                "where": by_uuid(iface), "mutations": m}));
        }
    }
    for (name, s) in &obs.ports {
        let ours = s.owner.as_deref() == Some(owner);
        if !ours || ports.iter().any(|p| &p.name == name) {
            continue;
        }
        let Some(bridge) = &s.bridge else { continue };
        if gone.contains(bridge) {
            continue;
        }
        steps.push(format!("ovs: remove port {name} from {bridge}"));
        if let Some(b) = obs.bridges.get(bridge) {
            edits
                .bridge_ports_out
                .entry(b.uuid.clone())
                .or_default()
                .push(s.uuid.clone());
        }
    }
    Ok(())
}

impl Edits {
    /// Puts port `port` on `bridge`: a new bridge's row or a stored bridge's `ports`.
    fn place(&mut self, obs: &Observed, bridge: &str, port: Ref) {
        if let Some((_, _, ports)) = self.new_bridges.get_mut(bridge) {
            ports.push(port);
        } else if let Some(b) = obs.bridges.get(bridge) {
            self.bridge_ports_in
                .entry(b.uuid.clone())
                .or_default()
                .push(port);
        }
    }

    fn emit(self, obs: &Observed, ops: &mut Vec<Value>) {
        ops.extend(self.inserts);
        let mut new_refs = Vec::new();
        for (_, (named, mut row, ports)) in self.new_bridges {
            row["ports"] = set(&ports.iter().map(Ref::json).collect::<Vec<_>>());
            ops.push(json!({"op": "insert", "table": "Bridge", "uuid-name": named, "row": row}));
            new_refs.push(json!(["named-uuid", named]));
        }
        let uuids: BTreeSet<&String> = self
            .bridge_ports_in
            .keys()
            .chain(self.bridge_ports_out.keys())
            .collect();
        for b in uuids {
            let mut m = Vec::new();
            if let Some(out) = self.bridge_ports_out.get(b) {
                let refs: Vec<Value> = out.iter().map(|u| json!(["uuid", u])).collect();
                m.push(json!(["ports", "delete", set(&refs)]));
            }
            if let Some(inn) = self.bridge_ports_in.get(b) {
                let refs: Vec<Value> = inn.iter().map(Ref::json).collect();
                m.push(json!(["ports", "insert", set(&refs)]));
            }
            ops.push(
                json!({"op": "mutate", "table": "Bridge", "where": by_uuid(b),
                "mutations": m}),
            );
        }
        ops.extend(self.others);
        let mut m = Vec::new();
        if !self.ids_out.is_empty() {
            m.push(json!(["external_ids", "delete", ["set", self.ids_out]]));
        }
        if !self.ids_in.is_empty() {
            let pairs: Vec<Value> = self.ids_in.iter().map(|(k, v)| json!([k, v])).collect();
            m.push(json!(["external_ids", "insert", ["map", pairs]]));
        }
        if !self.root_bridges_out.is_empty() {
            let refs: Vec<Value> = self
                .root_bridges_out
                .iter()
                .map(|u| json!(["uuid", u]))
                .collect();
            m.push(json!(["bridges", "delete", set(&refs)]));
        }
        if !new_refs.is_empty() {
            m.push(json!(["bridges", "insert", set(&new_refs)]));
        }
        if let Some(u) = &self.ssl_out {
            m.push(json!(["ssl", "delete", set(&[json!(["uuid", u])])]));
        }
        if self.ssl_in {
            m.push(json!([
                "ssl",
                "insert",
                set(&[json!(["named-uuid", "ssl"])])
            ]));
        }
        if !m.is_empty() {
            ops.push(json!({"op": "mutate", "table": "Open_vSwitch",
                "where": by_uuid(&obs.root), "mutations": m}));
        }
    }
}
