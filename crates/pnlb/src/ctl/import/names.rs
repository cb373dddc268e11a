//! Names in ipvsadm rules saved without `-n`: services such as `http`
//! (from /etc/services, as ipvsadm prints them) and host names.

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};

use super::model::Protocol;

pub trait Resolve {
    fn port(&self, name: &str, protocol: Protocol) -> Option<u16>;
    fn host(&self, name: &str) -> Option<IpAddr>;
}

/// The IANA names ipvsadm prints most, for hosts without /etc/services
/// (Debian's netbase); /etc/services wins where it has the name.
const WELL_KNOWN: &[(&str, u16)] = &[
    ("ftp", 21),
    ("ssh", 22),
    ("telnet", 23),
    ("smtp", 25),
    ("domain", 53),
    ("http", 80),
    ("www", 80),
    ("kerberos", 88),
    ("pop3", 110),
    ("ntp", 123),
    ("imap2", 143),
    ("imap", 143),
    ("snmp", 161),
    ("ldap", 389),
    ("https", 443),
    ("microsoft-ds", 445),
    ("syslog", 514),
    ("submission", 587),
    ("ldaps", 636),
    ("imaps", 993),
    ("pop3s", 995),
    ("mysql", 3306),
    ("ms-wbt-server", 3389),
    ("sip", 5060),
    ("postgresql", 5432),
    ("http-alt", 8080),
    ("webcache", 8080),
];

/// Ports from /etc/services; host names through the system resolver.
pub struct System {
    services: HashMap<(String, &'static str), u16>,
    resolve_hosts: bool,
}

impl System {
    pub fn new() -> Self {
        let text = std::fs::read_to_string("/etc/services").unwrap_or_default();
        Self {
            services: services(&text),
            resolve_hosts: true,
        }
    }

    /// No resolver and no /etc/services: the same answer on every machine
    /// (the corpus test).
    #[cfg(test)]
    pub fn offline() -> Self {
        Self {
            services: HashMap::new(),
            resolve_hosts: false,
        }
    }
}

impl Resolve for System {
    fn port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        if let Ok(port) = name.parse() {
            return Some(port);
        }
        self.services
            .get(&(name.to_string(), protocol.name()))
            .copied()
            .or_else(|| WELL_KNOWN.iter().find(|(n, _)| *n == name).map(|&(_, p)| p))
    }

    fn host(&self, name: &str) -> Option<IpAddr> {
        if let Ok(address) = name.parse() {
            return Some(address);
        }
        if !self.resolve_hosts {
            return None;
        }
        (name, 0).to_socket_addrs().ok()?.next().map(|a| a.ip())
    }
}

/// `name port/protocol aliases...` lines.
fn services(text: &str) -> HashMap<(String, &'static str), u16> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let (Some(name), Some(port_protocol)) = (words.next(), words.next()) else {
            continue;
        };
        let Some((port, protocol)) = port_protocol.split_once('/') else {
            continue;
        };
        let (Ok(port), Some(protocol)) = (port.parse::<u16>(), protocol_name(protocol)) else {
            continue;
        };
        for alias in std::iter::once(name).chain(words) {
            out.entry((alias.to_string(), protocol)).or_insert(port);
        }
    }
    out
}

fn protocol_name(text: &str) -> Option<&'static str> {
    match text {
        "tcp" => Some("tcp"),
        "udp" => Some("udp"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_come_from_the_file_then_the_well_known_list() {
        let names = System {
            services: services("http 80/tcp www # web\nfoo 1234/udp bar\nbad line\n"),
            resolve_hosts: false,
        };
        assert_eq!(names.port("www", Protocol::Tcp), Some(80));
        assert_eq!(names.port("bar", Protocol::Udp), Some(1234));
        assert_eq!(names.port("bar", Protocol::Tcp), None);
        assert_eq!(names.port("https", Protocol::Tcp), Some(443));
        assert_eq!(names.port("8443", Protocol::Tcp), Some(8443));
        assert_eq!(names.host("web1.example"), None);
        assert_eq!(names.host("10.0.0.1"), "10.0.0.1".parse().ok());
    }
}
