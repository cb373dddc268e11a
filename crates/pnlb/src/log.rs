//! Logs on stderr through `tracing`: one line per event, as text (UTC
//! time, level, message) or, with `--log-format json`, one JSON object per
//! line (timestamp, level, message and the event's fields) for log
//! shippers.

use std::io::IsTerminal;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(tracing::Level::INFO);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

macro_rules! info {
    ($($arg:tt)*) => { tracing::info!($($arg)*) };
}
macro_rules! warning {
    ($($arg:tt)*) => { tracing::warn!($($arg)*) };
}
pub(crate) use {info, warning};
