//! Config contract v1 (design.md §5): the TOML file users write, parsed into
//! raw serde structs and validated into [`Config`]. Every error names the
//! file, the key, what is wrong and how to fix it, on one line.
//!
//! One file per section: each holds the section's model, its raw serde
//! form and its rules (`[daemon]` daemon.rs, `[timeouts]` timeouts.rs,
//! `[[service]]` service.rs with its tunnel.rs and snat.rs settings,
//! backends backend.rs, checks health.rs, `[ha]` ha.rs, `[bgp]` bgp.rs; the rules
//! that span services together.rs). This file reads the file and holds
//! what every section shares; a long file is parsed in pieces (pieces.rs).

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;

mod access;
mod backend;
mod bgp;
mod daemon;
mod ha;
mod health;
mod pieces;
mod service;
mod snat;
#[cfg(test)]
mod tests;
mod timeouts;
mod together;
mod tunnel;

pub use access::{Access, MAX_ACCESS_RULES};
pub use backend::Backend;
use backend::RawBackend;
use bgp::RawBgp;
pub use bgp::{Bgp, DEFAULT_DRAIN_DEADLINE};
use daemon::RawDaemon;
pub use daemon::{
    ApiTls, Daemon, XdpMode, DEFAULT_CONN_TABLE_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES,
    DEFAULT_PIN_DIR,
};
pub use ha::Ha;
use ha::RawHa;
use health::RawHealth;
pub use health::{CheckKind, DownPolicy, HealthCheck, HttpCheck};
use service::RawService;
pub use service::{
    HashKey, Method, NewFlowRate, Persistence, Protocol, Scheduler, Service, DEFAULT_CHBL_EPSILON,
    MAX_LEAST_BACKENDS, MAX_NEW_FLOW_RATE,
};
pub use snat::{
    Snat, DEFAULT_SNAT_PORTS, DEFAULT_SNAT_REUSE_AFTER, MAX_SNAT_ADDRESSES, MAX_SNAT_REUSE_AFTER,
};
use timeouts::RawTimeouts;
pub use timeouts::Timeouts;
pub use tunnel::{Encap, Tunnel, DEFAULT_GUE_PORT};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub timeouts: Timeouts,
    /// A failover group, when this node is one of several.
    pub ha: Option<Ha>,
    /// Every node active behind ECMP, its VIPs announced through BIRD.
    pub bgp: Option<Bgp>,
    pub services: Vec<Service>,
}

impl Config {
    /// The commands of every exec health check.
    pub fn exec_commands(&self) -> HashSet<&[String]> {
        self.services
            .iter()
            .flat_map(service_exec_commands)
            .collect()
    }
}

impl Service {
    /// The commands of its exec health checks (its backends' and its
    /// fallback's).
    pub fn exec_commands(&self) -> impl Iterator<Item = &[String]> {
        service_exec_commands(self)
    }
}

/// The commands of a service's exec health checks (its backends' and its
/// fallback's).
fn service_exec_commands(service: &Service) -> impl Iterator<Item = &[String]> {
    service
        .backends
        .iter()
        .chain(service.fallback.as_ref())
        .filter_map(|backend| match &backend.health.as_ref()?.kind {
            CheckKind::Exec { command } if !command.is_empty() => Some(command.as_slice()),
            _ => None,
        })
}

/// What went wrong, where, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {key}: {reason}; {fix}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key, e.g. `service[0].backend[1].address`.
    pub key: String,
    pub reason: String,
    pub fix: String,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_text(path).map(|(_, config)| config)
}

/// Parses and validates config text; `path` is used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw = pieces::raw_config(text).map_err(|err| syntax_error(path, text, &err))?;
    Validator { file: path }.config(raw)
}

/// The config as written, key by key: what the API edits before the
/// result is validated whole, exactly as a file would be.
pub type Document = toml::Table;

/// Reads a config file as its text and its validated config (the daemon
/// keeps the text to parse its document, [`parse_document`], off its
/// start: at 10,000 services a second parse took as long as the first).
pub fn load_text(path: &Path) -> Result<(String, Config), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: path.to_path_buf(),
        key: "(file)".into(),
        reason: format!("cannot read the file: {err}"),
        fix: "check the path given to --config".into(),
    })?;
    // Validating the text (not the document) keeps line numbers in errors.
    let config = parse(path, &text)?;
    Ok((text, config))
}

/// The document of config text: what the API edits.
pub fn parse_document(path: &Path, text: &str) -> Result<Document, ConfigError> {
    text.parse::<Document>()
        .map_err(|err| syntax_error(path, text, &err))
}

/// Validates an edited document; `origin` names it in error messages.
pub fn validate_document(origin: &Path, document: &Document) -> Result<Config, ConfigError> {
    let raw = RawConfig::deserialize(toml::Value::Table(document.clone())).map_err(|err| {
        ConfigError {
            file: origin.to_path_buf(),
            key: "(document)".into(),
            reason: err.message().trim().replace('\n', " "),
            fix: "see docs/config.md for the keys and their types".into(),
        }
    })?;
    Validator { file: origin }.config(raw)
}

/// Validates one `[[service]]` table of a document on its own, as the
/// service at `index`: with [`check_services`] over the edited list, what
/// an API edit of one service needs (the rest of the document is valid
/// already).
pub fn validate_service(
    origin: &Path,
    index: usize,
    table: &toml::Value,
) -> Result<Service, ConfigError> {
    let raw = RawService::deserialize(table.clone()).map_err(|err| ConfigError {
        file: origin.to_path_buf(),
        key: format!("service[{index}]"),
        reason: err.message().trim().replace('\n', " "),
        fix: "see docs/config.md for the keys and their types".into(),
    })?;
    Validator { file: origin }.service(index, raw)
}

/// The rules that span services (names, listeners, SNAT addresses, the
/// data plane's limits, exec checks' directory) for the service at
/// `index` among `services`, the others being valid together already: what
/// a whole file would be held to after one service changed. An `index`
/// past the end (a service removed) checks the limits alone.
pub fn check_service_among(
    origin: &Path,
    daemon: &Daemon,
    services: &[Service],
    index: usize,
) -> Result<(), ConfigError> {
    Validator { file: origin }.service_among(daemon, services, index)
}

fn syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let location = err
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}")
        })
        .unwrap_or_else(|| "(file)".into());
    ConfigError {
        file: path.to_path_buf(),
        key: location,
        reason: err.message().trim().replace('\n', " "),
        fix: "see docs/config.md for the keys and their types".into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    timeouts: Option<RawTimeouts>,
    ha: Option<RawHa>,
    bgp: Option<RawBgp>,
    #[serde(default)]
    service: Vec<RawService>,
}

struct Validator<'a> {
    file: &'a Path,
}

/// A key (`service[3] (web).backend[2]`) written out only when an error
/// names it: most values are valid, and writing out the keys of every
/// backend's fields was a tenth of parsing 10,000 services.
struct LazyKey<F: Fn(&mut fmt::Formatter) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter) -> fmt::Result> fmt::Display for LazyKey<F> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        (self.0)(f)
    }
}

/// `{key}.{field}`, written out only when an error names it.
struct Field<'a>(&'a dyn fmt::Display, &'static str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl Validator<'_> {
    fn error(
        &self,
        key: impl Into<String>,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
            fix: fix.into(),
        }
    }

    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let daemon = self.daemon(raw.daemon)?;
        let timeouts = self.timeouts(raw.timeouts)?;
        let ha = raw
            .ha
            .map(|ha| self.ha(ha, &daemon.interfaces))
            .transpose()?;
        let bgp = raw.bgp.map(|bgp| self.bgp(bgp)).transpose()?;
        if bgp.is_some() && daemon.hash_seed_file.is_none() {
            return Err(self.error(
                "daemon.hash_seed_file",
                "missing with [bgp]: every node behind the same VIPs must give a flow the same backend, so they share the flow-hash seed",
                "create it once, (umask 077; openssl rand -hex 32 > /etc/pnlb/hash-seed), copy it to every node and set hash_seed_file = \"/etc/pnlb/hash-seed\"",
            ));
        }
        if ha.is_some() && bgp.is_some() {
            return Err(self.error(
                "bgp",
                "set together with [ha]: a node is either one of an active-passive pair or one of many active nodes behind ECMP",
                "keep [ha] for a pair that moves the VIPs, or [bgp] for nodes that all announce them (docs/scale-out.md)",
            ));
        }
        let services = raw
            .service
            .into_iter()
            .enumerate()
            .map(|(index, raw_service)| self.service(index, raw_service))
            .collect::<Result<Vec<_>, _>>()?;
        self.services_together(&daemon, &services)?;
        Ok(Config {
            daemon,
            timeouts,
            ha,
            bgp,
            services,
        })
    }

    fn address(&self, key: &dyn fmt::Display, text: &str) -> Result<IpAddr, ConfigError> {
        let address: IpAddr = text.parse().map_err(|_| {
            self.error(
                key.to_string(),
                format!("{text:?} is not an IP address"),
                "write an IPv4 or IPv6 address like \"10.77.1.100\"",
            )
        })?;
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            return Err(self.error(
                key.to_string(),
                format!("{address} cannot be used here"),
                "use a unicast address that is not 0.0.0.0, :: or loopback",
            ));
        }
        if let IpAddr::V4(v4) = address {
            if v4.is_broadcast() {
                return Err(self.error(
                    key.to_string(),
                    "the broadcast address cannot be used here",
                    "use a unicast address",
                ));
            }
        }
        Ok(address)
    }

    fn port(&self, key: &dyn fmt::Display, value: i64) -> Result<u16, ConfigError> {
        u16::try_from(value).map_err(|_| {
            self.error(
                key.to_string(),
                format!("port {value} is out of range"),
                "use 0 to 65535",
            )
        })
    }

    fn duration(&self, key: &dyn fmt::Display, text: &str) -> Result<Duration, ConfigError> {
        duration::parse(text).ok_or_else(|| {
            self.error(
                key.to_string(),
                format!("{text:?} is not a duration"),
                "write it like \"500ms\", \"1s\" or \"2m\"",
            )
        })
    }
}
