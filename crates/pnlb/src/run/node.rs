//! This node among others behind ECMP ([bgp]): what it wants announced
//! each tick, draining it and resuming it, and what the API shows of it.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pnlb_dataplane::nexthop::{KernelResolver, NextHop, Resolver};
use pnlb_dataplane::nodes::Node;

use super::Daemon;
use crate::api::model::{self, ApiError, Done};
use crate::bgp::drain::{DrainState, NodeDrain};
use crate::bgp::Wanted;
use crate::ha::syncer::{PeersHeard, PEER_SILENT_AFTER};
use crate::log::{info, warning};

/// Nodes behind ECMP as this node sees them (connection sync's Hellos).
pub(super) struct MeshView {
    /// This node's address among them.
    pub me: IpAddr,
    /// Told to the peers: whether this node takes new flows.
    pub announcing: Arc<AtomicBool>,
    pub peers_heard: PeersHeard,
    /// The live nodes last published to the data plane.
    pub published: Option<Vec<IpAddr>>,
    /// After a node's MAC could not be resolved: when to try again.
    pub retry_at: Option<Instant>,
    /// The peers' next hops, resolved when first heard.
    pub hops: std::collections::HashMap<IpAddr, NextHop>,
    /// Whether this node is in its own list (hand_off).
    pub in_own_list: bool,
    /// The nodes as published, and until when the list before them stays
    /// published as the second chance.
    pub current: Vec<Node>,
    pub previous_until: Option<Instant>,
    /// Whether this node takes new flows, since when, and what the
    /// routers were last told (handed_off).
    pub takes_flows: bool,
    pub changed_at: Instant,
    pub announced: Option<Wanted>,
}

/// How long the other nodes' lists have to follow this one's before the
/// routers do: a few Hellos (HELLO_EVERY) and daemon ticks.
const HANDOFF: Duration = Duration::from_secs(1);

impl MeshView {
    /// The MAC of every peer ever resolved, live or not.
    fn peer_macs(&self) -> Vec<[u8; 6]> {
        self.hops.values().map(|hop| hop.mac).collect()
    }
}

/// How long the list before a change stays: longer than any handshake
/// takes (a SYN retransmitted after 1 s and 3 s included).
const SECOND_CHANCE_FOR: Duration = Duration::from_secs(5);

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

    /// With designated nodes (nat behind ECMP), a node that starts or
    /// stops taking new flows tells the others at once (its Hellos: their
    /// lists follow within a few hundred ms), changes its own list half a
    /// HANDOFF later and the routers' (BGP) a HANDOFF later: a flow's
    /// packets then never meet two lists that disagree on where it belongs.
    /// What the routers are to be told now.
    fn hand_off(&mut self, wanted: Wanted, now: Instant) -> Wanted {
        let takes_flows = !wanted.vips.is_empty();
        let Some(mesh) = &mut self.mesh else {
            return wanted;
        };
        if mesh.takes_flows != takes_flows {
            mesh.takes_flows = takes_flows;
            mesh.changed_at = now;
        }
        let since = now.saturating_duration_since(mesh.changed_at);
        let in_own_list = if since < HANDOFF / 2 {
            !takes_flows
        } else {
            takes_flows
        };
        let routed = if since < HANDOFF {
            mesh.announced.clone()
        } else {
            mesh.announced = Some(wanted.clone());
            Some(wanted)
        };
        self.publish_nodes(takes_flows, in_own_list);
        routed.unwrap_or_else(|| {
            Wanted::none(
                &self.applied,
                "telling the other nodes it takes new flows before the routers",
            )
        })
    }

    /// With connection sync behind ECMP: the live nodes that take new
    /// flows (this one when `in_own_list`, the peers whose Hellos say they
    /// do; this one's Hellos say `takes_flows`) go to the data plane, in
    /// address order, for nat's designated nodes (bpf/lib/nodes.h),
    /// whenever they change.
    fn publish_nodes(&mut self, takes_flows: bool, in_own_list: bool) {
        let Some(mesh) = &mut self.mesh else {
            return;
        };
        mesh.announcing.store(takes_flows, Ordering::Relaxed);
        mesh.in_own_list = in_own_list;
        let now = Instant::now();
        if mesh.previous_until.is_some_and(|until| now >= until) {
            mesh.previous_until = None;
            if let Err(err) = self
                .dataplane
                .set_nodes(&mesh.current, &[], &mesh.peer_macs())
            {
                warning!("publishing the nodes behind ECMP: {err}");
            }
        }
        // Every peer heard lately, taking flows or not: their MACs are
        // resolved before they are needed (a joining node says it runs
        // while it still learns the flows).
        let heard: Vec<(IpAddr, bool)> = mesh
            .peers_heard
            .lock()
            .map(|heard| {
                heard
                    .iter()
                    .filter(|(_, (at, _))| now.saturating_duration_since(*at) < PEER_SILENT_AFTER)
                    .map(|(address, (_, announcing))| (*address, *announcing))
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
            for address in &unresolved {
                match resolution.get(address) {
                    Some(Ok(hop)) => {
                        mesh.hops.insert(*address, *hop);
                        // Republished below with its MAC among the nodes'.
                        mesh.published = None;
                    }
                    _ => mesh.retry_at = Some(now + Duration::from_secs(1)),
                }
            }
        }
        let mut live: Vec<IpAddr> = heard
            .iter()
            .filter(|(address, announcing)| *announcing && mesh.hops.contains_key(address))
            .map(|(address, _)| *address)
            .collect();
        if in_own_list {
            live.push(mesh.me);
        }
        live.sort();
        if mesh.published.as_ref() == Some(&live) {
            return;
        }
        let hops: Vec<(IpAddr, NextHop)> = live
            .iter()
            .filter_map(|address| Some((*address, *mesh.hops.get(address)?)))
            .collect();
        let nodes: Vec<Node> = live
            .iter()
            .filter_map(|address| {
                if *address == mesh.me {
                    let (_, hop) = hops.first()?;
                    return Some(Node {
                        mac: hop.src_mac,
                        src_mac: hop.src_mac,
                        ifindex: hop.ifindex,
                        is_self: true,
                    });
                }
                let (_, hop) = hops.iter().find(|(peer, _)| peer == address)?;
                Some(Node {
                    mac: hop.mac,
                    src_mac: hop.src_mac,
                    ifindex: hop.ifindex,
                    is_self: false,
                })
            })
            .collect();
        // The list before this change stays a while: a handshake under way
        // keeps its designated node as a second chance.
        match self
            .dataplane
            .set_nodes(&nodes, &mesh.current, &mesh.peer_macs())
        {
            Ok(()) => {
                let names: Vec<String> = live.iter().map(IpAddr::to_string).collect();
                info!(
                    "nodes behind ECMP taking new flows: {} ({})",
                    names.len(),
                    names.join(", ")
                );
                mesh.published = Some(live);
                mesh.current = nodes;
                mesh.previous_until = Some(now + SECOND_CHANCE_FOR);
            }
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

    /// Each turn of the daemon loop behind ECMP: a peer that starts or
    /// stops taking flows is in this node's list within milliseconds of
    /// the others' (nat's designated nodes must agree).
    pub(super) fn follow_peers(&mut self) {
        let Some(mesh) = &self.mesh else {
            return;
        };
        let (takes_flows, in_own_list) = (mesh.takes_flows, mesh.in_own_list);
        self.publish_nodes(takes_flows, in_own_list);
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
                    .and_then(|mesh| mesh.published.clone())
                    .unwrap_or_default(),
            }
        });
        model::NodeStatus {
            fingerprint: self.fingerprint.clone(),
            bgp,
        }
    }
}
