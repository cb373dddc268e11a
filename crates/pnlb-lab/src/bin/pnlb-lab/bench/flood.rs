//! The small-packet figure: 64-byte UDP frames (18-byte payload) offered
//! as fast as one client thread can send them, counted where they arrive
//! (the servers' interfaces), with the CPU they cost: the whole machine's
//! (client, LB and servers share it, so compare setups, not absolutes) and,
//! for XDP setups, the data-plane program's own run time per packet from
//! the kernel's BPF accounting. Bounded in time and count.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_lab::{in_netns, Lab};
use serde::Serialize;

pub const FLOOD_PORT: u16 = 9000;
/// 14 Ethernet + 20 IPv4 + 8 UDP + 18 = 60 bytes, 64 with the FCS.
const PAYLOAD: usize = 18;
/// Distinct source ports, so hashing schedulers see many flows.
const FLOWS: u16 = 16;
const MAX_PACKETS: u64 = 50_000_000;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct FloodRun {
    /// Packets the client sent per second.
    pub offered_pps: f64,
    /// Packets that reached a server per second.
    pub delivered_pps: f64,
    /// Busy CPU time of the whole machine per delivered packet.
    pub machine_ns_per_packet: f64,
    /// The XDP program's own run time per packet it ran on, where there is one.
    pub xdp_ns_per_packet: Option<f64>,
}

/// Busy (non-idle) CPU time of all CPUs so far, in ns, from /proc/stat.
pub fn busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy * 1_000_000_000 / super::tools::clock_ticks()
}

/// The machine's packet backlog events so far, both CPUs summed, from
/// /proc/net/softnet_stat: packets dropped because a CPU's backlog queue
/// was full, and the times receive processing ran out of its budget with
/// packets left (handed to ksoftirqd).
pub fn softnet_drops_and_squeezes() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    stat.lines()
        .map(|line| {
            let column = |i| {
                line.split_whitespace()
                    .nth(i)
                    .and_then(|f| u64::from_str_radix(f, 16).ok())
                    .unwrap_or(0)
            };
            (column(1), column(2))
        })
        .fold((0, 0), |(d, s), (dropped, squeezed)| {
            (d + dropped, s + squeezed)
        })
}

fn delivered(lab: &Lab) -> Result<u64> {
    lab.servers.iter().try_fold(0, |sum, server| {
        Ok(sum + lab.rx_packets(&server.ns, "eth0")?)
    })
}

/// Floods `target`:FLOOD_PORT for `seconds`; `program` names the XDP
/// program whose run time to read (None: no XDP on the path).
pub fn flood(lab: &Lab, target: IpAddr, seconds: u32, program: Option<&str>) -> Result<FloodRun> {
    let _accounting = program
        .map(|_| pnlb_dataplane::prog_stats::enable_run_time_stats())
        .transpose()
        .context("enabling BPF run-time accounting")?;
    let xdp_before = program.map(pnlb_dataplane::prog_stats::run_stats);
    let (delivered_before, busy_before) = (delivered(lab)?, busy_ns());
    let duration = Duration::from_secs(u64::from(seconds));
    let (sent, elapsed) = in_netns(&lab.client, move || -> std::io::Result<(u64, Duration)> {
        let sockets: Vec<UdpSocket> = (0..FLOWS)
            .map(|_| {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                socket.connect(SocketAddr::new(target, FLOOD_PORT))?;
                Ok(socket)
            })
            .collect::<std::io::Result<_>>()?;
        let payload = [0x5au8; PAYLOAD];
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < duration && sent < MAX_PACKETS {
            for socket in &sockets {
                for _ in 0..64 {
                    // A full socket buffer is the offered load's limit, not an error.
                    if socket.send(&payload).is_ok() {
                        sent += 1;
                    }
                }
            }
        }
        Ok((sent, start.elapsed()))
    })??;
    // Let the last packets land before counting.
    std::thread::sleep(Duration::from_millis(200));
    let arrived = delivered(lab)?.saturating_sub(delivered_before);
    let busy = busy_ns().saturating_sub(busy_before);
    let secs = elapsed.as_secs_f64().max(1e-3);
    let xdp_ns_per_packet = match (program, xdp_before) {
        (Some(name), Some((time_before, runs_before))) => {
            let (time, runs) = pnlb_dataplane::prog_stats::run_stats(name);
            let runs = runs.saturating_sub(runs_before);
            (runs > 0).then(|| time.saturating_sub(time_before) as f64 / runs as f64)
        }
        _ => None,
    };
    Ok(FloodRun {
        offered_pps: sent as f64 / secs,
        delivered_pps: arrived as f64 / secs,
        machine_ns_per_packet: if arrived > 0 {
            busy as f64 / arrived as f64
        } else {
            0.0
        },
        xdp_ns_per_packet,
    })
}
