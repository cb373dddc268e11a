//! Counter tables in the layout of `ipvsadm -L -n --stats`. OutPkts and
//! OutBytes count replies the load balancer translated (nat, snat); with dr
//! replies never cross it.

use std::fmt::Write;

use pnlb_core::config::Config;
use pnlb_dataplane::abi;
use pnlb_dataplane::stats::reason_name;
use pnlb_dataplane::{Dataplane, Programmer};

use crate::api::model;

pub fn render(dataplane: &Dataplane, programmer: &Programmer, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Prot LocalAddress:Port             Method Scheduler   Conns     InPkts    OutPkts      InBytes     OutBytes"
    );
    let _ = writeln!(
        out,
        "  -> RemoteAddress:Port           Weight              Conns     InPkts    OutPkts      InBytes     OutBytes"
    );
    let now = dataplane.counter_snapshot();
    for service in &config.services {
        let Some(id) = programmer.service_id(&service.name) else {
            continue;
        };
        let counters = now.service(id);
        let local = endpoint(service.vip, service.port);
        let _ = writeln!(
            out,
            "{:<4} {:<30} {:<6} {:<9} {:>7} {:>10} {:>10} {:>12} {:>12}   ({})",
            service.protocol.to_string().to_uppercase(),
            local,
            service.method.to_string(),
            service.scheduler.to_string(),
            counters.new_flows,
            counters.packets,
            counters.reply_packets,
            counters.bytes,
            counters.reply_bytes,
            service.name
        );
        for backend in &service.backends {
            let Some(backend_id) =
                programmer.backend_id(&service.name, backend.address, backend.port)
            else {
                continue;
            };
            let b = now.backend(backend_id);
            let _ = writeln!(
                out,
                "  -> {:<29} {:<6} {:<9} {:>7} {:>10} {:>10} {:>12} {:>12}",
                endpoint(backend.address, backend.port),
                backend.weight.to_string(),
                "",
                b.new_flows,
                b.packets,
                b.reply_packets,
                b.bytes,
                b.reply_bytes
            );
        }
        for (reason, &count) in counters.drops.iter().enumerate() {
            if count > 0 {
                let name = reason_name(reason);
                let what = if name.starts_with("tx_") {
                    "answered"
                } else if name.starts_with("fwd_") {
                    "forwarded"
                } else {
                    "dropped"
                };
                let _ = writeln!(out, "     {what} {count} ({name})");
            }
        }
        for (prefix, allows, drops) in programmer.access_hits(dataplane, &service.name) {
            if !allows {
                let _ = writeln!(out, "     deny {prefix}: dropped {drops}");
            }
        }
    }
    if let Ok(reasons) = dataplane.reason_counters() {
        let listed: Vec<String> = reasons
            .iter()
            .enumerate()
            .filter(|(reason, &n)| n > 0 && !reason_name(*reason).starts_with("fwd_"))
            .map(|(reason, n)| format!("{} {n}", reason_name(reason)))
            .collect();
        if !listed.is_empty() {
            let _ = writeln!(out, "Not forwarded: {}", listed.join(", "));
        }
    }
    // Counted now (the status API reports the last sweep's count).
    let mut table = connection_table(dataplane);
    (table.entries, table.new_entries) = dataplane.table_entries();
    let _ = writeln!(out, "Connection table: {}", table.describe());
    out
}

/// The connection tables' fill and events, from the data plane.
pub(crate) fn connection_table(dataplane: &Dataplane) -> model::ConnectionTable {
    let tables = dataplane.table_stats().unwrap_or_default();
    let reasons = dataplane
        .reason_counters()
        .unwrap_or([0; abi::REASON_COUNT]);
    let reason = |r: abi::Reason| reasons.get(r.0 as usize).copied().unwrap_or(0);
    model::ConnectionTable {
        entries: tables.established_entries,
        capacity: tables.established_capacity,
        new_entries: tables.new_entries_now,
        new_capacity: tables.new_capacity,
        evicted: tables.evicted,
        refused_full: reason(abi::Reason::PNLB_DROP_TABLE_FULL),
        rate_limited: reason(abi::Reason::PNLB_DROP_RATE_LIMITED),
        stateless_forwards: reason(abi::Reason::PNLB_FWD_STATELESS),
        rehashed: reason(abi::Reason::PNLB_FWD_REHASHED),
        no_flow_drops: reason(abi::Reason::PNLB_DROP_NO_FLOW),
        promote_full: tables.promote_full,
    }
}

fn endpoint(address: std::net::IpAddr, port: u16) -> String {
    match address {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
