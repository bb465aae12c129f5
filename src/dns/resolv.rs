//! The host's resolvers, from `/etc/resolv.conf`: the default upstream of networks
//! without `forwarders`. The daemon sends its upstream queries from the host itself, so a
//! loopback stub (systemd-resolved's 127.0.0.53) is reachable and used. Link-local servers
//! with a zone (`fe80::1%eth0`) are skipped: the address alone does not say where they are.

use std::net::IpAddr;
use std::time::SystemTime;

pub const RESOLV_CONF: &str = "/etc/resolv.conf";

pub fn parse(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("nameserver") {
            continue;
        }
        if let Some(Ok(a)) = w.next().map(str::parse::<IpAddr>)
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

/// The file, re-read when its modification time or size changes.
pub struct Watch {
    path: &'static str,
    seen: Option<(SystemTime, u64)>,
}

impl Watch {
    pub fn new(path: &'static str) -> Watch {
        Watch { path, seen: None }
    }

    fn stamp(&self) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(self.path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    pub fn read(&mut self) -> Option<Vec<IpAddr>> {
        self.seen = self.stamp();
        Some(parse(&std::fs::read_to_string(self.path).ok()?))
    }

    /// The resolvers, if the file changed since it was last read.
    pub fn changed(&mut self) -> Option<Vec<IpAddr>> {
        if self.stamp() == self.seen {
            return None;
        }
        Some(self.read().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nameserver_lines_only() {
        let r = super::parse(
            "# comment\nsearch example.test\nnameserver 127.0.0.53\nnameserver 2001:db8::53\nnameserver fe80::1%eth0\nnameserver 127.0.0.53\noptions edns0\n",
        );
        assert_eq!(
            r,
            vec![
                "127.0.0.53".parse::<std::net::IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
    }
}
