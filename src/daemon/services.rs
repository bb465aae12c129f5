//! The daemon's service threads (DHCP, DNS): each serves until the daemon stops, and takes
//! what a newly accepted spec asks of it when kicked.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Level, Shared, log};
use crate::{dhcp, dns};

/// The DHCP server's thread: serves until stopped, taking new scopes when kicked.
pub(super) fn dhcp_thread(sh: Arc<Shared>, mut server: dhcp::Server) {
    loop {
        if let Err(e) = server.run(&sh.dhcp_kick) {
            log(Level::Error, &format!("dhcp: {e}"));
            std::thread::sleep(Duration::from_millis(500));
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        sh.dhcp_kick.store(false, Ordering::SeqCst);
        if let Some(scopes) = sh.dhcp_pending.lock().expect("lock").take()
            && let Err(e) = server.update(scopes)
        {
            log(Level::Error, &format!("dhcp: {e}"));
        }
    }
}

/// The DNS service's thread: one poll loop for every listener, client connection and
/// upstream query; new zones are taken when kicked (the sockets stay on this thread).
pub(super) fn dns_thread(sh: Arc<Shared>, mut server: dns::Server) {
    loop {
        if let Err(e) = server.run(&sh.dns_kick) {
            log(Level::Error, &format!("dns: {e}"));
            std::thread::sleep(Duration::from_millis(500));
        }
        if sh.stop.load(Ordering::SeqCst) {
            return;
        }
        sh.dns_kick.store(false, Ordering::SeqCst);
        if let Some(zones) = sh.dns_pending.lock().expect("lock").take() {
            server.update(zones);
        }
    }
}

/// What the DNS service reads the leases from: the bound leases of both DHCP servers,
/// MACs as the spec writes them (a record whose MAC does not parse names nothing).
pub(super) fn lease_source(sh: &Arc<Shared>) -> dns::LeaseSource {
    let sh = Arc::clone(sh);
    Box::new(move || {
        let v4 = sh.dhcp.lock().expect("lock").clone().map(|h| h.leases());
        let v4 = v4.into_iter().flatten().filter(|l| l.state == "bound");
        let v6 = sh.v6.leases().into_iter().flatten();
        let v6 = v6.filter(|l| l.state == "bound");
        let all = v4
            .map(|l| (l.network, l.mac, std::net::IpAddr::V4(l.ip), l.expires_unix))
            .chain(v6.map(|l| (l.network, l.mac, std::net::IpAddr::V6(l.ip), l.expires_unix)));
        all.filter_map(|(network, mac, ip, expires_unix)| {
            Some(dns::Leased {
                network,
                mac: mac.parse().ok()?,
                ip,
                expires_unix,
            })
        })
        .collect()
    })
}
