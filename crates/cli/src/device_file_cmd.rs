//! `fieldsync device file …`: files made on the device (a photo), queued in the
//! device folder (`files/outbox/`) until the next send uploads them.

use std::path::PathBuf;

use clap::Subcommand;
use fieldsync_client::Device;

use crate::output::print_list;

#[derive(Subcommand)]
pub enum DeviceFileCommand {
    /// Attach a file to a row of the replica (its table in the task's `[files]`, and
    /// writable): copied into the device folder, sent by the next send or sync
    Attach {
        /// The row's table
        table: String,
        /// The row's primary key
        key: String,
        /// The file to attach
        path: PathBuf,
        /// The name the file gets (default: PATH's file name)
        #[arg(long)]
        name: Option<String>,
    },
    /// The files attached on this device and not yet sent
    List {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

pub fn run(device: &Device, command: DeviceFileCommand) -> anyhow::Result<()> {
    match command {
        DeviceFileCommand::Attach {
            table,
            key,
            path,
            name,
        } => {
            let q = device.file_attach(&table, &key, &path, name.as_deref())?;
            let a = &q.attachment;
            println!(
                "queued `{}` ({} bytes, {}) for row `{}` of `{}`: the next send uploads it",
                a.name, a.size, a.sha256, a.key, a.table
            );
        }
        DeviceFileCommand::List { json } => {
            print_list(&device.files_queued()?, json, |q| {
                let a = &q.attachment;
                format!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    q.id, a.table, a.key, a.name, a.size, a.sha256, a.user
                )
            });
        }
    }
    Ok(())
}
