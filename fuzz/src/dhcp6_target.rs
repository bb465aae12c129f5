//! The DHCPv6 server's entry point: any bytes, as a message from a client, through the
//! whole engine (decoding with `dhcproto`, the checks, assignment, the journal).
//!
//! The input's first byte picks the Ethernet source (one of four, one of them the scope's
//! reservation and one a guarded port) and whether a minute passes first; the rest is the
//! message. One server (its journal in a temporary directory) takes every input of a run, so
//! a sequence of inputs walks the lease states. Properties: no panic; an answer is a
//! DHCPv6 Advertise or Reply with the request's transaction id, sent to the client's
//! link-local address; nothing is ever bound outside the pool and the reservation; and
//! whatever `dhcproto` decodes, it encodes, and that encoding decodes to the same message
//! (the server answers from what it decoded).

use std::cell::RefCell;
use std::net::Ipv6Addr;

use dhcproto::v6::{Message, MessageType};
use dhcproto::{Decodable, Encodable};
use kvmnet::dhcp::v6::FuzzServer6;
use kvmnet::spec::Mac;

thread_local! {
    static SERVER: RefCell<Option<FuzzServer6>> = const { RefCell::new(None) };
}

const LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7);

pub fn dhcp6(data: &[u8]) {
    let Some((&ctl, msg)) = data.split_first() else {
        return;
    };
    if let Ok(m) = Message::from_bytes(msg)
        && let Ok(b) = m.to_vec()
    {
        let back = Message::from_bytes(&b).expect("dhcproto refuses its own encoding");
        assert_eq!(back, m, "dhcproto: decode(encode(m)) != m");
    }
    SERVER.with(|s| {
        let mut s = s.borrow_mut();
        let f = s.get_or_insert_with(|| {
            let dir =
                std::env::temp_dir().join(format!("kvmnet-fuzz-dhcp6-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            FuzzServer6::open(&dir).expect("open the fuzz server")
        });
        let mac = Mac([2, 0, 0, 0, 0, 8 + (ctl & 3)]);
        let advance = if ctl & 4 != 0 { 60 } else { 0 };
        if let Some((dest, reply)) = f.feed(LL, mac, msg, advance) {
            assert_eq!(dest, LL);
            let r = Message::from_bytes(&reply).expect("the server's answer decodes");
            assert!(matches!(
                r.msg_type(),
                MessageType::Advertise | MessageType::Reply
            ));
            assert_eq!(&reply[1..4], &msg[1..4], "transaction id");
        }
        for l in f.leases() {
            let o = l.ip.octets();
            let pool = o[..14] == [0xfd, 0, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                && (0x10..=0x1f).contains(&o[14]);
            let resv =
                l.ip == "fd00:db8::9".parse::<Ipv6Addr>().unwrap() && l.mac == "02:00:00:00:00:09";
            assert!(pool || resv, "bound outside the pool: {l:?}");
        }
    });
}
