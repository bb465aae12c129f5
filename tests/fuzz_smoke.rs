//! A short run of every fuzz target on stable (no libFuzzer): each file of the committed
//! corpus (`fuzz/corpus/TARGET/`), then deterministic mutations of them. Same target
//! functions as `fuzz/fuzz_targets/`, so what the long runs found stays fixed. Pure: needs
//! no root (the API target uses a socket pair). `KVMNET_FUZZ_SMOKE_MUTATIONS` sets the number
//! of mutations per target (default 3,000).

#[allow(dead_code, unused_imports)]
#[path = "../fuzz/src/lib.rs"]
mod fuzz;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fuzz::mutate::{Rng, mutate};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

/// Runs `f` on `data`; on a panic, keeps the input where `cargo fuzz run TARGET FILE`
/// can replay it, and fails naming it.
fn run_one(target: &str, f: fuzz::Target, data: &[u8], what: &str) {
    if catch_unwind(AssertUnwindSafe(|| f(data))).is_err() {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
        std::fs::create_dir_all(&dir).unwrap();
        let keep = dir.join(format!("{target}-{what}"));
        std::fs::write(&keep, data).unwrap();
        panic!("{target}: {what} failed; input kept in {}", keep.display());
    }
}

fn smoke(target: &str) {
    let f = fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target of that name")
        .1;
    let files = corpus(target);
    for (path, data) in &files {
        let name = path.file_name().unwrap().to_string_lossy();
        run_one(target, f, data, &format!("corpus-{name}"));
    }
    let n: usize = std::env::var("KVMNET_FUZZ_SMOKE_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = Rng::new(target.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }));
    for i in 0..n {
        let base = &files[rng.below(files.len())].1;
        let other = &files[rng.below(files.len())].1;
        let input = mutate(&mut rng, base, other);
        run_one(target, f, &input, &format!("mutation-{i}"));
    }
}

#[test]
fn spec() {
    smoke("spec");
}

#[test]
fn spec_cache() {
    smoke("spec_cache");
}

#[test]
fn dhcp() {
    smoke("dhcp");
}

#[test]
fn dhcp6() {
    smoke("dhcp6");
}

#[test]
fn ra_rs() {
    smoke("ra_rs");
}

#[test]
fn dns() {
    smoke("dns");
}

#[test]
fn api() {
    smoke("api");
}

#[test]
fn import_libvirt() {
    smoke("import_libvirt");
}

#[test]
fn ovsdb() {
    smoke("ovsdb");
}

/// Every target has a corpus and a test above; a new target cannot be left out.
#[test]
fn every_target_is_smoked() {
    let here = include_str!("fuzz_smoke.rs");
    for (name, _) in fuzz::TARGETS {
        assert!(
            here.contains(&format!("smoke(\"{name}\")")),
            "no smoke test for {name}"
        );
        assert!(!corpus(name).is_empty());
    }
}
