//! What Prometheus scrapes at `GET /metrics`: counts of this server process since it
//! started (syncs by operation and result, rows, bytes and conflicts each way, how
//! long syncs took) and the downloads streaming now. Counters only grow; nothing names
//! a device, user or task (the sync history and the request log do that).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use fieldsync_store::HistoryRecord;

/// Upper bounds (seconds) of the sync duration histogram's buckets.
const BUCKETS: [f64; 8] = [0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0];

#[derive(Default)]
struct Counts {
    /// Syncs by (op, result).
    syncs: BTreeMap<(&'static str, String), u64>,
    rows_down: u64,
    rows_up: u64,
    bytes_down: u64,
    bytes_up: u64,
    conflicts: u64,
    /// Syncs per bucket of `BUCKETS` (not cumulative), then the sum of durations.
    buckets: [u64; BUCKETS.len() + 1],
    seconds: f64,
}

/// The server's metrics, shared by every request.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    /// Counts one sync, as the history records it.
    pub fn record(&self, r: &HistoryRecord) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.syncs
            .entry((r.op.as_str(), r.result.clone()))
            .or_default() += 1;
        c.rows_down += r.rows_down;
        c.rows_up += r.rows_up;
        c.bytes_down += r.bytes_down;
        c.bytes_up += r.bytes_up;
        c.conflicts += r.conflicts;
        let secs = r.duration_ms as f64 / 1000.0;
        let bucket = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        c.buckets[bucket] += 1;
        c.seconds += secs;
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self, downloads_active: usize) -> String {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        head(
            &mut out,
            "fieldsync_syncs_total",
            "counter",
            "Downloads and uploads ended, by operation and result.",
        );
        for ((op, result), n) in &c.syncs {
            let _ = writeln!(
                out,
                "fieldsync_syncs_total{{op=\"{op}\",result=\"{}\"}} {n}",
                escape(result)
            );
        }
        for (name, help, down, up) in [
            (
                "fieldsync_rows_total",
                "Rows sent to devices (down) and journal entries received from them (up).",
                c.rows_down,
                c.rows_up,
            ),
            (
                "fieldsync_bytes_total",
                "Bytes of slices sent (down) and uploads received (up).",
                c.bytes_down,
                c.bytes_up,
            ),
        ] {
            head(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name}{{direction=\"down\"}} {down}");
            let _ = writeln!(out, "{name}{{direction=\"up\"}} {up}");
        }
        let name = "fieldsync_conflicts_total";
        head(&mut out, name, "counter", "Conflicts logged by uploads.");
        let _ = writeln!(out, "{name} {}", c.conflicts);
        let name = "fieldsync_sync_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "How long downloads and uploads took.",
        );
        let mut cumulative = 0;
        for (i, le) in BUCKETS.iter().enumerate() {
            cumulative += c.buckets[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += c.buckets[BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", c.seconds);
        let _ = writeln!(out, "{name}_count {cumulative}");
        let name = "fieldsync_downloads_active";
        head(&mut out, name, "gauge", "Downloads streaming now.");
        let _ = writeln!(out, "{name} {downloads_active}");
        out
    }
}

/// A metric family's HELP and TYPE lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the exposition format writes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use fieldsync_proto::wire::{SyncOp, Trigger};

    fn record(op: SyncOp, result: &str, rows_down: u64, duration_ms: u64) -> HistoryRecord {
        HistoryRecord {
            device: "tab1".into(),
            user: "ana".into(),
            task: Some("t".into()),
            op,
            trigger: Trigger::Manual,
            result: result.into(),
            message: String::new(),
            rows_down,
            rows_up: 2,
            bytes_down: 100,
            bytes_up: 10,
            conflicts: 1,
            started_at: fieldsync_proto::time::Timestamp::now(),
            duration_ms,
            full: true,
            full_reason: None,
        }
    }

    #[test]
    fn counts_render_in_the_exposition_format() {
        let m = Metrics::default();
        m.record(&record(SyncOp::Download, "ok", 40, 30));
        m.record(&record(SyncOp::Download, "ok", 2, 700));
        m.record(&record(SyncOp::Send, "error", 0, 200_000));
        let text = m.render(3);
        for line in [
            "fieldsync_syncs_total{op=\"download\",result=\"ok\"} 2",
            "fieldsync_syncs_total{op=\"send\",result=\"error\"} 1",
            "fieldsync_rows_total{direction=\"down\"} 42",
            "fieldsync_rows_total{direction=\"up\"} 6",
            "fieldsync_bytes_total{direction=\"down\"} 300",
            "fieldsync_conflicts_total 3",
            "fieldsync_sync_duration_seconds_bucket{le=\"0.05\"} 1",
            "fieldsync_sync_duration_seconds_bucket{le=\"1\"} 2",
            "fieldsync_sync_duration_seconds_bucket{le=\"120\"} 2",
            "fieldsync_sync_duration_seconds_bucket{le=\"+Inf\"} 3",
            "fieldsync_sync_duration_seconds_count 3",
            "fieldsync_downloads_active 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
