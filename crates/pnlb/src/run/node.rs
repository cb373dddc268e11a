//! This node among others behind ECMP ([bgp]): what it wants announced
//! each tick, draining it and resuming it, and what the API shows of it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pnlb_dataplane::nexthop::{KernelResolver, NextHop, Resolver};
use pnlb_dataplane::nodes::{Node, NodeLists};
use pnlb_dataplane::{Dataplane, DataplaneError};

use super::Daemon;
use crate::api::model::{self, ApiError, Done};
use crate::bgp::drain::{DrainState, NodeDrain};
use crate::bgp::Wanted;
use crate::ha::membership::{Membership, PeersHeard, SharedOwnWord, SWITCH_AFTER};
use crate::ha::monotonic_ms;
use crate::ha::syncer::{SyncNode, PEER_SILENT_AFTER};
use crate::log::{info, warning};

/// Nodes behind ECMP as this node sees them (connection sync's Hellos).
pub(super) struct MeshView {
    /// This node's address among them.
    pub me: IpAddr,
    /// Told to the peers: whether this node takes new flows, from when.
    pub own_word: SharedOwnWord,
    pub peers_heard: PeersHeard,
    /// This node's own word, as the lists follow it.
    pub membership: Membership,
    /// The data plane's lists (each applies from its instant).
    pub lists: NodeLists,
    /// The members of each list published (by address, for the API and
    /// the log), with the instant each applies from; the last few.
    pub published: Vec<(Instant, Vec<IpAddr>)>,
    /// After a node's MAC could not be resolved: when to try again.
    pub retry_at: Option<Instant>,
    /// The peers' next hops, resolved when first heard.
    pub hops: HashMap<IpAddr, NextHop>,
    /// When this node last started or stopped taking flows, and what the
    /// routers were last told (hand_off).
    pub changed_at: Instant,
    pub announced: Option<Wanted>,
}

/// How long the other nodes' lists have to follow this one's before the
/// routers do: every list switches SWITCH_AFTER after a change.
const HANDOFF: Duration = Duration::from_secs(1);

impl MeshView {
    pub fn new(me: IpAddr, sync: &SyncNode, dataplane: &Dataplane) -> Result<Self, DataplaneError> {
        let now = Instant::now();
        Ok(MeshView {
            me,
            own_word: sync.own_word.clone(),
            peers_heard: sync.peers_heard.clone(),
            membership: Membership::steady(false, now),
            lists: NodeLists::clear(dataplane)?,
            published: Vec::new(),
            retry_at: None,
            hops: HashMap::new(),
            changed_at: now,
            announced: None,
        })
    }

    /// The MAC of every peer ever resolved, live or not.
    fn peer_macs(&self) -> Vec<[u8; 6]> {
        self.hops.values().map(|hop| hop.mac).collect()
    }

    /// The nodes that take new flows at `at`, in address order: this one
    /// by its own word, the peers heard lately (`heard`) by theirs, those
    /// whose MAC is known.
    fn members_at(&self, heard: &[(IpAddr, Membership)], at: Instant) -> Vec<IpAddr> {
        let mut members: Vec<IpAddr> = heard
            .iter()
            .filter(|(address, membership)| {
                membership.takes_flows_at(at) && self.hops.contains_key(address)
            })
            .map(|(address, _)| *address)
            .collect();
        if self.membership.takes_flows_at(at) {
            members.push(self.me);
        }
        members.sort();
        members
    }

    /// `members` as the data plane reaches them; this node's own entry
    /// takes its MAC and interface from the way to a peer.
    fn nodes_of(&self, members: &[IpAddr]) -> Vec<Node> {
        let own_way = members.iter().find_map(|address| self.hops.get(address));
        members
            .iter()
            .filter_map(|address| {
                if *address == self.me {
                    let hop = own_way?;
                    return Some(Node {
                        mac: hop.src_mac,
                        src_mac: hop.src_mac,
                        ifindex: hop.ifindex,
                        is_self: true,
                    });
                }
                let hop = self.hops.get(address)?;
                Some(Node {
                    mac: hop.mac,
                    src_mac: hop.src_mac,
                    ifindex: hop.ifindex,
                    is_self: false,
                })
            })
            .collect()
    }

    /// The members of the list that applies at `at`.
    fn members_published_at(&self, at: Instant) -> Vec<IpAddr> {
        self.published
            .iter()
            .filter(|(since, _)| *since <= at)
            .max_by_key(|(since, _)| *since)
            .map(|(_, members)| members.clone())
            .unwrap_or_default()
    }
}

impl Daemon {
    /// Tells the announcer what to announce now (each tick, and at once
    /// after a drain or a resume).
    pub(super) fn announce(&mut self) {
        if self.announcer.is_none() {
            return;
        }
        let now = Instant::now();
        // Every service's counters, read once a second while draining (a
        // read per service: at 10,000 services, ~10 ms).
        let packets = self
            .node_drain
            .as_ref()
            .filter(|drain| drain.observe_due(now))
            .map(|_| self.packets_total());
        let established = packets.map(|_| self.established_entries()).unwrap_or(0);
        if let (Some(drain), Some(packets)) = (self.node_drain.as_mut(), packets) {
            drain.observe(now, packets);
            let state = drain.state(now);
            if state != drain.reported {
                match state {
                    DrainState::Drained => info!(
                        "node drain: no packet for {:.1} s after {:.1} s: drained ({established} established entries left to idle out)",
                        drain.quiet_for(now).as_secs_f64(),
                        now.saturating_duration_since(drain.since).as_secs_f64()
                    ),
                    DrainState::DeadlinePassed => info!(
                        "node drain: the deadline ({:?}) passed with {:.0} packets a second still arriving",
                        drain.deadline, drain.recent_rate
                    ),
                    DrainState::Draining => {}
                }
                drain.reported = state;
            }
        }
        let wanted = if self.node_drain.is_some() {
            Wanted::none(
                &self.applied,
                "the node is drained (pnlb ctl resume-node announces it again)",
            )
        } else if self
            .synced
            .as_ref()
            .is_some_and(|synced| !synced.load(Ordering::Relaxed))
        {
            Wanted::none(
                &self.applied,
                "learning the flows the other nodes carry (connection sync) before it is announced",
            )
        } else if self.dataplane.reason_counters().is_err() {
            Wanted::none(&self.applied, "the data plane's maps cannot be read")
        } else {
            Wanted::of(&self.applied)
        };
        let wanted = self.hand_off(wanted, now);
        if let Some(announcer) = &self.announcer {
            announcer.want(wanted);
        }
    }

    /// With designated nodes (behind ECMP), a node that starts or
    /// stops taking new flows tells the others at once that the change
    /// applies SWITCH_AFTER later (its Hellos); every node's list switches
    /// at that instant, and the routers (BGP) follow a HANDOFF after the
    /// change: a flow's packets then never meet two lists that disagree on
    /// where it belongs. What the routers are to be told now.
    fn hand_off(&mut self, wanted: Wanted, now: Instant) -> Wanted {
        let takes_flows = !wanted.vips.is_empty();
        let Some(mesh) = &mut self.mesh else {
            return wanted;
        };
        if mesh.membership.takes_flows != takes_flows {
            mesh.membership.said(takes_flows, now + SWITCH_AFTER, now);
            mesh.own_word.set(
                takes_flows,
                monotonic_ms() + SWITCH_AFTER.as_millis() as u64,
            );
            mesh.changed_at = now;
        }
        let routed = if now.saturating_duration_since(mesh.changed_at) < HANDOFF {
            mesh.announced.clone()
        } else {
            mesh.announced = Some(wanted.clone());
            Some(wanted)
        };
        self.publish_nodes(now);
        routed.unwrap_or_else(|| {
            Wanted::none(
                &self.applied,
                "telling the other nodes it takes new flows before the routers",
            )
        })
    }

    /// With connection sync behind ECMP: the nodes that take new flows
    /// (in address order) go to the data plane for flows' designated nodes
    /// (bpf/lib/nodes.h): the list that applies now whenever it is not the
    /// one in use, and the next one ahead of its instant.
    fn publish_nodes(&mut self, now: Instant) {
        let Some(mesh) = &mut self.mesh else {
            return;
        };
        // Every peer heard lately, taking flows or not: their MACs are
        // resolved before they are needed (a joining node says it runs
        // while it still learns the flows).
        let heard: Vec<(IpAddr, Membership)> = mesh
            .peers_heard
            .lock()
            .map(|heard| {
                heard
                    .iter()
                    .filter(|(_, peer)| {
                        now.saturating_duration_since(peer.last) < PEER_SILENT_AFTER
                    })
                    .map(|(address, peer)| (*address, peer.membership))
                    .collect()
            })
            .unwrap_or_default();
        let unresolved: Vec<IpAddr> = heard
            .iter()
            .map(|(address, _)| *address)
            .filter(|address| !mesh.hops.contains_key(address))
            .collect();
        if !unresolved.is_empty() && mesh.retry_at.is_none_or(|at| now >= at) {
            let resolution = KernelResolver {
                probe_wait: Duration::from_millis(300),
            }
            .resolve(&unresolved);
            let known = mesh.hops.len();
            for address in &unresolved {
                match resolution.get(address) {
                    Some(Ok(hop)) => {
                        mesh.hops.insert(*address, *hop);
                    }
                    _ => mesh.retry_at = Some(now + Duration::from_secs(1)),
                }
            }
            if mesh.hops.len() != known {
                if let Err(err) = self.dataplane.set_node_macs(&mesh.peer_macs()) {
                    warning!("publishing the MACs of the nodes behind ECMP: {err}");
                }
            }
        }
        // Resolving may have waited for a neighbour's answer.
        let now = Instant::now();
        let members_now = mesh.members_at(&heard, now);
        let next_switch = heard
            .iter()
            .map(|(_, membership)| membership.switch_at)
            .chain([mesh.membership.switch_at])
            .filter(|at| *at > now)
            .min();
        // The list that applies now first; then the one to come.
        let (members, since) = if mesh.lists.at(now) != mesh.nodes_of(&members_now).as_slice() {
            (members_now, now)
        } else if let Some(at) = next_switch {
            let members = mesh.members_at(&heard, at);
            if mesh.lists.holds(&mesh.nodes_of(&members), at) {
                return;
            }
            (members, at)
        } else {
            if mesh.lists.pending(now).is_some() {
                if let Err(err) = mesh.lists.cancel_pending(&self.dataplane, now) {
                    warning!("publishing the nodes behind ECMP: {err}");
                }
            }
            return;
        };
        let nodes = mesh.nodes_of(&members);
        match mesh.lists.publish(&self.dataplane, &nodes, since, now) {
            Ok(true) => {
                let names: Vec<String> = members.iter().map(IpAddr::to_string).collect();
                let when = match since.saturating_duration_since(now).as_millis() {
                    0 => "from now".to_string(),
                    ms => format!("in {ms} ms"),
                };
                info!(
                    "nodes behind ECMP taking new flows, {when}: {} ({})",
                    names.len(),
                    names.join(", ")
                );
                mesh.published
                    .retain(|(at, _)| now.saturating_duration_since(*at) < HANDOFF * 10);
                mesh.published.push((since, members));
            }
            // A switch is due within milliseconds: on a later turn.
            Ok(false) => {}
            Err(err) => warning!("publishing the nodes behind ECMP: {err}"),
        }
    }

    /// Entries in the established table, as the last sweep left them plus
    /// what the data plane added since (no walk of the table).
    fn established_entries(&self) -> u64 {
        self.dataplane
            .table_stats()
            .map_or(0, |tables| tables.established_entries)
    }

    /// Packets of every service, both directions.
    fn packets_total(&self) -> u64 {
        self.config
            .services
            .iter()
            .filter_map(|service| self.programmer.service_id(&service.name))
            .filter_map(|id| self.dataplane.service_counters(id).ok())
            .map(|counters| counters.packets + counters.reply_packets)
            .sum()
    }

    /// `pnlb ctl drain-node` / `resume-node`.
    pub(super) fn drain_node(
        &mut self,
        drained: bool,
        deadline: Option<Duration>,
    ) -> Result<Done, ApiError> {
        let Some(bgp) = &self.config.bgp else {
            return Err(ApiError::new(
                409,
                "this node announces nothing: its config has no [bgp]",
            )
            .with_fix("drain-node is for nodes behind ECMP ([bgp], docs/scale-out.md); `pnlb ctl drain SERVICE BACKEND` drains a backend"));
        };
        let now = Instant::now();
        let done = if drained {
            let deadline = deadline.unwrap_or(bgp.drain_deadline);
            let packets = self.packets_total();
            match &mut self.node_drain {
                Some(drain) => drain.deadline = deadline,
                None => self.node_drain = Some(NodeDrain::start(now, deadline, packets)),
            }
            info!(
                "node drain: withdrawing every VIP; drained once no packet arrives for {} s, or after {deadline:?}",
                crate::bgp::drain::QUIET.as_secs()
            );
            "node draining: every VIP withdrawn"
        } else {
            if self.node_drain.take().is_some() {
                info!("node resumed: announcing its VIPs again");
            }
            "node resumed: its VIPs are announced while they have usable backends"
        };
        self.announce();
        Ok(Done {
            done: done.into(),
            config_version: self.version,
        })
    }

    /// Each turn of the daemon loop behind ECMP: a peer's change of word
    /// goes to the data plane ahead of its instant (flows' designated nodes
    /// must agree).
    pub(super) fn follow_peers(&mut self) {
        self.publish_nodes(Instant::now());
    }

    /// This node in the API's status.
    pub(super) fn node_status(&self) -> model::NodeStatus {
        let now = Instant::now();
        let bgp = self.announcer.as_ref().map(|announcer| {
            let announced = announcer.announced();
            model::BgpStatus {
                announced: announced.vips.into_iter().collect(),
                withdrawn: announced
                    .withdrawn
                    .into_iter()
                    .map(|(vip, reason)| model::WithdrawnVip { vip, reason })
                    .collect(),
                error: announced.error,
                drain: self.node_drain.as_ref().map(|drain| model::DrainStatus {
                    state: match drain.state(now) {
                        DrainState::Draining => "draining",
                        DrainState::Drained => "drained",
                        DrainState::DeadlinePassed => "deadline passed",
                    }
                    .into(),
                    seconds: now.saturating_duration_since(drain.since).as_secs_f64(),
                    deadline_seconds: drain.deadline.as_secs_f64(),
                    quiet_seconds: drain.quiet_for(now).as_secs_f64(),
                    packets_per_second: drain.recent_rate,
                    established_entries: self.established_entries(),
                }),
                nodes: self
                    .mesh
                    .as_ref()
                    .map(|mesh| mesh.members_published_at(now))
                    .unwrap_or_default(),
            }
        });
        model::NodeStatus {
            fingerprint: self.fingerprinter.last().to_string(),
            bgp,
        }
    }
}
