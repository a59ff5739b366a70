//! The `fieldsync` binary: parses the command line, calls the libraries, prints.
//! Exit codes follow DESIGN.md's contract (see docs/cli.md).

mod admin_cmd;
mod demo;
mod device_cmd;
mod output;
mod server_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fieldsync",
    version,
    about = "Keeps field devices working offline on a slice of a central database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server, or set up the main database for it
    Server(server_cmd::ServerArgs),
    /// Administer users, devices, tracked tables and tasks on the main database
    Admin(admin_cmd::AdminArgs),
    /// Operate a field device (state in --dir)
    Device(device_cmd::DeviceArgs),
    /// Build a sample database, start a server, pair a device and download, printing what happens
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(a) => server_cmd::run(a),
        Command::Admin(a) => admin_cmd::run(a),
        Command::Device(a) => device_cmd::run(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = output::exit_code(&e);
            eprintln!("error: {}", output::one_line(&e));
            ExitCode::from(code)
        }
    }
}
