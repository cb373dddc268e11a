//! The daemon's own CPU as its table grows (issue 17: no daemon work that
//! scales with the table on a fixed cadence should show): `pnlb run` with a
//! nat UDP service, its table filled to 10,000, 100,000 and 1,000,000 live
//! flows by the lab's bounded flow generator (two datagrams each, so each
//! is established), then the daemon's user + system time over a quiet
//! window, from /proc/PID/stat. Everything it does on its own is in it: the
//! expiry pass (in steps), the census, health checks, the loop's ticks.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_lab::spoof::{self, Flood};
use pnlb_lab::{Lab, VIP4};

const PORT: u16 = 9000;
/// Live flows at each measurement.
pub const SIZES: [u64; 3] = [10_000, 100_000, 1_000_000];
/// How long each measurement watches the daemon: two of the expiry's
/// longest periods (30 s, for a large table of flows that go on), so that
/// a window holds whole passes whatever their pace.
const WINDOW: Duration = Duration::from_secs(60);

/// One measurement: flows in the table, the daemon's CPU in ms per second.
pub struct DaemonCpu {
    pub flows: u64,
    pub cpu_ms_per_s: f64,
}

pub fn measure(lab: &Lab, binary: &str) -> Result<Vec<DaemonCpu>> {
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    let config = lab
        .config("nat", PORT, &everyone)
        .replace("protocol = \"tcp\"", "protocol = \"udp\"")
        .replacen('\n', "\nconn_table_size = 4194304\n", 1);
    let path = lab.dir.join("pnlb-daemon-cpu.toml");
    std::fs::write(&path, config)?;
    let daemon = lab.start_pnlb(binary, &path)?;
    let mut results = Vec::new();
    let mut made = 0u64;
    for flows in SIZES {
        generate(lab, made, flows - made)?;
        made = flows;
        // A whole expiry pass over the filled table before watching.
        std::thread::sleep(Duration::from_secs(6));
        let before = cpu_ticks(daemon.pid())?;
        let started = Instant::now();
        std::thread::sleep(WINDOW);
        let ticks = cpu_ticks(daemon.pid())? - before;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_ms_per_s = ticks as f64 * 1000.0 / super::tools::clock_ticks() as f64 / elapsed;
        println!("  {flows} flows: the daemon used {cpu_ms_per_s:.1} ms of CPU per second");
        results.push(DaemonCpu {
            flows,
            cpu_ms_per_s,
        });
    }
    Ok(results)
}

/// `count` more flows (from flow number `from`), two datagrams each.
fn generate(lab: &Lab, from: u64, count: u64) -> Result<()> {
    // Flows are numbered across calls: each call starts at its own source
    // address (WALK_PORTS flows per address).
    let first = u32::from(Ipv4Addr::new(10, 77, 0, 100)) + (from / spoof::WALK_PORTS) as u32;
    let flood = Flood::udp_flows(Ipv4Addr::from(first), SocketAddrV4::new(VIP4, PORT), count);
    spoof::send(&lab.client, flood)?;
    Ok(())
}

/// utime + stime of process `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // utime and stime: fields 14 and 15 of stat, the 12th and 13th after ')'.
    Ok(field(11) + field(12))
}
