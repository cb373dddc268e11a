//! Incremental sync that holds up under load and loss (the model is
//! conntrackd's FTFW mode, kept small).
//!
//! The active node's [`Outbox`] keeps one pending report per flow — a flow
//! reported ten times in an interval goes out once, as it is last — and
//! sends what is pending in numbered batches (serials), at most a budget
//! per turn, so a burst of new flows cannot overrun the backups' socket
//! buffers. It remembers which flows each recent serial carried.
//!
//! A backup's [`Gaps`] notes the serials it skipped and asks for them
//! (Nack), each less often the longer it stays missing; the active node
//! queues them ([`Resends`]) and sends those flows again as they are *now*
//! (ended ones as ended), under the same serials, within the same pace as
//! its other batches. A gap that is not filled in time, or too many at
//! once, means the backup's copy can no longer be trusted: it asks for a
//! full dump (transfer.rs) and may not preempt until it has one. While a
//! dump is on its way, the gaps it covers are forgotten and the others wait
//! for it: one dump at a time, never a dump per gap.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use pnlb_dataplane::abi::{bytes_of, Conn, FlowKey};
use pnlb_dataplane::sync::Flow;

use super::sync::{Kind, PER_DATAGRAM};

/// Batches the active node can send again: at 8 flows a batch, the last
/// 131,072 flow reports.
const RETAINED: usize = 16_384;
/// A backup asks again for a missing serial after this, doubled at each
/// ask up to ASK_AGAIN_MAX: an answer queued behind others is not asked
/// for twenty times.
const ASK_AGAIN: Duration = Duration::from_millis(50);
const ASK_AGAIN_MAX: Duration = Duration::from_millis(800);
/// A serial still missing this long is given up on: full dump.
const GIVE_UP: Duration = Duration::from_secs(2);
/// More missing serials than this at once: full dump.
const MAX_MISSING: usize = 8_192;

/// A flow key as a map key: by its bytes (the generated struct has no Hash).
#[derive(Clone, Copy)]
struct KeyBytes(FlowKey);

impl PartialEq for KeyBytes {
    fn eq(&self, other: &Self) -> bool {
        bytes_of(&self.0) == bytes_of(&other.0)
    }
}

impl Eq for KeyBytes {}

impl std::hash::Hash for KeyBytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        bytes_of(&self.0).hash(state);
    }
}

/// What is pending for one flow.
#[derive(Clone, Copy)]
enum Pending {
    Flow(Conn),
    Ended,
}

/// One numbered batch to send.
pub struct Batch {
    pub serial: u32,
    pub kind: Kind,
    /// The flows, with their entries (Flows) or keys only (Ended).
    pub flows: Vec<Flow>,
}

#[derive(Default)]
pub struct Outbox {
    pending: HashMap<KeyBytes, Pending>,
    last_serial: u32,
    /// Recent serials and the keys they carried, oldest first.
    sent: VecDeque<(u32, Vec<FlowKey>)>,
}

impl Outbox {
    /// Flows the data plane reported (or the table's periodic refresh).
    pub fn report(&mut self, flows: impl IntoIterator<Item = Flow>) {
        for (key, conn) in flows {
            self.pending.insert(KeyBytes(key), Pending::Flow(conn));
        }
    }

    /// Flows that ended here.
    pub fn ended(&mut self, keys: impl IntoIterator<Item = FlowKey>) {
        for key in keys {
            self.pending.insert(KeyBytes(key), Pending::Ended);
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Up to `budget` batches of what is pending, numbered.
    pub fn batches(&mut self, budget: usize) -> Vec<Batch> {
        let take = self.pending.len().min(budget * PER_DATAGRAM);
        let keys: Vec<KeyBytes> = self.pending.keys().take(take).copied().collect();
        let (mut flows, mut ended) = (Vec::new(), Vec::new());
        for key in keys {
            match self.pending.remove(&key) {
                Some(Pending::Flow(conn)) => flows.push((key.0, conn)),
                Some(Pending::Ended) => ended.push((key.0, Conn::default())),
                None => {}
            }
        }
        let mut batches = Vec::new();
        for (kind, flows) in [(Kind::Flows, flows), (Kind::Ended, ended)] {
            for chunk in flows.chunks(PER_DATAGRAM) {
                let serial = self.next_serial();
                self.sent
                    .push_back((serial, chunk.iter().map(|(key, _)| *key).collect()));
                if self.sent.len() > RETAINED {
                    self.sent.pop_front();
                }
                batches.push(Batch {
                    serial,
                    kind,
                    flows: chunk.to_vec(),
                });
            }
        }
        batches
    }

    /// The last serial given (0: none yet).
    pub fn last_serial(&self) -> u32 {
        self.last_serial
    }

    /// Serials start at 1 and skip 0 when they wrap (0 means none).
    fn next_serial(&mut self) -> u32 {
        self.last_serial = self.last_serial.wrapping_add(1).max(1);
        self.last_serial
    }

    /// The keys batch `serial` carried, if still retained.
    pub fn carried(&self, serial: u32) -> Option<&[FlowKey]> {
        // Serials are retained in order: find by offset from the oldest.
        let (oldest, _) = self.sent.front()?;
        let at = serial.wrapping_sub(*oldest) as usize;
        self.sent
            .get(at)
            .filter(|(s, _)| *s == serial)
            .map(|(_, keys)| keys.as_slice())
    }
}

/// A missing serial: when it was noticed, last asked for, and how often.
struct Missing {
    since: Instant,
    asked: Option<Instant>,
    asks: u32,
}

impl Missing {
    fn new(since: Instant) -> Self {
        Self {
            since,
            asked: None,
            asks: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        let wait = ASK_AGAIN
            .saturating_mul(1 << self.asks.saturating_sub(1).min(8))
            .min(ASK_AGAIN_MAX);
        self.asked
            .is_none_or(|at| now.saturating_duration_since(at) >= wait)
    }
}

/// What a backup knows of one active node's serials.
#[derive(Default)]
pub struct Gaps {
    /// The stream: the active node and its epoch (a restart renumbers).
    stream: Option<(IpAddr, u32)>,
    /// The serial after the highest seen.
    next: u32,
    missing: BTreeMap<u32, Missing>,
    /// Set when more went missing than can be tracked: the serial that
    /// arrived then (the untracked ones came before it).
    overflowed: Option<u32>,
}

/// Whether serial `a` comes at or before `b` (serials wrap).
fn at_or_before(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < u32::MAX / 2
}

impl Gaps {
    /// Batch `serial` of `sender`'s stream `epoch` arrived.
    pub fn arrived(&mut self, sender: IpAddr, epoch: u32, serial: u32, now: Instant) {
        if self.stream != Some((sender, epoch)) {
            // A new active node or a restart: what came before is the full
            // dump's business.
            *self = Self {
                stream: Some((sender, epoch)),
                next: serial.wrapping_add(1),
                ..Self::default()
            };
            return;
        }
        let ahead = serial.wrapping_sub(self.next);
        if ahead < u32::MAX / 2 {
            // New: everything between was skipped.
            if self.missing.len() + ahead as usize > MAX_MISSING {
                self.overflowed = Some(serial);
            } else {
                let mut skipped = self.next;
                while skipped != serial {
                    if skipped != 0 {
                        self.missing.insert(skipped, Missing::new(now));
                    }
                    skipped = skipped.wrapping_add(1);
                }
            }
            self.next = serial.wrapping_add(1);
        } else {
            // An older one: a resend filling a gap (or a duplicate).
            self.missing.remove(&serial);
        }
    }

    /// The stream's active node, to send Nacks to.
    pub fn source(&self) -> Option<IpAddr> {
        self.stream.map(|(sender, _)| sender)
    }

    /// Runs of missing serials (first, how many) to ask for now, `budget`
    /// serials at most.
    pub fn asks_due(&mut self, now: Instant, budget: usize) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let mut asked = 0;
        for (serial, missing) in &mut self.missing {
            if asked == budget {
                break;
            }
            if !missing.due(now) {
                continue;
            }
            asked += 1;
            missing.asked = Some(now);
            missing.asks += 1;
            match runs.last_mut() {
                Some((first, count)) if first.wrapping_add(*count) == *serial => *count += 1,
                _ => runs.push((*serial, 1)),
            }
        }
        runs
    }

    /// Whether the copy can no longer be repaired by asking: a gap older
    /// than GIVE_UP, more gaps than MAX_MISSING, or one further back than
    /// the active node retains (it cannot send that batch again).
    pub fn beyond_repair(&self, now: Instant) -> bool {
        self.overflowed.is_some()
            || self.missing.iter().any(|(serial, m)| {
                now.duration_since(m.since) >= GIVE_UP
                    || self.next.wrapping_sub(*serial) as usize > RETAINED
            })
    }

    /// How many serials are missing now.
    pub fn missing(&self) -> usize {
        self.missing.len()
    }

    /// Starts over (a full dump follows).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// A full dump was asked for: it holds what every batch sent before it
    /// held, so the serials missing so far need no repair; the stream's
    /// place is kept (what comes after the dump still counts).
    pub fn dump_asked(&mut self) {
        self.missing.clear();
        self.overflowed = None;
    }

    /// The dump arrived whole, holding what every batch up to serial
    /// `covered` held (0: none): those need no repair either; the serials
    /// that went missing after it get their full time to be repaired from
    /// now.
    pub fn dump_arrived(&mut self, now: Instant, covered: u32) {
        if covered != 0 {
            self.missing
                .retain(|serial, _| !at_or_before(*serial, covered));
            if self.overflowed.is_some_and(|at| at_or_before(at, covered)) {
                self.overflowed = None;
            }
        }
        for missing in self.missing.values_mut() {
            missing.since = now;
        }
    }
}

/// Active: the serials backups asked for again, in order, once each, and
/// at most RETAINED (older asks beyond that are answered by nothing: the
/// backup gives up on them and fetches a full dump).
#[derive(Default)]
pub struct Resends {
    queue: VecDeque<(u32, IpAddr)>,
    queued: HashSet<(u32, IpAddr)>,
}

impl Resends {
    /// A Nack from `to` for `count` serials from `first`.
    pub fn asked(&mut self, first: u32, count: u32, to: IpAddr) {
        for serial in (0..count).map(|n| first.wrapping_add(n)) {
            if self.queue.len() >= RETAINED {
                return;
            }
            if self.queued.insert((serial, to)) {
                self.queue.push_back((serial, to));
            }
        }
    }

    /// The next serial to send again, and to whom.
    pub fn next(&mut self) -> Option<(u32, IpAddr)> {
        let next = self.queue.pop_front()?;
        self.queued.remove(&next);
        Some(next)
    }

    /// How many wait.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Active: the periodic re-report of the whole table, spread over
/// SPREAD_OVER rather than queued at once (at a million flows, at once is
/// 125,000 batches in a burst that starves the incremental ones).
pub struct Refresh {
    keys: Vec<FlowKey>,
    fed: usize,
    started: Instant,
    over: Duration,
}

impl Refresh {
    pub fn new(keys: Vec<FlowKey>, started: Instant, over: Duration) -> Self {
        Self {
            keys,
            fed: 0,
            started,
            over,
        }
    }

    /// The keys whose turn has come by `now` (in proportion to the time
    /// passed), each once.
    pub fn due(&mut self, now: Instant) -> &[FlowKey] {
        let part = now.saturating_duration_since(self.started).as_secs_f64()
            / self.over.as_secs_f64().max(1e-3);
        let until = ((self.keys.len() as f64 * part.min(1.0)).ceil() as usize).min(self.keys.len());
        let from = self.fed;
        self.fed = until.max(from);
        &self.keys[from..self.fed]
    }

    pub fn done(&self) -> bool {
        self.fed == self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u16) -> FlowKey {
        FlowKey {
            src_port: n.to_be(),
            protocol: 17,
            ..Default::default()
        }
    }

    fn conn(state: u8) -> Conn {
        Conn {
            state,
            ..Default::default()
        }
    }

    #[test]
    fn a_flow_reported_many_times_goes_out_once_as_it_is_last() {
        let mut outbox = Outbox::default();
        for state in 1..=10 {
            outbox.report([(key(1), conn(state))]);
        }
        outbox.report([(key(2), conn(1))]);
        outbox.ended([key(2)]);
        let batches = outbox.batches(10);
        assert_eq!(batches.len(), 2, "one Flows batch, one Ended batch");
        assert_eq!(batches[0].kind, Kind::Flows);
        assert_eq!(batches[0].flows.len(), 1);
        assert_eq!(bytes_of(&batches[0].flows[0].0), bytes_of(&key(1)));
        assert_eq!(batches[0].flows[0].1.state, 10);
        assert_eq!(batches[1].kind, Kind::Ended);
        assert_eq!(bytes_of(&batches[1].flows[0].0), bytes_of(&key(2)));
        assert_eq!((batches[0].serial, batches[1].serial), (1, 2));
        assert_eq!(outbox.pending(), 0);
    }

    #[test]
    fn the_budget_holds_the_rest_back_and_serials_remember_their_flows() {
        let mut outbox = Outbox::default();
        outbox.report((0..100).map(|n| (key(n), conn(1))));
        let first = outbox.batches(3);
        assert_eq!(first.len(), 3);
        assert_eq!(outbox.pending(), 100 - 3 * PER_DATAGRAM);
        let keys: Vec<&[u8]> = first[1].flows.iter().map(|(k, _)| bytes_of(k)).collect();
        let carried: Vec<&[u8]> = outbox
            .carried(first[1].serial)
            .unwrap()
            .iter()
            .map(bytes_of)
            .collect();
        assert_eq!(carried, keys);
        assert!(outbox.carried(99).is_none());
        while outbox.pending() > 0 {
            outbox.batches(3);
        }
        assert!(outbox.carried(0).is_none(), "0 is no serial");
    }

    #[test]
    fn old_serials_are_forgotten_after_retained_batches() {
        let mut outbox = Outbox::default();
        for n in 0..(RETAINED + 10) {
            outbox.report([(key(n as u16), conn(1))]);
            outbox.batches(1);
        }
        assert!(outbox.carried(5).is_none());
        assert!(outbox.carried((RETAINED + 10) as u32).is_some());
    }

    #[test]
    fn a_skipped_serial_is_asked_for_until_it_comes_and_given_up_after_a_while() {
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        let start = Instant::now();
        let mut gaps = Gaps::default();
        gaps.arrived(master, 7, 1, start);
        gaps.arrived(master, 7, 2, start);
        gaps.arrived(master, 7, 6, start); // 3, 4, 5 lost
        gaps.arrived(master, 7, 8, start); // 7 lost
        assert_eq!(gaps.asks_due(start, 100), vec![(3, 3), (7, 1)]);
        assert!(gaps.asks_due(start, 100).is_empty(), "asked just now");
        gaps.arrived(master, 7, 4, start); // a resend
        assert_eq!(gaps.missing(), 3);
        let later = start + ASK_AGAIN;
        assert_eq!(gaps.asks_due(later, 100), vec![(3, 1), (5, 1), (7, 1)]);
        for serial in [3, 5, 7] {
            gaps.arrived(master, 7, serial, later);
        }
        assert_eq!(gaps.missing(), 0);
        assert!(!gaps.beyond_repair(later + GIVE_UP));

        gaps.arrived(master, 7, 10, later); // 9 lost, never resent
        assert!(!gaps.beyond_repair(later + GIVE_UP / 2));
        assert!(gaps.beyond_repair(later + GIVE_UP));
    }

    #[test]
    fn a_new_epoch_or_active_node_starts_a_new_stream() {
        let start = Instant::now();
        let mut gaps = Gaps::default();
        gaps.arrived("10.77.1.2".parse().unwrap(), 7, 100, start);
        gaps.arrived("10.77.1.2".parse().unwrap(), 8, 1, start);
        gaps.arrived("10.77.1.3".parse().unwrap(), 1, 50, start);
        assert_eq!(gaps.missing(), 0, "no gaps across streams");
        assert_eq!(gaps.source(), Some("10.77.1.3".parse().unwrap()));
    }

    #[test]
    fn a_gap_further_back_than_the_active_node_retains_cannot_be_repaired() {
        let start = Instant::now();
        let mut gaps = Gaps::default();
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        gaps.arrived(master, 1, 1, start);
        // 2 lost; the active node retains its last RETAINED batches.
        for serial in 3..=(1 + RETAINED as u32) {
            gaps.arrived(master, 1, serial, start);
        }
        assert!(!gaps.beyond_repair(start), "2 is still retained");
        gaps.arrived(master, 1, 2 + RETAINED as u32, start);
        assert!(gaps.beyond_repair(start));
    }

    #[test]
    fn too_many_gaps_at_once_cannot_be_repaired() {
        let start = Instant::now();
        let mut gaps = Gaps::default();
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        gaps.arrived(master, 1, 1, start);
        gaps.arrived(master, 1, 2 + MAX_MISSING as u32 + 1, start);
        assert!(gaps.beyond_repair(start));
    }

    #[test]
    fn serials_wrap_past_zero() {
        let start = Instant::now();
        let mut gaps = Gaps::default();
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        gaps.arrived(master, 1, u32::MAX - 1, start);
        gaps.arrived(master, 1, 2, start); // MAX and 1 lost; 0 is no serial
        assert_eq!(gaps.asks_due(start, 100), vec![(1, 1), (u32::MAX, 1)]);
    }

    #[test]
    fn asks_back_off_and_keep_to_the_budget() {
        let start = Instant::now();
        let mut gaps = Gaps::default();
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        gaps.arrived(master, 1, 1, start);
        gaps.arrived(master, 1, 12, start); // 2..=11 lost
        assert_eq!(gaps.asks_due(start, 4), vec![(2, 4)], "four at most");
        assert_eq!(gaps.asks_due(start, 100), vec![(6, 6)], "then the rest");
        // Asked once: again after ASK_AGAIN; twice: after twice that.
        let mut at = start + ASK_AGAIN;
        assert_eq!(gaps.asks_due(at, 100), vec![(2, 10)]);
        at += ASK_AGAIN;
        assert!(gaps.asks_due(at, 100).is_empty(), "waits twice as long");
        at += ASK_AGAIN;
        assert_eq!(gaps.asks_due(at, 100), vec![(2, 10)]);
        // Never less often than ASK_AGAIN_MAX.
        for _ in 0..10 {
            at += ASK_AGAIN_MAX;
            assert_eq!(gaps.asks_due(at, 100), vec![(2, 10)]);
        }
    }

    #[test]
    fn a_dump_covers_the_gaps_before_it_and_restarts_the_clock_of_the_rest() {
        let start = Instant::now();
        let mut gaps = Gaps::default();
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        gaps.arrived(master, 1, 1, start);
        gaps.arrived(master, 1, 3, start); // 2 lost
        gaps.dump_asked();
        assert_eq!(gaps.missing(), 0, "the dump holds what batch 2 held");
        gaps.arrived(master, 1, 5, start); // 4 lost while the dump travels
        gaps.arrived(master, 1, 7, start); // and 6
        let arrived = start + GIVE_UP * 3;
        assert!(gaps.beyond_repair(arrived), "had it not been for the dump");
        gaps.dump_arrived(arrived, 4);
        assert_eq!(gaps.missing(), 1, "4 was sent before the dump's read");
        assert!(!gaps.beyond_repair(arrived + GIVE_UP / 2));
        assert!(gaps.beyond_repair(arrived + GIVE_UP));
        assert_eq!(gaps.asks_due(arrived, 100), vec![(6, 1)]);
    }

    #[test]
    fn an_overflow_before_what_a_dump_covers_is_forgiven() {
        let start = Instant::now();
        let master: IpAddr = "10.77.1.2".parse().unwrap();
        let overflow = 2 + MAX_MISSING as u32 + 1;
        for (covered, forgiven) in [(overflow, true), (overflow - 1, false), (0, false)] {
            let mut gaps = Gaps::default();
            gaps.arrived(master, 1, 1, start);
            gaps.dump_asked();
            gaps.arrived(master, 1, overflow, start);
            assert!(gaps.beyond_repair(start));
            gaps.dump_arrived(start, covered);
            assert_eq!(!gaps.beyond_repair(start), forgiven, "covered {covered}");
        }
    }

    #[test]
    fn resends_are_queued_once_each_in_order_and_bounded() {
        let (a, b): (IpAddr, IpAddr) = ("10.77.1.3".parse().unwrap(), "10.77.1.4".parse().unwrap());
        let mut resends = Resends::default();
        resends.asked(5, 3, a);
        resends.asked(6, 3, a); // 6 and 7 already queued
        resends.asked(5, 1, b);
        let order: Vec<_> = std::iter::from_fn(|| resends.next()).collect();
        assert_eq!(order, vec![(5, a), (6, a), (7, a), (8, a), (5, b)]);
        resends.asked(1, u32::MAX, a);
        assert_eq!(resends.queued(), RETAINED);
    }

    #[test]
    fn the_refresh_is_spread_over_its_period() {
        let start = Instant::now();
        let keys: Vec<FlowKey> = (0..1000).map(key).collect();
        let mut refresh = Refresh::new(keys, start, Duration::from_secs(10));
        assert!(refresh.due(start).is_empty());
        assert_eq!(refresh.due(start + Duration::from_secs(1)).len(), 100);
        assert!(
            refresh.due(start + Duration::from_secs(1)).is_empty(),
            "each once"
        );
        assert_eq!(refresh.due(start + Duration::from_millis(2500)).len(), 150);
        assert!(!refresh.done());
        let rest = refresh.due(start + Duration::from_secs(60));
        assert_eq!(rest.len(), 750);
        assert_eq!(bytes_of(&rest[749]), bytes_of(&key(999)));
        assert!(refresh.done());
    }
}
