//! Reading kvmnet's nftables tables over nfnetlink: the table's mark and object count, base
//! chain hooks, rule comments, sets and their elements, as binary dumps of exactly kvmnet's
//! tables. Messages only: the socket, requests and dumps are the shared netlink framing's.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::netlink::consts::{NETLINK_NETFILTER, NLM_F_REQUEST};
use super::netlink::{MsgBuf, NetlinkError, Options, Socket, attr, attr_string, attrs};
use super::nft_words::{key_text, range_text, set_type, typeof_comment, value_text};
use super::nftables::NftError;
use crate::nft::{self, NftRule};

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
pub(super) const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NFPROTO_BRIDGE: u8 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USE: u16 = 3;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
pub(crate) const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(crate) const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
pub(crate) const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_DATA_TYPE: u16 = 6;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(crate) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(crate) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
/// The last key of a range in a set with a concatenated interval key.
const NFTA_SET_ELEM_KEY_END: u16 = 10;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// libnftnl's user data of a rule or table: (type, length, value) triples; type 0 is the
/// comment.
const UDATA_COMMENT: u8 = 0;
const NFTA_SET_USERDATA: u16 = 13;

pub(super) fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

fn comment(udata: &[u8]) -> Option<String> {
    let mut p = udata;
    while p.len() >= 2 {
        let (ty, len) = (p[0], p[1] as usize);
        let v = p.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            return Some(attr_string(v));
        }
        p = &p[2 + len..];
    }
    None
}

/// An nfnetlink socket reading kvmnet's tables.
pub(super) struct Nfnl {
    sock: Socket,
}

/// The nftables error for a failure of the socket or a refusal of the kernel.
pub(super) fn nft_err(op: &str, e: NetlinkError) -> NftError {
    match e {
        NetlinkError::Socket { op, source } => NftError::Socket { op, source },
        NetlinkError::Kernel { source, .. } => NftError::Kernel {
            op: op.to_string(),
            message: source.to_string(),
        },
        NetlinkError::Interrupted { .. } => NftError::Kernel {
            op: op.to_string(),
            message: "the ruleset kept changing while being read".into(),
        },
        other => NftError::Kernel {
            op: op.to_string(),
            message: other.to_string(),
        },
    }
}

/// `struct nfgenmsg` (family, version 0, resource id 0), then string attributes.
fn header(b: &mut MsgBuf, family: u8, attrs: &[(u16, &str)]) {
    b.bytes(&[family, 0, 0, 0]);
    for (ty, v) in attrs {
        b.attr_str(*ty, v);
    }
}

/// A message's attributes, after the nfgenmsg header.
fn body(mut payload: Vec<u8>) -> Vec<u8> {
    payload.drain(..payload.len().min(4));
    payload
}

impl Nfnl {
    fn open() -> Result<Nfnl, NftError> {
        let opts = Options {
            groups: 0,
            nonblock: false,
            // Replies to a whole pipeline of requests queue up before we read them.
            rcvbuf: 8 << 20,
            sndbuf: None,
            ext_acks: false,
            recv_len: 1 << 20,
        };
        let sock = Socket::open(NETLINK_NETFILTER, &opts).map_err(|e| NftError::Socket {
            op: "socket",
            source: e.into_io(),
        })?;
        Ok(Nfnl { sock })
    }

    /// One request (not a dump) for the object `attrs` name: the attributes of its answer
    /// (None if there is none), or the errno it failed with.
    fn get(
        &mut self,
        msg: u16,
        family: u8,
        attrs: &[(u16, &str)],
    ) -> Result<Result<Option<Vec<u8>>, i32>, NftError> {
        let seq = self.sock.next_seq();
        let mut b = MsgBuf::new();
        let start = b.begin((NFNL_SUBSYS_NFTABLES << 8) | msg, NLM_F_REQUEST, seq);
        header(&mut b, family, attrs);
        b.end(start);
        let reply = self
            .sock
            .request(b.as_bytes(), seq)
            .map_err(|e| nft_err("request", e.into_error("send", "receive")))?;
        Ok(match reply.errno {
            0 => Ok(reply.payload.map(body)),
            e => Err(e),
        })
    }

    /// One dump: the attributes of every message. `None` when the object asked about does
    /// not exist.
    pub(super) fn dump(
        &mut self,
        op: &str,
        msg: u16,
        family: u8,
        filter: &[(u16, &str)],
    ) -> Result<Option<Vec<Vec<u8>>>, NftError> {
        let mut h = MsgBuf::new();
        header(&mut h, family, filter);
        match self
            .sock
            .dump(op, (NFNL_SUBSYS_NFTABLES << 8) | msg, h.as_bytes())
        {
            Ok(payloads) => Ok(Some(payloads.into_iter().map(body).collect())),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(nft_err(op, e)),
        }
    }
}

fn hook_name(family: u8, num: u32) -> String {
    // The bridge family numbers its hooks like inet (NF_BR_PRE_ROUTING = 0, ...).
    let _ = family;
    match num {
        0 => "prerouting",
        1 => "input",
        2 => "forward",
        3 => "output",
        4 => "postrouting",
        5 => "ingress",
        _ => return format!("hook{num}"),
    }
    .to_string()
}

/// A base chain's header rebuilt from the kernel's answer, in [`nft::hook_line`]'s words.
fn chain_hook(family: u8, p: &[u8]) -> Option<String> {
    let hook = attr(p, NFTA_CHAIN_HOOK)?;
    let num = be32(attr(hook, NFTA_HOOK_HOOKNUM)?)?;
    let prio = be32(attr(hook, NFTA_HOOK_PRIORITY)?)? as i32;
    let ty = attr(p, NFTA_CHAIN_TYPE).map_or("filter".to_string(), attr_string);
    let accept = attr(p, NFTA_CHAIN_POLICY)
        .and_then(be32)
        .is_none_or(|v| v == 1);
    Some(nft::hook_line(&ty, &hook_name(family, num), prio, accept))
}

fn verdict_text(p: &[u8]) -> String {
    let code = attr(p, NFTA_VERDICT_CODE).and_then(be32).map(|c| c as i32);
    let chain = attr(p, NFTA_VERDICT_CHAIN).map(attr_string);
    match (code, chain) {
        (Some(-3), Some(c)) => format!("jump {c}"),
        (Some(-4), Some(c)) => format!("goto {c}"),
        (Some(0), _) => "drop".into(),
        (Some(1), _) => "accept".into(),
        (Some(-5), _) => "return".into(),
        (Some(-1), _) => "continue".into(),
        (c, _) => format!("verdict {c:?}"),
    }
}

/// The elements in set-element messages of a set of type `ty`, in nft's words.
pub(super) fn elements(ty: &str, dumps: &[Vec<u8>]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in dumps {
        let Some(list) = attr(p, NFTA_SET_ELEM_LIST_ELEMENTS) else {
            continue;
        };
        for (_, e) in attrs(list) {
            if attr(e, NFTA_SET_ELEM_FLAGS)
                .and_then(be32)
                .is_some_and(|f| f & NFT_SET_ELEM_INTERVAL_END != 0)
            {
                continue;
            }
            let Some(k) = attr(e, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE)) else {
                continue;
            };
            let end = attr(e, NFTA_SET_ELEM_KEY_END).and_then(|k| attr(k, NFTA_DATA_VALUE));
            let mut text = range_text(ty, k, end);
            let data = attr(e, NFTA_SET_ELEM_DATA);
            if let Some(v) = data.and_then(|d| attr(d, NFTA_DATA_VERDICT)) {
                text = format!("{text} : {}", verdict_text(v));
            } else if let Some(v) = data.and_then(|d| attr(d, NFTA_DATA_VALUE)) {
                text = format!("{text} : {}", value_text(ty, v));
            }
            out.insert(text);
        }
    }
    out
}

/// What the kernel holds in one of kvmnet's tables, as read over nfnetlink: the table's mark
/// and object count, every chain (with its hook), the rule hashes of each chain, and the
/// named sets with their elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FamilyRaw {
    pub(super) mark: Option<String>,
    pub(super) uses: u32,
    pub(super) chains: BTreeMap<String, Option<String>>,
    pub(super) rules: BTreeMap<String, Vec<NftRule>>,
    pub(super) sets: BTreeMap<String, SetRaw>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct SetRaw {
    /// In nft's words (see [`nft_words`]).
    pub(super) ty: String,
    pub(super) flags: u32,
    pub(super) elements: BTreeSet<String>,
}

/// Interval sets keep an element as two entries, and timed elements leave silently: those
/// sets are read again rather than followed element by element.
pub(super) const NFT_SET_INTERVAL: u32 = 0x4;
pub(super) const NFT_SET_TIMEOUT: u32 = 0x10;

pub(super) fn family_number(family: &str) -> u8 {
    if family == nft::FAMILY {
        NFPROTO_INET
    } else {
        NFPROTO_BRIDGE
    }
}

fn kernel_error(op: String, errno: i32) -> NftError {
    NftError::Kernel {
        op,
        message: io::Error::from_raw_os_error(errno).to_string(),
    }
}

/// The table's mark and object count; `None` when it does not exist.
pub(super) fn read_table_head(
    sock: &mut Nfnl,
    family: &str,
) -> Result<Option<(Option<String>, u32)>, NftError> {
    match sock.get(
        NFT_MSG_GETTABLE,
        family_number(family),
        &[(NFTA_TABLE_NAME, nft::TABLE)],
    )? {
        Ok(Some(t)) => Ok(Some((
            attr(&t, NFTA_TABLE_USERDATA).and_then(comment),
            attr(&t, NFTA_TABLE_USE).and_then(be32).unwrap_or(0),
        ))),
        // No nf_tables here at all: then there is no table either.
        Err(libc::ENOENT | libc::EOPNOTSUPP | libc::EAFNOSUPPORT) | Ok(None) => Ok(None),
        Err(e) => Err(kernel_error(
            format!("read table {family} {}", nft::TABLE),
            e,
        )),
    }
}

/// Rules of the table (or of one chain), grouped by chain, in order.
pub(super) fn read_rules(
    sock: &mut Nfnl,
    family: &str,
    chain: Option<&str>,
) -> Result<BTreeMap<String, Vec<NftRule>>, NftError> {
    let table = nft::TABLE;
    let mut filter = vec![(NFTA_RULE_TABLE, table)];
    if let Some(c) = chain {
        filter.push((NFTA_RULE_CHAIN, c));
    }
    let mut rules: BTreeMap<String, Vec<NftRule>> = BTreeMap::new();
    for p in sock
        .dump(
            "list rules",
            NFT_MSG_GETRULE,
            family_number(family),
            &filter,
        )?
        .unwrap_or_default()
    {
        if attr(&p, NFTA_RULE_TABLE).map(attr_string).as_deref() != Some(table) {
            continue;
        }
        let Some(name) = attr(&p, NFTA_RULE_CHAIN).map(attr_string) else {
            continue;
        };
        if chain.is_some_and(|c| c != name) {
            continue;
        }
        let hash = attr(&p, NFTA_RULE_USERDATA)
            .and_then(comment)
            .unwrap_or_default();
        rules.entry(name).or_default().push(NftRule {
            hash,
            text: String::new(),
        });
    }
    Ok(rules)
}

/// One chain's hook (`Some(None)` for a regular chain); `None` when there is no such chain.
pub(super) fn read_chain(
    sock: &mut Nfnl,
    family: &str,
    name: &str,
) -> Result<Option<Option<String>>, NftError> {
    let fam = family_number(family);
    match sock.get(
        NFT_MSG_GETCHAIN,
        fam,
        &[(NFTA_CHAIN_TABLE, nft::TABLE), (NFTA_CHAIN_NAME, name)],
    )? {
        Ok(Some(p)) => Ok(Some(chain_hook(fam, &p))),
        Err(libc::ENOENT) | Ok(None) => Ok(None),
        Err(e) => Err(kernel_error(
            format!("read chain {family} {} {name}", nft::TABLE),
            e,
        )),
    }
}

/// A named set's type and elements; `None` for an anonymous set (they belong to rules).
fn set_raw(sock: &mut Nfnl, family: &str, p: &[u8]) -> Result<Option<(String, SetRaw)>, NftError> {
    let flags = attr(p, NFTA_SET_FLAGS).and_then(be32).unwrap_or(0);
    if flags & NFT_SET_ANONYMOUS != 0 {
        return Ok(None);
    }
    let Some(name) = attr(p, NFTA_SET_NAME).map(attr_string) else {
        return Ok(None);
    };
    let ty = match attr(p, NFTA_SET_USERDATA).and_then(typeof_comment) {
        Some(t) => t,
        None => set_type(
            attr(p, NFTA_SET_KEY_TYPE).and_then(be32).unwrap_or(0),
            attr(p, NFTA_SET_DATA_TYPE).and_then(be32),
        ),
    };
    let elements = read_elements(sock, family, &name, &ty)?;
    Ok(Some((
        name,
        SetRaw {
            ty,
            flags,
            elements,
        },
    )))
}

fn read_elements(
    sock: &mut Nfnl,
    family: &str,
    set: &str,
    ty: &str,
) -> Result<BTreeSet<String>, NftError> {
    let dumps = sock
        .dump(
            "list set elements",
            NFT_MSG_GETSETELEM,
            family_number(family),
            &[
                (NFTA_SET_ELEM_LIST_TABLE, nft::TABLE),
                (NFTA_SET_ELEM_LIST_SET, set),
            ],
        )?
        .unwrap_or_default();
    Ok(elements(ty, &dumps))
}

/// One named set, read again; `None` when it is gone (or anonymous).
pub(super) fn read_set(
    sock: &mut Nfnl,
    family: &str,
    name: &str,
) -> Result<Option<SetRaw>, NftError> {
    match sock.get(
        NFT_MSG_GETSET,
        family_number(family),
        &[(NFTA_SET_TABLE, nft::TABLE), (NFTA_SET_NAME, name)],
    )? {
        Ok(Some(p)) => Ok(set_raw(sock, family, &p)?.map(|(_, s)| s)),
        Err(libc::ENOENT) | Ok(None) => Ok(None),
        Err(e) => Err(kernel_error(
            format!("read set {family} {} {name}", nft::TABLE),
            e,
        )),
    }
}

/// The keys of the elements in a set-element message, in nft's words.
pub(super) fn element_keys(ty: &str, body: &[u8]) -> Vec<String> {
    let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attrs(list)
        .filter_map(|(_, e)| attr(e, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE)))
        .map(|k| key_text(ty, k))
        .collect()
}

/// One of kvmnet's tables as the kernel has it, or `None` when it does not exist.
pub(super) fn read_family(sock: &mut Nfnl, family: &str) -> Result<Option<FamilyRaw>, NftError> {
    let Some((mark, uses)) = read_table_head(sock, family)? else {
        return Ok(None);
    };
    let fam = family_number(family);
    let table = nft::TABLE;
    // The kernel dumps the chains of every table of the family; ours are picked out.
    let mut chains = BTreeMap::new();
    for p in sock
        .dump(
            "list chains",
            NFT_MSG_GETCHAIN,
            fam,
            &[(NFTA_CHAIN_TABLE, table)],
        )?
        .unwrap_or_default()
    {
        if attr(&p, NFTA_CHAIN_TABLE).map(attr_string).as_deref() != Some(table) {
            continue;
        }
        if let Some(name) = attr(&p, NFTA_CHAIN_NAME).map(attr_string) {
            chains.insert(name, chain_hook(fam, &p));
        }
    }
    let rules = read_rules(sock, family, None)?;
    let mut sets = BTreeMap::new();
    for p in sock
        .dump("list sets", NFT_MSG_GETSET, fam, &[(NFTA_SET_TABLE, table)])?
        .unwrap_or_default()
    {
        if attr(&p, NFTA_SET_TABLE).map(attr_string).as_deref() != Some(table) {
            continue;
        }
        if let Some((name, s)) = set_raw(sock, family, &p)? {
            sets.insert(name, s);
        }
    }
    Ok(Some(FamilyRaw {
        mark,
        uses,
        chains,
        rules,
        sets,
    }))
}

pub(super) fn open_socket() -> Result<Option<Nfnl>, NftError> {
    match Nfnl::open() {
        Ok(s) => Ok(Some(s)),
        // A kernel without nfnetlink has no tables of ours.
        Err(NftError::Socket { source, .. })
            if source.raw_os_error() == Some(libc::EPROTONOSUPPORT) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Other firewall managers whose rules are in nftables here, as `(manager, where)`:
/// firewalld (its table `inet firewalld`) and ufw (chains `ufw-*`/`ufw6-*`, which iptables-nft
/// keeps in tables `ip filter` and `ip6 filter`). Each rejects forwarded traffic it was not
/// told about, whatever their base chains' policies say.
pub fn foreign_firewalls() -> Result<Vec<(String, String)>, NftError> {
    let Some(mut sock) = open_socket()? else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (family, fam) in [("ip", 2), ("ip6", 10), ("inet", NFPROTO_INET)] {
        let chains = match sock.dump("list chains", NFT_MSG_GETCHAIN, fam, &[]) {
            Ok(c) => c.unwrap_or_default(),
            Err(NftError::Kernel { .. }) => continue,
            Err(e) => return Err(e),
        };
        for p in chains {
            let table = attr(&p, NFTA_CHAIN_TABLE)
                .map(attr_string)
                .unwrap_or_default();
            let name = attr(&p, NFTA_CHAIN_NAME)
                .map(attr_string)
                .unwrap_or_default();
            let found = if family == "inet" && table == "firewalld" {
                ("firewalld", "table inet firewalld".to_string())
            } else if name.starts_with("ufw-") || name.starts_with("ufw6-") {
                ("ufw", format!("chains ufw-* of table {family} {table}"))
            } else {
                continue;
            };
            if !out.iter().any(|(m, w)| m == found.0 && *w == found.1) {
                out.push((found.0.to_string(), found.1));
            }
        }
    }
    Ok(out)
}

/// Base chains on the forward hook with policy drop in tables that are not kvmnet's, of
/// the families that see forwarded or bridged traffic, as `(family, table, chain)`: `doctor`
/// warns of them (iptables' FORWARD policy DROP, as Docker sets it, is one through
/// iptables-nft).
pub fn foreign_forward_drops() -> Result<Vec<(String, String, String)>, NftError> {
    let Some(mut sock) = open_socket()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (family, fam) in [
        ("ip", 2),
        ("ip6", 10),
        ("inet", NFPROTO_INET),
        ("bridge", NFPROTO_BRIDGE),
    ] {
        let chains = match sock.dump("list chains", NFT_MSG_GETCHAIN, fam, &[]) {
            Ok(c) => c.unwrap_or_default(),
            // No nf_tables for this family here: no chains either.
            Err(NftError::Kernel { .. }) => continue,
            Err(e) => return Err(e),
        };
        for p in chains {
            let table = attr(&p, NFTA_CHAIN_TABLE).map(attr_string);
            let Some(table) = table.filter(|t| t != nft::TABLE) else {
                continue;
            };
            let hook = attr(&p, NFTA_CHAIN_HOOK);
            let forward = hook.and_then(|h| attr(h, NFTA_HOOK_HOOKNUM)).and_then(be32) == Some(2);
            // NF_DROP is 0, NF_ACCEPT 1.
            let drop = attr(&p, NFTA_CHAIN_POLICY).and_then(be32) == Some(0);
            let name = attr(&p, NFTA_CHAIN_NAME).map(attr_string);
            if let (true, true, Some(name)) = (forward, drop, name) {
                out.push((family.to_string(), table, name));
            }
        }
    }
    Ok(out)
}
