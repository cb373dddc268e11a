//! Shortest expected delay (IPVS `sed`; PacketNgin's SED): the smallest
//! (active + 1) / weight, the delay a new connection would see if each
//! server worked through its established connections in proportion to its
//! weight. Inactive connections are ignored.

use super::{argmin_ratio, BackendLoad, FlowInput, Scheduler};

#[derive(Default)]
pub struct ShortestExpectedDelay;

pub(crate) fn expected_delay(b: &BackendLoad) -> (u64, u64) {
    (u64::from(b.active) + 1, u64::from(b.weight))
}

impl Scheduler for ShortestExpectedDelay {
    fn pick(&mut self, backends: &[BackendLoad], _flow: FlowInput) -> Option<usize> {
        argmin_ratio(backends, expected_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{random_loads, XorShift};

    #[test]
    fn picks_the_smallest_active_plus_one_over_weight() {
        let mut rng = XorShift(13);
        for _ in 0..500 {
            let n = 1 + rng.below(8) as usize;
            let loads = random_loads(&mut rng, n);
            let Some(i) = ShortestExpectedDelay.pick(&loads, FlowInput::default()) else {
                continue;
            };
            let delay = |b: &BackendLoad| (f64::from(b.active) + 1.0) / f64::from(b.weight);
            assert!(
                loads
                    .iter()
                    .filter(|b| b.available())
                    .all(|b| delay(&loads[i]) <= delay(b) + 1e-9),
                "{loads:?}"
            );
        }
    }

    #[test]
    fn a_heavier_server_takes_more_before_a_lighter_one() {
        let loads = [
            BackendLoad {
                weight: 3,
                active: 2,
                ..BackendLoad::default()
            },
            BackendLoad {
                weight: 1,
                active: 0,
                ..BackendLoad::default()
            },
        ];
        // (2+1)/3 = 1 equals (0+1)/1 = 1: the first wins the tie.
        assert_eq!(
            ShortestExpectedDelay.pick(&loads, FlowInput::default()),
            Some(0)
        );
    }
}
