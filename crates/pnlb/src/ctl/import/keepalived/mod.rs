//! keepalived.conf: `virtual_server` blocks (by address, or by
//! `virtual_server_group`) become services, `real_server`s backends,
//! `sorry_server` the fallback, checkers health checks. VRRP is pnlb's
//! `[ha]`: what an instance says is listed as a hint, not imported.

mod checks;
mod syntax;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use super::model::{
    ipvs_method, ipvs_scheduler, prefix_len, service_name, unusable, Backend, Method, Notes,
    Protocol, Scheduler, SchedulerMapping, Service,
};
use super::pool::{add_backend, failover};
use super::render::Head;
use super::{finish, Imported};
use checks::Inherited;
use syntax::Statement;

/// keepalived's persistence_timeout when none is given (6 minutes).
const DEFAULT_PERSISTENCE_SECS: u64 = 360;

/// Imports `text`; `path` (when the config came from a file) resolves
/// relative `include`s and names the source.
pub fn import(text: &str, path: Option<&Path>) -> Imported {
    let mut notes = Notes::default();
    let statements = syntax::parse(text, path.and_then(Path::parent), &mut notes);
    let mut context = Context::default();
    // Groups may be defined after the virtual servers that use them.
    for statement in &statements {
        match statement.keyword() {
            "virtual_server_group" => {
                if let Some(name) = statement.arg(1) {
                    context.groups.insert(name.to_string(), statement.clone());
                }
            }
            "local_address_group" => {
                if let Some(name) = statement.arg(1) {
                    let addresses = statement
                        .children()
                        .iter()
                        .filter_map(|c| c.arg(0)?.parse().ok())
                        .collect();
                    context.local_addresses.insert(name.to_string(), addresses);
                }
            }
            _ => {}
        }
    }
    let mut services = Vec::new();
    let mut interface = None;
    for statement in &statements {
        match statement.keyword() {
            "virtual_server" => services.extend(context.virtual_server(statement, &mut notes)),
            "virtual_server_group" | "local_address_group" => {}
            "vrrp_instance" => {
                let hint = vrrp_hint(statement);
                if interface.is_none() {
                    interface = statement
                        .children()
                        .iter()
                        .find(|c| c.keyword() == "interface")
                        .and_then(|c| c.arg(1))
                        .map(|i| (i.to_string(), format!("the interface of vrrp_instance {}", statement.arg(1).unwrap_or(""))));
                }
                notes.outside(statement.line, hint);
            }
            "global_defs" => notes.outside(
                statement.line,
                "global_defs: keepalived's own process, mail and SNMP settings; pnlb's are in [daemon]",
            ),
            "vrrp_script" | "vrrp_sync_group" | "track_file" | "garp_group" => notes.outside(
                statement.line,
                format!("{}: part of VRRP, which pnlb's [ha] replaces (docs/ha.md)", statement.keyword()),
            ),
            "static_ipaddress" | "static_routes" | "static_rules" | "net_namespace" => notes.outside(
                statement.line,
                format!("{}: host network setup, not load balancing; keep it in the host's network config", statement.keyword()),
            ),
            other => notes.skipped(
                statement.line,
                format!("{other}: not a load-balancing keyword pnlb knows"),
            ),
        }
    }
    if services.is_empty() && !statements.iter().any(|s| s.keyword() == "virtual_server") {
        notes.skipped(0, "no virtual_server: nothing to balance (a VRRP-only keepalived.conf maps to pnlb's [ha], docs/ha.md)");
    }
    let head = Head {
        source: path.map_or("(stdin)".into(), |p| p.display().to_string()),
        interface,
        timeouts: Vec::new(),
    };
    finish(head, services, notes)
}

fn vrrp_hint(statement: &Statement) -> String {
    let value = |key: &str| {
        statement
            .children()
            .iter()
            .find(|c| c.keyword() == key)
            .and_then(|c| c.arg(1))
            .map(str::to_string)
    };
    let mut hint = vec![];
    if let Some(id) = value("virtual_router_id") {
        hint.push(format!("group = {id}"));
    }
    if let Some(priority) = value("priority") {
        hint.push(format!("priority = {priority}"));
    }
    if let Some(interface) = value("interface") {
        hint.push(format!("interface = \"{interface}\""));
    }
    let peers: Vec<String> = statement
        .children()
        .iter()
        .filter(|c| c.keyword() == "unicast_peer")
        .flat_map(|c| c.children().iter().filter_map(|p| p.arg(0)))
        .map(|p| format!("\"{p}\""))
        .collect();
    if !peers.is_empty() {
        hint.push(format!("peers = [{}]", peers.join(", ")));
    }
    format!(
        "vrrp_instance {}: VRRP is pnlb's [ha] (docs/ha.md); from this instance: {}",
        statement.arg(1).unwrap_or(""),
        if hint.is_empty() {
            "nothing to carry over".into()
        } else {
            hint.join(", ")
        }
    )
}

#[derive(Default)]
struct Context {
    groups: HashMap<String, Statement>,
    local_addresses: HashMap<String, Vec<IpAddr>>,
}

/// The most addresses one range in a virtual_server_group expands to.
const MAX_GROUP_ADDRESSES: usize = 256;

impl Context {
    /// The (VIP, port) pairs a virtual_server stands for.
    fn addresses(&self, statement: &Statement, notes: &mut Notes) -> Vec<(IpAddr, u16, usize)> {
        let line = statement.line;
        match statement.arg(1) {
            Some("fwmark") => {
                notes.skipped(line, "virtual_server fwmark: firewall-mark services have no pnlb equivalent; write one virtual_server per VIP and port");
                Vec::new()
            }
            Some("group") => {
                let name = statement.arg(2).unwrap_or("");
                let Some(group) = self.groups.get(name) else {
                    notes.skipped(line, format!("virtual_server group {name}: no virtual_server_group {name} is defined (keepalived skips it too)"));
                    return Vec::new();
                };
                let mut out = Vec::new();
                for entry in group.children() {
                    match entry.keyword() {
                        "fwmark" => notes.skipped(entry.line, "fwmark in a virtual_server_group: no pnlb equivalent"),
                        range => match group_range(range) {
                            Some(addresses) => {
                                let port = entry.arg(1).and_then(|p| p.parse().ok()).unwrap_or(0);
                                out.extend(addresses.into_iter().map(|a| (a, port, entry.line)));
                            }
                            None => notes.skipped(entry.line, format!("virtual_server_group {name}: {range:?} is not an address or a range of at most {MAX_GROUP_ADDRESSES}")),
                        },
                    }
                }
                out
            }
            Some(address) => match address.parse::<IpAddr>() {
                Ok(vip) => {
                    let port = match statement.arg(2) {
                        None => 0,
                        Some(p) => match p.parse() {
                            Ok(port) => port,
                            Err(_) => {
                                notes.skipped(line, format!("virtual_server {address} {p}: {p:?} is not a port (keepalived refuses it too)"));
                                return Vec::new();
                            }
                        },
                    };
                    vec![(vip, port, line)]
                }
                Err(_) => {
                    notes.skipped(line, format!("virtual_server {address}: not an IP address (keepalived refuses it too)"));
                    Vec::new()
                }
            },
            None => {
                notes.skipped(line, "virtual_server without an address");
                Vec::new()
            }
        }
    }

    fn virtual_server(&self, statement: &Statement, notes: &mut Notes) -> Vec<Service> {
        let addresses = self.addresses(statement, notes);
        if addresses.is_empty() {
            return Vec::new();
        }
        let Some(template) = self.service_settings(statement, addresses[0].0, notes) else {
            return Vec::new();
        };
        let group = statement.arg(1) == Some("group");
        addresses
            .into_iter()
            .filter_map(|(vip, port, line)| {
                if vip.is_ipv4() != addresses_family(&template) {
                    notes.skipped(line, format!("{vip}: the group mixes IPv4 and IPv6 addresses; pnlb's backends have the VIP's family"));
                    return None;
                }
                let mut service = template.clone();
                service.vip = vip;
                service.port = port;
                service.line = if group { line } else { statement.line };
                service.name = service_name(service.protocol, vip, port);
                // dr and tun forward to the port the client asked for, and
                // so does every port-0 (all ports) service.
                let clients_port = !service.method.translates() || port == 0;
                for backend in &mut service.backends {
                    let own = backend.port;
                    if clients_port {
                        if own != 0 && own != port {
                            backend.comments.push(format!(
                                "real_server port {own}: {} forwards to the port the client asked for",
                                if port == 0 { "an all-ports service".to_string() } else { service.method.name().to_string() }
                            ));
                        }
                        backend.port = port;
                    } else if own == 0 {
                        backend.port = port;
                    }
                    if port == 0 {
                        port_zero_check(backend, own, notes);
                    }
                }
                if let Some((address, fallback_port)) = service.fallback {
                    if fallback_port == 0 || clients_port {
                        service.fallback = Some((address, port));
                    }
                }
                Some(service)
            })
            .collect()
    }

    /// Everything in a virtual_server block, for its first address (the
    /// others of a group take the same settings).
    fn service_settings(
        &self,
        statement: &Statement,
        vip: IpAddr,
        notes: &mut Notes,
    ) -> Option<Service> {
        let vs_line = statement.line;
        let mut inherited = Inherited::default();
        let mut scheduler_name = "wlc".to_string();
        let mut flags: Vec<&str> = Vec::new();
        let mut method = Method::Nat; // keepalived's default lvs_method
        let mut protocol = Protocol::Tcp;
        let mut persistence_secs = None;
        let mut persistence_mask = None;
        let mut sorry = None;
        let mut comments: Vec<String> = Vec::new();
        let mut gue_port = None;
        let mut tunnel_type = None;
        let mut snat_addresses = Vec::new();
        let mut real_servers = Vec::new();

        for child in statement.children() {
            if inherited.take(child) {
                continue;
            }
            let line = child.line;
            let arg = child.arg(1);
            match child.keyword() {
                "lb_algo" | "lvs_sched" => scheduler_name = arg.unwrap_or("wlc").to_string(),
                "lb_kind" | "lvs_method" => match arg.and_then(ipvs_method) {
                    Some(m) => method = m,
                    None => notes.skipped(line, format!("{} {}: unknown forwarding method (keepalived ignores it and uses NAT)", child.keyword(), arg.unwrap_or(""))),
                },
                "protocol" => match arg.map(str::to_ascii_uppercase).as_deref() {
                    Some("TCP") => protocol = Protocol::Tcp,
                    Some("UDP") => protocol = Protocol::Udp,
                    Some("SCTP") => {
                        notes.skipped(vs_line, "protocol SCTP: pnlb balances TCP and UDP");
                        return None;
                    }
                    other => notes.skipped(line, format!("protocol {}: unknown (keepalived ignores it)", other.unwrap_or(""))),
                },
                "persistence_timeout" => match arg {
                    None => persistence_secs = Some(DEFAULT_PERSISTENCE_SECS),
                    Some(text) => match text.parse::<u64>() {
                        Ok(0) | Err(_) => notes.skipped(line, format!("persistence_timeout {text}: not a positive number of seconds (keepalived ignores it: no persistence)")),
                        Ok(seconds) => persistence_secs = Some(seconds),
                    },
                },
                "persistence_granularity" => match arg.and_then(prefix_len) {
                    Some(bits) => {
                        persistence_mask = Some(bits);
                        persistence_secs.get_or_insert(DEFAULT_PERSISTENCE_SECS);
                    }
                    None => notes.skipped(line, format!("persistence_granularity {}: not a solid netmask (keepalived ignores it)", arg.unwrap_or(""))),
                },
                "sh-port" | "mh-port" | "flag-2" | "sh-fallback" | "mh-fallback" | "flag-1" | "flag-3" => flags.push(match child.keyword() {
                    "sh-port" => "sh-port",
                    "mh-port" => "mh-port",
                    "flag-2" => "flag-2",
                    _ => "fallback",
                }),
                "sorry_server" => match arg.and_then(|a| a.parse::<IpAddr>().ok()) {
                    Some(address) => {
                        let port = child.arg(2).and_then(|p| p.parse().ok()).unwrap_or(0);
                        sorry = Some((address, port, line));
                    }
                    None => notes.skipped(line, format!("sorry_server {}: not an IP address", arg.unwrap_or(""))),
                },
                "real_server" => real_servers.push(child),
                "backup_real_server" => notes.skipped(line, "backup_real_server: pnlb has one fallback backend ([service.fallback]), not a failover pool"),
                "laddr_group_name" => match arg.and_then(|name| self.local_addresses.get(name)) {
                    Some(addresses) => snat_addresses = addresses.iter().copied().filter(|a| a.is_ipv4() == vip.is_ipv4()).collect(),
                    None => notes.skipped(line, format!("laddr_group_name {}: no such local_address_group", arg.unwrap_or(""))),
                },
                "tun_type" => tunnel_type = arg.map(str::to_ascii_lowercase),
                "tun_port" => gue_port = arg.and_then(|p| p.parse::<u16>().ok()),
                "ops" => {
                    comments.push("ops: pnlb schedules UDP per flow (5-tuple), not per datagram".into());
                    notes.approximated(line, "ops (one-packet scheduling): pnlb schedules UDP per flow");
                }
                "inhibit_on_failure" => comments.push("inhibit_on_failure: like keepalived's weight 0, a down backend takes no new flows and keeps its established ones".into()),
                "nat_mask" | "hashed" | "smtp_alert" | "omega" => {}
                "ha_suspend" => notes.skipped(line, "ha_suspend: pnlb checks backends whether or not this node holds the VIP"),
                "quorum" | "hysteresis" | "quorum_up" | "quorum_down" => notes.skipped(line, format!("{}: pnlb has no quorum; use [service.fallback] for a service with no live backend", child.keyword())),
                "sorry_server_inhibit" | "sorry_server_lvs_method" => notes.skipped(line, format!("{}: pnlb's fallback uses the service's method", child.keyword())),
                "persistence_engine" => notes.skipped(line, format!("persistence_engine {}: pnlb persists by client address only", arg.unwrap_or(""))),
                "ip_family" => {}
                "failover_threshold" | "failover_up" | "failover_down" => notes.skipped(line, format!("{}: pnlb has no failover pool", child.keyword())),
                "daddr_group_name" | "establish_timeout" | "syn_proxy" | "expire_quiescent_conn" | "quic" => notes.skipped(line, format!("{}: a dpvs extension pnlb does not have", child.keyword())),
                other if checks::is_checker(other) => notes.skipped(line, format!("{other} directly in a virtual_server: keepalived takes checkers inside real_server only")),
                other => notes.skipped(line, format!("{other}: unknown keyword in virtual_server (keepalived ignores it too)")),
            }
        }

        let scheduler = match ipvs_scheduler(&scheduler_name, &flags) {
            SchedulerMapping::Same(s) => s,
            SchedulerMapping::Nearest(s, why) => {
                comments.push(format!("lb_algo {scheduler_name}: {why}"));
                notes.approximated(
                    vs_line,
                    format!("lb_algo {scheduler_name} as {}: {why}", s.name),
                );
                s
            }
            SchedulerMapping::Failover => Scheduler {
                name: "wrr",
                hash_key: None,
            },
            SchedulerMapping::Refused(why) => {
                notes.skipped(
                    vs_line,
                    format!("virtual_server {}: {why}", statement.words[1..].join(" ")),
                );
                return None;
            }
        };
        if method == Method::Snat && snat_addresses.is_empty() {
            notes.skipped(vs_line, "lb_kind FNAT without local addresses (laddr_group_name) of the VIP's family: pnlb's snat needs them");
            return None;
        }
        if method == Method::Tun {
            match tunnel_type.as_deref() {
                None | Some("ipip") => gue_port = None,
                Some("gue") => {
                    gue_port = gue_port.or(Some(6080));
                }
                Some(other) => {
                    notes.skipped(
                        vs_line,
                        format!("tun_type {other}: pnlb tunnels with IPIP or GUE"),
                    );
                    return None;
                }
            }
        }

        let mut backends: Vec<Backend> = Vec::new();
        for real_server in real_servers {
            if let Some(backend) =
                self.real_server(real_server, &inherited, vip, method, notes, &mut comments)
            {
                add_backend(&mut backends, backend, method, notes);
            }
        }
        if scheduler_name == "fo" {
            failover(&mut backends, &mut sorry, notes, vs_line, &mut comments);
        }
        let fallback = sorry.and_then(|(address, port, line)| {
            if address.is_ipv4() != vip.is_ipv4() {
                notes.skipped(line, "sorry_server of another address family than the VIP");
                return None;
            }
            if let Some(why) = unusable(address) {
                notes.skipped(line, format!("sorry_server {address}: {why}"));
                return None;
            }
            Some((address, port))
        });
        comments.dedup();
        let mut unique = Vec::new();
        for comment in comments {
            if !unique.contains(&comment) {
                unique.push(comment);
            }
        }
        Some(Service {
            line: vs_line,
            name: String::new(),
            vip,
            port: 0,
            protocol,
            method,
            scheduler,
            persistence: persistence_secs
                .map(|s| (s, persistence_mask.filter(|&m| m != 32 && m != 128))),
            snat_addresses,
            gue_port,
            health: None,
            backends,
            fallback,
            comments: unique,
        })
    }

    fn real_server(
        &self,
        statement: &Statement,
        vs: &Inherited,
        vip: IpAddr,
        method: Method,
        notes: &mut Notes,
        comments: &mut Vec<String>,
    ) -> Option<Backend> {
        let line = statement.line;
        let Some(address) = statement.arg(1).and_then(|a| a.parse::<IpAddr>().ok()) else {
            notes.skipped(
                line,
                format!(
                    "real_server {}: not an IP address (keepalived refuses it too)",
                    statement.arg(1).unwrap_or("")
                ),
            );
            return None;
        };
        if address.is_ipv4() != vip.is_ipv4() {
            notes.skipped(line, format!("real_server {address}: not of the VIP's address family (pnlb does not translate between IPv4 and IPv6)"));
            return None;
        }
        if let Some(why) = unusable(address) {
            notes.skipped(line, format!("real_server {address}: {why}"));
            return None;
        }
        let port = match statement.arg(2) {
            None => 0,
            Some(p) => match p.parse() {
                Ok(port) => port,
                Err(_) => {
                    notes.skipped(line, format!("real_server {address} {p}: not a port"));
                    return None;
                }
            },
        };
        let mut inherited = vs.clone();
        let mut weight: u32 = 1;
        let mut max_conns = None;
        let mut health = None;
        for child in statement.children() {
            if inherited.take(child) {
                continue;
            }
            let arg = child.arg(1);
            match child.keyword() {
                "weight" => match arg.and_then(|w| w.parse::<i64>().ok()) {
                    Some(w) if (0..=65_535).contains(&w) => weight = w as u32,
                    _ => notes.skipped(child.line, format!("weight {}: pnlb takes 0 to 65535; kept at 1", arg.unwrap_or(""))),
                },
                "uthreshold" => match arg.and_then(|n| n.parse::<u64>().ok()) {
                    Some(0) | None => {} // 0: no limit
                    Some(n) => max_conns = Some(n),
                },
                "lthreshold" => notes.skipped(child.line, "lthreshold: pnlb takes new flows again as soon as a backend is below max_conns"),
                "lvs_method" | "lb_kind" => {
                    if arg.and_then(ipvs_method) != Some(method) {
                        notes.skipped(line, format!("real_server {address}: lvs_method {} differs from the service's; pnlb has one method per service", arg.unwrap_or("")));
                        return None;
                    }
                }
                "notify_up" | "notify_down" => notes.skipped(child.line, format!("{}: pnlb logs health changes and exports them as metrics; it runs no script", child.keyword())),
                "inhibit_on_failure" | "smtp_alert" => {}
                keyword if checks::is_checker(keyword) => {
                    if health.is_some() {
                        notes.skipped(child.line, format!("{keyword}: a second checker; pnlb runs one check per backend (the first)"));
                        continue;
                    }
                    health = checks::checker(child, &inherited, address, notes, comments);
                }
                other => notes.skipped(child.line, format!("{other}: unknown keyword in real_server (keepalived ignores it too)")),
            }
        }
        Some(Backend {
            line,
            address,
            port,
            weight,
            max_conns,
            health,
            comments: Vec::new(),
        })
    }
}

/// An all-ports service has no port to probe: the check takes its
/// connect_port, or the real server's own port.
fn port_zero_check(backend: &mut Backend, own_port: u16, notes: &mut Notes) {
    let Some(health) = &mut backend.health else {
        return;
    };
    if health.port.is_none() {
        if own_port != 0 {
            health.port = Some(own_port);
        } else {
            notes.skipped(backend.line, format!("the check of real_server {}: no port to probe on an all-ports service (set connect_port)", backend.address));
            backend.health = None;
        }
    }
}

fn addresses_family(service: &Service) -> bool {
    service
        .backends
        .first()
        .map(|b| b.address.is_ipv4())
        .or(service.fallback.map(|f| f.0.is_ipv4()))
        .unwrap_or(true)
}

/// A group entry's addresses: one address, `a.b.c.d-e` (the last byte
/// ranging), `x::a-b` (the last group), or a /32 or /128.
fn group_range(text: &str) -> Option<Vec<IpAddr>> {
    if let Some((address, prefix)) = text.split_once('/') {
        let address: IpAddr = address.parse().ok()?;
        let full = if address.is_ipv4() { "32" } else { "128" };
        return (prefix == full).then(|| vec![address]);
    }
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(vec![address]);
    }
    let (first, last) = text.rsplit_once('-')?;
    let start: IpAddr = first.parse().ok()?;
    let addresses: Vec<IpAddr> = match start {
        IpAddr::V4(v4) => {
            let end: u8 = last.parse().ok()?;
            let octets = v4.octets();
            (octets[3]..=end)
                .map(|b| IpAddr::from([octets[0], octets[1], octets[2], b]))
                .collect()
        }
        IpAddr::V6(v6) => {
            let end = u16::from_str_radix(last, 16).ok()?;
            let mut segments = v6.segments();
            let begin = segments[7];
            (begin..=end)
                .map(|s| {
                    segments[7] = s;
                    IpAddr::from(segments)
                })
                .collect()
        }
    };
    (!addresses.is_empty() && addresses.len() <= MAX_GROUP_ADDRESSES).then_some(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ranges_expand_the_last_byte_or_group() {
        assert_eq!(group_range("192.168.200.3-5").unwrap().len(), 3);
        assert_eq!(
            group_range("ae00::2-9").unwrap()[7],
            "ae00::9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(group_range("10.45.58.59/32").unwrap().len(), 1);
        assert!(group_range("10.0.0.0/24").is_none());
        assert!(group_range("10.0.0.9-3").is_none());
        assert!(group_range("LVS_VIP").is_none());
    }
}
