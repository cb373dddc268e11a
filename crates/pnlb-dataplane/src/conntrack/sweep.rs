//! Expiring idle connections, and counting what stays.
//!
//! The XDP program stamps `last_seen` (while a flow has packets, every
//! 100 kernel ticks: 0.1-1 s) and moves the TCP state; a sweep removes
//! entries idle for longer than their state's
//! timeout (IPVS's defaults: 900 s established, 120 s closing, 300 s UDP),
//! from both tables. A nat/snat flow's two entries go together, judged by
//! the more recent of the two, so a one-way stream never loses its reply
//! mapping. An ended established TCP snat flow's reply key (SNAT address
//! and port towards one backend) rests in `pnlb_snat_rest` for the
//! service's snat_reuse_after, as the backend may hold it in TIME_WAIT. Entries
//! refreshed between the dump and the delete are left alone. The same walk
//! counts the flows that stay per backend ([`super::census`]) and how full
//! the established table is (for admission). The pass streams the tables
//! and does extra work only for idle entries: it shares two cores with
//! the traffic.
//!
//! A [`Sweeper`] holds handles of its own on the maps it walks and writes,
//! so the daemon runs it on a thread of its own: a pass over a million
//! entries takes a second or more, which the daemon loop (API calls, role
//! changes, the failover watchdog's heartbeat) must not wait for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libbpf_rs::{MapCore, MapFlags, MapHandle};
use pnlb_core::config::Timeouts;

use super::census::Census;
use super::source_census::SourceMaps;
use super::{
    handle, has_flag, is_original, monotonic_ns, peer_key, timeout_for, ConnTables, Table,
};
use crate::abi::{bytes_of, from_bytes, Conn, ConnFlags, FlowKey, TableCounter};
use crate::batch::Resume;
use crate::loader::{Dataplane, DataplaneError};
use crate::skel::LbMaps;

/// What a sweep saw and did.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Entries left in pnlb_conns (established flows, both directions).
    pub established: usize,
    /// Entries left in pnlb_conns_new (flows not yet established).
    pub new: usize,
    /// Entries removed, from both tables.
    pub expired: usize,
    /// The original keys of the flows that ended (failover sync tells the
    /// peers); flows installed from a peer and never seen here are left
    /// out.
    pub ended: Vec<FlowKey>,
}

/// Running totals the sweeps keep, for the eviction estimate; shared by
/// the sweeper and the data plane's statistics.
#[derive(Default)]
pub(crate) struct SweepTally {
    /// Entries sweeps removed from pnlb_conns_new since load.
    pub(crate) new_expired: AtomicU64,
    /// pnlb_conns_new's entries after the last sweep.
    pub(crate) new_live: AtomicU64,
    /// pnlb_conns's entries after the last sweep.
    pub(crate) established_live: AtomicU64,
    /// The eviction estimate last reported (it never goes back).
    pub(crate) evicted: AtomicU64,
}

/// What a sweep reads and writes, by handles of its own.
pub struct Sweeper {
    pub(crate) conns: ConnTables,
    usage: MapHandle,
    table_stats: MapHandle,
    pub(super) backend_conns: MapHandle,
    pub(super) backend_load: MapHandle,
    pub(super) live_copy: MapHandle,
    pub(super) backends: MapHandle,
    pub(super) source_maps: SourceMaps,
    tally: Arc<SweepTally>,
}

impl Sweeper {
    pub(crate) fn open(maps: &LbMaps<'_>, tally: Arc<SweepTally>) -> Result<Self, DataplaneError> {
        Ok(Self {
            conns: ConnTables::open(maps)?,
            usage: handle(&maps.pnlb_conns_usage, "pnlb_conns_usage")?,
            table_stats: handle(&maps.pnlb_table_stats, "pnlb_table_stats")?,
            backend_conns: handle(&maps.pnlb_backend_conns, "pnlb_backend_conns")?,
            backend_load: handle(&maps.pnlb_backend_load, "pnlb_backend_load")?,
            live_copy: handle(&maps.pnlb_live_copy, "pnlb_live_copy")?,
            backends: handle(&maps.pnlb_backends, "pnlb_backends")?,
            source_maps: SourceMaps::open(maps)?,
            tally,
        })
    }
}

/// What one table's walk saw and removed.
#[derive(Default)]
struct TableWalk {
    seen: usize,
    removed: usize,
}

impl TableWalk {
    fn left(&self) -> usize {
        self.seen.saturating_sub(self.removed)
    }
}

impl SweepPass {
    /// About how many entries the pass will walk (to size its steps).
    pub fn expected_entries(&self) -> usize {
        self.expected
    }
}

/// A pass under way ([`Sweeper::begin_pass`], [`Sweeper::step`]).
pub struct SweepPass {
    census: Census,
    /// About how many entries the pass will walk.
    expected: usize,
    /// The admission counter and the new-flow count when the pass began.
    booked_in: u64,
    created: u64,
    /// The table being walked (index into Table::BOTH), and where.
    table: usize,
    resume: Resume,
    walks: [TableWalk; 2],
    report: SweepReport,
}

impl Dataplane {
    /// A sweeper for another thread.
    pub fn sweeper(&self) -> Result<Sweeper, DataplaneError> {
        Sweeper::open(self.maps(), self.tally.clone())
    }

    /// One pass over the connection tables, on this thread.
    pub fn sweep_connections(&self, timeouts: &Timeouts) -> Result<SweepReport, DataplaneError> {
        self.sweeper.sweep_connections(timeouts)
    }

    /// As [`Self::sweep_connections`], with "now" given (for tests).
    pub fn sweep_connections_at(
        &self,
        timeouts: &Timeouts,
        now_ns: u64,
    ) -> Result<SweepReport, DataplaneError> {
        self.sweeper.sweep_connections_at(timeouts, now_ns)
    }
}

impl Sweeper {
    /// One pass over the connection tables, removing what has expired and
    /// counting the rest.
    pub fn sweep_connections(&self, timeouts: &Timeouts) -> Result<SweepReport, DataplaneError> {
        self.sweep_connections_at(timeouts, monotonic_ns())
    }

    /// As [`Self::sweep_connections`], with "now" given (for tests).
    pub fn sweep_connections_at(
        &self,
        timeouts: &Timeouts,
        now_ns: u64,
    ) -> Result<SweepReport, DataplaneError> {
        let mut pass = self.begin_pass()?;
        loop {
            if let Some(report) = self.step(&mut pass, timeouts, now_ns, usize::MAX)? {
                return Ok(report);
            }
        }
    }

    /// How many entries the established table holds at most.
    pub fn established_capacity(&self) -> usize {
        self.conns.map(Table::Established).max_entries() as usize
    }

    /// Starts a pass, to be walked in [`Self::step`]s: the daemon takes a
    /// step every tick, so a pass over a million entries costs a little
    /// each tick instead of a second-long burst on one core.
    pub fn begin_pass(&self) -> Result<SweepPass, DataplaneError> {
        let booked_in = self.usage_slot(0)?;
        // What admission counts in the established table, and what the
        // last pass left in the other.
        let expected = booked_in.wrapping_sub(self.usage_slot(1)?).min(1 << 32)
            + self.tally.new_live.load(Ordering::Relaxed);
        Ok(SweepPass {
            census: Census::begin(self)?,
            expected: expected as usize,
            booked_in,
            created: crate::stats::table_events(&self.table_stats)?
                [TableCounter::PNLB_TC_NEW_ENTRIES.0 as usize],
            table: 0,
            resume: Resume::Start,
            walks: Default::default(),
            report: SweepReport::default(),
        })
    }

    /// Walks on through `pass` for about `budget` entries (whole batches)
    /// at `now_ns`; the report when the pass is done.
    pub fn step(
        &self,
        pass: &mut SweepPass,
        timeouts: &Timeouts,
        now_ns: u64,
        budget: usize,
    ) -> Result<Option<SweepReport>, DataplaneError> {
        let mut left = budget;
        while pass.table < Table::BOTH.len() && left > 0 {
            let table = Table::BOTH[pass.table];
            let resume = std::mem::take(&mut pass.resume);
            let mut entries = crate::batch::entries_from(
                self.conns.map(table),
                crate::batch::SWEEP_BATCH,
                resume,
            );
            let walked = self.sweep_table(table, &mut entries, timeouts, now_ns, pass, left)?;
            left = left.saturating_sub(walked);
            pass.resume = entries.stopped();
            if matches!(pass.resume, Resume::Done) {
                pass.table += 1;
                pass.resume = Resume::Start;
            }
        }
        if pass.table < Table::BOTH.len() {
            return Ok(None);
        }
        self.finish(pass).map(Some)
    }

    /// The end of a pass: counts published, admission and tallies set.
    fn finish(&self, pass: &mut SweepPass) -> Result<SweepReport, DataplaneError> {
        let [established, new] = std::mem::take(&mut pass.walks);
        std::mem::take(&mut pass.census).publish(self)?;
        // Admission reads used = booked_in - usage[1]: make that the entries
        // the walk left, plus whatever the data plane moved in since.
        self.set_usage_slot(1, pass.booked_in.wrapping_sub(established.left() as u64))?;

        let tally = &self.tally;
        tally
            .new_expired
            .fetch_add(new.removed as u64, Ordering::Relaxed);
        tally.new_live.store(new.left() as u64, Ordering::Relaxed);
        tally
            .established_live
            .store(established.left() as u64, Ordering::Relaxed);
        // Entries created before the walk that are neither promoted,
        // removed, expired nor still there were evicted. Counting creations
        // from before the walk and the rest from after it errs low, so the
        // running maximum never counts an eviction that did not happen.
        let events = crate::stats::table_events(&self.table_stats)?;
        let accounted = events[TableCounter::PNLB_TC_PROMOTED.0 as usize]
            + events[TableCounter::PNLB_TC_NEW_REMOVED.0 as usize]
            + tally.new_expired.load(Ordering::Relaxed)
            + tally.new_live.load(Ordering::Relaxed);
        tally
            .evicted
            .fetch_max(pass.created.saturating_sub(accounted), Ordering::Relaxed);
        let mut report = std::mem::take(&mut pass.report);
        report.established = established.left();
        report.new = new.left();
        Ok(report)
    }

    /// Walks `entries` of `table` until the walk ends or, at the end of a
    /// batch, `budget` entries were seen; returns how many were.
    fn sweep_table(
        &self,
        table: Table,
        entries: &mut crate::batch::Entries<'_>,
        timeouts: &Timeouts,
        now_ns: u64,
        pass: &mut SweepPass,
        budget: usize,
    ) -> Result<usize, DataplaneError> {
        let map = self.conns.map(table);
        let map_err = |source| DataplaneError::Map {
            map: table.map_name(),
            source,
        };
        let expired_at = |conn: &Conn, last_seen: u64| {
            now_ns.saturating_sub(last_seen) > timeout_for(conn.state, timeouts).as_nanos() as u64
        };
        let read = |key: &[u8]| -> Result<Option<Conn>, DataplaneError> {
            Ok(map
                .lookup(key, MapFlags::ANY)
                .map_err(map_err)?
                .and_then(|v| from_bytes::<Conn>(&v)))
        };
        let SweepPass {
            census,
            walks,
            report,
            ..
        } = pass;
        let walk = &mut walks[table as usize];
        let mut seen = 0usize;
        // One streaming pass; only entries idle past their timeout cost
        // more than a comparison (a lookup of the other direction, a
        // re-check, the deletes).
        while !(seen >= budget && entries.at_batch_end()) {
            let Some((key, value)) = entries.next_borrowed() else {
                break;
            };
            seen += 1;
            let (Some(conn), Some(flow)) = (from_bytes::<Conn>(value), from_bytes::<FlowKey>(key))
            else {
                continue;
            };
            if !expired_at(&conn, conn.last_seen_ns) {
                if is_original(&conn) {
                    census.count(&conn, &flow);
                }
                continue;
            }
            let translated = has_flag(&conn, ConnFlags::PNLB_CONN_F_NAT);
            let peer = translated.then(|| peer_key(&conn, flow.protocol));
            let peer_conn = match &peer {
                Some(peer) => read(bytes_of(peer))?,
                None => None,
            };
            // A pair is judged once, from its original entry; a reply entry
            // alone (its original evicted from the new-flow table) is
            // judged by itself.
            if !is_original(&conn) && peer_conn.is_some() {
                continue;
            }
            let last_seen = conn
                .last_seen_ns
                .max(peer_conn.map_or(0, |p| p.last_seen_ns));
            // Still idle now? A packet may have arrived since the dump.
            let fresh = read(bytes_of(&flow))?;
            if !expired_at(&conn, last_seen)
                || fresh.is_some_and(|f| !expired_at(&f, f.last_seen_ns.max(last_seen)))
            {
                if is_original(&conn) {
                    census.count(&fresh.unwrap_or(conn), &flow);
                }
                continue;
            }
            if let Some(peer) = &peer {
                if map.delete(bytes_of(peer)).is_ok() {
                    walk.removed += 1;
                }
            }
            if map.delete(bytes_of(&flow)).is_ok() {
                walk.removed += 1;
                // A peer's flow that never reached this node is the peer's
                // to end (it may carry it still).
                if is_original(&conn) && !has_flag(&conn, ConnFlags::PNLB_CONN_F_SYNCED) {
                    report.ended.push(flow);
                }
            }
            // Only a TCP flow that got established can have left a
            // TIME_WAIT on its backend; resting what never did (a SYN
            // flood's leftovers) would only crowd out what must rest.
            if table == Table::Established
                && flow.protocol == libc::IPPROTO_TCP as u8
                && has_flag(&conn, ConnFlags::PNLB_CONN_F_SNAT)
            {
                let reply_key = match &peer {
                    Some(peer) if is_original(&conn) => *peer,
                    _ => flow,
                };
                self.conns.rest_snat_key(&reply_key, last_seen);
            }
        }
        walk.seen += seen;
        report.expired = walks.iter().map(|w| w.removed).sum();
        Ok(seen)
    }

    fn usage_slot(&self, slot: u32) -> Result<u64, DataplaneError> {
        Ok(self
            .usage
            .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_conns_usage",
                source,
            })?
            .and_then(|v| from_bytes::<u64>(&v))
            .unwrap_or(0))
    }

    fn set_usage_slot(&self, slot: u32, value: u64) -> Result<(), DataplaneError> {
        self.usage
            .update(&slot.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_conns_usage",
                source,
            })
    }
}
