//! scripts/check-licences judges SPDX expressions as documented: `A OR B` passes when any
//! alternative is allowed, `A AND B` only when all are. (CI runs it over every dependency.)

use std::process::Command;

fn judge(exprs: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/check-licences"
    ))
    .arg("--expr")
    .args(exprs)
    .output()
    .expect("scripts/check-licences runs (python3)");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn licence_expressions() {
    let allowed = [
        "MIT",
        "MIT OR Apache-2.0",
        "MIT/Apache-2.0",
        "Unlicense OR MIT",
        "(MIT OR Apache-2.0) AND Unicode-3.0",
        "MIT OR Apache-2.0 OR LGPL-2.1-or-later",
        "Apache-2.0 WITH LLVM-exception",
        "BSD-3-Clause AND ISC",
    ];
    let (code, out) = judge(&allowed);
    assert_eq!(code, Some(0), "{out}");
    for (e, not_allowed) in [
        ("GPL-3.0-only", true),
        ("MIT AND GPL-3.0-only", true),
        ("(MIT OR GPL-2.0) AND AGPL-3.0", true),
        ("(MIT", true),
        ("", true),
        ("GPL-2.0 OR MIT", false),
    ] {
        let (code, out) = judge(&[e]);
        let expected = if not_allowed { 1 } else { 0 };
        assert_eq!(code, Some(expected), "{e:?}: {out}");
        assert_eq!(
            out.trim_end().ends_with(": not allowed"),
            not_allowed,
            "{e:?}: {out}"
        );
    }
}
