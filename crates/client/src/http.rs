//! The server's API as the device calls it (blocking HTTP). Maps transport failures
//! and error bodies to [`ClientError`].

use std::io::Read;
use std::time::Duration;

use fieldsync_proto::wire::{
    ErrorBody, ErrorCode, HEADER_BODY_CRC32, HEADER_DEVICE_ID, HEADER_DEVICE_SECRET, HEADER_KIND,
    HEADER_OP, HEADER_PROTOCOL, HEADER_UPLOAD_ID, LoginRequest, LoginResponse, PROTOCOL_VERSION,
    PairRequest, PairResponse, TaskSummary, UploadOutcome,
};
use serde::de::DeserializeOwned;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};

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
    agent: ureq::Agent,
}

impl Api {
    pub fn new(server: &str, config: &ClientConfig) -> Result<Api> {
        let base = server.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(ClientError::Invalid(format!(
                "server URL `{server}` must start with http:// (this build has no TLS client yet)"
            )));
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout_read(config.read_timeout)
            .timeout_write(config.read_timeout)
            .build();
        Ok(Api { base, agent })
    }

    fn request(&self, method: &str, path: &str, creds: Option<&Credentials<'_>>) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set(HEADER_PROTOCOL, &PROTOCOL_VERSION.to_string());
        if let Some(c) = creds {
            req = req
                .set(HEADER_DEVICE_ID, c.device_id)
                .set(HEADER_DEVICE_SECRET, c.device_secret);
            if let Some(t) = c.token {
                req = req.set("authorization", &format!("Bearer {t}"));
            }
        }
        req
    }

    fn map_err(&self, e: ureq::Error) -> ClientError {
        match e {
            ureq::Error::Status(status, resp) => {
                // A busy server's wait, bounded: a header cannot stall the device.
                let retry_after = resp
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(60)));
                let mut body = String::new();
                let _ = resp.into_reader().take(64 * 1024).read_to_string(&mut body);
                match serde_json::from_str::<ErrorBody>(&body) {
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
            ureq::Error::Transport(t) => ClientError::Unreachable {
                url: self.base.clone(),
                detail: t.to_string(),
            },
        }
    }

    /// Reads a whole JSON response, then parses it (parsing from the socket byte by
    /// byte is slow for a large acknowledgement).
    fn json<T: DeserializeOwned>(&self, resp: ureq::Response) -> Result<T> {
        let mut body = Vec::new();
        resp.into_reader()
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
        let resp = self
            .request("POST", "/api/v1/pair", None)
            .send_json(req)
            .map_err(|e| self.map_err(e))?;
        self.json(resp)
    }

    pub fn login(&self, creds: &Credentials<'_>, req: &LoginRequest) -> Result<LoginResponse> {
        let resp = self
            .request("POST", "/api/v1/login", Some(creds))
            .send_json(req)
            .map_err(|e| self.map_err(e))?;
        self.json(resp)
    }

    pub fn logout(&self, creds: &Credentials<'_>) -> Result<()> {
        self.request("POST", "/api/v1/logout", Some(creds))
            .call()
            .map_err(|e| self.map_err(e))?;
        Ok(())
    }

    pub fn tasks(&self, creds: &Credentials<'_>) -> Result<Vec<TaskSummary>> {
        let resp = self
            .request("GET", "/api/v1/tasks", Some(creds))
            .call()
            .map_err(|e| self.map_err(e))?;
        self.json(resp)
    }

    /// Starts a download; the reader yields the compressed stream.
    pub fn download(
        &self,
        creds: &Credentials<'_>,
        task: &str,
        op: &str,
        kind: &str,
    ) -> Result<Box<dyn Read + Send + Sync + 'static>> {
        let path = format!("/api/v1/tasks/{}/download", encode_path_segment(task));
        let resp = self
            .request("GET", &path, Some(creds))
            .set(HEADER_OP, op)
            .set(HEADER_KIND, kind)
            .call()
            .map_err(|e| self.map_err(e))?;
        Ok(resp.into_reader())
    }
}

impl Api {
    /// Sends an upload (zstd-compressed JSON); the answer is the server's outcome.
    pub fn upload(
        &self,
        creds: &Credentials<'_>,
        upload_id: &str,
        body: &[u8],
        op: &str,
        kind: &str,
    ) -> Result<UploadOutcome> {
        let resp = self
            .request("POST", "/api/v1/uploads", Some(creds))
            .set(HEADER_UPLOAD_ID, upload_id)
            .set(HEADER_OP, op)
            .set(HEADER_KIND, kind)
            .set("content-type", "application/x-fieldsync-upload+zstd")
            .set(
                HEADER_BODY_CRC32,
                &fieldsync_proto::upload_body::crc_header(body),
            )
            .send_bytes(body)
            .map_err(|e| self.map_err(e))?;
        self.json(resp)
    }
}

/// Percent-encodes a path segment (task names are checked names, but be exact).
fn encode_path_segment(s: &str) -> String {
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
