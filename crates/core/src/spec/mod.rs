//! Layer 1: YAML text -> typed, validated [`Spec`]. No I/O.
//!
//! Every error names the field path (`networks.default.ipv4`, `vms.web1.ports[0].mac`,
//! `host.sysctl."net.core.somaxconn"`) and the line:column of the offending value, and all
//! errors of a file are reported at once, sorted by position.
//!
//! Paths: mapping keys are joined with `.`; a key that is not a plain identifier
//! (`[A-Za-z0-9_-]+`, e.g. a sysctl name or a network called `lan.2`) is written in double
//! quotes; list items are `[i]`. Errors about the file as a whole use the path `(file)`.

mod cache;
pub mod dns;
pub mod ipv6;
pub mod macs;
pub mod model;
pub mod naming;
pub mod ovn;
pub(crate) mod validate;
mod yaml;

pub use cache::SpecCache;
pub use dns::{DNS_RATE_DEFAULT, Dns};
pub use ipv6::{NetIpv6, Ra, RaMode};
pub use macs::HostIdentity;
pub use model::*;
pub use ovn::{NetBackend, Ovn, OvnPort};
pub use validate::schema::json_schema;
pub use validate::show_rate;

/// The path used for errors about the whole file (empty, binary, YAML syntax).
pub const FILE_PATH: &str = "(file)";

/// One problem in a spec, for an operator: where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{loc}: {path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub loc: Loc,
    pub message: String,
}

impl SpecError {
    fn file(message: impl Into<String>) -> Self {
        SpecError {
            path: FILE_PATH.to_string(),
            loc: Loc { line: 1, col: 1 },
            message: message.into(),
        }
    }
}

/// Parse and validate. Returns every error found (sorted by line, col), not only the first.
/// Derived MACs are made for `identity` (see [`macs`]), as a new host would give them out.
pub fn parse(text: &str, identity: &HostIdentity) -> Result<Spec, Vec<SpecError>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(vec![SpecError::file(
            "the file is empty; a spec needs at least `version: 1`",
        )]);
    }
    let (root, mut errors) = yaml::load(text);
    let spec = match root {
        Some(root) => validate::convert(&root, identity, &mut errors),
        None if errors.is_empty() => {
            errors.push(SpecError::file(
                "the file holds only comments; a spec needs at least `version: 1`",
            ));
            None
        }
        None => None,
    };
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => {
            if errors.is_empty() {
                // Never reached when the validator is consistent; better an error than a panic.
                errors.push(SpecError::file(
                    "internal error: the spec could not be built",
                ));
            }
            for e in &mut errors {
                if e.path.is_empty() {
                    e.path = FILE_PATH.to_string();
                }
            }
            errors.sort_by(|a, b| (a.loc, &a.path, &a.message).cmp(&(b.loc, &b.path, &b.message)));
            errors.dedup();
            Err(errors)
        }
    }
}

/// Same, from raw file bytes: rejects empty/whitespace-only files and binary / non-UTF-8
/// input (path `(file)`, loc 1:1).
pub fn parse_bytes(bytes: &[u8], identity: &HostIdentity) -> Result<Spec, Vec<SpecError>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(vec![SpecError::file(
            "the file is empty; a spec needs at least `version: 1`",
        )]);
    }
    if bytes.contains(&0) {
        return Err(vec![SpecError::file(
            "this is a binary file (it contains NUL bytes), not a YAML spec",
        )]);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(text, identity),
        Err(e) => Err(vec![SpecError::file(format!(
            "the file is not UTF-8 text (invalid byte at offset {}); save it as UTF-8",
            e.valid_up_to()
        ))]),
    }
}

/// The path of `key` under `parent`, quoted as this module quotes paths:
/// `path_join("host.sysctl", "net.core.somaxconn")` is `host.sysctl."net.core.somaxconn"`,
/// `path_join("networks", "default")` is `networks.default`.
pub fn path_join(parent: &str, key: &str) -> String {
    yaml::join(parent, key)
}

impl Spec {
    /// Where `path` sits in the file. Accepts the quoted form (`host.sysctl."a.b"`) and, for
    /// convenience, the same path without quotes (`host.sysctl.a.b`). A value that was derived
    /// rather than written (a default bridge name) gets its nearest written parent's location;
    /// 1:1 when nothing on the path was written.
    pub fn loc(&self, path: &str) -> Loc {
        let mut p = path;
        loop {
            if let Some(l) = self.locs.get(p) {
                return l;
            }
            if let Some((_, l)) = self
                .locs
                .to_map()
                .into_iter()
                .find(|(k, _)| k.contains('"') && k.replace('"', "") == p)
            {
                return l;
            }
            match parent_path(p) {
                Some(q) => p = q,
                None => return Loc { line: 1, col: 1 },
            }
        }
    }
}

/// `a.b[2]` -> `a.b`, `a."x.y"` -> `a`, `a.b` -> `a`, `a` -> None.
fn parent_path(p: &str) -> Option<&str> {
    if p.ends_with(']') {
        return p.rfind('[').map(|i| &p[..i]);
    }
    if p.ends_with('"') && p.len() > 1 {
        // Find the opening quote: the last `."` or a leading `"`, skipping escaped quotes.
        let body = &p[..p.len() - 1];
        let mut i = body.len();
        while let Some(j) = body[..i].rfind('"') {
            let escaped = body[..j].chars().rev().take_while(|c| *c == '\\').count() % 2 == 1;
            if !escaped {
                return if j == 0 { None } else { Some(&p[..j - 1]) };
            }
            i = j;
        }
        return None;
    }
    p.rfind('.').map(|i| &p[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("vms.a.ports[3]"), Some("vms.a.ports"));
        assert_eq!(
            parent_path("host.sysctl.\"net.core.x\""),
            Some("host.sysctl")
        );
        assert_eq!(
            parent_path("networks.default.bridge"),
            Some("networks.default")
        );
        assert_eq!(parent_path("version"), None);
        assert_eq!(parent_path("\"a.b\""), None);
    }

    /// Every bad field of a `dhcp` block and of a firewall rule is named in one pass, at its
    /// own path and line, with what was expected.
    #[test]
    fn bad_dhcp_and_rule_fields_each_named() {
        let text = "version: 1\nnetworks:\n  n:\n    mode: nat\n    ipv4: 10.9.0.1/24\n    \
                    dhcp:\n      range: 10.9.0.1-10.9.0.9\n      lease_time: 10s\n      \
                    dns: [0.0.0.0]\n      domain: 'a b'\nvms:\n  a:\n    ports:\n      - \
                    network: n\n        firewall:\n          inbound:\n            \
                    policy: drop\n            rules:\n              - { proto: sctp }\n              \
                    - { proto: udp, icmp_types: [echo-request] }\n              \
                    - { proto: icmp, icmp_types: [timestamp-request], from: 2001:db8::/32 }\n              \
                    - { rate: 5/week, action: allow }\n              \
                    - { from: 10.0.0.0/8, to: 2001:db8::/32, proto: tcp, ports: [22] }\n";
        let errors = parse(text, &HostIdentity::default()).unwrap_err();
        let got: Vec<(String, usize, &str)> = errors
            .iter()
            .map(|e| (e.path.clone(), e.loc.line, e.message.as_str()))
            .collect();
        let rules = "vms.a.ports[0].firewall.inbound.rules";
        for (path, line, says) in [
            ("networks.n.dhcp.range", 7, "contains the gateway"),
            ("networks.n.dhcp.lease_time", 8, "too short"),
            (
                "networks.n.dhcp.dns[0]",
                9,
                "DNS server 0.0.0.0 is in 0.0.0.0/8",
            ),
            ("networks.n.dhcp.domain", 10, "not a valid domain name"),
            (&format!("{rules}[0].proto"), 19, "'sctp' is not a protocol"),
            (&format!("{rules}[1].icmp_types"), 20, "need proto: icmp"),
            (
                &format!("{rules}[2].icmp_types"),
                21,
                "has an ICMPv6 counterpart",
            ),
            (&format!("{rules}[3].rate"), 22, "is not a rate"),
            (
                &format!("{rules}[3].action"),
                22,
                "'allow' is not an action",
            ),
            (&format!("{rules}[4].to"), 23, "two families"),
        ] {
            assert!(
                got.iter()
                    .any(|(p, l, m)| p == path && *l == line && m.contains(says)),
                "{path} at line {line} saying {says:?}: {got:#?}"
            );
        }
    }

    /// 1,200 ports on one network: refused on a Linux bridge (1,023 at most), taken on an
    /// OVN network, whose logical switch has no such limit.
    #[test]
    fn bridge_port_limit_is_the_kernel_backend_only() {
        let spec = |backend: &str| {
            let mut s = format!(
                "version: 1\novn:\n  nb: tcp:192.0.2.1:6641\n  sb: tcp:192.0.2.1:6642\n  \
                 chassis:\n    hv1: {{ encap_ip: 192.0.2.11 }}\nnetworks:\n  web:\n    \
                 backend: {backend}\n    mode: routed\n    ipv4: 10.80.0.1/16\nvms:\n"
            );
            for i in 0..1200 {
                s.push_str(&format!(
                    "  vm{i}:\n    host: hv1\n    ports: [ {{ network: web, name: p{i}, ipv4: 10.80.{}.{} }} ]\n",
                    1 + i / 250,
                    2 + i % 250
                ));
            }
            s
        };
        let id = HostIdentity::default();
        let ovn = parse(&spec("ovn"), &id);
        assert!(ovn.is_ok(), "{:?}", ovn.err());
        let errs = parse(&spec("kernel"), &id).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.to_string().contains("more than 1023 ports")),
            "{errs:?}"
        );
    }

    /// `nb` and `sb` as YAML lists (a cluster's servers) read as the comma-separated form;
    /// a bad member is named at its own line:column, an empty list refused.
    #[test]
    fn ovn_remotes_as_lists() {
        let spec = |nb: &str| {
            format!(
                "version: 1\novn:\n  nb: {nb}\n  sb: tcp:192.0.2.1:6642\n  \
                 chassis:\n    hv1: {{ encap_ip: 192.0.2.11 }}\nnetworks: {{}}\n"
            )
        };
        let id = HostIdentity::default();
        let listed = parse(&spec("[tcp:192.0.2.1:6641, \"tcp:192.0.2.2:6641\"]"), &id).unwrap();
        let joined = parse(&spec("\"tcp:192.0.2.1:6641,tcp:192.0.2.2:6641\""), &id).unwrap();
        assert_eq!(listed.ovn, joined.ovn);
        assert_eq!(
            listed.ovn.unwrap().nb,
            "tcp:192.0.2.1:6641,tcp:192.0.2.2:6641"
        );
        let errs = parse(&spec("[tcp:192.0.2.1:6641, tcp:192.0.2.2]"), &id).unwrap_err();
        assert_eq!(errs[0].path, "ovn.nb[1]", "{errs:?}");
        assert_eq!((errs[0].loc.line, errs[0].loc.col), (3, 28), "{errs:?}");
        let errs = parse(&spec("[]"), &id).unwrap_err();
        assert_eq!(errs[0].path, "ovn.nb", "{errs:?}");
    }

    /// Guests of an overlay network get the underlay's MTU less the tunnel's bytes: 1442 over
    /// Ethernet with Geneve, 8950 over a 9000-byte underlay with VXLAN, where a network's
    /// `mtu` of 8950 fits and one of 8951 does not.
    #[test]
    fn ovn_guest_mtu_follows_the_underlay() {
        let spec = |extra: &str, mtu: &str| {
            format!(
                "version: 1\novn:\n  nb: tcp:192.0.2.1:6641\n  sb: tcp:192.0.2.1:6642\n{extra}  \
                 chassis:\n    hv1: {{ encap_ip: 192.0.2.11 }}\nnetworks:\n  web:\n    \
                 backend: ovn\n    mode: routed\n    ipv4: 10.80.0.1/24\n{mtu}"
            )
        };
        let id = HostIdentity::default();
        let mtu_of = |text: &str| {
            let s = parse(text, &id).unwrap();
            let o = s.ovn.unwrap();
            o.guest_mtu(&o.networks["web"])
        };
        assert_eq!(mtu_of(&spec("", "")), 1442);
        let jumbo = "  underlay_mtu: 9000\n  encap: vxlan\n";
        assert_eq!(mtu_of(&spec(jumbo, "")), 8950);
        assert_eq!(mtu_of(&spec(jumbo, "    mtu: 8950\n")), 8950);
        let errs = parse(&spec(jumbo, "    mtu: 8951\n"), &id).unwrap_err();
        assert!(errs[0].message.contains("at most 8950"), "{errs:?}");
    }
}
