//! How many rows a whole slice will send, remembered from the last whole stream of the
//! same slice. A download's header carries that number for the device's progress only
//! (`TableSchema::rows_estimate`), and counting it exactly is a scan of the slice before
//! the first row goes out (a twentieth of a million-row download). The first download
//! of a slice counts; the next ones within `KEEP` (a fleet taking the same region in the
//! morning, a device downloading again) send what the last one sent, off by the rows
//! that entered or left since. The device's progress never shows more done than in all
//! (`total` is at least `done`), and the trailer carries the exact rows.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fieldsync_store::SlicePlan;

/// How long a slice's rows are used as its estimate.
pub(crate) const KEEP: Duration = Duration::from_secs(600);
/// Slices remembered at most; when full, the oldest goes.
const MAX_SLICES: usize = 1024;

/// Rows per table of the slices streamed whole lately, by slice.
#[derive(Default)]
pub(crate) struct Estimates {
    slices: Mutex<HashMap<String, (Instant, Vec<u64>)>>,
}

impl Estimates {
    /// What names a slice's rows: every table's count query and the values it binds
    /// (the user and device, for filters that name them).
    pub(crate) fn key(plan: &SlicePlan) -> String {
        let mut key = String::new();
        for t in &plan.tables {
            let _ = write!(key, "{}\u{0}{:?}\u{0}", t.count_sql, t.binds);
        }
        key
    }

    /// The rows the slice named `key` sent when streamed whole within `KEEP` of `now`.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<Vec<u64>> {
        let slices = self.slices.lock().unwrap_or_else(|e| e.into_inner());
        let (at, rows) = slices.get(key)?;
        (now.saturating_duration_since(*at) < KEEP).then(|| rows.clone())
    }

    /// Remembers that the slice named `key` sent `rows` streamed whole at `now`.
    pub(crate) fn record(&self, key: String, rows: Vec<u64>, now: Instant) {
        let mut slices = self.slices.lock().unwrap_or_else(|e| e.into_inner());
        slices.retain(|_, (at, _)| now.saturating_duration_since(*at) < KEEP);
        if slices.len() >= MAX_SLICES && !slices.contains_key(&key) {
            let oldest = slices
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                slices.remove(&oldest);
            }
        }
        slices.insert(key, (now, rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slices_rows_are_its_estimate_until_they_are_too_old() {
        let e = Estimates::default();
        let t0 = Instant::now();
        assert_eq!(e.get("north", t0), None, "nothing streamed yet");
        e.record("north".into(), vec![100, 7], t0);
        assert_eq!(e.get("north", t0 + KEEP / 2), Some(vec![100, 7]));
        assert_eq!(e.get("south", t0), None, "another slice");
        assert_eq!(e.get("north", t0 + KEEP), None, "too old");
        e.record("north".into(), vec![101, 7], t0 + KEEP);
        assert_eq!(e.get("north", t0 + KEEP), Some(vec![101, 7]), "the newest");
    }

    #[test]
    fn at_most_so_many_slices_are_kept_the_oldest_going_first() {
        let e = Estimates::default();
        let t0 = Instant::now();
        for i in 0..=MAX_SLICES {
            e.record(
                format!("s{i}"),
                vec![i as u64],
                t0 + Duration::from_millis(i as u64),
            );
        }
        let now = t0 + Duration::from_secs(1);
        assert_eq!(e.get("s0", now), None, "the oldest went");
        assert_eq!(e.get("s1", now), Some(vec![1]));
        assert_eq!(
            e.get(&format!("s{MAX_SLICES}"), now),
            Some(vec![MAX_SLICES as u64])
        );
        assert_eq!(e.slices.lock().unwrap().len(), MAX_SLICES);
    }
}
