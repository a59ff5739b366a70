//! The server's allocator arenas, capped. glibc gives a thread that allocates while the
//! arenas are busy an arena of its own, up to eight per core, and every arena keeps what
//! its threads freed: with downloads on tokio's blocking threads (up to
//! `--max-downloads` at once), uploads on their own threads and logins on theirs, a
//! server with 200 devices syncing at once peaked at 115–119 MB, with one arena at
//! 54–69 MB (two PostgreSQL servers: 61 → 38–40 MB each; BENCHMARKS.md, "The server's
//! arenas"). glibc reads the cap (`MALLOC_ARENA_MAX`) when the process starts, so
//! `server run` starts itself again with it set: the same process (its id, arguments
//! and open files), a new image. An environment that already sets it, or
//! `GLIBC_TUNABLES`, is the operator's choice and is left alone.

/// Arenas a server's allocations share.
pub const SERVER_ARENAS: u32 = 1;

/// Replaces this process by itself with the arena cap set, when it is not set yet;
/// returns when it is, or when the new image cannot start (the server then runs with
/// glibc's own cap).
pub fn cap_for_server() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var_os("GLIBC_TUNABLES").is_some()
        {
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
            .env("MALLOC_ARENA_MAX", SERVER_ARENAS.to_string());
        // Returns only when the new image could not start.
        let _ = cmd.exec();
    }
}
