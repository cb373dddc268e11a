//! A `tun` service's encapsulation: IPIP / IP6IP6 or GUE, and the outer
//! source address.

use std::fmt;
use std::net::IpAddr;

use super::{ConfigError, Method, Validator};

/// How a tun service wraps packets for its backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    pub encap: Encap,
    /// Outer source address; None = the LB's address on the route to each
    /// backend (what `ip route get BACKEND` calls prefsrc).
    pub source: Option<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// IPIP for IPv4 VIPs, IP6IP6 for IPv6 VIPs.
    Ipip,
    /// IP in UDP to this port (GUE variant 1).
    Gue { port: u16 },
}

/// The GUE port when `gue_port` is not given.
pub const DEFAULT_GUE_PORT: u16 = 6080;

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Encap::Ipip => f.write_str("ipip"),
            Encap::Gue { port } => write!(f, "gue:{port}"),
        }
    }
}

impl Validator<'_> {
    pub(super) fn tunnel(
        &self,
        at: &dyn Fn(&str) -> String,
        method: Method,
        vip: IpAddr,
        encap: Option<&str>,
        gue_port: Option<i64>,
        source: Option<&str>,
    ) -> Result<Option<Tunnel>, ConfigError> {
        if method != Method::Tun {
            for (key, present) in [
                ("encap", encap.is_some()),
                ("gue_port", gue_port.is_some()),
                ("tunnel_source", source.is_some()),
            ] {
                if present {
                    return Err(self.error(
                        at(key),
                        format!("{key} only applies to method = \"tun\""),
                        format!("remove {key}, or set method = \"tun\""),
                    ));
                }
            }
            return Ok(None);
        }
        let port = match gue_port {
            None => DEFAULT_GUE_PORT,
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                return Err(self.error(
                    at("gue_port"),
                    format!("{p} is not a UDP port"),
                    format!("use 1 to 65535 (the default is {DEFAULT_GUE_PORT})"),
                ))
            }
        };
        let encap = match encap {
            None | Some("ipip") => {
                if gue_port.is_some() {
                    return Err(self.error(
                        at("gue_port"),
                        "gue_port only applies to encap = \"gue\"",
                        "remove gue_port, or set encap = \"gue\"",
                    ));
                }
                Encap::Ipip
            }
            Some("gue") => Encap::Gue { port },
            Some(other) => {
                return Err(self.error(
                    at("encap"),
                    format!("unknown encapsulation {other:?}"),
                    "use \"ipip\" (IPIP / IP6IP6) or \"gue\" (IP in UDP, with gue_port)",
                ))
            }
        };
        let source = match source {
            None => None,
            Some(text) => {
                let address = self.address(&at("tunnel_source"), text)?;
                if address.is_ipv4() != vip.is_ipv4() {
                    return Err(self.error(
                        at("tunnel_source"),
                        format!("{address} and VIP {vip} are of different IP versions"),
                        "use an address of the VIP's IP version (the outer header matches the inner)",
                    ));
                }
                Some(address)
            }
        };
        Ok(Some(Tunnel { encap, source }))
    }
}
