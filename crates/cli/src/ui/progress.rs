//! The progress window's state: the operation, its phase and numbers, the rate and
//! time left measured from the reports, and how it ended when it did not succeed.

use std::time::{Duration, Instant};

use fieldsync_client::running::Running;
use fieldsync_client::{Phase, Progress, SyncOp, Trigger};

/// The rate of the current phase, measured from its first report on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meter {
    /// When the phase's first report came, and its count then.
    since: Option<(Instant, u64)>,
    /// Units per second, once the phase ran long enough to tell.
    pub rate_per_s: Option<f64>,
}

impl Meter {
    /// How long a phase runs before its rate is shown (a rate over a few milliseconds
    /// says nothing).
    const SETTLE: Duration = Duration::from_millis(500);

    /// Starts over (a new phase).
    fn restart(&mut self, now: Instant, done: u64) {
        self.since = Some((now, done));
        self.rate_per_s = None;
    }

    fn sample(&mut self, now: Instant, done: u64) {
        let Some((t0, d0)) = self.since else {
            return self.restart(now, done);
        };
        let elapsed = now.duration_since(t0);
        if elapsed >= Self::SETTLE && done > d0 {
            self.rate_per_s = Some((done - d0) as f64 / elapsed.as_secs_f64());
        }
    }
}

/// How a progress window ends when the operation did not succeed (success closes it).
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    Running,
    /// Cancel was pressed; the operation stops at its next safe point.
    Cancelling,
    /// The operation failed (`cancelled` when it was cancelled); the window stays
    /// open with the message until closed.
    Ended {
        cancelled: bool,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgressWin {
    pub op: SyncOp,
    pub kind: Trigger,
    /// The operation's process when another one runs it (the watcher); `None`: this
    /// UI runs it.
    pub other: Option<Running>,
    pub phase: Option<Phase>,
    pub done: u64,
    pub total: u64,
    pub unit: String,
    pub meter: Meter,
    pub state: RunState,
}

impl ProgressWin {
    /// An operation this UI starts.
    pub fn own(op: SyncOp) -> ProgressWin {
        ProgressWin {
            op,
            kind: Trigger::Manual,
            other: None,
            phase: None,
            done: 0,
            total: 0,
            unit: String::new(),
            meter: Meter::default(),
            state: RunState::Running,
        }
    }

    /// An operation another process runs, as it published it.
    pub fn other(r: &Running, now: Instant) -> ProgressWin {
        let mut w = ProgressWin {
            op: r.op,
            kind: r.kind,
            other: Some(r.clone()),
            ..ProgressWin::own(r.op)
        };
        w.observe(r, now);
        w
    }

    /// Whether `r` is the operation this window shows (same process, same start).
    pub fn shows(&self, r: &Running) -> bool {
        self.other
            .as_ref()
            .is_some_and(|o| o.pid == r.pid && o.started == r.started)
    }

    pub fn report(&mut self, p: &Progress, now: Instant) {
        self.update(Some(p.phase), p.done, p.total, p.unit, now);
    }

    /// A new reading of another process's published progress.
    pub fn observe(&mut self, r: &Running, now: Instant) {
        self.update(r.phase, r.done, r.total, &r.unit, now);
    }

    fn update(&mut self, phase: Option<Phase>, done: u64, total: u64, unit: &str, now: Instant) {
        if phase != self.phase {
            self.meter.restart(now, done);
        } else {
            self.meter.sample(now, done);
        }
        self.phase = phase;
        self.done = done;
        self.total = total;
        if self.unit != unit {
            self.unit = unit.to_string();
        }
    }

    /// The fraction done of the current phase, when it has a total. Rows coming with
    /// a total equal to the count so far come without one (a delta: nobody knows how
    /// many rows changed until the last one came).
    pub fn ratio(&self) -> Option<f64> {
        let unknown = self.phase == Some(Phase::Transfer) && self.done == self.total;
        (self.total > 0 && !unknown).then(|| self.done.min(self.total) as f64 / self.total as f64)
    }

    /// The time the current phase still needs at the measured rate.
    pub fn left(&self) -> Option<Duration> {
        let rate = self.meter.rate_per_s.filter(|r| *r > 0.0)?;
        self.ratio()?;
        let rest = self.total.checked_sub(self.done)?;
        Some(Duration::from_secs_f64(rest as f64 / rate))
    }

    pub fn running(&self) -> bool {
        !matches!(self.state, RunState::Ended { .. })
    }
}

/// The phases an operation goes through, in order (what the window lists).
pub fn phases(op: SyncOp) -> &'static [Phase] {
    match op {
        SyncOp::Send => &[Phase::Send],
        SyncOp::Sync => &[Phase::Send, Phase::Prepare, Phase::Transfer, Phase::Store],
        SyncOp::Download => &[Phase::Prepare, Phase::Transfer, Phase::Store],
        SyncOp::Files => &[Phase::Files],
    }
}

pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Prepare => "prepare",
        Phase::Transfer => "transfer",
        Phase::Store => "store",
        Phase::Send => "send",
        Phase::Retry => "retry",
        Phase::Files => "files",
    }
}

/// What the phase does, in the seed's words.
pub fn phase_text(p: Phase) -> &'static str {
    match p {
        Phase::Prepare => "the server prepares the data",
        Phase::Transfer => "data transferred to the device",
        Phase::Store => "data stored on the device",
        Phase::Send => "local changes sent and integrated",
        Phase::Retry => "the server could not be reached; trying again",
        Phase::Files => "the task's files arrive",
    }
}

/// A duration as a person reads it: `45 s`, `3 min 20 s`, `1 h 5 min`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(phase: Phase, done: u64, total: u64) -> Progress {
        Progress {
            phase,
            done,
            total,
            unit: "rows",
            bytes: None,
        }
    }

    #[test]
    fn the_rate_and_time_left_come_from_the_phase_reports() {
        let t0 = Instant::now();
        let mut w = ProgressWin::own(SyncOp::Download);
        w.report(&report(Phase::Transfer, 0, 1000), t0);
        assert_eq!(w.meter.rate_per_s, None);
        w.report(
            &report(Phase::Transfer, 10, 1000),
            t0 + Duration::from_millis(100),
        );
        assert_eq!(w.meter.rate_per_s, None, "too early to tell");
        w.report(
            &report(Phase::Transfer, 200, 1000),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(w.meter.rate_per_s, Some(100.0));
        assert_eq!(w.left(), Some(Duration::from_secs(8)));
        assert_eq!(w.ratio(), Some(0.2));
        // A new phase measures anew.
        w.report(&report(Phase::Store, 0, 3), t0 + Duration::from_secs(3));
        assert_eq!((w.meter.rate_per_s, w.left()), (None, None));
    }

    #[test]
    fn no_total_means_no_ratio_and_no_time_left() {
        let t0 = Instant::now();
        let mut w = ProgressWin::own(SyncOp::Send);
        w.report(&report(Phase::Send, 0, 0), t0);
        w.report(&report(Phase::Send, 50, 0), t0 + Duration::from_secs(1));
        assert_eq!((w.ratio(), w.left()), (None, None));
        assert_eq!(w.meter.rate_per_s, Some(50.0));
    }

    #[test]
    fn rows_counted_without_a_total_show_no_ratio() {
        let mut w = ProgressWin::own(SyncOp::Download);
        let t0 = Instant::now();
        w.report(&report(Phase::Transfer, 100, 100), t0);
        w.report(
            &report(Phase::Transfer, 700, 700),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(w.ratio(), None);
        assert_eq!(w.meter.rate_per_s, Some(600.0));
        assert_eq!(w.left(), None, "no time left without a total");
        w.report(&report(Phase::Store, 3, 3), Instant::now());
        assert_eq!(w.ratio(), Some(1.0));
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(human(Duration::from_secs(3900)), "1 h 5 min");
    }
}
