//! `pnlb run`: the daemon.
//!
//! One loop, ticking every 100 ms: signals (stop, reload), health reports,
//! and the periodic jobs (next-hop refresh, connection expiry, SNAT
//! exhaustion watch). What the data plane sees is always the config as
//! health makes it (down backends at weight 0, slow start, fallback), and
//! it is reprogrammed only when that differs from what was last applied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_core::config::{self, Config, DownPolicy, XdpMode};
use pnlb_core::health::Transition;
use pnlb_dataplane::nexthop::{KernelResolver, Resolution, Resolver};
use pnlb_dataplane::{ApplyReport, Dataplane, Programmer};

use crate::health::lifecycle::Lifecycle;
use crate::health::monitor::{BackendKey, Monitor};
use crate::log::{info, warning};
use crate::summary;

/// How often next hops are re-resolved (a replaced server, a moved MAC).
/// Health checks notice dead servers much sooner; this only follows MAC
/// changes, and each refresh runs `ip` (pnlb bench showed the cost in the
/// tail latency at 5 s).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How often idle connections are expired: a pass over the whole table, so
/// not every second (timeouts then hold to within this much).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Slow-start ramps are republished at most this often.
const RAMP_EVERY: Duration = Duration::from_secs(1);

pub fn check(path: &Path) -> Result<()> {
    let config = config::load(path)?;
    println!(
        "{}: ok, {} service(s)",
        path.display(),
        config.services.len()
    );
    Ok(())
}

pub fn run(path: &Path) -> Result<()> {
    // Everything that can be wrong with the file is found before anything
    // is loaded or attached.
    let config = config::load(path)?;
    if let Some(api) = config.daemon.api {
        warning!("daemon.api = {api}: the API is not part of this version yet; not serving it");
    }
    for interface in &config.daemon.interfaces {
        pnlb_dataplane::loader::ifindex_of(interface)?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;

    let mut daemon = Daemon::start(path, config)?;
    // Program the maps first, attach second: the program never sees a
    // half-written configuration.
    let mut attachments = Vec::new();
    for interface in &daemon.config.daemon.interfaces {
        attachments.push(
            daemon
                .dataplane
                .attach(interface, daemon.config.daemon.xdp_mode)?,
        );
    }
    let mode = match daemon.config.daemon.xdp_mode {
        XdpMode::Native => "native XDP",
        XdpMode::Generic => {
            "generic XDP (skb mode: slower; use native where the driver supports it)"
        }
    };
    info!(
        "forwarding {} service(s) on {} ({mode})",
        daemon.config.services.len(),
        daemon.config.daemon.interfaces.join(", ")
    );
    warn_without_forwarding(&daemon.config);

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if reload.swap(false, Ordering::Relaxed) {
            daemon.reload();
        }
        daemon.tick();
    }

    info!(
        "stopping: detaching from {}",
        daemon.config.daemon.interfaces.join(", ")
    );
    drop(attachments);
    print!(
        "{}",
        summary::render(&daemon.dataplane, &daemon.programmer, &daemon.config)
    );
    Ok(())
}

struct Daemon {
    path: PathBuf,
    config: Config,
    dataplane: Dataplane,
    programmer: Programmer,
    next_hops: NextHops,
    monitor: Monitor,
    lifecycle: Lifecycle,
    /// The effective config last written to the maps.
    applied: Config,
    last_refresh: Instant,
    last_sweep: Instant,
    last_ramp: Instant,
    exhaustion: ExhaustionWatch,
}

impl Daemon {
    fn start(path: &Path, config: Config) -> Result<Self> {
        let dataplane = Dataplane::load(config.daemon.conn_table_size)?;
        let mut programmer = Programmer::new();
        let mut next_hops = NextHops::default();
        let lifecycle = Lifecycle::default();
        let applied = lifecycle.effective(&config, Instant::now());
        log_report(&programmer.apply(&dataplane, &applied, &mut next_hops)?);
        let now = Instant::now();
        Ok(Self {
            path: path.to_path_buf(),
            monitor: Monitor::start(&config),
            config,
            dataplane,
            programmer,
            next_hops,
            lifecycle,
            applied,
            last_refresh: now,
            last_sweep: now,
            last_ramp: now,
            exhaustion: ExhaustionWatch::default(),
        })
    }

    fn tick(&mut self) {
        let resets = self.health_reports();
        let now = Instant::now();
        let effective = self.lifecycle.effective(&self.config, now);
        let changed = effective != self.applied;
        if changed
            && (!resets.is_empty()
                || self.last_ramp.elapsed() >= RAMP_EVERY
                || self.weights_only_fell(&effective))
        {
            self.apply(effective);
            self.last_ramp = now;
        } else if self.last_refresh.elapsed() >= REFRESH_EVERY {
            self.next_hops.stale = true;
            self.apply(self.applied.clone());
            self.last_refresh = Instant::now();
        }
        for key in resets {
            self.flush(&key);
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            if let Err(err) = self.dataplane.sweep_connections(&self.config.timeouts) {
                warning!("expiring idle connections: {err}");
            }
            self.exhaustion
                .check(&self.dataplane, &self.programmer, &self.config);
            self.last_sweep = Instant::now();
        }
    }

    /// A backend going down is applied at once; ramps wait for RAMP_EVERY.
    fn weights_only_fell(&self, effective: &Config) -> bool {
        effective
            .services
            .iter()
            .zip(&self.applied.services)
            .any(|(new, old)| {
                new.backends.len() != old.backends.len()
                    || new
                        .backends
                        .iter()
                        .zip(&old.backends)
                        .any(|(n, o)| n.weight == 0 && o.weight != 0)
            })
    }

    /// Takes the health reports; logs transitions once; returns the
    /// backends whose established flows must be reset.
    fn health_reports(&mut self) -> Vec<BackendKey> {
        let mut resets = Vec::new();
        while let Ok(report) = self.monitor.reports.try_recv() {
            let Some((service, check)) = self.config.services.iter().find_map(|s| {
                let backend = s.backends.iter().find(|b| {
                    s.name == report.key.0 && b.address == report.key.1 && b.port == report.key.2
                })?;
                Some((s, backend.health.clone()?))
            }) else {
                continue;
            };
            let Some(event) =
                self.lifecycle
                    .observe(report.key, &check, report.result, Instant::now())
            else {
                continue;
            };
            let (name, address, port) = &event.key;
            let state = match event.transition {
                Transition::Up => "UP",
                Transition::Down => "DOWN",
            };
            let message = format!(
                "service {name}: backend {} is {state} ({}; transition {})",
                endpoint(*address, *port),
                event.detail,
                event.transitions
            );
            match event.transition {
                Transition::Up => info!("{message}"),
                Transition::Down => warning!("{message}"),
            }
            if event.transition == Transition::Down && service.on_backend_down == DownPolicy::Reset
            {
                resets.push(event.key);
            }
        }
        resets
    }

    fn apply(&mut self, effective: Config) {
        match self
            .programmer
            .apply(&self.dataplane, &effective, &mut self.next_hops)
        {
            Ok(report) => log_report(&report),
            Err(err) => warning!("programming the data plane: {err}"),
        }
        self.applied = effective;
    }

    /// on_backend_down = "reset": the backend's entries go, so its flows'
    /// next packets are scheduled elsewhere and reset by the new backend.
    fn flush(&self, key: &BackendKey) {
        let Some(id) = self.programmer.backend_id(&key.0, key.1, key.2) else {
            return;
        };
        match self.dataplane.flush_backend_connections(id) {
            Ok(flushed) => info!(
                "service {}: reset {flushed} connection-table entries of backend {}",
                key.0,
                endpoint(key.1, key.2)
            ),
            Err(err) => warning!(
                "resetting flows of backend {}: {err}",
                endpoint(key.1, key.2)
            ),
        }
    }

    /// Applies a changed config file; an invalid one is rejected whole and
    /// the running one stays.
    fn reload(&mut self) {
        let next = match config::load(&self.path) {
            Ok(next) => next,
            Err(err) => {
                warning!("reload rejected, keeping the running config: {err}");
                return;
            }
        };
        if next.daemon != self.config.daemon {
            warning!("reload: [daemon] changes (interfaces, xdp_mode, api, conn_table_size) need a restart; applying the rest");
        }
        self.config = Config {
            daemon: self.config.daemon.clone(),
            timeouts: next.timeouts,
            services: next.services,
        };
        self.lifecycle.retain(&self.config);
        self.monitor = Monitor::start(&self.config);
        let effective = self.lifecycle.effective(&self.config, Instant::now());
        self.next_hops.stale = true;
        self.apply(effective);
        self.last_refresh = Instant::now();
        warn_without_forwarding(&self.config);
        info!(
            "reloaded {}: {} service(s)",
            self.path.display(),
            self.config.services.len()
        );
    }
}

/// Next hops as last resolved. Weight changes (health, slow start) reuse
/// them; the kernel is asked only for addresses not seen before, and for
/// all of them on the periodic refresh and on reload. Asking means running
/// `ip` and, for an unresolvable backend, waiting for its neighbour probe:
/// not something to repeat on every health transition or ramp step.
#[derive(Default)]
struct NextHops {
    kernel: KernelResolver,
    known: Resolution,
    /// Set to re-ask the kernel about every address on the next apply.
    stale: bool,
}

impl Resolver for NextHops {
    fn resolve(&mut self, backends: &[std::net::IpAddr]) -> Resolution {
        let ask: Vec<std::net::IpAddr> = backends
            .iter()
            .copied()
            .filter(|b| self.stale || !self.known.contains_key(b))
            .collect();
        if self.stale {
            self.known.retain(|address, _| backends.contains(address));
        }
        if !ask.is_empty() {
            self.known.extend(self.kernel.resolve(&ask));
        }
        self.stale = false;
        backends
            .iter()
            .map(|&b| {
                (
                    b,
                    self.known
                        .get(&b)
                        .cloned()
                        .unwrap_or_else(|| Err(format!("{b} was not resolved"))),
                )
            })
            .collect()
    }
}

fn endpoint(address: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

/// Logs SNAT port exhaustion per service, once per episode rather than per
/// dropped flow.
#[derive(Default)]
struct ExhaustionWatch {
    dropped: HashMap<String, u64>,
}

impl ExhaustionWatch {
    fn check(&mut self, dataplane: &Dataplane, programmer: &Programmer, config: &Config) {
        let Some(reason) = pnlb_dataplane::stats::reason_by_name("drop_snat_exhausted") else {
            return;
        };
        for service in config.services.iter().filter(|s| s.snat.is_some()) {
            let Some(id) = programmer.service_id(&service.name) else {
                continue;
            };
            let Ok(counters) = dataplane.service_counters(id) else {
                continue;
            };
            let now = counters.drops[reason];
            let before = self.dropped.insert(service.name.clone(), now).unwrap_or(0);
            if now > before {
                warning!(
                    "service {}: SNAT ports exhausted, {} new flow(s) dropped; established flows are unaffected. \
                     Add snat_addresses or widen snat_ports",
                    service.name,
                    now - before
                );
            }
        }
    }
}

/// nat/snat replies whose next hop is not resolved yet go through the
/// kernel's forwarding path, which must be on (as IPVS NAT requires).
fn warn_without_forwarding(config: &Config) {
    let wants = |v6: bool| {
        config
            .services
            .iter()
            .any(|s| s.method.translates() && s.vip.is_ipv6() == v6)
    };
    for (v6, path, key) in [
        (
            false,
            "/proc/sys/net/ipv4/ip_forward",
            "net.ipv4.ip_forward",
        ),
        (
            true,
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        let off = std::fs::read_to_string(path)
            .map(|v| v.trim() == "0")
            .unwrap_or(false);
        if wants(v6) && off {
            warning!("{key} is 0: nat/snat replies need it (bpf_fib_lookup and the kernel's forwarding); set {key}=1");
        }
    }
}

fn log_report(report: &ApplyReport) {
    for change in &report.changes {
        info!("{change}");
    }
    for problem in &report.problems {
        warning!("{problem}");
    }
}
