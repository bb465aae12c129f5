//! Each kind of step as backend requests.

use super::{
    ApplyError, Kernel, bond_options, configure, configure_port, link_tc, route_info, set_up,
};
use crate::backend::rtnl::{Netlink, NewLinkKind, Request};
use crate::backend::{ethtool, macvtap, netns, nftables, sysctl, tc};
use crate::observe::netns_mark;
use crate::plan::{
    BondMember, Change, DevAddr, DevAddr6, DevRoute, Fdb, LinkUp, Master, Mtu, Netns, Object, Set,
    Step,
};
use crate::state::{BondLink, BridgeLink, PortKind, PortLink, VlanLink, VxlanLink};

/// A change the plan never makes: `c`, in place.
fn in_place<T: Object>(c: &T) -> ApplyError {
    ApplyError::InPlace(format!("{} {}", c.kind(), c.name()))
}

impl Kernel {
    pub(super) fn run_single(&mut self, step: &Step) -> Result<(), ApplyError> {
        match step {
            Step::Netns(c) => self.netns(c),
            Step::Bridge(c) => self.bridge(c),
            Step::Master(s) => self.master(s),
            Step::Addr(c) => self.addr(c),
            Step::Addr6(c) => self.addr6(c),
            Step::Route(c) => self.route(c),
            Step::Port(Change::Create(p)) => self.create_ports(&[p]).pop().unwrap_or(Ok(())),
            Step::Port(Change::Delete(p)) => self.delete_ports(&[p]).pop().unwrap_or(Ok(())),
            Step::Port(Change::Update { from, to }) => self.update_port(from, to),
            Step::Shaping(s) => {
                let want = s.to.as_ref().map(|sh| tc::Shaping::of(&s.name, sh));
                tc::Tc::open()?.apply_shaping(&s.name, want.as_ref())?;
                Ok(())
            }
            Step::NftTable(s) => Ok(nftables::replace(s.to.as_ref())?),
            Step::Nft(c) => Ok(nftables::change(&[c])?),
            Step::Sysctl(s) => Ok(sysctl::write(&s.name, &s.to)?),
            // Undoing settings of a device made by the same plan: its removal takes them.
            Step::Ethtool(s) if s.to.is_empty() => Ok(()),
            Step::Ethtool(s) => Ok(ethtool::set(&s.name, &s.to)?),
            Step::Vxlan(c) => self.vxlan(c),
            Step::Fdb(c) => self.fdb(c),
            Step::Vlan(c) => self.vlan(c),
            Step::Up(s) => self.link_up(s),
            Step::Bond(c) => self.bond(c),
            Step::BondMember(s) => self.bond_member(s),
            Step::Mtu(s) => self.mtu(s),
            Step::Nb(c) => self.nb_rows(&[c]),
            Step::Chassis(s) => Ok(crate::ovn::local::apply(
                &crate::statedir::StateDir::for_scope(&self.scope),
                s.to.as_ref(),
            )?),
        }
    }

    fn netns(&mut self, c: &Change<Netns>) -> Result<(), ApplyError> {
        match c {
            Change::Create(n) => {
                let mark = netns_mark(&self.scope);
                // Marked inside the new namespace before it has a name (see `create_with`).
                netns::create_with(
                    &n.name,
                    Box::new(move || {
                        let mut nl = Netlink::open().map_err(std::io::Error::other)?;
                        let lo = nl
                            .link_by_name("lo")
                            .map_err(std::io::Error::other)?
                            .ok_or_else(|| std::io::Error::other("no lo"))?;
                        let mut req = set_up(lo.index);
                        if let Request::SetLink { alias, .. } = &mut req {
                            *alias = Some(mark);
                        }
                        Self::one(&mut nl, req).map_err(std::io::Error::other)
                    }),
                )?;
                Ok(())
            }
            Change::Delete(n) => {
                self.guests.remove(&n.name);
                netns::delete(&n.name)?;
                Ok(())
            }
            Change::Update { to, .. } => Err(in_place(to)),
        }
    }

    fn delete_link(&mut self, name: &str) -> Result<(), ApplyError> {
        self.delete_links(&[name]).pop().unwrap_or(Ok(()))
    }

    fn bridge(&mut self, c: &Change<BridgeLink>) -> Result<(), ApplyError> {
        match c {
            Change::Create(b) => {
                self.create_link(Request::NewLink {
                    name: b.name.clone(),
                    kind: NewLinkKind::Bridge,
                    mac: Some(b.mac),
                    mtu: Some(b.mtu),
                    alias: Some(b.alias()),
                    master: None,
                    up: b.up,
                })?;
                Ok(())
            }
            Change::Delete(b) => self.delete_link(&b.name),
            Change::Update { to, .. } => {
                let index = self.idx(&to.name)?;
                Self::one(
                    &mut self.nl,
                    configure(index, to.mac, to.mtu, None, to.up, to.alias()),
                )
            }
        }
    }

    fn master(&mut self, s: &Set<Master>) -> Result<(), ApplyError> {
        let index = self.idx(&s.name)?;
        let master = self.master_index(&s.to)?;
        Self::one(
            &mut self.nl,
            Request::SetLink {
                index,
                name: None,
                mac: None,
                mtu: None,
                master: Some(master),
                up: None,
                alias: None,
                netns_fd: None,
            },
        )
    }

    fn addr6(&mut self, c: &Change<DevAddr6>) -> Result<(), ApplyError> {
        let index = self.idx(&c.object().dev)?;
        let req = match c {
            Change::Create(a) => Request::NewAddr6 {
                index,
                addr: a.addr,
            },
            Change::Delete(a) => Request::DelAddr6 {
                index,
                addr: a.addr,
            },
            Change::Update { to, .. } => return Err(in_place(to)),
        };
        Self::one(&mut self.nl, req)
    }

    fn addr(&mut self, c: &Change<DevAddr>) -> Result<(), ApplyError> {
        let index = self.idx(&c.object().dev)?;
        let req = match c {
            Change::Create(a) => Request::NewAddr {
                index,
                addr: a.addr.cidr,
                broadcast: a.addr.broadcast,
            },
            Change::Delete(a) => Request::DelAddr {
                index,
                addr: a.addr.cidr,
            },
            Change::Update { to, .. } => return Err(in_place(to)),
        };
        Self::one(&mut self.nl, req)
    }

    fn route(&mut self, c: &Change<DevRoute>) -> Result<(), ApplyError> {
        let index = self.idx(&c.object().dev)?;
        let req = match c {
            Change::Create(r) => Request::NewRoute(route_info(&r.route, index)),
            Change::Delete(r) => Request::DelRoute(route_info(&r.route, index)),
            Change::Update { to, .. } => return Err(in_place(to)),
        };
        Self::one(&mut self.nl, req)
    }

    fn update_port(&mut self, from: &PortLink, to: &PortLink) -> Result<(), ApplyError> {
        let index = self.idx(&to.name)?;
        let master = self.master_index(&to.master)?;
        Self::one(&mut self.nl, configure_port(to, index, master))?;
        if to.master.is_some() && (to.isolated != from.isolated || to.master != from.master) {
            Self::one(
                &mut self.nl,
                Request::SetBridgePort {
                    index,
                    isolated: to.isolated,
                },
            )?;
        }
        if to.has_tc()
            && (!from.tc_ok
                || from.qos_in != to.qos_in
                || from.qos_out != to.qos_out
                || from.mirror != to.mirror)
        {
            tc::Tc::open()?.apply(&link_tc(to))?;
        } else if !to.has_tc() && from.has_tc() {
            let ifb = from.qos_out.map(|_| tc::ifb_name(&from.name));
            tc::Tc::open()?.clear(&from.name, ifb.as_deref())?;
        }
        if let (
            PortKind::Macvtap { owner: old, .. },
            PortKind::Macvtap {
                owner: Some(uid), ..
            },
        ) = (&from.kind, &to.kind)
            && *old != Some(*uid)
        {
            macvtap::set_owner(&to.name, index, *uid)?;
        }
        self.configure_guest(to, Some(from))
    }

    fn vxlan(&mut self, c: &Change<VxlanLink>) -> Result<(), ApplyError> {
        match c {
            Change::Create(v) => {
                let link = self.idx(&v.underlay)?;
                let master = self.master_index(&v.master)?;
                self.create_link(Request::NewLink {
                    name: v.name.clone(),
                    kind: NewLinkKind::Vxlan {
                        vni: v.vni,
                        local: Some(v.local),
                        link: Some(link),
                        port: v.port,
                        group: v.group,
                        learning: v.learning,
                    },
                    mac: None,
                    mtu: Some(v.mtu),
                    alias: Some(v.alias()),
                    master: (master != 0).then_some(master),
                    up: v.up,
                })?;
                Ok(())
            }
            Change::Delete(v) => self.delete_link(&v.name),
            Change::Update { to, .. } => Err(in_place(to)),
        }
    }

    fn fdb(&mut self, c: &Change<Fdb>) -> Result<(), ApplyError> {
        let index = self.idx(&c.object().dev)?;
        let (mac, dst) = (crate::spec::Mac::default(), c.object().dst);
        let req = match c {
            Change::Create(_) => Request::NewFdb { index, mac, dst },
            Change::Delete(_) => Request::DelFdb { index, mac, dst },
            Change::Update { to, .. } => return Err(in_place(to)),
        };
        Self::one(&mut self.nl, req)
    }

    fn vlan(&mut self, c: &Change<VlanLink>) -> Result<(), ApplyError> {
        let v = match c {
            Change::Create(v) => v,
            Change::Delete(v) => return self.delete_link(&v.name),
            Change::Update { to, .. } => return Err(in_place(to)),
        };
        let link = self.idx(&v.parent)?;
        let master = self.master_index(&v.master)?;
        self.create_link(Request::NewLink {
            name: v.name.clone(),
            kind: NewLinkKind::Vlan { id: v.vid, link },
            mac: None,
            mtu: Some(v.mtu),
            alias: Some(v.alias()),
            master: (master != 0).then_some(master),
            up: v.up,
        })?;
        if v.isolated && master != 0 {
            let index = self.idx(&v.name)?;
            Self::one(
                &mut self.nl,
                Request::SetBridgePort {
                    index,
                    isolated: true,
                },
            )?;
        }
        Ok(())
    }

    fn link_up(&mut self, s: &Set<LinkUp>) -> Result<(), ApplyError> {
        let index = self.idx(&s.name)?;
        let mut req = Request::set_link(index);
        if let Request::SetLink { up, .. } = &mut req {
            *up = Some(s.to);
        }
        Self::one(&mut self.nl, req)
    }

    fn bond(&mut self, c: &Change<BondLink>) -> Result<(), ApplyError> {
        match c {
            Change::Create(b) => {
                self.create_link(Request::NewLink {
                    name: b.name.clone(),
                    kind: NewLinkKind::Bond(bond_options(b, true, None)?),
                    mac: None,
                    mtu: Some(b.mtu),
                    alias: Some(b.alias()),
                    master: None,
                    up: b.up,
                })?;
                Ok(())
            }
            Change::Delete(b) => self.delete_link(&b.name),
            Change::Update { from, to } => self.update_bond(from, to),
        }
    }

    fn update_bond(&mut self, from: &BondLink, to: &BondLink) -> Result<(), ApplyError> {
        let index = self.idx(&to.name)?;
        let primary = match &to.primary {
            Some(p) => self.idx(p)?,
            None => 0,
        };
        let options = bond_options(to, false, Some(primary))?;
        // The kernel changes lacp_rate only while the bond is down.
        let bounce = from.lacp_rate != to.lacp_rate && options.lacp_rate.is_some();
        if bounce {
            let mut down = Request::set_link(index);
            if let Request::SetLink { up, .. } = &mut down {
                *up = Some(false);
            }
            Self::one(&mut self.nl, down)?;
        }
        Self::one(&mut self.nl, Request::SetBond { index, options })?;
        let mut set = Request::set_link(index);
        if let Request::SetLink { mtu, up, alias, .. } = &mut set {
            *mtu = Some(to.mtu);
            *up = Some(to.up);
            *alias = Some(to.alias());
        }
        Self::one(&mut self.nl, set)
    }

    fn bond_member(&mut self, s: &Set<BondMember>) -> Result<(), ApplyError> {
        let index = self.idx(&s.name)?;
        let master = self.master_index(&s.to)?;
        // A member joins or leaves down (the bonding driver refuses to enslave an
        // interface that is up on older kernels), and comes back up after.
        for (m, u) in [(None, false), (Some(master), false), (None, true)] {
            let mut r = Request::set_link(index);
            if let Request::SetLink {
                master: rm, up: ru, ..
            } = &mut r
            {
                *rm = m;
                if m.is_none() {
                    *ru = Some(u);
                }
            }
            Self::one(&mut self.nl, r)?;
        }
        Ok(())
    }

    fn mtu(&mut self, s: &Set<Mtu>) -> Result<(), ApplyError> {
        let index = self.idx(&s.name)?;
        let mut r = Request::set_link(index);
        if let Request::SetLink { mtu, .. } = &mut r {
            *mtu = Some(s.to);
        }
        Self::one(&mut self.nl, r)
    }
}
