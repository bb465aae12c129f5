//! Datagrams in batches (`recvmmsg`, `sendmmsg`): one system call for many queries or
//! answers, which is most of what a busy listener costs.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::RawFd;

use super::net::{from_sockaddr, sockaddr};

/// Size of one receive buffer: larger than any query a client sends over UDP.
const BUF: usize = 4096;

/// Reads up to `max` datagrams waiting on `fd`, without blocking.
pub(crate) fn recv_batch(fd: RawFd, max: usize) -> Vec<(SocketAddr, Vec<u8>)> {
    let mut bufs = vec![[0u8; BUF]; max];
    // SAFETY: all-zero sockaddr_storage, iovec and mmsghdr are valid; pointers set below.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; max];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: BUF,
        })
        .collect();
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; max];
    for i in 0..max {
        msgs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at live buffers of the lengths given.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            max as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n <= 0 {
        return Vec::new();
    }
    (0..n as usize)
        .filter_map(|i| {
            let len = (msgs[i].msg_len as usize).min(BUF);
            Some((from_sockaddr(&addrs[i])?, bufs[i][..len].to_vec()))
        })
        .collect()
}

/// Sends each datagram to its address; returns how many could not be sent.
pub(crate) fn send_batch(fd: RawFd, items: &[(SocketAddr, Vec<u8>)]) -> u64 {
    let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
        items.iter().map(|(a, _)| sockaddr(*a)).collect();
    let mut iovs: Vec<libc::iovec> = items
        .iter()
        .map(|(_, b)| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: all-zero mmsghdr is valid; pointers set below.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; items.len()];
    for (i, m) in msgs.iter_mut().enumerate() {
        m.msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
        m.msg_hdr.msg_namelen = addrs[i].1;
        m.msg_hdr.msg_iov = &mut iovs[i];
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut done = 0;
    let mut errors = 0;
    while done < msgs.len() {
        // SAFETY: the headers from `done` on point at live buffers and addresses.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                msgs[done..].as_mut_ptr(),
                (msgs.len() - done) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first of the rest failed (a full buffer, an unreachable client): skip it.
            errors += 1;
            done += 1;
            continue;
        }
        done += n as usize;
    }
    errors
}
