//! pnlb: a Layer-4 load balancer with an XDP data plane.

mod api;
mod ctl;
mod dashboard;
mod decap_cmd;
mod doctor;
mod ha;
mod health;
mod log;
mod metrics;
mod run;
mod secret;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "pnlb",
    version,
    about = "Layer-4 load balancer with an XDP data plane"
)]
struct Cli {
    /// Log lines as text, or as JSON objects (one per line) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = log::LogFormat::Text)]
    log_format: log::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer: validate the config, program the data plane,
    /// attach XDP, forward until SIGINT/SIGTERM; SIGHUP reloads the config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file without touching the system.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Real-server side of method "tun": strip IPIP / IP6IP6 / GUE addressed
    /// to this host (for kernels without the ipip/fou modules).
    Decap(decap_cmd::DecapArgs),
    /// Check this host's prerequisites (as a real server for dr or tun) and
    /// print the command that fixes each problem; exits 1 when one is missing.
    Doctor(doctor::DoctorArgs),
    /// Talk to a running `pnlb run` through its API (list, add, edit,
    /// remove, drain, reload, zero), or import an ipvsadm/keepalived setup.
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init(cli.log_format);
    let result = match cli.command {
        Command::Doctor(args) => match doctor::doctor(args) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        Command::Run { config } => run::run(&config),
        Command::Check { config } => run::check(&config),
        Command::Ctl(args) => ctl::ctl(args),
        Command::Decap(args) => decap_cmd::decap(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pnlb: error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
