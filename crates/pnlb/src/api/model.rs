//! What the API says, as JSON: the running state of every service and
//! backend. The server builds it (from the config, the health state and
//! the data plane's counters); `pnlb ctl`, the dashboard and /metrics read it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub services: Vec<ServiceStatus>,
    pub connections: ConnectionTable,
    /// The data plane's service and backend slots in use.
    #[serde(default)]
    pub slots: Slots,
    /// Drops and passes by reason, every service together.
    pub reasons: BTreeMap<String, u64>,
    /// Bumped by every change the daemon applies (edit, reload, drain).
    pub config_version: u64,
    /// Where the desired state came from: the file, or edits through the API.
    pub config_source: String,
    /// This node: what it agrees on with its peers, and what it announces.
    #[serde(default)]
    pub node: NodeStatus,
}

/// This node among others.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// A hash of what every node behind the same VIPs must agree on to
    /// pick the same backend for a flow: the services, their backends
    /// (address, port, weight, in order), schedulers and the flow-hash
    /// seed (docs/scale-out.md). Nodes that show different ones disagree.
    pub fingerprint: String,
    /// With [bgp]: what this node announces through BIRD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BgpStatus {
    /// The VIPs announced now.
    pub announced: Vec<IpAddr>,
    /// The VIPs not announced, and why.
    pub withdrawn: Vec<WithdrawnVip>,
    /// The last change BIRD refused or could not be told about (retried
    /// every second), until one goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// While the node is drained (`pnlb ctl drain-node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
    /// With connection sync: the nodes this one counts as taking new
    /// flows, in the order flows' designated nodes are drawn from (every
    /// node should show the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<IpAddr>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WithdrawnVip {
    pub vip: IpAddr,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrainStatus {
    /// "draining", "drained" (no packet for 2 s) or "deadline passed".
    pub state: String,
    /// Since the drain began.
    pub seconds: f64,
    pub deadline_seconds: f64,
    /// How long no packet of any service has arrived.
    pub quiet_seconds: f64,
    /// Packets of every service, both directions, in the last second.
    pub packets_per_second: f64,
    /// Entries left in the established table (flows that answer through
    /// this node, or that moved elsewhere and idle out here).
    pub established_entries: u64,
}

/// Service and backend slots: the data plane's maps hold
/// daemon.max_services and daemon.max_backends; a removed backend keeps
/// its slot while its flows last.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Slots {
    pub services: u64,
    pub max_services: u64,
    pub backends: u64,
    pub max_backends: u64,
}

impl Slots {
    pub fn describe(&self) -> String {
        format!(
            "slots: services {}/{}, backends {}/{}",
            self.services, self.max_services, self.backends, self.max_backends
        )
    }
}

/// The connection tables (docs/conntrack.md). Fill is as of the last
/// expiry sweep (every 5 s, up to 30 s in a large table: counting walks
/// the tables); the rest are running totals since start.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ConnectionTable {
    /// Established flows' entries (nat/snat flows take two); never evicted.
    pub entries: u64,
    /// daemon.conn_table_size.
    pub capacity: u64,
    /// Flows not yet established (half-open TCP, one-datagram UDP).
    #[serde(default)]
    pub new_entries: u64,
    #[serde(default)]
    pub new_capacity: u64,
    /// Half-open entries evicted to make room for others.
    #[serde(default)]
    pub evicted: u64,
    /// New flows refused: the established table was full.
    #[serde(default)]
    pub refused_full: u64,
    /// New flows above a service's new_flow_rate that were refused.
    #[serde(default)]
    pub rate_limited: u64,
    /// Packets of flows without state forwarded by hash (dr/tun + maglev, sh, dh).
    #[serde(default)]
    pub stateless_forwards: u64,
    /// nat/snat flows no table held, re-created by hash (maglev, sh, dh).
    #[serde(default)]
    pub rehashed: u64,
    /// Packets of no known flow that could not start one, dropped.
    #[serde(default)]
    pub no_flow_drops: u64,
    /// Established flows that stayed in the new-flow table: no room.
    #[serde(default)]
    pub promote_full: u64,
}

impl ConnectionTable {
    /// One line a person can act on.
    pub fn describe(&self) -> String {
        let percent = |n: u64, of: u64| {
            if of == 0 {
                0.0
            } else {
                n as f64 * 100.0 / of as f64
            }
        };
        let mut line = format!(
            "established {}/{} ({:.0}%), new {}/{}",
            self.entries,
            self.capacity,
            percent(self.entries, self.capacity),
            self.new_entries,
            self.new_capacity
        );
        for (what, n) in [
            ("half-open evicted", self.evicted),
            ("refused (table full)", self.refused_full),
            ("refused (new_flow_rate)", self.rate_limited),
            ("forwarded without state", self.stateless_forwards),
            ("re-created by hash", self.rehashed),
            ("dropped (no flow)", self.no_flow_drops),
            ("not moved (table full)", self.promote_full),
        ] {
            if n > 0 {
                line.push_str(&format!("; {what} {n}"));
            }
        }
        line
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub method: String,
    pub scheduler: String,
    /// How many scheduling tables the service has published.
    pub table_version: u64,
    pub counters: Counters,
    pub drops: BTreeMap<String, u64>,
    pub backends: Vec<BackendStatus>,
    /// Its access rules (allow, deny), each with the packets it dropped.
    #[serde(default)]
    pub access: Vec<AccessRuleStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessRuleStatus {
    pub prefix: String,
    /// "allow" or "deny".
    pub action: String,
    /// Packets the rule dropped (deny rules; allow rules drop none).
    pub dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub port: u16,
    /// As configured.
    pub weight: u32,
    /// What the scheduler uses now: 0 when down or drained, ramping in slow start.
    pub effective_weight: u32,
    pub drained: bool,
    /// "up", "down" or "unchecked"; "removed" for a backend that left the
    /// config and still carries established flows.
    pub health: String,
    pub health_transitions: u64,
    pub active_conns: u64,
    pub inactive_conns: u64,
    pub counters: Counters,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Client -> backend.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Backend -> client, where replies cross the load balancer (nat, snat).
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// A failed request: what is wrong and, where there is one, the fix.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            fix: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What a successful change says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Done {
    pub done: String,
    pub config_version: u64,
}
