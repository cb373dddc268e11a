//! Reading the per-CPU counters: each CPU counts alone, we add them up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, from_bytes, BackendStats, Plain, ServiceStats};
use crate::loader::{Dataplane, DataplaneError};

/// Per-service totals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Indexed by [`Reason`]; see [`reason_name`].
    pub drops: [u64; abi::REASON_COUNT],
}

impl Default for ServiceCounters {
    fn default() -> Self {
        Self {
            packets: 0,
            bytes: 0,
            new_flows: 0,
            reply_packets: 0,
            reply_bytes: 0,
            drops: [0; abi::REASON_COUNT],
        }
    }
}

/// The connection tables: how full, and what happened to entries. Fill is
/// as of the last sweep; events are running totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// pnlb_conns: established flows (nat/snat take two entries).
    pub established_entries: u64,
    pub established_capacity: u64,
    /// pnlb_conns_new: flows not yet established.
    pub new_entries_now: u64,
    pub new_capacity: u64,
    /// Entries created in the new-flow table.
    pub created: u64,
    /// Entries moved to the established table.
    pub promoted: u64,
    /// Flows that could not move: the established table was full.
    pub promote_full: u64,
    /// Flows rescheduled after on_backend_down = "reset".
    pub reset: u64,
    /// Half-open entries the new-flow table evicted: what left it neither
    /// promoted, removed nor expired, as of the last sweep (a lower bound).
    /// Established flows are never evicted.
    pub evicted: u64,
}

/// Per-backend totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// Short, stable names for the reasons (used in logs and metrics).
pub fn reason_name(reason: usize) -> &'static str {
    const NAMES: [&str; abi::REASON_COUNT] = [
        "pass_not_ip",
        "pass_not_service",
        "pass_vip_no_service",
        "pass_vip_other_proto",
        "drop_truncated_eth",
        "drop_truncated_ip",
        "drop_bad_ip_header",
        "drop_ipv4_options",
        "drop_fragment",
        "drop_ipv6_ext_header",
        "drop_truncated_l4",
        "drop_no_backend",
        "drop_backend_gone",
        "drop_unsupported_method",
        "drop_snat_exhausted",
        "pass_no_neigh",
        "drop_no_route",
        "drop_backends_full",
        "tx_icmp_too_big",
        "drop_too_big",
        "drop_encap_failed",
        "drop_no_flow",
        "drop_table_full",
        "drop_rate_limited",
        "drop_foreign_backend",
        "drop_flow_conflict",
        "fwd_stateless",
        "fwd_rehashed",
        "tx_icmp_time_exceeded",
        "drop_icmp_rate_limited",
        "fwd_fragment",
        "pass_qinq",
        "drop_vlan_failed",
        "drop_unattended",
        "drop_access_denied",
        "drop_source_rate_limited",
        "drop_source_flows_limited",
        "fwd_handed_on",
        "pass_other_host",
    ];
    NAMES.get(reason).copied().unwrap_or("unknown")
}

/// The connection tables' event counters (pnlb_table_stats), summed over CPUs.
pub(crate) fn table_events(
    map: &dyn MapCore,
) -> Result<[u64; abi::TABLE_COUNTERS], DataplaneError> {
    let mut events = [0u64; abi::TABLE_COUNTERS];
    for (counter, total) in events.iter_mut().enumerate() {
        *total = per_cpu::<u64>(map, counter as u32, "pnlb_table_stats")?
            .iter()
            .sum();
    }
    Ok(events)
}

pub(crate) fn per_cpu<T: Plain>(
    map: &dyn MapCore,
    key: u32,
    name: &'static str,
) -> Result<Vec<T>, DataplaneError> {
    let values = map
        .lookup_percpu(&key.to_ne_bytes(), MapFlags::ANY)
        .map_err(|source| DataplaneError::Map { map: name, source })?
        .unwrap_or_default();
    Ok(values
        .iter()
        .filter_map(|bytes| from_bytes::<T>(bytes))
        .collect())
}

fn service_total(cpus: &[ServiceStats]) -> ServiceCounters {
    let mut total = ServiceCounters::default();
    for cpu in cpus {
        total.packets += cpu.packets;
        total.bytes += cpu.bytes;
        total.new_flows += cpu.new_flows;
        total.reply_packets += cpu.reply_packets;
        total.reply_bytes += cpu.reply_bytes;
        for (sum, n) in total.drops.iter_mut().zip(cpu.drops) {
            *sum += n;
        }
    }
    total
}

fn backend_total(cpus: &[BackendStats]) -> BackendCounters {
    let mut total = BackendCounters::default();
    for cpu in cpus {
        total.packets += cpu.packets;
        total.bytes += cpu.bytes;
        total.new_flows += cpu.new_flows;
        total.reply_packets += cpu.reply_packets;
        total.reply_bytes += cpu.reply_bytes;
    }
    total
}

/// Services' and backends' counters and connection counts, read at once:
/// every slot by a batched read of each array (the status of 10,000
/// services with 100,000 backends read slot by slot took 300,000 system
/// calls and over two seconds), or a few slots one by one.
#[derive(Default)]
pub struct CounterSnapshot {
    services: HashMap<u32, ServiceCounters>,
    backends: HashMap<u32, BackendCounters>,
    loads: HashMap<u32, (u64, u64)>,
}

impl CounterSnapshot {
    pub fn service(&self, service_id: u32) -> ServiceCounters {
        self.services.get(&service_id).cloned().unwrap_or_default()
    }

    pub fn backend(&self, backend_id: u32) -> BackendCounters {
        self.backends.get(&backend_id).cloned().unwrap_or_default()
    }

    /// (active, inactive) connections, as [`Dataplane::backend_load`].
    pub fn backend_load(&self, backend_id: u32) -> (u64, u64) {
        self.loads.get(&backend_id).copied().unwrap_or_default()
    }
}

/// Slot id -> value, for a whole array read in order.
fn by_slot<T>(values: impl IntoIterator<Item = T>) -> HashMap<u32, T> {
    (0u32..).zip(values).collect()
}

impl Dataplane {
    pub fn service_counters(&self, service_id: u32) -> Result<ServiceCounters, DataplaneError> {
        Ok(service_total(&per_cpu::<ServiceStats>(
            &self.maps().pnlb_service_stats,
            service_id,
            "pnlb_service_stats",
        )?))
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<BackendCounters, DataplaneError> {
        Ok(backend_total(&per_cpu::<BackendStats>(
            &self.maps().pnlb_backend_stats,
            backend_id,
            "pnlb_backend_stats",
        )?))
    }

    /// Every service slot's counters, by slot, in one batched read (one
    /// system call for all, where a read per service took ~10,000 at
    /// 10,000 services).
    pub fn every_service_counters(&self) -> Vec<ServiceCounters> {
        crate::batch::per_cpu_array_values(&self.maps().pnlb_service_stats)
            .iter()
            .map(|cpus| service_total(cpus))
            .collect()
    }

    /// Every slot's counters, read now ([`CounterSnapshot`]).
    pub fn counter_snapshot(&self) -> CounterSnapshot {
        let maps = self.maps();
        CounterSnapshot {
            services: by_slot(self.every_service_counters()),
            backends: by_slot(
                crate::batch::per_cpu_array_values(&maps.pnlb_backend_stats)
                    .iter()
                    .map(|cpus| backend_total(cpus)),
            ),
            loads: by_slot(self.backend_loads()),
        }
    }

    /// The counters of one service and its backends' slots, read now (a
    /// slot that cannot be read reads as zero).
    pub fn counter_snapshot_of(&self, service_id: u32, backend_ids: &[u32]) -> CounterSnapshot {
        let mut snapshot = CounterSnapshot::default();
        if let Ok(counters) = self.service_counters(service_id) {
            snapshot.services.insert(service_id, counters);
        }
        for &id in backend_ids {
            if let Ok(counters) = self.backend_counters(id) {
                snapshot.backends.insert(id, counters);
            }
            if let Ok(load) = self.backend_load(id) {
                snapshot.loads.insert(id, load);
            }
        }
        snapshot
    }

    /// Every pass/drop reason with its total, in reason order.
    pub fn reason_counters(&self) -> Result<[u64; abi::REASON_COUNT], DataplaneError> {
        let mut totals = [0u64; abi::REASON_COUNT];
        for (reason, total) in totals.iter_mut().enumerate() {
            let cpus = per_cpu::<u64>(
                &self.maps().pnlb_reason_stats,
                reason as u32,
                "pnlb_reason_stats",
            )?;
            *total = cpus.iter().sum();
        }
        Ok(totals)
    }

    /// Running totals of the connection tables' events, summed over CPUs.
    pub(crate) fn table_events(&self) -> Result<[u64; abi::TABLE_COUNTERS], DataplaneError> {
        table_events(&self.maps().pnlb_table_stats)
    }

    /// The connection tables' fill and events (docs/conntrack.md).
    pub fn table_stats(&self) -> Result<TableStats, DataplaneError> {
        let events = self.table_events()?;
        let event = |c: abi::TableCounter| events[c.0 as usize];
        let sizes = self.table_sizes();
        let tally = &self.tally;
        Ok(TableStats {
            established_entries: tally.established_live.load(Ordering::Relaxed),
            established_capacity: u64::from(sizes.established),
            new_entries_now: tally.new_live.load(Ordering::Relaxed),
            new_capacity: u64::from(sizes.new),
            created: event(abi::TableCounter::PNLB_TC_NEW_ENTRIES),
            promoted: event(abi::TableCounter::PNLB_TC_PROMOTED),
            promote_full: event(abi::TableCounter::PNLB_TC_PROMOTE_FULL),
            reset: event(abi::TableCounter::PNLB_TC_RESET),
            evicted: tally.evicted.load(Ordering::Relaxed),
        })
    }

    /// Entries in (established, new-flow) table now (walks them: not for
    /// hot loops; [`Self::table_stats`] has the last sweep's count).
    pub fn table_entries(&self) -> (u64, u64) {
        (
            self.maps().pnlb_conns.keys().count() as u64,
            self.maps().pnlb_conns_new.keys().count() as u64,
        )
    }

    /// Number of entries in both connection tables (walks them).
    pub fn connection_count(&self) -> usize {
        let (established, new) = self.table_entries();
        (established + new) as usize
    }
}

/// The index of a reason by its name (see [`reason_name`]).
pub fn reason_by_name(name: &str) -> Option<usize> {
    (0..abi::REASON_COUNT).find(|&i| reason_name(i) == name)
}
