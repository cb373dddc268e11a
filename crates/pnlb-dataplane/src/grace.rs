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

/// What was rewritten since readers were last waited for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Element {
    /// A backend slot's spare copy (the one packets stopped reading).
    BackendSpare(u32),
    /// Any service entry (the services map reuses replaced elements).
    Service,
}

/// Waits for readers only when an element is rewritten a second time
/// before a grace period has passed: one wait per apply at most.
#[derive(Default)]
pub(crate) struct Grace {
    pending: HashSet<Element>,
}

impl Grace {
    /// Call before rewriting `element`.
    pub(crate) fn before_rewrite(&mut self, element: Element) {
        if self.pending.contains(&element) {
            wait_for_readers();
            self.pending.clear();
        }
        self.pending.insert(element);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_readers_returns() {
        let start = std::time::Instant::now();
        wait_for_readers();
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
