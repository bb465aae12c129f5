// kvmnet's command-line arguments: the one definition that src/cli.rs parses with and
// build.rs makes the man pages and shell completions from (both `include!` this file, so it
// names what it uses in full and has no inner attributes).

/// The environment variables every command that finds a scope's state reads.
macro_rules! env_state_dir {
    () => {
        "  KVMNET_STATE_DIR       the state directory (default /var/lib/kvmnet)\n"
    };
}

/// The test hook of the commands that change the host.
macro_rules! env_fail_after {
    () => {
        "  KVMNET_FAIL_AFTER      fail right after step K (a test hook of rollback; refused while a daemon runs)\n"
    };
}

#[derive(clap::Parser)]
#[command(
    name = "kvmnet",
    version,
    about = "Declarative networking for KVM hosts",
    after_help = concat!(
        "Example:\n  kvmnet plan web.yaml --netns lab\n\n",
        "Environment:\n",
        env_state_dir!(),
        env_fail_after!(),
        "  (the daemon reads more: kvmnet daemon --help)\n\n",
        "Exit status: 0 success, 1 runtime failure (rolled back), 2 invalid spec, conflict, usage\n",
        "or busy, with nothing changed (plan --detailed-exitcode: 2 changes, 1 any error)."
    )
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Scope {
    /// Operate inside this network namespace (`apply` creates it if missing; commands that
    /// only read or remove refuse one that does not exist); nothing outside it is touched
    /// except guest namespaces the spec names.
    #[arg(long, value_name = "NS")]
    netns: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// The OVN chassis this host is (a name under ovn.chassis); default: the Open_vSwitch
    /// system-id, else the hostname. Only specs with OVN networks use it.
    #[arg(long, value_name = "NAME")]
    chassis: Option<String>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check a spec and report every error with its field and line:column.
    #[command(after_help = concat!(
        "Example:\n  kvmnet validate web.yaml --json\n\n",
        "Environment: none (whether a spec is valid does not depend on the host)."
    ))]
    Validate {
        /// The spec (YAML); `-` reads it from standard input.
        #[arg(value_hint = clap::ValueHint::FilePath)]
        file: std::path::PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show what apply would change.
    #[command(after_help = concat!(
        "Example:\n  kvmnet plan web.yaml --netns lab --detailed-exitcode\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Plan {
        /// The spec (YAML); `-` reads it from standard input.
        #[arg(value_hint = clap::ValueHint::FilePath)]
        file: std::path::PathBuf,
        #[command(flatten)]
        scope: Scope,
        /// Exit 2 when the plan has changes, 0 when it has none, and 1 on any error
        /// (an invalid spec included), as terraform plan -detailed-exitcode does.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Make the host match the spec; roll back on failure.
    #[command(after_help = concat!(
        "Example:\n  kvmnet apply web.yaml --confirm-within 60s\n\n",
        "Environment:\n",
        env_state_dir!(),
        env_fail_after!()
    ))]
    Apply {
        /// The spec (YAML); `-` reads it from standard input.
        #[arg(value_hint = clap::ValueHint::FilePath)]
        file: std::path::PathBuf,
        #[command(flatten)]
        scope: Scope,
        /// Revert to the exact previous state unless `kvmnet confirm` comes within this
        /// time (e.g. 60s, 5m): for changes that may cut your own connection.
        #[arg(long, value_name = "DURATION")]
        confirm_within: Option<String>,
    },
    /// Keep a change applied with --confirm-within.
    #[command(after_help = concat!(
        "Example:\n  kvmnet confirm --netns lab\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Confirm {
        #[arg(long, value_name = "NS")]
        netns: Option<String>,
    },
    /// Remove everything kvmnet created, give moved addresses back, restore sysctls.
    #[command(after_help = concat!(
        "Example:\n  kvmnet destroy --netns lab --dry-run\n\n",
        "Environment:\n",
        env_state_dir!(),
        env_fail_after!()
    ))]
    Destroy {
        #[command(flatten)]
        scope: Scope,
        /// Show what destroy would remove (its plan, rendered as `plan` renders one) and
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Networks and ports with live state and counters.
    #[command(after_help = concat!(
        "Example:\n  kvmnet status --netns lab --json\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Status {
        #[command(flatten)]
        scope: Scope,
    },
    /// DHCP leases.
    #[command(after_help = concat!(
        "Example:\n  kvmnet leases --netns lab\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Leases {
        #[command(flatten)]
        scope: Scope,
    },
    /// What kvmnet owns, as a spec: the one last applied, checked against the live host.
    #[command(after_help = concat!(
        "Example:\n  kvmnet show --netns lab > lab.yaml\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Show {
        #[arg(long, value_name = "NS")]
        netns: Option<String>,
    },
    /// Check the live host against the spec in force (the one `show` prints), and say how
    /// to fix what is wrong.
    #[command(after_help = concat!(
        "Each check prints as ok, warn or fail with what it saw and the command or spec change\n",
        "that fixes it; --json prints {\"checks\": [{\"id\", \"status\", \"subject\", \"message\",\n",
        "\"fix\"}]}. Exit status: 0 when no check fails (warnings allowed), 1 when one fails.\n\n",
        "Example:\n  kvmnet doctor --netns lab --json\n\n",
        "Environment:\n",
        env_state_dir!(),
        "  OVN_RUNDIR             where ovn-controller's pid file is (default /run/ovn)\n",
        "  OVS_RUNDIR             where ovs-vswitchd's pid file is (default /run/openvswitch)\n",
        "  OVS_SYSCONFDIR         where openvswitch/system-id.conf is (default /etc)\n"
    ))]
    Doctor {
        #[command(flatten)]
        scope: Scope,
    },
    /// Measure the data path between two ports: TCP throughput (1 and 4 streams), UDP loss
    /// at stepped rates and request/response latency, with and without the ports' policy.
    #[command(after_help = concat!(
        "Without --between, bench adds two pairs of throwaway veth ports to the spec in force on one\n",
        "network (one pair with the guard and a firewall, one with no policy), applies that, measures,\n",
        "and applies the spec in force again, also after an error or ctrl-C; it refuses while a daemon\n",
        "runs for the scope. Each figure is the median of rounds repeated until the spread settles,\n",
        "with its interquartile range. iperf3 sends the bulk traffic when installed; else kvmnet's own\n",
        "sender does, and the report says so.\n\n",
        "Example:\n  kvmnet bench --netns lab --svg bench.svg\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Bench {
        #[command(flatten)]
        scope: Scope,
        /// The network for the throwaway ports (nat, routed or isolated); default the first
        /// one, by name, whose ports may reach each other.
        #[arg(long, value_name = "NET", conflicts_with = "between")]
        network: Option<String>,
        /// Measure from VM A's first veth port to VM B's, as they are (taps are refused:
        /// their far end is inside the VM).
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        between: Option<Vec<String>>,
        /// Three rounds of shorter runs (two UDP rates, 2,000 round trips): about 25 s.
        #[arg(long)]
        quick: bool,
        /// Seconds of each bulk run (1 to 60, default 1).
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u32>,
        /// Also draw the results (throughput per configuration, latency distribution) as SVG.
        #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        svg: Option<std::path::PathBuf>,
    },
    /// Would a packet from a VM's port get to DEST, and if not, which rule stops it: each hop
    /// with the rule that decided it and the spec line that rule came from.
    #[command(after_help = concat!(
        "DEST is VM[/PORT], an IPv4 address, or host (the gateway of the source's network); the\n",
        "protocol is icmp (an echo request, the default), tcp/PORT (a SYN) or udp/PORT. The spec\n",
        "traced is the one in force (the one `show` prints) unless --spec names one. --live also\n",
        "sends the packet from a veth port's namespace and reads the kernel's verdicts with\n",
        "nftables tracing. --json prints {\"verdict\", \"hops\": [{\"stage\", \"verdict\", \"rule\",\n",
        "\"at\", ...}], \"live\"}.\n\n",
        "Exit status: 0 the packet gets there, 1 it is stopped (or --live disagrees with the model,\n",
        "or could not run), 2 bad input.\n\n",
        "Example:\n  kvmnet trace web1 db1 tcp/5432 --netns lab\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Trace(TraceArgs),
    /// A VM's ports for its launcher: QEMU arguments, libvirt interfaces or cloud-init.
    #[command(after_help = concat!(
        "Example:\n  kvmnet export web1 --format qemu web.yaml\n  qemu-system-x86_64 ... $(kvmnet export web1 --format qemu web.yaml)\n\n",
        "Environment:\n",
        env_state_dir!()
    ))]
    Export(ExportArgs),
    /// Make a spec from another tool's configuration (libvirt's XML), printed on stdout.
    #[command(
        subcommand,
        after_help = concat!(
            "Example:\n  kvmnet import libvirt default.xml --domain web1.xml > host.yaml\n\n",
            "Environment: none (the import reads only the files it is given)."
        )
    )]
    Import(ImportCommand),
    /// Apply the spec, then keep the host converged, serve DHCP and the local API.
    #[command(after_help = concat!(
        "Example:\n  kvmnet daemon --spec /etc/kvmnet/host.yaml --metrics-listen 127.0.0.1:9465\n\n",
        "Environment:\n",
        env_state_dir!(),
        "  KVMNET_RECONCILE_MS    how often drift is repaired and confirm deadlines checked (2000)\n",
        "  KVMNET_RESYNC_MS       how often the whole host is read again (60000)\n",
        "  KVMNET_API_UIDS        user IDs the API answers, comma-separated (0)\n",
        "  KVMNET_API_TIMEOUT_MS  how long a client has to send its request (10000)\n",
        "  NOTIFY_SOCKET          systemd's readiness socket (Type=notify)\n",
        "  WATCHDOG_USEC          set by systemd (WatchdogSec=): the reconcile loop sends\n",
        "                         WATCHDOG=1 to NOTIFY_SOCKET every half of it\n",
        "  WATCHDOG_PID           set by systemd: the watchdog pings only if this is our PID\n",
        "  JOURNAL_STREAM         set by systemd: when stderr is this stream (the journal),\n",
        "                         lines start with their syslog priority (<3> error .. <7>)\n"
    ))]
    Daemon {
        #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
        spec: std::path::PathBuf,
        #[arg(long, value_name = "NS")]
        netns: Option<String>,
        /// Serve Prometheus metrics read-only over TCP on ADDR:PORT (GET /metrics only; the
        /// same series are on the API socket). Bound in the namespace kvmnet is started
        /// in, before it enters --netns: the host's, for a system daemon.
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_listen: Option<String>,
        /// The OVN chassis this host is (a name under ovn.chassis), for specs with OVN
        /// networks; default: the chassis an earlier apply made this host, else the
        /// hostname. `kvmnet apply --chassis` through the daemon must name the same.
        #[arg(long, value_name = "NAME")]
        chassis: Option<String>,
    },
    /// Print the spec's JSON Schema (draft-07), made from the validator's own model, for
    /// editors with a YAML language server.
    #[command(after_help = concat!(
        "Example:\n",
        "  kvmnet schema > /etc/kvmnet/kvmnet.schema.json\n",
        "  # then, first line of a spec: # yaml-language-server: $schema=/etc/kvmnet/kvmnet.schema.json\n",
        "\nEnvironment: none."
    ))]
    Schema,
    /// Print a shell completion script (bash, zsh or fish), made from these arguments when
    /// kvmnet was built.
    #[command(after_help = "Example:\n  kvmnet completions bash > /usr/share/bash-completion/completions/kvmnet\n\nEnvironment: none.")]
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Write the man pages (kvmnet.1 and one per command), made from these arguments when
    /// kvmnet was built, into DIR.
    #[command(after_help = "Example:\n  kvmnet man /usr/share/man/man1\n\nEnvironment: none.")]
    Man {
        #[arg(value_hint = clap::ValueHint::DirPath)]
        dir: std::path::PathBuf,
    },
    /// (internal) The timer behind --confirm-within when no daemon runs.
    #[command(hide = true)]
    RevertTimer {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        token: String,
    },
}

#[derive(clap::Args)]
pub struct TraceArgs {
    /// The source: VM (its first port) or VM/PORT (the port's name or index).
    #[arg(value_name = "VM[/PORT]")]
    pub from: String,
    /// VM[/PORT], an IPv4 or IPv6 address, or host.
    #[arg(value_name = "DEST")]
    pub to: String,
    /// icmp, tcp/PORT, udp/PORT, icmpv6 or icmpv6/TYPE (nd-neighbor-solicit,
    /// nd-neighbor-advert, nd-router-solicit, nd-router-advert, nd-redirect, ...).
    #[arg(value_name = "PROTO", default_value = "icmp")]
    pub proto: String,
    /// IPv6: the destination VM's or the gateway's IPv6 address, sent from the port's
    /// `ipv6` (else its SLAAC address).
    #[arg(short = '6', long)]
    pub ipv6: bool,
    /// The source address the packet carries instead of the port's own (what a guest
    /// sending from another address meets); its family is the packet's.
    #[arg(long, value_name = "ADDR")]
    pub source: Option<std::net::IpAddr>,
    /// Trace through this spec instead of the one in force (`-`: standard input).
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub spec: Option<std::path::PathBuf>,
    /// Also send the packet from the source port's namespace (veth ports only) and compare
    /// the kernel's verdicts, read with nftables tracing, with the model's.
    #[arg(long)]
    pub live: bool,
    /// The scope (network namespace) whose spec and kernel to trace.
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
/// What `kvmnet export` writes.
pub enum ExportFormat {
    /// `-netdev` and `-device` arguments for qemu-system, one option and its value a line.
    Qemu,
    /// libvirt `<interface type='ethernet'>` elements for a domain's `<devices>`.
    Libvirt,
    /// A cloud-init network config (version 2).
    CloudInit,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The VM, by its name in the spec.
    pub vm: String,
    /// Only this port (its host-side name); default every port of the VM.
    #[arg(long, value_name = "NAME")]
    pub port: Option<String>,
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// The spec; default the one the scope's daemon enforces (its accepted spec).
    #[arg(value_hint = clap::ValueHint::FilePath)]
    pub file: Option<std::path::PathBuf>,
    /// The scope whose ports give the MACs (a namespace that does not exist has none yet).
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum ImportCommand {
    /// libvirt network XML (and the interfaces of domain XML) as a kvmnet spec on stdout;
    /// anything without a faithful mapping is an error naming its element and line (exit 2,
    /// nothing printed).
    #[command(after_help = concat!(
        "Notes (libvirt behaviour kvmnet does not carry over but that changes no address) go to\n",
        "stderr as `#` lines.\n\n",
        "Example:\n  kvmnet import libvirt /etc/libvirt/qemu/networks/default.xml --domain web1.xml > host.yaml\n\n",
        "Environment: none (the import reads only the files it is given)."
    ))]
    Libvirt(LibvirtImportArgs),
}

#[derive(clap::Args)]
pub struct LibvirtImportArgs {
    /// Network XML files, as `virsh net-dumpxml --inactive NAME` prints them.
    #[arg(required = true, value_name = "NETWORK.xml", value_hint = clap::ValueHint::FilePath)]
    pub networks: Vec<std::path::PathBuf>,
    /// Domain XML files (`virsh dumpxml --inactive NAME`): each domain is a VM, and its
    /// interfaces on the imported networks its ports.
    #[arg(long, value_name = "DOMAIN.xml", num_args = 1.., value_hint = clap::ValueHint::FilePath)]
    pub domain: Vec<std::path::PathBuf>,
    /// Where the filters that interfaces' <filterref> name are defined (libvirt's
    /// /etc/libvirt/nwfilter); clean-traffic needs none.
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub nwfilter: Option<std::path::PathBuf>,
}
