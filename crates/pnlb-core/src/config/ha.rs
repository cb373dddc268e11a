//! `[ha]`: a failover group (design.md §5's HA contract). Every node of the
//! group runs the same services; one is active per group, elected by
//! authenticated adverts (VRRP-like) and holding the VIPs and `floating`
//! addresses on `interface`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ha {
    /// Failover group id (like a VRRP VRID), 1-255.
    pub group: u8,
    /// Higher wins; ties go to the higher address.
    pub priority: u8,
    /// Where adverts are sent and the floating addresses live.
    pub interface: String,
    pub peers: Vec<IpAddr>,
    pub advert_interval: Duration,
    /// The shared secret authenticating adverts.
    pub key_file: PathBuf,
    /// A returning higher-priority node waits this long before taking over.
    pub preempt_delay: Duration,
    /// Addresses that move with mastership, besides the VIPs.
    pub floating: Vec<IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    group: Option<i64>,
    priority: Option<i64>,
    interface: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    advert_interval: Option<String>,
    key_file: Option<String>,
    preempt_delay: Option<String>,
    #[serde(default)]
    floating: Vec<String>,
}

impl Validator<'_> {
    pub(super) fn ha(&self, raw: RawHa, interfaces: &[String]) -> Result<Ha, ConfigError> {
        let group = match raw.group {
            Some(g) if (1..=255).contains(&g) => g as u8,
            Some(g) => {
                return Err(self.error(
                    "ha.group",
                    format!("{g} is out of range"),
                    "use 1 to 255, the same on every node of the pair",
                ))
            }
            None => {
                return Err(self.error(
                    "ha.group",
                    "missing",
                    "add group = 1 (the same on every node of the pair)",
                ))
            }
        };
        let priority = match raw.priority {
            None => 100,
            Some(p) if (1..=254).contains(&p) => p as u8,
            Some(p) => {
                return Err(self.error(
                    "ha.priority",
                    format!("{p} is out of range"),
                    "use 1 to 254 (higher wins)",
                ))
            }
        };
        let interface = match raw.interface {
            Some(name) if interfaces.contains(&name) => name,
            Some(name) => {
                return Err(self.error(
                    "ha.interface",
                    format!("{name:?} is not one of daemon.interfaces"),
                    "use the interface that receives VIP traffic",
                ))
            }
            None => return Err(self.error("ha.interface", "missing", "add interface = \"eth0\"")),
        };
        if raw.peers.is_empty() {
            return Err(self.error(
                "ha.peers",
                "no peers",
                "list the other nodes' addresses, e.g. peers = [\"10.77.1.3\"]",
            ));
        }
        let peers = raw
            .peers
            .iter()
            .enumerate()
            .map(|(i, text)| self.address(&format!("ha.peers[{i}]"), text))
            .collect::<Result<Vec<_>, _>>()?;
        let floating = raw
            .floating
            .iter()
            .enumerate()
            .map(|(i, text)| self.address(&format!("ha.floating[{i}]"), text))
            .collect::<Result<Vec<_>, _>>()?;
        let advert_interval = match &raw.advert_interval {
            None => Duration::from_millis(200),
            Some(text) => self.duration(&"ha.advert_interval", text)?,
        };
        if !(Duration::from_millis(20)..=Duration::from_secs(10)).contains(&advert_interval) {
            return Err(self.error(
                "ha.advert_interval",
                "out of range",
                "use 20ms to 10s (the master is declared down after 3 missed)",
            ));
        }
        let preempt_delay = match &raw.preempt_delay {
            None => Duration::from_secs(5),
            Some(text) => self.duration(&"ha.preempt_delay", text)?,
        };
        let key_file =
            match raw.key_file {
                Some(path) if path.starts_with('/') => PathBuf::from(path),
                Some(path) => {
                    return Err(self.error(
                        "ha.key_file",
                        format!("{path:?} is not an absolute path"),
                        "write it like \"/etc/pnlb/ha.key\"",
                    ))
                }
                None => return Err(self.error(
                    "ha.key_file",
                    "missing",
                    "add key_file = \"/etc/pnlb/ha.key\" (a shared secret: openssl rand -hex 32)",
                )),
            };
        Ok(Ha {
            group,
            priority,
            interface,
            peers,
            advert_interval,
            key_file,
            preempt_delay,
            floating,
        })
    }
}
