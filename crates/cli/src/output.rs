//! Printing: errors as one line with their exit code, JSON documents, progress bars.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use fieldsync_client::{ClientError, Phase, Progress};

/// The exit code of DESIGN.md for an error (1 when nothing more specific applies).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .map_or(1, |c| c.exit_code() as u8)
}

/// The error and its causes on one line, with the command that helps, if any.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut text = format!("{e:#}");
    if let Some(h) = e
        .chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .and_then(hint)
    {
        text.push_str(&h);
    }
    text.replace('\n', " ")
}

/// What the user can run about a device error: the library's errors name no command.
fn hint(e: &ClientError) -> Option<String> {
    Some(match e {
        ClientError::Offline => "; switch with `fieldsync device mode online`".into(),
        ClientError::NotPaired => "; run `fieldsync device pair` first".into(),
        ClientError::NotLoggedIn => "; run `fieldsync device login`".into(),
        ClientError::NoTask => "; run `fieldsync device download TASK`".into(),
        ClientError::LocalChanges { .. } => "; send them first (`fieldsync device send`), \
             or download with --discard-local-changes to back them up and forget them"
            .into(),
        ClientError::EntryTooLarge { seq, .. } => {
            format!(" with `fieldsync device journal discard {seq}` (it is backed up to a file)")
        }
        ClientError::EntryInSeveral { .. } => "; discard them with --all".into(),
        _ => return None,
    })
}

pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializes")
    );
}

/// A list as `--json` asks (one JSON array) or as text, one line per item.
pub fn print_list<T: serde::Serialize>(items: &[T], json: bool, line: impl Fn(&T) -> String) {
    if json {
        print_json(&items);
    } else {
        for item in items {
            println!("{}", line(item));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressFormat {
    /// A bar on a terminal; one line per phase otherwise
    Auto,
    /// JSON lines on stderr (phase, done, total, unit, bytes), the final error too
    Json,
}

/// Whether errors go to stderr as JSON lines (`--progress json`): set once by the
/// command, read by whatever prints the final error.
static JSON_ERRORS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_json_errors() {
    JSON_ERRORS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Prints the final error on stderr: `error: MESSAGE`, or under `--progress json`
/// the line `{"error": MESSAGE, "exit": CODE}` and nothing else.
pub fn print_error(message: &str, code: u8) {
    if JSON_ERRORS.load(std::sync::atomic::Ordering::SeqCst) {
        let line = serde_json::json!({ "error": message, "exit": code });
        eprintln!("{line}");
    } else {
        eprintln!("error: {message}");
    }
}

/// The phase a line stands for, as the person reads it (fixed width).
fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Prepare => "prepare ",
        Phase::Transfer => "transfer",
        Phase::Store => "store   ",
        Phase::Send => "send    ",
        Phase::Retry => "retry   ",
        Phase::Files => "files   ",
    }
}

/// A byte count in the units of this page: B, kB, MB, GB (powers of 1,000).
pub fn bytes_text(n: u64) -> String {
    match n {
        n if n < 1_000 => format!("{n} B"),
        n if n < 1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// A duration as a person reads it: `850 ms`, `4.2 s`, `3 min 5 s`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        ms if ms < 1_000 => format!("{ms} ms"),
        ms if ms < 60_000 => format!("{:.1} s", ms as f64 / 1e3),
        ms => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1_000),
    }
}

/// One phase's line: the bar, percentage, counts, bytes, rate and time left while it
/// runs (`ended`: the time it took instead). Pure, for the tests.
pub fn progress_line(p: &Progress, elapsed: Duration, ended: bool) -> String {
    let mut line = phase_name(p.phase).to_string();
    if p.phase == Phase::Retry {
        line.push_str(&format!(" attempt {} of {}", p.done, p.total));
        return line;
    }
    let width = 20;
    let done = p.done.min(p.total);
    if let (Some(filled), Some(percent)) = (
        (done * width).checked_div(p.total),
        (done * 100).checked_div(p.total),
    ) {
        line.push_str(&format!(
            " [{}{}] {percent:>3}%",
            "#".repeat(filled as usize),
            "-".repeat((width - filled) as usize),
        ));
    }
    let in_bytes = p.unit == "bytes";
    if in_bytes {
        line.push_str(&format!(
            " {} of {}",
            bytes_text(p.done),
            bytes_text(p.total)
        ));
    } else {
        line.push_str(&format!(" {}/{} {}", p.done, p.total, p.unit));
    }
    if let Some(b) = p.bytes {
        line.push_str(&format!(", {}", bytes_text(b)));
    }
    let secs = elapsed.as_secs_f64();
    if ended {
        line.push_str(&format!(" in {}", duration_text(elapsed)));
    } else if p.unit != "steps" && secs >= 0.5 && p.done > 0 {
        let rate = p.done as f64 / secs;
        match in_bytes {
            true => line.push_str(&format!(", {}/s", bytes_text(rate as u64))),
            false => line.push_str(&format!(", {:.0} {}/s", rate, p.unit)),
        }
        if p.total > p.done {
            let left = Duration::from_secs_f64((p.total - p.done) as f64 / rate);
            line.push_str(&format!(", {} left", duration_text(left)));
        }
    }
    line
}

/// Renders progress reports as the user asked: on a terminal one line per phase,
/// redrawn in place as the phase advances and left complete when the next begins;
/// elsewhere one line per phase when it completes; or JSON lines. A phase a transient
/// failure interrupted is not shown as complete: the `retry` line says what happened.
pub struct ProgressView {
    format: ProgressFormat,
    terminal: bool,
    /// The phase on screen, when it began, and its last report.
    current: Option<(Progress, Instant)>,
}

impl ProgressView {
    pub fn new(format: ProgressFormat) -> Self {
        if format == ProgressFormat::Json {
            set_json_errors();
        }
        ProgressView {
            format,
            terminal: std::io::stderr().is_terminal(),
            current: None,
        }
    }

    pub fn report(&mut self, p: &Progress) {
        if self.format == ProgressFormat::Json {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}", serde_json::to_string(p).expect("serializes"));
            return;
        }
        let started = match &self.current {
            Some((last, started)) if last.phase == p.phase => *started,
            _ => {
                // A retry interrupts the phase it follows: that attempt did not complete.
                self.end_phase(p.phase != Phase::Retry);
                Instant::now()
            }
        };
        self.current = Some((p.clone(), started));
        let line = progress_line(p, started.elapsed(), false);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            // Back to the start of the line and clear it: nothing of a longer
            // earlier text stays behind.
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if p.phase == Phase::Retry {
            let _ = writeln!(err, "{line}");
        }
    }

    /// Ends the phase on screen: its complete line when it `completed`, else nothing
    /// of it stays (on a terminal its partial line is cleared).
    fn end_phase(&mut self, completed: bool) {
        let Some((last, started)) = self.current.take() else {
            return;
        };
        let mut err = std::io::stderr().lock();
        // A retry line is kept; without a terminal it was printed when it came.
        let retry = last.phase == Phase::Retry;
        let line = progress_line(&last, started.elapsed(), true);
        let _ = match (self.terminal, completed || retry) {
            (true, true) => writeln!(err, "\r\x1b[2K{line}"),
            (true, false) => write!(err, "\r\x1b[2K"),
            (false, true) if !retry => writeln!(err, "{line}"),
            (false, _) => Ok(()),
        };
    }

    /// Ends the last phase: complete when the operation `succeeded`.
    pub fn finish(&mut self, succeeded: bool) {
        self.end_phase(succeeded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(phase: Phase, done: u64, total: u64, unit: &'static str, bytes: Option<u64>) -> Progress {
        Progress {
            phase,
            done,
            total,
            unit,
            bytes,
        }
    }

    #[test]
    fn a_running_phase_shows_bar_percentage_bytes_rate_and_time_left() {
        let line = progress_line(
            &p(
                Phase::Transfer,
                250_000,
                1_000_000,
                "rows",
                Some(10_600_000),
            ),
            Duration::from_secs(2),
            false,
        );
        assert_eq!(
            line,
            "transfer [#####---------------]  25% 250000/1000000 rows, 10.6 MB, 125000 rows/s, 6.0 s left"
        );
        assert!(line.len() < 100);
    }

    #[test]
    fn an_ended_phase_says_how_long_it_took_and_steps_have_no_rate() {
        let line = progress_line(
            &p(Phase::Send, 50_000, 50_000, "entries", Some(2_100_000)),
            Duration::from_millis(4_200),
            true,
        );
        assert_eq!(
            line,
            "send     [####################] 100% 50000/50000 entries, 2.1 MB in 4.2 s"
        );
        let store = progress_line(
            &p(Phase::Store, 1, 3, "steps", None),
            Duration::from_secs(9),
            false,
        );
        assert_eq!(store, "store    [######--------------]  33% 1/3 steps");
        let retry = progress_line(
            &p(Phase::Retry, 2, 3, "attempts", None),
            Duration::ZERO,
            false,
        );
        assert_eq!(retry, "retry    attempt 2 of 3");
    }

    #[test]
    fn content_in_bytes_reads_as_sizes_and_a_byte_rate() {
        let line = progress_line(
            &p(Phase::Send, 3_000_000, 12_000_000, "bytes", None),
            Duration::from_secs(2),
            false,
        );
        assert_eq!(
            line,
            "send     [#####---------------]  25% 3.0 MB of 12.0 MB, 1.5 MB/s, 6.0 s left"
        );
    }

    #[test]
    fn sizes_and_durations_read_as_a_person_reads_them() {
        assert_eq!(bytes_text(999), "999 B");
        assert_eq!(bytes_text(42_774_554), "42.8 MB");
        assert_eq!(duration_text(Duration::from_millis(850)), "850 ms");
        assert_eq!(duration_text(Duration::from_secs(185)), "3 min 5 s");
    }
}
