//! Rewriting map elements that packets may be reading.
//!
//! A program run holds pointers into map values for its whole run; a value
//! rewritten meanwhile is read half old, half new. So values that packets
//! read as a whole (backends, services) are never rewritten while a run
//! may still be reading them: a backend has two copies and a selector
//! (the spare copy is written, then the selector flips, and that copy is
//! written again only once its readers are done); so has a service by id
//! (pnlb_service_copies). Readers are done once an RCU grace period has
//! passed: XDP runs inside an RCU read-side section (softirq).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
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
    /// A service id's spare copy in pnlb_service_copies.
    ServiceSpare(u32),
    /// An element pnlb_services took back (a preallocated hash recycles
    /// what a replace or a delete frees into its next write): read whole
    /// only by a program of an earlier build ([`Grace::earlier_program`]).
    ServiceRecycled,
}

/// Waits for readers only when an element that may still be read is about
/// to be written: one wait per apply at most, none for inserts alone, and
/// none for an element whose grace period already passed in the
/// background ([`Grace::settle`]).
#[derive(Default)]
pub(crate) struct Grace {
    /// Written or given up since the last grace period was asked for.
    pending: HashSet<Element>,
    /// Waiting on a grace period asked of the background thread: the
    /// ticket it must have passed.
    asked: HashMap<Element, u64>,
    background: Option<Background>,
    waits: u64,
    /// A program of a build before 2026-12-03 may be attached (an adopted
    /// data plane, until this process attached its own): it reads
    /// pnlb_services entries whole, so writes there wait for it.
    earlier_program: bool,
}

/// A thread that waits for readers on request, so that the daemon does
/// not: the next write to an element finds its grace period passed.
struct Background {
    requests: Sender<u64>,
    /// The last ticket handed out.
    issued: u64,
    /// Every ticket up to this one has had its grace period.
    passed: Arc<AtomicU64>,
}

impl Background {
    fn start() -> Option<Self> {
        let (requests, asked) = channel::<u64>();
        let passed = Arc::new(AtomicU64::new(0));
        let done = Arc::clone(&passed);
        std::thread::Builder::new()
            .name("pnlb-grace".into())
            .spawn(move || {
                // Ends when the Grace that sends is dropped.
                while let Ok(mut ticket) = asked.recv() {
                    // Every request queued is covered by one wait.
                    while let Ok(later) = asked.try_recv() {
                        ticket = ticket.max(later);
                    }
                    wait_for_readers();
                    done.store(ticket, Ordering::Release);
                }
            })
            .ok()?;
        Some(Self {
            requests,
            issued: 0,
            passed,
        })
    }
}

impl Grace {
    /// Call before rewriting `element`; afterwards it may be read until a
    /// grace period has passed.
    pub(crate) fn before_rewrite(&mut self, element: Element) {
        if self.may_be_read(element) {
            self.wait();
        }
        self.pending.insert(element);
    }

    fn wait(&mut self) {
        wait_for_readers();
        self.waits += 1;
        self.pending.clear();
        self.asked.clear();
    }

    /// Whether a program of an earlier build, which reads pnlb_services
    /// entries whole, may be attached.
    pub(crate) fn set_earlier_program(&mut self, may_be_attached: bool) {
        self.earlier_program = may_be_attached;
    }

    pub(crate) fn earlier_program(&self) -> bool {
        self.earlier_program
    }

    /// Before writing a pnlb_services entry (`replaces`: one is there),
    /// while an earlier program may read entries whole: the element this
    /// write takes may be one a delete or replace freed, still read.
    pub(crate) fn before_services_write(&mut self, replaces: bool) {
        if !self.earlier_program {
            return;
        }
        if self.may_be_read(Element::ServiceRecycled) {
            self.wait();
        }
        if replaces {
            self.pending.insert(Element::ServiceRecycled);
        }
    }

    /// After deleting a pnlb_services entry: likewise.
    pub(crate) fn after_services_delete(&mut self) {
        if self.earlier_program {
            self.pending.insert(Element::ServiceRecycled);
        }
    }

    /// Whether program runs may still be reading `element`: a rewrite now
    /// would wait for them.
    pub(crate) fn may_be_read(&mut self, element: Element) -> bool {
        if let Some(ticket) = self.asked.get(&element) {
            let passed = self
                .background
                .as_ref()
                .map_or(0, |b| b.passed.load(Ordering::Acquire));
            if passed >= *ticket {
                self.asked.remove(&element);
            }
        }
        self.pending.contains(&element) || self.asked.contains_key(&element)
    }

    /// Waits for the readers of every element written or given up so far:
    /// from here any of them is written without waiting.
    pub(crate) fn wait_now(&mut self) {
        wait_for_readers();
        self.pending.clear();
        self.asked.clear();
    }

    /// How many times a rewrite waited for readers.
    pub(crate) fn waits(&self) -> u64 {
        self.waits
    }

    /// Call once the writes are done (the end of an apply): the grace
    /// period for what they left pending is waited for in the background.
    pub(crate) fn settle(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if self.background.is_none() {
            self.background = Background::start();
        }
        // Without the thread, the next write waits as before.
        let Some(background) = self.background.as_mut() else {
            return;
        };
        background.issued += 1;
        if background.requests.send(background.issued).is_err() {
            return;
        }
        let ticket = background.issued;
        self.asked
            .extend(self.pending.drain().map(|element| (element, ticket)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_write_to_an_element_still_read_waits() {
        let mut grace = Grace::default();
        grace.before_rewrite(Element::BackendSpare(1));
        grace.before_rewrite(Element::BackendSpare(2));
        grace.before_rewrite(Element::ServiceSpare(1));
        assert_eq!(grace.pending.len(), 3, "other elements do not wait");
        assert_eq!(grace.waits(), 0);
        assert!(grace.may_be_read(Element::ServiceSpare(1)));
        assert!(!grace.may_be_read(Element::ServiceSpare(2)));
        grace.before_rewrite(Element::BackendSpare(1));
        assert_eq!(grace.pending.len(), 1, "the same element again waited");
        assert_eq!(grace.waits(), 1);
        assert!(!grace.may_be_read(Element::ServiceSpare(1)));
    }

    #[test]
    fn service_entries_wait_only_while_an_earlier_program_may_read_them() {
        let mut grace = Grace::default();
        grace.after_services_delete();
        grace.before_services_write(false);
        grace.before_services_write(true);
        grace.before_services_write(true);
        assert_eq!(grace.waits(), 0, "no reader of whole entries");
        grace.set_earlier_program(true);
        grace.before_services_write(false);
        assert_eq!(grace.waits(), 0, "an insert into a map nothing freed");
        grace.after_services_delete();
        grace.before_services_write(false);
        assert_eq!(grace.waits(), 1, "the freed element may be the one taken");
        grace.before_services_write(true);
        assert_eq!(grace.waits(), 1);
        grace.before_services_write(false);
        assert_eq!(grace.waits(), 2, "a replace frees one too");
    }

    #[test]
    fn a_grace_period_passed_in_the_background_is_not_waited_for_again() {
        let mut grace = Grace::default();
        grace.before_rewrite(Element::BackendSpare(1));
        grace.settle();
        assert!(grace.pending.is_empty());
        assert_eq!(grace.asked.len(), 1);
        let passed = |grace: &Grace| {
            grace
                .background
                .as_ref()
                .unwrap()
                .passed
                .load(Ordering::Acquire)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while passed(&grace) < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(passed(&grace), 1, "the thread waited for readers");
        // The same slot again: its grace period passed, no wait needed.
        grace.before_rewrite(Element::BackendSpare(1));
        assert!(grace.asked.is_empty());
        assert_eq!(grace.pending.len(), 1);
    }

    #[test]
    fn waiting_for_readers_returns() {
        let start = std::time::Instant::now();
        wait_for_readers();
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
