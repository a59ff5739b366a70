//! HTTPS for fieldsync's blocking HTTP clients (the device's calls to the server, the
//! server's calls to S3-compatible storage): rustls with ring as its one crypto
//! provider, trusting the system's certificate authorities plus one the caller gives
//! (`device pair --ca-cert`), plugged into `ureq` as its TLS connector.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The certificates of a PEM text, or why it holds none.
pub fn parse_ca(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file ({e})"))?;
    if certs.is_empty() {
        return Err("no certificate in it (expected -----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(certs)
}

/// Whom the device trusts: the system's certificate authorities and `ca` (PEM).
pub fn client_config(ca: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    // A system without a certificate folder still trusts the pairing's authority.
    let (_added, _ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = ca {
        add_ca(&mut roots, pem)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn add_ca(roots: &mut RootCertStore, pem: &str) -> Result<(), String> {
    for cert in parse_ca(pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
    }
    Ok(())
}

/// `ureq`'s TLS connector over a rustls [`ClientConfig`], made at the first `https://`
/// connection: reading the system's certificate authorities (a folder of PEM files)
/// was a tenth of the CPU of a device's sync against a plain `http://` server, which
/// never needs them. The handshake completes here, so a certificate the device does
/// not trust fails the connection at once, with a message saying so.
pub struct Connector {
    ca: Option<String>,
    config: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl Connector {
    /// A connector trusting the system's authorities and `ca` (PEM, checked now).
    pub fn new(ca: Option<&str>) -> Result<Connector, String> {
        if let Some(pem) = ca {
            let mut roots = RootCertStore::empty();
            add_ca(&mut roots, pem)?;
        }
        Ok(Connector {
            ca: ca.map(str::to_string),
            config: OnceLock::new(),
        })
    }

    fn config(&self) -> io::Result<Arc<ClientConfig>> {
        self.config
            .get_or_init(|| client_config(self.ca.as_deref()))
            .clone()
            .map_err(io::Error::other)
    }
}

impl ureq::TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let name = ServerName::try_from(dns_name.to_string()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("`{dns_name}`: {e}"))
        })?;
        let mut conn = ClientConnection::new(self.config()?, name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut io)
                .map_err(|e| handshake_error(dns_name, e))?;
        }
        Ok(Box::new(TlsStream(StreamOwned::new(conn, io))))
    }
}

fn handshake_error(host: &str, e: io::Error) -> io::Error {
    let text = e.to_string();
    let hint = if text.contains("invalid peer certificate") {
        "; its certificate is not trusted here: give the certificate authority that \
         signed it (the device: `device pair --ca-cert`)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("TLS with {host}: {text}{hint}"))
}

/// A TLS connection as `ureq` reads and writes it; its socket stays reachable so
/// the agent's timeouts apply to it.
struct TlsStream(StreamOwned<ClientConnection, Box<dyn ureq::ReadWrite>>);

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

impl ureq::ReadWrite for TlsStream {
    fn socket(&self) -> Option<&TcpStream> {
        self.0.sock.socket()
    }
}

/// A `ureq` agent with these timeouts that speaks `https://` through [`Connector`],
/// trusting also `ca_pem`; an error says why the PEM cannot be used.
pub fn agent(
    connect: std::time::Duration,
    read: std::time::Duration,
    ca_pem: Option<&str>,
) -> Result<ureq::Agent, String> {
    let tls = Connector::new(ca_pem)?;
    Ok(ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(read)
        .timeout_write(read)
        .tls_connector(Arc::new(tls))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        assert!(parse_ca("").unwrap_err().contains("no certificate"));
        assert!(parse_ca("hello").is_err());
    }

    #[test]
    fn the_pairing_ca_is_checked_at_once_and_the_system_ones_read_at_the_first_https() {
        assert!(Connector::new(Some("hello")).is_err());
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(
            Connector::new(Some(junk)).is_err(),
            "a PEM that is no certificate"
        );
        let connector = Connector::new(None).unwrap();
        assert!(
            connector.config.get().is_none(),
            "nothing read before a connection"
        );
        connector.config().unwrap();
        assert!(connector.config.get().is_some());
    }
}
