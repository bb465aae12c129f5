//! This host as an OVN chassis, for the engine: what kvmnet last made it (a record in the
//! scope's state directory, with the `external_ids` values it borrowed), whether the
//! Open_vSwitch database still matches, and a plan's chassis step carried out through
//! [`super::chassis`].
//!
//! The record is a file of its own (`ovn-chassis.json`), written by the step that changes
//! the chassis: the engine's state file is saved around a plan from what it read before,
//! and must not carry this back.

use std::path::PathBuf;
use std::time::Duration;

use kvmnet_core::ovn::{ChassisConf, OWNER};
use serde::{Deserialize, Serialize};

use super::chassis::{
    self, ChassisError, ChassisOriginals, ChassisPort, ChassisWanted, DatapathType, EncapType,
    GatewayUplink,
};
use super::ovsdb::Remote;
use crate::statedir::{StateDir, write_atomic};

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("OVN chassis {name} (Open_vSwitch database {ovs}): {source}")]
    Chassis {
        name: String,
        ovs: String,
        #[source]
        source: ChassisError,
    },
    #[error("the OVN chassis record {path}: {source}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What kvmnet made this chassis, and what it borrowed to do so.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Record {
    conf: Option<ChassisConf>,
    originals: ChassisOriginals,
}

fn path(sd: &StateDir) -> PathBuf {
    sd.dir.join("ovn-chassis.json")
}

fn load(sd: &StateDir) -> Result<Record, LocalError> {
    let p = path(sd);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| LocalError::Record {
            path: p,
            source: e.into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
        Err(source) => Err(LocalError::Record { path: p, source }),
    }
}

fn save(sd: &StateDir, rec: &Record) -> Result<(), LocalError> {
    let p = path(sd);
    let io = |source| LocalError::Record {
        path: p.clone(),
        source,
    };
    if rec.conf.is_none() && rec.originals.is_empty() {
        return match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        };
    }
    sd.ensure_private().map_err(io)?;
    let bytes = serde_json::to_vec_pretty(rec).map_err(|e| io(e.into()))?;
    write_atomic(&p, &bytes).map_err(io)
}

fn wanted(c: &ChassisConf) -> ChassisWanted {
    ChassisWanted {
        system_id: c.name.clone(),
        ovn_remote: c.sb.clone(),
        encap_type: if c.encap == "vxlan" {
            EncapType::Vxlan
        } else {
            EncapType::Geneve
        },
        encap_ip: c.encap_ip.into(),
        datapath_type: if c.datapath == "netdev" {
            DatapathType::Netdev
        } else {
            DatapathType::System
        },
        gateway: c.gateway_uplink.as_ref().map(GatewayUplink::new),
        providers: c
            .provider_uplinks
            .iter()
            .map(|u| GatewayUplink::provider(u))
            .collect(),
        ports: c
            .ports
            .iter()
            .map(|(ifname, iface_id)| ChassisPort {
                ifname: ifname.clone(),
                iface_id: iface_id.clone(),
            })
            .collect(),
        ssl: c.ssl.clone(),
    }
}

fn connect(c: &ChassisConf) -> Result<super::ovsdb::Client, LocalError> {
    let err = |source| LocalError::Chassis {
        name: c.name.clone(),
        ovs: c.ovs.clone(),
        source,
    };
    let remotes = Remote::parse_list(&c.ovs).map_err(|e| err(e.into()))?;
    chassis::connect(&remotes, TIMEOUT).map_err(err)
}

/// The chassis kvmnet last made this host, as recorded (the database not read); `None`
/// when there is none or the record cannot be read.
pub fn recorded(sd: &StateDir) -> Option<ChassisConf> {
    load(sd).ok()?.conf
}

/// The chassis a command or daemon is for before the spec settles it: `flag`
/// (`--chassis`), else the chassis kvmnet last made this host. Open vSwitch's service sets
/// `system-id` back to its own (`system-id.conf`) at every start, so a host kvmnet made
/// chassis hv1 stays hv1 until told otherwise; only a host kvmnet never made a chassis goes
/// by `system-id` (see `engine::settle_chassis`).
pub fn flagged_or_recorded(sd: &StateDir, flag: Option<&str>) -> Option<String> {
    flag.map(str::to_string)
        .or_else(|| recorded(sd).map(|c| c.name))
}

/// The chassis as kvmnet last made it, `drifted` when its database no longer matches;
/// `None` when kvmnet has not made this host a chassis.
pub fn observe(sd: &StateDir) -> Result<Option<ChassisConf>, LocalError> {
    let rec = load(sd)?;
    let Some(mut conf) = rec.conf else {
        return Ok(None);
    };
    let client = connect(&conf)?;
    let steps = chassis::steps(&client.replica(), OWNER, &wanted(&conf), &rec.originals).map_err(
        |source| LocalError::Chassis {
            name: conf.name.clone(),
            ovs: conf.ovs.clone(),
            source,
        },
    )?;
    conf.drifted = !steps.is_empty();
    Ok(Some(conf))
}

/// Makes this host the chassis `to` says, or gives back what kvmnet made of it (`None`).
pub fn apply(sd: &StateDir, to: Option<&ChassisConf>) -> Result<(), LocalError> {
    let mut rec = load(sd)?;
    match to {
        Some(c) => {
            let mut c = c.clone();
            c.drifted = false;
            let client = connect(&c)?;
            let out = chassis::converge(&client, OWNER, &wanted(&c), &mut rec.originals);
            // What was borrowed is kept even when the change failed midway: its inverse
            // gives it back.
            rec.conf = Some(c.clone());
            save(sd, &rec)?;
            out.map(drop).map_err(|source| LocalError::Chassis {
                name: c.name.clone(),
                ovs: c.ovs.clone(),
                source,
            })
        }
        None => {
            let Some(c) = rec.conf.clone() else {
                return Ok(());
            };
            let client = connect(&c)?;
            chassis::remove(&client, OWNER, &rec.originals).map_err(|source| {
                LocalError::Chassis {
                    name: c.name.clone(),
                    ovs: c.ovs.clone(),
                    source,
                }
            })?;
            save(sd, &Record::default())
        }
    }
}

/// The `system-id` of the Open_vSwitch database at `ovs`, when one answers and has one:
/// the chassis name ovn-controller registers this host under.
pub fn system_id(ovs: &str) -> Option<String> {
    let remotes = Remote::parse_list(ovs).ok()?;
    let client = chassis::connect(&remotes, Duration::from_secs(2)).ok()?;
    let r = client.replica();
    r.table(chassis::DATABASE)
        .find_map(|(_, row)| row.get("external_ids")?.get("system-id").map(String::from))
}
