//! Rewriting map elements that packets may be reading.
//!
//! A program run holds pointers into map values for its whole run; a value
//! rewritten meanwhile is read half old, half new. So values that packets
//! read as a whole (backends, services) are never rewritten while a run
//! may still be reading them: a backend has two copies and a selector
//! (the spare copy is written, then the selector flips), and a service
//! update (a hash map, which hands the replaced element to the next
//! update) waits for readers first. Readers are done once an RCU grace
//! period has passed: XDP runs inside an RCU read-side section (softirq).

use std::collections::HashSet;
use std::time::Duration;

/// membarrier(2)'s MEMBARRIER_CMD_GLOBAL, which is synchronize_rcu().
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Returns once every XDP program run that began before the call has ended.
pub fn wait_for_readers() {
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // Refused (nohz_full CPUs): a program run lasts microseconds, so a
        // pause a thousand times longer than the longest is as good.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Map elements that packets may still be reading, pending a grace period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Element {
    /// A backend slot's spare copy (the one packets stopped reading).
    BackendSpare(u32),
    /// An element the services map took back: a preallocated hash map
    /// recycles the element an update replaces or a delete removes (into a
    /// per-CPU spare or its free list), and the next update of any key may
    /// write it.
    ServiceRecycled,
}

/// Waits for readers only when an element that may still be read is about
/// to be written: one wait per apply at most, none for inserts alone.
#[derive(Default)]
pub(crate) struct Grace {
    pending: HashSet<Element>,
}

impl Grace {
    /// Call before rewriting `element`; afterwards it may be read until a
    /// grace period has passed.
    pub(crate) fn before_rewrite(&mut self, element: Element) {
        self.before_reuse(element);
        self.pending.insert(element);
    }

    /// Call before a write that reuses `element` without leaving it to be
    /// read (an insert takes a freed element and frees none).
    pub(crate) fn before_reuse(&mut self, element: Element) {
        if self.pending.contains(&element) {
            wait_for_readers();
            self.pending.clear();
        }
    }

    /// Call after `element` was given up (its readers may still hold it).
    pub(crate) fn released(&mut self, element: Element) {
        self.pending.insert(element);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_write_to_an_element_still_read_waits() {
        let mut grace = Grace::default();
        // Inserts into a fresh map: nothing recycled, nothing to wait for.
        grace.before_reuse(Element::ServiceRecycled);
        grace.before_reuse(Element::ServiceRecycled);
        assert!(grace.pending.is_empty());
        // A replace recycles an element; the next write waits for readers.
        grace.before_rewrite(Element::ServiceRecycled);
        assert_eq!(grace.pending.len(), 1);
        grace.before_reuse(Element::ServiceRecycled);
        assert!(grace.pending.is_empty());
        grace.released(Element::ServiceRecycled);
        assert_eq!(grace.pending.len(), 1, "a delete recycles too");
        grace.before_rewrite(Element::BackendSpare(1));
        grace.before_rewrite(Element::BackendSpare(2));
        assert_eq!(grace.pending.len(), 3, "other slots do not wait");
        grace.before_rewrite(Element::BackendSpare(1));
        assert_eq!(grace.pending.len(), 1, "the same slot again waited");
    }

    #[test]
    fn waiting_for_readers_returns() {
        let start = std::time::Instant::now();
        wait_for_readers();
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
