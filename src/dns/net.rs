//! The service's sockets: per zone and listening address, a UDP and a TCP listener bound
//! to the address and to one device (the bridge, and `lo`); client TCP connections; one
//! socket per upstream attempt (UDP connected to the server, or TCP). All non-blocking,
//! waited on with one `poll`.

use std::collections::HashMap;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{Client, DnsError, Out, Via, Zone};
use crate::dhcp::{cvt, setopt};

const RCVBUF: libc::c_int = 4 << 20;
/// Datagrams read per listener per wakeup.
const BATCH: usize = 64;
/// A DNS message over TCP is at most this long (its length is 16 bits).
const TCP_MAX: usize = 65_535 + 2;

/// A datagram and where it goes.
type Datagram = (SocketAddr, Vec<u8>);

pub(crate) enum Rx {
    Query { client: Client, data: Vec<u8> },
    Upstream { token: u64, data: Vec<u8> },
    UpstreamFailed { token: u64 },
}

struct Listener {
    id: usize,
    network: String,
    zone: usize,
    device: String,
    ifindex: u32,
    addr: IpAddr,
    udp: OwnedFd,
    tcp: OwnedFd,
}

struct Conn {
    fd: OwnedFd,
    zone: usize,
    peer: SocketAddr,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    last: Instant,
}

struct Upstream {
    fd: OwnedFd,
    tcp: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct Sockets {
    listeners: Vec<Listener>,
    next_listener: usize,
    /// (network, device, address) that could not be opened.
    waiting: Vec<String>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    upstream: HashMap<u64, Upstream>,
    pub max_tcp: usize,
}

pub(crate) fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage, large enough for either family.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sa = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = v4.port().to_be();
            sa.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sa = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = v6.port().to_be();
            sa.sin6_addr.s6_addr = v6.ip().octets();
            sa.sin6_scope_id = v6.scope_id();
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

pub(crate) fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sa = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sa.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sa = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
            let port = u16::from_be(sa.sin6_port);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                port,
                0,
                sa.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn socket(addr: &SocketAddr, kind: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd =
        cvt(unsafe { libc::socket(family, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listener socket on `addr`:53 that only sees packets that arrived on `device`.
fn listen(addr: IpAddr, device: &str, kind: libc::c_int) -> io::Result<OwnedFd> {
    let sa = SocketAddr::new(addr, 53);
    let s = socket(&sa, kind)?;
    let fd = s.as_raw_fd();
    let one: libc::c_int = 1;
    setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
    // The gateway's address may be added a moment after the bridge appears.
    if addr.is_ipv4() {
        setopt(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, &one)?;
    } else {
        setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one)?;
        setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, &one)?;
    }
    if kind == libc::SOCK_DGRAM
        && setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF).is_err()
    {
        let _ = setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
    }
    // SAFETY: the name is passed with its length; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        )
    })?;
    let (ss, len) = sockaddr(sa);
    // SAFETY: a valid address of the length given.
    cvt(unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })?;
    if kind == libc::SOCK_STREAM {
        // SAFETY: plain syscall.
        cvt(unsafe { libc::listen(fd, 128) })?;
    }
    Ok(s)
}

fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
    // SAFETY: zeroed storage is valid; the kernel writes at most `len` bytes of it.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid buffer and address storage.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(from_sockaddr(&ss).map(|a| (n as usize, a)))
}

fn read_some(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 4096];
    // SAFETY: valid buffer.
    let n = unsafe {
        libc::recv(
            fd,
            chunk.as_mut_ptr().cast(),
            chunk.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.extend_from_slice(&chunk[..n as usize]);
    Ok(n as usize)
}

/// Writes what it can of `buf`; Err when the connection is broken.
fn flush(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(())
            } else {
                Err(e)
            };
        }
        buf.drain(..n as usize);
    }
    Ok(())
}

/// A whole length-prefixed message at the front of `buf`, taken out.
fn take_message(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    if buf.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if buf.len() < 2 + len {
        return None;
    }
    let m = buf[2..2 + len].to_vec();
    buf.drain(..2 + len);
    Some(m)
}

fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 2);
    v.extend_from_slice(&(bytes.len().min(65535) as u16).to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

#[derive(Clone, Copy)]
enum Src {
    Udp(usize),
    Tcp(usize),
    Conn(u64),
    Up(u64),
}

impl Sockets {
    /// Makes the listeners match the zones: kept while their device has the same index,
    /// reopened when it was recreated, opened for new zones, closed for removed ones.
    pub fn sync(&mut self, zones: &[Zone]) -> Result<(), DnsError> {
        if self.max_tcp == 0 {
            self.max_tcp = super::Limits::default().max_tcp;
        }
        let mut old = std::mem::take(&mut self.listeners);
        self.waiting.clear();
        let mut first = None;
        for (zi, z) in zones.iter().enumerate() {
            for device in [z.interface.as_str(), "lo"] {
                for &addr in &z.listen {
                    let idx = crate::dhcp::ifindex(device);
                    let kept = old.iter().position(|l| {
                        l.network == z.network
                            && l.device == device
                            && l.addr == addr
                            && Some(l.ifindex) == idx
                    });
                    if let Some(i) = kept {
                        let mut l = old.swap_remove(i);
                        l.zone = zi;
                        self.listeners.push(l);
                        continue;
                    }
                    let Some(ifindex) = idx else {
                        self.waiting.push(format!("{}:{device}", z.network));
                        continue;
                    };
                    let opened = listen(addr, device, libc::SOCK_DGRAM)
                        .and_then(|u| Ok((u, listen(addr, device, libc::SOCK_STREAM)?)));
                    match opened {
                        Ok((udp, tcp)) => {
                            self.next_listener += 1;
                            self.listeners.push(Listener {
                                id: self.next_listener,
                                network: z.network.clone(),
                                zone: zi,
                                device: device.to_string(),
                                ifindex,
                                addr,
                                udp,
                                tcp,
                            });
                        }
                        Err(source) => {
                            self.waiting.push(format!("{}:{device}", z.network));
                            first.get_or_insert(DnsError::Listen {
                                interface: device.to_string(),
                                addr: SocketAddr::new(addr, 53),
                                op: "open",
                                source,
                            });
                        }
                    }
                }
            }
        }
        // Connections of removed networks go with them.
        let live: Vec<usize> = (0..zones.len()).collect();
        self.conns.retain(|_, c| live.contains(&c.zone));
        first.map_or(Ok(()), Err)
    }

    pub fn waiting(&self) -> Vec<String> {
        self.waiting.clone()
    }

    /// Closes client connections idle for `idle`.
    pub fn expire_idle(&mut self, now: Instant, idle: Duration) {
        self.conns
            .retain(|_, c| now.saturating_duration_since(c.last) < idle);
    }

    /// Waits up to `timeout` (not at all when `rx` already holds something), then reads
    /// what arrived into `rx`.
    pub fn poll(&mut self, timeout: Duration, rx: &mut Vec<Rx>) -> Result<(), DnsError> {
        let mut fds =
            Vec::with_capacity(self.listeners.len() * 2 + self.conns.len() + self.upstream.len());
        let mut src = Vec::with_capacity(fds.capacity());
        let pfd = |fd: RawFd, out: bool| libc::pollfd {
            fd,
            events: libc::POLLIN | if out { libc::POLLOUT } else { 0 },
            revents: 0,
        };
        for (i, l) in self.listeners.iter().enumerate() {
            fds.push(pfd(l.udp.as_raw_fd(), false));
            src.push(Src::Udp(i));
            fds.push(pfd(l.tcp.as_raw_fd(), false));
            src.push(Src::Tcp(i));
        }
        for (id, c) in &self.conns {
            fds.push(pfd(c.fd.as_raw_fd(), !c.wbuf.is_empty()));
            src.push(Src::Conn(*id));
        }
        for (t, u) in &self.upstream {
            fds.push(pfd(u.fd.as_raw_fd(), !u.wbuf.is_empty()));
            src.push(Src::Up(*t));
        }
        let ms = if rx.is_empty() {
            timeout.as_millis() as libc::c_int
        } else {
            0
        };
        // SAFETY: fds is a valid array of its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(DnsError::Io {
                op: "poll",
                source: e,
            });
        }
        for (p, s) in fds.iter().zip(src) {
            if p.revents == 0 {
                continue;
            }
            match s {
                Src::Udp(i) => self.read_udp(i, rx),
                Src::Tcp(i) => self.accept(i),
                Src::Conn(id) => self.serve_conn(id, p.revents, rx),
                Src::Up(t) => self.serve_upstream(t, p.revents, rx),
            }
        }
        Ok(())
    }

    fn read_udp(&mut self, i: usize, rx: &mut Vec<Rx>) {
        let l = &self.listeners[i];
        for (addr, data) in super::mmsg::recv_batch(l.udp.as_raw_fd(), BATCH) {
            let client = Client {
                zone: l.zone,
                addr,
                via: Via::Udp(l.id),
            };
            rx.push(Rx::Query { client, data });
        }
    }

    fn accept(&mut self, i: usize) {
        let l = &self.listeners[i];
        for _ in 0..BATCH {
            // SAFETY: zeroed storage; the kernel fills at most `len` bytes.
            let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: valid storage.
            let fd = unsafe {
                libc::accept4(
                    l.tcp.as_raw_fd(),
                    (&mut ss as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                break;
            }
            // SAFETY: a fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let Some(peer) = from_sockaddr(&ss) else {
                continue;
            };
            if self.conns.len() >= self.max_tcp
                && let Some(oldest) = self
                    .conns
                    .iter()
                    .min_by_key(|(_, c)| c.last)
                    .map(|(k, _)| *k)
            {
                self.conns.remove(&oldest);
            }
            self.next_conn += 1;
            self.conns.insert(
                self.next_conn,
                Conn {
                    fd,
                    zone: l.zone,
                    peer,
                    rbuf: Vec::new(),
                    wbuf: Vec::new(),
                    last: Instant::now(),
                },
            );
        }
    }

    fn serve_conn(&mut self, id: u64, revents: libc::c_short, rx: &mut Vec<Rx>) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut broken = revents & (libc::POLLERR | libc::POLLNVAL) != 0;
        if revents & libc::POLLOUT != 0 {
            broken |= flush(c.fd.as_raw_fd(), &mut c.wbuf).is_err();
        }
        if revents & (libc::POLLIN | libc::POLLHUP) != 0 {
            match read_some(c.fd.as_raw_fd(), &mut c.rbuf) {
                Ok(0) => broken = c.wbuf.is_empty(),
                Ok(_) => c.last = Instant::now(),
                Err(e) => broken |= e.kind() != io::ErrorKind::WouldBlock,
            }
            while let Some(data) = take_message(&mut c.rbuf) {
                let client = Client {
                    zone: c.zone,
                    addr: c.peer,
                    via: Via::Tcp(id),
                };
                rx.push(Rx::Query { client, data });
            }
            broken |= c.rbuf.len() > TCP_MAX;
        }
        if broken {
            self.conns.remove(&id);
        }
    }

    fn serve_upstream(&mut self, t: u64, revents: libc::c_short, rx: &mut Vec<Rx>) {
        let Some(u) = self.upstream.get_mut(&t) else {
            return;
        };
        let fd = u.fd.as_raw_fd();
        let mut failed = false;
        if u.tcp {
            if revents & libc::POLLOUT != 0 {
                failed |= flush(fd, &mut u.wbuf).is_err();
            }
            if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match read_some(fd, &mut u.rbuf) {
                    Ok(0) => failed = true,
                    Ok(_) => {}
                    Err(e) => failed |= e.kind() != io::ErrorKind::WouldBlock,
                }
                if let Some(data) = take_message(&mut u.rbuf) {
                    self.upstream.remove(&t);
                    rx.push(Rx::Upstream { token: t, data });
                    return;
                }
            }
        } else {
            let mut buf = [0u8; 4096];
            match recv_from(fd, &mut buf) {
                Ok(Some((n, _))) => rx.push(Rx::Upstream {
                    token: t,
                    data: buf[..n].to_vec(),
                }),
                Ok(None) => {}
                // ICMP port or host unreachable from the server.
                Err(_) => failed = true,
            }
        }
        if failed {
            self.upstream.remove(&t);
            rx.push(Rx::UpstreamFailed { token: t });
        }
    }

    /// A socket for attempt `token` to `server`, the question on its way.
    fn ask(&mut self, token: u64, server: SocketAddr, bytes: &[u8], tcp: bool) -> io::Result<()> {
        self.upstream.remove(&token);
        let fd = socket(
            &server,
            if tcp {
                libc::SOCK_STREAM
            } else {
                libc::SOCK_DGRAM
            },
        )?;
        let (ss, len) = sockaddr(server);
        // SAFETY: a valid address of the length given.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        let mut wbuf = Vec::new();
        if tcp {
            wbuf = framed(bytes);
        } else {
            // SAFETY: valid buffer on a connected socket.
            let n = unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.upstream.insert(
            token,
            Upstream {
                fd,
                tcp,
                rbuf: Vec::new(),
                wbuf,
            },
        );
        Ok(())
    }

    /// Sends what the engine asked for; a failed upstream attempt is reported into `rx`.
    /// Returns the number of answers that could not be sent.
    pub fn send(&mut self, out: Vec<Out>, rx: &mut Vec<Rx>) -> u64 {
        let mut errors = 0;
        // UDP answers by listener, sent in batches at the end.
        let mut udp: Vec<(usize, Vec<Datagram>)> = Vec::new();
        for o in out {
            match o {
                Out::Reply { client, bytes } => match client.via {
                    Via::Udp(id) => match udp.iter_mut().find(|(l, _)| *l == id) {
                        Some((_, v)) => v.push((client.addr, bytes)),
                        None => udp.push((id, vec![(client.addr, bytes)])),
                    },
                    Via::Tcp(id) => {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.wbuf.extend_from_slice(&framed(&bytes));
                            c.last = Instant::now();
                            if flush(c.fd.as_raw_fd(), &mut c.wbuf).is_err() {
                                self.conns.remove(&id);
                                errors += 1;
                            }
                        }
                    }
                },
                Out::Ask {
                    token,
                    server,
                    bytes,
                    tcp,
                } => {
                    if self.ask(token, server, &bytes, tcp).is_err() {
                        rx.push(Rx::UpstreamFailed { token });
                    }
                }
                Out::Done { token } => {
                    self.upstream.remove(&token);
                }
            }
        }
        for (id, items) in udp {
            match self.listeners.iter().find(|l| l.id == id) {
                Some(l) => errors += super::mmsg::send_batch(l.udp.as_raw_fd(), &items),
                None => errors += items.len() as u64,
            }
        }
        errors
    }
}
