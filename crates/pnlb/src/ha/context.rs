//! What the sync threads share: the group's identity and key, a handle on
//! the connection tables, and this node's slot names as the daemon last
//! published them. Flows leave a node named (service listener, backend
//! address and port) and enter another in its own slot ids.

use std::net::IpAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, RwLock};

use pnlb_core::config::Ha;
use pnlb_dataplane::conntrack::ConnTables;
use pnlb_dataplane::programmer::FlowNames;
use pnlb_dataplane::sync::Flow;

use super::sync::{Kind, Message, Rest, SyncedFlow};

/// This node's slot names, replaced by the daemon after every apply.
#[derive(Clone, Default)]
pub struct SharedNames(Arc<RwLock<Arc<FlowNames>>>);

impl SharedNames {
    pub fn publish(&self, names: FlowNames) {
        if let Ok(mut current) = self.0.write() {
            *current = Arc::new(names);
        }
    }

    pub fn current(&self) -> Arc<FlowNames> {
        self.0.read().map(|names| names.clone()).unwrap_or_default()
    }
}

/// Who syncs with whom.
#[derive(Clone, Debug)]
pub struct SyncGroup {
    pub group: u8,
    pub peers: Vec<IpAddr>,
    /// false: an [ha] pair, the active node sends and backups install.
    /// true: nodes behind ECMP ([bgp]), every node sends the flows it
    /// carries to every other and installs theirs.
    pub mesh: bool,
}

/// The group number of a mesh's messages: no [ha] group has it, so the
/// two kinds never mix.
const MESH_GROUP: u8 = 0;

impl SyncGroup {
    pub fn pair(ha: &Ha) -> Self {
        Self {
            group: ha.group,
            peers: ha.peers.clone(),
            mesh: false,
        }
    }

    pub fn mesh(peers: &[IpAddr]) -> Self {
        Self {
            group: MESH_GROUP,
            peers: peers.to_vec(),
            mesh: true,
        }
    }
}

pub struct SyncContext {
    pub key: Vec<u8>,
    pub group: u8,
    pub me: IpAddr,
    pub peers: Vec<IpAddr>,
    /// Every node sends its own flows and installs the others' (SyncGroup).
    pub mesh: bool,
    pub tables: ConnTables,
    pub names: SharedNames,
    /// Active: the last incremental serial sent (a dump read after it
    /// holds what every batch up to it held).
    pub last_serial: AtomicU32,
}

impl SyncContext {
    pub fn new(
        group: &SyncGroup,
        me: IpAddr,
        key: Vec<u8>,
        tables: ConnTables,
        names: SharedNames,
    ) -> Self {
        Self {
            key,
            group: group.group,
            me,
            peers: group.peers.clone(),
            mesh: group.mesh,
            tables,
            names,
            last_serial: AtomicU32::new(0),
        }
    }

    /// The flows this node tells its peers of in re-reports and dumps:
    /// the whole established table in a pair; in a mesh, the flows it
    /// carries itself (each node tells of its own).
    pub fn flows_to_tell(&self) -> Result<Vec<Flow>, pnlb_dataplane::DataplaneError> {
        if self.mesh {
            self.tables.own_flows()
        } else {
            self.tables.flows()
        }
    }

    /// A message from this node.
    pub fn message(&self, kind: Kind, flows: Vec<SyncedFlow>) -> Message {
        Message::new(kind, self.group, self.me, flows)
    }

    /// Whether `message` is for this group and from one of its peers.
    pub fn ours(&self, message: &Message) -> bool {
        message.group == self.group && self.peers.contains(&message.sender)
    }

    /// `flows` named for the peers; those whose service or backend this
    /// node cannot name (removed meanwhile) are left out.
    pub fn named(&self, flows: &[Flow]) -> Vec<SyncedFlow> {
        let names = self.names.current();
        flows
            .iter()
            .filter_map(|(key, conn)| {
                let (service, backend, backend_port) =
                    names.describe(conn.service_id, conn.backend_id)?;
                Some(SyncedFlow {
                    key: *key,
                    conn: *conn,
                    service,
                    backend,
                    backend_port,
                })
            })
            .collect()
    }

    /// Flows that ended, by key alone.
    pub fn ended(&self, flows: &[Flow]) -> Vec<SyncedFlow> {
        flows
            .iter()
            .map(|(key, _)| SyncedFlow {
                key: *key,
                conn: Default::default(),
                service: Default::default(),
                backend: self.me,
                backend_port: 0,
            })
            .collect()
    }

    /// Installs flows a peer sent, in this node's slot ids; returns how
    /// many went in (a service or backend this node does not have, or a
    /// reply key another flow holds here, keeps one out).
    pub fn install(&self, flows: &[SyncedFlow]) -> usize {
        let names = self.names.current();
        let mut installed = 0;
        for flow in flows {
            let Some((service_id, backend_id, generation)) =
                names.resolve(&flow.service, flow.backend, flow.backend_port)
            else {
                continue;
            };
            let mut conn = flow.conn;
            conn.service_id = service_id;
            conn.backend_id = backend_id;
            conn.backend_generation = generation;
            if self.tables.install_flow(&flow.key, &conn).is_ok() {
                installed += 1;
            }
        }
        installed
    }

    /// SNAT reply keys resting on a peer rest here for the rest of their time.
    pub fn go_on_resting(&self, rests: &[Rest]) {
        for rest in rests {
            self.tables.go_on_resting(&rest.key, rest.rested_ns);
        }
    }

    /// Removes flows a peer reported ended.
    pub fn remove(&self, flows: &[SyncedFlow]) {
        for flow in flows {
            let _ = self.tables.remove_flow(&flow.key);
        }
    }
}
