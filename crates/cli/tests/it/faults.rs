//! Network faults through the fault proxy: connections cut at many offsets of a
//! download, an upload and its acknowledgement; a stalled server; flipped bytes; a
//! throttled link. Each ends in a clear error or a successful retry, never a hang,
//! never a half-applied replica or upload (DESIGN.md promises 1, 2, 3 and 8).
//!
//! `FIELDSYNC_FAULT_OFFSETS` sets how many offsets the cut sweeps try (default 20).

use std::io::Read;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::params;

use crate::harness::*;
use crate::proxy::{Action, Direction, Fault, FaultProxy};

const NORTH_ASSETS: &str = "SELECT id, name, category, status, region, x, y FROM assets WHERE region = 'north' AND status <> 'retired' ORDER BY id";
const ANA_INSPECTIONS: &str = "SELECT * FROM inspections WHERE inspector = 'ana' AND asset_id IN
     (SELECT id FROM assets WHERE region = 'north' AND status <> 'retired') ORDER BY id";

/// A command still running after this long is a hang: killed, and the test fails.
const HANG: Duration = Duration::from_secs(60);

/// The network variables of the client; every run sets its own.
const NET_VARS: [&str; 4] = [
    "FIELDSYNC_CONNECT_TIMEOUT_MS",
    "FIELDSYNC_READ_TIMEOUT_MS",
    "FIELDSYNC_RETRIES",
    "FIELDSYNC_RETRY_BACKOFF_MS",
];
/// One attempt only: a fault must end in a clear error.
const NO_RETRY: &[(&str, &str)] = &[("FIELDSYNC_RETRIES", "1")];
/// The default number of attempts, with a short backoff to keep the sweeps quick.
const QUICK_RETRY: &[(&str, &str)] = &[("FIELDSYNC_RETRY_BACKOFF_MS", "50")];
/// The default number of attempts (`FIELDSYNC_RETRIES`).
const DEFAULT_ATTEMPTS: u64 = 3;

/// How many offsets a cut sweep tries.
fn n_offsets() -> usize {
    std::env::var("FIELDSYNC_FAULT_OFFSETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// `n` offsets spread over `0..len`, both ends included.
fn offsets(len: u64, n: usize) -> Vec<u64> {
    assert!(len > 1);
    let n = n.max(2) as u64;
    let mut out: Vec<u64> = (0..n).map(|i| i * (len - 1) / (n - 1)).collect();
    out.dedup();
    out
}

/// An office, ana's device with a downloaded north replica, and a proxy in front of
/// the server that the device now talks to (pairing and login went direct).
struct Net {
    office: Office,
    dev: DeviceDir,
    proxy: FaultProxy,
}

impl Net {
    fn new(n_assets: i64) -> Net {
        let office = Office::new(n_assets);
        let dev = office.device("tab1", &["north-inspections"]);
        dev.login("ana").ok();
        dev.run(&["download", "north-inspections"], "").ok();
        let upstream: SocketAddr = office.server.addr();
        let proxy = FaultProxy::start(upstream, Fault::PASS);
        dev.use_server(&proxy.url());
        Net { office, dev, proxy }
    }

    /// The slice as the main database has it now: what a download must install.
    fn north_slice(&self) -> Vec<Vec<String>> {
        let mut all = self.office.rows(NORTH_ASSETS);
        all.extend(self.office.rows(ANA_INSPECTIONS));
        all
    }

    fn count(&self, sql: &str) -> i64 {
        self.office.value(sql).parse().unwrap()
    }

    /// Runs `fieldsync device ARGS --progress json` with the network variables `env`.
    fn op(&self, args: &[&str], env: &[(&str, &str)]) -> Timed {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--progress", "json"]);
        run_timed(&self.dev, &full, env)
    }

    /// A download of the north task's whole slice (`--full`: the device holds it
    /// already and would otherwise get only the changes), bounded.
    fn download(&self, env: &[(&str, &str)]) -> Timed {
        self.op(&["download", "north-inspections", "--full"], env)
    }

    /// A send, with the proxy passing everything and default network settings; the
    /// bytes it sent and received.
    fn clean_send(&self) -> (u64, u64) {
        self.proxy.set_fault(Fault::PASS);
        let s0 = self.proxy.stats();
        let t = self.op(&["send"], &[]);
        assert_eq!(t.run.code, 0, "a clean send: {:?}", t.run);
        let s1 = self.proxy.stats();
        (s1.bytes_up - s0.bytes_up, s1.bytes_down - s0.bytes_down)
    }

    fn journal_len(&self) -> usize {
        let out = self.dev.run(&["journal", "--json"], "").ok();
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    }
}

/// What a bounded run printed and how long it took.
struct Timed {
    run: Run,
    elapsed: Duration,
}

impl Timed {
    /// The `--progress json` lines of `phase`.
    fn progress(&self, phase: &str) -> Vec<serde_json::Value> {
        self.run
            .stderr
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|p| p["phase"] == phase)
            .collect()
    }

    /// The attempts announced by `retry` progress lines, as (done, total).
    fn retries(&self) -> Vec<(u64, u64)> {
        self.progress("retry")
            .iter()
            .map(|p| {
                assert_eq!(p["unit"], "attempts", "{p}");
                (p["done"].as_u64().unwrap(), p["total"].as_u64().unwrap())
            })
            .collect()
    }
}

/// Runs `fieldsync device ARGS --dir DIR` with exactly the network variables `env`;
/// kills it and fails the test if it runs longer than [`HANG`].
fn run_timed(dev: &DeviceDir, args: &[&str], env: &[(&str, &str)]) -> Timed {
    let mut cmd = Command::new(BIN);
    cmd.arg("device")
        .args(args)
        .arg("--dir")
        .arg(dev.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in NET_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("the fieldsync binary runs");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`fieldsync device {}` with {env:?} hangs: still running after {HANG:?}; stderr so far: {}",
                args.join(" "),
                stderr.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    Timed {
        run: Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        },
        elapsed,
    }
}

/// Exit 1, and stderr holds JSON lines only (`--progress json`): progress, then the
/// error as the last line, `{"error": MESSAGE, "exit": 1}` (no panic, no backtrace).
#[track_caller]
fn assert_clear_error(run: &Run) {
    assert_eq!(run.code, 1, "expected a clear error (exit 1): {run:?}");
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {run:?}")))
        .collect();
    let errors: Vec<_> = lines.iter().filter(|l| l.get("error").is_some()).collect();
    assert!(
        errors.len() == 1 && lines.last() == errors.first().copied(),
        "progress lines, then one error line: {run:?}"
    );
    assert_eq!(errors[0]["exit"], 1, "{run:?}");
}

/// The `--progress json` error line of a failed run, if there is one.
fn json_error(run: &Run) -> Option<String> {
    let last: serde_json::Value = serde_json::from_str(run.stderr.lines().last()?).ok()?;
    last["error"].as_str().map(str::to_string)
}

/// The replica passes `integrity_check`, holds `expected` exactly, and no other
/// generation file lies around.
#[track_caller]
fn assert_replica(dev: &DeviceDir, expected: &[Vec<String>], what: &str) {
    assert_eq!(integrity(&dev.replica()), "ok", "{what}");
    let content = replica_content(dev);
    assert!(
        content == expected,
        "{what}: the replica is neither as expected ({} rows, {} expected)",
        content.len(),
        expected.len()
    );
    let generations: Vec<String> = std::fs::read_dir(dev.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("replica-") && n.ends_with(".sqlite"))
        .collect();
    assert_eq!(generations.len(), 1, "{what}: leftovers {generations:?}");
}

/// An office edit of the north slice, so that before and after a download differ.
fn office_edit(net: &Net, tag: &str) {
    net.office.execute_batch(&format!(
        "UPDATE assets SET name = 'office {tag}' WHERE id = (SELECT min(id) FROM assets WHERE region = 'north' AND status <> 'retired')"
    ));
}

/// Runs one download under `fault` and checks it ended as `before` (with a clear
/// error) or as the office's slice (exit 0). Returns the outcome and whether the
/// fault acted.
fn faulty_download(net: &Net, fault: Fault, env: &[(&str, &str)], tag: &str) -> (Timed, bool) {
    office_edit(net, tag);
    let before = replica_content(&net.dev);
    let after = net.north_slice();
    assert!(before != after);
    let faulted_before = net.proxy.stats().faulted;
    net.proxy.set_fault(fault);
    let t = net.download(env);
    let faulted = net.proxy.stats().faulted > faulted_before;
    if t.run.code == 0 {
        assert_replica(&net.dev, &after, &format!("{tag}: a successful download"));
    } else {
        assert_clear_error(&t.run);
        assert_replica(&net.dev, &before, &format!("{tag}: a failed download"));
    }
    (t, faulted)
}

/// The size of a download's response, measured through the pass-through proxy.
fn download_len(net: &Net) -> u64 {
    net.proxy.set_fault(Fault::PASS);
    let s0 = net.proxy.stats();
    let t = net.download(&[]);
    assert_eq!(t.run.code, 0, "{:?}", t.run);
    let s1 = net.proxy.stats();
    assert_eq!(
        s1.connections - s0.connections,
        1,
        "one connection a download"
    );
    s1.bytes_down - s0.bytes_down
}

/// The last bytes of a response or request, where a fault may rightly not matter:
/// the chunked encoding's end carries no data, and sizes vary by a few bytes from
/// round to round (a random upload id compresses differently, say).
const RESPONSE_TAIL: u64 = 32;

#[test]
fn a_download_cut_at_any_offset_keeps_the_old_replica_or_a_retry_installs_the_new_one() {
    let net = Net::new(300);
    let len = download_len(&net);
    let offsets = offsets(len, n_offsets());
    let started = Instant::now();
    let mut n_errors = 0;
    for (i, &off) in offsets.iter().enumerate() {
        // One attempt: a cut before the tail is a clear error, the old replica kept.
        let (t, faulted) = faulty_download(
            &net,
            Fault::down(Action::Cut(off)),
            NO_RETRY,
            &format!("cut-{i:03}"),
        );
        if off + RESPONSE_TAIL < len {
            assert!(faulted, "the cut at {off} of {len} acted");
            assert_ne!(t.run.code, 0, "a download cut at {off} of {len} passed");
        }
        if t.run.code != 0 {
            n_errors += 1;
            assert!(t.retries().is_empty(), "no retry with FIELDSYNC_RETRIES=1");
        }

        // Retries on, only the first connection cut: the retry installs the slice.
        let (t, faulted) = faulty_download(
            &net,
            Fault::down(Action::Cut(off)).first(1),
            QUICK_RETRY,
            &format!("try-{i:03}"),
        );
        assert_eq!(
            t.run.code, 0,
            "cut at {off} of {len}, then a retry: {:?}",
            t.run
        );
        if faulted && off + RESPONSE_TAIL < len {
            assert_eq!(t.retries(), [(2, DEFAULT_ATTEMPTS)], "{:?}", t.run);
        }
    }
    eprintln!(
        "download cuts: {} offsets over {len} bytes, {n_errors} errors, {:?}",
        offsets.len(),
        started.elapsed()
    );
}

/// Local edits of round `round` on ana's replica: two new inspections of `asset`
/// with known ids, and a new name for it. Returns the inspections' ids.
fn device_edit(dev: &DeviceDir, asset: i64, round: usize) -> [String; 2] {
    let app = dev.replica();
    let ids = [format!("net-{round:03}-a"), format!("net-{round:03}-b")];
    for id in &ids {
        app.execute(
            "INSERT INTO inspections (id, asset_id, inspector, inspected_at, result) VALUES (?1, ?2, 'ana', '2026-11-26T09:00:00.000Z', 'ok')",
            params![id, asset],
        )
        .unwrap();
    }
    app.execute(
        "UPDATE assets SET name = ?1 WHERE id = ?2",
        params![format!("device {round:03}"), asset],
    )
    .unwrap();
    ids
}

/// Where a send stands after a faulty attempt: its three entries either still in the
/// journal (not acknowledged), or acknowledged and in the main database.
struct SendCheck {
    ids: [String; 2],
    round: usize,
    asset: i64,
    uploads_before: i64,
    conflicts_before: i64,
    inspections_before: i64,
}

impl SendCheck {
    fn start(net: &Net, asset: i64, round: usize) -> SendCheck {
        let ids = device_edit(&net.dev, asset, round);
        assert_eq!(net.journal_len(), 3);
        SendCheck {
            ids,
            round,
            asset,
            uploads_before: net.office.uploads_recorded() as i64,
            conflicts_before: net.count(&format!(
                "SELECT count(*) FROM {}",
                net.office.own_table("conflicts")
            )),
            inspections_before: net.count("SELECT count(*) FROM inspections"),
        }
    }

    /// How many of the round's inspections the main database holds, each at most once.
    fn in_main(&self, net: &Net) -> i64 {
        let mut n = 0;
        for id in &self.ids {
            let c: i64 = net
                .office
                .value(&format!(
                    "SELECT count(*) FROM inspections WHERE id = '{id}'"
                ))
                .parse()
                .unwrap();
            assert!(c <= 1);
            n += c;
        }
        n
    }

    /// After a failed attempt: every entry still in the journal, the replica intact,
    /// the upload applied wholly or not at all.
    #[track_caller]
    fn after_failure(&self, net: &Net, run: &Run) {
        assert_clear_error(run);
        assert_eq!(
            net.journal_len(),
            3,
            "round {}: unacknowledged entries stay in the journal",
            self.round
        );
        assert_eq!(integrity(&net.dev.replica()), "ok");
        let n = self.in_main(net);
        assert!(
            n == 0 || n == 2,
            "round {}: half an upload applied",
            self.round
        );
    }

    /// After the final clean send: every entry in the main database exactly once with
    /// the device's values, one upload recorded, no conflict (a double application
    /// would log one, and so would a base version not recorded from the
    /// acknowledgement). Returns the clean send's bytes sent and received.
    #[track_caller]
    fn settled(&self, net: &Net) -> (u64, u64) {
        let sizes = net.clean_send();
        assert_eq!(net.journal_len(), 0);
        let damage = self.damage(net);
        assert!(damage.is_empty(), "round {}: {damage:?}", self.round);
        sizes
    }

    /// How the main database differs from "the round's upload applied once, intact".
    fn damage(&self, net: &Net) -> Vec<String> {
        let mut out = vec![];
        for id in &self.ids {
            let values = net.office.rows(&format!(
                "SELECT asset_id, inspector, inspected_at, result FROM inspections WHERE id = '{id}'"
            ));
            let expected = [
                format!("i{}", self.asset),
                "tana".into(),
                "t2026-11-26T09:00:00.000Z".into(),
                "tok".into(),
            ];
            if values != [expected] {
                out.push(format!("inspection {id}: {values:?}"));
            }
        }
        let inspections = net.count("SELECT count(*) FROM inspections");
        if inspections != self.inspections_before + 2 {
            out.push(format!(
                "{} inspection(s) more, two expected",
                inspections - self.inspections_before
            ));
        }
        let name = net.office.value(&format!(
            "SELECT name FROM assets WHERE id = {}",
            self.asset
        ));
        if name != format!("device {:03}", self.round) {
            out.push(format!("asset {}: name {name:?}", self.asset));
        }
        let uploads = net.office.uploads_recorded() as i64;
        if uploads != self.uploads_before + 1 {
            out.push(format!(
                "{} upload(s) recorded, one expected",
                uploads - self.uploads_before
            ));
        }
        let conflicts = net.count(&format!(
            "SELECT count(*) FROM {}",
            net.office.own_table("conflicts")
        ));
        if conflicts != self.conflicts_before {
            out.push(format!(
                "{} conflict(s) logged",
                conflicts - self.conflicts_before
            ));
        }
        out
    }
}

fn some_asset(dev: &DeviceDir) -> i64 {
    dev.replica()
        .query_row("SELECT min(id) FROM assets", [], |r| r.get(0))
        .unwrap()
}

/// Sweeps a cut over one direction of a send's connection: the request (`Up`) or the
/// acknowledgement (`Down`). Each offset: one attempt (a clear error, nothing lost,
/// nothing half-applied, settled by the next send), then retries on with only the
/// first connection cut (the send succeeds). Returns (offsets, offsets that acted).
fn send_cut_sweep(net: &Net, direction: fn(Action) -> Fault) -> (usize, usize) {
    let asset = some_asset(&net.dev);
    // Measure a send's request and acknowledgement.
    let size = |(up, down): (u64, u64)| {
        if direction(Action::Pass).direction == Direction::Up {
            up
        } else {
            down
        }
    };
    let len = size(SendCheck::start(net, asset, 0).settled(net));
    let offsets = offsets(len, n_offsets());
    let mut sizes = vec![];
    let mut n_acted = 0;
    let mut round = 1;
    for &off in &offsets {
        let check = SendCheck::start(net, asset, round);
        let faulted_before = net.proxy.stats().faulted;
        net.proxy.set_fault(direction(Action::Cut(off)));
        let t = net.op(&["send"], NO_RETRY);
        let faulted = net.proxy.stats().faulted > faulted_before;
        assert!(
            faulted || off + RESPONSE_TAIL >= len,
            "the cut at {off} of {len} acted"
        );
        if faulted {
            n_acted += 1;
            check.after_failure(net, &t.run);
        } else {
            assert_eq!(t.run.code, 0, "{:?}", t.run);
        }
        sizes.push(size(check.settled(net)));
        round += 1;

        let check = SendCheck::start(net, asset, round);
        let faulted_before = net.proxy.stats().faulted;
        net.proxy.set_fault(direction(Action::Cut(off)).first(1));
        let t = net.op(&["send"], QUICK_RETRY);
        assert_eq!(
            t.run.code, 0,
            "cut at {off} of {len}, then a retry: {:?}",
            t.run
        );
        let faulted = net.proxy.stats().faulted > faulted_before;
        assert!(
            faulted || off + RESPONSE_TAIL >= len,
            "the cut at {off} of {len} acted"
        );
        if faulted {
            assert_eq!(t.retries(), [(2, DEFAULT_ATTEMPTS)], "{:?}", t.run);
        }
        assert_eq!(net.journal_len(), 0);
        check.settled(net);
        round += 1;
    }
    eprintln!(
        "{len} bytes measured, {:?}..={:?} in the rounds",
        sizes.iter().min(),
        sizes.iter().max()
    );
    (offsets.len(), n_acted)
}

#[test]
fn an_upload_cut_at_any_offset_is_applied_once_or_not_at_all() {
    let net = Net::new(300);
    let started = Instant::now();
    let (n, n_acted) = send_cut_sweep(&net, Fault::up);
    eprintln!(
        "upload cuts: {n} offsets, {n_acted} acted, {:?}",
        started.elapsed()
    );
}

#[test]
fn a_lost_acknowledgement_is_settled_without_applying_the_upload_twice() {
    let net = Net::new(300);
    let started = Instant::now();
    let (n, n_acted) = send_cut_sweep(&net, Fault::down);
    eprintln!(
        "acknowledgement cuts: {n} offsets, {n_acted} acted, {:?}",
        started.elapsed()
    );
}

/// The read timeout, two attempts, a short backoff: a stall ends in about 3 s.
const STALL_ENV: &[(&str, &str)] = &[
    ("FIELDSYNC_READ_TIMEOUT_MS", "1500"),
    ("FIELDSYNC_RETRIES", "2"),
    ("FIELDSYNC_RETRY_BACKOFF_MS", "100"),
];

/// Two read timeouts and a backoff, at least; far less than a hang.
#[track_caller]
fn assert_stall_bounded(t: &Timed) {
    assert!(
        t.elapsed >= Duration::from_millis(2 * 1500),
        "two attempts of 1.5 s each: {:?}",
        t.elapsed
    );
    assert!(
        t.elapsed <= Duration::from_secs(15),
        "a stall ends by the read timeout: {:?}",
        t.elapsed
    );
    assert_eq!(t.retries(), [(2, 2)], "{:?}", t.run);
}

#[test]
fn a_stalled_download_ends_in_a_clear_error_within_the_read_timeout() {
    let net = Net::new(300);
    let len = download_len(&net);
    // Before the first byte (the server "preparing" forever), and mid-stream.
    for (i, at) in [0, len / 2].into_iter().enumerate() {
        let (t, faulted) = faulty_download(
            &net,
            Fault::down(Action::Stall(at)),
            STALL_ENV,
            &format!("stall-{i}"),
        );
        assert!(faulted);
        assert_clear_error(&t.run);
        assert_stall_bounded(&t);
        eprintln!("download stalled at {at} of {len}: {:?}", t.elapsed);
    }
}

#[test]
fn a_stalled_send_ends_in_a_clear_error_and_keeps_the_journal() {
    let net = Net::new(300);
    let asset = some_asset(&net.dev);
    // Mid-request (nothing applied) and mid-acknowledgement (applied, not known).
    for (round, fault) in [
        (1, Fault::up(Action::Stall(150))),
        (2, Fault::down(Action::Stall(20))),
    ] {
        let check = SendCheck::start(&net, asset, round);
        let before = replica_content(&net.dev);
        net.proxy.set_fault(fault);
        let t = net.op(&["send"], STALL_ENV);
        check.after_failure(&net, &t.run);
        assert_stall_bounded(&t);
        assert!(
            replica_content(&net.dev) == before,
            "the replica's rows as before"
        );
        eprintln!("send stalled ({fault:?}): {:?}", t.elapsed);
        check.settled(&net);
    }
}

#[test]
fn a_flipped_byte_in_the_download_is_detected_and_a_retry_recovers() {
    let net = Net::new(300);
    let len = download_len(&net);
    // Offsets in the body (past the headers, before the end of the data).
    let body_offsets: Vec<u64> = [15, 30, 50, 70, 85, 95]
        .iter()
        .map(|pct| len * pct / 100)
        .filter(|&off| off + RESPONSE_TAIL < len && off >= 300)
        .collect();
    assert!(body_offsets.len() >= 4, "a response of {len} bytes");
    for (i, &off) in body_offsets.iter().enumerate() {
        // One attempt: detected, the old replica kept.
        let (t, faulted) = faulty_download(
            &net,
            Fault::down(Action::Flip(off)),
            NO_RETRY,
            &format!("flip-{i}"),
        );
        assert!(faulted);
        assert_ne!(
            t.run.code, 0,
            "a byte flipped at {off} of {len} went unnoticed"
        );

        // Every connection damaged: each attempt fails, each retry shows.
        let (t, _) = faulty_download(
            &net,
            Fault::down(Action::Flip(off)),
            QUICK_RETRY,
            &format!("flip-all-{i}"),
        );
        assert_ne!(
            t.run.code, 0,
            "a byte flipped at {off} of {len} went unnoticed"
        );
        assert_eq!(
            t.retries(),
            [(2, DEFAULT_ATTEMPTS), (3, DEFAULT_ATTEMPTS)],
            "{:?}",
            t.run
        );

        // Only the first connection damaged: the retry succeeds.
        let (t, _) = faulty_download(
            &net,
            Fault::down(Action::Flip(off)).first(1),
            QUICK_RETRY,
            &format!("flip-first-{i}"),
        );
        assert_eq!(t.run.code, 0, "flip at {off}, then a retry: {:?}", t.run);
        assert_eq!(t.retries(), [(2, DEFAULT_ATTEMPTS)], "{:?}", t.run);
    }
    // The defaults as shipped (three attempts, 500 ms backoff) recover as well.
    let (t, _) = faulty_download(
        &net,
        Fault::down(Action::Flip(len / 2)).first(1),
        &[],
        "flip-defaults",
    );
    assert_eq!(t.run.code, 0, "{:?}", t.run);
    assert_eq!(t.retries(), [(2, DEFAULT_ATTEMPTS)], "{:?}", t.run);
}

/// Promise 8 for the upload direction: a damaged upload is refused as a whole, or, if
/// the damage is harmless, applied exactly as the device sent it. Every other byte of
/// the upload body is flipped in turn (about 150 sends).
#[test]
fn a_flipped_byte_in_an_upload_is_refused_or_applied_intact() {
    let net = Net::new(300);
    let asset = some_asset(&net.dev);
    let (request_len, _) = SendCheck::start(&net, asset, 0).settled(&net);
    // The upload body (zstd) ends the request; `bytes_up` is its size.
    let body_len = net.dev.status()["last_sync"]["bytes_up"].as_u64().unwrap();
    let body_start = request_len - body_len;
    let started = Instant::now();
    let mut refusals = 0;
    let mut damaged = vec![];
    for k in (0..body_len).step_by(2) {
        let off = body_start + k;
        let check = SendCheck::start(&net, asset, k as usize + 1);
        net.proxy.set_fault(Fault::up(Action::Flip(off)));
        let t = net.op(&["send"], NO_RETRY);
        let mut damage = vec![];
        if t.run.code != 0 {
            refusals += 1;
            // A refusal (exit 4) is possible too: a flip can rename the task.
            assert!(t.run.code == 1 || t.run.code == 4, "{:?}", t.run);
            assert!(json_error(&t.run).is_some(), "{:?}", t.run);
            assert_eq!(net.journal_len(), 3, "the journal kept");
            let n = check.in_main(&net);
            if n != 0 {
                damage.push(format!(
                    "exit {} yet applied ({n} of the round's inserts in the main database)",
                    t.run.code
                ));
            }
        }
        // Refused or applied, the main database must end with the device's values.
        net.clean_send();
        assert_eq!(net.journal_len(), 0);
        damage.extend(check.damage(&net));
        if !damage.is_empty() {
            damaged.push((k, damage));
        }
    }
    eprintln!(
        "upload body of {body_len} bytes flipped at every other offset: {refusals} refused, {} damaged, {:?}",
        damaged.len(),
        started.elapsed()
    );
    assert!(
        damaged.is_empty(),
        "damaged uploads applied as if intact (offset in the body, what): {damaged:#?}"
    );
}

#[test]
fn an_unreachable_server_is_retried_then_a_clear_error() {
    let net = Net::new(300);
    let before = replica_content(&net.dev);
    // The proxy's port, closed: connections are refused.
    let Net { office, dev, proxy } = net;
    drop(proxy);
    let unreachable = |args: &[&str]| {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--progress", "json"]);
        let t = run_timed(&dev, &full, QUICK_RETRY);
        assert_clear_error(&t.run);
        assert_eq!(
            t.retries(),
            [(2, DEFAULT_ATTEMPTS), (3, DEFAULT_ATTEMPTS)],
            "{:?}",
            t.run
        );
        assert!(t.elapsed < Duration::from_secs(10), "{:?}", t.elapsed);
    };
    unreachable(&["download", "north-inspections"]);
    assert_replica(&dev, &before, "after an unreachable server");
    let asset = some_asset(&dev);
    device_edit(&dev, asset, 1);
    unreachable(&["send"]);
    assert_eq!(integrity(&dev.replica()), "ok");
    let journal: serde_json::Value =
        serde_json::from_str(&dev.run(&["journal", "--json"], "").ok().stdout).unwrap();
    assert_eq!(journal.as_array().unwrap().len(), 3);
    assert_eq!(
        office.value("SELECT count(*) FROM inspections WHERE id LIKE 'net-%'"),
        "0"
    );
}

#[test]
fn a_server_that_never_accepts_ends_in_a_connect_timeout() {
    let net = Net::new(300);
    let before = replica_content(&net.dev);
    // A listener with a backlog of one that never accepts: once its queue is full, the
    // kernel drops new connection requests, and a connect waits until it times out.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(1).unwrap()
    });
    let addr = listener.local_addr().unwrap();
    let _queued: Vec<std::net::TcpStream> = (0..4)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    net.dev.use_server(&format!("http://{addr}"));
    let t = net.download(&[
        ("FIELDSYNC_CONNECT_TIMEOUT_MS", "500"),
        ("FIELDSYNC_READ_TIMEOUT_MS", "5000"),
        ("FIELDSYNC_RETRIES", "2"),
        ("FIELDSYNC_RETRY_BACKOFF_MS", "50"),
    ]);
    eprintln!("two connect timeouts: {:?}", t.elapsed);
    assert_clear_error(&t.run);
    assert_eq!(t.retries(), [(2, 2)], "{:?}", t.run);
    assert!(
        t.elapsed >= Duration::from_millis(1000) && t.elapsed < Duration::from_millis(4000),
        "two connect timeouts of 0.5 s, not the read timeout: {:?}",
        t.elapsed
    );
    assert_replica(&net.dev, &before, "after connect timeouts");
    drop(listener);
}

#[test]
fn a_throttled_download_completes_and_shows_its_progress() {
    // About 200 kB of response: a second at 200 kB/s.
    let net = Net::new(20_000);
    let len = download_len(&net);
    let rate = 200 * 1000;
    let (t, faulted) = faulty_download(&net, Fault::down(Action::Throttle(rate)), &[], "throttled");
    assert_eq!(t.run.code, 0, "{:?}", t.run);
    assert!(!faulted);
    let least = Duration::from_secs_f64(0.8 * len as f64 / rate as f64);
    assert!(
        t.elapsed >= least,
        "throttled: {:?} for {len} bytes",
        t.elapsed
    );
    let transfer = t.progress("transfer");
    let last = transfer.last().expect("transfer progress lines");
    assert_eq!(last["done"], last["total"], "{last}");
    let midway = transfer
        .iter()
        .filter(|p| p["done"].as_u64().unwrap() < p["total"].as_u64().unwrap())
        .count();
    assert!(midway >= 2, "progress while the rows arrive: {transfer:?}");
    let done: Vec<u64> = transfer
        .iter()
        .map(|p| p["done"].as_u64().unwrap())
        .collect();
    assert!(done.is_sorted(), "{done:?}");
    assert!(t.retries().is_empty());
    eprintln!(
        "throttled download of {len} bytes at {rate} B/s: {:?}, {} transfer lines",
        t.elapsed,
        transfer.len()
    );
}

// The faults that reach the main database (the server reading a slice for a slow or
// cut client, an upload cut, damaged or acknowledged late); stalls and unreachable
// servers never get that far.
crate::also_on_postgres!(
    a_download_cut_at_any_offset_keeps_the_old_replica_or_a_retry_installs_the_new_one,
    an_upload_cut_at_any_offset_is_applied_once_or_not_at_all,
    a_lost_acknowledgement_is_settled_without_applying_the_upload_twice,
    a_flipped_byte_in_the_download_is_detected_and_a_retry_recovers,
    a_flipped_byte_in_an_upload_is_refused_or_applied_intact,
    a_throttled_download_completes_and_shows_its_progress,
);
