//! The chassis side of the OVN backend: this host's Open_vSwitch database made what OVN needs
//! of a hypervisor, in one transaction, without touching what kvmnet does not own.
//!
//! The contract (plain data in, steps out):
//!
//! - [`ChassisWanted`] says what this chassis should be: the `external_ids` ovn-controller
//!   reads (`system-id`, `ovn-remote`, `ovn-encap-type`, `ovn-encap-ip`, `ovn-bridge`,
//!   `ovn-bridge-datapath-type`, and `ovn-bridge-mappings` on a gateway chassis or one with
//!   provider networks), `br-int`, `br-ex` with the uplink on a gateway chassis, a bridge per
//!   provider network uplink holding it, and the VM ports (existing kernel interfaces) to
//!   attach to `br-int` with `external_ids:iface-id`.
//! - [`plan`] (and [`steps`]) / [`removal_steps`] say what [`converge`] / [`remove`] would change, as
//!   human-readable lines (empty: nothing to do). Pure: they read a [`Replica`].
//! - [`converge`] makes the database match in one transaction, its first operations `wait`s
//!   that what the diff read is unchanged: a concurrent writer makes it read again and retry
//!   instead of being overwritten.
//! - [`remove`] takes back everything kvmnet put there.
//!
//! What kvmnet owns and what it borrows:
//!
//! - The `external_ids` keys of the root row are **borrowed**: they are changed one by one
//!   with `mutate` (other keys are never rewritten), and the value each had before kvmnet
//!   first changed it is recorded in [`ChassisOriginals`], which the caller keeps (the
//!   engine's state directory) and hands back; [`remove`] (or a converge that stops wanting
//!   a key) puts the value back, or deletes the key if it did not exist.
//! - `ovn-bridge-mappings` is kept as others wrote it, kvmnet's physical networks
//!   (`kvmnet-ext`, `kvmnet-pn-*`) added, and those no longer wanted taken out.
//! - `br-int`, `br-ex` and the provider bridges are made by kvmnet, marked with `external_ids:kvmnet-owner`,
//!   unless they exist (ovn-controller or the distribution made them): then they are
//!   borrowed, left in place on removal, and only kvmnet's ports on them are removed.
//! - Ports (and their interfaces) kvmnet adds carry the mark; a port of anyone else is never
//!   changed, and a wanted port whose name a foreign port has is refused.
//! - The root's `SSL` row (what ovn-controller reaches an `ssl:` Southbound database with):
//!   made by kvmnet, with the mark, when there is none; an `SSL` row someone else set is
//!   left as it is, and ovn-controller connects with its files.
//!
//! Every transaction kvmnet commits carries the comment `kvmnet: chassis OWNER`, so the
//! database's log (`ovsdb-tool show-log`) says which changes were kvmnet's.

mod diff;
mod observed;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ovn::ovsdb::{Client, OvsdbError, Remote, Replica};
pub use observed::{IFACE_ID, MONITORED};

/// The integration bridge ovn-controller is pointed at (`ovn-bridge`).
pub const INTEGRATION_BRIDGE: &str = "br-int";
/// The bridge holding a gateway chassis's uplink.
pub const EXTERNAL_BRIDGE: &str = "br-ex";
/// The physical network name nat networks' localnet ports use.
pub const PHYSNET: &str = "kvmnet-ext";
/// The Open_vSwitch database's name.
pub const DATABASE: &str = "Open_vSwitch";

#[derive(Debug, thiserror::Error)]
pub enum ChassisError {
    #[error(
        "the Open_vSwitch database has no Open_vSwitch row: has ovs-vswitchd's database been initialised (ovs-vsctl init)?"
    )]
    NoRoot,
    #[error(
        "port {port:?} exists{} and is not this spec's ({}): rename the VM port, or remove the other port by hand",
        bridge.as_deref().map(|b| format!(" on bridge {b}")).unwrap_or_default(),
        owner.as_deref().map(|o| format!("external_ids:kvmnet-owner is {o}")).unwrap_or_else(|| "no external_ids:kvmnet-owner".into())
    )]
    ForeignPort {
        port: String,
        bridge: Option<String>,
        /// Another kvmnet spec's mark, if it has one.
        owner: Option<String>,
    },
    #[error("chassis setting {field}: {why}")]
    Invalid { field: String, why: String },
    #[error(
        "Open_vSwitch: other writers kept changing what kvmnet reads; gave up after {tries} tries"
    )]
    Contended { tries: u32 },
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
}

/// The tunnel encapsulation (`ovn-encap-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapType {
    Geneve,
    Vxlan,
}

impl EncapType {
    pub fn as_str(self) -> &'static str {
        match self {
            EncapType::Geneve => "geneve",
            EncapType::Vxlan => "vxlan",
        }
    }
}

/// The datapath of the bridges kvmnet makes (`ovn-bridge-datapath-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathType {
    /// The kernel module.
    System,
    /// The userspace datapath.
    Netdev,
}

impl DatapathType {
    pub fn as_str(self) -> &'static str {
        match self {
            DatapathType::System => "system",
            DatapathType::Netdev => "netdev",
        }
    }
}

/// A way out of the chassis onto a physical network: `bridge` holds `uplink`, and `physnet`
/// maps to `bridge`. A gateway chassis's (`br-ex`), and one per provider network uplink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayUplink {
    pub physnet: String,
    pub bridge: String,
    /// A host interface (kvmnet attaches it; it does not create it).
    pub uplink: String,
}

impl GatewayUplink {
    /// kvmnet's names: physnet `kvmnet-ext` on `br-ex`.
    pub fn new(uplink: impl Into<String>) -> GatewayUplink {
        GatewayUplink {
            physnet: PHYSNET.into(),
            bridge: EXTERNAL_BRIDGE.into(),
            uplink: uplink.into(),
        }
    }

    /// A provider networks' uplink: physnet `kvmnet-pn-UPLINK` on its own bridge (see
    /// [`kvmnet_core::ovn::provider`]).
    pub fn provider(uplink: &str) -> GatewayUplink {
        use kvmnet_core::ovn::provider;
        GatewayUplink {
            physnet: provider::physnet(uplink),
            bridge: provider::bridge(uplink),
            uplink: uplink.into(),
        }
    }
}

/// A VM port to attach to `br-int`: an existing kernel interface (a tap, or the host end of
/// a veth) bound to logical switch port `iface_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChassisPort {
    pub ifname: String,
    pub iface_id: String,
}

/// What this chassis should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChassisWanted {
    /// The chassis name (`system-id`).
    pub system_id: String,
    /// The Southbound database's remotes, as ovn-controller takes them (`ovn-remote`).
    pub ovn_remote: String,
    pub encap_type: EncapType,
    pub encap_ip: IpAddr,
    pub datapath_type: DatapathType,
    pub gateway: Option<GatewayUplink>,
    /// The provider networks' uplinks, each in its own bridge, on every chassis.
    pub providers: Vec<GatewayUplink>,
    pub ports: Vec<ChassisPort>,
    /// The files ovn-controller reaches an `ssl:` Southbound database with (the `SSL` row
    /// of the database's root); `None`: kvmnet sets none.
    pub ssl: Option<kvmnet_core::spec::ovn::Ssl>,
}

impl ChassisWanted {
    /// Every uplink: the gateway's, then the provider networks'.
    pub fn uplinks(&self) -> impl Iterator<Item = &GatewayUplink> {
        self.gateway.iter().chain(&self.providers)
    }
}

/// The values the root row's `external_ids` keys had before kvmnet first changed them
/// (`None`: the key did not exist). The caller stores it (the engine's state directory) and
/// passes it back to every [`converge`] and to [`remove`]. The first value recorded for a
/// key wins: later ones are kvmnet's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChassisOriginals {
    pub external_ids: BTreeMap<String, Option<String>>,
}

impl ChassisOriginals {
    pub fn is_empty(&self) -> bool {
        self.external_ids.is_empty()
    }
}

/// Connects to a chassis's Open_vSwitch database (`unix:/run/openvswitch/db.sock` on a
/// distribution's host) and monitors what [`converge`] reads.
pub fn connect(remotes: &[Remote], timeout: Duration) -> Result<Client, ChassisError> {
    let mut client = Client::connect(remotes, DATABASE, timeout)?;
    client.monitor(MONITORED)?;
    Ok(client)
}

/// What [`converge`] would do, read from the replica without changing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChassisPlan {
    /// One line per change; empty when the chassis matches.
    pub steps: Vec<String>,
    /// `originals` as they will be once the steps are applied (the prior values of the keys
    /// they change recorded, those given back forgotten): store this before converging, so
    /// that a crash midway cannot lose a prior value.
    pub originals: ChassisOriginals,
}

pub fn plan(
    replica: &Replica,
    owner: &str,
    wanted: &ChassisWanted,
    originals: &ChassisOriginals,
) -> Result<ChassisPlan, ChassisError> {
    validate(wanted)?;
    let obs = observed::Observed::read(replica)?;
    let d = diff::diff(&obs, owner, Some(wanted), originals)?;
    Ok(ChassisPlan {
        steps: d.steps,
        originals: d.originals,
    })
}

/// [`plan`]'s steps.
pub fn steps(
    replica: &Replica,
    owner: &str,
    wanted: &ChassisWanted,
    originals: &ChassisOriginals,
) -> Result<Vec<String>, ChassisError> {
    plan(replica, owner, wanted, originals).map(|p| p.steps)
}

/// What [`remove`] would change; empty when nothing of kvmnet's is left.
pub fn removal_steps(
    replica: &Replica,
    owner: &str,
    originals: &ChassisOriginals,
) -> Result<Vec<String>, ChassisError> {
    let obs = observed::Observed::read(replica)?;
    Ok(diff::diff(&obs, owner, None, originals)?.steps)
}

/// Problems ovs-vswitchd reports with kvmnet's ports (`owner`'s), one line each, such as an
/// interface it could not open (`could not open network device tap-x (No such device)`:
/// the kernel side did not make it). Empty when it reports none.
pub fn port_errors(replica: &Replica, owner: &str) -> Result<Vec<String>, ChassisError> {
    let obs = observed::Observed::read(replica)?;
    Ok(obs
        .ports
        .iter()
        .filter(|(_, p)| p.owner.as_deref() == Some(owner))
        .filter_map(|(name, p)| {
            let e = p.iface_error.as_ref()?;
            Some(format!("ovs: port {name}: {e}"))
        })
        .collect())
}

/// How an uplink (a provider networks', or the gateway's) stands in the chassis's database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkSeen {
    /// The bridge holding a port of the uplink's name (`None`: no bridge does).
    pub held_by: Option<String>,
    /// Whether the uplink's own bridge exists.
    pub bridge_exists: bool,
    /// The bridge `ovn-bridge-mappings` maps the uplink's physical network to (`None`:
    /// the mapping has no entry for it).
    pub mapped_to: Option<String>,
}

/// The root row's `ovn-bridge-mappings` as it is now (`None`: the key is not set).
pub fn bridge_mappings(replica: &Replica) -> Result<Option<String>, ChassisError> {
    let obs = observed::Observed::read(replica)?;
    Ok(obs.external_ids.get("ovn-bridge-mappings").cloned())
}

/// Where each of `uplinks` stands: which bridge holds it, and where its physical network
/// is mapped. Pure: read from the replica, for `status` and `doctor`.
pub fn uplinks_seen(
    replica: &Replica,
    uplinks: &[GatewayUplink],
) -> Result<Vec<UplinkSeen>, ChassisError> {
    let obs = observed::Observed::read(replica)?;
    let mappings = obs
        .external_ids
        .get("ovn-bridge-mappings")
        .cloned()
        .unwrap_or_default();
    Ok(uplinks
        .iter()
        .map(|g| UplinkSeen {
            held_by: obs.ports.get(&g.uplink).and_then(|p| p.bridge.clone()),
            bridge_exists: obs.bridges.contains_key(&g.bridge),
            mapped_to: mappings.split(',').find_map(|m| {
                let (physnet, bridge) = m.trim().split_once(':')?;
                (physnet == g.physnet).then(|| bridge.to_string())
            }),
        })
        .collect())
}

/// Makes the chassis's database what `wanted` says (the client from [`connect`]). Records
/// into `originals` the prior values of the keys it changes, and forgets those it gave back:
/// store it afterwards, whether this succeeded or not (and, to survive a crash in between,
/// [`plan`]'s `originals` before). Returns the steps it applied (empty: nothing had to
/// change).
pub fn converge(
    client: &Client,
    owner: &str,
    wanted: &ChassisWanted,
    originals: &mut ChassisOriginals,
) -> Result<Vec<String>, ChassisError> {
    validate(wanted)?;
    run(client, owner, Some(wanted), originals)
}

/// Takes back what kvmnet put on this chassis: its ports, the bridges it made, and the
/// borrowed keys (restored from `originals`, or deleted where they did not exist). Once it
/// succeeds the caller can drop its record of `originals`. Returns the steps it applied.
pub fn remove(
    client: &Client,
    owner: &str,
    originals: &ChassisOriginals,
) -> Result<Vec<String>, ChassisError> {
    let mut o = originals.clone();
    run(client, owner, None, &mut o)
}

/// Diffs, transacts, and does it again until nothing differs (another writer may have
/// changed something meanwhile): a refused `wait` means the replica was behind.
fn run(
    client: &Client,
    owner: &str,
    wanted: Option<&ChassisWanted>,
    originals: &mut ChassisOriginals,
) -> Result<Vec<String>, ChassisError> {
    const TRIES: u32 = 20;
    let mut applied = Vec::new();
    for _ in 0..TRIES {
        let (d, generation) = {
            let r = client.replica();
            let obs = observed::Observed::read(&r)?;
            (diff::diff(&obs, owner, wanted, originals)?, r.generation)
        };
        if d.steps.is_empty() {
            *originals = d.originals;
            return Ok(applied);
        }
        // Recorded before the transaction: what it changes is known now.
        let before = std::mem::replace(originals, d.originals.clone());
        match client.transact(d.ops) {
            Ok(_) => applied.extend(d.steps),
            Err(OvsdbError::Txn { index, .. }) if index < d.waits => *originals = before,
            Err(e) => {
                *originals = merge_recorded(before, &d.originals);
                return Err(e.into());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        client.wait_until(deadline - Instant::now(), |r| r.generation != generation);
    }
    Err(ChassisError::Contended { tries: TRIES })
}

/// After a failed transaction whose outcome is unknown (a lost connection): keep every
/// original either side recorded, so nothing recorded is lost.
fn merge_recorded(mut kept: ChassisOriginals, other: &ChassisOriginals) -> ChassisOriginals {
    for (k, v) in &other.external_ids {
        kept.external_ids
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    kept
}

/// What the database would refuse, or OVS would not run, said before trying.
fn validate(w: &ChassisWanted) -> Result<(), ChassisError> {
    let bad = |field: &str, why: String| {
        Err(ChassisError::Invalid {
            field: field.into(),
            why,
        })
    };
    if w.system_id.trim().is_empty() {
        return bad("system_id", "must not be empty".into());
    }
    if w.ovn_remote.trim().is_empty() {
        return bad("ovn_remote", "must not be empty".into());
    }
    let mut names: Vec<&str> = w.ports.iter().map(|p| p.ifname.as_str()).collect();
    names.extend(w.uplinks().map(|g| g.uplink.as_str()));
    let bridges: Vec<&str> = std::iter::once(INTEGRATION_BRIDGE)
        .chain(w.uplinks().map(|g| g.bridge.as_str()))
        .collect();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || n.len() > 15 || n.contains(['/', ' ']) {
            return bad("ports", format!("{n:?} is not an interface name"));
        }
        if names[..i].contains(n) {
            return bad("ports", format!("{n} is attached twice"));
        }
        if bridges.contains(n) {
            return bad("ports", format!("{n} is the name of a bridge kvmnet uses"));
        }
    }
    for (i, g) in w.uplinks().enumerate() {
        if g.bridge == INTEGRATION_BRIDGE || bridges[1..=i].contains(&g.bridge.as_str()) {
            return bad(
                "gateway.bridge",
                format!("{} is another bridge's name", g.bridge),
            );
        }
        if g.physnet.is_empty() || g.physnet.contains([',', ':']) {
            return bad(
                "gateway.physnet",
                format!("{:?} is not a network name", g.physnet),
            );
        }
    }
    Ok(())
}
