//! When each device was last seen and what it said it holds (`HEADER_HOLDING`: its
//! unsent journal entries and its replica's task), for `admin device list` and
//! `admin task show`. Written after a request whose sender a handler checked, at most
//! once a minute per device unless what it holds changed, off the async threads and
//! before the response leaves (what a device was told happened is on record); a
//! failure to write is logged, never the request's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::parse_holding;
use fieldsync_store::{DeviceSeen, Store};

use crate::request_log::Who;

/// How long a device's unchanged showing goes unwritten.
const REWRITE_AFTER: Duration = Duration::from_secs(60);

type Holding = (Option<u64>, Option<String>);

#[derive(Default)]
pub struct Seen {
    /// What was last written per device, and when.
    last: Mutex<HashMap<String, (String, Holding, Instant)>>,
}

impl Seen {
    /// Notes a request of `who` that carried `holding` (the raw header, if any).
    pub async fn note(&self, store: &Arc<dyn Store>, who: &Who, holding: Option<&str>) {
        let (pending, task) = match holding.and_then(parse_holding) {
            Some((n, task)) => (Some(n), task),
            None => (None, None),
        };
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            let held = (pending, task.clone());
            if let Some((user, h, at)) = last.get(&who.device)
                && *user == who.user
                && *h == held
                && now.duration_since(*at) < REWRITE_AFTER
            {
                return;
            }
            last.insert(who.device.clone(), (who.user.clone(), held, now));
        }
        let record = DeviceSeen {
            device: who.device.clone(),
            user: who.user.clone(),
            at: Timestamp::now(),
            task,
            pending,
        };
        let store = Arc::clone(store);
        // Its own two turns: a write that waits for the database's writer (an upload
        // being integrated) must not hold a turn a device's request needs to read.
        static WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
        let written =
            crate::api::blocking_in(&WRITES, move || Ok(store.device_seen(&record)?)).await;
        if let Err(e) = written {
            tracing::warn!(error = %e.message, device = %who.device, "recording when a device was seen")
        }
    }
}
