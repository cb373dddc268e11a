//! What is measured: the same lab, the same client and servers, and in
//! between one of these at a time on the LB host.

use std::net::IpAddr;

use anyhow::{Context, Result};
use pnlb_lab::{netns, Gateway, Lab, LabProcess, VIP4};

use super::flood::FLOOD_PORT;

pub const IPERF_PORT: u16 = 5201;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// Client -> router -> one server, no load balancer: the floor.
    Direct,
    /// nftables DNAT with `numgen inc mod 3` (kube-proxy's way): the kernel
    /// baseline, standing in for IPVS, which this kernel lacks.
    Nftables,
    /// The same with a pass-everything XDP program on the LB's veth: on a
    /// veth any native XDP program makes the kernel copy each packet into
    /// an XDP buffer and receive it by NAPI, which the kernel path then
    /// pays too. The baseline for what is pnlb's own cost.
    NftablesXdpPass,
    /// HAProxy 2.6, `mode tcp`, round-robin.
    Haproxy,
    /// `pnlb run` with this method.
    Pnlb(&'static str),
    /// A minimal XDP forwarder (MAC rewrite, XDP_TX, one server): the ceiling.
    Ceiling,
}

impl Setup {
    pub fn name(self) -> String {
        match self {
            Setup::Direct => "direct (floor)".into(),
            Setup::Nftables => "kernel nftables".into(),
            Setup::NftablesXdpPass => "kernel + XDP_PASS".into(),
            Setup::Haproxy => "haproxy tcp".into(),
            Setup::Pnlb(method) => format!("pnlb {method}"),
            Setup::Ceiling => "xdp_tx ceiling".into(),
        }
    }

    /// Whether it forwards UDP (HAProxy in mode tcp does not), and the XDP
    /// program to account for: Some(None) = UDP but no XDP on the path.
    pub fn small_udp_program(self) -> Option<Option<&'static str>> {
        match self {
            Setup::Haproxy => None,
            Setup::Pnlb(_) => Some(Some("pnlb_xdp")),
            Setup::Ceiling => Some(Some("pnlb_xdp_ceiling")),
            Setup::NftablesXdpPass => Some(Some("pnlb_xdp_pass")),
            Setup::Direct | Setup::Nftables => Some(None),
        }
    }

    /// Where the client sends its requests.
    pub fn target(self, lab: &Lab) -> IpAddr {
        match self {
            Setup::Direct => IpAddr::V4(lab.servers[0].ipv4),
            _ => IpAddr::V4(VIP4),
        }
    }

    fn servers_route_via(self) -> Gateway {
        match self {
            Setup::Nftables | Setup::NftablesXdpPass | Setup::Pnlb("nat") => Gateway::Lb,
            _ => Gateway::Router,
        }
    }

    /// Prepares the LB host; the returned guard undoes it. `start` counts
    /// the bench's starts (snat takes SNAT addresses of its own by it).
    pub fn start(self, lab: &Lab, pnlb_binary: &str, start: usize) -> Result<Running> {
        lab.route_servers_via(self.servers_route_via())?;
        let mut running = Running {
            lb: lab.lb.clone(),
            process: None,
            undo: Vec::new(),
            keeper: None,
            decaps: Vec::new(),
        };
        match self {
            Setup::Direct => {}
            Setup::Nftables | Setup::NftablesXdpPass => {
                let rules = lab.dir.join("bench.nft");
                std::fs::write(&rules, nft_rules(lab)).context("writing nft rules")?;
                netns::exec(&lab.lb, "nft", &["-f", &rules.display().to_string()])?;
                running.undo.push(vec![
                    "nft".into(),
                    "delete".into(),
                    "table".into(),
                    "ip".into(),
                    "pnlb_bench".into(),
                ]);
                if self == Setup::NftablesXdpPass {
                    running.keeper = Some(hold_in_lb(lab, "XDP_PASS", || {
                        let pass =
                            pnlb_dataplane::xdp_pass::XdpPass::load().map_err(|e| e.to_string())?;
                        let attachment = pass
                            .attach(pnlb_lab::LB_INTERFACE)
                            .map_err(|e| e.to_string())?;
                        Ok(Box::new((pass, attachment)) as Held)
                    })?);
                }
            }
            Setup::Haproxy => {
                // HAProxy terminates connections, so the VIP must be local.
                netns::ip(
                    &lab.lb,
                    &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"],
                )?;
                running.undo.push(
                    ["ip", "addr", "del", &format!("{VIP4}/32"), "dev", "lo"]
                        .map(String::from)
                        .to_vec(),
                );
                let config = lab.dir.join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(lab))
                    .context("writing the haproxy config")?;
                let mut process = LabProcess::spawn(
                    &lab.lb,
                    "haproxy",
                    "haproxy",
                    &["-db", "-f", &config.display().to_string()],
                )?;
                // It prints nothing when fine: wait until it listens.
                pnlb_lab::wait_for_port(&lab.lb, IpAddr::V4(VIP4), 80).map_err(|err| {
                    anyhow::anyhow!("haproxy did not start: {err}; {:?}", process.output())
                })?;
                let _ = &mut process;
                running.process = Some(process);
            }
            Setup::Ceiling => running.keeper = Some(start_ceiling(lab)?),
            Setup::Pnlb(method) => {
                let snat_addresses = snat_addresses(start);
                if method == "snat" {
                    for address in &snat_addresses {
                        let with_prefix = format!("{address}/24");
                        netns::ip(&lab.lb, &["addr", "add", &with_prefix, "dev", "eth0"])?;
                        running.undo.push(
                            ["ip", "addr", "del", &with_prefix, "dev", "eth0"]
                                .map(String::from)
                                .to_vec(),
                        );
                    }
                }
                if method == "tun" {
                    for i in 0..lab.servers.len() {
                        running.decaps.push(lab.start_decap(pnlb_binary, i)?);
                    }
                }
                let config = lab.dir.join(format!("bench-{method}.toml"));
                std::fs::write(&config, pnlb_config(lab, method, &snat_addresses))
                    .context("writing the pnlb config")?;
                running.process = Some(lab.start_pnlb(pnlb_binary, &config)?);
            }
        }
        Ok(running)
    }
}

/// Undoes a setup when dropped.
pub struct Running {
    lb: String,
    process: Option<LabProcess>,
    undo: Vec<Vec<String>>,
    /// The thread holding an XDP program (the ceiling, XDP_PASS) attached
    /// in the LB namespace: told to stop, it detaches.
    keeper: Option<(std::sync::mpsc::Sender<()>, Keeper)>,
    /// tun: `pnlb decap` on every server.
    decaps: Vec<LabProcess>,
}

/// Whatever a keeper holds attached (a program and its attachment).
type Held = Box<dyn std::any::Any>;

/// Loads and attaches the ceiling on the LB's interface.
fn start_ceiling(lab: &Lab) -> Result<(std::sync::mpsc::Sender<()>, Keeper)> {
    use pnlb_dataplane::nexthop::{KernelResolver, Resolver};
    let server = lab.servers[0].ipv4;
    hold_in_lb(lab, "xdp_tx ceiling", move || {
        let hop = KernelResolver::default()
            .resolve(&[IpAddr::V4(server)])
            .remove(&IpAddr::V4(server))
            .unwrap_or_else(|| Err("not resolved".into()))?;
        let ceiling = pnlb_dataplane::xdp_ceiling::XdpCeiling::load().map_err(|e| e.to_string())?;
        ceiling
            .configure(VIP4, hop.mac, hop.src_mac)
            .map_err(|e| e.to_string())?;
        let attachment = ceiling
            .attach(pnlb_lab::LB_INTERFACE)
            .map_err(|e| e.to_string())?;
        Ok(Box::new((ceiling, attachment)) as Held)
    })
}

/// Runs `attach` on a thread inside the LB namespace, which holds what it
/// attached until told to stop.
fn hold_in_lb(
    lab: &Lab,
    what: &'static str,
    attach: impl FnOnce() -> Result<Held, String> + Send + 'static,
) -> Result<(std::sync::mpsc::Sender<()>, Keeper)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready, started) = std::sync::mpsc::channel::<Result<(), String>>();
    let keeper = netns::spawn_in_netns(&lab.lb, move || match attach() {
        Err(err) => {
            let _ = ready.send(Err(err));
        }
        Ok(held) => {
            let _ = ready.send(Ok(()));
            let _ = stopped.recv();
            drop(held);
        }
    })?;
    started
        .recv()
        .context("the keeper thread ended")?
        .map_err(|err| anyhow::anyhow!("{what}: {err}"))?;
    Ok((stop, keeper))
}

type Keeper = std::thread::JoinHandle<Result<(), pnlb_lab::LabError>>;

impl Running {
    /// The map of per-packet run times of the running pnlb, if its build
    /// keeps them (the `run-times` feature).
    pub fn run_times_map(&self) -> Option<u32> {
        self.process.as_ref()?;
        pnlb_dataplane::run_times::RunTimes::newest_map()
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the setup's own process, if it
    /// has one (`pnlb run`, haproxy): the data plane goes on without its
    /// daemon, which tells the daemon's share of a latency figure.
    pub fn pause(&self, paused: bool) {
        if let Some(process) = &self.process {
            process.signal(if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A stopped process ignores SIGTERM until it is resumed.
        self.pause(false);
        if let Some((stop, keeper)) = self.keeper.take() {
            let _ = stop.send(());
            let _ = keeper.join();
        }
        if let Some(process) = self.process.take() {
            process.stop(std::time::Duration::from_secs(5));
        }
        for decap in self.decaps.drain(..) {
            decap.stop(std::time::Duration::from_secs(5));
        }
        for command in &self.undo {
            let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
            let _ = netns::exec(&self.lb, &command[0], &args);
        }
    }
}

fn server_map(lab: &Lab) -> String {
    lab.servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{i} : {}", s.ipv4))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nft_rules(lab: &Lab) -> String {
    let n = lab.servers.len();
    let map = server_map(lab);
    format!(
        "table ip pnlb_bench {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {VIP4} tcp dport 80 dnat to numgen inc mod {n} map {{ {map} }}
        ip daddr {VIP4} tcp dport {IPERF_PORT} dnat to jhash ip saddr mod {n} map {{ {map} }}
        ip daddr {VIP4} udp dport {FLOOD_PORT} dnat to numgen inc mod {n} map {{ {map} }}
    }}
}}
"
    )
}

fn haproxy_config(lab: &Lab) -> String {
    let servers = |port: u16| {
        lab.servers
            .iter()
            .map(|s| format!("    server {} {}:{port}\n", s.name, s.ipv4))
            .collect::<String>()
    };
    format!(
        "global
    maxconn 8000
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
frontend web
    bind {VIP4}:80
    default_backend web
backend web
    balance roundrobin
{}frontend iperf
    bind {VIP4}:{IPERF_PORT}
    default_backend iperf
backend iperf
    balance source
{}",
        servers(80),
        servers(IPERF_PORT)
    )
}

/// HTTP on :80 over all servers (Maglev); iperf3 on :5201 hashed by source,
/// because its control and data connections must reach the same server.
fn pnlb_config(lab: &Lab, method: &str, snat_addresses: &[String]) -> String {
    let everyone: Vec<usize> = (0..lab.servers.len()).collect();
    // The services of one more config (its [daemon] header dropped), renamed.
    let more = |port: u16, name: &str, swap: (&str, &str)| -> String {
        lab.config(method, port, &everyone)
            .replace("name = \"web\"", &format!("name = \"{name}\""))
            .replace("name = \"web6\"", &format!("name = \"{name}6\""))
            .replace(swap.0, swap.1)
            .split_once("\n\n")
            .map_or(String::new(), |(_, services)| services.to_string())
    };
    let web = lab.config(method, 80, &everyone);
    let iperf = more(
        IPERF_PORT,
        "iperf",
        ("scheduler = \"maglev\"", "scheduler = \"sh\""),
    );
    let flood = more(
        FLOOD_PORT,
        "flood",
        ("protocol = \"tcp\"", "protocol = \"udp\""),
    );
    // Thousands of short connections a second, each (address, port,
    // backend) resting 120 s after use: give snat the whole port range
    // (the LB itself opens no connections in the lab) on five addresses,
    // about 2,700 new connections a second per backend (docs/conntrack.md).
    let quoted: Vec<String> = snat_addresses.iter().map(|a| format!("\"{a}\"")).collect();
    // The runs open about 270,000 snat connections within two minutes, each
    // port resting 120 s: the rest map (conn_table_size keys) must hold them.
    let web = if method == "snat" {
        web.replace("[daemon]\n", "[daemon]\nconn_table_size = 1048576\n")
    } else {
        web
    };
    format!("{web}\n{iperf}\n{flood}")
        .replace(
            "snat_addresses = [",
            "snat_ports = \"1024-65535\"\nsnat_addresses = [",
        )
        .replace(
            &format!("snat_addresses = [\"{}\"]", pnlb_lab::LB4),
            &format!("snat_addresses = [{}]", quoted.join(", ")),
        )
}

/// Five SNAT addresses (on the LB's LAN, inside the lab: 10.77.1.100 to
/// .249) that no start of the last 30 used. A fresh daemon knows none of
/// the ports that rest after use, and draws the same ports for the same
/// client ports as the last one did: on the same addresses the servers
/// would still hold them in TIME_WAIT, refuse the SYNs (PAWS) and the
/// clients retry after a timeout (docs/benchmarks.md), so snat's figures
/// would measure its restarts. (Keeping rests across a restart is the
/// pinned data plane's job; the bench starts each setup afresh.)
fn snat_addresses(start: usize) -> Vec<String> {
    let first = 100 + 5 * (start % 30);
    (first..first + 5)
        .map(|host| format!("10.77.1.{host}"))
        .collect()
}
