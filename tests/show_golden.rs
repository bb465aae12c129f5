//! `kvmnet show | kvmnet plan -` changes nothing, for every golden case whose spec validates.
//! Each case is applied in a namespace holding the host interfaces its spec names (veths with
//! the MTUs and addresses of its `snapshot.json`), shown, compared with the spec applied,
//! planned from standard input (no changes), and destroyed. A case whose expected plan is a
//! conflict and that is refused here too must then show the empty spec (a conflict that is a
//! property of its recorded host only, like a missing br_netfilter, applies here and is
//! checked as the others are). Cases with VLANs or bonds run in a QEMU guest (a Debian kernel
//! with 8021q and bonding, as tests/vlan.rs and tests/bond.rs do) when this kernel has
//! neither; a case that sets NIC features a veth lacks (channels, LRO) cannot be applied on
//! one and is reported.
//!
//! One shell script per case does the work, run here or in the guest alike.

mod common;
use common::*;

#[path = "common/guest.rs"]
mod guest;

use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

const KVMNET: &str = env!("CARGO_BIN_EXE_kvmnet");
/// The script's exit codes besides 0 (applied, shown, planned empty, destroyed).
const REFUSED: i32 = 10;
const NO_NIC_FEATURES: i32 = 11;

/// What a golden case's spec needs of its host.
struct Needs {
    /// Host interfaces it names (uplinks, bond members, underlays), bonds and bridges aside.
    ifaces: Vec<String>,
    underlays: Vec<String>,
    /// Namespaces its veth ports ask for.
    netns: Vec<String>,
    vlan_or_bond: bool,
}

fn needs(text: &str) -> Needs {
    let doc = &YamlLoader::load_from_str(text).unwrap()[0];
    let s = |y: &Yaml| y.as_str().map(str::to_string);
    let (mut ifaces, mut bonds, mut underlays, mut netns) = (vec![], vec![], vec![], vec![]);
    for (name, u) in doc["host"]["uplinks"].as_hash().into_iter().flatten() {
        match u["members"].as_vec() {
            Some(m) => {
                bonds.extend(s(name));
                ifaces.extend(m.iter().filter_map(s));
            }
            None => ifaces.extend(s(name)),
        }
    }
    let (mut vlan, mut bridges) = (false, vec![]);
    for (name, n) in doc["networks"].as_hash().into_iter().flatten() {
        vlan |= n["mode"].as_str() == Some("vlan");
        bridges.extend(s(&n["bridge"]));
        bridges.push(format!("kvbr-{}", name.as_str().unwrap_or("")));
        ifaces.extend(s(&n["uplink"]));
        underlays.extend(s(&n["underlay"]));
    }
    for vm in doc["vms"].as_hash().into_iter().flatten().map(|(_, v)| v) {
        for p in vm["ports"].as_vec().into_iter().flatten() {
            netns.extend(s(&p["netns"]));
        }
    }
    ifaces.extend(underlays.iter().cloned());
    ifaces.retain(|i| !bonds.contains(i) && !bridges.contains(i));
    ifaces.sort();
    ifaces.dedup();
    netns.sort();
    netns.dedup();
    Needs {
        ifaces,
        underlays,
        netns,
        vlan_or_bond: vlan || !bonds.is_empty(),
    }
}

/// A golden case: its name, folder, spec text, and whether its expected plan is a conflict.
struct Case {
    name: String,
    dir: PathBuf,
    text: String,
    conflict: bool,
}

/// The golden cases whose spec validates, but those with OVN networks: their plans need
/// real OVN daemons, and tests/ovn_backend.rs applies such a spec on a lab.
fn cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(manifest_dir().join("tests/golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .filter(|d| {
            !std::fs::read_to_string(d.join("spec.yaml"))
                .unwrap_or_default()
                .contains("\novn:")
        })
        .filter(|d| {
            let v = std::process::Command::new(KVMNET)
                .args(["validate", d.join("spec.yaml").to_str().unwrap()])
                .output()
                .unwrap();
            v.status.success()
        })
        .map(|dir| Case {
            name: dir.file_name().unwrap().to_string_lossy().into_owned(),
            text: std::fs::read_to_string(dir.join("spec.yaml")).unwrap(),
            conflict: std::fs::read_to_string(dir.join("plan.txt"))
                .unwrap()
                .starts_with("conflict"),
            dir,
        })
        .collect()
}

/// The commands that make one host interface of a case in namespace `$H`.
fn interface_commands(ifname: &str, i: usize, snap: &serde_json::Value, underlay: bool) -> String {
    let mut c = format!("ip -n $H link add {ifname} type veth peer name gpeer{i} || exit 1\n");
    let links = snap["links"].as_array().cloned().unwrap_or_default();
    if let Some(mtu) = links
        .iter()
        .find(|l| l["name"] == ifname)
        .and_then(|l| l["mtu"].as_u64())
    {
        c += &format!(
            "ip -n $H link set {ifname} mtu {mtu}; ip -n $H link set gpeer{i} mtu {mtu}\n"
        );
    }
    c += &format!("ip -n $H link set {ifname} up && ip -n $H link set gpeer{i} up || exit 1\n");
    let addrs: Vec<&str> = snap["addrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["dev"] == ifname)
        .filter_map(|a| a["addr"].as_str())
        .collect();
    for a in &addrs {
        c += &format!("ip -n $H addr add {a} dev {ifname} || exit 1\n");
    }
    if underlay && addrs.is_empty() {
        c += &format!(
            "ip -n $H addr add 203.0.113.{}/24 dev {ifname} || exit 1\n",
            i + 2
        );
    }
    c
}

/// The script that checks one case: `spec` is where the script finds the spec, `host` the
/// namespace (made beforehand), `state` kvmnet's state directory, `work` a scratch folder.
fn case_script(case: &Case, spec: &str, host: &str, state: &str, work: &str) -> String {
    let n = needs(&case.text);
    let snap: serde_json::Value = std::fs::read_to_string(case.dir.join("snapshot.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or_default();
    let mut s = format!("H={host}\nK='env KVMNET_STATE_DIR={state} {KVMNET}'\nW={work}\n");
    for (i, ifname) in n.ifaces.iter().enumerate() {
        s += &interface_commands(ifname, i, &snap, n.underlays.contains(ifname));
    }
    let conflict = if case.conflict { "true" } else { "false" };
    let ethtool = if case.text.contains("ethtool:") {
        "true"
    } else {
        "false"
    };
    s += &format!(
        r#"
if ! $K apply {spec} --netns $H >$W/apply.out 2>&1; then
    if {conflict}; then
        [ "$($K show --netns $H)" = "version: 1" ] && exit {REFUSED}
        echo "a refused apply left a spec to show"; $K show --netns $H; exit 1
    fi
    {ethtool} && grep -q 'does not support' $W/apply.out && exit {NO_NIC_FEATURES}
    cat $W/apply.out; exit 1
fi
$K show --netns $H >$W/shown.yaml || exit 1
cmp $W/shown.yaml {spec} || {{ echo "show printed:"; cat $W/shown.yaml; exit 1; }}
$K show --netns $H | $K plan - --netns $H --json >$W/plan.json 2>&1 || {{ cat $W/plan.json; exit 1; }}
grep -q '"changes":\[\]' $W/plan.json || {{ echo "the shown spec plans changes:"; cat $W/plan.json; exit 1; }}
$K destroy --netns $H >$W/destroy.out 2>&1 || {{ cat $W/destroy.out; exit 1; }}
"#
    );
    s
}

/// Tallies outcomes; panics on a failed case.
#[derive(Default)]
struct Tally {
    shown: Vec<String>,
    refused: Vec<String>,
    no_nic_features: Vec<String>,
}

impl Tally {
    fn record(&mut self, case: &Case, code: i32, output: &str) {
        match code {
            0 => self.shown.push(case.name.clone()),
            REFUSED => self.refused.push(case.name.clone()),
            NO_NIC_FEATURES => self.no_nic_features.push(case.name.clone()),
            _ => panic!("{}: exit {code}\n{output}", case.name),
        }
    }

    fn report(&self, where_: &str) {
        eprintln!(
            "{where_}: shown and planned empty: {:?}; refused as their case expects: {:?}; \
             NIC features a veth lacks: {:?}",
            self.shown, self.refused, self.no_nic_features
        );
    }
}

fn kernel_has(module: &str, probe: &str) -> bool {
    Path::new(probe).exists() || sh(&format!("modprobe -q {module}")).status.success()
}

fn here_can_vlan_and_bond() -> bool {
    kernel_has("8021q", "/proc/net/vlan") && kernel_has("bonding", "/sys/class/net/bonding_masters")
}

#[test]
fn golden_cases_on_this_kernel() {
    if !privileged() {
        return;
    }
    let mut tally = Tally::default();
    let here_vlan_bond = here_can_vlan_and_bond();
    for case in cases() {
        let n = needs(&case.text);
        if n.vlan_or_bond && !here_vlan_bond {
            continue; // the guest's test has it
        }
        let mut ns = Namespaces::new();
        for name in &n.netns {
            assert!(
                !Path::new("/run/netns").join(name).exists(),
                "{}: a namespace {name} exists already; not touching it",
                case.name
            );
            ns.names.push(name.clone());
        }
        let host = ns.add("shg");
        let work = std::env::temp_dir().join(unique("shg-work"));
        std::fs::create_dir_all(&work).unwrap();
        let spec = case.dir.join("spec.yaml");
        let script = case_script(
            &case,
            spec.to_str().unwrap(),
            &host,
            ns.state_dir.to_str().unwrap(),
            work.to_str().unwrap(),
        );
        let o = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&work);
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        tally.record(&case, o.status.code().unwrap_or(-1), &out);
    }
    tally.report("this kernel");
    assert!(tally.shown.len() >= 18 && tally.refused.len() >= 3);
}

/// The cases with VLANs or bonds, in a guest whose kernel has both (unless this one does).
#[test]
fn golden_cases_with_vlans_and_bonds_in_a_guest() {
    if !privileged() || here_can_vlan_and_bond() {
        return;
    }
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| needs(&c.text).vlan_or_bond)
        .collect();
    assert!(cases.len() >= 10, "{}", cases.len());
    let t = Duration::from_secs(180);
    let mut g = guest::Guest::builder()
        .name("show-golden")
        .modules(&[
            "8021q",
            "bonding",
            "bridge",
            "veth",
            "vxlan",
            "tun",
            "nf_tables",
            "nft_meta_bridge",
            "nft_reject",
            "nft_reject_inet",
            "nft_ct",
        ])
        .host_root()
        .memory_mb(384)
        .boot();
    g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
    let mut tally = Tally::default();
    for (i, case) in cases.iter().enumerate() {
        // The guest's /tmp is its own, mounted at /host/tmp for the host's programs.
        let (spec, work) = (format!("/tmp/case{i}.yaml"), format!("/tmp/case{i}"));
        g.write_file(&format!("/host{spec}"), case.text.as_bytes(), t);
        let host = format!("shg{i}");
        let mut script = format!(
            "mkdir -p {work}\nip netns add {host} && ip -n {host} link set lo up || exit 1\n"
        );
        script += &case_script(case, &spec, &host, &format!("{work}/state"), &work);
        g.write_file(&format!("/host{work}.sh"), script.as_bytes(), t);
        let (code, out) = g.run(&format!("host sh {work}.sh 2>&1"), t);
        tally.record(case, code, &out);
    }
    tally.report("the guest");
    assert!(tally.shown.len() >= 8, "{:?}", tally.shown);
    g.shutdown(Duration::from_secs(20));
}
