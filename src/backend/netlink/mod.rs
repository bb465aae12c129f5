//! Netlink framing, once for every family kvmnet speaks: the socket and its pipelined window
//! of requests and answers ([`socket`]), the message builder ([`msg`]), the parsers of what
//! comes back ([`attr`]) and netlink's own numbers ([`consts`]). `rtnl`, `tc`, `nfnetlink`
//! and `events` only describe their messages on top of it.

pub(crate) mod attr;
pub(crate) mod consts;
pub(crate) mod msg;
pub(crate) mod socket;

use std::io;

pub(crate) use attr::{attr, attr_ipv4, attr_string, attr_u8, attr_u32, attrs, messages};
pub(crate) use msg::MsgBuf;
pub(crate) use socket::{Options, Socket, WindowError};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening or driving the socket itself failed.
    #[error("netlink socket: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request. `op` names the operation and the object; `ext` is the
    /// kernel's extended-ack message when it gave one.
    #[error("{op}: {source}{}", ext.as_ref().map(|m| format!(" (kernel: {m})")).unwrap_or_default())]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
        ext: Option<String>,
    },
    /// Refused before sending: the request cannot be encoded (name too long, ...).
    #[error("{op}: {reason}")]
    Invalid { op: String, reason: String },
    /// A step around the request failed (e.g. reaching the veth peer's namespace).
    #[error("{op}: {reason}")]
    Other { op: String, reason: String },
    /// The kernel's reply did not make sense.
    #[error("{op}: unexpected netlink reply: {reason}")]
    Protocol { op: String, reason: String },
    /// Every try of a dump was interrupted by a concurrent change.
    #[error(
        "{op}: unexpected netlink reply: dump kept being interrupted by concurrent changes ({tries} tries)"
    )]
    Interrupted { op: String, tries: usize },
    /// The ack was dropped (receive buffer overrun): the request may or may not have been
    /// applied. Read the state back to find out.
    #[error(
        "{op}: no acknowledgement from the kernel (netlink receive buffer overrun); the change may or may not have been applied"
    )]
    AckLost { op: String },
}

impl NetlinkError {
    /// The errno the kernel (or the socket) reported, if any: match on `libc::EEXIST`, ...
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Socket { source, .. } | NetlinkError::Kernel { source, .. } => {
                source.raw_os_error()
            }
            NetlinkError::AckLost { .. } => Some(libc::ENOBUFS),
            _ => None,
        }
    }

    /// The error as an `io::Error`, for callers that report socket failures as such.
    pub(crate) fn into_io(self) -> io::Error {
        match self {
            NetlinkError::Socket { source, .. } => source,
            other => io::Error::other(other.to_string()),
        }
    }
}

pub(crate) fn kernel_err(op: String, errno: i32, ext: Option<String>) -> NetlinkError {
    NetlinkError::Kernel {
        op,
        source: io::Error::from_raw_os_error(errno),
        ext,
    }
}
