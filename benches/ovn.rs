//! The OVN backend's Northbound writes against a real central OVN (NB and SB ovsdb-server,
//! ovn-northd), each contender on fresh databases of its own:
//!
//! - kvmnet: `kvmnet apply` of a spec whose ports are all on OVN networks, run with
//!   `--chassis` naming no chassis of the spec, so the apply is its Northbound transaction
//!   alone (no local ports);
//! - ONE `ovn-nbctl` invocation creating the same rows (switches, router and router ports,
//!   DHCP_Options, LSPs with addresses, port_security, DHCP options and external_ids, port
//!   groups, ACLs): the lower bound;
//! - one `ovn-nbctl` call per port (what a script adding ports one by one does), measured for
//!   `KVMNET_BENCH_SEPARATE` ports and extrapolated linearly to all ports.
//!
//! After each write, `ovn-nbctl --wait=sb sync` measures ovn-northd settling the change into
//! the Southbound database. Then one port more: kvmnet's apply of the spec with one more VM,
//! at the full port count and at 10 ports. Needs root and the OVN programs.
//!
//!   cargo bench --bench ovn                        # 10,000 ports, 3 rounds
//!   KVMNET_BENCH_PORTS=1000 KVMNET_BENCH_ROUNDS=1 cargo bench --bench ovn
//!
//! The one port more through a daemon alone: `KVMNET_BENCH_ONLY=daemon`, with
//! `KVMNET_BENCH_ONE` adds per round (5); `KVMNET_BENCH_SETTLED=1` has each add wait, untimed,
//! for ovn-northd to settle the change before it; `KVMNET_BENCH_KVMNET` runs another build.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Networks the ports are spread over, and the distinct firewall policies.
const NETS: usize = 4;
const POLICIES: [&str; 4] = [
    "[ { proto: tcp, ports: [22] }, { proto: icmp } ]",
    "[ { proto: tcp, ports: [80, 443] } ]",
    "[ { proto: tcp, ports: [5432] }, { proto: udp, ports: [53] } ]",
    "[ { proto: icmp } ]",
];

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let o = cmd.output().unwrap();
    let d = t.elapsed();
    assert!(
        o.status.success(),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&o.stderr)
    );
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Central NB and SB databases with ovn-northd, stopped and removed on drop.
struct Central {
    dir: PathBuf,
}

impl Central {
    fn start(dir: PathBuf) -> Central {
        std::fs::create_dir_all(&dir).unwrap();
        let c = Central { dir };
        let d = c.dir.display();
        for (db, schema) in [("nb", "ovn-nb"), ("sb", "ovn-sb")] {
            sh(&format!(
                "ovsdb-tool create {d}/{db}.db /usr/share/ovn/{schema}.ovsschema && \
                 ovsdb-server --unixctl={d}/{db}.ctl --log-file={d}/{db}.log \
                 --remote=punix:{d}/{db}.sock {d}/{db}.db --detach --no-chdir --pidfile={d}/{db}.pid"
            ));
        }
        sh(&format!(
            "ovn-nbctl --db={0} init && ovn-sbctl --db={1} init && ovn-northd --unixctl={d}/northd.ctl \
             --log-file={d}/northd.log --ovnnb-db={0} --ovnsb-db={1} --detach --no-chdir \
             --pidfile={d}/northd.pid",
            c.nb(),
            c.sb()
        ));
        // northd connected: a first sync returns.
        c.sync();
        c
    }

    fn nb(&self) -> String {
        format!("unix:{}/nb.sock", self.dir.display())
    }

    fn sb(&self) -> String {
        format!("unix:{}/sb.sock", self.dir.display())
    }

    fn nbctl(&self) -> Command {
        let mut c = Command::new("ovn-nbctl");
        c.arg(format!("--db={}", self.nb())).arg("--timeout=600");
        c
    }

    /// How long ovn-northd takes to carry what NB holds into SB.
    fn sync(&self) -> Duration {
        timed(self.nbctl().args(["--wait=sb", "sync"]))
    }

    fn count(&self, table: &str) -> usize {
        let o = self
            .nbctl()
            .args(["--bare", "--columns=_uuid", "list", table])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .count()
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let mut pids = vec![];
        for p in ["northd", "sb", "nb"] {
            let pf = self.dir.join(format!("{p}.pid"));
            if let Ok(pid) = std::fs::read_to_string(&pf) {
                let pid: i32 = pid.trim().parse().unwrap_or(0);
                if pid > 0 {
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                    pids.push(pid);
                }
            }
        }
        // Gone before the next measurement starts: servers of 10,000 ports still exiting
        // doubled the time of the small run after them.
        let t = Instant::now();
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Port `i`: its network, MAC, address and firewall policy.
struct Port {
    name: String,
    net: usize,
    mac: String,
    ip: String,
    policy: usize,
}

fn port(i: usize) -> Port {
    let net = i % NETS;
    let j = i / NETS;
    Port {
        name: format!("p{i}"),
        net,
        mac: format!("52:54:00:{:02x}:{:02x}:{:02x}", net, j / 256, j % 256),
        ip: format!("10.{}.{}.{}", 80 + net, 1 + j / 250, 2 + j % 250),
        policy: i % POLICIES.len(),
    }
}

fn spec(c: &Central, ports: usize) -> String {
    let mut s = format!(
        "version: 1\novn:\n  nb: {}\n  sb: {}\n  datapath: netdev\n  chassis:\n    \
         hv1: {{ encap_ip: 172.31.0.1, ovs: \"unix:/nonexistent.sock\" }}\nnetworks:\n",
        c.nb(),
        c.sb()
    );
    for n in 0..NETS {
        let _ = writeln!(
            s,
            "  n{n}:\n    backend: ovn\n    mode: routed\n    ipv4: 10.{0}.0.1/16\n    \
             dhcp: {{ range: 10.{0}.200.1-10.{0}.200.200, dns: [10.{0}.0.1] }}",
            80 + n
        );
    }
    s.push_str("vms:\n");
    for i in 0..ports {
        let p = port(i);
        let _ = writeln!(
            s,
            "  vm{i}:\n    host: hv1\n    ports:\n      - {{ network: n{}, name: {}, mac: \"{}\", ipv4: {}, \
             firewall: {{ inbound: {{ policy: drop, rules: {} }} }} }}",
            p.net, p.name, p.mac, p.ip, POLICIES[p.policy]
        );
    }
    s
}

/// The ACLs of policy `k` on port group `pg`, as kvmnet writes them (priority, match, action).
fn acls(k: usize, pg: &str) -> Vec<(u32, String, &'static str)> {
    let m = |rest: &str| format!("outport == @{pg} && {rest}");
    let mut v = match k {
        0 => vec![
            (2000, m("tcp && (tcp.dst == 22)"), "allow-related"),
            (1999, m("(icmp4 || icmp6)"), "allow-related"),
        ],
        1 => vec![(
            2000,
            m("tcp && (tcp.dst == 80 || tcp.dst == 443)"),
            "allow-related",
        )],
        2 => vec![
            (2000, m("tcp && (tcp.dst == 5432)"), "allow-related"),
            (1999, m("udp && (udp.dst == 53)"), "allow-related"),
        ],
        _ => vec![(2000, m("(icmp4 || icmp6)"), "allow-related")],
    };
    v.push((1000, m("ip"), "drop"));
    v
}

fn ext(key: &str) -> [String; 2] {
    [
        format!("external_ids:kvmnet-key=\"{key}\""),
        "external_ids:kvmnet-owner=kvmnet".into(),
    ]
}

/// `ovn-nbctl` arguments making everything but the ports: router, switches with their
/// router ports, DHCP options (`@dN`), port groups with their ACLs.
fn base_args() -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut cmd = |v: Vec<String>| {
        a.push("--".into());
        a.extend(v);
    };
    let s = |x: &str| x.to_string();
    cmd([s("lr-add"), s("kvmnet")].into());
    for n in 0..NETS {
        let (net, o) = (format!("n{n}"), 80 + n);
        let mac = format!("0a:00:00:00:00:{n:02x}");
        cmd([s("ls-add"), net.clone()].into());
        cmd(vec![
            s("lrp-add"),
            s("kvmnet"),
            format!("kvmnet-lrp-{net}"),
            mac.clone(),
            format!("10.{o}.0.1/16"),
        ]);
        let rp = format!("kvmnet-rp-{net}");
        cmd(vec![s("lsp-add"), net.clone(), rp.clone()]);
        cmd(vec![s("lsp-set-type"), rp.clone(), s("router")]);
        cmd(vec![s("lsp-set-addresses"), rp.clone(), s("router")]);
        cmd(vec![
            s("lsp-set-options"),
            rp,
            format!("router-port=kvmnet-lrp-{net}"),
        ]);
        let mut d = vec![
            format!("--id=@d{n}"),
            s("create"),
            s("DHCP_Options"),
            format!("cidr=10.{o}.0.0/16"),
            format!(
                "options={{dns_server=\"{{10.{o}.0.1}}\", lease_time=\"3600\", mtu=\"1442\", \
                 router=\"10.{o}.0.1\", server_id=\"10.{o}.0.1\", server_mac=\"{mac}\"}}"
            ),
        ];
        d.extend(ext(&net));
        cmd(d);
    }
    for k in 0..POLICIES.len() {
        let pg = format!("kvmnet_fw_{k}");
        cmd(vec![s("pg-add"), pg.clone()]);
        for (prio, m, action) in acls(k, &pg) {
            cmd(vec![
                s("--type=port-group"),
                s("acl-add"),
                pg.clone(),
                s("to-lport"),
                prio.to_string(),
                m,
                s(action),
            ]);
        }
    }
    a
}

/// `ovn-nbctl` arguments adding port `i` (`dhcp`: its network's DHCP_Options, by `@dN` in
/// the batch or by UUID for a call of its own).
fn port_args(i: usize, dhcp: &str) -> Vec<String> {
    let p = port(i);
    let addr = format!("\"{} {}\"", p.mac, p.ip);
    let id = format!("@{}", p.name);
    let mut v = vec![
        "--".into(),
        format!("--id={id}"),
        "create".into(),
        "Logical_Switch_Port".into(),
        format!("name={}", p.name),
        format!("addresses={addr}"),
        format!("port_security={addr}"),
        format!("dhcpv4_options={dhcp}"),
    ];
    v.extend(ext(&p.name));
    v.extend(
        [
            "--",
            "add",
            "Logical_Switch",
            &format!("n{}", p.net),
            "ports",
            &id,
            "--",
            "add",
            "Port_Group",
            &format!("kvmnet_fw_{}", p.policy),
            "ports",
            &id,
        ]
        .map(String::from),
    );
    v
}

/// A big single invocation needs more than the default 2 MiB of arguments: the kernel allows
/// a quarter of the stack limit, which children inherit.
fn raise_arg_max() {
    let lim = libc::rlimit {
        rlim_cur: 256 << 20,
        rlim_max: libc::RLIM_INFINITY,
    };
    unsafe { libc::setrlimit(libc::RLIMIT_STACK, &lim) };
}

struct Round {
    write: Duration,
    settle: Duration,
}

fn kvmnet_round(dir: &Path, ports: usize, r: usize) -> (Round, Duration, Duration) {
    let c = Central::start(dir.join(format!("k{r}")));
    let sp = dir.join(format!("k{r}.yaml"));
    std::fs::write(&sp, spec(&c, ports)).unwrap();
    let ns = format!("ovnb{}-{r}", std::process::id());
    // Another build (the one before a change) by KVMNET_BENCH_KVMNET.
    let kvmnet = std::env::var("KVMNET_BENCH_KVMNET")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kvmnet").into());
    let run = |spec: &Path| {
        let mut k = Command::new(&kvmnet);
        k.args(["apply", spec.to_str().unwrap(), "--netns", &ns])
            .args(["--chassis", "nobody"])
            .env("KVMNET_STATE_DIR", dir.join(format!("state{r}")));
        k
    };
    let write = timed(&mut run(&sp));
    let settle = c.sync();
    assert_eq!(c.count("Logical_Switch_Port"), ports + NETS);
    assert_eq!(c.count("ACL"), 10);
    let noop = timed(&mut run(&sp));
    // One VM more.
    std::fs::write(&sp, spec(&c, ports + 1)).unwrap();
    let one = timed(&mut run(&sp));
    assert_eq!(c.count("Logical_Switch_Port"), ports + 1 + NETS);
    let _ = Command::new(&kvmnet)
        .args(["destroy", "--netns", &ns])
        .env("KVMNET_STATE_DIR", dir.join(format!("state{r}")))
        .output();
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    (Round { write, settle }, noop, one)
}

/// One VM port more through a running `kvmnet daemon` (which keeps its monitored Northbound
/// view and the parsed spec between applies): the median of `KVMNET_BENCH_ONE` adds, each
/// undone by an apply of the base spec, after one untimed add and remove.
fn daemon_one(dir: &Path, ports: usize, r: usize) -> Duration {
    let c = Central::start(dir.join(format!("d{r}")));
    let (base, plus) = (
        dir.join(format!("d{r}.yaml")),
        dir.join(format!("d{r}+.yaml")),
    );
    std::fs::write(&base, spec(&c, ports)).unwrap();
    std::fs::write(&plus, spec(&c, ports + 1)).unwrap();
    let ns = format!("ovnd{}-{r}", std::process::id());
    let state = dir.join(format!("dstate{r}"));
    let kvmnet = std::env::var("KVMNET_BENCH_KVMNET")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kvmnet").into());
    let cli = |spec: &Path| {
        let mut k = Command::new(&kvmnet);
        k.args(["apply", spec.to_str().unwrap(), "--netns", &ns])
            .args(["--chassis", "nobody"])
            .env("KVMNET_STATE_DIR", &state);
        k
    };
    let mut daemon = Command::new(&kvmnet)
        .args(["daemon", "--spec", base.to_str().unwrap(), "--netns", &ns])
        .args(["--chassis", "nobody"])
        .env("KVMNET_STATE_DIR", &state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sock = state.join(format!("netns-{ns}")).join("api.sock");
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists(), "the daemon did not start");
    // The daemon has applied the base spec once its API answers an apply of it.
    timed(&mut cli(&base));
    timed(&mut cli(&plus));
    timed(&mut cli(&base));
    let mut adds = vec![];
    // KVMNET_BENCH_SETTLED=1: each add waits (untimed) for ovn-northd to have settled the
    // change before it, as on a host where VMs are not added back to back; otherwise northd,
    // still working through the last change, competes with the add for the CPUs.
    let settled = std::env::var("KVMNET_BENCH_SETTLED").is_ok_and(|v| v == "1");
    for _ in 0..env_or("KVMNET_BENCH_ONE", 5) {
        if settled {
            c.sync();
        }
        adds.push(timed(&mut cli(&plus)));
        assert_eq!(c.count("Logical_Switch_Port"), ports + 1 + NETS);
        timed(&mut cli(&base));
    }
    // SAFETY: signalling the child this function spawned.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    let _ = Command::new(&kvmnet)
        .args(["destroy", "--netns", &ns])
        .env("KVMNET_STATE_DIR", &state)
        .output();
    let _ = Command::new("ip").args(["netns", "del", &ns]).output();
    median(adds)
}

fn batched_round(dir: &Path, ports: usize, r: usize) -> Round {
    let c = Central::start(dir.join(format!("b{r}")));
    let mut args = base_args();
    for i in 0..ports {
        args.extend(port_args(i, &format!("@d{}", i % NETS)));
    }
    let write = timed(c.nbctl().args(&args));
    let settle = c.sync();
    assert_eq!(c.count("Logical_Switch_Port"), ports + NETS);
    Round { write, settle }
}

/// `n` ports added by one `ovn-nbctl` call each, onto the base rows made by one call.
fn separate_round(dir: &Path, n: usize, r: usize) -> Round {
    let c = Central::start(dir.join(format!("s{r}")));
    timed(c.nbctl().args(base_args()));
    let uuid = |n: usize| {
        let o = c
            .nbctl()
            .args(["--bare", "--columns=_uuid", "find", "DHCP_Options"])
            .arg(format!("cidr=10.{}.0.0/16", 80 + n))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let dhcp: Vec<String> = (0..NETS).map(uuid).collect();
    let t = Instant::now();
    for i in 0..n {
        timed(c.nbctl().args(port_args(i, &dhcp[i % NETS])));
    }
    let write = t.elapsed();
    let settle = c.sync();
    Round { write, settle }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the OVN benchmark needs root");
        return;
    }
    let ports = env_or("KVMNET_BENCH_PORTS", 10_000);
    let rounds = env_or("KVMNET_BENCH_ROUNDS", 3);
    let separate = env_or("KVMNET_BENCH_SEPARATE", 500).min(ports);
    // KVMNET_BENCH_ONLY=daemon: only the daemon's one port more.
    let daemon_only = std::env::var("KVMNET_BENCH_ONLY").is_ok_and(|v| v == "daemon");
    raise_arg_max();
    let dir = std::env::temp_dir().join(format!("kvmnet-ovnbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "load before: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap().trim()
    );

    let (mut kw, mut ks, mut knoop, mut kone) = (vec![], vec![], vec![], vec![]);
    let (mut bw, mut bs, mut sw, mut ss) = (vec![], vec![], vec![], vec![]);
    let mut small_one = vec![];
    let (mut d_big, mut d_small) = (vec![], vec![]);
    for r in 0..rounds {
        // The small one first: measured after a large central, it read up to twice its time
        // alone (that central's servers still winding down), which flattered the ratio.
        d_small.push(daemon_one(&dir, 10, 100 + r));
        d_big.push(daemon_one(&dir, ports, r));
        if daemon_only {
            continue;
        }
        let (k, noop, one) = kvmnet_round(&dir, ports, r);
        kw.push(k.write);
        ks.push(k.settle);
        knoop.push(noop);
        kone.push(one);
        let b = batched_round(&dir, ports, r);
        bw.push(b.write);
        bs.push(b.settle);
        let s = separate_round(&dir, separate, r);
        sw.push(s.write);
        ss.push(s.settle);
        let (_, _, one) = kvmnet_round(&dir, 10, 100 + r);
        small_one.push(one);
    }
    if daemon_only {
        let (big, small) = (median(d_big), median(d_small));
        println!(
            "one VM port more through the daemon: at {ports} {}, at 10 {} ({:.2}x)",
            ms(big),
            ms(small),
            big.as_secs_f64() / small.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let (kw, bw, sw) = (median(kw), median(bw), median(sw));
    let sep_all = sw.mul_f64(ports as f64 / separate as f64);
    println!(
        "{ports} ports on {NETS} OVN networks, {} firewall policies, DHCP; median of {rounds} rounds",
        POLICIES.len()
    );
    println!(
        "  kvmnet apply (NB transaction)     {:>9}  settle (northd -> SB) {:>9}  ({:.2}x the batched call)",
        ms(kw),
        ms(median(ks)),
        kw.as_secs_f64() / bw.as_secs_f64()
    );
    println!(
        "  one batched ovn-nbctl              {:>9}  settle (northd -> SB) {:>9}",
        ms(bw),
        ms(median(bs))
    );
    println!(
        "  {separate} separate ovn-nbctl calls  {:>9}  settle {:>9}; x{} linear -> {:.1} s ({:.0}x kvmnet)",
        ms(sw),
        ms(median(ss)),
        ports as f64 / separate as f64,
        sep_all.as_secs_f64(),
        sep_all.as_secs_f64() / kw.as_secs_f64()
    );
    println!(
        "  kvmnet apply, nothing to do       {:>9}",
        ms(median(knoop))
    );
    let (big, small) = (median(kone), median(small_one));
    println!(
        "  one VM port more: at {ports} {:>9}, at 10 {:>9} ({:.2}x)",
        ms(big),
        ms(small),
        big.as_secs_f64() / small.as_secs_f64()
    );
    let (big, small) = (median(d_big), median(d_small));
    println!(
        "  one VM port more through the daemon: at {ports} {:>9}, at 10 {:>9} ({:.2}x)",
        ms(big),
        ms(small),
        big.as_secs_f64() / small.as_secs_f64()
    );
    println!(
        "load after: {}",
        std::fs::read_to_string("/proc/loadavg").unwrap().trim()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
