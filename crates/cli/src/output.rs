//! Printing: errors as one line with their exit code, JSON documents, progress bars.

use std::io::{IsTerminal, Write};

use fieldsync_client::{ClientError, Phase, Progress};

/// The exit code of DESIGN.md for an error (1 when nothing more specific applies).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .map_or(1, |c| c.exit_code() as u8)
}

/// The error and its causes on one line, with the command that helps, if any.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut text = format!("{e:#}");
    if let Some(h) = e
        .chain()
        .find_map(|c| c.downcast_ref::<ClientError>())
        .and_then(hint)
    {
        text.push_str(&h);
    }
    text.replace('\n', " ")
}

/// What the user can run about a device error: the library's errors name no command.
fn hint(e: &ClientError) -> Option<String> {
    Some(match e {
        ClientError::Offline => "; switch with `fieldsync device mode online`".into(),
        ClientError::NotPaired => "; run `fieldsync device pair` first".into(),
        ClientError::NotLoggedIn => "; run `fieldsync device login`".into(),
        ClientError::NoTask => "; run `fieldsync device download TASK`".into(),
        ClientError::LocalChanges { .. } => "; send them first (`fieldsync device send`), \
             or download with --discard-local-changes to back them up and forget them"
            .into(),
        ClientError::EntryTooLarge { seq, .. } => {
            format!(" with `fieldsync device journal discard {seq}` (it is backed up to a file)")
        }
        ClientError::EntryInSeveral { .. } => "; discard them with --all".into(),
        _ => return None,
    })
}

pub fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializes")
    );
}

/// A list as `--json` asks (one JSON array) or as text, one line per item.
pub fn print_list<T: serde::Serialize>(items: &[T], json: bool, line: impl Fn(&T) -> String) {
    if json {
        print_json(&items);
    } else {
        for item in items {
            println!("{}", line(item));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressFormat {
    /// A bar on a terminal, nothing otherwise
    Auto,
    /// JSON lines on stderr: phase, done, total, unit
    Json,
}

/// Renders progress reports as the user asked.
pub struct ProgressView {
    format: ProgressFormat,
    terminal: bool,
    drawn: bool,
}

impl ProgressView {
    pub fn new(format: ProgressFormat) -> Self {
        ProgressView {
            format,
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
        }
    }

    pub fn report(&mut self, p: &Progress) {
        let mut err = std::io::stderr().lock();
        match self.format {
            ProgressFormat::Json => {
                let _ = writeln!(err, "{}", serde_json::to_string(p).expect("serializes"));
            }
            ProgressFormat::Auto if self.terminal => {
                let width = 30;
                let filled = (p.done.min(p.total) * width)
                    .checked_div(p.total)
                    .unwrap_or(0) as usize;
                let phase = match p.phase {
                    Phase::Prepare => "prepare ",
                    Phase::Transfer => "transfer",
                    Phase::Store => "store   ",
                    Phase::Send => "send    ",
                    Phase::Retry => "retry   ",
                };
                let _ = write!(
                    err,
                    "\r{phase} [{}{}] {}/{} {}   ",
                    "#".repeat(filled),
                    "-".repeat(width as usize - filled),
                    p.done,
                    p.total,
                    p.unit
                );
                let _ = err.flush();
                self.drawn = true;
            }
            ProgressFormat::Auto => {}
        }
    }

    /// Ends the bar's line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}
