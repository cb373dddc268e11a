//! The two connection maps, and the SNAT keys resting after their flows,
//! as a handle of their own (duplicated file descriptors), which threads
//! other than the loader's can own: failover sync installs and lists flows
//! from its own thread while the daemon loop runs
//! (crates/pnlb/src/ha/syncer.rs).

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapImpl};

use super::{monotonic_ns, Table};
use crate::abi::{bytes_of, from_bytes, Conn, FlowKey};
use crate::loader::{Dataplane, DataplaneError};
use crate::skel::LbMaps;

impl Dataplane {
    /// The connection tables (flows in and out for failover sync).
    pub fn conns(&self) -> &ConnTables {
        &self.sweeper.conns
    }

    /// A handle on the connection tables for another thread.
    pub fn conn_tables(&self) -> Result<ConnTables, DataplaneError> {
        ConnTables::open(self.maps())
    }
}

pub struct ConnTables {
    established: MapHandle,
    new: MapHandle,
    snat_rest: MapHandle,
}

impl ConnTables {
    pub(crate) fn open(maps: &LbMaps<'_>) -> Result<Self, DataplaneError> {
        Ok(Self {
            established: handle(&maps.pnlb_conns, Table::Established.map_name())?,
            new: handle(&maps.pnlb_conns_new, Table::New.map_name())?,
            snat_rest: handle(&maps.pnlb_snat_rest, "pnlb_snat_rest")?,
        })
    }

    /// An ended snat flow's reply key (SNAT address and port towards one
    /// backend) rests from `ended_ns` (monotonic) for its service's
    /// snat_reuse_after: the backend may hold it in TIME_WAIT, and a new
    /// flow on it would be answered as the old one (PAWS) and retried.
    pub(crate) fn rest_snat_key(&self, reply_key: &FlowKey, ended_ns: u64) {
        // Best effort: the rest map is an LRU, a failure only shortens a rest.
        let _ = self
            .snat_rest
            .update(bytes_of(reply_key), &ended_ns.to_ne_bytes(), MapFlags::ANY);
    }

    /// The reply keys put to rest less than `within_ns` ago, each with how
    /// long it has rested (ns): what a peer that may take this node's
    /// traffic over must not hand out either (the failover dump carries
    /// them, crates/pnlb/src/ha/transfer.rs). Ages, not stamps: each
    /// node's monotonic clock is its own.
    pub fn snat_rests(&self, within_ns: u64) -> Vec<(FlowKey, u64)> {
        let now = monotonic_ns();
        crate::batch::entries(&self.snat_rest, crate::batch::HASH_BATCH)
            .filter_map(|(key, value)| {
                let key = from_bytes::<FlowKey>(&key)?;
                let rested = now.saturating_sub(from_bytes::<u64>(&value)?);
                (rested < within_ns).then_some((key, rested))
            })
            .collect()
    }

    /// A reply key that has rested `rested_ns` on a peer rests here for
    /// the rest of its time.
    pub fn go_on_resting(&self, reply_key: &FlowKey, rested_ns: u64) {
        self.rest_snat_key(reply_key, monotonic_ns().saturating_sub(rested_ns));
    }

    /// When `reply_key` was put to rest, if it rests (or rested).
    pub fn snat_rest_of(&self, reply_key: &FlowKey) -> Option<u64> {
        let value = self
            .snat_rest
            .lookup(bytes_of(reply_key), MapFlags::ANY)
            .ok()??;
        from_bytes::<u64>(&value)
    }

    pub(crate) fn map(&self, table: Table) -> &MapHandle {
        match table {
            Table::Established => &self.established,
            Table::New => &self.new,
        }
    }

    /// The entry under `key` in `table`, if any.
    pub fn lookup_in(&self, table: Table, key: &FlowKey) -> Option<Conn> {
        let value = self
            .map(table)
            .lookup(bytes_of(key), MapFlags::ANY)
            .ok()??;
        from_bytes::<Conn>(&value)
    }

    /// The entry under `key` and the table that holds it.
    pub fn find(&self, key: &FlowKey) -> Option<(Table, Conn)> {
        Table::BOTH
            .into_iter()
            .find_map(|table| Some((table, self.lookup_in(table, key)?)))
    }
}

/// A handle of its own on one of the data plane's maps.
pub(crate) fn handle<T: std::fmt::Debug>(
    map: &MapImpl<'_, T>,
    name: &'static str,
) -> Result<MapHandle, DataplaneError> {
    MapHandle::try_from(map).map_err(|source| DataplaneError::Map { map: name, source })
}
