//! Sockets: per scope, a UDP socket on 0.0.0.0:67 bound to the bridge (receives broadcasts,
//! unicasts and relayed requests; sends to relays, to clients that have an address, and
//! broadcasts) and a send-only `AF_PACKET` socket for unicasting to a client that has no
//! address yet (RFC 2131 4.1: to `chaddr` and `yiaddr`, which a UDP socket cannot do
//! without the client answering ARP). Both live in the namespace of the thread that opened
//! them.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::packet::{CLIENT_PORT, SERVER_PORT};
use super::{DhcpError, Scope};
use crate::spec::Mac;

/// Receive buffer per socket: a flood must overflow it before a reserved client's packet is
/// lost, and draining is fast.
const RCVBUF: libc::c_int = 4 << 20;
/// Packets read per socket per wakeup (one journal sync covers them all).
const BATCH: usize = 256;

pub(crate) struct Rx {
    pub socket: usize,
    pub src: SocketAddrV4,
    /// Destination address of the IP header (tells a unicast RENEW from a broadcast REBIND).
    pub dst: Ipv4Addr,
    pub data: Vec<u8>,
}

#[derive(Default)]
pub(crate) struct Batch {
    items: Vec<Rx>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn drain(&mut self) -> std::vec::Drain<'_, Rx> {
        self.items.drain(..)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Dest {
    /// A relay agent: giaddr, port 67.
    Relay(Ipv4Addr),
    /// A client with an address: port 68.
    Unicast(Ipv4Addr),
    /// 255.255.255.255:68 on the bridge.
    Broadcast,
    /// A client without an address: Ethernet unicast to `mac`, IP to `ip`, from `src`.
    Hardware {
        ip: Ipv4Addr,
        mac: Mac,
        src: Ipv4Addr,
    },
}

pub(crate) struct Outgoing {
    pub socket: usize,
    pub dest: Dest,
    pub bytes: Vec<u8>,
    /// A DHCPACK for a binding: only sent once the journal is synced.
    pub needs_sync: bool,
}

struct Sock {
    ifindex: u32,
    udp: OwnedFd,
    pkt: Option<OwnedFd>,
}

struct Slot {
    interface: String,
    sock: Option<Sock>,
}

/// The open sockets, one slot per scope interface (`None` while the interface is missing).
pub(crate) struct Sockets {
    slots: Vec<Slot>,
    /// The network namespace the server was started in: sockets opened later (a bridge that
    /// appears, `update`) go there too, whichever thread asks.
    home: OwnedFd,
    home_id: (u64, u64),
}

fn ns_id(fd: RawFd) -> io::Result<(u64, u64)> {
    // SAFETY: zeroed stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

fn current_ns() -> io::Result<OwnedFd> {
    Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
}

fn err<'a>(interface: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> DhcpError + 'a {
    move |source| DhcpError::Socket {
        interface: interface.to_string(),
        op,
        source,
    }
}

/// A libc call's return value as an `io::Result` (negative: the error in `errno`). Shared
/// by the daemon's socket code (DHCP, DHCPv6, DNS, RAs).
pub(crate) fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `setsockopt` with a typed value.
pub(crate) fn setopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live value of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The MTU of interface `name`, asked through socket `fd`.
fn interface_mtu(fd: RawFd, name: &str) -> Option<u32> {
    // SAFETY: all-zero is a valid ifreq.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return None;
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid ifreq for SIOCGIFMTU, which fills ifru_mtu.
    let r = unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut ifr) };
    // SAFETY: the union was zeroed, so reading it is defined; on success the kernel wrote
    // ifru_mtu.
    let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
    (r == 0).then_some(mtu as u32)
}

pub(crate) fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn open(interface: &str) -> Result<Option<Sock>, DhcpError> {
    let Some(ifindex) = ifindex(interface) else {
        return Ok(None);
    };
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .map_err(err(interface, "socket"))?;
    // SAFETY: fresh descriptor.
    let udp = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)
        .map_err(err(interface, "SO_REUSEADDR"))?;
    setopt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &one)
        .map_err(err(interface, "SO_BROADCAST"))?;
    setopt(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, &one).map_err(err(interface, "IP_PKTINFO"))?;
    if setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &RCVBUF).is_err() {
        let _ = setopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &RCVBUF);
    }
    // SAFETY: the name is passed with its length; the kernel copies it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr().cast(),
            interface.len() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENODEV) {
            return Ok(None); // went away in between
        }
        return Err(err(interface, "SO_BINDTODEVICE")(e));
    }
    let sa = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT));
    // SAFETY: sa is a valid sockaddr_in.
    cvt(unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map_err(err(interface, "bind 0.0.0.0:67"))?;
    // Protocol 0: this socket receives nothing, it only sends.
    // SAFETY: plain syscall.
    let pkt = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })
    .ok()
    // SAFETY: fresh descriptor.
    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(Some(Sock { ifindex, udp, pkt }))
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

impl Sockets {
    /// No sockets yet; they will live in the calling thread's network namespace.
    pub fn new() -> Result<Sockets, DhcpError> {
        let io = |source| DhcpError::Io {
            op: "open the current network namespace",
            source,
        };
        let home = current_ns().map_err(io)?;
        let home_id = ns_id(home.as_raw_fd()).map_err(io)?;
        Ok(Sockets {
            slots: Vec::new(),
            home,
            home_id,
        })
    }

    /// Run `f` in the home namespace: right here when this thread is there, else on a
    /// short-lived thread that enters it (setns moves only the calling thread).
    fn at_home<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, DhcpError> {
        let here = current_ns().and_then(|fd| ns_id(fd.as_raw_fd()));
        if here.is_ok_and(|id| id == self.home_id) {
            return Ok(f());
        }
        let home = self.home.as_raw_fd();
        std::thread::scope(|sc| {
            sc.spawn(move || {
                // SAFETY: plain syscall on a descriptor that outlives this scope.
                if unsafe { libc::setns(home, libc::CLONE_NEWNET) } != 0 {
                    return Err(DhcpError::Io {
                        op: "enter the server's network namespace",
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Make the slots match the scopes' interfaces: keep sockets whose interface still has
    /// the same index, reopen those whose interface was recreated, open new ones.
    pub fn sync(&mut self, scopes: &[Scope]) -> Result<(), DhcpError> {
        let mut slots = std::mem::take(&mut self.slots);
        let r = self.at_home(|| Self::sync_here(&mut slots, scopes));
        self.slots = slots;
        r?
    }

    fn sync_here(slots: &mut Vec<Slot>, scopes: &[Scope]) -> Result<(), DhcpError> {
        let mut old: Vec<Slot> = std::mem::take(slots);
        let mut first_err = None;
        for s in scopes {
            let kept = old
                .iter()
                .position(|o| o.interface == s.interface)
                .map(|i| old.swap_remove(i))
                .and_then(|o| o.sock)
                .filter(|k| ifindex(&s.interface) == Some(k.ifindex));
            let sock = match kept {
                Some(k) => Some(k),
                None => match open(&s.interface) {
                    Ok(k) => k,
                    Err(e) => {
                        first_err.get_or_insert(e);
                        None
                    }
                },
            };
            slots.push(Slot {
                interface: s.interface.clone(),
                sock,
            });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The MTU of each open slot's interface (`SIOCGIFMTU` on its own socket, so in its
    /// namespace), by interface name; `None` where it cannot be read.
    pub fn mtus(&self) -> Vec<(String, Option<u32>)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let k = s.sock.as_ref()?;
                Some((
                    s.interface.clone(),
                    interface_mtu(k.udp.as_raw_fd(), &s.interface),
                ))
            })
            .collect()
    }

    /// The MTU of the interface of slot `socket`, if it is open.
    pub fn mtu_of(&self, socket: usize) -> Option<u32> {
        let s = self.slots.get(socket)?;
        interface_mtu(s.sock.as_ref()?.udp.as_raw_fd(), &s.interface)
    }

    pub fn waiting(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.sock.is_none())
            .map(|s| s.interface.clone())
            .collect()
    }

    pub fn interface(&self, socket: usize) -> &str {
        &self.slots[socket].interface
    }

    /// Wait up to `timeout` for packets, then read what is there into `batch`.
    pub fn poll(&mut self, timeout: Duration, batch: &mut Batch) -> Result<(), DhcpError> {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.slots.len());
        let mut idx: Vec<usize> = Vec::with_capacity(self.slots.len());
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(k) = &s.sock {
                fds.push(libc::pollfd {
                    fd: k.udp.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                idx.push(i);
            }
        }
        // SAFETY: fds is a valid array of its length (possibly empty: then poll just sleeps).
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                timeout.as_millis() as libc::c_int,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(DhcpError::Io {
                op: "poll",
                source: e,
            });
        }
        for (p, &i) in fds.iter().zip(&idx) {
            if p.revents == 0 {
                continue;
            }
            for _ in 0..BATCH {
                match recv(p.fd) {
                    Ok(Some((src, dst, data))) => batch.items.push(Rx {
                        socket: i,
                        src,
                        dst,
                        data,
                    }),
                    Ok(None) => break,
                    Err(_) => break, // e.g. ENETDOWN; the next tick re-checks the interface
                }
            }
        }
        Ok(())
    }

    pub fn send(&self, o: &Outgoing) -> io::Result<()> {
        let Some(k) = self.slots.get(o.socket).and_then(|s| s.sock.as_ref()) else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        let udp = |to: SocketAddrV4| sendto(k.udp.as_raw_fd(), &o.bytes, to);
        match &o.dest {
            Dest::Relay(g) => udp(SocketAddrV4::new(*g, SERVER_PORT)),
            Dest::Unicast(ip) => udp(SocketAddrV4::new(*ip, CLIENT_PORT)),
            Dest::Broadcast => udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)),
            Dest::Hardware { ip, mac, src } => {
                let sent = k
                    .pkt
                    .as_ref()
                    .map(|p| send_frame(p.as_raw_fd(), k.ifindex, *mac, *src, *ip, &o.bytes));
                match sent {
                    Some(Ok(())) => Ok(()),
                    // No packet socket: broadcasting reaches the client too.
                    _ => udp(SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)),
                }
            }
        }
    }
}

fn recv(fd: RawFd) -> io::Result<Option<(SocketAddrV4, Ipv4Addr, Vec<u8>)>> {
    let mut buf = vec![0u8; 1500];
    // SAFETY: zeroed sockaddr_in/msghdr are valid; pointers below outlive the call.
    let mut from: libc::sockaddr_in = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8]; // room for one in_pktinfo cmsg, 8-byte aligned
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: msg describes valid buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            io::ErrorKind::Interrupted => recv(fd),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    // SAFETY: walking the control messages the kernel wrote into cbuf.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                let pi: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                dst = Ipv4Addr::from(u32::from_be(pi.ipi_addr.s_addr));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(from.sin_addr.s_addr)),
        u16::from_be(from.sin_port),
    );
    Ok(Some((src, dst, buf)))
}

fn sendto(fd: RawFd, data: &[u8], to: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(to);
    // SAFETY: valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for c in chunks {
        for &b in *c {
            match odd.take() {
                Some(h) => sum += u32::from(u16::from_be_bytes([h, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(h) = odd {
        sum += u32::from(u16::from_be_bytes([h, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + UDP around `payload`, from `src`:67 to `dst`:68.
pub(crate) fn ip_udp(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    ip_udp_ports(src, dst, (SERVER_PORT, CLIENT_PORT), payload)
}

/// IPv4 + UDP around `payload`, from `src`:`ports.0` to `dst`:`ports.1` (a client's
/// request too: doctor's probe).
pub(crate) fn ip_udp_ports(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(total);
    f.extend_from_slice(&[0x45, 0x10]); // IHL 5, TOS low delay (as dhcpd)
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, DF
    f.extend_from_slice(&[64, libc::IPPROTO_UDP as u8, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let c = checksum(&[&f[..20]]);
    f[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = Vec::with_capacity(8);
    udp.extend_from_slice(&ports.0.to_be_bytes());
    udp.extend_from_slice(&ports.1.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, libc::IPPROTO_UDP as u8],
        &(udp_len as u16).to_be_bytes()[..],
    ]
    .concat();
    let mut c = checksum(&[&pseudo, &udp, payload]);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f.extend_from_slice(payload);
    f
}

fn send_frame(
    fd: RawFd,
    ifindex: u32,
    mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payload: &[u8],
) -> io::Result<()> {
    let frame = ip_udp(src, dst, payload);
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&mac.0);
    // SAFETY: valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_udp_checksums_verify() {
        let f = ip_udp(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 99),
            b"hello dhcp",
        );
        assert_eq!(checksum(&[&f[..20]]), 0, "IP header sums to zero");
        let udp = &f[20..];
        let pseudo = [&f[12..20], &[0, 17], &(udp.len() as u16).to_be_bytes()[..]].concat();
        assert_eq!(checksum(&[&pseudo, udp]), 0, "UDP sums to zero");
    }
}
