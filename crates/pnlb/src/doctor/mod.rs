//! `pnlb doctor`: checks a host's setup and, for each problem, prints why it
//! matters and the command that fixes it. A setup that silently does not
//! forward is the most common complaint about Katran and IPVS; every check
//! here is one of its causes.
//!
//! - `--lb`: the load balancer host (native XDP, offloads, MTU, forwarding,
//!   privileges, bpffs);
//! - `--real-server`: a real server for dr or tun (VIP on lo, ARP, rp_filter,
//!   decapsulation, MSS).

mod bgp;
mod lb;
mod real_server;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::{ArgGroup, Args, ValueEnum};
use serde::Deserialize;

#[derive(Args)]
#[command(group(ArgGroup::new("role").required(true).args(["lb", "real_server"])))]
pub struct DoctorArgs {
    /// Check this host as the load balancer that runs --config.
    #[arg(long)]
    lb: bool,
    /// The config the load balancer runs (with --lb).
    #[arg(long, default_value = "/etc/pnlb/pnlb.toml")]
    config: PathBuf,
    /// Check this host as a real server (with --vip and --method).
    #[arg(long, requires = "vip")]
    real_server: bool,
    /// The virtual IP this server answers for (with --real-server).
    #[arg(long)]
    vip: Option<IpAddr>,
    /// How the load balancer forwards to this server (with --real-server).
    #[arg(long, value_enum, default_value_t = DoctorMethod::Dr)]
    method: DoctorMethod,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DoctorMethod {
    Dr,
    Tun,
}

pub fn doctor(args: DoctorArgs) -> Result<ExitCode> {
    let findings = match (args.lb, args.vip) {
        (true, _) => lb::check(&args.config)?,
        (false, Some(vip)) => real_server::check(vip, args.method)?,
        (false, None) => {
            bail!("say what to check: `pnlb doctor --lb` or `pnlb doctor --real-server --vip ADDR`")
        }
    };
    Ok(report(&findings))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Finding {
    level: Level,
    what: String,
    fix: Option<String>,
}

impl Finding {
    fn ok(what: String) -> Self {
        Self {
            level: Level::Ok,
            what,
            fix: None,
        }
    }

    fn problem(level: Level, what: String, fix: String) -> Self {
        Self {
            level,
            what,
            fix: Some(fix),
        }
    }
}

/// Prints every finding with its fix; exit 1 when one is a failure.
fn report(findings: &[Finding]) -> ExitCode {
    for finding in findings {
        let tag = match finding.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("  {tag}  {}", finding.what);
        if let Some(fix) = &finding.fix {
            println!("        fix: {fix}");
        }
    }
    let count = |level| findings.iter().filter(|f| f.level == level).count();
    let (failed, warned) = (count(Level::Fail), count(Level::Warn));
    if failed == 0 {
        println!("ready: {warned} warning(s)");
        ExitCode::SUCCESS
    } else {
        println!("not ready: {failed} problem(s), {warned} warning(s)");
        ExitCode::from(1)
    }
}

/// One interface as `ip -j -d addr show` describes it.
#[derive(Deserialize)]
struct Link {
    ifname: String,
    ifindex: Option<u32>,
    #[serde(default)]
    flags: Vec<String>,
    mtu: Option<u32>,
    link_type: Option<String>,
    xdp: Option<LinkXdp>,
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

impl Link {
    fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    fn xdp_program(&self) -> Option<&str> {
        self.xdp.as_ref()?.prog.as_ref()?.name.as_deref()
    }

    fn xdp_program_id(&self) -> Option<u32> {
        self.xdp.as_ref()?.prog.as_ref()?.id
    }

    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }
}

#[derive(Deserialize)]
struct LinkXdp {
    prog: Option<XdpProg>,
}

#[derive(Deserialize)]
struct XdpProg {
    name: Option<String>,
    id: Option<u32>,
}

#[derive(Deserialize)]
struct LinkInfo {
    info_kind: Option<String>,
}

#[derive(Deserialize)]
struct AddrInfo {
    local: Option<String>,
}

fn links() -> Result<Vec<Link>> {
    ip_json(&["-d", "addr", "show"])
}

fn ip_json<T: for<'de> Deserialize<'de>>(args: &[&str]) -> Result<T> {
    let output = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("running `ip` (install iproute2)")?;
    if !output.status.success() {
        bail!(
            "`ip -j {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("unexpected output from `ip -j {}`", args.join(" ")))
}

/// A numeric sysctl under /proc/sys/net, by its dotted name after "net.".
fn net_sysctl(name: &str) -> Result<i64> {
    let path = format!("/proc/sys/net/{}", name.replace('.', "/"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading net.{name}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("net.{name} is {text:?}"))
}

/// The value the kernel uses on `dev` for settings it takes the larger of
/// (all, dev) for: arp_ignore, arp_announce, rp_filter.
fn effective_ipv4(dev: &str, key: &str) -> Result<i64> {
    Ok(net_sysctl(&format!("ipv4.conf.all.{key}"))?
        .max(net_sysctl(&format!("ipv4.conf.{dev}.{key}"))?))
}
