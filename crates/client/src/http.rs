//! The server's API as the device calls it (blocking), over a [`Transport`]. Maps
//! transport failures and error bodies to [`ClientError`].

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use fieldsync_proto::upload_body::crc_header;
use fieldsync_proto::wire::{
    ErrorBody, ErrorCode, HEADER_BODY_CRC32, HEADER_DEVICE_ID, HEADER_DEVICE_SECRET, HEADER_KIND,
    HEADER_OP, HEADER_PROTOCOL, HEADER_UPLOAD_ID, LoginRequest, LoginResponse, PROTOCOL_VERSION,
    PairRequest, PairResponse, TaskSummary, UploadOutcome,
};
use fieldsync_proto::wire::{
    HEADER_FULL, HEADER_REPLICA, RedeemRequest, RedeemResponse, ReplicaPosition, SyncOp, Trigger,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::transport::{Request, Response, Transport, TransportError, UreqTransport};

/// Largest JSON answer the device reads (an acknowledgement of a large upload).
const RESPONSE_JSON_MAX_BYTES: u64 = 512 * 1024 * 1024;

/// Credentials a request carries.
pub struct Credentials<'a> {
    pub device_id: &'a str,
    pub device_secret: &'a str,
    pub token: Option<&'a str>,
}

pub struct Api {
    base: String,
    transport: Arc<dyn Transport>,
    /// What the device holds (`HEADER_HOLDING`), told with each request it signs.
    holding: Option<String>,
}

impl Api {
    /// The API of `server` through `transport`, or a fresh [`UreqTransport`] with
    /// `config`'s timeouts when the app gave none (trusting also `ca_pem` over https).
    pub fn new(
        server: &str,
        config: &ClientConfig,
        transport: Option<&Arc<dyn Transport>>,
        ca_pem: Option<&str>,
    ) -> Result<Api> {
        let base = server.trim_end_matches('/').to_string();
        let transport: Arc<dyn Transport> = match transport {
            Some(t) => Arc::clone(t),
            None if server.starts_with("https://") => Arc::new(
                UreqTransport::with_ca(config, ca_pem)
                    .map_err(|e| ClientError::Invalid(format!("the CA certificate: {e}")))?,
            ),
            None => Arc::new(UreqTransport::new(config)),
        };
        transport
            .check_server(server)
            .map_err(ClientError::Invalid)?;
        Ok(Api {
            base,
            transport,
            holding: None,
        })
    }

    /// Tells the server, with every request carrying credentials, what the device
    /// holds (pending entries, the replica's task): the operator's device list.
    pub fn holding(mut self, pending: u64, task: Option<&str>) -> Api {
        self.holding = Some(fieldsync_proto::wire::holding_header(pending, task));
        self
    }

    /// Sends a request with the protocol header and `creds`; a status of 400 or more
    /// is the error its body says.
    pub(crate) fn call(
        &self,
        method: &'static str,
        path: &str,
        creds: Option<&Credentials<'_>>,
        mut headers: Vec<(&'static str, String)>,
        body: Option<&[u8]>,
    ) -> Result<Response> {
        let mut all = vec![(HEADER_PROTOCOL, PROTOCOL_VERSION.to_string())];
        if let Some(c) = creds {
            all.push((HEADER_DEVICE_ID, c.device_id.to_string()));
            all.push((HEADER_DEVICE_SECRET, c.device_secret.to_string()));
            if let Some(t) = c.token {
                all.push(("authorization", format!("Bearer {t}")));
            }
            if let Some(h) = &self.holding {
                all.push((fieldsync_proto::wire::HEADER_HOLDING, h.clone()));
            }
        }
        all.append(&mut headers);
        let resp = self
            .transport
            .request(Request {
                method,
                url: format!("{}{path}", self.base),
                headers: all,
                body,
            })
            .map_err(|e| self.unreachable(e))?;
        if resp.status >= 400 {
            return Err(self.status_error(resp));
        }
        Ok(resp)
    }

    fn unreachable(&self, e: TransportError) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            detail: e.0,
        }
    }

    /// A request with a JSON body.
    fn call_json(
        &self,
        path: &str,
        creds: Option<&Credentials<'_>>,
        req: &impl Serialize,
    ) -> Result<Response> {
        let json = serde_json::to_vec(req).map_err(|e| ClientError::Io(e.to_string()))?;
        let headers = vec![("content-type", "application/json".to_string())];
        self.call("POST", path, creds, headers, Some(&json))
    }

    fn status_error(&self, resp: Response) -> ClientError {
        let status = resp.status;
        // A busy server's wait, bounded: a header cannot stall the device.
        let retry_after = resp
            .header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(60)));
        let mut body = String::new();
        let _ = resp.body.take(64 * 1024).read_to_string(&mut body);
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(err) if err.code == ErrorCode::Revoked => ClientError::Revoked {
                message: err.message,
                keep_changes: err.keep_changes,
            },
            Ok(err) if err.code.is_refusal() => ClientError::Refused(err.message),
            Ok(err) if err.code == ErrorCode::Busy => ClientError::ServerBusy {
                message: err.message,
                retry_after: retry_after.unwrap_or_default(),
            },
            Ok(err) => ClientError::Server {
                code: err.code,
                message: err.message,
            },
            Err(_) => ClientError::Server {
                code: ErrorCode::Internal,
                message: format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ),
            },
        }
    }

    /// Reads a whole JSON response, then parses it (parsing from the socket byte by
    /// byte is slow for a large acknowledgement).
    pub(crate) fn json<T: DeserializeOwned>(&self, resp: Response) -> Result<T> {
        let mut body = Vec::new();
        resp.body
            .take(RESPONSE_JSON_MAX_BYTES)
            .read_to_end(&mut body)
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                detail: e.to_string(),
            })?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Server {
            code: ErrorCode::Internal,
            message: format!("bad response: {e}"),
        })
    }

    pub fn pair(&self, req: &PairRequest) -> Result<PairResponse> {
        let resp = self.call_json("/api/v1/pair", None, req)?;
        self.json(resp)
    }

    pub fn login(&self, creds: &Credentials<'_>, req: &LoginRequest) -> Result<LoginResponse> {
        let resp = self.call_json("/api/v1/login", Some(creds), req)?;
        self.json(resp)
    }

    /// Exchanges an auto-sync ticket (device credentials only) for the session of its
    /// one automatic synchronization.
    pub fn redeem(&self, creds: &Credentials<'_>, ticket: &str) -> Result<RedeemResponse> {
        let req = RedeemRequest {
            ticket: ticket.to_string(),
        };
        let resp = self.call_json("/api/v1/tickets/redeem", Some(creds), &req)?;
        self.json(resp)
    }

    pub fn logout(&self, creds: &Credentials<'_>) -> Result<()> {
        self.call("POST", "/api/v1/logout", Some(creds), Vec::new(), None)?;
        Ok(())
    }

    pub fn tasks(&self, creds: &Credentials<'_>) -> Result<Vec<TaskSummary>> {
        let resp = self.call("GET", "/api/v1/tasks", Some(creds), Vec::new(), None)?;
        self.json(resp)
    }

    /// Starts a download; the reader yields the compressed stream.
    pub fn download(
        &self,
        creds: &Credentials<'_>,
        task: &str,
        op: SyncOp,
        trigger: Trigger,
        from: &DownloadFrom,
        keys_used: &[fieldsync_proto::wire::KeysUsed],
    ) -> Result<Box<dyn Read + Send + Sync + 'static>> {
        let path = format!("/api/v1/tasks/{}/download", encode_path_segment(task));
        let mut headers = vec![
            (HEADER_OP, op.as_str().to_string()),
            (HEADER_KIND, trigger.as_str().to_string()),
        ];
        // Table names are checked ASCII identifiers: the JSON is a valid header value.
        if !keys_used.is_empty() {
            headers.push((
                fieldsync_proto::wire::HEADER_KEYS_USED,
                serde_json::to_string(keys_used).expect("keys serialize"),
            ));
        }
        match from {
            DownloadFrom::Full => headers.push((HEADER_FULL, "1".to_string())),
            DownloadFrom::Nothing => {}
            // Names, hashes and epochs are ASCII: the JSON is a valid header value.
            DownloadFrom::Replica(p) => headers.push((
                HEADER_REPLICA,
                serde_json::to_string(p).expect("a position serializes"),
            )),
        }
        Ok(self.call("GET", &path, Some(creds), headers, None)?.body)
    }

    /// Sends an upload (its encoded body); the answer is the server's outcome.
    pub fn upload(
        &self,
        creds: &Credentials<'_>,
        upload_id: &str,
        body: &[u8],
        op: SyncOp,
        trigger: Trigger,
    ) -> Result<UploadOutcome> {
        let headers = vec![
            (HEADER_UPLOAD_ID, upload_id.to_string()),
            (HEADER_OP, op.as_str().to_string()),
            (HEADER_KIND, trigger.as_str().to_string()),
            (
                "content-type",
                "application/x-fieldsync-upload+zstd".to_string(),
            ),
            (HEADER_BODY_CRC32, crc_header(body)),
        ];
        let resp = self.call("POST", "/api/v1/uploads", Some(creds), headers, Some(body))?;
        self.json(resp)
    }
}

/// What a download starts from: the replica's position (the server may answer with
/// a delta), nothing (no replica), or a request for the whole slice.
#[derive(Debug, Clone)]
pub enum DownloadFrom {
    Replica(ReplicaPosition),
    Nothing,
    Full,
}

/// Percent-encodes a path segment (task names are checked names, but be exact).
pub(crate) fn encode_path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
