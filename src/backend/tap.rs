//! Persistent tap devices through `/dev/net/tun` (the kernel has no rtnetlink way to create
//! them): `TUNSETIFF`, `TUNSETOWNER`, `TUNSETPERSIST`, close. QEMU later attaches with
//! `-netdev tap,ifname=NAME,script=no,downscript=no[,queues=N]`; it must ask for multi-queue
//! exactly when the tap was created multi-queue (QEMU does so for `queues` > 1).

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("create tap '{0}': not a valid interface name (1 to 15 bytes, no '/', ':' or blanks)")]
    InvalidName(String),
    #[error("create tap {0}: a network interface with that name already exists")]
    Exists(String),
    /// A system call failed: `op` names the step and the device.
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: io::Error,
    },
}

impl TapError {
    /// The errno behind the failure, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            TapError::Exists(_) => Some(libc::EEXIST),
            TapError::Sys { source, .. } => source.raw_os_error(),
            TapError::InvalidName(_) => None,
        }
    }
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// A tap that lives only as long as the returned descriptor: `IFF_TAP | IFF_NO_PI |
/// IFF_VNET_HDR` (plus `IFF_MULTI_QUEUE` when `multi_queue`), owned by `owner` when given (so
/// that user may attach without CAP_NET_ADMIN). Fails with [`TapError::Exists`] if any
/// interface of that name exists (`IFF_TUN_EXCL`), rather than silently attaching to it.
///
/// Why not persistent at once: a tap is made by ioctl, and kvmnet's mark (its alias) can only
/// be set by a later netlink request. Until [`persist`], the kernel removes the device when
/// the descriptor closes, so a process killed between the two leaves nothing behind that is
/// unmarked (and so neither kvmnet's to remove nor anyone else's).
pub fn open_tap(name: &str, owner: Option<u32>, multi_queue: bool) -> Result<OwnedFd, TapError> {
    if !valid_ifname(name) {
        return Err(TapError::InvalidName(name.to_string()));
    }
    let sys = |step: &str, source: io::Error| TapError::Sys {
        op: format!("create tap {name}: {step}"),
        source,
    };
    let file: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| sys("open /dev/net/tun", e))?
        .into();
    // SAFETY: ifreq is plain old data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    let fd = file.as_raw_fd();
    // SAFETY: TUNSETIFF takes a pointer to an ifreq.
    if unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut ifr) } != 0 {
        let e = io::Error::last_os_error();
        // With IFF_TUN_EXCL an existing device of that name gives EBUSY.
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Err(TapError::Exists(name.to_string()));
        }
        return Err(sys("TUNSETIFF", e));
    }
    if let Some(uid) = owner {
        // SAFETY: TUNSETOWNER takes the uid as the argument value.
        if unsafe { libc::ioctl(fd, libc::TUNSETOWNER, uid as libc::c_ulong) } != 0 {
            return Err(sys(
                &format!("TUNSETOWNER {uid}"),
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(file)
}

/// Makes the tap behind `fd` (from [`open_tap`]) outlive it.
pub fn persist(fd: &OwnedFd, name: &str) -> Result<(), TapError> {
    // SAFETY: TUNSETPERSIST takes the flag as the argument value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
        return Err(TapError::Sys {
            op: format!("create tap {name}: TUNSETPERSIST"),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn index_of(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// A user name's uid (`getpwnam_r`). `None` if there is no such user.
pub fn uid_of(user: &str) -> Option<u32> {
    let cname = CString::new(user).ok()?;
    let mut buf: Vec<libc::c_char> = vec![0; 1024];
    loop {
        // SAFETY: passwd is plain old data; zeroed is valid.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the given sizes.
        let r = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if r != 0 || result.is_null() {
            return None;
        }
        return Some(pwd.pw_uid);
    }
}
