//! `pnlb ctl list`: services and backends laid out as `ipvsadm -L -n`
//! shows them (with `--stats` and `--rate` as in `ipvsadm -L -n --stats /
//! --rate`), plus the health column IPVS leaves to keepalived.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use crate::api::model::{BackendStatus, Counters, NodeStatus, ServiceStatus, Status};

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Plain,
    Stats,
    /// Per-second rates between two readings this many seconds apart.
    Rate(f64),
}

/// ipvsadm's names for the forwarding methods.
fn forward(method: &str) -> &str {
    match method {
        "dr" => "Route",
        "tun" => "Tunnel",
        "nat" => "Masq",
        "snat" => "FullNat",
        other => other,
    }
}

fn endpoint(address: IpAddr, port: u16) -> String {
    SocketAddr::new(address, port).to_string()
}

fn health(backend: &BackendStatus) -> String {
    if backend.drained {
        format!("{}, drained", backend.health)
    } else {
        backend.health.clone()
    }
}

fn find_backend<'a>(
    before: Option<&'a ServiceStatus>,
    backend: &BackendStatus,
) -> Option<&'a BackendStatus> {
    before?
        .backends
        .iter()
        .find(|b| b.address == backend.address && b.port == backend.port)
}

pub fn render(status: &Status, mode: Mode, before: Option<&Status>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pnlb: {} service(s), connection table {}/{}, {}, config version {} ({})",
        status.services.len(),
        status.connections.entries,
        status.connections.capacity,
        status.slots.describe(),
        status.config_version,
        status.config_source
    );
    match mode {
        Mode::Plain => {
            let _ = writeln!(out, "Prot LocalAddress:Port Scheduler Flags");
            let _ = writeln!(
                out,
                "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn Health"
            );
        }
        Mode::Stats => {
            let _ = writeln!(
                out,
                "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes"
            );
            let _ = writeln!(out, "  -> RemoteAddress:Port");
        }
        Mode::Rate(_) => {
            let _ = writeln!(
                out,
                "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS"
            );
            let _ = writeln!(out, "  -> RemoteAddress:Port");
        }
    }
    for service in &status.services {
        let local = endpoint(service.vip, service.port);
        let protocol = service.protocol.to_uppercase();
        let old = before.and_then(|b| b.services.iter().find(|s| s.name == service.name));
        match mode {
            Mode::Plain => {
                let _ = writeln!(
                    out,
                    "{protocol:<4} {local} {} ({})",
                    service.scheduler, service.name
                );
            }
            Mode::Stats => {
                let _ = writeln!(
                    out,
                    "{protocol:<4} {:<30}{}  ({})",
                    local,
                    figures(&service.counters),
                    service.name
                );
            }
            Mode::Rate(seconds) => {
                let _ = writeln!(
                    out,
                    "{protocol:<4} {:<30}{}  ({})",
                    local,
                    rates(&service.counters, old.map(|s| &s.counters), seconds),
                    service.name
                );
            }
        }
        for backend in &service.backends {
            let remote = endpoint(backend.address, backend.port);
            match mode {
                Mode::Plain => {
                    let _ = writeln!(
                        out,
                        "  -> {:<29}{:<8}{:<7}{:<11}{:<10}{}",
                        remote,
                        forward(&service.method),
                        backend.effective_weight,
                        backend.active_conns,
                        backend.inactive_conns,
                        health(backend)
                    );
                }
                Mode::Stats => {
                    let _ = writeln!(out, "  -> {:<29}{}", remote, figures(&backend.counters));
                }
                Mode::Rate(seconds) => {
                    let was = find_backend(old, backend).map(|b| &b.counters);
                    let _ = writeln!(
                        out,
                        "  -> {:<29}{}",
                        remote,
                        rates(&backend.counters, was, seconds)
                    );
                }
            }
        }
    }
    if mode != Mode::Plain {
        let _ = writeln!(out, "Connection table: {}", status.connections.describe());
    }
    let _ = writeln!(out, "{}", node_line(&status.node));
    out
}

/// The node: its fingerprint (every node behind the same VIPs must show
/// the same) and, with [bgp], what it announces.
fn node_line(node: &NodeStatus) -> String {
    let mut line = format!("node fingerprint {}", node.fingerprint);
    if let Some(bgp) = &node.bgp {
        let list = |vips: &[IpAddr]| {
            vips.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = write!(line, "; bgp announces: {}", or_none(list(&bgp.announced)));
        let withdrawn: Vec<IpAddr> = bgp.withdrawn.iter().map(|w| w.vip).collect();
        if !withdrawn.is_empty() {
            let _ = write!(line, "; withdrawn: {}", list(&withdrawn));
        }
        if let Some(drain) = &bgp.drain {
            let _ = write!(
                line,
                "; node {} for {:.0} s ({:.0} packets/s)",
                drain.state, drain.seconds, drain.packets_per_second
            );
        }
        if let Some(error) = &bgp.error {
            let _ = write!(line, "; BIRD: {error}");
        }
    }
    line
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "nothing".into()
    } else {
        text
    }
}

fn figures(c: &Counters) -> String {
    format!(
        "{:>8} {:>8} {:>8} {:>8} {:>8}",
        short(c.new_flows),
        short(c.packets),
        short(c.reply_packets),
        short(c.bytes),
        short(c.reply_bytes)
    )
}

fn rates(now: &Counters, before: Option<&Counters>, seconds: f64) -> String {
    let per_second = |pick: fn(&Counters) -> u64| -> u64 {
        match before {
            Some(b) if seconds > 0.0 => {
                (pick(now).saturating_sub(pick(b)) as f64 / seconds).round() as u64
            }
            _ => 0,
        }
    };
    format!(
        "{:>8} {:>8} {:>8} {:>8} {:>8}",
        short(per_second(|c| c.new_flows)),
        short(per_second(|c| c.packets)),
        short(per_second(|c| c.reply_packets)),
        short(per_second(|c| c.bytes)),
        short(per_second(|c| c.reply_bytes))
    )
}

/// ipvsadm's numbers: as they are while they fit 8 columns, then K, M, G.
fn short(n: u64) -> String {
    match n {
        0..=99_999_999 => n.to_string(),
        100_000_000..=99_999_999_999 => format!("{}K", n / 1000),
        100_000_000_000..=99_999_999_999_999 => format!("{}M", n / 1_000_000),
        _ => format!("{}G", n / 1_000_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::model::ConnectionTable;

    fn status(packets: u64) -> Status {
        let counters = Counters {
            packets,
            bytes: packets * 100,
            new_flows: packets / 10,
            reply_packets: 0,
            reply_bytes: 0,
        };
        Status {
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "10.77.100.1".parse().unwrap(),
                port: 80,
                protocol: "tcp".into(),
                method: "dr".into(),
                scheduler: "wlc".into(),
                table_version: 1,
                access: Vec::new(),
                counters,
                drops: Default::default(),
                backends: vec![BackendStatus {
                    address: "10.77.1.11".parse().unwrap(),
                    port: 80,
                    weight: 1,
                    effective_weight: 0,
                    drained: true,
                    health: "up".into(),
                    health_transitions: 1,
                    active_conns: 3,
                    inactive_conns: 7,
                    counters,
                }],
            }],
            connections: ConnectionTable {
                entries: 10,
                capacity: 262_144,
                new_entries: 3,
                new_capacity: 65_536,
                evicted: 12,
                refused_full: 0,
                ..ConnectionTable::default()
            },
            slots: crate::api::model::Slots {
                services: 1,
                max_services: 1024,
                backends: 2,
                max_backends: 4096,
            },
            reasons: Default::default(),
            config_version: 2,
            config_source: "file lb.toml".into(),
            node: Default::default(),
        }
    }

    #[test]
    fn the_plain_list_reads_like_ipvsadm() {
        let text = render(&status(1000), Mode::Plain, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "Prot LocalAddress:Port Scheduler Flags");
        assert_eq!(lines[3], "TCP  10.77.100.1:80 wlc (web)");
        assert_eq!(
            lines[4],
            "  -> 10.77.1.11:80                Route   0      3          7         up, drained"
        );
    }

    #[test]
    fn the_last_line_shows_the_node_and_what_it_announces() {
        let mut status = status(10);
        status.node = NodeStatus {
            fingerprint: "63a9498ceb77b093".into(),
            bgp: Some(crate::api::model::BgpStatus {
                announced: vec!["10.77.100.1".parse().unwrap()],
                withdrawn: vec![crate::api::model::WithdrawnVip {
                    vip: "10.77.100.2".parse().unwrap(),
                    reason: "no usable backend".into(),
                }],
                error: None,
                drain: None,
                nodes: Vec::new(),
            }),
        };
        let text = render(&status, Mode::Plain, None);
        assert_eq!(
            text.lines().last(),
            Some("node fingerprint 63a9498ceb77b093; bgp announces: 10.77.100.1; withdrawn: 10.77.100.2")
        );
    }

    #[test]
    fn stats_and_rates_use_ipvsadm_columns() {
        let stats = render(&status(250_000), Mode::Stats, None);
        assert!(
            stats.contains("   25000   250000        0 25000000        0"),
            "{stats}"
        );
        assert!(
            stats.contains(
                "Connection table: established 10/262144 (0%), new 3/65536; half-open evicted 12\n"
            ),
            "{stats}"
        );
        let big = render(&status(2_000_000_000), Mode::Stats, None);
        assert!(
            big.contains(" 2000000K ") && big.contains(" 200000M "),
            "{big}"
        );
        let rate = render(&status(3000), Mode::Rate(2.0), Some(&status(1000)));
        assert!(
            rate.lines()
                .nth(3)
                .unwrap()
                .contains("     100     1000        0   100000        0"),
            "{rate}"
        );
    }
}
