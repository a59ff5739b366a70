//! `fieldsync device ui` as a person uses it: the real binary in an 80×24 tmux pane
//! (send-keys to type, capture-pane to read the screen) against a real server.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::docking::{Dock, Watcher, crew, first_asset, long_journal};
use crate::harness::*;
use crate::proxy::{Action, Fault, FaultProxy};

const TASK: &str = "north-inspections";

/// The UI in a pane of its own tmux server (socket), killed on drop.
struct Tui {
    socket: String,
}

impl Tui {
    /// `device ui` on `dev`, with colours (NO_COLOR emptied) and `env`.
    fn start(dev: &DeviceDir, env: &[(&str, &str)]) -> Tui {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "fieldsync-ui-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let tui = Tui { socket };
        let mut args: Vec<String> = ["new-session", "-d", "-x", "80", "-y", "24"]
            .map(String::from)
            .to_vec();
        for (k, v) in [("NO_COLOR", "")].iter().chain(env) {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        // The shell says how the UI ended, on the screen the UI gave back, and stays
        // (tmux may drop the last output of a pane whose program ended).
        args.push(format!(
            "'{BIN}' device ui --dir '{}'; echo \"ui exited with $?\"; sleep 600",
            dev.path().display()
        ));
        // The pane stays after the program ends, to read how it ended.
        args.extend([";", "set-option", "-g", "remain-on-exit", "on"].map(String::from));
        let out = tui.tmux(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "tmux: {out:?}");
        tui.wait("fieldsync · device");
        tui
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux runs (scripts/test installs it)")
    }

    /// Presses keys by tmux's names (`Enter`, `Tab`, `Escape`, or a letter).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        assert!(self.tmux(&args).status.success());
    }

    /// Types text as it is.
    fn type_text(&self, text: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "0", "-l", text])
                .status
                .success()
        );
    }

    /// Clicks the left button on the first place the screen shows `text` (an xterm
    /// SGR mouse report, as a terminal sends one).
    #[track_caller]
    fn click(&self, text: &str) {
        let screen = self.screen();
        let (y, x) = screen
            .lines()
            .enumerate()
            .find_map(|(y, l)| l.find(text).map(|i| (y, l[..i].chars().count())))
            .unwrap_or_else(|| panic!("`{text}` not on screen:\n{screen}"));
        let (col, row) = (x + 3, y + 1);
        self.type_text(&format!("\x1b[<0;{col};{row}M\x1b[<0;{col};{row}m"));
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-t", "0"]).stdout).into()
    }

    /// The screen with its colours as escape sequences.
    fn colored(&self) -> String {
        String::from_utf8_lossy(&self.tmux(&["capture-pane", "-p", "-e", "-t", "0"]).stdout).into()
    }

    /// Waits (30 s at most) until the screen shows `text`; returns the screen.
    #[track_caller]
    fn wait(&self, text: &str) -> String {
        self.wait_until(&format!("`{text}` on screen"), |s| s.contains(text))
    }

    #[track_caller]
    fn wait_gone(&self, text: &str) -> String {
        self.wait_until(&format!("`{text}` gone"), |s| !s.contains(text))
    }

    #[track_caller]
    fn wait_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited in vain for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the line of the colored screen that contains `text` is in `color`
    /// (tmux writes a basic colour as `3N` or `38;5;N`).
    #[track_caller]
    fn in_color(&self, text: &str, color: u8) -> bool {
        let line = self.colored_line(text);
        line.contains(&format!("[3{color}m")) || line.contains(&format!("38;5;{color}m"))
    }

    /// The line of the colored screen that contains `text`.
    fn colored_line(&self, text: &str) -> String {
        self.colored()
            .lines()
            .find(|l| plain(l).contains(text))
            .unwrap_or_else(|| panic!("no line with `{text}`:\n{}", self.screen()))
            .to_string()
    }

    /// Quits with `q` and waits for the program to end; returns its exit status.
    fn quit(&self) -> String {
        self.keys(&["q"]);
        let screen = self.wait("ui exited with");
        assert!(
            !screen.contains("fieldsync · device"),
            "the terminal's own screen is back: {screen}"
        );
        let line = screen.lines().find(|l| l.contains("ui exited with"));
        line.and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    }
}

/// A line without its escape sequences (ESC, then up to a letter).
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut in_escape = false;
    for c in line.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (false, c) => out.push(c),
            (true, c) if c.is_ascii_alphabetic() => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The task picker: `d`, the task listed, Enter.
fn download(tui: &Tui) {
    tui.keys(&["d"]);
    tui.wait(&format!("> {TASK}"));
    tui.keys(&["Enter"]);
}

/// Changes `n` assets' status in the replica, as the crew's app would.
fn edit(dev: &DeviceDir, n: i64, status: &str) {
    dev.replica()
        .execute(
            "UPDATE assets SET status = ?1 WHERE id IN (SELECT id FROM assets ORDER BY id LIMIT ?2)",
            rusqlite::params![status, n],
        )
        .unwrap();
}

fn backups(dev: &DeviceDir) -> Vec<String> {
    std::fs::read_dir(dev.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup-") && n.ends_with(".jsonl"))
        .collect()
}

#[test]
fn login_download_send_synchronize_and_the_discard_confirmation() {
    let office = Office::new(40);
    let dev = office.device("tab1", &[TASK]);
    let tui = Tui::start(&dev, &[]);
    tui.wait("(nobody logged in)");

    tui.keys(&["l"]);
    tui.wait("Password");
    tui.type_text("ana");
    tui.keys(&["Tab"]);
    tui.type_text("ana-pw");
    let screen = tui.wait("******");
    assert!(!screen.contains("ana-pw"), "the password is masked");
    tui.keys(&["Enter"]);
    tui.wait("User     ana");

    // Download with the task picker: the window closes, the result is green.
    download(&tui);
    tui.wait("[OK] download (manual)");
    assert!(
        !tui.screen().contains("Cancel (c)"),
        "the progress window closed"
    );
    assert!(
        tui.in_color("[OK] download", 2),
        "green: {:?}",
        tui.colored_line("[OK] download")
    );
    assert_eq!(dev.status()["task"], TASK);
    let rows: i64 = dev
        .replica()
        .query_row("SELECT count(*) FROM assets", [], |r| r.get(0))
        .unwrap();
    assert!(rows > 0);

    // Send shows what would be sent; Execute sends it.
    edit(&dev, 2, "seen from the tab");
    tui.wait("2 by ana");
    tui.keys(&["s"]);
    let screen = tui.wait("Execute (e)");
    assert!(screen.contains("2 by ana"), "{screen}");
    assert_eq!(dev.status()["pending"], 2, "nothing sent before Execute");
    tui.keys(&["e"]);
    tui.wait("[OK] send (manual)");
    assert_eq!(dev.status()["pending"], 0);
    let asset = first_asset(&dev);
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {asset}")),
        "seen from the tab"
    );

    // Synchronize: the crew's change goes up, the office's comes down.
    edit(&dev, 1, "synchronized from the tab");
    office.execute_batch(&format!(
        "UPDATE assets SET name = 'renamed in the office' WHERE id = {asset}"
    ));
    tui.wait("1 by ana");
    // With the mouse this time.
    tui.click("[ Synchronize (y) ]");
    tui.wait("[OK] sync (manual)");
    assert_eq!(
        office.value(&format!("SELECT status FROM assets WHERE id = {asset}")),
        "synchronized from the tab"
    );
    let name: String = dev
        .replica()
        .query_row("SELECT name FROM assets WHERE id = ?1", [asset], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(name, "renamed in the office");

    // A download that would discard a change asks first; `n` keeps it.
    edit(&dev, 1, "not sent");
    tui.wait("1 by ana");
    download(&tui);
    let screen = tui.wait("1 local change(s) not sent will be forgotten");
    assert!(screen.contains("backup-<time>-<id>.jsonl"), "{screen}");
    tui.keys(&["n"]);
    tui.wait_gone("will be forgotten");
    assert_eq!(dev.status()["pending"], 1, "kept");
    assert!(backups(&dev).is_empty());
    // `y` backs it up and downloads.
    download(&tui);
    tui.wait("will be forgotten");
    tui.keys(&["y"]);
    tui.wait("local changes backed up to");
    tui.wait("[OK] download (manual)");
    assert_eq!(dev.status()["pending"], 0);
    assert_eq!(backups(&dev).len(), 1);

    assert_eq!(tui.quit(), "0");
}

#[test]
fn cancel_during_a_large_download_restores_the_previous_data() {
    let office = Office::new(1000);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    let before = replica_content(&dev);
    // Every row changes in the office, and the device's link is slow: the download
    // takes long enough to be cancelled in its transfer.
    // (Random text: the stream is compressed, and comes in pieces of 64 KiB of it.)
    office.execute_batch("UPDATE assets SET name = name || ' ' || hex(randomblob(500))");
    let upstream = office
        .server
        .url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(upstream, Fault::down(Action::Throttle(40_000)));
    dev.use_server(&proxy.url());
    let tui = Tui::start(&dev, &[]);
    tui.wait("User     ana");
    download(&tui);
    let screen = tui.wait("[transfer]");
    assert!(screen.contains("Cancel (c)"), "{screen}");
    tui.keys(&["c"]);
    let screen = tui.wait("[CANCELLED]");
    assert!(
        screen.contains("previous local database restored"),
        "{screen}"
    );
    assert!(screen.contains("Close (c)"), "stays open: {screen}");
    assert_eq!(replica_content(&dev), before, "the previous data");
    assert_eq!(integrity(&dev.replica()), "ok");
    tui.keys(&["c"]);
    tui.wait_gone("Close (c)");
    tui.wait("[CANCELLED] download (manual)");

    // `device cancel` from elsewhere cancels the UI's download the same way.
    download(&tui);
    tui.wait("[transfer]");
    let out = dev.run(&["cancel"], "").ok();
    assert!(
        out.stdout.contains("cancelled the download (manual)"),
        "{out:?}"
    );
    tui.wait("[CANCELLED]");
    assert_eq!(replica_content(&dev), before, "the previous data");
    tui.keys(&["c"]);
    tui.wait_gone("Close (c)");
    assert_eq!(tui.quit(), "0");
}

#[test]
fn an_error_window_stays_red_until_closed() {
    let mut office = Office::new(20);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    edit(&dev, 1, "to send");
    let _ = office.server.child.kill();
    let _ = office.server.child.wait();
    let tui = Tui::start(&dev, &[("FIELDSYNC_RETRIES", "1")]);
    tui.wait("1 by ana");
    tui.keys(&["s"]);
    tui.wait("Execute (e)");
    tui.keys(&["e"]);
    let screen = tui.wait("[ERROR]");
    assert!(screen.contains("cannot reach the server"), "{screen}");
    assert!(
        tui.in_color("cannot reach the server", 1),
        "red: {:?}",
        tui.colored_line("cannot reach the server")
    );
    // It stays: many status readings later, still open.
    std::thread::sleep(Duration::from_millis(1500));
    let screen = tui.screen();
    assert!(screen.contains("Close (c)"), "{screen}");
    tui.keys(&["c"]);
    tui.wait_gone("Close (c)");
    tui.wait("[ERROR] send (manual)");
    assert_eq!(dev.status()["pending"], 1, "the change is kept");
    assert_eq!(tui.quit(), "0");
}

#[test]
fn a_revoked_device_wipes_its_data_from_the_ui_too() {
    let office = Office::new(20);
    let dev = office.device("tab1", &[TASK]);
    dev.login("ana").ok();
    dev.run(&["download", TASK], "").ok();
    edit(&dev, 1, "never to arrive");
    office.admin(&["device", "revoke", "tab1"], "").ok();
    let tui = Tui::start(&dev, &[("FIELDSYNC_RETRIES", "1")]);
    tui.wait("1 by ana");
    tui.keys(&["y"]);
    let screen = tui.wait("[ERROR]");
    assert!(screen.contains("revoked by the office"), "{screen}");
    assert!(
        !dev.replica_path().exists(),
        "the replica stays after the revocation"
    );
    assert!(dev.status()["device_id"].is_null(), "the credentials stay");
    tui.keys(&["c"]);
    tui.wait_gone("Close (c)");
    assert_eq!(tui.quit(), "0");
}

#[test]
fn a_watchers_automatic_synchronization_shows_and_is_cancelled_from_the_ui() {
    let office = Office::new(20);
    let dev = crew(&office, "tab1");
    let dock = Dock::new();
    let w = Watcher::start(&dev, &dock);
    // A long journal: the send takes a while.
    long_journal(&dev, 40_000);
    let tui = Tui::start(&dev, &[]);
    tui.wait("40000 by ana");
    // Logging out in the UI arms the automatic synchronization.
    tui.keys(&["l"]);
    tui.wait("(nobody logged in)");
    assert_eq!(dev.status()["ticket_armed"], true);
    dock.set(true);
    w.expect("automatic synchronization started");
    let screen = tui.wait("Synchronize (automatic, process");
    assert!(screen.contains("Cancel (c)"), "{screen}");
    tui.keys(&["c"]);
    w.expect("automatic synchronization cancelled");
    let screen = tui.wait("[CANCELLED]");
    assert!(screen.contains("Close (c)"), "stays open: {screen}");
    let s = dev.status();
    assert_eq!(s["last_sync"]["result"], "cancelled", "{s}");
    assert_eq!(s["last_sync"]["kind"], "auto", "{s}");
    assert_eq!(integrity(&dev.replica()), "ok");
    tui.keys(&["c"]);
    tui.wait("[CANCELLED] sync (auto)");
    assert_eq!(tui.quit(), "0");
    w.stop();
}

#[test]
fn without_a_terminal_it_says_so() {
    let dir = TempDir::new("no-tty");
    let dev = DeviceDir { dir };
    let run = dev.run(&["ui"], "");
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("needs a terminal"), "{run:?}");
}
