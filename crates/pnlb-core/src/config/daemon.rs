//! `[daemon]`: where the XDP program attaches, in which mode, where the API
//! listens, and how large the connection table is.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, Validator};

#[derive(Clone, Debug, PartialEq)]
pub struct Daemon {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub api: Option<SocketAddr>,
    /// The API on a unix socket too (for `pnlb ctl` on the same host).
    pub api_socket: Option<PathBuf>,
    /// Bearer token for mutations (and for reads from other hosts); none =
    /// the API is read-only.
    pub api_token_file: Option<PathBuf>,
    /// Bearer token for reads from other hosts only (a Prometheus scraper):
    /// it changes nothing.
    pub api_read_token_file: Option<PathBuf>,
    /// HTTPS on daemon.api: a PEM certificate (chain) and its private key.
    pub api_tls: Option<ApiTls>,
    /// Entries of the established-flow table, which never evicts (when it
    /// is full, new flows that need an entry are refused); the half-open
    /// table gets a quarter (docs/conntrack.md).
    pub conn_table_size: u32,
    /// Services and backends the data plane holds (its maps are sized for
    /// them at load; per-CPU counters make each slot cost memory on every
    /// CPU).
    pub max_services: u32,
    pub max_backends: u32,
    /// A secret the flow hash is seeded from; none = the [ha] key's, or a
    /// random one at each start (docs/methods.md, "Hash seed").
    pub hash_seed_file: Option<PathBuf>,
    /// The bpffs directory the data plane is pinned under, so it outlives
    /// the daemon (docs/operations.md); None = the default, used when it is
    /// a bpffs.
    pub pin_dir: Option<PathBuf>,
    /// How long the data plane takes new flows with no daemon tending it
    /// (after a crash or a stop, health checks no longer run); after that
    /// it refuses them, established flows going on. None = without end.
    pub unattended_limit: Option<Duration>,
    /// The one directory exec health checks may run commands from; None =
    /// anywhere (the config file is root's to write).
    pub exec_check_dir: Option<PathBuf>,
    /// Who exec health checks run as; None = the daemon's own user.
    pub exec_check_user: Option<String>,
    /// Whether the API may add or change exec health checks (it may not
    /// unless this is set, and then only from exec_check_dir).
    pub api_exec_checks: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Where the data plane is pinned unless daemon.pin_dir says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/pnlb";

pub const DEFAULT_CONN_TABLE_SIZE: u32 = 262_144;
pub const DEFAULT_MAX_SERVICES: u32 = 1024;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
/// The largest max_services and max_backends (the per-CPU counters of
/// that many take about 20 and 10 MB per CPU).
pub const MAX_SERVICES_LIMIT: u32 = 65_536;
pub const MAX_BACKENDS_LIMIT: u32 = 262_144;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    #[serde(default)]
    interfaces: Vec<String>,
    xdp_mode: Option<String>,
    api: Option<String>,
    api_socket: Option<String>,
    api_token_file: Option<String>,
    api_read_token_file: Option<String>,
    api_tls_cert_file: Option<String>,
    api_tls_key_file: Option<String>,
    exec_check_dir: Option<String>,
    exec_check_user: Option<String>,
    #[serde(default)]
    api_exec_checks: bool,
    conn_table_size: Option<i64>,
    max_services: Option<i64>,
    max_backends: Option<i64>,
    hash_seed_file: Option<String>,
    pin_dir: Option<String>,
    unattended_limit: Option<String>,
}

impl Validator<'_> {
    pub(super) fn daemon(&self, raw: Option<RawDaemon>) -> Result<Daemon, ConfigError> {
        let raw = raw.ok_or_else(|| {
            self.error(
                "daemon",
                "the [daemon] table is missing",
                "add [daemon] with interfaces = [\"eth1\"]",
            )
        })?;
        if raw.interfaces.is_empty() {
            return Err(self.error(
                "daemon.interfaces",
                "no interface to attach the XDP program to",
                "list the interfaces that receive VIP traffic, e.g. interfaces = [\"eth1\"]",
            ));
        }
        let mut seen = HashSet::new();
        for (i, name) in raw.interfaces.iter().enumerate() {
            if name.is_empty()
                || name.len() > 15
                || name.contains(['/', ' '])
                || name == "."
                || name == ".."
            {
                return Err(self.error(
                    format!("daemon.interfaces[{i}]"),
                    format!("{name:?} is not a valid interface name"),
                    "use a name as `ip link` shows it, at most 15 characters",
                ));
            }
            if !seen.insert(name) {
                return Err(self.error(
                    format!("daemon.interfaces[{i}]"),
                    format!("interface {name:?} is listed twice"),
                    "list each interface once",
                ));
            }
        }
        let xdp_mode = match raw.xdp_mode.as_deref() {
            None | Some("native") => XdpMode::Native,
            Some("generic") => XdpMode::Generic,
            Some(other) => {
                return Err(self.error(
                    "daemon.xdp_mode",
                    format!("unknown XDP mode {other:?}"),
                    "use \"native\" (driver mode, the default) or \"generic\" (slower, works everywhere)",
                ))
            }
        };
        let api = match raw.api {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                self.error(
                    "daemon.api",
                    format!("{text:?} is not an address:port"),
                    "write it like \"127.0.0.1:9180\"",
                )
            })?),
        };
        let absolute = |key: &str, text: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
            match text {
                None => Ok(None),
                Some(t) if t.starts_with('/') && !t.ends_with('/') => Ok(Some(PathBuf::from(t))),
                Some(t) => Err(self.error(
                    format!("daemon.{key}"),
                    format!("{t:?} is not an absolute file path"),
                    format!(
                        "write it like \"{}\"",
                        match key {
                            "api_socket" => "/run/pnlb/api.sock",
                            "hash_seed_file" => "/etc/pnlb/hash-seed",
                            "pin_dir" => DEFAULT_PIN_DIR,
                            "exec_check_dir" => "/etc/pnlb/checks",
                            "api_tls_cert_file" => "/etc/pnlb/api.crt",
                            "api_tls_key_file" => "/etc/pnlb/api.key",
                            _ => "/run/pnlb/api.token",
                        }
                    ),
                )),
            }
        };
        let api_socket = absolute("api_socket", raw.api_socket)?;
        let api_token_file = absolute("api_token_file", raw.api_token_file)?;
        let api_read_token_file = absolute("api_read_token_file", raw.api_read_token_file)?;
        let api_tls = match (
            absolute("api_tls_cert_file", raw.api_tls_cert_file)?,
            absolute("api_tls_key_file", raw.api_tls_key_file)?,
        ) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) if api.is_some() => Some(ApiTls {
                cert_file,
                key_file,
            }),
            (Some(_), Some(_)) => {
                return Err(self.error(
                    "daemon.api_tls_cert_file",
                    "TLS is for the TCP API, and daemon.api is not set",
                    "set daemon.api (e.g. \"10.0.0.2:9443\"), or remove the api_tls_* keys",
                ))
            }
            (cert, _) => {
                let (key, missing) = if cert.is_some() {
                    ("daemon.api_tls_key_file", "the certificate's private key")
                } else {
                    ("daemon.api_tls_cert_file", "the certificate")
                };
                return Err(self.error(
                    key,
                    format!("HTTPS needs {missing} too"),
                    "set both daemon.api_tls_cert_file and daemon.api_tls_key_file (PEM files)",
                ));
            }
        };
        let hash_seed_file = absolute("hash_seed_file", raw.hash_seed_file)?;
        let pin_dir = absolute("pin_dir", raw.pin_dir)?;
        let exec_check_dir = absolute("exec_check_dir", raw.exec_check_dir)?;
        if raw.api_exec_checks && exec_check_dir.is_none() {
            return Err(self.error(
                "daemon.api_exec_checks",
                "the API may set exec checks only from an allowlisted directory, and none is set",
                "set daemon.exec_check_dir (e.g. \"/etc/pnlb/checks\", root's, mode 755), or remove api_exec_checks",
            ));
        }
        let exec_check_user = match raw.exec_check_user {
            Some(user)
                if user.is_empty()
                    || !user
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
            {
                return Err(self.error(
                    "daemon.exec_check_user",
                    format!("{user:?} is not a user name"),
                    "name an unprivileged user, e.g. \"nobody\" or \"pnlb-check\"",
                ))
            }
            user => user,
        };
        for (key, file) in [
            ("api_token_file", &api_token_file),
            ("api_read_token_file", &api_read_token_file),
        ] {
            if api.is_none() && api_socket.is_none() && file.is_some() {
                return Err(self.error(
                    format!("daemon.{key}"),
                    "there is no API to protect",
                    format!("set daemon.api (e.g. \"127.0.0.1:9180\") or daemon.api_socket, or remove {key}"),
                ));
            }
        }
        let conn_table_size = match raw.conn_table_size {
            None => DEFAULT_CONN_TABLE_SIZE,
            Some(n) if (1024..=16_777_216).contains(&n) => n as u32,
            Some(n) => {
                return Err(self.error(
                    "daemon.conn_table_size",
                    format!("{n} entries is out of range"),
                    "use 1024 to 16777216 (each flow takes one entry, two for nat/snat)",
                ))
            }
        };
        let limit = |key: &str, value: Option<i64>, default: u32, most: u32| match value {
            None => Ok(default),
            Some(n) if (1..=i64::from(most)).contains(&n) => Ok(n as u32),
            Some(n) => Err(self.error(
                format!("daemon.{key}"),
                format!("{n} is out of range"),
                format!("use 1 to {most} (default {default})"),
            )),
        };
        let max_services = limit(
            "max_services",
            raw.max_services,
            DEFAULT_MAX_SERVICES,
            MAX_SERVICES_LIMIT,
        )?;
        let max_backends = limit(
            "max_backends",
            raw.max_backends,
            DEFAULT_MAX_BACKENDS,
            MAX_BACKENDS_LIMIT,
        )?;
        let unattended_limit = match raw.unattended_limit.as_deref() {
            None => None,
            Some(text) => match self.duration(&"daemon.unattended_limit", text)? {
                limit if limit.is_zero() => None,
                limit if limit < Duration::from_secs(10) => {
                    return Err(self.error(
                        "daemon.unattended_limit",
                        format!("{text} is shorter than a restart takes"),
                        "use at least \"10s\" (e.g. \"15m\"), or \"0s\" for no limit",
                    ))
                }
                limit => Some(limit),
            },
        };
        Ok(Daemon {
            interfaces: raw.interfaces,
            xdp_mode,
            api,
            api_socket,
            api_token_file,
            api_read_token_file,
            api_tls,
            conn_table_size,
            max_services,
            max_backends,
            hash_seed_file,
            pin_dir,
            unattended_limit,
            exec_check_dir,
            exec_check_user,
            api_exec_checks: raw.api_exec_checks,
        })
    }
}
