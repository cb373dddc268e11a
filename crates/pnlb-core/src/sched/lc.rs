//! Least-connection (IPVS `lc`): the available backend with the smallest
//! overhead, active x 256 + inactive (an established connection weighs far
//! more than one in handshake or closing). Weights only matter as 0/non-0.

use super::{argmin_ratio, ipvs_overhead, BackendLoad, FlowInput, Scheduler};

#[derive(Default)]
pub struct LeastConnection;

impl Scheduler for LeastConnection {
    fn pick(&mut self, backends: &[BackendLoad], _flow: FlowInput) -> Option<usize> {
        argmin_ratio(backends, |b| (ipvs_overhead(b), 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{random_loads, XorShift};

    #[test]
    fn picks_the_minimum_overhead_among_available_backends() {
        let mut rng = XorShift(11);
        for _ in 0..500 {
            let n = 1 + rng.below(8) as usize;
            let loads = random_loads(&mut rng, n);
            let pick = LeastConnection.pick(&loads, FlowInput::default());
            let best = loads
                .iter()
                .filter(|b| b.available())
                .map(ipvs_overhead)
                .min();
            assert_eq!(pick.map(|i| ipvs_overhead(&loads[i])), best, "{loads:?}");
        }
    }
}
