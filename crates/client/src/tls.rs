//! TLS for the default transport: rustls (with ring) trusting the system's
//! certificate authorities plus the one given at pairing (`device pair --ca-cert`),
//! plugged into `ureq` as its TLS connector.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

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
        for cert in parse_ca(pem)? {
            roots
                .add(cert)
                .map_err(|e| format!("the CA certificate cannot be used: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `ureq`'s TLS connector over a rustls [`ClientConfig`]. The handshake completes
/// here, so a certificate the device does not trust fails the connection at once,
/// with a message saying so.
pub struct Connector(pub Arc<ClientConfig>);

impl ureq::TlsConnector for Connector {
    fn connect(
        &self,
        dns_name: &str,
        mut io: Box<dyn ureq::ReadWrite>,
    ) -> Result<Box<dyn ureq::ReadWrite>, ureq::Error> {
        let name = ServerName::try_from(dns_name.to_string()).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("`{dns_name}`: {e}"))
        })?;
        let mut conn = ClientConnection::new(self.0.clone(), name).map_err(io::Error::other)?;
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
        "; the device does not trust the server's certificate: pair with --ca-cert \
         naming the certificate authority that signed it"
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

/// Whether `server` is plain `http://` to a host other than this machine: its
/// passwords and secrets would cross the network readable by anyone on the way.
pub fn plain_http_elsewhere(server: &str) -> bool {
    let Some(rest) = server.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let loopback = host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback());
    !(loopback || host.eq_ignore_ascii_case("localhost"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_flagged_off_this_machine_only() {
        for here in [
            "http://127.0.0.1:8440",
            "http://127.8.9.1",
            "http://[::1]:80/x",
            "http://[::ffff:127.0.0.1]:8440",
            "http://localhost:1",
            "https://fieldsync.example",
            "https://10.0.0.5:8440",
        ] {
            assert!(!plain_http_elsewhere(here), "{here}");
        }
        for away in [
            "http://10.0.0.5:8440",
            "http://fieldsync.example",
            "http://[2001:db8::1]:8440",
            "http://localhost.evil.example",
        ] {
            assert!(plain_http_elsewhere(away), "{away}");
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        assert!(parse_ca("").unwrap_err().contains("no certificate"));
        assert!(parse_ca("hello").is_err());
    }
}
