//! Process and machine metrics from `/proc`: peak RSS, CPU time, load, and one watched
//! download.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// The PostgreSQL server's settings that move the PostgreSQL figures: its version, the
/// database's collation (every text index compares by it, `fieldsync.rows`' too), JIT
/// and the shared buffers (BENCHMARKS.md, "PostgreSQL's send: … JIT off").
pub(crate) fn pg_settings(url: &str) -> anyhow::Result<String> {
    let mut c = postgres::Client::connect(url, postgres::NoTls)
        .with_context(|| format!("connecting to {url}"))?;
    let version_num: i32 = c
        .query_one("SELECT current_setting('server_version_num')::int", &[])?
        .get(0);
    // ICU as a database's provider came with PostgreSQL 15.
    let collation = if version_num >= 150_000 {
        "CASE d.datlocprovider WHEN 'i' THEN 'ICU ' || d.daticulocale ELSE d.datcollate END"
    } else {
        "d.datcollate::text"
    };
    let r = c.query_one(
        &format!(
            "SELECT current_setting('server_version'), {collation},
                    current_setting('jit'), current_setting('shared_buffers')
             FROM pg_database d WHERE d.datname = current_database()"
        ),
        &[],
    )?;
    let (version, collation, jit, buffers): (String, String, String, String) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    Ok(format!(
        "PostgreSQL {version}, database collation {collation}, jit {jit}, shared_buffers {buffers}"
    ))
}

/// How often the device's /proc status is read while it downloads.
pub(crate) const RSS_POLL: Duration = Duration::from_millis(20);

pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_string();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = proc_field_kb(&meminfo, "MemTotal:").unwrap_or(0);
    format!(
        "{cores} cores ({model}), {:.1} GiB RAM",
        mem_kb as f64 / (1024.0 * 1024.0)
    )
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews the timings.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A value in kB from a `/proc` file of `Name:   123 kB` lines.
pub(crate) fn proc_field_kb(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Peak resident set (VmHWM, kB) of a live process.
pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_field_kb(&status, "VmHWM:")
}

/// Resident set now (VmRSS, kB) of a live process.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    proc_field_kb(&status, "VmRSS:")
}

/// User plus system CPU time of a live process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces, start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy and iowait clock ticks of the whole machine since boot, from `/proc/stat`.
pub(crate) fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0))
        .sum();
    Some((busy, v.get(4).copied().unwrap_or(0)))
}

/// What watching one download child saw.
pub(crate) struct Watched {
    pub(crate) wall_s: f64,
    pub(crate) device_rss_kb: u64,
    pub(crate) device_cpu_s: f64,
    pub(crate) server_cpu_s: f64,
    /// CPU time of everything else on the machine meanwhile: other people's builds and
    /// tests skew the timings, and this says by how much.
    pub(crate) other_cpu_s: f64,
    pub(crate) iowait_s: f64,
}

/// Clock ticks per second for `/proc/*/stat` (USER_HZ).
pub(crate) fn ticks_per_s() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Runs one `fieldsync` device command (a download, a send, a sync) and watches it:
/// wall clock, peak RSS and CPU, sampled from `/proc` every RSS_POLL until it exits.
pub(crate) fn timed_download(
    bin: &Path,
    args: &[&str],
    server_pid: u32,
    ticks_per_s: f64,
) -> anyhow::Result<Watched> {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    let (watched, out) = timed_command(cmd, Some(server_pid), ticks_per_s)
        .with_context(|| format!("`fieldsync {}`", args.join(" ")))?;
    eprintln!("  {}", out.trim());
    Ok(watched)
}

/// Runs any program and watches it as `timed_download` does; `server_pid`, when given,
/// is the process whose CPU is counted as the server's. Fails with its stderr unless it
/// exits 0; returns its stdout.
pub(crate) fn timed_command(
    mut cmd: Command,
    server_pid: Option<u32>,
    ticks_per_s: f64,
) -> anyhow::Result<(Watched, String)> {
    let server_cpu = || match server_pid {
        Some(pid) => cpu_ticks(pid).context("reading the server's CPU time"),
        None => Ok(0),
    };
    let server_ticks_before = server_cpu()?;
    let (busy_before, iowait_before) = machine_ticks().context("reading /proc/stat")?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut rss_kb, mut ticks) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                rss_kb = rss_kb.max(peak_rss_kb(pid).unwrap_or(0));
                ticks = ticks.max(cpu_ticks(pid).unwrap_or(0));
                std::thread::sleep(RSS_POLL);
            }
            (rss_kb, ticks)
        })
    };
    let status = child.wait()?;
    let wall_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (rss_kb, device_ticks) = poller.join().expect("the poller does not panic");
    let server_ticks_after = server_cpu()?;
    let (busy_after, iowait_after) = machine_ticks().context("reading /proc/stat")?;
    let out = out_reader.join().expect("the reader does not panic");
    let err = err_reader.join().expect("the reader does not panic");
    ensure!(status.success(), "failed ({status}): {}", err.trim());
    let server_ticks = server_ticks_after.saturating_sub(server_ticks_before);
    let other_ticks = busy_after
        .saturating_sub(busy_before)
        .saturating_sub(device_ticks + server_ticks);
    let watched = Watched {
        wall_s,
        device_rss_kb: rss_kb,
        device_cpu_s: device_ticks as f64 / ticks_per_s,
        server_cpu_s: server_ticks as f64 / ticks_per_s,
        other_cpu_s: other_ticks as f64 / ticks_per_s,
        iowait_s: iowait_after.saturating_sub(iowait_before) as f64 / ticks_per_s,
    };
    Ok((watched, out))
}

/// Resets a live process's peak RSS to its current RSS (`clear_refs` 5), so the next
/// VmHWM covers only what follows.
pub(crate) fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of process {pid}"))
}

/// Total size in bytes of the files under `path` (a file's own size; symbolic links
/// not followed).
pub(crate) fn disk_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| disk_bytes(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// The median run of repeated measurements by `key` (the lower middle one of an even
/// count), with every run's key in run order. `runs` must not be empty.
pub(crate) fn median_run<T>(runs: Vec<T>, key: impl Fn(&T) -> f64) -> (T, Vec<f64>) {
    assert!(!runs.is_empty(), "a median of no runs");
    let keys: Vec<f64> = runs.iter().map(&key).collect();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    let middle = order[(order.len() - 1) / 2];
    let run = runs.into_iter().nth(middle).expect("the index is in range");
    (run, keys)
}
