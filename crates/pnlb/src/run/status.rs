//! What the API, `pnlb ctl`, /metrics and the dashboard show: the running
//! state read now (config, health, drains, counters, connections).

use std::collections::BTreeMap;

use pnlb_core::health::Health;

use super::Daemon;
use crate::api::model;

impl Daemon {
    /// Everything the API shows, read now.
    pub(super) fn status(&self) -> model::Status {
        let effective = &self.applied;
        let mut services = Vec::new();
        for (i, service) in self.config.services.iter().enumerate() {
            let id = self.programmer.service_id(&service.name);
            let counters = id
                .and_then(|id| self.dataplane.service_counters(id).ok())
                .unwrap_or_default();
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
                    let id =
                        self.programmer
                            .backend_id(&service.name, backend.address, backend.port);
                    let effective_weight = effective_service
                        .and_then(|s| {
                            s.backends
                                .iter()
                                .find(|b| b.address == backend.address && b.port == backend.port)
                        })
                        .map_or(0, |b| b.weight);
                    let (health, transitions) = match (&backend.health, self.lifecycle.health(&key))
                    {
                        (None, _) => ("unchecked", 0),
                        (Some(_), (Health::Down, n)) => ("down", n),
                        (Some(_), (_, n)) => ("up", n),
                    };
                    self.backend_status(
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
            for (name, address, port, id) in self.programmer.retiring() {
                if name == service.name {
                    backends.push(self.backend_status(
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
            }
            services.push(model::ServiceStatus {
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
            });
        }
        let reasons = self
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

    #[allow(clippy::too_many_arguments)]
    fn backend_status(
        &self,
        address: std::net::IpAddr,
        port: u16,
        weight: u32,
        effective_weight: u32,
        id: Option<u32>,
        health: &str,
        health_transitions: u64,
        drained: bool,
    ) -> model::BackendStatus {
        let counters = id
            .and_then(|id| self.dataplane.backend_counters(id).ok())
            .unwrap_or_default();
        let (active_conns, inactive_conns) = id
            .and_then(|id| self.dataplane.backend_load(id).ok())
            .unwrap_or((0, 0));
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
}
