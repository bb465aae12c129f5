//! The DHCPv6 server's sockets, per bridge: a UDP socket on `[::]:547` bound to the bridge and
//! joined to ff02::1:2 there (it holds the port, makes the bridge pass the group up to the
//! host, and sends the answers), and a packet socket on the bridge that receives the client
//! messages with their Ethernet source, which the UDP socket cannot tell (see the module
//! contract for why that source is the client's identity).
//!
//! The packet socket sees a frame before the host's input filter does. It takes only what
//! that filter lets through to the UDP socket anyway (kvmnet's host rules accept DHCPv6 client
//! messages from link-local sources on its bridges): link-local source, destination ff02::1:2
//! or a link-local address, UDP 546 -> 547, no extension headers. The UDP checksum is not
//! checked: a guest on a veth port hands the bridge frames whose checksum is still to be
//! filled in (checksum offload), and the frame never left the host.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{Dhcp6Error, Scope6};
use crate::dhcp::{cvt, ifindex, setopt};
use crate::spec::Mac;

pub(crate) const SERVER_PORT: u16 = 547;
pub(crate) const CLIENT_PORT: u16 = 546;
const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const PACKET_OUTGOING: u8 = 4;

/// One client message received.
pub(crate) struct Rx6 {
    pub socket: usize,
    pub src: Ipv6Addr,
    /// The frame's Ethernet source.
    pub mac: Mac,
    pub data: Vec<u8>,
}

/// An answer, to `dest` port 546 on the socket's bridge.
pub(crate) struct Out6 {
    pub socket: usize,
    pub dest: Ipv6Addr,
    pub bytes: Vec<u8>,
    /// Sent only once the journal is synced.
    pub needs_sync: bool,
}

struct Slot {
    interface: String,
    ifindex: u32,
    udp: OwnedFd,
    pkt: OwnedFd,
}

#[derive(Default)]
pub(crate) struct Sockets {
    /// Indexed by [`Rx6::socket`]; `None` while the interface is missing.
    slots: Vec<(String, Option<Slot>)>,
}

fn err<'a>(interface: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> Dhcp6Error + 'a {
    move |source| Dhcp6Error::Socket {
        interface: interface.to_string(),
        op,
        source,
    }
}

fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the descriptor is owned at once.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    })?;
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr6(a: Ipv6Addr, port: u16, scope: u32) -> libc::sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut sa: libc::sockaddr_in6 = unsafe { zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = a.octets();
    sa.sin6_scope_id = scope;
    sa
}

fn open_udp(interface: &str, ifindex: u32) -> Result<OwnedFd, Dhcp6Error> {
    let udp = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).map_err(err(interface, "socket"))?;
    let fd = udp.as_raw_fd();
    let one: libc::c_int = 1;
    setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one).map_err(err(interface, "V6ONLY"))?;
    setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)
        .map_err(err(interface, "SO_REUSEADDR"))?;
    // SAFETY: the name is passed with its length; the kernel copies it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr().cast(),
            interface.len() as libc::socklen_t,
        )
    })
    .map_err(err(interface, "SO_BINDTODEVICE"))?;
    let sa = sockaddr6(Ipv6Addr::UNSPECIFIED, SERVER_PORT, 0);
    // SAFETY: a valid sockaddr_in6.
    cvt(unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in6).cast(),
            size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    })
    .map_err(err(interface, "bind [::]:547"))?;
    let mreq = libc::ipv6_mreq {
        ipv6mr_multiaddr: libc::in6_addr {
            s6_addr: ALL_SERVERS.octets(),
        },
        ipv6mr_interface: ifindex,
    };
    setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)
        .map_err(err(interface, "join ff02::1:2"))?;
    Ok(udp)
}

/// Classic BPF on the IPv6 header (SOCK_DGRAM packet sockets start there): next header UDP
/// and destination port 547, so the socket wakes for nothing else.
fn filter(fd: RawFd) -> io::Result<()> {
    let code = [
        libc::sock_filter {
            code: 0x30,
            jt: 0,
            jf: 0,
            k: 6,
        }, // ldb [6]
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 3,
            k: 17,
        }, // jeq #17
        libc::sock_filter {
            code: 0x28,
            jt: 0,
            jf: 0,
            k: 42,
        }, // ldh [42]
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: u32::from(SERVER_PORT),
        }, // jeq #547
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0xffff,
        }, // ret all
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        }, // ret 0
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr().cast_mut(),
    };
    setopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
}

fn open_packet(interface: &str, ifindex: u32) -> Result<OwnedFd, Dhcp6Error> {
    // Protocol 0 until the filter is attached, so nothing unfiltered is queued.
    let pkt = socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0).map_err(err(interface, "packet"))?;
    filter(pkt.as_raw_fd()).map_err(err(interface, "SO_ATTACH_FILTER"))?;
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IPV6 as u16).to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a valid sockaddr_ll.
    cvt(unsafe {
        libc::bind(
            pkt.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .map_err(err(interface, "bind packet socket"))?;
    Ok(pkt)
}

fn open(interface: &str) -> Result<Option<Slot>, Dhcp6Error> {
    let Some(ifindex) = ifindex(interface) else {
        return Ok(None);
    };
    let udp = match open_udp(interface, ifindex) {
        Ok(s) => s,
        // Went away in between: retried.
        Err(Dhcp6Error::Socket { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let pkt = open_packet(interface, ifindex)?;
    Ok(Some(Slot {
        interface: interface.to_string(),
        ifindex,
        udp,
        pkt,
    }))
}

#[cfg(test)]
fn sum(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

/// A DHCPv6 client message out of an IPv6 packet, with its source; `None` for anything
/// the UDP socket would not have taken (see the module comment).
pub(crate) fn parse_ipv6_udp(p: &[u8]) -> Option<(Ipv6Addr, &[u8])> {
    if p.len() < 48 || p[0] >> 4 != 6 || p[6] != 17 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?);
    let udp = p.get(40..40 + plen)?;
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    let link_local = |a: Ipv6Addr| a.segments()[0] & 0xffc0 == 0xfe80;
    if u16::from_be_bytes([udp[0], udp[1]]) != CLIENT_PORT
        || u16::from_be_bytes([udp[2], udp[3]]) != SERVER_PORT
        || ulen < 8
        || ulen > udp.len()
        || !link_local(src)
        || !(dst == ALL_SERVERS || link_local(dst))
    {
        return None;
    }
    Some((src, &udp[8..ulen]))
}

impl Sockets {
    /// Open sockets for new or re-created bridges, close those no scope names.
    pub fn sync(&mut self, scopes: &[Scope6]) -> Result<(), Dhcp6Error> {
        let mut old = std::mem::take(&mut self.slots);
        let mut first_err = None;
        for s in scopes {
            let now = ifindex(&s.interface);
            let kept = old
                .iter_mut()
                .find(|(n, _)| *n == s.interface)
                .and_then(|(_, slot)| slot.take())
                .filter(|slot| Some(slot.ifindex) == now);
            let slot = match kept {
                Some(k) => Some(k),
                None => open(&s.interface).unwrap_or_else(|e| {
                    first_err.get_or_insert(e);
                    None
                }),
            };
            self.slots.push((s.interface.clone(), slot));
        }
        first_err.map_or(Ok(()), Err)
    }

    pub fn waiting(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn interface(&self, socket: usize) -> &str {
        self.slots.get(socket).map_or("", |(n, _)| n.as_str())
    }

    /// The MAC of the first open bridge (for the server DUID).
    pub fn first_mac(&self) -> Option<Mac> {
        let slot = self.slots.iter().find_map(|(_, s)| s.as_ref())?;
        // SAFETY: all-zero is a valid ifreq.
        let mut ifr: libc::ifreq = unsafe { zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(slot.interface.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: a valid ifreq for SIOCGIFHWADDR on a socket of the bridge's namespace.
        let r = unsafe { libc::ioctl(slot.udp.as_raw_fd(), libc::SIOCGIFHWADDR, &mut ifr) };
        // SAFETY: the union was zeroed; on success the kernel wrote ifru_hwaddr.
        let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        let mut m = [0u8; 6];
        for (d, s) in m.iter_mut().zip(hw.iter()) {
            *d = *s as u8;
        }
        (r == 0 && m != [0; 6]).then_some(Mac(m))
    }

    /// Wait up to `timeout` for messages and collect what is queued.
    pub fn poll(&mut self, timeout: Duration, batch: &mut Vec<Rx6>) -> Result<(), Dhcp6Error> {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut owner = Vec::new();
        for (i, (_, s)) in self.slots.iter().enumerate() {
            if let Some(s) = s {
                for fd in [s.pkt.as_raw_fd(), s.udp.as_raw_fd()] {
                    fds.push(libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    });
                    owner.push(i);
                }
            }
        }
        if fds.is_empty() {
            std::thread::sleep(timeout);
            return Ok(());
        }
        // SAFETY: fds is a valid array of pollfd.
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
            return Err(Dhcp6Error::Io {
                op: "poll",
                source: e,
            });
        }
        for (k, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            if k % 2 == 0 {
                recv_packets(p.fd, owner[k], batch);
            } else {
                drain(p.fd);
            }
        }
        Ok(())
    }

    pub fn send(&self, o: &Out6) -> io::Result<()> {
        let Some((_, Some(slot))) = self.slots.get(o.socket) else {
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        };
        let sa = sockaddr6(o.dest, CLIENT_PORT, slot.ifindex);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                slot.udp.as_raw_fd(),
                o.bytes.as_ptr().cast(),
                o.bytes.len(),
                0,
                (&sa as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Read what the packet socket has queued (at most 256 frames per wakeup).
fn recv_packets(fd: RawFd, socket: usize, batch: &mut Vec<Rx6>) {
    let mut buf = vec![0u8; 2048];
    for _ in 0..256 {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid buffer and address storage.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if sll.sll_pkttype == PACKET_OUTGOING || sll.sll_halen != 6 {
            continue;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&sll.sll_addr[..6]);
        if let Some((src, data)) = parse_ipv6_udp(&buf[..n as usize]) {
            batch.push(Rx6 {
                socket,
                src,
                mac: Mac(mac),
                data: data.to_vec(),
            });
        }
    }
}

/// The UDP socket only holds the port and the group: what it receives is read and dropped
/// (the packet socket has the same messages, with their Ethernet source).
fn drain(fd: RawFd) {
    let mut buf = [0u8; 2048];
    for _ in 0..256 {
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, payload: &[u8]) -> Vec<u8> {
        let ulen = (8 + payload.len()) as u16;
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&ulen.to_be_bytes());
        p.extend_from_slice(&[17, 1]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&SERVER_PORT.to_be_bytes());
        p.extend_from_slice(&ulen.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let mut acc = sum(&p[8..40], u32::from(ulen) + 17);
        acc = sum(&p[40..], acc);
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        let c = !(acc as u16);
        p[46..48].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn only_link_local_client_messages_pass() {
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let good = packet(ll, ALL_SERVERS, CLIENT_PORT, b"\x01abc");
        assert_eq!(parse_ipv6_udp(&good), Some((ll, &b"\x01abc"[..])));
        let global: Ipv6Addr = "fd00::5".parse().unwrap();
        assert_eq!(
            parse_ipv6_udp(&packet(global, ALL_SERVERS, CLIENT_PORT, b"x")),
            None
        );
        assert_eq!(parse_ipv6_udp(&packet(ll, global, CLIENT_PORT, b"x")), None);
        assert_eq!(parse_ipv6_udp(&packet(ll, ALL_SERVERS, 547, b"x")), None);
        assert_eq!(parse_ipv6_udp(&good[..45]), None);
    }
}
