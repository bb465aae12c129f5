//! What OVN itself says about kvmnet's networks and this chassis, for `status` and `doctor`.
//!
//! Read with one-shot `select`s, not a monitor: a status is one read, and a replica of the
//! Southbound's logical flows would cost far more than counting them. Where everything is
//! comes from the scope's state directory (the Northbound remote kvmnet has rows in, and the
//! chassis record with its Southbound and Open_vSwitch databases), so `status` needs no spec.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use kvmnet_core::ovn::{ChassisConf, OWNER, OWNER_KEY};
use kvmnet_core::spec::Mode;
use serde_json::{Map, Value, json};

use super::chassis::{GatewayUplink, UplinkSeen};
use super::ovsdb::{Atom, Client, Datum, OvsdbError, Remote};
use crate::statedir::StateDir;

const TIMEOUT: Duration = Duration::from_secs(5);
const NB: &str = "OVN_Northbound";
const SB: &str = "OVN_Southbound";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{db} at {remote}: {source}")]
    Db {
        db: &'static str,
        remote: String,
        #[source]
        source: OvsdbError,
    },
}

fn connect(remote: &str, db: &'static str) -> Result<Client, ReportError> {
    let err = |source| ReportError::Db {
        db,
        remote: remote.to_string(),
        source,
    };
    let list = Remote::parse_list(remote).map_err(err)?;
    let c = Client::connect(&list, db, TIMEOUT).map_err(err)?;
    c.echo().map_err(err)?;
    Ok(c)
}

type Rows = Vec<Map<String, Value>>;

fn select(c: &Client, table: &str, cond: Value, cols: &[&str]) -> Result<Rows, OvsdbError> {
    let mut cols = cols.to_vec();
    cols.push("_uuid");
    let r = c.transact(vec![
        json!({ "op": "select", "table": table, "where": cond, "columns": cols }),
    ])?;
    Ok(r.first()
        .and_then(|x| x["rows"].as_array())
        .map(|rows| rows.iter().filter_map(|r| r.as_object().cloned()).collect())
        .unwrap_or_default())
}

fn datum(row: &Map<String, Value>, col: &str) -> Option<Datum> {
    row.get(col).and_then(Datum::from_json)
}

fn atoms(row: &Map<String, Value>, col: &str) -> Vec<Atom> {
    datum(row, col).map_or_else(Vec::new, |d| d.atoms().cloned().collect())
}

fn uuid(row: &Map<String, Value>) -> String {
    atoms(row, "_uuid")
        .first()
        .and_then(|a| a.as_uuid().map(String::from))
        .unwrap_or_default()
}

fn text(row: &Map<String, Value>, col: &str) -> Option<String> {
    atoms(row, col)
        .first()
        .and_then(|a| a.as_str().map(String::from))
}

fn refs(row: &Map<String, Value>, col: &str) -> Vec<String> {
    atoms(row, col)
        .iter()
        .filter_map(|a| a.as_uuid().map(String::from))
        .collect()
}

fn owned() -> Value {
    json!([["external_ids", "includes", ["map", [[OWNER_KEY, OWNER]]]]])
}

/// Where kvmnet's OVN part of `scope` is: the Northbound remote it has rows in, and what it
/// made this host as a chassis.
pub struct Whereabouts {
    pub nb: Option<String>,
    /// The Southbound database the last apply's spec named (a chassis's own record wins).
    pub sb: Option<String>,
    pub chassis: Option<ChassisConf>,
}

pub fn whereabouts(scope: &str) -> Whereabouts {
    let sd = StateDir::for_scope(scope);
    let st = sd.load().ok();
    if let Some(ssl) = st.as_ref().and_then(|s| s.ovn_ssl.as_ref())
        && super::ovsdb::tls::configured().is_none()
    {
        super::ovsdb::tls::configure(Some(ssl));
    }
    let st = st.unwrap_or_default();
    Whereabouts {
        nb: st.ovn_nb,
        sb: st.ovn_sb,
        chassis: super::local::recorded(&sd),
    }
}

/// One VM port of an OVN network as OVN sees it.
fn port_json(lsp: &Map<String, Value>, bindings: &BTreeMap<String, String>) -> Value {
    let name = text(lsp, "name").unwrap_or_default();
    let up = atoms(lsp, "up").first().and_then(Atom::as_bool);
    let addresses: Vec<String> = atoms(lsp, "addresses")
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    json!({ "port": name, "chassis": bindings.get(&name), "up": up, "addresses": addresses })
}

/// The Southbound's view: each logical port's chassis (by name), and each switch's
/// logical flow count (by the Northbound switch's UUID).
type Southbound = (BTreeMap<String, String>, BTreeMap<String, usize>);

fn southbound(c: &Client) -> Result<Southbound, OvsdbError> {
    let chassis: BTreeMap<String, String> = select(c, "Chassis", json!([]), &["name"])?
        .iter()
        .map(|r| (uuid(r), text(r, "name").unwrap_or_default()))
        .collect();
    let bindings = select(c, "Port_Binding", json!([]), &["logical_port", "chassis"])?
        .iter()
        .filter_map(|r| {
            let ch = refs(r, "chassis")
                .first()
                .and_then(|u| chassis.get(u))
                .cloned()?;
            Some((text(r, "logical_port")?, ch))
        })
        .collect();
    let groups = select(c, "Logical_DP_Group", json!([]), &["datapaths"])?;
    let mut flows = BTreeMap::new();
    for dp in select(c, "Datapath_Binding", json!([]), &["external_ids"])? {
        let Some(ls) =
            datum(&dp, "external_ids").and_then(|d| d.get("logical-switch").map(String::from))
        else {
            continue;
        };
        let id = uuid(&dp);
        let mut n = select(
            c,
            "Logical_Flow",
            json!([["logical_datapath", "==", ["uuid", id]]]),
            &[],
        )?
        .len();
        // Flows shared by several datapaths sit in a datapath group instead.
        for g in groups.iter().filter(|g| refs(g, "datapaths").contains(&id)) {
            n += select(
                c,
                "Logical_Flow",
                json!([["logical_dp_group", "==", ["uuid", uuid(g)]]]),
                &[],
            )?
            .len();
        }
        flows.insert(ls, n);
    }
    Ok((bindings, flows))
}

/// The `ovn` part of `kvmnet status --json`, or `None` when kvmnet has nothing on OVN in
/// `scope`. What could not be read is listed under `errors`, the rest still shown.
pub fn status(scope: &str) -> Option<Value> {
    let w = whereabouts(scope);
    if w.nb.is_none() && w.chassis.is_none() {
        return None;
    }
    let mut errors = Vec::new();
    let sb = w.chassis.as_ref().map(|c| c.sb.clone()).or(w.sb);
    let (bindings, flows) = match sb.as_deref().map(|r| connect(r, SB)) {
        Some(Ok(c)) => southbound(&c).unwrap_or_else(|e| {
            errors.push(format!("{SB}: {e}"));
            Default::default()
        }),
        Some(Err(e)) => {
            errors.push(e.to_string());
            Default::default()
        }
        None => Default::default(),
    };
    let mut networks = Vec::new();
    if let Some(nb) = &w.nb {
        match connect(nb, NB).and_then(|c| {
            northbound(&c, &bindings, &flows).map_err(|source| ReportError::Db {
                db: NB,
                remote: nb.clone(),
                source,
            })
        }) {
            Ok(n) => networks = n,
            Err(e) => errors.push(e.to_string()),
        }
    }
    let (port_errors, (gateway, providers)) = match &w.chassis {
        Some(c) => {
            let uplinks = Uplinks {
                gateway: c.gateway_uplink.as_ref().map(|u| (u.clone(), Vec::new())),
                providers: c
                    .provider_uplinks
                    .iter()
                    .map(|u| (u.clone(), Vec::new()))
                    .collect(),
            };
            let view = chassis_view(&c.ovs, &uplinks);
            let view = view.map_err(|e| errors.push(e)).ok();
            (
                view.as_ref()
                    .map(|v| v.port_errors.clone())
                    .unwrap_or_default(),
                uplinks.facts(view.as_ref()),
            )
        }
        None => Default::default(),
    };
    let providers: Vec<Value> = providers.iter().map(ProviderFacts::to_json).collect();
    Some(json!({
        "nb": w.nb, "sb": sb, "chassis": w.chassis.as_ref().map(|c| c.name.clone()),
        "networks": networks, "gateway_uplink": gateway.as_ref().map(ProviderFacts::to_json),
        "providers": providers, "port_errors": port_errors, "errors": errors,
    }))
}

/// kvmnet's logical switches with their VM ports, joined with the Southbound's view.
fn northbound(
    c: &Client,
    bindings: &BTreeMap<String, String>,
    flows: &BTreeMap<String, usize>,
) -> Result<Vec<Value>, OvsdbError> {
    let ports: BTreeMap<String, Map<String, Value>> = select(
        c,
        "Logical_Switch_Port",
        owned(),
        &["name", "type", "up", "addresses"],
    )?
    .into_iter()
    .map(|r| (uuid(&r), r))
    .collect();
    let mut out = Vec::new();
    for ls in select(c, "Logical_Switch", owned(), &["name", "ports"])? {
        let vm_ports: Vec<Value> = refs(&ls, "ports")
            .iter()
            .filter_map(|u| ports.get(u))
            // VM ports have no type; router and localnet ports are the switch's own.
            .filter(|p| text(p, "type").unwrap_or_default().is_empty())
            .map(|p| port_json(p, bindings))
            .collect();
        let id = uuid(&ls);
        out.push(json!({
            "network": text(&ls, "name"), "flows": flows.get(&id), "ports": vm_ports,
        }));
    }
    Ok(out)
}

/// What this chassis's Open_vSwitch database says: ovs-vswitchd's errors on kvmnet's ports,
/// the current `ovn-bridge-mappings`, and where each provider uplink stands.
struct ChassisView {
    port_errors: Vec<String>,
    mappings: Option<String>,
    uplinks: Vec<UplinkSeen>,
}

/// The uplinks a chassis holds, each with the spec's networks on it (doctor's; `status`
/// reads no spec): the gateway's (`ovn.external.uplink`, on a gateway chassis: the nat
/// networks leave by it) and the provider networks'.
#[derive(Default)]
struct Uplinks {
    gateway: Option<(String, Vec<String>)>,
    providers: BTreeMap<String, Vec<String>>,
}

impl Uplinks {
    /// Each uplink's bridge and physical network, the gateway's first.
    fn named(&self) -> Vec<(GatewayUplink, &[String])> {
        let gateway = self
            .gateway
            .iter()
            .map(|(u, nets)| (GatewayUplink::new(u), nets.as_slice()));
        let providers = self
            .providers
            .iter()
            .map(|(u, nets)| (GatewayUplink::provider(u), nets.as_slice()));
        gateway.chain(providers).collect()
    }

    /// The uplinks joined with what the database says: the gateway's, and the providers'.
    fn facts(&self, view: Option<&ChassisView>) -> (Option<ProviderFacts>, Vec<ProviderFacts>) {
        let mut all: Vec<ProviderFacts> = self
            .named()
            .into_iter()
            .enumerate()
            .map(|(i, (g, nets))| ProviderFacts {
                device: device_exists(&g.uplink),
                seen: view.and_then(|v| v.uplinks.get(i).cloned()),
                networks: nets.to_vec(),
                uplink: g.uplink,
                bridge: g.bridge,
                physnet: g.physnet,
            })
            .collect();
        let gateway = self.gateway.is_some().then(|| all.remove(0));
        (gateway, all)
    }
}

/// Reads [`ChassisView`] for `uplinks`.
fn chassis_view(ovs: &str, uplinks: &Uplinks) -> Result<ChassisView, String> {
    let err = |e: String| format!("Open_vSwitch database {ovs}: {e}");
    let remotes = Remote::parse_list(ovs).map_err(|e| err(e.to_string()))?;
    let client = super::chassis::connect(&remotes, TIMEOUT).map_err(|e| err(e.to_string()))?;
    let r = client.replica();
    let ups: Vec<GatewayUplink> = uplinks.named().into_iter().map(|(g, _)| g).collect();
    let read = || -> Result<ChassisView, super::chassis::ChassisError> {
        Ok(ChassisView {
            port_errors: super::chassis::port_errors(&r, OWNER)?,
            mappings: super::chassis::bridge_mappings(&r)?,
            uplinks: super::chassis::uplinks_seen(&r, &ups)?,
        })
    };
    read().map_err(|e| err(e.to_string()))
}

/// An uplink on this chassis (a provider networks', or the gateway's): what kvmnet puts it
/// in and maps, and how it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderFacts {
    pub uplink: String,
    pub bridge: String,
    pub physnet: String,
    /// The spec's networks on it (doctor's; `status` reads no spec).
    pub networks: Vec<String>,
    /// Whether an interface of the uplink's name exists in this namespace.
    pub device: bool,
    /// What the Open_vSwitch database says (`None`: it could not be read).
    pub seen: Option<UplinkSeen>,
}

impl ProviderFacts {
    /// Whether the uplink is a port of its own bridge.
    pub fn in_bridge(&self) -> Option<bool> {
        let s = self.seen.as_ref()?;
        Some(s.held_by.as_deref() == Some(self.bridge.as_str()))
    }

    /// Whether `ovn-bridge-mappings` maps the uplink's physical network to its bridge.
    pub fn mapped(&self) -> Option<bool> {
        let s = self.seen.as_ref()?;
        Some(s.mapped_to.as_deref() == Some(self.bridge.as_str()))
    }

    /// One entry of `status --json`'s `ovn.providers` (or its `ovn.gateway_uplink`).
    pub fn to_json(&self) -> Value {
        let seen = self.seen.as_ref();
        json!({
            "uplink": self.uplink, "bridge": self.bridge, "physnet": self.physnet,
            "device": self.device, "in_bridge": self.in_bridge(),
            "held_by": seen.and_then(|s| s.held_by.clone()), "mapped": self.mapped(),
            "mapped_to": seen.and_then(|s| s.mapped_to.clone()),
        })
    }
}

/// Whether an interface named `name` exists in this process's network namespace.
fn device_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call, which only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// What `kvmnet doctor` checks of OVN, read on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OvnFacts {
    /// This host's chassis name, and whether the spec lists it under `ovn.chassis`.
    pub chassis: String,
    pub listed: bool,
    pub nb: String,
    pub nb_error: Option<String>,
    pub sb: String,
    pub sb_error: Option<String>,
    pub ovs: String,
    pub ovs_error: Option<String>,
    /// The Southbound has a `Chassis` row of this name (`None`: it could not be read).
    pub registered: Option<bool>,
    /// ovn-controller's pid file, and the live ovn-controller it names (`Err`: why none).
    pub controller_pidfile: String,
    pub controller: Option<Result<u32, String>>,
    /// The same of ovs-vswitchd, which makes the ports kvmnet attaches to `br-int` real.
    pub vswitchd: Option<Result<u32, String>>,
    /// Where `system-id.conf` is, and the `system-id` Open vSwitch's service sets from it
    /// at its next start (`None`: there is none, and it makes a random one), on a chassis
    /// under `ovn.chassis` whose database is a local socket.
    pub next_system_id: Option<(String, Option<String>)>,
    pub port_errors: Vec<String>,
    /// `ovn-bridge-mappings` as it is now (`None`: not set, or not read).
    pub mappings: Option<String>,
    /// The provider networks' uplinks this chassis holds (none when it is not listed).
    pub providers: Vec<ProviderFacts>,
    /// The gateway's uplink, on a gateway chassis of a spec with `ovn.external`.
    pub gateway_uplink: Option<ProviderFacts>,
    /// The spec's tunnel endpoint for this chassis.
    pub encap_ip: Option<Ipv4Addr>,
    /// The interface here that has it, and its MTU (`None`: none has it); with the MTU the
    /// spec says the underlay carries (`ovn.underlay_mtu`).
    pub encap_dev: Option<(String, u32)>,
    pub underlay_mtu: u32,
    /// How `ovn.ssl`'s files stand, when the spec has them.
    pub tls: Option<super::ovsdb::tls_files::FilesStand>,
}

/// Where ovn-controller's pid file is: `$OVN_RUNDIR` as OVN's own tools read it, else the
/// distributions' `/run/ovn`.
fn controller_pidfile() -> std::path::PathBuf {
    std::env::var_os("OVN_RUNDIR")
        .map_or_else(|| "/run/ovn".into(), std::path::PathBuf::from)
        .join("ovn-controller.pid")
}

/// Where ovs-vswitchd's pid file is: `$OVS_RUNDIR` as OVS's own tools read it, else the
/// distributions' `/run/openvswitch`.
fn vswitchd_pidfile() -> std::path::PathBuf {
    std::env::var_os("OVS_RUNDIR")
        .map_or_else(|| "/run/openvswitch".into(), std::path::PathBuf::from)
        .join("ovs-vswitchd.pid")
}

/// Where `system-id.conf` is (`$OVS_SYSCONFDIR/openvswitch`, default `/etc/openvswitch`),
/// and what it holds: the `system-id` the distributions' `ovs-ctl --system-id=random` sets
/// at every start of the database (`None`: it cannot be read).
fn next_system_id() -> (String, Option<String>) {
    let path = std::path::PathBuf::from(
        std::env::var_os("OVS_SYSCONFDIR").unwrap_or_else(|| "/etc".into()),
    )
    .join("openvswitch/system-id.conf");
    let id = std::fs::read_to_string(&path).ok();
    (path.display().to_string(), id.map(|t| t.trim().to_string()))
}

/// The pid in `pidfile`, if a process named `name` runs under it (`Err`: why not).
fn alive(pidfile: &std::path::Path, name: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(pidfile)
        .map_err(|e| format!("no pid file {}: {e}", pidfile.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} holds no pid", pidfile.display()))?;
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(c) if c.trim() == name => Ok(pid),
        _ => Err(format!(
            "pid {pid} of {} is not a running {name}",
            pidfile.display()
        )),
    }
}

/// The interface of this namespace that holds `ip`, and its MTU (`None`: none holds it;
/// an MTU of 0: it could not be read).
fn endpoint(ip: Ipv4Addr) -> Option<(String, u32)> {
    let name = local_ipv4().into_iter().find(|(a, _)| *a == ip)?.1;
    let mtu = crate::backend::rtnl::Netlink::open()
        .ok()
        .and_then(|mut nl| nl.link_by_name(&name).ok().flatten())
        .map_or(0, |l| l.mtu);
    Some((name, mtu))
}

/// The IPv4 addresses on this namespace's interfaces, with the interface of each.
fn local_ipv4() -> Vec<(Ipv4Addr, String)> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below; each entry is read only
    // while the list lives, and its address only when its family says it is IPv4.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let name = std::ffi::CStr::from_ptr((*p).ifa_name)
                    .to_string_lossy()
                    .into_owned();
                out.push((Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)), name));
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// Reads what doctor checks of the spec's OVN part, for the chassis this host is: the one
/// `--chassis` names, else the one kvmnet last made it, else (as `kvmnet apply` settles
/// it) the `system-id` of its Open_vSwitch database, else the hostname.
pub fn facts(scope: &str, ovn: &crate::spec::Ovn) -> OvnFacts {
    super::ovsdb::tls::configure(ovn.ssl.as_ref());
    let recorded = whereabouts(scope).chassis;
    let chassis = match (&ovn.local, &recorded) {
        (Some(l), _) => l.clone(),
        (None, Some(c)) => c.name.clone(),
        (None, None) => super::local::system_id(&ovn.ovs).unwrap_or_else(crate::engine::hostname),
    };
    let listed = ovn.chassis.contains_key(&chassis);
    let ovs = ovn.ovs_of(&chassis).to_string();
    let nb_error = connect(&ovn.nb, NB).err().map(|e| e.to_string());
    let (sb_error, registered) = match connect(&ovn.sb, SB) {
        Ok(c) => match select(&c, "Chassis", json!([["name", "==", chassis]]), &["name"]) {
            Ok(rows) => (None, Some(!rows.is_empty())),
            Err(e) => (Some(e.to_string()), None),
        },
        Err(e) => (Some(e.to_string()), None),
    };
    // Every listed chassis holds every provider uplink, and a gateway chassis the gateway's
    // (as `chassis_conf` makes them).
    let mut uplinks = Uplinks::default();
    if listed {
        for n in ovn.networks.values() {
            if let Some(u) = kvmnet_core::ovn::provider::uplink_of(n) {
                uplinks
                    .providers
                    .entry(u.to_string())
                    .or_default()
                    .push(n.name.clone());
            }
        }
        let gateway = ovn.chassis.get(&chassis).and_then(|c| c.gateway);
        uplinks.gateway = gateway.and(ovn.external.as_ref()).map(|e| {
            // nat networks leave by it, and routed ones too (unchanged).
            let out = ovn
                .networks
                .values()
                .filter(|n| matches!(n.mode, Mode::Nat | Mode::Routed));
            (e.uplink.clone(), out.map(|n| n.name.clone()).collect())
        });
    }
    let (ovs_error, view) = match chassis_view(&ovs, &uplinks) {
        Ok(v) => (None, Some(v)),
        Err(e) => (Some(e), None),
    };
    let (gateway_uplink, providers) = uplinks.facts(view.as_ref());
    let (port_errors, mappings) =
        view.map_or_else(Default::default, |v| (v.port_errors, v.mappings));
    let pidfile = controller_pidfile();
    // Open vSwitch's own database answering says nothing of its switch daemon: only an
    // ovs-vswitchd makes the ports kvmnet attaches carry traffic.
    let local = listed && ovs.starts_with("unix:");
    let vswitchd = local.then(|| alive(&vswitchd_pidfile(), "ovs-vswitchd"));
    let next_system_id = local.then(next_system_id);
    let encap_ip = ovn.chassis.get(&chassis).map(|c| c.encap_ip);
    let encap_dev = encap_ip.and_then(endpoint);
    OvnFacts {
        listed,
        nb: ovn.nb.clone(),
        nb_error,
        sb: ovn.sb.clone(),
        sb_error,
        ovs,
        ovs_error,
        registered,
        controller_pidfile: pidfile.display().to_string(),
        controller: listed.then(|| alive(&pidfile, "ovn-controller")),
        vswitchd,
        next_system_id,
        port_errors,
        mappings,
        providers,
        gateway_uplink,
        encap_dev,
        underlay_mtu: ovn.underlay_mtu,
        encap_ip,
        chassis,
        tls: ovn
            .ssl
            .as_ref()
            .map(|s| super::ovsdb::tls_files::examine(s, std::time::SystemTime::now())),
    }
}
