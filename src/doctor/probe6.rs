//! doctor's probes of the daemon's IPv6 router advertisements and of its DNS service.
//!
//! RA: a router solicitation from a throwaway client on the network's bridge (the host
//! cannot solicit its own RAs: what it sends on the bridge goes to the bridge's ports), made
//! like the DHCP probe's, with duplicate address detection off so its link-local address
//! can send at once. The RA is read where the daemon sends it, leaving the host on the
//! bridge (a packet socket sees outgoing frames): the daemon takes the client's port off its
//! bridge as drift soon after it joins, and its answer may wait up to 3 s (one RA per 3 s). DNS: the service answers the host
//! itself on each gateway address (its listeners are bound to the bridge and to `lo`), so a
//! query from the host to each address it listens on shows whether it answers.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::dhcp_probe::Client;
use super::packet_socket::PacketSocket;
use crate::types::{Ipv6Cidr, Mac};

/// Every protocol: a packet socket bound to one protocol sees only frames coming in, and the
/// RA is one going out.
const ETH_P_ALL: u16 = 0x0003;
const ICMPV6: u8 = 58;

/// What an RA probe saw: the prefixes of the RA that came, `None` when none did.
pub type Outcome = Result<Option<Vec<Ipv6Cidr>>, String>;

const RS: u8 = 133;
const RA: u8 = 134;
const PREFIX_INFO: u8 = 3;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Solicits an RA on `bridge` (whose MAC is `bridge_mac`) from a client with MAC `mac`, and
/// waits `wait` for the host to send one there.
pub fn ra(bridge: &str, bridge_mac: Mac, tag: usize, mac: Mac, wait: Duration) -> Outcome {
    let ifindex = crate::dhcp::ifindex(bridge).ok_or_else(|| format!("no link {bridge}"))?;
    let sock = PacketSocket::open(ifindex, ETH_P_ALL).map_err(|e| e.to_string())?;
    let c = Client::attach(
        bridge,
        &format!("r{tag}"),
        mac,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.{peer}.accept_dad=0",
        ],
    )?;
    c.run(|peer| solicit(peer).map_err(|e| e.to_string()))?;
    drop(c);
    sock.read_until(wait, |ip6, from| {
        if from != bridge_mac.0 || ip6.len() < 40 || ip6[0] >> 4 != 6 || ip6[6] != ICMPV6 {
            return None;
        }
        ra_prefixes(&ip6[40..])
    })
    .map_err(|e| e.to_string())
}

fn setopt(fd: std::os::fd::RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: an int option of the size given.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Asks the DHCPv6 server on `bridge` (whose MAC is `bridge_mac`) for its configuration
/// (Information-request, which the daemon answers in every RA mode and which binds no
/// address) from a client with MAC `mac`, and waits `wait` for the Reply to leave the host
/// on the bridge.
pub fn dhcp6(
    bridge: &str,
    bridge_mac: Mac,
    tag: usize,
    mac: Mac,
    wait: Duration,
) -> Result<bool, String> {
    use dhcproto::Encodable;
    use dhcproto::v6::{DhcpOption, Message, MessageType};
    let ifindex = crate::dhcp::ifindex(bridge).ok_or_else(|| format!("no link {bridge}"))?;
    let sock = PacketSocket::open(ifindex, ETH_P_ALL).map_err(|e| e.to_string())?;
    let xid = [0x6b, mac.0[4], mac.0[5]];
    let mut m = Message::new_with_id(MessageType::InformationRequest, xid);
    // DUID-LL (type 3, hardware type 1) of the client's MAC.
    let mut duid = vec![0, 3, 0, 1];
    duid.extend(mac.0);
    m.opts_mut().insert(DhcpOption::ClientId(duid));
    let q = m.to_vec().map_err(|e| e.to_string())?;
    let c = Client::attach(
        bridge,
        &format!("d{tag}"),
        mac,
        &[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.{peer}.accept_dad=0",
        ],
    )?;
    c.run(|peer| ask_servers(peer, &q).map_err(|e| e.to_string()))?;
    let got = sock
        .read_until(wait, |ip6, from| {
            let reply = from == bridge_mac.0
                && ip6.len() >= 52
                && ip6[0] >> 4 == 6
                && ip6[6] == libc::IPPROTO_UDP as u8
                && ip6[40..44] == [2, 35, 2, 34] // 547 -> 546
                && ip6[48] == 7
                && ip6[49..52] == xid;
            reply.then_some(())
        })
        .map_err(|e| e.to_string())?;
    drop(c);
    Ok(got.is_some())
}

/// Sends `msg` from `dev`'s port 546 to the DHCPv6 servers' group (ff02::1:2, port 547).
fn ask_servers(dev: &str, msg: &[u8]) -> io::Result<()> {
    let ifindex = crate::dhcp::ifindex(dev).ok_or_else(|| io::Error::other("no probe link"))?;
    let s = UdpSocket::bind("[::]:546")?;
    let to = std::net::SocketAddrV6::new(
        "ff02::1:2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
        547,
        0,
        ifindex,
    );
    setopt(
        s.as_raw_fd(),
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
        ifindex as i32,
    )?;
    // The link-local address to send from appears once the link has carrier, a moment
    // after the port joins the bridge.
    let mut tries = 0;
    loop {
        match s.send_to(msg, to) {
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r.map(|_| ()),
        }
    }
}

/// Sends a router solicitation to all routers from `dev`.
fn solicit(dev: &str) -> io::Result<()> {
    let ifindex = crate::dhcp::ifindex(dev).ok_or_else(|| io::Error::other("no probe link"))?;
    // SAFETY: plain syscall.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    })?;
    // SAFETY: a fresh descriptor, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Neighbour discovery travels with hop limit 255 (RFC 4861 6.1.1).
    setopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_HOPS,
        255,
    )?;
    setopt(
        fd.as_raw_fd(),
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_IF,
        ifindex as i32,
    )?;
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    to.sin6_addr.s6_addr = "ff02::2"
        .parse::<Ipv6Addr>()
        .unwrap_or(Ipv6Addr::UNSPECIFIED)
        .octets();
    to.sin6_scope_id = ifindex;
    // The kernel fills in an ICMPv6 raw socket's checksum.
    let rs = [RS, 0, 0, 0, 0, 0, 0, 0];
    // As in `ask_servers`: the address to send from appears with the link's carrier.
    let mut tries = 0;
    loop {
        // SAFETY: a buffer and a sockaddr_in6 of the sizes given.
        let r = cvt(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                rs.as_ptr().cast(),
                rs.len(),
                0,
                (&to as *const libc::sockaddr_in6).cast(),
                size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ) as libc::c_int
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.map(|_| ())?,
        }
    }
    Ok(())
}

/// The prefixes of the prefix information options of an RA (an ICMPv6 message), or `None`
/// when it is not an RA.
fn ra_prefixes(m: &[u8]) -> Option<Vec<Ipv6Cidr>> {
    if m.len() < 16 || m[0] != RA {
        return None;
    }
    let mut out = Vec::new();
    let mut o = &m[16..];
    while o.len() >= 8 {
        let len = usize::from(o[1]) * 8;
        if len == 0 || len > o.len() {
            break;
        }
        if o[0] == PREFIX_INFO && len == 32 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&o[16..32]);
            out.push(Ipv6Cidr {
                addr: Ipv6Addr::from(a),
                prefix: o[2],
            });
        }
        o = &o[len..];
    }
    Some(out)
}

/// Whether a query to `addr` (port 53) gets an answer with its ID within `wait`: the PTR of
/// `ask`, a gateway's address, which the service answers from its own zone.
pub fn dns(addr: IpAddr, ask: IpAddr, id: u16, wait: Duration) -> Result<bool, String> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from(ask), RecordType::PTR));
    let q = m.to_vec().map_err(|e| e.to_string())?;
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => "0.0.0.0:0".parse().map_err(|_| "bind address")?,
        IpAddr::V6(_) => "[::]:0".parse().map_err(|_| "bind address")?,
    };
    let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    s.connect(SocketAddr::new(addr, 53))
        .map_err(|e| e.to_string())?;
    s.send(&q).map_err(|e| e.to_string())?;
    let end = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.recv(&mut buf) {
            Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => return Ok(true),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            // Nothing listens (an ICMP port unreachable came back).
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(false),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefixes_of_an_ra() {
        let mut m = vec![RA, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        // Source link-layer address, then one prefix.
        m.extend([1, 1, 2, 0x6b, 0, 0, 0, 1]);
        let mut p = vec![PREFIX_INFO, 4, 64, 0xc0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0];
        p.extend("fd00:9::".parse::<Ipv6Addr>().unwrap().octets());
        m.extend(p);
        assert_eq!(
            ra_prefixes(&m),
            Some(vec![Ipv6Cidr {
                addr: "fd00:9::".parse().unwrap(),
                prefix: 64
            }])
        );
        m[0] = RS;
        assert_eq!(ra_prefixes(&m), None);
        assert_eq!(ra_prefixes(&[RA, 0]), None);
    }
}
