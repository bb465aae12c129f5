//! The tc client: an rtnetlink socket that reads devices' tc state and runs ops, pipelined.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};

use super::encode::{encode_link, encode_tc, tcmsg};
use super::model::{Class, DevTc, PortTc, Qdisc, Stats, TcObserved, TcOp, parent_name};
use super::parse::{parse_class, parse_filter, parse_qdisc};
use super::plan::{check_name, clear_ops, plan};
use super::rate::Psched;
use super::shaping::{Shaping, plan_shaping};
use super::{
    CLSACT_HANDLE, HTB_CLASS, HTB_HANDLE, PARENT_EGRESS, PARENT_INGRESS, TC_H_INGRESS, TC_H_ROOT,
    TcError,
};
use crate::backend::netlink::consts::{
    NLM_F_ACK, NLM_F_ECHO, NLM_F_REQUEST, RTM_GETQDISC, RTM_GETTCLASS, RTM_GETTFILTER,
};
use crate::backend::netlink::socket::{WINDOW_BYTES, in_netns};
use crate::backend::netlink::{MsgBuf, Options, Socket};
use crate::backend::rtnl::{self, LinkInfo, Netlink, NetlinkError};

/// Requests per window of tc changes: half of rtnetlink's default, as it always was here.
/// Link ops go in chunks of half of it, as an IFB's creation is two messages.
const WINDOW: usize = 128;

/// Per op, the errno and extended ack it failed with.
type Errors = [Option<(i32, Option<String>)>];

/// A tc client: an rtnetlink socket bound in one network namespace.
pub struct Tc {
    sock: Socket,
    /// The network namespace the socket lives in, to open a [`Netlink`] there.
    netns: File,
    clock: Psched,
}

/// The link facts tc needs (no tc state yet).
fn dev_of(l: LinkInfo) -> DevTc {
    DevTc {
        name: l.name,
        ifindex: l.index,
        kind: l.kind,
        up: l.admin_up,
        alias: l.alias,
        ..DevTc::default()
    }
}

impl Tc {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Tc, TcError> {
        let sock = Socket::open(libc::NETLINK_ROUTE, &Options::REQUESTS)?;
        let netns =
            File::open("/proc/thread-self/ns/net").map_err(|source| NetlinkError::Socket {
                op: "open the current network namespace",
                source,
            })?;
        Ok(Tc {
            sock,
            netns,
            clock: Psched::read(),
        })
    }

    /// The socket's netlink port: notifications this socket's requests cause carry it.
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// A socket in the namespace `netns_fd` refers to (the calling thread switches there for
    /// the `socket` call and back).
    pub fn open_in(netns_fd: RawFd) -> Result<Tc, TcError> {
        in_netns(netns_fd, Tc::open)
    }

    /// [`crate::backend::sysctl::disable_ipv6`] in this client's network namespace (sysctls
    /// are written in the calling thread's).
    fn disable_ipv6(&self, dev: &str) -> Result<(), String> {
        use std::os::fd::AsFd;
        crate::backend::netns::with_netns_fd(self.netns.as_fd(), "of the tc client", || {
            crate::backend::sysctl::disable_ipv6(dev)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// The scheduler clock factors this client computes with.
    pub fn clock(&self) -> Psched {
        self.clock
    }

    /// Send `b` (messages whose sequence numbers are the keys of `pending`) in one datagram
    /// and collect their acks. Failures go to `errors[pending[seq]]`.
    fn transact(
        &mut self,
        b: &MsgBuf,
        mut pending: HashMap<u32, usize>,
        errors: &mut Errors,
    ) -> Result<(), TcError> {
        self.sock
            .exchange(b.as_bytes(), &mut pending, |k, a| {
                if a.errno != 0 {
                    errors[k].get_or_insert((a.errno, a.ext));
                }
            })
            .map_err(|e| e.into_error("send tc requests", "receive acks").into())
    }

    /// Link facts by name; None if there is no such link.
    pub(super) fn link(&mut self, name: &str) -> Result<Option<DevTc>, TcError> {
        if check_name(name, "link").is_err() {
            return Ok(None);
        }
        let op = format!("look up link {name}");
        Ok(rtnl::get_link(&mut self.sock, &op, 0, Some(name))?.map(dev_of))
    }

    /// One request that is not a dump; `None` when the kernel has no such object. The kernel
    /// answers a qdisc request as a notification to every tc listener, and to the asker only
    /// when it asks for an echo (those listeners see this socket's port on it).
    fn get_one(&mut self, op: &str, ty: u16, header: &[u8]) -> Result<Option<Vec<u8>>, TcError> {
        let seq = self.sock.next_seq();
        let mut b = MsgBuf::new();
        // With an ack asked for, an answer always ends: the kernel sends nothing at all for
        // an object it would not dump (the placeholder on an unused ingress hook).
        let start = b.begin(ty, NLM_F_REQUEST | NLM_F_ECHO | NLM_F_ACK, seq);
        b.bytes(header);
        b.end(start);
        let reply = self
            .sock
            .request(b.as_bytes(), seq)
            .map_err(|e| e.into_error("send request", "receive reply"))?;
        match reply.errno {
            0 => Ok(reply.payload),
            libc::ENOENT | libc::EINVAL | libc::ENODEV => Ok(None),
            e => Err(TcError::kernel(op.to_string(), e, reply.ext)),
        }
    }

    /// One device's qdiscs, asked for where they can sit (the root, the ingress hook and the
    /// leaf of each class) rather than dumped: the kernel dumps every device's qdiscs
    /// whatever the request says, which costs milliseconds on a host with 1,000 ports.
    fn qdiscs_of(&mut self, ifindex: u32, name: &str) -> Result<Vec<Qdisc>, TcError> {
        let hdr = tcmsg(ifindex, 0, 0, 0);
        let classes: Vec<Class> = self
            .sock
            .dump(&format!("list classes of {name}"), RTM_GETTCLASS, &hdr)?
            .iter()
            .filter_map(|p| parse_class(p))
            .collect();
        let mut parents = vec![TC_H_ROOT, TC_H_INGRESS];
        parents.extend(classes.iter().map(|c| c.handle));
        let mut out: Vec<Qdisc> = Vec::new();
        for parent in parents {
            let hdr = tcmsg(ifindex, 0, parent, 0);
            let op = format!("read the qdisc of {name} at {}", parent_name(parent));
            let Some(p) = self.get_one(&op, RTM_GETQDISC, &hdr)? else {
                continue;
            };
            // The placeholder on an unused hook is not a qdisc a dump would show.
            if let Some((_, q)) = parse_qdisc(&p)
                && q.kind != "noop"
                && !out
                    .iter()
                    .any(|o| o.handle == q.handle && o.parent == q.parent)
            {
                out.push(q);
            }
        }
        Ok(out)
    }

    /// A device's tc state, read device by device (see [`Tc::qdiscs_of`]).
    fn observe_one(&mut self, name: &str, planned: bool) -> Result<Option<DevTc>, TcError> {
        let Some(mut d) = self.link(name)? else {
            return Ok(None);
        };
        d.qdiscs = self.qdiscs_of(d.ifindex, name)?;
        self.fill_dev_at(&mut d, planned)?;
        Ok(Some(d))
    }

    /// [`Tc::observe_devs`], device by device.
    pub fn observe_devs_few(&mut self, names: &[&str]) -> Result<Vec<DevTc>, TcError> {
        let mut out = Vec::new();
        for name in names {
            if let Some(d) = self.observe_one(name, false)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Qdiscs of every device, by ifindex (the kernel dumps them all at once).
    fn all_qdiscs(&mut self) -> Result<HashMap<u32, Vec<Qdisc>>, TcError> {
        let hdr = tcmsg(0, 0, 0, 0);
        let mut out: HashMap<u32, Vec<Qdisc>> = HashMap::new();
        for p in self.sock.dump("list qdiscs", RTM_GETQDISC, &hdr)? {
            if let Some((ifindex, q)) = parse_qdisc(&p) {
                out.entry(ifindex).or_default().push(q);
            }
        }
        Ok(out)
    }

    /// The statistics of every device's root qdisc, by ifindex, from one dump (metrics:
    /// shaping drops and overlimits).
    pub fn root_qdisc_stats(&mut self) -> Result<HashMap<u32, Stats>, TcError> {
        Ok(self
            .all_qdiscs()?
            .into_iter()
            .filter_map(|(i, qs)| {
                let root = qs.into_iter().find(|q| q.parent == TC_H_ROOT)?;
                Some((i, root.stats))
            })
            .collect())
    }

    /// Every link, by name, from one dump: cheaper than a lookup per name for many ports.
    fn all_links(&mut self) -> Result<HashMap<String, DevTc>, TcError> {
        // No counters: the kernel's costliest part of a link message.
        Ok(rtnl::dump_links(&mut self.sock, true)?
            .into_iter()
            .map(|l| (l.name.clone(), dev_of(l)))
            .collect())
    }

    /// Classes and filters of a device whose link facts and qdiscs are known.
    fn fill_dev(&mut self, dev: &mut DevTc) -> Result<(), TcError> {
        self.fill_dev_at(dev, false)
    }

    /// [`Tc::fill_dev`]; with `planned`, filters only where [`plan`] looks (kvmnet's HTB,
    /// its class, the clsact hooks): a classless leaf has no filters to read, and other
    /// classes are replaced with the whole tree anyway.
    fn fill_dev_at(&mut self, dev: &mut DevTc, planned: bool) -> Result<(), TcError> {
        let hdr = tcmsg(dev.ifindex, 0, 0, 0);
        let op = format!("list classes of {}", dev.name);
        dev.classes = self
            .sock
            .dump(&op, RTM_GETTCLASS, &hdr)?
            .iter()
            .filter_map(|p| parse_class(p))
            .collect();
        // Filter blocks: on each classful qdisc and class, and on clsact/ingress.
        let mut parents: Vec<u32> = Vec::new();
        for q in &dev.qdiscs {
            if q.is_default() {
                continue;
            }
            match q.kind.as_str() {
                "clsact" => parents.extend([PARENT_INGRESS, PARENT_EGRESS]),
                "ingress" => parents.push(CLSACT_HANDLE),
                _ if planned && q.handle != HTB_HANDLE => {}
                _ => parents.push(q.handle),
            }
        }
        parents.extend(
            dev.classes
                .iter()
                .map(|c| c.handle)
                .filter(|h| !planned || *h == HTB_CLASS),
        );
        let mut filters = Vec::new();
        for parent in parents {
            let hdr = tcmsg(dev.ifindex, 0, parent, 0);
            let op = format!("list filters of {} at {}", dev.name, parent_name(parent));
            match self.sock.dump(&op, RTM_GETTFILTER, &hdr) {
                Ok(ps) => filters.extend(ps.iter().filter_map(|p| parse_filter(p)).map(|mut f| {
                    f.parent = parent;
                    f
                })),
                // Classless qdiscs have no filter block to dump.
                Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        dev.filters = filters;
        Ok(())
    }

    /// The tc state of one device; None if it does not exist.
    pub fn observe_dev(&mut self, name: &str) -> Result<Option<DevTc>, TcError> {
        self.observe_one(name, false)
    }

    /// What [`plan`] needs for `port`.
    pub fn observe(&mut self, port: &PortTc) -> Result<TcObserved, TcError> {
        Ok(self.observe_many(std::slice::from_ref(port))?.remove(0))
    }

    /// [`Tc::observe`] for many ports at once: the kernel dumps the qdiscs of every device
    /// whatever the request says, so this dumps them once for all ports.
    pub fn observe_many(&mut self, ports: &[PortTc]) -> Result<Vec<TcObserved>, TcError> {
        self.observe_ports(ports, ports.len() <= 4)
    }

    /// [`Tc::observe_many`]: with `few`, device by device ([`Tc::qdiscs_of`]); otherwise
    /// from one dump of every qdisc and one of every link, cheaper for many ports.
    pub fn observe_ports(
        &mut self,
        ports: &[PortTc],
        few: bool,
    ) -> Result<Vec<TcObserved>, TcError> {
        let dumped = if few {
            None
        } else {
            Some((self.all_qdiscs()?, self.all_links()?))
        };
        let mut out = Vec::with_capacity(ports.len());
        for port in ports {
            let get = |tc: &mut Tc, name: &str| -> Result<Option<DevTc>, TcError> {
                let Some((qdiscs, links)) = &dumped else {
                    return tc.observe_one(name, true);
                };
                let Some(mut d) = links.get(name).cloned() else {
                    return Ok(None);
                };
                d.qdiscs = qdiscs.get(&d.ifindex).cloned().unwrap_or_default();
                tc.fill_dev_at(&mut d, true)?;
                Ok(Some(d))
            };
            let dev = get(self, &port.dev)?;
            let ifb = get(self, &port.ifb_dev())?;
            let mut links = BTreeMap::new();
            if let Some(m) = &port.mirror_to {
                let target = match &dumped {
                    Some((_, all)) => all.get(m).cloned(),
                    None => self.link(m)?,
                };
                if let Some(l) = target {
                    links.insert(m.clone(), l.ifindex);
                }
            }
            out.push(TcObserved {
                dev,
                ifb,
                links,
                clock: self.clock,
            });
        }
        Ok(out)
    }

    /// Run `ops` in three pipelined rounds: link creations, tc changes, link deletions (the
    /// order [`plan`] produces). The kernel carries on past a failed request; every failure is
    /// reported, naming its op.
    pub fn execute(&mut self, ops: &[TcOp]) -> Result<(), TcError> {
        let mut errors: Vec<Option<(i32, Option<String>)>> = vec![None; ops.len()];
        let mut early = Vec::new();
        self.make_ifbs(ops, &mut errors)?;
        self.run_tc_ops(ops, &mut errors, &mut early)?;
        self.delete_ifbs(ops, &mut early)?;
        let mut all = early;
        for (op, e) in ops.iter().zip(errors) {
            if let Some((errno, ext)) = e {
                all.push(TcError::kernel(op.to_string(), errno, ext));
            }
        }
        TcError::from_list(all)
    }

    /// Round 1 of [`Tc::execute`]: IFBs to create or bring up.
    fn make_ifbs(&mut self, ops: &[TcOp], errors: &mut Errors) -> Result<(), TcError> {
        let round1: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!(ops[i], TcOp::CreateIfb { .. } | TcOp::SetUp { .. }))
            .collect();
        self.run_link_ops(ops, &round1, errors)?;
        // The IFBs made, without IPv6 (an IFB carries frames, not host addresses: see
        // `sysctl::disable_ipv6`), then up.
        let made: Vec<usize> = round1
            .iter()
            .copied()
            .filter(|&k| errors[k].is_none() && matches!(ops[k], TcOp::CreateIfb { .. }))
            .collect();
        let mut ups = Vec::with_capacity(made.len());
        for &k in &made {
            let dev = ops[k].dev().to_string();
            if let Err(e) = self.disable_ipv6(&dev) {
                errors[k] = Some((libc::EIO, Some(e)));
            }
            ups.push(TcOp::SetUp { dev });
        }
        let mut up_errors = vec![None; ups.len()];
        let all: Vec<usize> = (0..ups.len()).collect();
        self.run_link_ops(&ups, &all, &mut up_errors)?;
        for (&k, e) in made.iter().zip(up_errors) {
            if e.is_some() && errors[k].is_none() {
                errors[k] = e;
            }
        }
        Ok(())
    }

    /// Round 2 of [`Tc::execute`]: tc changes, with names resolved now that the IFBs exist.
    /// An op whose device is missing goes to `early`.
    fn run_tc_ops(
        &mut self,
        ops: &[TcOp],
        errors: &mut Errors,
        early: &mut Vec<TcError>,
    ) -> Result<(), TcError> {
        let mut index: HashMap<String, Option<u32>> = HashMap::new();
        for op in ops.iter().filter(|o| !o.is_link_op()) {
            let mut names = vec![op.dev().to_string()];
            if let TcOp::AddFilter { target, .. } = op {
                names.push(target.clone());
            }
            for n in names {
                if let Entry::Vacant(e) = index.entry(n) {
                    let ix = self.link(e.key())?.map(|l| l.ifindex);
                    e.insert(ix);
                }
            }
        }
        let missing = |name: &str, op: &TcOp| TcError::NoDevice {
            what: "device",
            name: format!("{name} (needed to {op})"),
        };
        let mut i = 0;
        let tc_ops: Vec<usize> = (0..ops.len()).filter(|&i| !ops[i].is_link_op()).collect();
        while i < tc_ops.len() {
            let mut b = MsgBuf::new();
            let mut pending = HashMap::new();
            while i < tc_ops.len() && pending.len() < WINDOW && b.len() < WINDOW_BYTES {
                let k = tc_ops[i];
                i += 1;
                let op = &ops[k];
                let Some(ifindex) = index[op.dev()] else {
                    early.push(missing(op.dev(), op));
                    continue;
                };
                let target = match op {
                    TcOp::AddFilter { target, .. } => match index[target.as_str()] {
                        Some(t) => t,
                        None => {
                            early.push(missing(target, op));
                            continue;
                        }
                    },
                    _ => 0,
                };
                let seq = self.sock.next_seq();
                pending.insert(seq, k);
                encode_tc(&mut b, op, ifindex, target, seq, &self.clock);
            }
            self.transact(&b, pending, errors)?;
        }
        Ok(())
    }

    /// Round 3 of [`Tc::execute`]: IFBs to delete, all in one go: one RTM_DELLINK each would
    /// cost an RCU barrier each (~20 ms). One already gone counts as deleted.
    fn delete_ifbs(&mut self, ops: &[TcOp], early: &mut Vec<TcError>) -> Result<(), TcError> {
        let mut doomed = Vec::new();
        for (k, op) in ops.iter().enumerate() {
            if let TcOp::DeleteIfb { name } = op
                && let Some(l) = self.link(name)?
            {
                doomed.push((k, l.ifindex));
            }
        }
        if doomed.is_empty() {
            return Ok(());
        }
        let indexes: Vec<u32> = doomed.iter().map(|&(_, ix)| ix).collect();
        match Netlink::open_in(self.netns.as_raw_fd()) {
            Ok(mut nl) => {
                for (&(k, _), r) in doomed.iter().zip(nl.delete_links(&indexes)) {
                    if let Err(source) = r {
                        early.push(TcError::Link {
                            op: ops[k].to_string(),
                            source,
                        });
                    }
                }
            }
            Err(source) => early.push(TcError::Link {
                op: "delete IFBs".into(),
                source,
            }),
        }
        Ok(())
    }

    /// Link ops `which` of `ops`, pipelined, selecting the links by name.
    fn run_link_ops(
        &mut self,
        ops: &[TcOp],
        which: &[usize],
        errors: &mut Errors,
    ) -> Result<(), TcError> {
        for chunk in which.chunks(WINDOW / 2) {
            let mut b = MsgBuf::new();
            let mut pending = HashMap::new();
            for &k in chunk {
                let mut seqs = || {
                    let s = self.sock.next_seq();
                    pending.insert(s, k);
                    s
                };
                encode_link(&mut b, &ops[k], &mut seqs);
            }
            self.transact(&b, pending, errors)?;
        }
        Ok(())
    }

    /// Make the port's tc match `port` (replace semantics: only what differs changes). Returns
    /// the ops it ran. After a failure the port may be half-changed; applying the previous
    /// `PortTc` again is the way back (plans are computed from what is there).
    pub fn apply(&mut self, port: &PortTc) -> Result<Vec<TcOp>, TcError> {
        self.apply_many(std::slice::from_ref(port))
    }

    /// [`Tc::apply`] for many ports: one observation, one pipelined execution. Nothing runs
    /// if any port cannot be planned.
    pub fn apply_many(&mut self, ports: &[PortTc]) -> Result<Vec<TcOp>, TcError> {
        let observed = self.observe_many(ports)?;
        let mut ops = Vec::new();
        let mut errors = Vec::new();
        for (port, obs) in ports.iter().zip(&observed) {
            match plan(port, obs) {
                Ok(o) => ops.extend(o),
                Err(e) => errors.push(e),
            }
        }
        TcError::from_list(errors)?;
        self.execute(&ops)?;
        Ok(ops)
    }

    /// Remove a port's tc: its root and ingress/clsact qdiscs (with their classes and
    /// filters) and its IFB — `ifb`, or [`ifb_name`] of `dev` when None; the IFB is deleted
    /// only if it is an IFB not marked as another port's. Missing things are fine; keeps
    /// going and reports every error.
    pub fn clear(&mut self, dev: &str, ifb: Option<&str>) -> Result<(), TcError> {
        self.clear_many(&[(dev, ifb)])
    }

    /// [`Tc::clear`] for many ports at once (IFBs deleted together).
    pub fn clear_many(&mut self, ports: &[(&str, Option<&str>)]) -> Result<(), TcError> {
        let ports: Vec<PortTc> = ports
            .iter()
            .map(|(dev, ifb)| PortTc {
                ifb: ifb.map(str::to_string),
                ..PortTc::new(dev)
            })
            .collect();
        let observed = self.observe_many(&ports)?;
        let mut ops = Vec::new();
        for (port, obs) in ports.iter().zip(&observed) {
            ops.extend(clear_ops(port, obs));
        }
        self.execute(&ops)
    }

    /// The tc state of each named device that exists.
    pub fn observe_devs(&mut self, names: &[&str]) -> Result<Vec<DevTc>, TcError> {
        if names.len() <= 4 {
            return self.observe_devs_few(names);
        }
        let mut qdiscs = self.all_qdiscs()?;
        let mut out = Vec::new();
        for name in names {
            let Some(mut dev) = self.link(name)? else {
                continue;
            };
            dev.qdiscs = qdiscs.remove(&dev.ifindex).unwrap_or_default();
            self.fill_dev(&mut dev)?;
            out.push(dev);
        }
        Ok(out)
    }

    /// Give `dev` the shaping `want` (none: remove it). Returns the ops it ran.
    pub fn apply_shaping(
        &mut self,
        dev: &str,
        want: Option<&Shaping>,
    ) -> Result<Vec<TcOp>, TcError> {
        let Some(live) = self.observe_dev(dev)? else {
            if want.is_none() {
                return Ok(Vec::new());
            }
            return Err(TcError::NoDevice {
                what: "bridge",
                name: dev.to_string(),
            });
        };
        let ops = plan_shaping(want, &live, &self.clock)?;
        self.execute(&ops)?;
        Ok(ops)
    }
}
