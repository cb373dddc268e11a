//! `GET /metrics`: the API's status in Prometheus text format, through the
//! prometheus-client crate. Names are prefixed `pnlb_`; counters end in
//! `_total`. Every figure comes from one status snapshot, so a scrape is
//! consistent with itself.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use crate::api::model::{BackendStatus, Counters, ServiceStatus, Status};

pub fn render(status: &Status) -> String {
    let mut registry = Registry::with_prefix("pnlb");
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

#[derive(Debug)]
struct Snapshot(Status);

type Labels = Vec<(&'static str, String)>;
/// A metric family drawn from a field: name, help, how to read it.
type Field<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// One metric family: name, help, and a value per label set.
fn family<M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, value) in rows {
        if labels.is_empty() {
            value.encode(metric)?;
            break;
        }
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = &self.0;
        let service_labels = |s: &ServiceStatus| -> Labels {
            vec![
                ("service", s.name.clone()),
                ("vip", s.vip.to_string()),
                ("port", s.port.to_string()),
                ("protocol", s.protocol.clone()),
                ("method", s.method.clone()),
            ]
        };
        let backends: Vec<(Labels, &BackendStatus)> = status
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(move |b| {
                    (
                        vec![
                            ("service", s.name.clone()),
                            (
                                "backend",
                                std::net::SocketAddr::new(b.address, b.port).to_string(),
                            ),
                        ],
                        b,
                    )
                })
            })
            .collect();
        let fields: [Field<Counters, u64>; 5] = [
            ("packets", "packets forwarded client -> backend", |c| {
                c.packets
            }),
            ("bytes", "bytes forwarded client -> backend", |c| c.bytes),
            ("new_flows", "new flows scheduled", |c| c.new_flows),
            (
                "reply_packets",
                "replies translated backend -> client (nat, snat)",
                |c| c.reply_packets,
            ),
            (
                "reply_bytes",
                "reply bytes translated backend -> client (nat, snat)",
                |c| c.reply_bytes,
            ),
        ];
        for (name, help, field) in fields {
            family(
                &mut encoder,
                &format!("service_{name}"),
                &format!("Per service: {help}"),
                status
                    .services
                    .iter()
                    .map(|s| (service_labels(s), ConstCounter::new(field(&s.counters))))
                    .collect(),
            )?;
            family(
                &mut encoder,
                &format!("backend_{name}"),
                &format!("Per backend: {help}"),
                backends
                    .iter()
                    .map(|(l, b)| (l.clone(), ConstCounter::new(field(&b.counters))))
                    .collect(),
            )?;
        }
        family(
            &mut encoder,
            "service_drops",
            "Per service: packets not forwarded, by reason",
            status
                .services
                .iter()
                .flat_map(|s| {
                    s.drops.iter().map(move |(reason, n)| {
                        let mut labels = service_labels(s);
                        labels.push(("reason", reason.clone()));
                        (labels, ConstCounter::new(*n))
                    })
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "service_access_dropped",
            "Per service and deny rule (service.deny): packets dropped",
            status
                .services
                .iter()
                .flat_map(|s| {
                    s.access
                        .iter()
                        .filter(|rule| rule.action == "deny")
                        .map(move |rule| {
                            let mut labels = service_labels(s);
                            labels.push(("prefix", rule.prefix.clone()));
                            (labels, ConstCounter::new(rule.dropped))
                        })
                })
                .collect(),
        )?;
        family(
            &mut encoder,
            "service_table_version",
            "Per service: scheduling tables published so far",
            status
                .services
                .iter()
                .map(|s| (service_labels(s), ConstGauge::new(s.table_version as i64)))
                .collect(),
        )?;
        let gauges: [Field<BackendStatus, i64>; 5] = [
            (
                "backend_active_connections",
                "Per backend: established connections",
                |b| b.active_conns as i64,
            ),
            (
                "backend_inactive_connections",
                "Per backend: connections not (or no longer) established",
                |b| b.inactive_conns as i64,
            ),
            (
                "backend_up",
                "Per backend: 1 when up or unchecked, 0 when down",
                |b| i64::from(b.health != "down"),
            ),
            (
                "backend_weight",
                "Per backend: the weight the scheduler uses now",
                |b| i64::from(b.effective_weight),
            ),
            (
                "backend_drained",
                "Per backend: 1 when drained through the API",
                |b| i64::from(b.drained),
            ),
        ];
        for (name, help, value) in gauges {
            family(
                &mut encoder,
                name,
                help,
                backends
                    .iter()
                    .map(|(l, b)| (l.clone(), ConstGauge::new(value(b))))
                    .collect(),
            )?;
        }
        family(
            &mut encoder,
            "backend_health_transitions",
            "Per backend: health state changes",
            backends
                .iter()
                .map(|(l, b)| (l.clone(), ConstCounter::new(b.health_transitions)))
                .collect(),
        )?;
        family(
            &mut encoder,
            "reason",
            "Packets passed to the kernel or dropped, by reason, all services",
            status
                .reasons
                .iter()
                .map(|(reason, n)| (vec![("reason", reason.clone())], ConstCounter::new(*n)))
                .collect(),
        )?;
        let table = &status.connections;
        let per_table = |established: u64, new: u64| -> Vec<(Labels, ConstGauge)> {
            vec![
                (
                    vec![("table", "established".to_string())],
                    ConstGauge::new(established as i64),
                ),
                (
                    vec![("table", "new".to_string())],
                    ConstGauge::new(new as i64),
                ),
            ]
        };
        family(
            &mut encoder,
            "conntrack_entries",
            "Connection-table entries in use, as of the last sweep: established flows (never evicted) and flows not yet established",
            per_table(table.entries, table.new_entries),
        )?;
        family(
            &mut encoder,
            "conntrack_capacity",
            "Connection-table size: established = daemon.conn_table_size, new = a quarter of it (at least 1024)",
            per_table(table.capacity, table.new_capacity),
        )?;
        let slots = &status.slots;
        let by_kind = |services: u64, backends: u64| {
            [("services", services), ("backends", backends)]
                .into_iter()
                .map(|(kind, n)| (vec![("kind", kind.to_string())], ConstGauge::new(n as i64)))
                .collect()
        };
        family(
            &mut encoder,
            "dataplane_slots",
            "Service and backend slots in use (a removed backend keeps its slot while its flows last)",
            by_kind(slots.services, slots.backends),
        )?;
        family(
            &mut encoder,
            "dataplane_slot_limit",
            "Slots the data plane's maps hold: daemon.max_services and daemon.max_backends",
            by_kind(slots.max_services, slots.max_backends),
        )?;
        family(
            &mut encoder,
            "conntrack_events",
            "Connection-table events: half-open entries evicted, new flows refused (table full, new_flow_rate), packets forwarded by hash without state, nat/snat flows re-created by hash, packets of no flow dropped, established flows left in the new-flow table for want of room",
            [
                ("evicted", table.evicted),
                ("refused_full", table.refused_full),
                ("rate_limited", table.rate_limited),
                ("stateless_forward", table.stateless_forwards),
                ("rehashed", table.rehashed),
                ("no_flow_drop", table.no_flow_drops),
                ("promote_full", table.promote_full),
            ]
            .into_iter()
            .map(|(event, n)| (vec![("event", event.to_string())], ConstCounter::new(n)))
            .collect(),
        )?;
        family(
            &mut encoder,
            "config_version",
            "Changes applied since start (edits, reloads, drains)",
            vec![(Labels::new(), ConstGauge::new(status.config_version as i64))],
        )?;
        Ok(())
    }
}
