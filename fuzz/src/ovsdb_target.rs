//! The OVSDB client on what a server sends: monitor updates and values.

use kvmnet::ovn::ovsdb::{Datum, Replica};
use serde_json::{Value, json};

/// A stream of JSON values, as the client reads them off the socket: each is taken as a
/// monitor's `<table-updates2>` for a table with a scalar, an optional, a set and a map
/// column, and every value in it as a datum. Applying never panics, whatever the rows say,
/// and a datum read back from what it writes is the same datum.
pub fn ovsdb(data: &[u8]) {
    let schema = json!({"tables": {"T": {"columns": {
        "name": {"type": "string"},
        "opt": {"type": {"key": "string", "min": 0, "max": 1}},
        "ports": {"type": {"key": "uuid", "min": 0, "max": "unlimited"}},
        "ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}
    }}}});
    let mut replica = Replica::new(&schema, &["T"]).expect("the schema has T");
    for v in serde_json::Deserializer::from_slice(data).into_iter::<Value>() {
        let Ok(v) = v else { break };
        let _ = replica.apply(&v, None);
        round_trip(&v);
    }
}

fn round_trip(v: &Value) {
    if let Some(d) = Datum::from_json(v) {
        assert_eq!(Datum::from_json(&d.to_json()), Some(d.clone()), "{v}");
    }
    match v {
        Value::Array(a) => a.iter().for_each(round_trip),
        Value::Object(o) => o.values().for_each(round_trip),
        _ => {}
    }
}
