//! The nodes behind ECMP, for designated nodes (pnlb_abi.h's `pnlb_nodes`): lists of
//! the live nodes in address order, self included, each published ahead of
//! the instant it applies from, so that every node switches lists at the
//! same moment; and the MACs of the other nodes, so that a packet of a flow
//! this node holds no entry of goes to the flow's designated node, and a
//! packet handed on is never handed on again (bpf/lib/nodes.h).

use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, bytes_of, MetaSlot};
use crate::conntrack::monotonic_ns;
use crate::loader::{Dataplane, DataplaneError};

/// One node as the data plane reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub mac: [u8; 6],
    /// Our MAC on `ifindex`.
    pub src_mac: [u8; 6],
    pub ifindex: u32,
    pub is_self: bool,
}

/// The most nodes the data plane takes.
pub const MAX_NODES: usize = abi::NodeLimits::PNLB_MAX_NODES.0 as usize;
const LISTS: usize = abi::NodeLimits::PNLB_NODE_LISTS.0 as usize;
/// How long after its switch the list before serves second chances.
const SECOND_CHANCE: Duration = Duration::from_secs(abi::NodeLimits::PNLB_SECOND_CHANCE_S.0 as u64);

/// No list is written this close to a switch of lists: at the switch the
/// program may read any of the three.
const SWITCH_MARGIN: Duration = Duration::from_millis(20);

/// The data plane's node lists as this process wrote them: which list the
/// program uses at an instant, and where the next one goes.
#[derive(Debug, Default)]
pub struct NodeLists {
    slots: [Option<(Instant, Vec<Node>)>; LISTS],
}

/// The role of each list slot at an instant: the current list, the one
/// before it (while it serves second chances) and the rest.
struct Roles {
    current: Option<usize>,
    previous: Option<usize>,
}

impl NodeLists {
    /// Empties every list of `dataplane` (a pinned one may hold another
    /// process's): no designated nodes until the first publish.
    pub fn clear(dataplane: &Dataplane) -> Result<Self, DataplaneError> {
        for slot in 0..LISTS {
            dataplane.set_list_since(slot, 0)?;
            dataplane.set_meta(node_count_slot(slot), 0)?;
        }
        Ok(NodeLists::default())
    }

    /// The list the program uses at `at` (empty: none).
    pub fn at(&self, at: Instant) -> &[Node] {
        self.roles(at)
            .current
            .and_then(|slot| self.slots[slot].as_ref())
            .map_or(&[], |(_, nodes)| nodes.as_slice())
    }

    /// Whether `nodes` is published to apply from exactly `since`.
    pub fn holds(&self, nodes: &[Node], since: Instant) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|(at, published)| *at == since && published == nodes)
    }

    /// A list not yet applied (its instant still ahead at `now`).
    pub fn pending(&self, now: Instant) -> Option<Instant> {
        self.slots
            .iter()
            .flatten()
            .map(|(since, _)| *since)
            .find(|since| *since > now)
    }

    fn roles(&self, at: Instant) -> Roles {
        let mut applied: Vec<(Instant, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, list)| Some((list.as_ref()?.0, slot)))
            .filter(|(since, _)| *since <= at)
            .collect();
        applied.sort();
        let current = applied.pop();
        let previous = applied
            .pop()
            .filter(|_| current.is_some_and(|(since, _)| at < since + SECOND_CHANCE));
        Roles {
            current: current.map(|(_, slot)| slot),
            previous: previous.map(|(_, slot)| slot),
        }
    }

    /// Publishes `nodes` (in the order every node agrees on: their
    /// addresses'; fewer than two turn designated nodes off) to apply from
    /// `since` (now, or ahead), replacing any list still pending. Ok(false)
    /// when a switch is due within SWITCH_MARGIN of `now`: publish on a
    /// later turn. The slot is written while the program ignores it (its
    /// start 0), its start last.
    pub fn publish(
        &mut self,
        dataplane: &Dataplane,
        nodes: &[Node],
        since: Instant,
        now: Instant,
    ) -> Result<bool, DataplaneError> {
        let near = |at: Instant| at + SWITCH_MARGIN > now && at < now + SWITCH_MARGIN;
        let switches = self.slots.iter().flatten().map(|(at, _)| *at);
        let expiries = self
            .slots
            .iter()
            .flatten()
            .map(|(at, _)| *at + SECOND_CHANCE);
        if switches.chain(expiries).any(near) {
            return Ok(false);
        }
        let roles = self.roles(now);
        let Some(slot) =
            (0..LISTS).find(|slot| Some(*slot) != roles.current && Some(*slot) != roles.previous)
        else {
            return Ok(false);
        };
        let nodes = &nodes[..nodes.len().min(MAX_NODES)];
        self.slots[slot] = None;
        dataplane.set_list_since(slot, 0)?;
        dataplane.set_meta(node_count_slot(slot), 0)?;
        for (index, node) in nodes.iter().enumerate() {
            let entry = abi::Node {
                mac: node.mac,
                src_mac: node.src_mac,
                ifindex: node.ifindex,
                is_self: u32::from(node.is_self),
            };
            let key = (slot * MAX_NODES + index) as u32;
            dataplane
                .maps()
                .pnlb_nodes
                .update(&key.to_ne_bytes(), bytes_of(&entry), MapFlags::ANY)
                .map_err(|source| DataplaneError::Map {
                    map: "pnlb_nodes",
                    source,
                })?;
        }
        dataplane.set_meta(node_count_slot(slot), nodes.len() as u32)?;
        let since = since.max(now);
        dataplane.set_list_since(slot, ktime_ns(since))?;
        self.slots[slot] = Some((since, nodes.to_vec()));
        Ok(true)
    }

    /// Drops a list still pending (the change it was for was taken back),
    /// unless its instant is within SWITCH_MARGIN of `now`.
    pub fn cancel_pending(
        &mut self,
        dataplane: &Dataplane,
        now: Instant,
    ) -> Result<(), DataplaneError> {
        for slot in 0..LISTS {
            let Some((since, _)) = &self.slots[slot] else {
                continue;
            };
            if *since >= now + SWITCH_MARGIN {
                dataplane.set_list_since(slot, 0)?;
                self.slots[slot] = None;
            }
        }
        Ok(())
    }
}

fn node_count_slot(slot: usize) -> MetaSlot {
    MetaSlot(MetaSlot::PNLB_META_NODE_COUNT.0 + slot as u32)
}

/// `at` on the clock bpf_ktime_get_ns() reads (CLOCK_MONOTONIC), by
/// both clocks read now: Instant does not show its own nanoseconds.
fn ktime_ns(at: Instant) -> u64 {
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    match at.checked_duration_since(now) {
        Some(ahead) => now_ns + ahead.as_nanos() as u64,
        None => now_ns.saturating_sub(now.duration_since(at).as_nanos() as u64),
    }
}

impl Dataplane {
    fn set_list_since(&self, slot: usize, since_ns: u64) -> Result<(), DataplaneError> {
        self.maps()
            .pnlb_node_since
            .update(
                &(slot as u32).to_ne_bytes(),
                &since_ns.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_node_since",
                source,
            })
    }

    /// The MACs of the other nodes, live or not: a frame from any of them
    /// is never handed on again (two nodes whose lists disagree must not
    /// pass a packet back and forth). New ones are added before old ones
    /// go, so a known node is never briefly unknown.
    pub fn set_node_macs(&self, macs: &[[u8; 6]]) -> Result<(), DataplaneError> {
        let map_err = |source| DataplaneError::Map {
            map: "pnlb_node_macs",
            source,
        };
        let map = &self.maps().pnlb_node_macs;
        let keys: Vec<abi::MacKey> = macs
            .iter()
            .take(MAX_NODES)
            .map(|mac| abi::MacKey {
                mac: *mac,
                ..Default::default()
            })
            .collect();
        for key in &keys {
            map.update(bytes_of(key), &1u32.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err)?;
        }
        let wanted: Vec<&[u8]> = keys.iter().map(bytes_of).collect();
        let stale: Vec<Vec<u8>> = map
            .keys()
            .filter(|key| !wanted.contains(&key.as_slice()))
            .collect();
        for key in stale {
            map.delete(&key).map_err(map_err)?;
        }
        Ok(())
    }
}
