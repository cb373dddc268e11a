//! Weighted least-connection (IPVS `wlc`, its default): the smallest
//! overhead / weight, compared exactly by cross-multiplication.

use super::{argmin_ratio, ipvs_overhead, BackendLoad, FlowInput, Scheduler};

#[derive(Default)]
pub struct WeightedLeastConnection;

impl Scheduler for WeightedLeastConnection {
    fn pick(&mut self, backends: &[BackendLoad], _flow: FlowInput) -> Option<usize> {
        argmin_ratio(backends, |b| (ipvs_overhead(b), u64::from(b.weight)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{random_loads, XorShift};

    #[test]
    fn picks_the_minimum_overhead_per_weight() {
        let mut rng = XorShift(12);
        for _ in 0..500 {
            let n = 1 + rng.below(8) as usize;
            let loads = random_loads(&mut rng, n);
            let Some(i) = WeightedLeastConnection.pick(&loads, FlowInput::default()) else {
                assert!(loads.iter().all(|b| !b.available()));
                continue;
            };
            let ratio = |b: &BackendLoad| ipvs_overhead(b) as f64 / f64::from(b.weight);
            for other in loads.iter().filter(|b| b.available()) {
                assert!(ratio(&loads[i]) <= ratio(other) + 1e-9, "{loads:?}");
            }
        }
    }
}
