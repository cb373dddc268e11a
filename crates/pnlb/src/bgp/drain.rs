//! Draining a node (`pnlb ctl drain-node`): its VIPs are withdrawn, and it
//! is drained once no packet of any service has reached it for QUIET (the
//! routers moved every flow elsewhere and the flows that answer through
//! it ended) or its deadline passed. It stays withdrawn until resumed.

use std::time::{Duration, Instant};

/// No packet for this long: drained.
pub const QUIET: Duration = Duration::from_secs(2);
/// How often the packet count is looked at.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct NodeDrain {
    pub since: Instant,
    pub deadline: Duration,
    /// The packets of every service (both directions) when last looked at.
    packets: u64,
    /// When that count last moved.
    moved_at: Instant,
    /// Packets in the last second or so, for people.
    pub recent_rate: f64,
    rate_since: Instant,
    rate_packets: u64,
    /// The state last logged.
    pub reported: DrainState,
    observed_at: Instant,
}

/// Where a drain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainState {
    Draining,
    /// Quiet for QUIET.
    Drained,
    /// The deadline passed with packets still arriving.
    DeadlinePassed,
}

impl NodeDrain {
    pub fn start(now: Instant, deadline: Duration, packets: u64) -> Self {
        Self {
            since: now,
            deadline,
            packets,
            moved_at: now,
            recent_rate: 0.0,
            rate_since: now,
            rate_packets: packets,
            reported: DrainState::Draining,
            observed_at: now,
        }
    }

    /// Whether the packet count is due to be looked at again (once a second).
    pub fn observe_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.observed_at) >= OBSERVE_EVERY
    }

    /// Notes the packet count at `now`.
    pub fn observe(&mut self, now: Instant, packets: u64) {
        self.observed_at = now;
        if packets != self.packets {
            self.packets = packets;
            self.moved_at = now;
        }
        let span = now.saturating_duration_since(self.rate_since);
        if span >= Duration::from_secs(1) {
            self.recent_rate =
                packets.saturating_sub(self.rate_packets) as f64 / span.as_secs_f64();
            self.rate_since = now;
            self.rate_packets = packets;
        }
    }

    pub fn state(&self, now: Instant) -> DrainState {
        if now.saturating_duration_since(self.moved_at) >= QUIET {
            DrainState::Drained
        } else if now.saturating_duration_since(self.since) >= self.deadline {
            DrainState::DeadlinePassed
        } else {
            DrainState::Draining
        }
    }

    /// How long no packet has arrived.
    pub fn quiet_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.moved_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drained_once_quiet_or_when_the_deadline_passes() {
        let t0 = Instant::now();
        let mut drain = NodeDrain::start(t0, Duration::from_secs(10), 100);
        drain.observe(t0 + Duration::from_secs(1), 150);
        assert_eq!(
            drain.state(t0 + Duration::from_secs(2)),
            DrainState::Draining
        );
        assert_eq!(
            drain.state(t0 + Duration::from_secs(3)),
            DrainState::Drained
        );
        let mut busy = NodeDrain::start(t0, Duration::from_secs(5), 0);
        for second in 1..=6 {
            busy.observe(t0 + Duration::from_secs(second), second * 10);
        }
        assert_eq!(
            busy.state(t0 + Duration::from_secs(6)),
            DrainState::DeadlinePassed
        );
        assert!(busy.recent_rate > 9.0, "{}", busy.recent_rate);
    }
}
