//! Schedulers: who gets a new flow. One file per algorithm behind one small
//! trait, as IPVS has one module per scheduler; the selection interface is
//! separate from the algorithms (pingora's `BackendSelection`).
//!
//! These are the reference implementations. Table-driven algorithms (rr,
//! wrr, sh, dh, maglev) also export the table builder the data plane is
//! programmed with, so the data plane and the reference agree by
//! construction (and parity tests check it).

pub mod chbl;
pub mod dh;
pub mod lc;
pub mod maglev_sched;
pub mod nq;
pub mod p2c;
pub mod rr;
pub mod sed;
pub mod sh;
pub mod wlc;
pub mod wrr;

/// What a scheduler may look at for one backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Configured weight; 0 = quiescent (never picked for new flows).
    pub weight: u32,
    /// Established connections (IPVS activeconns).
    pub active: u32,
    /// Other tracked connections: handshakes, closing, UDP (IPVS inactconns).
    pub inactive: u32,
    /// A full backend (active + inactive >= max_conns) is skipped.
    pub max_conns: Option<u32>,
}

impl BackendLoad {
    /// Whether it may take a new flow at all.
    pub fn available(&self) -> bool {
        self.weight > 0
            && self
                .max_conns
                .is_none_or(|max| self.active + self.inactive < max)
    }
}

/// What a scheduler may look at for the flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowInput {
    /// The flow hash over the service's `hash_key` (5-tuple, source or destination).
    pub hash: u32,
    /// A random number, for p2c.
    pub random: u32,
}

/// Picks the backend (an index into `backends`) for a new flow.
pub trait Scheduler {
    fn pick(&mut self, backends: &[BackendLoad], flow: FlowInput) -> Option<usize>;
}

/// IPVS's "overhead" of a backend for least-connection families: active
/// connections cost 256 times an inactive one.
pub fn ipvs_overhead(b: &BackendLoad) -> u64 {
    u64::from(b.active) * 256 + u64::from(b.inactive)
}

/// The index minimizing `cost_num / cost_den` (exact, by cross
/// multiplication) among available backends; ties go to the first.
pub(crate) fn argmin_ratio(
    backends: &[BackendLoad],
    cost: impl Fn(&BackendLoad) -> (u64, u64),
) -> Option<usize> {
    let mut best: Option<(usize, u64, u64)> = None;
    for (i, b) in backends.iter().enumerate().filter(|(_, b)| b.available()) {
        let (num, den) = cost(b);
        let better = match best {
            None => true,
            Some((_, bn, bd)) => {
                u128::from(num) * u128::from(bd) < u128::from(bn) * u128::from(den)
            }
        };
        if better {
            best = Some((i, num, den));
        }
    }
    best.map(|(i, _, _)| i)
}

#[cfg(test)]
pub(crate) mod testing {
    use super::BackendLoad;

    pub fn weighted(weights: &[u32]) -> Vec<BackendLoad> {
        weights
            .iter()
            .map(|&weight| BackendLoad {
                weight,
                ..BackendLoad::default()
            })
            .collect()
    }

    /// A deterministic generator for property tests.
    pub struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Random loads for `n` backends.
    pub fn random_loads(rng: &mut XorShift, n: usize) -> Vec<BackendLoad> {
        (0..n)
            .map(|_| BackendLoad {
                weight: rng.below(5) as u32,
                active: rng.below(50) as u32,
                inactive: rng.below(50) as u32,
                max_conns: None,
            })
            .collect()
    }
}
