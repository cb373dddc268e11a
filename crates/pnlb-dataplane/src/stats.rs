//! Reading the per-CPU counters: each CPU counts alone, we add them up.

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, from_bytes, BackendStats, Plain, ServiceStats};
use crate::loader::{Dataplane, DataplaneError};

/// Per-service totals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Indexed by [`Reason`]; see [`reason_name`].
    pub drops: [u64; abi::REASON_COUNT],
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
    ];
    NAMES.get(reason).copied().unwrap_or("unknown")
}

fn per_cpu<T: Plain>(
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

impl Dataplane {
    pub fn service_counters(&self, service_id: u32) -> Result<ServiceCounters, DataplaneError> {
        let mut total = ServiceCounters::default();
        for cpu in per_cpu::<ServiceStats>(
            &self.maps().pnlb_service_stats,
            service_id,
            "pnlb_service_stats",
        )? {
            total.packets += cpu.packets;
            total.bytes += cpu.bytes;
            total.new_flows += cpu.new_flows;
            total.reply_packets += cpu.reply_packets;
            total.reply_bytes += cpu.reply_bytes;
            for (sum, n) in total.drops.iter_mut().zip(cpu.drops) {
                *sum += n;
            }
        }
        Ok(total)
    }

    pub fn backend_counters(&self, backend_id: u32) -> Result<BackendCounters, DataplaneError> {
        let mut total = BackendCounters::default();
        for cpu in per_cpu::<BackendStats>(
            &self.maps().pnlb_backend_stats,
            backend_id,
            "pnlb_backend_stats",
        )? {
            total.packets += cpu.packets;
            total.bytes += cpu.bytes;
            total.new_flows += cpu.new_flows;
            total.reply_packets += cpu.reply_packets;
            total.reply_bytes += cpu.reply_bytes;
        }
        Ok(total)
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

    /// A backend's (active, inactive) connections (IPVS ActiveConn/InActConn).
    pub fn backend_load(&self, backend_id: u32) -> Result<(u64, u64), DataplaneError> {
        let key = backend_id.to_ne_bytes();
        let read = |map: &dyn MapCore, name: &'static str| {
            map.lookup(&key, MapFlags::ANY)
                .map_err(|source| DataplaneError::Map { map: name, source })
        };
        let conns = read(&self.maps().pnlb_backend_conns, "pnlb_backend_conns")?
            .and_then(|v| from_bytes::<abi::BackendConns>(&v))
            .unwrap_or_default();
        let expired = read(&self.maps().pnlb_backend_expired, "pnlb_backend_expired")?
            .and_then(|v| from_bytes::<abi::BackendExpired>(&v))
            .unwrap_or_default();
        let active = conns
            .became_active
            .saturating_sub(conns.stopped_active)
            .saturating_sub(expired.expired_active);
        let live = conns.opened.saturating_sub(expired.expired).max(active);
        Ok((active, live - active))
    }

    /// Number of entries in the connection table (walks it: not for hot loops).
    pub fn connection_count(&self) -> usize {
        self.maps().pnlb_conns.keys().count()
    }
}

/// The index of a reason by its name (see [`reason_name`]).
pub fn reason_by_name(name: &str) -> Option<usize> {
    (0..abi::REASON_COUNT).find(|&i| reason_name(i) == name)
}
