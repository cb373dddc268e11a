//! `[[service]]`: a VIP, port and protocol, how its packets are forwarded
//! (method), how new flows are scheduled, and its source affinity.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::access::Access;
use super::{
    Backend, ConfigError, DownPolicy, Field, LazyKey, RawBackend, RawHealth, Snat, Tunnel,
    Validator,
};

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
    /// A flood guard: new flows above this rate are forwarded by hash
    /// without state (dr/tun with maglev, sh, dh) or refused (the rest).
    pub new_flow_rate: Option<NewFlowRate>,
    /// The same for each source address alone: new flows above it from one
    /// source are refused (a flooding client spends its own budget, not
    /// the service's).
    pub source_new_flow_rate: Option<NewFlowRate>,
    /// Flows each source address may have open at once; a source at it
    /// gets no new flow until one of its flows ends.
    pub source_max_flows: Option<u32>,
    /// Slots of the Maglev table (maglev, sh, dh, chbl): a prime; each
    /// costs 4 bytes of kernel memory.
    pub table_size: u32,
    /// Who may reach it (`allow`, `deny`).
    pub access: Access,
}

/// `new_flow_rate` and `new_flow_burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewFlowRate {
    /// New flows per second, across all CPUs.
    pub per_second: u32,
    /// How many may arrive at once above the rate.
    pub burst: u32,
}

/// The highest new_flow_rate (one flow per nanosecond is past any NIC).
pub const MAX_NEW_FLOW_RATE: i64 = 100_000_000;

/// The highest source_max_flows: every flow the connection table holds.
pub const MAX_SOURCE_FLOWS: i64 = 1 << 20;

/// New flows from one client (address under `prefix_len`) go to the
/// backend its last flow went to, for `timeout` after that flow started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    pub timeout: Duration,
    /// Significant leading bits of the client address (IPVS -M): 32/128 = per address.
    pub prefix_len: u8,
}

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

    /// As the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
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

    /// As the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Dr => "dr",
            Method::Tun => "tun",
            Method::Nat => "nat",
            Method::Snat => "snat",
        }
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
    /// Whether it picks by hashing the flow (and so takes a `hash_key`,
    /// and builds a Maglev table of `table_size` slots).
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

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
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
    snat_reuse_after: Option<String>,
    new_flow_rate: Option<i64>,
    new_flow_burst: Option<i64>,
    source_new_flow_rate: Option<i64>,
    source_new_flow_burst: Option<i64>,
    source_max_flows: Option<i64>,
    table_size: Option<i64>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    on_backend_down: Option<String>,
    slow_start: Option<String>,
    fallback: Option<RawBackend>,
    #[serde(default)]
    backend: Vec<RawBackend>,
    health: Option<RawHealth>,
}

/// Default chbl epsilon: a backend may carry 25% above its share.
pub const DEFAULT_CHBL_EPSILON: f64 = 0.25;

impl Validator<'_> {
    pub(super) fn service(&self, index: usize, raw: RawService) -> Result<Service, ConfigError> {
        let at = |key: &str| format!("service[{index}].{key}");
        let name = raw.name.filter(|n| !n.trim().is_empty()).ok_or_else(|| {
            self.error(
                at("name"),
                "every service needs a name",
                "add name = \"web\"",
            )
        })?;
        let at = |key: &str| format!("service[{index}] ({name}).{key}");
        // The same, for keys of valid values (written out only on an error).
        let service_key = LazyKey(|f| write!(f, "service[{index}] ({name})"));
        let lazy_at = |field: &'static str| Field(&service_key, field);

        let vip_text = raw.vip.ok_or_else(|| {
            self.error(
                at("vip"),
                "missing",
                "add the virtual IP, e.g. vip = \"10.77.1.100\"",
            )
        })?;
        let vip = self.address(&lazy_at("vip"), &vip_text)?;
        let port = match raw.port {
            None => {
                return Err(self.error(
                    at("port"),
                    "missing",
                    "add port = 80 (or port = 0 for every port of the VIP)",
                ))
            }
            Some(p) => self.port(&lazy_at("port"), p)?,
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
        let snat = self.snat(
            &at,
            method,
            vip,
            raw.snat_addresses,
            raw.snat_ports,
            raw.snat_reuse_after,
        )?;
        let new_flow_rate = self.new_flow_rate(
            &at,
            ("new_flow_rate", "new_flow_burst"),
            raw.new_flow_rate,
            raw.new_flow_burst,
        )?;
        let source_new_flow_rate = self.new_flow_rate(
            &at,
            ("source_new_flow_rate", "source_new_flow_burst"),
            raw.source_new_flow_rate,
            raw.source_new_flow_burst,
        )?;
        let source_max_flows = self.source_max_flows(&at, raw.source_max_flows)?;
        let access = self.access(&at, raw.allow, raw.deny)?;
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
            Some(text) => self.duration(&lazy_at("slow_start"), text)?,
        };
        let service_health = raw.health;

        let mut backends = Vec::with_capacity(raw.backend.len());
        let mut seen = HashSet::new();
        for (b, raw_backend) in raw.backend.into_iter().enumerate() {
            let key = LazyKey(|f| write!(f, "service[{index}] ({name}).backend[{b}]"));
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
                    key.to_string(),
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
        let table_size = self.table_size(&at, scheduler, raw.table_size, backends.len())?;
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
            new_flow_rate,
            source_new_flow_rate,
            source_max_flows,
            table_size,
            access,
        })
    }

    /// `table_size`: a prime up to the data plane's 65537, above the
    /// number of backends, for the schedulers that build a Maglev table.
    fn table_size(
        &self,
        at: &dyn Fn(&str) -> String,
        scheduler: Scheduler,
        raw: Option<i64>,
        backends: usize,
    ) -> Result<u32, ConfigError> {
        let Some(size) = raw else {
            return Ok(crate::maglev::TABLE_SIZE as u32);
        };
        if !scheduler.hashes() {
            return Err(self.error(
                at("table_size"),
                format!("scheduler {scheduler} builds no Maglev table"),
                "remove table_size, or use maglev, sh, dh or chbl",
            ));
        }
        let max = crate::maglev::TABLE_SIZE as i64;
        if !(3..=max).contains(&size) || !crate::maglev::is_prime(size as u64) {
            return Err(self.error(
                at("table_size"),
                format!("{size} is not a prime from 3 to {max}"),
                "use a prime about 100 times the number of backends, e.g. 1031 for 10, 65537 (the default) for 600 or more",
            ));
        }
        if size as usize <= backends {
            return Err(self.error(
                at("table_size"),
                format!("{size} slots for {backends} backends"),
                "use a prime about 100 times the number of backends (Maglev spreads flows evenly only over many more slots than backends)",
            ));
        }
        Ok(size as u32)
    }

    /// `source_max_flows`: 1 up to what the connection table holds.
    fn source_max_flows(
        &self,
        at: &dyn Fn(&str) -> String,
        raw: Option<i64>,
    ) -> Result<Option<u32>, ConfigError> {
        match raw {
            None => Ok(None),
            Some(n) if (1..=MAX_SOURCE_FLOWS).contains(&n) => Ok(Some(n as u32)),
            Some(n) => Err(self.error(
                at("source_max_flows"),
                format!("{n} flows per source is out of range"),
                format!("use 1 to {MAX_SOURCE_FLOWS}, or remove it for no limit"),
            )),
        }
    }

    /// `new_flow_rate` and `new_flow_burst`, or their per-source kin
    /// (`keys`: the rate's key and the burst's).
    fn new_flow_rate(
        &self,
        at: &dyn Fn(&str) -> String,
        keys: (&str, &str),
        rate: Option<i64>,
        burst: Option<i64>,
    ) -> Result<Option<NewFlowRate>, ConfigError> {
        let (rate_key, burst_key) = keys;
        let Some(rate) = rate else {
            if burst.is_some() {
                return Err(self.error(
                    at(burst_key),
                    format!("set without {rate_key}"),
                    format!("add {rate_key} = 50000 (new flows per second), or remove {burst_key}"),
                ));
            }
            return Ok(None);
        };
        if !(1..=MAX_NEW_FLOW_RATE).contains(&rate) {
            return Err(self.error(
                at(rate_key),
                format!("{rate} new flows per second is out of range"),
                format!("use 1 to {MAX_NEW_FLOW_RATE}, or remove it for no limit"),
            ));
        }
        let burst = match burst {
            None => (rate / 10).max(1),
            Some(b) if (1..=MAX_NEW_FLOW_RATE).contains(&b) => b,
            Some(b) => {
                return Err(self.error(
                    at(burst_key),
                    format!("a burst of {b} is out of range"),
                    format!("use 1 to {MAX_NEW_FLOW_RATE} (default: a tenth of {rate_key})"),
                ))
            }
        };
        Ok(Some(NewFlowRate {
            per_second: rate as u32,
            burst: burst as u32,
        }))
    }

    pub(super) fn persistence(
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
}
