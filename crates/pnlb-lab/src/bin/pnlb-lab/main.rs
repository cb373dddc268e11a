//! pnlb-lab: the network-namespace lab for people — build one and leave it
//! running, watch the demo, or benchmark pnlb against the kernel and HAProxy.
//! The test bed lives here, apart from the `pnlb` binary that operators
//! install; it runs the `pnlb` binary built next to it.

mod bench;
mod commands;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pnlb-lab",
    version,
    about = "The pnlb lab: network namespaces with a client, a router, load balancers and real servers"
)]
struct Cli {
    /// The pnlb binary the lab runs (default: the one next to pnlb-lab).
    #[arg(long, global = true)]
    pnlb: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the lab and leave it running (client, router, switch, LB, N nginx servers).
    Up {
        #[arg(long, default_value_t = 3)]
        servers: usize,
        /// Add a second LB for a failover pair (the router sends the VIPs
        /// to the floating 10.77.1.254 / fd77:1::254).
        #[arg(long)]
        ha: bool,
        /// N LB nodes behind ECMP instead of one LB: the router runs BIRD
        /// and spreads each VIP over the nodes that announce it; each node
        /// runs BIRD, and pnlb with the [bgp] config written for it.
        #[arg(long, default_value_t = 0, conflicts_with = "ha")]
        ecmp: usize,
    },
    /// Remove the lab `pnlb-lab up` built: its processes, then its namespaces.
    Down,
    /// The demo: one VIP balancing real HTTP requests over 3 nginx servers,
    /// through each forwarding method.
    Demo,
    /// Benchmark pnlb against the kernel (nftables NAT) and HAProxy in the lab.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up { servers, ha, ecmp } => commands::up(servers, ha, ecmp),
        Command::Down => commands::down(),
        Command::Demo => pnlb_binary(cli.pnlb).and_then(|pnlb| demo::demo(&pnlb)),
        Command::Bench(args) => pnlb_binary(cli.pnlb).and_then(|pnlb| bench::bench(args, &pnlb)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pnlb-lab: error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// The `pnlb` binary to run: given, or built next to this one.
fn pnlb_binary(given: Option<PathBuf>) -> Result<String> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()
            .context("locating pnlb-lab")?
            .with_file_name("pnlb"),
    };
    if !path.is_file() {
        anyhow::bail!(
            "{} not found: build it (`cargo build --bin pnlb`) or name it with --pnlb",
            path.display()
        );
    }
    Ok(path.display().to_string())
}
