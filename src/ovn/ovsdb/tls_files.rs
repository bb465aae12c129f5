//! doctor's look at `ovn.ssl`'s files before a connection needs them. A certificate that
//! expired stops this host's kvmnet and, through the `SSL` row, its ovn-controller, at
//! their next reconnection; OVS's PKI signs certificates for ten years, but a deployment's
//! own CA often for one, so the expiry is what goes wrong months after setup.
//!
//! What can be known without the server: the files read and parse, the key is the
//! certificate's, and the certificate is valid now and for [`EXPIRY_WARN_DAYS`] more. Its
//! chain is checked against `ca_cert` too, as an OVS PKI signs the databases' and the
//! chassis's certificates with one CA; a certificate another CA signed is a warning only,
//! since the server checks it against its own CA certificate, not this host's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, Error};

use super::tls::{Files, Ssl};

/// A certificate expiring within this many days is warned of.
pub const EXPIRY_WARN_DAYS: u64 = 30;

const DAY: u64 = 86_400;

/// How `ovn.ssl`'s files stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilesStand {
    /// Usable, signed by `ca_cert`, and valid for [`EXPIRY_WARN_DAYS`] more at least.
    Good,
    /// Usable, but the certificate expires in this many days.
    ExpiresSoon { days: u64 },
    /// Usable, but `ca_cert` did not sign the certificate (why): the server accepts it
    /// only if its own CA certificate did.
    OtherIssuer(String),
    /// Not usable: why, naming the file.
    Unusable(String),
}

fn unix(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn secs(t: UnixTime) -> u64 {
    t.as_secs()
}

/// Whole days from `from` to `to` (seconds since the epoch), rounded up: a certificate
/// valid for one more hour expires "in 1 day".
fn days_until(from: u64, to: u64) -> u64 {
    to.saturating_sub(from).div_ceil(DAY)
}

/// Examines `ssl`'s files as they are at `now`.
pub fn examine(ssl: &Ssl, now: SystemTime) -> FilesStand {
    let files = match Files::read(ssl) {
        Ok(f) => f,
        Err(e) => return FilesStand::Unusable(e.to_string()),
    };
    let (roots, chain, provider) = (files.roots.clone(), files.chain.clone(), files.provider());
    // The configuration is what a connection would make: it refuses a key that is not the
    // certificate's.
    if let Err(e) = files.config() {
        return FilesStand::Unusable(e.to_string());
    }
    let cert = || format!("certificate {}", ssl.certificate.display());
    let verifier = match WebPkiClientVerifier::builder_with_provider(roots, provider).build() {
        Ok(v) => v,
        Err(e) => return FilesStand::Unusable(format!("ca_cert {}: {e}", ssl.ca_cert.display())),
    };
    let at = |t: SystemTime| verifier.verify_client_cert(&chain[0], &chain[1..], unix(t));
    let now_secs = secs(unix(now));
    match at(now) {
        Ok(_) => {
            let later = now + Duration::from_secs(EXPIRY_WARN_DAYS * DAY);
            match at(later) {
                Err(Error::InvalidCertificate(CertificateError::ExpiredContext {
                    not_after,
                    ..
                })) => FilesStand::ExpiresSoon {
                    days: days_until(now_secs, secs(not_after)),
                },
                Err(Error::InvalidCertificate(CertificateError::Expired)) => {
                    FilesStand::ExpiresSoon {
                        days: EXPIRY_WARN_DAYS,
                    }
                }
                _ => FilesStand::Good,
            }
        }
        Err(Error::InvalidCertificate(CertificateError::ExpiredContext { not_after, .. })) => {
            FilesStand::Unusable(format!(
                "{}: expired {} day(s) ago",
                cert(),
                days_until(secs(not_after), now_secs).max(1)
            ))
        }
        Err(Error::InvalidCertificate(CertificateError::NotValidYetContext {
            not_before, ..
        })) => FilesStand::Unusable(format!(
            "{}: not valid for {} more day(s)",
            cert(),
            days_until(now_secs, secs(not_before)).max(1)
        )),
        Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            FilesStand::OtherIssuer(format!(
                "{} is not signed by ca_cert {}",
                cert(),
                ssl.ca_cert.display()
            ))
        }
        Err(e) => FilesStand::Unusable(format!("{}: {e}", cert())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_up() {
        assert_eq!(days_until(0, 1), 1);
        assert_eq!(days_until(0, DAY), 1);
        assert_eq!(days_until(0, DAY + 1), 2);
        assert_eq!(days_until(5, 4), 0);
    }

    #[test]
    fn missing_files_are_named() {
        let ssl = Ssl {
            private_key: "/nonexistent/key.pem".into(),
            certificate: "/nonexistent/cert.pem".into(),
            ca_cert: "/nonexistent/ca.pem".into(),
        };
        match examine(&ssl, SystemTime::now()) {
            FilesStand::Unusable(why) => assert!(why.contains("/nonexistent/ca.pem"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
