//! pnlb: a Layer-4 load balancer with an XDP data plane.

mod api;
mod bgp;
mod cli;
mod ctl;
mod dashboard;
mod decap_cmd;
mod doctor;
#[cfg(test)]
mod fuzz;
mod ha;
mod health;
mod log;
mod metrics;
mod run;
mod secret;
mod summary;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

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
        Command::Down { config, pin_dir } => run::down(config.as_deref(), pin_dir.as_deref()),
        Command::Ctl(args) => ctl::ctl(args),
        Command::Decap(args) => decap_cmd::decap(args),
        Command::Completions { shell } => {
            cli::completions(shell);
            Ok(())
        }
        Command::Manpages { directory } => cli::manpages(&directory),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pnlb: error: {}", format!("{err:#}").replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
