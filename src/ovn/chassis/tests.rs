//! The diff without a server: replicas built from table updates, as a monitor fills them.

use serde_json::{Value, json};

use super::diff::{diff, merge_mappings};
use super::observed::Observed;
use super::*;

const OWNER: &str = "t";

fn schema() -> Value {
    let map = json!({"key": "string", "value": "string", "min": 0, "max": "unlimited"});
    let refs = json!({"key": "uuid", "min": 0, "max": "unlimited"});
    let opt = json!({"key": "string", "min": 0, "max": 1});
    json!({"tables": {
        "Open_vSwitch": {"columns": {"external_ids": {"type": map}, "bridges": {"type": refs},
            "ssl": {"type": {"key": "uuid", "min": 0, "max": 1}}}},
        "SSL": {"columns": {"private_key": {"type": "string"}, "certificate": {"type": "string"},
            "ca_cert": {"type": "string"}, "external_ids": {"type": map}}},
        "Bridge": {"columns": {"name": {"type": "string"}, "ports": {"type": refs},
            "external_ids": {"type": map}, "datapath_type": {"type": "string"},
            "fail_mode": {"type": opt}, "other_config": {"type": map}}},
        "Port": {"columns": {"name": {"type": "string"}, "interfaces": {"type": refs},
            "external_ids": {"type": map}}},
        "Interface": {"columns": {"name": {"type": "string"}, "type": {"type": "string"},
            "external_ids": {"type": map}}}
    }})
}

fn uuid(n: u32) -> String {
    format!("00000000-0000-0000-0000-{n:012}")
}

fn map(pairs: &[(&str, &str)]) -> Value {
    json!([
        "map",
        pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn refs(ids: &[u32]) -> Value {
    json!([
        "set",
        ids.iter()
            .map(|i| json!(["uuid", uuid(*i)]))
            .collect::<Vec<_>>()
    ])
}

/// A database: the root row with `ids` and `bridges`, then bridges (name, uuid, owner,
/// ports) and ports (name, uuid, owner, iface-id, extra external_ids key).
struct Db {
    updates: serde_json::Map<String, Value>,
}

impl Db {
    fn new(ids: &[(&str, &str)], bridges: &[u32]) -> Db {
        let mut updates = serde_json::Map::new();
        updates.insert(
            "Open_vSwitch".into(),
            json!({uuid(1): {"initial": {"external_ids": map(ids), "bridges": refs(bridges)}}}),
        );
        Db { updates }
    }

    fn row(mut self, table: &str, id: u32, row: Value) -> Db {
        let t = self
            .updates
            .entry(table.to_string())
            .or_insert_with(|| json!({}));
        t[uuid(id)] = json!({"initial": row});
        self
    }

    fn bridge(self, name: &str, id: u32, owner: Option<&str>, ports: &[u32]) -> Db {
        let ids: Vec<(&str, &str)> = owner.map(|o| ("kvmnet-owner", o)).into_iter().collect();
        self.row(
            "Bridge",
            id,
            json!({"name": name, "ports": refs(ports), "external_ids": map(&ids),
                "datapath_type": "netdev", "fail_mode": "secure",
                "other_config": map(&[("disable-in-band", "true")])}),
        )
    }

    fn port(self, name: &str, id: u32, owner: Option<&str>, ids: &[(&str, &str)]) -> Db {
        let mut port_ids: Vec<(&str, &str)> = ids
            .iter()
            .filter(|(k, _)| k.starts_with("ovn-"))
            .copied()
            .collect();
        port_ids.extend(owner.map(|o| ("kvmnet-owner", o)));
        let iface_ids: Vec<(&str, &str)> = ids
            .iter()
            .filter(|(k, _)| !k.starts_with("ovn-"))
            .copied()
            .chain(owner.map(|o| ("kvmnet-owner", o)))
            .collect();
        self.row(
            "Interface",
            id + 1000,
            json!({"name": name, "external_ids": map(&iface_ids)}),
        )
        .row(
            "Port",
            id,
            json!({"name": name, "interfaces": refs(&[id + 1000]), "external_ids": map(&port_ids)}),
        )
    }

    /// The root's `SSL` row: `owner`'s, naming `dir`'s files.
    fn ssl(mut self, owner: Option<&str>, dir: &str) -> Db {
        self.updates["Open_vSwitch"][uuid(1)]["initial"]["ssl"] = json!(["uuid", uuid(90)]);
        let ids: Vec<(&str, &str)> = owner.map(|o| ("kvmnet-owner", o)).into_iter().collect();
        self.row(
            "SSL",
            90,
            json!({"private_key": format!("{dir}/key.pem"), "certificate": format!("{dir}/cert.pem"),
                "ca_cert": format!("{dir}/ca.pem"), "external_ids": map(&ids)}),
        )
    }

    fn replica(self) -> Replica {
        let tables = ["Open_vSwitch", "Bridge", "Port", "Interface", "SSL"];
        let mut r = Replica::new(&schema(), &tables).unwrap();
        r.apply(&Value::Object(self.updates), None).unwrap();
        r
    }

    fn observed(self) -> Observed {
        Observed::read(&self.replica()).unwrap()
    }
}

fn wanted(ports: &[(&str, &str)], uplink: Option<&str>) -> ChassisWanted {
    ChassisWanted {
        system_id: "hv1".into(),
        ovn_remote: "tcp:192.0.2.1:6642".into(),
        encap_type: EncapType::Geneve,
        encap_ip: "192.0.2.11".parse().unwrap(),
        datapath_type: DatapathType::Netdev,
        gateway: uplink.map(GatewayUplink::new),
        providers: Vec::new(),
        ports: ports
            .iter()
            .map(|(i, id)| ChassisPort {
                ifname: i.to_string(),
                iface_id: id.to_string(),
            })
            .collect(),
        ssl: None,
    }
}

const CONVERGED_IDS: &[(&str, &str)] = &[
    ("system-id", "hv1"),
    ("ovn-remote", "tcp:192.0.2.1:6642"),
    ("ovn-encap-type", "geneve"),
    ("ovn-encap-ip", "192.0.2.11"),
    ("ovn-bridge", "br-int"),
    ("ovn-bridge-datapath-type", "netdev"),
    ("hostname", "h"),
];

/// br-int made by kvmnet, with its own port, tap-a and a tunnel port of ovn-controller.
fn converged() -> Db {
    Db::new(CONVERGED_IDS, &[10])
        .bridge("br-int", 10, Some(OWNER), &[20, 21, 22])
        .port("br-int", 20, Some(OWNER), &[])
        .port("tap-a", 21, Some(OWNER), &[("iface-id", "a-web-0")])
        .port("ovn-hv2-0", 22, None, &[("ovn-chassis-id", "hv2")])
}

fn ops_text(ops: &[Value]) -> String {
    serde_json::to_string(ops).unwrap()
}

#[test]
fn a_bare_chassis_gets_everything_and_others_keys_are_left() {
    let obs = Db::new(&[("hostname", "h"), ("ovn-encap-ip", "192.0.2.99")], &[]).observed();
    let d = diff(
        &obs,
        OWNER,
        Some(&wanted(&[("tap-a", "a-web-0")], None)),
        &ChassisOriginals::default(),
    )
    .unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: set Open_vSwitch external_ids:system-id=hv1",
            "ovs: set Open_vSwitch external_ids:ovn-remote=tcp:192.0.2.1:6642",
            "ovs: set Open_vSwitch external_ids:ovn-encap-type=geneve",
            "ovs: set Open_vSwitch external_ids:ovn-encap-ip=192.0.2.11 (was 192.0.2.99)",
            "ovs: set Open_vSwitch external_ids:ovn-bridge=br-int",
            "ovs: set Open_vSwitch external_ids:ovn-bridge-datapath-type=netdev",
            "ovs: add bridge br-int (datapath_type netdev, fail_mode secure)",
            "ovs: add port br-int to br-int",
            "ovs: add port tap-a to br-int (iface-id a-web-0)",
        ]
    );
    // Keys are changed one by one: `hostname` is in no operation but the wait's.
    let changes = ops_text(&d.ops[d.waits..]);
    assert!(!changes.contains("hostname"), "{changes}");
    assert!(changes.contains(r#""op":"comment""#));
    assert!(d.ops[..d.waits].iter().all(|o| o["op"] == "wait"));
    assert_eq!(
        d.originals.external_ids.get("ovn-encap-ip"),
        Some(&Some("192.0.2.99".into()))
    );
    assert_eq!(d.originals.external_ids.get("system-id"), Some(&None));
    assert!(!d.originals.external_ids.contains_key("hostname"));
}

#[test]
fn converged_means_no_step_and_ovn_controller_ports_are_not_ours() {
    let d = diff(
        &converged().observed(),
        OWNER,
        Some(&wanted(&[("tap-a", "a-web-0")], None)),
        &ChassisOriginals::default(),
    )
    .unwrap();
    assert_eq!(d.steps, Vec::<String>::new());
}

#[test]
fn ports_follow_the_spec() {
    let obs = converged()
        .port("tap-x", 30, Some("someone"), &[("iface-id", "x")])
        .observed();
    let w = wanted(&[("tap-a", "a-web-1"), ("tap-b", "b-web-0")], None);
    let d = diff(&obs, OWNER, Some(&w), &ChassisOriginals::default()).unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: set port tap-a iface-id a-web-1",
            "ovs: add port tap-b to br-int (iface-id b-web-0)",
        ]
    );
    let d = diff(
        &obs,
        OWNER,
        Some(&wanted(&[], None)),
        &ChassisOriginals::default(),
    )
    .unwrap();
    assert_eq!(d.steps, ["ovs: remove port tap-a from br-int"]);
    // Another owner's port of a wanted name is refused, not taken over.
    let e = diff(
        &obs,
        OWNER,
        Some(&wanted(&[("tap-x", "x")], None)),
        &ChassisOriginals::default(),
    );
    assert!(matches!(e, Err(ChassisError::ForeignPort { .. })), "{e:?}");
}

#[test]
fn a_gateway_borrows_an_existing_br_ex_and_merges_its_mapping() {
    let mut ids = CONVERGED_IDS.to_vec();
    ids.push(("ovn-bridge-mappings", "phys:br-phys"));
    let obs = Db::new(&ids, &[10, 11])
        .bridge("br-int", 10, Some(OWNER), &[20])
        .port("br-int", 20, Some(OWNER), &[])
        .bridge("br-ex", 11, None, &[])
        .observed();
    let d = diff(
        &obs,
        OWNER,
        Some(&wanted(&[], Some("eth1"))),
        &ChassisOriginals::default(),
    )
    .unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: set Open_vSwitch external_ids:ovn-bridge-mappings=phys:br-phys,kvmnet-ext:br-ex (was phys:br-phys)",
            "ovs: add port eth1 to br-ex",
        ]
    );
    assert_eq!(merge_mappings(None, &[("n", "b")]), "n:b");
    assert_eq!(
        merge_mappings(Some("a:x, n:old ,c:z"), &[("n", "b")]),
        "a:x,n:b,c:z"
    );
    // kvmnet's mappings no longer wanted go; others' stay.
    assert_eq!(
        merge_mappings(
            Some("a:x,kvmnet-ext:br-ex,kvmnet-pn-eth2:kvpn-eth2"),
            &[("kvmnet-pn-eth1", "kvpn-eth1")]
        ),
        "a:x,kvmnet-pn-eth1:kvpn-eth1"
    );
}

/// Every chassis with provider networks holds each uplink in a bridge of its own, and maps
/// its physical network there beside the gateway's.
#[test]
fn provider_uplinks_get_bridges_and_mappings() {
    let obs = converged().observed();
    let mut w = wanted(&[("tap-a", "a-web-0")], Some("eth1"));
    w.providers = vec![GatewayUplink::provider("eth2")];
    let d = diff(&obs, OWNER, Some(&w), &ChassisOriginals::default()).unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: set Open_vSwitch external_ids:ovn-bridge-mappings=kvmnet-ext:br-ex,kvmnet-pn-eth2:kvpn-eth2",
            "ovs: add bridge br-ex (datapath_type netdev)",
            "ovs: add bridge kvpn-eth2 (datapath_type netdev)",
            "ovs: add port br-ex to br-ex",
            "ovs: add port kvpn-eth2 to kvpn-eth2",
            "ovs: add port eth1 to br-ex",
            "ovs: add port eth2 to kvpn-eth2",
        ]
    );
    // A provider uplink that is also the gateway's is refused before anything changes.
    w.providers = vec![GatewayUplink::provider("eth1")];
    assert!(matches!(
        super::validate(&w),
        Err(ChassisError::Invalid { .. })
    ));
}

#[test]
fn uplinks_seen_say_which_bridge_holds_each_and_where_it_is_mapped() {
    let ids = [("ovn-bridge-mappings", "other:br-o,kvmnet-pn-eth2:kvpn-eth2")];
    let ups = [
        GatewayUplink::provider("eth2"),
        GatewayUplink::provider("eth3"),
        GatewayUplink::provider("eth4"),
    ];
    // eth2 in its bridge and mapped; eth3 in a bridge of another's, its own bridge missing,
    // unmapped; eth4 in no bridge, its bridge there.
    let r = Db::new(&ids, &[10, 11, 12])
        .bridge("kvpn-eth2", 10, Some(OWNER), &[20])
        .bridge("br-o", 11, None, &[21])
        .bridge("kvpn-eth4", 12, Some(OWNER), &[])
        .port("eth2", 20, Some(OWNER), &[])
        .port("eth3", 21, None, &[])
        .replica();
    let seen = uplinks_seen(&r, &ups).unwrap();
    assert_eq!(
        seen,
        [
            UplinkSeen {
                held_by: Some("kvpn-eth2".into()),
                bridge_exists: true,
                mapped_to: Some("kvpn-eth2".into()),
            },
            UplinkSeen {
                held_by: Some("br-o".into()),
                bridge_exists: false,
                mapped_to: None,
            },
            UplinkSeen {
                held_by: None,
                bridge_exists: true,
                mapped_to: None,
            },
        ]
    );
    assert_eq!(
        bridge_mappings(&r).unwrap().as_deref(),
        Some("other:br-o,kvmnet-pn-eth2:kvpn-eth2")
    );
}

#[test]
fn removal_gives_keys_back_and_keeps_a_bridge_others_use() {
    let mut originals = ChassisOriginals::default();
    originals
        .external_ids
        .insert("ovn-encap-ip".into(), Some("192.0.2.99".into()));
    originals.external_ids.insert("system-id".into(), None);
    let obs = converged().observed();
    let d = diff(&obs, OWNER, None, &originals).unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: set Open_vSwitch external_ids:ovn-encap-ip=192.0.2.99 (was 192.0.2.11)",
            "ovs: remove Open_vSwitch external_ids:system-id (was hv1)",
            "ovs: remove bridge br-int",
        ]
    );
    assert!(d.originals.is_empty());
    let obs = converged()
        .port("vnet9", 30, None, &[])
        .bridge("br-int", 10, Some(OWNER), &[20, 21, 22, 30])
        .observed();
    let d = diff(&obs, OWNER, None, &ChassisOriginals::default()).unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: leave bridge br-int to the ports kvmnet did not add (vnet9): no longer kvmnet's",
            "ovs: remove port br-int from br-int",
            "ovs: remove port tap-a from br-int",
        ]
    );
}

#[test]
fn a_key_no_longer_wanted_is_given_back_by_converge() {
    let mut ids = CONVERGED_IDS.to_vec();
    ids.push(("ovn-bridge-mappings", "kvmnet-ext:br-ex"));
    let obs = Db::new(&ids, &[10])
        .bridge("br-int", 10, Some(OWNER), &[20, 21])
        .port("br-int", 20, Some(OWNER), &[])
        .port("tap-a", 21, Some(OWNER), &[("iface-id", "a-web-0")])
        .observed();
    let mut originals = ChassisOriginals::default();
    originals
        .external_ids
        .insert("ovn-bridge-mappings".into(), None);
    let d = diff(
        &obs,
        OWNER,
        Some(&wanted(&[("tap-a", "a-web-0")], None)),
        &originals,
    )
    .unwrap();
    assert_eq!(
        d.steps,
        ["ovs: remove Open_vSwitch external_ids:ovn-bridge-mappings (was kvmnet-ext:br-ex)"]
    );
    assert!(d.originals.is_empty());
}

#[test]
fn nonsense_is_refused_before_the_database_sees_it() {
    let mut w = wanted(&[("tap-a", "x"), ("tap-a", "y")], None);
    assert!(validate(&w).is_err());
    w.ports.truncate(1);
    assert!(validate(&w).is_ok());
    w.ports[0].ifname = "br-int".into();
    assert!(validate(&w).is_err());
    w.ports[0].ifname = "a-name-far-too-long".into();
    assert!(validate(&w).is_err());
    let w = wanted(&[("eth1", "x")], Some("eth1"));
    assert!(validate(&w).is_err());
}

#[test]
fn originals_keep_their_state_directory_form() {
    let mut o = ChassisOriginals::default();
    o.external_ids.insert("system-id".into(), None);
    o.external_ids
        .insert("ovn-encap-ip".into(), Some("192.0.2.99".into()));
    let text = serde_json::to_string(&o).unwrap();
    assert_eq!(
        text,
        r#"{"external_ids":{"ovn-encap-ip":"192.0.2.99","system-id":null}}"#
    );
    assert_eq!(serde_json::from_str::<ChassisOriginals>(&text).unwrap(), o);
    assert_eq!(
        serde_json::from_str::<ChassisOriginals>("{}").unwrap(),
        ChassisOriginals::default()
    );
}

fn with_ssl(dir: &str) -> ChassisWanted {
    ChassisWanted {
        ssl: Some(kvmnet_core::spec::ovn::Ssl {
            private_key: format!("{dir}/key.pem").into(),
            certificate: format!("{dir}/cert.pem").into(),
            ca_cert: format!("{dir}/ca.pem").into(),
        }),
        ..wanted(&[("tap-a", "a-web-0")], None)
    }
}

/// The root's `SSL` row (an `ssl:` Southbound database): made with the mark when there is
/// none, kvmnet's kept to the files wanted and taken out when no longer wanted, another's
/// left alone whatever it names.
#[test]
fn the_ssl_row_is_made_kept_and_taken_back_and_anothers_is_left() {
    let ori = ChassisOriginals::default();
    let d = diff(&converged().observed(), OWNER, Some(&with_ssl("/k")), &ori).unwrap();
    assert_eq!(
        d.steps,
        [
            "ovs: set Open_vSwitch ssl (private_key=/k/key.pem, certificate=/k/cert.pem, ca_cert=/k/ca.pem)"
        ]
    );
    let ops = ops_text(&d.ops[d.waits..]);
    assert!(
        ops.contains(r#""table":"SSL""#) && ops.contains("kvmnet-owner"),
        "{ops}"
    );
    assert!(
        ops.contains(r#"["ssl","insert",["set",[["named-uuid","ssl"]]]]"#),
        "{ops}"
    );

    let ours = || converged().ssl(Some(OWNER), "/k").observed();
    assert!(
        diff(&ours(), OWNER, Some(&with_ssl("/k")), &ori)
            .unwrap()
            .steps
            .is_empty()
    );
    let moved = diff(&ours(), OWNER, Some(&with_ssl("/n")), &ori).unwrap();
    assert_eq!(
        moved.steps,
        [
            "ovs: update Open_vSwitch ssl (private_key=/n/key.pem, certificate=/n/cert.pem, ca_cert=/n/ca.pem)"
        ]
    );
    let gone = diff(&ours(), OWNER, None, &ori).unwrap();
    assert!(
        gone.steps
            .contains(&"ovs: remove Open_vSwitch ssl".to_string()),
        "{:?}",
        gone.steps
    );
    let plain = diff(
        &ours(),
        OWNER,
        Some(&wanted(&[("tap-a", "a-web-0")], None)),
        &ori,
    )
    .unwrap();
    assert_eq!(plain.steps, ["ovs: remove Open_vSwitch ssl"]);

    let theirs = || converged().ssl(None, "/o").observed();
    assert!(
        diff(&theirs(), OWNER, Some(&with_ssl("/k")), &ori)
            .unwrap()
            .steps
            .is_empty()
    );
    let left = diff(&theirs(), OWNER, None, &ori).unwrap();
    assert!(!ops_text(&left.ops).contains(r#""ssl""#), "{:?}", left.ops);
}
