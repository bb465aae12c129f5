//! Does the daemon's DHCP server answer on a network: a DHCPDISCOVER from a throwaway client
//! on the network's bridge, and the OFFER it gets back.
//!
//! The host cannot ask its own server over the bridge (a frame it sends there goes to the
//! bridge's ports, not back up its own stack), so the client is a veth pair: one end a port
//! of the bridge for the moment of the probe, the other in a namespace of its own, where the
//! DISCOVER is sent and the answer read with a packet socket (the client has no address).
//! Both are removed before the probe returns, whatever happened. No REQUEST is sent, so no
//! lease is made, and the offer is given back at once with a RELEASE (the server holds an
//! offered address for its client a while otherwise).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dhcp::packet::{MessageType, Packet, opt};
use crate::types::Mac;

const ETH_P_IP: u16 = 0x0800;

/// What a probe saw: the server's answer, or why there was none.
pub type Outcome = Result<Option<Ipv4Addr>, String>;

fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// The veth pair and namespace of one probe, removed when dropped.
struct Client {
    port: String,
    netns: String,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.port]);
        let _ = ip(&["netns", "del", &self.netns]);
    }
}

/// Probes `bridge` (its server identifier: `server`) with client MAC `mac`: the OFFER's
/// address, `None` when nothing answered within `wait`.
pub fn probe(bridge: &str, tag: usize, mac: Mac, wait: Duration) -> Outcome {
    let id = format!("{:x}{tag}", std::process::id());
    let c = Client {
        port: format!("kvp{id}").chars().take(15).collect(),
        netns: format!("kvmnet-probe-{id}"),
    };
    let peer: String = format!("kvq{id}").chars().take(15).collect();
    ip(&["netns", "add", &c.netns])?;
    ip(&[
        "link", "add", &c.port, "type", "veth", "peer", "name", &peer,
    ])?;
    ip(&["link", "set", &peer, "netns", &c.netns])?;
    let ns = format!("/run/netns/{}", c.netns);
    let m = mac.to_string();
    ip(&["-n", &c.netns, "link", "set", &peer, "address", &m, "up"])?;
    ip(&["link", "set", &c.port, "master", bridge, "up"])?;
    let xid = u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    // The namespace is entered by a thread of its own: setns moves only the calling thread.
    std::thread::scope(|s| {
        s.spawn(|| {
            let f = std::fs::File::open(&ns).map_err(|e| format!("{ns}: {e}"))?;
            // SAFETY: a namespace file descriptor; only this thread moves.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("enter {ns}: {}", io::Error::last_os_error()));
            }
            discover(&peer, mac, xid, wait).map_err(|e| e.to_string())
        })
        .join()
        .unwrap_or_else(|_| Err("the probe panicked".into()))
    })
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn sockaddr(ifindex: u32) -> libc::sockaddr_ll {
    // SAFETY: all-zero is a valid sockaddr_ll.
    let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_IP.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    sll
}

/// Sends the DISCOVER from `dev` and waits for the OFFER with `xid`.
fn discover(dev: &str, mac: Mac, xid: u32, wait: Duration) -> io::Result<Option<Ipv4Addr>> {
    let ifindex = crate::dhcp::ifindex(dev).ok_or_else(|| io::Error::other("no probe link"))?;
    // SAFETY: plain syscall.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_IP.to_be()),
        )
    })?;
    // SAFETY: fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let sll = sockaddr(ifindex);
    // SAFETY: valid sockaddr_ll of the given size.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    let mut p = Packet::request(mac, xid, MessageType::Discover);
    p.flags = 0x8000; // broadcast the answer: the client has no address yet
    let frame = crate::dhcp::ip_udp_ports(
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
        (68, 67),
        &p.encode(),
    );
    // SAFETY: valid buffer and address.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let Some(o) = offer(&fd, xid, wait)? else {
        return Ok(None);
    };
    // Best effort: an offer not given back only holds its address until it times out.
    let _ = release(&fd, ifindex, mac, xid, &o);
    Ok(Some(o.addr))
}

/// An OFFER: the address, the server's identifier and the MAC it came from.
struct Offer {
    addr: Ipv4Addr,
    server: Ipv4Addr,
    server_mac: [u8; 6],
}

/// A RELEASE of the offered address, unicast to the server from that address, as the
/// server takes one from the client holding it.
fn release(fd: &OwnedFd, ifindex: u32, mac: Mac, xid: u32, o: &Offer) -> io::Result<()> {
    let mut r = Packet::request(mac, xid.wrapping_add(1), MessageType::Release);
    r.ciaddr = o.addr;
    r.set(opt::SERVER_ID, o.server.octets().to_vec());
    let frame = crate::dhcp::ip_udp_ports(o.addr, o.server, (68, 67), &r.encode());
    let mut to = sockaddr(ifindex);
    to.sll_addr[..6].copy_from_slice(&o.server_mac);
    // SAFETY: valid buffer and address.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
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

/// The first OFFER with `xid` read from `fd` within `wait`.
fn offer(fd: &OwnedFd, xid: u32, wait: Duration) -> io::Result<Option<Offer>> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
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
                fd.as_raw_fd(),
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
        if let Some((addr, server)) = offered(&buf[..n as usize], xid) {
            let mut server_mac = [0u8; 6];
            server_mac.copy_from_slice(&from.sll_addr[..6]);
            return Ok(Some(Offer {
                addr,
                server,
                server_mac,
            }));
        }
    }
}

/// The offered address and the server's identifier, if `ipv4` is a UDP datagram to port 68
/// holding an OFFER with `xid`.
fn offered(ipv4: &[u8], xid: u32) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let ihl = usize::from(ipv4.first()? & 0x0f) * 4;
    if ipv4.len() < ihl + 8 || ipv4[9] != libc::IPPROTO_UDP as u8 {
        return None;
    }
    let udp = &ipv4[ihl..];
    if udp[2..4] != 68u16.to_be_bytes() {
        return None;
    }
    let p = Packet::parse(&udp[8..]).ok()?;
    let server = p.get_ip(opt::SERVER_ID)?;
    (p.xid == xid && p.message_type() == Some(MessageType::Offer)).then_some((p.yiaddr, server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_is_read_out_of_its_ip_datagram() {
        let mac = Mac([2, 0x6b, 0, 0, 0, 1]);
        let mut o = Packet::request(mac, 7, MessageType::Offer);
        o.yiaddr = Ipv4Addr::new(10, 0, 0, 5);
        o.set(opt::SERVER_ID, vec![10, 0, 0, 1]);
        let f = crate::dhcp::ip_udp_ports(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            (67, 68),
            &o.encode(),
        );
        assert_eq!(
            offered(&f, 7),
            Some((Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(offered(&f, 8), None, "another client's");
        let d = Packet::request(mac, 7, MessageType::Discover);
        let f = crate::dhcp::ip_udp_ports(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            (68, 67),
            &d.encode(),
        );
        assert_eq!(offered(&f, 7), None, "a request to the server");
        assert_eq!(offered(&f[..10], 7), None);
    }
}
