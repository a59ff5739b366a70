//! The `fieldsync` binary: parses the command line, calls the libraries, prints.
//! Exit codes follow DESIGN.md's contract (see docs/cli.md).

mod admin_cmd;
mod admin_view;
mod arenas;
mod audit_cmd;
mod auto_cmd;
mod demo;
mod device_cmd;
mod device_file_cmd;
mod device_print;
mod file_cmd;
mod output;
mod server_cmd;
mod ui;

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
            output::print_error(&output::one_line(&e), code);
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command and subcommand in the tree, as `fieldsync a b`, with its command.
    fn commands() -> Vec<(String, clap::Command)> {
        fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                out.push((path.clone(), sub.clone()));
                walk(sub, &path, out);
            }
        }
        let mut out = vec![];
        walk(&super::Cli::command(), "fieldsync", &mut out);
        out
    }

    /// The arguments a person types (clap's own --help and --version left out).
    fn arguments(cmd: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
        cmd.get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
    }

    fn arg_name(a: &clap::Arg) -> String {
        match a.get_long() {
            Some(long) => format!("--{long}"),
            None => a.get_id().as_str().to_uppercase(),
        }
    }

    #[test]
    fn every_command_and_argument_has_help() {
        let mut missing = vec![];
        for (path, cmd) in commands() {
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for a in arguments(&cmd).filter(|a| a.get_help().is_none()) {
                missing.push(format!("{path} {}", arg_name(a)));
            }
        }
        assert!(
            missing.is_empty(),
            "without help text:\n{}",
            missing.join("\n")
        );
    }

    /// docs/cli.md names every command and every flag `--help` shows.
    #[test]
    fn docs_cli_md_names_every_command_and_flag() {
        let doc = include_str!("../../../docs/cli.md");
        let mut missing = vec![];
        for (path, cmd) in commands() {
            if cmd.has_subcommands() {
                continue;
            }
            if !doc.contains(&format!("`{path}")) {
                missing.push(path.clone());
            }
            for a in arguments(&cmd).filter(|a| a.get_long().is_some() && !a.is_hide_set()) {
                if !doc.contains(&arg_name(a)) {
                    missing.push(format!("{path} {}", arg_name(a)));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in docs/cli.md:\n{}",
            missing.join("\n")
        );
    }
}
