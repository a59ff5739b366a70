//! The running operation's progress, published in the device folder (`running.json`)
//! so that another process (a UI, `device status`, `device cancel`) can show or stop
//! it. Written atomically, at most every 200 ms and at every change of phase; removed
//! when the operation ends. A file left by a killed process is stale: it counts only
//! while the folder's lock is held.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fieldsync_proto::time::Timestamp;
use fieldsync_proto::wire::{SyncOp, Trigger};
use serde::{Deserialize, Serialize};

use crate::state::DeviceDir;
use crate::{Phase, Progress};

/// What `device status --json` shows as `running`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Running {
    pub op: SyncOp,
    pub kind: Trigger,
    pub phase: Option<Phase>,
    pub done: u64,
    pub total: u64,
    pub unit: String,
    /// Bytes moved so far, where known.
    #[serde(default)]
    pub bytes: Option<u64>,
    pub started: Timestamp,
    /// The process running it (what `device cancel` signals).
    pub pid: u32,
}

const FILE: &str = "running.json";

fn path(dir: &DeviceDir) -> PathBuf {
    dir.root.join(FILE)
}

/// Publishes one operation's progress until dropped.
pub(crate) struct Publisher {
    path: PathBuf,
    running: Running,
    last: Option<Instant>,
}

impl Publisher {
    pub(crate) fn start(dir: &DeviceDir, op: SyncOp, kind: Trigger) -> Publisher {
        let mut p = Publisher {
            path: path(dir),
            running: Running {
                op,
                kind,
                phase: None,
                done: 0,
                total: 0,
                unit: "steps".into(),
                bytes: None,
                started: Timestamp::now(),
                pid: std::process::id(),
            },
            last: None,
        };
        p.write();
        p
    }

    /// A progress callback that publishes, then passes each report on to `to`.
    pub(crate) fn forwarding<'a>(
        &'a mut self,
        to: &'a mut dyn FnMut(&Progress),
    ) -> impl FnMut(&Progress) + 'a {
        move |p| {
            self.report(p);
            to(p)
        }
    }

    pub(crate) fn report(&mut self, progress: &Progress) {
        let new_phase = self.running.phase != Some(progress.phase);
        self.running.phase = Some(progress.phase);
        self.running.done = progress.done;
        self.running.total = progress.total;
        self.running.bytes = progress.bytes;
        if self.running.unit != progress.unit {
            self.running.unit = progress.unit.to_string();
        }
        if new_phase
            || self
                .last
                .is_none_or(|t| t.elapsed() >= Duration::from_millis(200))
        {
            self.write();
        }
    }

    /// Best effort: progress is shown, never a reason to fail the operation.
    fn write(&mut self) {
        self.last = Some(Instant::now());
        let json = serde_json::to_vec(&self.running).expect("progress serializes");
        let tmp = self.path.with_extension("tmp-running");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &self.path);
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The running operation's progress, if one runs: its file is there and its process
/// lives (a killed process leaves the file behind). Never takes the folder's lock.
pub fn running(dir: &DeviceDir) -> Option<Running> {
    let bytes = std::fs::read(path(dir)).ok()?;
    let running: Running = serde_json::from_slice(&bytes).ok()?;
    let proc = std::path::Path::new("/proc");
    let alive = !proc.exists() || proc.join(running.pid.to_string()).exists();
    alive.then_some(running)
}
