//! Never queue (IPVS `nq`; PacketNgin's NQ): an idle server (no active
//! connection) if there is one, the first such, so no request ever waits
//! behind another while a server sits idle; otherwise shortest expected
//! delay.

use super::sed::ShortestExpectedDelay;
use super::{BackendLoad, FlowInput, Scheduler};

#[derive(Default)]
pub struct NeverQueue;

impl Scheduler for NeverQueue {
    fn pick(&mut self, backends: &[BackendLoad], flow: FlowInput) -> Option<usize> {
        backends
            .iter()
            .position(|b| b.available() && b.active == 0)
            .or_else(|| ShortestExpectedDelay.pick(backends, flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::testing::{random_loads, XorShift};

    #[test]
    fn an_idle_server_goes_first() {
        let loads = [
            BackendLoad {
                weight: 10,
                active: 1,
                ..BackendLoad::default()
            },
            BackendLoad {
                weight: 1,
                active: 0,
                inactive: 9,
                ..BackendLoad::default()
            },
        ];
        assert_eq!(NeverQueue.pick(&loads, FlowInput::default()), Some(1));
    }

    #[test]
    fn without_idle_servers_it_is_sed() {
        let mut rng = XorShift(14);
        for _ in 0..300 {
            let n = 1 + rng.below(6) as usize;
            let mut loads = random_loads(&mut rng, n);
            loads.iter_mut().for_each(|b| b.active += 1);
            assert_eq!(
                NeverQueue.pick(&loads, FlowInput::default()),
                ShortestExpectedDelay.pick(&loads, FlowInput::default())
            );
        }
    }
}
