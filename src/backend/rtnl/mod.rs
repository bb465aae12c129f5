//! A small rtnetlink client: link/address/route/FDB dumps and batched changes of links,
//! addresses, routes, FDB entries and bridge ports, on the shared netlink framing.
//!
//! Changes go through [`Netlink::execute`], pipelined: a window of requests per `sendmsg`
//! (see `netlink::socket`). Two kernel costs dominate at scale and are dodged here: a bridge
//! enabling a port whose stale operstate still says "up" (see the sync RTM_GETLINK in
//! `encode`), and the RCU barrier every single RTM_DELLINK pays ([`Netlink::delete_links`]
//! deletes many links in one go).

mod consts;
mod encode;
mod parse;
pub(crate) use parse::parse_stats64;
mod request;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::RawFd;

pub(crate) use consts::{
    IFF_UP, IFLA_EXT_MASK, IFLA_GROUP, IFLA_IFALIAS, IFLA_IFNAME, IFLA_INFO_KIND, IFLA_LINKINFO,
    IFLA_STATS64, IFNAMSIZ, RTEXT_FILTER_SKIP_STATS,
};
pub(crate) use encode::{ACK, CREATE, ifinfomsg};
pub use request::{NewLinkKind, Request};
pub use types::{
    AddrInfo, BondOptions, FdbEntry, LinkInfo, LinkStats, RTPROT_RA, Route6Info, RouteInfo,
    TunInfo, VxlanInfo,
};

pub use crate::backend::netlink::NetlinkError;

/// The link group a link kvmnet makes with `RTM_NEWLINK` is born in. The kernel ignores an
/// alias (kvmnet's mark) in `RTM_NEWLINK`, so the mark follows in a second request; a process
/// killed in between would leave a link nobody recognises. The group is set in the creating
/// request itself and put back to 0 with the mark: a link still in it was made by a kvmnet
/// that did not finish, and the next apply or destroy removes it. ("Kvn" and a zero byte.)
pub const HALF_MADE_GROUP: u32 = 0x4b76_6e00;

use self::consts::AF_BRIDGE;
use self::encode::{Deferred, Pending, encode, ifaddrmsg, ndmsg, rtmsg, set_alias_by_name};
use self::parse::{parse_addr, parse_addr6, parse_fdb, parse_link, parse_route, parse_route6};
use self::request::check_ifname;
use crate::backend::netlink::attr::u32_at;
use crate::backend::netlink::consts::{
    NLM_F_REQUEST, RTM_DELLINK, RTM_GETADDR, RTM_GETLINK, RTM_GETNEIGH, RTM_GETROUTE, RTM_SETLINK,
};
use crate::backend::netlink::socket::{WINDOW_BYTES, in_netns};
use crate::backend::netlink::{MsgBuf, Options, Socket, WindowError, attr, attr_u32, kernel_err};

/// An rtnetlink socket in one network namespace, and the buffer its windows are built in.
pub struct Netlink {
    sock: Socket,
    sbuf: MsgBuf,
}

/// Why one request of a batch failed.
enum Failure {
    /// errno, extended ack, what had already happened (for a deferred step).
    Kernel(i32, Option<String>, Option<String>),
    Send(i32),
    Lost,
    Invalid(String),
    Other(String),
}

impl Failure {
    /// What becomes of the requests a window left unanswered.
    fn unanswered(e: &WindowError) -> Failure {
        match e {
            WindowError::Lost => Failure::Lost,
            e => Failure::Send(e.errno()),
        }
    }
}

/// All links on `sock` (RTM_GETLINK dump), without traffic counters when `skip_stats`:
/// much less for the kernel to fill in when only names, indexes and marks matter.
pub(crate) fn dump_links(
    sock: &mut Socket,
    skip_stats: bool,
) -> Result<Vec<LinkInfo>, NetlinkError> {
    let mut hdr = MsgBuf::new();
    hdr.bytes(&ifinfomsg(0, 0, 0));
    if skip_stats {
        hdr.attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
    }
    let dumped = sock.dump("list links", RTM_GETLINK, hdr.as_bytes())?;
    // A half-made link is not there yet for anyone who plans (see `HALF_MADE_GROUP`).
    Ok(dumped
        .iter()
        .filter_map(|p| parse_link(p))
        .filter(|l| l.group != HALF_MADE_GROUP)
        .collect())
}

/// One RTM_GETLINK on `sock` by index or name; Ok(None) if there is no such link.
pub(crate) fn get_link(
    sock: &mut Socket,
    op: &str,
    index: u32,
    name: Option<&str>,
) -> Result<Option<LinkInfo>, NetlinkError> {
    let seq = sock.next_seq();
    let mut b = MsgBuf::new();
    let start = b.begin(RTM_GETLINK, NLM_F_REQUEST, seq);
    b.bytes(&ifinfomsg(index, 0, 0));
    if let Some(n) = name {
        b.attr_str(IFLA_IFNAME, n);
    }
    b.end(start);
    let reply = sock
        .request(b.as_bytes(), seq)
        .map_err(|e| e.into_error("send link request", "receive link reply"))?;
    let protocol = |reason: &str| NetlinkError::Protocol {
        op: op.to_string(),
        reason: reason.into(),
    };
    match (reply.errno, reply.payload) {
        (0, Some(p)) => parse_link(&p)
            .map(Some)
            .ok_or_else(|| protocol("short link message")),
        (0, None) => Err(protocol("ack without a link")),
        (libc::ENODEV, _) => Ok(None),
        (e, _) => Err(kernel_err(op.to_string(), e, reply.ext)),
    }
}

impl Netlink {
    /// Open a socket bound in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink, NetlinkError> {
        Ok(Netlink {
            sock: Socket::open(libc::NETLINK_ROUTE, &Options::REQUESTS)?,
            sbuf: MsgBuf::with_capacity(WINDOW_BYTES),
        })
    }

    /// Open a socket bound in the namespace `netns_fd` refers to (the calling thread switches
    /// there for the `socket` call and back).
    pub fn open_in(netns_fd: RawFd) -> Result<Netlink, NetlinkError> {
        in_netns(netns_fd, Netlink::open)
    }

    /// All links (RTM_GETLINK dump).
    pub fn links(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        dump_links(&mut self.sock, false)
    }

    /// [`Netlink::links`] without traffic counters: much less for the kernel to fill in when
    /// only names, indexes and marks matter.
    pub fn links_without_stats(&mut self) -> Result<Vec<LinkInfo>, NetlinkError> {
        dump_links(&mut self.sock, true)
    }

    /// The link called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        if check_ifname(name).is_err() {
            return Ok(None);
        }
        get_link(
            &mut self.sock,
            &format!("look up link {name}"),
            0,
            Some(name),
        )
    }

    /// The link with index `index`, if there is one.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>, NetlinkError> {
        if index == 0 || index > i32::MAX as u32 {
            return Ok(None);
        }
        get_link(
            &mut self.sock,
            &format!("look up link index {index}"),
            index,
            None,
        )
    }

    /// All IPv4 addresses.
    pub fn addrs(&mut self) -> Result<Vec<AddrInfo>, NetlinkError> {
        let dumped = self
            .sock
            .dump("list IPv4 addresses", RTM_GETADDR, &ifaddrmsg(0, 0))?;
        Ok(dumped.iter().filter_map(|p| parse_addr(p)).collect())
    }

    /// All global IPv6 addresses: (link index, address).
    pub fn addrs6(&mut self) -> Result<Vec<(u32, crate::spec::Ipv6Cidr)>, NetlinkError> {
        let dumped = self.sock.dump(
            "list IPv6 addresses",
            RTM_GETADDR,
            &encode::ifaddrmsg6(0, 0),
        )?;
        Ok(dumped.iter().filter_map(|p| parse_addr6(p)).collect())
    }

    /// Permanent global IPv6 addresses (set by hand or by kvmnet, not by SLAAC or a DHCPv6
    /// client, which give theirs lifetimes): (link index, address).
    pub fn permanent_addrs6(&mut self) -> Result<Vec<(u32, crate::spec::Ipv6Cidr)>, NetlinkError> {
        let dumped = self.sock.dump(
            "list IPv6 addresses",
            RTM_GETADDR,
            &encode::ifaddrmsg6(0, 0),
        )?;
        Ok(dumped
            .iter()
            .filter_map(|p| parse::parse_addr6_flags(p))
            .filter(|(_, _, flags)| flags & consts::IFA_F_PERMANENT != 0)
            .map(|(i, a, _)| (i, a))
            .collect())
    }

    /// All IPv6 routes of all tables.
    pub fn routes6(&mut self) -> Result<Vec<Route6Info>, NetlinkError> {
        let dumped = self
            .sock
            .dump("list IPv6 routes", RTM_GETROUTE, &encode::rtmsg6(0, 0, 0))?;
        Ok(dumped.iter().filter_map(|p| parse_route6(p)).collect())
    }

    /// All IPv4 routes of all tables (local and broadcast routes of table 255 included).
    pub fn routes(&mut self) -> Result<Vec<RouteInfo>, NetlinkError> {
        let dumped = self
            .sock
            .dump("list IPv4 routes", RTM_GETROUTE, &rtmsg(0, 0, 0, 0, 0))?;
        Ok(dumped.iter().filter_map(|p| parse_route(p)).collect())
    }

    /// All bridge-family FDB entries with an IPv4 destination or none (`bridge fdb show`).
    pub fn fdb(&mut self) -> Result<Vec<FdbEntry>, NetlinkError> {
        let dumped =
            self.sock
                .dump("list fdb entries", RTM_GETNEIGH, &ndmsg(AF_BRIDGE, 0, 0, 0))?;
        Ok(dumped.iter().filter_map(|p| parse_fdb(p)).collect())
    }

    /// Apply many requests, pipelined: each window of requests goes out in one `sendmsg`
    /// (each message with NLM_F_ACK), then its acks are collected. The kernel applies them in
    /// order and carries on past a failure. Returns one result per request, in order.
    pub fn execute(&mut self, reqs: &[Request]) -> Vec<Result<(), NetlinkError>> {
        let mut failures: Vec<Option<Failure>> = (0..reqs.len()).map(|_| None).collect();
        let mut i = 0;
        while i < reqs.len() {
            self.sbuf.clear();
            let mut pending: HashMap<u32, Pending> = HashMap::new();
            let mut deferred = Vec::new();
            let mut count = 0;
            while i < reqs.len()
                && count < self.sock.window()
                && self.sbuf.len() < self.sock.max_send()
            {
                let mark = self.sbuf.len();
                let dmark = deferred.len();
                let sock = &mut self.sock;
                let mut seqs = || sock.next_seq();
                let encoded = encode(
                    &mut self.sbuf,
                    &mut seqs,
                    &reqs[i],
                    i,
                    &mut pending,
                    &mut deferred,
                );
                if let Err(reason) = encoded {
                    self.sbuf.truncate(mark);
                    deferred.truncate(dmark);
                    pending.retain(|_, p| p.req != i);
                    failures[i] = Some(Failure::Invalid(reason));
                }
                count += 1;
                i += 1;
            }
            self.send_window(&mut pending, &mut failures);
            self.set_new_aliases(deferred, &mut failures);
        }
        self.render(reqs, failures)
    }

    /// Turn per-request failures into results whose messages name the objects.
    fn render(
        &mut self,
        reqs: &[Request],
        failures: Vec<Option<Failure>>,
    ) -> Vec<Result<(), NetlinkError>> {
        let mut names: HashMap<u32, Option<String>> = HashMap::new();
        let failed = failures.iter().filter(|f| f.is_some()).count();
        if failed > 16 {
            // One dump beats many lookups.
            if let Ok(links) = self.links() {
                names = links.into_iter().map(|l| (l.index, Some(l.name))).collect();
                for r in reqs {
                    if let Some(ix) = r.link_index() {
                        names.entry(ix).or_insert(None);
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(reqs.len());
        for (req, f) in reqs.iter().zip(failures) {
            let Some(f) = f else {
                out.push(Ok(()));
                continue;
            };
            // Name the link in the message when it still exists.
            let name = match req.link_index() {
                Some(ix) => names
                    .entry(ix)
                    .or_insert_with(|| self.link_by_index(ix).ok().flatten().map(|l| l.name))
                    .clone(),
                None => None,
            };
            let op = req.describe(name.as_deref());
            out.push(Err(match f {
                Failure::Kernel(errno, ext, None) => kernel_err(op, errno, ext),
                Failure::Kernel(errno, ext, Some(context)) => {
                    kernel_err(format!("{op}: {context}"), errno, ext)
                }
                Failure::Send(errno) => NetlinkError::Kernel {
                    op: format!("{op}: send"),
                    source: io::Error::from_raw_os_error(errno),
                    ext: None,
                },
                Failure::Lost => NetlinkError::AckLost { op },
                Failure::Invalid(reason) => NetlinkError::Invalid { op, reason },
                Failure::Other(reason) => NetlinkError::Other { op, reason },
            }));
        }
        out
    }

    /// Delete many links at once. One RTM_DELLINK per link costs the kernel an RCU barrier
    /// each (~30 ms: 1,000 taps take half a minute); instead this tags the links with a
    /// scratch link group (pipelined) and deletes that group with one RTM_DELLINK, which
    /// unregisters them together. If the kernel refuses the group delete, falls back to one
    /// DelLink per link. One result per index, in order; messages as for DelLink.
    pub fn delete_links(&mut self, indexes: &[u32]) -> Vec<Result<(), NetlinkError>> {
        let dels: Vec<Request> = indexes
            .iter()
            .map(|&index| Request::DelLink { index })
            .collect();
        if indexes.len() < 4 {
            return self.execute(&dels);
        }
        let Ok(groups) = self.link_groups() else {
            return self.execute(&dels);
        };
        let used: HashSet<u32> = groups.values().copied().collect();
        let mut group = 0x6b76_0000 | (std::process::id() & 0xffff);
        while group == 0 || used.contains(&group) {
            group = group.wrapping_add(1);
        }
        let failures = self.tag_links(indexes, group);
        let group_failure = self.send_group_delete(group);
        let mut out = self.render(&dels, failures);
        if group_failure.is_some() {
            // One by one; put back the group of any link that still exists afterwards.
            let tagged: Vec<usize> = (0..indexes.len()).filter(|&i| out[i].is_ok()).collect();
            let reqs: Vec<Request> = tagged.iter().map(|&i| dels[i].clone()).collect();
            let res = self.execute(&reqs);
            let mut kept = Vec::new();
            for (&i, r) in tagged.iter().zip(res) {
                if r.is_err() {
                    kept.push((i, indexes[i], groups.get(&indexes[i]).copied().unwrap_or(0)));
                }
                out[i] = r;
            }
            self.set_groups(&kept);
        }
        out
    }

    /// The link group of every link, by index.
    fn link_groups(&mut self) -> Result<HashMap<u32, u32>, NetlinkError> {
        let dumped = self
            .sock
            .dump("list links", RTM_GETLINK, &ifinfomsg(0, 0, 0))?;
        Ok(dumped
            .iter()
            .filter(|p| p.len() >= 16)
            .map(|p| {
                let group = attr(&p[16..], IFLA_GROUP).and_then(attr_u32);
                (u32_at(p, 4), group.unwrap_or(0))
            })
            .collect())
    }

    /// Put each of `indexes` into link group `group`, pipelined; the failures, by position.
    fn tag_links(&mut self, indexes: &[u32], group: u32) -> Vec<Option<Failure>> {
        let mut failures: Vec<Option<Failure>> = (0..indexes.len()).map(|_| None).collect();
        let mut i = 0;
        while i < indexes.len() {
            self.sbuf.clear();
            let mut pending = HashMap::new();
            let mut count = 0;
            while i < indexes.len()
                && count < self.sock.window()
                && self.sbuf.len() < self.sock.max_send()
            {
                let index = indexes[i];
                if index == 0 || index > i32::MAX as u32 {
                    failures[i] = Some(Failure::Invalid(format!(
                        "link index {index} is out of range"
                    )));
                } else {
                    let seq = self.sock.next_seq();
                    pending.insert(
                        seq,
                        Pending {
                            req: i,
                            sync: false,
                        },
                    );
                    let start = self.sbuf.begin(RTM_SETLINK, ACK, seq);
                    self.sbuf.bytes(&ifinfomsg(index, 0, 0));
                    self.sbuf.attr_u32(IFLA_GROUP, group);
                    self.sbuf.end(start);
                }
                count += 1;
                i += 1;
            }
            self.send_window(&mut pending, &mut failures);
        }
        failures
    }

    /// One RTM_DELLINK for every link of `group`; what went wrong, if anything.
    fn send_group_delete(&mut self, group: u32) -> Option<Failure> {
        let mut failure = vec![None];
        self.sbuf.clear();
        let seq = self.sock.next_seq();
        let start = self.sbuf.begin(RTM_DELLINK, ACK, seq);
        self.sbuf.bytes(&ifinfomsg(0, 0, 0));
        self.sbuf.attr_u32(IFLA_GROUP, group);
        self.sbuf.end(start);
        let only = Pending {
            req: 0,
            sync: false,
        };
        self.send_window(&mut HashMap::from([(seq, only)]), &mut failure);
        failure.pop().flatten()
    }

    /// Deletes every link of link group `group` in one request (`ip link delete group N`).
    /// Ok when the group has none.
    pub fn delete_group(&mut self, group: u32) -> Result<(), NetlinkError> {
        match self.send_group_delete(group) {
            None | Some(Failure::Kernel(libc::ENODEV, _, _)) => Ok(()),
            Some(f) => self
                .render(&[Request::DelLink { index: 0 }], vec![Some(f)])
                .pop()
                .unwrap_or(Ok(()))
                .map_err(|e| NetlinkError::Other {
                    op: format!("delete link group {group:#x}"),
                    reason: e.to_string(),
                }),
        }
    }

    /// Put links back into their groups: (position, index, group) each, in one window;
    /// failures are not reported (the link is what it is either way).
    fn set_groups(&mut self, links: &[(usize, u32, u32)]) {
        self.sbuf.clear();
        let mut pending = HashMap::new();
        for &(i, index, group) in links {
            let seq = self.sock.next_seq();
            pending.insert(
                seq,
                Pending {
                    req: i,
                    sync: false,
                },
            );
            let start = self.sbuf.begin(RTM_SETLINK, ACK, seq);
            self.sbuf.bytes(&ifinfomsg(index, 0, 0));
            self.sbuf.attr_u32(IFLA_GROUP, group);
            self.sbuf.end(start);
        }
        let len = links.iter().map(|l| l.0 + 1).max().unwrap_or(0);
        let mut ignore: Vec<Option<Failure>> = (0..len).map(|_| None).collect();
        self.send_window(&mut pending, &mut ignore);
    }

    /// Send `sbuf` (the messages in `pending`) and collect the acks; a failure goes to the
    /// request the message belongs to (not for a sync RTM_GETLINK: see `encode`).
    fn send_window(
        &mut self,
        pending: &mut HashMap<u32, Pending>,
        failures: &mut [Option<Failure>],
    ) {
        let answered = self.sock.exchange(self.sbuf.as_bytes(), pending, |p, a| {
            if a.errno != 0 && !p.sync {
                failures[p.req].get_or_insert(Failure::Kernel(a.errno, a.ext, None));
            }
        });
        if let Err(e) = answered {
            for p in pending.values() {
                failures[p.req].get_or_insert(Failure::unanswered(&e));
            }
            pending.clear();
        }
    }

    /// Set the aliases of links created successfully in the last window: by name, through
    /// this socket or, for a veth peer created in another namespace, through one opened
    /// there (one per namespace).
    fn set_new_aliases(&mut self, deferred: Vec<Deferred>, failures: &mut [Option<Failure>]) {
        let mut by_ns: Vec<(Option<RawFd>, Vec<Deferred>)> = Vec::new();
        for d in deferred.into_iter().filter(|d| failures[d.req].is_none()) {
            match by_ns.iter_mut().find(|(fd, _)| *fd == d.netns_fd) {
                Some((_, v)) => v.push(d),
                None => by_ns.push((d.netns_fd, vec![d])),
            }
        }
        for (fd, items) in by_ns {
            let mut other;
            let nl = match fd {
                None => &mut *self,
                Some(fd) => match Netlink::open_in(fd) {
                    Ok(n) => {
                        other = n;
                        &mut other
                    }
                    Err(e) => {
                        for d in items {
                            failures[d.req] = Some(Failure::Other(format!(
                                "created, but cannot reach the namespace of veth peer {} to \
                                 set its alias: {e}",
                                d.name
                            )));
                        }
                        continue;
                    }
                },
            };
            nl.set_aliases(&items, failures);
        }
    }

    /// [`Netlink::set_new_aliases`] of the links this socket reaches.
    fn set_aliases(&mut self, items: &[Deferred], failures: &mut [Option<Failure>]) {
        self.sbuf.clear();
        let mut pending = HashMap::new();
        for d in items {
            let seq = self.sock.next_seq();
            pending.insert(
                seq,
                Pending {
                    req: d.req,
                    sync: false,
                },
            );
            set_alias_by_name(&mut self.sbuf, seq, d);
        }
        let mut scratch: Vec<Option<Failure>> = (0..failures.len()).map(|_| None).collect();
        self.send_window(&mut pending, &mut scratch);
        for d in items {
            if let Some(f) = scratch[d.req].take() {
                let context = format!(
                    "created, but could not set the alias of {} afterwards",
                    d.name
                );
                failures[d.req] = Some(match f {
                    Failure::Kernel(errno, ext, _) => Failure::Kernel(errno, ext, Some(context)),
                    Failure::Send(errno) => Failure::Kernel(errno, None, Some(context)),
                    Failure::Lost => Failure::Other(format!(
                        "{context}: no acknowledgement (receive buffer overrun)"
                    )),
                    other => other,
                });
            }
        }
    }
}
