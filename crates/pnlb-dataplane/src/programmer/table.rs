//! Step 2 of applying a service: its scheduling table, built here and
//! swapped in whole, or written over the published one when it has the
//! same shape.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use pnlb_core::config::Scheduler;
use pnlb_core::maglev::{self, MaglevBackend};
use pnlb_core::sched;

use super::held_tables::{open_file_limit, HeldTables};
use super::map_err;
use crate::abi::{self, TableSlot};
use crate::loader::{Dataplane, DataplaneError};
use crate::mapped::{Mapped, MappingArena};

/// The table the data plane indexes for new flows: Maglev for the hashing
/// schedulers (by flow hash), the interleaved wrr cycle (by a per-service
/// cursor), or the list of backends that may take flows (rr's cursor, and
/// the least-load schedulers' scan). Entries are backend ids.
///
/// chbl gets both: the backend list (its length is returned, 0 otherwise)
/// followed by the Maglev table. Maglev tables have `size` slots.
pub(super) fn scheduling_table(
    scheduler: Scheduler,
    candidates: &[MaglevBackend],
    size: u32,
) -> (Vec<u32>, u16) {
    let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
    let ids = |indexes: Vec<usize>| -> Vec<u32> {
        indexes.into_iter().map(|i| candidates[i].id).collect()
    };
    match scheduler {
        Scheduler::Maglev | Scheduler::Sh | Scheduler::Dh => {
            (maglev::build(candidates, size as usize), 0)
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
            let hash = maglev::build(candidates, size as usize);
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

/// Most tables swapped in by one batch: each holds a file descriptor until
/// it is in the outer map, so an eighth of what the process may open (the
/// tables kept afterwards take up to five eighths: [`HeldTables`]), at
/// least 64, at most 8,192 (a few batches, each a grace period, for the
/// largest configs).
pub(super) fn tables_per_swap() -> usize {
    (open_file_limit() / 8).clamp(64, 8192)
}

/// Tables built during an apply, swapped in together. Each update of a
/// map of maps waits for every running program to finish (the kernel's
/// RCU grace period, ~10 ms here), so an apply swaps all its tables in one
/// batch and waits once, not once per service.
///
/// A table of the same shape as the one published (the same header: a
/// Maglev table after a weight, a backend or its health changed) is not
/// swapped but written over the published one, slot by slot: no grace
/// period, so one backend going down at 10,000 services leaves its table
/// in well under a millisecond. Each slot is one aligned 4-byte store, so
/// a packet reads each slot as it was or as it is to be, and every id in
/// either is a backend slot that is written (removed backends keep theirs
/// while flows use them). A mix of the two for the microseconds of the
/// write is what a new flow arriving either side of a swap would see.
#[derive(Default)]
pub(super) struct PendingTables {
    service_ids: Vec<u32>,
    tables: Vec<MapHandle>,
    /// Services left without a backend.
    emptied: Vec<u32>,
    /// Their published tables (by service), closed in place: a length of
    /// 0 reads as no table (pnlb_table_view). Taking a table out of the map
    /// of maps waits for a grace period, and can only be done one at a
    /// time (no batch delete there): 10,000 services losing their last
    /// backend at once took minutes, the daemon deaf to the API and to
    /// SIGINT meanwhile. (One this process does not hold is swapped for a
    /// closed one in the batch instead.)
    closed: Vec<u32>,
    /// (service, published form) written over its held table in place.
    rewrites: Vec<(u32, Vec<u32>)>,
    /// (service, published form): its held table, closed, opened in place.
    reopens: Vec<(u32, Vec<u32>)>,
    /// Where the new tables are mapped to be written, unmapped at once
    /// after the swap.
    mappings: MappingArena,
}

impl PendingTables {
    /// Builds a new inner table map for `service_id`, to be swapped into
    /// its slot by [`Self::publish`]: packets see the old table or the
    /// new one, never a mix of lengths. `published`: whether the service
    /// has a table in the data plane now; one of the same shape is
    /// written over instead, at publish.
    pub(super) fn add(
        &mut self,
        dataplane: &Dataplane,
        held: &HeldTables,
        service_id: u32,
        table: &[u32],
        list_len: u16,
        published: bool,
    ) -> Result<(), DataplaneError> {
        if table.is_empty() {
            self.emptied.push(service_id);
            if held.get(service_id).is_some() {
                self.closed.push(service_id);
            } else if published_id(dataplane, service_id)?.is_some() {
                // Not ours to write: a closed one (length 0) swapped in.
                self.swap(service_id, &[0; abi::TABLE_HEADER as usize])?;
            }
            return Ok(());
        }
        let mut slots = published_form(table, list_len);
        slots.truncate(abi::TABLE_CAPACITY as usize);
        if let Some(map) = held.get(service_id) {
            if published && same_shape(map, &slots)? {
                self.rewrites.push((service_id, slots));
                return Ok(());
            }
            // Closed (a spare, a removed service's, or this one's while it
            // had no backend) and long enough: opened in place, no swap.
            if !published && is_closed(map)? && map.max_entries() as usize >= slots.len() {
                self.reopens.push((service_id, slots));
                return Ok(());
            }
        }
        self.swap(service_id, &slots)
    }

    /// A new table map holding `slots`, to be swapped in at `service_id`.
    fn swap(&mut self, service_id: u32, slots: &[u32]) -> Result<(), DataplaneError> {
        let inner = table_map(slots.len() as u32)?;
        // No program reads it yet, and it starts zeroed: plain stores.
        let written = self
            .mappings
            .with_mapping(inner.as_fd(), slots.len(), |mapped| {
                for (i, word) in slots.iter().enumerate() {
                    mapped.u32_at(i).store(*word, Ordering::Relaxed);
                }
            });
        written.map_err(|err| DataplaneError::Map {
            map: "pnlb_table",
            source: libbpf_rs::Error::from(err),
        })?;
        self.service_ids.push(service_id);
        self.tables.push(inner);
        Ok(())
    }

    /// Tables waiting to be swapped in.
    pub(super) fn len(&self) -> usize {
        self.tables.len()
    }

    /// The services whose table is pending (added, emptied or rewritten).
    pub(super) fn service_ids(&self) -> Vec<u32> {
        self.service_ids
            .iter()
            .chain(&self.emptied)
            .chain(self.rewrites.iter().map(|(id, _)| id))
            .chain(self.reopens.iter().map(|(id, _)| id))
            .copied()
            .collect()
    }

    /// Swaps every added table into its service's slot (one batch update:
    /// one wait) and keeps it in `held`; writes the rewritten and reopened
    /// ones in place, and closes the emptied ones.
    pub(super) fn publish(
        self,
        dataplane: &Dataplane,
        held: &mut HeldTables,
    ) -> Result<(), DataplaneError> {
        let rewrites = self
            .rewrites
            .iter()
            .map(|(id, slots)| (id, slots, Write::InPlace));
        let reopens = self
            .reopens
            .iter()
            .map(|(id, slots)| (id, slots, Write::Reopen));
        for (service_id, slots, how) in rewrites.chain(reopens) {
            if let Some(map) = held.get(*service_id) {
                write_mapped(map, slots, how).map_err(|err| DataplaneError::Map {
                    map: "pnlb_table",
                    source: libbpf_rs::Error::from(err),
                })?;
            }
        }
        if !self.tables.is_empty() {
            let keys: Vec<u8> = self
                .service_ids
                .iter()
                .flat_map(|id| id.to_ne_bytes())
                .collect();
            let fds: Vec<u8> = self
                .tables
                .iter()
                .flat_map(|table| table.as_fd().as_raw_fd().to_ne_bytes())
                .collect();
            let outer = &dataplane.maps().pnlb_tables;
            // Without batch updates of maps of maps: one at a time (a
            // wait each).
            let swapped = crate::batch::update_all(outer, &keys, &fds, self.tables.len());
            if let Err(err) = swapped {
                // Some may be in: which table each slot holds is not known.
                for service_id in &self.service_ids {
                    held.forget(*service_id);
                }
                return Err(map_err("pnlb_tables")(err));
            }
            for (service_id, table) in self.service_ids.iter().zip(self.tables) {
                held.hold(*service_id, table);
            }
        }
        for service_id in &self.closed {
            if let Some(map) = held.get(*service_id) {
                close_in_place(map).map_err(|err| DataplaneError::Map {
                    map: "pnlb_table",
                    source: libbpf_rs::Error::from(err),
                })?;
            }
        }
        Ok(())
    }
}

/// Whether a published table `map` has the shape of `slots` (the
/// published form of the next one): room for them, the same header (so
/// the same lengths). Otherwise it must be swapped.
fn same_shape(map: &MapHandle, slots: &[u32]) -> Result<bool, DataplaneError> {
    if (map.max_entries() as usize) < slots.len() {
        return Ok(false);
    }
    let header = header_of(map)?;
    Ok(header
        .iter()
        .zip(&slots[..abi::TABLE_HEADER as usize])
        .all(|(old, new)| *old == Some(*new)))
}

/// Whether packets read no table from `map` (its length is 0).
fn is_closed(map: &MapHandle) -> Result<bool, DataplaneError> {
    let len = header_of(map)?[TableSlot::PNLB_TABLE_LEN_SLOT.0 as usize];
    Ok(len.is_none_or(|len| len == 0))
}

/// A table map's header words, as published.
fn header_of(map: &MapHandle) -> Result<Vec<Option<u32>>, DataplaneError> {
    (0..abi::TABLE_HEADER)
        .map(|slot| {
            Ok(map
                .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("pnlb_table"))?
                .and_then(|v| crate::abi::from_bytes::<u32>(&v)))
        })
        .collect()
}

/// A new table map of `slots` u32 slots, all 0: as the program's template
/// declares it (BPF_F_INNER_MAP lets each be its own length), written
/// through a memory mapping (BPF_F_MMAPABLE: one copy, where an update
/// per slot cost more than building the table).
pub(super) fn table_map(slots: u32) -> Result<MapHandle, DataplaneError> {
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        map_flags: libbpf_rs::libbpf_sys::BPF_F_INNER_MAP | libbpf_rs::libbpf_sys::BPF_F_MMAPABLE,
        ..Default::default()
    };
    MapHandle::create(MapType::Array, Some("pnlb_table"), 4, 4, slots, &opts)
        .map_err(map_err("pnlb_table"))
}

/// The id of the table map published for service slot `service_id` (a
/// map-in-map lookup from userspace gives the inner map's id).
fn published_id(dataplane: &Dataplane, service_id: u32) -> Result<Option<u32>, DataplaneError> {
    Ok(dataplane
        .maps()
        .pnlb_tables
        .lookup(&service_id.to_ne_bytes(), MapFlags::ANY)
        .map_err(map_err("pnlb_tables"))?
        .and_then(|value| crate::abi::from_bytes::<u32>(&value)))
}

/// How a table's slots are written through its mapping.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    /// The published table: each slot one atomic store, header untouched
    /// (it is the same).
    InPlace,
    /// A published table that is closed: every slot but the length, then
    /// the length (a release store), so a packet that reads the length
    /// reads the slots written before it.
    Reopen,
}

/// Sets a published table's length to 0 (one atomic store through its
/// mapping): packets find no backend in it from then on, as with no table.
fn close_in_place(map: &MapHandle) -> std::io::Result<()> {
    let mapped = Mapped::new(map.as_fd(), abi::TABLE_HEADER as usize)?;
    mapped
        .u32_at(TableSlot::PNLB_TABLE_LEN_SLOT.0 as usize)
        .store(0, Ordering::Relaxed);
    Ok(())
}

/// Writes `words` into a BPF_F_MMAPABLE array of u32 values, one each.
fn write_mapped(map: &MapHandle, words: &[u32], how: Write) -> std::io::Result<()> {
    let mapped = Mapped::new(map.as_fd(), words.len())?;
    match how {
        Write::InPlace => {
            for (i, word) in words.iter().enumerate().skip(abi::TABLE_HEADER as usize) {
                let slot = mapped.u32_at(i);
                if slot.load(Ordering::Relaxed) != *word {
                    slot.store(*word, Ordering::Relaxed);
                }
            }
        }
        Write::Reopen => {
            let len_slot = TableSlot::PNLB_TABLE_LEN_SLOT.0 as usize;
            for (i, word) in words.iter().enumerate().filter(|(i, _)| *i != len_slot) {
                mapped.u32_at(i).store(*word, Ordering::Relaxed);
            }
            mapped
                .u32_at(len_slot)
                .store(words[len_slot], Ordering::Release);
        }
    }
    Ok(())
}

/// A removed service's table, closed in place (length 0: no table to
/// packets) rather than deleted from the map of maps, which waits for a
/// grace period (~10 ms, most of a service's removal at 10,000 services).
/// No entry names its slot any more; the slot's next service opens it
/// again in place if it is long enough, or swaps in its own. A table this
/// process does not hold is left as it is: nothing reaches it.
pub(super) fn close_table(held: &HeldTables, service_id: u32) -> Result<(), DataplaneError> {
    let Some(map) = held.get(service_id) else {
        return Ok(());
    };
    close_in_place(map).map_err(|err| DataplaneError::Map {
        map: "pnlb_table",
        source: libbpf_rs::Error::from(err),
    })
}

/// What a service's published table holds, read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedTable {
    /// The table map's id: a swap publishes another map, a rewrite in
    /// place keeps it.
    pub map_id: u32,
    /// The header's length of the scheduling part.
    pub len: u32,
    /// The header's chbl list length.
    pub list_len: u32,
    /// The slots after the header that packets read (list_len + len).
    pub slots: Vec<u32>,
    /// How many slots the map has room for after the header (a map opened
    /// in place may have room for more than it holds).
    pub capacity: u32,
}

impl Dataplane {
    /// The id of the table map in service slot `service_id`, open or
    /// closed (a spare, or a removed service's), if there is one.
    pub fn table_map_id(&self, service_id: u32) -> Result<Option<u32>, DataplaneError> {
        published_id(self, service_id)
    }

    /// The table packets of service slot `service_id` read now, if any.
    pub fn published_table(
        &self,
        service_id: u32,
    ) -> Result<Option<PublishedTable>, DataplaneError> {
        // By id, which needs CAP_SYS_ADMIN: for tests and inspection.
        let Some(id) = published_id(self, service_id)? else {
            return Ok(None);
        };
        let inner = MapHandle::from_map_id(id).map_err(map_err("pnlb_table"))?;
        let len_slot = TableSlot::PNLB_TABLE_LEN_SLOT.0;
        // Closed (its service has no backend): packets read no table.
        let closed = inner
            .lookup(&len_slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("pnlb_table"))?
            .and_then(|v| crate::abi::from_bytes::<u32>(&v))
            .is_none_or(|len| len == 0);
        if closed {
            return Ok(None);
        }
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
        let (len, list_len) = (
            value(TableSlot::PNLB_TABLE_LEN_SLOT),
            value(TableSlot::PNLB_TABLE_LIST_SLOT),
        );
        Ok(Some(PublishedTable {
            map_id: id,
            len,
            list_len,
            capacity: inner.max_entries().saturating_sub(abi::TABLE_HEADER),
            slots: words
                .iter()
                .skip(abi::TABLE_HEADER as usize)
                .take((len + list_len) as usize)
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
