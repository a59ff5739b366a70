//! The seam between the sync code and an HTTP stack: the few requests fieldsync makes,
//! as a trait an app implements with its platform's client (Android's, iOS's, one with
//! TLS). [`UreqTransport`], blocking HTTP/1.1 over `ureq` (with rustls for https),
//! is the default.

use std::io::Read;

use crate::config::ClientConfig;

/// One request: `url` is the server's URL joined with the API path.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    pub url: String,
    /// Header names in lower case, values as sent.
    pub headers: Vec<(&'static str, String)>,
    /// `None`: a request without a body; else the whole body (JSON or an upload).
    pub body: Option<&'a [u8]>,
}

/// The server's answer, whatever its status: fieldsync reads error bodies itself.
pub struct Response {
    pub status: u16,
    /// Header names as received; [`Response::header`] looks them up in any case.
    pub headers: Vec<(String, String)>,
    /// The body as it arrives (a download streams through it).
    pub body: Box<dyn Read + Send + Sync + 'static>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The server could not be reached or the exchange broke off (connect, timeouts,
/// reset): a transient failure the device retries.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(pub String);

/// An HTTP stack the device calls the server through. Timeouts are the transport's;
/// retries and backoff stay fieldsync's ([`ClientConfig::attempts`],
/// [`ClientConfig::backoff`]).
pub trait Transport: Send + Sync {
    /// Refuses a server URL this transport cannot call (why, for the user).
    fn check_server(&self, _server: &str) -> Result<(), String> {
        Ok(())
    }

    /// Sends `request` and returns the answer, whatever its status.
    fn request(&self, request: Request<'_>) -> Result<Response, TransportError>;
}

/// Blocking HTTP/1.1 over `ureq`, with [`ClientConfig`]'s connect and read timeouts;
/// `https://` through rustls, trusting the system's certificate authorities and the
/// one given at pairing.
pub struct UreqTransport {
    agent: ureq::Agent,
}

impl UreqTransport {
    /// A transport with the system's certificate authorities for `https://`.
    pub fn new(config: &ClientConfig) -> UreqTransport {
        UreqTransport::with_ca(config, None).unwrap_or_else(|_| UreqTransport {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(config.connect_timeout)
                .timeout_read(config.read_timeout)
                .timeout_write(config.read_timeout)
                .build(),
        })
    }

    /// A transport trusting also `ca_pem` (PEM text, `device pair --ca-cert`) for
    /// `https://`; an error says why the PEM cannot be used.
    pub fn with_ca(config: &ClientConfig, ca_pem: Option<&str>) -> Result<UreqTransport, String> {
        let agent = fieldsync_https::agent(config.connect_timeout, config.read_timeout, ca_pem)?;
        Ok(UreqTransport { agent })
    }
}

impl Transport for UreqTransport {
    fn check_server(&self, server: &str) -> Result<(), String> {
        if server.starts_with("http://") || server.starts_with("https://") {
            Ok(())
        } else {
            Err(format!(
                "server URL `{server}` must start with https:// (or http:// on this machine \
                 or behind a proxy that does TLS)"
            ))
        }
    }

    fn request(&self, request: Request<'_>) -> Result<Response, TransportError> {
        let mut req = self.agent.request(request.method, &request.url);
        for (name, value) in &request.headers {
            req = req.set(name, value);
        }
        let sent = match request.body {
            Some(body) => req.send_bytes(body),
            None => req.call(),
        };
        let resp = match sent {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
            Err(ureq::Error::Transport(t)) => return Err(TransportError(t.to_string())),
        };
        let headers = resp
            .headers_names()
            .into_iter()
            .filter_map(|n| resp.header(&n).map(|v| (n.clone(), v.to_string())))
            .collect();
        Ok(Response {
            status: resp.status(),
            headers,
            body: resp.into_reader(),
        })
    }
}
