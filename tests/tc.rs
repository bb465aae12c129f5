//! Root tests of `backend::tc` in throwaway namespaces: a "host" namespace with a bridge and
//! three VM ports (veth host ends `pa`, `pb`, `pm`) whose far ends (`eth0`) live in three
//! "guest" namespaces. The namespaces are deleted when a test ends, passed or not.
//!
//! Needs root, iproute2, and for some tests iperf3, tcpdump and strace (skipped with a note
//! when missing, unless CI is set).

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kvmnet::backend::tc::*;

/// One test at a time: the throughput test wants the two CPUs to itself.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn privileged() -> bool {
    // SAFETY: plain syscall.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root, and CI must not skip it"
        );
        eprintln!("skipping: needs root");
    }
    root
}

fn have(tool: &str) -> bool {
    let found = sh(&format!("command -v {tool}")).status.success();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is missing, and CI must not skip this test"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs")
}

fn ok(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A child process killed (by its own pid) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Host namespace `h` with bridge br0 and ports pa, pb, pm; guests a (10.9.0.1), b
/// (10.9.0.2) and m (the monitor, no address), each with eth0.
struct Env {
    prefix: String,
}

impl Env {
    fn new() -> Env {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let env = Env {
            prefix: format!("kvtc-{}-{n}", std::process::id()),
        };
        for s in ["h", "a", "b", "m"] {
            ok(&format!("ip netns add {}", env.ns(s)));
            env.ok_in(s, "ip link set lo up");
        }
        env.ok_in("h", "ip link add br0 type bridge && ip link set br0 up");
        for g in ["a", "b", "m"] {
            env.ok_in(
                "h",
                &format!(
                    "ip link add p{g} type veth peer name eth0 netns {} && \
                     ip link set p{g} master br0 up",
                    env.ns(g)
                ),
            );
            env.ok_in(g, "ip link set eth0 up");
        }
        env.ok_in("a", "ip addr add 10.9.0.1/24 dev eth0");
        env.ok_in("b", "ip addr add 10.9.0.2/24 dev eth0");
        env
    }

    fn ns(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix)
    }

    fn cmd_in(&self, s: &str, cmd: &str) -> String {
        format!(
            "ip netns exec {} sh -c '{}'",
            self.ns(s),
            cmd.replace('\'', r"'\''")
        )
    }

    fn ok_in(&self, s: &str, cmd: &str) -> String {
        ok(&self.cmd_in(s, cmd))
    }

    fn sh_in(&self, s: &str, cmd: &str) -> Output {
        sh(&self.cmd_in(s, cmd))
    }

    /// Run `argv` in namespace `s` as our direct child (`ip netns exec` execs it), output
    /// discarded.
    fn spawn_in(&self, s: &str, argv: &[&str]) -> Proc {
        Proc(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(s)])
                .args(argv)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        )
    }

    /// A tc client in the host namespace.
    fn tc(&self) -> Tc {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.ns("h"))).unwrap();
        Tc::open_in(f.as_raw_fd()).unwrap()
    }

    fn ifindex(&self, dev: &str) -> u32 {
        self.ok_in("h", &format!("cat /sys/class/net/{dev}/ifindex"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for s in ["h", "a", "b", "m"] {
            let _ = sh(&format!("ip netns del {}", self.ns(s)));
        }
    }
}

fn port_a() -> PortTc {
    PortTc {
        inbound: Some(Rate::mbit(10)),
        outbound: Some(Rate {
            ceil_bits_per_sec: Some(30_000_000),
            burst_bytes: Some(15_000),
            ..Rate::mbit(20)
        }),
        mirror_to: Some("pm".into()),
        ..PortTc::new("pa")
    }
}

fn assert_converged(tc: &mut Tc, port: &PortTc) {
    let obs = tc.observe(port).unwrap();
    assert!(
        matches(port, &obs),
        "not converged: {:?}",
        plan(port, &obs).unwrap()
    );
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn trees_read_back_drift_is_seen_and_repaired() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut tc = env.tc();
    let port = port_a();
    let ops = tc.apply(&port).unwrap();
    assert_eq!(ops.len(), 11, "{ops:#?}");
    assert!(tc.apply(&port).unwrap().is_empty(), "apply is idempotent");

    // What tc itself shows.
    let q = env.ok_in("h", "tc -s -d qdisc show dev pa");
    assert!(
        q.contains("qdisc htb 1: root") && q.contains("default 0x1"),
        "{q}"
    );
    assert!(q.contains("qdisc pfifo 10: parent 1:1 limit 1000p"), "{q}");
    assert!(q.contains("qdisc clsact ffff: parent ffff:fff1"), "{q}");
    let c = env.ok_in("h", "tc -s -d class show dev pa");
    assert!(c.contains("class htb 1:1 root leaf 10:"), "{c}");
    assert!(c.contains("rate 10Mbit ceil 10Mbit"), "{c}");
    assert!(c.contains("burst 5000b"), "{c}");
    let c = env.ok_in("h", "tc -s -d class show dev ifb-pa");
    assert!(c.contains("rate 20Mbit ceil 30Mbit"), "{c}");
    assert!(c.contains("burst 15000b"), "{c}");
    let f = env.ok_in("h", "tc -d filter show dev pa ingress");
    assert!(f.contains("pref 1 u32") && f.contains("pref 2 u32"), "{f}");
    assert!(f.contains("match 00000000/00000000 at 0"), "{f}");
    assert!(
        f.contains("mirred (Egress Mirror to device pm) continue"),
        "{f}"
    );
    assert!(
        f.contains("mirred (Egress Redirect to device ifb-pa) stolen"),
        "{f}"
    );
    let f = env.ok_in("h", "tc -d filter show dev pa egress");
    assert!(f.contains("pref 3 u32"), "{f}");
    assert!(
        f.contains("mirred (Egress Mirror to device pm) continue"),
        "{f}"
    );
    let l = env.ok_in("h", "ip -d link show ifb-pa");
    assert!(
        l.contains("UP") && l.contains("alias kvmnet ifb of pa"),
        "{l}"
    );

    // What observe() reads.
    let obs = tc.observe(&port).unwrap();
    assert!(matches(&port, &obs));
    let dev = obs.dev.as_ref().unwrap();
    let root = dev.root().unwrap();
    assert_eq!((root.kind.as_str(), root.handle), ("htb", HTB_HANDLE));
    let class = dev.classes.iter().find(|c| c.handle == HTB_CLASS).unwrap();
    let p = class.htb.unwrap();
    assert_eq!((p.rate, p.ceil), (1_250_000, 1_250_000));
    assert_eq!(obs.clock.xmitsize(p.rate, p.buffer), 5000);
    let redirect = dev
        .filters
        .iter()
        .find(|f| f.parent == PARENT_INGRESS && f.prio == PRIO_REDIRECT && f.u32.is_some())
        .unwrap();
    let node = redirect.u32.as_ref().unwrap();
    assert!(node.matches_all());
    assert_eq!(redirect.protocol, ETH_P_ALL);
    let m = node.actions[0].mirred.as_ref().unwrap();
    assert_eq!(
        (m.eaction, m.control, m.ifindex),
        (TCA_EGRESS_REDIR, TC_ACT_STOLEN, env.ifindex("ifb-pa"))
    );
    let ifb = obs.ifb.as_ref().unwrap();
    assert_eq!(ifb.kind.as_deref(), Some("ifb"));
    let p = ifb.classes[0].htb.unwrap();
    assert_eq!((p.rate, p.ceil), (2_500_000, 3_750_000));
    assert_eq!(obs.clock.xmitsize(p.rate, p.buffer), 15_000);

    // Hand edits: each is seen, planned precisely, and repaired.
    let cases: &[(&str, &str)] = &[
        (
            "tc class change dev pa parent 1: classid 1:1 htb rate 1mbit",
            "set htb class 1:1 of pa",
        ),
        (
            "tc class change dev ifb-pa parent 1: classid 1:1 htb rate 20mbit ceil 30mbit",
            "set htb class 1:1 of ifb-pa",
        ),
        (
            "tc filter del dev pa ingress prio 2",
            "add filter ingress prio 2 of pa: mirred redirect to ifb-pa",
        ),
        (
            "tc filter del dev pa egress prio 3",
            "add filter egress prio 3 of pa: mirred mirror to pm",
        ),
        ("ip link set ifb-pa down", "set ifb-pa up"),
        (
            "tc filter add dev pa egress prio 7 protocol ip u32 match u32 0 0 \
             action mirred egress mirror dev pb",
            "delete filter egress prio 7 of pa",
        ),
        (
            "tc filter add dev pa parent 1: prio 5 protocol all u32 match u32 0 0 flowid 1:1",
            "delete filter 1: prio 5 of pa",
        ),
        (
            "tc qdisc replace dev pa parent 1:1 handle 20: pfifo limit 10",
            "set qdisc pfifo 10: under class 1:1 of pa",
        ),
        (
            "tc qdisc del dev ifb-pa root",
            "add qdisc htb 1: at the root of ifb-pa, set htb class 1:1 of ifb-pa (rate \
             20000000 bit/s, ceil 30000000 bit/s), set qdisc pfifo 10: under class 1:1 of ifb-pa",
        ),
        (
            "tc class add dev pa parent 1: classid 1:2 htb rate 1mbit",
            "delete the root qdisc of pa, add qdisc htb 1: at the root of pa",
        ),
        (
            "tc qdisc del dev pa clsact && tc qdisc add dev pa ingress",
            "delete the ingress qdisc of pa, add qdisc clsact to pa",
        ),
        (
            "tc qdisc del dev pa root && tc qdisc add dev pa root tbf rate 1mbit burst 10k \
             latency 50ms",
            "delete the root qdisc of pa, add qdisc htb 1: at the root of pa",
        ),
        ("ip link del ifb-pa", "create ifb ifb-pa"),
    ];
    for (edit, expect) in cases {
        env.ok_in("h", edit);
        let obs = tc.observe(&port).unwrap();
        assert!(!matches(&port, &obs), "{edit}: drift not seen");
        let ops: Vec<String> = plan(&port, &obs)
            .unwrap()
            .iter()
            .map(|o| o.to_string())
            .collect();
        let joined = ops.join(", ");
        assert!(joined.contains(expect), "{edit}: plan {joined}");
        tc.apply(&port).unwrap();
        assert_converged(&mut tc, &port);
    }
    // The IFB came back with a new index; the redirect follows it.
    let obs = tc.observe(&port).unwrap();
    let dev = obs.dev.unwrap();
    let target = dev
        .filters
        .iter()
        .filter_map(|f| f.u32.as_ref())
        .flat_map(|n| &n.actions)
        .filter_map(|a| a.mirred.as_ref())
        .find(|m| m.eaction == TCA_EGRESS_REDIR)
        .unwrap()
        .ifindex;
    assert_eq!(target, env.ifindex("ifb-pa"));
}

#[test]
fn transitions_between_settings() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut tc = env.tc();
    let full = port_a();
    tc.apply(&full).unwrap();

    // Drop outbound: the redirect goes, then the IFB; the mirror stays.
    let no_out = PortTc {
        outbound: None,
        ..full.clone()
    };
    let ops: Vec<String> = tc
        .apply(&no_out)
        .unwrap()
        .iter()
        .map(|o| o.to_string())
        .collect();
    assert_eq!(
        ops,
        ["delete filter ingress prio 2 of pa", "delete ifb ifb-pa"]
    );
    assert_converged(&mut tc, &no_out);
    assert!(!env.sh_in("h", "ip link show ifb-pa").status.success());

    // Drop the mirror too: clsact goes.
    let only_in = PortTc {
        mirror_to: None,
        ..no_out.clone()
    };
    let ops = tc.apply(&only_in).unwrap();
    assert_eq!(ops, [TcOp::DeleteIngress { dev: "pa".into() }]);
    assert_converged(&mut tc, &only_in);

    // A new rate changes the class in place.
    let faster = PortTc {
        inbound: Some(Rate::mbit(50)),
        ..only_in.clone()
    };
    let ops = tc.apply(&faster).unwrap();
    assert!(
        matches!(ops.as_slice(), [TcOp::SetHtbClass { .. }]),
        "{ops:?}"
    );
    assert_converged(&mut tc, &faster);

    // Rates of 2^32 bytes/s and more go as 64-bit attributes.
    let huge = PortTc {
        inbound: Some(Rate::bits(40_000_000_000)),
        ..PortTc::new("pa")
    };
    tc.apply(&huge).unwrap();
    assert_converged(&mut tc, &huge);
    let c = env.ok_in("h", "tc class show dev pa");
    assert!(c.contains("rate 40Gbit"), "{c}");

    // Back to everything, then nothing.
    tc.apply(&full).unwrap();
    assert_converged(&mut tc, &full);
    let none = PortTc::new("pa");
    tc.apply(&none).unwrap();
    assert_converged(&mut tc, &none);
    let q = env.ok_in("h", "tc qdisc show dev pa");
    assert!(
        q.starts_with("qdisc noqueue 0: root") && q.lines().count() == 1,
        "{q}"
    );

    // Refusals.
    let missing = PortTc {
        mirror_to: Some("nope0".into()),
        ..PortTc::new("pa")
    };
    let e = tc.apply(&missing).unwrap_err();
    assert_eq!(e.to_string(), "mirror target nope0 does not exist");
    let e = tc.apply(&PortTc::new("nope1")).unwrap_err();
    assert_eq!(e.to_string(), "port device nope1 does not exist");
    let self_mirror = PortTc {
        mirror_to: Some("pa".into()),
        ..PortTc::new("pa")
    };
    assert!(tc.apply(&self_mirror).is_err());
    // An IFB name taken by something that is not an IFB.
    env.ok_in("h", "ip link add ifb-pb type bridge");
    let b = PortTc {
        outbound: Some(Rate::mbit(1)),
        ..PortTc::new("pb")
    };
    let e = tc.apply(&b).unwrap_err();
    assert!(
        e.to_string().contains("taken by a link of kind bridge"),
        "{e}"
    );
}

/// The tree iproute2 builds from the equivalent commands is one `matches` accepts, and `tc -d`
/// shows both trees alike.
#[test]
fn same_tree_as_iproute2() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut tc = env.tc();
    let rate_in = Rate {
        ceil_bits_per_sec: Some(15_000_000),
        burst_bytes: Some(20 * 1024),
        ..Rate::mbit(10)
    };
    let rate_out = Rate::mbit(20);
    let mk = |dev: &str| PortTc {
        inbound: Some(rate_in),
        outbound: Some(rate_out),
        mirror_to: Some("pm".into()),
        ..PortTc::new(dev)
    };
    tc.apply(&mk("pa")).unwrap();
    env.ok_in(
        "h",
        "set -e
         ip link add ifb-pb type ifb
         ip link set ifb-pb up
         tc qdisc add dev ifb-pb root handle 1: htb default 1
         tc class add dev ifb-pb parent 1: classid 1:1 htb rate 20mbit burst 10000 cburst 10000
         tc qdisc add dev ifb-pb parent 1:1 handle 10: pfifo limit 1000
         tc qdisc add dev pb root handle 1: htb default 1
         tc class add dev pb parent 1: classid 1:1 htb rate 10mbit ceil 15mbit burst 20k \
            cburst 7500
         tc qdisc add dev pb parent 1:1 handle 10: pfifo limit 1000
         tc qdisc add dev pb clsact
         tc filter add dev pb ingress prio 1 protocol all u32 match u32 0 0 \
            action mirred egress mirror dev pm continue
         tc filter add dev pb ingress prio 2 protocol all u32 match u32 0 0 \
            action mirred egress redirect dev ifb-pb
         tc filter add dev pb egress prio 3 protocol all u32 match u32 0 0 \
            action mirred egress mirror dev pm continue",
    );
    let b = mk("pb");
    assert_converged(&mut tc, &b);

    // tc -d output alike, once device names, u32 table ids and action indexes are masked.
    let norm = |s: String, dev: &str| -> Vec<String> {
        s.replace(&format!("ifb-{dev}"), "IFB")
            .replace(&format!("dev {dev}"), "dev PORT")
            .lines()
            .map(|l| {
                let mut out = Vec::new();
                let mut prev = "";
                for w in l.split_whitespace() {
                    let masked = prev == "ht"
                        || prev == "index"
                        || prev == "fh"
                        || prev == "refcnt"
                        // A counter: a stray packet (IPv6 DAD, MLD) may pass one device only.
                        || prev == "direct_packets_stat"
                        || (w.starts_with("8") && w.contains(':'));
                    out.push(if masked { "X" } else { w });
                    prev = w;
                }
                out.join(" ")
            })
            .collect()
    };
    for what in [
        "qdisc show dev {}",
        "class show dev {}",
        "filter show dev {} ingress",
        "filter show dev {} egress",
        "qdisc show dev ifb-{}",
        "class show dev ifb-{}",
    ] {
        let a = env.ok_in("h", &format!("tc -d {}", what.replace("{}", "pa")));
        let b = env.ok_in("h", &format!("tc -d {}", what.replace("{}", "pb")));
        assert_eq!(norm(a, "pa"), norm(b, "pb"), "tc -d {what}");
    }
}

/// Parse strace's `-e write=FD` hex dump into the bytes of each sendmsg.
fn strace_sends(text: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in text.lines() {
        if line.starts_with(" * ") {
            out.push(Vec::new());
        } else if let Some(rest) = line.strip_prefix(" | ")
            && let Some(cur) = out.last_mut()
        {
            let hex = rest.get(7..56).unwrap_or("");
            cur.extend(
                hex.split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).unwrap()),
            );
        }
    }
    out
}

/// Every tc message we send equals what iproute2 sends for the same command (sequence numbers
/// aside), rate tables included.
#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one scenario told in order, sharing what it set up"
)]
fn messages_equal_iproute2s() {
    let _g = serial();
    if !privileged() || !have("strace") {
        return;
    }
    let env = Env::new();
    env.ok_in("h", "ip link add ifb-pb type ifb");
    let tc = env.tc();
    let clock = tc.clock();
    let (pb, ifb, pm) = (env.ifindex("pb"), env.ifindex("ifb-pb"), env.ifindex("pm"));
    let class = |rate: Rate| TcOp::SetHtbClass {
        dev: "pb".into(),
        params: rate.htb_params(&clock).unwrap(),
    };
    let filter = |parent, prio, mirred, target: &str| TcOp::AddFilter {
        dev: "pb".into(),
        parent,
        prio,
        mirred,
        target: target.into(),
    };
    let cases: Vec<(&str, TcOp, u32)> = vec![
        (
            "tc qdisc add dev pb root handle 1: htb default 1",
            TcOp::AddHtbRoot { dev: "pb".into() },
            0,
        ),
        (
            "tc class replace dev pb parent 1: classid 1:1 htb rate 10mbit ceil 20mbit \
             burst 5000 cburst 10000 quantum 125000",
            class(Rate {
                ceil_bits_per_sec: Some(20_000_000),
                ..Rate::mbit(10)
            }),
            0,
        ),
        (
            "tc class replace dev pb parent 1: classid 1:1 htb rate 500mbit burst 64k \
             cburst 32k quantum 200000",
            class(Rate {
                burst_bytes: Some(65536),
                cburst_bytes: Some(32768),
                ..Rate::mbit(500)
            }),
            0,
        ),
        (
            "tc class replace dev pb parent 1: classid 1:1 htb rate 40gbit ceil 50gbit \
             burst 20000000 cburst 25000000 quantum 200000",
            class(Rate {
                ceil_bits_per_sec: Some(50_000_000_000),
                ..Rate::bits(40_000_000_000)
            }),
            0,
        ),
        (
            "tc qdisc replace dev pb parent 1:1 handle 10: pfifo limit 1000",
            TcOp::SetLeaf { dev: "pb".into() },
            0,
        ),
        (
            "tc qdisc add dev pb clsact",
            TcOp::AddClsact { dev: "pb".into() },
            0,
        ),
        (
            "tc filter add dev pb ingress prio 1 protocol all u32 match u32 0 0 \
             action mirred egress mirror dev pm continue",
            filter(PARENT_INGRESS, PRIO_MIRROR_IN, MirredKind::Mirror, "pm"),
            pm,
        ),
        (
            "tc filter add dev pb ingress prio 2 protocol all u32 match u32 0 0 \
             action mirred egress redirect dev ifb-pb",
            filter(
                PARENT_INGRESS,
                PRIO_REDIRECT,
                MirredKind::Redirect,
                "ifb-pb",
            ),
            ifb,
        ),
        (
            "tc filter add dev pb egress prio 3 protocol all u32 match u32 0 0 \
             action mirred egress mirror dev pm continue",
            filter(PARENT_EGRESS, PRIO_MIRROR_OUT, MirredKind::Mirror, "pm"),
            pm,
        ),
        (
            "tc filter del dev pb ingress prio 1",
            TcOp::DeleteFilter {
                dev: "pb".into(),
                parent: PARENT_INGRESS,
                prio: 1,
            },
            0,
        ),
        (
            "tc qdisc del dev pb parent ffff:fff1",
            TcOp::DeleteIngress { dev: "pb".into() },
            0,
        ),
        (
            "tc qdisc del dev pb root",
            TcOp::DeleteRoot { dev: "pb".into() },
            0,
        ),
    ];
    let trace = std::env::temp_dir().join(format!("{}-strace", env.prefix));
    for (cmd, op, target) in cases {
        env.ok_in(
            "h",
            &format!(
                "strace -o {} -e trace=sendmsg -e write=3 {cmd}",
                trace.display()
            ),
        );
        let text = std::fs::read_to_string(&trace).unwrap();
        let sends = strace_sends(&text);
        assert_eq!(sends.len(), 1, "{cmd}: {text}");
        let mut theirs = sends[0].clone();
        let ours = message_bytes(
            &op,
            pb,
            target,
            u32::from_ne_bytes(theirs[8..12].try_into().unwrap()),
            &clock,
        );
        // iproute2's message flags on a class "replace" and ours agree; pid is 0 in both.
        theirs[12..16].fill(0);
        assert_eq!(ours, theirs, "{cmd}");
    }
    let _ = std::fs::remove_file(trace);
}

/// `{"end": {"sum_received": {"bits_per_second": ...}}}` without a JSON parser.
fn received_bps(json: &str) -> f64 {
    let at = json.rfind("\"sum_received\"").expect("sum_received");
    let rest = &json[at..];
    let k = rest.find("\"bits_per_second\"").unwrap();
    let num: String = rest[k + 17..]
        .chars()
        .skip_while(|c| *c == ':' || c.is_whitespace())
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse().unwrap()
}

/// TCP goodput from a to b (`reverse`: b to a) in bit/s.
fn iperf(env: &Env, reverse: bool) -> f64 {
    let _server = env.spawn_in("b", &["iperf3", "-s", "-1", "-p", "5201"]);
    let started = Instant::now();
    loop {
        let o = env.sh_in(
            "a",
            &format!(
                "iperf3 -c 10.9.0.2 -p 5201 -t 5 -O 1 -J {}",
                if reverse { "-R" } else { "" }
            ),
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() && out.contains("\"sum_received\"") {
            return received_bps(&out);
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "iperf3 failed: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Shaping holds the configured rate within 10%, both ways, at 10, 100 and 500 Mbit/s.
#[test]
fn qos_accuracy_with_iperf3() {
    let _g = serial();
    if !privileged() || !have("iperf3") {
        return;
    }
    let env = Env::new();
    let mut tc = env.tc();
    let bare_in = iperf(&env, true);
    let bare_out = iperf(&env, false);
    eprintln!(
        "unshaped: to the VM {:.0} Mbit/s, from the VM {:.0} Mbit/s",
        bare_in / 1e6,
        bare_out / 1e6
    );
    let mut report = Vec::new();
    for mbit in [10u64, 100, 500] {
        let port = PortTc {
            inbound: Some(Rate::mbit(mbit)),
            outbound: Some(Rate::mbit(mbit)),
            ..PortTc::new("pa")
        };
        tc.apply(&port).unwrap();
        // inbound: b -> a leaves through pa's root; outbound: a -> b is redirected to the IFB.
        let inbound = iperf(&env, true) / 1e6;
        let outbound = iperf(&env, false) / 1e6;
        report.push(format!(
            "{mbit} Mbit/s: inbound {inbound:.1}, outbound {outbound:.1}"
        ));
        for (dir, got) in [("inbound", inbound), ("outbound", outbound)] {
            let err = (got - mbit as f64).abs() / mbit as f64;
            assert!(
                err <= 0.10,
                "{dir} at {mbit} Mbit/s measured {got:.1} Mbit/s ({:.1}% off); so far: {report:?}",
                err * 100.0
            );
        }
        // The shaper, not something else, did it.
        let s = env.ok_in("h", "tc -s class show dev ifb-pa");
        assert!(!s.contains("Sent 0 bytes"), "{s}");
    }
    eprintln!(
        "iperf3 goodput, configured vs measured:\n  {}",
        report.join("\n  ")
    );
}

/// tcpdump on the monitor port sees both directions of the mirrored port's traffic, once each,
/// with QoS active on that port; and nothing before the mirror is set.
#[test]
fn mirror_copies_both_directions() {
    let _g = serial();
    if !privileged() || !have("tcpdump") {
        return;
    }
    let env = Env::new();
    let mut tc = env.tc();
    // Warm up ARP and the bridge's MAC table so unicast is not flooded to the monitor.
    env.ok_in("a", "ping -c 2 -i 0.2 -W 1 10.9.0.2");
    let capture = |env: &Env| -> (usize, usize) {
        // tcpdump itself is the child (`ip netns exec` execs it), so it can be stopped by pid.
        let mut dump = Proc(
            Command::new("ip")
                .args(["netns", "exec", &env.ns("m")])
                .args(["tcpdump", "-l", "-n", "-i", "eth0", "icmp"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn tcpdump"),
        );
        let err = dump.0.stderr.take().unwrap();
        let mut lines = BufReader::new(err).lines();
        // Wait until it listens ("verbose output suppressed...", then "listening on ...").
        let listening = lines.any(|l| l.is_ok_and(|l| l.contains("listening on")));
        assert!(listening, "tcpdump did not start");
        env.ok_in("a", "ping -c 5 -i 0.2 -W 1 10.9.0.2");
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(dump.0.id() as libc::pid_t, libc::SIGINT) };
        let mut out = String::new();
        if let Some(mut o) = dump.0.stdout.take() {
            use std::io::Read;
            let _ = o.read_to_string(&mut out);
        }
        let req = out
            .lines()
            .filter(|l| l.contains("10.9.0.1 > 10.9.0.2: ICMP echo request"))
            .count();
        let rep = out
            .lines()
            .filter(|l| l.contains("10.9.0.2 > 10.9.0.1: ICMP echo reply"))
            .count();
        (req, rep)
    };
    assert_eq!(capture(&env), (0, 0), "the monitor sees nothing unmirrored");
    let port = PortTc {
        inbound: Some(Rate::mbit(50)),
        outbound: Some(Rate::mbit(50)),
        mirror_to: Some("pm".into()),
        ..PortTc::new("pa")
    };
    tc.apply(&port).unwrap();
    assert_eq!(capture(&env), (5, 5), "requests and replies, once each");
    // QoS saw the same traffic.
    let s = env.ok_in("h", "tc -s class show dev ifb-pa");
    assert!(!s.contains("Sent 0 bytes"), "{s}");
}

#[test]
fn clear_leaves_nothing_behind() {
    let _g = serial();
    if !privileged() {
        return;
    }
    let env = Env::new();
    let mut tc = env.tc();
    let port = port_a();
    tc.apply(&port).unwrap();
    tc.clear("pa", None).unwrap();
    let q = env.ok_in("h", "tc qdisc show dev pa");
    assert_eq!(q.trim(), "qdisc noqueue 0: root refcnt 2", "{q}");
    assert_eq!(env.ok_in("h", "tc filter show dev pa ingress"), "");
    assert_eq!(env.ok_in("h", "tc filter show dev pa egress"), "");
    assert_eq!(env.ok_in("h", "tc class show dev pa"), "");
    assert_eq!(env.ok_in("h", "ip -o link show type ifb"), "");
    let obs = tc.observe(&port).unwrap();
    assert!(obs.ifb.is_none());
    let dev = obs.dev.unwrap();
    assert!(dev.qdiscs.iter().all(|q| q.is_default()) && dev.filters.is_empty());
    // Clearing again, or a port that never had anything, is fine.
    tc.clear("pa", None).unwrap();
    tc.clear("pb", Some("ifb-x")).unwrap();
    tc.clear("nope0", None).unwrap();
    // A link that is not an IFB is never deleted.
    env.ok_in(
        "h",
        "ip link add ifb-pb type dummy 2>/dev/null || ip link add ifb-pb type bridge",
    );
    tc.clear("pb", None).unwrap();
    env.ok_in("h", "ip link show ifb-pb");
}
