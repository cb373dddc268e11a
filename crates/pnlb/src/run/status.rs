//! What the API, `pnlb ctl`, /metrics and the dashboard show: the running
//! state read now (config, health, drains, counters, connections).

use std::collections::BTreeMap;

use pnlb_core::health::Health;
use pnlb_dataplane::stats::CounterSnapshot;

use super::Daemon;
use crate::api::model;

/// Replies sent to a next hop's last known MAC: the kernel had none.
const LAST_KNOWN_SENT: &str = "fwd_last_known_neigh";

impl Daemon {
    /// Everything the API shows, read now.
    pub(super) fn status(&self) -> model::Status {
        let now = self.dataplane.counter_snapshot();
        let services = (0..self.config.services.len())
            .filter_map(|i| self.service_status(i, &now))
            .collect();
        let mut reasons: std::collections::BTreeMap<String, u64> = self
            .dataplane
            .reason_counters()
            .map(|totals| {
                totals
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(reason, n)| (pnlb_dataplane::stats::reason_name(reason).to_string(), *n))
                    .collect()
            })
            .unwrap_or_default();
        // Counted apart from the reasons (a map of its own: a new reason
        // would change the ABI).
        if let Ok(sent) = self.dataplane.last_known_sent() {
            if sent > 0 {
                reasons.insert(LAST_KNOWN_SENT.to_string(), sent);
            }
        }
        let (service_slots, backend_slots) = self.programmer.slots_in_use();
        let limits = self.dataplane.limits();
        model::Status {
            services,
            connections: crate::summary::connection_table(&self.dataplane),
            slots: model::Slots {
                services: service_slots as u64,
                max_services: u64::from(limits.services),
                backends: backend_slots as u64,
                max_backends: u64::from(limits.backends),
            },
            reasons,
            config_version: self.version,
            config_source: self.source.clone(),
            node: self.node_status(),
        }
    }

    /// One service's status with only its own slots read (GET
    /// /api/v1/services/NAME and what is below it).
    pub(super) fn one_service_status(&self, name: &str) -> Option<model::ServiceStatus> {
        let i = *self.service_index.get(name)?;
        let service = self.config.services.get(i)?;
        let mut backend_ids: Vec<u32> = service
            .backends
            .iter()
            .filter_map(|b| self.programmer.backend_id(name, b.address, b.port))
            .collect();
        backend_ids.extend(self.programmer.retiring_of(name).iter().map(|b| b.2));
        let now = match self.programmer.service_id(name) {
            Some(service_id) => self.dataplane.counter_snapshot_of(service_id, &backend_ids),
            None => CounterSnapshot::default(),
        };
        self.service_status(i, &now)
    }

    /// The status of the `i`th configured service, its counters from `now`.
    fn service_status(&self, i: usize, now: &CounterSnapshot) -> Option<model::ServiceStatus> {
        let effective = &self.applied;
        let service = self.config.services.get(i)?;
        let id = self.programmer.service_id(&service.name);
        let counters = id.map(|id| now.service(id)).unwrap_or_default();
        let drops: BTreeMap<String, u64> = counters
            .drops
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(reason, n)| (pnlb_dataplane::stats::reason_name(reason).to_string(), *n))
            .collect();
        // The same place in both (applied is worked out from config):
        // a search by name per service was quadratic (2.3 s for the
        // status at 10,000 services).
        let effective_service = effective.services.get(i).filter(|s| s.name == service.name);
        let mut backends: Vec<model::BackendStatus> = service
            .backends
            .iter()
            .map(|backend| {
                let key = (service.name.clone(), backend.address, backend.port);
                let id = self
                    .programmer
                    .backend_id(&service.name, backend.address, backend.port);
                let effective_weight = effective_service
                    .and_then(|s| {
                        s.backends
                            .iter()
                            .find(|b| b.address == backend.address && b.port == backend.port)
                    })
                    .map_or(0, |b| b.weight);
                let (health, transitions) = match (&backend.health, self.lifecycle.health(&key)) {
                    (None, _) => ("unchecked", 0),
                    (Some(_), (Health::Down, n)) => ("down", n),
                    (Some(_), (_, n)) => ("up", n),
                };
                backend_status(
                    now,
                    backend.address,
                    backend.port,
                    backend.weight,
                    effective_weight,
                    id,
                    health,
                    transitions,
                    self.drained.contains(&key),
                )
            })
            .collect();
        for (address, port, id) in self.programmer.retiring_of(&service.name) {
            backends.push(backend_status(
                now,
                address,
                port,
                0,
                0,
                Some(id),
                "removed",
                0,
                false,
            ));
        }
        Some(model::ServiceStatus {
            name: service.name.clone(),
            vip: service.vip,
            port: service.port,
            protocol: service.protocol.to_string(),
            method: service.method.to_string(),
            scheduler: service.scheduler.to_string(),
            table_version: self.programmer.table_version(&service.name).unwrap_or(0),
            counters: model::Counters {
                packets: counters.packets,
                bytes: counters.bytes,
                new_flows: counters.new_flows,
                reply_packets: counters.reply_packets,
                reply_bytes: counters.reply_bytes,
            },
            drops,
            backends,
            access: self
                .programmer
                .access_hits(&self.dataplane, &service.name)
                .into_iter()
                .map(|(prefix, allows, dropped)| model::AccessRuleStatus {
                    prefix: prefix.to_string(),
                    action: if allows { "allow" } else { "deny" }.into(),
                    dropped,
                })
                .collect(),
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn backend_status(
    now: &CounterSnapshot,
    address: std::net::IpAddr,
    port: u16,
    weight: u32,
    effective_weight: u32,
    id: Option<u32>,
    health: &str,
    health_transitions: u64,
    drained: bool,
) -> model::BackendStatus {
    let counters = id.map(|id| now.backend(id)).unwrap_or_default();
    let (active_conns, inactive_conns) = id.map(|id| now.backend_load(id)).unwrap_or((0, 0));
    model::BackendStatus {
        address,
        port,
        weight,
        effective_weight,
        drained,
        health: health.to_string(),
        health_transitions,
        active_conns,
        inactive_conns,
        counters: model::Counters {
            packets: counters.packets,
            bytes: counters.bytes,
            new_flows: counters.new_flows,
            reply_packets: counters.reply_packets,
            reply_bytes: counters.reply_bytes,
        },
    }
}
