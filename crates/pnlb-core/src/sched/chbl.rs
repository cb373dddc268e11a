//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam,
//! "Consistent Hashing with Bounded Loads", SODA 2018; the Vimeo/Netflix
//! fix for hot keys): a flow goes to its consistent-hash owner unless that
//! backend already carries its cap, ceil((1 + eps) x average load) (scaled
//! by weight), in which case it walks on to the next slot's owner. No
//! backend ever exceeds its cap, and with no overload it is plain
//! consistent hashing.

use super::maglev_sched::TableHash;
use super::{BackendLoad, FlowInput, Scheduler};

pub struct BoundedLoad {
    hash: TableHash,
    /// eps: how far above the average a backend may go (0.25 = 25%).
    pub epsilon: f64,
}

impl BoundedLoad {
    pub fn new(hash: TableHash, epsilon: f64) -> Self {
        Self { hash, epsilon }
    }

    /// The cap of a backend with `weight` when the service carries `total`
    /// connections (counting the new one) over `total_weight`.
    pub fn cap(&self, total: u64, weight: u32, total_weight: u64) -> u64 {
        if total_weight == 0 {
            return 0;
        }
        let share = (1.0 + self.epsilon) * total as f64 * f64::from(weight) / total_weight as f64;
        share.ceil().max(1.0) as u64
    }
}

fn load(b: &BackendLoad) -> u64 {
    u64::from(b.active) + u64::from(b.inactive)
}

impl Scheduler for BoundedLoad {
    fn pick(&mut self, backends: &[BackendLoad], flow: FlowInput) -> Option<usize> {
        let table = self.hash.table();
        if table.is_empty() {
            return None;
        }
        let total = backends
            .iter()
            .filter(|b| b.available())
            .map(load)
            .sum::<u64>()
            + 1;
        let total_weight: u64 = backends
            .iter()
            .filter(|b| b.available())
            .map(|b| u64::from(b.weight))
            .sum();
        let start = flow.hash as usize % table.len();
        (0..table.len())
            .map(|step| table[(start + step) % table.len()] as usize)
            .find(|&i| {
                backends.get(i).is_some_and(|b| {
                    b.available() && load(b) < self.cap(total, b.weight, total_weight)
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::TABLE_SIZE;
    use crate::sched::testing::{weighted, XorShift};

    fn scheduler(n: u8, epsilon: f64) -> BoundedLoad {
        let keys: Vec<Vec<u8>> = (0..n).map(|i| vec![10, 0, 0, i]).collect();
        BoundedLoad::new(
            TableHash::new(&vec![1; n as usize], &keys, TABLE_SIZE),
            epsilon,
        )
    }

    #[test]
    fn a_hot_key_spills_over_once_its_owner_is_at_the_cap() {
        let mut chbl = scheduler(4, 0.25);
        let mut backends = weighted(&[1, 1, 1, 1]);
        let hot = FlowInput {
            hash: 12345,
            random: 0,
        };
        let owner = chbl.hash.owner(12345).unwrap();
        for _ in 0..100 {
            let i = chbl.pick(&backends, hot).unwrap();
            backends[i].active += 1;
        }
        assert!(backends[owner].active < 100, "spilled: {backends:?}");
        assert!(backends.iter().filter(|b| b.active > 0).count() > 1);
    }

    #[test]
    fn no_backend_ever_exceeds_its_cap() {
        let mut rng = XorShift(99);
        for eps in [0.1, 0.25, 1.0] {
            let mut chbl = scheduler(5, eps);
            let mut backends = weighted(&[1, 1, 1, 1, 1]);
            for step in 0..500u64 {
                // Mostly one hot key, some random ones.
                let hash = if rng.below(4) == 0 {
                    rng.next() as u32
                } else {
                    777
                };
                let i = chbl.pick(&backends, FlowInput { hash, random: 0 }).unwrap();
                backends[i].active += 1;
                let total: u64 = backends.iter().map(|b| u64::from(b.active)).sum();
                let cap = chbl.cap(total, 1, 5);
                assert!(
                    backends.iter().all(|b| u64::from(b.active) <= cap),
                    "step {step} eps {eps}: {backends:?} cap {cap}"
                );
            }
        }
    }

    #[test]
    fn without_load_it_is_consistent_hashing() {
        let mut chbl = scheduler(5, 0.25);
        let backends = weighted(&[1, 1, 1, 1, 1]);
        for hash in [1u32, 99, 123_456, 7_777_777] {
            assert_eq!(
                chbl.pick(&backends, FlowInput { hash, random: 0 }),
                chbl.hash.owner(hash)
            );
        }
    }
}
