//! `fieldsync server …`: set up the main database, run the HTTP server.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct ServerArgs {
    /// Main database: sqlite:PATH or postgres://USER@HOST:PORT/DB
    #[arg(long, env = "FIELDSYNC_DB", global = true)]
    db: Option<String>,
    #[command(subcommand)]
    command: ServerCommand,
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Create or upgrade fieldsync's own objects in the main database; idempotent
    Init,
    /// Serve the API; prints `listening on http://HOST:PORT` (`https://` with TLS)
    /// when ready
    Run {
        /// Address to listen on; port 0 picks a free port
        #[arg(long, default_value = "127.0.0.1:8440")]
        listen: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// How the request log on stderr is written: one line per request (route,
        /// device, user, status, duration), as text or as JSON objects
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        #[command(flatten)]
        files: crate::file_cmd::FilesArg,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key. Without it
        /// the server speaks plain HTTP: for loopback or behind a proxy doing TLS
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<std::path::PathBuf>,
        /// The private key (PEM) of --tls-cert
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<std::path::PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The request log (and whatever else the server logs) on stderr, in `format`.
fn start_log(format: LogFormat) {
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO);
    match format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
}

/// What one server lets its clients hold, and for how long.
#[derive(Args)]
struct LimitArgs {
    /// Seconds a client has to send a request's headers
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    header_timeout: f64,
    /// Seconds without a byte moving either way after which a connection is closed
    /// (an idle keep-alive, a download nobody reads, a body that stopped coming)
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    idle_timeout: f64,
    /// Connections open at once; beyond it new ones wait to be accepted
    #[arg(long, value_name = "N", default_value_t = fieldsync_server::Limits::default().max_connections)]
    max_connections: usize,
    /// Downloads streaming at once (each holds a database connection); beyond it a
    /// device is told "busy" and retries
    #[arg(long, value_name = "N", default_value_t = fieldsync_server::Limits::default().max_downloads)]
    max_downloads: usize,
    /// On SIGTERM or Ctrl-C, seconds given to requests in flight before exiting
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    shutdown_deadline: f64,
    /// How long the change history is kept for deltas (a number with a unit: ms, s,
    /// m, h or d); a device whose last download is older gets the whole slice
    #[arg(long, value_name = "DUR", default_value = "30d", value_parser = parse_duration)]
    retention: std::time::Duration,
    /// How long an auto-sync ticket lasts after the login that made it and after each
    /// later request of that login's user and device (which renew it)
    #[arg(long, value_name = "DUR", default_value = "24h", value_parser = parse_duration)]
    ticket_ttl: std::time::Duration,
    /// The console (`/admin`) shows a device as stuck when it had no successful sync
    /// for this long (or three failures in a row)
    #[arg(long, value_name = "DUR", default_value = "3d", value_parser = parse_duration)]
    stuck_after: std::time::Duration,
}

/// A duration as the command line writes it: a whole number and a unit (`ms`, `s`,
/// `m`, `h`, `d`), between a millisecond and a hundred years.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("`{text}`: a whole number and a unit, e.g. 90s, 15m, 24h, 30d");
    let n: u64 = number.parse().map_err(|_| bad())?;
    let ms_per: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(ms_per).ok_or_else(bad)?;
    if ms == 0 || ms > 100 * 365 * 86_400_000 {
        return Err(format!("`{text}`: between 1ms and 100 years"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<fieldsync_server::Limits> {
        let secs = |name: &str, v: f64| {
            std::time::Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| format!("--{name}: a positive number of seconds, not {v}"))
        };
        anyhow::ensure!(self.max_connections > 0, "--max-connections: at least 1");
        anyhow::ensure!(self.max_downloads > 0, "--max-downloads: at least 1");
        Ok(fieldsync_server::Limits {
            header_timeout: secs("header-timeout", self.header_timeout)?,
            idle_timeout: secs("idle-timeout", self.idle_timeout)?,
            max_connections: self.max_connections,
            max_downloads: self.max_downloads,
            shutdown_deadline: secs("shutdown-deadline", self.shutdown_deadline)?,
            retention: self.retention,
            ticket_ttl: self.ticket_ttl,
            stuck_after: self.stuck_after,
            ..Default::default()
        })
    }
}

/// The main database named by --db or FIELDSYNC_DB.
pub fn open_db(db: Option<&str>) -> anyhow::Result<Box<dyn fieldsync_store::Store>> {
    let url = db.context("no main database: pass --db sqlite:PATH or set FIELDSYNC_DB")?;
    Ok(fieldsync_store::open(url)?)
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    if matches!(args.command, ServerCommand::Run { .. }) {
        crate::arenas::tune_for_server();
    }
    let store = open_db(args.db.as_deref())?;
    match args.command {
        ServerCommand::Init => {
            store.init().context("initialising the main database")?;
            println!("main database ready");
            Ok(())
        }
        ServerCommand::Run {
            listen,
            limits,
            log_format,
            files,
            tls_cert,
            tls_key,
        } => {
            let files = files.open(args.db.as_deref())?.map(Arc::from);
            let limits = limits.limits()?;
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => {
                    Some(fieldsync_server::tls::acceptor(&cert, &key).map_err(anyhow::Error::msg)?)
                }
                _ => None,
            };
            let scheme = if tls.is_some() { "https" } else { "http" };
            start_log(log_format);
            store.epoch().context("checking the main database")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            let served = runtime.block_on(async move {
                let (listener, addr) = fieldsync_server::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!("listening on {scheme}://{addr}");
                std::io::stdout().flush().ok();
                fieldsync_server::serve_with_files(
                    listener,
                    Arc::from(store),
                    files,
                    tls,
                    limits,
                    shutdown_signal(),
                )
                .await
                .context("serving")
            });
            // Work still running past the deadline (a download's reader, an upload's
            // transaction) is abandoned: the database rolls it back.
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            served
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

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_a_whole_number_and_a_unit() {
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        for bad in ["", "30", "d", "1.5h", "-1s", "0s", "3w", "99999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad} was taken");
        }
    }
}
