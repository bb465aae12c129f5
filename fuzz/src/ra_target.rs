//! Router solicitations as the daemon's advertiser reads them (`ra::wire::parse_rs`).
//!
//! The first byte says whether the message came from `::`; the rest is the ICMPv6 message.
//! `parse_rs` never panics; what it accepts is a router solicitation of code 0 whose options
//! tile the message exactly, never with a source link-layer address from `::`; and the
//! solicitation written back as a plain RS (with that option alone) reads the same.

use kvmnet::ra::wire::{ROUTER_SOLICITATION, parse_rs};

pub fn ra_rs(data: &[u8]) {
    let Some((&flag, msg)) = data.split_first() else {
        return;
    };
    let unspecified = flag & 1 == 1;
    let Ok(rs) = parse_rs(msg, unspecified) else {
        return;
    };
    assert!(msg.len() >= 8 && msg[0] == ROUTER_SOLICITATION && msg[1] == 0);
    let mut at = 8;
    while at < msg.len() {
        let len = usize::from(msg[at + 1]) * 8;
        assert!(
            len > 0 && at + len <= msg.len(),
            "options do not tile the message"
        );
        at += len;
    }
    assert_eq!(at, msg.len());
    assert!(!(unspecified && rs.source_mac.is_some()));
    let mut again = vec![ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    if let Some(m) = rs.source_mac {
        again.extend_from_slice(&[1, 1]);
        again.extend_from_slice(&m.0);
    }
    assert_eq!(parse_rs(&again, unspecified), Ok(rs));
}
