//! Messages refused (bad signature, a sender not among the peers, a
//! replay, what cannot be read): counted, and reported at most once per
//! REPORT_EVERY with how many were refused since. A flood of spoofed
//! datagrams can then neither fill the log nor grow memory: nothing is kept
//! per source.

use std::time::{Duration, Instant};

const REPORT_EVERY: Duration = Duration::from_secs(10);

pub struct Rejections {
    /// What is refused, for the report ("ha: advert", "ha sync: message").
    what: &'static str,
    total: u64,
    since_report: u64,
    last_report: Option<Instant>,
}

impl Rejections {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            total: 0,
            since_report: 0,
            last_report: None,
        }
    }

    /// Counts one refusal at `now`; returns the line to log when one is due.
    pub fn refused(&mut self, now: Instant, reason: impl FnOnce() -> String) -> Option<String> {
        self.total += 1;
        self.since_report += 1;
        if self
            .last_report
            .is_some_and(|at| now.duration_since(at) < REPORT_EVERY)
        {
            return None;
        }
        let others = self.since_report - 1;
        self.since_report = 0;
        self.last_report = Some(now);
        Some(format!(
            "{} refused: {}{} ({} refused in all)",
            self.what,
            reason(),
            if others > 0 {
                format!("; {others} more since the last report")
            } else {
                String::new()
            },
            self.total
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_is_reported_once_per_interval_with_its_count() {
        let mut rejections = Rejections::new("ha: advert");
        let start = Instant::now();
        let mut lines = Vec::new();
        for i in 0..100_000u64 {
            let now = start + Duration::from_micros(i * 200); // 20 s in all
            lines.extend(rejections.refused(now, || "bad authentication".to_string()));
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "ha: advert refused: bad authentication (1 refused in all)"
        );
        assert!(
            lines[1].contains("49999 more since the last report"),
            "{}",
            lines[1]
        );
        assert_eq!(rejections.total, 100_000);
    }
}
