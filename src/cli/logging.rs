//! Log setup: `tracing` to stderr, human or JSON, filtered by `RUST_LOG` or
//! the -v/-q shorthands, and polite to the progress bar (log lines are
//! printed above it, not through it).
//!
//! Never logs a header or a credential: the registry client does not hand
//! them to tracing in the first place.

use std::io::{self, Write};
use std::sync::Mutex;

use indicatif::ProgressBar;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use super::LogFormat;

/// The progress bar currently on screen, if any.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Route log lines around `bar` until [`clear_bar`] is called.
pub fn set_bar(bar: ProgressBar) {
    if let Ok(mut slot) = ACTIVE_BAR.lock() {
        *slot = Some(bar);
    }
}

pub fn clear_bar() {
    if let Ok(mut slot) = ACTIVE_BAR.lock() {
        *slot = None;
    }
}

/// A stderr writer that suspends the progress bar while it writes.
pub struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let bar = ACTIVE_BAR.lock().ok().and_then(|b| b.clone());
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf)).map(|_| buf.len()),
            None => io::stderr().write_all(buf).map(|_| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for StderrAroundBar {
    type Writer = StderrAroundBar;

    fn make_writer(&'a self) -> Self::Writer {
        StderrAroundBar
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything
/// (https://no-color.org).
pub fn color_allowed() -> bool {
    std::io::IsTerminal::is_terminal(&io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Install the global subscriber.
pub fn init(verbose: u8, quiet: bool, format: LogFormat) {
    let default = if quiet {
        "error"
    } else {
        match verbose {
            0 => "warn,regferry=info",
            1 => "warn,regferry=debug",
            _ => "info,regferry=trace",
        }
    };
    // -v / -q win over RUST_LOG only when given explicitly.
    let filter = if verbose > 0 || quiet {
        EnvFilter::new(default)
    } else {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(StderrAroundBar).with_target(false);
    let result = match format {
        LogFormat::Human => builder.with_ansi(color_allowed()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    if let Err(e) = result {
        eprintln!("regferry: cannot set up logging: {e}");
    }
}
