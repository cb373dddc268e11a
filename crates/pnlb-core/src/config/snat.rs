//! An `snat` service's local addresses and source-port range.

use std::net::IpAddr;
use std::time::Duration;

use super::{ConfigError, Method, Validator};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snat {
    pub addresses: Vec<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
    /// How long an ended flow's (SNAT address, port, backend) rests before
    /// another flow may have it: the backend may still hold the old
    /// connection in TIME_WAIT (60 s on Linux), and would drop or challenge
    /// a SYN on it.
    pub reuse_after: Duration,
}

/// Default rest of an ended flow's SNAT port: twice Linux's TIME_WAIT.
pub const DEFAULT_SNAT_REUSE_AFTER: Duration = Duration::from_secs(120);

/// The longest rest (the data plane keeps it in 16 bits of seconds).
pub const MAX_SNAT_REUSE_AFTER: Duration = Duration::from_secs(3600);

impl Snat {
    /// Ports per (address, backend) pair: how many flows to one backend
    /// the pool holds at once.
    pub fn ports(&self) -> u32 {
        u32::from(self.port_max - self.port_min) + 1
    }

    /// New flows per second to one backend that the pool sustains while
    /// every ended flow's port rests for reuse_after.
    pub fn sustained_rate(&self) -> Option<f64> {
        let rest = self.reuse_after.as_secs_f64();
        (rest > 0.0).then(|| f64::from(self.ports()) * self.addresses.len() as f64 / rest)
    }
}

/// Most SNAT addresses per service (the data plane's PNLB_MAX_SNAT_ADDRS).
pub const MAX_SNAT_ADDRESSES: usize = 16;

/// Default SNAT source ports: below the kernel's ephemeral range
/// (32768-60999), so the LB's own connections never collide with them.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (10000, 32767);

impl Validator<'_> {
    pub(super) fn snat(
        &self,
        at: &dyn Fn(&str) -> String,
        method: Method,
        vip: IpAddr,
        addresses: Option<Vec<String>>,
        ports: Option<String>,
        reuse_after: Option<String>,
    ) -> Result<Option<Snat>, ConfigError> {
        if method != Method::Snat {
            for (key, present) in [
                ("snat_addresses", addresses.is_some()),
                ("snat_ports", ports.is_some()),
                ("snat_reuse_after", reuse_after.is_some()),
            ] {
                if present {
                    return Err(self.error(
                        at(key),
                        format!("{key} only applies to method = \"snat\""),
                        format!("remove {key}, or set method = \"snat\""),
                    ));
                }
            }
            return Ok(None);
        }
        let texts = addresses.unwrap_or_default();
        if texts.is_empty() || texts.len() > MAX_SNAT_ADDRESSES {
            return Err(self.error(
                at("snat_addresses"),
                format!(
                    "snat needs 1 to {MAX_SNAT_ADDRESSES} source addresses, {} given",
                    texts.len()
                ),
                "list addresses this load balancer owns, e.g. snat_addresses = [\"10.77.1.2\"]",
            ));
        }
        let mut list = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let key = at(&format!("snat_addresses[{i}]"));
            let address = self.address(&key, text)?;
            if address.is_ipv4() != vip.is_ipv4() {
                return Err(self.error(
                    key,
                    format!("{address} and VIP {vip} are of different IP versions"),
                    "use SNAT addresses of the VIP's IP version",
                ));
            }
            if list.contains(&address) {
                return Err(self.error(
                    key,
                    format!("{address} is listed twice"),
                    "list each address once",
                ));
            }
            list.push(address);
        }
        let (port_min, port_max) = match ports {
            None => DEFAULT_SNAT_PORTS,
            Some(text) => {
                let bad = || {
                    self.error(
                        at("snat_ports"),
                        format!("{text:?} is not a port range"),
                        "write it like \"10000-32767\" (first port at least 1024)",
                    )
                };
                let (lo, hi) = text.split_once('-').ok_or_else(bad)?;
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if lo < 1024 || hi < lo {
                    return Err(bad());
                }
                (lo, hi)
            }
        };
        let reuse_after = match reuse_after {
            None => DEFAULT_SNAT_REUSE_AFTER,
            Some(text) => {
                let key = at("snat_reuse_after");
                let rest = self.duration(&key, &text)?;
                if rest > MAX_SNAT_REUSE_AFTER {
                    return Err(self.error(
                        key,
                        format!("{text:?} is out of range"),
                        "use 0s to 1h; the default 120s outlasts Linux's 60 s TIME_WAIT",
                    ));
                }
                rest
            }
        };
        Ok(Some(Snat {
            addresses: list,
            port_min,
            port_max,
            reuse_after,
        }))
    }
}
