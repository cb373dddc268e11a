//! `pnlb run`: the daemon.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_core::config::{self, Config, XdpMode};
use pnlb_dataplane::nexthop::KernelResolver;
use pnlb_dataplane::{ApplyReport, Dataplane, Programmer};

use crate::log::{info, warning};
use crate::summary;

/// How often next hops are re-resolved (a replaced server, a moved MAC).
const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How often idle connections are expired (timeouts are whole seconds).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Logs SNAT port exhaustion per service, once per episode rather than per
/// dropped flow.
#[derive(Default)]
struct ExhaustionWatch {
    dropped: std::collections::HashMap<String, u64>,
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
            warning!("{key} is 0: nat/snat replies to clients whose next hop is not yet resolved will be dropped by the kernel; set {key}=1");
        }
    }
}

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
    let mut config = config::load(path)?;
    if let Some(api) = config.daemon.api {
        warning!("daemon.api = {api}: the API is not part of this version yet; not serving it");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;

    for interface in &config.daemon.interfaces {
        pnlb_dataplane::loader::ifindex_of(interface)?;
    }
    let dataplane = Dataplane::load(config.daemon.conn_table_size)?;
    let mut programmer = Programmer::new();
    let mut resolver = KernelResolver::default();
    // Program the maps first, attach second: the program never sees a
    // half-written configuration.
    let report = programmer.apply(&dataplane, &config, &mut resolver)?;
    log_report(&report);

    let mut attachments = Vec::new();
    for interface in &config.daemon.interfaces {
        attachments.push(dataplane.attach(interface, config.daemon.xdp_mode)?);
    }
    let mode = match config.daemon.xdp_mode {
        XdpMode::Native => "native XDP",
        XdpMode::Generic => {
            "generic XDP (skb mode: slower; use native where the driver supports it)"
        }
    };
    info!(
        "forwarding {} service(s) on {} ({mode})",
        config.services.len(),
        config.daemon.interfaces.join(", ")
    );

    warn_without_forwarding(&config);

    let mut last_refresh = Instant::now();
    let mut last_sweep = Instant::now();
    let mut exhaustion = ExhaustionWatch::default();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if reload.swap(false, Ordering::Relaxed) {
            config = reload_config(path, config, &dataplane, &mut programmer, &mut resolver);
            warn_without_forwarding(&config);
            last_refresh = Instant::now();
        } else if last_refresh.elapsed() >= REFRESH_EVERY {
            match programmer.apply(&dataplane, &config, &mut resolver) {
                Ok(report) => log_report(&report),
                Err(err) => warning!("refreshing next hops: {err}"),
            }
            last_refresh = Instant::now();
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            if let Err(err) = dataplane.sweep_connections(&config.timeouts) {
                warning!("expiring idle connections: {err}");
            }
            exhaustion.check(&dataplane, &programmer, &config);
            last_sweep = Instant::now();
        }
    }

    info!(
        "stopping: detaching from {}",
        config.daemon.interfaces.join(", ")
    );
    drop(attachments);
    print!("{}", summary::render(&dataplane, &programmer, &config));
    Ok(())
}

/// Applies a changed config file; an invalid one is rejected whole and the
/// running config stays.
fn reload_config(
    path: &Path,
    current: Config,
    dataplane: &Dataplane,
    programmer: &mut Programmer,
    resolver: &mut KernelResolver,
) -> Config {
    let next = match config::load(path) {
        Ok(next) => next,
        Err(err) => {
            warning!("reload rejected, keeping the running config: {err}");
            return current;
        }
    };
    if next.daemon != current.daemon {
        warning!("reload: [daemon] changes (interfaces, xdp_mode, api) need a restart; applying services only");
    }
    let services_only = Config {
        daemon: current.daemon.clone(),
        timeouts: next.timeouts,
        services: next.services,
    };
    match programmer.apply(dataplane, &services_only, resolver) {
        Ok(report) => {
            log_report(&report);
            info!(
                "reloaded {}: {} service(s)",
                path.display(),
                services_only.services.len()
            );
            services_only
        }
        Err(err) => {
            warning!("reload failed while programming the data plane: {err}");
            services_only
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
