//! The kernel's change notifications, for a daemon that keeps what it observed up to date:
//! rtnetlink (links, IPv4 addresses and routes, traffic control) and nfnetlink (nftables).
//! Each socket is non-blocking; `drain` reads everything queued and says what changed.
//! A notification lost to a full socket buffer is reported as `overflow`: then nothing
//! short of reading everything again is safe.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::netlink::{attr_string, attrs, messages, open_socket, sockopt};

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
const NETLINK_NETFILTER: libc::c_int = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
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
    /// The elements of a set changed.
    Elements(String),
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

    pub fn merge(&mut self, other: Changes) {
        self.overflow |= other.overflow;
        self.links.extend(other.links);
        self.addrs |= other.addrs;
        self.routes |= other.routes;
        self.tc.extend(other.tc);
        self.nft.extend(other.nft);
        self.nft_elements.extend(other.nft_elements);
    }
}

struct Socket {
    fd: OwnedFd,
}

impl Socket {
    fn open(
        protocol: libc::c_int,
        groups: u32,
        extra_group: Option<u32>,
    ) -> Result<Socket, EventsError> {
        let err = |op| move |source| EventsError { op, source };
        // Room for a burst (a bulk apply notifies thousands of objects) between two drains.
        let fd = open_socket(protocol, libc::SOCK_NONBLOCK, 32 << 20, groups)
            .map_err(err("open a netlink socket"))?;
        if let Some(g) = extra_group {
            sockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                libc::NETLINK_ADD_MEMBERSHIP,
                g as libc::c_int,
            )
            .map_err(err("join a netlink group"))?;
        }
        Ok(Socket { fd })
    }

    /// Every queued datagram, handed to `f`; false when some were lost (ENOBUFS).
    fn drain(&self, buf: &mut [u8], mut f: impl FnMut(&[u8])) -> Result<bool, EventsError> {
        let mut complete = true;
        loop {
            // SAFETY: buf is valid for writing buf.len() bytes.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(complete),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        complete = false;
                        continue;
                    }
                    _ => {
                        return Err(EventsError {
                            op: "read notifications",
                            source: e,
                        });
                    }
                }
            }
            let n = r as usize;
            if n > buf.len() {
                complete = false;
                continue;
            }
            f(&buf[..n]);
        }
    }
}

/// Subscriptions in the network namespace the caller is in.
pub struct Events {
    route: Socket,
    /// None on a kernel without nfnetlink (then there are no nftables tables to watch).
    nft: Option<Socket>,
    buf: Vec<u8>,
}

impl Events {
    pub fn open() -> Result<Events, EventsError> {
        let route = Socket::open(
            libc::NETLINK_ROUTE,
            RTMGRP_LINK | RTMGRP_TC | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE,
            None,
        )?;
        let nft = match Socket::open(NETLINK_NETFILTER, 0, Some(NFNLGRP_NFTABLES)) {
            Ok(s) => Some(s),
            Err(e) if e.source.raw_os_error() == Some(libc::EPROTONOSUPPORT) => None,
            Err(e) => return Err(e),
        };
        Ok(Events {
            route,
            nft,
            buf: vec![0; 1 << 20],
        })
    }

    /// What changed since the last call. Traffic-control notifications caused by the
    /// sockets `readers` (ports of sockets that only read) are not changes.
    pub fn drain(&mut self, readers: &[u32]) -> Result<Changes, EventsError> {
        let mut c = Changes::default();
        let complete = self
            .route
            .drain(&mut self.buf, |d| route_changes(d, readers, &mut c))?;
        c.overflow |= !complete;
        if let Some(nft) = &self.nft {
            let complete = nft.drain(&mut self.buf, |d| nft_changes(d, &mut c))?;
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
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;

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
        let get = |ty: u16| {
            attrs(body)
                .find(|(t, _)| *t == ty)
                .map(|(_, v)| attr_string(v))
        };
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
