//! Round-robin (IPVS `rr`): every available backend in turn, weights
//! ignored except that weight 0 (quiescent) is skipped.

use super::{BackendLoad, FlowInput, Scheduler};

/// The data plane's table: each backend with a weight, once, in order.
pub fn table(weights: &[u32]) -> Vec<usize> {
    weights
        .iter()
        .enumerate()
        .filter(|(_, &w)| w > 0)
        .map(|(i, _)| i)
        .collect()
}

#[derive(Default)]
pub struct RoundRobin {
    next: usize,
}

impl Scheduler for RoundRobin {
    fn pick(&mut self, backends: &[BackendLoad], _flow: FlowInput) -> Option<usize> {
        for step in 0..backends.len() {
            let i = (self.next + step) % backends.len();
            if backends[i].available() {
                self.next = i + 1;
                return Some(i);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::weighted;

    #[test]
    fn each_available_backend_takes_its_turn() {
        let backends = weighted(&[1, 0, 5, 1]);
        let mut rr = RoundRobin::default();
        let picks: Vec<_> = (0..6)
            .map(|_| rr.pick(&backends, FlowInput::default()).unwrap())
            .collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
        assert_eq!(table(&[1, 0, 5, 1]), [0, 2, 3]);
    }

    #[test]
    fn nothing_available_means_no_pick() {
        assert_eq!(
            RoundRobin::default().pick(&weighted(&[0, 0]), FlowInput::default()),
            None
        );
    }
}
