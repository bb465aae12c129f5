//! The kernel's change notifications, for a daemon that keeps what it observed up to date:
//! rtnetlink (links, IPv4 addresses and routes, traffic control) and nfnetlink (nftables).
//! Each socket is non-blocking; `drain` reads everything queued and says what changed.
//! A notification lost to a full socket buffer is reported as `overflow`: then nothing
//! short of reading everything again is safe.

use std::collections::BTreeSet;
use std::io;

use super::netlink::consts::{
    NETLINK_NETFILTER, RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK,
    RTM_NEWROUTE,
};
use super::netlink::{Options, Socket, attr, attr_string, attrs, messages};
use super::nfnetlink::{
    NFNL_SUBSYS_NFTABLES, NFTA_CHAIN_NAME, NFTA_RULE_CHAIN, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_NAME,
};

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} for kernel notifications: {source}")]
pub struct EventsError {
    op: &'static str,
    source: io::Error,
}

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_TC: u32 = 0x8;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
/// A bridge's IPv6 gateway address removed by hand is drift like an IPv4 one.
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const NFNLGRP_NFTABLES: u32 = 7;

/// Qdiscs, classes, filters (36..=47) and tc chains (100..=103).
fn is_tc(ty: u16) -> bool {
    (36..=47).contains(&ty) || (100..=103).contains(&ty)
}

/// What an nftables notification is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NftObject {
    Table,
    /// A chain (by name) was made, changed or removed.
    Chain(String),
    /// The rules of a chain changed.
    Rules(String),
    /// A set (by name) was made or removed.
    Set(String),
    /// Anything else kept in the table (stateful objects, flowtables...).
    Other,
}

/// What changed since the last drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Notifications were lost: everything may have changed.
    pub overflow: bool,
    /// Links (by index) made, changed or removed.
    pub links: BTreeSet<u32>,
    pub addrs: bool,
    pub routes: bool,
    /// Devices (by index) whose traffic control changed.
    pub tc: BTreeSet<u32>,
    /// nftables objects changed, by family number (`NFPROTO_*`) and table name.
    pub nft: BTreeSet<(u8, String, NftObject)>,
    /// Set elements added or removed, in order: what the notifications carry is enough to
    /// follow a set of thousands without reading it again.
    pub nft_elements: Vec<ElementChange>,
}

/// One notification about set elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElementChange {
    pub family: u8,
    pub table: String,
    pub set: String,
    pub added: bool,
    /// The message's attributes (after the nfgenmsg header).
    pub body: Vec<u8>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// A non-blocking socket subscribed to `groups` (and `extra_group`, past the 32 a bind can
/// name).
fn subscribe(
    protocol: libc::c_int,
    groups: u32,
    extra_group: Option<u32>,
) -> Result<Socket, EventsError> {
    let opts = Options {
        groups,
        nonblock: true,
        // Room for a burst (a bulk apply notifies thousands of objects) between two drains.
        rcvbuf: 32 << 20,
        sndbuf: None,
        ext_acks: false,
        recv_len: 1 << 20,
    };
    let sock = Socket::open(protocol, &opts).map_err(|e| EventsError {
        op: "open a netlink socket",
        source: e.into_io(),
    })?;
    if let Some(g) = extra_group {
        sock.join_group(g).map_err(|source| EventsError {
            op: "join a netlink group",
            source,
        })?;
    }
    Ok(sock)
}

/// Every datagram queued on `sock`, handed to `f`; false when some were lost (ENOBUFS, or
/// one too big for the buffer).
fn drain(sock: &mut Socket, mut f: impl FnMut(&[u8])) -> Result<bool, EventsError> {
    let mut complete = true;
    loop {
        match sock.recv(true) {
            Ok(n) => f(sock.received(n)),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => return Ok(complete),
            Err(e)
                if e.raw_os_error() == Some(libc::ENOBUFS)
                    || e.kind() == io::ErrorKind::InvalidData =>
            {
                complete = false;
            }
            Err(source) => {
                return Err(EventsError {
                    op: "read notifications",
                    source,
                });
            }
        }
    }
}

/// Subscriptions in the network namespace the caller is in.
pub struct Events {
    route: Socket,
    /// None on a kernel without nfnetlink (then there are no nftables tables to watch).
    nft: Option<Socket>,
}

impl Events {
    pub fn open() -> Result<Events, EventsError> {
        let route = subscribe(
            libc::NETLINK_ROUTE,
            RTMGRP_LINK | RTMGRP_TC | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR,
            None,
        )?;
        let nft = match subscribe(NETLINK_NETFILTER, 0, Some(NFNLGRP_NFTABLES)) {
            Ok(s) => Some(s),
            Err(e) if e.source.raw_os_error() == Some(libc::EPROTONOSUPPORT) => None,
            Err(e) => return Err(e),
        };
        Ok(Events { route, nft })
    }

    /// What changed since the last call. Traffic-control notifications caused by the
    /// sockets `readers` (ports of sockets that only read) are not changes.
    pub fn drain(&mut self, readers: &[u32]) -> Result<Changes, EventsError> {
        let mut c = Changes::default();
        let complete = drain(&mut self.route, |d| route_changes(d, readers, &mut c))?;
        c.overflow |= !complete;
        if let Some(nft) = &mut self.nft {
            let complete = drain(nft, |d| nft_changes(d, &mut c))?;
            c.overflow |= !complete;
        }
        Ok(c)
    }
}

fn index_at(payload: &[u8], off: usize) -> Option<u32> {
    let b = payload.get(off..off + 4)?;
    Some(i32::from_ne_bytes(b.try_into().ok()?) as u32)
}

fn route_changes(datagram: &[u8], readers: &[u32], c: &mut Changes) {
    for m in messages(datagram) {
        if is_tc(m.ty) && readers.contains(&m.pid) {
            continue;
        }
        match m.ty {
            // ifinfomsg and tcmsg both keep the interface index at offset 4.
            RTM_NEWLINK | RTM_DELLINK => match index_at(m.payload, 4) {
                Some(i) => {
                    c.links.insert(i);
                }
                None => c.overflow = true,
            },
            RTM_NEWADDR | RTM_DELADDR => c.addrs = true,
            RTM_NEWROUTE | RTM_DELROUTE => c.routes = true,
            t if is_tc(t) => match index_at(m.payload, 4) {
                Some(i) => {
                    c.tc.insert(i);
                }
                None => c.overflow = true,
            },
            _ => {}
        }
    }
}

// nftables message types and the attributes that name what they are about. Every object's
// table is its attribute 1.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_DESTROYTABLE: u16 = 26;
const NFT_MSG_DESTROYCHAIN: u16 = 27;
const NFT_MSG_DESTROYRULE: u16 = 28;
const NFT_MSG_DESTROYSET: u16 = 29;
const NFT_MSG_DESTROYSETELEM: u16 = 30;
const ATTR_TABLE: u16 = 1;

fn nft_changes(datagram: &[u8], c: &mut Changes) {
    for m in messages(datagram) {
        if m.ty >> 8 != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let msg = m.ty & 0xff;
        if msg == NFT_MSG_NEWGEN {
            continue;
        }
        let Some(&family) = m.payload.first() else {
            continue;
        };
        let body = m.payload.get(4..).unwrap_or(&[]);
        let get = |ty: u16| attr(body, ty).map(attr_string);
        let Some(table) = get(ATTR_TABLE) else {
            continue;
        };
        let named = |ty: u16, f: fn(String) -> NftObject| get(ty).map_or(NftObject::Table, f);
        let obj = match msg {
            NFT_MSG_NEWTABLE | NFT_MSG_DELTABLE | NFT_MSG_DESTROYTABLE => NftObject::Table,
            NFT_MSG_NEWCHAIN | NFT_MSG_DELCHAIN | NFT_MSG_DESTROYCHAIN => {
                named(NFTA_CHAIN_NAME, NftObject::Chain)
            }
            NFT_MSG_NEWRULE | NFT_MSG_DELRULE | NFT_MSG_DESTROYRULE => {
                named(NFTA_RULE_CHAIN, NftObject::Rules)
            }
            NFT_MSG_NEWSET | NFT_MSG_DELSET | NFT_MSG_DESTROYSET => {
                named(NFTA_SET_NAME, NftObject::Set)
            }
            NFT_MSG_NEWSETELEM | NFT_MSG_DELSETELEM | NFT_MSG_DESTROYSETELEM => {
                let listed = attrs(body).any(|(t, _)| t == NFTA_SET_ELEM_LIST_ELEMENTS);
                match get(NFTA_SET_ELEM_LIST_SET) {
                    // A notification without its elements (a flush) says only "this set".
                    Some(set) if !listed => NftObject::Set(set),
                    Some(set) => {
                        c.nft_elements.push(ElementChange {
                            family,
                            table,
                            set,
                            added: msg == NFT_MSG_NEWSETELEM,
                            body: body.to_vec(),
                        });
                        continue;
                    }
                    None => NftObject::Table,
                }
            }
            _ => NftObject::Other,
        };
        c.nft.insert((family, table, obj));
    }
}
