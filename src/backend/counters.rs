//! The kernel's counters that metrics show, each kind read in one dump whatever the number of
//! ports: link statistics (one RTM_GETLINK dump), root qdisc statistics (one RTM_GETQDISC
//! dump), the guard's per-port drop counters (one element dump per reason), the firewall's
//! per-port drop and reject counters (one element dump per counting set) and the packet
//! counters of the firewall's drop and reject rules, per chain (one rule dump of `inet kvmnet`).
//! Reading never resets a counter.

use std::collections::HashMap;

use super::netlink::consts::RTM_GETLINK;
use super::netlink::{NetlinkError, Options, Socket, attr, attr_string, attrs};
use super::nfnetlink::{
    NFPROTO_BRIDGE, NFPROTO_INET, NFT_MSG_GETRULE, NFT_MSG_GETSETELEM, NFTA_DATA_VALUE,
    NFTA_DATA_VERDICT, NFTA_RULE_CHAIN, NFTA_RULE_TABLE, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, Nfnl, be32, open_socket,
};
use super::nftables::NftError;
use super::rtnl::{IFLA_IFNAME, IFLA_STATS64, LinkStats, ifinfomsg, parse_stats64};
use super::tc::{Stats, Tc, TcError};
use crate::nft;

/// `linux/netfilter/nf_tables.h`: a rule's expressions, a set element's.
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_ELEM_EXPR: u16 = 7;
const NFTA_SET_ELEM_EXPRESSIONS: u16 = 11;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
/// `NF_DROP`: the verdict code of a drop.
const NF_DROP: u32 = 0;
/// `NFT_GOTO` (-4): the firewall's drops and rejects go to its counting chains.
const NFT_GOTO: u32 = 0xffff_fffc;

#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    #[error("reading link statistics: {0}")]
    Links(#[from] NetlinkError),
    #[error("reading qdisc statistics: {0}")]
    Tc(#[from] TcError),
    #[error("reading nftables counters: {0}")]
    Nft(#[from] NftError),
}

/// Statistics of every link in this namespace, by name and with its index. Only the name
/// and the counters are read of each link's message: a scrape at 1,000 ports reads 2,000
/// links or more (ports and their IFBs), and parsing them whole took a third of the time.
pub fn link_stats() -> Result<HashMap<String, (u32, LinkStats)>, CounterError> {
    let mut sock = Socket::open(libc::NETLINK_ROUTE, &Options::REQUESTS)?;
    let dumped = sock.dump("list link statistics", RTM_GETLINK, &ifinfomsg(0, 0, 0))?;
    Ok(dumped.iter().filter_map(|p| link_counters(p)).collect())
}

/// A link message's name, index and counters (`struct rtnl_link_stats64`: rx_packets,
/// tx_packets, rx_bytes, tx_bytes, rx_errors, tx_errors, rx_dropped, tx_dropped, ...).
fn link_counters(p: &[u8]) -> Option<(String, (u32, LinkStats))> {
    let index = u32::from_ne_bytes(p.get(4..8)?.try_into().ok()?);
    let rest = p.get(16..)?;
    let name = attr(rest, IFLA_IFNAME).map(attr_string)?;
    let v = attr(rest, IFLA_STATS64).filter(|v| v.len() >= 64)?;
    Some((name, (index, parse_stats64(v))))
}

/// Statistics of every link's root qdisc, by ifindex.
pub fn root_qdisc_stats() -> Result<HashMap<u32, Stats>, CounterError> {
    Ok(Tc::open()?.root_qdisc_stats()?)
}

/// What a firewall rule does with what it counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Drop,
    Reject,
}

/// Packets a chain's counted drop and reject rules counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub drops: u64,
    pub rejects: u64,
}

/// Packets counted by the guard in each of the counting sets named, by interface, in the
/// order of `sets`. A missing table or set counts nothing.
pub fn guard_drops(sets: &[&str]) -> Result<Vec<HashMap<String, u64>>, CounterError> {
    let Some(mut sock) = open_socket()? else {
        return Ok(vec![HashMap::new(); sets.len()]);
    };
    let mut out = Vec::with_capacity(sets.len());
    for &set in sets {
        let dumps = set_dump(&mut sock, NFPROTO_BRIDGE, set, "list guard drop counters")?;
        out.push(
            dumps
                .iter()
                .flat_map(|d| element_counters(d))
                .map(|(k, n)| (attr_string(k), n))
                .collect(),
        );
    }
    Ok(out)
}

/// Packets counted by the firewall in each of its counting sets named, by key (as
/// [`raw_key`] packs its bytes: a mark in host order, an address in network order), in the
/// order of `sets`. Keys are compared as numbers, not written out: a scrape at 1,000 ports
/// reads some 3,000 of them.
pub fn firewall_drops(sets: &[&str]) -> Result<Vec<HashMap<u128, u64>>, CounterError> {
    let Some(mut sock) = open_socket()? else {
        return Ok(vec![HashMap::new(); sets.len()]);
    };
    let mut out = Vec::with_capacity(sets.len());
    for &set in sets {
        let dumps = set_dump(&mut sock, NFPROTO_INET, set, "list firewall drop counters")?;
        out.push(
            dumps
                .iter()
                .flat_map(|d| element_counters(d))
                .map(|(k, n)| (raw_key(k), n))
                .collect(),
        );
    }
    Ok(out)
}

/// A set key of at most 16 bytes as one number, its bytes in order.
pub fn raw_key(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0, |k, b| (k << 8) | u128::from(*b))
}

fn set_dump(
    sock: &mut Nfnl,
    family: u8,
    set: &str,
    what: &'static str,
) -> Result<Vec<Vec<u8>>, NftError> {
    Ok(sock
        .dump(
            what,
            NFT_MSG_GETSETELEM,
            family,
            &[
                (NFTA_SET_ELEM_LIST_TABLE, nft::TABLE),
                (NFTA_SET_ELEM_LIST_SET, set),
            ],
        )?
        .unwrap_or_default())
}

/// The key and packet count of each element of a set-element message.
fn element_counters(body: &[u8]) -> Vec<(&[u8], u64)> {
    let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attrs(list)
        .filter_map(|(_, e)| {
            let key = attr(e, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE))?;
            // One expression is sent on its own, several as a list.
            let packets = match attr(e, NFTA_SET_ELEM_EXPR) {
                Some(x) => counter_packets(x),
                None => {
                    attrs(attr(e, NFTA_SET_ELEM_EXPRESSIONS)?).find_map(|(_, x)| counter_packets(x))
                }
            }?;
            Some((key, packets))
        })
        .collect()
}

/// The packets of a `counter` expression; `None` for any other expression.
fn counter_packets(expr: &[u8]) -> Option<u64> {
    if attr(expr, NFTA_EXPR_NAME).map(attr_string).as_deref() != Some("counter") {
        return None;
    }
    let p = attr(attr(expr, NFTA_EXPR_DATA)?, NFTA_COUNTER_PACKETS)?;
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

/// Packets counted by drop and reject rules of `inet kvmnet`, summed per chain, for the
/// chains `wanted` accepts.
pub fn rule_drops(wanted: impl Fn(&str) -> bool) -> Result<HashMap<String, Dropped>, CounterError> {
    let mut out = HashMap::new();
    let Some(mut sock) = open_socket()? else {
        return Ok(out);
    };
    let rules = read_rule_dump(&mut sock)?;
    for p in rules {
        let Some(chain) = attr(&p, NFTA_RULE_CHAIN).map(attr_string) else {
            continue;
        };
        if attr(&p, NFTA_RULE_TABLE).map(attr_string).as_deref() != Some(nft::TABLE)
            || !wanted(&chain)
        {
            continue;
        }
        if let Some((verdict, packets)) = attr(&p, NFTA_RULE_EXPRESSIONS).and_then(rule_counter) {
            let d: &mut Dropped = out.entry(chain).or_default();
            match verdict {
                Verdict::Drop => d.drops += packets,
                Verdict::Reject => d.rejects += packets,
            }
        }
    }
    Ok(out)
}

fn read_rule_dump(sock: &mut Nfnl) -> Result<Vec<Vec<u8>>, NftError> {
    Ok(sock
        .dump(
            "list firewall rules",
            NFT_MSG_GETRULE,
            NFPROTO_INET,
            &[(NFTA_RULE_TABLE, nft::TABLE)],
        )?
        .unwrap_or_default())
}

/// A rule's counter and verdict, when it counts and then drops or rejects.
fn rule_counter(exprs: &[u8]) -> Option<(Verdict, u64)> {
    let mut packets = None;
    let mut verdict = None;
    for (t, x) in attrs(exprs) {
        if t != NFTA_LIST_ELEM {
            continue;
        }
        let name = attr(x, NFTA_EXPR_NAME).map(attr_string);
        match name.as_deref() {
            Some("counter") => packets = counter_packets(x),
            Some("reject") => verdict = Some(Verdict::Reject),
            Some("immediate") => {
                let v = attr(x, NFTA_EXPR_DATA)
                    .and_then(|d| attr(d, NFTA_IMMEDIATE_DATA))
                    .and_then(|d| attr(d, NFTA_DATA_VERDICT));
                let code = v.and_then(|v| attr(v, NFTA_VERDICT_CODE)).and_then(be32);
                let chain = v.and_then(|v| attr(v, NFTA_VERDICT_CHAIN)).map(attr_string);
                verdict = match (code, chain.as_deref()) {
                    (Some(NF_DROP), _) => Some(Verdict::Drop),
                    // `goto fw-in-drop`, `goto fw-out-reject`: the counting chains.
                    (Some(NFT_GOTO), Some(c)) if c.starts_with("fw-") && c.ends_with("-drop") => {
                        Some(Verdict::Drop)
                    }
                    (Some(NFT_GOTO), Some(c)) if c.starts_with("fw-") && c.ends_with("-reject") => {
                        Some(Verdict::Reject)
                    }
                    _ => verdict,
                };
            }
            _ => {}
        }
    }
    Some((verdict?, packets?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn counter(packets: u64) -> Vec<u8> {
        let data = [nla(1, &9u64.to_be_bytes()), nla(2, &packets.to_be_bytes())].concat();
        [
            nla(NFTA_EXPR_NAME, b"counter\0"),
            nla(NFTA_EXPR_DATA, &data),
        ]
        .concat()
    }

    #[test]
    fn set_element_counters_by_interface() {
        let key = nla(
            NFTA_SET_ELEM_KEY,
            &nla(NFTA_DATA_VALUE, b"vm1-0\0\0\0\0\0\0\0\0\0\0\0"),
        );
        let one = [key.clone(), nla(NFTA_SET_ELEM_EXPR, &counter(7))].concat();
        let listed = nla(NFTA_LIST_ELEM, &counter(3));
        let two = [key, nla(NFTA_SET_ELEM_EXPRESSIONS, &listed)].concat();
        let list = [nla(NFTA_LIST_ELEM, &one), nla(NFTA_LIST_ELEM, &two)].concat();
        let body = nla(NFTA_SET_ELEM_LIST_ELEMENTS, &list);
        let read: Vec<(String, u64)> = element_counters(&body)
            .into_iter()
            .map(|(k, n)| (attr_string(k), n))
            .collect();
        assert_eq!(read, [("vm1-0".to_string(), 7), ("vm1-0".to_string(), 3)]);
    }

    #[test]
    fn rules_count_drops_and_rejects_only() {
        let drop = {
            let code = nla(NFTA_VERDICT_CODE, &NF_DROP.to_be_bytes());
            let data = nla(NFTA_IMMEDIATE_DATA, &nla(NFTA_DATA_VERDICT, &code));
            [
                nla(NFTA_EXPR_NAME, b"immediate\0"),
                nla(NFTA_EXPR_DATA, &data),
            ]
            .concat()
        };
        let reject = nla(NFTA_EXPR_NAME, b"reject\0");
        let rule = |x: &[Vec<u8>]| {
            x.iter()
                .map(|e| nla(NFTA_LIST_ELEM, e))
                .collect::<Vec<_>>()
                .concat()
        };
        assert_eq!(
            rule_counter(&rule(&[counter(5), drop.clone()])),
            Some((Verdict::Drop, 5))
        );
        assert_eq!(
            rule_counter(&rule(&[counter(2), reject])),
            Some((Verdict::Reject, 2))
        );
        let goto = |chain: &[u8]| {
            let v = [
                nla(NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes()),
                nla(NFTA_VERDICT_CHAIN, chain),
            ]
            .concat();
            let data = nla(NFTA_IMMEDIATE_DATA, &nla(NFTA_DATA_VERDICT, &v));
            [
                nla(NFTA_EXPR_NAME, b"immediate\0"),
                nla(NFTA_EXPR_DATA, &data),
            ]
            .concat()
        };
        assert_eq!(
            rule_counter(&rule(&[counter(6), goto(b"fw-in-drop\0")])),
            Some((Verdict::Drop, 6))
        );
        assert_eq!(
            rule_counter(&rule(&[counter(1), goto(b"fw-out-reject\0")])),
            Some((Verdict::Reject, 1))
        );
        assert_eq!(rule_counter(&rule(&[counter(1), goto(b"in-x\0")])), None);
        // Uncounted drops, and counted accepts, are not drops to report.
        assert_eq!(rule_counter(&rule(&[drop])), None);
        assert_eq!(rule_counter(&rule(&[counter(4)])), None);
    }
}
