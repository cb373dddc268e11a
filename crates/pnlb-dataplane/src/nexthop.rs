//! Where a backend is reached: egress interface, next-hop MAC and our own
//! MAC on that interface, read from the kernel's routing and neighbour
//! tables (through iproute2's JSON output, which every host running pnlb has).
//!
//! The answer is looked up by the control plane and published in the
//! backend map, so the XDP program does no route or neighbour lookups. An
//! unresolved neighbour is probed with one empty UDP datagram (port 9,
//! discard), which makes the kernel resolve it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::loader::ifindex_of;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Set when the backend is not on-link but behind this router.
    pub gateway: Option<IpAddr>,
}

/// Finds the next hop of a backend address.
pub trait Resolver {
    fn resolve(&mut self, backend: IpAddr) -> Result<NextHop, String>;
}

/// The host's kernel tables, in the calling thread's network namespace.
pub struct KernelResolver {
    /// How long to wait for a neighbour to resolve after probing it.
    pub probe_wait: Duration,
}

impl Default for KernelResolver {
    fn default() -> Self {
        Self {
            probe_wait: Duration::from_millis(1500),
        }
    }
}

#[derive(Deserialize)]
struct RouteJson {
    dev: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct LinkJson {
    address: Option<String>,
}

impl Resolver for KernelResolver {
    fn resolve(&mut self, backend: IpAddr) -> Result<NextHop, String> {
        let routes: Vec<RouteJson> = ip_json(&["route", "get", &backend.to_string()])?;
        let route = routes
            .first()
            .ok_or_else(|| format!("no route to {backend}"))?;
        let dev = route
            .dev
            .clone()
            .ok_or_else(|| format!("the route to {backend} has no device"))?;
        let gateway = match &route.gateway {
            Some(text) => Some(
                text.parse::<IpAddr>()
                    .map_err(|_| format!("odd gateway {text:?} in route to {backend}"))?,
            ),
            None => None,
        };
        let hop = gateway.unwrap_or(backend);
        let ifindex = ifindex_of(&dev).map_err(|err| err.to_string())?;
        let links: Vec<LinkJson> = ip_json(&["link", "show", "dev", &dev])?;
        let src_mac = links
            .first()
            .and_then(|l| l.address.as_deref())
            .and_then(parse_mac)
            .ok_or_else(|| format!("interface {dev} has no MAC address"))?;

        let deadline = Instant::now() + self.probe_wait;
        let mut probed = false;
        loop {
            if let Some(mac) = neighbour(hop, &dev)? {
                return Ok(NextHop {
                    ifindex,
                    mac,
                    src_mac,
                    gateway,
                });
            }
            if !probed {
                probe(hop);
                probed = true;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{hop} does not answer ARP/neighbour discovery on {dev}"
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }
}

fn neighbour(hop: IpAddr, dev: &str) -> Result<Option<[u8; 6]>, String> {
    let entries: Vec<NeighJson> = ip_json(&["neigh", "show", "to", &hop.to_string(), "dev", dev])?;
    Ok(entries.iter().find_map(|entry| {
        let usable = !entry
            .state
            .iter()
            .any(|s| s == "FAILED" || s == "INCOMPLETE");
        entry
            .lladdr
            .as_deref()
            .filter(|_| usable)
            .and_then(parse_mac)
    }))
}

/// One empty datagram: enough for the kernel to resolve the neighbour.
fn probe(hop: IpAddr) {
    let bind: SocketAddr = if hop.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal address");
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], SocketAddr::new(hop, 9));
    }
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<Vec<T>, String> {
    let output = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .map_err(|err| format!("cannot run `ip` (install iproute2): {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|err| format!("unexpected `ip {}` output: {err}", args.join(" ")))
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_only_when_well_formed() {
        assert_eq!(
            parse_mac("02:00:0a:4d:01:0b"),
            Some([2, 0, 0x0a, 0x4d, 1, 0x0b])
        );
        assert_eq!(parse_mac("02:00:0a:4d:01"), None);
        assert_eq!(parse_mac("02:00:0a:4d:01:0b:00"), None);
        assert_eq!(parse_mac("zz:00:0a:4d:01:0b"), None);
    }
}
