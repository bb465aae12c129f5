//! VM ports made and removed in batches: taps opened, configured and made persistent in
//! pipelined chunks, veths with their far end in a namespace, macvtaps, then traffic control
//! and bridge-port flags once the whole batch exists. Apart from the executor in `mod.rs`
//! because a large apply spends its time here, and the batching has rules of its own (no
//! moment leaves an unmarked port behind).

use std::collections::HashMap;

use super::{ApplyError, Kernel, configure_port, link_tc, set_up};
use crate::backend::rtnl::{NewLinkKind, Request};
use crate::backend::{macvtap, netns, sysctl, tap, tc};
use crate::state::{PortKind, PortLink, guest_alias};

impl Kernel {
    pub(super) fn create_ports(&mut self, ports: &[&PortLink]) -> Vec<Result<(), ApplyError>> {
        let mut results: Vec<Result<(), ApplyError>> = ports.iter().map(|_| Ok(())).collect();
        let taps: Vec<(usize, &PortLink)> = ports
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, PortKind::Tap { .. }))
            .map(|(i, p)| (i, *p))
            .collect();
        self.create_taps(&taps, &mut results);
        for (i, p) in ports.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let master = match self.master_index(&p.master) {
                Ok(m) => m,
                Err(e) => {
                    results[i] = Err(e);
                    continue;
                }
            };
            match &p.kind {
                PortKind::Tap { .. } => {}
                PortKind::Macvtap {
                    uplink,
                    mode,
                    owner,
                } => {
                    results[i] = self.create_macvtap(p, uplink, *mode, *owner);
                }
                PortKind::Veth { .. } => results[i] = self.create_veth(p, master),
            }
        }
        // Traffic control once every port of the batch exists (a mirror needs its target).
        let shaped: Vec<usize> = (0..ports.len())
            .filter(|&i| results[i].is_ok() && ports[i].has_tc())
            .collect();
        if !shaped.is_empty() {
            let want: Vec<tc::PortTc> = shaped.iter().map(|&i| link_tc(ports[i])).collect();
            if let Err(e) = tc::Tc::open().and_then(|mut t| t.apply_many(&want).map(|_| ())) {
                let msg = e.to_string();
                for &i in &shaped {
                    results[i] = Err(ApplyError::TrafficControl(msg.clone()));
                }
            }
            self.record_tc(ports, &shaped, &mut results);
        }
        // Bridge-port flags exist only once a port is enslaved.
        let mut reqs = Vec::new();
        let mut owners = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            if results[i].is_ok() && p.isolated && p.master.is_some() {
                match self.idx(&p.name) {
                    Ok(index) => {
                        reqs.push(Request::SetBridgePort {
                            index,
                            isolated: true,
                        });
                        owners.push(i);
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        for (i, r) in owners.into_iter().zip(self.nl.execute(&reqs)) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
        results
    }

    /// Makes taps so that no moment leaves one behind unmarked: each is opened (alive only
    /// while its descriptor is), given its IPv6 setting and its whole configuration, mark
    /// included, in one pipelined batch, and only then made persistent. A kill at any point
    /// leaves either nothing or a marked tap that the next apply repairs or destroy removes.
    /// In chunks, to stay well under the open-files limit.
    fn create_taps(&mut self, taps: &[(usize, &PortLink)], results: &mut [Result<(), ApplyError>]) {
        const CHUNK: usize = 256;
        for chunk in taps.chunks(CHUNK) {
            let mut open = Vec::with_capacity(chunk.len());
            let mut masters = HashMap::new();
            let mut reqs = Vec::with_capacity(chunk.len());
            for &(i, p) in chunk {
                let PortKind::Tap { owner, multi_queue } = &p.kind else {
                    unreachable!("create_taps takes taps");
                };
                let made = tap::open_tap(&p.name, *owner, *multi_queue)
                    .map_err(ApplyError::from)
                    .and_then(|fd| {
                        // A bridge port needs no IPv6 of its own: the host's is on the
                        // bridge.
                        if p.master.is_some() {
                            sysctl::disable_ipv6(&p.name)?;
                        }
                        let index = tap::index_of(&p.name)
                            .ok_or_else(|| ApplyError::NoSuchLink(p.name.clone()))?;
                        let master = self.master_index(&p.master)?;
                        Ok((fd, index, master))
                    });
                match made {
                    Ok((fd, index, master)) => {
                        let mut req = configure_port(p, index, master);
                        if let Request::SetLink {
                            alias, up, master, ..
                        } = &mut req
                        {
                            *alias = Some(p.alias_before_tc());
                            *master = None;
                            // Up only once closed: while kvmnet holds it the tap has carrier,
                            // and a port that comes up with carrier and loses it a moment
                            // later costs the bridge an enable and a disable each.
                            *up = Some(false);
                        }
                        reqs.push(req);
                        masters.insert(i, master);
                        open.push((i, p, fd, index));
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
            let configured = self.nl.execute(&reqs);
            let mut ups = Vec::new();
            let mut owners = Vec::new();
            for ((i, p, fd, index), r) in open.into_iter().zip(configured) {
                // Refused (a full bridge, say): the device goes when `fd` closes.
                results[i] = r
                    .map_err(ApplyError::from)
                    .and_then(|()| tap::persist(&fd, &p.name).map_err(ApplyError::from));
                if results[i].is_ok() {
                    self.deletable.insert(p.name.clone());
                    self.index.insert(p.name.clone(), index);
                    let mut r = Request::set_link(index);
                    if let Request::SetLink { up, master, .. } = &mut r {
                        *up = Some(p.up);
                        *master = Some(masters[&i]);
                    }
                    ups.push(r);
                    owners.push(i);
                }
            }
            for (i, r) in owners.into_iter().zip(self.nl.execute(&ups)) {
                if let Err(e) = r {
                    results[i] = Err(e.into());
                }
            }
        }
    }

    /// A veth port: both ends in one request (the far end into its namespace), then the host
    /// end's IPv6 off and up on its bridge, then the far end's addresses.
    fn create_veth(&mut self, p: &PortLink, master: u32) -> Result<(), ApplyError> {
        let PortKind::Veth { netns: ns, guest } = &p.kind else {
            unreachable!("create_veth takes veths");
        };
        let fd = netns::open(ns)?;
        use std::os::fd::AsRawFd;
        Self::one(
            &mut self.nl,
            Request::NewLink {
                name: p.name.clone(),
                kind: NewLinkKind::Veth {
                    peer_name: guest.name.clone(),
                    peer_mac: Some(guest.mac),
                    peer_mtu: Some(guest.mtu),
                    peer_alias: Some(guest_alias(&p.name)),
                    peer_netns_fd: Some(fd.as_raw_fd()),
                },
                mac: Some(p.mac),
                mtu: Some(p.mtu),
                alias: Some(p.alias_before_tc()),
                master: if master == 0 { None } else { Some(master) },
                // A bridge port comes up once its IPv6 is off (as a tap does).
                up: p.up && master == 0,
            },
        )?;
        self.index.remove(&p.name);
        self.deletable.insert(p.name.clone());
        if master != 0 {
            sysctl::disable_ipv6(&p.name)?;
            if p.up {
                let index = self.idx(&p.name)?;
                Self::one(&mut self.nl, set_up(index))?;
            }
        }
        self.configure_guest(p, None)
    }

    /// A macvtap on `uplink`, up, with the VM's MAC, and its character device given to
    /// `owner`.
    fn create_macvtap(
        &mut self,
        p: &PortLink,
        uplink: &str,
        mode: crate::spec::DirectMode,
        owner: Option<u32>,
    ) -> Result<(), ApplyError> {
        let lower = self.idx(uplink)?;
        self.create_link(Request::NewLink {
            name: p.name.clone(),
            kind: NewLinkKind::Macvtap {
                lower,
                mode: mode.kernel_value(),
            },
            mac: Some(p.mac),
            mtu: Some(p.mtu),
            alias: Some(p.alias_before_tc()),
            master: None,
            up: p.up,
        })?;
        if let Some(uid) = owner {
            let index = self.idx(&p.name)?;
            macvtap::set_owner(&p.name, index, uid)?;
        }
        Ok(())
    }

    /// The full mark, with the port's shaping and mirror in it, once that traffic control is
    /// in place: a mark that named them before would make a run killed in between look done.
    fn record_tc(
        &mut self,
        ports: &[&PortLink],
        shaped: &[usize],
        results: &mut [Result<(), ApplyError>],
    ) {
        let mut reqs = Vec::new();
        let mut owners = Vec::new();
        for &i in shaped {
            if results[i].is_err() {
                continue;
            }
            match self.idx(&ports[i].name) {
                Ok(index) => {
                    let mut r = Request::set_link(index);
                    if let Request::SetLink { alias, .. } = &mut r {
                        *alias = Some(ports[i].alias());
                    }
                    reqs.push(r);
                    owners.push(i);
                }
                Err(e) => results[i] = Err(e),
            }
        }
        for (i, r) in owners.into_iter().zip(self.nl.execute(&reqs)) {
            if let Err(e) = r {
                results[i] = Err(e.into());
            }
        }
    }

    /// Deletes ports, and with them (in the same group deletion: each one waits for the
    /// kernel's RCU grace period) the IFBs that shaped their outbound traffic.
    pub(super) fn delete_ports(&mut self, ports: &[&PortLink]) -> Vec<Result<(), ApplyError>> {
        let ifbs: Vec<String> = ports
            .iter()
            .filter(|p| p.qos_out.is_some())
            .map(|p| tc::ifb_name(&p.name))
            .filter(|n| self.index.contains_key(n) || self.idx(n).is_ok())
            .collect();
        let names: Vec<&str> = ports
            .iter()
            .map(|p| p.name.as_str())
            .chain(ifbs.iter().map(String::as_str))
            .collect();
        let mut results = self.delete_links(&names);
        // An IFB that is not there or not kvmnet's is left alone, as before.
        results.truncate(ports.len());
        results
    }
}
