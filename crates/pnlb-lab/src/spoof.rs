//! Spoofed floods for the lab: TCP ACKs or SYNs, or UDP datagrams, from
//! random source ports, written whole (IPv4 header included) to a raw
//! socket in a lab namespace — what an attacker or a misbehaving network
//! sends. Bounded in count and in time; the addresses must be the lab's.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::netns::{in_netns, spawn_in_netns};
use crate::wire::{checksum, in_lab};
use crate::LabError;

/// What each spoofed packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A bare TCP ACK: a packet of no known flow.
    Ack,
    /// A TCP SYN: a half-open flow that never completes.
    Syn,
    /// A UDP datagram with a few bytes.
    Udp,
}

/// A flood to send.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub kind: Kind,
    pub source: Ipv4Addr,
    pub target: SocketAddrV4,
    /// Packets to send at most.
    pub count: u64,
    /// Time to spend at most.
    pub limit: Duration,
    /// Packets per second to aim for; 0 = as fast as the socket takes them.
    pub rate: u64,
    /// Seed for the source ports (so a run can be repeated).
    pub seed: u32,
    /// 0: random source ports. N: distinct flows one after another — the
    /// source port counts up through [`WALK_PORTS`], then the source
    /// address from `source` — each sent N times (UDP: a second datagram
    /// makes the flow established).
    pub repeat_each: u32,
}

/// Source ports a walk uses per source address (1024 up).
pub const WALK_PORTS: u64 = 60_000;

impl Flood {
    /// `flows` distinct UDP flows to `target`, walking source ports and
    /// addresses from `first`, two datagrams each (a flow is established by
    /// its second), at a rate the lab's veths carry without dropping many.
    pub fn udp_flows(first: Ipv4Addr, target: SocketAddrV4, flows: u64) -> Self {
        Self {
            kind: Kind::Udp,
            source: first,
            target,
            count: flows * 2,
            limit: Duration::from_secs(120),
            rate: 60_000,
            seed: 1,
            repeat_each: 2,
        }
    }

    /// The source address and port of packet `n`; `random` for random ports.
    fn source_of(&self, n: u64, random: u32) -> (Ipv4Addr, u16) {
        if self.repeat_each == 0 {
            return (self.source, 1024 + (random % 64_000) as u16);
        }
        let flow = n / u64::from(self.repeat_each);
        let address = u32::from(self.source).wrapping_add((flow / WALK_PORTS) as u32);
        (Ipv4Addr::from(address), 1024 + (flow % WALK_PORTS) as u16)
    }

    /// The last source address the flood uses.
    fn last_source(&self) -> Ipv4Addr {
        self.source_of(self.count.saturating_sub(1), 0).0
    }
}

/// What was sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    pub packets: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `flood` from namespace `ns`; returns once `count` packets went out
/// or `limit` passed.
pub fn send(ns: &str, flood: Flood) -> Result<Sent, LabError> {
    check_lab_addresses(&flood)?;
    let stop = AtomicBool::new(false);
    in_netns(ns, move || flood_here(flood, &stop))?
}

/// A flood running in the background.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Result<Sent, LabError>, LabError>>,
}

impl Running {
    /// Stops the flood (if `count` and `limit` have not already) and says
    /// what it sent.
    pub fn finish(self) -> Result<Sent, LabError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().map_err(|_| LabError::Command {
            command: "flood thread".into(),
            reason: "panicked".into(),
        })??
    }
}

/// Starts `flood` from namespace `ns` in the background.
pub fn start(ns: &str, flood: Flood) -> Result<Running, LabError> {
    check_lab_addresses(&flood)?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = spawn_in_netns(ns, move || flood_here(flood, &flag))?;
    Ok(Running { stop, thread })
}

/// Lab addresses only, whatever the caller passed.
fn check_lab_addresses(flood: &Flood) -> Result<(), LabError> {
    if in_lab(flood.source.into())
        && in_lab(flood.last_source().into())
        && in_lab((*flood.target.ip()).into())
    {
        return Ok(());
    }
    Err(LabError::Setup(format!(
        "spoofing is for lab addresses (10.77.0.0/16), not {} -> {}",
        flood.source, flood.target
    )))
}

fn flood_here(flood: Flood, stop: &AtomicBool) -> Result<Sent, LabError> {
    let error = |what: &str| LabError::Command {
        command: format!("raw socket: {what}"),
        reason: std::io::Error::last_os_error().to_string(),
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(error("socket"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(flood.target.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut random = flood.seed.max(1);
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 17;
        random ^= random << 5;
        random
    };
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < flood.count && start.elapsed() < flood.limit && !stop.load(Ordering::Relaxed) {
        if flood.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / flood.rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
                continue;
            }
        }
        let word = next();
        let (source, port) = flood.source_of(sent, word);
        let packet = build(flood.kind, source, port, flood.target, word);
        // SAFETY: valid buffer and address for the call.
        let rc = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&target as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            // A full queue: let it drain.
            if err.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            return Err(error("sendto"));
        }
        sent += 1;
    }
    Ok(Sent {
        packets: sent,
        elapsed: start.elapsed(),
    })
}

/// One IPv4 packet with correct checksums.
fn build(kind: Kind, source: Ipv4Addr, sport: u16, target: SocketAddrV4, word: u32) -> Vec<u8> {
    let (protocol, l4) = match kind {
        Kind::Udp => {
            let mut udp = vec![0u8; 8 + 8];
            udp[0..2].copy_from_slice(&sport.to_be_bytes());
            udp[2..4].copy_from_slice(&target.port().to_be_bytes());
            let length = udp.len() as u16;
            udp[4..6].copy_from_slice(&length.to_be_bytes());
            udp[8..16].copy_from_slice(b"spoofed!");
            (libc::IPPROTO_UDP as u8, udp)
        }
        Kind::Ack | Kind::Syn => {
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&sport.to_be_bytes());
            tcp[2..4].copy_from_slice(&target.port().to_be_bytes());
            tcp[4..8].copy_from_slice(&word.to_be_bytes()); // sequence
            if kind == Kind::Ack {
                tcp[8..12].copy_from_slice(&word.rotate_left(7).to_be_bytes());
            }
            tcp[12] = 5 << 4; // header length: 5 words
            tcp[13] = if kind == Kind::Syn { 0x02 } else { 0x10 };
            tcp[14..16].copy_from_slice(&64240u16.to_be_bytes()); // window
            (libc::IPPROTO_TCP as u8, tcp)
        }
    };
    let mut l4 = l4;
    let checksum_at = if protocol == libc::IPPROTO_UDP as u8 {
        6
    } else {
        16
    };
    let mut pseudo = Vec::with_capacity(12 + l4.len());
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&target.ip().octets());
    pseudo.extend_from_slice(&[0, protocol]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&l4);
    let sum = checksum(&pseudo);
    l4[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());

    let total = 20 + l4.len();
    let mut packet = vec![0u8; 20];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[4..6].copy_from_slice(&(word as u16).to_be_bytes()); // id
    packet[6] = 0x40; // DF
    packet[8] = 64; // TTL
    packet[9] = protocol;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&target.ip().octets());
    let sum = checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&l4);
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_packets_carry_valid_checksums() {
        let target = SocketAddrV4::new(Ipv4Addr::new(10, 77, 100, 1), 80);
        for kind in [Kind::Ack, Kind::Syn, Kind::Udp] {
            let packet = build(kind, Ipv4Addr::new(10, 77, 0, 2), 4242, target, 0xdead_beef);
            assert_eq!(checksum(&packet[..20]), 0, "{kind:?}: IP header");
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&packet[12..20]);
            pseudo.extend_from_slice(&[0, packet[9]]);
            pseudo.extend_from_slice(&((packet.len() - 20) as u16).to_be_bytes());
            pseudo.extend_from_slice(&packet[20..]);
            assert_eq!(checksum(&pseudo), 0, "{kind:?}: L4");
            assert_eq!(u16::from_be_bytes([packet[20], packet[21]]), 4242);
        }
    }
}
