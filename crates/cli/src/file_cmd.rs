//! `fieldsync admin file …`: files attached to rows, their content put in the file
//! store (`--files`, or the default beside a SQLite main database).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use fieldsync_proto::time::Timestamp;
use fieldsync_server::files::{self, FileStore};
use fieldsync_store::{NewFile, Store};

use crate::output::print_list;

/// Where the content of attached files is: `--files DIR`, `FIELDSYNC_FILES`, or,
/// for a SQLite main database, the folder `PATH.files` beside it.
#[derive(Args, Clone, Default)]
pub struct FilesArg {
    /// Where attached files' content is kept: a folder (default: beside a SQLite
    /// main database, `PATH.files`; a PostgreSQL one has no default), or
    /// s3://BUCKET/PREFIX in S3-compatible storage (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL)
    #[arg(
        long = "files",
        env = "FIELDSYNC_FILES",
        value_name = "DIR|s3://BUCKET/PREFIX"
    )]
    pub spec: Option<String>,
}

impl FilesArg {
    /// The file store to use with main database `db`; `None` when there is none
    /// (PostgreSQL without `--files`).
    pub fn open(&self, db: Option<&str>) -> anyhow::Result<Option<Box<dyn FileStore>>> {
        let spec = match &self.spec {
            Some(s) => Some(s.clone()),
            None => db.and_then(files::default_spec),
        };
        spec.map(|s| files::open(&s).with_context(|| format!("opening the file store `{s}`")))
            .transpose()
    }
}

#[derive(Subcommand)]
pub enum FileCommand {
    /// Attach a file to a row: its content goes into the file store, the attachment
    /// into the main database
    Attach {
        /// The row's table (tracked)
        table: String,
        /// The row's primary key
        key: String,
        /// The file to attach
        path: PathBuf,
        /// The name the file has on devices (default: PATH's file name)
        #[arg(long)]
        name: Option<String>,
        /// Who attached it, as the list shows
        #[arg(long, value_name = "NAME", default_value = "admin")]
        by: String,
        #[command(flatten)]
        files: FilesArg,
    },
    /// Remove an attachment by its id (`file list`); the content stays in the store
    Detach {
        /// The attachment's id, as `file list` shows it
        id: i64,
    },
    /// The attached files
    List {
        /// Print one JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

pub fn run(store: &dyn Store, db: Option<&str>, command: FileCommand) -> anyhow::Result<()> {
    match command {
        FileCommand::Attach {
            table,
            key,
            path,
            name,
            by,
            files,
        } => {
            let file_store = files.open(db)?.context(
                "no file store: pass --files DIR (or set FIELDSYNC_FILES); a PostgreSQL main \
                 database has no default",
            )?;
            let name = match name {
                Some(n) => n,
                None => path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{}: no file name", path.display()))?
                    .to_string(),
            };
            let open = || {
                std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))
            };
            let (sha256, size) = files::hash_reader(&mut open()?)
                .with_context(|| format!("reading {}", path.display()))?;
            file_store.put(&sha256, &mut open()?).with_context(|| {
                format!("storing {} in {}", path.display(), file_store.describe())
            })?;
            let rec = store.file_attach(&NewFile {
                table,
                key,
                content_type: fieldsync_proto::wire::content_type_of(&name).to_string(),
                name,
                size,
                sha256,
                added_by: by,
                added_at: Timestamp::now(),
            })?;
            let subject = format!("file {}", rec.id);
            let what = format!(
                "`{}` ({} bytes, sha256 {}) to `{}` row {}",
                rec.name, rec.size, rec.sha256, rec.table, rec.key
            );
            crate::audit_cmd::record(store, "admin.file.attach", &subject, &[&what]);
            println!(
                "attached file {} `{}` ({} bytes, sha256 {}) to `{}` row {}",
                rec.id, rec.name, rec.size, rec.sha256, rec.table, rec.key
            );
            Ok(())
        }
        FileCommand::Detach { id } => {
            let rec = store.file_detach(id)?;
            let what = format!("`{}` from `{}` row {}", rec.name, rec.table, rec.key);
            crate::audit_cmd::record(store, "admin.file.detach", &format!("file {id}"), &[&what]);
            println!(
                "detached file {} `{}` from `{}` row {}",
                rec.id, rec.name, rec.table, rec.key
            );
            Ok(())
        }
        FileCommand::List { json } => {
            let list = store.file_list()?;
            print_list(&list, json, |f| {
                format!(
                    "{}  {}  {} bytes  {}  {}  {} {}  {} {}",
                    f.id,
                    f.name,
                    f.size,
                    f.sha256,
                    f.content_type,
                    f.table,
                    f.key,
                    f.added_by,
                    f.added_at
                )
            });
            Ok(())
        }
    }
}
