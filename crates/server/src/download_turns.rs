//! Turns to stream a download: at most `Limits::max_downloads` at once on the server
//! (each holds a database connection and snapshot while it streams) and
//! `Limits::max_downloads_per_device` for one device.

use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;

/// The downloads streaming now, on this server and per device.
pub(crate) struct Downloads {
    server: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// The longest a download waits for the server's turn before "busy".
    wait: Duration,
    per_device: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    per_device_max: usize,
}

/// One of a device's download turns: counted until dropped.
pub(crate) struct DeviceTurn {
    device: String,
    downloads: Arc<Downloads>,
}

/// A download's turn to stream; given back when dropped (its stream ended).
pub(crate) struct DownloadTurn {
    _server: tokio::sync::OwnedSemaphorePermit,
    _device: DeviceTurn,
}

/// The longest a download waits in line for the server's turn. Never more than a
/// third of the idle timeout: a waiting request moves no byte, so it is answered
/// "busy" well before its connection would be cut as idle, and a device told busy
/// that waits in line again is still answered before a stalled stream's turn is cut.
const MOST_WAIT: Duration = Duration::from_secs(20);

impl Downloads {
    pub(crate) fn new(limits: &crate::Limits) -> Downloads {
        Downloads {
            server: Arc::new(tokio::sync::Semaphore::new(limits.max_downloads)),
            max: limits.max_downloads,
            wait: MOST_WAIT.min(limits.idle_timeout / 3),
            per_device: std::sync::Mutex::new(std::collections::HashMap::new()),
            per_device_max: limits.max_downloads_per_device,
        }
    }

    /// Downloads streaming now.
    pub(crate) fn streaming(&self) -> usize {
        self.max - self.server.available_permits()
    }

    /// One of `device`'s turns, or "busy" (retryable) at once when the device already
    /// streams its most (more are a retry storm or a misbehaving client: they do not
    /// wait in line).
    pub(crate) fn device_turn(self: &Arc<Self>, device: &str) -> Result<DeviceTurn, ApiError> {
        let mut per_device = self.per_device.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_device.entry(device.to_string()).or_insert(0);
        if *n >= self.per_device_max {
            return Err(ApiError::busy(format!(
                "device `{device}` already has {} downloads streaming",
                self.per_device_max
            )));
        }
        *n += 1;
        Ok(DeviceTurn {
            device: device.to_string(),
            downloads: self.clone(),
        })
    }

    /// The server's turn for a download that has its device's: at once when one is
    /// free, else after waiting in line (first come, first served) for at most
    /// [`MOST_WAIT`], then "busy" (retryable). A fleet docking at once is streamed a
    /// few at a time instead of being told to come back in 5 s.
    pub(crate) async fn turn(&self, device: DeviceTurn) -> Result<DownloadTurn, ApiError> {
        let server = match self.server.clone().try_acquire_owned() {
            Ok(turn) => turn,
            Err(_) => tokio::time::timeout(self.wait, self.server.clone().acquire_owned())
                .await
                .map_err(|_| {
                    ApiError::busy(format!(
                        "the server is streaming its most downloads at once ({}) and this one \
                         waited {} s for a turn",
                        self.max,
                        self.wait.as_secs_f64()
                    ))
                })?
                .map_err(ApiError::internal)?,
        };
        Ok(DownloadTurn {
            _server: server,
            _device: device,
        })
    }
}

impl Drop for DeviceTurn {
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
