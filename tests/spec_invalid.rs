//! The catalogue of invalid specs: every file in tests/invalid/ starts with comment lines
//! `# expect: PATH @ LINE:COL ~ SUBSTRING`, one per error the file must produce. The spec must
//! fail with exactly that set of errors (same count; path and location equal; the message
//! contains the substring).

use std::path::PathBuf;

use kvmnet::spec::{HostIdentity, SpecError};

/// Whether a spec is valid does not depend on the host; any identity will do.
fn parse_bytes(bytes: &[u8]) -> Result<kvmnet::spec::Spec, Vec<SpecError>> {
    kvmnet::spec::parse_bytes(bytes, &HostIdentity::default())
}

#[derive(Debug)]
struct Expect {
    path: String,
    line: usize,
    col: usize,
    substring: String,
}

fn expectations(bytes: &[u8]) -> Vec<Expect> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# expect:") else {
            continue;
        };
        let (left, substring) = rest
            .split_once(" ~ ")
            .unwrap_or_else(|| panic!("bad expect line (no ' ~ '): {line}"));
        let (path, loc) = left
            .rsplit_once(" @ ")
            .unwrap_or_else(|| panic!("bad expect line (no ' @ '): {line}"));
        let (l, c) = loc
            .trim()
            .split_once(':')
            .unwrap_or_else(|| panic!("bad location in: {line}"));
        out.push(Expect {
            path: path.trim().to_string(),
            line: l.parse().expect("line number"),
            col: c.parse().expect("column number"),
            substring: substring.trim().to_string(),
        });
    }
    out
}

fn matches(e: &SpecError, x: &Expect) -> bool {
    e.path == x.path
        && e.loc.line == x.line
        && e.loc.col == x.col
        && e.message.contains(&x.substring)
}

fn check(file: &PathBuf) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let expected = expectations(&bytes);
    if expected.is_empty() {
        return Err("no '# expect:' lines".into());
    }
    let errors = match parse_bytes(&bytes) {
        Ok(_) => return Err("parsed without errors".into()),
        Err(errors) => errors,
    };
    let shown = || {
        errors
            .iter()
            .map(|e| format!("\n    got: {e}"))
            .collect::<String>()
    };
    if errors.len() != expected.len() {
        return Err(format!(
            "expected {} errors, got {}:{}",
            expected.len(),
            errors.len(),
            shown()
        ));
    }
    // Match as a set: every expectation needs its own error.
    let mut used = vec![false; errors.len()];
    for x in &expected {
        match (0..errors.len()).find(|&i| !used[i] && matches(&errors[i], x)) {
            Some(i) => used[i] = true,
            None => {
                return Err(format!(
                    "no error matches {} @ {}:{} ~ {}{}",
                    x.path,
                    x.line,
                    x.col,
                    x.substring,
                    shown()
                ));
            }
        }
    }
    // Sorted by position, as documented.
    if errors.windows(2).any(|w| w[0].loc > w[1].loc) {
        return Err(format!("errors are not sorted by location:{}", shown()));
    }
    Ok(())
}

#[test]
fn invalid_catalogue() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 35, "only {} catalogue files", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            check(f)
                .err()
                .map(|m| format!("{}: {m}", f.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} catalogue files failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
