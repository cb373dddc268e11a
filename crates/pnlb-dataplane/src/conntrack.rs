//! Expiring idle connections, the userspace half of the connection table.
//!
//! The XDP program stamps `last_seen` (to the second) and moves the TCP
//! state; this sweeper removes entries idle for longer than their state's
//! timeout (IPVS's defaults: 900 s established, 120 s closing, 300 s UDP).
//! A nat/snat flow's two entries go together, judged by the more recent of
//! the two, so a one-way stream never loses its reply mapping; removing the
//! reply entry is what frees an SNAT port. Entries refreshed between the
//! dump and the delete are left alone. The pass streams the table and does
//! extra work only for idle entries: it shares two cores with the traffic.

use std::collections::HashMap;
use std::time::Duration;

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::Timeouts;

use crate::abi::{
    bytes_of, from_bytes, BackendExpired, Conn, ConnDirection, ConnFlags, ConnState, FlowKey,
};
use crate::loader::{Dataplane, DataplaneError};

/// What a sweep saw and did.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Entries in the table before the sweep (both directions counted).
    pub entries: usize,
    /// Entries removed.
    pub expired: usize,
    /// The original keys of the flows that ended (failover sync tells the
    /// peers).
    pub ended: Vec<FlowKey>,
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

impl Dataplane {
    /// The connection-table entry under `key`, if any.
    pub fn lookup_connection(&self, key: &FlowKey) -> Option<Conn> {
        let value = self
            .maps()
            .pnlb_conns
            .lookup(bytes_of(key), MapFlags::ANY)
            .ok()??;
        from_bytes::<Conn>(&value)
    }

    /// Removes every entry (both directions) of flows on backend slot
    /// `backend_id`; their next packets are scheduled afresh. Returns how
    /// many entries went.
    pub fn flush_backend_connections(&self, backend_id: u32) -> Result<usize, DataplaneError> {
        let map = &self.maps().pnlb_conns;
        let map_err = |source| DataplaneError::Map {
            map: "pnlb_conns",
            source,
        };
        let doomed: Vec<Vec<u8>> = map
            .lookup_batch(4096, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_err)?
            .filter(|(_, value)| {
                from_bytes::<Conn>(value).is_some_and(|c| c.backend_id == backend_id)
            })
            .map(|(key, _)| key)
            .collect();
        Ok(doomed.iter().filter(|key| map.delete(key).is_ok()).count())
    }

    /// One pass over the connection table, removing what has expired.
    pub fn sweep_connections(&self, timeouts: &Timeouts) -> Result<SweepReport, DataplaneError> {
        self.sweep_connections_at(timeouts, monotonic_ns())
    }

    /// As [`Self::sweep_connections`], with "now" given (for tests).
    pub fn sweep_connections_at(
        &self,
        timeouts: &Timeouts,
        now_ns: u64,
    ) -> Result<SweepReport, DataplaneError> {
        let map = &self.maps().pnlb_conns;
        let map_err = |source| DataplaneError::Map {
            map: "pnlb_conns",
            source,
        };
        let mut report = SweepReport {
            entries: 0,
            expired: 0,
            ended: Vec::new(),
        };
        let mut ended = Vec::new();
        let expired_at = |conn: &Conn, last_seen: u64| {
            now_ns.saturating_sub(last_seen) > timeout_for(conn.state, timeouts).as_nanos() as u64
        };
        let read = |key: &[u8]| -> Result<Option<Conn>, DataplaneError> {
            Ok(map
                .lookup(key, MapFlags::ANY)
                .map_err(map_err)?
                .and_then(|v| from_bytes::<Conn>(&v)))
        };
        // One streaming pass; only entries idle past their timeout cost
        // more than a comparison (a lookup of the other direction, a
        // re-check, the deletes).
        for (key, value) in map
            .lookup_batch(4096, MapFlags::ANY, MapFlags::ANY)
            .map_err(map_err)?
        {
            report.entries += 1;
            let (Some(conn), Some(flow)) =
                (from_bytes::<Conn>(&value), from_bytes::<FlowKey>(&key))
            else {
                continue;
            };
            if !expired_at(&conn, conn.last_seen_ns) {
                continue;
            }
            let translated = conn.flags & ConnFlags::PNLB_CONN_F_NAT.0 as u8 != 0;
            let peer = translated.then(|| peer_key(&conn, flow.protocol));
            let peer_conn = match &peer {
                Some(peer) => read(bytes_of(peer))?,
                None => None,
            };
            // A pair is judged once, from its original entry; a reply entry
            // alone (its original evicted by the LRU) is judged by itself.
            if conn.direction == ConnDirection::PNLB_DIR_REPLY.0 as u8 && peer_conn.is_some() {
                continue;
            }
            let last_seen = conn
                .last_seen_ns
                .max(peer_conn.map_or(0, |p| p.last_seen_ns));
            if !expired_at(&conn, last_seen) {
                continue;
            }
            // Still idle now? A packet may have arrived since the dump.
            if read(&key)?.is_some_and(|f| !expired_at(&f, f.last_seen_ns.max(last_seen))) {
                continue;
            }
            if let Some(peer) = &peer {
                if map.delete(bytes_of(peer)).is_ok() {
                    report.expired += 1;
                }
            }
            if map.delete(&key).is_ok() {
                report.expired += 1;
                if conn.direction == ConnDirection::PNLB_DIR_ORIGINAL.0 as u8 {
                    report.ended.push(flow);
                }
                ended.push(conn);
            }
        }
        self.count_ended(&ended)?;
        Ok(report)
    }

    /// Books flows that ended (one entry each) in pnlb_backend_expired, the
    /// userspace half of the backends' connection counts. Only this
    /// process writes that map, so read-modify-write loses nothing.
    fn count_ended(&self, ended: &[Conn]) -> Result<(), DataplaneError> {
        let map = &self.maps().pnlb_backend_expired;
        let map_err = |source| DataplaneError::Map {
            map: "pnlb_backend_expired",
            source,
        };
        let mut per_backend: HashMap<u32, (u64, u64)> = HashMap::new();
        for conn in ended {
            let entry = per_backend.entry(conn.backend_id).or_default();
            entry.0 += 1;
            if u32::from(conn.state) == ConnState::PNLB_CT_ESTABLISHED.0 {
                entry.1 += 1;
            }
        }
        for (id, (expired, expired_active)) in per_backend {
            let key = id.to_ne_bytes();
            let mut value = map
                .lookup(&key, MapFlags::ANY)
                .map_err(map_err)?
                .and_then(|v| from_bytes::<BackendExpired>(&v))
                .unwrap_or_default();
            value.expired += expired;
            value.expired_active += expired_active;
            map.update(&key, bytes_of(&value), MapFlags::ANY)
                .map_err(map_err)?;
        }
        Ok(())
    }
}
