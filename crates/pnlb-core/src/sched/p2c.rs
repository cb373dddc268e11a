//! Power of two choices (Mitzenmacher, "The Power of Two Choices in
//! Randomized Load Balancing", 2001): two backends drawn at random, the
//! one with fewer active connections per weight wins. Nearly as good as
//! least-connection with far less coordination, and no herd behaviour when
//! counters lag.

use super::{BackendLoad, FlowInput, Scheduler};

#[derive(Default)]
pub struct PowerOfTwoChoices;

impl Scheduler for PowerOfTwoChoices {
    fn pick(&mut self, backends: &[BackendLoad], flow: FlowInput) -> Option<usize> {
        let available: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].available())
            .collect();
        let n = available.len();
        if n == 0 {
            return None;
        }
        let a = available[(flow.random as usize) % n];
        let b = available[((flow.random >> 16) as usize) % n];
        let cost =
            |i: usize| u64::from(backends[i].active) * 1_000_000 / u64::from(backends[i].weight);
        Some(if cost(b) < cost(a) { b } else { a })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{weighted, XorShift};

    #[test]
    fn the_less_loaded_of_the_two_wins_and_loads_stay_close() {
        let mut rng = XorShift(5);
        let mut backends = weighted(&[1; 8]);
        for _ in 0..8000 {
            let i = PowerOfTwoChoices
                .pick(
                    &backends,
                    FlowInput {
                        hash: 0,
                        random: rng.next() as u32,
                    },
                )
                .unwrap();
            backends[i].active += 1;
        }
        let max = backends.iter().map(|b| b.active).max().unwrap();
        let min = backends.iter().map(|b| b.active).min().unwrap();
        assert!(
            max - min <= 20,
            "two choices keep loads within a few of each other: {backends:?}"
        );
    }
}
