//! Connection counts per backend (IPVS ActiveConn / InActConn) from what
//! the tables hold.
//!
//! The data plane counts what it sees (flows opened, moves into and out of
//! ESTABLISHED) in `pnlb_backend_conns`; that alone drifts for good, since
//! it never sees an entry leave (expiry, eviction, a reset, a synced flow).
//! So each sweep counts the tables' flows per (backend, generation) and
//! writes the count to `pnlb_backend_load`, with the data plane's counters
//! as they were when the walk began: the data plane then adds only what
//! happened since. A flow that changes while the walk runs may be counted
//! twice until the next sweep; nothing is off for longer.

use std::collections::HashMap;

use libbpf_rs::{MapCore, MapFlags};

use super::is_established;
use super::source_census::SourceTally;
use super::sweep::Sweeper;
use crate::abi::{
    self, bytes_of, from_bytes, BackendConns, BackendFlags, BackendLoad, Conn, FlowKey,
};
use crate::loader::{Dataplane, DataplaneError};

/// Flows per (backend slot, generation): (active, inactive); and per
/// source of the services with source_max_flows.
#[derive(Default)]
pub(super) struct Census {
    counts: HashMap<(u32, u32), (u64, u64)>,
    /// The data plane's counters per slot when the walk began.
    bases: Vec<BackendConns>,
    sources: SourceTally,
}

impl Census {
    /// Starts a census: takes the data plane's counters first, so that
    /// every flow it opens from now on is either in the walk or after the
    /// base.
    pub(super) fn begin(sweeper: &Sweeper) -> Result<Self, DataplaneError> {
        let slots = sweeper
            .backend_conns
            .info()
            .map_or(0, |info| info.info.max_entries);
        let mut bases = vec![BackendConns::default(); slots as usize];
        for (key, value) in crate::batch::entries(&sweeper.backend_conns, 4096) {
            let (Some(id), Some(conns)) =
                (from_bytes::<u32>(&key), from_bytes::<BackendConns>(&value))
            else {
                continue;
            };
            if let Some(base) = bases.get_mut(id as usize) {
                *base = conns;
            }
        }
        Ok(Self {
            counts: HashMap::new(),
            bases,
            sources: SourceTally::begin(&sweeper.source_maps),
        })
    }

    /// Counts one flow, by its original entry (keyed `flow`).
    pub(super) fn count(&mut self, conn: &Conn, flow: &FlowKey) {
        self.sources.count(conn, flow);
        let entry = self
            .counts
            .entry((conn.backend_id, conn.backend_generation))
            .or_default();
        if is_established(conn) {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Writes every slot's count: flows of the slot's current occupant
    /// (its generation); flows of an earlier occupant are not its load.
    pub(super) fn publish(self, sweeper: &Sweeper) -> Result<(), DataplaneError> {
        self.sources.publish(&sweeper.source_maps)?;
        let generations = live_generations(sweeper)?;
        let mut keys = Vec::with_capacity(self.bases.len() * 4);
        let mut values = Vec::with_capacity(self.bases.len() * size_of::<BackendLoad>());
        for (id, base) in self.bases.iter().enumerate() {
            let id = id as u32;
            let (active, inactive) = generations
                .get(&id)
                .and_then(|generation| self.counts.get(&(id, *generation)))
                .copied()
                .unwrap_or((0, 0));
            let load = BackendLoad {
                active,
                inactive,
                opened_base: base.opened,
                became_base: base.became_active,
                stopped_base: base.stopped_active,
            };
            keys.extend_from_slice(&id.to_ne_bytes());
            values.extend_from_slice(bytes_of(&load));
        }
        sweeper
            .backend_load
            .update_batch(
                &keys,
                &values,
                self.bases.len() as u32,
                MapFlags::ANY,
                MapFlags::ANY,
            )
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_backend_load",
                source,
            })
    }
}

/// Slot id -> generation of every present backend, from the live copies.
fn live_generations(sweeper: &Sweeper) -> Result<HashMap<u32, u32>, DataplaneError> {
    let copies: HashMap<u32, u32> = crate::batch::entries(&sweeper.live_copy, 4096)
        .filter_map(|(key, value)| Some((from_bytes::<u32>(&key)?, from_bytes::<u32>(&value)?)))
        .collect();
    let present = BackendFlags::PNLB_BACKEND_F_PRESENT.0 as u8;
    Ok(crate::batch::entries(&sweeper.backends, 4096)
        .filter_map(|(key, value)| {
            let index = from_bytes::<u32>(&key)?;
            let backend = from_bytes::<abi::Backend>(&value)?;
            let id = index / 2;
            (copies.get(&id).copied().unwrap_or(0) & 1 == index & 1 && backend.flags & present != 0)
                .then_some((id, backend.generation))
        })
        .collect())
}

impl Dataplane {
    /// A backend's (active, inactive) connections (IPVS ActiveConn /
    /// InActConn): the last census plus what the data plane saw since,
    /// the sum the least-load schedulers read.
    pub fn backend_load(&self, backend_id: u32) -> Result<(u64, u64), DataplaneError> {
        let key = backend_id.to_ne_bytes();
        let read = |map: &dyn MapCore, name: &'static str| {
            map.lookup(&key, MapFlags::ANY)
                .map_err(|source| DataplaneError::Map { map: name, source })
        };
        let conns = read(&self.maps().pnlb_backend_conns, "pnlb_backend_conns")?
            .and_then(|v| from_bytes::<BackendConns>(&v))
            .unwrap_or_default();
        let load = read(&self.maps().pnlb_backend_load, "pnlb_backend_load")?
            .and_then(|v| from_bytes::<BackendLoad>(&v))
            .unwrap_or_default();
        Ok(combine(&load, &conns))
    }

    /// Every backend slot's (active, inactive), by slot id: two batched
    /// reads, for the status of every backend at once.
    pub(crate) fn backend_loads(&self) -> Vec<(u64, u64)> {
        let conns: Vec<BackendConns> = crate::batch::array_values(&self.maps().pnlb_backend_conns);
        let loads: Vec<BackendLoad> = crate::batch::array_values(&self.maps().pnlb_backend_load);
        conns
            .iter()
            .zip(&loads)
            .map(|(conns, load)| combine(load, conns))
            .collect()
    }
}

/// The data plane's arithmetic (bpf/lib/load.h), wrapping and clamped alike.
fn combine(load: &BackendLoad, conns: &BackendConns) -> (u64, u64) {
    let delta = |now: u64, base: u64| now.wrapping_sub(base) as i64;
    let became = delta(conns.became_active, load.became_base);
    let stopped = delta(conns.stopped_active, load.stopped_base);
    let opened = delta(conns.opened, load.opened_base);
    let active = load.active as i64 + became - stopped;
    let inactive = load.inactive as i64 + opened - became + stopped;
    (active.max(0) as u64, inactive.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_the_census_plus_what_happened_since() {
        let load = BackendLoad {
            active: 3,
            inactive: 2,
            opened_base: 100,
            became_base: 50,
            stopped_base: 40,
        };
        // Since the census: 4 opened, 2 of them established, 1 closed.
        let conns = BackendConns {
            opened: 104,
            became_active: 52,
            stopped_active: 41,
        };
        assert_eq!(combine(&load, &conns), (4, 5));
        // A slot zeroed after the census: never below zero.
        assert_eq!(combine(&load, &BackendConns::default()), (0, 0));
    }
}
