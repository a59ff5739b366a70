//! Turns to stream a download: at most `Limits::max_downloads` at once on the server
//! (each holds a database connection and snapshot while it streams) and
//! `Limits::max_downloads_per_device` for one device.

use std::sync::Arc;

use fieldsync_proto::wire::ErrorCode;

use crate::error::ApiError;

/// The downloads streaming now, on this server and per device.
pub(crate) struct Downloads {
    server: Arc<tokio::sync::Semaphore>,
    max: usize,
    per_device: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    per_device_max: usize,
}

/// A download's turn to stream; given back when dropped (its stream ended).
pub(crate) struct DownloadTurn {
    _server: tokio::sync::OwnedSemaphorePermit,
    device: String,
    downloads: Arc<Downloads>,
}

impl Downloads {
    pub(crate) fn new(limits: &crate::Limits) -> Downloads {
        Downloads {
            server: Arc::new(tokio::sync::Semaphore::new(limits.max_downloads)),
            max: limits.max_downloads,
            per_device: std::sync::Mutex::new(std::collections::HashMap::new()),
            per_device_max: limits.max_downloads_per_device,
        }
    }

    /// Downloads streaming now.
    pub(crate) fn streaming(&self) -> usize {
        self.max - self.server.available_permits()
    }

    /// A turn for `device`, or "busy" (retryable) when the server or the device
    /// already streams its most.
    pub(crate) fn turn(self: &Arc<Self>, device: &str) -> Result<DownloadTurn, ApiError> {
        let busy = |what: String| {
            ApiError::new(
                ErrorCode::Busy,
                format!(
                    "busy: {what}; retry in {} s",
                    fieldsync_proto::wire::BUSY_RETRY_AFTER_SECS
                ),
            )
        };
        let server = self.server.clone().try_acquire_owned().map_err(|_| {
            busy(format!(
                "the server is streaming its most downloads at once ({})",
                self.max
            ))
        })?;
        let mut per_device = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_device.entry(device.to_string()).or_insert(0);
        if *n >= self.per_device_max {
            return Err(busy(format!(
                "device `{device}` already has {} downloads streaming",
                self.per_device_max
            )));
        }
        *n += 1;
        Ok(DownloadTurn {
            _server: server,
            device: device.to_string(),
            downloads: self.clone(),
        })
    }
}

impl Drop for DownloadTurn {
    fn drop(&mut self) {
        let mut per_device = self
            .downloads
            .per_device
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_device.get_mut(&self.device) {
            *n -= 1;
            if *n == 0 {
                per_device.remove(&self.device);
            }
        }
    }
}
