//! Sockets: one raw ICMPv6 socket per bridge, bound to it, that sends RAs to all-nodes
//! (ff02::1) from the bridge's link-local address with hop limit 255, and receives router
//! solicitations (the kernel's ICMPv6 filter passes only those) sent to all-routers
//! (ff02::2), which it joins. Sockets live in the namespace of the thread that opens them.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::dhcp::{cvt, setopt};
use crate::spec::Mac;

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// `ICMP6_FILTER` (linux/icmpv6.h), a socket option of level IPPROTO_ICMPV6.
const ICMP6_FILTER: libc::c_int = 1;

/// An ICMPv6 message as it arrived.
pub(crate) struct Received {
    pub(crate) src: Ipv6Addr,
    /// The IPv6 header's hop limit (255 unless a router forwarded it).
    pub(crate) hops: Option<u8>,
    pub(crate) msg: Vec<u8>,
}

pub(crate) struct Sock {
    fd: OwnedFd,
    pub(crate) ifindex: u32,
}

/// The interface's index, if it exists.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    crate::dhcp::ifindex(name)
}

impl Sock {
    /// The socket of `bridge` (index `ifindex`).
    pub(crate) fn open(bridge: &str, ifindex: u32) -> io::Result<Sock> {
        // SAFETY: plain socket call; the descriptor is owned at once.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_INET6,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMPV6,
            )
        })?;
        // SAFETY: `raw` is a new descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = fd.as_raw_fd();
        let name = bridge.as_bytes();
        // SAFETY: the name's bytes and length.
        cvt(unsafe {
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                name.as_ptr().cast(),
                name.len() as libc::socklen_t,
            )
        })?;
        // Only router solicitations reach this socket: everything else is the kernel's.
        let mut filter = [u32::MAX; 8];
        let rs = u32::from(super::wire::ROUTER_SOLICITATION);
        filter[(rs >> 5) as usize] &= !(1 << (rs & 31));
        setopt(s, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
        let hops: libc::c_int = 255;
        setopt(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)?;
        setopt(s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)?;
        let index = ifindex as libc::c_int;
        setopt(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)?;
        let off: libc::c_int = 0;
        setopt(s, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &off)?;
        let on: libc::c_int = 1;
        setopt(s, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &on)?;
        let mreq = libc::ipv6_mreq {
            ipv6mr_multiaddr: libc::in6_addr {
                s6_addr: ALL_ROUTERS.octets(),
            },
            ipv6mr_interface: ifindex,
        };
        setopt(s, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)?;
        Ok(Sock { fd, ifindex })
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sends `msg` to all nodes on the bridge.
    pub(crate) fn send_all_nodes(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_in6 is valid; fields set below.
        let mut to: libc::sockaddr_in6 = unsafe { zeroed() };
        to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        to.sin6_addr.s6_addr = ALL_NODES.octets();
        to.sin6_scope_id = self.ifindex;
        // SAFETY: buffer and address are live for the call.
        let n = unsafe {
            libc::sendto(
                self.raw(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One received message, or `None` when nothing is waiting.
    pub(crate) fn recv(&self) -> io::Result<Option<Received>> {
        let mut buf = vec![0u8; 1500];
        let mut control = [0u64; 16];
        // SAFETY: zeroed structures are valid; pointers set below are live for the call.
        let mut from: libc::sockaddr_in6 = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = std::ptr::from_mut(&mut from).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        // SAFETY: msg points at live buffers.
        let n = unsafe { libc::recvmsg(self.raw(), &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(e),
            };
        }
        buf.truncate(n as usize);
        let mut hops = None;
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_HOPLIMIT {
                    let v: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    hops = u8::try_from(v).ok();
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Ok(Some(Received {
            src: Ipv6Addr::from(from.sin6_addr.s6_addr),
            hops,
            msg: buf,
        }))
    }
}

/// The interface's MAC and MTU as they are now (a bridge's MTU follows its ports).
pub(crate) fn mac_and_mtu(fd: RawFd, name: &str) -> (Option<Mac>, Option<u32>) {
    // SAFETY: a zeroed ifreq is valid; the name fits (interface names are < 16 bytes).
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a live ifreq.
    let mac = (unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) } == 0).then(|| {
        // SAFETY: the union member the ioctl filled.
        let d = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
        Mac([
            d[0] as u8, d[1] as u8, d[2] as u8, d[3] as u8, d[4] as u8, d[5] as u8,
        ])
    });
    // SAFETY: SIOCGIFMTU fills ifr_mtu of a live ifreq.
    let mtu = if unsafe { libc::ioctl(fd, libc::SIOCGIFMTU, &mut req) } == 0 {
        // SAFETY: the union member the ioctl filled.
        u32::try_from(unsafe { req.ifr_ifru.ifru_mtu }).ok()
    } else {
        None
    };
    (mac, mtu)
}
