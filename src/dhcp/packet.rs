//! DHCPv4 wire format: the BOOTP header (RFC 951/2131) and the options that follow it
//! (RFC 2132), with long options split and joined as RFC 3396 says and option overload
//! (option 52) read. No I/O; public so tests and tools can craft and read packets.

use std::net::Ipv4Addr;

use crate::spec::{Ipv4Cidr, Mac};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
/// The broadcast bit of `flags` (RFC 1542).
pub const FLAG_BROADCAST: u16 = 0x8000;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed part: op..file, then the magic cookie.
const HEADER_LEN: usize = 236;
/// Replies are padded to this size: some BOOTP relays and old clients drop smaller ones.
const MIN_LEN: usize = 300;

/// Option codes this server reads or writes.
pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN: u8 = 15;
    pub const MTU: u8 = 26;
    pub const BROADCAST: u8 = 28;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_LIST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_SIZE: u8 = 57;
    pub const RENEWAL_T1: u8 = 58;
    pub const REBINDING_T2: u8 = 59;
    pub const CLIENT_ID: u8 = 61;
    pub const RELAY_AGENT_INFO: u8 = 82;
    pub const CLASSLESS_ROUTES: u8 = 121;
    /// Microsoft's pre-standard code for the same format as 121.
    pub const MS_CLASSLESS_ROUTES: u8 = 249;
    pub const END: u8 = 255;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Decline = 4,
    Ack = 5,
    Nak = 6,
    Release = 7,
    Inform = 8,
}

impl MessageType {
    pub fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("no DHCP magic cookie (a plain BOOTP packet?)")]
    NoMagic,
    #[error("option {0} runs past the end of the packet")]
    Truncated(u8),
}

/// One DHCPv4 message. Options keep their order; a code appears at most once (split
/// instances are joined on parse and split again on encode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Packet {
    /// A client request from an Ethernet address, with the message type set.
    pub fn request(mac: Mac, xid: u32, kind: MessageType) -> Packet {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac.0);
        let mut p = Packet {
            op: BOOTREQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options: Vec::new(),
        };
        p.set(opt::MESSAGE_TYPE, vec![kind as u8]);
        p
    }

    /// The skeleton of the server's answer to `req` (RFC 2131 table 3): same xid, flags,
    /// giaddr and chaddr; the caller fills in addresses and options.
    pub fn reply_to(req: &Packet, kind: MessageType) -> Packet {
        let mut p = Packet {
            op: BOOTREPLY,
            htype: req.htype,
            hlen: req.hlen,
            hops: 0,
            xid: req.xid,
            secs: 0,
            flags: req.flags,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: req.giaddr,
            chaddr: req.chaddr,
            options: Vec::new(),
        };
        p.set(opt::MESSAGE_TYPE, vec![kind as u8]);
        p
    }

    pub fn parse(buf: &[u8]) -> Result<Packet, ParseError> {
        if buf.len() < HEADER_LEN + 4 {
            return Err(ParseError::TooShort(buf.len()));
        }
        if buf[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
            return Err(ParseError::NoMagic);
        }
        let ip = |o: usize| Ipv4Addr::new(buf[o], buf[o + 1], buf[o + 2], buf[o + 3]);
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&buf[28..44]);
        let mut p = Packet {
            op: buf[0],
            htype: buf[1],
            hlen: buf[2],
            hops: buf[3],
            xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
            secs: u16::from_be_bytes([buf[8], buf[9]]),
            flags: u16::from_be_bytes([buf[10], buf[11]]),
            ciaddr: ip(12),
            yiaddr: ip(16),
            siaddr: ip(20),
            giaddr: ip(24),
            chaddr,
            options: Vec::new(),
        };
        read_options(&buf[HEADER_LEN + 4..], &mut p.options)?;
        // Option overload: more options in `file` (1), `sname` (2) or both (3), read after
        // the main area, in that order (RFC 2131 section 4.1).
        if let Some(&[v]) = p.get(opt::OVERLOAD) {
            if v & 1 != 0 {
                read_options(&buf[108..236], &mut p.options)?;
            }
            if v & 2 != 0 {
                read_options(&buf[44..108], &mut p.options)?;
            }
        }
        Ok(p)
    }

    /// Encode, splitting options longer than 255 bytes into consecutive instances.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MIN_LEN + 64);
        out.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        out.extend_from_slice(&self.xid.to_be_bytes());
        out.extend_from_slice(&self.secs.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            out.extend_from_slice(&a.octets());
        }
        out.extend_from_slice(&self.chaddr);
        out.resize(HEADER_LEN, 0); // sname and file: empty
        out.extend_from_slice(&MAGIC);
        for (code, data) in &self.options {
            if data.is_empty() {
                out.extend_from_slice(&[*code, 0]);
            }
            for chunk in data.chunks(255) {
                out.push(*code);
                out.push(chunk.len() as u8);
                out.extend_from_slice(chunk);
            }
        }
        out.push(opt::END);
        if out.len() < MIN_LEN {
            out.resize(MIN_LEN, 0);
        }
        out
    }

    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, d)| d.as_slice())
    }

    /// Set an option, replacing an earlier value of the same code.
    pub fn set(&mut self, code: u8, data: Vec<u8>) {
        match self.options.iter_mut().find(|(c, _)| *c == code) {
            Some(slot) => slot.1 = data,
            None => self.options.push((code, data)),
        }
    }

    pub fn remove(&mut self, code: u8) {
        self.options.retain(|(c, _)| *c != code);
    }

    pub fn message_type(&self) -> Option<MessageType> {
        match self.get(opt::MESSAGE_TYPE) {
            Some(&[v]) => MessageType::from_u8(v),
            _ => None,
        }
    }

    /// An option holding exactly one IPv4 address.
    pub fn get_ip(&self, code: u8) -> Option<Ipv4Addr> {
        match self.get(code) {
            Some(&[a, b, c, d]) => Some(Ipv4Addr::new(a, b, c, d)),
            _ => None,
        }
    }

    /// An option holding a list of IPv4 addresses.
    pub fn get_ips(&self, code: u8) -> Vec<Ipv4Addr> {
        self.get(code)
            .map(|d| {
                d.chunks_exact(4)
                    .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get_u32(&self, code: u8) -> Option<u32> {
        match self.get(code) {
            Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
            _ => None,
        }
    }

    pub fn get_u16(&self, code: u8) -> Option<u16> {
        match self.get(code) {
            Some(&[a, b]) => Some(u16::from_be_bytes([a, b])),
            _ => None,
        }
    }

    /// The client's Ethernet address, when the hardware type is Ethernet.
    pub fn mac(&self) -> Option<Mac> {
        if self.htype != 1 || self.hlen != 6 {
            return None;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.chaddr[..6]);
        Some(Mac(m))
    }

    pub fn broadcast_flag(&self) -> bool {
        self.flags & FLAG_BROADCAST != 0
    }

    /// Whether the client listed `code` in its parameter request list (option 55).
    pub fn requested(&self, code: u8) -> bool {
        self.get(opt::PARAM_LIST).is_some_and(|l| l.contains(&code))
    }
}

fn read_options(mut b: &[u8], out: &mut Vec<(u8, Vec<u8>)>) -> Result<(), ParseError> {
    while let Some(&code) = b.first() {
        match code {
            opt::PAD => b = &b[1..],
            opt::END => break,
            _ => {
                let len = *b.get(1).ok_or(ParseError::Truncated(code))? as usize;
                let data = b.get(2..2 + len).ok_or(ParseError::Truncated(code))?;
                // RFC 3396: several instances of one code are one option, concatenated.
                match out.iter_mut().find(|(c, _)| *c == code) {
                    Some(slot) => slot.1.extend_from_slice(data),
                    None => out.push((code, data.to_vec())),
                }
                b = &b[2 + len..];
            }
        }
    }
    Ok(())
}

/// RFC 3442 classless static routes: for each route the prefix length, the significant
/// octets of the destination, then the router.
pub fn encode_classless_routes(routes: &[(Ipv4Cidr, Ipv4Addr)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (dst, via) in routes {
        let net = dst.network();
        out.push(net.prefix);
        let n = usize::from(net.prefix).div_ceil(8);
        out.extend_from_slice(&net.addr.octets()[..n]);
        out.extend_from_slice(&via.octets());
    }
    out
}

/// The inverse of [`encode_classless_routes`]; `None` when malformed.
pub fn decode_classless_routes(mut b: &[u8]) -> Option<Vec<(Ipv4Cidr, Ipv4Addr)>> {
    let mut out = Vec::new();
    while let Some(&prefix) = b.first() {
        if prefix > 32 {
            return None;
        }
        let n = usize::from(prefix).div_ceil(8);
        let body = b.get(1..1 + n + 4)?;
        let mut dst = [0u8; 4];
        dst[..n].copy_from_slice(&body[..n]);
        let via = Ipv4Addr::new(body[n], body[n + 1], body[n + 2], body[n + 3]);
        out.push((Ipv4Cidr::new(Ipv4Addr::from(dst), prefix), via));
        b = &b[1 + n + 4..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_long_options() {
        let mac = Mac([0x52, 0x54, 0, 1, 2, 3]);
        let mut p = Packet::request(mac, 0xdead_beef, MessageType::Discover);
        p.flags = FLAG_BROADCAST;
        p.set(opt::REQUESTED_IP, vec![10, 0, 0, 5]);
        let long: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        p.set(opt::DNS, long.clone());
        let bytes = p.encode();
        assert!(bytes.len() >= MIN_LEN);
        let q = Packet::parse(&bytes).unwrap();
        assert_eq!(q, p);
        assert_eq!(q.mac(), Some(mac));
        assert_eq!(q.message_type(), Some(MessageType::Discover));
        assert_eq!(
            q.get_ip(opt::REQUESTED_IP),
            Some(Ipv4Addr::new(10, 0, 0, 5))
        );
        assert_eq!(q.get(opt::DNS).unwrap(), long.as_slice());
        assert!(q.broadcast_flag());
    }

    #[test]
    fn overload_and_truncation() {
        let mut p = Packet::request(Mac([2, 0, 0, 0, 0, 1]), 1, MessageType::Request);
        p.set(opt::OVERLOAD, vec![1]);
        let mut b = p.encode();
        // Put the requested-IP option into the `file` field.
        b[108..114].copy_from_slice(&[opt::REQUESTED_IP, 4, 10, 1, 2, 3]);
        b[114] = opt::END;
        let q = Packet::parse(&b).unwrap();
        assert_eq!(
            q.get_ip(opt::REQUESTED_IP),
            Some(Ipv4Addr::new(10, 1, 2, 3))
        );
        let mut t = p.encode();
        let end = t.iter().rposition(|&x| x == opt::END).unwrap();
        t.truncate(end);
        t.extend_from_slice(&[opt::HOSTNAME, 10, b'a']);
        assert_eq!(Packet::parse(&t), Err(ParseError::Truncated(opt::HOSTNAME)));
        assert_eq!(Packet::parse(&[0u8; 100]), Err(ParseError::TooShort(100)));
        assert_eq!(Packet::parse(&[0u8; 300]), Err(ParseError::NoMagic));
    }

    #[test]
    fn classless_routes_rfc3442() {
        let r = vec![
            (
                "198.51.100.0/24".parse().unwrap(),
                Ipv4Addr::new(10, 0, 0, 254),
            ),
            (
                "10.17.0.0/16".parse().unwrap(),
                Ipv4Addr::new(10, 0, 0, 253),
            ),
            ("0.0.0.0/0".parse().unwrap(), Ipv4Addr::new(10, 0, 0, 1)),
        ];
        let b = encode_classless_routes(&r);
        assert_eq!(
            b,
            vec![
                24, 198, 51, 100, 10, 0, 0, 254, 16, 10, 17, 10, 0, 0, 253, 0, 10, 0, 0, 1
            ]
        );
        assert_eq!(decode_classless_routes(&b).unwrap(), r);
        assert!(decode_classless_routes(&[24, 1, 2]).is_none());
    }
}
