//! What can go wrong in a plan, an apply or a daemon request, by kind. The kind, never the
//! message, decides the CLI's exit status and the API's HTTP status: messages are for people
//! and may be reworded, scripts and API clients read the kind.
//!
//! Each [`EngineError`] keeps the error it comes from (netlink, nft, the state directory...)
//! as its typed source; [`EngineError::kind`] classifies it.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::apply::ApplyError;
use crate::backend::netns::NetnsError;
use crate::backend::nftables::NftError;
use crate::daemon::accepted::AcceptedError;
use crate::daemon::api::ApiError;
use crate::dhcp::DhcpError;
use crate::observe::ObserveError;
use crate::spec::SpecError;
use crate::statedir::StateError;

/// The kinds of failure a caller can act on, each with a stable name (the API's `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The spec (or an argument) is wrong. Nothing was changed.
    Invalid,
    /// The spec does not fit the host: an object kvmnet does not own is in the way, an
    /// uplink is missing, no derived MAC is free... Nothing was changed.
    Conflict,
    /// The command cannot run as asked (a namespace that does not exist, a test hook where
    /// it is not taken). Nothing was changed.
    Usage,
    /// Something else holds the scope: a change awaiting confirmation, a running daemon.
    /// Nothing was changed; try again later.
    Busy,
    /// A program kvmnet runs is not installed (`nft`).
    ToolMissing,
    /// The kernel refused a step of the apply; the steps before it were rolled back.
    KernelRefused,
    /// The host could not be read or reached (netlink, a namespace, a process to start).
    Host,
    /// The state directory could not be read or written.
    State,
    /// The scope's daemon could not be reached, or answered something unreadable (client
    /// side only: the daemon itself never answers this kind).
    Daemon,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Invalid,
        ErrorKind::Conflict,
        ErrorKind::Usage,
        ErrorKind::Busy,
        ErrorKind::ToolMissing,
        ErrorKind::KernelRefused,
        ErrorKind::Host,
        ErrorKind::State,
        ErrorKind::Daemon,
    ];

    /// The stable name, as API error bodies and `--json` output carry it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Usage => "usage",
            ErrorKind::Busy => "busy",
            ErrorKind::ToolMissing => "tool_missing",
            ErrorKind::KernelRefused => "kernel_refused",
            ErrorKind::Host => "host",
            ErrorKind::State => "state",
            ErrorKind::Daemon => "daemon",
        }
    }

    /// The kind a daemon's answer names (`None` for a name this version does not know).
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The CLI's exit status: 2 when nothing was changed because of what was asked (the
    /// contract scripts rely on), 1 for a failure met while doing it (rolled back).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Invalid | ErrorKind::Conflict | ErrorKind::Usage | ErrorKind::Busy => 2,
            ErrorKind::ToolMissing
            | ErrorKind::KernelRefused
            | ErrorKind::Host
            | ErrorKind::State
            | ErrorKind::Daemon => 1,
        }
    }

    /// The API's HTTP status. Specs that do not validate or do not fit the host are both 422
    /// (the CLI reads their located errors from the body); the host's failures stay 500, as
    /// before kinds existed, so older clients read them as they did.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Invalid | ErrorKind::Conflict => 422,
            ErrorKind::Usage => 400,
            ErrorKind::Busy => 409,
            ErrorKind::ToolMissing
            | ErrorKind::KernelRefused
            | ErrorKind::Host
            | ErrorKind::State => 500,
            ErrorKind::Daemon => 502,
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Located errors in a spec (or in an argument, reported the same way), and where the spec
/// came from (a file name, `--netns`, `(host)`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors {
    pub source: String,
    pub errors: Vec<SpecError>,
}

impl SpecErrors {
    /// The errors as the CLI's `--json` and the API give them.
    pub fn to_json(&self) -> Value {
        self.errors
            .iter()
            .map(|e| json!({ "path": e.path, "line": e.loc.line, "column": e.loc.col, "message": e.message }))
            .collect()
    }
}

/// One line per error: `SOURCE:LINE:COL: FIELD: message`.
impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.errors {
            writeln!(
                f,
                "{}:{}:{}: {}: {}",
                self.source, e.loc.line, e.loc.col, e.path, e.message
            )?;
        }
        Ok(())
    }
}

/// What holds the scope.
#[derive(Debug, thiserror::Error)]
pub enum Busy {
    #[error(
        "a change applied with --confirm-within awaits confirmation (it reverts in {reverts_in}s): run `kvmnet confirm` to keep it, or wait for its revert"
    )]
    Pending { reverts_in: u64 },
    #[error("a daemon already runs for this scope (its API answers on {})", socket.display())]
    Daemon { socket: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(SpecErrors),
    /// Errors the desired state met on this host (the spec itself is valid).
    #[error("{0}")]
    Conflict(SpecErrors),
    #[error("{0}")]
    Usage(String),
    /// The spec file (or standard input) could not be read: an invalid argument, with no
    /// place in the spec to point at.
    #[error("cannot read {file}: {}", io_message(.error))]
    SpecUnreadable {
        file: String,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Busy(#[from] Busy),
    /// Reading the host before a change failed.
    #[error("cannot read the host: {0}")]
    Observe(#[source] Box<ObserveError>),
    /// Step `step` (`what`) failed and the `rolled_back` steps before it were undone (with
    /// `rollback_errors` when some could not be).
    #[error(
        "step {step} ({what}) failed: {error}; the {rolled_back} steps before it were rolled back{}",
        incomplete(rollback_errors)
    )]
    KernelRefused {
        step: usize,
        what: String,
        #[source]
        error: Box<ApplyError>,
        rolled_back: usize,
        rollback_errors: Vec<String>,
    },
    /// The kernel could not be reached to apply (a netlink socket).
    #[error(transparent)]
    Kernel(Box<ApplyError>),
    /// The scope's namespace could not be made or entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Accepted(#[from] AcceptedError),
    /// A file of the state directory (`context` says which, when the error does not).
    #[error("{context}{source}")]
    StateIo {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pending confirmation file is damaged: {0}")]
    PendingDamaged(#[source] serde_json::Error),
    /// The daemon's DHCP server could not start.
    #[error("dhcp: {0}")]
    Dhcp(#[source] DhcpError),
    /// The daemon's DNS service could not start.
    #[error("dns: {0}")]
    Dns(#[source] crate::dns::DnsError),
    /// The daemon's DHCPv6 server could not start.
    #[error("dhcp6: {0}")]
    Dhcp6(#[source] crate::dhcp::v6::Dhcp6Error),
    /// The DHCP lease journal could not be read.
    #[error(transparent)]
    Leases(DhcpError),
    #[error("cannot start the revert timer: {0}")]
    RevertTimer(#[source] std::io::Error),
    /// The daemon could not listen on its API socket.
    #[error(transparent)]
    Listen(ApiError),
    /// The daemon could not listen for metrics (`--metrics-listen`).
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// What the scope's daemon answered (its kind read from the answer), or why it could not
    /// be asked.
    #[error("{}", daemon_message(.0))]
    Daemon(#[from] ApiError),
    /// `kvmnet bench` failed (its kind says whether anything was measured or changed).
    #[error(transparent)]
    Bench(Box<crate::bench::BenchError>),
}

/// An I/O error's message without the "(os error N)" the standard library appends.
pub fn io_message(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

fn incomplete(rollback_errors: &[String]) -> String {
    if rollback_errors.is_empty() {
        return String::new();
    }
    format!(
        "; ROLLBACK INCOMPLETE, check the host: {}",
        rollback_errors.join("; ")
    )
}

/// A refusal the daemon explained (409: what holds the scope) reads as if the CLI had found
/// it itself; other failures say they come from the daemon.
fn daemon_message(e: &ApiError) -> String {
    match e {
        ApiError::Status {
            status: 409, body, ..
        } => body.clone(),
        e => e.to_string(),
    }
}

impl EngineError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EngineError::Invalid(_) | EngineError::SpecUnreadable { .. } => ErrorKind::Invalid,
            EngineError::Conflict(_) => ErrorKind::Conflict,
            EngineError::Usage(_) => ErrorKind::Usage,
            EngineError::Busy(_) => ErrorKind::Busy,
            EngineError::Observe(e) => observe_kind(e),
            EngineError::KernelRefused { error, .. } => apply_kind(error),
            EngineError::Kernel(_)
            | EngineError::Netns(_)
            | EngineError::RevertTimer(_)
            | EngineError::Metrics(_)
            | EngineError::Dns(_) => ErrorKind::Host,
            EngineError::State(_)
            | EngineError::Accepted(_)
            | EngineError::StateIo { .. }
            | EngineError::PendingDamaged(_)
            | EngineError::Listen(_) => ErrorKind::State,
            EngineError::Dhcp(e) | EngineError::Leases(e) => dhcp_kind(e),
            EngineError::Dhcp6(crate::dhcp::v6::Dhcp6Error::State(e)) => dhcp_kind(e),
            EngineError::Dhcp6(_) => ErrorKind::Host,
            EngineError::Daemon(e) => api_kind(e),
            EngineError::Bench(e) => e.kind(),
        }
    }

    /// A state directory file's I/O error that names its file itself.
    pub fn state_io(source: std::io::Error) -> EngineError {
        EngineError::StateIo {
            context: "",
            source,
        }
    }

    /// The errors in the spec, for a kind that has them.
    pub fn spec_errors(&self) -> Option<&SpecErrors> {
        match self {
            EngineError::Invalid(s) | EngineError::Conflict(s) => Some(s),
            _ => None,
        }
    }

    /// The error as a JSON body (the API's, and the CLI's `--json`): located errors with
    /// their source for a spec, the message otherwise, and the kind.
    pub fn to_json(&self) -> Value {
        let kind = self.kind().name();
        match self.spec_errors() {
            Some(s) => json!({
                "changes": [], "kind": kind, "source": s.source, "errors": s.to_json()
            }),
            None => json!({ "changes": [], "kind": kind, "error": self.to_string() }),
        }
    }
}

impl From<ObserveError> for EngineError {
    fn from(e: ObserveError) -> EngineError {
        EngineError::Observe(Box::new(e))
    }
}

/// `nft` itself is not there (its spawn found no such file), as opposed to refusing.
fn nft_missing(e: &NftError) -> bool {
    matches!(e, NftError::Missing(io) if io.kind() == std::io::ErrorKind::NotFound)
}

/// The kind of an observation's failure.
pub fn observe_kind(e: &ObserveError) -> ErrorKind {
    match e {
        ObserveError::Nft(n) if nft_missing(n) => ErrorKind::ToolMissing,
        ObserveError::State(_) => ErrorKind::State,
        _ => ErrorKind::Host,
    }
}

/// The kind of a step's failure.
pub fn apply_kind(e: &ApplyError) -> ErrorKind {
    match e {
        ApplyError::Nft(n) if nft_missing(n) => ErrorKind::ToolMissing,
        _ => ErrorKind::KernelRefused,
    }
}

fn dhcp_kind(e: &DhcpError) -> ErrorKind {
    match e {
        DhcpError::Locked { .. } => ErrorKind::Busy,
        DhcpError::State { .. } => ErrorKind::State,
        _ => ErrorKind::Host,
    }
}

/// The kind the daemon named in its answer; for a daemon that names none (an older one),
/// what its status says.
fn api_kind(e: &ApiError) -> ErrorKind {
    match e {
        ApiError::Status {
            kind: Some(kind), ..
        } => *kind,
        ApiError::Status { status: 409, .. } => ErrorKind::Busy,
        _ => ErrorKind::Daemon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Loc;

    fn spec_errors() -> SpecErrors {
        SpecErrors {
            source: "web.yaml".into(),
            errors: vec![SpecError {
                path: "networks.n.mode".into(),
                loc: Loc { line: 3, col: 11 },
                message: "must be one of nat, routed".into(),
            }],
        }
    }

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "x")
    }

    #[test]
    fn names_are_stable_unique_and_read_back() {
        let names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "invalid",
                "conflict",
                "usage",
                "busy",
                "tool_missing",
                "kernel_refused",
                "host",
                "state",
                "daemon"
            ]
        );
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
        }
        assert_eq!(ErrorKind::from_name("Invalid"), None);
    }

    #[test]
    fn exit_codes_and_statuses_follow_the_contract() {
        let table: Vec<_> = ErrorKind::ALL
            .iter()
            .map(|k| (k.name(), k.exit_code(), k.http_status()))
            .collect();
        assert_eq!(
            table,
            [
                ("invalid", 2, 422),
                ("conflict", 2, 422),
                ("usage", 2, 400),
                ("busy", 2, 409),
                ("tool_missing", 1, 500),
                ("kernel_refused", 1, 500),
                ("host", 1, 500),
                ("state", 1, 500),
                ("daemon", 1, 502),
            ]
        );
    }

    #[test]
    fn errors_are_classified_by_their_source_not_their_text() {
        let e = EngineError::Invalid(spec_errors());
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert_eq!(
            e.to_string(),
            "web.yaml:3:11: networks.n.mode: must be one of nat, routed\n"
        );
        assert_eq!(
            EngineError::Conflict(spec_errors()).kind(),
            ErrorKind::Conflict
        );
        let busy = EngineError::from(Busy::Pending { reverts_in: 7 });
        assert_eq!(busy.kind(), ErrorKind::Busy);
        assert!(
            busy.to_string()
                .contains("awaits confirmation (it reverts in 7s)")
        );
        // nft missing is told from nft refusing, whether met reading or applying.
        let missing = || NftError::Missing(io(std::io::ErrorKind::NotFound));
        let observe = EngineError::from(ObserveError::Nft(missing()));
        assert_eq!(observe.kind(), ErrorKind::ToolMissing);
        assert!(
            observe
                .to_string()
                .starts_with("cannot read the host: cannot run nft")
        );
        let refused = |error: ApplyError| EngineError::KernelRefused {
            step: 3,
            what: "+ link x".into(),
            error: Box::new(error),
            rolled_back: 2,
            rollback_errors: vec![],
        };
        assert_eq!(
            refused(ApplyError::Nft(missing())).kind(),
            ErrorKind::ToolMissing
        );
        let rejected = refused(ApplyError::Nft(NftError::Rejected("syntax".into())));
        assert_eq!(rejected.kind(), ErrorKind::KernelRefused);
        assert_eq!(
            rejected.to_string(),
            "step 3 (+ link x) failed: nft rejected kvmnet's tables: syntax; the 2 steps before it were rolled back"
        );
        // A broken pipe to a running nft is no missing tool.
        let pipe = NftError::Missing(io(std::io::ErrorKind::BrokenPipe));
        assert_eq!(
            refused(ApplyError::Nft(pipe)).kind(),
            ErrorKind::KernelRefused
        );
        assert_eq!(
            EngineError::from(ObserveError::State(StateError::Io {
                path: "s".into(),
                source: io(std::io::ErrorKind::PermissionDenied),
            }))
            .kind(),
            ErrorKind::State
        );
        assert_eq!(
            EngineError::state_io(io(std::io::ErrorKind::Other)).kind(),
            ErrorKind::State
        );
        let locked = DhcpError::Locked { path: "l".into() };
        assert_eq!(EngineError::Dhcp(locked).kind(), ErrorKind::Busy);
    }

    #[test]
    fn a_daemon_s_answer_keeps_its_kind() {
        let status = |status, kind| {
            EngineError::from(ApiError::Status {
                status,
                kind,
                body: "why".into(),
            })
        };
        let e = status(500, Some(ErrorKind::ToolMissing));
        assert_eq!(
            (e.kind(), e.to_string().as_str()),
            (ErrorKind::ToolMissing, "daemon answered 500: why")
        );
        // A daemon from before kinds: its 409 is a refusal, the rest its failure.
        let e = status(409, None);
        assert_eq!((e.kind(), e.to_string().as_str()), (ErrorKind::Busy, "why"));
        assert_eq!(status(500, None).kind(), ErrorKind::Daemon);
        let gone = EngineError::from(ApiError::Malformed("x".into()));
        assert_eq!(gone.kind().exit_code(), 1);
    }

    #[test]
    fn json_bodies_carry_the_kind_beside_the_fields_they_had() {
        assert_eq!(
            EngineError::Conflict(spec_errors()).to_json(),
            json!({
                "changes": [], "kind": "conflict", "source": "web.yaml",
                "errors": [{ "path": "networks.n.mode", "line": 3, "column": 11,
                             "message": "must be one of nat, routed" }]
            })
        );
        assert_eq!(
            EngineError::Usage("no".into()).to_json(),
            json!({ "changes": [], "kind": "usage", "error": "no" })
        );
    }
}
