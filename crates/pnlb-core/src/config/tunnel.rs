//! A `tun` service's encapsulation: IPIP / IP6IP6 or GUE, and the outer
//! source address (or a prefix the outer source varies in, per flow).

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
    /// With a prefix as tunnel_source: how many low bits of the outer
    /// source come from the flow hash (at most 16), so that routers' ECMP
    /// and the servers' RSS spread IPIP flows, which carry no ports
    /// outside. 0 = one source for every flow.
    pub source_entropy_bits: u8,
}

/// Most low bits of the outer source a flow's hash may set.
pub const MAX_SOURCE_ENTROPY_BITS: u8 = 16;

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
        let (source, source_entropy_bits) = match source {
            None => (None, 0),
            Some(text) => self.tunnel_source(&at("tunnel_source"), text, vip)?,
        };
        Ok(Some(Tunnel {
            encap,
            source,
            source_entropy_bits,
        }))
    }

    /// "ADDRESS" (every flow's outer source) or "ADDRESS/LEN" (a prefix
    /// the outer source varies in): the address and the bits that vary.
    fn tunnel_source(
        &self,
        key: &str,
        text: &str,
        vip: IpAddr,
    ) -> Result<(Option<IpAddr>, u8), ConfigError> {
        let (address_text, length) = match text.split_once('/') {
            None => (text, None),
            Some((address, length)) => (address, Some(length)),
        };
        let address = self.address(&key, address_text)?;
        if address.is_ipv4() != vip.is_ipv4() {
            return Err(self.error(
                key,
                format!("{address} and VIP {vip} are of different IP versions"),
                "use an address of the VIP's IP version (the outer header matches the inner)",
            ));
        }
        let Some(length) = length else {
            return Ok((Some(address), 0));
        };
        let width: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len =
            length
                .parse::<u8>()
                .ok()
                .filter(|&n| n < width && n >= width - 24)
                .ok_or_else(|| {
                    self.error(
                        key,
                        format!("{text:?}: prefix length {length:?} is out of range"),
                        format!(
                        "use a prefix of {} to {} bits, routed to this load balancer, e.g. \"{}\"",
                        width - 24,
                        width - 1,
                        if address.is_ipv4() { "10.77.200.0/24" } else { "fd77:200::/112" }
                    ),
                    )
                })?;
        let host_bits = width - prefix_len;
        let bits = match address {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        if bits & ((1u128 << host_bits) - 1) != 0 {
            return Err(self.error(
                key,
                format!("{text:?} has host bits set"),
                "write the prefix's first address, as `ip route` would",
            ));
        }
        Ok((Some(address), host_bits.min(MAX_SOURCE_ENTROPY_BITS)))
    }
}
