//! pnlb-lab: a network-namespace testbed for tests, the demo and benchmarks.
//!
//! ```text
//!  client ---- router ==== switch (bridge) ==== lb
//!  10.77.0.2   .0.1 | .1.1        |     |       10.77.1.2
//!  fd77::2          | fd77:1::1   |     +------ server s1..sN
//!                                 |             10.77.1.11.. fd77:1::11..
//! ```
//! The router sends the VIP prefixes (10.77.100.0/24, fd77:100::/64) to the
//! LB; servers hold the VIPs on `lo` and route replies straight back
//! through the router (direct server return). Every host is a namespace
//! named `<prefix>-<role>`; all addresses live inside them. Dropping a
//! [`Lab`] (also while panicking) ends its processes by PID and deletes its
//! namespaces. Nothing is added to the root namespace.

pub mod bulk;
pub mod connect;
pub mod echo;
pub mod ecmp;
pub mod frames;
pub mod netns;
pub mod nginx;
pub mod process;
pub mod spoof;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use bulk::BULK_PORT;
pub use echo::{EchoServer, ECHO_PORT, MIRROR_PORT};
pub use ecmp::EcmpNode;
pub use netns::{in_netns, spawn_in_netns};
pub use process::LabProcess;

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 100, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0x100, 0, 0, 0, 0, 0, 1);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 2);
/// The LB side of the lab (the LBs, their floating address): where `pnlb
/// decap` on the servers accepts tunnels from (`--from`).
pub const DECAP_FROM: &str = "10.77.1.0/24,fd77:1::/64";
/// The interface of the LB host that faces the LAN.
pub const LB_INTERFACE: &str = "eth0";
/// The second LB of a failover pair (`LabSpec::ha`).
pub const LB2_4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
pub const LB2_6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 3);
/// The address that moves with mastership; the router sends the VIPs to it.
pub const FLOATING4: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 254);
pub const FLOATING6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x254);

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab: `{command}` failed: {reason}")]
    Command { command: String, reason: String },
    #[error("lab: {name}: {reason}")]
    Process { name: String, reason: String },
    #[error("lab: {0}")]
    Setup(String),
}

/// A real server host.
pub struct Server {
    pub name: String,
    pub ns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// Where the real servers send traffic for other networks (their replies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// The router: dr (replies go straight to the client) and snat.
    Router,
    /// The load balancer: nat, whose replies must be translated back.
    Lb,
    /// A failover pair's floating address (nat behind a pair).
    Floating,
}

impl Gateway {
    /// Its IPv4 and IPv6 addresses on the LAN.
    pub fn addresses(self) -> (&'static str, &'static str) {
        match self {
            Gateway::Router => ("10.77.1.1", "fd77:1::1"),
            Gateway::Lb => ("10.77.1.2", "fd77:1::2"),
            Gateway::Floating => ("10.77.1.254", "fd77:1::254"),
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub servers: usize,
    pub servers_route_via: Gateway,
    /// A smaller MTU on the router's path to the client: the router then
    /// answers bigger packets with ICMP fragmentation-needed / packet too
    /// big, so path-MTU discovery through the LB gets exercised.
    pub client_path_mtu: Option<u16>,
    /// The MTU of the servers' LAN (router, LB, servers, switch), when it
    /// should be smaller than the client's 1500: tun packets then need
    /// the LB's too-big answers to fit.
    pub lan_mtu: Option<u16>,
    /// A second LB (namespace `-lb2`, 10.77.1.3 / fd77:1::3) for a failover
    /// pair; the router then sends the VIPs to the floating address
    /// (10.77.1.254 / fd77:1::254) that the active LB holds.
    pub ha: bool,
    /// N LB nodes behind ECMP (0: none): namespaces `-lb`, `-lb2` ...
    /// `-lbN` (10.77.1.2 ...), the router running BIRD and spreading each
    /// VIP over the nodes that announce it (ecmp.rs).
    pub ecmp: usize,
    /// Start nginx on every server.
    pub nginx: bool,
    /// Start the Rust echo server on every server.
    pub echo: bool,
    /// Namespace prefix; None = unique per process and instance.
    pub prefix: Option<String>,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            servers: 3,
            servers_route_via: Gateway::Router,
            client_path_mtu: None,
            lan_mtu: None,
            ha: false,
            ecmp: 0,
            nginx: true,
            echo: false,
            prefix: None,
        }
    }
}

impl LabSpec {
    /// The Rust echo servers instead of nginx (long-lived flows, UDP).
    pub fn echo() -> Self {
        Self {
            nginx: false,
            echo: true,
            ..Self::default()
        }
    }

    /// [`Self::echo`] with the servers routed as nat needs: via the LB.
    pub fn echo_via_lb() -> Self {
        Self {
            servers_route_via: Gateway::Lb,
            ..Self::echo()
        }
    }
}

pub struct Lab {
    pub prefix: String,
    pub client: String,
    pub router: String,
    pub switch: String,
    pub lb: String,
    /// The second LB of a failover pair, when `LabSpec::ha` asked for one.
    pub lb2: Option<String>,
    /// The LB nodes behind ECMP (`LabSpec::ecmp`), node 1 being `lb`.
    pub ecmp_nodes: Vec<EcmpNode>,
    /// The router's BIRD, in an ECMP lab.
    router_bird: Option<LabProcess>,
    pub servers: Vec<Server>,
    pub dir: PathBuf,
    /// Per server (by index): its nginx and its echo server, when running.
    nginx: Vec<Option<LabProcess>>,
    echo: Vec<Option<EchoServer>>,
    namespaces: Vec<String>,
    /// A bpffs of the lab's own, for daemons whose data plane outlives them.
    bpffs: Option<PathBuf>,
    /// Tear down on drop (false for `pnlb-lab up`, which leaves it running).
    owned: bool,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the lab; on any failure, whatever was built is removed again.
    pub fn up(spec: &LabSpec) -> Result<Self, LabError> {
        if spec.servers == 0 || spec.servers > 50 {
            return Err(LabError::Setup(format!(
                "{} servers: use 1 to 50",
                spec.servers
            )));
        }
        if spec.ecmp > ecmp::MAX_NODES || (spec.ecmp > 0 && spec.ha) {
            return Err(LabError::Setup(format!(
                "{} ECMP nodes{}: use 1 to {} nodes, without a failover pair",
                spec.ecmp,
                if spec.ha { " with --ha" } else { "" },
                ecmp::MAX_NODES
            )));
        }
        let prefix = spec.prefix.clone().unwrap_or_else(|| {
            format!(
                "pnlb{}x{}",
                std::process::id(),
                INSTANCE.fetch_add(1, Ordering::Relaxed)
            )
        });
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|err| LabError::Setup(format!("create {}: {err}", dir.display())))?;
        let ns = |role: &str| format!("{prefix}-{role}");
        let mut lab = Lab {
            client: ns("client"),
            router: ns("router"),
            switch: ns("switch"),
            lb: ns("lb"),
            lb2: spec.ha.then(|| ns("lb2")),
            ecmp_nodes: (1..=spec.ecmp).map(|i| EcmpNode::new(&prefix, i)).collect(),
            router_bird: None,
            servers: (1..=spec.servers)
                .map(|i| Server {
                    name: format!("s{i}"),
                    ns: ns(&format!("s{i}")),
                    ipv4: Ipv4Addr::new(10, 77, 1, 10 + i as u8),
                    ipv6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x10 + i as u16),
                })
                .collect(),
            prefix,
            dir,
            nginx: Vec::new(),
            echo: Vec::new(),
            namespaces: Vec::new(),
            bpffs: None,
            owned: true,
        };
        lab.build(spec)?;
        Ok(lab)
    }

    fn build(&mut self, spec: &LabSpec) -> Result<(), LabError> {
        let hosts: Vec<String> = [&self.client, &self.router, &self.switch, &self.lb]
            .into_iter()
            .cloned()
            .chain(self.lb2.clone())
            .chain(self.other_ecmp_nodes().map(|node| node.ns.clone()))
            .chain(self.servers.iter().map(|s| s.ns.clone()))
            .collect();
        for host in &hosts {
            netns::add(host)?;
            self.namespaces.push(host.clone());
        }

        // client <-> router: a point-to-point link.
        self.link(&self.client.clone(), "eth0", &self.router.clone(), "eth0")?;
        self.address(&self.client.clone(), "eth0", "10.77.0.2/24", "fd77::2/64")?;
        self.address(&self.router.clone(), "eth0", "10.77.0.1/24", "fd77::1/64")?;
        netns::ip(
            &self.client,
            &["route", "add", "default", "via", "10.77.0.1"],
        )?;
        // A client opening thousands of connections a second holds most of
        // its ports in TIME_WAIT: let it reuse them and use all of them, or
        // connection rates collapse to a few hundred a second (measured).
        netns::exec(
            &self.client,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.tcp_tw_reuse=1",
                "net.ipv4.ip_local_port_range=1024 65535",
            ],
        )?;
        netns::ip(
            &self.client,
            &["-6", "route", "add", "default", "via", "fd77::1"],
        )?;

        // The LAN: a bridge in the switch namespace.
        let switch = self.switch.clone();
        netns::ip(&switch, &["link", "add", "br0", "type", "bridge"])?;
        netns::run(
            "ip",
            &[
                "netns",
                "exec",
                &switch,
                "sh",
                "-c",
                "echo 0 > /sys/class/net/br0/bridge/multicast_snooping",
            ],
        )?;
        // A switch does not run the firewall. Where br_netfilter is loaded,
        // bridged frames would otherwise pass the iptables hooks (7% of the
        // CPU under load, measured with perf), for every setup alike.
        netns::run(
            "ip",
            &[
                "netns",
                "exec",
                &switch,
                "sh",
                "-c",
                "for f in /proc/sys/net/bridge/bridge-nf-call-*; do [ -e \"$f\" ] && echo 0 > \"$f\"; done; true",
            ],
        )?;
        netns::ip(&switch, &["link", "set", "br0", "up"])?;
        self.link(&self.router.clone(), "eth1", &switch, "router")?;
        self.link(&self.lb.clone(), LB_INTERFACE, &switch, "lb")?;
        if let Some(lb2) = self.lb2.clone() {
            self.link(&lb2, LB_INTERFACE, &switch, "lb2")?;
        }
        for node in self.other_ecmp_nodes().cloned().collect::<Vec<_>>() {
            self.link(&node.ns, LB_INTERFACE, &switch, &node.port())?;
            self.address(
                &node.ns,
                LB_INTERFACE,
                &format!("{}/24", node.ipv4),
                &format!("{}/64", node.ipv6),
            )?;
        }
        for i in 0..self.servers.len() {
            let (server_ns, name) = (self.servers[i].ns.clone(), self.servers[i].name.clone());
            self.link(&server_ns, "eth0", &switch, &name)?;
        }
        self.address(&self.router.clone(), "eth1", "10.77.1.1/24", "fd77:1::1/64")?;
        self.address(
            &self.lb.clone(),
            LB_INTERFACE,
            "10.77.1.2/24",
            "fd77:1::2/64",
        )?;

        // Router: forwards, and sends the VIP prefixes to the LB.
        netns::exec(
            &self.router,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        // A failover pair: the VIPs go to whichever LB holds the floating address.
        let (via4, via6) = if spec.ha {
            (FLOATING4.to_string(), FLOATING6.to_string())
        } else {
            (LB4.to_string(), LB6.to_string())
        };
        // Behind ECMP the VIP routes come from BIRD (ecmp.rs).
        if spec.ecmp == 0 {
            netns::ip(
                &self.router,
                &["route", "add", "10.77.100.0/24", "via", &via4],
            )?;
            netns::ip(
                &self.router,
                &["-6", "route", "add", "fd77:100::/64", "via", &via6],
            )?;
        }
        if let Some(mtu) = spec.client_path_mtu {
            let mtu = mtu.to_string();
            let v4 = [
                "route",
                "replace",
                "10.77.0.0/24",
                "dev",
                "eth0",
                "mtu",
                "lock",
                &mtu,
            ];
            netns::ip(&self.router, &v4)?;
            let v6 = [
                "-6",
                "route",
                "replace",
                "fd77::/64",
                "dev",
                "eth0",
                "metric",
                "256",
                "mtu",
                &mtu,
            ];
            netns::ip(&self.router, &v6)?;
        }
        if let Some(lb2) = self.lb2.clone() {
            self.address(
                &lb2,
                LB_INTERFACE,
                &format!("{LB2_4}/24"),
                &format!("{LB2_6}/64"),
            )?;
        }
        let lbs: Vec<String> = std::iter::once(self.lb.clone())
            .chain(self.lb2.clone())
            .chain(self.other_ecmp_nodes().map(|node| node.ns.clone()))
            .collect();
        for lb in lbs {
            netns::ip(&lb, &["route", "add", "default", "via", "10.77.1.1"])?;
            netns::ip(&lb, &["-6", "route", "add", "default", "via", "fd77:1::1"])?;

            // The LB forwards what XDP hands the kernel (nat replies whose
            // next hop is not resolved yet) and must not send ICMP
            // redirects for them: a redirected server would bypass the LB
            // (as with IPVS NAT).
            netns::exec(
                &lb,
                "sysctl",
                &[
                    "-qw",
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    "net.ipv4.conf.all.send_redirects=0",
                    &format!("net.ipv4.conf.{LB_INTERFACE}.send_redirects=0"),
                ],
            )?;
        }

        // Real servers: the DR prerequisites, and the default route that
        // nat needs (via the LB) or that dr/snat use (via the router).
        let (gateway4, gateway6) = spec.servers_route_via.addresses();
        for server in &self.servers {
            let (v4, v6) = (format!("{}/24", server.ipv4), format!("{}/64", server.ipv6));
            self.address(&server.ns, "eth0", &v4, &v6)?;
            netns::ip(&server.ns, &["route", "add", "default", "via", gateway4])?;
            netns::ip(
                &server.ns,
                &["-6", "route", "add", "default", "via", gateway6],
            )?;
            configure_dr_real_server(&server.ns)?;
        }

        if let Some(mtu) = spec.lan_mtu {
            self.set_lan_mtu(mtu)?;
        }

        // veth: native XDP_TX from the LB only arrives if the peer runs XDP.
        let mut ports: Vec<String> = vec!["lb".into()];
        ports.extend(self.lb2.as_ref().map(|_| "lb2".to_string()));
        ports.extend(self.other_ecmp_nodes().map(EcmpNode::port));
        in_netns(&switch, move || {
            let pass = pnlb_dataplane::xdp_pass::XdpPass::load().map_err(|err| err.to_string())?;
            for port in ports {
                pass.attach(&port)
                    .map(|a| a.leave_attached())
                    .map_err(|err| err.to_string())?;
            }
            Ok::<(), String>(())
        })?
        .map_err(|err| LabError::Setup(format!("XDP_PASS on the LB's switch port: {err}")))?;
        self.wait_for_links()?;
        if spec.ecmp > 0 {
            self.write_secrets()?;
            self.start_router_bird()?;
        }

        self.nginx = (0..self.servers.len()).map(|_| None).collect();
        self.echo = (0..self.servers.len()).map(|_| None).collect();
        if spec.nginx {
            nginx::make_certificate(&self.dir)?;
            for i in 0..self.servers.len() {
                self.start_nginx(i)?;
            }
        }
        if spec.echo {
            for i in 0..self.servers.len() {
                self.start_echo(i)?;
            }
        }
        Ok(())
    }

    /// A bpffs of the lab's own (mounted on first use, unmounted with the
    /// lab), for `daemon.pin_dir`: there a stopped daemon's data plane goes
    /// on forwarding, as under /sys/fs/bpf on a host. `ip netns exec` gives
    /// each daemon a private /sys, so the host's /sys/fs/bpf would not do.
    pub fn bpffs(&mut self) -> Result<PathBuf, LabError> {
        if let Some(dir) = &self.bpffs {
            return Ok(dir.clone());
        }
        let dir = self.dir.join("bpf");
        std::fs::create_dir_all(&dir)
            .map_err(|err| LabError::Setup(format!("{}: {err}", dir.display())))?;
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", &dir.display().to_string()])
            .status()
            .map_err(|err| LabError::Setup(format!("mount bpffs: {err}")))?;
        if !status.success() {
            return Err(LabError::Setup(format!(
                "mount -t bpf at {} failed",
                dir.display()
            )));
        }
        self.bpffs = Some(dir.clone());
        Ok(dir)
    }

    /// Starts nginx on server `index` and waits until it accepts.
    pub fn start_nginx(&mut self, index: usize) -> Result<(), LabError> {
        let server = self
            .servers
            .get(index)
            .ok_or_else(|| LabError::Setup(format!("no server {index}")))?;
        let dir = self.dir.join(&server.name);
        std::fs::create_dir_all(&dir)
            .map_err(|err| LabError::Setup(format!("{}: {err}", dir.display())))?;
        let process = nginx::start(&server.ns, &server.name, &dir, &self.dir)?;
        wait_for_port(&server.ns, IpAddr::V4(server.ipv4), 80)?;
        self.nginx[index] = Some(process);
        Ok(())
    }

    /// Stops nginx on server `index` (by its PID) and waits until it is gone.
    pub fn stop_nginx(&mut self, index: usize) {
        if let Some(process) = self.nginx.get_mut(index).and_then(Option::take) {
            process.stop(Duration::from_secs(5));
        }
    }

    /// Starts the echo servers (TCP and UDP) of server `index`.
    pub fn start_echo(&mut self, index: usize) -> Result<(), LabError> {
        let server = self
            .servers
            .get(index)
            .ok_or_else(|| LabError::Setup(format!("no server {index}")))?;
        // UDP answers from the address it was asked on: the VIPs (direct
        // routing) and the server's own (nat, health checks).
        let udp = [
            IpAddr::V4(VIP4),
            IpAddr::V6(VIP6),
            IpAddr::V4(server.ipv4),
            IpAddr::V6(server.ipv6),
        ];
        self.echo[index] = Some(EchoServer::start(&server.ns, &server.name, &udp)?);
        Ok(())
    }

    /// Stops the echo servers (TCP and UDP) of server `index`.
    pub fn stop_echo(&mut self, index: usize) {
        if let Some(slot) = self.echo.get_mut(index) {
            *slot = None;
        }
    }

    /// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), up, with
    /// checksum offload off on both ends: native XDP must not see
    /// CHECKSUM_PARTIAL packets. Switch-side ends join the bridge.
    fn link(&mut self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<(), LabError> {
        netns::ip(
            a,
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        )?;
        for (ns, dev) in [(a, a_if), (b, b_if)] {
            netns::exec(ns, "ethtool", &["-K", dev, "tx", "off", "rx", "off"])?;
            if ns == self.switch {
                netns::ip(ns, &["link", "set", dev, "master", "br0"])?;
            }
            netns::ip(ns, &["link", "set", dev, "up"])?;
        }
        Ok(())
    }

    /// Gives every interface on the servers' LAN the same `mtu`.
    fn set_lan_mtu(&self, mtu: u16) -> Result<(), LabError> {
        let mtu = mtu.to_string();
        let mut devices = vec![
            (self.router.clone(), "eth1".to_string()),
            (self.lb.clone(), LB_INTERFACE.to_string()),
            (self.switch.clone(), "br0".to_string()),
            (self.switch.clone(), "router".to_string()),
            (self.switch.clone(), "lb".to_string()),
        ];
        for server in &self.servers {
            devices.push((server.ns.clone(), "eth0".to_string()));
            devices.push((self.switch.clone(), server.name.clone()));
        }
        for (ns, dev) in devices {
            netns::ip(&ns, &["link", "set", "dev", &dev, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Waits until every lab interface is operationally up. A device that
    /// was just brought up drops what it is given until the kernel's
    /// link-watch work has run (up to a second later): without this wait,
    /// the first packets of a test vanish and TCP retries after 1 s.
    fn wait_for_links(&self) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for ns in &self.namespaces {
            loop {
                let out = netns::ip(ns, &["-o", "link", "show", "up"])?;
                let text = String::from_utf8_lossy(&out.stdout);
                let waiting: Vec<&str> = text
                    .lines()
                    .filter(|line| !line.contains(" lo:") && !line.contains("state UP"))
                    .collect();
                if waiting.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LabError::Setup(format!(
                        "links in {ns} did not come up: {}",
                        waiting.join("; ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn address(&self, ns: &str, dev: &str, v4: &str, v6: &str) -> Result<(), LabError> {
        netns::ip(ns, &["addr", "add", v4, "dev", dev])?;
        netns::ip(ns, &["-6", "addr", "add", v6, "dev", dev, "nodad"])?;
        Ok(())
    }

    /// Starts `pnlb run --config CONFIG` in the LB namespace and waits until
    /// it forwards. The caller owns the process (to signal or stop it).
    pub fn start_pnlb(
        &self,
        binary: &str,
        config: &std::path::Path,
    ) -> Result<LabProcess, LabError> {
        let config_arg = config.display().to_string();
        let mut process = LabProcess::spawn(
            &self.lb,
            "pnlb run",
            binary,
            &["run", "--config", &config_arg],
        )?;
        process.wait_for_line("forwarding", Duration::from_secs(30))?;
        Ok(process)
    }

    /// A `pnlb run` config with two TCP services on `port` forwarding by
    /// `method` ("dr", "nat" or "snat"), one per VIP (IPv4 "web", IPv6
    /// "web6"), over the servers at indexes `members`. snat uses the LB's
    /// own addresses as source addresses.
    pub fn config(&self, method: &str, port: u16, members: &[usize]) -> String {
        let mut text = format!("[daemon]\ninterfaces = [\"{LB_INTERFACE}\"]\n");
        for (name, vip, lb, v6) in [
            ("web", IpAddr::V4(VIP4), IpAddr::V4(LB4), false),
            ("web6", IpAddr::V6(VIP6), IpAddr::V6(LB6), true),
        ] {
            text += &format!(
                "\n[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"tcp\"\nmethod = \"{method}\"\nscheduler = \"maglev\"\n"
            );
            if method == "snat" {
                text += &format!("snat_addresses = [\"{lb}\"]\n");
            }
            for server in members.iter().filter_map(|&i| self.servers.get(i)) {
                let address = if v6 {
                    IpAddr::V6(server.ipv6)
                } else {
                    IpAddr::V4(server.ipv4)
                };
                text += &format!("\n[[service.backend]]\naddress = \"{address}\"\n");
            }
        }
        text
    }

    /// [`Self::config`] for tunneling with `encap` ("ipip" or "gue").
    pub fn tun_config(&self, encap: &str, port: u16, members: &[usize]) -> String {
        self.config("tun", port, members).replace(
            "method = \"tun\"\n",
            &format!("method = \"tun\"\nencap = \"{encap}\"\n"),
        )
    }

    /// Starts `pnlb decap --interface eth0` on the server at `index` (the
    /// real-server side of tun) and waits until it is attached.
    pub fn start_decap(&self, binary: &str, index: usize) -> Result<LabProcess, LabError> {
        let server = self
            .servers
            .get(index)
            .ok_or_else(|| LabError::Setup(format!("no server at index {index}")))?;
        let mut process = LabProcess::spawn(
            &server.ns,
            &format!("pnlb decap on {}", server.name),
            binary,
            &["decap", "--interface", "eth0", "--from", DECAP_FROM],
        )?;
        process.wait_for_line("decapsulating", Duration::from_secs(30))?;
        Ok(process)
    }

    /// [`Self::config`] plus an `[ha]` table for the failover pair's node
    /// `node` (1 = lb, 2 = lb2): the other node as peer, the floating
    /// addresses the router sends the VIPs to, 100 ms adverts.
    pub fn ha_config(
        &self,
        base: &str,
        node: u8,
        priority: u8,
        key_file: &std::path::Path,
    ) -> String {
        let peer = if node == 1 { LB2_4 } else { LB4 };
        format!(
            "{base}\n[ha]\ngroup = 7\npriority = {priority}\ninterface = \"{LB_INTERFACE}\"\npeers = [\"{peer}\"]\n\
             advert_interval = \"100ms\"\npreempt_delay = \"2s\"\nkey_file = \"{}\"\nfloating = [\"{FLOATING4}\", \"{FLOATING6}\"]\n",
            key_file.display()
        )
    }

    /// [`Self::config`] for direct routing.
    pub fn dr_config(&self, port: u16, members: &[usize]) -> String {
        self.config("dr", port, members)
    }

    /// Points the servers' default routes at the router or at the LB (nat).
    pub fn route_servers_via(&self, gateway: Gateway) -> Result<(), LabError> {
        let (v4, v6) = gateway.addresses();
        for server in &self.servers {
            netns::ip(&server.ns, &["route", "replace", "default", "via", v4])?;
            netns::ip(
                &server.ns,
                &["-6", "route", "replace", "default", "via", v6],
            )?;
        }
        Ok(())
    }

    /// Runs a command in the client namespace and returns its stdout.
    pub fn client_command(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        let out = netns::exec(&self.client, program, args)?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Downloads `url` with curl from the client, discarding the body;
    /// returns the number of bytes received.
    pub fn client_download(&self, url: &str, timeout_secs: u32) -> Result<u64, LabError> {
        let timeout = timeout_secs.to_string();
        let args = [
            "-sS",
            "-g",
            "--max-time",
            &timeout,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            url,
        ];
        let out = self.client_command("curl", &args)?;
        out.trim()
            .parse()
            .map_err(|_| LabError::Setup(format!("curl {url}: odd size {out:?}")))
    }

    /// Bytes received by an interface in a lab namespace.
    pub fn rx_bytes(&self, ns: &str, dev: &str) -> Result<u64, LabError> {
        interface_counter(ns, dev, "rx_bytes")
    }

    pub fn rx_packets(&self, ns: &str, dev: &str) -> Result<u64, LabError> {
        interface_counter(ns, dev, "rx_packets")
    }

    /// Every lab link's drop counters so far, as "role/device rx" and
    /// "role/device tx" (role: the namespace without the lab's prefix).
    /// A veth counts on its sending side the packets its peer could not
    /// take (the receiving CPU's backlog full, or with XDP on the peer its
    /// 256-packet ring); a backlog drop is counted by the receiver too.
    pub fn link_drops(&self) -> Result<std::collections::BTreeMap<String, u64>, LabError> {
        let mut drops = std::collections::BTreeMap::new();
        for ns in &self.namespaces {
            let out = netns::ip(ns, &["-s", "-j", "link", "show"])?;
            let links: serde_json::Value = serde_json::from_slice(&out.stdout)
                .map_err(|err| LabError::Setup(format!("ip -s -j link in {ns}: {err}")))?;
            let role = ns.strip_prefix(&format!("{}-", self.prefix)).unwrap_or(ns);
            for link in links.as_array().into_iter().flatten() {
                let name = link["ifname"].as_str().unwrap_or("?");
                for direction in ["rx", "tx"] {
                    let n = link["stats64"][direction]["dropped"].as_u64().unwrap_or(0);
                    drops.insert(format!("{role}/{name} {direction}"), n);
                }
            }
        }
        Ok(drops)
    }

    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// Leave the lab running after this handle is gone (`pnlb-lab up`).
    pub fn keep(mut self) {
        self.owned = false;
        for process in self.nginx.drain(..).flatten() {
            std::mem::forget(process);
        }
        if let Some(bird) = self.router_bird.take() {
            std::mem::forget(bird);
        }
    }

    /// Removes every namespace starting with `prefix`, ending the
    /// processes inside them first (by their PIDs).
    pub fn tear_down(prefix: &str) -> usize {
        let namespaces = netns::list(prefix);
        for ns in &namespaces {
            for pid in netns::pids(ns) {
                // SAFETY: kill by the PID the kernel reports for that namespace.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && namespaces.iter().any(|ns| !netns::pids(ns).is_empty()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for ns in &namespaces {
            for pid in netns::pids(ns) {
                // SAFETY: as above; it ignored SIGTERM.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            netns::delete(ns);
        }
        namespaces.len()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        self.echo.clear();
        self.nginx.clear();
        self.router_bird = None;
        for ns in self.namespaces.drain(..) {
            netns::delete(&ns);
        }
        if let Some(bpffs) = self.bpffs.take() {
            // Its pins (links, maps) go with it.
            let _ = std::process::Command::new("umount")
                .args(["-l", &bpffs.display().to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// VIP on lo, no ARP answers or announcements for it on the LAN, loose
/// reverse-path filtering (packets to the VIP arrive on eth0, not lo).
fn configure_dr_real_server(ns: &str) -> Result<(), LabError> {
    netns::ip(ns, &["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
    netns::ip(
        ns,
        &[
            "-6",
            "addr",
            "add",
            &format!("{VIP6}/128"),
            "dev",
            "lo",
            "nodad",
        ],
    )?;
    netns::exec(
        ns,
        "sysctl",
        &[
            "-qw",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.eth0.arp_ignore=1",
            "net.ipv4.conf.eth0.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=2",
            "net.ipv4.conf.eth0.rp_filter=2",
            // A redirect from the LB's kernel must not move nat replies off it.
            "net.ipv4.conf.all.accept_redirects=0",
            "net.ipv4.conf.eth0.accept_redirects=0",
            "net.ipv6.conf.all.accept_redirects=0",
            "net.ipv6.conf.eth0.accept_redirects=0",
        ],
    )?;
    Ok(())
}

fn interface_counter(ns: &str, dev: &str, counter: &str) -> Result<u64, LabError> {
    let out = netns::exec(
        ns,
        "cat",
        &[&format!("/sys/class/net/{dev}/statistics/{counter}")],
    )?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| LabError::Setup(format!("cannot read {counter} of {dev} in {ns}")))
}

/// Waits until something accepts TCP connections on addr:port inside `ns`.
pub fn wait_for_port(ns: &str, addr: IpAddr, port: u16) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = in_netns(ns, move || {
            std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_millis(200))
                .is_ok()
        })?;
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "nothing listens on {addr}:{port} in {ns}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
