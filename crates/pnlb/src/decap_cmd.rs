//! `pnlb decap`: the real-server side of tun on kernels without the ipip,
//! ip6_tunnel or fou modules. Attaches the decap XDP program to one
//! interface, keeps its list of this host's addresses current, and
//! detaches (printing what it did) on SIGINT/SIGTERM.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use pnlb_core::config::XdpMode;
use pnlb_core::prefix::Prefix;
use pnlb_dataplane::decap::{Decap, DecapOptions, DEFAULT_GUE_PORT};
use pnlb_dataplane::rtnetlink::addresses::local_addresses;

use crate::log::{info, warning};

/// Addresses come and go (a VIP added to lo, DHCP): re-read this often.
const ADDRESSES_EVERY: Duration = Duration::from_secs(2);

#[derive(Args)]
pub struct DecapArgs {
    /// The interface tunnel packets arrive on.
    #[arg(long, short)]
    interface: String,
    /// UDP port of GUE packets (the services' gue_port).
    #[arg(long, default_value_t = DEFAULT_GUE_PORT)]
    gue_port: u16,
    /// XDP attach mode: native (driver) or generic (works everywhere).
    #[arg(long, default_value = "native", value_parser = ["native", "generic"])]
    xdp_mode: String,
    /// Unwrap tunnels only from these sources: the load balancers'
    /// addresses or prefixes (e.g. 10.77.1.0/24); repeat or separate with
    /// commas. Without it, tunnels from anyone are unwrapped.
    #[arg(long, value_delimiter = ',')]
    from: Vec<Prefix>,
    /// Inner destinations to accept besides this host's own addresses
    /// (where a VIP is not on an interface here).
    #[arg(long, value_delimiter = ',')]
    vip: Vec<IpAddr>,
}

pub fn decap(args: DecapArgs) -> Result<()> {
    pnlb_dataplane::loader::ifindex_of(&args.interface)?;
    if args.gue_port == 0 {
        anyhow::bail!("--gue-port 0 is not a UDP port; use the services' gue_port (default {DEFAULT_GUE_PORT})");
    }
    let mode = if args.xdp_mode == "generic" {
        XdpMode::Generic
    } else {
        XdpMode::Native
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }

    let mut program = Decap::load(&DecapOptions {
        gue_port: args.gue_port,
        from: args.from.clone(),
        vips: args.vip.clone(),
    })?;
    let addresses = local_addresses().context("reading this host's addresses")?;
    program.set_local_addresses(&addresses)?;
    let attachment = program.attach(&args.interface, mode)?;
    let sources = if args.from.is_empty() {
        "any source".to_string()
    } else {
        args.from
            .iter()
            .map(Prefix::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    info!(
        "decapsulating IPIP, IP6IP6 and GUE (udp/{}) addressed to this host on {} ({} XDP), from {sources}, holding packets for this host's {} address(es) or {} --vip",
        args.gue_port,
        args.interface,
        args.xdp_mode,
        addresses.len(),
        args.vip.len()
    );
    if args.from.is_empty() {
        warning!(
            "tunnels from any source are unwrapped: a way around uRPF and interface ACLs; give --from with the load balancers' addresses (docs/security.md)"
        );
    }

    let mut last_read = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last_read.elapsed() < ADDRESSES_EVERY {
            continue;
        }
        last_read = Instant::now();
        match local_addresses() {
            Ok(addresses) => {
                if program.set_local_addresses(&addresses)? {
                    info!("local addresses changed: {} now", addresses.len());
                }
            }
            Err(err) => warning!("cannot re-read local addresses: {err}"),
        }
    }

    drop(attachment);
    let c = program.counters()?;
    info!(
        "detached from {}: decapsulated {} IPIP/IP6IP6 and {} GUE; passed {} other, {} tunnel packets for other hosts, {} from outside --from, {} holding a packet not for this host, {} malformed; {} failed",
        args.interface,
        c.ipip,
        c.gue,
        c.passed_other,
        c.passed_not_local,
        c.passed_foreign,
        c.passed_not_ours,
        c.passed_malformed,
        c.failed
    );
    Ok(())
}
