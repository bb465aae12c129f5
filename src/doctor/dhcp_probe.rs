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
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use super::packet_socket::PacketSocket;
use crate::dhcp::ip_udp_ports;
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

/// The veth pair and namespace of one probe, removed when dropped: `port` on the bridge,
/// `peer` in `netns`.
pub(super) struct Client {
    port: String,
    netns: String,
    pub(super) peer: String,
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
    let c = Client::attach(bridge, &format!("{tag}"), mac, &[])?;
    let xid = u32::from_be_bytes([mac.0[2], mac.0[3], mac.0[4], mac.0[5]]);
    c.run(|peer| discover(peer, mac, xid, wait).map_err(|e| e.to_string()))
}

impl Client {
    /// A client on `bridge` with MAC `mac` (`tag` tells apart a process's probes), its end
    /// up after the sysctls `before_up` (`KEY=VALUE` of its namespace, `{peer}` in KEY
    /// standing for its interface) are set.
    pub(super) fn attach(
        bridge: &str,
        tag: &str,
        mac: Mac,
        before_up: &[&str],
    ) -> Result<Client, String> {
        let id = format!("{:x}{tag}", std::process::id());
        let c = Client {
            port: format!("kvp{id}").chars().take(15).collect(),
            netns: format!("kvmnet-probe-{id}"),
            peer: format!("kvq{id}").chars().take(15).collect(),
        };
        ip(&["netns", "add", &c.netns])?;
        ip(&[
            "link", "add", &c.port, "type", "veth", "peer", "name", &c.peer,
        ])?;
        ip(&["link", "set", &c.peer, "netns", &c.netns])?;
        for kv in before_up {
            // `{peer}` stands for the client's interface.
            let kv = kv.replace("{peer}", &c.peer);
            let o = Command::new("ip")
                .args(["netns", "exec", &c.netns, "sysctl", "-qw", &kv])
                .output()
                .map_err(|e| format!("cannot run sysctl: {e}"))?;
            if !o.status.success() {
                return Err(format!("sysctl {kv} in the probe's namespace failed"));
            }
        }
        let m = mac.to_string();
        ip(&["-n", &c.netns, "link", "set", &c.peer, "address", &m, "up"])?;
        ip(&["link", "set", &c.port, "master", bridge, "up"])?;
        Ok(c)
    }

    /// Runs `f` (given the client's interface) in the client's namespace, on a thread of
    /// its own: setns moves only the calling thread.
    pub(super) fn run<T: Send>(
        &self,
        f: impl FnOnce(&str) -> Result<T, String> + Send,
    ) -> Result<T, String> {
        let ns = format!("/run/netns/{}", self.netns);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = std::fs::File::open(&ns).map_err(|e| format!("{ns}: {e}"))?;
                // SAFETY: a namespace file descriptor; only this thread moves.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("enter {ns}: {}", io::Error::last_os_error()));
                }
                f(&self.peer)
            })
            .join()
            .unwrap_or_else(|_| Err("the probe panicked".into()))
        })
    }
}

/// Sends the DISCOVER from `dev` and waits for the OFFER with `xid`.
fn discover(dev: &str, mac: Mac, xid: u32, wait: Duration) -> io::Result<Option<Ipv4Addr>> {
    let ifindex = crate::dhcp::ifindex(dev).ok_or_else(|| io::Error::other("no probe link"))?;
    let sock = PacketSocket::open(ifindex, ETH_P_IP)?;
    let mut p = Packet::request(mac, xid, MessageType::Discover);
    p.flags = 0x8000; // broadcast the answer: the client has no address yet
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let frame = ip_udp_ports(unspecified, Ipv4Addr::BROADCAST, (68, 67), &p.encode());
    sock.send([0xff; 6], &frame)?;
    let offer = sock.read_until(wait, |payload, from| {
        let (addr, server) = offered(payload, xid)?;
        Some(Offer {
            addr,
            server,
            server_mac: from,
        })
    })?;
    let Some(o) = offer else {
        return Ok(None);
    };
    // Best effort: an offer not given back only holds its address until it times out.
    let _ = release(&sock, mac, xid, &o);
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
fn release(sock: &PacketSocket, mac: Mac, xid: u32, o: &Offer) -> io::Result<()> {
    let mut r = Packet::request(mac, xid.wrapping_add(1), MessageType::Release);
    r.ciaddr = o.addr;
    r.set(opt::SERVER_ID, o.server.octets().to_vec());
    sock.send(
        o.server_mac,
        &ip_udp_ports(o.addr, o.server, (68, 67), &r.encode()),
    )
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
