//! Uploads are parsed and integrated on a few threads of their own, one per core (one
//! on a main database with a single writer), instead of tokio's blocking pool: each
//! thread's allocator arena keeps what an upload freed (its parsed entries, the
//! database's page cache for its transaction), and across the blocking pool's many
//! threads those arenas added up (177 MB for a 1,000,000-entry journal sent in
//! chunks, 69 MB in one arena).
//!
//! Uploads beyond the threads wait their turn in order, holding no thread (on SQLite
//! they would wait anyway: one writer at a time): a fleet docking at once is served
//! one after another instead of being told "busy" (200 devices at once used to see
//! three refusals and give up). The wait is bounded three ways, so that uploads
//! waiting on rows the office holds cannot stack up a queue every other device's send
//! waits behind for long:
//! - one device has at most [`PER_DEVICE`] uploads in the server's hands (a device
//!   sends one at a time; more are a retry storm or a misbehaving client);
//! - the bodies waiting hold at most [`WAITING_BYTES`] of memory;
//! - an upload waits at most [`MOST_WAIT`] for its turn (well inside the client's 60 s
//!   read timeout).
//!
//! Past any of them the answer is "busy, retry" at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::workers::{self, Workers};

/// Uploads one device may have running or waiting.
pub const PER_DEVICE: usize = 2;
/// Compressed bodies waiting for a turn, in bytes, on the whole server.
pub const WAITING_BYTES: usize = 16 << 20;
/// The longest an upload waits for its turn.
pub const MOST_WAIT: Duration = Duration::from_secs(30);

static INTEGRATORS: LazyLock<Workers> =
    LazyLock::new(|| Workers::start("fieldsync-upload", workers::per_core()));

/// The one thread of a main database that writes one transaction at a time
/// (`Uploads::one_writer`, SQLite): a second thread would only wait for the first's
/// write lock, and its arena would keep a second upload's worth of memory (a
/// 100,000-entry send left the server at 62 MB with two threads, 37 MB with one).
static ONE_WRITER: LazyLock<Workers> = LazyLock::new(|| Workers::start("fieldsync-upload", 1));

/// Turns: uploads on a thread or next in the threads' queue (three per thread).
static TURNS: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(3 * workers::per_core())));

/// Room for the bodies of uploads waiting for a turn, one permit per byte.
static WAITING: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(WAITING_BYTES)));

/// Uploads in the server's hands per device.
static PER_DEVICE_NOW: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

/// Uploads waiting for a turn now (for the busy message).
static WAITING_NOW: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on one of the [`INTEGRATORS`] (on [`ONE_WRITER`] for a main database that
/// has one writer) once `device`'s upload of `body_len` bytes has its turn, and awaits
/// its result; a panic in `f` is an internal error (the thread goes on serving).
pub async fn run<T: Send + 'static>(
    one_writer: bool,
    device: &str,
    body_len: usize,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let in_hands = DeviceUpload::admit(device)?;
    let turn = turn(body_len).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: workers::Job = Box::new(move || {
        // Given back when the job ends, or when it is dropped unrun.
        let _held = (turn, in_hands);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(ApiError::internal("an upload's integration panicked")));
        let _ = tx.send(result);
    });
    let threads = if one_writer {
        &ONE_WRITER
    } else {
        &INTEGRATORS
    };
    threads.submit(job).map_err(ApiError::internal)?;
    rx.await.map_err(ApiError::internal)?
}

/// A turn at once when one is free, else after waiting in order (its body counted
/// against [`WAITING_BYTES`]) for at most [`MOST_WAIT`].
async fn turn(body_len: usize) -> Result<OwnedSemaphorePermit, ApiError> {
    if let Ok(turn) = TURNS.clone().try_acquire_owned() {
        return Ok(turn);
    }
    let bytes = u32::try_from(body_len.max(1)).unwrap_or(u32::MAX);
    let room = WAITING.clone().try_acquire_many_owned(bytes).map_err(|_| {
        ApiError::busy(format!(
            "the server's queue of uploads is full ({} waiting)",
            WAITING_NOW.load(Ordering::SeqCst)
        ))
    })?;
    let waiting = Waiting::start();
    let waited = tokio::time::timeout(MOST_WAIT, TURNS.clone().acquire_owned()).await;
    drop((waiting, room));
    match waited {
        Ok(turn) => turn.map_err(ApiError::internal),
        Err(_) => Err(ApiError::busy(format!(
            "the upload waited {} s for its turn behind others",
            MOST_WAIT.as_secs()
        ))),
    }
}

/// One upload counted in [`WAITING_NOW`], also when its request is dropped mid-wait.
struct Waiting;

impl Waiting {
    fn start() -> Waiting {
        WAITING_NOW.fetch_add(1, Ordering::SeqCst);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING_NOW.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One of a device's uploads in the server's hands; dropping it makes room.
struct DeviceUpload(String);

impl DeviceUpload {
    fn admit(device: &str) -> Result<DeviceUpload, ApiError> {
        let mut now = PER_DEVICE_NOW.lock().unwrap_or_else(|e| e.into_inner());
        let n = now.entry(device.to_string()).or_insert(0);
        if *n >= PER_DEVICE {
            return Err(ApiError::busy(format!(
                "device `{device}` already has {PER_DEVICE} uploads in the server's hands"
            )));
        }
        *n += 1;
        Ok(DeviceUpload(device.to_string()))
    }
}

impl Drop for DeviceUpload {
    fn drop(&mut self) {
        let mut now = PER_DEVICE_NOW.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = now.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                now.remove(&self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The threads four overlapping uploads ran on, `one_writer` or not.
    async fn threads_of_four(one_writer: bool) -> std::collections::HashSet<String> {
        let jobs: Vec<_> = (0..4)
            .map(|i| {
                tokio::spawn(async move {
                    let device = format!("dev-{one_writer}-{i}");
                    run(one_writer, &device, 1, || {
                        std::thread::sleep(Duration::from_millis(50));
                        Ok(format!("{:?}", std::thread::current().id()))
                    })
                    .await
                })
            })
            .collect();
        let mut threads = std::collections::HashSet::new();
        for job in jobs {
            let thread = job.await.expect("the task ends");
            threads.insert(thread.unwrap_or_else(|e| panic!("{}", e.message)));
        }
        threads
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_single_writer_database_has_its_uploads_run_on_one_thread() {
        let one = threads_of_four(true).await;
        assert_eq!(one.len(), 1, "{one:?}");
        if workers::per_core() > 1 {
            let many = threads_of_four(false).await;
            assert!(many.len() > 1, "{many:?}");
        }
    }
}
