//! Human durations in config files: "500ms", "1s", "2m", "1h".

use std::time::Duration;

/// Parses "250ms", "1s", "1.5s", "2m", "1h". Returns None for anything else.
pub fn parse(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    // Past u64::MAX seconds, from_secs_f64 would panic: refused instead
    // (found by the config fuzz target, crates/pnlb/src/fuzz.rs).
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        for bad in [
            "",
            "5",
            "s",
            "5 parsecs",
            "-1s",
            "1.2.3s",
            "109999999999999999999990ms",
            "99999999999999999999999h",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
