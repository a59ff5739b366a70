//! Uploads are parsed and integrated on a few threads of their own, one per core,
//! instead of tokio's blocking pool: each thread's allocator arena keeps what an upload
//! freed (its parsed entries, the database's page cache for its transaction), and
//! across the blocking pool's many threads those arenas added up (177 MB for a
//! 1,000,000-entry journal sent in chunks, 69 MB in one arena). Uploads beyond the
//! cores wait their turn, holding no thread (on SQLite they would wait anyway: one
//! writer at a time), up to two per thread; more are answered "busy, retry" at once, so
//! that uploads waiting on rows the office holds cannot stack up a queue every other
//! device's send waits behind.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use fieldsync_proto::wire::{BUSY_RETRY_AFTER_SECS, ErrorCode};

use crate::error::ApiError;
use crate::workers::{self, Workers};

/// Uploads running or waiting for a thread.
static ADMITTED: AtomicUsize = AtomicUsize::new(0);

static INTEGRATORS: LazyLock<Workers> =
    LazyLock::new(|| Workers::start("fieldsync-upload", workers::per_core()));

/// Runs `f` on one of the [`INTEGRATORS`] and awaits its result; a panic in `f` is an
/// internal error (the thread goes on serving).
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let most = 3 * workers::per_core();
    if ADMITTED.fetch_add(1, Ordering::SeqCst) >= most {
        ADMITTED.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            ErrorCode::Busy,
            format!(
                "busy: the server is integrating its most uploads at once ({most}); retry in {BUSY_RETRY_AFTER_SECS} s"
            ),
        ));
    }
    // Given back when the job ends, or when it is dropped unrun.
    let admitted = Admitted;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: workers::Job = Box::new(move || {
        let _admitted = admitted;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(ApiError::internal("an upload's integration panicked")));
        let _ = tx.send(result);
    });
    INTEGRATORS.submit(job).map_err(ApiError::internal)?;
    rx.await.map_err(ApiError::internal)?
}

/// One admitted upload; dropping it makes room for another.
struct Admitted;

impl Drop for Admitted {
    fn drop(&mut self) {
        ADMITTED.fetch_sub(1, Ordering::SeqCst);
    }
}
