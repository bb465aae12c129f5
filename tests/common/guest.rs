//! A QEMU test guest for integration tests: a Debian kernel and a busybox initramfs (built
//! and cached by `scripts/build-guest`), booted on tap devices that the test made, with its
//! serial console read line by line and a shell on it that tests drive.
//!
//! ```ignore
//! #[path = "common/guest.rs"]
//! mod guest;
//! use guest::{Guest, Nic};
//!
//! let mut g = Guest::builder()
//!     .netns("ns1")
//!     .nic(Nic::new("tap0", "52:54:00:12:34:56"))
//!     .net(0, "static:10.77.0.10/24:10.77.0.1") // or "dhcp"
//!     .boot();
//! g.wait_for(guest::READY, guest::BOOT_TIMEOUT);
//! let (code, out) = g.run("ping -c 1 10.77.0.1", Duration::from_secs(20));
//! g.shutdown(Duration::from_secs(20));
//! ```
//!
//! Settings from the environment: `KVMNET_GUEST_ACCEL` (default `tcg`: KVM-accelerated
//! guests hang on the machines this project is tested on), `KVMNET_GUEST_QEMU` (default
//! `qemu-system-x86_64`), `KVMNET_GUEST_CACHE` (read by build-guest), `KVMNET_GUEST_KEEP_LOGS`
//! (keep console logs of guests whose test passed).
//!
//! Markers printed by the guest's /init (see scripts/guest-init): `KVMNET-DHCP-OK`,
//! `KVMNET-DHCP-FAIL`, `KVMNET-NIC`, `KVMNET-GUEST-READY`, `KVMNET-RUN-EXIT`,
//! `KVMNET-SHELL-READY`. The first console line arrives glued to terminal escape codes, so
//! markers are matched anywhere in a line.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const READY: &str = "KVMNET-GUEST-READY";
pub const DHCP_OK: &str = "KVMNET-DHCP-OK";
pub const DHCP_FAIL: &str = "KVMNET-DHCP-FAIL";
pub const RUN_EXIT: &str = "KVMNET-RUN-EXIT";
pub const SHELL_READY: &str = "KVMNET-SHELL-READY";

/// Generous: a boot takes 5-15 s under TCG, more when tests boot guests in parallel.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

const TAIL_LINES: usize = 60;

/// The kernel and initramfs, built (or found in the cache) by `scripts/build-guest`.
#[derive(Clone, Debug)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl GuestImage {
    /// Runs scripts/build-guest once per test process; panics with its output if it fails.
    pub fn ensure() -> GuestImage {
        static IMAGE: OnceLock<Result<GuestImage, String>> = OnceLock::new();
        IMAGE
            .get_or_init(build_image)
            .clone()
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn build_image() -> Result<GuestImage, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-guest");
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
            script.display(),
            out.status
        ));
    }
    let dir = PathBuf::from(
        stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or(""),
    );
    // The uncompressed PVH kernel boots about twice as fast under TCG as the bzImage.
    let kernel = ["vmlinux", "vmlinuz"]
        .iter()
        .map(|k| dir.join(k))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no kernel in '{}'\nstderr:\n{stderr}", dir.display()))?;
    let initrd = dir.join("initrd.img");
    if !initrd.is_file() {
        return Err(format!(
            "no initrd.img in '{}'\nstderr:\n{stderr}",
            dir.display()
        ));
    }
    Ok(GuestImage {
        dir,
        kernel,
        initrd,
    })
}

/// One virtio NIC of the guest, backed by an existing tap device (ethN in the guest, in the
/// order given).
#[derive(Clone, Debug)]
pub struct Nic {
    pub tap: String,
    pub mac: String,
    /// >1: a multiqueue tap (created with `multi_queue`) and a multiqueue virtio NIC.
    pub queues: u32,
    /// A QEMU netdev backend other than the tap (`socket,udp=...`); `tap` is then unused.
    pub backend: Option<String>,
    /// More properties of the virtio-net device (`speed=10000,duplex=full`).
    pub device_opts: Option<String>,
}

impl Nic {
    pub fn new(tap: &str, mac: &str) -> Nic {
        Nic {
            tap: tap.to_string(),
            mac: mac.to_string(),
            queues: 1,
            backend: None,
            device_opts: None,
        }
    }

    /// A NIC on another QEMU netdev backend, given without its id: e.g.
    /// `socket,udp=127.0.0.1:5001,localaddr=127.0.0.1:5000`, a point-to-point wire to another
    /// guest that forwards every frame (a bridge would drop LACP's slow-protocol frames).
    pub fn backend(backend: &str, mac: &str) -> Nic {
        Nic {
            tap: String::new(),
            mac: mac.to_string(),
            queues: 1,
            backend: Some(backend.to_string()),
            device_opts: None,
        }
    }

    /// Extra virtio-net properties; `speed=10000,duplex=full` gives the NIC a link speed and
    /// duplex, which 802.3ad needs to aggregate it.
    pub fn device_opts(mut self, opts: &str) -> Nic {
        self.device_opts = Some(opts.to_string());
        self
    }

    pub fn queues(mut self, n: u32) -> Nic {
        self.queues = n.max(1);
        self
    }
}

/// How to boot a guest; `Guest::builder()` starts one.
#[derive(Clone, Debug)]
pub struct GuestBuilder {
    netns: Option<String>,
    nics: Vec<Nic>,
    append: Vec<String>,
    memory_mb: u32,
    smp: u32,
    qemu_args: Vec<String>,
    log_dir: Option<PathBuf>,
    name: String,
}

impl GuestBuilder {
    /// Starts QEMU inside this network namespace (where the taps are).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = (!ns.is_empty()).then(|| ns.to_string());
        self
    }

    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }

    pub fn nics(mut self, nics: &[Nic]) -> Self {
        self.nics.extend_from_slice(nics);
        self
    }

    /// Words for the kernel command line (e.g. `kvmnet.net=dhcp kvmnet.modules=8021q`).
    pub fn append(mut self, words: &str) -> Self {
        self.append
            .extend(words.split_whitespace().map(str::to_string));
        self
    }

    /// ethN's configuration: `dhcp`, `static:A/P[:GW]`, `up` or `none`.
    pub fn net(self, index: usize, cfg: &str) -> Self {
        let key = if index == 0 {
            "kvmnet.net".to_string()
        } else {
            format!("kvmnet.net{index}")
        };
        self.append(&format!("{key}={cfg}"))
    }

    /// Modules to modprobe at boot, before the network is configured.
    pub fn modules(self, names: &[&str]) -> Self {
        self.append(&format!("kvmnet.modules={}", names.join(",")))
    }

    /// A script /init runs once the network is up; its status ends up in `KVMNET-RUN-EXIT`.
    /// The kernel command line holds about 2 KB in all: send longer scripts with `run`.
    pub fn script(self, script: &str) -> Self {
        self.append(&format!("kvmnet.run={}", base64(script.as_bytes())))
    }

    /// Shares a host directory read-only at `guest_path` (virtio-9p).
    pub fn share(mut self, tag: &str, host_path: &str, guest_path: &str) -> Self {
        self.qemu_args.push("-virtfs".into());
        self.qemu_args.push(format!(
            "local,path={host_path},mount_tag={tag},security_model=none,readonly=on,multidevs=remap"
        ));
        self.append(&format!("kvmnet.9p={tag}:{guest_path}"))
    }

    /// Shares the host's / read-only at /host in the guest, with /proc, /sys, /dev, /tmp and
    /// /run mounted inside, so `chroot /host CMD` runs host programs on the guest's kernel.
    pub fn host_root(mut self) -> Self {
        self.qemu_args.push("-virtfs".into());
        self.qemu_args.push(
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
                .into(),
        );
        let mut b = self.append("kvmnet.hostroot=hostroot");
        // The tree under test may live where the guest mounts its own tmpfs (a checkout
        // under /tmp or /run): its binaries are shared again at the same path inside /host,
        // so `host /path/to/kvmnet` works wherever the checkout is.
        let bin = Path::new(env!("CARGO_BIN_EXE_kvmnet"));
        if let Some(dir) = bin.parent().and_then(Path::to_str)
            && (dir.starts_with("/tmp/") || dir.starts_with("/run/"))
        {
            b = b.share("kvmnetbin", dir, &format!("/host{dir}"));
        }
        b
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    pub fn smp(mut self, cpus: u32) -> Self {
        self.smp = cpus.max(1);
        self
    }

    /// Extra QEMU arguments, appended as given.
    pub fn qemu_args(mut self, args: &[&str]) -> Self {
        self.qemu_args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A QMP socket at `path` (see [`qmp`]); NIC i's netdev is `n<i>` there, so
    /// `set_link n1 off` pulls the cable of the second NIC.
    pub fn qmp(mut self, path: &Path) -> Self {
        self.qemu_args.push("-qmp".into());
        self.qemu_args
            .push(format!("unix:{},server=on,wait=off", path.display()));
        self
    }

    /// Where the console log goes (default: the system temp dir).
    pub fn log_dir(mut self, dir: &Path) -> Self {
        self.log_dir = Some(dir.to_path_buf());
        self
    }

    /// A name for the log file and failure messages.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The QEMU command line this builder boots (without the `ip netns exec` prefix).
    pub fn qemu_command(&self, image: &GuestImage) -> Vec<String> {
        let accel = std::env::var("KVMNET_GUEST_ACCEL").unwrap_or_else(|_| "tcg".into());
        let qemu =
            std::env::var("KVMNET_GUEST_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        let mut append = vec![
            "console=ttyS0".to_string(),
            "quiet".into(),
            "panic=-1".into(),
        ];
        append.extend(self.append.iter().cloned());
        let mut c: Vec<String> = vec![
            qemu,
            "-accel".into(),
            accel.clone(),
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.smp.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            image.initrd.display().to_string(),
            "-append".into(),
            append.join(" "),
        ];
        if accel.starts_with("kvm") {
            c.extend(["-cpu".into(), "host".into()]);
        }
        for (i, n) in self.nics.iter().enumerate() {
            let mut netdev = match &n.backend {
                Some(b) => format!("{b},id=n{i}"),
                None => format!("tap,id=n{i},ifname={},script=no,downscript=no", n.tap),
            };
            // romfile=: no iPXE option ROM to load (none is needed to boot -kernel).
            let mut dev = format!("virtio-net-pci,netdev=n{i},mac={},romfile=", n.mac);
            if let Some(o) = &n.device_opts {
                dev.push(',');
                dev.push_str(o);
            }
            if n.queues > 1 {
                netdev.push_str(&format!(",queues={}", n.queues));
                dev.push_str(&format!(",mq=on,vectors={}", 2 * n.queues + 2));
            }
            c.extend(["-netdev".into(), netdev, "-device".into(), dev]);
        }
        c.extend(self.qemu_args.iter().cloned());
        c
    }

    /// Builds the image if needed and starts QEMU; panics if QEMU cannot start.
    pub fn boot(self) -> Guest {
        let image = GuestImage::ensure();
        let argv = self.qemu_command(&image);
        let mut cmd = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs QEMU: the child's pid is QEMU's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(&argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let dir = self.log_dir.clone().unwrap_or_else(std::env::temp_dir);
        let _ = std::fs::create_dir_all(&dir);
        let log_path = dir.join(format!(
            "kvmnet-guest-{}-{}-{n}.log",
            self.name,
            std::process::id()
        ));
        let log =
            Arc::new(Mutex::new(File::create(&log_path).unwrap_or_else(|e| {
                panic!("cannot create {}: {e}", log_path.display())
            })));
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]));
        eprintln!(
            "guest {}: console log {} (QEMU pid {})",
            self.name,
            log_path.display(),
            child.id()
        );
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        spawn_reader(stdout, "", tx.clone(), log.clone(), tail.clone(), started);
        spawn_reader(stderr, "qemu: ", tx, log.clone(), tail.clone(), started);
        let stdin = child.stdin.take();
        let g = Guest {
            name: self.name.clone(),
            child,
            stdin,
            rx,
            log,
            log_path,
            tail,
            started,
            seq: 0,
            shell_ready: false,
            status: None,
        };
        g.note(&format!("qemu: {}", shell_words(&argv)));
        g
    }
}

/// A running guest. Dropping it kills QEMU.
pub struct Guest {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<String>,
    log: Arc<Mutex<File>>,
    log_path: PathBuf,
    tail: Arc<Mutex<VecDeque<String>>>,
    started: Instant,
    seq: u64,
    shell_ready: bool,
    status: Option<ExitStatus>,
}

impl Guest {
    pub fn builder() -> GuestBuilder {
        GuestBuilder {
            netns: None,
            nics: Vec::new(),
            append: Vec::new(),
            memory_mb: 256,
            smp: 1,
            qemu_args: Vec::new(),
            log_dir: None,
            name: "guest".into(),
        }
    }

    /// Boots with these NICs (in `netns`, "" for the current namespace) and kernel
    /// command-line words (`kvmnet.net=dhcp`, ...).
    pub fn boot(netns: &str, nics: &[Nic], append: &str) -> Guest {
        Guest::builder()
            .netns(netns)
            .nics(nics)
            .append(append)
            .boot()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Time since QEMU started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for a console line containing `marker` and returns it (escape codes and CRs
    /// removed). Lines before it are consumed. Panics on timeout or if QEMU exits.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> String {
        self.wait_for_any(&[marker], timeout).1
    }

    /// Waits for a line containing any of `markers`; returns which one and the line.
    pub fn wait_for_any(&mut self, markers: &[&str], timeout: Duration) -> (usize, String) {
        match self.try_wait_for_any(markers, timeout) {
            Ok(r) => r,
            Err(why) => self.fail(&format!("waiting for {markers:?}: {why}")),
        }
    }

    /// Like `wait_for`, but returns None on timeout or QEMU's exit instead of panicking.
    pub fn try_wait_for(&mut self, marker: &str, timeout: Duration) -> Option<String> {
        self.try_wait_for_any(&[marker], timeout).ok().map(|r| r.1)
    }

    fn try_wait_for_any(
        &mut self,
        markers: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let line = self.next_line(deadline)?;
            if let Some(i) = markers.iter().position(|m| line.contains(m)) {
                return Ok((i, line));
            }
        }
    }

    fn next_line(&mut self, deadline: Instant) -> Result<String, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => {
                if line.contains(SHELL_READY) {
                    self.shell_ready = true;
                }
                Ok(line)
            }
            Err(RecvTimeoutError::Timeout) => Err("timed out".into()),
            Err(RecvTimeoutError::Disconnected) => {
                let st = self.child.wait().ok();
                self.status = st;
                Err(format!("QEMU exited ({st:?})"))
            }
        }
    }

    /// Writes raw text to the serial console.
    pub fn send(&mut self, text: &str) {
        self.note(&format!("> {}", text.trim_end().replace('\n', "\n> ")));
        let ok = match self.stdin.as_mut() {
            Some(s) => s.write_all(text.as_bytes()).and_then(|_| s.flush()).is_ok(),
            None => false,
        };
        if !ok {
            self.fail("cannot write to the console (QEMU gone?)");
        }
    }

    /// Ctrl-C for the command running in the console shell.
    pub fn interrupt(&mut self) {
        self.send("\x03");
    }

    /// Runs shell commands in the guest's console shell; returns their status and output
    /// (stdout and stderr, CRs removed). The shell keeps state (cwd, variables) between
    /// calls; lines must stay under 4 KB (the tty's line limit). Panics on timeout.
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        if !self.shell_ready {
            self.wait_for(SHELL_READY, timeout);
        }
        self.seq += 1;
        let n = self.seq;
        // The quotes split the markers in the text sent, so nothing echoed can match them.
        self.send(&format!(
            "echo KVMNET-\"\"BEGIN-{n}:\n{}\necho KVMNET-\"\"DONE-{n}: $?\n",
            cmd.trim_end()
        ));
        let begin = format!("KVMNET-BEGIN-{n}:");
        let done = format!("KVMNET-DONE-{n}: ");
        let mut out: Vec<String> = Vec::new();
        let mut started = false;
        loop {
            let line = match self.next_line(deadline) {
                Ok(l) => l,
                Err(why) => self.fail(&format!("running {cmd:?}: {why}")),
            };
            if !started {
                started = line.contains(&begin);
                continue;
            }
            if let Some(at) = line.find(&done) {
                // Output without a final newline shares the marker's line.
                if at > 0 {
                    out.push(line[..at].to_string());
                }
                let code = line[at + done.len()..]
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| self.fail(&format!("bad status line {line:?}")));
                return (code, out.join("\n"));
            }
            out.push(line);
        }
    }

    /// `run` that must exit 0; returns the output.
    pub fn run_ok(&mut self, cmd: &str, timeout: Duration) -> String {
        let (code, out) = self.run(cmd, timeout);
        if code != 0 {
            self.fail(&format!("{cmd:?} exited {code}; output:\n{out}"));
        }
        out
    }

    /// Writes a file in the guest (base64 through the console).
    pub fn write_file(&mut self, path: &str, contents: &[u8], timeout: Duration) {
        let b = base64(contents);
        let mut cmd = format!("base64 -d >'{path}' <<'KVMNET_EOF'\n");
        for chunk in b.as_bytes().chunks(76) {
            cmd.push_str(std::str::from_utf8(chunk).unwrap());
            cmd.push('\n');
        }
        cmd.push_str("KVMNET_EOF");
        self.run_ok(&cmd, timeout);
    }

    /// Powers the guest off and waits for QEMU to exit; kills it after `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            self.note("> poweroff -f");
            if let Some(s) = self.stdin.as_mut() {
                let _ = s.write_all(b"\npoweroff -f\n").and_then(|_| s.flush());
            }
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.status = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.stdin = None;
        self.status
    }

    /// The last console lines, for failure messages.
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn note(&self, s: &str) {
        let mut f = self.log.lock().unwrap();
        let _ = writeln!(f, "[{:8.3}] {s}", self.started.elapsed().as_secs_f64());
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "guest {}: {what} after {:.1}s\nconsole log: {}\n--- last console lines ---\n{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            self.log_path.display(),
            self.tail()
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() && std::env::var_os("KVMNET_GUEST_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

fn spawn_reader(
    src: impl Read + Send + 'static,
    prefix: &'static str,
    tx: Sender<String>,
    log: Arc<Mutex<File>>,
    tail: Arc<Mutex<VecDeque<String>>>,
    started: Instant,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = format!("{prefix}{}", clean(&String::from_utf8_lossy(&buf)));
            {
                let mut f = log.lock().unwrap();
                let _ = writeln!(f, "[{:8.3}] {line}", started.elapsed().as_secs_f64());
            }
            {
                let mut t = tail.lock().unwrap();
                t.push_back(line.clone());
                while t.len() > TAIL_LINES {
                    t.pop_front();
                }
            }
            // The receiver may be gone (Guest dropped); keep draining so QEMU never blocks.
            let _ = tx.send(line);
        }
    });
}

/// Removes CR/LF and terminal escape sequences (CSI `ESC [ ... final` and two-byte ones).
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\x1b' => {
                // Skip a CSI sequence up to its final byte, or one character otherwise.
                if it.next() == Some('[') {
                    for d in it.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// `key=value` from a marker line (`field(line, "ip")` on `KVMNET-GUEST-READY ip=... mac=...`).
/// Runs one QMP command (a JSON object) on the socket a guest was booted with (`.qmp`) and
/// returns QEMU's reply line; panics on an error reply.
pub fn qmp(path: &Path, command: &str) -> String {
    use std::os::unix::net::UnixStream;
    let s = UnixStream::connect(path)
        .unwrap_or_else(|e| panic!("cannot connect to QMP {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut reply = |w: &mut UnixStream, msg: Option<&str>| -> String {
        if let Some(m) = msg {
            w.write_all(m.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
        }
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("QMP {} closed", path.display());
            }
            // Events may come before the reply.
            if !line.contains("\"event\"") {
                return line;
            }
        }
    };
    reply(&mut w, None);
    reply(&mut w, Some(r#"{"execute":"qmp_capabilities"}"#));
    let out = reply(&mut w, Some(command));
    assert!(!out.contains("\"error\""), "QMP {command}: {out}");
    out
}

pub fn field(line: &str, key: &str) -> Option<String> {
    let k = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&k))
        .map(str::to_string)
}

/// Standard base64 with padding (what busybox `base64 -d` reads).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let v = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
