//! The sync thread's part behind ECMP ([bgp] peers): every node is a
//! sender and a receiver. It says every HELLO_EVERY that it runs and
//! whether it takes new flows (ha/membership.rs), asks each peer for the
//! batches of that peer's stream it missed, and fetches each peer's dump
//! of the flows that peer carries (before this node is announced, and
//! again when a stream is lost beyond repair).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{Syncer, FETCH_EVERY, REPORT_EVERY};
use crate::ha::events::Gaps;
use crate::ha::monotonic_ms;
use crate::ha::sync::Kind;
use crate::ha::transfer::{self, Fetched};
use crate::log::{info, warning};

/// How often a node says it runs.
const HELLO_EVERY: Duration = Duration::from_millis(200);

/// Mesh: where a peer's dump of its own flows stands.
pub(super) enum PeerDump {
    /// To fetch from this moment on.
    Wanted(Instant),
    Fetching(mpsc::Receiver<Result<Fetched>>),
    /// Whole, or the peer does not run (it has no flows to tell of).
    Done,
}

impl Syncer {
    /// Mesh: tells every peer, every HELLO_EVERY and at once when it
    /// changes, that this node runs, whether it takes new flows and in how
    /// many ms that applies (every node's list switches at that instant).
    pub(super) fn hello(&mut self) {
        let (takes_flows, switch_in_ms) = self.own_word.read(monotonic_ms());
        if self.hello_at.elapsed() < HELLO_EVERY && takes_flows == self.hello_said {
            return;
        }
        self.hello_at = Instant::now();
        self.hello_said = takes_flows;
        let mut hello = self.context.message(Kind::Hello, Vec::new());
        hello.count = u32::from(takes_flows);
        hello.serial = switch_in_ms;
        let peers = self.context.peers.clone();
        self.send(hello, &peers);
    }

    /// Mesh: asks each peer for the batches of its stream this node
    /// missed, at a bounded rate; a peer's stream lost beyond repair is
    /// fetched whole again.
    pub(super) fn repair_mesh(&mut self) {
        let now = Instant::now();
        let mut budget = self.ask_pace.available(now);
        let mut nacks = Vec::new();
        for (peer, gaps) in &mut self.peer_gaps {
            if gaps.beyond_repair(now) {
                warning!(
                    "sync: {} batch(es) from {peer} lost beyond repair; fetching its flows whole",
                    gaps.missing()
                );
                gaps.reset();
                self.peer_dumps.insert(*peer, PeerDump::Wanted(now));
                continue;
            }
            for (first, count) in gaps.asks_due(now, budget) {
                budget = budget.saturating_sub(count as usize);
                nacks.push((*peer, first, count));
            }
        }
        for (peer, first, count) in nacks {
            self.ask_again(peer, first, count);
        }
        if self.asked > 0 && now.duration_since(self.reported) >= REPORT_EVERY {
            let missing: usize = self.peer_gaps.values().map(Gaps::missing).sum();
            info!(
                "sync: {} missed batch(es) asked for again in the last {} s; {missing} still missing",
                self.asked,
                now.duration_since(self.reported).as_secs()
            );
            self.asked = 0;
            self.reported = now;
        }
    }

    /// Mesh: each peer's dump of the flows it carries, one fetch at a time;
    /// synced once every peer's arrived whole or the peer does not run.
    pub(super) fn fetch_mesh(&mut self) {
        let now = Instant::now();
        let mut busy = false;
        for (peer, state) in self.peer_dumps.iter_mut() {
            let PeerDump::Fetching(rx) = state else {
                continue;
            };
            let Ok(done) = rx.try_recv() else {
                busy = true;
                continue;
            };
            *state = match done {
                Ok(Fetched::Whole {
                    flows,
                    installed,
                    covered,
                    took,
                    ..
                }) => {
                    self.peer_gaps
                        .entry(*peer)
                        .or_default()
                        .dump_arrived(now, covered);
                    info!(
                        "sync: {flows} flow(s) of {peer} received in {} ms, {installed} installed",
                        took.as_millis()
                    );
                    PeerDump::Done
                }
                Ok(Fetched::NoActive) => PeerDump::Done,
                Ok(Fetched::Short { arrived, sent, .. }) => {
                    warning!("sync: the dump from {peer} came short ({arrived} of {sent} flows); asking again");
                    PeerDump::Wanted(now + FETCH_EVERY)
                }
                Err(err) => {
                    warning!("sync: dump from {peer}: {err:#}; asking again");
                    PeerDump::Wanted(now + FETCH_EVERY)
                }
            };
        }
        if !busy {
            let due = self
                .peer_dumps
                .iter()
                .find(|(_, state)| matches!(state, PeerDump::Wanted(at) if *at <= now))
                .map(|(peer, _)| *peer);
            if let Some(peer) = due {
                self.peer_gaps.entry(peer).or_default().dump_asked();
                let (done, rx) = mpsc::channel();
                let context = self.context.clone();
                std::thread::spawn(move || {
                    let _ = done.send(transfer::fetch_from(&context, peer));
                });
                self.peer_dumps.insert(peer, PeerDump::Fetching(rx));
            }
        }
        let all = self
            .peer_dumps
            .values()
            .all(|state| matches!(state, PeerDump::Done));
        if all != self.synced.swap(all, Ordering::Relaxed) && all {
            info!("sync: every peer's flows learned");
        }
    }
}
