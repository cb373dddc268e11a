//! The daemon loop's side of connection-table sync ([`super::sync`] is
//! the wire format): one non-blocking socket, turned every loop turn. The
//! active node streams the flows its data plane reported since the last
//! turn and answers full-dump requests; a backup installs what arrives and
//! asks for a full dump until it has had one (only then may it preempt).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_core::config::Ha;
use pnlb_dataplane::sync::{ConnEvents, Flow};
use pnlb_dataplane::{Dataplane, Programmer};

use super::dump::{DumpEnd, DumpReceiver};
use super::rejections::Rejections;
use super::replay::{ReplayGuard, Sequence};
use super::sync::{Kind, Message, SyncedFlow, PER_DATAGRAM, SYNC_PORT};
use crate::log::{info, warning};

/// A backup without a full dump asks again this often.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// The active node re-sends its whole table this often: a backup's copy of
/// a long, quiet connection would otherwise idle out there (its clocks run
/// from the last report), and a lost datagram is repaired.
const RESEND_EVERY: Duration = Duration::from_secs(60);

pub struct Syncer {
    socket: UdpSocket,
    events: ConnEvents,
    key: Vec<u8>,
    group: u8,
    me: IpAddr,
    peers: Vec<IpAddr>,
    sequence: Sequence,
    /// Messages already heard, per sender.
    seen: ReplayGuard,
    rejections: Rejections,
    /// The id of the next full dump this node sends.
    next_dump: u32,
    /// The full dump this node receives.
    receiving: DumpReceiver,
    /// Set once a full dump has arrived since this node last became backup.
    pub synced: Arc<AtomicBool>,
    asked: Option<Instant>,
    resent: Instant,
    installed: u64,
}

impl Syncer {
    pub fn new(ha: &Ha, me: IpAddr, key: Vec<u8>, dataplane: &Dataplane) -> Result<Self> {
        let bind = match me {
            IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], SYNC_PORT)),
            IpAddr::V6(_) => SocketAddr::from(([0u16; 8], SYNC_PORT)),
        };
        let socket = UdpSocket::bind(bind)
            .with_context(|| format!("ha: cannot listen on udp/{SYNC_PORT}"))?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            events: dataplane.conn_events()?,
            key,
            group: ha.group,
            me,
            peers: ha.peers.clone(),
            sequence: Sequence::start(),
            seen: ReplayGuard::default(),
            rejections: Rejections::new("ha sync: message"),
            next_dump: 1,
            receiving: DumpReceiver::default(),
            synced: Arc::new(AtomicBool::new(false)),
            asked: None,
            resent: Instant::now(),
            installed: 0,
        })
    }

    /// Forget the full dump: a new master must send its own.
    pub fn became_backup(&mut self) {
        self.synced.store(false, Ordering::Relaxed);
        self.asked = None;
    }

    fn send(&mut self, kind: Kind, flows: Vec<SyncedFlow>, to: &[IpAddr]) {
        self.send_in(kind, flows, to, (0, 0));
    }

    /// Sends a message of full dump `dump` (id, and for its End the flows
    /// it sent); (0, 0) for none.
    fn send_in(&mut self, kind: Kind, flows: Vec<SyncedFlow>, to: &[IpAddr], dump: (u32, u32)) {
        let bytes = Message {
            kind,
            group: self.group,
            sender: self.me,
            sequence: self.sequence.next(),
            dump: dump.0,
            dump_total: dump.1,
            flows,
        }
        .emit(&self.key);
        for peer in to {
            let _ = self
                .socket
                .send_to(&bytes, SocketAddr::new(*peer, SYNC_PORT));
        }
    }

    /// Sends `flows` (those whose service and backend this node can name)
    /// in batches, as part of dump `dump` (0: none); returns how many went.
    fn send_flows(
        &mut self,
        flows: Vec<Flow>,
        programmer: &Programmer,
        to: &[IpAddr],
        dump: u32,
    ) -> usize {
        let synced: Vec<SyncedFlow> = flows
            .into_iter()
            .filter_map(|(key, conn)| {
                let (service, backend, backend_port) =
                    programmer.describe(conn.service_id, conn.backend_id)?;
                Some(SyncedFlow {
                    key,
                    conn,
                    service,
                    backend,
                    backend_port,
                })
            })
            .collect();
        for batch in synced.chunks(PER_DATAGRAM) {
            self.send_in(Kind::Flows, batch.to_vec(), to, (dump, 0));
        }
        synced.len()
    }

    /// Tells the peers which flows ended here (the expiry sweep).
    pub fn ended(&mut self, keys: &[pnlb_dataplane::abi::FlowKey]) {
        let flows: Vec<SyncedFlow> = keys
            .iter()
            .map(|key| SyncedFlow {
                key: *key,
                conn: Default::default(),
                service: Default::default(),
                backend: self.me,
                backend_port: 0,
            })
            .collect();
        let peers = self.peers.clone();
        for batch in flows.chunks(PER_DATAGRAM) {
            self.send(Kind::Ended, batch.to_vec(), &peers);
        }
    }

    /// One turn of the daemon loop.
    pub fn turn(&mut self, master: bool, dataplane: &Dataplane, programmer: &Programmer) {
        let reported = self.events.take();
        if master && !reported.is_empty() {
            let peers = self.peers.clone();
            self.send_flows(reported, programmer, &peers, 0);
        }
        if master && self.resent.elapsed() >= RESEND_EVERY {
            self.resent = Instant::now();
            match dataplane.flows() {
                Ok(flows) => {
                    let peers = self.peers.clone();
                    self.send_flows(flows, programmer, &peers, 0);
                }
                Err(err) => warning!("ha sync: reading the table: {err}"),
            }
        }
        let mut buffer = [0u8; 2048];
        while let Ok((len, from)) = self.socket.recv_from(&mut buffer) {
            let message = match Message::parse(&buffer[..len], &self.key) {
                Ok(m) if m.group == self.group && self.peers.contains(&m.sender) => m,
                Ok(_) => continue,
                Err(err) => {
                    let reason = || format!("from {}: {err}", from.ip());
                    if let Some(line) = self.rejections.refused(Instant::now(), reason) {
                        warning!("{line}");
                    }
                    continue;
                }
            };
            if !self.seen.accept(message.sender, message.sequence) {
                continue;
            }
            match (message.kind, master) {
                (Kind::Request, true) => match dataplane.flows() {
                    Ok(flows) => {
                        let dump = self.next_dump;
                        self.next_dump = self.next_dump.wrapping_add(1).max(1);
                        let sent = self.send_flows(flows, programmer, &[message.sender], dump);
                        let total = u32::try_from(sent).unwrap_or(u32::MAX);
                        self.send_in(Kind::End, Vec::new(), &[message.sender], (dump, total));
                        info!(
                            "ha sync: sent a full dump (#{dump}) of {sent} flow(s) to {}",
                            message.sender
                        );
                    }
                    Err(err) => {
                        warning!("ha sync: reading the table for {}: {err}", message.sender)
                    }
                },
                (Kind::Flows, false) => {
                    self.receiving.flows(message.dump, message.flows.len());
                    for flow in &message.flows {
                        let Some((service_id, backend_id, generation)) =
                            programmer.resolve(&flow.service, flow.backend, flow.backend_port)
                        else {
                            continue;
                        };
                        let mut conn = flow.conn;
                        conn.service_id = service_id;
                        conn.backend_id = backend_id;
                        conn.backend_generation = generation;
                        if dataplane.install_flow(&flow.key, &conn).is_ok() {
                            self.installed += 1;
                        }
                    }
                }
                (Kind::Ended, false) => {
                    for flow in &message.flows {
                        let _ = dataplane.remove_flow(&flow.key);
                    }
                }
                (Kind::End, false) if !self.synced.load(Ordering::Relaxed) => {
                    match self.receiving.end(message.dump, message.dump_total) {
                        DumpEnd::Whole => {
                            self.synced.store(true, Ordering::Relaxed);
                            info!(
                                "ha sync: full table received from {}, whole (dump #{}, {} flow(s); {} installed so far)",
                                message.sender, message.dump, message.dump_total, self.installed
                            );
                        }
                        DumpEnd::Short { arrived, sent } => {
                            warning!(
                                "ha sync: full dump {} from {} came short ({arrived} of {sent} flows arrived); asking again",
                                message.dump, message.sender
                            );
                            self.asked = None;
                        }
                    }
                }
                _ => {}
            }
        }
        if !master
            && !self.synced.load(Ordering::Relaxed)
            && self.asked.is_none_or(|t| t.elapsed() >= ASK_EVERY)
        {
            let peers = self.peers.clone();
            self.send(Kind::Request, Vec::new(), &peers);
            self.asked = Some(Instant::now());
        }
    }
}
