//! Weighted Maglev consistent hashing.
//!
//! Maglev (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI'16, §3.4) gives every backend a permutation of the
//! M table slots, derived from two hashes of its name (offset and skip, with
//! M prime so every skip visits every slot). Backends then take turns
//! claiming their next still-empty preferred slot until the table is full.
//! The result is near-perfect balance (each backend gets M/N ± 1 slots) and
//! minimal disruption: removing one of N backends moves little more than
//! the 1/N of slots it owned.
//!
//! Weights: the paper's round-robin turns become weighted turns. Each backend
//! is due its next turn at "virtual time" (slots_taken + 1) / weight and the
//! earliest-due backend goes next (exact rational comparison, ties by
//! backend key), so every backend ends within one slot of M * w / sum(w).
//! Backends are ordered by key first, so every node builds the same table
//! from the same backend set whatever the order of its config file.

use crate::jhash::{jhash2, words_of};

/// The lookup-table length: prime, and >> the number of backends (§3.4).
pub const TABLE_SIZE: usize = 65537;

/// Whether `n` is prime (table sizes are; trial division, for config
/// checks).
pub fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

const OFFSET_SEED: u32 = 0x6f66_6673; // "offs"
const SKIP_SEED: u32 = 0x736b_6970; // "skip"

/// One backend as Maglev sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// What the table stores for this backend (the data plane's backend id).
    pub id: u32,
    /// Relative share of slots; 0 = no slots.
    pub weight: u32,
    /// Stable identity that seeds the permutation (address and port bytes).
    pub key: Vec<u8>,
}

/// Builds a table of `size` slots (size must be prime for a full
/// permutation; use [`TABLE_SIZE`]). Returns an empty table when no backend
/// has a weight.
pub fn build(backends: &[MaglevBackend], size: usize) -> Vec<u32> {
    let mut live: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if live.is_empty() || size == 0 {
        return Vec::new();
    }
    live.sort_by(|a, b| a.key.cmp(&b.key).then(a.id.cmp(&b.id)));

    // Each backend walks its permutation from `offset` by `skip`; `next`
    // is the slot it prefers now (one add and a compare per step, where a
    // multiplication and a 128-bit modulo per step took most of the build).
    let mut walks: Vec<Walk> = live.iter().map(|b| Walk::new(&b.key, size)).collect();
    let mut table = vec![EMPTY; size];
    // Which slots are taken, a bit each: the probes (most of the build)
    // read 8 KiB that stay in the L1 cache instead of the 256 KiB table.
    let mut taken_slots = vec![0u64; size.div_ceil(64)];
    let weights: Vec<u64> = live.iter().map(|b| u64::from(b.weight)).collect();
    for i in turn_order(&weights, size) {
        let walk = &mut walks[i];
        while taken_slots[walk.next / 64] & (1 << (walk.next % 64)) != 0 {
            walk.step();
        }
        taken_slots[walk.next / 64] |= 1 << (walk.next % 64);
        table[walk.next] = live[i].id;
        walk.step();
    }
    // Every slot is filled (each walk visits them all, M being prime); the
    // fallback only matters for a table size that is not.
    for slot in &mut table {
        if *slot == EMPTY {
            *slot = live[0].id;
        }
    }
    table
}

/// A slot no backend has claimed yet (no backend id is u32::MAX).
const EMPTY: u32 = u32::MAX;

/// A backend's walk through its permutation: offset, offset + skip, ...
/// (mod size).
struct Walk {
    next: usize,
    skip: usize,
    size: usize,
}

impl Walk {
    fn new(key: &[u8], size: usize) -> Self {
        let mut padded = key.to_vec();
        padded.resize(key.len().div_ceil(4) * 4, 0);
        let words = words_of(&padded);
        let offset = jhash2(&words, OFFSET_SEED) as usize % size;
        let skip = if size > 1 {
            jhash2(&words, SKIP_SEED) as usize % (size - 1) + 1
        } else {
            1
        };
        Self {
            next: offset,
            skip,
            size,
        }
    }

    fn step(&mut self) {
        // next < size and skip < size: one subtraction at most. Whether
        // the walk wraps is a coin toss a branch would miss half the time
        // (it did: most of a table's build went to it); a select does not.
        let next = self.next + self.skip;
        self.next =
            std::hint::select_unpredictable(next >= self.size, next.wrapping_sub(self.size), next);
    }
}

/// Whose turn each of the first `count` slots is: backend i's k-th turn is
/// due at virtual time k / w_i, the earliest goes first, ties to the lower
/// index.
///
/// Exactly the order a priority queue of next turns gives, without one (a
/// queue of 1,000 backends cost ten comparisons a slot): every turn due by
/// (count + N) / W (W the sum of weights) is listed — at least `count` of
/// them, at most count + N — bucketed by floor(k W / w_i), which keeps time
/// order across buckets, and each bucket is sorted exactly.
fn turn_order(weights: &[u64], count: usize) -> Box<dyn Iterator<Item = usize>> {
    // Equal weights (most pools): the k-th turns of all backends come
    // before any (k+1)-th, in index order, which is plain round robin.
    if weights.windows(2).all(|pair| pair[0] == pair[1]) {
        let n = weights.len().max(1);
        return Box::new((0..count).map(move |turn| turn % n));
    }
    let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
    let horizon = (count + weights.len()) as u128;
    // Backend i's turns k = 1..=due_by[i], bucketed by floor(k * W / w_i),
    // computed by steps of W / w_i with the remainder carried (no division
    // per turn). Two walks over them: count per bucket, then place. Nothing
    // per turn is stored but its place (small arrays: in a VM, touching
    // fresh memory costs more than the arithmetic).
    let walk_buckets = |i: usize, visit: &mut dyn FnMut(u32, usize)| {
        let w = u128::from(weights[i]);
        let due_by = horizon * w / total;
        let (step, carry) = (total / w, total % w);
        let (mut bucket, mut remainder) = (0u128, 0u128);
        for k in 1..=due_by {
            bucket += step;
            remainder += carry;
            if remainder >= w {
                bucket += 1;
                remainder -= w;
            }
            visit(k as u32, bucket as usize);
        }
    };
    // A bucket is at most floor(due_by * W / w) <= horizon.
    let mut starts = vec![0u32; horizon as usize + 2];
    for i in 0..weights.len() {
        walk_buckets(i, &mut |_, bucket| starts[bucket + 1] += 1);
    }
    for b in 1..starts.len() {
        starts[b] += starts[b - 1];
    }
    let listed = starts.last().copied().unwrap_or(0) as usize;
    let mut sorted = vec![(0u32, 0u32); listed];
    let mut next = starts.clone();
    for i in 0..weights.len() {
        walk_buckets(i, &mut |k, bucket| {
            sorted[next[bucket] as usize] = (k, i as u32);
            next[bucket] += 1;
        });
    }
    let due = |(k, i): &(u32, u32)| (u128::from(*k), u128::from(weights[*i as usize]));
    for window in starts.windows(2) {
        let bucket = &mut sorted[window[0] as usize..window[1] as usize];
        if bucket.len() > 1 {
            bucket.sort_unstable_by(|x, y| {
                let ((kx, wx), (ky, wy)) = (due(x), due(y));
                (kx * wy).cmp(&(ky * wx)).then(x.1.cmp(&y.1))
            });
        }
    }
    sorted.truncate(count);
    Box::new(sorted.into_iter().map(|(_, i)| i as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(id: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            id,
            weight,
            key: format!("10.77.2.{id}:80").into_bytes(),
        }
    }

    fn counts(table: &[u32], ids: usize) -> Vec<usize> {
        let mut counts = vec![0; ids];
        for &id in table {
            counts[id as usize] += 1;
        }
        counts
    }

    /// A tiny deterministic generator for the property tests.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn equal_weights_get_equal_slots_within_one() {
        let backends: Vec<_> = (0..7).map(|id| backend(id, 1)).collect();
        let table = build(&backends, TABLE_SIZE);
        assert_eq!(table.len(), TABLE_SIZE);
        let counts = counts(&table, 7);
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
    }

    #[test]
    fn slots_follow_weights_within_one_percent_for_random_weights() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _case in 0..20 {
            let n = 2 + (rng.next() % 30) as usize;
            let backends: Vec<_> = (0..n as u32)
                .map(|id| backend(id, 1 + (rng.next() % 100) as u32))
                .collect();
            let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
            let counts = counts(&build(&backends, TABLE_SIZE), n);
            for (b, &got) in backends.iter().zip(&counts) {
                let want = TABLE_SIZE as f64 * f64::from(b.weight) / total as f64;
                assert!(
                    (got as f64 - want).abs() <= want * 0.01 + 1.0,
                    "backend {} weight {}: {got} slots, want {want:.1}",
                    b.id,
                    b.weight
                );
            }
        }
    }

    #[test]
    fn large_weights_are_still_proportional() {
        let backends = vec![backend(0, 50_000), backend(1, 50_000), backend(2, 25_000)];
        let counts = counts(&build(&backends, TABLE_SIZE), 3);
        assert!(
            (counts[0] as i64 - counts[1] as i64).abs() <= 1,
            "{counts:?}"
        );
        assert!(
            (counts[0] as i64 - 2 * counts[2] as i64).abs() <= 2,
            "{counts:?}"
        );
    }

    #[test]
    fn zero_weight_backends_get_no_slots() {
        let backends = vec![backend(0, 1), backend(1, 0), backend(2, 1)];
        let counts = counts(&build(&backends, TABLE_SIZE), 3);
        assert_eq!(counts[1], 0);
        assert_eq!(counts[0] + counts[2], TABLE_SIZE);
    }

    #[test]
    fn no_weighted_backend_means_an_empty_table() {
        assert!(build(&[], TABLE_SIZE).is_empty());
        assert!(build(&[backend(0, 0)], TABLE_SIZE).is_empty());
    }

    #[test]
    fn config_order_does_not_change_the_table() {
        let forward: Vec<_> = (0..5).map(|id| backend(id, id + 1)).collect();
        let mut reversed = forward.clone();
        reversed.reverse();
        assert_eq!(build(&forward, TABLE_SIZE), build(&reversed, TABLE_SIZE));
    }

    #[test]
    fn removing_one_of_n_backends_remaps_about_one_nth() {
        // Maglev's disruption creeps above 1/N as N grows with M fixed
        // (NSDI'16 fig. 13); at M = 65537 it stays within 1.2/N to N = 32.
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for n in [3usize, 5, 10, 20, 32, 32, 32] {
            let backends: Vec<_> = (0..n as u32).map(|id| backend(id, 1)).collect();
            let before = build(&backends, TABLE_SIZE);
            let removed = (rng.next() % n as u64) as u32;
            let rest: Vec<_> = backends
                .iter()
                .filter(|b| b.id != removed)
                .cloned()
                .collect();
            let after = build(&rest, TABLE_SIZE);
            let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
            let fraction = moved as f64 / TABLE_SIZE as f64;
            assert!(
                fraction <= 1.2 / n as f64,
                "n={n}: {fraction:.4} of the table moved, limit {:.4}",
                1.2 / n as f64
            );
            assert!(
                fraction >= 1.0 / n as f64 * 0.95,
                "n={n}: the removed backend's own slots must move"
            );
        }
    }

    #[test]
    fn adding_a_backend_moves_only_slots_to_the_new_backend_mostly() {
        let backends: Vec<_> = (0..10).map(|id| backend(id, 1)).collect();
        let before = build(&backends, TABLE_SIZE);
        let mut more = backends.clone();
        more.push(backend(10, 1));
        let after = build(&more, TABLE_SIZE);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        assert!((moved as f64 / TABLE_SIZE as f64) <= 1.2 / 11.0);
    }

    /// Every node must build the same table from the same backends, across
    /// pnlb versions too (a rolling upgrade mixes them): the table for a
    /// fixed weighted set, pinned by its checksum.
    #[test]
    fn the_table_for_a_fixed_set_never_changes() {
        let backends: Vec<_> = (0..50).map(|id| backend(id, 1 + id % 4)).collect();
        let table = build(&backends, TABLE_SIZE);
        let checksum = table.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, id| {
            (hash ^ u64::from(*id)).wrapping_mul(0x0100_0000_01b3)
        });
        // Computed by the build before its probes were made incremental.
        assert_eq!(checksum, 0x54f5_c6b9_a922_e121, "{checksum:#x}");
    }

    /// The bucketed turn order is the earliest-due-first order, ties to the
    /// lower index, exactly (a naive scan as the reference).
    #[test]
    fn turns_come_earliest_due_first_for_random_weights() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for _case in 0..200 {
            let n = 1 + (rng.next() % 30) as usize;
            let mut weights: Vec<u64> = (0..n)
                .map(|_| {
                    1 + rng.next()
                        % if rng.next().is_multiple_of(2) {
                            4
                        } else {
                            1000
                        }
                })
                .collect();
            // A quarter of the cases with equal weights (round robin).
            if rng.next().is_multiple_of(4) {
                let w = weights[0];
                weights.fill(w);
            }
            let count = 1 + (rng.next() % 3000) as usize;
            let mut taken = vec![0u64; n];
            let reference: Vec<usize> = (0..count)
                .map(|_| {
                    let i = (0..n)
                        .min_by(|&a, &b| {
                            let (da, db) = (
                                u128::from(taken[a] + 1) * u128::from(weights[b]),
                                u128::from(taken[b] + 1) * u128::from(weights[a]),
                            );
                            da.cmp(&db).then(a.cmp(&b))
                        })
                        .unwrap();
                    taken[i] += 1;
                    i
                })
                .collect();
            let order: Vec<usize> = turn_order(&weights, count).collect();
            assert_eq!(order, reference, "{weights:?}");
        }
    }
}
