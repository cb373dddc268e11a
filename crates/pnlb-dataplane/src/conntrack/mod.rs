//! The userspace half of the connection table (docs/conntrack.md).
//!
//! The XDP program creates entries, moves them from the new-flow table
//! (`pnlb_conns_new`, an LRU) to the established table (`pnlb_conns`,
//! never evicted) and tracks TCP state. Userspace expires idle entries
//! ([`sweep`]), counts what the tables hold per backend ([`census`]) and
//! per source of a service with `source_max_flows` ([`source_census`]), and
//! marks a dead backend's flows for reset.

mod census;
mod source_census;
mod sweep;
mod tables;

use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::Timeouts;

use crate::abi::{bytes_of, from_bytes, Conn, ConnDirection, ConnFlags, ConnState, FlowKey};
use crate::loader::{Dataplane, DataplaneError};

pub(crate) use sweep::SweepTally;
pub use sweep::{SweepPass, SweepReport, Sweeper};
pub(crate) use tables::handle;
pub use tables::ConnTables;

/// The two connection maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `pnlb_conns`: established flows; full means new flows are refused.
    Established,
    /// `pnlb_conns_new`: flows not yet established; full means the oldest
    /// half-open flow is evicted.
    New,
}

impl Table {
    pub const BOTH: [Table; 2] = [Table::Established, Table::New];

    pub fn map_name(self) -> &'static str {
        match self {
            Table::Established => "pnlb_conns",
            Table::New => "pnlb_conns_new",
        }
    }
}

/// The kernel's monotonic clock, which bpf_ktime_get_ns() reads.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The idle timeout of an entry in `state`.
pub fn timeout_for(state: u8, timeouts: &Timeouts) -> Duration {
    match ConnState(u32::from(state)) {
        ConnState::PNLB_CT_ESTABLISHED => timeouts.tcp,
        ConnState::PNLB_CT_FIN_WAIT => timeouts.tcp_fin,
        ConnState::PNLB_CT_CLOSE => timeouts.tcp_close,
        ConnState::PNLB_CT_UDP => timeouts.udp,
        _ => timeouts.tcp_syn,
    }
}

/// The key of the other direction's entry (see pnlb_peer_key in conntrack.h).
pub fn peer_key(conn: &Conn, protocol: u8) -> FlowKey {
    FlowKey {
        src: conn.rewrite_dst,
        dst: conn.rewrite_src,
        src_port: conn.rewrite_dport,
        dst_port: conn.rewrite_sport,
        protocol,
        _pad: [0; 3],
    }
}

pub(crate) fn has_flag(conn: &Conn, flag: ConnFlags) -> bool {
    conn.flags & flag.0 as u8 != 0
}

pub(crate) fn is_original(conn: &Conn) -> bool {
    conn.direction == ConnDirection::PNLB_DIR_ORIGINAL.0 as u8
}

/// Counted active (IPVS ActiveConn); every other state is inactive.
pub(crate) fn is_established(conn: &Conn) -> bool {
    u32::from(conn.state) == ConnState::PNLB_CT_ESTABLISHED.0
}

impl Dataplane {
    pub(crate) fn conn_map(&self, table: Table) -> &dyn MapCore {
        self.sweeper.conns.map(table)
    }

    /// The entry under `key` in `table`, if any.
    pub fn lookup_in(&self, table: Table, key: &FlowKey) -> Option<Conn> {
        self.sweeper.conns.lookup_in(table, key)
    }

    /// The entry under `key` in whichever table holds it.
    pub fn lookup_connection(&self, key: &FlowKey) -> Option<Conn> {
        self.find_connection(key).map(|(_, conn)| conn)
    }

    /// The entry under `key` and the table that holds it.
    pub fn find_connection(&self, key: &FlowKey) -> Option<(Table, Conn)> {
        self.sweeper.conns.find(key)
    }

    /// Removes the one entry under `key` from `table`, as the new-flow
    /// table's LRU evicts entries one at a time (tests and tools).
    pub fn forget_entry(&self, table: Table, key: &FlowKey) -> bool {
        self.conn_map(table).delete(bytes_of(key)).is_ok()
    }

    /// on_backend_down = "reset": marks the flows on backend slot
    /// `backend_id` so that each one's next packet goes to a live backend,
    /// which resets it (a mid-flow packet is otherwise never given a new
    /// backend). Returns how many flows were marked.
    pub fn mark_backend_reset(&self, backend_id: u32) -> Result<usize, DataplaneError> {
        let mut marked = 0;
        for table in Table::BOTH {
            let map = self.conn_map(table);
            let doomed: Vec<(Vec<u8>, Conn)> = crate::batch::entries(map, crate::batch::HASH_BATCH)
                .filter_map(|(key, value)| Some((key, from_bytes::<Conn>(&value)?)))
                .filter(|(_, conn)| conn.backend_id == backend_id && is_original(conn))
                .collect();
            for (key, mut conn) in doomed {
                conn.flags |= ConnFlags::PNLB_CONN_F_RESET.0 as u8;
                // BPF_EXIST: a flow that ended meanwhile stays ended.
                if map.update(&key, bytes_of(&conn), MapFlags::EXIST).is_ok() {
                    marked += 1;
                }
            }
        }
        Ok(marked)
    }
}
