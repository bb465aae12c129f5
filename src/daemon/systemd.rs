//! What the daemon tells systemd: readiness and stopping through `NOTIFY_SOCKET`
//! (sd_notify(3)), and how often its watchdog wants a ping. Apart from `mod.rs` because it
//! is a protocol of the service manager, not of kvmnet.

use std::time::Duration;

pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = path.to_string_lossy();
    let _ = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &*p)
    };
}

/// How often systemd's watchdog wants to hear from this process: half of `WATCHDOG_USEC`,
/// as sd_watchdog_enabled(3) advises, unless `WATCHDOG_PID` names another process.
pub(super) fn watchdog_interval(usec: Option<&str>, pid: Option<&str>) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_pings_at_half_its_timeout_for_this_process_only() {
        let half = Some(Duration::from_millis(200));
        assert_eq!(watchdog_interval(Some("400000"), None), half);
        let me = std::process::id().to_string();
        assert_eq!(watchdog_interval(Some("400000"), Some(&me)), half);
        assert_eq!(watchdog_interval(Some("400000"), Some("1")), None);
        assert_eq!(watchdog_interval(Some("400000"), Some("x")), None);
        assert_eq!(watchdog_interval(Some("0"), None), None);
        assert_eq!(watchdog_interval(Some("soon"), None), None);
        assert_eq!(watchdog_interval(None, Some(&me)), None);
    }
}
