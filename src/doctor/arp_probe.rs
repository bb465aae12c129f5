//! Who else answers ARP for an address on a link: an RFC 5227 probe (sender address 0.0.0.0,
//! so no neighbour learns anything from it) sent on the link, and the replies gathered for a
//! short while. The host itself never answers its own probe: the frame leaves through the
//! link, so only the link's other hosts see it.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use super::packet_socket::PacketSocket;

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

/// The MACs (other than `mac`, the link's own) that answer a probe for `target` on link
/// `ifindex` within `wait`, each once, in the order they answered.
pub fn who_answers(
    ifindex: u32,
    mac: Mac,
    target: Ipv4Addr,
    wait: Duration,
) -> io::Result<Vec<Mac>> {
    let sock = PacketSocket::open(ifindex, ETH_P_ARP)?;
    let frame = probe_frame(mac, target);
    // Two probes, as RFC 5227 sends more than one: a lost frame must not hide a conflict.
    let mut seen = Vec::new();
    for _ in 0..2 {
        sock.send([0xff; 6], &frame)?;
        sock.read_until(wait / 2, |payload, _| {
            if let Some(m) = reply_from(payload, target)
                && m != mac
                && !seen.contains(&m)
            {
                seen.push(m);
            }
            None::<()>
        })?;
    }
    Ok(seen)
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
