//! `pnlb doctor --lb [--config FILE]`: what the load balancer host needs for
//! the config it runs. Nothing here changes the system: the XDP features
//! and offloads are read, not tried.

use std::path::Path;

use anyhow::{Context, Result};
use pnlb_core::config::{self, Config, Method, XdpMode};
use pnlb_dataplane::netdev;

use super::{effective_ipv4, links, net_sysctl, Finding, Level, Link};

/// The program `pnlb run` attaches (its name in `ip link`).
const PNLB_PROGRAM: &str = "pnlb_xdp";

/// The largest MTU most drivers take for single-buffer native XDP on 4 KiB
/// pages: the page less XDP's 256-byte headroom, the skb_shared_info tail
/// (320), the Ethernet header and two VLAN tags. mlx5 allows exactly this;
/// veth a little more, ixgbe and i40e less.
const SINGLE_BUFFER_MTU_4K: u32 = 4096 - 256 - 320 - 14 - 8;

pub(super) fn check(config_path: &Path) -> Result<Vec<Finding>> {
    let config = config::load(config_path)?;
    let kernel = Kernel::running()?;
    println!(
        "pnlb doctor: this host as the load balancer of {} (kernel {})",
        config_path.display(),
        kernel.release
    );
    let links = links()?;
    let mut findings = vec![
        privileges(&config)?,
        kernel.finding(),
        memlock(&kernel),
        bpffs()?,
    ];
    for name in &config.daemon.interfaces {
        let Some(link) = links.iter().find(|l| &l.ifname == name) else {
            findings.push(Finding::problem(
                Level::Fail,
                format!("interface {name} does not exist here"),
                format!(
                    "list the interfaces `ip link` shows in daemon.interfaces of {}",
                    config_path.display()
                ),
            ));
            continue;
        };
        findings.extend(interface(link, &config, &kernel));
    }
    findings.extend(forwarding(&config));
    findings.extend(rp_filter(&config, &links)?);
    if let Some(bgp) = &config.bgp {
        findings.extend(super::bgp::check(bgp));
    }
    Ok(findings)
}

struct Kernel {
    release: String,
    version: (u32, u32),
}

impl Kernel {
    fn running() -> Result<Self> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading the kernel release")?
            .trim()
            .to_string();
        let mut numbers = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok());
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        Ok(Self { release, version })
    }

    /// The netdev netlink family, which reports XDP features, came in 6.3.
    fn reports_xdp_features(&self) -> bool {
        self.version >= (6, 3)
    }

    /// From 5.11 BPF memory is charged to the memory cgroup, not memlock.
    fn charges_bpf_to_memcg(&self) -> bool {
        self.version >= (5, 11)
    }

    fn finding(&self) -> Finding {
        if self.reports_xdp_features() {
            Finding::ok(format!(
                "kernel {}: reports each driver's XDP features",
                self.release
            ))
        } else {
            Finding::problem(
                Level::Warn,
                format!(
                    "kernel {} predates 6.3: it does not report which drivers have native XDP, so that is not checked",
                    self.release
                ),
                "if `pnlb run` says the driver has no native XDP, set daemon.xdp_mode = \"generic\"".into(),
            )
        }
    }
}

/// CAP_BPF and CAP_PERFMON load the program (the verifier needs the latter
/// for its pointer use), CAP_NET_ADMIN attaches it; failover sends
/// gratuitous ARP with CAP_NET_RAW; exec checks as another user need
/// CAP_SETUID, CAP_SETGID and CAP_KILL.
fn privileges(config: &Config) -> Result<Finding> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let mut needed = vec![("CAP_BPF", 39), ("CAP_PERFMON", 38), ("CAP_NET_ADMIN", 12)];
    if config.ha.is_some() {
        needed.push(("CAP_NET_RAW", 13));
    }
    if config.daemon.exec_check_user.is_some() {
        needed.extend([("CAP_SETUID", 7), ("CAP_SETGID", 6), ("CAP_KILL", 5)]);
    }
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, bit)| effective & (1 << bit) == 0)
        .map(|&(name, _)| name)
        .collect();
    Ok(if missing.is_empty() {
        Finding::ok(format!(
            "privileges: {}",
            needed
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    } else {
        Finding::problem(
            Level::Fail,
            format!("missing privileges: {}", missing.join(", ")),
            "run pnlb as root, or with these capabilities (the packaged systemd unit grants them)"
                .into(),
        )
    })
}

fn memlock(kernel: &Kernel) -> Finding {
    if kernel.charges_bpf_to_memcg() {
        return Finding::ok(
            "BPF maps are charged to the memory cgroup: the locked-memory limit does not apply"
                .into(),
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    if read && limit.rlim_cur == libc::RLIM_INFINITY {
        Finding::ok("locked-memory limit: unlimited (this kernel charges BPF maps to it)".into())
    } else {
        Finding::problem(
            Level::Fail,
            format!(
                "locked-memory limit is {} KiB: this kernel charges BPF maps to it, and the connection table alone needs more",
                limit.rlim_cur / 1024
            ),
            "ulimit -l unlimited before pnlb run (the packaged unit sets LimitMEMLOCK=infinity)".into(),
        )
    }
}

fn bpffs() -> Result<Finding> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    // Each line: device, mount point, file system type, ...
    let mounted = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1..3) == Some(&["/sys/fs/bpf", "bpf"][..])
    });
    Ok(if mounted {
        Finding::ok("bpffs is mounted at /sys/fs/bpf".into())
    } else {
        Finding::problem(
            Level::Warn,
            "bpffs is not mounted at /sys/fs/bpf: BPF objects cannot be pinned there (bpftool and state that outlives a process use it)".into(),
            "mount -t bpf bpf /sys/fs/bpf".into(),
        )
    })
}

fn interface(link: &Link, config: &Config, kernel: &Kernel) -> Vec<Finding> {
    let name = &link.ifname;
    let mut findings = Vec::new();
    if !link.is_up() {
        findings.push(Finding::problem(
            Level::Fail,
            format!("{name} is down"),
            format!("ip link set {name} up"),
        ));
    }
    match link.xdp_program() {
        Some(PNLB_PROGRAM) => findings.push(Finding::ok(format!(
            "{name}: pnlb's program is attached (a pnlb run is active)"
        ))),
        Some(other) => findings.push(Finding::problem(
            Level::Fail,
            format!(
                "{name}: another XDP program ({other}) is attached; pnlb run will not replace it"
            ),
            format!("ip link set dev {name} xdp off"),
        )),
        None => {}
    }
    let driver =
        netdev::driver(name).unwrap_or_else(|_| link.kind().unwrap_or("unknown").to_string());
    if config.daemon.xdp_mode == XdpMode::Generic {
        findings.push(Finding::ok(format!(
            "{name} ({driver}): generic XDP, as configured (works on any device, slower than native)"
        )));
        return findings;
    }
    findings.extend(native_xdp(link, &driver, config, kernel));
    match netdev::offloads(name) {
        Ok(offloads) => {
            if offloads.lro {
                findings.push(Finding::problem(
                    Level::Fail,
                    format!("{name}: large receive offload (LRO) is on; the kernel refuses native XDP with it"),
                    format!("ethtool -K {name} lro off"),
                ));
            }
            let vlans = link.ifindex.map_or(0, |ifindex| {
                pnlb_dataplane::nexthop::vlan_devices()
                    .unwrap_or_default()
                    .iter()
                    .filter(|d| d.parent_ifindex == ifindex)
                    .count()
            });
            if offloads.rx_vlan && vlans > 0 {
                findings.push(Finding::problem(
                    Level::Warn,
                    format!("{name}: VLAN stripping (rx-vlan-offload) is on and {vlans} VLAN device(s) sit on it; tagged frames reach XDP untagged, so pnlb cannot balance them on their VLAN"),
                    format!("ethtool -K {name} rxvlan off"),
                ));
            }
            if driver == "veth" && (offloads.rx_checksum || offloads.tx_checksum) {
                findings.push(Finding::problem(
                    Level::Warn,
                    format!("{name}: checksum offload is on for a veth (turn it off on its peer too); packets from local senders reach XDP with partial checksums it does not finish"),
                    format!("ethtool -K {name} rx off tx off"),
                ));
            }
        }
        Err(err) => findings.push(Finding::problem(
            Level::Warn,
            format!("{name}: cannot read its offloads ({err})"),
            format!("check with `ethtool -k {name}` that large-receive-offload is off"),
        )),
    }
    let mtu = link.mtu.unwrap_or(1500);
    if mtu > SINGLE_BUFFER_MTU_4K {
        findings.push(Finding::problem(
            Level::Warn,
            format!("{name}: MTU {mtu} is above {SINGLE_BUFFER_MTU_4K}, the most drivers take for native XDP with one buffer per packet (pnlb's program is single-buffer); attaching may fail"),
            format!("ip link set {name} mtu {SINGLE_BUFFER_MTU_4K}"),
        ));
    }
    findings
}

fn native_xdp(link: &Link, driver: &str, config: &Config, kernel: &Kernel) -> Vec<Finding> {
    let name = &link.ifname;
    if !kernel.reports_xdp_features() {
        return Vec::new();
    }
    let features = link
        .ifindex
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        .and_then(netdev::xdp_features);
    let features = match features {
        Ok(features) => features,
        Err(err) => {
            return vec![Finding::problem(
            Level::Warn,
            format!("{name}: cannot read its XDP features ({err})"),
            "if `pnlb run` says the driver has no native XDP, set daemon.xdp_mode = \"generic\""
                .into(),
        )]
        }
    };
    if !features.native() {
        return vec![Finding::problem(
            Level::Fail,
            format!("{name}: its driver ({driver}) has no native XDP"),
            "set daemon.xdp_mode = \"generic\" (slower), or use a NIC whose driver has native XDP"
                .into(),
        )];
    }
    let mut findings = vec![Finding::ok(format!(
        "{name} ({driver}): native XDP ({})",
        features.names().join(", ")
    ))];
    // Two arms: a packet in on one interface leaves by another with
    // bpf_redirect, which the ingress driver must do and the egress take.
    if config.daemon.interfaces.len() > 1 && !(features.redirect() && features.redirect_target()) {
        findings.push(Finding::problem(
            Level::Warn,
            format!("{name}: its driver cannot both redirect and receive redirected packets; replies that leave by another interface go through the kernel instead"),
            "keep each flow on one interface (one-arm), or use NICs with redirect and ndo-xmit".into(),
        ));
    }
    findings
}

/// nat and snat send replies with bpf_fib_lookup, which refuses to route
/// (BPF_FIB_LKUP_RET_FWD_DISABLED) on an interface without forwarding, and
/// hand packets whose next hop is unresolved to the kernel, which forwards.
fn forwarding(config: &Config) -> Vec<Finding> {
    let translated = |v4: bool| {
        config
            .services
            .iter()
            .any(|s| matches!(s.method, Method::Nat | Method::Snat) && s.vip.is_ipv4() == v4)
    };
    let mut findings = Vec::new();
    for (v4, family, fix) in [
        (true, "ipv4", "sysctl -w net.ipv4.ip_forward=1"),
        (false, "ipv6", "sysctl -w net.ipv6.conf.all.forwarding=1"),
    ] {
        if !translated(v4) {
            continue;
        }
        // Interfaces that do not exist are reported on their own.
        let off: Vec<&str> = config
            .daemon
            .interfaces
            .iter()
            .filter(|name| {
                net_sysctl(&format!("{family}.conf.{name}.forwarding")).is_ok_and(|v| v != 1)
            })
            .map(String::as_str)
            .collect();
        findings.push(if off.is_empty() {
            Finding::ok(format!("{family} forwarding is on for the nat/snat services"))
        } else {
            Finding::problem(
                Level::Fail,
                format!(
                    "{family} forwarding is off on {}: nat/snat replies are dropped (drop_no_route)",
                    off.join(", ")
                ),
                fix.into(),
            )
        });
    }
    if findings.is_empty() {
        findings.push(Finding::ok(
            "no nat/snat service: the kernel's forwarding is not needed (dr and tun forward in XDP)".into(),
        ));
    }
    findings
}

/// XDP sees service traffic before rp_filter does, but what the program
/// passes to the kernel (replies to a next hop not yet resolved, ICMP
/// errors about unknown flows) meets it.
fn rp_filter(config: &Config, links: &[Link]) -> Result<Vec<Finding>> {
    let mut strict = Vec::new();
    for name in &config.daemon.interfaces {
        if links.iter().any(|l| &l.ifname == name) && effective_ipv4(name, "rp_filter")? == 1 {
            strict.push(name.as_str());
        }
    }
    Ok(vec![if strict.is_empty() {
        Finding::ok("rp_filter is loose or off on the XDP interfaces".into())
    } else {
        Finding::problem(
            Level::Warn,
            format!(
                "rp_filter is strict (1) on {}: packets pnlb passes to the kernel are dropped when they arrive from a source routed out of another interface",
                strict.join(", ")
            ),
            "sysctl -w net.ipv4.conf.all.rp_filter=2".into(),
        )
    }])
}
