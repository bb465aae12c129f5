//! A netlink socket: open and bind, send a datagram, receive one, run a dump, and the
//! pipelined window of requests and answers every batched change goes through.
//!
//! Speed comes from pipelining: the kernel handles every message of a `sendmsg` synchronously
//! inside that call and queues one answer per message, so a window of requests costs one
//! `sendmsg` plus reading the answers, instead of a round trip per request. A window is
//! bounded ([`Socket::window`], [`Socket::max_send`]) so the queued answers always fit the
//! (enlarged) receive buffer.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libc::c_int;

use super::attr::{i32_at, messages, parse_error};
use super::consts::{
    NETLINK_ADD_MEMBERSHIP, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_MIN_TYPE, NLMSG_NOOP,
    NLMSG_OVERRUN, SOL_NETLINK,
};
use super::msg::MsgBuf;
use super::{NetlinkError, kernel_err};

/// Requests per window, at most. Fewer when the receive buffer is small: see
/// [`RCVBUF_PER_REQUEST`].
const WINDOW: usize = 256;
/// Receive buffer one request of a window may need for its answers (an ack of ~0.5-1 KiB
/// truesize, plus for some requests the reply to a sync RTM_GETLINK of ~2-3 KiB).
const RCVBUF_PER_REQUEST: usize = 4096;
/// Bytes per window (one `sendmsg`); kept under half the send buffer.
pub(crate) const WINDOW_BYTES: usize = 128 * 1024;
const SNDBUF: c_int = 1 << 20;
const RCVBUF: c_int = 4 << 20;
const RECV_BUF_LEN: usize = 256 * 1024;
const DUMP_RETRIES: usize = 5;

/// How a socket is set up.
pub(crate) struct Options {
    /// Multicast groups to hear from the start (`nl_groups` of the bind).
    pub(crate) groups: u32,
    pub(crate) nonblock: bool,
    /// Receive buffer, forced past the system limit where the caller may.
    pub(crate) rcvbuf: c_int,
    /// Send buffer; None keeps the system's default.
    pub(crate) sndbuf: Option<c_int>,
    /// Acks without a copy of the request, with the kernel's error text when it has one.
    pub(crate) ext_acks: bool,
    /// The buffer datagrams are read into.
    pub(crate) recv_len: usize,
}

impl Options {
    /// A socket that sends windows of requests and reads their answers. Big buffers so a
    /// window of acks or a dump never overruns.
    pub(crate) const REQUESTS: Options = Options {
        groups: 0,
        nonblock: false,
        rcvbuf: RCVBUF,
        sndbuf: Some(SNDBUF),
        ext_acks: true,
        recv_len: RECV_BUF_LEN,
    };
}

/// The answer to one request of a window.
pub(crate) struct Answer<'a> {
    /// 0, or the errno the kernel refused the request with.
    pub(crate) errno: i32,
    /// The kernel's extended-ack text, when it gave one.
    pub(crate) ext: Option<String>,
    /// The payload of the reply, for a request that has one (a GET, or an echo).
    pub(crate) reply: Option<&'a [u8]>,
}

/// The answer to a single request, owned.
pub(crate) struct Reply {
    pub(crate) errno: i32,
    pub(crate) ext: Option<String>,
    pub(crate) payload: Option<Vec<u8>>,
}

/// Why a window's answers are incomplete; the unanswered requests are left in `pending`.
#[derive(Debug)]
pub(crate) enum WindowError {
    /// The window was not sent: none of it happened.
    Send(io::Error),
    /// Reading the answers failed.
    Recv(io::Error),
    /// Answers were dropped (receive buffer overrun): the requests may or may not have been
    /// applied.
    Lost,
}

impl WindowError {
    /// The errno to report for each unanswered request.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            WindowError::Send(e) | WindowError::Recv(e) => e.raw_os_error().unwrap_or(libc::EIO),
            WindowError::Lost => libc::ENOBUFS,
        }
    }
    /// As a socket error, naming the step that failed.
    pub(crate) fn into_error(self, send: &'static str, recv: &'static str) -> NetlinkError {
        let (op, source) = match self {
            WindowError::Send(e) => (send, e),
            WindowError::Recv(e) => (recv, e),
            WindowError::Lost => (recv, io::Error::from_raw_os_error(libc::ENOBUFS)),
        };
        NetlinkError::Socket { op, source }
    }
}

/// A bound netlink socket and the buffer it reads into.
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
    rbuf: Vec<u8>,
    window: usize,
    max_send: usize,
}

pub(crate) fn sockopt(fd: RawFd, level: c_int, opt: c_int, val: c_int) -> io::Result<()> {
    // SAFETY: val is a valid c_int for the given length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(fd: RawFd, level: c_int, opt: c_int) -> Option<c_int> {
    let mut val: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as libc::socklen_t;
    // SAFETY: val and len are valid for writing.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut val as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(val)
}

/// The kernel's address, with `groups` to listen to (for a bind).
fn kernel_addr(groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain old data; zeroed is valid.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = groups;
    sa
}

/// Sets a socket buffer size, forced past the system limit where the caller may (the FORCE
/// variants need CAP_NET_ADMIN; without it we get what net.core.[rw]mem_max allow).
fn set_buffer(fd: RawFd, force: c_int, plain: c_int, bytes: c_int) {
    if sockopt(fd, libc::SOL_SOCKET, force, bytes).is_err() {
        let _ = sockopt(fd, libc::SOL_SOCKET, plain, bytes);
    }
}

/// Runs `f` with the calling thread in the network namespace `netns_fd` refers to, and
/// switches back: a socket opened inside stays bound there.
pub(crate) fn in_netns<T, E: From<NetlinkError>>(
    netns_fd: RawFd,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let sock = |op, source| NetlinkError::Socket { op, source };
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| sock("open the current network namespace", e))?;
    // SAFETY: plain syscalls on descriptors we hold.
    if unsafe { libc::setns(netns_fd, libc::CLONE_NEWNET) } != 0 {
        return Err(sock("enter network namespace", io::Error::last_os_error()).into());
    }
    let res = f();
    // SAFETY: as above.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        crate::log::line(
            crate::log::Level::Error,
            &format!(
                "fatal: cannot switch back to the original network namespace: {}",
                io::Error::last_os_error()
            ),
        );
        std::process::abort();
    }
    res
}

impl Socket {
    /// A socket of `protocol` bound in the calling thread's network namespace.
    pub(crate) fn open(protocol: c_int, opts: &Options) -> Result<Socket, NetlinkError> {
        let sock = |op, source| NetlinkError::Socket { op, source };
        let kind = if opts.nonblock {
            libc::SOCK_NONBLOCK
        } else {
            0
        };
        // SAFETY: plain syscall; the fd is wrapped right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | kind,
                protocol,
            )
        };
        if fd < 0 {
            let op = match protocol {
                libc::NETLINK_ROUTE => "socket(NETLINK_ROUTE)",
                _ => "socket(NETLINK_NETFILTER)",
            };
            return Err(sock(op, io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        if let Some(bytes) = opts.sndbuf {
            set_buffer(raw, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, bytes);
        }
        set_buffer(raw, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, opts.rcvbuf);
        if opts.ext_acks {
            let _ = sockopt(raw, SOL_NETLINK, NETLINK_CAP_ACK, 1);
            let _ = sockopt(raw, SOL_NETLINK, NETLINK_EXT_ACK, 1);
        }
        let sa = kernel_addr(opts.groups);
        // SAFETY: sa is a valid sockaddr_nl.
        let r = unsafe {
            libc::bind(
                raw,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(sock("bind", io::Error::last_os_error()));
        }
        let sndbuf = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(200_000);
        let rcvbuf = getsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(200_000);
        Ok(Socket {
            fd,
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(1),
            rbuf: vec![0; opts.recv_len],
            window: (rcvbuf.max(0) as usize / RCVBUF_PER_REQUEST).clamp(8, WINDOW),
            max_send: (sndbuf.max(65536) as usize / 2).min(WINDOW_BYTES),
        })
    }

    /// Also hear the multicast group `group` (groups past 32 cannot be bound).
    pub(crate) fn join_group(&self, group: u32) -> io::Result<()> {
        sockopt(
            self.fd.as_raw_fd(),
            SOL_NETLINK,
            NETLINK_ADD_MEMBERSHIP,
            group as c_int,
        )
    }

    /// Requests per window: as many as the receive buffer has room for the answers of.
    pub(crate) fn window(&self) -> usize {
        self.window
    }

    /// Bytes one window (one `sendmsg`) may carry.
    pub(crate) fn max_send(&self) -> usize {
        self.max_send
    }

    /// The socket's netlink port: notifications this socket's requests cause carry it.
    pub(crate) fn portid(&self) -> u32 {
        // SAFETY: zeroed sockaddr_nl is valid; getsockname fills at most `len` bytes.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: as above, on a descriptor we own.
        let r = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                (&mut sa as *mut libc::sockaddr_nl).cast(),
                &mut len,
            )
        };
        if r == 0 { sa.nl_pid } else { 0 }
    }

    /// The next sequence number (never 0).
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Sends `buf` as one datagram, retrying when a signal interrupts it.
    pub(crate) fn send(&self, buf: &[u8]) -> io::Result<()> {
        let sa = kernel_addr(0);
        loop {
            // SAFETY: buffer and address are valid for the given lengths.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    0,
                    (&sa as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one datagram; returns its length (read it with [`Socket::received`]). A
    /// datagram larger than the buffer is an `InvalidData` error (it was cut short).
    pub(crate) fn recv(&mut self, nonblock: bool) -> io::Result<usize> {
        let flags = libc::MSG_TRUNC | if nonblock { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: rbuf is valid for writing rbuf.len() bytes.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rbuf.as_mut_ptr().cast(),
                    self.rbuf.len(),
                    flags,
                )
            };
            if r >= 0 {
                let n = r as usize;
                if n > self.rbuf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("netlink message of {n} bytes truncated"),
                    ));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// The first `n` bytes of the last datagram received.
    pub(crate) fn received(&self, n: usize) -> &[u8] {
        &self.rbuf[..n]
    }

    /// Runs a dump of message type `ty` whose request carries `header` (the family's fixed
    /// header and any filter attributes); returns the payload of every reply. A dump a
    /// concurrent change interrupted is run again.
    pub(crate) fn dump(
        &mut self,
        op: &str,
        ty: u16,
        header: &[u8],
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        for _ in 0..DUMP_RETRIES {
            if let Some(payloads) = self.dump_once(op, ty, header)? {
                return Ok(payloads);
            }
        }
        Err(NetlinkError::Interrupted {
            op: op.to_string(),
            tries: DUMP_RETRIES,
        })
    }

    /// One try of [`Socket::dump`]: None when it was interrupted.
    fn dump_once(
        &mut self,
        op: &str,
        ty: u16,
        header: &[u8],
    ) -> Result<Option<Vec<Vec<u8>>>, NetlinkError> {
        let seq = self.next_seq();
        let mut b = MsgBuf::with_capacity(32 + header.len());
        let start = b.begin(ty, NLM_F_REQUEST | NLM_F_DUMP, seq);
        b.bytes(header);
        b.end(start);
        self.send(b.as_bytes()).map_err(|e| NetlinkError::Socket {
            op: "send dump request",
            source: e,
        })?;
        let mut interrupted = false;
        let mut payloads = Vec::new();
        loop {
            let n = self.recv(false).map_err(|e| NetlinkError::Socket {
                op: "receive dump",
                source: e,
            })?;
            for m in messages(&self.rbuf[..n]) {
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.ty {
                    NLMSG_DONE => {
                        let err = m.payload.get(0..4).map_or(0, |b| i32_at(b, 0));
                        if err < 0 {
                            return Err(kernel_err(op.to_string(), -err, None));
                        }
                        return Ok((!interrupted).then_some(payloads));
                    }
                    NLMSG_ERROR => {
                        let (errno, _, ext) =
                            parse_error(&m).ok_or_else(|| NetlinkError::Protocol {
                                op: op.to_string(),
                                reason: "short error message".into(),
                            })?;
                        if errno != 0 {
                            return Err(kernel_err(op.to_string(), errno, ext));
                        }
                        // An ack ends it too (none is asked for, and nothing would follow).
                        return Ok((!interrupted).then_some(payloads));
                    }
                    NLMSG_NOOP | NLMSG_OVERRUN => {}
                    // Not kept once a change interrupted the dump: it runs again.
                    _ if interrupted => {}
                    _ => payloads.push(m.payload.to_vec()),
                }
            }
        }
    }

    /// Sends `buf`, whose messages are numbered by the keys of `pending`, as one datagram and
    /// reads until each of them is answered, handing every answer to `answered` with the
    /// entry it takes out of `pending`. A request that asked for an ack is answered by its
    /// ack or error (after its reply, if it has one: an echo); one that did not, by its reply
    /// or its error.
    ///
    /// The kernel has processed the whole window when `sendmsg` returns, so on a receive
    /// buffer overrun the missing answers are gone for good: what is queued is drained and
    /// the rest reported as [`WindowError::Lost`].
    pub(crate) fn exchange<P>(
        &mut self,
        buf: &[u8],
        pending: &mut HashMap<u32, P>,
        mut answered: impl FnMut(P, Answer<'_>),
    ) -> Result<(), WindowError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.send(buf).map_err(WindowError::Send)?;
        let by_reply: HashSet<u32> = messages(buf)
            .filter(|m| m.flags & NLM_F_ACK == 0)
            .map(|m| m.seq)
            .collect();
        let mut replies: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut overrun = false;
        while !pending.is_empty() {
            let n = match self.recv(overrun) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    overrun = true;
                    continue;
                }
                Err(e) if overrun && e.raw_os_error() == Some(libc::EAGAIN) => {
                    return Err(WindowError::Lost);
                }
                Err(e) => return Err(WindowError::Recv(e)),
            };
            for m in messages(&self.rbuf[..n]) {
                if m.ty == NLMSG_ERROR {
                    let Some(p) = pending.remove(&m.seq) else {
                        continue;
                    };
                    let (errno, ext) = parse_error(&m).map_or((libc::EIO, None), |e| (e.0, e.2));
                    let reply = replies.remove(&m.seq);
                    let reply = reply.as_deref();
                    answered(p, Answer { errno, ext, reply });
                } else if m.ty < NLMSG_MIN_TYPE || !pending.contains_key(&m.seq) {
                    continue;
                } else if by_reply.contains(&m.seq) {
                    if let Some(p) = pending.remove(&m.seq) {
                        let reply = Some(m.payload);
                        answered(
                            p,
                            Answer {
                                errno: 0,
                                ext: None,
                                reply,
                            },
                        );
                    }
                } else {
                    replies.insert(m.seq, m.payload.to_vec());
                }
            }
        }
        Ok(())
    }

    /// One request (numbered `seq`) and its answer: an [`Socket::exchange`] of one.
    pub(crate) fn request(&mut self, msg: &[u8], seq: u32) -> Result<Reply, WindowError> {
        let mut pending = HashMap::from([(seq, ())]);
        let mut out = Reply {
            errno: 0,
            ext: None,
            payload: None,
        };
        self.exchange(msg, &mut pending, |(), a| {
            out = Reply {
                errno: a.errno,
                ext: a.ext,
                payload: a.reply.map(<[u8]>::to_vec),
            };
        })?;
        Ok(out)
    }
}
