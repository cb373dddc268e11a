//! Backend health as keepalived and HAProxy count it: `rise` successes in a
//! row bring a backend up, `fall` failures in a row take it down, and
//! nothing in between changes the state (a flapping backend does not flip
//! on every result). A backend comes up on its first `rise` successes, so
//! nothing gets traffic before it has proven itself once.
//!
//! After coming up, `slow_start` ramps the backend's weight linearly from
//! a small share to its configured weight, so a cold server is not handed
//! its full share of new connections at once.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Not yet proven (startup): gets no new flows.
    Unknown,
    Up,
    Down,
}

/// A change worth one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

#[derive(Clone, Debug)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    state: Health,
    successes: u32,
    failures: u32,
    /// How many times the state changed (for metrics).
    pub transitions: u64,
}

impl HealthTracker {
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: Health::Unknown,
            successes: 0,
            failures: 0,
            transitions: 0,
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    /// Records one check result; returns the transition it caused, if any.
    pub fn observe(&mut self, healthy: bool) -> Option<Transition> {
        if healthy {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.state != Health::Up && self.successes >= self.rise {
                self.state = Health::Up;
                self.transitions += 1;
                return Some(Transition::Up);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.state != Health::Down && self.failures >= self.fall {
                self.state = Health::Down;
                self.transitions += 1;
                return Some(Transition::Down);
            }
        }
        None
    }
}

/// The weight to publish `since_up` after a backend came up: a linear
/// ramp over `slow_start` from 1/10 of `weight` (at least 1), then
/// `weight`. A weight of 0 (quiescent) stays 0.
pub fn slow_start_weight(weight: u32, since_up: Duration, slow_start: Duration) -> u32 {
    if weight == 0 || slow_start.is_zero() || since_up >= slow_start {
        return weight;
    }
    let fraction = since_up.as_secs_f64() / slow_start.as_secs_f64();
    let ramped = (f64::from(weight) * (0.1 + 0.9 * fraction)).floor() as u32;
    ramped.clamp(1, weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_backend_comes_up_after_rise_successes() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.state(), Health::Unknown);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::Up));
        assert_eq!(t.observe(true), None, "one transition, one log line");
        assert_eq!(t.state(), Health::Up);
    }

    #[test]
    fn it_goes_down_after_fall_failures_in_a_row_only() {
        let mut t = HealthTracker::new(1, 3);
        t.observe(true);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(true), None, "a success resets the count");
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::Down));
        assert_eq!(t.observe(false), None);
        assert_eq!(t.state(), Health::Down);
    }

    #[test]
    fn a_flapping_backend_does_not_flip_on_every_result() {
        let mut t = HealthTracker::new(2, 2);
        t.observe(true);
        t.observe(true);
        let transitions: Vec<_> = [false, true, false, true, false, true]
            .iter()
            .filter_map(|&ok| t.observe(ok))
            .collect();
        assert!(transitions.is_empty(), "{transitions:?}");
        assert_eq!(t.state(), Health::Up);
        assert_eq!(t.transitions, 1);
    }

    #[test]
    fn a_never_healthy_backend_is_reported_down_once() {
        let mut t = HealthTracker::new(2, 2);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(Transition::Down));
        assert_eq!(t.observe(false), None);
    }

    #[test]
    fn recovery_needs_rise_successes_again() {
        let mut t = HealthTracker::new(3, 1);
        for _ in 0..3 {
            t.observe(true);
        }
        assert_eq!(t.observe(false), Some(Transition::Down));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(Transition::Up));
        assert_eq!(t.transitions, 3);
    }

    #[test]
    fn slow_start_ramps_linearly_to_the_full_weight() {
        let ramp = Duration::from_secs(10);
        assert_eq!(slow_start_weight(100, Duration::ZERO, ramp), 10);
        assert_eq!(slow_start_weight(100, Duration::from_secs(5), ramp), 55);
        assert_eq!(slow_start_weight(100, Duration::from_secs(10), ramp), 100);
        assert_eq!(slow_start_weight(100, Duration::from_secs(60), ramp), 100);
        assert_eq!(
            slow_start_weight(1, Duration::ZERO, ramp),
            1,
            "never below 1"
        );
        assert_eq!(
            slow_start_weight(0, Duration::ZERO, ramp),
            0,
            "quiescent stays quiescent"
        );
        assert_eq!(
            slow_start_weight(7, Duration::ZERO, Duration::ZERO),
            7,
            "no slow start"
        );
        let mut last = 0;
        for s in 0..=10 {
            let w = slow_start_weight(50, Duration::from_secs(s), ramp);
            assert!(w >= last, "monotonic");
            last = w;
        }
    }
}
