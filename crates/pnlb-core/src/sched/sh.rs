//! Source hashing (IPVS `sh`): a client address always lands on the same
//! backend (while the set is unchanged). pnlb uses the weighted Maglev
//! table keyed by the source address, so weights count and a change in the
//! set moves only about 1/N of the clients (IPVS's 256-bucket table moves
//! more).

use super::maglev_sched::TableHash;

/// Source hashing is Maglev over the source address (`hash_key = "source"`).
pub type SourceHash = TableHash;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maglev::TABLE_SIZE;
    use crate::sched::testing::weighted;
    use crate::sched::{FlowInput, Scheduler};

    #[test]
    fn a_source_always_gets_the_same_backend() {
        let keys: Vec<Vec<u8>> = (0..3).map(|i| vec![10, 0, 0, i]).collect();
        let mut sh = SourceHash::new(&[1, 1, 1], &keys, TABLE_SIZE);
        let backends = weighted(&[1, 1, 1]);
        let flow = FlowInput {
            hash: 0xdead_beef,
            random: 0,
        };
        let first = sh.pick(&backends, flow);
        assert!(first.is_some());
        assert!((0..10).all(|_| sh.pick(&backends, flow) == first));
    }
}
