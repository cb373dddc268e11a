//! Scheduling tables built beside an apply: while the apply's own thread
//! writes backends and services (system calls, half of a 10,000-service
//! start), a second thread builds the Maglev tables (the other half). The
//! apply hands each service's table inputs over and takes the tables back
//! as they come, to publish them as before.

use std::collections::VecDeque;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::Scope;

use super::{table, TableInputs};

/// Fewest services an apply builds on a second thread for: a handful of
/// tables (an API edit, a health verdict) cost less than starting it.
const THREAD_FROM: usize = 64;

/// A table to build for the service of that name.
pub(super) struct TableJob {
    pub(super) service: String,
    pub(super) inputs: TableInputs,
}

/// A built table: its entries, the length of its leading backend list
/// (chbl), and what it was built from.
pub(super) struct BuiltTable {
    pub(super) service: String,
    pub(super) inputs: TableInputs,
    pub(super) table: Vec<u32>,
    pub(super) list_len: u16,
}

impl TableJob {
    fn build(self) -> BuiltTable {
        let (table, list_len) = table::scheduling_table(
            self.inputs.scheduler,
            &self.inputs.candidates,
            self.inputs.size,
        );
        BuiltTable {
            service: self.service,
            inputs: self.inputs,
            table,
            list_len,
        }
    }
}

/// Builds tables on a second thread (many services, more than one CPU) or
/// at once on the caller's.
pub(super) enum TableBuilder {
    Inline(VecDeque<BuiltTable>),
    Threaded {
        jobs: Sender<TableJob>,
        built: Receiver<BuiltTable>,
    },
}

impl TableBuilder {
    /// A builder for an apply of `services` services, its thread (if any)
    /// living in `scope`.
    pub(super) fn start<'scope>(scope: &'scope Scope<'scope, '_>, services: usize) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if services < THREAD_FROM || cpus < 2 {
            return TableBuilder::Inline(VecDeque::new());
        }
        let (jobs, inbox) = channel::<TableJob>();
        let (outbox, built) = channel();
        scope.spawn(move || {
            for job in inbox {
                // The apply stopped (an error): nothing more to hand back.
                if outbox.send(job.build()).is_err() {
                    return;
                }
            }
        });
        TableBuilder::Threaded { jobs, built }
    }

    pub(super) fn submit(&mut self, job: TableJob) {
        match self {
            TableBuilder::Inline(done) => done.push_back(job.build()),
            TableBuilder::Threaded { jobs, .. } => {
                // The thread ends only when this sender is dropped.
                let _ = jobs.send(job);
            }
        }
    }

    /// The tables built so far, without waiting.
    pub(super) fn ready(&mut self) -> Vec<BuiltTable> {
        match self {
            TableBuilder::Inline(done) => done.drain(..).collect(),
            TableBuilder::Threaded { built, .. } => built.try_iter().collect(),
        }
    }

    /// Every table still to come, each as soon as it is built.
    pub(super) fn finish(self) -> Box<dyn Iterator<Item = BuiltTable>> {
        match self {
            TableBuilder::Inline(done) => Box::new(done.into_iter()),
            TableBuilder::Threaded { jobs, built } => {
                drop(jobs);
                Box::new(built.into_iter())
            }
        }
    }
}
