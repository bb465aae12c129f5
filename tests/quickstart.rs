//! `scripts/quickstart` checks its runtime dependencies before it builds anything, and
//! names the packages that are missing (`--check` only checks: it installs nothing).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A directory of symlinks to every command on PATH (and in the sbin directories) except
/// `without`: a PATH on which those commands are missing.
fn path_without(without: &[&str]) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("kvmnet-path-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    for d in std::env::split_paths(&path).chain(sbin) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let link = dir.join(&name);
            if without.iter().any(|w| name == *w) || link.exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), link);
        }
    }
    dir
}

fn check(path: &Path) -> Output {
    Command::new("/bin/bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart"))
        .arg("--check")
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn quickstart_names_the_missing_packages() {
    let all = path_without(&[]);
    let everything_there = ["nft", "ip", "ping", "cc", "cargo"]
        .iter()
        .all(|c| all.join(c).exists());
    let o = check(&all);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if everything_there {
        assert!(o.status.success(), "{err}");
        assert_eq!(err, "");
    }
    std::fs::remove_dir_all(&all).unwrap();

    let no_nft = path_without(&["nft", "ping"]);
    let o = check(&no_nft);
    std::fs::remove_dir_all(&no_nft).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot find nft ping (Debian/Ubuntu packages: nftables iputils-ping)"),
        "{err}"
    );
    assert!(
        err.contains("apt-get install nftables iputils-ping"),
        "{err}"
    );
    assert!(!err.contains("iproute2"), "ip is there: {err}");
}

/// As root on Debian or Ubuntu, what is missing is installed with apt-get (here a stand-in
/// that records its arguments and "installs" nft), and the script says so.
#[test]
fn quickstart_installs_the_missing_packages_as_root_on_debian() {
    let debian = std::fs::read_to_string("/etc/os-release")
        .is_ok_and(|t| t.lines().any(|l| l == "ID=debian" || l == "ID=ubuntu"));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !debian {
        return;
    }
    let dir = path_without(&["nft", "apt-get"]);
    let log = dir.join("apt-get.log");
    let apt = dir.join("apt-get");
    std::fs::write(
        &apt,
        format!(
            "#!/bin/sh\necho \"$*\" >> {log}\ncase \"$*\" in *install*) ln -s /bin/true {nft} ;; esac\n",
            log = log.display(),
            nft = dir.join("nft").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&apt, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = Command::new("/bin/bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/quickstart"))
        .arg("--deps")
        .env("PATH", &dir)
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("installing the missing runtime packages: nftables"),
        "{err}"
    );
    assert!(calls.contains("update"), "{calls}");
    assert!(
        calls.contains("install -y -qq --no-install-recommends nftables"),
        "{calls}"
    );
    assert!(!err.contains("cannot find"), "installed: {err}");
}
