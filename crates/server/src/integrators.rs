//! Uploads are parsed and integrated on a few threads of their own, one per core,
//! instead of tokio's blocking pool: each thread's allocator arena keeps what an upload
//! freed (its parsed entries, the database's page cache for its transaction), and
//! across the blocking pool's many threads those arenas added up (177 MB for a
//! 1,000,000-entry journal sent in chunks, 69 MB in one arena). Uploads beyond the
//! cores wait their turn, holding no thread; on SQLite they would wait anyway (one
//! writer at a time).

use std::sync::mpsc::Sender;
use std::sync::{Arc, LazyLock, Mutex};

use crate::error::ApiError;

type Job = Box<dyn FnOnce() + Send>;

static INTEGRATORS: LazyLock<Mutex<Sender<Job>>> = LazyLock::new(|| {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..std::thread::available_parallelism().map_or(2, |n| n.get()) {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("fieldsync-upload-{i}"))
            .spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .expect("an upload thread starts");
    }
    Mutex::new(tx)
});

/// Runs `f` on one of the [`INTEGRATORS`] and awaits its result; a panic in `f` is an
/// internal error (the thread goes on serving).
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(ApiError::internal("an upload's integration panicked")));
        let _ = tx.send(result);
    });
    INTEGRATORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(ApiError::internal)?;
    rx.await.map_err(ApiError::internal)?
}
