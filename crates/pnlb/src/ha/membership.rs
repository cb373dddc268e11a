//! Behind ECMP: which nodes take new flows, and from which instant. A node
//! that starts or stops taking flows says so in its Hellos together with
//! the time left until the change applies (SWITCH_AFTER after it decided);
//! every node, itself included, switches its list of nodes at that instant
//! (the data plane picks the list by the clock), so flows' designated nodes
//! agree across nodes to within the Hello's delivery time.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after a node decides to take or stop taking flows the change
/// applies everywhere: time for two Hellos (one lost is no harm).
pub const SWITCH_AFTER: Duration = Duration::from_millis(500);

/// A Hello never defers a switch longer than this (a garbled or hostile
/// delay is cut to it).
const LONGEST_SWITCH: Duration = Duration::from_secs(2);

/// Whether a node takes new flows, before and after the instant its
/// latest change applies from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    pub takes_flows: bool,
    took_flows: bool,
    pub switch_at: Instant,
}

impl Membership {
    /// A node that takes flows (or not) since `at`.
    pub fn steady(takes_flows: bool, at: Instant) -> Self {
        Membership {
            takes_flows,
            took_flows: takes_flows,
            switch_at: at,
        }
    }

    /// Whether the node takes new flows at `at`.
    pub fn takes_flows_at(&self, at: Instant) -> bool {
        if at >= self.switch_at {
            self.takes_flows
        } else {
            self.took_flows
        }
    }

    /// The node says it takes flows (or not) from `switch_at` on, as of
    /// `now`. A change starts a new switch; the same word again can only
    /// bring the switch earlier (a Hello that travelled longer says less
    /// time is left than it should).
    pub fn said(&mut self, takes_flows: bool, switch_at: Instant, now: Instant) {
        if takes_flows != self.takes_flows {
            self.took_flows = self.takes_flows_at(now);
            self.takes_flows = takes_flows;
            self.switch_at = switch_at;
        } else {
            self.switch_at = self.switch_at.min(switch_at);
        }
    }
}

/// What a peer's Hellos said: when it was last heard, and its membership.
#[derive(Clone, Copy, Debug)]
pub struct PeerHeard {
    pub last: Instant,
    pub membership: Membership,
}

/// Every peer heard, by address (written by the sync thread, read by the
/// daemon loop).
pub type PeersHeard = Arc<Mutex<BTreeMap<IpAddr, PeerHeard>>>;

/// A Hello from `peer` heard at `now`: it takes flows (or not) in
/// `switch_in_ms`.
pub fn heard(peers: &PeersHeard, peer: IpAddr, takes_flows: bool, switch_in_ms: u32, now: Instant) {
    let switch_at = now + Duration::from_millis(switch_in_ms.into()).min(LONGEST_SWITCH);
    let Ok(mut peers) = peers.lock() else {
        return;
    };
    peers
        .entry(peer)
        .and_modify(|heard| {
            heard.last = now;
            heard.membership.said(takes_flows, switch_at, now);
        })
        .or_insert_with(|| {
            // First heard: what it said before the switch is the opposite.
            let mut membership = Membership::steady(!takes_flows, now);
            membership.said(takes_flows, switch_at, now);
            PeerHeard {
                last: now,
                membership,
            }
        });
}

/// This node's own word, as its Hellos carry it: whether it takes flows,
/// and the instant (ms of the monotonic clock) that applies from.
#[derive(Debug, Default)]
pub struct OwnWord {
    takes_flows: AtomicBool,
    switch_at_ms: AtomicU64,
}

impl OwnWord {
    pub fn set(&self, takes_flows: bool, switch_at_ms: u64) {
        // The instant first: a Hello that reads the new word reads its
        // instant too (never a past one, which would switch at once).
        self.switch_at_ms.store(switch_at_ms, Ordering::Release);
        self.takes_flows.store(takes_flows, Ordering::Release);
    }

    /// (takes flows, ms until the switch) as of `now_ms`.
    pub fn read(&self, now_ms: u64) -> (bool, u32) {
        let takes_flows = self.takes_flows.load(Ordering::Acquire);
        let switch_at_ms = self.switch_at_ms.load(Ordering::Acquire);
        let left = switch_at_ms.saturating_sub(now_ms);
        (takes_flows, u32::try_from(left).unwrap_or(u32::MAX))
    }
}

pub type SharedOwnWord = Arc<OwnWord>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_applies_at_its_switch_and_repeats_only_bring_it_earlier() {
        let start = Instant::now();
        let mut node = Membership::steady(false, start);
        let switch = start + Duration::from_millis(500);
        node.said(true, switch, start);
        assert!(!node.takes_flows_at(start + Duration::from_millis(499)));
        assert!(node.takes_flows_at(switch));
        // A later Hello that was delayed says less is left: earlier.
        node.said(true, switch - Duration::from_millis(3), start);
        assert_eq!(node.switch_at, switch - Duration::from_millis(3));
        node.said(true, switch + Duration::from_millis(50), start);
        assert_eq!(node.switch_at, switch - Duration::from_millis(3));
        // Changed its mind before the switch: it did not take flows
        // meanwhile, and will not.
        let now = start + Duration::from_millis(100);
        node.said(false, now + Duration::from_millis(500), now);
        assert!(!node.takes_flows_at(now));
        assert!(!node.takes_flows_at(now + Duration::from_secs(1)));
    }

    #[test]
    fn a_peer_first_heard_switches_when_it_says() {
        let peers = PeersHeard::default();
        let peer: IpAddr = "10.77.1.5".parse().expect("address");
        let now = Instant::now();
        heard(&peers, peer, true, 300, now);
        let membership = peers.lock().expect("lock")[&peer].membership;
        assert!(!membership.takes_flows_at(now));
        assert!(membership.takes_flows_at(now + Duration::from_millis(300)));
        heard(&peers, peer, false, u32::MAX, now);
        let membership = peers.lock().expect("lock")[&peer].membership;
        assert_eq!(
            membership.switch_at,
            now + LONGEST_SWITCH,
            "a delay is bounded"
        );
        assert!(!membership.takes_flows_at(now + Duration::from_millis(400)));
        let own = OwnWord::default();
        own.set(true, 1_500);
        assert_eq!(own.read(1_000), (true, 500));
        assert_eq!(own.read(2_000), (true, 0));
    }
}
