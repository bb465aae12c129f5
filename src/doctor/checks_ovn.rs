//! doctor's checks of the spec's OVN part, pure: the databases answer, ovn-controller runs
//! for this chassis and is registered, ovs-vswitchd reports no problem with kvmnet's ports,
//! and the tunnel endpoint is on this host. kvmnet never starts OVS or OVN daemons (the
//! distribution's services do), so each failure names the service to start or the fix.

use super::{Check, Facts, Status};
use crate::ovn::report::OvnFacts;

const NB_FIX: &str = "start the central OVN databases: systemctl start ovn-central (Debian, Ubuntu) or ovn-northd (RHEL, Fedora); or correct ovn.nb";
const SB_FIX: &str = "start the central OVN databases: systemctl start ovn-central (Debian, Ubuntu) or ovn-northd (RHEL, Fedora); or correct ovn.sb";
const OVS_FIX: &str = "start Open vSwitch: systemctl start openvswitch-switch (Debian, Ubuntu) or openvswitch (RHEL, Fedora); or correct ovn.ovs (or the chassis's ovs)";
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
    vec![if o.encap_here {
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
            format!("ip addr add {ip}/PREFIX dev UNDERLAY, or correct ovn.chassis.{ch}.encap_ip"),
        )
    }]
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
    out.extend(ports(o));
    out.extend(encap(o));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> OvnFacts {
        OvnFacts {
            chassis: "hv1".into(),
            listed: true,
            nb: "unix:/nb".into(),
            sb: "unix:/sb".into(),
            ovs: "unix:/ovs".into(),
            registered: Some(true),
            controller: Some(Ok(42)),
            encap_ip: Some("172.31.0.1".parse().unwrap()),
            encap_here: true,
            ..OvnFacts::default()
        }
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
        let nb = run(OvnFacts {
            nb_error: Some("refused".into()),
            ..healthy()
        });
        assert!(
            nb.iter()
                .any(|c| c.id == "ovn-nb" && c.status == Status::Fail)
        );
        let enc = run(OvnFacts {
            encap_here: false,
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
