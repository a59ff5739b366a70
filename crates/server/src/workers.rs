//! A few threads of the server's own for memory-heavy work (password hashing, upload
//! integration): each thread's allocator arena keeps what its jobs freed, so a fixed
//! set of threads keeps that memory fixed, where tokio's growing blocking pool let it
//! add up. Jobs beyond the threads wait in a queue, holding no thread.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

pub type Job = Box<dyn FnOnce() + Send>;

/// One thread per core.
pub fn per_core() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

pub struct Workers(Mutex<Sender<Job>>);

impl Workers {
    /// Starts `n` threads named `name-0`, `name-1`, …
    pub fn start(name: &str, n: usize) -> Workers {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || serve(&rx))
                .expect("a worker thread starts");
        }
        Workers(Mutex::new(tx))
    }

    /// Queues `job` for the next free thread; an error only if every thread is gone.
    pub fn submit(&self, job: Job) -> Result<(), String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| "the worker threads have stopped".to_string())
    }
}

fn serve(rx: &Mutex<Receiver<Job>>) {
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
}
