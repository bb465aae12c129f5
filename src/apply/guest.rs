//! The far end of a veth port, in its own namespace: its MAC, MTU and mark, its IPv4 and
//! IPv6 addresses and default routes, changed in an order the kernel accepts. Apart from the
//! host-side requests in `mod.rs` because it talks to another namespace's netlink socket
//! and orders address and route changes of its own.

use super::{ApplyError, Kernel, configure};
use crate::backend::rtnl::{Request, Route6Info, RouteInfo};
use crate::state::{Addr, GuestEnd, PortKind, PortLink, guest_alias};

impl Kernel {
    /// Sets the guest end of a veth port to `to`, from `from` when known.
    pub(super) fn configure_guest(
        &mut self,
        port: &PortLink,
        from: Option<&PortLink>,
    ) -> Result<(), ApplyError> {
        let PortKind::Veth { netns: ns, guest } = &port.kind else {
            return Ok(());
        };
        let old = from.and_then(|f| match &f.kind {
            PortKind::Veth { guest, .. } => Some(guest.clone()),
            PortKind::Tap { .. } | PortKind::Macvtap { .. } => None,
        });
        let nl = self.guest(ns)?;
        let link = nl
            .link_by_name(&guest.name)?
            .ok_or_else(|| ApplyError::NoSuchLink(format!("{ns}/{}", guest.name)))?;
        let mut reqs = vec![configure(
            link.index,
            guest.mac,
            guest.mtu,
            None,
            guest.up,
            guest_alias(&port.name),
        )];
        let old_addr = old.as_ref().and_then(|g| g.addr);
        let old_gw = old.as_ref().and_then(|g| g.gateway);
        let default = |gw| RouteInfo {
            table: 254,
            dst: crate::spec::Ipv4Cidr::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
            gateway: Some(gw),
            oif: Some(link.index),
            protocol: 3,
            scope: 0,
            route_type: 1,
            priority: None,
            prefsrc: None,
        };
        if old_gw != guest.gateway
            && let Some(gw) = old_gw
        {
            reqs.push(Request::DelRoute(default(gw)));
        }
        let [del6, addrs6, add6] = guest_requests6(link.index, old.as_ref(), guest);
        reqs.extend(del6);
        reqs.extend(addrs6);
        if old_addr != guest.addr {
            if let Some(a) = old_addr {
                reqs.push(Request::DelAddr {
                    index: link.index,
                    addr: a,
                });
            }
            if let Some(a) = guest.addr {
                reqs.push(Request::NewAddr {
                    index: link.index,
                    addr: a,
                    broadcast: Addr::with_standard_broadcast(a).broadcast,
                });
            }
        }
        if old_gw != guest.gateway
            && let Some(gw) = guest.gateway
        {
            reqs.push(Request::NewRoute(default(gw)));
        }
        reqs.extend(add6);
        for r in nl.execute(&reqs) {
            r?;
        }
        Ok(())
    }
}

/// What takes a veth far end's IPv6 from `old` (as found; `None` for a new far end) to
/// `new`, in three steps run in this order among the IPv4 ones: the old default route
/// removed, the address changed, the new default route added (its gateway is on-link
/// through the prefix route the kernel adds with the address). The address is added
/// without duplicate address detection, like the gateway's on the bridge: kvmnet has
/// checked it is unique on the network (the guard keeps other guests from claiming it), and
/// a tentative address could not be a source for the second or so DAD takes, where the
/// IPv4 one works at once.
fn guest_requests6(index: u32, old: Option<&GuestEnd>, new: &GuestEnd) -> [Vec<Request>; 3] {
    let (old_addr, old_gw) = (old.and_then(|g| g.addr6), old.and_then(|g| g.gateway6));
    let mut out: [Vec<Request>; 3] = Default::default();
    if old_gw != new.gateway6 {
        if let Some(gw) = old_gw {
            out[0].push(Request::DelRoute6(Route6Info::default_via(gw, index)));
        }
        if let Some(gw) = new.gateway6 {
            out[2].push(Request::NewRoute6(Route6Info::default_via(gw, index)));
        }
    }
    if old_addr != new.addr6 {
        if let Some(addr) = old_addr {
            out[1].push(Request::DelAddr6 { index, addr });
        }
        if let Some(addr) = new.addr6 {
            out[1].push(Request::NewAddr6 { index, addr });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A far end's IPv6 changes in order (the old route out, the addresses, the new route
    /// in: a gateway is on-link only once its prefix's address is there), and an update
    /// undone runs the other way round.
    #[test]
    fn guest_ipv6_requests_take_the_old_route_out_first() {
        let end = |a: Option<&str>, g: Option<&str>| GuestEnd {
            name: "eth0".into(),
            mac: Default::default(),
            mtu: 1500,
            up: true,
            addr: None,
            gateway: None,
            addr6: a.map(|a| a.parse().unwrap()),
            gateway6: g.map(|g| g.parse().unwrap()),
            dhcp: false,
        };
        let none = end(None, None);
        let set = end(Some("fd00:64::10/64"), Some("fd00:64::1"));
        let [del, addrs, add] = guest_requests6(7, None, &set);
        assert!(del.is_empty());
        assert!(matches!(&addrs[..], [Request::NewAddr6 { index: 7, .. }]));
        assert!(matches!(&add[..], [Request::NewRoute6(r)] if r.oif == Some(7)));
        let [del, addrs, add] = guest_requests6(7, Some(&set), &none);
        assert!(matches!(&del[..], [Request::DelRoute6(_)]));
        assert!(matches!(&addrs[..], [Request::DelAddr6 { .. }]));
        assert!(add.is_empty());
        assert!(
            guest_requests6(7, Some(&set), &set)
                .iter()
                .all(Vec::is_empty)
        );
    }
}
