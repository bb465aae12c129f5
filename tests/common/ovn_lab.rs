//! A real OVN deployment for tests, built the way an operator installs it: central NB and SB
//! databases with ovn-northd, and per chassis an Open_vSwitch database, ovs-vswitchd and
//! ovn-controller. Every daemon runs from its own folder with its own pid, socket and log
//! files; chassis are namespaces joined by an underlay bridge in a namespace of their own.
//! Everything is stopped and removed when the lab is dropped, test passed or not.
//!
//! What these machines need (see the OVN notes in the design brief): only the userspace
//! (netdev) datapath works; ovs-vswitchd and ovn-controller run inside the chassis
//! namespace; the tunnel endpoint address sits on an OVS bridge (`br-phy`) holding the
//! underlay port, with the peers' MACs pinned (`tnl/arp/set`) so no first packet is lost;
//! the underlay's MTU is 1600 so Geneve's 58 bytes fit under a 1500-byte guest MTU; guest
//! veth ends need `tx off`, since the netdev datapath forwards partial checksums unfilled.
//!
//! [`OvnLab::start`] configures each chassis for OVN the way an operator's `ovs-vsctl` would
//! (`external_ids`, `br-int`); [`OvnLab::start_bare`] leaves that out, for tests of the code
//! that does it, and starts no ovn-controller until [`OvnLab::start_controller`] (which on
//! a bare chassis makes `br-int` at once, as it does on a freshly installed host).
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{Daemon, Namespaces, ok, ok_in, pings, unique};

pub struct Chassis {
    /// The chassis name (`system-id`): `hv1`, `hv2`, ...
    pub name: String,
    /// Its namespace.
    pub ns: String,
    pub dir: PathBuf,
    /// Its tunnel endpoint on the underlay.
    pub encap_ip: String,
}

/// Where the central databases listen for TLS in a lab made by [`OvnLab::start_bare_ssl`]:
/// on the underlay, NB on port 6641 and SB on 6642.
pub const CENTRAL_IP: &str = "172.31.0.250";

pub struct OvnLab {
    pub dir: PathBuf,
    /// The OVS PKI of a lab whose databases speak TLS (see [`OvnLab::start_bare_ssl`]).
    pub pki: Option<PathBuf>,
    pub chassis: Vec<Chassis>,
    /// Pid files of every daemon, in the order they are stopped.
    pidfiles: Vec<PathBuf>,
    pub ns: Namespaces,
}

/// Whether the OVN and OVS programs are installed; under CI their absence fails the test.
pub fn ovn_present() -> bool {
    let ok = [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovn-controller",
        "ovn-northd",
        "ovn-nbctl",
    ]
    .iter()
    .all(|p| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok()
    });
    if !ok && std::env::var_os("CI").is_some() {
        panic!("openvswitch-switch, ovn-central and ovn-host must be installed under CI");
    }
    ok
}

/// Polls `ready` every 50 ms until it holds; fails the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ready() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl OvnLab {
    /// Central databases and northd, and `n` chassis on one underlay, configured for OVN
    /// and registered in the Southbound database.
    pub fn start(n: usize) -> OvnLab {
        OvnLab::start_with(n, false, false)
    }

    /// Like [`OvnLab::start`], but every chassis is bare: its Open_vSwitch database holds
    /// the underlay bridge (`br-phy`) only, no `external_ids` for OVN and no `br-int`, and
    /// ovn-controller is not started.
    pub fn start_bare(n: usize) -> OvnLab {
        OvnLab::start_with(n, true, false)
    }

    /// [`OvnLab::start_bare`], the central databases in a namespace of their own on the
    /// underlay, listening for TLS there too (`pssl:`, at [`CENTRAL_IP`]), with certificates
    /// of a fresh OVS PKI (`ovs-pki`, in [`OvnLab::pki`]): `central` for the databases and
    /// `hv` for the chassis, both signed by its `switchca`. Its `controllerca` signed
    /// neither.
    pub fn start_bare_ssl(n: usize) -> OvnLab {
        OvnLab::start_with(n, true, true)
    }

    fn start_with(n: usize, bare: bool, ssl: bool) -> OvnLab {
        let dir = std::env::temp_dir().join(unique("ovn"));
        std::fs::create_dir_all(dir.join("central")).unwrap();
        let mut lab = OvnLab {
            dir,
            pki: None,
            chassis: Vec::new(),
            pidfiles: Vec::new(),
            ns: Namespaces::new(),
        };
        let underlay = lab.ns.add("ul");
        ok_in(&underlay, "ip link add ul type bridge && ip link set ul up");
        let central = ssl.then(|| lab.central_on(&underlay));
        lab.start_central(central.as_deref());
        for i in 1..=n {
            lab.start_chassis(i, &underlay, bare);
        }
        lab.pin_tunnel_neighbours();
        if bare {
            return lab;
        }
        for c in &lab.chassis {
            let name = c.name.clone();
            lab.sbctl(&format!("--timeout=30 wait-until Chassis {name}"));
        }
        lab
    }

    pub fn nb(&self) -> String {
        format!("unix:{}", self.dir.join("central/nb.sock").display())
    }

    pub fn sb(&self) -> String {
        format!("unix:{}", self.dir.join("central/sb.sock").display())
    }

    pub fn nbctl(&self, args: &str) -> String {
        ok(&format!("ovn-nbctl --timeout=30 --db={} {args}", self.nb()))
    }

    pub fn sbctl(&self, args: &str) -> String {
        ok(&format!("ovn-sbctl --timeout=30 --db={} {args}", self.sb()))
    }

    /// Chassis `i`'s (from 1) Open_vSwitch database, as a remote.
    pub fn ovs_db(&self, i: usize) -> String {
        format!("unix:{}", self.chassis[i - 1].dir.join("db.sock").display())
    }

    /// Every Northbound row of the tables kvmnet writes (UUIDs and `external_ids` only):
    /// what must be identical before an apply and after a destroy.
    pub fn nb_rows(&self) -> String {
        let mut out = String::new();
        for t in [
            "Logical_Switch",
            "Logical_Switch_Port",
            "DHCP_Options",
            "QoS",
            "Logical_Router",
            "Logical_Router_Port",
            "Logical_Router_Static_Route",
            "NAT",
            "Port_Group",
            "ACL",
            "Address_Set",
            "Meter",
            "Meter_Band",
            "HA_Chassis_Group",
            "HA_Chassis",
            "Load_Balancer",
            "DNS",
        ] {
            out.push_str(&format!(
                "{t}: {}\n",
                self.nbctl(&format!("--bare --columns=_uuid,external_ids list {t}"))
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        out
    }

    /// `ovs-vsctl` on chassis `i` (from 1).
    pub fn vsctl(&self, i: usize, args: &str) -> String {
        ok(&format!(
            "ovs-vsctl --timeout=20 --db={} {args}",
            self.ovs_db(i)
        ))
    }

    /// A daemon started detached, its pid file remembered for the teardown.
    fn daemon(&mut self, netns: Option<&str>, env: &str, cmd: String, pidfile: PathBuf) {
        let prefix = netns
            .map(|n| format!("ip netns exec {n} "))
            .unwrap_or_default();
        ok(&format!(
            "{prefix}env {env} {cmd} --detach --no-chdir --pidfile={}",
            pidfile.display()
        ));
        self.pidfiles.insert(0, pidfile);
    }

    /// A PKI, and a namespace for the central databases with [`CENTRAL_IP`] on the
    /// underlay; returns the namespace.
    fn central_on(&mut self, underlay: &str) -> String {
        let pki = self.dir.join("pki");
        let ovs_pki = format!("ovs-pki --dir={0}/ca --log={0}/ovs-pki.log", pki.display());
        std::fs::create_dir_all(&pki).unwrap();
        ok(&format!("{ovs_pki} init --force >/dev/null"));
        for name in ["central", "hv"] {
            ok(&format!(
                "cd {} && {ovs_pki} req+sign {name} switch >/dev/null",
                pki.display()
            ));
        }
        self.pki = Some(pki);
        let ns = self.ns.add("ctl");
        ok(&format!(
            "ip -n {underlay} link add uc mtu 1600 type veth peer name eth0 netns {ns} mtu 1600 \
             && ip -n {underlay} link set uc master ul up \
             && ip -n {ns} addr add {CENTRAL_IP}/24 dev eth0 && ip -n {ns} link set eth0 up \
             && ip -n {ns} link set lo up \
             && ip netns exec {ns} ethtool -K eth0 tx off >/dev/null"
        ));
        ns
    }

    /// NB and SB with northd; in namespace `netns` and listening for TLS there too, when
    /// given.
    fn start_central(&mut self, netns: Option<&str>) {
        let c = self.dir.join("central");
        for (db, schema, port) in [("nb", "ovn-nb", 6641), ("sb", "ovn-sb", 6642)] {
            ok(&format!(
                "ovsdb-tool create {0}/{db}.db /usr/share/ovn/{schema}.ovsschema",
                c.display()
            ));
            let mut cmd = format!(
                "ovsdb-server --unixctl={0}/{db}.ctl --log-file={0}/{db}.log --remote=punix:{0}/{db}.sock {0}/{db}.db",
                c.display()
            );
            if let Some(pki) = self.pki.as_ref().filter(|_| netns.is_some()) {
                cmd.push_str(&format!(
                    " --remote=pssl:{port}:{CENTRAL_IP} --private-key={0}/central-privkey.pem \
                     --certificate={0}/central-cert.pem --ca-cert={0}/ca/switchca/cacert.pem",
                    pki.display()
                ));
            }
            self.daemon(netns, "", cmd, c.join(format!("{db}.pid")));
        }
        self.nbctl("init");
        self.sbctl("init");
        let cmd = format!(
            "ovn-northd --unixctl={0}/northd.ctl --log-file={0}/northd.log --ovnnb-db={1} --ovnsb-db={2}",
            c.display(),
            self.nb(),
            self.sb()
        );
        self.daemon(None, "", cmd, c.join("northd.pid"));
    }

    fn start_chassis(&mut self, i: usize, underlay: &str, bare: bool) {
        let name = format!("hv{i}");
        let ns = self.ns.add(&name);
        let d = self.dir.join(&name);
        std::fs::create_dir_all(&d).unwrap();
        let encap_ip = format!("172.31.0.{i}");
        // The underlay: a veth from the chassis to the underlay bridge.
        ok(&format!(
            "ip -n {underlay} link add u{i} mtu 1600 type veth peer name phy netns {ns} mtu 1600 \
             && ip -n {underlay} link set u{i} master ul up && ip -n {ns} link set phy up"
        ));
        ok(&format!(
            "ovsdb-tool create {0}/conf.db /usr/share/openvswitch/vswitch.ovsschema",
            d.display()
        ));
        let cmd = format!(
            "ovsdb-server --unixctl={0}/ovsdb-server.ctl --log-file={0}/ovsdb-server.log --remote=punix:{0}/db.sock {0}/conf.db",
            d.display()
        );
        self.daemon(None, "", cmd, d.join("ovsdb-server.pid"));
        self.chassis.push(Chassis {
            name: name.clone(),
            ns: ns.clone(),
            dir: d.clone(),
            encap_ip: encap_ip.clone(),
        });
        self.vsctl(i, "--no-wait init");
        let env = format!(
            "OVS_RUNDIR={0} OVS_LOGDIR={0} OVS_DBDIR={0} OVN_RUNDIR={0}",
            d.display()
        );
        let cmd = format!(
            "ovs-vswitchd --unixctl={0}/ovs-vswitchd.ctl --log-file={0}/ovs-vswitchd.log unix:{0}/db.sock",
            d.display()
        );
        self.daemon(Some(&ns), &env, cmd, d.join("ovs-vswitchd.pid"));
        self.vsctl(
            i,
            &format!(
                "add-br br-phy -- set bridge br-phy datapath_type=netdev fail_mode=standalone \
                 other_config:hwaddr=02:00:00:00:00:{i:02x} -- add-port br-phy phy"
            ),
        );
        ok_in(
            &ns,
            &format!("ip addr add {encap_ip}/24 dev br-phy && ip link set br-phy up"),
        );
        if bare {
            return;
        }
        self.vsctl(
            i,
            &format!(
                "add-br br-int -- set bridge br-int datapath_type=netdev fail_mode=secure \
                 other_config:disable-in-band=true -- set open_vswitch . external_ids:system-id={name} \
                 external_ids:ovn-remote={} external_ids:ovn-encap-type=geneve \
                 external_ids:ovn-encap-ip={encap_ip} external_ids:ovn-bridge=br-int \
                 external_ids:ovn-bridge-datapath-type=netdev",
                self.sb()
            ),
        );
        self.start_controller(i);
    }

    /// Starts ovn-controller on chassis `i` (from 1); a bare chassis needs it called.
    pub fn start_controller(&mut self, i: usize) {
        let (ns, d) = (
            self.chassis[i - 1].ns.clone(),
            self.chassis[i - 1].dir.clone(),
        );
        let env = format!(
            "OVS_RUNDIR={0} OVS_LOGDIR={0} OVS_DBDIR={0} OVN_RUNDIR={0}",
            d.display()
        );
        let cmd = format!(
            "ovn-controller --log-file={0}/ovn-controller.log unix:{0}/db.sock",
            d.display()
        );
        self.daemon(Some(&ns), &env, cmd, d.join("ovn-controller.pid"));
    }

    /// Stops chassis `i`'s ovn-controller (a bare chassis's would make br-int again).
    pub fn stop_controller(&mut self, i: usize) {
        let pf = self.chassis[i - 1].dir.join("ovn-controller.pid");
        stop(&pf);
        self.pidfiles.retain(|p| p != &pf);
    }

    /// Every chassis knows every other's underlay MAC before the first tunnelled packet.
    fn pin_tunnel_neighbours(&self) {
        for a in &self.chassis {
            for (j, b) in self.chassis.iter().enumerate() {
                if a.name != b.name {
                    ok(&format!(
                        "ovs-appctl -t {}/ovs-vswitchd.ctl tnl/arp/set br-phy {} 02:00:00:00:00:{:02x}",
                        a.dir.display(),
                        b.encap_ip,
                        j + 1
                    ));
                }
            }
        }
    }

    /// A guest namespace plugged into chassis `i`'s br-int as logical port `iface_id`, with
    /// `mac` and `cidr` on its eth0; returns the namespace.
    pub fn plug(&mut self, i: usize, iface_id: &str, mac: &str, cidr: &str) -> String {
        let vm = self.guest(i, iface_id, mac, cidr);
        let port = format!("p-{iface_id}");
        self.vsctl(
            i,
            &format!(
                "add-port br-int {port} -- set interface {port} external_ids:iface-id={iface_id}"
            ),
        );
        vm
    }

    /// A guest namespace whose eth0 (`mac`, `cidr`) is a veth to `p-NAME` in chassis `i`'s
    /// namespace, not attached to any bridge; returns the namespace.
    pub fn guest(&mut self, i: usize, name: &str, mac: &str, cidr: &str) -> String {
        let vm = self.ns.add(name);
        let ch = &self.chassis[i - 1];
        let port = format!("p-{name}");
        ok(&format!(
            "ip -n {} link add {port} type veth peer name eth0 netns {vm} && ip -n {} link set {port} up",
            ch.ns, ch.ns
        ));
        ok_in(
            &vm,
            &format!(
                "ip link set eth0 address {mac} up && ip addr add {cidr} dev eth0 && ethtool -K eth0 tx off >/dev/null"
            ),
        );
        vm
    }

    /// Waits until logical switch port `lsp` is bound and up.
    pub fn wait_up(&self, lsp: &str) {
        self.nbctl(&format!("wait-until Logical_Switch_Port {lsp} up=true"));
        self.nbctl("--wait=hv sync");
    }
}

impl Drop for OvnLab {
    fn drop(&mut self) {
        // All at once: one by one, a lab of 20 chassis took two minutes to stop.
        stop_all(&self.pidfiles);
        // The namespaces go with `ns`; the folder (databases, logs) last.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the daemon of pid file `pf`: SIGTERM, SIGKILL after 5 s.
fn stop(pf: &std::path::Path) {
    stop_all(std::slice::from_ref(&pf.to_path_buf()));
}

/// Stops the daemons of pid files `pfs` together: SIGTERM to each, SIGKILL to those still
/// there 5 s later.
fn stop_all(pfs: &[PathBuf]) {
    let pids: Vec<i32> = pfs
        .iter()
        .filter_map(|pf| std::fs::read_to_string(pf).ok()?.trim().parse().ok())
        .filter(|pid| *pid > 0)
        .collect();
    for pid in &pids {
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let gone = |pid: &i32| !std::path::Path::new(&format!("/proc/{pid}")).exists();
    let t = Instant::now();
    while !pids.iter().all(gone) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids.iter().filter(|p| !gone(p)) {
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
}

/// Waits until `ns` can ping `ip`.
pub fn wait_ping(ns: &str, ip: &str) {
    wait_for(
        &format!("{ns} to reach {ip}"),
        Duration::from_secs(20),
        || pings(ns, ip),
    );
}

/// The external network of the lab's nat tests (`OvnLab::external`): a far host, the
/// address kvmnet's router takes there (the SNAT source), and the next hop.
pub const EXT_FAR: &str = "203.0.113.10";
pub const EXT_SNAT: &str = "198.51.100.1";
pub const EXT_NEXT_HOP: &str = "198.51.100.254";
/// The same for IPv6 (NAT66): the far host, the gateway's SNAT address, the next hop.
pub const EXT6_FAR: &str = "2001:db8:f0::10";
pub const EXT6_SNAT: &str = "2001:db8:ff::1";
pub const EXT6_NEXT_HOP: &str = "2001:db8:ff::fe";

/// What the tests' specs and guests share.
impl OvnLab {
    /// The head of a test's spec: `version` and `ovn` with the lab's databases, the
    /// userspace datapath and the first `chassis` chassis (each its tunnel endpoint and
    /// Open_vSwitch database; `gateways` gives (chassis number, priority)), then `extra`
    /// (more of `ovn`, two spaces in: `external`, say).
    pub fn spec_head(&self, chassis: usize, gateways: &[(usize, u16)], extra: &str) -> String {
        let mut s = format!(
            "version: 1\novn:\n  nb: {}\n  sb: {}\n  datapath: netdev\n  chassis:\n",
            self.nb(),
            self.sb()
        );
        for (i, c) in self.chassis.iter().take(chassis).enumerate() {
            let gateway = gateways
                .iter()
                .find(|(n, _)| *n == i + 1)
                .map_or(String::new(), |(_, p)| format!("gateway: {p}, "));
            s.push_str(&format!(
                "    {}: {{ encap_ip: {}, {gateway}ovs: \"{}\" }}\n",
                c.name,
                c.encap_ip,
                self.ovs_db(i + 1)
            ));
        }
        s.push_str(extra);
        s
    }

    /// `external` of the head for the external side [`OvnLab::external`] builds.
    pub fn external_section(uplink: &str) -> String {
        format!(
            "  external: {{ uplink: {uplink}, ipv4: {EXT_SNAT}/24, next_hop: {EXT_NEXT_HOP} }}\n"
        )
    }

    /// [`Self::external_section`] with IPv6 too: nat networks' IPv6 leaves by NAT66.
    pub fn external_section6(uplink: &str) -> String {
        format!(
            "  external: {{ uplink: {uplink}, ipv4: {EXT_SNAT}/24, next_hop: {EXT_NEXT_HOP}, ipv6: \"{EXT6_SNAT}/64\", next_hop6: \"{EXT6_NEXT_HOP}\" }}\n"
        )
    }

    /// The external side of a nat network: a router namespace with bridge `xbr` holding the
    /// next hop and a veth `xI` to each gateway chassis's `xup` (the uplink kvmnet puts
    /// into br-ex there), and the far host behind that router, which has no route to the
    /// guests' subnet. Returns (router namespace, far host's namespace).
    pub fn external(&mut self, gateways: &[usize]) -> (String, String) {
        let x = self.ns.add("ext");
        let far = self.ns.add("far");
        ok_in(
            &x,
            &format!(
                "ip link add xbr type bridge && ip addr add {EXT_NEXT_HOP}/24 dev xbr && ip link set xbr up \
                 && ip -6 addr add {EXT6_NEXT_HOP}/64 dev xbr nodad \
                 && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"
            ),
        );
        ok(&format!(
            "ip -n {x} link add xf type veth peer name eth0 netns {far} \
             && ip -n {x} addr add 203.0.113.1/24 dev xf && ip -n {x} link set xf up \
             && ip -n {far} addr add {EXT_FAR}/24 dev eth0 && ip -n {far} link set eth0 up \
             && ip -n {far} route add default via 203.0.113.1 \
             && ip -n {x} -6 addr add 2001:db8:f0::1/64 dev xf nodad \
             && ip -n {far} -6 addr add {EXT6_FAR}/64 dev eth0 nodad \
             && ip -n {far} -6 route add default via 2001:db8:f0::1"
        ));
        for &i in gateways {
            let ch = self.chassis[i - 1].ns.clone();
            // `tx off` on both ends: the netdev datapath forwards partial checksums unfilled.
            ok(&format!(
                "ip -n {x} link add x{i} type veth peer name xup netns {ch} \
                 && ip -n {x} link set x{i} master xbr up && ip -n {ch} link set xup up \
                 && ip netns exec {x} ethtool -K x{i} tx off >/dev/null \
                 && ip netns exec {ch} ethtool -K xup tx off >/dev/null"
            ));
        }
        (x, far)
    }

    /// Kills a daemon of chassis `i` (from 1) as a crash would (SIGKILL, no cleanup); its
    /// pid file goes too, so the teardown signals no process that may have taken the pid.
    pub fn crash(&self, i: usize, daemon: &str) {
        let pf = self.chassis[i - 1].dir.join(format!("{daemon}.pid"));
        let pid: i32 = std::fs::read_to_string(&pf)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: signalling a lab daemon by the pid its own pid file names.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = std::fs::remove_file(&pf);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kvmnet daemon --spec FILE` as chassis `i` (from 1), in its namespace, told its
    /// chassis by `--chassis` when given, repairing drift every 300 ms; returned once its API
    /// socket is there.
    pub fn start_daemon(&self, i: usize, file: &str, chassis: Option<&str>) -> Daemon {
        let ns = self.chassis[i - 1].ns.clone();
        let mut args = vec!["daemon", "--spec", file, "--netns", &ns];
        if let Some(c) = chassis {
            args.extend(["--chassis", c]);
        }
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_kvmnet"))
            .args(&args)
            .env("KVMNET_STATE_DIR", &self.ns.state_dir)
            .env("KVMNET_RECONCILE_MS", "300")
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let sock = self
            .ns
            .state_dir
            .join(format!("netns-{ns}"))
            .join("api.sock");
        wait_for("the daemon's API socket", Duration::from_secs(30), || {
            sock.exists()
        });
        Daemon(child)
    }

    /// kvmnet `args` as chassis `i` (from 1), in its namespace; must succeed. Its output.
    pub fn kvm(&self, i: usize, args: &[&str]) -> String {
        let mut a: Vec<&str> = args.to_vec();
        let (ns, ch) = (self.chassis[i - 1].ns.clone(), format!("hv{i}"));
        a.extend(["--netns", &ns, "--chassis", &ch]);
        self.ns.kvmnet_ok(&a)
    }

    /// Chassis `i`'s `OVS_SYSCONFDIR`: its `openvswitch/system-id.conf` says `hvI`, as an
    /// operator who keeps the chassis name across restarts writes it (made on first use).
    pub fn sysconfdir(&self, i: usize) -> String {
        let etc = self.chassis[i - 1].dir.join("etc");
        let conf = etc.join("openvswitch/system-id.conf");
        if !conf.exists() {
            std::fs::create_dir_all(etc.join("openvswitch")).unwrap();
            std::fs::write(&conf, format!("hv{i}\n")).unwrap();
        }
        etc.display().to_string()
    }

    /// `kvmnet doctor --json` as chassis `i`, with OVN's run directory where the lab's
    /// ovn-controller keeps its pid file: (exit code, the results of check `id`).
    pub fn doctor(&self, i: usize, id: &str) -> (i32, Vec<serde_json::Value>) {
        let ns = self.chassis[i - 1].ns.clone();
        let rundir = self.chassis[i - 1].dir.display().to_string();
        let etc = self.sysconfdir(i);
        let ch = format!("hv{i}");
        let o = self.ns.kvmnet_env(
            &["doctor", "--netns", &ns, "--chassis", &ch, "--json"],
            &[
                ("OVN_RUNDIR", &rundir),
                ("OVS_RUNDIR", &rundir),
                ("OVS_SYSCONFDIR", &etc),
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "doctor's JSON: {e}: {out}{}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        let checks = v["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["id"] == id)
            .cloned()
            .collect();
        (o.status.code().unwrap_or(-1), checks)
    }

    /// The address kvmnet picked for logical port `lsp` (the second word of its
    /// `addresses`): what OVN's DHCP gives the port.
    pub fn picked(&self, lsp: &str) -> String {
        self.nbctl(&format!("get Logical_Switch_Port {lsp} addresses"))
            .split_whitespace()
            .nth(1)
            .expect("an address")
            .trim_matches(|c| c == '[' || c == ']' || c == '"')
            .to_string()
    }

    /// One busybox `udhcpc` lease on `iface` in `ns`, asking for `options` (`-O`): the
    /// address is put on `iface` (and, with `route`, the router made the default route),
    /// and `record` (shell words over udhcpc's variables, like `ip=$ip mtu=$mtu`) is
    /// returned as the script wrote it.
    pub fn udhcpc(
        &self,
        ns: &str,
        iface: &str,
        options: &[&str],
        record: &str,
        route: bool,
    ) -> String {
        let tag = unique("lease");
        let (script, lease) = (
            self.dir.join(format!("{tag}.sh")),
            self.dir.join(format!("{tag}.txt")),
        );
        let route = if route {
            "ip route replace default via $router\n"
        } else {
            ""
        };
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add $ip/$mask dev $interface\n{route}echo \"{record}\" > {}\n",
                lease.display()
            ),
        )
        .unwrap();
        ok(&format!("chmod +x {}", script.display()));
        let opts: String = options.iter().map(|o| format!(" -O {o}")).collect();
        ok_in(
            ns,
            &format!(
                "busybox udhcpc -f -q -n -t 5 -T 1 -i {iface}{opts} -s {}",
                script.display()
            ),
        );
        std::fs::read_to_string(lease).unwrap()
    }

    /// The chassis whose ovn-controller holds the router's gateway port (its `cr-`
    /// binding); empty while none does.
    pub fn active_gateway(&self) -> String {
        let uuid =
            self.sbctl("--bare --columns=chassis find Port_Binding logical_port=cr-kvmnet-lrp-ext");
        let uuid = uuid.trim();
        if uuid.is_empty() {
            return String::new();
        }
        self.sbctl(&format!("--bare get Chassis {uuid} name"))
            .trim()
            .to_string()
    }

    /// Waits (30 s at most) until chassis `name` holds the gateway port.
    pub fn wait_active(&self, name: &str) {
        let t = Instant::now();
        while self.active_gateway() != name {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the gateway port is on {:?}, not {name}",
                self.active_gateway()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
