//! The server's allocator, tuned. glibc gives a thread that allocates while the arenas
//! are busy an arena of its own, up to eight per core, and every arena keeps what its
//! threads freed: with downloads on tokio's blocking threads (up to `--max-downloads`
//! at once), uploads on their own threads and logins on theirs, a server with 200
//! devices syncing at once peaked at 115–119 MB, with one arena at 54–69 MB (two
//! PostgreSQL servers: 61 → 38–40 MB each; BENCHMARKS.md, "The server's arenas").
//! glibc also raises its mapping threshold each time a large buffer is freed (an
//! upload's text, a download's buffers), after which such buffers come from the heap
//! and the heap keeps up to twice the threshold free at its top: with both thresholds
//! fixed at 128 KiB a 100,000-entry send peaked 3 MB lower (BENCHMARKS.md, "A send
//! within 32 MB"; the 200-device round moved less than its rounds do). glibc reads
//! these settings when the process starts, so `server run` starts itself again with
//! them set: the same process (its id, arguments and open files), a new image. A
//! variable the environment already sets, or any `GLIBC_TUNABLES`, is the operator's
//! choice and is left alone.

/// The variables `server run` sets, and their values.
pub const SERVER_MALLOC: [(&str, &str); 3] = [
    ("MALLOC_ARENA_MAX", "1"),
    ("MALLOC_MMAP_THRESHOLD_", "131072"),
    ("MALLOC_TRIM_THRESHOLD_", "131072"),
];

/// Set in the new image's environment: the process started itself again once already.
/// glibc may remove `MALLOC_*` variables from the environment of a program it runs in
/// secure mode (setuid, or file capabilities such as `cap_net_bind_service` to listen
/// on a port under 1024), so the new image could find them missing again: it starts no
/// third one.
pub const RESTARTED: &str = "FIELDSYNC_SERVER_RESTARTED";

/// Replaces this process by itself with [`SERVER_MALLOC`] set, when some of it is not
/// set yet; returns when all is, when it did so once already ([`RESTARTED`]), or when
/// the new image cannot start (the server then runs with glibc's own settings).
pub fn tune_for_server() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() || std::env::var_os(RESTARTED).is_some() {
            return;
        }
        let missing: Vec<_> = SERVER_MALLOC
            .iter()
            .filter(|(var, _)| std::env::var_os(var).is_none())
            .collect();
        if missing.is_empty() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = args.next() {
            cmd.arg0(argv0);
        }
        cmd.args(args)
            .envs(missing.iter().map(|(var, value)| (var, value)))
            .env(RESTARTED, "1");
        // Returns only when the new image could not start.
        let _ = cmd.exec();
    }
}
