//! The nft command, used for kvmnet's own table only: `nft list table inet kvmnet` to observe,
//! one `nft -f -` script per change so every change is a single transaction.

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::nft::{self, NftTable};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft ({0}); install the nftables package")]
    Missing(std::io::Error),
    #[error("nft rejected kvmnet's tables: {0}")]
    Rejected(String),
    #[error("nft list table: {0}")]
    List(String),
}

fn nft() -> Command {
    let mut c = Command::new("nft");
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn available() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn list(family: &str) -> Result<Option<String>, NftError> {
    let out = match nft()
        .args(["list", "table", family, nft::TABLE])
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NftError::Missing(e)),
    };
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NftError::List(err.trim().to_string()))
    }
}

/// kvmnet's tables as they are now, or `None` when there are none (or no nft on this host:
/// then there cannot be any either).
pub fn observe() -> Result<Option<NftTable>, NftError> {
    let mut listings = Vec::new();
    for family in [nft::FAMILY, nft::BRIDGE_FAMILY] {
        if let Some(text) = list(family)? {
            listings.push((family, text));
        }
    }
    Ok(nft::parse_listings(&listings))
}

/// Replace kvmnet's table with `to` (or remove it) in one transaction.
pub fn replace(to: Option<&NftTable>) -> Result<(), NftError> {
    let script = nft::replace_script(to);
    let mut child = nft().args(["-f", "-"]).spawn().map_err(NftError::Missing)?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .map_err(NftError::Missing)?;
    let out = child.wait_with_output().map_err(NftError::Missing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Rejected(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}
