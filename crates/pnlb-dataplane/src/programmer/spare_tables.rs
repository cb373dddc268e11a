//! Spare tables: closed, full-size table maps put into the map of maps
//! ahead of need, at the service slots that new services take next.
//!
//! Putting a table into the map of maps waits for an RCU grace period
//! (the kernel waits for running programs after each update of a map of
//! maps; ~10-20 ms here), which was most of a service added through the
//! API. A new service whose slot already holds a closed table opens it in
//! place instead (its slots written, then its length: see
//! [`super::table`]), and a worker thread publishes the next spare while
//! the daemon goes on.
//!
//! The one rule that keeps this safe: no table of a slot is touched while
//! a spare for that slot is on its way ([`SpareTables::settle`]), so a
//! spare never lands over a table a service published. A spare is held
//! ([`HeldTables`]) only once it is in.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::held_tables::HeldTables;
use super::table::table_map;
use crate::abi;
use crate::loader::Dataplane;

/// How many slots hold a spare: API edits come one at a time, each a few
/// milliseconds, so two cover the grace period the next one takes to
/// publish. Each is a full-size table (~0.5 MiB of kernel memory).
pub const SPARE_TABLES: u32 = 2;

#[derive(Default)]
pub(super) struct SpareTables {
    /// Spares on their way: slot -> the worker's ticket, and the table.
    pending: BTreeMap<u32, (u64, MapHandle)>,
    worker: Option<Worker>,
    /// No worker could be started, or a spare could not be put in: none is
    /// tried again (each try would make a full-size table for nothing).
    given_up: bool,
}

/// Publishes spares into the data plane's map of maps, in order.
struct Worker {
    jobs: Option<Sender<(u64, u32, MapHandle)>>,
    issued: u64,
    done: Arc<(Mutex<Done>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// What the worker has done.
#[derive(Default)]
struct Done {
    /// Every ticket up to this one is through.
    through: u64,
    /// Those whose update failed (the slot is then left as it was).
    failed: Vec<u64>,
}

impl Worker {
    fn start(outer: MapHandle) -> Option<Self> {
        let (jobs, queue) = channel::<(u64, u32, MapHandle)>();
        let done = Arc::new((Mutex::new(Done::default()), Condvar::new()));
        let published = Arc::clone(&done);
        let thread = std::thread::Builder::new()
            .name("pnlb-spares".into())
            .spawn(move || {
                // Ends when the programmer drops its sender.
                while let Ok((ticket, slot, table)) = queue.recv() {
                    let fd = table.as_fd().as_raw_fd();
                    let result =
                        outer.update(&slot.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY);
                    let (lock, changed) = &*published;
                    if let Ok(mut done) = lock.lock() {
                        done.through = ticket;
                        if result.is_err() {
                            done.failed.push(ticket);
                        }
                    }
                    changed.notify_all();
                }
            })
            .ok()?;
        Some(Self {
            jobs: Some(jobs),
            issued: 0,
            done,
            thread: Some(thread),
        })
    }

    fn is_through(&self, ticket: u64) -> bool {
        self.done
            .0
            .lock()
            .map_or(true, |done| done.through >= ticket)
    }

    /// Waits until `ticket` is through; whether its spare went in.
    fn went_in(&self, ticket: u64) -> bool {
        let (lock, changed) = &*self.done;
        let Ok(mut done) = lock.lock() else {
            return false;
        };
        while done.through < ticket {
            match changed.wait(done) {
                Ok(next) => done = next,
                Err(_) => return false,
            }
        }
        let failed = done.failed.len();
        done.failed.retain(|t| *t != ticket);
        done.failed.len() == failed
    }
}

impl Drop for Worker {
    /// Waits for the spares on their way: a programmer that comes after
    /// this one must not have one land over a table it published.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl SpareTables {
    /// Call before reading or writing slot `slot`'s table: returns once no
    /// spare for it is on its way (a spare that went in is then held).
    pub(super) fn settle(&mut self, slot: u32, held: &mut HeldTables) {
        let Some((ticket, table)) = self.pending.remove(&slot) else {
            return;
        };
        if self.worker.as_ref().is_some_and(|w| w.went_in(ticket)) {
            held.hold(slot, table);
        } else {
            self.given_up = true;
        }
    }

    /// Puts spares at the first [`SPARE_TABLES`] slots from `next_fresh`
    /// (below `limit`) that hold no table of this process, in the
    /// background (one there from an earlier process is replaced: no
    /// service names those slots). Spares only save a wait: one that
    /// cannot be made is not made.
    pub(super) fn restock(
        &mut self,
        dataplane: &Dataplane,
        held: &mut HeldTables,
        next_fresh: u32,
        limit: u32,
    ) {
        let through: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, (ticket, _))| self.worker.as_ref().is_some_and(|w| w.is_through(*ticket)))
            .map(|(slot, _)| *slot)
            .collect();
        for slot in through {
            self.settle(slot, held);
        }
        let wanted = next_fresh..next_fresh.saturating_add(SPARE_TABLES).min(limit);
        let missing: Vec<u32> = wanted
            .filter(|slot| held.get(*slot).is_none() && !self.pending.contains_key(slot))
            .collect();
        if missing.is_empty() || !held.has_room() || self.given_up {
            return;
        }
        if self.worker.is_none() {
            let outer = MapHandle::try_from(&dataplane.maps().pnlb_tables);
            self.worker = outer.ok().and_then(Worker::start);
        }
        // No thread: new services swap their tables in.
        let Some(worker) = self.worker.as_mut() else {
            self.given_up = true;
            return;
        };
        for slot in missing {
            let Some(jobs) = &worker.jobs else {
                return;
            };
            let Ok(table) = table_map(abi::TABLE_CAPACITY) else {
                return;
            };
            let Ok(for_worker) = MapHandle::try_from(&table) else {
                return;
            };
            worker.issued += 1;
            if jobs.send((worker.issued, slot, for_worker)).is_err() {
                return;
            }
            self.pending.insert(slot, (worker.issued, table));
        }
    }
}
