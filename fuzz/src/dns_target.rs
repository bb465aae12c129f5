//! The DNS service's engine (`kvmnet::dns::FuzzServer`): a guest's query, then an
//! upstream's answer to what it forwarded.
//!
//! Input: one byte of flags (bit 0: the query comes over TCP; bits 1-7: milliseconds that
//! pass before it), two bytes of the query's length, the query, and the rest as the
//! upstream's answer. Properties: no panic; every message sent to the guest is a DNS
//! response that hickory-proto reads back, carries the query's ID, and over UDP fits the
//! largest payload the service offers (1232 bytes).

use hickory_proto::op::{Message, MessageType};

pub fn dns(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (len, rest) = match rest {
        [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        _ => (rest.len(), &[][..]),
    };
    let (query, upstream) = rest.split_at(len.min(rest.len()));
    let tcp = flags & 1 == 1;
    let mut s = kvmnet::dns::FuzzServer::new();
    let mut sent = s.feed(query, tcp, u16::from(flags >> 1));
    sent.extend(s.upstream(upstream));
    for bytes in sent {
        let m = Message::from_vec(&bytes).expect("answers parse");
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(&bytes[..2], &query[..2], "the query's ID");
        if !tcp {
            assert!(bytes.len() <= 1232, "{} bytes over UDP", bytes.len());
        }
    }
}
