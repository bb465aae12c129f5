//! `kvmnet schema`: the JSON Schema an editor's YAML language server reads. Checked by an
//! independent validator (Debian's python3-jsonschema, draft-07), on each spec read as a YAML
//! 1.2 language server reads it (plain `52:54:00:12:34:56` is a string, `9000` a number):
//! every example and every golden case that validates passes, and a wrong key, a value of
//! the wrong type and a key the network's mode refuses are caught.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn kvmnet(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(args)
        .output()
        .expect("run kvmnet")
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Real(r) => r.parse::<f64>().map(Value::from).unwrap_or(Value::Null),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.clone()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                m.insert(key, to_json(v));
            }
            Value::Object(m)
        }
        _ => Value::Null,
    }
}

fn spec_json(text: &str) -> Value {
    let docs = YamlLoader::load_from_str(text).expect("YAML");
    to_json(&docs[0])
}

/// Each document's errors under the schema, by the independent validator (one line each,
/// empty when it is valid).
fn schema_errors(docs: &[(String, Value)]) -> Vec<(String, String)> {
    let schema = kvmnet(&["schema"]);
    assert!(schema.status.success());
    // One folder per call: the tests run at once, in one process.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("kvmnet-schema-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let schema_path = dir.join("schema.json");
    std::fs::write(&schema_path, &schema.stdout).unwrap();
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft7Validator.check_schema(schema)
v = jsonschema.Draft7Validator(schema)
for line in sys.stdin:
    name, doc = json.loads(line)
    errs = sorted(v.iter_errors(doc), key=lambda e: list(e.absolute_path))
    msg = "; ".join("/".join(map(str, e.absolute_path)) + ": " + e.message for e in errs)
    print(json.dumps([name, msg]))
"#;
    // Debian's interpreter, where python3-jsonschema is installed.
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, schema_path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with jsonschema (package python3-jsonschema)");
    {
        let mut stdin = child.stdin.take().unwrap();
        for (name, doc) in docs {
            writeln!(
                stdin,
                "{}",
                Value::from(vec![Value::from(name.clone()), doc.clone()])
            )
            .unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "the validator failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<(String, String)>(l).unwrap())
        .collect()
}

fn files_in(dir: &Path, name: Option<&str>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| match name {
            Some(n) => p.join(n),
            None => p,
        })
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_example_and_valid_golden_spec_passes_the_schema() {
    let mut specs = files_in(&root().join("examples"), None);
    assert!(specs.len() >= 5);
    // Golden cases whose spec validates (some are expected errors, some only conflict with
    // their host: those are valid specs).
    for p in files_in(&root().join("tests/golden"), Some("spec.yaml")) {
        if kvmnet(&["validate", p.to_str().unwrap()]).status.success() {
            specs.push(p);
        }
    }
    let docs: Vec<(String, Value)> = specs
        .iter()
        .map(|p| {
            (
                p.display().to_string(),
                spec_json(&std::fs::read_to_string(p).unwrap()),
            )
        })
        .collect();
    assert!(docs.len() >= 30, "{}", docs.len());
    let bad: Vec<_> = schema_errors(&docs)
        .into_iter()
        .filter(|(_, e)| !e.is_empty())
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_schema_catches_what_validate_refuses() {
    let good = std::fs::read_to_string(root().join("examples/nat.yaml")).unwrap();
    let mut cases = vec![("good".to_string(), spec_json(&good))];
    let mutations: &[(&str, &str, &str)] = &[
        ("wrong key", "mode: nat", "mode: nat\n    brige: br9"),
        ("wrong type", "mode: nat", "mode: nat\n    mtu: large"),
        ("mtu out of range", "mode: nat", "mode: nat\n    mtu: 20"),
        ("unknown mode", "mode: nat", "mode: natt"),
        (
            "refused by the mode",
            "mode: nat",
            "mode: nat\n    uplink: eth0",
        ),
        ("required by the mode", "mode: nat", "mode: bridge"),
    ];
    for (name, from, to) in mutations {
        assert!(good.contains(from));
        let text = good.replacen(from, to, 1);
        // validate refuses each one too: the schema is no stricter than the validator here.
        let dir = std::env::temp_dir().join(format!("kvmnet-schema-m-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("spec.yaml");
        std::fs::write(&f, &text).unwrap();
        let v = kvmnet(&["validate", f.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(v.status.code(), Some(2), "{name}: validate accepted it");
        cases.push((name.to_string(), spec_json(&text)));
    }
    let results = schema_errors(&cases);
    assert_eq!(results[0], ("good".to_string(), String::new()));
    for (name, errs) in &results[1..] {
        assert!(!errs.is_empty(), "{name}: the schema accepted it");
    }
    let wrong_key = &results[1].1;
    assert!(wrong_key.contains("brige"), "{wrong_key}");
}
