//! Log lines on stderr: UTC time, level, message.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn line(level: &str, message: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    eprintln!(
        "{h:02}:{m:02}:{s:02}.{:03} {level:<5} {message}",
        now.subsec_millis()
    );
}

macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line("INFO", &format!($($arg)*)) };
}
macro_rules! warning {
    ($($arg:tt)*) => { $crate::log::line("WARN", &format!($($arg)*)) };
}
pub(crate) use {info, warning};
