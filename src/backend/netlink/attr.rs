//! Reading what the kernel sends: a datagram split into messages, a message's attributes,
//! the fixed-size fields inside them, and the error (or ack) message.

use std::net::Ipv4Addr;

use super::consts::{
    NLA_HDRLEN, NLA_TYPE_MASK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLMSG_HDRLEN, NLMSGERR_ATTR_MSG,
};

/// One netlink message of a received buffer.
pub(crate) struct Msg<'a> {
    pub(crate) ty: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// The sender's port: for a notification, the socket whose request caused it.
    pub(crate) pid: u32,
    pub(crate) payload: &'a [u8],
}

pub(crate) fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([b[off], b[off + 1]])
}
pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}
pub(crate) fn i32_at(b: &[u8], off: usize) -> i32 {
    i32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}
pub(crate) fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

/// Split a datagram into messages. Stops at the first malformed header.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let m = Msg {
            ty: u16_at(buf, 4),
            flags: u16_at(buf, 6),
            seq: u32_at(buf, 8),
            pid: u32_at(buf, 12),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        let next = (len + 3) & !3;
        buf = if next >= buf.len() { &[] } else { &buf[next..] };
        Some(m)
    })
}

/// Iterate attributes: (type without flags, payload).
pub(crate) fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = u16_at(buf, 0) as usize;
        if len < NLA_HDRLEN || len > buf.len() {
            return None;
        }
        let item = (u16_at(buf, 2) & NLA_TYPE_MASK, &buf[NLA_HDRLEN..len]);
        let next = (len + 3) & !3;
        buf = if next >= buf.len() { &[] } else { &buf[next..] };
        Some(item)
    })
}

/// The payload of the first attribute of type `ty`.
pub(crate) fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// A string attribute, up to its NUL.
pub(crate) fn attr_string(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}
pub(crate) fn attr_u32(p: &[u8]) -> Option<u32> {
    (p.len() >= 4).then(|| u32_at(p, 0))
}
pub(crate) fn attr_u8(p: &[u8]) -> Option<u8> {
    p.first().copied()
}
pub(crate) fn attr_ipv4(p: &[u8]) -> Option<Ipv4Addr> {
    (p.len() == 4).then(|| Ipv4Addr::new(p[0], p[1], p[2], p[3]))
}

/// An NLMSG_ERROR payload: (errno as a positive number or 0 for an ack, the original seq,
/// the extended-ack message).
pub(crate) fn parse_error(m: &Msg<'_>) -> Option<(i32, u32, Option<String>)> {
    let p = m.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let err = i32_at(p, 0);
    let seq = u32_at(p, 4 + 8);
    let mut ext = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        let tlv_off = if m.flags & NLM_F_CAPPED != 0 {
            4 + NLMSG_HDRLEN
        } else {
            4 + ((u32_at(p, 4) as usize + 3) & !3)
        };
        if tlv_off <= p.len() {
            for (ty, v) in attrs(&p[tlv_off..]) {
                if ty == NLMSGERR_ATTR_MSG {
                    let s = attr_string(v);
                    if !s.is_empty() {
                        ext = Some(s);
                    }
                }
            }
        }
    }
    Some((-err, seq, ext))
}
