//! The command line: one definition that parses arguments and from which the
//! man pages and shell completions are generated (`pnlb completions`,
//! `pnlb manpages`), so they cannot drift apart.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::{ctl, decap_cmd, doctor, log};

#[derive(Parser)]
#[command(
    name = "pnlb",
    version,
    about = "Layer-4 load balancer with an XDP data plane",
    after_help = "Config reference: /usr/share/doc/pnlb/config.md or docs/config.md in the source."
)]
pub struct Cli {
    /// Log lines as text, or as JSON objects (one per line) for log shippers.
    #[arg(long, global = true, value_enum, default_value_t = log::LogFormat::Text)]
    pub log_format: log::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the load balancer: validate the config, program the data plane,
    /// attach XDP, forward until SIGINT/SIGTERM; SIGHUP reloads the config.
    Run {
        /// The config file (TOML), e.g. /etc/pnlb/pnlb.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Remove the data plane a stopped `pnlb run` left forwarding in this
    /// network namespace: detach XDP and free its maps (flows are lost).
    Down {
        /// The config whose daemon.pin_dir to look under (default
        /// /sys/fs/bpf/pnlb).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The bpffs directory to look under, instead of a config's.
        #[arg(long, conflicts_with = "config")]
        pin_dir: Option<PathBuf>,
    },
    /// Check a config file without touching the system.
    Check {
        /// The config file (TOML) to validate.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Real-server side of method "tun": strip IPIP / IP6IP6 / GUE addressed
    /// to this host (for kernels without the ipip/fou modules).
    Decap(decap_cmd::DecapArgs),
    /// Check this host's prerequisites, as the load balancer (--lb) or as a
    /// real server for dr or tun (--real-server), and print the command that
    /// fixes each problem; exits 1 when one is missing.
    Doctor(doctor::DoctorArgs),
    /// Talk to a running `pnlb run` through its API (list, add, edit,
    /// remove, drain, reload, zero), or import an ipvsadm/keepalived setup.
    Ctl(ctl::CtlArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write the man pages (pnlb.8 and one per subcommand) into a directory.
    #[command(hide = true)]
    Manpages { directory: PathBuf },
}

pub fn completions(shell: Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "pnlb", &mut std::io::stdout());
}

/// pnlb.8 and pnlb-SUBCOMMAND.8 for every visible subcommand (section 8:
/// system administration, as for ipvsadm and keepalived).
pub fn manpages(directory: &Path) -> Result<()> {
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let command = Cli::command();
    write_page(directory, "pnlb", command.clone())?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("pnlb-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("pnlb {}", sub.get_name()));
        write_page(directory, &name, page)?;
    }
    Ok(())
}

fn write_page(directory: &Path, name: &str, command: clap::Command) -> Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .section("8")
        .manual("pnlb")
        .render(&mut page)
        .with_context(|| format!("rendering {name}.8"))?;
    let path = directory.join(format!("{name}.8"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}
