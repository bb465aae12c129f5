//! The command line documents itself: every command's --help has an example and names the
//! environment variables kvmnet reads; the man pages and shell completions made at build
//! time from the same definition cover every command, and render or parse cleanly.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

fn kvmnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmnet"))
        .args(args)
        .output()
        .expect("kvmnet runs")
}

fn stdout_ok(args: &[&str]) -> String {
    let o = kvmnet(args);
    assert!(
        o.status.success(),
        "kvmnet {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The commands `kvmnet --help` lists (not `help` itself).
fn subcommands() -> Vec<String> {
    let help = stdout_ok(&["--help"]);
    let list = help
        .split_once("Commands:\n")
        .expect("a Commands section")
        .1
        .split("\n\n")
        .next()
        .unwrap();
    let names: Vec<String> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    for known in [
        "validate", "plan", "apply", "confirm", "destroy", "status", "leases", "daemon",
    ] {
        assert!(names.iter().any(|n| n == known), "{known} in {names:?}");
    }
    names
}

/// Every `KVMNET_*` (and other) variable the sources read with std::env::var(_os).
fn variables_read() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for call in ["env::var(\"", "env::var_os(\""] {
                    for (i, _) in text.match_indices(call) {
                        let rest = &text[i + call.len()..];
                        out.insert(rest[..rest.find('"').unwrap()].to_string());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    walk(&root.join("src"), &mut out);
    walk(&root.join("crates/core/src"), &mut out);
    out
}

#[test]
fn every_help_has_an_example_and_its_environment() {
    let mut helps = stdout_ok(&["--help"]);
    for sub in subcommands() {
        let help = stdout_ok(&[&sub, "--help"]);
        assert!(
            help.contains(&format!("Example:\n  kvmnet {sub}")),
            "{sub}: {help}"
        );
        assert!(help.contains("Environment:"), "{sub}: {help}");
        helps.push_str(&help);
    }
    let vars = variables_read();
    assert!(vars.contains("KVMNET_STATE_DIR"), "{vars:?}");
    for v in &vars {
        assert!(helps.contains(&format!("  {v} ")), "no --help mentions {v}");
    }
    // Each command names the state directory when it uses one.
    for sub in [
        "plan", "apply", "destroy", "status", "leases", "confirm", "daemon",
    ] {
        assert!(
            stdout_ok(&[sub, "--help"]).contains("KVMNET_STATE_DIR"),
            "{sub}"
        );
    }
    for sub in ["apply", "destroy"] {
        assert!(
            stdout_ok(&[sub, "--help"]).contains("KVMNET_FAIL_AFTER"),
            "{sub}"
        );
    }
}

#[test]
fn man_pages_for_every_command_render() {
    let dir = std::env::temp_dir().join(format!("kvmnet-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    stdout_ok(&["man", dir.to_str().unwrap()]);
    let mut pages = vec!["kvmnet.1".to_string()];
    pages.extend(subcommands().iter().map(|s| format!("kvmnet-{s}.1")));
    let have_man = Command::new("man").arg("--version").output().is_ok();
    for page in &pages {
        let path = dir.join(page);
        assert!(path.exists(), "{page} missing");
        let o = if have_man {
            Command::new("man")
                .arg("-l")
                .arg(&path)
                .env("MANWIDTH", "80")
                .output()
        } else {
            Command::new("groff")
                .args(["-man", "-Tutf8"])
                .arg(&path)
                .output()
        }
        .expect("man or groff runs");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let name = page.trim_end_matches(".1");
        assert!(
            text.contains("NAME") && text.contains(name),
            "{page}:\n{text}"
        );
        assert!(text.contains("Example:"), "{page}:\n{text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_cover_every_command() {
    let subs = subcommands();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_ok(&["completions", shell]);
        for sub in &subs {
            assert!(
                script.contains(sub.as_str()),
                "{shell} completion lacks {sub}"
            );
        }
    }
    let bash = stdout_ok(&["completions", "bash"]);
    let path = std::env::temp_dir().join(format!("kvmnet-{}.bash", std::process::id()));
    std::fs::write(&path, &bash).unwrap();
    let o = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(kvmnet(&["completions", "tcsh"]).status.code(), Some(2));
}
