//! OVN over TLS (`ssl:` remotes, `ovn.ssl`), on a real OVN whose central databases listen
//! for TLS only where the chassis are (tests/common/ovn_lab.rs, `start_bare_ssl`), with
//! certificates of an OVS PKI made by `ovs-pki`, as an operator's deployment has them.
//!
//! kvmnet writes the Northbound rows over TLS, and points the chassis's ovn-controller at
//! the `ssl:` Southbound database with an `SSL` row of its own, which ovn-controller picks
//! up: the ports come up and the guests ping. A CA that did not sign the databases'
//! certificate is refused at the handshake, and a key file that is not there is named, each
//! with nothing changed; a daemon repairs a row edited by hand over TLS; doctor's `ovn-tls`
//! warns of a certificate about to expire and fails another key's; status and destroy,
//! which run without the spec, reach the database
//! with what the state directory recorded; destroy takes kvmnet's `SSL` row back and leaves
//! the Northbound database as it was (another's switch in it).

mod common;
use common::*;
#[path = "common/ovn_lab.rs"]
mod ovn_lab;
use ovn_lab::{CENTRAL_IP, OvnLab, ovn_present, wait_for, wait_ping};

use std::time::Duration;

/// VMs on a chassis that does not run: rows enough that the transaction and the monitor's
/// replies span many TLS records each way.
const FAR_VMS: usize = 400;

/// The spec: both databases over TLS, with `ca` as the CA certificate and `key` as the
/// private key (files of the lab's PKI).
fn spec(lab: &OvnLab, key: &str, ca: &str, a_ns: &str, b_ns: &str) -> String {
    let pki = lab.pki.as_ref().expect("a TLS lab").display().to_string();
    let far: String = (0..FAR_VMS)
        .map(|i| {
            format!(
                "  f{i}:\n    host: hv9\n    ports:\n      - {{ network: far, mac: \"52:54:00:87:{:02x}:{:02x}\", ipv4: 10.87.{}.{} }}\n",
                i / 256,
                i % 256,
                i / 250,
                i % 250 + 2
            )
        })
        .collect();
    format!(
        r#"version: 1
ovn:
  nb: ssl:{CENTRAL_IP}:6641
  sb: ssl:{CENTRAL_IP}:6642
  ovs: "{ovs}"
  datapath: netdev
  ssl:
    private_key: {pki}/{key}
    certificate: {pki}/hv-cert.pem
    ca_cert: {pki}/ca/{ca}/cacert.pem
  chassis:
    hv1: {{ encap_ip: 172.31.0.1 }}
    hv9: {{ encap_ip: 172.31.0.9 }}
networks:
  web:
    backend: ovn
    mode: isolated
    ipv4: 10.86.0.1/24
  far:
    backend: ovn
    mode: isolated
    ipv4: 10.87.0.1/16
vms:
{far}
  a:
    host: hv1
    ports:
      - {{ network: web, name: sa, kind: veth, netns: {a_ns}, mac: "52:54:00:86:00:0a", ipv4: 10.86.0.10 }}
  b:
    host: hv1
    ports:
      - {{ network: web, name: sb, kind: veth, netns: {b_ns}, mac: "52:54:00:86:00:0b", ipv4: 10.86.0.11 }}
"#,
        ovs = lab.ovs_db(1),
    )
}

#[test]
fn nb_and_sb_over_tls() {
    if !privileged() || !ovn_present() {
        return;
    }
    let mut lab = OvnLab::start_bare_ssl(1);
    // ovn-controller runs before kvmnet makes the host a chassis, as on an installed host:
    // it takes the SSL row when kvmnet writes it.
    lab.start_controller(1);
    lab.nbctl("ls-add foreign -- set logical_switch foreign external_ids:team=infra");
    let before = lab.nb_rows();
    let (a_ns, b_ns) = (lab.ns.reserve("sa"), lab.ns.reserve("sb"));
    let hv = lab.chassis[0].ns.clone();
    let run = |file: &SpecFile, cmd: &str| {
        lab.ns
            .kvmnet(&[cmd, file.path(), "--netns", &hv, "--chassis", "hv1"])
    };
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };

    // The other CA of the PKI signed neither certificate: refused at the handshake.
    let wrong_ca = SpecFile::new(&spec(&lab, "hv-privkey.pem", "controllerca", &a_ns, &b_ns));
    let o = run(&wrong_ca, "apply");
    assert!(!o.status.success(), "an unknown CA is refused");
    let out = text(&o);
    assert!(
        out.contains(&format!("ssl:{CENTRAL_IP}:6641")) && out.contains("certificate"),
        "{out}"
    );
    // A key that is not there is named.
    let no_key = SpecFile::new(&spec(&lab, "nowhere.pem", "switchca", &a_ns, &b_ns));
    let o = run(&no_key, "apply");
    assert!(!o.status.success());
    assert!(text(&o).contains("nowhere.pem"), "{}", text(&o));
    assert_eq!(
        lab.nb_rows(),
        before,
        "a refused connection changes nothing"
    );
    assert_eq!(lab.vsctl(1, "get-ssl").trim(), "", "nor the chassis");

    let file = SpecFile::new(&spec(&lab, "hv-privkey.pem", "switchca", &a_ns, &b_ns));
    let o = run(&file, "apply");
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("ovn-switch web"), "{out}");
    let ssl = lab.vsctl(1, "get-ssl");
    assert!(
        ssl.contains("hv-privkey.pem") && ssl.contains("switchca"),
        "{ssl}"
    );
    assert_eq!(
        lab.vsctl(1, "get open_vswitch . external_ids:ovn-remote")
            .trim(),
        format!("\"ssl:{CENTRAL_IP}:6642\"")
    );
    // ovn-controller reached the Southbound database over TLS: it registered the chassis
    // and bound both ports.
    lab.sbctl("--timeout=30 wait-until Chassis hv1");
    ok_in(&a_ns, "ethtool -K eth0 tx off >/dev/null");
    ok_in(&b_ns, "ethtool -K eth0 tx off >/dev/null");
    lab.wait_up("sa");
    lab.wait_up("sb");
    wait_ping(&a_ns, "10.86.0.11");

    let o = run(&file, "plan");
    assert!(text(&o).contains("No changes"), "{}", text(&o));
    status_without_the_spec(&lab, &hv);

    daemon_repairs_over_tls(&lab, &file, &hv);
    doctor_examines_the_files(&lab);

    lab.ns
        .kvmnet_ok(&["destroy", "--netns", &hv, "--chassis", "hv1"]);
    assert_eq!(
        lab.nb_rows(),
        before,
        "destroy over TLS leaves NB as it was"
    );
    assert_eq!(
        lab.vsctl(1, "get-ssl").trim(),
        "",
        "and takes its SSL row back"
    );
}

/// Without the spec: status reads both databases with the files the state directory
/// recorded, and shows both ports up on hv1 and the far ones.
fn status_without_the_spec(lab: &OvnLab, hv: &str) {
    let status = lab
        .ns
        .kvmnet_ok(&["status", "--json", "--netns", hv, "--chassis", "hv1"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        v["ovn"]["errors"].as_array().is_none_or(Vec::is_empty),
        "{status}"
    );
    let nets = v["ovn"]["networks"].as_array().cloned().unwrap_or_default();
    let web = nets
        .iter()
        .find(|n| n["network"] == "web")
        .expect("web in status");
    let ports = web["ports"].as_array().cloned().unwrap_or_default();
    assert!(
        ports.len() == 2
            && ports
                .iter()
                .all(|p| p["up"] == true && p["chassis"] == "hv1"),
        "{web}"
    );
    let far = nets
        .iter()
        .find(|n| n["network"] == "far")
        .expect("far in status");
    assert_eq!(far["ports"].as_array().map(Vec::len), Some(FAR_VMS));
}

/// A daemon keeps its monitored view of the Northbound database over TLS: a port's port
/// security cleared by hand is put back within its reconcile interval.
fn daemon_repairs_over_tls(lab: &OvnLab, file: &SpecFile, hv: &str) {
    let _daemon = lab.start_daemon(1, file.path(), Some("hv1"));
    // Through the daemon: nothing to change.
    let out = lab
        .ns
        .kvmnet_ok(&["apply", file.path(), "--netns", hv, "--chassis", "hv1"]);
    assert!(!out.contains("ovn-port"), "{out}");
    lab.nbctl("lsp-set-port-security sa");
    wait_for(
        "the daemon to restore sa's port security",
        Duration::from_secs(20),
        || {
            lab.nbctl("get Logical_Switch_Port sa port_security")
                .contains("10.86.0.10")
        },
    );
}

/// doctor's `ovn-tls` on the files of the spec in force: ok as the PKI made them; a
/// certificate signed for 10 days in their place (an X.509 v3 one, as TLS libraries
/// require) is warned of with its days left; the
/// databases' certificate there (not the key's) fails, naming the file. The files are put
/// back after.
fn doctor_examines_the_files(lab: &OvnLab) {
    let pki = lab.pki.as_ref().expect("a TLS lab");
    let status = |why: &str| {
        let (_, checks) = lab.doctor(1, "ovn-tls");
        assert_eq!(checks.len(), 1, "{why}: {checks:?}");
        checks[0].clone()
    };
    let made = status("as made");
    assert_eq!(made["status"], "ok", "{made}");

    let cert = pki.join("hv-cert.pem");
    let kept = std::fs::read(&cert).unwrap();
    let short = pki.join("short-cert.pem");
    let ca = pki.join("ca/switchca");
    ok(&format!(
        "openssl req -new -key {p}/hv-privkey.pem -subj '/CN=hv short' -out {p}/short.req 2>/dev/null && \
         echo basicConstraints=CA:FALSE > {p}/short.ext && \
         openssl x509 -req -in {p}/short.req -CA {ca}/cacert.pem -CAkey {ca}/private/cakey.pem \
         -CAcreateserial -CAserial {p}/short.srl -extfile {p}/short.ext -days 10 -out {short} 2>/dev/null",
        p = pki.display(),
        ca = ca.display(),
        short = short.display()
    ));
    // The check with `from` in the certificate's place, the certificate put back after.
    let with_cert = |from: &std::path::Path, why: &str| {
        std::fs::copy(from, &cert).unwrap();
        let check = status(why);
        std::fs::write(&cert, &kept).unwrap();
        check
    };
    let says = |check: &serde_json::Value, st: &str, text: &str| {
        assert_eq!(check["status"], st, "{check}");
        let message = check["message"].as_str().unwrap_or_default();
        assert!(message.contains(text), "{check}");
    };
    says(
        &with_cert(&short, "a 10-day certificate"),
        "warn",
        "expires in 10 day(s)",
    );
    says(
        &with_cert(&pki.join("central-cert.pem"), "another key's certificate"),
        "fail",
        &cert.display().to_string(),
    );
    assert_eq!(status("put back")["status"], "ok");
}
