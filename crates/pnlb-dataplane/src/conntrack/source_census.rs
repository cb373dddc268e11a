//! Open flows per (service, source) for `source_max_flows`, from what the
//! tables hold.
//!
//! The data plane counts the flows of a limited service it sees open and
//! close per source (`pnlb_source_flows`); flows that end unseen (idle,
//! evicted, synced away) would stay counted for good. So each sweep counts
//! the open flows per source of every limited service and writes the count
//! to `pnlb_source_census` with the data plane's counters as they were when
//! the walk began (bpf/lib/source_flows.h adds what happened since). A
//! source with no open flow left loses both entries, so the maps hold only
//! sources with flows. A flow opened while the walk runs may be counted
//! twice until the next sweep (the count errs high, never for longer); one
//! opened between the last read of a source's counters and their removal
//! is missed until then (it errs low by that one).

use std::collections::{HashMap, HashSet};

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::handle;
use crate::abi::{
    bytes_of, from_bytes, Conn, ConnState, FlowKey, Service, SourceCensus, SourceFlows, SourceKey,
};
use crate::loader::DataplaneError;
use crate::skel::LbMaps;

/// The maps a source census reads and writes, by handles of its own.
pub(super) struct SourceMaps {
    services: MapHandle,
    seen: MapHandle,
    census: MapHandle,
}

impl SourceMaps {
    pub(super) fn open(maps: &LbMaps<'_>) -> Result<Self, DataplaneError> {
        Ok(Self {
            services: handle(&maps.pnlb_services, "pnlb_services")?,
            seen: handle(&maps.pnlb_source_flows, "pnlb_source_flows")?,
            census: handle(&maps.pnlb_source_census, "pnlb_source_census")?,
        })
    }
}

/// A (service id, source address) pair, hashable.
type Source = (u32, [u32; 4]);

fn source_of(key: &SourceKey) -> Source {
    (key.service_id, key.addr.words)
}

fn key_of(source: Source) -> SourceKey {
    let mut key = SourceKey {
        service_id: source.0,
        ..Default::default()
    };
    key.addr.words = source.1;
    key
}

/// A census under way.
#[derive(Default)]
pub(super) struct SourceTally {
    /// Services with source_max_flows.
    limited: HashSet<u32>,
    /// Open flows per source key.
    counts: HashMap<Source, u64>,
    /// The data plane's counters per source key when the walk began.
    seen_at_begin: HashMap<Source, SourceFlows>,
}

/// States a flow holds a place in its source's count in (as
/// pnlb_state_is_open).
fn is_open(conn: &Conn) -> bool {
    [
        ConnState::PNLB_CT_SYN_SENT,
        ConnState::PNLB_CT_ESTABLISHED,
        ConnState::PNLB_CT_UDP,
    ]
    .contains(&ConnState(u32::from(conn.state)))
}

fn entries<T: crate::abi::Plain>(map: &MapHandle) -> impl Iterator<Item = (Source, T)> + '_ {
    crate::batch::entries(map, crate::batch::HASH_BATCH).filter_map(|(key, value)| {
        Some((
            source_of(&from_bytes::<SourceKey>(&key)?),
            from_bytes::<T>(&value)?,
        ))
    })
}

impl SourceTally {
    /// Starts a census: which services are limited, and the data plane's
    /// counters before the walk.
    pub(super) fn begin(maps: &SourceMaps) -> Self {
        let limited = crate::batch::entries(&maps.services, 1024)
            .filter_map(|(_, value)| from_bytes::<Service>(&value))
            .filter(|service| service.source_max_flows > 0)
            .map(|service| service.id)
            .collect();
        Self {
            limited,
            counts: HashMap::new(),
            seen_at_begin: entries(&maps.seen).collect(),
        }
    }

    /// Counts one flow by its original entry (keyed `flow`).
    pub(super) fn count(&mut self, conn: &Conn, flow: &FlowKey) {
        if !self.limited.contains(&conn.service_id) || !is_open(conn) {
            return;
        }
        *self
            .counts
            .entry((conn.service_id, flow.src.words))
            .or_default() += 1;
    }

    /// Writes every counted source's census; a source the census found
    /// no open flow of loses its entries.
    pub(super) fn publish(self, maps: &SourceMaps) -> Result<(), DataplaneError> {
        let map_err = |map: &'static str| move |source| DataplaneError::Map { map, source };
        let mut keys: HashSet<Source> = self.counts.keys().copied().collect();
        keys.extend(self.seen_at_begin.keys().copied());
        keys.extend(entries::<SourceCensus>(&maps.census).map(|(key, _)| key));
        for source in keys {
            let key = key_of(source);
            let flows = self.counts.get(&source).copied().unwrap_or(0);
            let base = self.seen_at_begin.get(&source).copied().unwrap_or_default();
            let census = SourceCensus {
                flows,
                opened_base: base.opened,
                closed_base: base.closed,
            };
            if flows == 0 {
                let seen_now = maps
                    .seen
                    .lookup(bytes_of(&key), MapFlags::ANY)
                    .map_err(map_err("pnlb_source_flows"))?
                    .and_then(|value| from_bytes::<SourceFlows>(&value));
                // Nothing opened or closed since the walk began: the source
                // has nothing open, and needs no entry.
                if seen_now.is_none_or(|now| (now.opened, now.closed) == (base.opened, base.closed))
                {
                    let _ = maps.seen.delete(bytes_of(&key));
                    let _ = maps.census.delete(bytes_of(&key));
                    continue;
                }
            }
            maps.census
                .update(bytes_of(&key), bytes_of(&census), MapFlags::ANY)
                .map_err(map_err("pnlb_source_census"))?;
        }
        Ok(())
    }
}
