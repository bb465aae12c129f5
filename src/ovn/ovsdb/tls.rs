//! `ssl:` remotes: TLS as Open vSwitch's own stream-ssl speaks it, so that the certificates
//! an OVN deployment already has (made with `ovs-pki`, or by its own CA) work unchanged.
//!
//! - The client presents its certificate and key: ovsdb-server requires one of every peer.
//! - A server is accepted when its certificate chains to the CA certificate. Like OVS, no
//!   host name or address is checked against it: an OVS PKI names none (its certificates
//!   carry `CN=NAME id:UUID`), and OVN's daemons authenticate each other by CA alone.
//! - The files are one setting for the whole process, as in OVS's library (and its tools'
//!   `--private-key`, `--certificate`, `--ca-cert`): the engine sets them from the spec's
//!   `ovn.ssl`, or from the state record when it works without a spec. They are read at each
//!   connection, so renewed certificates are used from the next reconnection on.
//!
//! rustls does the TLS: sans-IO, so the connection's reader thread and its writers share one
//! TLS state without either holding it while it waits on the socket.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct};

pub use kvmnet_core::spec::ovn::Ssl;

/// The process's TLS files (see the module's comment).
static FILES: Mutex<Option<Ssl>> = Mutex::new(None);

fn files() -> MutexGuard<'static, Option<Ssl>> {
    FILES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets the files `ssl:` remotes are reached with from now on (`None`: none, and `ssl:`
/// remotes are refused).
pub fn configure(ssl: Option<&Ssl>) {
    *files() = ssl.cloned();
}

/// The files set by [`configure`].
pub fn configured() -> Option<Ssl> {
    files().clone()
}

/// What went wrong setting up TLS: the file and why, or the handshake's error.
fn failed(why: impl std::fmt::Display) -> io::Error {
    io::Error::other(why.to_string())
}

/// The client configuration for the files set now.
fn client_config() -> io::Result<Arc<ClientConfig>> {
    let Some(ssl) = configured() else {
        return Err(failed(
            "an ssl: remote needs ovn.ssl (private_key, certificate, ca_cert)",
        ));
    };
    Files::read(&ssl)?.config()
}

/// `ovn.ssl`'s files, read and parsed.
pub(crate) struct Files<'a> {
    ssl: &'a Ssl,
    provider: Arc<rustls::crypto::CryptoProvider>,
    pub(crate) roots: Arc<rustls::RootCertStore>,
    /// The certificate file's chain: this host's certificate first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl<'a> Files<'a> {
    /// Reads the three files; an error names the file and says what is wrong with it.
    pub(crate) fn read(ssl: &'a Ssl) -> io::Result<Files<'a>> {
        // ring, not aws-lc-rs: no C build needing cmake. rustls marks it deprecated for
        // having no post-quantum key exchange; ovsdb-server (OpenSSL 3.0 here) offers none
        // either.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca =
            |e: &dyn std::fmt::Display| failed(format!("ca_cert {}: {e}", ssl.ca_cert.display()));
        for c in CertificateDer::pem_file_iter(&ssl.ca_cert).map_err(|e| ca(&e))? {
            roots.add(c.map_err(|e| ca(&e))?).map_err(|e| ca(&e))?;
        }
        if roots.is_empty() {
            return Err(ca(&"no certificate in the file"));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ssl.certificate)
            .and_then(|i| i.collect())
            .map_err(|e| failed(format!("certificate {}: {e}", ssl.certificate.display())))?;
        if chain.is_empty() {
            return Err(failed(format!(
                "certificate {}: no certificate in the file",
                ssl.certificate.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&ssl.private_key)
            .map_err(|e| failed(format!("private_key {}: {e}", ssl.private_key.display())))?;
        Ok(Files {
            ssl,
            provider,
            roots: Arc::new(roots),
            chain,
            key,
        })
    }

    pub(crate) fn provider(&self) -> Arc<rustls::crypto::CryptoProvider> {
        self.provider.clone()
    }

    /// The client configuration: refused when the key is not the certificate's.
    pub(crate) fn config(self) -> io::Result<Arc<ClientConfig>> {
        let ssl = self.ssl;
        let ca =
            |e: &dyn std::fmt::Display| failed(format!("ca_cert {}: {e}", ssl.ca_cert.display()));
        let webpki = WebPkiServerVerifier::builder_with_provider(self.roots, self.provider.clone())
            .build()
            .map_err(|e| ca(&e))?;
        let config = ClientConfig::builder_with_provider(self.provider)
            .with_safe_default_protocol_versions()
            .map_err(failed)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ByCa(webpki)))
            .with_client_auth_cert(self.chain, self.key)
            .map_err(|e| {
                failed(format!(
                    "private_key {} and certificate {}: {e}",
                    ssl.private_key.display(),
                    ssl.certificate.display()
                ))
            })?;
        Ok(Arc::new(config))
    }
}

/// WebPKI's verification of the chain to the CA, without its check of the name (see the
/// module's comment). WebPKI checks the name last, once the chain holds: a name error means
/// the chain was good.
#[derive(Debug)]
struct ByCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ByCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One TLS connection: the socket and the TLS state, shared by the reading and the writing
/// half. The `send` lock orders what goes onto the socket: TLS records must leave in the
/// order the state made them, whichever half made them.
pub struct TlsStream {
    sock: TcpStream,
    tls: Arc<Mutex<ClientConnection>>,
    send: Arc<Mutex<()>>,
    /// What the reading half read off the socket and the TLS state has not taken yet:
    /// `raw[taken..filled]`.
    raw: Vec<u8>,
    taken: usize,
    filled: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TlsStream {
    /// Connects to `host:port` and completes the handshake within `timeout`.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<TlsStream> {
        let config = client_config()?;
        let host = addr
            .rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        // Any name will do (none is checked): an address is sent as no SNI at all.
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("ovsdb").expect("a valid name"));
        let mut tls = ClientConnection::new(config, name).map_err(failed)?;
        let mut sock = super::rpc::connect_tcp(addr, timeout)?;
        let _ = sock.set_nodelay(true);
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    failed(format!("no TLS handshake within {timeout:?}"))
                } else {
                    failed(format!("TLS handshake: {e}"))
                }
            })?;
        }
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        Ok(TlsStream {
            sock,
            tls: Arc::new(Mutex::new(tls)),
            send: Arc::default(),
            raw: Vec::new(),
            taken: 0,
            filled: 0,
        })
    }

    /// A second handle on the same connection (one reads, one writes).
    pub fn try_clone(&self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            sock: self.sock.try_clone()?,
            tls: self.tls.clone(),
            send: self.send.clone(),
            raw: Vec::new(),
            taken: 0,
            filled: 0,
        })
    }

    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    /// Takes out what the TLS state has to send. The caller sends it, with the `send` lock
    /// held since before it took the state's lock, and no longer holding the latter.
    fn records(tls: &mut ClientConnection) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out)?;
        }
        Ok(out)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.raw.is_empty() {
            self.raw = vec![0u8; 16 * 1024];
        }
        loop {
            {
                let _send = lock(&self.send);
                let out = {
                    let mut tls = lock(&self.tls);
                    match tls.reader().read(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                    // A key update asks for an answer: records made while reading go out too.
                    Self::records(&mut tls)?
                };
                (&self.sock).write_all(&out)?;
            }
            if self.taken == self.filled {
                // The socket is read without the TLS state locked: writers go on meanwhile.
                let n = (&self.sock).read(&mut self.raw)?;
                if n == 0 {
                    return Ok(0);
                }
                (self.taken, self.filled) = (0, n);
            }
            // One step at a time, the plaintext handed out between steps: the TLS state
            // holds a bounded amount of it, and refuses more records past that.
            let mut tls = lock(&self.tls);
            let mut rest = &self.raw[self.taken..self.filled];
            let before = rest.len();
            tls.read_tls(&mut rest)?;
            self.taken += before - rest.len();
            tls.process_new_packets().map_err(failed)?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _send = lock(&self.send);
        let (n, out) = {
            let mut tls = lock(&self.tls);
            let n = tls.writer().write(buf)?;
            (n, Self::records(&mut tls)?)
        };
        (&self.sock).write_all(&out)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
