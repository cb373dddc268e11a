//! Weighted round-robin, IPVS `wrr` semantics (interleaved): a current
//! weight starts at the largest weight and steps down by the weights' GCD;
//! each round picks, in order, every backend whose weight reaches it. For
//! weights 3:2:1 the cycle is A A B A B C: exact ratios over every cycle of
//! sum(w)/gcd picks, with heavy backends spread through the cycle rather
//! than in bursts.

use super::{BackendLoad, FlowInput, Scheduler};

/// Longest cycle published to the data plane (its table size).
pub const MAX_CYCLE: usize = 65537;

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One full cycle of picks (indexes into `weights`). Weights whose cycle
/// would exceed [`MAX_CYCLE`] are scaled down first (each kept at least 1),
/// which keeps ratios to within a rounding of the configured ones.
pub fn cycle(weights: &[u32]) -> Vec<usize> {
    let mut weights = weights.to_vec();
    let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    weights.iter_mut().for_each(|w| *w /= g);
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total > MAX_CYCLE as u64 {
        let scale = MAX_CYCLE as f64 / total as f64;
        weights
            .iter_mut()
            .filter(|w| **w > 0)
            .for_each(|w| *w = ((f64::from(*w) * scale).floor() as u32).max(1));
        return cycle(&weights);
    }
    let max = weights.iter().copied().max().unwrap_or(0);
    let mut out = Vec::with_capacity(total as usize);
    let mut current = max;
    while current > 0 {
        out.extend(
            weights
                .iter()
                .enumerate()
                .filter(|(_, &w)| w >= current)
                .map(|(i, _)| i),
        );
        current -= 1;
    }
    out
}

/// The reference scheduler walks the same cycle, skipping what is not
/// available (full or quiescent) at pick time.
pub struct WeightedRoundRobin {
    cycle: Vec<usize>,
    position: usize,
}

impl WeightedRoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        Self {
            cycle: cycle(weights),
            position: 0,
        }
    }
}

impl Scheduler for WeightedRoundRobin {
    fn pick(&mut self, backends: &[BackendLoad], _flow: FlowInput) -> Option<usize> {
        for _ in 0..self.cycle.len() {
            let i = self.cycle[self.position % self.cycle.len()];
            self.position += 1;
            if backends.get(i).is_some_and(BackendLoad::available) {
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{weighted, XorShift};

    #[test]
    fn three_two_one_interleaves_like_ipvs() {
        assert_eq!(cycle(&[3, 2, 1]), [0, 0, 1, 0, 1, 2]);
        assert_eq!(
            cycle(&[4, 2, 0]),
            [0, 0, 1],
            "gcd 2 divides out; weight 0 never appears"
        );
        assert!(cycle(&[0, 0]).is_empty());
    }

    #[test]
    fn ratios_are_exact_over_every_cycle_for_random_weights() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..50 {
            let weights: Vec<u32> = (0..1 + rng.below(8))
                .map(|_| rng.below(20) as u32)
                .collect();
            let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd);
            let sequence = cycle(&weights);
            for (i, &w) in weights.iter().enumerate() {
                let picks = sequence.iter().filter(|&&p| p == i).count() as u32;
                assert_eq!(picks, w.checked_div(g).unwrap_or(0), "{weights:?}");
            }
            let mut wrr = WeightedRoundRobin::new(&weights);
            let backends = weighted(&weights);
            let picks: Vec<_> = (0..sequence.len())
                .filter_map(|_| wrr.pick(&backends, FlowInput::default()))
                .collect();
            assert_eq!(picks, sequence);
        }
    }

    #[test]
    fn huge_weights_are_scaled_into_the_table() {
        let sequence = cycle(&[65535, 65534, 1]);
        assert!(sequence.len() <= MAX_CYCLE);
        let count = |i| sequence.iter().filter(|&&p| p == i).count() as f64;
        assert!((count(0) / count(1) - 1.0).abs() < 0.01);
        assert!(count(2) >= 1.0);
    }
}
