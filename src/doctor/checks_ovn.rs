//! doctor's checks of the spec's OVN part, pure: the databases answer, ovn-controller runs
//! for this chassis and is registered, ovs-vswitchd runs and reports no problem with
//! kvmnet's ports, Open vSwitch keeps the chassis name across restarts, and the tunnel
//! endpoint is on this host, on an interface that carries the underlay's MTU. kvmnet never
//! starts OVS or OVN daemons (the distribution's services do), so each failure names the
//! service to start or the fix.

use super::{Check, Facts, Status};
use crate::ovn::report::{OvnFacts, ProviderFacts};

const NB_FIX: &str = "start the central OVN databases: systemctl start ovn-central (Debian, Ubuntu) or ovn-northd (RHEL, Fedora); or correct ovn.nb";
const SB_FIX: &str = "start the central OVN databases: systemctl start ovn-central (Debian, Ubuntu) or ovn-northd (RHEL, Fedora); or correct ovn.sb";
const OVS_FIX: &str = "start Open vSwitch: systemctl start openvswitch-switch (Debian, Ubuntu) or openvswitch (RHEL, Fedora); or correct ovn.ovs (or the chassis's ovs)";
const VSWITCHD_FIX: &str = "start Open vSwitch: systemctl start openvswitch-switch (Debian, Ubuntu) or openvswitch (RHEL, Fedora)";
const CONTROLLER_FIX: &str = "start ovn-controller: systemctl start ovn-host (Debian, Ubuntu) or ovn-controller (RHEL, Fedora)";

fn db(id: &'static str, what: &str, remote: &str, error: &Option<String>, fix: &str) -> Check {
    match error {
        None => Check::with(
            id,
            Status::Ok,
            remote,
            format!("{what} {remote} answers"),
            "",
        ),
        Some(e) => Check::with(
            id,
            Status::Fail,
            remote,
            format!("{what} {remote} does not answer: {e}"),
            fix,
        ),
    }
}

fn controller(o: &OvnFacts) -> Vec<Check> {
    let Some(c) = &o.controller else {
        return Vec::new();
    };
    let ch = &o.chassis;
    let running = match c {
        Ok(pid) => Check::with(
            "ovn-controller",
            Status::Ok,
            ch,
            format!("ovn-controller runs for chassis {ch} (pid {pid})"),
            "",
        ),
        Err(why) => Check::with(
            "ovn-controller",
            Status::Fail,
            ch,
            format!("ovn-controller is not running for chassis {ch}: {why}"),
            CONTROLLER_FIX,
        ),
    };
    let mut out = vec![running];
    match o.registered {
        Some(true) => out.push(Check::with(
            "ovn-chassis",
            Status::Ok,
            ch,
            format!("chassis {ch} is registered in the Southbound database"),
            "",
        )),
        Some(false) => out.push(Check::with(
            "ovn-chassis",
            Status::Fail,
            ch,
            format!("chassis {ch} is not registered in the Southbound database"),
            format!(
                "kvmnet apply (it sets system-id {ch} and ovn-remote {}), then see ovn-controller's log",
                o.sb
            ),
        )),
        None => {}
    }
    out
}

/// The `system-id` Open vSwitch's service sets at its next start: when it is not this
/// chassis's name, a reboot has ovn-controller register under another name (a new
/// chassis, holding none of this one's ports) until kvmnet sets it again.
fn system_id(o: &OvnFacts) -> Option<Check> {
    let ch = &o.chassis;
    let (path, id) = o.next_system_id.as_ref()?;
    let (status, message) = match id {
        Some(id) if id == ch => (
            Status::Ok,
            format!("Open vSwitch keeps system-id {ch} across restarts ({path})"),
        ),
        Some(id) => (
            Status::Warn,
            format!(
                "Open vSwitch's service sets system-id {id} ({path}) at its next start, not {ch}: ovn-controller then registers as {id} until kvmnet sets {ch} again"
            ),
        ),
        None => (
            Status::Warn,
            format!(
                "{path} does not exist: Open vSwitch's service makes a random system-id at its next start, not {ch}, and ovn-controller registers under it until kvmnet sets {ch} again"
            ),
        ),
    };
    let fix = if status == Status::Ok {
        String::new()
    } else {
        format!("echo {ch} > {path}")
    };
    Some(Check::with("ovn-system-id", status, ch, message, fix))
}

/// ovs-vswitchd, checked on a chassis whose Open_vSwitch database is a local socket (a
/// remote one's switch runs on another machine).
fn vswitchd(o: &OvnFacts) -> Option<Check> {
    let ch = &o.chassis;
    Some(match o.vswitchd.as_ref()? {
        Ok(pid) => Check::with(
            "ovn-vswitchd",
            Status::Ok,
            ch,
            format!("ovs-vswitchd runs for chassis {ch} (pid {pid})"),
            "",
        ),
        Err(why) => Check::with(
            "ovn-vswitchd",
            Status::Fail,
            ch,
            format!(
                "ovs-vswitchd is not running for chassis {ch}: {why}; no port of br-int carries traffic"
            ),
            VSWITCHD_FIX,
        ),
    })
}

fn ports(o: &OvnFacts) -> Vec<Check> {
    if o.ovs_error.is_some() {
        return Vec::new();
    }
    if o.port_errors.is_empty() {
        return vec![Check::with(
            "ovn-ports",
            Status::Ok,
            &o.chassis,
            "ovs-vswitchd reports no problem with kvmnet's ports",
            "",
        )];
    }
    o.port_errors
        .iter()
        .map(|e| {
            Check::with(
                "ovn-ports",
                Status::Fail,
                &o.chassis,
                e.clone(),
                "make the port's interface exist: kvmnet apply (veth), or start the VM (tap)",
            )
        })
        .collect()
}

fn encap(o: &OvnFacts) -> Vec<Check> {
    let Some(ip) = o.encap_ip else {
        return Vec::new();
    };
    let ch = &o.chassis;
    let under = o.underlay_mtu;
    vec![
        if let Some((dev, mtu)) = o.encap_dev.as_ref().filter(|d| d.1 != 0 && d.1 < under) {
            Check::with(
                "ovn-encap-ip",
                Status::Fail,
                ch,
                format!(
                    "the tunnel endpoint {ip} of chassis {ch} is on {dev}, whose MTU is {mtu}, less than ovn.underlay_mtu {under}: guests' full-size frames do not cross the tunnel"
                ),
                format!(
                    "ip link set {dev} mtu {under} (and the underlay's switches), or lower ovn.underlay_mtu to {mtu}"
                ),
            )
        } else if o.encap_dev.is_some() {
            Check::with(
                "ovn-encap-ip",
                Status::Ok,
                ch,
                format!("the tunnel endpoint {ip} of chassis {ch} is on this host"),
                "",
            )
        } else {
            Check::with(
                "ovn-encap-ip",
                Status::Fail,
                ch,
                format!("the tunnel endpoint {ip} of chassis {ch} is on no interface here"),
                format!(
                    "ip addr add {ip}/PREFIX dev UNDERLAY, or correct ovn.chassis.{ch}.encap_ip"
                ),
            )
        },
    ]
}

/// `ovs-vsctl` for this chassis's database: `--db` only when it is not the default.
fn vsctl(o: &OvnFacts, args: &str) -> String {
    if o.ovs == kvmnet_core::spec::ovn::OVS_DEFAULT {
        format!("ovs-vsctl {args}")
    } else {
        format!("ovs-vsctl --db={} {args}", o.ovs)
    }
}

/// `mappings` with `physnet` mapped to `bridge` (an entry for it replaced), others kept.
fn mapped(mappings: Option<&str>, physnet: &str, bridge: &str) -> String {
    let mut list: Vec<&str> = mappings
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty() && m.split(':').next() != Some(physnet))
        .collect();
    let ours = format!("{physnet}:{bridge}");
    list.push(&ours);
    list.join(",")
}

/// What an uplink that does not work costs: a provider uplink's, or the gateway's.
fn consequence(p: &ProviderFacts, gateway: bool) -> &'static str {
    match (gateway, p.networks.is_empty()) {
        (false, _) => "its provider networks' guests reach nothing beyond this chassis",
        (true, false) => {
            "the nat networks leave by nothing here, nor do routed ones, while this chassis holds the gateway (OVN moves the gateway only when this chassis stops answering over the tunnels, not when its uplink fails)"
        }
        (true, true) => {
            "nat and routed networks would leave by nothing here while this chassis holds the gateway"
        }
    }
}

/// What is wrong with one uplink (a provider networks', or the gateway's): the interface
/// missing, not a port of its bridge, or its physical network not mapped to that bridge;
/// each a failure with its fix.
fn provider_problems(
    f: &Facts,
    o: &OvnFacts,
    p: &ProviderFacts,
    gateway: bool,
) -> Vec<(String, String)> {
    let (u, br, ch) = (&p.uplink, &p.bridge, &o.chassis);
    let costs = consequence(p, gateway);
    let mut out = Vec::new();
    if !p.device {
        let change = if gateway {
            "ovn.external.uplink"
        } else {
            "the networks' uplink"
        };
        out.push((
            format!("the uplink {u} does not exist on chassis {ch}: {costs}"),
            format!(
                "create or rename the interface {u} on this host ({}), or change {change}; then kvmnet apply",
                f.here("ip link")
            ),
        ));
    }
    let Some(seen) = &p.seen else {
        return out;
    };
    if p.in_bridge() == Some(false) {
        let (where_, fix) = match (&seen.held_by, seen.bridge_exists) {
            (Some(other), _) => (
                format!("it is a port of {other}"),
                format!(
                    "{}, then kvmnet apply",
                    vsctl(o, &format!("del-port {other} {u}"))
                ),
            ),
            (None, false) => (
                format!("the bridge {br} does not exist"),
                "kvmnet apply (it makes the bridge and puts the uplink in it)".to_string(),
            ),
            (None, true) => (
                "it is in no bridge".to_string(),
                format!(
                    "kvmnet apply (it puts {u} back), or by hand: {}",
                    vsctl(o, &format!("add-port {br} {u}"))
                ),
            ),
        };
        out.push((
            format!("the uplink {u} is not in its Open vSwitch bridge {br} ({where_}): {costs}"),
            fix,
        ));
    }
    if p.mapped() == Some(false) {
        let now = match &seen.mapped_to {
            Some(b) => format!("it maps {} to {b}", p.physnet),
            None => format!("it has no {}", p.physnet),
        };
        out.push((
            format!(
                "ovn-bridge-mappings does not map {} to {br} ({now}): ovn-controller connects no localnet port to the uplink {u}",
                p.physnet
            ),
            format!(
                "kvmnet apply, or by hand: {}",
                vsctl(
                    o,
                    &format!(
                        "set open_vswitch . external_ids:ovn-bridge-mappings=\"{}\"",
                        mapped(o.mappings.as_deref(), &p.physnet, br)
                    )
                )
            ),
        ));
    }
    out
}

/// `ovn-provider`: each provider networks' uplink exists, is a port of its bridge, and its
/// physical network is mapped to that bridge. `ovn-gateway-uplink`: the same of the
/// gateway's uplink (`ovn.external.uplink` in `br-ex`, `kvmnet-ext`) on a gateway chassis.
fn providers(f: &Facts, o: &OvnFacts) -> Vec<Check> {
    let gateway = o.gateway_uplink.iter().map(|p| (p, true));
    let providers = o.providers.iter().map(|p| (p, false));
    let mut out = Vec::new();
    for (p, is_gateway) in gateway.chain(providers) {
        let (id, of) = if is_gateway {
            ("ovn-gateway-uplink", "the gateway's uplink")
        } else {
            ("ovn-provider", "the uplink")
        };
        let problems = provider_problems(f, o, p, is_gateway);
        if problems.is_empty() {
            let how = if p.seen.is_some() {
                format!(
                    "is in its Open vSwitch bridge {} and {} maps to it",
                    p.bridge, p.physnet
                )
            } else {
                "exists (the Open_vSwitch database could not be read)".to_string()
            };
            let nets = if p.networks.is_empty() {
                String::new()
            } else {
                format!(" of {}", p.networks.join(", "))
            };
            out.push(Check::with(
                id,
                Status::Ok,
                &p.uplink,
                format!("{of} {}{nets} {how}", p.uplink),
                "",
            ));
        }
        for (message, fix) in problems {
            out.push(Check::with(id, Status::Fail, &p.uplink, message, fix));
        }
    }
    out
}

/// The OVN checks, when the spec in force has OVN networks.
pub fn ovn(facts: &Facts) -> Vec<Check> {
    let Some(o) = &facts.ovn else {
        return Vec::new();
    };
    let mut out = vec![
        db(
            "ovn-nb",
            "the OVN Northbound database",
            &o.nb,
            &o.nb_error,
            NB_FIX,
        ),
        db(
            "ovn-sb",
            "the OVN Southbound database",
            &o.sb,
            &o.sb_error,
            SB_FIX,
        ),
        db(
            "ovn-ovs",
            "this host's Open_vSwitch database",
            &o.ovs,
            &o.ovs_error,
            OVS_FIX,
        ),
    ];
    if !o.listed {
        out.push(Check::with(
            "ovn-chassis",
            Status::Warn,
            &o.chassis,
            format!(
                "this host (chassis {}) is not under ovn.chassis: it writes the Northbound rows but carries no VM ports",
                o.chassis
            ),
            "kvmnet apply --chassis NAME (a name under ovn.chassis)",
        ));
    }
    out.extend(controller(o));
    out.extend(vswitchd(o));
    out.extend(system_id(o));
    out.extend(ports(o));
    out.extend(encap(o));
    out.extend(providers(facts, o));
    out.extend(tls(o));
    out
}

/// `ovn.ssl`'s files: usable, signed by `ca_cert`, and not about to expire.
fn tls(o: &OvnFacts) -> Option<Check> {
    use crate::ovn::ovsdb::tls_files::{EXPIRY_WARN_DAYS, FilesStand};
    const RENEW: &str = "renew the certificate (ovs-pki req+sign, or your CA) at ovn.ssl.certificate: OVS's daemons read a changed certificate file again, and kvmnet reads it at each connection";
    let (status, message, fix) = match o.tls.as_ref()? {
        FilesStand::Good => (
            Status::Ok,
            format!(
                "ovn.ssl: the key is the certificate's, which ca_cert signed and which is valid for {EXPIRY_WARN_DAYS} days more at least"
            ),
            "",
        ),
        FilesStand::ExpiresSoon { days } => (
            Status::Warn,
            format!(
                "ovn.ssl: the certificate expires in {days} day(s); then this host can no longer reach the ssl: databases"
            ),
            RENEW,
        ),
        FilesStand::OtherIssuer(why) => (
            Status::Warn,
            format!("ovn.ssl: {why}; the databases accept it only if their own CA signed it"),
            "use a certificate signed by the CA of ovn.ssl.ca_cert, as an OVS PKI signs every certificate with one CA",
        ),
        FilesStand::Unusable(why) => (
            Status::Fail,
            format!("ovn.ssl: {why}"),
            "fix the file named (ovn.ssl's private_key, certificate and ca_cert are PEM files readable by root; the key must be the certificate's)",
        ),
    };
    Some(Check::with("ovn-tls", status, &o.chassis, message, fix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovn::chassis::UplinkSeen;

    fn healthy() -> OvnFacts {
        OvnFacts {
            chassis: "hv1".into(),
            listed: true,
            nb: "unix:/nb".into(),
            sb: "unix:/sb".into(),
            ovs: "unix:/ovs".into(),
            registered: Some(true),
            controller: Some(Ok(42)),
            vswitchd: Some(Ok(41)),
            next_system_id: Some(("/etc/openvswitch/system-id.conf".into(), Some("hv1".into()))),
            encap_ip: Some("172.31.0.1".parse().unwrap()),
            encap_dev: Some(("eth1".into(), 1500)),
            underlay_mtu: 1500,
            ..OvnFacts::default()
        }
    }

    fn provider(seen: UplinkSeen, device: bool) -> OvnFacts {
        OvnFacts {
            ovs: "unix:/lab/db.sock".into(),
            mappings: Some("other:br-o,kvmnet-pn-pup:kvpn-pup".into()),
            providers: vec![ProviderFacts {
                uplink: "pup".into(),
                bridge: "kvpn-pup".into(),
                physnet: "kvmnet-pn-pup".into(),
                networks: vec!["lan".into(), "v100".into()],
                device,
                seen: Some(seen),
            }],
            ..healthy()
        }
    }

    fn good() -> UplinkSeen {
        UplinkSeen {
            held_by: Some("kvpn-pup".into()),
            bridge_exists: true,
            mapped_to: Some("kvpn-pup".into()),
        }
    }

    fn provider_checks(o: OvnFacts) -> Vec<Check> {
        ovn(&Facts {
            scope: "hv1ns".into(),
            ovn: Some(o),
            ..Facts::default()
        })
        .into_iter()
        .filter(|c| c.id == "ovn-provider")
        .collect()
    }

    #[test]
    fn tls_files_are_checked_when_the_spec_has_them() {
        use crate::ovn::ovsdb::tls_files::FilesStand;
        let tls = |stand: Option<FilesStand>| {
            ovn(&Facts {
                ovn: Some(OvnFacts {
                    tls: stand,
                    ..healthy()
                }),
                ..Facts::default()
            })
            .into_iter()
            .filter(|c| c.id == "ovn-tls")
            .collect::<Vec<_>>()
        };
        assert!(tls(None).is_empty(), "no ovn.ssl, no check");
        assert_eq!(tls(Some(FilesStand::Good))[0].status, Status::Ok);
        let soon = &tls(Some(FilesStand::ExpiresSoon { days: 9 }))[0];
        assert_eq!(soon.status, Status::Warn);
        assert!(soon.message.contains("in 9 day(s)"), "{}", soon.message);
        assert!(soon.fix.contains("renew"), "{}", soon.fix);
        let other = &tls(Some(FilesStand::OtherIssuer("x".into())))[0];
        assert_eq!(other.status, Status::Warn);
        let bad = &tls(Some(FilesStand::Unusable(
            "certificate /c.pem: expired".into(),
        )))[0];
        assert_eq!(bad.status, Status::Fail);
        assert!(bad.message.contains("/c.pem"), "{}", bad.message);
    }

    #[test]
    fn a_provider_uplink_in_its_bridge_and_mapped_passes() {
        let c = provider_checks(provider(good(), true));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, Status::Ok);
        assert_eq!(c[0].subject, "pup");
        assert!(c[0].message.contains("lan, v100"), "{}", c[0].message);
        assert!(
            provider_checks(healthy()).is_empty(),
            "no provider networks"
        );
    }

    /// The gateway's uplink is checked as a provider's, under its own id and with what its
    /// failure costs: the nat networks' way out.
    #[test]
    fn the_gateway_uplink_is_checked_under_its_own_id() {
        let gateway = |seen: UplinkSeen| OvnFacts {
            mappings: Some("kvmnet-ext:br-ex".into()),
            gateway_uplink: Some(ProviderFacts {
                uplink: "eth1".into(),
                bridge: "br-ex".into(),
                physnet: "kvmnet-ext".into(),
                networks: vec!["web".into()],
                device: true,
                seen: Some(seen),
            }),
            ..healthy()
        };
        let checks = |o| {
            ovn(&Facts {
                ovn: Some(o),
                ..Facts::default()
            })
            .into_iter()
            .filter(|c| c.id == "ovn-gateway-uplink")
            .collect::<Vec<_>>()
        };
        let held = UplinkSeen {
            held_by: Some("br-ex".into()),
            bridge_exists: true,
            mapped_to: Some("br-ex".into()),
        };
        let ok = checks(gateway(held.clone()));
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].status, Status::Ok);
        assert!(ok[0].message.contains("eth1 of web"), "{}", ok[0].message);
        let out = checks(gateway(UplinkSeen {
            held_by: None,
            ..held
        }));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Fail);
        assert!(
            out[0]
                .message
                .contains("not in its Open vSwitch bridge br-ex")
                && out[0].message.contains("nat networks leave by nothing"),
            "{}",
            out[0].message
        );
        assert!(out[0].fix.contains("add-port br-ex eth1"), "{}", out[0].fix);
        assert!(provider_checks(gateway(good())).is_empty());
    }

    #[test]
    fn each_provider_problem_fails_with_its_fix() {
        let gone = provider_checks(provider(good(), false));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].status, Status::Fail);
        assert!(gone[0].message.contains("pup does not exist"));
        assert!(
            gone[0].fix.contains("ip netns exec hv1ns ip link"),
            "{}",
            gone[0].fix
        );

        let out = provider_checks(provider(
            UplinkSeen {
                held_by: None,
                ..good()
            },
            true,
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Fail);
        assert!(
            out[0]
                .message
                .contains("not in its Open vSwitch bridge kvpn-pup (it is in no bridge)")
        );
        assert!(
            out[0]
                .fix
                .contains("ovs-vsctl --db=unix:/lab/db.sock add-port kvpn-pup pup"),
            "{}",
            out[0].fix
        );
        let other = provider_checks(provider(
            UplinkSeen {
                held_by: Some("br-o".into()),
                bridge_exists: false,
                ..good()
            },
            true,
        ));
        assert!(other[0].message.contains("it is a port of br-o"));
        assert!(other[0].fix.contains("del-port br-o pup"));

        let mut unmapped = provider(
            UplinkSeen {
                mapped_to: None,
                ..good()
            },
            true,
        );
        unmapped.mappings = Some("other:br-o".into());
        let out = provider_checks(unmapped);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, Status::Fail);
        assert!(
            out[0]
                .message
                .contains("does not map kvmnet-pn-pup to kvpn-pup (it has no kvmnet-pn-pup)")
        );
        assert!(
            out[0].fix.ends_with(
                "set open_vswitch . external_ids:ovn-bridge-mappings=\"other:br-o,kvmnet-pn-pup:kvpn-pup\""
            ),
            "{}",
            out[0].fix
        );
        // Mapped elsewhere: the entry is replaced, not added twice.
        assert_eq!(
            mapped(
                Some("kvmnet-pn-pup:br-x,other:br-o"),
                "kvmnet-pn-pup",
                "kvpn-pup"
            ),
            "other:br-o,kvmnet-pn-pup:kvpn-pup"
        );
    }

    fn run(o: OvnFacts) -> Vec<Check> {
        ovn(&Facts {
            ovn: Some(o),
            ..Facts::default()
        })
    }

    #[test]
    fn healthy_passes_and_each_failure_names_its_fix() {
        assert!(run(healthy()).iter().all(|c| c.status == Status::Ok));
        assert!(ovn(&Facts::default()).is_empty());
        let down = run(OvnFacts {
            controller: Some(Err("no pid file".into())),
            ..healthy()
        });
        let c = down.iter().find(|c| c.id == "ovn-controller").unwrap();
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("systemctl start ovn-host"));
        let down = run(OvnFacts {
            vswitchd: Some(Err("no pid file".into())),
            ..healthy()
        });
        let c = down.iter().find(|c| c.id == "ovn-vswitchd").unwrap();
        assert_eq!(c.status, Status::Fail);
        for next in [Some("0b7c1f9e".to_string()), None] {
            let warned = run(OvnFacts {
                next_system_id: Some(("/etc/openvswitch/system-id.conf".into(), next)),
                ..healthy()
            });
            let c = warned.iter().find(|c| c.id == "ovn-system-id").unwrap();
            assert_eq!(c.status, Status::Warn, "{c:?}");
            assert_eq!(c.fix, "echo hv1 > /etc/openvswitch/system-id.conf");
        }
        assert_eq!(c.status, Status::Fail);
        assert!(c.fix.contains("systemctl start openvswitch-switch"));
        let nb = run(OvnFacts {
            nb_error: Some("refused".into()),
            ..healthy()
        });
        assert!(
            nb.iter()
                .any(|c| c.id == "ovn-nb" && c.status == Status::Fail)
        );
        let small = run(OvnFacts {
            encap_dev: Some(("eth1".into(), 1400)),
            ..healthy()
        });
        let c = small.iter().find(|c| c.id == "ovn-encap-ip").unwrap();
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.message.contains("1400") && c.fix.contains("ip link set eth1 mtu 1500"));
        let enc = run(OvnFacts {
            encap_dev: None,
            ..healthy()
        });
        assert!(
            enc.iter()
                .any(|c| c.id == "ovn-encap-ip" && c.status == Status::Fail)
        );
        let p = run(OvnFacts {
            port_errors: vec!["ovs: port x: could not open".into()],
            ..healthy()
        });
        assert!(
            p.iter()
                .any(|c| c.id == "ovn-ports" && c.status == Status::Fail)
        );
    }
}
