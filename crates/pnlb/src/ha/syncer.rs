//! The sync thread: connection-table sync runs beside the daemon loop, not
//! in it, so neither a burst of flows nor a big table can delay the loop
//! (whose turns feed the failover watchdog) — the loop only says whether
//! this node is active and which flows its sweep ended.
//!
//! Active: the flows the data plane reports are coalesced and sent in
//! numbered batches at a bounded rate (events.rs), batches a backup missed
//! are sent again within the same rate, the whole table is re-reported
//! every RESEND_EVERY, spread over half of it (a quiet long connection
//! would otherwise idle out on the backup, whose clocks run from the last
//! report), and full dumps are served over TCP (transfer.rs, its own
//! thread). Backup: installs what arrives, asks for missed batches at a
//! bounded rate, and fetches a full dump (a thread per attempt) until it
//! holds one; only then may it preempt ([`SyncNode::synced`]). Behind
//! ECMP every node is both, for the flows it carries ([`mesh`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_dataplane::abi::FlowKey;
use pnlb_dataplane::sync::{ConnEvents, Flow};
use pnlb_dataplane::Dataplane;

use super::context::{SharedNames, SyncContext, SyncGroup};
use super::events::{Gaps, Outbox, Refresh, Resends};
use super::membership::{self, PeersHeard, SharedOwnWord};
use super::pace::Pace;
use super::rejections::Rejections;
use super::replay::{ReplayGuard, Sequence};
use super::sync::{Kind, Message, SyncedFlow, MAX_MESSAGE, SYNC_PORT};
use super::transfer::{self, Fetched};
use crate::log::{info, warning};
use mesh::PeerDump;

mod arrival;
mod mesh;

/// A backup without a full dump tries again this often.
const FETCH_EVERY: Duration = Duration::from_secs(1);
/// The active node re-sends its whole table this often.
const RESEND_EVERY: Duration = Duration::from_secs(60);
/// The thread's turn: how long it waits for a datagram before its other work.
const TURN: Duration = Duration::from_millis(2);
/// Datagrams read per turn at most, so sending is never starved.
const READ_PER_TURN: usize = 512;
/// Incremental datagrams sent per second at most (x 8 flows: 64,000 flows
/// a second), and in one burst, answers to Nacks included: what a backup
/// installs (a few map updates per flow) with room to spare, so that its
/// socket buffer never overflows. At 40,000 a second, the 60 s re-report
/// of 500,000 flows overran a backup and lost thousands of batches at
/// once, beyond repair; with Nacks answered outside the rate, a backup
/// that fell behind asked for 167,000 batches in 10 s and lost more of
/// the answers than it got.
const SEND_RATE: f64 = 8_000.0;
const SEND_BURST: f64 = 256.0;
/// Serials a backup asks for again per second at most, and at once: no
/// more than the active node sends.
const ASK_RATE: f64 = SEND_RATE;
const ASK_BURST: f64 = 1024.0;
/// The socket buffers asked for (the kernel's default holds ~150 datagrams).
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// Serials answered per Nack at most.
const NACK_LIMIT: u32 = 1024;

/// Mesh: how long a node that fell silent still counts as running.
pub const PEER_SILENT_AFTER: Duration = Duration::from_secs(1);

/// The daemon's handle on the sync threads; dropping it stops them.
pub struct SyncNode {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Set once this backup holds the active node's whole table (a full
    /// dump arrived whole and no batch since was lost beyond repair).
    pub synced: Arc<AtomicBool>,
    master: Arc<AtomicBool>,
    ended: mpsc::Sender<Vec<FlowKey>>,
    /// Mesh: whether this node takes new flows and from when, as its
    /// Hellos say; and what the peers' Hellos said.
    pub own_word: SharedOwnWord,
    pub peers_heard: PeersHeard,
}

impl Drop for SyncNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl SyncNode {
    pub fn start(
        group: &SyncGroup,
        me: IpAddr,
        key: Vec<u8>,
        dataplane: &Dataplane,
        names: SharedNames,
    ) -> Result<Self> {
        let bind = match me {
            IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], SYNC_PORT)),
            IpAddr::V6(_) => SocketAddr::from(([0u16; 8], SYNC_PORT)),
        };
        let socket = UdpSocket::bind(bind)
            .with_context(|| format!("ha: cannot listen on udp/{SYNC_PORT}"))?;
        socket.set_read_timeout(Some(TURN))?;
        enlarge_buffers(&socket);
        if let Err(err) = arrival::stamp_arrivals(&socket) {
            warning!("ha sync: no kernel receive timestamps ({err}): a Hello's instant is reckoned from when it is read");
        }
        let context = Arc::new(SyncContext::new(
            group,
            me,
            key,
            dataplane.conn_tables()?,
            names,
        ));
        let ring = dataplane.conn_event_ring()?;
        let stop = Arc::new(AtomicBool::new(false));
        let synced = Arc::new(AtomicBool::new(false));
        let own_word = SharedOwnWord::default();
        let peers_heard = PeersHeard::default();
        // In a mesh every node sends its own flows and serves its dumps.
        let master = Arc::new(AtomicBool::new(group.mesh));
        let (ended, ended_rx) = mpsc::channel();
        let peer_dumps: BTreeMap<IpAddr, PeerDump> = if group.mesh {
            group
                .peers
                .iter()
                .map(|peer| (*peer, PeerDump::Wanted(Instant::now())))
                .collect()
        } else {
            BTreeMap::new()
        };
        let server = transfer::serve(context.clone(), master.clone(), stop.clone())?;
        let syncer = {
            let (stop, synced, master) = (stop.clone(), synced.clone(), master.clone());
            let (own_word, peers_heard) = (own_word.clone(), peers_heard.clone());
            std::thread::spawn(move || {
                // The ring's reader is built here: it stays on this thread.
                let events = match ConnEvents::open(&ring) {
                    Ok(events) => events,
                    Err(err) => {
                        warning!("ha sync: cannot read the data plane's flow reports: {err}");
                        return;
                    }
                };
                Syncer {
                    context,
                    socket,
                    events,
                    sequence: Sequence::start(),
                    seen: ReplayGuard::default(),
                    rejections: Rejections::new("ha sync: message"),
                    outbox: Outbox::default(),
                    gaps: Gaps::default(),
                    peer_gaps: HashMap::new(),
                    peer_dumps,
                    own_word,
                    peers_heard,
                    hello_at: Instant::now(),
                    hello_said: false,
                    synced,
                    master,
                    was_master: false,
                    ended: ended_rx,
                    fetching: None,
                    fetched_at: None,
                    refreshed: Instant::now(),
                    refresh: None,
                    resends: Resends::default(),
                    pace: Pace::new(SEND_RATE, SEND_BURST, Instant::now()),
                    ask_pace: Pace::new(ASK_RATE, ASK_BURST, Instant::now()),
                    asked: 0,
                    resent: 0,
                    unretained: 0,
                    reported: Instant::now(),
                }
                .run(&stop)
            })
        };
        Ok(Self {
            stop,
            threads: vec![server, syncer],
            synced,
            master,
            ended,
            own_word,
            peers_heard,
        })
    }

    /// The election's verdict, as the daemon loop acted on it.
    pub fn set_master(&self, master: bool) {
        self.master.store(master, Ordering::Relaxed);
    }

    /// Flows the sweep ended here (sent on while active).
    pub fn ended(&self, keys: Vec<FlowKey>) {
        if !keys.is_empty() {
            let _ = self.ended.send(keys);
        }
    }
}

/// Bigger socket buffers than the kernel's default (SO_*BUFFORCE: the
/// daemon has CAP_NET_ADMIN; without it the default stays, and a backup
/// asks for what it misses).
fn enlarge_buffers(socket: &UdpSocket) {
    for option in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid socket and a c_int option value of its size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

struct Syncer {
    context: Arc<SyncContext>,
    socket: UdpSocket,
    events: ConnEvents,
    sequence: Sequence,
    /// Messages already heard, per sender.
    seen: ReplayGuard,
    rejections: Rejections,
    outbox: Outbox,
    gaps: Gaps,
    /// Mesh: each peer's stream, and where its dump stands.
    peer_gaps: HashMap<IpAddr, Gaps>,
    peer_dumps: BTreeMap<IpAddr, PeerDump>,
    own_word: SharedOwnWord,
    peers_heard: PeersHeard,
    hello_at: Instant,
    hello_said: bool,
    synced: Arc<AtomicBool>,
    master: Arc<AtomicBool>,
    was_master: bool,
    ended: mpsc::Receiver<Vec<FlowKey>>,
    /// The full-dump fetch under way.
    fetching: Option<mpsc::Receiver<Result<Fetched>>>,
    fetched_at: Option<Instant>,
    /// Active: when the whole table was last re-reported, and the part of
    /// that re-report still to go.
    refreshed: Instant,
    refresh: Option<Refresh>,
    /// Active: the batches backups asked for again.
    resends: Resends,
    /// Active: datagrams that may go now; backup: serials it may ask for.
    pace: Pace,
    ask_pace: Pace,
    /// Serials asked for again (backup), or sent again and asked for but
    /// no longer held (active), since the last report, and when that was
    /// (reported at most every REPORT_EVERY).
    asked: u64,
    resent: u64,
    unretained: u64,
    reported: Instant,
}

/// How often the batches asked for and sent again are reported.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Syncer {
    fn run(mut self, stop: &AtomicBool) {
        let mut buffer = vec![0u8; MAX_MESSAGE];
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..READ_PER_TURN {
                let Ok((len, from, arrived)) = arrival::receive(&self.socket, &mut buffer) else {
                    break;
                };
                self.heard(&buffer[..len], from, arrived);
            }
            let master = self.master.load(Ordering::Relaxed);
            if master != self.was_master {
                self.was_master = master;
                self.role_changed(master);
            }
            let ended: Vec<FlowKey> = self.ended.try_iter().flatten().collect();
            let reported = self.events.take();
            if self.context.mesh {
                self.hello();
                self.outbox.report(reported);
                self.outbox.ended(ended);
                self.send_pending();
                self.repair_mesh();
                self.fetch_mesh();
            } else if master {
                self.outbox.report(reported);
                self.outbox.ended(ended);
                self.send_pending();
            } else {
                self.repair();
                self.fetch();
            }
        }
    }

    fn role_changed(&mut self, master: bool) {
        if master {
            self.refreshed = Instant::now();
            self.refresh = None;
            self.resends.clear();
        } else {
            // A new active node sends its own table.
            self.synced.store(false, Ordering::Relaxed);
            self.gaps.reset();
            self.outbox = Outbox::default();
            self.fetched_at = None;
        }
    }

    fn send(&mut self, mut message: Message, to: &[IpAddr]) {
        message.sequence = self.sequence.next();
        let bytes = message.emit(&self.context.key);
        for peer in to {
            let _ = self
                .socket
                .send_to(&bytes, SocketAddr::new(*peer, SYNC_PORT));
        }
    }

    /// Active: what is pending goes out, as far as the rate allows:
    /// batches asked for again first, then new ones.
    fn send_pending(&mut self) {
        let now = Instant::now();
        self.feed_refresh(now);
        let mut budget = self.pace.available(now);
        while budget > 0 {
            let Some((serial, to)) = self.resends.next() else {
                break;
            };
            let sent = self.resend(serial, to);
            if sent > 0 {
                self.resent += 1;
            } else {
                self.unretained += 1;
            }
            budget = budget.saturating_sub(sent);
            self.pace.spend(sent);
        }
        if budget > 0 && self.outbox.pending() > 0 {
            let peers = self.context.peers.clone();
            let batches = self.outbox.batches(budget);
            self.context
                .last_serial
                .store(self.outbox.last_serial(), Ordering::Relaxed);
            for batch in batches {
                self.pace.spend(1);
                let flows = match batch.kind {
                    Kind::Ended => self.context.ended(&batch.flows),
                    _ => self.context.named(&batch.flows),
                };
                let mut message = self.context.message(batch.kind, flows);
                message.serial = batch.serial;
                self.send(message, &peers);
            }
        }
        if self.resent + self.unretained > 0 && now.duration_since(self.reported) >= REPORT_EVERY {
            info!(
                "ha sync: {} batch(es) sent again on request in the last {} s, {} asked for no longer held (a backup then fetches a full dump); {} still queued",
                self.resent,
                now.duration_since(self.reported).as_secs(),
                self.unretained,
                self.resends.queued()
            );
            self.resent = 0;
            self.unretained = 0;
            self.reported = now;
        }
    }

    /// Active: the whole table re-reported every RESEND_EVERY, a part each
    /// turn, each flow as it is when its turn comes (one that ended
    /// meanwhile is not revived).
    fn feed_refresh(&mut self, now: Instant) {
        if self.refreshed.elapsed() >= RESEND_EVERY {
            self.refreshed = now;
            match self.context.flows_to_tell() {
                Ok(flows) => {
                    let over = RESEND_EVERY / 2;
                    info!(
                        "ha sync: re-reporting the whole table ({} flow(s)) over the next {} s",
                        flows.len(),
                        over.as_secs()
                    );
                    let keys = flows.into_iter().map(|(key, _)| key).collect();
                    self.refresh = Some(Refresh::new(keys, now, over));
                }
                Err(err) => warning!("ha sync: reading the table: {err}"),
            }
        }
        let Some(refresh) = self.refresh.as_mut() else {
            return;
        };
        let tables = &self.context.tables;
        let live = refresh
            .due(now)
            .iter()
            .filter_map(|key| Some((*key, tables.established(key)?)));
        self.outbox.report(live);
        if refresh.done() {
            self.refresh = None;
        }
    }

    /// Active: batch `serial` sent again to the backup that asked, with the
    /// flows as they are now; how many datagrams that took (none when the
    /// serial is no longer retained).
    fn resend(&mut self, serial: u32, to: IpAddr) -> usize {
        let Some(keys) = self.outbox.carried(serial) else {
            return 0;
        };
        let (mut live, mut gone): (Vec<Flow>, Vec<Flow>) = (Vec::new(), Vec::new());
        for key in keys {
            match self.context.tables.established(key) {
                Some(conn) => live.push((*key, conn)),
                None => gone.push((*key, Default::default())),
            }
        }
        let parts: [(Kind, Vec<SyncedFlow>); 2] = [
            (Kind::Flows, self.context.named(&live)),
            (Kind::Ended, self.context.ended(&gone)),
        ];
        let mut sent = 0;
        for (kind, flows) in parts {
            if flows.is_empty() && kind == Kind::Ended {
                continue;
            }
            let mut message = self.context.message(kind, flows);
            message.serial = serial;
            self.send(message, &[to]);
            sent += 1;
        }
        sent
    }

    /// A datagram from `from` that the kernel received at `arrived`.
    fn heard(&mut self, bytes: &[u8], from: SocketAddr, arrived: Instant) {
        let message = match Message::parse(bytes, &self.context.key) {
            Ok(m) if self.context.ours(&m) => m,
            Ok(_) => return,
            Err(err) => {
                let reason = || format!("from {}: {err}", from.ip());
                if let Some(line) = self.rejections.refused(Instant::now(), reason) {
                    warning!("{line}");
                }
                return;
            }
        };
        if !self.seen.accept(message.sender, message.sequence) {
            // Heard before (or from an epoch the sender has left): a replay.
            let reason = || format!("from {}: a replay", from.ip());
            if let Some(line) = self.rejections.refused(Instant::now(), reason) {
                warning!("{line}");
            }
            return;
        }
        let master = self.master.load(Ordering::Relaxed);
        if self.context.mesh && message.kind == Kind::Hello {
            let takes_flows = message.count == 1;
            membership::heard(
                &self.peers_heard,
                message.sender,
                takes_flows,
                message.serial,
                arrived,
            );
            return;
        }
        if self.context.mesh && matches!(message.kind, Kind::Flows | Kind::Ended) {
            let epoch = (message.sequence >> 32) as u32;
            self.peer_gaps.entry(message.sender).or_default().arrived(
                message.sender,
                epoch,
                message.serial,
                Instant::now(),
            );
            if message.kind == Kind::Flows {
                self.context.install(&message.flows);
            } else {
                self.context.remove(&message.flows);
            }
            return;
        }
        match (message.kind, master) {
            (Kind::Nack, true) => self.resends.asked(
                message.serial,
                message.count.min(NACK_LIMIT),
                message.sender,
            ),
            (Kind::Flows | Kind::Ended, false) => {
                let epoch = (message.sequence >> 32) as u32;
                self.gaps
                    .arrived(message.sender, epoch, message.serial, Instant::now());
                if message.kind == Kind::Flows {
                    self.context.install(&message.flows);
                } else {
                    self.context.remove(&message.flows);
                }
            }
            _ => {}
        }
    }

    /// Backup: asks for the batches it missed, at a bounded rate; gives up
    /// on them (and asks for a full dump) when they do not come — unless a
    /// dump is already wanted, which holds them or restarts their clocks.
    fn repair(&mut self) {
        let now = Instant::now();
        if self.synced.load(Ordering::Relaxed) && self.gaps.beyond_repair(now) {
            warning!(
                "ha sync: {} batch(es) from the active node lost beyond repair; fetching a full dump",
                self.gaps.missing()
            );
            self.gaps.reset();
            self.synced.store(false, Ordering::Relaxed);
            self.fetched_at = None;
            return;
        }
        let Some(source) = self.gaps.source() else {
            return;
        };
        let budget = self.ask_pace.available(now);
        for (first, count) in self.gaps.asks_due(now, budget) {
            self.ask_again(source, first, count);
        }
        if self.asked > 0 && now.duration_since(self.reported) >= REPORT_EVERY {
            info!(
                "ha sync: {} missed batch(es) from {source} asked for again in the last {} s; {} still missing",
                self.asked,
                now.duration_since(self.reported).as_secs(),
                self.gaps.missing()
            );
            self.asked = 0;
            self.reported = now;
        }
    }

    /// Asks `peer` for `count` batches from serial `first` again (a Nack),
    /// within the pace.
    fn ask_again(&mut self, peer: IpAddr, first: u32, count: u32) {
        let mut nack = self.context.message(Kind::Nack, Vec::new());
        nack.serial = first;
        nack.count = count;
        self.send(nack, &[peer]);
        self.asked += u64::from(count);
        self.ask_pace.spend(count as usize);
    }

    /// Backup: a full dump until one arrives whole.
    fn fetch(&mut self) {
        if let Some(done) = self.fetching.as_ref().and_then(|rx| rx.try_recv().ok()) {
            self.fetching = None;
            match done {
                Ok(Fetched::Whole {
                    from,
                    dump,
                    flows,
                    installed,
                    purged,
                    rests,
                    covered,
                    took,
                }) => {
                    self.gaps.dump_arrived(Instant::now(), covered);
                    self.synced.store(true, Ordering::Relaxed);
                    info!(
                        "ha sync: full table received from {from}, whole (dump #{dump:08x}): {flows} flow(s) in {} ms ({:.0} flows/s), {installed} installed, {purged} no longer held there removed, {rests} SNAT rest(s) taken on",
                        took.as_millis(),
                        flows as f64 / took.as_secs_f64().max(1e-6)
                    );
                }
                Ok(Fetched::Short { from, arrived, sent }) => warning!(
                    "ha sync: full dump from {from} came short ({arrived} of {sent} flows); asking again"
                ),
                Ok(Fetched::NoActive) => {}
                Err(err) => warning!("ha sync: full dump: {err:#}; asking again"),
            }
        }
        if self.synced.load(Ordering::Relaxed)
            || self.fetching.is_some()
            || self.fetched_at.is_some_and(|at| at.elapsed() < FETCH_EVERY)
        {
            return;
        }
        self.fetched_at = Some(Instant::now());
        self.gaps.dump_asked();
        let (done, rx) = mpsc::channel();
        let context = self.context.clone();
        std::thread::spawn(move || {
            let _ = done.send(transfer::fetch(&context));
        });
        self.fetching = Some(rx);
    }
}
