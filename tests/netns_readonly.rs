//! Commands that only read (or remove what is there) never create a namespace: a typo in
//! `--netns` is exit 2 with `no such namespace`, not a new, empty namespace. `apply` still
//! creates the one it is given.

mod common;
use common::*;

#[test]
fn read_only_commands_refuse_a_namespace_that_does_not_exist() {
    if !privileged() {
        return;
    }
    let mut ns = Namespaces::new();
    let typo = ns.reserve("typo");
    let spec = SpecFile::new("version: 1\n");
    for args in [
        &["status", "--netns", &typo][..],
        &["status", "--netns", &typo, "--json"][..],
        &["leases", "--netns", &typo][..],
        &["plan", spec.path(), "--netns", &typo][..],
        &["destroy", "--netns", &typo][..],
        &["confirm", "--netns", &typo][..],
    ] {
        let o = ns.kvmnet(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!("no such namespace '{typo}'")),
            "{args:?}: {err}"
        );
        assert!(
            namespaces_with(&typo).is_empty(),
            "{args:?} created the namespace"
        );
        assert!(
            !ns.state_dir.join(format!("netns-{typo}")).exists(),
            "{args:?} created a state directory"
        );
    }
    // `--json` callers get the error as JSON too.
    let o = ns.kvmnet(&["status", "--netns", &typo, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("no such namespace"));
    // apply creates it, and then the others find it.
    ns.kvmnet_ok(&["apply", spec.path(), "--netns", &typo]);
    assert_eq!(namespaces_with(&typo), vec![typo.clone()]);
    ns.kvmnet_ok(&["status", "--netns", &typo]);
    ns.kvmnet_ok(&["destroy", "--netns", &typo]);
}
