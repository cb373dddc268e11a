//! Step 4 of applying a service: the entry packets find by VIP, written
//! last, once everything it points at is in place.

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::{HashKey, Method, NewFlowRate, Scheduler, Service as ServiceConfig};

use super::{map_err, ServiceSlot};
use crate::abi::{self, bytes_of};
use crate::grace::Grace;
use crate::loader::{Dataplane, DataplaneError};

/// The service's map value.
pub(super) fn service_value(id: u32, config: &ServiceConfig) -> abi::Service {
    let (snat_count, snat_port_min, snat_port_count, snat_reuse_s) = match &config.snat {
        Some(snat) => (
            snat.addresses.len() as u8,
            snat.port_min,
            (snat.ports()).min(u32::from(u16::MAX)) as u16,
            snat.reuse_after.as_secs().min(u64::from(u16::MAX)) as u16,
        ),
        None => (0, 0, 0, 0),
    };
    let gcra = |rate: Option<NewFlowRate>| match rate {
        Some(rate) => (
            1_000_000_000u32.div_ceil(rate.per_second.max(1)),
            rate.burst,
        ),
        None => (0, 0),
    };
    let (rate_interval_ns, rate_burst) = gcra(config.new_flow_rate);
    let (source_interval_ns, source_burst) = gcra(config.source_new_flow_rate);
    abi::Service {
        id,
        method: method(config.method).0 as u8,
        scheduler: scheduler(config.scheduler).0 as u8,
        hash_key: match config.hash_key {
            HashKey::FiveTuple => abi::HashKey::PNLB_HASH_5TUPLE.0 as u8,
            HashKey::Source => abi::HashKey::PNLB_HASH_SOURCE.0 as u8,
            HashKey::Destination => abi::HashKey::PNLB_HASH_DESTINATION.0 as u8,
        },
        snat_count,
        snat_port_min,
        snat_port_count,
        persistence_s: config
            .persistence
            .map_or(0, |p| p.timeout.as_secs().max(1) as u32),
        // IPv4 addresses sit in the last 32 bits of the mapped form.
        persistence_prefix: config.persistence.map_or(0, |p| {
            if config.vip.is_ipv4() {
                96 + p.prefix_len
            } else {
                p.prefix_len
            }
        }),
        flags: match (forwards_statelessly(config), reproducible(config.scheduler)) {
            (true, _) => abi::ServiceFlags::PNLB_SVC_F_STATELESS.0 as u8,
            (false, true) => abi::ServiceFlags::PNLB_SVC_F_REHASH.0 as u8,
            (false, false) => 0,
        } | access_flags(&config.access),
        snat_reuse_s,
        chbl_epsilon_pct: match config.scheduler {
            Scheduler::Chbl { epsilon } => (epsilon * 100.0).round() as u32,
            _ => 0,
        },
        rate_interval_ns,
        rate_burst,
        source_interval_ns,
        source_burst,
        source_max_flows: config.source_max_flows.unwrap_or(0),
    }
}

/// Access rules: looked up at all when there are any; with allow rules, a
/// source none matches is denied.
fn access_flags(access: &pnlb_core::config::Access) -> u8 {
    let mut flags = 0;
    if !access.is_empty() {
        flags |= abi::ServiceFlags::PNLB_SVC_F_ACCESS.0 as u8;
    }
    if !access.allow.is_empty() {
        flags |= abi::ServiceFlags::PNLB_SVC_F_ALLOWLIST.0 as u8;
    }
    flags
}

/// dr/tun with a hashing scheduler: a packet of a flow the tables do not
/// hold goes, by hash, where the flow went unless the backends changed
/// (as on every node of an ECMP group, and after a restart), without
/// state. nat and snat with a hashing scheduler re-create the flow's
/// entries by hash instead (their translation is state); every other
/// service would give such a packet a fresh backend, which resets it, so
/// it is dropped.
pub fn forwards_statelessly(config: &ServiceConfig) -> bool {
    matches!(config.method, Method::Dr | Method::Tun) && reproducible(config.scheduler)
}

/// A scheduler whose choice any node can make again from the packet
/// alone (chbl also hashes, but weighs in the backends' load).
fn reproducible(scheduler: Scheduler) -> bool {
    matches!(scheduler, Scheduler::Maglev | Scheduler::Sh | Scheduler::Dh)
}

fn method(method: Method) -> abi::Method {
    match method {
        Method::Dr => abi::Method::PNLB_METHOD_DR,
        Method::Tun => abi::Method::PNLB_METHOD_TUN,
        Method::Nat => abi::Method::PNLB_METHOD_NAT,
        Method::Snat => abi::Method::PNLB_METHOD_SNAT,
    }
}

fn scheduler(scheduler: Scheduler) -> abi::SchedulerKind {
    match scheduler {
        Scheduler::Maglev => abi::SchedulerKind::PNLB_SCHED_MAGLEV,
        Scheduler::Rr => abi::SchedulerKind::PNLB_SCHED_RR,
        Scheduler::Wrr => abi::SchedulerKind::PNLB_SCHED_WRR,
        Scheduler::Sh => abi::SchedulerKind::PNLB_SCHED_SH,
        Scheduler::Dh => abi::SchedulerKind::PNLB_SCHED_DH,
        Scheduler::Lc => abi::SchedulerKind::PNLB_SCHED_LC,
        Scheduler::Wlc => abi::SchedulerKind::PNLB_SCHED_WLC,
        Scheduler::Sed => abi::SchedulerKind::PNLB_SCHED_SED,
        Scheduler::Nq => abi::SchedulerKind::PNLB_SCHED_NQ,
        Scheduler::P2c => abi::SchedulerKind::PNLB_SCHED_P2C,
        Scheduler::Chbl { .. } => abi::SchedulerKind::PNLB_SCHED_CHBL,
    }
}

/// Writes the service if it changed: its copy by id
/// ([`crate::service_copies`]), then its entry. Packets take only the id
/// from the entry and the service from the copy, so the copy goes first,
/// and the entry is written without waiting for readers: the services map
/// (a preallocated hash) recycles replaced and deleted elements at once,
/// and a packet that reads a recycled one finds its id's copy is of
/// another listener and looks again (pnlb_listener_service). Only while a
/// program of an earlier build may be attached, which reads entries
/// whole, does a write wait ([`Grace::before_services_write`]).
pub(super) fn write_service(
    dataplane: &Dataplane,
    grace: &mut Grace,
    slot: &mut ServiceSlot,
    value: abi::Service,
) -> Result<(), DataplaneError> {
    if bytes_of(&value) == bytes_of(&slot.value) {
        return Ok(());
    }
    dataplane
        .service_copies
        .write(grace, slot.id, &slot.key, &value);
    // A written entry is never all zeroes (it has a method).
    grace.before_services_write(bytes_of(&slot.value) != bytes_of(&abi::Service::default()));
    dataplane
        .maps()
        .pnlb_services
        .update(bytes_of(&slot.key), bytes_of(&value), MapFlags::ANY)
        .map_err(map_err("pnlb_services"))?;
    slot.value = value;
    Ok(())
}

/// Removes service `id`'s entry under `key` (its listener moved, or the
/// service went), its copy by id first.
pub(super) fn delete_service(
    dataplane: &Dataplane,
    grace: &mut Grace,
    id: u32,
    key: &abi::ServiceKey,
) -> Result<(), DataplaneError> {
    dataplane.service_copies.clear(id);
    match dataplane.maps().pnlb_services.delete(bytes_of(key)) {
        Ok(()) => {
            grace.after_services_delete();
            Ok(())
        }
        Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(DataplaneError::Map {
            map: "pnlb_services",
            source: err,
        }),
    }
}
