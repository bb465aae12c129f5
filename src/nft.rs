//! kvmnet's nftables table: what the networks of a spec need, as an nft script.
//!
//! kvmnet owns exactly one table, `inet kvmnet`, and never lists, changes or deletes any other.
//! The table is replaced as a whole in one nft transaction (`add; delete; define`), so a
//! half-written firewall is never visible. Its comment carries a hash of its definition, which
//! is how a later run tells whether the live table still is what kvmnet wrote.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::spec::naming::fnv1a;
use crate::spec::{Mode, Spec};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "kvmnet";

/// A table definition with the rule count of each chain. `shape` lets observation notice a
/// table whose comment survived but whose rules were flushed by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftTable {
    pub hash: String,
    pub shape: Vec<(String, usize)>,
    /// The full `table inet kvmnet { ... }` text: ours when desired, nft's listing when observed.
    pub text: String,
}

impl NftTable {
    /// Whether the live table matches this one. Text is not compared: nft rewrites rules in
    /// its own canonical form when listing them.
    pub fn same(&self, other: &NftTable) -> bool {
        self.hash == other.hash && self.shape == other.shape
    }
}

struct Chain {
    name: &'static str,
    header: &'static str,
    rules: Vec<String>,
}

/// The table the spec's networks need, or `None` when no network needs any rule.
pub fn table_for(spec: &Spec) -> Option<NftTable> {
    let mut forward = Chain {
        name: "forward",
        header: "type filter hook forward priority filter; policy accept;",
        rules: Vec::new(),
    };
    let mut postrouting = Chain {
        name: "postrouting",
        header: "type nat hook postrouting priority srcnat; policy accept;",
        rules: Vec::new(),
    };
    for net in spec.networks.values() {
        let Some(gw) = net.ipv4 else { continue };
        let br = &net.bridge;
        let subnet = gw.network();
        let f = &mut forward.rules;
        // With br_netfilter, traffic between two ports of one bridge also passes this hook
        // with the bridge as both iif and oif; it must pass in every mode.
        f.push(format!(r#"iifname "{br}" oifname "{br}" accept"#));
        match net.mode {
            Mode::Nat => {
                let egress_out = match &net.nat_egress {
                    Some(e) => format!(r#" oifname "{e}""#),
                    None => String::new(),
                };
                let egress_in = match &net.nat_egress {
                    Some(e) => format!(r#"iifname "{e}" "#),
                    None => String::new(),
                };
                f.push(format!(
                    r#"iifname "{br}" ip saddr {subnet}{egress_out} accept"#
                ));
                f.push(format!(
                    r#"{egress_in}oifname "{br}" ip daddr {subnet} ct state established,related accept"#
                ));
            }
            Mode::Routed => {
                f.push(format!(r#"iifname "{br}" ip saddr {subnet} accept"#));
                f.push(format!(r#"oifname "{br}" ip daddr {subnet} accept"#));
            }
            Mode::Isolated | Mode::Bridge => {}
        }
        f.push(format!(r#"iifname "{br}" reject"#));
        f.push(format!(r#"oifname "{br}" reject"#));

        if net.mode == Mode::Nat {
            let p = &mut postrouting.rules;
            // No translation towards local multicast and broadcast (DHCP, mDNS, ...).
            p.push(format!("ip saddr {subnet} ip daddr 224.0.0.0/24 return"));
            p.push(format!("ip saddr {subnet} ip daddr 255.255.255.255 return"));
            let out = match &net.nat_egress {
                Some(e) => format!(r#"oifname "{e}""#),
                None => format!(r#"oifname != "{br}""#),
            };
            p.push(format!(
                "ip saddr {subnet} ip daddr != {subnet} {out} masquerade"
            ));
        }
    }
    let chains: Vec<Chain> = [forward, postrouting]
        .into_iter()
        .filter(|c| !c.rules.is_empty())
        .collect();
    if chains.is_empty() {
        return None;
    }
    let mut body = String::new();
    for c in &chains {
        let _ = writeln!(body, "\tchain {} {{\n\t\t{}", c.name, c.header);
        for r in &c.rules {
            let _ = writeln!(body, "\t\t{r}");
        }
        let _ = writeln!(body, "\t}}");
    }
    let hash = format!("{:016x}", fnv1a(body.as_bytes()));
    let text = format!("table {FAMILY} {TABLE} {{\n\tcomment \"{TABLE} {hash}\"\n{body}}}\n");
    Some(NftTable {
        hash,
        shape: chains
            .iter()
            .map(|c| (c.name.to_string(), c.rules.len()))
            .collect(),
        text,
    })
}

/// The nft script that turns whatever table is live into `to` (or removes it), in one
/// transaction. `add` first so `delete` cannot fail on a missing table.
pub fn replace_script(to: Option<&NftTable>) -> String {
    let mut s = format!("add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n");
    if let Some(t) = to {
        s.push_str(&t.text);
    }
    s
}

/// Reads nft's listing of our table back into an `NftTable`. Tolerant: anything it cannot
/// recognise makes the table look different, which only causes a rewrite.
pub fn parse_listing(text: &str) -> NftTable {
    let mut hash = String::new();
    let mut shape: Vec<(String, usize)> = Vec::new();
    let mut in_chain = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("comment \"") {
            if !in_chain
                && let Some(h) = rest
                    .trim_end_matches('"')
                    .strip_prefix(&format!("{TABLE} "))
            {
                hash = h.to_string();
            }
        } else if let Some(rest) = t.strip_prefix("chain ") {
            let name = rest.trim_end_matches('{').trim().to_string();
            shape.push((name, 0));
            in_chain = true;
        } else if t == "}" {
            in_chain = false;
        } else if in_chain
            && !t.is_empty()
            && !t.starts_with("type ")
            && !t.starts_with("policy ")
            && !t.starts_with("comment ")
            && let Some(last) = shape.last_mut()
        {
            last.1 += 1;
        }
    }
    NftTable {
        hash,
        shape,
        text: text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_round_trip_shape() {
        let listing = "table inet kvmnet {\n\tcomment \"kvmnet abc\"\n\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tiifname \"b\" accept\n\t\toifname \"b\" reject\n\t}\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n";
        let t = parse_listing(listing);
        assert_eq!(t.hash, "abc");
        assert_eq!(
            t.shape,
            vec![("forward".to_string(), 2), ("postrouting".to_string(), 0)]
        );
    }
}
