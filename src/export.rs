//! `kvmnet export`: a VM's ports as its launcher wants them — QEMU arguments, libvirt
//! `<interface>` elements, or a cloud-init network config. MACs are the ones a plan would
//! give (derived MACs settled against the ports the scope has and the record of the last
//! apply, as [`crate::host_macs`] settles them), so what a VM is started with is what the
//! bridge, the guard and the DHCP server expect.
//!
//! Only the output is printed on stdout; notes (a veth port that is not a NIC, the
//! character device a macvtap needs) go to stderr as `#` lines, so `$(kvmnet export ...)`
//! and `xargs` see nothing but the output.

use std::collections::BTreeMap;

use crate::backend::netns;
use crate::engine::{self, EngineError};
use crate::spec::{Mode, Network, Port, PortKind, Spec};
use crate::statedir::StateDir;

pub use crate::cli::{ExportArgs, ExportFormat as Format};

/// What one port looks like on this host: its live interface index and MTU where the port
/// exists in the scope.
#[derive(Clone, Copy, Debug, Default)]
pub struct Live {
    pub ifindex: Option<u32>,
    pub mtu: Option<u32>,
}

pub fn run(a: &ExportArgs, scope: &str) -> Result<(), EngineError> {
    let spec = load_spec(a, scope)?;
    let live = live_links(a.netns.as_deref())?;
    let spec = settle(spec, scope, &live)?;
    let ports = ports_of(&spec, &a.vm, a.port.as_deref())?;
    let mut notes = Vec::new();
    let out = match a.format {
        Format::Qemu => qemu(&ports, &live, &mut notes),
        Format::Libvirt => libvirt(&ports, &mut notes),
        Format::CloudInit => cloud_init(&spec, &ports, &live, &mut notes),
    };
    for n in &notes {
        eprintln!("# {n}");
    }
    if out.is_empty() {
        return Err(EngineError::Usage(format!(
            "VM '{}' has no port a {} launcher can use (veth ports are namespaces' interfaces, not VM NICs)",
            a.vm,
            match a.format {
                Format::Qemu => "QEMU",
                Format::Libvirt => "libvirt",
                Format::CloudInit => "cloud-init",
            }
        )));
    }
    print!("{out}");
    Ok(())
}

/// The spec named, or the scope's accepted spec.
fn load_spec(a: &ExportArgs, scope: &str) -> Result<Spec, EngineError> {
    let (id, warning) = crate::host_macs::host_identity(scope);
    if let Some(w) = warning {
        eprintln!("kvmnet: warning: {w}");
    }
    if let Some(f) = &a.file {
        return Ok(engine::load(f, &id)?.0);
    }
    let dir = StateDir::for_scope(scope).dir;
    let accepted = crate::daemon::accepted::load(&dir)
        .map_err(|e| EngineError::Usage(e.to_string()))?
        .ok_or_else(|| {
            EngineError::Usage(
                "no spec given, and no daemon has accepted one for this scope: name the spec file"
                    .into(),
            )
        })?;
    engine::parse(
        &crate::daemon::accepted::path(&dir).display().to_string(),
        &accepted.text,
        &id,
    )
}

/// The links of the scope by name (none when its namespace does not exist yet).
fn live_links(
    netns_name: Option<&str>,
) -> Result<BTreeMap<String, crate::backend::rtnl::LinkInfo>, EngineError> {
    if let Some(ns) = netns_name {
        if !netns::exists(ns) {
            return Ok(BTreeMap::new());
        }
        netns::enter(ns)?;
    }
    let observe = |e| EngineError::from(crate::observe::ObserveError::from(e));
    let mut nl = crate::backend::rtnl::Netlink::open().map_err(observe)?;
    Ok(nl
        .links_without_stats()
        .map_err(observe)?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect())
}

/// `spec` with its derived MACs as a plan settles them: the record of the last apply, then
/// the MACs kvmnet's ports carry.
fn settle(
    spec: Spec,
    scope: &str,
    live: &BTreeMap<String, crate::backend::rtnl::LinkInfo>,
) -> Result<Spec, EngineError> {
    let sd = StateDir::for_scope(scope);
    let spec = crate::host_macs::presettle(&spec, &sd)?.unwrap_or(spec);
    let snap = crate::snapshot::Snapshot {
        links: live
            .values()
            .map(|l| crate::snapshot::LinkSnap {
                name: l.name.clone(),
                mac: l.mac,
                alias: l.alias.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let settled = crate::host_macs::settle(&spec, &snap, || crate::host_macs::recorded(&sd))?;
    Ok(settled.unwrap_or(spec))
}

/// The ports to export: all of the VM's, or the one `--port` names.
fn ports_of<'a>(
    spec: &'a Spec,
    vm: &str,
    port: Option<&str>,
) -> Result<Vec<&'a Port>, EngineError> {
    let v = spec.vms.get(vm).ok_or_else(|| {
        engine::invalid(
            "VM",
            "VM",
            format!(
                "no VM '{vm}' in the spec (it has: {})",
                spec.vms.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        )
    })?;
    let ports: Vec<&Port> = v
        .ports
        .iter()
        .filter(|p| port.is_none_or(|n| p.name == n))
        .collect();
    if ports.is_empty() {
        return Err(engine::invalid(
            "--port",
            "--port",
            format!(
                "VM '{vm}' has no port '{}' (its ports: {})",
                port.unwrap_or(""),
                v.ports
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(ports)
}

fn live_of(live: &BTreeMap<String, crate::backend::rtnl::LinkInfo>, name: &str) -> Live {
    live.get(name).map_or(Live::default(), |l| Live {
        ifindex: Some(l.index),
        mtu: Some(l.mtu),
    })
}

fn veth_note(p: &Port) -> String {
    format!(
        "{} is a veth port (its far end is an interface of namespace {}), not a VM NIC: skipped",
        p.name,
        p.netns.as_deref().unwrap_or("-")
    )
}

/// A shell word for `s`: as it is when no character needs quoting, else single-quoted.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.,:=/+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// QEMU's id of a port's netdev: ids start with a letter.
fn netdev_id(p: &Port) -> String {
    format!("net-{}", p.name)
}

fn qemu(
    ports: &[&Port],
    live: &BTreeMap<String, crate::backend::rtnl::LinkInfo>,
    notes: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    let mut fd = 3;
    for p in ports {
        let id = netdev_id(p);
        let mut dev = format!("virtio-net-pci,netdev={id},mac={}", p.mac);
        let netdev = match p.kind {
            PortKind::Veth => {
                notes.push(veth_note(p));
                continue;
            }
            PortKind::Tap => {
                let mut n = format!("tap,id={id},ifname={},script=no,downscript=no", p.name);
                if p.queues > 1 {
                    n.push_str(&format!(",queues={},vhost=on", p.queues));
                    dev.push_str(&format!(",mq=on,vectors={}", 2 * p.queues + 2));
                }
                n
            }
            PortKind::Macvtap => {
                let node = match live_of(live, &p.name).ifindex {
                    Some(i) => format!("/dev/tap{i}"),
                    None => format!("/dev/tap$(cat /sys/class/net/{}/ifindex)", p.name),
                };
                notes.push(format!(
                    "{} is a macvtap: QEMU needs its character device {node} open as fd {fd}: start it with {fd}<>{node}",
                    p.name
                ));
                let n = format!("tap,id={id},fd={fd}");
                fd += 1;
                n
            }
        };
        out.push_str(&format!(
            "-netdev {}\n-device {}\n",
            shell_word(&netdev),
            shell_word(&dev)
        ));
    }
    out
}

fn libvirt(ports: &[&Port], notes: &mut Vec<String>) -> String {
    let mut out = String::new();
    for p in ports {
        if p.kind == PortKind::Veth {
            notes.push(veth_note(p));
            continue;
        }
        out.push_str("<interface type='ethernet'>\n");
        out.push_str(&format!("  <mac address='{}'/>\n", p.mac));
        out.push_str(&format!("  <target dev='{}' managed='no'/>\n", p.name));
        out.push_str("  <model type='virtio'/>\n");
        if p.queues > 1 {
            out.push_str(&format!("  <driver queues='{}'/>\n", p.queues));
        }
        out.push_str("</interface>\n");
    }
    out
}

/// The YAML of one cloud-init ethernet entry's body (indented under its key).
fn ci_port(net: &Network, p: &Port, mtu: Option<u32>) -> String {
    let mut s = format!(
        "    match:\n      macaddress: \"{}\"\n    set-name: eth{}\n",
        p.mac, p.index
    );
    let routed = matches!(net.mode, Mode::Nat | Mode::Routed | Mode::Isolated);
    let mut addresses = Vec::new();
    let mut routes = Vec::new();
    match p.ipv4 {
        Some(a) => {
            s.push_str("    dhcp4: false\n");
            addresses.push(a.to_string());
            if let (true, Some(gw)) = (routed, net.ipv4) {
                routes.push(format!("{{to: \"0.0.0.0/0\", via: \"{}\"}}", gw.addr));
            }
            for r in net.dhcp.iter().flat_map(|d| &d.routes) {
                routes.push(format!(
                    "{{to: \"{}\", via: \"{}\"}}",
                    r.to.network(),
                    r.via
                ));
            }
        }
        // A network without kvmnet's DHCP that is a LAN segment has the LAN's server.
        None => {
            let dhcp = net.dhcp.as_ref().is_some_and(|d| d.pool) || !routed;
            s.push_str(&format!("    dhcp4: {dhcp}\n"));
        }
    }
    s.push_str(&ci_ipv6(net, p, routed, &mut addresses));
    if !addresses.is_empty() {
        let a: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!("    addresses: [{}]\n", a.join(", ")));
    }
    if !routes.is_empty() {
        s.push_str("    routes:\n");
        for r in routes {
            s.push_str(&format!("      - {r}\n"));
        }
    }
    if !addresses.is_empty() {
        s.push_str(&ci_nameservers(net));
    }
    if let Some(m) = net.mtu.or(mtu) {
        s.push_str(&format!("    mtu: {m}\n"));
    }
    s
}

/// A port's IPv6: `dhcp6` and `accept-ra` lines, its declared `ipv6` pushed onto
/// `addresses`, and then the gateway as `gateway6`. A network kvmnet advertises
/// (`ipv6`) has the daemon's RAs; a LAN segment with `ipv6_prefixes` has its router's. A
/// guest asks DHCPv6 for an address only when the RAs say addresses come from it (`ra.mode`
/// `dhcpv6` or `slaac+dhcpv6`) and it has none written here.
fn ci_ipv6(net: &Network, p: &Port, routed: bool, addresses: &mut Vec<String>) -> String {
    let own = net.ipv6.filter(|_| routed);
    if own.is_none() && net.ipv6_prefixes.is_empty() {
        return String::new();
    }
    let managed = own.is_some_and(|v| v.ra.mode.managed());
    let dhcp6 = managed && p.ipv6.is_none();
    let mut s = format!("    dhcp6: {dhcp6}\n    accept-ra: true\n");
    if let (Some(a), Some(v6)) = (p.ipv6, own) {
        addresses.push(format!("{a}/{}", v6.gateway.prefix));
        // `gateway6`, not a route `to: ::/0`: cloud-init before 23 reads a /0 IPv6 route as
        // a /64 one (and refuses `to: default`).
        s.push_str(&format!("    gateway6: \"{}\"\n", v6.gateway.addr));
    }
    s
}

/// The resolvers a guest with static addresses is told, as the daemon tells the others:
/// `dhcp.dns` and `dhcp.dns6`, or the gateway's addresses where kvmnet answers DNS (`dns`);
/// the search domain is `dhcp.domain`, else the DNS service's `domain`.
fn ci_nameservers(net: &Network) -> String {
    let dhcp = net.dhcp.as_ref();
    let mut servers: Vec<String> = dhcp
        .map(|d| d.dns.iter().map(|a| a.to_string()).collect())
        .unwrap_or_default();
    if servers.is_empty() && net.dns.is_some() {
        servers.extend(net.ipv4.map(|g| g.addr.to_string()));
    }
    let mut servers6: Vec<String> = dhcp
        .map(|d| d.dns6.iter().map(|a| a.to_string()).collect())
        .unwrap_or_default();
    if servers6.is_empty() && net.dns.is_some() {
        servers6.extend(net.ipv6.map(|v| v.gateway.addr.to_string()));
    }
    servers.extend(servers6);
    let domain = dhcp
        .and_then(|d| d.domain.clone())
        .or_else(|| net.dns.as_ref().and_then(|d| d.domain.clone()));
    if servers.is_empty() && domain.is_none() {
        return String::new();
    }
    let mut s = "    nameservers:\n".to_string();
    if !servers.is_empty() {
        let dns: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!("      addresses: [{}]\n", dns.join(", ")));
    }
    if let Some(dom) = &domain {
        s.push_str(&format!("      search: [\"{dom}\"]\n"));
    }
    s
}

fn cloud_init(
    spec: &Spec,
    ports: &[&Port],
    live: &BTreeMap<String, crate::backend::rtnl::LinkInfo>,
    notes: &mut Vec<String>,
) -> String {
    let mut body = String::new();
    for p in ports {
        if p.kind == PortKind::Veth {
            notes.push(veth_note(p));
            continue;
        }
        let Some(net) = spec.networks.get(&p.network) else {
            continue;
        };
        body.push_str(&format!("  eth{}:\n", p.index));
        body.push_str(&ci_port(net, p, live_of(live, &p.name).mtu));
    }
    if body.is_empty() {
        return body;
    }
    format!("version: 2\nethernets:\n{body}")
}
