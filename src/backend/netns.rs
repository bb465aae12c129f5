//! Named network namespaces, the way iproute2 keeps them: a file under `/run/netns` with the
//! namespace bind-mounted on it, so it outlives every process in it.
//!
//! Switching namespaces is per thread (`setns` moves the calling thread only): [`enter`] moves
//! the calling thread for good, [`with_netns`] moves it for the span of a closure. A netlink or
//! tun file descriptor opened inside stays bound to that namespace after switching back.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where named namespaces live (`ip netns` uses the same place).
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace name '{0}' is not valid (empty, '.', '..', or contains '/')")]
    InvalidName(String),
    #[error("network namespace {name} already exists ({})", path(.name).display())]
    Exists { name: String },
    #[error("network namespace {name} does not exist ({} not found)", path(.name).display())]
    NotFound { name: String },
    /// A system call failed: `op` names what was being done and to which namespace.
    #[error("{op}: {source}")]
    Sys {
        op: String,
        #[source]
        source: io::Error,
    },
}

impl NetnsError {
    fn sys(op: impl Into<String>, source: io::Error) -> Self {
        NetnsError::Sys {
            op: op.into(),
            source,
        }
    }
}

/// `/run/netns/NAME`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether namespace NAME exists (a placeholder with nothing mounted on it does not count).
pub fn exists(name: &str) -> bool {
    valid_name(name) && path(name).exists() && !is_placeholder(&path(name))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(NetnsError::InvalidName(name.to_string()))
    }
}

fn cpath(p: &Path) -> CString {
    // Paths built here never contain NUL (names are checked).
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// Make `/run/netns` exist and be a shared mount point, so a namespace mounted there shows up in
/// every mount namespace (what `ip netns add` does).
fn prepare_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Err(NetnsError::sys(
            format!("create directory {NETNS_RUN_DIR}"),
            e,
        ));
    }
    let c = cpath(dir);
    let none = c"none";
    let mut made_mount = false;
    loop {
        // SAFETY: all pointers are valid NUL-terminated strings or null.
        let r = unsafe {
            libc::mount(
                c"".as_ptr(),
                c.as_ptr(),
                none.as_ptr(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = last_err();
        if e.raw_os_error() != Some(libc::EINVAL) || made_mount {
            return Err(NetnsError::sys(
                format!("make {NETNS_RUN_DIR} a shared mount"),
                e,
            ));
        }
        // Not a mount point yet: bind-mount it onto itself, then retry.
        // SAFETY: as above.
        let r = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                none.as_ptr(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(NetnsError::sys(
                format!("bind-mount {NETNS_RUN_DIR} onto itself"),
                last_err(),
            ));
        }
        made_mount = true;
    }
}

/// Create a named network namespace, like `ip netns add NAME`, with `lo` up.
///
/// Done natively: a short-lived thread unshares its network namespace, bind-mounts
/// `/proc/thread-self/ns/net` on `/run/netns/NAME` and sets `lo` up. Safe to call from a
/// multi-threaded program; the calling thread's namespace does not change.
pub fn create(name: &str) -> Result<(), NetnsError> {
    create_with(name, Box::new(|| Ok(())))
}

/// Work done inside a namespace being made, before it gets its name.
pub type NetnsInit = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// Like [`create`], running `init` inside the new namespace before it is mounted on its
/// name: whatever `init` marks is there from the first moment anyone can see the namespace,
/// so a process killed halfway leaves no unmarked namespace behind. An empty placeholder
/// file with nothing mounted on it (what a create killed before its mount leaves, ours or
/// `ip netns add`'s) is taken over rather than refused: nothing can be using it.
pub fn create_with(name: &str, init: NetnsInit) -> Result<(), NetnsError> {
    check_name(name)?;
    prepare_run_dir()?;
    let p = path(name);
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o0)
        .custom_flags(libc::O_CLOEXEC)
        .open(&p)
    {
        Ok(f) => drop(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && is_placeholder(&p) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(NetnsError::Exists {
                name: name.to_string(),
            });
        }
        Err(e) => {
            return Err(NetnsError::sys(
                format!("create network namespace {name}: create {}", p.display()),
                e,
            ));
        }
    }
    let owned_name = name.to_string();
    let target = p.clone();
    let res = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || make_ns_on(&owned_name, &target, init))
        .map_err(|e| NetnsError::sys(format!("create network namespace {name}: spawn thread"), e))
        .and_then(|h| {
            h.join().unwrap_or_else(|_| {
                Err(NetnsError::sys(
                    format!("create network namespace {name}"),
                    io::Error::other("helper thread panicked"),
                ))
            })
        });
    if res.is_err() {
        // SAFETY: valid C string; failure to unmount (nothing mounted) is fine.
        unsafe { libc::umount2(cpath(&p).as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_file(&p);
    }
    res
}

/// Runs on a throwaway thread: the unshare only affects this thread, which then exits.
fn make_ns_on(name: &str, target: &Path, init: NetnsInit) -> Result<(), NetnsError> {
    // SAFETY: plain syscall.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::sys(
            format!("create network namespace {name}: unshare(CLONE_NEWNET)"),
            last_err(),
        ));
    }
    set_lo_up().map_err(|e| NetnsError::sys(format!("network namespace {name}: set lo up"), e))?;
    init().map_err(|e| NetnsError::sys(format!("network namespace {name}: prepare"), e))?;
    let t = cpath(target);
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::mount(
            c"/proc/thread-self/ns/net".as_ptr(),
            t.as_ptr(),
            c"none".as_ptr(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(NetnsError::sys(
            format!(
                "create network namespace {name}: bind-mount onto {}",
                target.display()
            ),
            last_err(),
        ));
    }
    Ok(())
}

/// Whether `/run/netns/NAME` is a placeholder: an empty file with mode 0 and no namespace
/// mounted on it, what a create killed before its mount leaves. Nothing can enter it.
pub fn is_placeholder_named(name: &str) -> bool {
    valid_name(name) && is_placeholder(&path(name))
}

/// Removes placeholder `NAME` (see [`is_placeholder_named`]); false if it is not one.
pub fn remove_placeholder(name: &str) -> bool {
    is_placeholder_named(name) && std::fs::remove_file(path(name)).is_ok()
}

/// An empty file with mode 0 and no namespace mounted on it.
fn is_placeholder(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return false;
    };
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.len() != 0 || meta.permissions().mode() & 0o7777 != 0 {
        return false;
    }
    // SAFETY: statfs is plain old data; zeroed is valid, and the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath(p).as_ptr(), &mut st) } != 0 {
        return false;
    }
    st.f_type as i64 != NSFS_MAGIC
}

/// Set `lo` up in the calling thread's namespace (SIOCSIFFLAGS on a throwaway socket).
fn set_lo_up() -> io::Result<()> {
    // SAFETY: plain syscall; the fd is wrapped right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(last_err());
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: ifr is a valid ifreq for these ioctls.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } != 0 {
        return Err(last_err());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Delete a named namespace, like `ip netns del NAME`: lazy unmount, then remove the file. The
/// namespace itself goes away once no process or open descriptor holds it.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    check_name(name)?;
    let p = path(name);
    if !p.exists() {
        return Err(NetnsError::NotFound {
            name: name.to_string(),
        });
    }
    let c = cpath(&p);
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = last_err();
        // EINVAL: nothing mounted there (a stale file); still remove it.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetnsError::sys(
                format!("delete network namespace {name}: unmount {}", p.display()),
                e,
            ));
        }
    }
    std::fs::remove_file(&p).map_err(|e| {
        NetnsError::sys(
            format!("delete network namespace {name}: remove {}", p.display()),
            e,
        )
    })
}

/// Open the namespace's file (usable with `setns`, `IFLA_NET_NS_FD`, `peer_netns_fd`).
pub fn open(name: &str) -> Result<OwnedFd, NetnsError> {
    check_name(name)?;
    let p = path(name);
    match File::open(&p) {
        Ok(f) => Ok(f.into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NetnsError::NotFound {
            name: name.to_string(),
        }),
        Err(e) => Err(NetnsError::sys(
            format!("open network namespace {name} ({})", p.display()),
            e,
        )),
    }
}

fn setns(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(last_err());
    }
    Ok(())
}

/// Switch the calling thread into the namespace for good. Threads it spawns afterwards start
/// there too; threads that already exist do not move.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    let fd = open(name)?;
    setns(&fd).map_err(|e| NetnsError::sys(format!("enter network namespace {name}"), e))
}

/// Run `f` with the calling thread switched into the namespace, then switch back, also when
/// `f` panics (the panic is resumed after switching back).
pub fn with_netns<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
    let target = open(name)?;
    with_netns_fd(target.as_fd(), name, f)
}

/// [`with_netns`] for the namespace `target` refers to (`what` names it in errors); runs
/// `f` right here when the thread is in that namespace already.
pub fn with_netns_fd<T>(
    target: std::os::fd::BorrowedFd<'_>,
    what: &str,
    f: impl FnOnce() -> T,
) -> Result<T, NetnsError> {
    use std::os::unix::fs::MetadataExt;
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| NetnsError::sys("open the current network namespace", e))?;
    let target_file = File::from(
        target
            .try_clone_to_owned()
            .map_err(|e| NetnsError::sys("duplicate a namespace descriptor", e))?,
    );
    let same = match (home.metadata(), target_file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if same {
        return Ok(f());
    }
    let home: OwnedFd = home.into();
    // SAFETY: plain syscall on a descriptor the caller holds.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::sys(
            format!("enter network namespace {what}"),
            last_err(),
        ));
    }
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    if let Err(e) = setns(&home) {
        // Carrying on in the wrong namespace could touch the wrong interfaces.
        crate::log::line(
            crate::log::Level::Error,
            &format!("fatal: cannot switch back from network namespace {what}: {e}"),
        );
        std::process::abort();
    }
    match res {
        Ok(v) => Ok(v),
        Err(p) => std::panic::resume_unwind(p),
    }
}
