//! `fieldsync device …`: the device side, over the client library.

use anyhow::Context;
use clap::{Args, Subcommand};
use fieldsync_client::{
    Cancel, ClientConfig, ClientError, Device, DownloadOptions, Mode, OptionsChange, Progress,
    Report, SyncOp,
};

use crate::admin_cmd::read_password_stdin;
use crate::device_print::{not_kept_line, print_options, print_report};
use crate::output::{ProgressFormat, ProgressView, print_json, print_list};

#[derive(Args)]
pub struct DeviceArgs {
    /// The device folder (state, replica)
    #[arg(long, env = "FIELDSYNC_DEVICE_DIR", global = true)]
    dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Online,
    Offline,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl From<OnOff> for bool {
    fn from(v: OnOff) -> bool {
        matches!(v, OnOff::On)
    }
}

/// What a download brings, for `download` and `sync`.
#[derive(Args)]
struct FetchArgs {
    /// Download the whole slice, not only the changes since the last download
    #[arg(long)]
    full: bool,
    /// Also download the task's files
    #[arg(long)]
    files: bool,
}

impl FetchArgs {
    fn options(&self, discard_local_changes: bool) -> DownloadOptions {
        DownloadOptions {
            discard_local_changes,
            full: self.full,
            files: self.files,
        }
    }
}

#[derive(Args)]
struct ProgressArg {
    /// Progress output: a bar on a terminal, or JSON lines on stderr
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressFormat,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Pair this device with the server, once, with the administrator's enrollment code
    Pair {
        /// The server's address, e.g. http://fieldsync.example:8080
        #[arg(long)]
        server: String,
        /// The id the administrator registered this device under
        #[arg(long)]
        device_id: String,
        /// The single-use enrollment code `admin device add` printed
        #[arg(long)]
        code: String,
        /// Trust also this certificate authority (PEM) for an https:// server, beside
        /// the system's; the folder keeps it
        #[arg(long, value_name = "PEM")]
        ca_cert: Option<std::path::PathBuf>,
    },
    /// Log a user in; the password is read from the first line of stdin
    Login {
        /// The user's login name
        name: String,
        /// Read the password from the first line of stdin (required: never an argument)
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Log the user out
    Logout,
    /// Show or set online/offline mode
    Mode {
        /// The mode to switch to (without it: show the mode)
        mode: Option<ModeArg>,
    },
    /// Tasks this user may download on this device
    Tasks {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// Download a task's slice as the new replica
    Download {
        /// The task's name (`device tasks` lists them)
        task: String,
        /// Forget local changes (they are written to a backup file first)
        #[arg(long)]
        discard_local_changes: bool,
        #[command(flatten)]
        fetch: FetchArgs,
        #[command(flatten)]
        progress: ProgressArg,
    },
    /// Send local changes to the server
    Send {
        #[command(flatten)]
        progress: ProgressArg,
    },
    /// Send local changes, then download the new version of the last task
    Sync {
        #[command(flatten)]
        fetch: FetchArgs,
        #[command(flatten)]
        progress: ProgressArg,
    },
    /// Fetch the files of the last task's slice that this device lacks (into
    /// `files/`), resuming interrupted transfers; files of rows that left are removed
    Files {
        #[command(flatten)]
        progress: ProgressArg,
    },
    /// Files made on this device: attach one to a row, or list those not yet sent
    #[command(subcommand)]
    File(crate::device_file_cmd::DeviceFileCommand),
    /// List local changes not yet sent, or discard some to the backup file
    Journal {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<JournalCommand>,
    },
    /// Show or set the automatic synchronization options
    Options {
        /// Synchronize by itself when docked (external power) after a logout
        #[arg(long, value_enum, value_name = "on|off")]
        auto_sync: Option<OnOff>,
        /// During an automatic synchronization, also download the last task's new data
        #[arg(long, value_enum, value_name = "on|off")]
        download_data: Option<OnOff>,
        /// In addition to the data, also download the task's new files
        #[arg(long, value_enum, value_name = "on|off")]
        download_files: Option<OnOff>,
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// The background service: synchronizes by itself, once, when the device is docked
    /// (external power) after a login and a logout, as the options say
    Watch {
        /// Where the power supplies show (the Linux /sys/class/power_supply layout:
        /// subfolders with `type` and `online`)
        #[arg(long, value_name = "DIR", default_value = fieldsync_client::power::SYSFS_POWER_SUPPLY)]
        power_supply: std::path::PathBuf,
        /// How often to look at the power supplies, in milliseconds
        #[arg(long, value_name = "N", default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Cancel the operation that holds this device folder (a command or the watcher's
    /// automatic synchronization), safely, as Ctrl-C does
    Cancel,
    /// The crew's values that sends did not keep (conflicts the office won, changes
    /// not applied), oldest first
    Conflicts {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
    /// The sync tab in the terminal: login, mode, download with a task picker, send,
    /// synchronize, the auto-sync options and the progress window (keys and mouse)
    Ui,
    /// The device's state
    Status {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Move entries (by number) or all of them to a new backup file
    Discard {
        /// Entry numbers (`device journal` lists them)
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        entries: Vec<i64>,
        /// Every entry of every replica in the folder
        #[arg(long)]
        all: bool,
    },
    /// Make the entries of a backup file again, as edits by the logged-in user
    /// (checked as any edit is; all or none)
    Restore {
        /// The backup file (`journal discard` or a discarding download printed its path)
        file: std::path::PathBuf,
    },
}

/// How long a cancelled operation may take to reach a safe point by itself.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Cancels `cancel` on Ctrl-C, SIGTERM or SIGUSR1 (`device cancel`). The operation stops at its next safe point;
/// one blocked on the network may not get there soon, and since every step is
/// crash-safe, the process then stops itself, unless the operation had committed.
fn cancel_on_signals(cancel: &Cancel, device: &Device, op: SyncOp) {
    let cancel = cancel.clone();
    let dir = device.dir().root.clone();
    // Registered here, before the operation starts, so that an early Ctrl-C cancels
    // too instead of killing the process with the default action.
    let Some((rt, mut int, mut term, mut usr1)) = cancel_signals() else {
        return;
    };
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = usr1.recv() => {}
            }
        });
        cancel.cancel();
        std::thread::sleep(CANCEL_GRACE);
        if cancel.wait_commit() {
            return;
        }
        let _ = Device::open(dir, client_config()).note_cancelled(op);
        crate::output::print_error(&fieldsync_client::ClientError::Cancelled.to_string(), 5);
        std::process::exit(5);
    });
}

/// SIGINT, SIGTERM and SIGUSR1 (`device cancel` from another process), registered
/// now, with the runtime that receives them; `None` if they cannot be.
pub(crate) fn cancel_signals() -> Option<(
    tokio::runtime::Runtime,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
)> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let (int, term, usr1) = rt
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::user_defined1())?,
            ))
        })
        .ok()?;
    Some((rt, int, term, usr1))
}

/// The client's network limits from the environment (docs/cli.md): tests and slow
/// links set them; the library itself reads no environment.
pub fn client_config() -> ClientConfig {
    let default = ClientConfig::default();
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let ms = |name: &str, default: std::time::Duration| {
        var(name).map_or(default, std::time::Duration::from_millis)
    };
    ClientConfig {
        connect_timeout: ms("FIELDSYNC_CONNECT_TIMEOUT_MS", default.connect_timeout),
        read_timeout: ms("FIELDSYNC_READ_TIMEOUT_MS", default.read_timeout),
        attempts: var("FIELDSYNC_RETRIES")
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default.attempts)
            .max(1),
        busy_patience: ms("FIELDSYNC_BUSY_PATIENCE_MS", default.busy_patience),
        backoff: ms("FIELDSYNC_RETRY_BACKOFF_MS", default.backoff),
    }
}

/// Runs a long operation with progress output and signal-driven cancel.
fn run_long(
    device: &Device,
    op: SyncOp,
    progress: ProgressFormat,
    run: impl FnOnce(&mut dyn FnMut(&Progress), &Cancel) -> fieldsync_client::Result<Report>,
) -> anyhow::Result<Report> {
    let cancel = Cancel::default();
    cancel_on_signals(&cancel, device, op);
    let mut view = ProgressView::new(progress);
    let result = run(&mut |p| view.report(p), &cancel);
    view.finish(result.is_ok());
    Ok(result?)
}

pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .context("no device folder: pass --dir DIR or set FIELDSYNC_DEVICE_DIR")?;
    let device = Device::open(dir, client_config());
    // The office revoked this device: its data goes now (`revoked.rs` in the client).
    run_on(&device, args.command).map_err(|e| {
        let mut chain = e.chain().filter_map(|c| c.downcast_ref::<ClientError>());
        match chain.find_map(ClientError::revoked) {
            Some(keep_changes) => device.wipe_revoked(keep_changes).into(),
            None => e,
        }
    })
}

fn run_on(device: &Device, command: DeviceCommand) -> anyhow::Result<()> {
    match command {
        DeviceCommand::Pair {
            server,
            device_id,
            code,
            ca_cert,
        } => {
            let ca = match &ca_cert {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("--ca-cert {}", path.display()))?,
                ),
                None => None,
            };
            if fieldsync_client::tls::plain_http_elsewhere(&server) {
                eprintln!(
                    "warning: {server} is plain http to another machine: passwords and \
                     secrets cross the network unencrypted; use https:// unless a proxy \
                     on the way does TLS"
                );
            }
            device.pair_with_ca(&server, &device_id, &code, ca.as_deref())?;
            println!("paired as {device_id} with {server}");
        }
        DeviceCommand::Login {
            name,
            password_stdin: _,
        } => {
            let pw = read_password_stdin()?;
            device.login(&name, &pw)?;
            println!("logged in as {name}");
        }
        DeviceCommand::Logout => {
            if let Some(warning) = device.logout()? {
                eprintln!("warning: {warning}");
            }
            println!("logged out");
        }
        DeviceCommand::Mode { mode: None } => println!("{}", device.mode()?.as_str()),
        DeviceCommand::Mode { mode: Some(m) } => {
            let mode = match m {
                ModeArg::Online => Mode::Online,
                ModeArg::Offline => Mode::Offline,
            };
            device.set_mode(mode)?;
            println!("{}", mode.as_str());
        }
        DeviceCommand::Options {
            auto_sync,
            download_data,
            download_files,
            json,
        } => {
            let change = OptionsChange {
                auto_sync: auto_sync.map(bool::from),
                download_data: download_data.map(bool::from),
                download_files: download_files.map(bool::from),
            };
            let options = if change.is_empty() {
                device.options()?
            } else {
                device.set_options(&change)?
            };
            print_options(&options, json);
        }
        DeviceCommand::Tasks { json } => {
            let tasks = device.tasks()?;
            if tasks.is_empty() && !json {
                // Said, not left blank: the office has something to do.
                println!("no task is assigned to both this user and this device; ask the office");
            }
            print_list(&tasks, json, |t| {
                format!("{}\t{}", t.name, t.description.as_deref().unwrap_or(""))
            });
        }
        DeviceCommand::Download {
            task,
            discard_local_changes,
            fetch,
            progress,
        } => {
            let opts = fetch.options(discard_local_changes);
            let report = run_long(device, SyncOp::Download, progress.progress, |p, c| {
                device.download(&task, &opts, p, c)
            })?;
            print_report(&report);
        }
        DeviceCommand::Files { progress } => {
            let report = run_long(device, SyncOp::Files, progress.progress, |p, c| {
                device.files(p, c)
            })?;
            print_report(&report);
        }
        DeviceCommand::Send { progress } => {
            let report = run_long(device, SyncOp::Send, progress.progress, |p, c| {
                device.send(p, c)
            })?;
            print_report(&report);
        }
        DeviceCommand::Sync { fetch, progress } => {
            let opts = fetch.options(false);
            let report = run_long(device, SyncOp::Sync, progress.progress, |p, c| {
                device.sync(&opts, p, c)
            })
            .inspect_err(|_| {
                // The send stands when the download did not: say both parts.
                if let Ok(Some(last)) = device.status().map(|s| s.last_sync)
                    && last.op == SyncOp::Sync
                    && last.send_result.as_deref() == Some("ok")
                {
                    println!("{}", last.message);
                }
            })?;
            print_report(&report);
        }
        DeviceCommand::File(command) => crate::device_file_cmd::run(device, command)?,
        DeviceCommand::Journal {
            json,
            command: None,
        } => {
            print_list(&device.journal()?, json, |e| {
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    e.seq,
                    e.at,
                    serde_json::to_value(e.op)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    e.table,
                    serde_json::to_string(&e.key).unwrap_or_default(),
                    e.user
                )
            });
        }
        DeviceCommand::Journal {
            command: Some(JournalCommand::Discard { entries, all }),
            ..
        } => {
            let chosen = if all { None } else { Some(entries.as_slice()) };
            let (path, n) = device.journal_discard(chosen)?;
            println!(
                "{n} journal entr{} moved to {}",
                if n == 1 { "y" } else { "ies" },
                path.display()
            );
        }
        DeviceCommand::Journal {
            command: Some(JournalCommand::Restore { file }),
            ..
        } => {
            let n = device.journal_restore(&file)?;
            println!(
                "{n} journal entr{} restored from {}",
                if n == 1 { "y" } else { "ies" },
                file.display()
            );
        }
        DeviceCommand::Watch {
            power_supply,
            poll_ms,
        } => crate::auto_cmd::watch(device, &power_supply, poll_ms)?,
        DeviceCommand::Cancel => crate::auto_cmd::cancel(device)?,
        DeviceCommand::Conflicts { json } => {
            print_list(&device.conflicts()?, json, |c| {
                format!("{}\t{}", c.at, not_kept_line(&c.value))
            });
        }
        DeviceCommand::Ui => crate::ui::run(device)?,
        DeviceCommand::Status { json } => {
            let st = device.status()?;
            if json {
                print_json(&st);
            } else {
                println!(
                    "device   {}",
                    st.device_id.as_deref().unwrap_or("(not paired)")
                );
                println!("server   {}", st.server.as_deref().unwrap_or("-"));
                println!("mode     {}", st.mode.as_str());
                println!(
                    "user     {}",
                    st.user.as_deref().unwrap_or("(nobody logged in)")
                );
                println!("task     {}", st.task.as_deref().unwrap_or("-"));
                println!("replica  {}", st.replica.as_deref().unwrap_or("-"));
                println!("pending  {}", st.pending);
                for (user, n) in &st.pending_by_user {
                    println!("         {n} by {user}");
                }
                if let Some(l) = &st.last_sync {
                    println!(
                        "last     {} {} ({}) at {}: {}",
                        l.op, l.result, l.kind, l.at, l.message
                    );
                }
                if st.ticket_armed {
                    println!("auto     armed: synchronizes by itself once when docked");
                }
                if let Some(r) = &st.running {
                    println!(
                        "running  {} ({}) since {}: {} of {} {}",
                        r.op, r.kind, r.started, r.done, r.total, r.unit
                    );
                }
            }
        }
    }
    Ok(())
}
