//! The DHCPv4 codec, on its own and against the `dhcproto` crate.
//!
//! Where both read a packet, they must agree on every field both model. The differences
//! below are known and justified; the comparison allows exactly them and nothing else:
//!
//! - Option overload (option 52, RFC 2131 section 4.1): kvmnet reads options from `file` and
//!   `sname` when option 52 says so, as the RFC requires; dhcproto does not implement it and
//!   reads those fields as strings. The raw comparison reads the overloaded areas with
//!   dhcproto's own option iterator; the typed comparison skips overloaded packets.
//! - Split options (RFC 3396): kvmnet joins every instance of a code, in order, wherever it
//!   appears, as RFC 3396 section 7 says; dhcproto joins only instances that follow each
//!   other and keeps the last group. The raw comparison joins dhcproto's groups per RFC 3396;
//!   the typed one only compares codes that appear as one group.
//! - Malformed fixed-length options: kvmnet's accessors take exactly the length RFC 2132
//!   gives (message type 1 byte, maximum size 2, times 4) and treat anything else as absent;
//!   dhcproto reads the leading bytes and ignores the rest. The same bytes give kvmnet no
//!   value, never a different one.
//! - A malformed option stops dhcproto's typed decoding there (it keeps the options before
//!   it); kvmnet keeps raw bytes and refuses only a truncated option. Options after the one
//!   dhcproto stops at are not compared.
//! - Classless routes (option 121, RFC 3442): kvmnet refuses the whole option when a route is
//!   malformed; dhcproto keeps the routes before it. Compared when kvmnet reads the option.
//! - dhcproto does not check the magic cookie; kvmnet refuses a packet without it (RFC 2131
//!   section 3). Only packets kvmnet accepts are compared.
//! - dhcproto files option 37 (default TCP TTL) under code 23 (a bug of its own); 37 is
//!   compared raw only.
//! - dhcproto panics on some inputs kvmnet reads fine: `chaddr()` when `hlen` > 16, and (in
//!   builds with debug assertions or overflow checks) options 80, 81, 94, 151-155 of a
//!   length other than their RFC's. Such packets are compared only as far as dhcproto can
//!   read them without panicking.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, borrowed};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use kvmnet::dhcp::packet::{self, Packet, opt};

type Options = Vec<(u8, Vec<u8>)>;

/// `Packet::parse` on any bytes: no panic; what it accepts re-encodes to a packet that reads
/// back the same; and it agrees with dhcproto on the input, on kvmnet's encoding of it, and
/// on dhcproto's encoding of it.
pub fn dhcp(data: &[u8]) {
    let Ok(p) = Packet::parse(data) else {
        return;
    };
    let bytes = p.encode();
    let q = Packet::parse(&bytes).expect("kvmnet refuses its own encoding");
    assert_eq!(q, p, "decode(encode(p)) != p");
    assert_eq!(q.encode(), bytes, "encode is not a fixed point");
    let reply = Packet::reply_to(&p, packet::MessageType::Offer);
    assert_eq!(Packet::parse(&reply.encode()).as_ref(), Ok(&reply));
    for code in [opt::CLASSLESS_ROUTES, opt::MS_CLASSLESS_ROUTES] {
        if let Some(d) = p.get(code) {
            routes_round_trip(d);
        }
    }
    cross_check(data, &p);
    cross_check(&bytes, &p);
    // dhcproto writes `sname` and `file` as strings even when its message says they hold
    // options (it normalises a malformed option 52 into a valid one, too): kvmnet may then
    // rightly find a truncated option there. Without overload, kvmnet must read it.
    let dhcproto_msg =
        dhcproto_message(data).filter(|m| m.opts().get(v4::OptionCode::OptionOverload).is_none());
    if let Some(m) = dhcproto_msg {
        let mut b = Vec::new();
        if m.encode(&mut Encoder::new(&mut b)).is_ok() {
            let r = Packet::parse(&b).expect("kvmnet refuses dhcproto's encoding");
            assert_eq!(
                (r.op, r.xid, r.flags, r.ciaddr, r.giaddr, r.chaddr),
                (p.op, p.xid, p.flags, p.ciaddr, p.giaddr, p.chaddr)
            );
            cross_check(&b, &r);
        }
    }
}

/// RFC 3442 routes read back from their encoding; exactly the same bytes when the
/// destinations had no host bits.
fn routes_round_trip(d: &[u8]) {
    let Some(r) = packet::decode_classless_routes(d) else {
        return;
    };
    let e = packet::encode_classless_routes(&r);
    let back = packet::decode_classless_routes(&e).expect("own encoding refused");
    let norm: Vec<_> = r.iter().map(|(n, via)| (n.network(), *via)).collect();
    assert_eq!(back, norm);
    if r.iter().all(|(n, _)| n.network() == *n) {
        assert_eq!(e, d);
    }
}

/// `p` is kvmnet's reading of `bytes`; dhcproto's must agree.
fn cross_check(bytes: &[u8], p: &Packet) {
    let m = borrowed::Message::new(bytes).expect("dhcproto: too short");
    assert_eq!(
        (
            u8::from(m.opcode()),
            u8::from(m.htype()),
            m.hlen(),
            m.hops()
        ),
        (p.op, p.htype, p.hlen, p.hops)
    );
    assert_eq!(
        (m.xid(), m.secs(), u16::from(m.flags())),
        (p.xid, p.secs, p.flags)
    );
    assert_eq!(
        (m.ciaddr(), m.yiaddr(), m.siaddr(), m.giaddr()),
        (p.ciaddr, p.yiaddr, p.siaddr, p.giaddr)
    );
    if p.hlen <= 16 {
        assert_eq!(m.chaddr(), &p.chaddr[..usize::from(p.hlen)]);
    }
    match p.mac() {
        Some(mac) => assert_eq!(&mac.0[..], m.chaddr()),
        None => assert!(p.htype != 1 || p.hlen != 6),
    }

    // Raw options: dhcproto's groups, joined and overloaded as RFC 3396 and 2131 say.
    let main = groups(&bytes[240..]);
    let mut want = joined(&main, Vec::new());
    let overload = match want.iter().find(|(c, _)| *c == opt::OVERLOAD) {
        Some((_, v)) if v.len() == 1 => v[0] & 3,
        _ => 0,
    };
    if overload & 1 != 0 {
        want = joined(&groups(&bytes[108..236]), want);
    }
    if overload & 2 != 0 {
        want = joined(&groups(&bytes[44..108]), want);
    }
    assert_eq!(p.options, want, "options differ from dhcproto's");
    if overload == 0 {
        typed_check(bytes, p, &main);
    }
}

/// The options of one area as dhcproto's iterator sees them: consecutive instances of a
/// code joined.
fn groups(area: &[u8]) -> Options {
    borrowed::DhcpOptionIterator::new(area)
        .map(|o| (u8::from(o.code()), o.data().to_vec()))
        .collect()
}

/// RFC 3396: all instances of a code are one option, their data concatenated in order.
fn joined(groups: &Options, mut into: Options) -> Options {
    for (code, data) in groups {
        match into.iter_mut().find(|(c, _)| c == code) {
            Some(slot) => slot.1.extend_from_slice(data),
            None => into.push((*code, data.clone())),
        }
    }
    into
}

/// Options dhcproto panics on in some builds (see the module doc).
fn dhcproto_panics_on(code: u8, len: usize) -> bool {
    match code {
        80 => len != 0,
        81 => len < 3,
        94 => len != 3,
        151 => len == 0,
        152..=155 => len != 4,
        _ => false,
    }
}

/// dhcproto's typed reading of `bytes`, when it can make one without panicking.
fn dhcproto_message(bytes: &[u8]) -> Option<v4::Message> {
    if bytes.len() < 240 || bytes[2] > 16 {
        return None;
    }
    let main = groups(&bytes[240..]);
    if main.iter().any(|(c, d)| dhcproto_panics_on(*c, d.len())) {
        return None;
    }
    v4::Message::decode(&mut Decoder::new(bytes)).ok()
}

/// The fields both model, typed, for codes that appear as one group in the main area before
/// the first option dhcproto cannot read.
fn typed_check(bytes: &[u8], p: &Packet, main: &Options) {
    let Some(m) = dhcproto_message(bytes) else {
        return;
    };
    assert_eq!(m.chaddr(), &p.chaddr[..usize::from(p.hlen)]);
    let opts = m.opts();
    for (i, (code, data)) in main.iter().enumerate() {
        let code = *code;
        if code == 37 {
            // dhcproto decodes the default TCP TTL (37) as `DefaultIpTtl` and files it
            // under 23: it is not lost, only misnamed.
            continue;
        }
        let readable = v4::OptionCode::from(code);
        let Some(o) = opts.get(readable) else {
            // Only past an option dhcproto could not read.
            let stopped = main[..=i].iter().any(|(c, d)| !dhcproto_reads(*c, d));
            assert!(stopped, "dhcproto lost option {code} without an error");
            return;
        };
        if main.iter().filter(|(c, _)| *c == code).count() == 1 {
            typed_option(p, code, data, o);
        }
    }
}

/// Whether dhcproto's decoder for `code` reads this group (its typed decoding of a message
/// stops at the first it cannot).
fn dhcproto_reads(code: u8, data: &[u8]) -> bool {
    let mut raw = Vec::with_capacity(data.len() + 2);
    for chunk in data.chunks(255) {
        raw.extend_from_slice(&[code, chunk.len() as u8]);
        raw.extend_from_slice(chunk);
    }
    if data.is_empty() {
        raw.extend_from_slice(&[code, 0]);
    }
    DhcpOption::decode(&mut Decoder::new(&raw)).is_ok()
}

/// kvmnet's accessor for `code` against dhcproto's typed value `o` of the same bytes.
fn typed_option(p: &Packet, code: u8, data: &[u8], o: &DhcpOption) {
    let exact = |n: usize| data.len() == n;
    match o {
        DhcpOption::MessageType(t) => {
            let want = exact(1)
                .then(|| packet::MessageType::from_u8(u8::from(*t)))
                .flatten();
            assert_eq!(p.message_type(), want);
        }
        DhcpOption::RequestedIpAddress(ip)
        | DhcpOption::ServerIdentifier(ip)
        | DhcpOption::SubnetMask(ip)
        | DhcpOption::BroadcastAddr(ip) => assert_eq!(p.get_ip(code), Some(*ip)),
        DhcpOption::Router(ips) | DhcpOption::DomainNameServer(ips) => {
            assert_eq!(&p.get_ips(code), ips)
        }
        DhcpOption::Hostname(s) | DhcpOption::DomainName(s) | DhcpOption::Message(s) => {
            assert_eq!(data, s.as_bytes())
        }
        DhcpOption::ParameterRequestList(list) => {
            let codes: Vec<u8> = list.iter().map(|c| u8::from(*c)).collect();
            assert_eq!(data, &codes[..]);
            assert!(codes.iter().all(|c| p.requested(*c)));
        }
        DhcpOption::ClientIdentifier(id) => assert_eq!(data, &id[..]),
        DhcpOption::MaxMessageSize(n) => {
            assert_eq!(p.get_u16(code), exact(2).then_some(*n))
        }
        DhcpOption::AddressLeaseTime(n) | DhcpOption::Renewal(n) | DhcpOption::Rebinding(n) => {
            assert_eq!(p.get_u32(code), exact(4).then_some(*n))
        }
        DhcpOption::OptionOverload(v) => assert_eq!(data.first(), Some(v)),
        DhcpOption::ClasslessStaticRoute(routes) => {
            if let Some(ours) = packet::decode_classless_routes(data) {
                let theirs: Vec<(Ipv4Addr, u8, Ipv4Addr)> = routes
                    .iter()
                    .map(|(n, via)| (n.addr(), n.prefix_len(), *via))
                    .collect();
                let ours: Vec<(Ipv4Addr, u8, Ipv4Addr)> = ours
                    .iter()
                    .map(|(n, via)| (n.addr, n.prefix, *via))
                    .collect();
                assert_eq!(ours, theirs);
            }
        }
        DhcpOption::Unknown(u) => assert_eq!(data, u.data()),
        _ => {}
    }
}
