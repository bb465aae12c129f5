//! The ports bench measures between: throwaway ports it adds to the spec in force and
//! applies through the engine (so they carry kvmnet's real guard and firewall), or two
//! existing VMs' veth ports (`--between`).
//!
//! Throwaway ports are the spec in force plus four veth ports on one network: two with a
//! typical policy (the guard, a stateful firewall dropping what its rules do not accept) and
//! two with none (`antispoof: false`, no firewall). The engine applies that spec, and applies
//! the spec in force again afterwards, which removes the ports, their namespaces, their
//! nftables elements and any sysctl the firewall borrowed. A [`Throwaway`] that is dropped
//! without [`Throwaway::restore`] (an error, a signal, a panic) restores on drop. Nothing of
//! this is recorded as the applied spec: the spec in force stays what it was.
//!
//! When a daemon runs for the scope, it is the daemon that applies: bench sends it the
//! combined spec as ephemeral VMs on a lease ([`super::lease`]), which it enforces without
//! accepting, and releases them afterwards.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::json;
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

use super::lease::DaemonLease;
use super::measure::{Endpoint, IPERF_PORT, LATENCY_PORT};
use crate::engine::{self, EngineError};
use crate::spec::{Mode, Network, PortKind, Spec};
use crate::statedir::StateDir;

#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error(
        "no spec was applied in this scope: bench measures on a network of the spec in force (kvmnet apply one first)"
    )]
    NoSpec,
    #[error(
        "the spec in force has no nat, routed or isolated network whose ports may reach each other: name one with --network, or measure two VMs' veth ports with --between A B"
    )]
    NoNetwork,
    #[error("no network '{name}' in the spec in force (it has: {have})")]
    UnknownNetwork { name: String, have: String },
    #[error(
        "network '{name}' is a {mode} network: bench adds its ports only to nat, routed and isolated networks, whose subnet is this host's (on a LAN, an address bench picked could be another machine's); use --between A B with two VMs' veth ports"
    )]
    Unsuitable { name: String, mode: String },
    #[error(
        "network '{0}' isolates its ports (isolate_ports: true): two ports on it cannot reach each other"
    )]
    Isolated(String),
    #[error("network '{0}' has no four free addresses outside its ports' and its DHCP range")]
    NoAddresses(String),
    #[error(
        "the spec in force already has a VM named '{0}': a bench's leftover? apply the spec without it first"
    )]
    NameTaken(String),
    #[error(
        "the host does not match the spec in force ({0} changes; `kvmnet show` prints the spec and `kvmnet plan` of it lists them): after the bench it would match the spec, not be as it was. Apply the spec first"
    )]
    Drift(usize),
    #[error("the scope's daemon refused bench's ports: {0}")]
    Daemon(Box<crate::daemon::api::ApiError>),
    #[error("the scope's daemon stopped answering")]
    DaemonGone,
    #[error(
        "the daemon removed bench's ports before bench was done (a spec was applied or reloaded through it, or it restarted): the measurement is incomplete"
    )]
    Lost,
    #[error(
        "a change applied with --confirm-within awaits confirmation: confirm it or let it revert first"
    )]
    Pending,
    #[error("no VM '{0}' in the spec in force")]
    UnknownVm(String),
    #[error(
        "VM '{vm}' has no veth port (its ports: {ports}): bench runs iperf3 and its latency loop at a port's far end, and a tap's or macvtap's far end is inside the VM. --between takes VMs with a veth port (kind: veth)"
    )]
    NoVeth { vm: String, ports: String },
    #[error(
        "VM '{vm}''s port {port} has no ipv4 in the spec (dhcp_client): bench needs its address"
    )]
    NoAddress { vm: String, port: String },
    #[error("cannot add bench's ports to the spec in force: {0}")]
    Yaml(String),
    #[error("{0}")]
    Engine(Box<EngineError>),
    #[error(
        "putting the spec in force back after the bench failed: {0}. Apply it again (`kvmnet show` prints it) to remove bench's ports"
    )]
    Restore(Box<EngineError>),
}

impl From<EngineError> for PortsError {
    fn from(e: EngineError) -> Self {
        PortsError::Engine(Box::new(e))
    }
}

/// The spec in force in `scope`, parsed, with its source and text.
pub fn in_force(scope: &str) -> Result<(Spec, String, Vec<u8>), PortsError> {
    let (source, text) = crate::show::recorded(scope)?.ok_or(PortsError::NoSpec)?;
    let (id, _) = crate::host_macs::host_identity(scope);
    let spec = engine::parse(&source, &text, &id)?;
    Ok((spec, source, text))
}

/// The first veth port of each VM, by name, as the two ends of a measurement.
pub fn between(spec: &Spec, a: &str, b: &str) -> Result<(Endpoint, Endpoint), PortsError> {
    let end = |vm: &str| {
        let v = spec
            .vms
            .get(vm)
            .ok_or_else(|| PortsError::UnknownVm(vm.to_string()))?;
        let Some(p) = v.ports.iter().find(|p| p.kind == PortKind::Veth) else {
            let ports: Vec<String> = v
                .ports
                .iter()
                .map(|p| format!("{} ({})", p.name, kind_name(p.kind)))
                .collect();
            return Err(PortsError::NoVeth {
                vm: vm.to_string(),
                ports: ports.join(", "),
            });
        };
        let no_address = || PortsError::NoAddress {
            vm: vm.to_string(),
            port: p.name.clone(),
        };
        Ok(Endpoint {
            port: p.name.clone(),
            netns: p.netns.clone().ok_or_else(no_address)?,
            addr: p.ipv4.ok_or_else(no_address)?.addr,
        })
    };
    Ok((end(a)?, end(b)?))
}

fn kind_name(k: PortKind) -> &'static str {
    match k {
        PortKind::Tap => "tap",
        PortKind::Veth => "veth",
        PortKind::Macvtap => "macvtap",
    }
}

/// The network bench's ports go on: the one named, or the first (by name) that can take them.
pub fn choose<'a>(spec: &'a Spec, name: Option<&str>) -> Result<&'a Network, PortsError> {
    let suitable = |n: &Network| match n.mode {
        Mode::Nat | Mode::Routed | Mode::Isolated if n.isolate_ports => {
            Err(PortsError::Isolated(n.name.clone()))
        }
        Mode::Nat | Mode::Routed | Mode::Isolated if n.ipv4.is_some() => Ok(()),
        _ => Err(PortsError::Unsuitable {
            name: n.name.clone(),
            mode: format!("{:?}", n.mode).to_lowercase(),
        }),
    };
    let Some(name) = name else {
        return spec
            .networks
            .values()
            .find(|n| suitable(n).is_ok())
            .ok_or(PortsError::NoNetwork);
    };
    let n = spec
        .networks
        .get(name)
        .ok_or_else(|| PortsError::UnknownNetwork {
            name: name.to_string(),
            have: spec.networks.keys().cloned().collect::<Vec<_>>().join(", "),
        })?;
    suitable(n).map(|()| n)
}

/// `n` addresses of the network's subnet that no port declares, that are not its gateway and
/// not in its DHCP range (a lease may hold one), from the top of the subnet down.
pub fn free_addrs(spec: &Spec, net: &Network, n: usize) -> Result<Vec<Ipv4Addr>, PortsError> {
    let none = || PortsError::NoAddresses(net.name.clone());
    let cidr = net.ipv4.ok_or_else(none)?;
    let taken: BTreeSet<Ipv4Addr> = spec
        .vms
        .values()
        .flat_map(|v| v.ports.iter().filter_map(|p| p.ipv4.map(|c| c.addr)))
        .chain([cidr.addr])
        .collect();
    let range = net.dhcp.as_ref().and_then(|d| d.range);
    let in_range = |a: Ipv4Addr| range.is_some_and(|(lo, hi)| lo <= a && a <= hi);
    let first = u32::from(cidr.network().addr).saturating_add(1);
    let last = u32::from(cidr.broadcast()).saturating_sub(1);
    let out: Vec<Ipv4Addr> = (first..=last)
        .rev()
        .map(Ipv4Addr::from)
        .filter(|a| !taken.contains(a) && !in_range(*a))
        .take(n)
        .collect();
    match out.len() == n && cidr.prefix < 31 {
        true => Ok(out),
        false => Err(none()),
    }
}

/// One throwaway port: its tag (VM `kvmnet-bench-TAG`, port `kvbench-TAG`) and whether it
/// carries the typical policy.
struct Planned {
    tag: &'static str,
    policy: bool,
    addr: Ipv4Addr,
}

/// Tags of the four ports: `p` with policy, `n` with none; `a` sends, `b` serves.
const TAGS: [(&str, bool); 4] = [("pa", true), ("pb", true), ("na", false), ("nb", false)];

fn vm_name(tag: &str) -> String {
    format!("kvmnet-bench-{tag}")
}

/// The namespace of a throwaway port's far end: the process ID keeps two benches of
/// different scopes (namespaces are global) apart.
fn netns_name(tag: &str) -> String {
    format!("kvmnet-bench-{}-{tag}", std::process::id())
}

/// The typical policy of the "with policy" ports: the guard (on by default) and a firewall
/// that drops inbound traffic but what bench and ICMP echo need, and rejects outbound SMTP.
fn policy() -> serde_json::Value {
    json!({
        "inbound": { "policy": "drop", "rules": [
            { "proto": "tcp", "ports": [IPERF_PORT, format!("{}-{}", LATENCY_PORT, LATENCY_PORT + 1)] },
            { "proto": "udp", "ports": [IPERF_PORT] },
            { "proto": "icmp", "icmp_types": ["echo-request"] },
        ]},
        "outbound": { "rules": [ { "proto": "tcp", "ports": [25], "action": "reject" } ] },
    })
}

/// What the report says the "with policy" ports carry.
pub const POLICY_WORDS: &str = "the guard (antispoof) and a stateful firewall: inbound drop with 3 accept rules, outbound 1 reject rule";

fn port_entry(network: &str, p: &Planned, index: u8) -> serde_json::Value {
    let pid = std::process::id().to_be_bytes();
    let mut port = json!({
        "network": network,
        "name": format!("kvbench-{}", p.tag),
        "kind": "veth",
        "netns": netns_name(p.tag),
        // Written, locally administered MACs: derived ones would be recorded in the state
        // directory (macs.json) and outlive the bench.
        "mac": format!("02:6b:76:{:02x}:{:02x}:{:02x}", pid[2], pid[3], index),
        "ipv4": p.addr.to_string(),
        "antispoof": p.policy,
    });
    if p.policy {
        port["firewall"] = policy();
    }
    json!({ "ports": [port] })
}

/// The spec in force with bench's VMs added (its text, re-emitted: it is applied, never
/// recorded).
fn with_ports(text: &[u8], network: &str, ports: &[Planned]) -> Result<String, PortsError> {
    let yaml = |e: String| PortsError::Yaml(e);
    let text = std::str::from_utf8(text).map_err(|e| yaml(e.to_string()))?;
    let mut docs = YamlLoader::load_from_str(text).map_err(|e| yaml(e.to_string()))?;
    let Some(Yaml::Hash(root)) = docs.get_mut(0) else {
        return Err(yaml("the spec is not a mapping".into()));
    };
    let key = Yaml::String("vms".into());
    if !matches!(root.get(&key), Some(Yaml::Hash(_))) {
        root.insert(key.clone(), Yaml::Hash(Default::default()));
    }
    let Some(Yaml::Hash(vms)) = root.get_mut(&key) else {
        return Err(yaml("vms is not a mapping".into()));
    };
    for (i, p) in ports.iter().enumerate() {
        let name = vm_name(p.tag);
        let entry = port_entry(network, p, i as u8).to_string();
        let parsed = YamlLoader::load_from_str(&entry).map_err(|e| yaml(e.to_string()))?;
        if vms
            .insert(Yaml::String(name.clone()), parsed[0].clone())
            .is_some()
        {
            return Err(PortsError::NameTaken(name));
        }
    }
    let mut out = String::new();
    YamlEmitter::new(&mut out)
        .dump(&docs[0])
        .map_err(|e| yaml(e.to_string()))?;
    Ok(out)
}

/// Plans `spec` in `scope` and applies it, recorded in the audit log as `action`.
fn apply(
    scope: &str,
    spec: &Spec,
    source: &str,
    text: &[u8],
    action: &str,
) -> Result<(), EngineError> {
    let p = engine::plan(Some(spec), scope, source)?;
    engine::execute(&p, action, &engine::spec_hash(text), None)
}

/// Who applies the ports and puts the spec back.
enum How {
    /// bench, through the engine: the spec in force and where it came from.
    Direct {
        scope: String,
        spec: Box<Spec>,
        source: String,
        text: Vec<u8>,
    },
    /// The scope's daemon, for a lease.
    Daemon(DaemonLease),
}

/// Throwaway ports applied in a scope; the spec in force is applied again when restored or
/// dropped.
pub struct Throwaway {
    how: How,
    restored: bool,
    /// The network's name, bridge and subnet, for the report.
    pub network: String,
    /// (client, server) of the ports with policy, then of those without.
    pub with_policy: (Endpoint, Endpoint),
    pub without_policy: (Endpoint, Endpoint),
}

impl Throwaway {
    /// Adds the four ports on `network` (or the first that can take them) and applies, or
    /// has the scope's daemon apply them for a lease.
    pub fn make(scope: &str, network: Option<&str>) -> Result<Throwaway, PortsError> {
        let sd = StateDir::for_scope(scope);
        if engine::load_pending(&sd)?.is_some() {
            return Err(PortsError::Pending);
        }
        let daemon = crate::daemon::api::daemon_listening(&sd.dir);
        let (spec, source, text) = match daemon {
            // The daemon's accepted spec: what it enforces, and what it checks bench built on.
            true => {
                let a = crate::daemon::accepted::load(&sd.dir)
                    .map_err(EngineError::from)?
                    .ok_or(PortsError::NoSpec)?;
                let (id, _) = crate::host_macs::host_identity(scope);
                let source = "(accepted spec)".to_string();
                (engine::parse(&source, &a.text, &id)?, source, a.text)
            }
            false => {
                let (spec, source, text) = in_force(scope)?;
                let drift = engine::plan(Some(&spec), scope, &source)?.plan.steps.len();
                if drift > 0 {
                    return Err(PortsError::Drift(drift));
                }
                (spec, source, text)
            }
        };
        let net = choose(&spec, network)?;
        let addrs = free_addrs(&spec, net, TAGS.len())?;
        let planned: Vec<Planned> = TAGS
            .iter()
            .zip(addrs)
            .map(|(&(tag, policy), addr)| Planned { tag, policy, addr })
            .collect();
        let bench_text = with_ports(&text, &net.name, &planned)?;
        let end = |i: usize| Endpoint {
            port: format!("kvbench-{}", planned[i].tag),
            netns: netns_name(planned[i].tag),
            addr: planned[i].addr,
        };
        let network = format!(
            "{} (bridge {}, {})",
            net.name,
            net.bridge,
            net.ipv4
                .map(|c| c.network().to_string())
                .unwrap_or_default()
        );
        let (with_policy, without_policy) = ((end(0), end(1)), (end(2), end(3)));
        if daemon {
            let lease = DaemonLease::begin(&sd.dir, &bench_text, &engine::spec_hash(&text))?;
            return Ok(Throwaway {
                how: How::Daemon(lease),
                restored: false,
                network,
                with_policy,
                without_policy,
            });
        }
        let (id, _) = crate::host_macs::host_identity(scope);
        let bench_spec = engine::parse("(bench)", bench_text.as_bytes(), &id)?;
        let t = Throwaway {
            how: How::Direct {
                scope: scope.to_string(),
                spec: Box::new(spec.clone()),
                source,
                text,
            },
            restored: false,
            network,
            with_policy,
            without_policy,
        };
        // From here on, a failure restores (the guard is made before the apply).
        apply(
            scope,
            &bench_spec,
            "(bench)",
            bench_text.as_bytes(),
            "bench",
        )?;
        Ok(t)
    }

    /// Whether the ports are still there: a daemon may have dropped them.
    pub fn check(&self) -> Result<(), PortsError> {
        match &self.how {
            How::Daemon(l) if l.lost() => Err(PortsError::Lost),
            _ => Ok(()),
        }
    }

    /// Applies the spec in force again: bench's ports and namespaces are removed.
    pub fn restore(mut self) -> Result<(), PortsError> {
        self.restored = true;
        let lost = self.check();
        self.put_back()?;
        lost
    }

    /// Applies the spec in force again, a second time if the first fails: the second plans
    /// from the host as the first left it (a port someone removed meanwhile makes the first
    /// plan fail and roll back).
    fn put_back(&mut self) -> Result<(), PortsError> {
        let (scope, spec, source, text) = match &mut self.how {
            How::Daemon(lease) => return lease.release(),
            How::Direct {
                scope,
                spec,
                source,
                text,
            } => (scope, spec, source, text),
        };
        let once = || apply(scope, spec, source, text, "bench-restore");
        once()
            .or_else(|_| once())
            .map_err(|e| PortsError::Restore(Box::new(e)))
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        if let Err(e) = self.put_back() {
            crate::log::line(crate::log::Level::Error, &format!("kvmnet: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "version: 1\nnetworks:\n  iso: { mode: isolated, ipv4: 10.9.0.1/24, isolate_ports: true }\n  lan: { mode: nat, ipv4: 10.8.0.1/24, dhcp: { range: 10.8.0.200-10.8.0.254 } }\nvms:\n  web: { ports: [ { network: lan, ipv4: 10.8.0.199 } ] }\n";

    fn parse(text: &str) -> Spec {
        engine::parse("t", text.as_bytes(), &Default::default()).expect("valid")
    }

    #[test]
    fn chooses_the_first_network_whose_ports_meet() {
        let spec = parse(SPEC);
        assert_eq!(choose(&spec, None).unwrap().name, "lan");
        assert!(matches!(
            choose(&spec, Some("iso")),
            Err(PortsError::Isolated(_))
        ));
        assert!(matches!(
            choose(&spec, Some("nope")),
            Err(PortsError::UnknownNetwork { .. })
        ));
    }

    #[test]
    fn free_addresses_avoid_ports_gateway_and_dhcp() {
        let spec = parse(SPEC);
        let a = free_addrs(&spec, &spec.networks["lan"], 4).unwrap();
        let want: Vec<Ipv4Addr> = ["10.8.0.198", "10.8.0.197", "10.8.0.196", "10.8.0.195"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(a, want);
    }

    #[test]
    fn bench_spec_adds_four_veth_ports_and_parses() {
        let spec = parse(SPEC);
        let addrs = free_addrs(&spec, &spec.networks["lan"], 4).unwrap();
        let planned: Vec<Planned> = TAGS
            .iter()
            .zip(addrs)
            .map(|(&(tag, policy), addr)| Planned { tag, policy, addr })
            .collect();
        let text = with_ports(SPEC.as_bytes(), "lan", &planned).unwrap();
        let bench = parse(&text);
        assert_eq!(bench.vms.len(), 5);
        let pa = &bench.vms["kvmnet-bench-pa"].ports[0];
        assert!(pa.antispoof && pa.firewall.is_some() && pa.kind == PortKind::Veth);
        let nb = &bench.vms["kvmnet-bench-nb"].ports[0];
        assert!(!nb.antispoof && nb.firewall.is_none());
        assert_eq!(bench.networks, spec.networks);
    }

    #[test]
    fn between_refuses_taps() {
        let spec = parse(SPEC);
        let e = between(&spec, "web", "web").unwrap_err().to_string();
        assert!(e.contains("no veth port") && e.contains("(tap)"), "{e}");
    }
}
