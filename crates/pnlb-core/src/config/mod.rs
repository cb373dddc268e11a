//! Config contract v1 (design.md §5): the TOML file users write, parsed into
//! raw serde structs and validated into [`Config`]. Every error names the
//! file, the key, what is wrong and how to fix it, on one line.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;

mod ha;
mod health;
pub use ha::Ha;
use ha::RawHa;
use health::RawHealth;
pub use health::{CheckKind, DownPolicy, HealthCheck, HttpCheck};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub daemon: Daemon,
    pub timeouts: Timeouts,
    /// A failover group, when this node is one of several.
    pub ha: Option<Ha>,
    pub services: Vec<Service>,
}

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
    /// Entries in the connection table (an LRU: the oldest go first when full).
    pub conn_table_size: u32,
}

pub const DEFAULT_CONN_TABLE_SIZE: u32 = 262_144;

/// Idle timeouts per connection state, as IPVS has them (`ipvsadm --set`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: Duration,
    pub tcp_fin: Duration,
    pub tcp_syn: Duration,
    pub tcp_close: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(900),
            tcp_fin: Duration::from_secs(120),
            tcp_syn: Duration::from_secs(60),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    /// 0 = every port of the VIP.
    pub port: u16,
    pub protocol: Protocol,
    pub method: Method,
    pub scheduler: Scheduler,
    pub hash_key: HashKey,
    /// snat only: the LB-local source addresses and the port range to use.
    pub snat: Option<Snat>,
    /// tun only: how packets are wrapped for the backends.
    pub tunnel: Option<Tunnel>,
    /// Source affinity (IPVS -p / -M).
    pub persistence: Option<Persistence>,
    /// What happens to a down backend's established flows.
    pub on_backend_down: DownPolicy,
    /// A backend that comes up ramps its weight over this long.
    pub slow_start: Duration,
    /// Takes new flows only while every backend is down.
    pub fallback: Option<Backend>,
    pub backends: Vec<Backend>,
}

/// New flows from one client (address under `prefix_len`) go to the
/// backend its last flow went to, for `timeout` after that flow started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    pub timeout: Duration,
    /// Significant leading bits of the client address (IPVS -M): 32/128 = per address.
    pub prefix_len: u8,
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Direct routing: MAC rewrite, replies bypass the LB.
    Dr,
    /// Tunneling: IPIP / IP6IP6 / GUE to the backend, replies bypass the LB.
    Tun,
    /// Destination NAT: replies return through the LB (servers route via it).
    Nat,
    /// Full NAT: source and destination rewritten; works one-arm.
    Snat,
}

impl Method {
    /// Whether replies cross the load balancer and need translating back.
    pub fn translates(self) -> bool {
        matches!(self, Method::Nat | Method::Snat)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheduler {
    /// Round-robin (IPVS rr).
    Rr,
    /// Weighted round-robin, interleaved (IPVS wrr).
    Wrr,
    /// Source hashing (IPVS sh), on the weighted Maglev table.
    Sh,
    /// Destination hashing (IPVS dh), on the weighted Maglev table.
    Dh,
    /// Weighted Maglev over `hash_key` (the 5-tuple by default).
    Maglev,
    /// Least-connection (IPVS lc).
    Lc,
    /// Weighted least-connection (IPVS wlc).
    Wlc,
    /// Shortest expected delay (IPVS sed).
    Sed,
    /// Never queue (IPVS nq).
    Nq,
    /// Power of two choices on active connections.
    P2c,
    /// Consistent hashing with bounded loads: Maglev, but no backend above
    /// (1 + epsilon) x its share of the service's flows.
    Chbl { epsilon: f64 },
}

/// Most backends a least-load service may have (the data plane scans them
/// per new flow; PNLB_MAX_LEAST_BACKENDS).
pub const MAX_LEAST_BACKENDS: usize = 64;

impl Scheduler {
    /// Whether it picks by hashing the flow (and so takes a `hash_key`).
    pub fn hashes(self) -> bool {
        matches!(
            self,
            Scheduler::Sh | Scheduler::Dh | Scheduler::Maglev | Scheduler::Chbl { .. }
        )
    }

    /// Whether it reads connection counts for every new flow.
    pub fn reads_load(self) -> bool {
        matches!(
            self,
            Scheduler::Lc | Scheduler::Wlc | Scheduler::Sed | Scheduler::Nq | Scheduler::P2c
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKey {
    FiveTuple,
    Source,
    Destination,
}

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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Dr => "dr",
            Method::Tun => "tun",
            Method::Nat => "nat",
            Method::Snat => "snat",
        })
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Sh => "sh",
            Scheduler::Dh => "dh",
            Scheduler::Maglev => "maglev",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::P2c => "p2c",
            Scheduler::Chbl { .. } => "chbl",
        })
    }
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
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: path.to_path_buf(),
        key: "(file)".into(),
        reason: format!("cannot read the file: {err}"),
        fix: "check the path given to --config".into(),
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is used in error messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|err| syntax_error(path, text, &err))?;
    Validator { file: path }.config(raw)
}

/// The config as written, key by key: what the API edits before the
/// result is validated whole, exactly as a file would be.
pub type Document = toml::Table;

/// Reads a config file as both its document and its validated config.
pub fn load_document(path: &Path) -> Result<(Document, Config), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: path.to_path_buf(),
        key: "(file)".into(),
        reason: format!("cannot read the file: {err}"),
        fix: "check the path given to --config".into(),
    })?;
    // Validating the text (not the document) keeps line numbers in errors.
    let config = parse(path, &text)?;
    let document = text
        .parse::<Document>()
        .map_err(|err| syntax_error(path, &text, &err))?;
    Ok((document, config))
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
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    #[serde(default)]
    interfaces: Vec<String>,
    xdp_mode: Option<String>,
    api: Option<String>,
    api_socket: Option<String>,
    api_token_file: Option<String>,
    conn_table_size: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp: Option<String>,
    tcp_fin: Option<String>,
    tcp_syn: Option<String>,
    tcp_close: Option<String>,
    udp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<String>,
    vip: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    method: Option<String>,
    scheduler: Option<String>,
    hash_key: Option<String>,
    persistence: Option<String>,
    persistence_mask: Option<i64>,
    chbl_epsilon: Option<f64>,
    encap: Option<String>,
    gue_port: Option<i64>,
    tunnel_source: Option<String>,
    snat_addresses: Option<Vec<String>>,
    snat_ports: Option<String>,
    on_backend_down: Option<String>,
    slow_start: Option<String>,
    fallback: Option<RawBackend>,
    #[serde(default)]
    backend: Vec<RawBackend>,
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    max_conns: Option<i64>,
    health: Option<RawHealth>,
}

/// Default chbl epsilon: a backend may carry 25% above its share.
pub const DEFAULT_CHBL_EPSILON: f64 = 0.25;

struct Validator<'a> {
    file: &'a Path,
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
        let mut services = Vec::with_capacity(raw.service.len());
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        for (index, raw_service) in raw.service.into_iter().enumerate() {
            let service = self.service(index, raw_service)?;
            if !names.insert(service.name.clone()) {
                return Err(self.error(
                    format!("service[{index}].name"),
                    format!("service name {:?} is used twice", service.name),
                    "give every [[service]] its own name",
                ));
            }
            if !keys.insert((service.vip, service.port, service.protocol)) {
                return Err(self.error(
                    format!("service[{index}]"),
                    format!(
                        "another service already listens on {} port {} {}",
                        service.vip, service.port, service.protocol
                    ),
                    "each (vip, port, protocol) may belong to one service only",
                ));
            }
            services.push(service);
        }
        Ok(Config {
            daemon,
            timeouts,
            ha,
            services,
        })
    }

    fn timeouts(&self, raw: Option<RawTimeouts>) -> Result<Timeouts, ConfigError> {
        let mut timeouts = Timeouts::default();
        let Some(raw) = raw else { return Ok(timeouts) };
        for (name, text, slot) in [
            ("tcp", raw.tcp, &mut timeouts.tcp),
            ("tcp_fin", raw.tcp_fin, &mut timeouts.tcp_fin),
            ("tcp_syn", raw.tcp_syn, &mut timeouts.tcp_syn),
            ("tcp_close", raw.tcp_close, &mut timeouts.tcp_close),
            ("udp", raw.udp, &mut timeouts.udp),
        ] {
            if let Some(text) = text {
                let value = self.duration(&format!("timeouts.{name}"), &text)?;
                if value < Duration::from_secs(1) {
                    return Err(self.error(
                        format!("timeouts.{name}"),
                        format!("{text:?} is too short"),
                        "use at least \"1s\" (idle entries are swept once a second)",
                    ));
                }
                *slot = value;
            }
        }
        Ok(timeouts)
    }

    fn daemon(&self, raw: Option<RawDaemon>) -> Result<Daemon, ConfigError> {
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
                        "write it like \"/run/pnlb/{}\"",
                        if key == "api_socket" {
                            "api.sock"
                        } else {
                            "api.token"
                        }
                    ),
                )),
            }
        };
        let api_socket = absolute("api_socket", raw.api_socket)?;
        let api_token_file = absolute("api_token_file", raw.api_token_file)?;
        if api.is_none() && api_socket.is_none() && api_token_file.is_some() {
            return Err(self.error(
                "daemon.api_token_file",
                "there is no API to protect",
                "set daemon.api (e.g. \"127.0.0.1:9180\") or daemon.api_socket, or remove api_token_file",
            ));
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
        Ok(Daemon {
            interfaces: raw.interfaces,
            xdp_mode,
            api,
            api_socket,
            api_token_file,
            conn_table_size,
        })
    }

    fn service(&self, index: usize, raw: RawService) -> Result<Service, ConfigError> {
        let at = |key: &str| format!("service[{index}].{key}");
        let name = raw.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| {
            self.error(
                at("name"),
                "every service needs a name",
                "add name = \"web\"",
            )
        })?;
        let at = |key: &str| format!("service[{index}] ({name}).{key}");

        let vip_text = raw.vip.ok_or_else(|| {
            self.error(
                at("vip"),
                "missing",
                "add the virtual IP, e.g. vip = \"10.77.1.100\"",
            )
        })?;
        let vip = self.address(&at("vip"), &vip_text)?;
        let port = match raw.port {
            None => {
                return Err(self.error(
                    at("port"),
                    "missing",
                    "add port = 80 (or port = 0 for every port of the VIP)",
                ))
            }
            Some(p) => self.port(&at("port"), p)?,
        };
        let protocol = match raw.protocol.as_deref() {
            None | Some("tcp") => Protocol::Tcp,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                return Err(self.error(
                    at("protocol"),
                    format!("unknown protocol {other:?}"),
                    "use \"tcp\" or \"udp\"",
                ))
            }
        };
        let method = match raw.method.as_deref() {
            None | Some("dr") => Method::Dr,
            Some("nat") => Method::Nat,
            Some("snat") => Method::Snat,
            Some("tun") => Method::Tun,
            Some(other) => {
                return Err(self.error(
                    at("method"),
                    format!("unknown method {other:?}"),
                    "use one of \"dr\", \"tun\", \"nat\", \"snat\"",
                ))
            }
        };
        let scheduler = match raw.scheduler.as_deref() {
            None | Some("maglev") => Scheduler::Maglev,
            Some("rr") => Scheduler::Rr,
            Some("wrr") => Scheduler::Wrr,
            Some("sh") => Scheduler::Sh,
            Some("dh") => Scheduler::Dh,
            Some("lc") => Scheduler::Lc,
            Some("wlc") => Scheduler::Wlc,
            Some("sed") => Scheduler::Sed,
            Some("nq") => Scheduler::Nq,
            Some("p2c") => Scheduler::P2c,
            Some("chbl") => {
                let epsilon = raw.chbl_epsilon.unwrap_or(DEFAULT_CHBL_EPSILON);
                if !(0.01..=10.0).contains(&epsilon) {
                    return Err(self.error(
                        at("chbl_epsilon"),
                        format!("{epsilon} is out of range"),
                        "use 0.01 to 10 (0.25 lets a backend carry 25% above its share)",
                    ));
                }
                Scheduler::Chbl { epsilon }
            }
            Some(other) => {
                return Err(self.error(
                    at("scheduler"),
                    format!("unknown scheduler {other:?}"),
                    "use one of rr wrr lc wlc sed nq sh dh maglev chbl p2c",
                ))
            }
        };
        if raw.chbl_epsilon.is_some() && !matches!(scheduler, Scheduler::Chbl { .. }) {
            return Err(self.error(
                at("chbl_epsilon"),
                "only applies to scheduler = \"chbl\"",
                "remove chbl_epsilon",
            ));
        }
        if raw.hash_key.is_some() && !scheduler.hashes() {
            return Err(self.error(
                at("hash_key"),
                format!("scheduler {scheduler} does not hash flows"),
                "remove hash_key, or use sh, dh or maglev",
            ));
        }
        let hash_key = match raw.hash_key.as_deref() {
            None if scheduler == Scheduler::Sh => HashKey::Source,
            None if scheduler == Scheduler::Dh => HashKey::Destination,
            None | Some("5tuple") => HashKey::FiveTuple,
            Some("source") => HashKey::Source,
            Some("destination") => HashKey::Destination,
            Some(other) => {
                return Err(self.error(
                    at("hash_key"),
                    format!("unknown hash key {other:?}"),
                    "use \"5tuple\", \"source\" or \"destination\"",
                ))
            }
        };
        let snat = self.snat(&at, method, vip, raw.snat_addresses, raw.snat_ports)?;
        let persistence =
            self.persistence(&at, vip, raw.persistence.as_deref(), raw.persistence_mask)?;
        let tunnel = self.tunnel(
            &at,
            method,
            vip,
            raw.encap.as_deref(),
            raw.gue_port,
            raw.tunnel_source.as_deref(),
        )?;
        let on_backend_down = match raw.on_backend_down.as_deref() {
            None | Some("keep") => DownPolicy::Keep,
            Some("reset") => DownPolicy::Reset,
            Some(other) => {
                return Err(self.error(
                    at("on_backend_down"),
                    format!("unknown policy {other:?}"),
                    "use \"keep\" (let established flows finish) or \"reset\" (drop them so clients reconnect)",
                ))
            }
        };
        let slow_start = match &raw.slow_start {
            None => Duration::ZERO,
            Some(text) => self.duration(&at("slow_start"), text)?,
        };
        let service_health = raw.health;

        let mut backends = Vec::with_capacity(raw.backend.len());
        let mut seen = HashSet::new();
        for (b, raw_backend) in raw.backend.into_iter().enumerate() {
            let key = format!("service[{index}] ({name}).backend[{b}]");
            let backend = self.backend(
                &key,
                raw_backend,
                vip,
                port,
                method,
                service_health.as_ref(),
            )?;
            if !seen.insert((backend.address, backend.port)) {
                return Err(self.error(
                    key,
                    format!(
                        "backend {} port {} is listed twice",
                        backend.address, backend.port
                    ),
                    "list each backend once",
                ));
            }
            backends.push(backend);
        }
        if scheduler.reads_load() && backends.len() > MAX_LEAST_BACKENDS {
            return Err(self.error(
                at("scheduler"),
                format!("{scheduler} scans every backend per new flow; {} backends is over its {MAX_LEAST_BACKENDS}", backends.len()),
                "use wrr or maglev for larger pools",
            ));
        }
        let fallback = match raw.fallback {
            None => None,
            Some(raw_fallback) => {
                let key = format!("service[{index}] ({name}).fallback");
                if raw_fallback.health.is_some() {
                    return Err(self.error(
                        format!("{key}.health"),
                        "the fallback is not health-checked",
                        "remove [service.fallback.health]",
                    ));
                }
                Some(self.backend(&key, raw_fallback, vip, port, method, None)?)
            }
        };
        Ok(Service {
            name,
            vip,
            port,
            protocol,
            method,
            scheduler,
            hash_key,
            snat,
            tunnel,
            persistence,
            on_backend_down,
            slow_start,
            fallback,
            backends,
        })
    }

    fn persistence(
        &self,
        at: &dyn Fn(&str) -> String,
        vip: IpAddr,
        timeout: Option<&str>,
        mask: Option<i64>,
    ) -> Result<Option<Persistence>, ConfigError> {
        let Some(text) = timeout else {
            if mask.is_some() {
                return Err(self.error(
                    at("persistence_mask"),
                    "set without persistence",
                    "add persistence = \"300s\"",
                ));
            }
            return Ok(None);
        };
        let timeout = self.duration(&at("persistence"), text)?;
        if timeout < Duration::from_secs(1) || timeout > Duration::from_secs(86_400 * 7) {
            return Err(self.error(
                at("persistence"),
                format!("{text:?} is out of range"),
                "use 1s to 7 days",
            ));
        }
        let max = if vip.is_ipv4() { 32 } else { 128 };
        let prefix_len = match mask {
            None => max,
            Some(n) if (1..=i64::from(max)).contains(&n) => n as u8,
            Some(n) => {
                return Err(self.error(
                    at("persistence_mask"),
                    format!("prefix length {n} is out of range"),
                    format!("use 1 to {max} (e.g. 24 keeps a /24 of clients together)"),
                ))
            }
        };
        Ok(Some(Persistence {
            timeout,
            prefix_len,
        }))
    }

    fn tunnel(
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

    fn snat(
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

    fn backend(
        &self,
        key: &str,
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
        let address = self.address(&format!("{key}.address"), &text)?;
        if address.is_ipv4() != vip.is_ipv4() {
            return Err(self.error(
                format!("{key}.address"),
                format!("backend {address} and VIP {vip} are of different IP versions"),
                "use backends of the VIP's IP version (no NAT46/64)",
            ));
        }
        let port = match raw.port {
            None => service_port,
            Some(p) => self.port(&format!("{key}.port"), p)?,
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
                self.health_check(&format!("{key}.health"), merged, port)?
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

    fn address(&self, key: &str, text: &str) -> Result<IpAddr, ConfigError> {
        let address: IpAddr = text.parse().map_err(|_| {
            self.error(
                key,
                format!("{text:?} is not an IP address"),
                "write an IPv4 or IPv6 address like \"10.77.1.100\"",
            )
        })?;
        if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
            return Err(self.error(
                key,
                format!("{address} cannot be used here"),
                "use a unicast address that is not 0.0.0.0, :: or loopback",
            ));
        }
        if let IpAddr::V4(v4) = address {
            if v4.is_broadcast() {
                return Err(self.error(
                    key,
                    "the broadcast address cannot be used here",
                    "use a unicast address",
                ));
            }
        }
        Ok(address)
    }

    fn port(&self, key: &str, value: i64) -> Result<u16, ConfigError> {
        u16::try_from(value).map_err(|_| {
            self.error(
                key,
                format!("port {value} is out of range"),
                "use 0 to 65535",
            )
        })
    }

    fn duration(&self, key: &str, text: &str) -> Result<Duration, ConfigError> {
        duration::parse(text).ok_or_else(|| {
            self.error(
                key,
                format!("{text:?} is not a duration"),
                "write it like \"500ms\", \"1s\" or \"2m\"",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.77.100.1"
port = 80
protocol = "tcp"
method = "dr"
scheduler = "maglev"

[[service.backend]]
address = "10.77.1.11"

[[service.backend]]
address = "10.77.1.12"
weight = 3

[[service]]
name = "dns6"
vip = "fd77:100::1"
port = 0
protocol = "udp"

[[service.backend]]
address = "fd77:1::11"
"#;

    fn error_of(text: &str) -> ConfigError {
        parse(Path::new("lb.toml"), text).expect_err("config should be rejected")
    }

    #[test]
    fn a_good_config_parses_with_defaults_filled_in() {
        let config = parse(Path::new("lb.toml"), GOOD).unwrap();
        assert_eq!(config.daemon.interfaces, ["eth0"]);
        assert_eq!(config.daemon.xdp_mode, XdpMode::Native);
        assert_eq!(config.services.len(), 2);
        let web = &config.services[0];
        assert_eq!(web.backends[0].port, 80);
        assert_eq!(web.backends[0].weight, 1);
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(web.hash_key, HashKey::FiveTuple);
        let dns = &config.services[1];
        assert_eq!((dns.port, dns.protocol), (0, Protocol::Udp));
        assert_eq!(dns.method, Method::Dr);
    }

    #[test]
    fn errors_name_file_key_reason_and_fix_on_one_line() {
        let err = error_of(&GOOD.replace("10.77.1.12", "10.77.1.x"));
        let text = err.to_string();
        assert_eq!(err.key, "service[0] (web).backend[1].address");
        assert!(
            text.starts_with(
                "lb.toml: service[0] (web).backend[1].address: \"10.77.1.x\" is not an IP address;"
            ),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = error_of("[daemon]\ninterfaces = [\"eth0\"\n");
        assert!(err.key.starts_with("line "), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_not_ignored() {
        let err = error_of(&GOOD.replace("scheduler = \"maglev\"", "schedular = \"maglev\""));
        assert!(err.reason.contains("schedular"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_key() {
        let cases = [
            (
                GOOD.replace("interfaces = [\"eth0\"]", "interfaces = []"),
                "daemon.interfaces",
            ),
            (
                GOOD.replace("port = 80", "port = 70000"),
                "service[0] (web).port",
            ),
            (
                GOOD.replace("protocol = \"tcp\"", "protocol = \"sctp\""),
                "service[0] (web).protocol",
            ),
            (
                GOOD.replace("method = \"dr\"", "method = \"magic\""),
                "service[0] (web).method",
            ),
            (
                GOOD.replace("scheduler = \"maglev\"", "scheduler = \"random\""),
                "service[0] (web).scheduler",
            ),
            (
                GOOD.replace("weight = 3", "weight = -1"),
                "service[0] (web).backend[1].weight",
            ),
            (
                GOOD.replace("fd77:1::11", "10.77.1.13"),
                "service[1] (dns6).backend[0].address",
            ),
            (
                GOOD.replace("name = \"dns6\"", "name = \"web\""),
                "service[1].name",
            ),
            (
                GOOD.replace("vip = \"10.77.100.1\"", "vip = \"127.0.0.1\""),
                "service[0] (web).vip",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(error_of(&text).key, key);
        }
    }

    #[test]
    fn dr_backends_cannot_map_ports() {
        let err = error_of(&GOOD.replace(
            "address = \"10.77.1.11\"",
            "address = \"10.77.1.11\"\nport = 8080",
        ));
        assert!(err.fix.contains("cannot rewrite ports"), "{err}");
    }

    #[test]
    fn duplicate_backends_and_listeners_are_rejected() {
        let err = error_of(&GOOD.replace("10.77.1.12", "10.77.1.11"));
        assert!(err.reason.contains("listed twice"), "{err}");
        let err = error_of(
            &GOOD
                .replace(
                    "vip = \"fd77:100::1\"\nport = 0\nprotocol = \"udp\"",
                    "vip = \"10.77.100.1\"\nport = 80\nprotocol = \"tcp\"",
                )
                .replace("fd77:1::11", "10.77.1.13"),
        );
        assert!(err.reason.contains("already listens"), "{err}");
    }

    #[test]
    fn tun_takes_an_encapsulation_and_tunnel_keys_need_tun() {
        let tun =
            |extra: &str| GOOD.replace("method = \"dr\"", &format!("method = \"tun\"{extra}"));
        let config = parse(Path::new("t.toml"), &tun("")).unwrap();
        assert_eq!(
            config.services[0].tunnel,
            Some(Tunnel {
                encap: Encap::Ipip,
                source: None
            })
        );
        let config = parse(
            Path::new("t.toml"),
            &tun("\nencap = \"gue\"\ntunnel_source = \"10.77.1.2\""),
        )
        .unwrap();
        assert_eq!(
            config.services[0].tunnel,
            Some(Tunnel {
                encap: Encap::Gue {
                    port: DEFAULT_GUE_PORT
                },
                source: Some("10.77.1.2".parse().unwrap())
            })
        );
        for (extra, key) in [
            ("\nencap = \"gre\"", "encap"),
            ("\nencap = \"gue\"\ngue_port = 0", "gue_port"),
            ("\ngue_port = 7000", "gue_port"),
            ("\ntunnel_source = \"fd77:1::2\"", "tunnel_source"),
        ] {
            let err = error_of(&tun(extra));
            assert!(err.key.ends_with(key), "{extra}: {err}");
        }
        let err = error_of(&GOOD.replace("method = \"dr\"", "method = \"dr\"\nencap = \"ipip\""));
        assert!(err.key.ends_with("encap"), "{err}");
        assert!(err.reason.contains("only applies"), "{err}");
    }

    #[test]
    fn a_failover_group_is_validated() {
        let ha = |table: &str| format!("{GOOD}\n[ha]\n{table}");
        let good = "group = 7\ninterface = \"eth0\"\npeers = [\"10.77.1.3\"]\nkey_file = \"/etc/pnlb/ha.key\"\nfloating = [\"10.77.1.254\"]";
        let config = parse(Path::new("lb.toml"), &ha(good)).unwrap();
        let group = config.ha.unwrap();
        assert_eq!((group.group, group.priority), (7, 100));
        assert_eq!(group.advert_interval, Duration::from_millis(200));
        for (change, key) in [
            (good.replace("group = 7", "group = 0"), "ha.group"),
            (good.replace("\"eth0\"", "\"eth9\""), "ha.interface"),
            (good.replace("[\"10.77.1.3\"]", "[]"), "ha.peers"),
            (good.replace("/etc/pnlb/ha.key", "ha.key"), "ha.key_file"),
            (format!("{good}\npriority = 255"), "ha.priority"),
            (
                format!("{good}\nadvert_interval = \"1ms\""),
                "ha.advert_interval",
            ),
        ] {
            assert_eq!(error_of(&ha(&change)).key, key, "{change}");
        }
    }

    #[test]
    fn a_missing_file_is_a_clear_error() {
        let err = load(Path::new("/nonexistent/pnlb.toml")).unwrap_err();
        assert!(err.to_string().contains("cannot read the file"), "{err}");
    }

    #[test]
    fn the_packaged_config_is_valid_as_installed_and_with_its_example_service_uncommented() {
        let text = include_str!("../../../../packaging/pnlb.toml");
        let installed = parse(Path::new("packaging/pnlb.toml"), text).unwrap();
        assert!(installed.services.is_empty());
        // The example service is the block of "# " lines after the [daemon] keys.
        let start = text.find("# [[service]]").expect("an example service");
        let uncommented: String = text[..start]
            .lines()
            .chain(text[start..].lines().map(|line| {
                line.strip_prefix("# ")
                    .or_else(|| line.strip_prefix('#'))
                    .unwrap_or(line)
            }))
            .map(|line| format!("{line}\n"))
            .collect();
        let edited = parse(Path::new("packaging/pnlb.toml"), &uncommented).unwrap();
        assert_eq!(edited.services.len(), 1);
        assert_eq!(edited.services[0].backends.len(), 2);
    }

    #[test]
    fn the_documented_example_configs_are_valid() {
        let text = include_str!("../../../../docs/examples/lab-dr.toml");
        let config = parse(Path::new("docs/examples/lab-dr.toml"), text).unwrap();
        assert_eq!(config.services.len(), 2);
        let text = include_str!("../../../../docs/examples/lab-snat.toml");
        let config = parse(Path::new("docs/examples/lab-snat.toml"), text).unwrap();
        assert_eq!(config.services[0].method, Method::Snat);
        let text = include_str!("../../../../docs/examples/lab-tun.toml");
        let config = parse(Path::new("docs/examples/lab-tun.toml"), text).unwrap();
        assert_eq!(config.services[0].method, Method::Tun);
        for (path, text, priority) in [
            (
                "lab-ha-node1.toml",
                include_str!("../../../../docs/examples/lab-ha-node1.toml"),
                150,
            ),
            (
                "lab-ha-node2.toml",
                include_str!("../../../../docs/examples/lab-ha-node2.toml"),
                100,
            ),
        ] {
            let config = parse(Path::new(path), text).unwrap();
            assert_eq!(config.ha.map(|ha| ha.priority), Some(priority));
        }
    }

    #[test]
    fn nat_allows_port_mapping_and_snat_needs_its_addresses() {
        let nat = parse(
            Path::new("lb.toml"),
            &GOOD.replace("method = \"dr\"", "method = \"nat\"").replace(
                "address = \"10.77.1.11\"\n",
                "address = \"10.77.1.11\"\nport = 8080\n",
            ),
        )
        .unwrap();
        assert_eq!(nat.services[0].method, Method::Nat);
        assert_eq!(nat.services[0].backends[0].port, 8080);
        assert_eq!(nat.services[0].snat, None);

        let err = error_of(&GOOD.replace("method = \"dr\"", "method = \"snat\""));
        assert!(err.key.ends_with("snat_addresses"), "{err}");

        let snat = parse(
            Path::new("lb.toml"),
            &GOOD.replace(
                "method = \"dr\"",
                "method = \"snat\"\nsnat_addresses = [\"10.77.1.2\", \"10.77.1.3\"]\nsnat_ports = \"20000-20099\"",
            ),
        )
        .unwrap();
        let pool = snat.services[0].snat.clone().unwrap();
        assert_eq!(pool.addresses.len(), 2);
        assert_eq!((pool.port_min, pool.port_max), (20000, 20099));
    }

    #[test]
    fn bad_snat_settings_are_rejected() {
        let with =
            |extra: &str| GOOD.replace("method = \"dr\"", &format!("method = \"snat\"\n{extra}"));
        let cases = [
            ("snat_addresses = [\"fd77::1\"]", "snat_addresses[0]"),
            (
                "snat_addresses = [\"10.77.1.2\"]\nsnat_ports = \"80-90\"",
                "snat_ports",
            ),
            (
                "snat_addresses = [\"10.77.1.2\"]\nsnat_ports = \"30000-20000\"",
                "snat_ports",
            ),
            (
                "snat_addresses = [\"10.77.1.2\", \"10.77.1.2\"]",
                "snat_addresses[1]",
            ),
        ];
        for (extra, key) in cases {
            let err = error_of(&with(extra));
            assert!(err.key.ends_with(key), "{extra}: {err}");
        }
        let err = error_of(&GOOD.replace(
            "method = \"dr\"",
            "method = \"nat\"\nsnat_addresses = [\"10.77.1.2\"]",
        ));
        assert!(err.reason.contains("only applies"), "{err}");
    }

    #[test]
    fn timeouts_and_table_size_have_ipvs_like_defaults_and_can_be_set() {
        let config = parse(Path::new("lb.toml"), GOOD).unwrap();
        assert_eq!(config.timeouts, Timeouts::default());
        assert_eq!(config.timeouts.tcp, Duration::from_secs(900));
        assert_eq!(config.daemon.conn_table_size, DEFAULT_CONN_TABLE_SIZE);
        let text = GOOD.replace(
            "[daemon]\n",
            "[timeouts]\ntcp = \"1h\"\nudp = \"30s\"\n\n[daemon]\nconn_table_size = 100000\n",
        );
        let config = parse(Path::new("lb.toml"), &text).unwrap();
        assert_eq!(config.timeouts.tcp, Duration::from_secs(3600));
        assert_eq!(config.timeouts.udp, Duration::from_secs(30));
        assert_eq!(config.timeouts.tcp_fin, Duration::from_secs(120));
        assert_eq!(config.daemon.conn_table_size, 100_000);
        let err = error_of(&GOOD.replace("[daemon]\n", "[timeouts]\ntcp = \"10ms\"\n\n[daemon]\n"));
        assert_eq!(err.key, "timeouts.tcp");
        let err = error_of(&GOOD.replace("[daemon]\n", "[daemon]\nconn_table_size = 10\n"));
        assert_eq!(err.key, "daemon.conn_table_size");
    }

    #[test]
    fn schedulers_default_their_hash_key_and_persistence_parses() {
        let with = |extra: &str| {
            parse(
                Path::new("lb.toml"),
                &GOOD.replace("scheduler = \"maglev\"", extra),
            )
        };
        assert_eq!(
            with("scheduler = \"sh\"").unwrap().services[0].hash_key,
            HashKey::Source
        );
        assert_eq!(
            with("scheduler = \"dh\"").unwrap().services[0].hash_key,
            HashKey::Destination
        );
        assert_eq!(
            with("scheduler = \"wrr\"").unwrap().services[0].scheduler,
            Scheduler::Wrr
        );
        let err = with("scheduler = \"rr\"\nhash_key = \"source\"").unwrap_err();
        assert!(err.key.ends_with("hash_key"), "{err}");
        let config =
            with("scheduler = \"rr\"\npersistence = \"300s\"\npersistence_mask = 24").unwrap();
        let persistence = config.services[0].persistence.unwrap();
        assert_eq!(
            (persistence.timeout, persistence.prefix_len),
            (Duration::from_secs(300), 24)
        );
        assert_eq!(
            with("persistence = \"60s\"").unwrap().services[0]
                .persistence
                .unwrap()
                .prefix_len,
            32
        );
        assert!(with("persistence_mask = 24")
            .unwrap_err()
            .key
            .ends_with("persistence_mask"));
        assert!(with("persistence = \"60s\"\npersistence_mask = 33")
            .unwrap_err()
            .key
            .ends_with("persistence_mask"));
    }
}
