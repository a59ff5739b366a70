//! `fieldsync device …`: the device side, over the client library.

use anyhow::Context;
use clap::{Args, Subcommand};
use fieldsync_client::{Cancel, Device, DownloadOptions, Mode};

use crate::admin_cmd::read_password_stdin;
use crate::output::{ProgressFormat, ProgressView, print_json};

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

#[derive(Subcommand)]
enum DeviceCommand {
    /// Pair this device with the server, once, with the administrator's enrollment code
    Pair {
        #[arg(long)]
        server: String,
        #[arg(long)]
        device_id: String,
        #[arg(long)]
        code: String,
    },
    /// Log a user in; the password is read from the first line of stdin
    Login {
        name: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Log the user out
    Logout,
    /// Show or set online/offline mode
    Mode { mode: Option<ModeArg> },
    /// Tasks this user may download on this device
    Tasks {
        #[arg(long)]
        json: bool,
    },
    /// Download a task's slice as the new replica
    Download {
        task: String,
        /// Forget local changes (they are written to a backup file first)
        #[arg(long)]
        discard_local_changes: bool,
        /// Download the whole slice even if a delta would do
        #[arg(long)]
        full: bool,
        /// Also download the task's files
        #[arg(long)]
        files: bool,
        /// Progress output: a bar on a terminal, or JSON lines on stderr
        #[arg(long, value_enum, default_value = "auto")]
        progress: ProgressFormat,
    },
    /// The device's state
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// Cancels `cancel` on Ctrl-C or SIGTERM, from a small background runtime.
fn cancel_on_signals(cancel: &Cancel) {
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(crate::server_cmd::shutdown_signal());
        cancel.cancel();
    });
}

pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .context("no device folder: pass --dir DIR or set FIELDSYNC_DEVICE_DIR")?;
    let device = Device::new(dir);
    match args.command {
        DeviceCommand::Pair {
            server,
            device_id,
            code,
        } => {
            device.pair(&server, &device_id, &code)?;
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
        DeviceCommand::Mode { mode: None } => println!("{}", device.status()?.mode.as_str()),
        DeviceCommand::Mode { mode: Some(m) } => {
            let mode = match m {
                ModeArg::Online => Mode::Online,
                ModeArg::Offline => Mode::Offline,
            };
            device.set_mode(mode)?;
            println!("{}", mode.as_str());
        }
        DeviceCommand::Tasks { json } => {
            let tasks = device.tasks()?;
            if json {
                print_json(&tasks);
            } else {
                for t in &tasks {
                    println!("{}\t{}", t.name, t.description.as_deref().unwrap_or(""));
                }
            }
        }
        DeviceCommand::Download {
            task,
            discard_local_changes,
            full,
            files,
            progress,
        } => {
            let cancel = Cancel::default();
            cancel_on_signals(&cancel);
            let mut view = ProgressView::new(progress);
            let opts = DownloadOptions {
                discard_local_changes,
                full,
                files,
            };
            let result = device.download(&task, &opts, &mut |p| view.report(p), &cancel);
            view.finish();
            let report = result?;
            println!(
                "downloaded task {}: {} rows ({}), {} bytes in {} ms",
                report.task,
                report.rows,
                report
                    .tables
                    .iter()
                    .map(|(t, n)| format!("{t} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                report.bytes_down,
                report.duration_ms
            );
        }
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
                if let Some(l) = &st.last_sync {
                    println!("last     {} {} at {}: {}", l.op, l.result, l.at, l.message);
                }
            }
        }
    }
    Ok(())
}
