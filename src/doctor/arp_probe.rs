//! Who else answers ARP for an address on a link: an RFC 5227 probe (sender address 0.0.0.0,
//! so no neighbour learns anything from it) sent on the link, and the replies gathered for a
//! short while. The host itself never answers its own probe: the frame leaves through the
//! link, so only the link's other hosts see it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::types::Mac;

const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;

/// The ARP payload of a probe for `target` from `mac` (hardware Ethernet, protocol IPv4).
fn probe_frame(mac: Mac, target: Ipv4Addr) -> [u8; 28] {
    let mut f = [0u8; 28];
    f[0..2].copy_from_slice(&1u16.to_be_bytes());
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    f[4] = 6;
    f[5] = 4;
    f[6..8].copy_from_slice(&ARP_REQUEST.to_be_bytes());
    f[8..14].copy_from_slice(&mac.0);
    // Sender protocol address 0.0.0.0 (f[14..18]); target hardware address zero.
    f[24..28].copy_from_slice(&target.octets());
    f
}

/// The sender MAC of an ARP reply about `target`, if `payload` is one.
fn reply_from(payload: &[u8], target: Ipv4Addr) -> Option<Mac> {
    if payload.len() < 28 || payload[6..8] != ARP_REPLY.to_be_bytes() {
        return None;
    }
    if payload[14..18] != target.octets() {
        return None;
    }
    let mut m = [0u8; 6];
    m.copy_from_slice(&payload[8..14]);
    Some(Mac(m))
}

fn sockaddr(ifindex: u32, dst: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&dst);
    sll
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The MACs (other than `mac`, the link's own) that answer a probe for `target` on link
/// `ifindex` within `wait`, each once, in the order they answered.
pub fn who_answers(
    ifindex: u32,
    mac: Mac,
    target: Ipv4Addr,
    wait: Duration,
) -> io::Result<Vec<Mac>> {
    // SAFETY: plain syscall.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    })?;
    // SAFETY: fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let bound = sockaddr(ifindex, [0; 6]);
    // SAFETY: valid sockaddr_ll of the given size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&bound as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    let frame = probe_frame(mac, target);
    let to = sockaddr(ifindex, [0xff; 6]);
    // Two probes, as RFC 5227 sends more than one: a lost frame must not hide a conflict.
    let mut seen = Vec::new();
    for _ in 0..2 {
        // SAFETY: valid buffer and address.
        cvt(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) as libc::c_int
        })?;
        gather(&fd, mac, target, wait / 2, &mut seen)?;
    }
    Ok(seen)
}

/// Reads replies about `target` for `wait`, adding each new sender but `own` to `seen`.
fn gather(
    fd: &OwnedFd,
    own: Mac,
    target: Ipv4Addr,
    wait: Duration,
    seen: &mut Vec<Mac>,
) -> io::Result<()> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 128];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, 10_000) as libc::c_int;
        // SAFETY: one valid pollfd.
        if cvt(unsafe { libc::poll(&mut pfd, 1, ms) })? == 0 {
            return Ok(());
        }
        // SAFETY: valid buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(m) = reply_from(&buf[..n as usize], target)
            && m != own
            && !seen.contains(&m)
        {
            seen.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_asks_from_no_address_and_a_reply_names_its_sender() {
        let mac = Mac([0x52, 0x54, 0, 1, 2, 3]);
        let target = Ipv4Addr::new(10, 0, 0, 1);
        let p = probe_frame(mac, target);
        assert_eq!(&p[6..8], &[0, 1]);
        assert_eq!(&p[14..18], &[0, 0, 0, 0]);
        assert_eq!(&p[24..28], &[10, 0, 0, 1]);
        assert_eq!(reply_from(&p, target), None, "a request is no reply");
        let mut r = p;
        r[6..8].copy_from_slice(&[0, 2]);
        r[8..14].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        r[14..18].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(reply_from(&r, target), Some(Mac([2, 0, 0, 0, 0, 9])));
        assert_eq!(reply_from(&r, Ipv4Addr::new(10, 0, 0, 2)), None);
        assert_eq!(reply_from(&r[..20], target), None);
    }
}
