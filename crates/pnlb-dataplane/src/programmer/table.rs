//! Step 2 of applying a service: its scheduling table, built here and
//! swapped in whole.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use pnlb_core::config::Scheduler;
use pnlb_core::maglev::{self, MaglevBackend};
use pnlb_core::sched;

use super::map_err;
use crate::abi::{self, TableSlot};
use crate::loader::{Dataplane, DataplaneError};

/// The table the data plane indexes for new flows: Maglev for the hashing
/// schedulers (by flow hash), the interleaved wrr cycle (by a per-service
/// cursor), or the list of backends that may take flows (rr's cursor, and
/// the least-load schedulers' scan). Entries are backend ids.
///
/// chbl gets both: the backend list (its length is returned, 0 otherwise)
/// followed by the Maglev table.
pub(super) fn scheduling_table(
    scheduler: Scheduler,
    candidates: &[MaglevBackend],
) -> (Vec<u32>, u16) {
    let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
    let ids = |indexes: Vec<usize>| -> Vec<u32> {
        indexes.into_iter().map(|i| candidates[i].id).collect()
    };
    match scheduler {
        Scheduler::Maglev | Scheduler::Sh | Scheduler::Dh => {
            (maglev::build(candidates, abi::TABLE_SIZE as usize), 0)
        }
        // The least-load family scans this list, reading live counts.
        Scheduler::Rr
        | Scheduler::Lc
        | Scheduler::Wlc
        | Scheduler::Sed
        | Scheduler::Nq
        | Scheduler::P2c => (ids(sched::rr::table(&weights)), 0),
        Scheduler::Wrr => (ids(sched::wrr::cycle(&weights)), 0),
        Scheduler::Chbl { .. } => {
            let hash = maglev::build(candidates, abi::TABLE_SIZE as usize);
            if hash.is_empty() {
                return (Vec::new(), 0);
            }
            let mut table = ids(sched::rr::table(&weights));
            let list_len = table.len() as u16;
            table.extend(hash);
            (table, list_len)
        }
    }
}

/// The published form: the header (enum pnlb_table_slot) with the
/// lengths, then the table. A packet reads lengths and slots from one map,
/// so it never pairs a new table with an old length (a shrunk table read
/// past its end would name another service's backend).
pub(super) fn published_form(table: &[u32], list_len: u16) -> Vec<u32> {
    let mut header = [0u32; abi::TABLE_HEADER as usize];
    header[TableSlot::PNLB_TABLE_LEN_SLOT.0 as usize] = table.len() as u32 - u32::from(list_len);
    header[TableSlot::PNLB_TABLE_LIST_SLOT.0 as usize] = u32::from(list_len);
    header.iter().chain(table).copied().collect()
}

/// Builds a new inner table map and swaps it into the service's slot in one
/// update: packets see the old table or the new one, never a mix.
pub(super) fn publish_table(
    dataplane: &Dataplane,
    service_id: u32,
    table: &[u32],
    list_len: u16,
) -> Result<(), DataplaneError> {
    if table.is_empty() {
        return delete_table(dataplane, service_id);
    }
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let inner = MapHandle::create(
        MapType::Array,
        Some("pnlb_table"),
        4,
        4,
        abi::TABLE_CAPACITY,
        &opts,
    )
    .map_err(map_err("pnlb_table"))?;
    let slots = published_form(table, list_len);
    let keys: Vec<u8> = (0..slots.len() as u32).flat_map(u32::to_ne_bytes).collect();
    let values: Vec<u8> = slots.iter().flat_map(|id| id.to_ne_bytes()).collect();
    inner
        .update_batch(
            &keys,
            &values,
            slots.len() as u32,
            MapFlags::ANY,
            MapFlags::ANY,
        )
        .map_err(map_err("pnlb_table"))?;
    let fd = inner.as_fd().as_raw_fd();
    dataplane
        .maps()
        .pnlb_tables
        .update(&service_id.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
        .map_err(map_err("pnlb_tables"))
    // `inner` closes here; the outer map holds the table now.
}

pub(super) fn delete_table(dataplane: &Dataplane, service_id: u32) -> Result<(), DataplaneError> {
    match dataplane
        .maps()
        .pnlb_tables
        .delete(&service_id.to_ne_bytes())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(DataplaneError::Map {
            map: "pnlb_tables",
            source: err,
        }),
    }
}

/// What a service's published table holds, read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTable {
    /// The header's length of the scheduling part.
    pub len: u32,
    /// The header's chbl list length.
    pub list_len: u32,
    /// Every slot after the header, up to the map's capacity.
    pub slots: Vec<u32>,
}

impl Dataplane {
    /// The table packets of service slot `service_id` read now, if any.
    pub fn published_table(
        &self,
        service_id: u32,
    ) -> Result<Option<PublishedTable>, DataplaneError> {
        let Some(fd) = self
            .maps()
            .pnlb_tables
            .lookup(&service_id.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("pnlb_tables"))?
        else {
            return Ok(None);
        };
        let Some(id) = crate::abi::from_bytes::<u32>(&fd) else {
            return Ok(None);
        };
        // A map-in-map lookup from userspace gives the inner map's id.
        let inner = MapHandle::from_map_id(id).map_err(map_err("pnlb_table"))?;
        let mut words = Vec::new();
        for (key, value) in crate::batch::entries(&inner, 8192) {
            if let (Some(k), Some(v)) = (
                crate::abi::from_bytes::<u32>(&key),
                crate::abi::from_bytes::<u32>(&value),
            ) {
                words.push((k, v));
            }
        }
        words.sort_unstable();
        let value = |slot: TableSlot| words.get(slot.0 as usize).map_or(0, |w| w.1);
        Ok(Some(PublishedTable {
            len: value(TableSlot::PNLB_TABLE_LEN_SLOT),
            list_len: value(TableSlot::PNLB_TABLE_LIST_SLOT),
            slots: words
                .iter()
                .skip(abi::TABLE_HEADER as usize)
                .map(|w| w.1)
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_the_lengths_of_its_own_table() {
        assert_eq!(published_form(&[7, 8, 9], 0), vec![3, 0, 7, 8, 9]);
        // chbl: two listed backends, then a Maglev part of three slots.
        assert_eq!(
            published_form(&[1, 2, 1, 2, 1], 2),
            vec![3, 2, 1, 2, 1, 2, 1]
        );
    }
}
