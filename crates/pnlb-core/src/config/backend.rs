//! `[[service.backend]]` (and `[service.fallback]`): a real server, its
//! port, weight and connection limit.

use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::{ConfigError, Field, HealthCheck, Method, RawHealth, Validator};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    /// 0 = quiescent: no new flows, established flows stay.
    pub weight: u32,
    /// Connections (active + inactive) at which it takes no new flow.
    pub max_conns: Option<u32>,
    /// The service's check with this backend's overrides; None = unchecked
    /// (always considered up).
    pub health: Option<HealthCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    address: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    max_conns: Option<i64>,
    pub(super) health: Option<RawHealth>,
}

impl Validator<'_> {
    pub(super) fn backend(
        &self,
        key: &dyn fmt::Display,
        raw: RawBackend,
        vip: IpAddr,
        service_port: u16,
        method: Method,
        service_health: Option<&RawHealth>,
    ) -> Result<Backend, ConfigError> {
        let text = raw.address.ok_or_else(|| {
            self.error(
                format!("{key}.address"),
                "missing",
                "add the real server's address, e.g. address = \"10.77.2.11\"",
            )
        })?;
        let address = self.address(&Field(key, "address"), &text)?;
        if address.is_ipv4() != vip.is_ipv4() {
            return Err(self.error(
                format!("{key}.address"),
                format!("backend {address} and VIP {vip} are of different IP versions"),
                "use backends of the VIP's IP version (no NAT46/64)",
            ));
        }
        let port = match raw.port {
            None => service_port,
            Some(p) => self.port(&Field(key, "port"), p)?,
        };
        if service_port == 0 && port != 0 {
            return Err(self.error(
                format!("{key}.port"),
                "a port-0 service keeps each flow's destination port",
                "drop the backend port",
            ));
        }
        if port != service_port && matches!(method, Method::Dr | Method::Tun) {
            return Err(self.error(
                format!("{key}.port"),
                format!("port {port} differs from the service port {service_port}"),
                format!("method {method} forwards the client's packet unchanged and cannot rewrite ports: drop the backend port or make it equal to the service's"),
            ));
        }
        let weight = match raw.weight {
            None => 1,
            Some(w) if (0..=65535).contains(&w) => w as u32,
            Some(w) => {
                return Err(self.error(
                    format!("{key}.weight"),
                    format!("weight {w} is out of range"),
                    "use 0 (quiescent) to 65535",
                ))
            }
        };
        let health = match (service_health, raw.health) {
            (None, None) => None,
            (service, own) => {
                let merged = RawHealth::merge(service, own);
                self.health_check(&Field(key, "health"), merged, port)?
            }
        };
        let max_conns = match raw.max_conns {
            None => None,
            Some(n) if (1..=i64::from(u32::MAX)).contains(&n) => Some(n as u32),
            Some(n) => {
                return Err(self.error(
                    format!("{key}.max_conns"),
                    format!("{n} is out of range"),
                    "use a positive number of connections, or leave it out for no limit",
                ))
            }
        };
        Ok(Backend {
            address,
            port,
            weight,
            max_conns,
            health,
        })
    }
}
