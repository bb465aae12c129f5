//! Values of one field: names, addresses, MACs, durations, and what they may not be.

use super::*;

pub(super) fn name_chars_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A Linux interface name kvmnet creates or refers to.
pub(crate) fn check_ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an interface name must not be empty".into());
    }
    if !name_chars_ok(s) {
        return Err(format!(
            "'{}' is not a valid interface name: use only letters, digits, '_', '.' and '-'",
            show(s)
        ));
    }
    if s.len() > naming::IFNAME_MAX {
        return Err(format!(
            "interface name '{s}' is {} characters long; Linux allows at most {}",
            s.len(),
            naming::IFNAME_MAX
        ));
    }
    if s.starts_with('-') {
        return Err(format!(
            "interface name '{s}' must not start with '-' (tools would read it as an option)"
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid interface name"));
    }
    if matches!(s, "lo" | "all" | "default") {
        return Err(format!(
            "interface name '{s}' is reserved by the kernel (loopback and /proc/sys/net/*/conf/{{all,default}})"
        ));
    }
    Ok(())
}

/// Network and VM names: they appear in derived names, paths and state files.
pub(super) fn check_entity_name(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("a {what} name must not be empty"));
    }
    if !name_chars_ok(s) {
        return Err(format!(
            "'{}' is not a valid {what} name: use only letters, digits, '_', '.' and '-'",
            show(s)
        ));
    }
    if s.len() > NAME_MAX {
        return Err(format!(
            "{what} name '{s}' is {} characters long; at most {NAME_MAX} are allowed",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid {what} name"));
    }
    Ok(())
}

pub(super) fn check_netns(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a network namespace name must not be empty".into());
    }
    if !name_chars_ok(s) {
        return Err(format!(
            "'{}' is not a valid network namespace name: use only letters, digits, '_', '.' and '-'",
            show(s)
        ));
    }
    if s.len() > NAME_MAX {
        return Err(format!(
            "network namespace name '{s}' is {} characters long; at most {NAME_MAX} are allowed",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("'{s}' is not a valid network namespace name"));
    }
    Ok(())
}

pub(super) fn check_sysctl_key(s: &str) -> Result<(), String> {
    let shown = show(s);
    if s.contains('/') {
        return Err(format!(
            "sysctl name '{shown}' contains '/'; write it dotted, like net.core.somaxconn"
        ));
    }
    let segs: Vec<&str> = s.split('.').collect();
    if segs.len() < 2 {
        return Err(format!(
            "'{shown}' is not a sysctl name; expected dotted segments like net.core.somaxconn"
        ));
    }
    if segs.iter().any(|g| g.is_empty()) {
        return Err(format!(
            "sysctl name '{shown}' has an empty segment (a leading, trailing or double dot)"
        ));
    }
    if !segs.iter().all(|g| {
        g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    }) {
        return Err(format!(
            "sysctl name '{shown}' may contain only letters, digits, '_' and '-' between its dots"
        ));
    }
    Ok(())
}

/// A DNS domain name (`example.test`), RFC 1123 labels.
pub(super) fn check_domain(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("'{}' is not a valid domain name: {why}", show(s)));
    if s.is_empty() {
        return bad("it is empty");
    }
    if s.len() > 253 {
        return bad("it is longer than 253 characters");
    }
    for label in s.split('.') {
        if label.is_empty() {
            return bad("it has an empty label (a leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("labels may contain only letters, digits and '-'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label must not start or end with '-'");
        }
    }
    Ok(())
}

/// A user name as `useradd` would accept it; uids are given as numbers.
pub(super) fn check_user(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("a user name must not be empty".into());
    }
    let body = s.strip_suffix('$').unwrap_or(s);
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!(
            "'{}' is not a valid user name: use letters, digits, '_', '.' and '-' (or give a numeric uid)",
            show(s)
        ));
    }
    if s.starts_with('-') {
        return Err(format!("user name '{s}' must not start with '-'"));
    }
    if s.len() > 32 {
        return Err(format!("user name '{s}' is longer than 32 characters"));
    }
    Ok(())
}

pub(crate) fn parse_ip(s: &str) -> Result<Ipv4Addr, String> {
    let t = s.trim();
    if !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && let Ok(a) = t.parse()
    {
        return Ok(a);
    }
    Err(format!(
        "'{}' is not an IPv4 address (like 192.0.2.10)",
        show(s)
    ))
}

/// `addr/prefix`, strictly: digits and dots, one slash, a decimal prefix.
pub(super) fn parse_cidr(s: &str) -> Result<Ipv4Cidr, String> {
    let t = s.trim();
    let Some((a, p)) = t.split_once('/') else {
        return Err(format!(
            "'{}' is not an address with a prefix (like 192.0.2.1/24)",
            show(s)
        ));
    };
    parse_ip(a)?;
    if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{}' is not a prefix length between 0 and 32",
            show(p)
        ));
    }
    t.parse::<Ipv4Cidr>()
}

pub(super) fn parse_mac(s: &str) -> Result<Mac, String> {
    let t = s.trim();
    if t.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        && let Ok(m) = t.parse::<Mac>()
    {
        return Ok(m);
    }
    Err(format!(
        "'{}' is not a MAC address (like 52:54:00:12:34:56)",
        show(s)
    ))
}

/// Seconds, or a number with s, m, h or d.
pub(super) fn parse_duration(f: &Field) -> Result<u64, String> {
    let Kind::Scalar(s) = &f.node.kind else {
        return Err(format!(
            "expected a duration (seconds, or like 30m, 1h, 1d), found {}",
            f.node.describe()
        ));
    };
    let t = s.text.trim();
    let (num, mult) = match t.as_bytes().last() {
        Some(b's') => (&t[..t.len() - 1], 1),
        Some(b'm') => (&t[..t.len() - 1], 60),
        Some(b'h') => (&t[..t.len() - 1], 3600),
        Some(b'd') => (&t[..t.len() - 1], 86400),
        _ => (t, 1),
    };
    let bad = || {
        format!(
            "'{}' is not a duration; expected seconds or a number with s, m, h or d (like 1h)",
            show(&s.text)
        )
    };
    if num.is_empty() || num.len() > 12 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    Ok(n * mult)
}

/// Addresses that can never be a gateway or a guest address.
pub(crate) fn special(a: Ipv4Addr) -> Option<&'static str> {
    if a.is_loopback() {
        Some("a loopback address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if a.is_broadcast() || a.octets()[0] >= 240 {
        Some("a reserved address")
    } else if a.octets()[0] == 0 {
        Some("in 0.0.0.0/8, which cannot be assigned")
    } else {
        None
    }
}

pub(super) fn host_hint(net: Ipv4Cidr) -> Ipv4Cidr {
    Ipv4Cidr::new(
        Ipv4Addr::from(u32::from(net.network().addr).wrapping_add(1)),
        net.prefix,
    )
}

// ---------------------------------------------------------------------------------------
// First pass
