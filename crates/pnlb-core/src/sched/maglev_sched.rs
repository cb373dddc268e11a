//! Maglev as a scheduler: the flow hash indexes the weighted Maglev table
//! ([`crate::maglev`]); the same table the data plane holds.

use super::{BackendLoad, FlowInput, Scheduler};
use crate::maglev::{self, MaglevBackend};

pub struct TableHash {
    table: Vec<u32>,
}

impl TableHash {
    /// `keys[i]` identifies backend i (address and port) for the permutation.
    pub fn new(weights: &[u32], keys: &[Vec<u8>], size: usize) -> Self {
        let backends: Vec<MaglevBackend> = weights
            .iter()
            .zip(keys)
            .enumerate()
            .map(|(i, (&weight, key))| MaglevBackend {
                id: i as u32,
                weight,
                key: key.clone(),
            })
            .collect();
        Self {
            table: maglev::build(&backends, size),
        }
    }

    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// The backend owning the slot `hash` lands in.
    pub fn owner(&self, hash: u32) -> Option<usize> {
        (!self.table.is_empty()).then(|| self.table[(hash as usize) % self.table.len()] as usize)
    }
}

impl Scheduler for TableHash {
    fn pick(&mut self, backends: &[BackendLoad], flow: FlowInput) -> Option<usize> {
        self.owner(flow.hash)
            .filter(|&i| backends.get(i).is_some_and(BackendLoad::available))
    }
}
