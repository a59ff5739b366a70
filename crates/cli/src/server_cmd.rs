//! `fieldsync server …`: set up the main database, run the HTTP server.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ServerArgs {
    /// Main database: sqlite:PATH
    #[arg(long, env = "FIELDSYNC_DB", global = true)]
    db: Option<String>,
    #[command(subcommand)]
    command: ServerCommand,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Create or upgrade fieldsync's own objects in the main database; idempotent
    Init,
    /// Serve the API; prints `listening on http://HOST:PORT` when ready
    Run {
        /// Address to listen on; port 0 picks a free port
        #[arg(long, default_value = "127.0.0.1:8440")]
        listen: String,
    },
}

/// The main database named by --db or FIELDSYNC_DB.
pub fn open_db(db: Option<&str>) -> anyhow::Result<Box<dyn fieldsync_store::Store>> {
    let url = db.context("no main database: pass --db sqlite:PATH or set FIELDSYNC_DB")?;
    Ok(fieldsync_store::open(url)?)
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let store = open_db(args.db.as_deref())?;
    match args.command {
        ServerCommand::Init => {
            store.init().context("initialising the main database")?;
            println!("main database ready");
            Ok(())
        }
        ServerCommand::Run { listen } => {
            store.epoch().context("checking the main database")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(async move {
                let (listener, addr) = fieldsync_server::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!("listening on http://{addr}");
                std::io::stdout().flush().ok();
                fieldsync_server::serve(listener, Arc::from(store), shutdown_signal())
                    .await
                    .context("serving")
            })
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
