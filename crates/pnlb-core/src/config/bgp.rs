//! `[bgp]`: every node active, the VIPs announced through BIRD (which
//! speaks BGP and BFD to the routers; pnlb decides what it announces), the
//! routers spreading flows over the nodes with ECMP (docs/scale-out.md).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bgp {
    /// BIRD's control socket (birdc's `-s`).
    pub bird_socket: PathBuf,
    /// The file pnlb writes the VIPs it announces to, as BIRD static
    /// protocols `pnlb_vips4` and `pnlb_vips6`; BIRD's config includes it.
    pub routes_file: PathBuf,
    /// How long `pnlb ctl drain-node` waits for flows to end by default.
    pub drain_deadline: Duration,
    /// The other nodes behind the same VIPs, for connection sync among
    /// all of them (what nat, snat and per-node schedulers need to keep a
    /// flow the routers move to another node); empty: no sync.
    pub peers: Vec<IpAddr>,
    /// The secret signing sync messages, the same on every node (mode 600).
    pub key_file: Option<PathBuf>,
}

/// The default drain deadline.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    bird_socket: Option<String>,
    routes_file: Option<String>,
    drain_deadline: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    key_file: Option<String>,
}

impl Validator<'_> {
    pub(super) fn bgp(&self, raw: RawBgp) -> Result<Bgp, ConfigError> {
        let path = |key: &str, value: Option<String>, example: &str| match value
            .filter(|v| !v.trim().is_empty())
        {
            Some(text) if text.starts_with('/') => Ok(PathBuf::from(text)),
            Some(text) => Err(self.error(
                format!("bgp.{key}"),
                format!("{text:?} is not an absolute path"),
                format!("write it from the root, e.g. {key} = \"{example}\""),
            )),
            None => Err(self.error(
                format!("bgp.{key}"),
                "missing",
                format!("add {key} = \"{example}\""),
            )),
        };
        let bird_socket = path("bird_socket", raw.bird_socket, "/run/bird/bird.ctl")?;
        let routes_file = path("routes_file", raw.routes_file, "/etc/bird/pnlb-vips.conf")?;
        let drain_deadline = match raw.drain_deadline {
            None => DEFAULT_DRAIN_DEADLINE,
            Some(text) => {
                let deadline = self.duration(&"bgp.drain_deadline", &text)?;
                if deadline > Duration::from_secs(24 * 3600) {
                    return Err(self.error(
                        "bgp.drain_deadline",
                        format!("{text} is longer than a day"),
                        "use at most \"24h\"",
                    ));
                }
                deadline
            }
        };
        let peers = raw
            .peers
            .iter()
            .enumerate()
            .map(|(i, text)| self.address(&format!("bgp.peers[{i}]"), text))
            .collect::<Result<Vec<_>, _>>()?;
        if peers.iter().any(|p| p.is_ipv4()) && peers.iter().any(|p| p.is_ipv6()) {
            return Err(self.error(
                "bgp.peers",
                "IPv4 and IPv6 addresses mixed",
                "list every node by addresses of one family",
            ));
        }
        let key_file = match (raw.key_file, peers.is_empty()) {
            (None, false) => {
                return Err(self.error(
                    "bgp.key_file",
                    "missing with peers: connection sync is signed",
                    "create it once, (umask 077; openssl rand -hex 32 > /etc/pnlb/sync.key), copy it to every node and set key_file = \"/etc/pnlb/sync.key\"",
                ))
            }
            (Some(_), true) => {
                return Err(self.error(
                    "bgp.key_file",
                    "set without peers",
                    "list the other nodes in peers to sync connections with them, or remove key_file",
                ))
            }
            (key, _) => key.map(|text| path("key_file", Some(text), "/etc/pnlb/sync.key")).transpose()?,
        };
        Ok(Bgp {
            bird_socket,
            routes_file,
            drain_deadline,
            peers,
            key_file,
        })
    }
}
