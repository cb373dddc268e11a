//! The ECMP lab (`LabSpec::ecmp`): N LB nodes on the LAN, each running BIRD
//! (started by [`Lab::start_node_bird`]) and pnlb with `[bgp]`; the router
//! runs BIRD too, peers with every node over BGP (with BFD, so a dead node
//! is noticed in ~300 ms rather than at the 3 s hold time) and installs
//! each VIP as one multipath route over the nodes that announce it, hashed
//! on the 5-tuple (`fib_multipath_hash_policy = 1`).
//!
//! ```text
//!  client -- router (BIRD, AS 65000) == switch == lb   (10.77.1.2, BIRD, AS 65001)
//!                                         |  |  == lb2  (10.77.1.3)
//!                                         |  +-- == lbN  (10.77.1.(N+1))
//!                                         +----- servers
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{netns, Lab, LabError, LabProcess, LB4, LB6};

/// The router's AS and the LB nodes' (one AS for all, so that their routes
/// are equal and merge into one multipath route).
pub const ROUTER_AS: u32 = 65000;
pub const NODES_AS: u32 = 65001;
/// The most LB nodes an ECMP lab has (10.77.1.2 up to .9; servers start at .11).
pub const MAX_NODES: usize = 8;

/// One LB node of the ECMP lab.
#[derive(Clone, Debug)]
pub struct EcmpNode {
    /// 1-based: node 1 is the lab's `lb` namespace, node N its `lbN`.
    pub index: usize,
    pub ns: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

impl EcmpNode {
    pub(crate) fn new(prefix: &str, index: usize) -> Self {
        let ns = if index == 1 {
            format!("{prefix}-lb")
        } else {
            format!("{prefix}-lb{index}")
        };
        Self {
            index,
            ns,
            ipv4: Ipv4Addr::new(10, 77, 1, 1 + index as u8),
            ipv6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1 + index as u16),
        }
    }

    /// The switch port its link ends on.
    pub(crate) fn port(&self) -> String {
        if self.index == 1 {
            "lb".into()
        } else {
            format!("lb{}", self.index)
        }
    }
}

/// BIRD's settings shared by both ends: fast keepalives, BFD, and a
/// session that failed (a BFD or hold timer expiring on a VM busy with
/// other tests) restarting after 1-5 s rather than BIRD's default
/// 60-300 s.
const TIMERS: &str =
    "hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5; bfd on;";
/// BFD at 300 ms x 3: this VM's host pauses it now and then (10% steal
/// during lab_ecmp, whole-guest stalls up to ~350 ms measured), and at
/// 100 ms x 3 such a pause dropped sessions, and with them a node's
/// routes for the 1-5 s a session takes to come back.
const BFD: &str = "protocol bfd {\n\tinterface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };\n}\n";

impl Lab {
    /// Where node `index`'s BIRD keeps its control socket.
    pub fn node_bird_socket(&self, index: usize) -> PathBuf {
        self.dir.join(format!("bird-lb{index}.ctl"))
    }

    /// The routes file node `index`'s BIRD includes and its pnlb writes.
    pub fn node_routes_file(&self, index: usize) -> PathBuf {
        self.dir.join(format!("bird-lb{index}-vips.conf"))
    }

    /// The seed file every node shares (daemon.hash_seed_file).
    pub fn hash_seed_file(&self) -> PathBuf {
        self.dir.join("hash-seed")
    }

    /// The key every node signs connection sync with (bgp.key_file).
    pub fn sync_key_file(&self) -> PathBuf {
        self.dir.join("sync.key")
    }

    /// `base` (a [`Lab::config`]) for node `index`: the shared seed, snat
    /// from the node's own addresses, and a `[bgp]` table naming its BIRD
    /// and every other node as a sync peer.
    pub fn ecmp_config(&self, base: &str, index: usize) -> String {
        let Some(node) = self.ecmp_nodes.get(index.wrapping_sub(1)) else {
            return base.to_string();
        };
        let seeded = base
            .replacen(
                "[daemon]\n",
                &format!(
                    "[daemon]\nhash_seed_file = \"{}\"\n",
                    self.hash_seed_file().display()
                ),
                1,
            )
            .replace(
                &format!("snat_addresses = [\"{LB4}\"]"),
                &format!("snat_addresses = [\"{}\"]", node.ipv4),
            )
            .replace(
                &format!("snat_addresses = [\"{LB6}\"]"),
                &format!("snat_addresses = [\"{}\"]", node.ipv6),
            );
        let peers: Vec<String> = self
            .ecmp_nodes
            .iter()
            .filter(|other| other.index != index)
            .map(|other| format!("\"{}\"", other.ipv4))
            .collect();
        format!(
            "{seeded}\n[bgp]\nbird_socket = \"{}\"\nroutes_file = \"{}\"\npeers = [{}]\nkey_file = \"{}\"\n",
            self.node_bird_socket(index).display(),
            self.node_routes_file(index).display(),
            peers.join(", "),
            self.sync_key_file().display()
        )
    }

    /// Points the servers' default routes at the nodes `nodes` (1-based),
    /// one multipath route hashed on the 5-tuple: nat's replies go back
    /// through any of them (the servers' routing follows the node set as
    /// the router's does).
    pub fn route_servers_via_nodes(&self, nodes: &[usize]) -> Result<(), LabError> {
        let mut args: Vec<String> = ["route", "replace", "default"].map(String::from).to_vec();
        for node in nodes
            .iter()
            .filter_map(|i| self.ecmp_nodes.get(i.wrapping_sub(1)))
        {
            args.extend(["nexthop".into(), "via".into(), node.ipv4.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for server in &self.servers {
            netns::exec(
                &server.ns,
                "sysctl",
                &["-qw", "net.ipv4.fib_multipath_hash_policy=1"],
            )?;
            netns::ip(&server.ns, &args)?;
        }
        Ok(())
    }

    /// The ECMP nodes other than node 1 (the lab's `lb`).
    pub(crate) fn other_ecmp_nodes(&self) -> impl Iterator<Item = &EcmpNode> {
        self.ecmp_nodes.iter().skip(1)
    }

    /// The secrets every node shares, written once (mode 600).
    pub(crate) fn write_secrets(&self) -> Result<(), LabError> {
        self.write_secret(&self.hash_seed_file(), "flow-hash seed")?;
        self.write_secret(&self.sync_key_file(), "sync key")
    }

    fn write_secret(&self, path: &std::path::Path, what: &str) -> Result<(), LabError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(|err| LabError::Setup(format!("create {}: {err}", path.display())))?;
        let secret = format!("pnlb lab {} {what}\n", self.prefix);
        std::io::Write::write_all(&mut file, secret.as_bytes())
            .map_err(|err| LabError::Setup(format!("write {}: {err}", path.display())))
    }

    /// Sets up the router's side: L4 multipath hashing and its BIRD.
    pub(crate) fn start_router_bird(&mut self) -> Result<(), LabError> {
        netns::exec(
            &self.router,
            "sysctl",
            &[
                "-qw",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1",
            ],
        )?;
        let mut config = format!(
            "router id 10.77.1.1;\nlog \"{}\" all;\ndebug protocols {{ states }};\nprotocol device {{ scan time 1; }}\n{BFD}\
             protocol kernel {{\n\tipv4 {{ import none; export all; }};\n\tmerge paths on;\n}}\n\
             protocol kernel kernel6 {{\n\tipv6 {{ import none; export all; }};\n\tmerge paths on;\n}}\n",
            self.dir.join("bird-router.log").display()
        );
        // A session per node and family: IPv6 routes with IPv6 next hops.
        for node in &self.ecmp_nodes {
            config += &format!(
                "protocol bgp lb{} {{\n\tlocal 10.77.1.1 as {ROUTER_AS};\n\tneighbor {} as {NODES_AS};\n\t{TIMERS}\n\tipv4 {{ import all; export none; }};\n}}\n\
                 protocol bgp lb{}_6 {{\n\tlocal fd77:1::1 as {ROUTER_AS};\n\tneighbor {} as {NODES_AS};\n\t{TIMERS}\n\tipv6 {{ import all; export none; }};\n}}\n",
                node.index, node.ipv4, node.index, node.ipv6
            );
        }
        let path = self.dir.join("bird-router.conf");
        write(&path, &config)?;
        let socket = self.dir.join("bird-router.ctl");
        let mut bird = bird_process(&self.router, "BIRD on the router", &path, &socket)?;
        wait_for_socket(&mut bird, &socket)?;
        self.router_bird = Some(bird);
        Ok(())
    }

    /// Starts BIRD on node `index` (1-based), announcing what its pnlb
    /// writes to [`Self::node_routes_file`] (nothing until then).
    pub fn start_node_bird(&self, index: usize) -> Result<LabProcess, LabError> {
        let node = self
            .ecmp_nodes
            .get(index.wrapping_sub(1))
            .ok_or_else(|| LabError::Setup(format!("no ECMP node {index}")))?;
        let routes = self.node_routes_file(index);
        if !routes.exists() {
            write(
                &routes,
                "protocol static pnlb_vips4 {\n\tipv4;\n}\nprotocol static pnlb_vips6 {\n\tipv6;\n}\n",
            )?;
        }
        let config = format!(
            "router id {};\nlog \"{}\" all;\nprotocol device {{ scan time 1; }}\n{BFD}include \"{}\";\n\
             protocol bgp upstream {{\n\tlocal {} as {NODES_AS};\n\tneighbor 10.77.1.1 as {ROUTER_AS};\n\t{TIMERS}\n\
             \tipv4 {{ import none; export where proto = \"pnlb_vips4\"; }};\n}}\n\
             protocol bgp upstream6 {{\n\tlocal {} as {NODES_AS};\n\tneighbor fd77:1::1 as {ROUTER_AS};\n\t{TIMERS}\n\
             \tipv6 {{ import none; export where proto = \"pnlb_vips6\"; }};\n}}\n",
            node.ipv4,
            self.dir.join(format!("bird-lb{index}.log")).display(),
            routes.display(),
            node.ipv4,
            node.ipv6
        );
        let path = self.dir.join(format!("bird-lb{index}.conf"));
        write(&path, &config)?;
        let socket = self.node_bird_socket(index);
        let mut bird = bird_process(&node.ns, &format!("BIRD on lb{index}"), &path, &socket)?;
        wait_for_socket(&mut bird, &socket)?;
        Ok(bird)
    }

    /// Starts `pnlb run --config CONFIG` on node `index` and waits until it
    /// forwards. The caller owns the process.
    pub fn start_node_pnlb(
        &self,
        binary: &str,
        index: usize,
        config: &std::path::Path,
    ) -> Result<LabProcess, LabError> {
        let node = self
            .ecmp_nodes
            .get(index.wrapping_sub(1))
            .ok_or_else(|| LabError::Setup(format!("no ECMP node {index}")))?;
        let config = config.display().to_string();
        let mut process = LabProcess::spawn(
            &node.ns,
            &format!("pnlb run on lb{index}"),
            binary,
            &["run", "--config", &config],
        )?;
        process.wait_for_line("forwarding", Duration::from_secs(30))?;
        Ok(process)
    }

    /// What the router's BIRD logged of its sessions going down and up
    /// and why (for a failure message: a session that dropped takes its
    /// node's routes with it for seconds).
    pub fn router_session_changes(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("bird-router.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                ["State changed", "Cease", "BFD", "Hold timer", "Error"]
                    .iter()
                    .any(|word| line.contains(word))
            })
            .map(String::from)
            .collect()
    }

    /// The router's BGP sessions as its BIRD shows them (for a failure
    /// message).
    pub fn router_sessions(&self) -> String {
        let socket = self.dir.join("bird-router.ctl").display().to_string();
        match netns::exec(&self.router, "birdc", &["-s", &socket, "show", "protocols"]) {
            Ok(out) => String::from_utf8_lossy(&out.stdout).to_string(),
            Err(err) => format!("birdc: {err}"),
        }
    }

    /// The router's current next hops for `vip` (its multipath route).
    pub fn router_next_hops(&self, vip: impl Into<IpAddr>) -> Result<Vec<IpAddr>, LabError> {
        let vip = vip.into();
        let (family, prefix) = if vip.is_ipv6() {
            ("-6", 128)
        } else {
            ("-4", 32)
        };
        let out = netns::ip(
            &self.router,
            &[family, "route", "show", &format!("{vip}/{prefix}")],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|pair| pair[0] == "via")
            .filter_map(|pair| pair[1].parse().ok())
            .collect())
    }

    /// Waits until the router's next hops for `vip` are exactly `nodes`
    /// (their addresses of its family); how long that took.
    pub fn wait_for_next_hops(
        &self,
        vip: impl Into<IpAddr>,
        nodes: &[usize],
        timeout: Duration,
    ) -> Result<Duration, LabError> {
        let vip = vip.into();
        let started = Instant::now();
        let mut wanted: Vec<IpAddr> = nodes
            .iter()
            .filter_map(|i| self.ecmp_nodes.get(i.wrapping_sub(1)))
            .map(|node| {
                if vip.is_ipv6() {
                    IpAddr::V6(node.ipv6)
                } else {
                    IpAddr::V4(node.ipv4)
                }
            })
            .collect();
        wanted.sort();
        loop {
            let mut now = self.router_next_hops(vip)?;
            now.sort();
            if now == wanted {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(LabError::Setup(format!(
                    "the router's next hops for {vip} are {now:?} after {timeout:?}, not {wanted:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text)
        .map_err(|err| LabError::Setup(format!("write {}: {err}", path.display())))
}

fn bird_process(
    ns: &str,
    name: &str,
    config: &std::path::Path,
    socket: &std::path::Path,
) -> Result<LabProcess, LabError> {
    let config = config.display().to_string();
    let socket_text = socket.display().to_string();
    // -f: in the foreground, so that the lab holds its PID.
    LabProcess::spawn(ns, name, "bird", &["-f", "-c", &config, "-s", &socket_text])
}

fn wait_for_socket(bird: &mut LabProcess, socket: &std::path::Path) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(LabError::Setup(format!(
                "BIRD did not open {} in 10 s: {}",
                socket.display(),
                bird.output().join("\n")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = bird.output();
    Ok(())
}
