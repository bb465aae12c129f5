//! What the readers make of libvirt XML: kvmnet's networks, VMs and ports, as plain values
//! for [`super::emit`], and how reservations and domain interfaces come together.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::ImportError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Nat,
    Routed,
    Isolated,
    /// macvtap on `uplink` in this kernel mode (bridge, vepa, private, passthrough).
    Direct(&'static str),
}

impl Mode {
    pub fn word(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Routed => "routed",
            Mode::Isolated => "isolated",
            Mode::Direct(_) => "direct",
        }
    }
}

/// Where something was read, for refusals found after reading (when merging).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub element: String,
}

impl Place {
    pub fn refuse(&self, message: String) -> ImportError {
        ImportError::Unmapped {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            element: self.element.clone(),
            message,
        }
    }
}

/// A `<host>` reservation of a network's DHCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub name: Option<String>,
    pub place: Place,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dhcp {
    pub range: Option<(Ipv4Addr, Ipv4Addr)>,
    pub lease_secs: Option<u64>,
    pub domain: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// The libvirt name (domains' `<source network>` name it).
    pub libvirt_name: String,
    /// The kvmnet name.
    pub name: String,
    pub mode: Mode,
    pub bridge: Option<String>,
    /// `ADDRESS/PREFIX`.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    pub mtu: Option<u32>,
    pub nat_egress: Option<String>,
    pub uplink: Option<String>,
    pub dhcp: Option<Dhcp>,
    pub bandwidth: Option<String>,
    pub isolate_ports: bool,
    pub hosts: Vec<Host>,
    pub place: Place,
}

/// A rate and its optional ceiling and burst, in kvmnet's units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    pub rate: String,
    pub ceil: Option<String>,
    pub burst: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qos {
    pub inbound: Option<Shape>,
    pub outbound: Option<Shape>,
    pub floor: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Port {
    /// The kvmnet network name.
    pub network: String,
    pub name: Option<String>,
    pub mac: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    /// `None`: kvmnet's default (guarded on bridged networks).
    pub antispoof: Option<bool>,
    pub queues: Option<u32>,
    pub qos: Option<Qos>,
    pub place: Place,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vm {
    pub name: String,
    pub ports: Vec<Port>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Spec {
    pub networks: BTreeMap<String, Network>,
    pub vms: BTreeMap<String, Vm>,
}

/// A name kvmnet takes for a network or VM (`[A-Za-z0-9_.-]`, at most 64): characters it
/// does not take become `-`; `None` when nothing usable is left.
pub fn sanitize(name: &str) -> Option<String> {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_start_matches('-').to_string();
    (!s.is_empty() && s.len() <= 64 && s.chars().any(|c| c.is_ascii_alphanumeric())).then_some(s)
}

/// Networks and the domains' VMs into one spec: a `<host>` reservation becomes the `ipv4`
/// of the domain port with its MAC on that network, or else a VM of its own (named after
/// the host's name, else its MAC) with one port.
pub fn assemble(networks: Vec<Network>, vms: Vec<Vm>, errors: &mut Vec<ImportError>) -> Spec {
    let mut spec = Spec::default();
    for n in networks {
        if let Some(other) = spec.networks.get(&n.name) {
            errors.push(n.place.refuse(format!(
                "a second network named '{}' (the first is in {}); kvmnet network names are unique",
                n.name, other.place.file
            )));
            continue;
        }
        spec.networks.insert(n.name.clone(), n);
    }
    for vm in vms {
        if spec.vms.contains_key(&vm.name) {
            let place = vm
                .ports
                .first()
                .map(|p| p.place.clone())
                .unwrap_or_default();
            errors.push(place.refuse(format!("a second domain named '{}'", vm.name)));
            continue;
        }
        spec.vms.insert(vm.name.clone(), vm);
    }
    let reservations: Vec<(String, Host)> = spec
        .networks
        .values()
        .flat_map(|n| n.hosts.iter().map(|h| (n.name.clone(), h.clone())))
        .collect();
    for (net, host) in reservations {
        reserve(&mut spec, &net, host, errors);
    }
    spec
}

/// One reservation onto the spec's VMs.
fn reserve(spec: &mut Spec, net: &str, host: Host, errors: &mut Vec<ImportError>) {
    let port = spec
        .vms
        .values_mut()
        .flat_map(|vm| vm.ports.iter_mut())
        .find(|p| p.network == net && p.mac.as_deref() == Some(host.mac.as_str()));
    if let Some(port) = port {
        match port.ipv4 {
            Some(ip) if ip != host.ip => errors.push(host.place.refuse(format!(
                "the domain's interface with MAC {} has IP {ip} (its clean-traffic IP parameter), the reservation {}; they must agree",
                host.mac, host.ip
            ))),
            _ => port.ipv4 = Some(host.ip),
        }
        return;
    }
    let name = host
        .name
        .as_deref()
        .and_then(sanitize)
        .unwrap_or_else(|| format!("host-{}", host.mac.replace(':', "")));
    let vm = spec.vms.entry(name.clone()).or_insert_with(|| Vm {
        name,
        ports: Vec::new(),
    });
    vm.ports.push(Port {
        network: net.to_string(),
        mac: Some(host.mac.clone()),
        ipv4: Some(host.ip),
        place: host.place.clone(),
        ..Port::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized_or_refused() {
        assert_eq!(sanitize("default").as_deref(), Some("default"));
        assert_eq!(sanitize("my net's").as_deref(), Some("my-net-s"));
        assert_eq!(sanitize("a.example.com").as_deref(), Some("a.example.com"));
        assert_eq!(sanitize("---"), None);
        assert_eq!(sanitize("ñ"), None);
        assert_eq!(sanitize(&"x".repeat(65)), None);
    }
}
