//! Slot ids for services and backends: the index of each one's entries
//! in the maps.

use std::collections::BTreeSet;

/// Lowest-free id allocation: a given-back id is taken again before a new
/// one (tables and counters stay dense); O(log n) a take, for maps of
/// hundreds of thousands of slots.
#[derive(Default)]
pub(super) struct IdPool {
    /// Free ids below `next`.
    free: BTreeSet<u32>,
    /// Every id from here on is free.
    next: u32,
    /// Ids from here on were never taken in this data plane: their map
    /// entries are still the zeroes the maps were created with.
    fresh_from: u32,
    /// Given back while program runs may still read their entries: taken
    /// again once [`Self::wake`] finds them read no more, or when no other
    /// id is left (whose write then waits for the readers).
    resting: Vec<u32>,
}

/// An id from [`IdPool::take`].
#[derive(Clone, Copy)]
pub(super) struct Taken {
    pub(super) id: u32,
    /// Never taken before in this data plane: nothing to zero, nothing
    /// refers to it.
    pub(super) fresh: bool,
}

impl IdPool {
    pub(super) fn take(&mut self, limit: u32) -> Option<Taken> {
        if let Some(taken) = self.take_free(limit) {
            return Some(taken);
        }
        if self.resting.is_empty() {
            return None;
        }
        self.free.extend(self.resting.drain(..));
        self.take_free(limit)
    }

    fn take_free(&mut self, limit: u32) -> Option<Taken> {
        if let Some(id) = self.free.first().copied().filter(|id| *id < limit) {
            self.free.remove(&id);
            return Some(Taken { id, fresh: false });
        }
        let id = self.next;
        (id < limit).then(|| {
            self.next += 1;
            let fresh = id >= self.fresh_from;
            self.fresh_from = self.fresh_from.max(id + 1);
            Taken { id, fresh }
        })
    }

    /// [`Self::take`], or the error that names the full map.
    pub(super) fn take_or_full(
        &mut self,
        limit: u32,
        what: &'static str,
    ) -> Result<Taken, crate::loader::DataplaneError> {
        self.take(limit)
            .ok_or(crate::loader::DataplaneError::Full { what, limit })
    }

    pub(super) fn give_back(&mut self, id: u32) {
        if id < self.next {
            self.free.insert(id);
        }
    }

    /// Gives `id` back to rest: its entries may still be read, and a
    /// rewrite of them would wait for the readers (the grace period a
    /// removal leaves), so other ids are taken first.
    pub(super) fn rest(&mut self, id: u32) {
        if id < self.next {
            self.resting.push(id);
        }
    }

    /// Makes the resting ids that `still_read` says no run reads any more
    /// free to take again.
    pub(super) fn wake(&mut self, mut still_read: impl FnMut(u32) -> bool) {
        let free = &mut self.free;
        self.resting.retain(|&id| {
            if still_read(id) {
                return true;
            }
            free.insert(id);
            false
        });
    }

    /// The first id never taken (ids from here on are taken only once
    /// every given-back one is).
    pub(super) fn first_unused(&self) -> u32 {
        self.next
    }

    /// Marks `id` taken (a slot found in use in an adopted data plane).
    pub(super) fn claim(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.remove(&id);
        }
    }

    /// An adopted data plane: any id may have been used before.
    pub(super) fn none_fresh(&mut self) {
        self.fresh_from = u32::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::IdPool;

    #[test]
    fn ids_are_taken_lowest_free_first() {
        let mut pool = IdPool::default();
        let take = |pool: &mut IdPool, limit| pool.take(limit).map(|t| (t.id, t.fresh));
        assert_eq!(
            (0..3).map(|_| take(&mut pool, 3)).collect::<Vec<_>>(),
            [Some((0, true)), Some((1, true)), Some((2, true))]
        );
        assert_eq!(take(&mut pool, 3), None, "full");
        pool.give_back(1);
        pool.give_back(0);
        assert_eq!(take(&mut pool, 3), Some((0, false)), "used before");
        assert_eq!(take(&mut pool, 3), Some((1, false)));
        // Adoption claims what a running data plane uses; nothing in it
        // is known never to have been used.
        let mut adopted = IdPool::default();
        adopted.none_fresh();
        adopted.claim(5);
        adopted.claim(2);
        let taken: Vec<_> = (0..5).map(|_| take(&mut adopted, 8)).collect();
        assert_eq!(taken, [0, 1, 3, 4, 6].map(|id| Some((id, false))));
    }

    #[test]
    fn a_resting_id_is_taken_after_the_others_until_it_wakes() {
        let mut pool = IdPool::default();
        let take = |pool: &mut IdPool, limit| pool.take(limit).map(|t| t.id);
        for _ in 0..3 {
            take(&mut pool, 4);
        }
        pool.rest(0);
        pool.rest(1);
        assert_eq!(take(&mut pool, 4), Some(3), "a never-used id first");
        pool.wake(|id| id == 1);
        assert_eq!(take(&mut pool, 4), Some(0), "woken");
        assert_eq!(
            take(&mut pool, 4),
            Some(1),
            "none else left: the resting one"
        );
        assert_eq!(take(&mut pool, 4), None);
    }
}
