//! The Ansible collection in contrib/ansible: ansible-playbook (connection local) runs its
//! module kvmnet.kvmnet.kvmnet_spec with the kvmnet just built against a namespace the test
//! made. Check mode changes nothing and shows the plan as a diff, the first real run
//! changes, the second reports no change, state absent takes everything away again, and
//! kvmnet's errors fail the task with its messages.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory with the collection where Ansible finds it, a playbook and an empty
/// configuration (so no ansible.cfg of the machine or the user applies); removed on drop.
struct Ansible {
    dir: PathBuf,
}

impl Ansible {
    fn new(scope: &str, spec: &str, state_dir: &Path) -> Ansible {
        let dir = std::env::temp_dir().join(unique("ansible"));
        let ns = dir.join("collections/ansible_collections/kvmnet");
        std::fs::create_dir_all(&ns).unwrap();
        std::os::unix::fs::symlink(manifest_dir().join("contrib/ansible"), ns.join("kvmnet"))
            .unwrap();
        std::fs::write(dir.join("ansible.cfg"), "").unwrap();
        let playbook = format!(
            "- hosts: localhost\n  gather_facts: false\n  environment:\n    KVMNET_STATE_DIR: {state}\n  tasks:\n    - name: the spec\n      kvmnet.kvmnet.kvmnet_spec:\n        src: {spec}\n        state: \"{{{{ spec_state | default('present') }}}}\"\n        netns: {scope}\n        binary: {bin}\n",
            state = state_dir.display(),
            bin = env!("CARGO_BIN_EXE_kvmnet"),
        );
        std::fs::write(dir.join("play.yml"), playbook).unwrap();
        Ansible { dir }
    }

    /// Runs the playbook with `args`; returns (exit status, output, changed count from the
    /// PLAY RECAP).
    fn play(&self, args: &[&str]) -> (bool, String, u32) {
        let o = Command::new("ansible-playbook")
            .args(["-i", "localhost,", "-c", "local"])
            .arg(self.dir.join("play.yml"))
            .args(args)
            .env("ANSIBLE_CONFIG", self.dir.join("ansible.cfg"))
            .env("ANSIBLE_COLLECTIONS_PATH", self.dir.join("collections"))
            .env("ANSIBLE_HOME", self.dir.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("tmp"))
            .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
            .env("ANSIBLE_NOCOLOR", "1")
            .env_remove("ANSIBLE_STDOUT_CALLBACK")
            .output()
            .expect("ansible-playbook runs");
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let changed = out
            .lines()
            .find(|l| l.starts_with("localhost") && l.contains("changed="))
            .and_then(|l| l.split("changed=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no PLAY RECAP in\n{out}"));
        (o.status.success(), out, changed)
    }

    fn play_ok(&self, args: &[&str]) -> (String, u32) {
        let (success, out, changed) = self.play(args);
        assert!(success, "ansible-playbook {args:?} failed:\n{out}");
        (out, changed)
    }
}

impl Drop for Ansible {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn links(ns: &str) -> Vec<String> {
    ok(&format!("ip -n {ns} -o link"))
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .collect()
}

fn ansible_there() -> bool {
    let there = sh("command -v ansible-playbook").status.success();
    if !there {
        assert!(
            std::env::var_os("CI").is_none(),
            "ansible-playbook is missing (Debian package ansible-core), and CI must not skip"
        );
        eprintln!("skipping: ansible-playbook is missing (Debian package ansible-core)");
    }
    there
}

#[test]
fn ansible_module_plans_applies_and_destroys() {
    if !privileged() || !ansible_there() {
        return;
    }
    let mut ns = Namespaces::new();
    let host = ns.add("ans");
    let guest = ns.reserve("ansg");
    let spec = SpecFile::new(&format!(
        "version: 1\nnetworks:\n  lab:\n    mode: isolated\n    bridge: ka-br\n    ipv4: 10.79.0.1/24\nvms:\n  g:\n    ports: [ {{ network: lab, name: ka-p, kind: veth, netns: {guest} }} ]\n"
    ));
    let play = Ansible::new(&host, spec.path(), &ns.state_dir);
    let guest_exists = || Path::new("/run/netns").join(&guest).exists();

    // Check mode: changed, the plan shown as a diff, nothing made.
    let (out, changed) = play.play_ok(&["--check", "--diff"]);
    assert_eq!(changed, 1, "{out}");
    for want in [
        format!("--- before: kvmnet netns {host} (live)"),
        format!("+++ after: {}", spec.path()),
        format!("+netns {guest}"),
        "+bridge ka-br (".into(),
        "+veth ka-p (".into(),
    ] {
        assert!(out.contains(&want), "{want:?} in\n{out}");
    }
    assert_eq!(links(&host), ["lo"]);
    assert!(!guest_exists());

    let (out, changed) = play.play_ok(&[]);
    assert_eq!(changed, 1, "{out}");
    assert!(links(&host).contains(&"ka-br".to_string()));
    assert!(guest_exists());
    let (out, changed) = play.play_ok(&["--diff"]);
    assert_eq!(changed, 0, "the second run changes nothing:\n{out}");

    // Absent: check mode shows what would go and leaves it; then it goes, once.
    let (out, changed) = play.play_ok(&["--check", "--diff", "-e", "spec_state=absent"]);
    assert_eq!(changed, 1, "{out}");
    assert!(out.contains("-bridge ka-br ("), "{out}");
    assert!(links(&host).contains(&"ka-br".to_string()));
    let (out, changed) = play.play_ok(&["-e", "spec_state=absent"]);
    assert_eq!(changed, 1, "{out}");
    assert_eq!(links(&host), ["lo"]);
    assert!(!guest_exists());
    let (out, changed) = play.play_ok(&["-e", "spec_state=absent"]);
    assert_eq!(changed, 0, "{out}");

    // An invalid spec fails the task with kvmnet's message, its place included.
    std::fs::write(
        &spec.0,
        std::fs::read_to_string(&spec.0)
            .unwrap()
            .replace("isolated", "isolatd"),
    )
    .unwrap();
    let (success, out, changed) = play.play(&[]);
    assert!(!success && changed == 0, "{out}");
    assert!(
        out.contains(
            "kvmnet failed (invalid): networks.lab.mode:4:11: 'isolatd' is not a network mode"
        ),
        "{out}"
    );
    assert_eq!(links(&host), ["lo"]);
}
