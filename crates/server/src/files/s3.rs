//! S3-compatible object storage (`--files s3://BUCKET/PREFIX`): AWS S3, MinIO,
//! SeaweedFS, Ceph, Garage. Objects are `PREFIX/SHA256` in the bucket, addressed
//! path-style (`ENDPOINT/BUCKET/KEY`, which every S3-compatible server takes),
//! requests signed with AWS Signature Version 4 over `fieldsync-https`. The content's
//! SHA-256 is its name, so a put is signed with its payload hash and the storage
//! checks it too. Uploads from devices are spooled in a local folder until whole.
//!
//! Configured as the AWS tools are: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION` (default `us-east-1`), `AWS_ENDPOINT_URL` (default AWS's endpoint of
//! the region); `FIELDSYNC_FILES_SPOOL` names the spool folder (default in the
//! system's temporary folder).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{FileStore, FileStoreError};

/// Where and as whom: read from the environment by [`S3Store::from_env`].
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `http(s)://host[:port]`, no trailing slash.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    pub access_key: String,
    pub secret_key: String,
    pub spool: PathBuf,
}

pub struct S3Store {
    config: S3Config,
    /// `host[:port]` of the endpoint, as signed.
    host: String,
    agent: ureq::Agent,
}

fn unsupported(text: String) -> FileStoreError {
    FileStoreError::Io(io::Error::new(io::ErrorKind::InvalidInput, text))
}

impl S3Store {
    /// The store `s3://BUCKET/PREFIX` names, configured from the environment.
    pub fn from_env(spec: &str) -> Result<S3Store, FileStoreError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let rest = spec.strip_prefix("s3://").unwrap_or(spec);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(unsupported(format!(
                "`{spec}`: no bucket (s3://BUCKET/PREFIX)"
            )));
        }
        let (Some(access_key), Some(secret_key)) =
            (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(unsupported(format!(
                "`{spec}`: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION, \
                 AWS_ENDPOINT_URL for storage other than AWS)"
            )));
        };
        let region = var("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        let endpoint = var("AWS_ENDPOINT_URL")
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_string();
        let spool = var("FIELDSYNC_FILES_SPOOL")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("fieldsync-spool"));
        let store = S3Store::new(S3Config {
            endpoint,
            region,
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            access_key,
            secret_key,
            spool,
        })?;
        store.check()?;
        Ok(store)
    }

    /// Whether the bucket is there and the identity may use it: said at once, at the
    /// server's start or the admin command, not at the first device's fetch.
    pub fn check(&self) -> Result<(), FileStoreError> {
        let path = format!("/{}", encode(&self.config.bucket));
        match self.request("HEAD", &path, EMPTY).call() {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(404, _)) => Err(FileStoreError::Io(io::Error::other(format!(
                "no bucket `{}` at {} (NoSuchBucket)",
                self.config.bucket, self.config.endpoint
            )))),
            Err(ureq::Error::Status(code @ (401 | 403), _)) => {
                Err(FileStoreError::Io(io::Error::other(format!(
                    "bucket `{}` at {}: HTTP {code}: the access key or its secret is wrong, \
                     or may not use the bucket",
                    self.config.bucket, self.config.endpoint
                ))))
            }
            Err(e) => Err(self.failed("checking the bucket", e)),
        }
    }

    pub fn new(config: S3Config) -> Result<S3Store, FileStoreError> {
        let host = config
            .endpoint
            .strip_prefix("https://")
            .or_else(|| config.endpoint.strip_prefix("http://"))
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| {
                unsupported(format!(
                    "AWS_ENDPOINT_URL `{}`: http(s)://HOST[:PORT]",
                    config.endpoint
                ))
            })?
            .to_string();
        let agent = fieldsync_https::agent(Duration::from_secs(10), Duration::from_secs(60), None)
            .map_err(unsupported)?;
        fs::create_dir_all(&config.spool)?;
        Ok(S3Store {
            config,
            host,
            agent,
        })
    }

    /// The object's path, each segment percent-encoded as SigV4 wants it.
    fn path(&self, sha256: &str) -> Result<String, FileStoreError> {
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FileStoreError::BadName(sha256.to_string()));
        }
        let mut path = format!("/{}", encode(&self.config.bucket));
        for segment in self.config.prefix.split('/').filter(|s| !s.is_empty()) {
            path.push('/');
            path.push_str(&encode(segment));
        }
        path.push('/');
        path.push_str(sha256);
        Ok(path)
    }

    /// A signed request for `method path`; `payload` is the body's SHA-256 (hex).
    fn request(&self, method: &str, path: &str, payload: &str) -> ureq::Request {
        let now = fieldsync_proto::time::format_unix_ms(fieldsync_proto::time::now_unix_ms());
        let (auth, amz_date) = sign(&self.config, &self.host, method, path, payload, &now);
        self.agent
            .request(method, &format!("{}{path}", self.config.endpoint))
            .set("x-amz-date", &amz_date)
            .set("x-amz-content-sha256", payload)
            .set("authorization", &auth)
    }

    fn failed(&self, what: &str, e: ureq::Error) -> FileStoreError {
        let detail = match e {
            ureq::Error::Status(code, resp) => {
                let body = resp.into_string().unwrap_or_default();
                match between(&body, "<Code>", "</Code>") {
                    Some(reason) => format!("HTTP {code} {reason}"),
                    None => format!("HTTP {code}"),
                }
            }
            ureq::Error::Transport(t) => t.to_string(),
        };
        FileStoreError::Io(io::Error::other(format!(
            "{what} at {}/{}: {detail}",
            self.config.endpoint, self.config.bucket
        )))
    }
}

/// The hash of an empty body, for requests without one.
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

impl FileStore for S3Store {
    fn size(&self, sha256: &str) -> Result<Option<u64>, FileStoreError> {
        let path = self.path(sha256)?;
        match self.request("HEAD", &path, EMPTY).call() {
            Ok(resp) => Ok(resp.header("content-length").and_then(|n| n.parse().ok())),
            Err(ureq::Error::Status(404, _)) => Ok(None),
            Err(e) => Err(self.failed("looking up a file", e)),
        }
    }

    fn open(&self, sha256: &str, offset: u64) -> Result<Box<dyn Read + Send>, FileStoreError> {
        let path = self.path(sha256)?;
        let mut req = self.request("GET", &path, EMPTY);
        if offset > 0 {
            req = req.set("range", &format!("bytes={offset}-"));
        }
        match req.call() {
            Ok(resp) => Ok(resp.into_reader()),
            Err(ureq::Error::Status(404, _)) => Err(FileStoreError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {sha256} in the store"),
            ))),
            Err(e) => Err(self.failed("reading a file", e)),
        }
    }

    fn put(&self, sha256: &str, content: &mut dyn Read) -> Result<u64, FileStoreError> {
        let path = self.path(sha256)?;
        if let Some(n) = self.size(sha256)? {
            return Ok(n);
        }
        // Whole and verified before the storage sees a byte: the put is signed with
        // the hash, and its length must be known.
        let spooled = self
            .config
            .spool
            .join(format!("put-{sha256}.{}", fieldsync_store::random_hex(8)));
        let result = (|| {
            let (_, n_bytes) = super::spool_verified(content, &spooled, sha256)?;
            let body = File::open(&spooled)?;
            self.request("PUT", &path, sha256)
                .set("content-length", &n_bytes.to_string())
                .send(body)
                .map_err(|e| self.failed("storing a file", e))?;
            Ok(n_bytes)
        })();
        let _ = fs::remove_file(&spooled);
        result
    }

    fn describe(&self) -> String {
        let prefix = if self.config.prefix.is_empty() {
            String::new()
        } else {
            format!("/{}", self.config.prefix)
        };
        format!(
            "s3://{}{prefix} at {}",
            self.config.bucket, self.config.endpoint
        )
    }

    fn spool(&self) -> PathBuf {
        self.config.spool.clone()
    }
}

/// Percent-encodes a path segment as SigV4 does (RFC 3986's unreserved kept).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `authorization` header and `x-amz-date` of a request signed at `now` (RFC
/// 3339), signing the host, the payload hash and the date.
fn sign(
    config: &S3Config,
    host: &str,
    method: &str,
    path: &str,
    payload: &str,
    now: &str,
) -> (String, String) {
    let digits: String = now.chars().filter(char::is_ascii_digit).collect();
    let amz_date = format!("{}T{}Z", &digits[..8], &digits[8..14]);
    let day = &amz_date[..8];
    let scope = format!("{day}/{}/s3/aws4_request", config.region);
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{path}\n\nhost:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload}"
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        fieldsync_store::hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", config.secret_key).as_bytes(),
        day.as_bytes(),
    );
    for part in [config.region.as_str(), "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = fieldsync_store::hex(&hmac(&key, to_sign.as_bytes()));
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        config.access_key
    );
    (auth, amz_date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            fieldsync_store::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long_key = [0xaau8; 131];
        let mac = hmac(
            &long_key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            fieldsync_store::hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// AWS's documented example (S3 API reference, "Signature calculation: GET
    /// object"), without its range header.
    #[test]
    fn signatures_follow_aws_signature_version_4() {
        let config = S3Config {
            endpoint: "https://examplebucket.s3.amazonaws.com".into(),
            region: "us-east-1".into(),
            bucket: String::new(),
            prefix: String::new(),
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            spool: PathBuf::new(),
        };
        let (auth, date) = sign(
            &config,
            "examplebucket.s3.amazonaws.com",
            "GET",
            "/test.txt",
            EMPTY,
            "2013-05-24T00:00:00.000Z",
        );
        assert_eq!(date, "20130524T000000Z");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature="
            ),
            "{auth}"
        );
    }

    #[test]
    fn keys_are_the_prefix_and_the_hash_encoded() {
        assert_eq!(encode("site photos"), "site%20photos");
        assert_eq!(encode("a~b-c_d.e"), "a~b-c_d.e");
    }
}
