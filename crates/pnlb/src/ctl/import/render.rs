//! Writes imported services as a pnlb config, with a comment wherever the
//! meaning differs from the source.

use std::fmt::Write;

use super::model::{CheckKind, Health, Service};

/// What goes into `[daemon]` and `[timeouts]`, beside the services.
#[derive(Default)]
pub struct Head {
    pub source: String,
    /// The interface VIP traffic arrives on, when the source names one.
    pub interface: Option<(String, String)>,
    /// tcp, tcp_fin, udp idle timeouts in seconds (ipvsadm --set).
    pub timeouts: Vec<(&'static str, u64)>,
}

/// "6s", or "1500ms" where keepalived gave a fraction of a second.
pub fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

pub fn render(head: &Head, services: &[Service]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported from {} by `pnlb ctl import`: {} service(s).\n\
         # Check [daemon] interfaces, then `pnlb check --config` this file. What was\n\
         # not imported, or imported with another meaning, is in the summary the\n\
         # import printed, and in comments here.\n",
        head.source,
        services.len()
    );
    out.push_str("[daemon]\n");
    match &head.interface {
        Some((name, why)) => {
            let _ = writeln!(out, "interfaces = [{}]   # {why}", quoted(name));
        }
        None => out.push_str(
            "interfaces = [\"eth0\"]   # the interface VIP traffic arrives on: check it\n",
        ),
    }
    if !head.timeouts.is_empty() {
        out.push_str("\n[timeouts]\n");
        for (key, seconds) in &head.timeouts {
            let _ = writeln!(out, "{key} = \"{seconds}s\"");
        }
    }
    for service in services {
        write_service(&mut out, service);
    }
    out
}

fn write_service(out: &mut String, service: &Service) {
    out.push('\n');
    for comment in &service.comments {
        let _ = writeln!(out, "# {comment}");
    }
    let _ = writeln!(
        out,
        "[[service]]\nname = {}\nvip = \"{}\"\nport = {}\nprotocol = \"{}\"\nmethod = \"{}\"\nscheduler = \"{}\"",
        quoted(&service.name),
        service.vip,
        service.port,
        service.protocol.name(),
        service.method.name(),
        service.scheduler.name
    );
    if let Some(key) = service.scheduler.hash_key {
        let _ = writeln!(out, "hash_key = \"{key}\"");
    }
    if let Some((seconds, mask)) = service.persistence {
        let _ = writeln!(out, "persistence = \"{seconds}s\"");
        if let Some(bits) = mask {
            let _ = writeln!(out, "persistence_mask = {bits}");
        }
    }
    if !service.snat_addresses.is_empty() {
        let list: Vec<String> = service
            .snat_addresses
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        let _ = writeln!(out, "snat_addresses = [{}]", list.join(", "));
    }
    if let Some(port) = service.gue_port {
        let _ = writeln!(out, "encap = \"gue\"\ngue_port = {port}");
    }
    if let Some(health) = &service.health {
        write_health(out, "service.health", health);
    }
    for backend in &service.backends {
        out.push('\n');
        for comment in &backend.comments {
            let _ = writeln!(out, "# {comment}");
        }
        let _ = writeln!(
            out,
            "[[service.backend]]\naddress = \"{}\"",
            backend.address
        );
        if backend.port != service.port {
            let _ = writeln!(out, "port = {}", backend.port);
        }
        if backend.weight != 1 {
            let _ = writeln!(out, "weight = {}", backend.weight);
        }
        if let Some(max) = backend.max_conns {
            let _ = writeln!(out, "max_conns = {max}");
        }
        if let Some(health) = &backend.health {
            write_health(out, "service.backend.health", health);
        }
    }
    if let Some((address, port)) = service.fallback {
        let _ = writeln!(out, "\n[service.fallback]\naddress = \"{address}\"");
        if port != service.port {
            let _ = writeln!(out, "port = {port}");
        }
    }
}

fn write_health(out: &mut String, table: &str, health: &Health) {
    let kind = match &health.kind {
        CheckKind::Tcp => "tcp",
        CheckKind::Http { tls: false, .. } => "http",
        CheckKind::Http { tls: true, .. } => "https",
        CheckKind::Udp { .. } => "udp",
        CheckKind::Exec { .. } => "exec",
    };
    let _ = writeln!(
        out,
        "\n[{table}]\nkind = \"{kind}\"\ninterval = \"{}\"\ntimeout = \"{}\"\nrise = {}\nfall = {}",
        duration(health.interval_ms),
        duration(health.timeout_ms),
        health.rise,
        health.fall
    );
    if let Some(port) = health.port {
        let _ = writeln!(out, "port = {port}");
    }
    match &health.kind {
        CheckKind::Tcp => {}
        CheckKind::Http {
            path,
            host,
            expect_status,
            ..
        } => {
            let _ = writeln!(out, "path = {}", quoted(path));
            if let Some(host) = host {
                let _ = writeln!(out, "host = {}", quoted(host));
            }
            let _ = writeln!(out, "expect_status = {}", quoted(expect_status));
        }
        CheckKind::Udp { payload, expect } => {
            // Callers only build payloads of 7-bit bytes: each is one
            // character of the TOML string (control bytes as \u escapes).
            let text: String = payload.iter().map(|&b| char::from(b)).collect();
            let _ = writeln!(out, "payload = {}", quoted(&text));
            if let Some(expect) = expect {
                let _ = writeln!(out, "expect = {}", quoted(expect));
            }
        }
        CheckKind::Exec { command } => {
            let list: Vec<String> = command.iter().map(|c| quoted(c)).collect();
            let _ = writeln!(out, "command = [{}]", list.join(", "));
        }
    }
}
