//! Failover (design.md §4, issue "Failover with TCP session recovery"):
//! nodes of one `[ha]` group elect an active node with authenticated
//! adverts ([`advert`], [`election`]); the active node holds the VIPs and
//! floating addresses ([`takeover`]), so traffic comes to it, and streams
//! its connection table to the others ([`sync`], [`syncer`]), which keep
//! their program attached for whatever still reaches them. This thread
//! runs the election; the daemon loop acts on its role changes and tells
//! it whether the node is healthy.

pub mod advert;
pub mod context;
pub mod election;
pub mod events;
pub mod membership;
pub mod pace;
pub mod rejections;
pub mod replay;
pub mod sync;
pub mod syncer;
pub mod takeover;
pub mod transfer;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_core::config::Ha;

use self::advert::{Advert, ADVERT_PORT};
use self::election::{Election, Heard, Role};
use self::rejections::Rejections;
use self::replay::Sequence;
use crate::log::{info, warning};

/// How stale the daemon loop's heartbeat may be before the node counts as sick.
const HEARTBEAT_LIMIT: Duration = Duration::from_secs(2);

pub struct HaNode {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Role changes, for the daemon loop.
    pub roles: mpsc::Receiver<Role>,
    /// The daemon loop's last turn.
    pub heartbeat: Arc<Heartbeat>,
    /// Whether the data plane is fine (attached when it should be, maps readable).
    pub dataplane_ok: Arc<AtomicBool>,
}

impl Drop for HaNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Milliseconds on this process's monotonic clock: what liveness is
/// measured in, so that a step of the wall clock is no sign of sickness.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When the daemon loop last turned, in [`monotonic_ms`].
pub struct Heartbeat(AtomicU64);

impl Heartbeat {
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }

    pub fn beat(&self, now: u64) {
        self.0.store(now, Ordering::Relaxed);
    }

    /// Whether the loop turned within HEARTBEAT_LIMIT of `now`.
    pub fn alive(&self, now: u64) -> bool {
        now.saturating_sub(self.0.load(Ordering::Relaxed)) < HEARTBEAT_LIMIT.as_millis() as u64
    }
}

/// Reads the group's shared key (ha.key_file).
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>> {
    Ok(crate::secret::read(path, "ha.key_file")?.into_bytes())
}

impl HaNode {
    /// Starts the election as `me` (this node's address on ha.interface).
    /// `synced` says whether this node has the active node's full table,
    /// without which it does not preempt.
    pub fn start(config: &Ha, me: IpAddr, key: Vec<u8>, synced: Arc<AtomicBool>) -> Result<Self> {
        let bind = match me {
            IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], ADVERT_PORT)),
            IpAddr::V6(_) => SocketAddr::from(([0u16; 8], ADVERT_PORT)),
        };
        let socket = UdpSocket::bind(bind)
            .with_context(|| format!("ha: cannot listen on udp/{ADVERT_PORT}"))?;
        let tick = (config.advert_interval / 4).max(Duration::from_millis(5));
        socket.set_read_timeout(Some(tick))?;
        let (roles_tx, roles) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeat = Arc::new(Heartbeat::new(monotonic_ms()));
        let dataplane_ok = Arc::new(AtomicBool::new(true));
        let ha = config.clone();
        let thread = {
            let (stop, heartbeat, dataplane_ok) =
                (stop.clone(), heartbeat.clone(), dataplane_ok.clone());
            std::thread::spawn(move || {
                let shared = Shared {
                    stop: &stop,
                    heartbeat: &heartbeat,
                    dataplane_ok: &dataplane_ok,
                    synced: &synced,
                };
                run(&ha, me, &key, &socket, &roles_tx, shared)
            })
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            roles,
            heartbeat,
            dataplane_ok,
        })
    }
}

/// What the daemon loop and the election thread share.
struct Shared<'a> {
    stop: &'a AtomicBool,
    heartbeat: &'a Heartbeat,
    dataplane_ok: &'a AtomicBool,
    synced: &'a AtomicBool,
}

fn run(
    config: &Ha,
    me: IpAddr,
    key: &[u8],
    socket: &UdpSocket,
    roles: &mpsc::Sender<Role>,
    shared: Shared,
) {
    let Shared {
        stop,
        heartbeat,
        dataplane_ok,
        synced,
    } = shared;
    let start = Instant::now();
    let mut election = Election::new(
        me,
        config.priority,
        config.advert_interval,
        config.preempt_delay,
        start,
    );
    let mut role = Role::Backup;
    let mut last_sent: Option<Instant> = None;
    let mut sequence = Sequence::start();
    let mut buffer = [0u8; 256];
    let mut rejections = Rejections::new("ha: advert");
    info!(
        "ha: group {} as {me}, priority {}, peers {}; backup until elected",
        config.group,
        config.priority,
        config
            .peers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Silence is judged as of the last moment every advert sent by then
    // had been read — taken before a read that found the socket empty —
    // not as of now: a node that was stopped or starved of CPU (SIGSTOP, a
    // stalled VM) reads the adverts queued meanwhile before it may find
    // the master silent, instead of taking over on waking. A socket never
    // found empty (a flood) for as long as a master may be silent falls
    // back to now.
    let mut heard_all_until = start;
    let mut flooded_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut emptied = false;
        for _ in 0..ADVERTS_PER_TURN {
            let asked = Instant::now();
            match socket.recv_from(&mut buffer) {
                Ok((len, from)) => {
                    let refused = judge(config, me, key, &mut election, &buffer[..len], from);
                    if let Some(reason) = refused {
                        if let Some(line) = rejections.refused(Instant::now(), || reason) {
                            warning!("{line}");
                        }
                    }
                }
                Err(err) => {
                    // A timed-out read, or one a stop interrupted (EINTR):
                    // it blocked, so the socket was empty when it began.
                    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
                    if matches!(err.kind(), WouldBlock | TimedOut | Interrupted) {
                        heard_all_until = asked;
                        emptied = true;
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        if emptied {
            flooded_since = None;
        } else if now.duration_since(*flooded_since.get_or_insert(now)) >= election.master_down() {
            heard_all_until = now;
        }
        let healthy = heartbeat.alive(monotonic_ms()) && dataplane_ok.load(Ordering::Relaxed);
        election.set_healthy(healthy);
        election.set_synced(synced.load(Ordering::Relaxed));
        let next = election.tick(heard_all_until);
        let resigning = next == Role::Backup && role == Role::Master && !healthy;
        if next != role {
            role = next;
            let _ = roles.send(role);
        }
        let due = last_sent.is_none_or(|t| now.duration_since(t) >= config.advert_interval);
        if (role == Role::Master && due) || resigning {
            let advert = Advert {
                group: config.group,
                priority: election.priority(),
                master: true,
                sender: me,
                sequence: sequence.next(),
            };
            let bytes = advert.emit(key);
            for peer in &config.peers {
                let _ = socket.send_to(&bytes, SocketAddr::new(*peer, ADVERT_PORT));
            }
            last_sent = Some(now);
        }
    }
    if role == Role::Master {
        // Stopping: resign (priority 0), so a backup takes over at once.
        let advert = Advert {
            group: config.group,
            priority: 0,
            master: true,
            sender: me,
            sequence: sequence.next(),
        };
        let bytes = advert.emit(key);
        for peer in &config.peers {
            let _ = socket.send_to(&bytes, SocketAddr::new(*peer, ADVERT_PORT));
        }
    }
}

/// Datagrams read per turn at most before the election's tick.
const ADVERTS_PER_TURN: usize = 64;

/// An advert heard: counted by the election, or the reason it is refused.
fn judge(
    config: &Ha,
    me: IpAddr,
    key: &[u8],
    election: &mut Election,
    bytes: &[u8],
    from: SocketAddr,
) -> Option<String> {
    match Advert::parse(bytes, key) {
        Ok(advert) if advert.group != config.group || advert.sender == me => None,
        Ok(advert) if !config.peers.contains(&advert.sender) => Some(format!(
            "from {} (sender {} is not one of ha.peers)",
            from.ip(),
            advert.sender
        )),
        Ok(advert) => (election.heard(&advert, Instant::now()) == Heard::Replay)
            .then(|| format!("from {}: a replay", from.ip())),
        Err(err) => Some(format!("from {}: {err}", from.ip())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_is_measured_on_the_monotonic_clock_alone() {
        // The clock is injected: `alive` reads none, so a wall-clock step
        // of an hour either way cannot make a healthy loop look dead.
        let heartbeat = Heartbeat::new(10_000);
        assert!(heartbeat.alive(10_000 + 1_999));
        assert!(!heartbeat.alive(10_000 + 2_000));
        heartbeat.beat(3_600_000);
        assert!(heartbeat.alive(3_600_500));
        assert!(
            heartbeat.alive(3_599_000),
            "a beat 'in the future' is alive"
        );
        let first = monotonic_ms();
        assert!(monotonic_ms() >= first);
    }
}
