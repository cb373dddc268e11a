//! Backend next hops as the daemon keeps them: resolved off the daemon
//! loop, and kept true by the kernel's own events.
//!
//! - A new backend address is looked up at once without waiting for its
//!   neighbour (rtnetlink, a few ms; at start, before serving, it waits);
//!   one the kernel cannot name a MAC for yet goes to the resolver thread,
//!   which waits for the probe's answer, applied when it comes. Periodic,
//!   reload and route-change refreshes go there too: the loop never waits
//!   for a neighbour.
//! - A refresh that cannot read the kernel's tables at all (an rtnetlink
//!   failure) changes nothing: every backend keeps its last next hop, and
//!   it is asked again in [`RETRY_UNREADABLE`] rather than at the next
//!   periodic refresh. Taken for "no route", it would have kept new flows
//!   from every backend until then.
//! - The watch thread turns rtnetlink neighbour events into MAC changes,
//!   applied on the next tick (100 ms): a router's VRRP failover or a
//!   server's new MAC (announced by gratuitous ARP / unsolicited NA) takes
//!   effect in well under a second. Route and link events trigger a
//!   refresh. Every CONFIRM_EVERY it asks the kernel to re-verify the
//!   neighbours we forward to (backends' next hops and the default
//!   routers) whose entries went STALE, which XDP traffic never confirms:
//!   a MAC that changes without a word is found by the kernel's probes
//!   within seconds. Static entries are left alone. Those the kernel has
//!   no entry for are probed, from the first second on: a backup that
//!   takes over has its default routers resolved, or the first replies it
//!   translates would have nowhere to go (nexthop::probe_unresolved).
//!   Each round also notes the MAC the kernel holds for each of them; the
//!   data plane uses it when the kernel has lost the entry (last_known.rs),
//!   for the seconds until the next round's probe has it back.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pnlb_dataplane::last_known::{LastKnownNeighbour, LastKnownNeighbours};
use pnlb_dataplane::netwatch::{NetEvent, NetWatch};
use pnlb_dataplane::nexthop::{
    probe_unresolved, vlan_devices, KernelResolver, Resolution, Resolver, VlanDevice,
};

use crate::log::{info, warning};

/// How often the neighbours we forward to are re-verified.
const CONFIRM_EVERY: Duration = Duration::from_secs(5);
/// Route and link changes come in bursts: one refresh after this quiet.
const TOPOLOGY_SETTLE: Duration = Duration::from_millis(200);
/// A refresh that could not read the kernel's tables is tried again after this.
const RETRY_UNREADABLE: Duration = Duration::from_secs(1);

/// The resolver thread's answer to one request.
struct Answer {
    asked: Vec<IpAddr>,
    /// Err: the kernel's tables could not be read (nothing is known of any).
    found: Result<Resolution, String>,
    /// The host's VLAN devices; None if they could not be read.
    vlans: Option<Vec<VlanDevice>>,
}

pub(super) struct NextHops {
    known: Resolution,
    /// The backend addresses last asked about (what a refresh covers).
    current: Vec<IpAddr>,
    /// Asked of the resolver thread, not answered yet.
    pending: HashSet<IpAddr>,
    requests: Sender<Vec<IpAddr>>,
    answers: Receiver<Answer>,
    events: Receiver<NetEvent>,
    /// The watch thread's last known neighbours, each time they change.
    last_known: Receiver<Vec<LastKnownNeighbour>>,
    /// The host's VLAN devices as last read, until the daemon takes them.
    vlan_devices: Option<Vec<VlanDevice>>,
    /// (interface, neighbour) pairs the watch thread re-verifies.
    watched: Arc<Mutex<Vec<(u32, IpAddr)>>>,
    /// When the next refresh off the periodic cadence is due (after a
    /// topology change settles, or to retry an unreadable kernel).
    refresh_at: Option<Instant>,
    /// The last refresh could not read the kernel's tables (warned once).
    unreadable: bool,
    /// The first resolution waits for neighbours: the data plane does not
    /// serve yet, and should start with every backend it can reach.
    started: bool,
}

impl NextHops {
    /// Starts the resolver and watch threads (in this process's network
    /// namespace, like the daemon).
    pub(super) fn start() -> Self {
        let (requests, asked) = channel::<Vec<IpAddr>>();
        let (answer, answers) = channel();
        std::thread::spawn(move || resolver_thread(&asked, &answer));
        let (event, events) = channel();
        let (known, last_known) = channel();
        let watched = Arc::new(Mutex::new(Vec::new()));
        let shared = watched.clone();
        match NetWatch::subscribe() {
            Ok(mut watch) => {
                std::thread::spawn(move || watch_thread(&mut watch, &event, &known, &shared));
            }
            Err(err) => {
                warning!(
                    "no neighbour events (rtnetlink: {err}): next-hop MAC changes are seen only at the periodic refresh"
                );
                // No last known MACs: an earlier daemon's would stay as they were.
                let _ = known.send(Vec::new());
            }
        }
        Self {
            known: Resolution::new(),
            current: Vec::new(),
            pending: HashSet::new(),
            requests,
            answers,
            events,
            last_known,
            vlan_devices: None,
            watched,
            refresh_at: None,
            unreadable: false,
            started: false,
        }
    }

    /// Asks the kernel again about every backend, in the background.
    pub(super) fn refresh(&mut self) {
        let current = self.current.clone();
        self.ask(current);
    }

    fn ask(&mut self, addresses: Vec<IpAddr>) {
        if addresses.is_empty() {
            return;
        }
        self.pending.extend(addresses.iter().copied());
        // The thread lives as long as the daemon; a send cannot fail first.
        let _ = self.requests.send(addresses);
    }

    /// Takes in what the threads found since the last call; true when a
    /// next hop moved (the data plane must be written again).
    pub(super) fn poll(&mut self) -> bool {
        let mut moved = false;
        while let Ok(answer) = self.answers.try_recv() {
            // Unread (the kernel not asked): the devices stay as they are.
            if answer.vlans.is_some() {
                self.vlan_devices = answer.vlans;
            }
            for address in &answer.asked {
                self.pending.remove(address);
            }
            let answers = match answer.found {
                Ok(answers) => answers,
                Err(err) => {
                    if !self.unreadable {
                        warning!(
                            "{err}; every backend keeps its last next hop, asking again every {} s",
                            RETRY_UNREADABLE.as_secs()
                        );
                    }
                    self.unreadable = true;
                    self.refresh_by(Instant::now() + RETRY_UNREADABLE);
                    continue;
                }
            };
            if std::mem::take(&mut self.unreadable) {
                info!("the kernel's routes and neighbours are readable again");
            }
            for (address, answer) in answers {
                if !self.current.contains(&address) {
                    continue;
                }
                if self.known.get(&address) != Some(&answer) {
                    moved = true;
                    self.known.insert(address, answer);
                }
            }
        }
        while let Ok(event) = self.events.try_recv() {
            match event {
                NetEvent::Neighbour {
                    ifindex,
                    address,
                    mac,
                } => moved |= self.learn(ifindex, address, mac),
                NetEvent::Topology => self.refresh_by(Instant::now() + TOPOLOGY_SETTLE),
                // Kept: established flows go on with the last MAC while the
                // kernel re-resolves; health checks judge the backend.
                NetEvent::NeighbourLost { .. } => {}
            }
        }
        if self.refresh_at.is_some_and(|at| Instant::now() >= at) {
            self.refresh_at = None;
            self.refresh();
        }
        if moved {
            self.publish_watched();
        }
        moved
    }

    /// A refresh off the periodic cadence, due by `at` (the earlier of two).
    fn refresh_by(&mut self, at: Instant) {
        self.refresh_at = Some(self.refresh_at.map_or(at, |due| due.min(at)));
    }

    /// The VLAN devices read since the last call, if any (for the data
    /// plane's table of them).
    pub(super) fn take_vlan_devices(&mut self) -> Option<Vec<VlanDevice>> {
        self.vlan_devices.take()
    }

    /// The last known neighbours, if they changed since the last call (for
    /// the data plane's table of them).
    pub(super) fn take_last_known(&mut self) -> Option<Vec<LastKnownNeighbour>> {
        self.last_known.try_iter().last()
    }

    /// A neighbour's MAC as the kernel now has it on `device`: every next
    /// hop through it follows. True if one changed.
    fn learn(&mut self, device: u32, neighbour: IpAddr, mac: [u8; 6]) -> bool {
        let mut moved = false;
        for (backend, answer) in self.known.iter_mut() {
            if let Ok(hop) = answer {
                if hop.device == device
                    && hop.gateway.unwrap_or(*backend) == neighbour
                    && hop.mac != mac
                {
                    hop.mac = mac;
                    moved = true;
                }
            }
        }
        moved
    }

    fn publish_watched(&self) {
        let hops: BTreeSet<(u32, IpAddr)> = self
            .known
            .iter()
            .filter_map(|(backend, answer)| {
                let hop = answer.as_ref().ok()?;
                Some((hop.device, hop.gateway.unwrap_or(*backend)))
            })
            .collect();
        if let Ok(mut watched) = self.watched.lock() {
            *watched = hops.into_iter().collect();
        }
    }
}

impl Resolver for NextHops {
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution {
        let wanted: HashSet<IpAddr> = backends.iter().copied().collect();
        self.known.retain(|address, _| wanted.contains(address));
        self.current = backends.to_vec();
        self.look_up(backends)
    }

    /// A change to some services: the other backends stay current (their
    /// MAC changes followed, their next hops refreshed).
    fn resolve_some(&mut self, backends: &[IpAddr]) -> Resolution {
        let current: HashSet<IpAddr> = self.current.iter().copied().collect();
        self.current
            .extend(backends.iter().filter(|b| !current.contains(b)));
        self.look_up(backends)
    }
}

impl NextHops {
    /// `backends`' next hops as known, the unknown ones looked up.
    fn look_up(&mut self, backends: &[IpAddr]) -> Resolution {
        let new: Vec<IpAddr> = backends
            .iter()
            .copied()
            .filter(|b| !self.known.contains_key(b) && !self.pending.contains(b))
            .collect();
        if !new.is_empty() {
            // What the kernel already knows, now (unresolved neighbours are
            // probed); the rest in the background.
            let probe_wait = if self.started {
                Duration::ZERO
            } else {
                KernelResolver::default().probe_wait
            };
            let quick = KernelResolver { probe_wait }.resolve(&new);
            let mut later = Vec::new();
            for (address, answer) in quick {
                match answer {
                    Ok(_) => {
                        self.known.insert(address, answer);
                    }
                    Err(_) => later.push(address),
                }
            }
            self.ask(later);
            self.publish_watched();
        }
        self.started = true;
        backends
            .iter()
            .map(|&b| {
                let answer = self.known.get(&b).cloned().unwrap_or_else(|| {
                    Err(format!(
                        "resolving {b}'s next hop (waiting for ARP / neighbour discovery)"
                    ))
                });
                (b, answer)
            })
            .collect()
    }
}

/// Answers requests with the kernel's tables, probing unresolved
/// neighbours and waiting for them, and the VLAN devices as they are now;
/// queued requests are merged.
fn resolver_thread(asked: &Receiver<Vec<IpAddr>>, answer: &Sender<Answer>) {
    let mut kernel = KernelResolver::default();
    while let Ok(first) = asked.recv() {
        let mut addresses: BTreeSet<IpAddr> = first.into_iter().collect();
        while let Ok(more) = asked.try_recv() {
            addresses.extend(more);
        }
        let asked: Vec<IpAddr> = addresses.into_iter().collect();
        let found = kernel.try_resolve(&asked);
        let vlans = vlan_devices();
        if answer
            .send(Answer {
                asked,
                found,
                vlans,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Forwards rtnetlink events, re-verifies the neighbours we forward to and
/// notes their MACs (sent to `known` whenever they change).
fn watch_thread(
    watch: &mut NetWatch,
    events: &Sender<NetEvent>,
    known: &Sender<Vec<LastKnownNeighbour>>,
    watched: &Mutex<Vec<(u32, IpAddr)>>,
) {
    // The first round within a second of the start: a node may take over
    // any moment.
    let mut last_confirm: Option<Instant> = None;
    let mut last_known = LastKnownNeighbours::default();
    // The first round's are sent even if empty: a restarted daemon's data
    // plane may hold an earlier one's.
    let mut first = true;
    loop {
        let mut moved = false;
        match watch.wait(Duration::from_secs(1)) {
            Ok(batch) => {
                for event in batch {
                    if let NetEvent::Neighbour {
                        ifindex,
                        address,
                        mac,
                    } = event
                    {
                        moved |= last_known.learn(ifindex, address, mac);
                    }
                    if events.send(event).is_err() {
                        return;
                    }
                }
            }
            Err(err) => {
                warning!(
                    "neighbour events stopped (rtnetlink: {err}); the periodic refresh goes on"
                );
                // Nobody keeps the last known MACs true any more.
                let _ = known.send(Vec::new());
                return;
            }
        }
        if last_confirm.is_none_or(|at| at.elapsed() >= CONFIRM_EVERY) {
            last_confirm = Some(Instant::now());
            let routers = pnlb_dataplane::rtnetlink::routes::default_gateways();
            let routers_read = routers.is_ok();
            let mut hops: BTreeSet<(u32, IpAddr)> =
                routers.unwrap_or_default().into_iter().collect();
            if let Ok(watched) = watched.lock() {
                hops.extend(watched.iter().copied());
            }
            // STALE ones are re-verified (an operator's static entries
            // stay as they are); those the kernel has none for, probed.
            let hops: Vec<(u32, IpAddr)> = hops.into_iter().collect();
            watch.reverify(&hops);
            probe_unresolved(&hops);
            // Unread (the routers or the neighbours): what was known
            // stays, rather than the routers taken for gone.
            if routers_read {
                moved |= last_known.look(&hops).unwrap_or(false);
            }
        }
        if moved || first {
            first = false;
            if known.send(last_known.entries()).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Next hops as if resolved already: no thread, no lookup, no packet.
    fn resolved(addresses: &[IpAddr]) -> NextHops {
        resolved_with_resolver_ends(addresses).0
    }

    /// The same, with the resolver thread's ends kept by the test: what is
    /// asked of it, and where it answers.
    fn resolved_with_resolver_ends(
        addresses: &[IpAddr],
    ) -> (NextHops, Receiver<Vec<IpAddr>>, Sender<Answer>) {
        let (requests, asked) = channel();
        let (answer, answers) = channel();
        let (_, events) = channel();
        let (_, last_known) = channel();
        let hop = pnlb_dataplane::nexthop::NextHop {
            ifindex: 2,
            vlan: 0,
            device: 2,
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            gateway: None,
            source: None,
        };
        let hops = NextHops {
            known: addresses.iter().map(|a| (*a, Ok(hop))).collect(),
            current: addresses.to_vec(),
            pending: HashSet::new(),
            requests,
            answers,
            events,
            last_known,
            vlan_devices: None,
            watched: Arc::default(),
            refresh_at: None,
            unreadable: false,
            started: true,
        };
        (hops, asked, answer)
    }

    #[test]
    fn a_refresh_that_cannot_read_the_kernel_keeps_every_next_hop_and_asks_again_soon() {
        let servers: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([10, 77, 1, i])).collect();
        let (mut hops, asked, answer) = resolved_with_resolver_ends(&servers);
        let before = hops.known.clone();
        hops.refresh();
        assert_eq!(asked.try_recv(), Ok(servers.clone()));
        let unreadable = Answer {
            asked: servers.clone(),
            found: Err("cannot read the kernel's routes and links: \
                        No buffer space available (os error 105)"
                .into()),
            vlans: None,
        };
        answer.send(unreadable).unwrap();
        assert!(!hops.poll(), "no next hop moved");
        assert_eq!(hops.known, before, "every backend keeps its next hop");
        assert!(hops.pending.is_empty(), "the request was answered");
        let due = hops.refresh_at.expect("a retry is due");
        assert!(due <= Instant::now() + RETRY_UNREADABLE);

        // Due: the next poll asks again, without waiting for the periodic refresh.
        hops.refresh_at = Some(Instant::now());
        hops.poll();
        assert_eq!(asked.try_recv(), Ok(servers.clone()), "asked again");

        // A kernel that answers is believed again, a backend's "no route" too.
        let mut found = before.clone();
        found.insert(servers[0], Err(format!("no route to {}", servers[0])));
        answer
            .send(Answer {
                asked: servers.clone(),
                found: Ok(found.clone()),
                vlans: None,
            })
            .unwrap();
        assert!(hops.poll(), "the backend without a route moved");
        assert_eq!(hops.known, found);
        assert!(!hops.unreadable);
    }

    #[test]
    fn a_change_to_some_services_keeps_every_other_backend_current() {
        let servers: Vec<IpAddr> = (1..=4).map(|i| IpAddr::from([10, 77, 1, i])).collect();
        let mut hops = resolved(&servers);
        let some = hops.resolve_some(&servers[..1]);
        assert_eq!(some.len(), 1);
        assert_eq!(
            hops.current, servers,
            "the others still refreshed and followed"
        );
        assert_eq!(hops.known.len(), 4, "and still known");
        // The whole set, given again, is what is current.
        hops.resolve(&servers[1..]);
        assert_eq!(hops.current, servers[1..].to_vec());
        assert_eq!(hops.known.len(), 3);
    }
}
