//! The character device of a macvtap, `/dev/tapIFINDEX`, which QEMU opens (`-netdev
//! tap,fd=N`). The kernel (devtmpfs) or udev makes the node, root-owned and mode 0600, when the
//! device appears and removes it with the device; kvmnet only gives it to the port's owner.
//! The node is named by the interface index, which is per network namespace while /dev is
//! not, so a node is touched only when its device number is this macvtap's.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MacvtapError {
    #[error(
        "{path} did not appear for macvtap '{port}' within {waited_ms} ms: the host needs devtmpfs on /dev or udev to create it"
    )]
    NoNode {
        port: String,
        path: String,
        waited_ms: u128,
    },
    #[error(
        "{path} is not the character device of macvtap '{port}' (interface indexes are per network namespace, /dev is shared: another namespace's device holds that name); refusing to touch it"
    )]
    Foreign { port: String, path: String },
    #[error("give {path} (macvtap '{port}') to uid {uid}: {source}")]
    Chown {
        port: String,
        path: String,
        uid: u32,
        #[source]
        source: io::Error,
    },
}

pub fn node_path(ifindex: u32) -> PathBuf {
    PathBuf::from(format!("/dev/tap{ifindex}"))
}

/// The device number (`st_rdev`) of macvtap `name`'s character device, as this network
/// namespace's sysfs says. sysfs shows the namespace that mounted it, so it is read through a
/// fresh sysfs mounted in a private mount namespace, on a thread of its own that first joins
/// the caller's network namespace; the host's mounts are not touched.
fn device_number(name: &str, ifindex: u32) -> Option<u64> {
    let netns = std::fs::File::open("/proc/thread-self/ns/net").ok()?;
    let rel = format!("class/net/{name}/macvtap/tap{ifindex}/dev");
    std::thread::spawn(move || -> Option<u64> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain system calls on this short-lived thread; CLONE_NEWNS unshares only
        // its own filesystem context (CLONE_FS is implied), never the process's.
        unsafe {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0
                || libc::unshare(libc::CLONE_NEWNS) != 0
            {
                return None;
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return None;
            }
            let sys = c"/sys";
            if libc::mount(
                c"sysfs".as_ptr(),
                sys.as_ptr(),
                c"sysfs".as_ptr(),
                0,
                std::ptr::null(),
            ) != 0
            {
                return None;
            }
        }
        let text = std::fs::read_to_string(PathBuf::from("/sys").join(&rel)).ok()?;
        let (major, minor) = text.trim().split_once(':')?;
        Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
    })
    .join()
    .ok()
    .flatten()
}

/// Whether `/dev/tapIFINDEX` is this macvtap's node: interface indexes are per network
/// namespace but /dev is not, so a node of that name may belong to another namespace's device.
enum Node {
    Missing,
    Ours(u32),
    Other,
}

fn node(name: &str, ifindex: u32) -> Node {
    let Ok(md) = std::fs::metadata(node_path(ifindex)) else {
        return Node::Missing;
    };
    match device_number(name, ifindex) {
        Some(dev) if md.file_type().is_char_device() && md.rdev() == dev => Node::Ours(md.uid()),
        _ => Node::Other,
    }
}

/// The uid owning macvtap `name`'s character device; `None` when it has none (or the node of
/// that name is another device's).
pub fn node_owner(name: &str, ifindex: u32) -> Option<u32> {
    match node(name, ifindex) {
        Node::Ours(uid) => Some(uid),
        _ => None,
    }
}

/// Gives the macvtap's character device to `uid`, waiting briefly for udev to make it where
/// devtmpfs has not already.
pub fn set_owner(port: &str, ifindex: u32, uid: u32) -> Result<(), MacvtapError> {
    let path = node_path(ifindex);
    let start = Instant::now();
    let wait = Duration::from_secs(2);
    loop {
        match node(port, ifindex) {
            Node::Ours(_) => break,
            Node::Other => {
                return Err(MacvtapError::Foreign {
                    port: port.to_string(),
                    path: path.display().to_string(),
                });
            }
            Node::Missing => {}
        }
        if start.elapsed() > wait {
            return Err(MacvtapError::NoNode {
                port: port.to_string(),
                path: path.display().to_string(),
                waited_ms: wait.as_millis(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::os::unix::fs::chown(&path, Some(uid), None).map_err(|source| MacvtapError::Chown {
        port: port.to_string(),
        path: path.display().to_string(),
        uid,
        source,
    })
}
