//! `pnlb run`: the daemon.
//!
//! One loop, ticking every 100 ms: signals (stop, reload), API calls,
//! health reports, and the periodic jobs (next-hop refresh, connection
//! expiry, SNAT exhaustion watch, freeing removed backends). What the data
//! plane sees is always the desired config as health and drains make it
//! (down or drained backends at weight 0, slow start, fallback), and it is
//! reprogrammed only when that differs from what was last applied.
//!
//! The desired config is a document (the file as read, then as edited
//! through the API); every change is validated whole before it is adopted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_core::config::{self, Config, Document, DownPolicy, XdpMode};
use pnlb_core::health::{Health, Transition};
use pnlb_dataplane::nexthop::{KernelResolver, Resolution, Resolver};
use pnlb_dataplane::{ApplyReport, Dataplane, Programmer};

use crate::api::edit::BackendSelector;
use crate::api::model::{self, ApiError, Done};
use crate::api::{ApiCall, Op, Reply};
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
/// The daemon loop's period (API calls are answered in between).
const TICK: Duration = Duration::from_millis(100);
/// The loop's turn with [ha]: how soon a role change is acted on.
const HA_TURN: Duration = Duration::from_millis(10);

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
    let (document, config) = config::load_document(path)?;
    if let Some(token) = &config.daemon.api_token_file {
        crate::api::read_token(token)?;
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

    let mut daemon = Daemon::start(path, document, config)?;
    // With [ha], this node forwards only while it is the active one.
    let (ha, mut syncer) = match &daemon.config.ha {
        None => (None, None),
        Some(ha) => {
            let me = crate::ha::takeover::own_address(&ha.interface, ha.peers[0].is_ipv6())?;
            let syncer = crate::ha::syncer::Syncer::new(ha, me, &daemon.dataplane)?;
            let node = crate::ha::HaNode::start(ha, me, syncer.synced.clone())?;
            (Some(node), Some(syncer))
        }
    };
    // Program the maps first, attach second: the program never sees a
    // half-written configuration.
    let mut attachments = Vec::new();
    if ha.is_none() {
        attachments = daemon.attach()?;
    } else {
        info!(
            "ha: {} service(s) on {} programmed; standing by until elected",
            daemon.config.services.len(),
            daemon.config.daemon.interfaces.join(", ")
        );
    }
    warn_without_forwarding(&daemon.config);
    let (calls, requests) = std::sync::mpsc::channel::<ApiCall>();
    let api = crate::api::start(&daemon.config.daemon, calls)?;
    if api.is_some() {
        let mut places: Vec<String> = daemon
            .config
            .daemon
            .api
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        places.extend(
            daemon
                .config
                .daemon
                .api_socket
                .iter()
                .map(|p| format!("unix:{}", p.display())),
        );
        let access = if daemon.config.daemon.api_token_file.is_some() {
            "changes need the token"
        } else {
            "read-only: no api_token_file"
        };
        info!("API on {} ({access})", places.join(" and "));
    }

    let mut last_tick = Instant::now();
    // With [ha] the loop turns faster: a role change is acted on within it.
    let turn = if ha.is_some() { HA_TURN } else { TICK };
    let mut role_ok = true;
    while !stop.load(Ordering::Relaxed) {
        let wait = turn.min(TICK.saturating_sub(last_tick.elapsed()));
        match requests.recv_timeout(wait) {
            Ok(call) => {
                let reply = daemon.serve(call.op);
                let _ = call.reply.send(reply);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            // No API listens: nothing will ever arrive; just pace the loop.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
        if reload.swap(false, Ordering::Relaxed) {
            if let Err(err) = daemon.reload() {
                warning!("reload rejected, keeping the running config: {}", err.error);
            }
        }
        if let Some(node) = &ha {
            // The watchdog: this loop turning, the last role change done,
            // the maps readable. A sick node resigns and is never elected.
            node.heartbeat.store(crate::ha::now_ms(), Ordering::Relaxed);
            while let Ok(role) = node.roles.try_recv() {
                role_ok = daemon.change_role(role, &mut attachments);
                if let (Some(syncer), crate::ha::election::Role::Backup) = (syncer.as_mut(), role) {
                    syncer.became_backup();
                }
            }
            if let Some(syncer) = syncer.as_mut() {
                let master = !attachments.is_empty();
                syncer.turn(master, &daemon.dataplane, &daemon.programmer);
                let ended = std::mem::take(&mut daemon.ended);
                if master && !ended.is_empty() {
                    syncer.ended(&ended);
                }
            }
            if last_tick.elapsed() >= TICK {
                let readable = daemon.dataplane.reason_counters().is_ok();
                node.dataplane_ok
                    .store(role_ok && readable, Ordering::Relaxed);
            }
        }
        if last_tick.elapsed() >= TICK {
            daemon.tick();
            last_tick = Instant::now();
        }
    }
    drop(api);
    if ha.is_some() && !attachments.is_empty() {
        // Hand over: release the addresses and detach; the election thread
        // resigns as it stops (drop below), so the peer takes over at once.
        daemon.change_role(crate::ha::election::Role::Backup, &mut attachments);
    }
    drop(ha);

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
    /// The desired state as written: the file, then API edits.
    document: Document,
    config: Config,
    /// Backends drained through the API: weight 0 until undrained.
    drained: BTreeSet<BackendKey>,
    /// Bumped by every adopted change.
    version: u64,
    /// "file PATH" or "file PATH + API edits".
    source: String,
    /// Connection-table entries after the last sweep: counting them means
    /// walking the table, which the sweep does anyway.
    table_entries: usize,
    /// Flows the sweep ended since failover sync last told the peers.
    ended: Vec<pnlb_dataplane::abi::FlowKey>,
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
    fn start(path: &Path, document: Document, config: Config) -> Result<Self> {
        let dataplane = Dataplane::load_with(config.daemon.conn_table_size, config.ha.is_some())?;
        let mut programmer = Programmer::new();
        let mut next_hops = NextHops::default();
        let lifecycle = Lifecycle::default();
        let applied = lifecycle.effective(&config, Instant::now());
        log_report(&programmer.apply(&dataplane, &applied, &mut next_hops)?);
        let now = Instant::now();
        Ok(Self {
            path: path.to_path_buf(),
            document,
            drained: BTreeSet::new(),
            version: 1,
            source: format!("file {}", path.display()),
            table_entries: 0,
            ended: Vec::new(),
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
        let effective = self.effective(now);
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
            match self.dataplane.sweep_connections(&self.config.timeouts) {
                Ok(report) => {
                    self.table_entries = report.entries.saturating_sub(report.expired);
                    if self.config.ha.is_some() {
                        self.ended.extend(report.ended);
                    }
                }
                Err(err) => warning!("expiring idle connections: {err}"),
            }
            self.exhaustion
                .check(&self.dataplane, &self.programmer, &self.config);
            match self.programmer.reap(&self.dataplane) {
                Ok(freed) => freed.iter().for_each(|line| info!("{line}")),
                Err(err) => warning!("freeing removed backends: {err}"),
            }
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
            let backend = endpoint(*address, *port);
            match event.transition {
                Transition::Up => info!(service = %name, %backend, health = "up", "{message}"),
                Transition::Down => {
                    warning!(service = %name, %backend, health = "down", "{message}")
                }
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

    /// Attaches the program to every interface.
    fn attach(&self) -> Result<Vec<pnlb_dataplane::Attachment>> {
        let mut attachments = Vec::new();
        for interface in &self.config.daemon.interfaces {
            attachments.push(
                self.dataplane
                    .attach(interface, self.config.daemon.xdp_mode)?,
            );
        }
        let mode = match self.config.daemon.xdp_mode {
            XdpMode::Native => "native XDP",
            XdpMode::Generic => {
                "generic XDP (skb mode: slower; use native where the driver supports it)"
            }
        };
        info!(
            "forwarding {} service(s) on {} ({mode})",
            self.config.services.len(),
            self.config.daemon.interfaces.join(", ")
        );
        Ok(attachments)
    }

    /// The VIPs and floating addresses an active node holds.
    fn held_addresses(&self) -> Vec<std::net::IpAddr> {
        let mut addresses: Vec<std::net::IpAddr> =
            self.config.services.iter().map(|s| s.vip).collect();
        if let Some(ha) = &self.config.ha {
            addresses.extend(&ha.floating);
        }
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Becomes the active node (attach, claim the addresses) or a standby
    /// (release them, detach). Returns whether that worked.
    fn change_role(
        &self,
        role: crate::ha::election::Role,
        attachments: &mut Vec<pnlb_dataplane::Attachment>,
    ) -> bool {
        let Some(ha) = &self.config.ha else {
            return true;
        };
        let addresses = self.held_addresses();
        match role {
            crate::ha::election::Role::Master => {
                if attachments.is_empty() {
                    match self.attach() {
                        Ok(attached) => *attachments = attached,
                        Err(err) => {
                            warning!("ha: elected but cannot attach: {err:#}; resigning");
                            return false;
                        }
                    }
                }
                if let Err(err) = crate::ha::takeover::claim(&ha.interface, &addresses) {
                    warning!("ha: claiming the addresses: {err:#}");
                    return false;
                }
                warning!(
                    "ha: MASTER of group {}: holding {} address(es) on {} and forwarding",
                    ha.group,
                    addresses.len(),
                    ha.interface
                );
            }
            crate::ha::election::Role::Backup => {
                if let Err(err) = crate::ha::takeover::release(&ha.interface, &addresses) {
                    warning!("ha: releasing the addresses: {err:#}");
                }
                attachments.clear();
                warning!(
                    "ha: BACKUP of group {}: holding no address, not forwarding",
                    ha.group
                );
            }
        }
        true
    }

    /// What the data plane should see now: drained backends at weight 0,
    /// then health and slow start.
    fn effective(&self, now: Instant) -> Config {
        let mut desired = self.config.clone();
        for service in &mut desired.services {
            for backend in &mut service.backends {
                if self
                    .drained
                    .contains(&(service.name.clone(), backend.address, backend.port))
                {
                    backend.weight = 0;
                }
            }
        }
        self.lifecycle.effective(&desired, now)
    }

    /// Applies a changed config file; an invalid one is rejected whole and
    /// the running one stays. API edits made since are replaced by the file.
    fn reload(&mut self) -> Result<Done, ApiError> {
        let (document, next) = config::load_document(&self.path)
            .map_err(|err| ApiError::new(422, err.to_string()).with_fix(err.fix.clone()))?;
        if next.daemon != self.config.daemon || next.ha != self.config.ha {
            warning!("reload: [daemon] and [ha] changes need a restart; applying the rest");
        }
        self.fits(&next)?;
        self.source = format!("file {}", self.path.display());
        let done = self.adopt(document, next, format!("reloaded {}", self.path.display()));
        Ok(done)
    }

    /// Refuses, before anything is written, a config the data plane has no
    /// room for (so an apply never stops halfway for lack of slots).
    fn fits(&self, next: &Config) -> Result<(), ApiError> {
        let services = next.services.len();
        // Removed backends keep their slots while they have flows.
        let backends: usize = next
            .services
            .iter()
            .map(|s| s.backends.len() + usize::from(s.fallback.is_some()))
            .sum::<usize>()
            + self.programmer.retiring().len();
        if services > pnlb_dataplane::abi::MAX_SERVICES as usize {
            return Err(ApiError::new(
                422,
                format!(
                    "{services} services: the data plane holds {}",
                    pnlb_dataplane::abi::MAX_SERVICES
                ),
            ));
        }
        if backends > pnlb_dataplane::abi::MAX_BACKENDS as usize {
            return Err(ApiError::new(422, format!("{backends} backends (counting removed ones still carrying flows): the data plane holds {}", pnlb_dataplane::abi::MAX_BACKENDS))
                .with_fix("remove backends, or wait for removed ones to finish their flows"));
        }
        Ok(())
    }

    /// Makes `document` (already validated into `next`) the desired state.
    fn adopt(&mut self, document: Document, next: Config, what: String) -> Done {
        self.document = document;
        self.config = Config {
            daemon: self.config.daemon.clone(),
            ha: self.config.ha.clone(),
            timeouts: next.timeouts,
            services: next.services,
        };
        self.lifecycle.retain(&self.config);
        let config = &self.config;
        self.drained.retain(|(service, address, port)| {
            config.services.iter().any(|s| {
                &s.name == service
                    && s.backends
                        .iter()
                        .any(|b| b.address == *address && b.port == *port)
            })
        });
        self.monitor = Monitor::start(&self.config);
        let effective = self.effective(Instant::now());
        self.next_hops.stale = true;
        self.apply(effective);
        self.last_refresh = Instant::now();
        warn_without_forwarding(&self.config);
        self.version += 1;
        info!(
            "{what}: {} service(s), config version {}",
            self.config.services.len(),
            self.version
        );
        Done {
            done: what,
            config_version: self.version,
        }
    }

    /// Answers one API call.
    fn serve(&mut self, op: Op) -> Reply {
        let result = match op {
            Op::Status => return Reply::Status(Box::new(self.status())),
            Op::Document => {
                return match serde_json::to_value(&self.document) {
                    Ok(document) => Reply::Document(document),
                    Err(err) => {
                        Reply::Failed(ApiError::new(500, format!("encoding the config: {err}")))
                    }
                }
            }
            Op::Reload => self.reload(),
            Op::Edit(edit) => self.edit(&edit),
            Op::Drain {
                service,
                backend,
                drained,
            } => self.drain(&service, backend, drained),
            Op::Zero => match self.programmer.zero_counters(&self.dataplane) {
                Ok(()) => {
                    info!("counters zeroed through the API");
                    Ok(Done {
                        done: "counters zeroed".into(),
                        config_version: self.version,
                    })
                }
                Err(err) => Err(ApiError::new(500, format!("zeroing counters: {err}"))),
            },
        };
        match result {
            Ok(done) => Reply::Done(done),
            Err(err) => Reply::Failed(err),
        }
    }

    fn edit(&mut self, edit: &crate::api::edit::Edit) -> Result<Done, ApiError> {
        let mut document = self.document.clone();
        let what = crate::api::edit::apply(&mut document, edit)?;
        let next =
            config::validate_document(Path::new("API request"), &document).map_err(|err| {
                ApiError::new(422, format!("{}: {}", err.key, err.reason)).with_fix(err.fix.clone())
            })?;
        if next.daemon != self.config.daemon || next.ha != self.config.ha {
            return Err(
                ApiError::new(422, "the API does not change [daemon] or [ha]")
                    .with_fix("edit the file and restart pnlb run"),
            );
        }
        self.fits(&next)?;
        self.source = format!("file {} + API edits", self.path.display());
        Ok(self.adopt(document, next, format!("API: {what}")))
    }

    fn drain(
        &mut self,
        service: &str,
        selector: BackendSelector,
        drained: bool,
    ) -> Result<Done, ApiError> {
        let config = self
            .config
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ApiError::new(404, format!("no service named {service:?}")))?;
        let matches: Vec<BackendKey> = config
            .backends
            .iter()
            .filter(|b| b.address == selector.address && selector.port.is_none_or(|p| p == b.port))
            .map(|b| (service.to_string(), b.address, b.port))
            .collect();
        let key = match matches.as_slice() {
            [one] => one.clone(),
            [] => {
                return Err(ApiError::new(
                    404,
                    format!("service {service} has no backend {selector}"),
                ))
            }
            _ => {
                return Err(ApiError::new(
                    409,
                    format!("service {service} has several backends at {selector}"),
                )
                .with_fix("name the port too, e.g. 10.77.1.11:8080"))
            }
        };
        let endpoint = endpoint(key.1, key.2);
        let changed = if drained {
            self.drained.insert(key)
        } else {
            self.drained.remove(&key)
        };
        let what = match (drained, changed) {
            (true, true) => format!("service {service}: backend {endpoint} drained: no new flows, established ones continue"),
            (false, true) => format!("service {service}: backend {endpoint} undrained"),
            (true, false) => format!("service {service}: backend {endpoint} was already drained"),
            (false, false) => format!("service {service}: backend {endpoint} was not drained"),
        };
        if changed {
            let effective = self.effective(Instant::now());
            self.apply(effective);
            self.version += 1;
            info!("API: {what}");
        }
        Ok(Done {
            done: what,
            config_version: self.version,
        })
    }

    /// Everything the API shows, read now.
    fn status(&self) -> model::Status {
        let effective = &self.applied;
        let mut services = Vec::new();
        for service in &self.config.services {
            let id = self.programmer.service_id(&service.name);
            let counters = id
                .and_then(|id| self.dataplane.service_counters(id).ok())
                .unwrap_or_default();
            let drops: BTreeMap<String, u64> = counters
                .drops
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(reason, n)| (pnlb_dataplane::stats::reason_name(reason).to_string(), *n))
                .collect();
            let effective_service = effective.services.iter().find(|s| s.name == service.name);
            let mut backends: Vec<model::BackendStatus> = service
                .backends
                .iter()
                .map(|backend| {
                    let key = (service.name.clone(), backend.address, backend.port);
                    let id =
                        self.programmer
                            .backend_id(&service.name, backend.address, backend.port);
                    let effective_weight = effective_service
                        .and_then(|s| {
                            s.backends
                                .iter()
                                .find(|b| b.address == backend.address && b.port == backend.port)
                        })
                        .map_or(0, |b| b.weight);
                    let (health, transitions) = match (&backend.health, self.lifecycle.health(&key))
                    {
                        (None, _) => ("unchecked", 0),
                        (Some(_), (Health::Down, n)) => ("down", n),
                        (Some(_), (_, n)) => ("up", n),
                    };
                    self.backend_status(
                        backend.address,
                        backend.port,
                        backend.weight,
                        effective_weight,
                        id,
                        health,
                        transitions,
                        self.drained.contains(&key),
                    )
                })
                .collect();
            for (name, address, port, id) in self.programmer.retiring() {
                if name == service.name {
                    backends.push(self.backend_status(
                        address,
                        port,
                        0,
                        0,
                        Some(id),
                        "removed",
                        0,
                        false,
                    ));
                }
            }
            services.push(model::ServiceStatus {
                name: service.name.clone(),
                vip: service.vip,
                port: service.port,
                protocol: service.protocol.to_string(),
                method: service.method.to_string(),
                scheduler: service.scheduler.to_string(),
                table_version: self.programmer.table_version(&service.name).unwrap_or(0),
                counters: model::Counters {
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                    reply_packets: counters.reply_packets,
                    reply_bytes: counters.reply_bytes,
                },
                drops,
                backends,
            });
        }
        let reasons = self
            .dataplane
            .reason_counters()
            .map(|totals| {
                totals
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(reason, n)| (pnlb_dataplane::stats::reason_name(reason).to_string(), *n))
                    .collect()
            })
            .unwrap_or_default();
        model::Status {
            services,
            connections: model::ConnectionTable {
                entries: self.table_entries as u64,
                capacity: u64::from(self.config.daemon.conn_table_size),
            },
            reasons,
            config_version: self.version,
            config_source: self.source.clone(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn backend_status(
        &self,
        address: std::net::IpAddr,
        port: u16,
        weight: u32,
        effective_weight: u32,
        id: Option<u32>,
        health: &str,
        health_transitions: u64,
        drained: bool,
    ) -> model::BackendStatus {
        let counters = id
            .and_then(|id| self.dataplane.backend_counters(id).ok())
            .unwrap_or_default();
        let (active_conns, inactive_conns) = id
            .and_then(|id| self.dataplane.backend_load(id).ok())
            .unwrap_or((0, 0));
        model::BackendStatus {
            address,
            port,
            weight,
            effective_weight,
            drained,
            health: health.to_string(),
            health_transitions,
            active_conns,
            inactive_conns,
            counters: model::Counters {
                packets: counters.packets,
                bytes: counters.bytes,
                new_flows: counters.new_flows,
                reply_packets: counters.reply_packets,
                reply_bytes: counters.reply_bytes,
            },
        }
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
