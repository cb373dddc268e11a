//! Counter tables in the layout of `ipvsadm -L -n --stats`. OutPkts and
//! OutBytes count replies the load balancer translated (nat, snat); with dr
//! replies never cross it.

use std::fmt::Write;

use pnlb_core::config::Config;
use pnlb_dataplane::stats::reason_name;
use pnlb_dataplane::{Dataplane, Programmer};

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
    for service in &config.services {
        let Some(id) = programmer.service_id(&service.name) else {
            continue;
        };
        let Ok(counters) = dataplane.service_counters(id) else {
            continue;
        };
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
            let Ok(b) = dataplane.backend_counters(backend_id) else {
                continue;
            };
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
                } else {
                    "dropped"
                };
                let _ = writeln!(out, "     {what} {count} ({name})");
            }
        }
    }
    if let Ok(reasons) = dataplane.reason_counters() {
        let listed: Vec<String> = reasons
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(reason, n)| format!("{} {n}", reason_name(reason)))
            .collect();
        if !listed.is_empty() {
            let _ = writeln!(out, "Not forwarded: {}", listed.join(", "));
        }
    }
    out
}

fn endpoint(address: std::net::IpAddr, port: u16) -> String {
    match address {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
