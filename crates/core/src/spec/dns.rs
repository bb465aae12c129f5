//! A network's `dns` block as the spec holds it, and the names its DNS service answers.
//!
//! [`names`] is the one place that lists a network's names and addresses: the DNS service,
//! validation's duplicate check and the docs all go through it, so a new source of
//! addresses (a port's IPv6 address) is added here once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::model::{Network, Spec};

/// Per-client queries per second a network's DNS service answers when `rate_limit` is not
/// given: far above what a guest's resolver needs, far below what one guest would need to
/// crowd out the others.
pub const DNS_RATE_DEFAULT: u32 = 500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// VM names answer as `VM.DOMAIN`, records as `NAME.DOMAIN`; without it, as bare
    /// single-label names (`VM.`), the way a guest's resolver asks for them without a search
    /// domain.
    pub domain: Option<String>,
    /// Upstream servers for every other name; `None`: the host's own resolvers (the daemon
    /// reads `/etc/resolv.conf`).
    pub forwarders: Option<Vec<IpAddr>>,
    /// Name as written (relative to `domain`, or absolute when it ends with `.`) -> its
    /// addresses, in the order written.
    pub records: BTreeMap<String, Vec<IpAddr>>,
    /// Queries per second one client (source address) may ask; more are dropped.
    pub rate_limit: u32,
}

/// `name` (a VM name or a record's key) as a fully qualified, lower-case name ending in a
/// dot: under `domain` unless it is already absolute.
pub fn qualify(name: &str, domain: Option<&str>) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        return name;
    }
    match domain {
        Some(d) => format!("{name}.{}.", d.to_ascii_lowercase().trim_end_matches('.')),
        None => format!("{name}."),
    }
}

/// Every name network `network`'s DNS service answers for, with its addresses, in a stable
/// order: each VM with a port on the network that has an address (as `VM.DOMAIN`; a VM
/// with two such ports has both addresses), then the records. Empty when the network has no
/// `dns`. IPv6 addresses of ports join here once ports have them.
pub fn names(spec: &Spec, network: &str) -> Vec<(String, IpAddr)> {
    let Some(net) = spec.networks.get(network) else {
        return Vec::new();
    };
    let Some(dns) = &net.dns else {
        return Vec::new();
    };
    let domain = dns.domain.as_deref();
    let mut out = Vec::new();
    for vm in spec.vms.values() {
        for p in vm.ports.iter().filter(|p| p.network == network) {
            if let Some(a) = p.ipv4 {
                out.push((qualify(&vm.name, domain), IpAddr::V4(a.addr)));
            }
            // The declared address only: a SLAAC address is the guest's choice (privacy
            // or stable addresses instead of EUI-64), so answering it could be wrong.
            if let Some(a) = p.ipv6 {
                out.push((qualify(&vm.name, domain), IpAddr::V6(a)));
            }
        }
    }
    for (name, addrs) in &dns.records {
        for a in addrs {
            out.push((qualify(name, domain), *a));
        }
    }
    out
}

/// The addresses the network's DNS service listens on: its gateway's, of both families.
pub fn listen_addrs(net: &Network) -> Vec<IpAddr> {
    let v4 = net.ipv4.iter().map(|c| IpAddr::V4(c.addr));
    let v6 = net.ipv6.iter().map(|v| IpAddr::V6(v.gateway.addr));
    v4.chain(v6).collect()
}

/// Why `label` cannot be a DNS label of a name kvmnet answers, if it cannot: letters,
/// digits, '-' and '_' (services' names use it), 1 to 63 of them, no '-' at either end.
pub fn label_problem(label: &str) -> Option<&'static str> {
    if label.is_empty() {
        return Some("it has an empty label (a leading or double dot)");
    }
    if label.len() > 63 {
        return Some("a label is longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Some("labels may contain only letters, digits, '-' and '_'");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some("a label must not start or end with '-'");
    }
    None
}

/// Why `name` (relative, or absolute with a trailing dot) cannot be a name kvmnet answers.
pub fn name_problem(name: &str) -> Option<&'static str> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.len() > 253 {
        return Some("it is longer than 253 characters");
    }
    bare.split('.').find_map(label_problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_qualify_under_the_domain_unless_absolute() {
        assert_eq!(qualify("Web1", Some("vm.test")), "web1.vm.test.");
        assert_eq!(qualify("web1", None), "web1.");
        assert_eq!(
            qualify("www.example.com.", Some("vm.test")),
            "www.example.com."
        );
        assert_eq!(name_problem("a.b"), None);
        assert_eq!(name_problem("_sip._udp"), None);
        assert!(name_problem("-a").is_some());
        assert!(name_problem("a..b").is_some());
        assert!(name_problem("a b").is_some());
        assert!(name_problem(&"a".repeat(64)).is_some());
    }
}
