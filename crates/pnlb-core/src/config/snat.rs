//! An `snat` service's local addresses and source-port range.

use std::net::IpAddr;

use super::{ConfigError, Method, Validator};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snat {
    pub addresses: Vec<IpAddr>,
    pub port_min: u16,
    pub port_max: u16,
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
    ) -> Result<Option<Snat>, ConfigError> {
        if method != Method::Snat {
            for (key, present) in [
                ("snat_addresses", addresses.is_some()),
                ("snat_ports", ports.is_some()),
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
        Ok(Some(Snat {
            addresses: list,
            port_min,
            port_max,
        }))
    }
}
