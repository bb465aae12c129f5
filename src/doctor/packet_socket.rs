//! A datagram packet socket on one link, for doctor's probes: frames of one protocol sent to
//! a MAC and read until a deadline (the kernel adds and strips the Ethernet header).

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: u32,
    proto: u16,
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl PacketSocket {
    /// A socket for ethertype `proto` on link `ifindex`.
    pub fn open(ifindex: u32, proto: u16) -> io::Result<PacketSocket> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(proto.to_be()),
            )
        })?;
        // SAFETY: fresh descriptor, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = PacketSocket { fd, ifindex, proto };
        let sll = s.addr([0; 6]);
        // SAFETY: valid sockaddr_ll of the given size.
        cvt(unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(s)
    }

    fn addr(&self, mac: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = self.proto.to_be();
        sll.sll_ifindex = self.ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&mac);
        sll
    }

    /// Sends `payload` to `mac` (`[0xff; 6]`: broadcast).
    pub fn send(&self, mac: [u8; 6], payload: &[u8]) -> io::Result<()> {
        let to = self.addr(mac);
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads frames for `wait`, handing each (payload, source MAC) to `f` until it returns
    /// something; `None` when `wait` ran out first.
    pub fn read_until<T>(
        &self,
        wait: Duration,
        mut f: impl FnMut(&[u8], [u8; 6]) -> Option<T>,
    ) -> io::Result<Option<T>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 10_000) as libc::c_int;
            // SAFETY: one valid pollfd.
            if cvt(unsafe { libc::poll(&mut pfd, 1, ms) })? == 0 {
                return Ok(None);
            }
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid buffer and address of the given lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&from.sll_addr[..6]);
            if let Some(t) = f(&buf[..n as usize], mac) {
                return Ok(Some(t));
            }
        }
    }
}
