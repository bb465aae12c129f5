//! kvmnet's two nftables tables, and only those. Changes go through `nft -f -`, one script per
//! change so every change is a single transaction. Observation reads the tables through our
//! own nfnetlink socket (table comment and object count, rule comments, sets and their
//! elements, base chain hooks): binary dumps of exactly kvmnet's tables, cheap even with
//! thousands of rules. Rules are read back as text (`nft list`) only where a change has to be
//! undoable: the chains that change or go away, or everything when the tables get replaced.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use crate::backend::netlink::{Msg, attr_string, attrs, messages, parse_error};
use crate::backend::nft_words::{key_text, set_type, typeof_comment, value_text};
use crate::nft::{self, NftChain, NftChange, NftRule, NftSet, NftTable};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft ({0}); install the nftables package")]
    Missing(std::io::Error),
    #[error("nft rejected kvmnet's tables: {0}")]
    Rejected(String),
    #[error("nft list: {0}")]
    List(String),
    #[error("nftables netlink: {op}: {source}")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("nftables netlink: {op}: {message}")]
    Kernel { op: String, message: String },
}

fn nft() -> Command {
    let mut c = Command::new("nft");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::statedir::share_locks_with(&mut c);
    c
}

pub fn available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `nft list ARGS`: `None` when the object does not exist.
fn list(args: &[&str]) -> Result<Option<String>, NftError> {
    let out = match nft().arg("list").args(args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => return Err(NftError::Missing(e)),
    };
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NftError::List(err.trim().to_string()))
    }
}

fn run_script(script: &str) -> Result<(), NftError> {
    let mut child = nft().args(["-f", "-"]).spawn().map_err(NftError::Missing)?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(NftError::Missing)?;
    let out = child.wait_with_output().map_err(NftError::Missing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Replace kvmnet's tables with `to` (or remove them) in one transaction.
pub fn replace(to: Option<&NftTable>) -> Result<(), NftError> {
    run_script(&nft::replace_script(to))
}

/// Make the changes, all in one transaction: all of them happen or none.
pub fn change(changes: &[&NftChange]) -> Result<(), NftError> {
    let mut script = String::new();
    for c in changes {
        c.script(&mut script);
    }
    run_script(&script)
}

// ---- nfnetlink ----

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_GETSET: u16 = 10;
const NFT_MSG_GETSETELEM: u16 = 13;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_USE: u16 = 3;
const NFTA_TABLE_USERDATA: u16 = 6;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
/// libnftnl's user data of a rule or table: (type, length, value) triples; type 0 is the
/// comment.
const UDATA_COMMENT: u8 = 0;
const NFTA_SET_USERDATA: u16 = 13;

fn be32(p: &[u8]) -> Option<u32> {
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

struct Socket {
    fd: OwnedFd,
    seq: u32,
    rbuf: Vec<u8>,
}

fn sock_err(op: &'static str) -> impl FnOnce(io::Error) -> NftError {
    move |source| NftError::Socket { op, source }
}

impl Socket {
    fn open() -> Result<Socket, NftError> {
        // Replies to a whole pipeline of requests queue up before we read them.
        let fd = super::netlink::open_socket(NETLINK_NETFILTER, 0, 8 << 20, 0)
            .map_err(sock_err("socket"))?;
        Ok(Socket {
            fd,
            seq: 0,
            rbuf: vec![0; 1 << 20],
        })
    }

    /// Appends one request to `buf`; returns its sequence number.
    fn request(
        &mut self,
        buf: &mut Vec<u8>,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: &[(u16, &str)],
    ) -> u32 {
        self.seq += 1;
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        buf.extend_from_slice(&self.seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id 0.
        buf.extend_from_slice(&[family, 0, 0, 0]);
        for (ty, v) in attrs {
            let len = 4 + v.len() + 1;
            buf.extend_from_slice(&(len as u16).to_ne_bytes());
            buf.extend_from_slice(&ty.to_ne_bytes());
            buf.extend_from_slice(v.as_bytes());
            buf.push(0);
            while !buf.len().is_multiple_of(4) {
                buf.push(0);
            }
        }
        let len = (buf.len() - start) as u32;
        buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.seq
    }

    fn send(&self, buf: &[u8]) -> Result<(), NftError> {
        super::netlink::send_to_kernel(self.fd.as_raw_fd(), buf).map_err(sock_err("send"))
    }

    fn recv(&mut self) -> Result<usize, NftError> {
        loop {
            // SAFETY: rbuf is valid for writing rbuf.len() bytes.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.rbuf.as_mut_ptr().cast(),
                    self.rbuf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if r >= 0 {
                let n = r as usize;
                if n > self.rbuf.len() {
                    return Err(sock_err("receive")(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message truncated",
                    )));
                }
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(sock_err("receive")(e));
            }
        }
    }

    /// Sends requests already in `buf` (sequence numbers `seqs`, none of them dumps) and
    /// collects each one's answer: its attributes, or the errno it failed with.
    fn exchange(
        &mut self,
        buf: &[u8],
        seqs: &[u32],
    ) -> Result<BTreeMap<u32, Result<Vec<u8>, i32>>, NftError> {
        let mut out = BTreeMap::new();
        if seqs.is_empty() {
            return Ok(out);
        }
        self.send(buf)?;
        while out.len() < seqs.len() {
            let n = self.recv()?;
            for m in messages(&self.rbuf[..n]) {
                if !seqs.contains(&m.seq) {
                    continue;
                }
                if m.ty == NLMSG_ERROR {
                    let errno = parse_error(&m).map_or(libc::EIO, |e| e.0);
                    if errno != 0 {
                        out.insert(m.seq, Err(errno));
                    }
                } else {
                    out.insert(m.seq, Ok(body(&m).to_vec()));
                }
            }
        }
        Ok(out)
    }

    /// One dump: the attributes of every message. `None` when the object asked about does
    /// not exist.
    fn dump(
        &mut self,
        op: &str,
        msg: u16,
        family: u8,
        filter: &[(u16, &str)],
    ) -> Result<Option<Vec<Vec<u8>>>, NftError> {
        'retry: for _ in 0..5 {
            let mut buf = Vec::new();
            let seq = self.request(&mut buf, msg, NLM_F_DUMP, family, filter);
            self.send(&buf)?;
            let mut out = Vec::new();
            loop {
                let n = self.recv()?;
                let mut done = false;
                let mut interrupted = false;
                for m in messages(&self.rbuf[..n]) {
                    if m.seq != seq {
                        continue;
                    }
                    interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                    match m.ty {
                        NLMSG_DONE => done = true,
                        NLMSG_ERROR => {
                            let errno = parse_error(&m).map_or(libc::EIO, |e| e.0);
                            if errno == libc::ENOENT {
                                return Ok(None);
                            }
                            if errno != 0 {
                                return Err(NftError::Kernel {
                                    op: op.to_string(),
                                    message: io::Error::from_raw_os_error(errno).to_string(),
                                });
                            }
                            done = true;
                        }
                        _ => out.push(body(&m).to_vec()),
                    }
                }
                if done {
                    if interrupted {
                        // The tables changed while being read: read them again.
                        continue 'retry;
                    }
                    return Ok(Some(out));
                }
            }
        }
        Err(NftError::Kernel {
            op: op.to_string(),
            message: "the ruleset kept changing while being read".into(),
        })
    }
}

/// A message's attributes, after the nfgenmsg header.
fn body<'a>(m: &Msg<'a>) -> &'a [u8] {
    m.payload.get(4..).unwrap_or(&[])
}

fn attr(p: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(p).find(|(t, _)| *t == ty).map(|(_, v)| v)
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
fn elements(ty: &str, dumps: &[Vec<u8>]) -> BTreeSet<String> {
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
            let mut text = key_text(ty, k);
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
struct FamilyRaw {
    mark: Option<String>,
    uses: u32,
    chains: BTreeMap<String, Option<String>>,
    rules: BTreeMap<String, Vec<NftRule>>,
    sets: BTreeMap<String, SetRaw>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SetRaw {
    /// In nft's words (see [`nft_words`]).
    ty: String,
    flags: u32,
    elements: BTreeSet<String>,
}

/// Interval sets keep an element as two entries, and timed elements leave silently: those
/// sets are read again rather than followed element by element.
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_TIMEOUT: u32 = 0x10;

fn family_number(family: &str) -> u8 {
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
fn read_table_head(
    sock: &mut Socket,
    family: &str,
) -> Result<Option<(Option<String>, u32)>, NftError> {
    let mut buf = Vec::new();
    let seq = sock.request(
        &mut buf,
        NFT_MSG_GETTABLE,
        0,
        family_number(family),
        &[(NFTA_TABLE_NAME, nft::TABLE)],
    );
    match sock.exchange(&buf, &[seq])?.remove(&seq) {
        Some(Ok(t)) => Ok(Some((
            attr(&t, NFTA_TABLE_USERDATA).and_then(comment),
            attr(&t, NFTA_TABLE_USE).and_then(be32).unwrap_or(0),
        ))),
        // No nf_tables here at all: then there is no table either.
        Some(Err(libc::ENOENT | libc::EOPNOTSUPP | libc::EAFNOSUPPORT)) | None => Ok(None),
        Some(Err(e)) => Err(kernel_error(
            format!("read table {family} {}", nft::TABLE),
            e,
        )),
    }
}

/// Rules of the table (or of one chain), grouped by chain, in order.
fn read_rules(
    sock: &mut Socket,
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
fn read_chain(
    sock: &mut Socket,
    family: &str,
    name: &str,
) -> Result<Option<Option<String>>, NftError> {
    let fam = family_number(family);
    let mut buf = Vec::new();
    let seq = sock.request(
        &mut buf,
        NFT_MSG_GETCHAIN,
        0,
        fam,
        &[(NFTA_CHAIN_TABLE, nft::TABLE), (NFTA_CHAIN_NAME, name)],
    );
    match sock.exchange(&buf, &[seq])?.remove(&seq) {
        Some(Ok(p)) => Ok(Some(chain_hook(fam, &p))),
        Some(Err(libc::ENOENT)) | None => Ok(None),
        Some(Err(e)) => Err(kernel_error(
            format!("read chain {family} {} {name}", nft::TABLE),
            e,
        )),
    }
}

/// A named set's type and elements; `None` for an anonymous set (they belong to rules).
fn set_raw(
    sock: &mut Socket,
    family: &str,
    p: &[u8],
) -> Result<Option<(String, SetRaw)>, NftError> {
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
    sock: &mut Socket,
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
fn read_set(sock: &mut Socket, family: &str, name: &str) -> Result<Option<SetRaw>, NftError> {
    let mut buf = Vec::new();
    let seq = sock.request(
        &mut buf,
        NFT_MSG_GETSET,
        0,
        family_number(family),
        &[(NFTA_SET_TABLE, nft::TABLE), (NFTA_SET_NAME, name)],
    );
    match sock.exchange(&buf, &[seq])?.remove(&seq) {
        Some(Ok(p)) => Ok(set_raw(sock, family, &p)?.map(|(_, s)| s)),
        Some(Err(libc::ENOENT)) | None => Ok(None),
        Some(Err(e)) => Err(kernel_error(
            format!("read set {family} {} {name}", nft::TABLE),
            e,
        )),
    }
}

/// The keys of the elements in a set-element message, in nft's words.
fn element_keys(ty: &str, body: &[u8]) -> Vec<String> {
    let Some(list) = attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Vec::new();
    };
    attrs(list)
        .filter_map(|(_, e)| attr(e, NFTA_SET_ELEM_KEY).and_then(|k| attr(k, NFTA_DATA_VALUE)))
        .map(|k| key_text(ty, k))
        .collect()
}

/// One of kvmnet's tables as the kernel has it, or `None` when it does not exist.
fn read_family(sock: &mut Socket, family: &str) -> Result<Option<FamilyRaw>, NftError> {
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

/// kvmnet's tables as last read, kept current by [`NftCache::update`] from the kernel's
/// notifications: one changed chain or set is read again, not the whole tables.
#[derive(Debug, PartialEq, Eq)]
pub struct NftCache {
    /// By family name; `None` when the kernel has no nftables at all.
    families: Option<BTreeMap<&'static str, Option<FamilyRaw>>>,
}

fn open_socket() -> Result<Option<Socket>, NftError> {
    match Socket::open() {
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

/// What [`NftCache::update`] changed: the chains and sets named (by family), elements of
/// sets (in order), or anything.
#[derive(Debug, Default)]
pub struct Touched {
    pub all: bool,
    pub chains: BTreeSet<(&'static str, String)>,
    pub sets: BTreeSet<(&'static str, String)>,
    pub elements: Vec<(&'static str, String, ElementOp)>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        !self.all && self.chains.is_empty() && self.sets.is_empty() && self.elements.is_empty()
    }
}

/// Elements added to a set (as nft writes them), or removed (by key; a map's entry goes with
/// its key).
#[derive(Debug)]
pub enum ElementOp {
    Add(Vec<String>),
    Remove(Vec<String>),
}

impl ElementOp {
    fn apply(&self, elements: &mut BTreeSet<String>) {
        match self {
            ElementOp::Add(new) => elements.extend(new.iter().cloned()),
            ElementOp::Remove(keys) => {
                for k in keys {
                    let with_data = format!("{k} : ");
                    elements.retain(|x| x != k && !x.starts_with(&with_data));
                }
            }
        }
    }
}

impl NftCache {
    /// Reads both of kvmnet's tables.
    pub fn read() -> Result<NftCache, NftError> {
        let Some(mut sock) = open_socket()? else {
            return Ok(NftCache { families: None });
        };
        let mut families = BTreeMap::new();
        for family in [nft::FAMILY, nft::BRIDGE_FAMILY] {
            families.insert(family, read_family(&mut sock, family)?);
        }
        Ok(NftCache {
            families: Some(families),
        })
    }

    /// Reads again what `changes` (notifications: family number, table, object) touched.
    pub fn update(
        &mut self,
        changes: &BTreeSet<(u8, String, crate::backend::events::NftObject)>,
        element_changes: &[crate::backend::events::ElementChange],
    ) -> Result<Touched, NftError> {
        use crate::backend::events::NftObject;
        let mut touched = Touched::default();
        let Some(families) = self.families.as_mut() else {
            return Ok(touched);
        };
        // Element changes of a set that cannot be followed count as a change of the set.
        let mut changes = changes.clone();
        let mut followed = Vec::new();
        for e in element_changes.iter().filter(|e| e.table == nft::TABLE) {
            let family = if e.family == NFPROTO_INET {
                nft::FAMILY
            } else {
                nft::BRIDGE_FAMILY
            };
            let plain = families
                .get(family)
                .and_then(|f| f.as_ref())
                .and_then(|f| f.sets.get(&e.set))
                .is_some_and(|s| s.flags & (NFT_SET_INTERVAL | NFT_SET_TIMEOUT) == 0);
            if plain {
                followed.push((family, e));
            } else {
                changes.insert((e.family, e.table.clone(), NftObject::Set(e.set.clone())));
            }
        }
        let ours: Vec<&(u8, String, NftObject)> =
            changes.iter().filter(|(_, t, _)| t == nft::TABLE).collect();
        let reread: BTreeSet<(u8, &str)> = ours
            .iter()
            .filter_map(|(f, _, o)| match o {
                NftObject::Set(s) => Some((*f, s.as_str())),
                _ => None,
            })
            .collect();
        // Followed element by element, unless the set (or its table) is read again below.
        for (family, e) in followed {
            let fam = family_number(family);
            let whole = ours
                .iter()
                .any(|(f, _, o)| *f == fam && matches!(o, NftObject::Table | NftObject::Other));
            if whole || reread.contains(&(fam, e.set.as_str())) {
                continue;
            }
            let Some(set) = families
                .get_mut(family)
                .and_then(|f| f.as_mut())
                .and_then(|f| f.sets.get_mut(&e.set))
            else {
                continue;
            };
            let op = if e.added {
                ElementOp::Add(
                    elements(&set.ty, std::slice::from_ref(&e.body))
                        .into_iter()
                        .collect(),
                )
            } else {
                ElementOp::Remove(element_keys(&set.ty, &e.body))
            };
            op.apply(&mut set.elements);
            touched.elements.push((family, e.set.clone(), op));
        }
        if ours.is_empty() {
            return Ok(touched);
        }
        let Some(mut sock) = open_socket()? else {
            return Ok(touched);
        };
        for family in [nft::FAMILY, nft::BRIDGE_FAMILY] {
            let fam = family_number(family);
            let objs: Vec<&NftObject> = ours
                .iter()
                .filter(|(f, _, _)| *f == fam)
                .map(|(_, _, o)| o)
                .collect();
            if objs.is_empty() {
                continue;
            }
            let slot = families.entry(family).or_insert(None);
            let whole = objs
                .iter()
                .any(|o| matches!(o, NftObject::Table | NftObject::Other));
            let Some(raw) = slot.as_mut().filter(|_| !whole) else {
                *slot = read_family(&mut sock, family)?;
                touched.all = true;
                continue;
            };
            let Some((mark, uses)) = read_table_head(&mut sock, family)? else {
                *slot = None;
                touched.all = true;
                continue;
            };
            raw.mark = mark;
            raw.uses = uses;
            for o in &objs {
                match o {
                    NftObject::Chain(n) | NftObject::Rules(n) => {
                        touched.chains.insert((family, n.clone()));
                    }
                    NftObject::Set(n) | NftObject::Elements(n) => {
                        touched.sets.insert((family, n.clone()));
                    }
                    _ => {}
                }
            }
            for o in &objs {
                match o {
                    NftObject::Chain(name) => match read_chain(&mut sock, family, name)? {
                        Some(hook) => {
                            raw.chains.insert(name.clone(), hook);
                        }
                        None => {
                            raw.chains.remove(name);
                            raw.rules.remove(name);
                        }
                    },
                    NftObject::Set(name) => match read_set(&mut sock, family, name)? {
                        Some(s) => {
                            raw.sets.insert(name.clone(), s);
                        }
                        None => {
                            raw.sets.remove(name);
                        }
                    },
                    _ => {}
                }
            }
            for o in &objs {
                match o {
                    NftObject::Rules(chain) => {
                        match read_rules(&mut sock, family, Some(chain))?.remove(chain.as_str()) {
                            Some(r) => {
                                raw.rules.insert(chain.clone(), r);
                            }
                            None => {
                                raw.rules.remove(chain.as_str());
                            }
                        }
                    }
                    NftObject::Elements(set) if !objs.contains(&&NftObject::Set(set.clone())) => {
                        if let Some(s) = raw.sets.get_mut(set.as_str()) {
                            s.elements = read_elements(&mut sock, family, set, &s.ty)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(touched)
    }

    /// The tables in kvmnet's terms (rule texts not read), or `None` when there are none.
    pub fn table(&self) -> Option<NftTable> {
        let mut t = self.table_head()?;
        for (family, raw) in self.families.as_ref()? {
            let Some(raw) = raw else {
                continue;
            };
            for name in raw.chains.keys() {
                if let Some(c) = chain_of(family, raw, name) {
                    t.chains.insert(format!("{family} {name}"), c);
                }
            }
            for name in raw.sets.keys() {
                if let Some(set) = set_of(family, raw, name) {
                    t.sets.insert(format!("{family} {name}"), set);
                }
            }
        }
        Some(t)
    }

    /// Brings `t` (made by [`NftCache::table`] and patched since) in line with what an update
    /// `touched`: only those chains and sets are made again.
    pub fn patch(&self, t: &mut Option<NftTable>, touched: &Touched) {
        let Some(table) = t.as_mut().filter(|_| !touched.all) else {
            *t = self.table();
            return;
        };
        let Some(head) = self.table_head() else {
            *t = None;
            return;
        };
        table.families = head.families;
        table.intact = head.intact;
        table.listing = None;
        let raw_of = |family: &str| {
            self.families
                .as_ref()
                .and_then(|f| f.get(family))
                .and_then(|r| r.as_ref())
        };
        for (family, name) in &touched.chains {
            let key = format!("{family} {name}");
            match raw_of(family).and_then(|raw| chain_of(family, raw, name)) {
                Some(c) => table.chains.insert(key, c),
                None => table.chains.remove(&key),
            };
        }
        for (family, name) in &touched.sets {
            let key = format!("{family} {name}");
            match raw_of(family).and_then(|raw| set_of(family, raw, name)) {
                Some(set) => table.sets.insert(key, set),
                None => table.sets.remove(&key),
            };
        }
        // Sets made again above already hold these.
        for (family, name, op) in &touched.elements {
            if touched.sets.contains(&(*family, name.clone())) {
                continue;
            }
            match table.sets.get_mut(&format!("{family} {name}")) {
                Some(set) => op.apply(&mut set.elements),
                None => {
                    *t = self.table();
                    return;
                }
            }
        }
    }

    /// Makes `t` (tables this cache made, then read further for a plan) what [`NftCache::table`]
    /// would make now: rule texts dropped, any chain whose rules differ made again. `false`
    /// when `t` does not hold the same chains and sets (then it is of no use).
    pub fn settle(&self, t: &mut NftTable) -> bool {
        let Some(families) = self.families.as_ref() else {
            return false;
        };
        let raws: Vec<(&str, &FamilyRaw)> = families
            .iter()
            .filter_map(|(f, r)| Some((*f, r.as_ref()?)))
            .collect();
        let (chains, sets) = raws.iter().fold((0, 0), |(c, s), (_, r)| {
            (c + r.chains.len(), s + r.sets.len())
        });
        if t.listing.is_some() || t.chains.len() != chains || t.sets.len() != sets {
            return false;
        }
        for c in t.chains.values_mut() {
            let Some((family, raw)) = raws.iter().find(|(f, _)| *f == c.family) else {
                return false;
            };
            let Some(want) = raw
                .rules
                .get(&c.name)
                .map(Vec::as_slice)
                .or_else(|| raw.chains.contains_key(&c.name).then_some(&[][..]))
            else {
                return false;
            };
            let same = c.rules.len() == want.len()
                && c.rules.iter().zip(want).all(|(a, b)| a.hash == b.hash);
            if same {
                for r in c.rules.iter_mut() {
                    r.text.clear();
                }
            } else if let Some(fresh) = chain_of(family, raw, &c.name) {
                *c = fresh;
            }
        }
        true
    }

    /// The tables without their chains and sets: which exist, and whether they are intact.
    fn table_head(&self) -> Option<NftTable> {
        let mut t = NftTable::empty();
        for (family, raw) in self.families.as_ref()? {
            let Some(raw) = raw else {
                continue;
            };
            t.families.insert(family.to_string());
            if raw.mark.as_deref() != Some(nft::OWNER_COMMENT) {
                t.intact = false;
            }
            // Everything the table holds is a chain or a set we have seen; anything else (a
            // stateful object, a flowtable) makes it unrecognised.
            if raw.uses as usize != raw.chains.len() + raw.sets.len() {
                t.intact = false;
            }
            // Rules in a chain the chain dump did not show: the tables changed mid-read.
            if raw.rules.keys().any(|c| !raw.chains.contains_key(c)) {
                t.intact = false;
            }
        }
        (!t.families.is_empty()).then_some(t)
    }
}

fn chain_of(family: &str, raw: &FamilyRaw, name: &str) -> Option<NftChain> {
    let hook = raw.chains.get(name)?;
    Some(NftChain {
        family: family.to_string(),
        name: name.to_string(),
        hook: hook.clone(),
        rules: raw.rules.get(name).cloned().unwrap_or_default(),
    })
}

fn set_of(family: &str, raw: &FamilyRaw, name: &str) -> Option<NftSet> {
    let s = raw.sets.get(name)?;
    Some(NftSet {
        family: family.to_string(),
        name: name.to_string(),
        ty: s.ty.clone(),
        elements: s.elements.clone(),
    })
}

/// Puts nft's own text of the rules into `t`: for the chains named, or for all of them
/// (keeping the whole listing) when `None`.
fn read_texts(t: &mut NftTable, which: Option<Vec<String>>) -> Result<(), NftError> {
    let families: Vec<String> = t.families.iter().cloned().collect();
    let whole = |t: &mut NftTable, keep: bool| -> Result<(), NftError> {
        let mut all = String::new();
        for fam in &families {
            let Some(text) = list(&["table", fam, nft::TABLE])? else {
                continue;
            };
            for (name, rules) in nft::parse_listing(&text) {
                if let Some(c) = t.chains.get_mut(&format!("{fam} {name}")) {
                    c.rules = rules;
                }
            }
            all.push_str(&text);
        }
        if keep {
            t.listing = Some(all);
        }
        Ok(())
    };
    match which {
        None => whole(t, true),
        // Past a handful, one listing per table is cheaper than one per chain.
        Some(keys) if keys.len() > 8 => whole(t, false),
        Some(keys) => {
            for k in keys {
                let Some((fam, name)) = k.split_once(' ') else {
                    continue;
                };
                if let Some(text) = list(&["chain", fam, nft::TABLE, name])?
                    && let Some(rules) = nft::parse_listing(&text).remove(name)
                    && let Some(c) = t.chains.get_mut(&k)
                {
                    c.rules = rules;
                }
            }
            Ok(())
        }
    }
}

/// kvmnet's tables as they are now, or `None` when there are none. `want` (what the spec
/// asks for) decides which rules are worth reading back as text.
pub fn observe(want: Option<&NftTable>) -> Result<Option<NftTable>, NftError> {
    observe_from(NftCache::read()?.table(), want, None)
}

/// [`observe`], from tables read before (and kept current since: [`NftCache::table`]). A chain whose rules carry
/// the same hashes, in the same order, as in `known` (tables kvmnet made before) takes its
/// rule texts from there: no need to ask `nft` for what kvmnet itself wrote.
pub fn observe_from(
    table: Option<NftTable>,
    want: Option<&NftTable>,
    known: Option<&NftTable>,
) -> Result<Option<NftTable>, NftError> {
    let Some(mut t) = table else {
        return Ok(None);
    };
    let mut which = nft::chains_to_read(want, &t);
    if let (Some(keys), Some(known)) = (which.as_mut(), known) {
        keys.retain(|k| {
            let (Some(have), Some(old)) = (t.chains.get_mut(k), known.chains.get(k)) else {
                return true;
            };
            let same = have.rules.len() == old.rules.len()
                && have
                    .rules
                    .iter()
                    .zip(&old.rules)
                    .all(|(h, o)| h.hash == o.hash);
            if same {
                have.rules.clone_from(&old.rules);
            }
            !same
        });
    }
    if which.as_ref().is_none_or(|w| !w.is_empty()) {
        if !available() {
            return Err(NftError::Missing(io::Error::new(
                io::ErrorKind::NotFound,
                "nft",
            )));
        }
        read_texts(&mut t, which)?;
    }
    Ok(Some(t))
}
