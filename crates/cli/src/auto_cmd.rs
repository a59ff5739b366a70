//! `fieldsync device watch` (the background service that synchronizes by itself when
//! the device is docked) and `fieldsync device cancel`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use fieldsync_client::autosync::Outcome;
use fieldsync_client::power::SysfsPower;
use fieldsync_client::{Cancel, Device, WatchNote};

/// Runs the watcher until SIGINT or SIGTERM (a running attempt is cancelled safely
/// first); SIGUSR1 (`device cancel`) cancels only the running attempt.
pub fn watch(device: &Device, power_supply: &Path, poll_ms: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        (10..=3_600_000).contains(&poll_ms),
        "--poll-ms: between 10 and 3600000, not {poll_ms}"
    );
    let power = SysfsPower::new(power_supply);
    let stop = Cancel::default();
    let current = Arc::new(Mutex::new(Cancel::default()));
    on_signals(&stop, &current);
    let mut attempt_cancel = || {
        let cancel = Cancel::default();
        *current.lock().unwrap_or_else(|e| e.into_inner()) = cancel.clone();
        cancel
    };
    device.watch(
        &power,
        Duration::from_millis(poll_ms),
        &stop,
        &mut attempt_cancel,
        &mut |_| {},
        &mut |note| match note {
            WatchNote::Watching => println!(
                "watching {} for external power every {poll_ms} ms",
                power_supply.display()
            ),
            WatchNote::Power(true) => println!("external power: docked"),
            WatchNote::Power(false) => println!("external power: none"),
            WatchNote::Started(a) => println!(
                "automatic synchronization started for {}{}",
                a.user,
                if a.go_online { " (online for it)" } else { "" }
            ),
            WatchNote::Ended(outcome, message) => {
                let word = match outcome {
                    Outcome::Ok => "ok",
                    Outcome::Error => "error",
                    Outcome::Cancelled => "cancelled",
                };
                println!("automatic synchronization {word}: {message}");
            }
        },
    )?;
    println!("watcher stopped");
    Ok(())
}

/// SIGINT and SIGTERM stop the watcher (and cancel its attempt); SIGUSR1 cancels the
/// attempt only.
fn on_signals(stop: &Cancel, current: &Arc<Mutex<Cancel>>) {
    let Some((rt, mut int, mut term, mut usr1)) = crate::device_cmd::cancel_signals() else {
        return;
    };
    let (stop, current) = (stop.clone(), current.clone());
    std::thread::spawn(move || {
        rt.block_on(async {
            loop {
                let stopping = tokio::select! {
                    _ = int.recv() => true,
                    _ = term.recv() => true,
                    _ = usr1.recv() => false,
                };
                current.lock().unwrap_or_else(|e| e.into_inner()).cancel();
                if stopping {
                    stop.cancel();
                }
            }
        });
    });
}

/// Asks the process that runs `running` to cancel it (SIGUSR1, which `device watch`
/// and the device commands take as a safe cancel); returns at once.
pub fn signal_cancel(running: &fieldsync_client::running::Running) -> anyhow::Result<()> {
    let pid = running.pid;
    // The system's `kill`: the project has no unsafe code of its own.
    let sent = std::process::Command::new("kill")
        .args(["-USR1", &pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(sent.success(), "cannot signal process {pid}");
    Ok(())
}

/// Signals the process that runs the folder's operation to cancel it, and waits (up
/// to a minute) until it let the folder go.
pub fn cancel(device: &Device) -> anyhow::Result<()> {
    let dir = device.dir();
    let Some(running) = fieldsync_client::running::running(dir) else {
        println!("nothing is running");
        return Ok(());
    };
    signal_cancel(&running)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fieldsync_client::running::running(dir)
        .is_some_and(|r| r.pid == running.pid && r.started == running.started)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the {} ({}) did not stop within a minute",
            running.op,
            running.kind
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("cancelled the {} ({})", running.op, running.kind);
    Ok(())
}
