//! `pnlb run`: the daemon.
//!
//! One loop, ticking every 100 ms: signals (stop, reload), API calls,
//! health reports, and the periodic jobs (next-hop refresh, connection
//! expiry, limits-hit watch, freeing removed backends). What the data
//! plane sees is always the desired config as health and drains make it
//! (down or drained backends at weight 0, slow start, fallback), and it is
//! reprogrammed only when that differs from what was last applied.
//!
//! The desired config is a document (the file as read, then as edited
//! through the API, document.rs); a file is validated whole before it is
//! adopted, an API edit as the one service it changes among the others
//! (api_ops.rs).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pnlb_core::config::{self, Config, DownPolicy, Service};
use pnlb_core::health::Transition;
use pnlb_dataplane::{ApplyReport, Dataplane, Limits, LoadOptions, Programmer};

use crate::api::model::{ApiError, Done};
use crate::api::ApiCall;
use crate::ha::context::SharedNames;
use crate::ha::syncer::SyncNode;
use crate::health::lifecycle::Lifecycle;
use crate::health::monitor::{BackendKey, Monitor};
use crate::log::{info, warning};
use crate::summary;

mod api_ops;
mod document;
mod failover;
mod fingerprint;
mod hash_seed;
mod next_hops;
mod node;
pub mod persistence;
mod pressure;
mod status;
mod sweeping;

use next_hops::NextHops;
use pressure::PressureWatch;
use sweeping::Sweeping;

/// How often every next hop is re-resolved in the background, a safety net
/// under the kernel's neighbour and route events (next_hops.rs), which
/// carry MAC changes within a tick.
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How often the interfaces' own MACs are published again (a MAC changed
/// by hand is followed within it).
const OWN_MACS_EVERY: Duration = Duration::from_secs(1);
/// Slow-start ramps are republished at most this often.
const RAMP_EVERY: Duration = Duration::from_secs(1);
/// The daemon loop's period (API calls are answered in between).
const TICK: Duration = Duration::from_millis(100);
/// The loop's turn with [ha]: how soon a role change is acted on.
const HA_TURN: Duration = Duration::from_millis(10);
/// A new master announces its floating addresses again this long after
/// taking them (as keepalived repeats its gratuitous ARPs): one lost
/// broadcast must not leave the router on the old node.
const ANNOUNCE_AGAIN: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

pub fn check(path: &Path) -> Result<()> {
    let config = config::load(path)?;
    let cpus = pnlb_dataplane::memory::possible_cpus();
    println!(
        "{}: ok, {} service(s); {}",
        path.display(),
        config.services.len(),
        pnlb_dataplane::memory::estimate(&config, cpus).describe(cpus)
    );
    Ok(())
}

/// `pnlb down`: the pinned data plane under the config's (or the given)
/// pin directory, removed.
pub fn down(config: Option<&Path>, pin_dir: Option<&Path>) -> Result<()> {
    let base = match (pin_dir, config) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(path)) => config::load(path)?
            .daemon
            .pin_dir
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PIN_DIR)),
        (None, None) => PathBuf::from(config::DEFAULT_PIN_DIR),
    };
    persistence::down(&base)
}

/// Exec health checks: their user exists, their directory is root's
/// alone; without a user of their own, they run with the daemon's
/// privileges (said once).
fn exec_checks_as_configured(config: &Config) -> Result<()> {
    use crate::health::exec;
    if let Some(user) = &config.daemon.exec_check_user {
        exec::identity_of(user).map_err(anyhow::Error::msg)?;
    }
    if let Some(dir) = &config.daemon.exec_check_dir {
        exec::check_dir(dir).map_err(anyhow::Error::msg)?;
    }
    if config.daemon.exec_check_user.is_none() && !config.exec_commands().is_empty() {
        warning!(
            "exec health checks run with the daemon's own privileges; set daemon.exec_check_user (e.g. \"nobody\") and daemon.exec_check_dir (docs/health.md)"
        );
    }
    Ok(())
}

pub fn run(path: &Path) -> Result<()> {
    // Everything that can be wrong with the file is found before anything
    // is loaded or attached.
    let (text, config) = config::load_text(path)?;
    let document = document::DesiredDocument::parse(path, text);
    if let Some(token) = &config.daemon.api_token_file {
        crate::api::read_token(token)?;
    }
    if let Some(token) = &config.daemon.api_read_token_file {
        crate::api::read_read_token(token)?;
    }
    if let Some(tls) = &config.daemon.api_tls {
        crate::api::tls_acceptor(tls)?;
    }
    exec_checks_as_configured(&config)?;
    for interface in &config.daemon.interfaces {
        pnlb_dataplane::loader::ifindex_of(interface)?;
    }
    raise_open_file_limit();

    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .context("installing signal handlers")?;

    let mut daemon = Daemon::start(path, document, config)?;
    // With [ha], this node forwards only while it is the active one.
    let (ha, sync) = match (daemon.config.ha.clone(), daemon.config.bgp.clone()) {
        (None, Some(bgp)) if !bgp.peers.is_empty() => {
            // Behind ECMP: every node syncs the flows it carries with the
            // others, and learns theirs before it is announced.
            let interface = &daemon.config.daemon.interfaces[0];
            let me = crate::ha::takeover::own_address(interface, bgp.peers[0].is_ipv6())?;
            let key_file = bgp
                .key_file
                .clone()
                .context("[bgp] peers without key_file")?;
            let key = crate::secret::read(&key_file, "bgp.key_file")?.into_bytes();
            let names = SharedNames::default();
            daemon.names = Some(names.clone());
            daemon.publish_names();
            // The same peers list on every node may name this one too.
            let peers: Vec<std::net::IpAddr> = bgp
                .peers
                .iter()
                .copied()
                .filter(|peer| *peer != me)
                .collect();
            let group = crate::ha::context::SyncGroup::mesh(&peers);
            let sync = SyncNode::start(&group, me, key, &daemon.dataplane, names)?;
            info!(
                "sync: connections with {} peer(s) as {me}; announcing once their flows are learned",
                peers.len()
            );
            daemon.synced = Some(sync.synced.clone());
            daemon.mesh = Some(node::MeshView::new(me, &sync, &daemon.dataplane)?);
            (None, Some(sync))
        }
        (None, _) => (None, None),
        (Some(ha), _) => {
            let me = crate::ha::takeover::own_address(&ha.interface, ha.peers[0].is_ipv6())?;
            let key = crate::ha::read_key(&ha.key_file)?;
            let names = SharedNames::default();
            daemon.names = Some(names.clone());
            daemon.publish_names();
            let group = crate::ha::context::SyncGroup::pair(&ha);
            let sync = SyncNode::start(&group, me, key.clone(), &daemon.dataplane, names)?;
            let node = crate::ha::HaNode::start(&ha, me, key, sync.synced.clone())?;
            (Some(node), Some(sync))
        }
    };
    if daemon.mesh.is_none() {
        // A data plane left pinned by a node behind ECMP may hold its node
        // lists: alone now, every flow is this node's.
        pnlb_dataplane::nodes::NodeLists::clear(&daemon.dataplane)?;
    }
    // Program the maps first, attach second: the program never sees a
    // half-written configuration.
    // With [ha] too: a backup keeps the program attached, so packets that
    // still reach it (neighbours not yet switched after a failback) are
    // forwarded by its synced table rather than by the kernel untranslated.
    let mut attachments = daemon.attach()?;
    daemon.programmer.program_attached();
    if ha.is_some() {
        info!(
            "ha: {} service(s) on {} programmed; standing by until elected",
            daemon.config.services.len(),
            daemon.config.daemon.interfaces.join(", ")
        );
    }
    if let Some(bgp) = &daemon.config.bgp {
        daemon.announcer =
            Some(crate::bgp::Announcer::start(bgp).context("starting the BGP announcer")?);
        info!(
            "bgp: announcing through BIRD ({}), routes in {}; fingerprint {}",
            bgp.bird_socket.display(),
            bgp.routes_file.display(),
            daemon.fingerprinter.last()
        );
    }
    let mut master = false;
    warn_without_forwarding(&daemon.config);
    let (calls, requests) = std::sync::mpsc::channel::<ApiCall>();
    let api = crate::api::start(&daemon.config.daemon, calls)?;
    if api.is_some() {
        let mut places: Vec<String> = daemon
            .config
            .daemon
            .api
            .iter()
            .map(|a| {
                let scheme = if daemon.config.daemon.api_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{a}")
            })
            .collect();
        places.extend(
            daemon
                .config
                .daemon
                .api_socket
                .iter()
                .map(|p| format!("unix:{}", p.display())),
        );
        let access = match (
            daemon.config.daemon.api_token_file.is_some(),
            daemon.config.daemon.api_read_token_file.is_some(),
        ) {
            (true, true) => "changes need the token; remote reads the token or the read-only one",
            (true, false) => "changes need the token",
            (false, true) => "read-only: no api_token_file; remote reads need the read-only token",
            (false, false) => "read-only: no api_token_file",
        };
        info!("API on {} ({access})", places.join(" and "));
    }

    let mut last_tick = Instant::now();
    // With [ha] the loop turns faster: a role change is acted on within it.
    // Behind ECMP with sync too: a peer that starts or stops taking flows
    // is in this node's list within a turn (flows' designated nodes).
    let turn = if ha.is_some() || daemon.mesh.is_some() {
        HA_TURN
    } else {
        TICK
    };
    let mut role_ok = true;
    // When a new master repeats its announcements.
    let mut announce_at: Vec<Instant> = Vec::new();
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
            node.heartbeat.beat(crate::ha::monotonic_ms());
            while let Ok(role) = node.roles.try_recv() {
                role_ok = daemon.change_role(role, &mut attachments);
                master = role == crate::ha::election::Role::Master;
                announce_at = match role {
                    crate::ha::election::Role::Master => {
                        let now = Instant::now();
                        ANNOUNCE_AGAIN.iter().map(|after| now + *after).collect()
                    }
                    crate::ha::election::Role::Backup => Vec::new(),
                };
                if let Some(sync) = &sync {
                    sync.set_master(master);
                }
            }
            if announce_at.first().is_some_and(|at| Instant::now() >= *at) {
                announce_at.remove(0);
                daemon.announce_floating();
            }
            if last_tick.elapsed() >= TICK {
                let readable = daemon.dataplane.reason_counters().is_ok();
                node.dataplane_ok
                    .store(role_ok && readable, Ordering::Relaxed);
            }
        }
        if let Some(sync) = &sync {
            sync.ended(std::mem::take(&mut daemon.ended));
        }
        daemon.follow_peers();
        if last_tick.elapsed() >= TICK {
            daemon.tick();
            last_tick = Instant::now();
        }
    }
    drop(api);
    if master {
        // Hand over: release the addresses and detach; the election thread
        // resigns as it stops (drop below), so the peer takes over at once.
        daemon.change_role(crate::ha::election::Role::Backup, &mut attachments);
    }
    drop(ha);
    drop(sync);
    // Withdrawn before anything stops forwarding: the routers move the
    // flows to the other nodes while this one still serves them.
    drop(daemon.announcer.take());

    if attachments.iter().all(|a| a.outlives_the_process()) && !attachments.is_empty() {
        info!(
            "stopping: the data plane keeps forwarding on {} without a daemon (health checks stop; backends stay as they are); `pnlb run` takes it over, `pnlb down` removes it",
            daemon.config.daemon.interfaces.join(", ")
        );
    } else {
        info!(
            "stopping: detaching from {}",
            daemon.config.daemon.interfaces.join(", ")
        );
    }
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
    document: document::DesiredDocument,
    config: Config,
    /// Backends drained through the API: weight 0 until undrained.
    drained: BTreeSet<BackendKey>,
    /// Bumped by every adopted change.
    version: u64,
    /// "file PATH" or "file PATH + API edits".
    source: String,
    /// Flows the sweep ended since failover sync last told the peers.
    ended: Vec<pnlb_dataplane::abi::FlowKey>,
    /// With [ha]: this node's slot names for the sync threads.
    names: Option<SharedNames>,
    dataplane: Dataplane,
    programmer: Programmer,
    next_hops: NextHops,
    monitor: Monitor,
    lifecycle: Lifecycle,
    /// The effective config last written to the maps.
    applied: Config,
    /// Services whose effective config may differ from `applied` (a
    /// health verdict came in, or a change waits its turn): worked out
    /// again on the next tick, they alone. A tick does not copy and compare
    /// the whole config (at 10,000 services that was a quarter of a core)
    /// and a verdict writes its service only (`Programmer::apply_services`).
    due: HashSet<String>,
    /// Services whose slow start is under way, and when it ends: until
    /// then each tick works out their weights again.
    ramps: HashMap<String, Instant>,
    /// `config.services` by name, for the health reports.
    service_index: HashMap<String, usize>,
    last_refresh: Instant,
    /// When the interfaces' own MACs were last published (OWN_MACS_EVERY).
    own_macs_at: Instant,
    last_ramp: Instant,
    /// Connection expiry, on its own thread.
    sweeping: Sweeping,
    pressure: PressureWatch,
    /// With a pinned data plane: this namespace's only daemon.
    _claim: Option<persistence::Claim>,
    /// The fingerprint of what the nodes behind the same VIPs must agree
    /// on (with the flow-hash seed in use), and what makes it.
    fingerprinter: fingerprint::Fingerprinter,
    /// With [bgp]: the announcer, and the node's drain when drained.
    announcer: Option<crate::bgp::Announcer>,
    node_drain: Option<crate::bgp::drain::NodeDrain>,
    /// With [bgp] peers: set once every peer's flows are learned; and the
    /// nodes as this one sees them.
    synced: Option<Arc<AtomicBool>>,
    mesh: Option<node::MeshView>,
}

impl Daemon {
    fn start(path: &Path, document: document::DesiredDocument, config: Config) -> Result<Self> {
        let pin_dir = persistence::pin_dir(&config)?;
        let claim = match pin_dir {
            Some(_) => Some(persistence::claim_instance()?),
            None => None,
        };
        let left_running = match &pin_dir {
            Some(dir) => pnlb_dataplane::pinning::pinned_meta(dir)?,
            None => None,
        };
        let seed = hash_seed::choose(&config, left_running.map(|m| m.hash_seed))?;
        info!("flow-hash seed: {}", seed.source);
        let dataplane = Dataplane::load_with(LoadOptions {
            conn_table_size: config.daemon.conn_table_size,
            conn_sync: config.ha.is_some()
                || config.bgp.as_ref().is_some_and(|bgp| !bgp.peers.is_empty()),
            hash_seed: seed.value,
            pin_dir: pin_dir.clone(),
            limits: Limits::of(&config.daemon),
        })?;
        let mut programmer = Programmer::adopt(&dataplane, &config)?;
        if let Some(dir) = &pin_dir {
            if dataplane.adopted() {
                let (services, backends) = programmer.slots_in_use();
                let (established, new) = dataplane.entries();
                info!(
                    "adopting the data plane left running in {}: {services} service(s), {backends} backend(s), {established} established and {new} half-open connection-table entries",
                    dir.display()
                );
            } else {
                info!(
                    "data plane pinned in {}: it outlives this process",
                    dir.display()
                );
            }
        }
        // Tended from the start: an adopted data plane left unattended
        // too long takes new flows again before it is programmed.
        dataplane.mark_tended(config.daemon.unattended_limit)?;
        let mut next_hops = NextHops::start();
        match pnlb_dataplane::nexthop::vlan_devices() {
            Some(devices) => dataplane.set_vlan_devices(&devices)?,
            None => {
                warning!("cannot read the VLAN devices yet (rtnetlink); the refresh tries again")
            }
        }
        let lifecycle = Lifecycle::default();
        let applied = lifecycle.effective(&config, Instant::now());
        log_report(&programmer.apply(&dataplane, &applied, &mut next_hops)?);
        let sweeping = Sweeping::start(dataplane.sweeper()?, config.timeouts)
            .context("starting the expiry thread")?;
        let now = Instant::now();
        let mut fingerprinter = fingerprint::Fingerprinter::new(seed.value);
        fingerprinter.of(&config);
        Ok(Self {
            fingerprinter,
            announcer: None,
            node_drain: None,
            synced: None,
            mesh: None,
            path: path.to_path_buf(),
            document,
            drained: BTreeSet::new(),
            version: 1,
            source: format!("file {}", path.display()),
            ended: Vec::new(),
            names: None,
            monitor: Monitor::start(&config),
            service_index: index_services(&config),
            config,
            dataplane,
            programmer,
            next_hops,
            lifecycle,
            applied,
            due: HashSet::new(),
            ramps: HashMap::new(),
            last_refresh: now,
            own_macs_at: now,
            last_ramp: now,
            sweeping,
            pressure: PressureWatch::default(),
            _claim: claim,
        })
    }

    fn tick(&mut self) {
        if let Err(err) = self
            .dataplane
            .mark_tended(self.config.daemon.unattended_limit)
        {
            warning!("marking the data plane tended: {err}");
        }
        let resets = self.health_reports();
        let hops_moved = self.next_hops.poll();
        if let Some(devices) = self.next_hops.take_vlan_devices() {
            if let Err(err) = self.dataplane.set_vlan_devices(&devices) {
                warning!("publishing VLAN devices: {err}");
            }
        }
        if let Some(neighbours) = self.next_hops.take_last_known() {
            if let Err(err) = self.dataplane.set_last_known_neighbours(&neighbours) {
                warning!("publishing the routers' last known MACs: {err}");
            }
        }
        let now = Instant::now();
        self.ramps.retain(|_, until| now < *until);
        if !self.due.is_empty() || !self.ramps.is_empty() {
            self.apply_due(now, !resets.is_empty());
        }
        if hops_moved {
            self.apply(self.applied.clone());
        }
        if self.own_macs_at.elapsed() >= OWN_MACS_EVERY {
            self.publish_own_macs();
            self.own_macs_at = Instant::now();
        }
        if self.last_refresh.elapsed() >= REFRESH_EVERY {
            self.next_hops.refresh();
            self.last_refresh = Instant::now();
        }
        for key in resets {
            self.flush(&key);
        }
        self.announce();
        // After each expiry pass (its own thread): what depends on the
        // counts it left.
        while let Ok(report) = self.sweeping.reports.try_recv() {
            match report {
                Ok(report) => {
                    if self.names.is_some() {
                        self.ended.extend(report.ended);
                    }
                }
                Err(err) => warning!("expiring idle connections: {err}"),
            }
            self.pressure
                .check(&self.dataplane, &self.programmer, &self.config);
            match self.programmer.reap(&self.dataplane) {
                Ok(freed) => freed.iter().for_each(|line| info!("{line}")),
                Err(err) => warning!("freeing removed backends: {err}"),
            }
        }
    }

    /// Works out the due and ramping services' effective configs and
    /// writes those that changed, when their turn has come (a backend going
    /// down, or `urgent`, at once; ramps every RAMP_EVERY). A service whose
    /// change waits stays due.
    fn apply_due(&mut self, now: Instant, urgent: bool) {
        let mut names: Vec<String> = self.due.drain().collect();
        names.extend(self.ramps.keys().cloned());
        names.sort_unstable();
        names.dedup();
        let mut changed: Vec<(usize, Service)> = Vec::new();
        for name in &names {
            let Some(&i) = self.service_index.get(name) else {
                continue;
            };
            let (Some(configured), Some(applied)) =
                (self.config.services.get(i), self.applied.services.get(i))
            else {
                continue;
            };
            let mut effective = configured.clone();
            self.drained_weights(&mut effective);
            self.lifecycle.effective_service(&mut effective, now);
            if effective != *applied {
                changed.push((i, effective));
            }
        }
        if changed.is_empty() {
            return;
        }
        let fell = changed.iter().any(|(i, new)| {
            self.applied
                .services
                .get(*i)
                .is_some_and(|old| weights_fell(new, old))
        });
        if !(urgent || fell || self.last_ramp.elapsed() >= RAMP_EVERY) {
            self.due
                .extend(changed.into_iter().map(|(_, service)| service.name));
            return;
        }
        let mut written = HashSet::new();
        for (i, service) in changed {
            written.insert(service.name.clone());
            self.applied.services[i] = service;
        }
        let named: HashSet<&str> = written.iter().map(String::as_str).collect();
        log_written(self.programmer.apply_services(
            &self.dataplane,
            &self.applied,
            &named,
            &mut self.next_hops,
        ));
        self.publish_names();
        self.last_ramp = now;
    }

    /// Takes the health reports; logs transitions once; returns the
    /// backends whose established flows must be reset.
    fn health_reports(&mut self) -> Vec<BackendKey> {
        let mut resets = Vec::new();
        while let Ok(report) = self.monitor.reports.try_recv() {
            let Some((service, check)) = self
                .service_index
                .get(&report.key.0)
                .and_then(|&i| self.config.services.get(i))
                .and_then(|s| {
                    let backend = s
                        .backends
                        .iter()
                        .find(|b| b.address == report.key.1 && b.port == report.key.2)?;
                    Some((s, backend.health.clone()?))
                })
            else {
                continue;
            };
            let now = Instant::now();
            let Some(event) = self
                .lifecycle
                .observe(report.key, &check, report.result, now)
            else {
                continue;
            };
            self.due.insert(service.name.clone());
            if event.transition == Transition::Up && !service.slow_start.is_zero() {
                // Its ramp, and one more turn for the last step.
                self.ramps
                    .insert(service.name.clone(), now + service.slow_start + RAMP_EVERY);
            }
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
        log_written(
            self.programmer
                .apply(&self.dataplane, &effective, &mut self.next_hops),
        );
        self.applied = effective;
        self.publish_names();
    }

    /// Failover sync translates flows with the slots as now programmed.
    fn publish_names(&self) {
        if let Some(names) = &self.names {
            names.publish(self.programmer.names());
        }
    }

    /// on_backend_down = "reset": the backend's flows are marked, so that
    /// each one's next packet goes to a live backend, which resets it.
    fn flush(&self, key: &BackendKey) {
        let Some(id) = self.programmer.backend_id(&key.0, key.1, key.2) else {
            return;
        };
        match self.dataplane.mark_backend_reset(id) {
            Ok(flushed) => info!(
                "service {}: {flushed} connection(s) of backend {} will be reset by their next packet",
                key.0,
                endpoint(key.1, key.2)
            ),
            Err(err) => warning!(
                "resetting flows of backend {}: {err}",
                endpoint(key.1, key.2)
            ),
        }
    }

    /// What the data plane should see now: drained backends at weight 0,
    /// then health and slow start.
    fn effective(&self, now: Instant) -> Config {
        let mut desired = self.config.clone();
        for service in &mut desired.services {
            self.drained_weights(service);
        }
        self.lifecycle.effective(&desired, now)
    }

    /// The service's drained backends at weight 0.
    fn drained_weights(&self, service: &mut Service) {
        if self.drained.is_empty() {
            return;
        }
        for backend in &mut service.backends {
            if self
                .drained
                .contains(&(service.name.clone(), backend.address, backend.port))
            {
                backend.weight = 0;
            }
        }
    }

    /// Applies a changed config file; an invalid one is rejected whole and
    /// the running one stays. API edits made since are replaced by the file.
    fn reload(&mut self) -> Result<Done, ApiError> {
        let (text, next) = config::load_text(&self.path)
            .map_err(|err| ApiError::new(422, err.to_string()).with_fix(err.fix.clone()))?;
        if next.daemon != self.config.daemon
            || next.ha != self.config.ha
            || next.bgp != self.config.bgp
        {
            warning!("reload: [daemon], [ha] and [bgp] changes need a restart; applying the rest");
        }
        self.fits(&next)?;
        self.source = format!("file {}", self.path.display());
        let document = document::DesiredDocument::parse(&self.path, text);
        let done = self.adopt(document, next, format!("reloaded {}", self.path.display()));
        Ok(done)
    }

    /// Makes `document` (already validated into `next`) the desired state.
    fn adopt(&mut self, document: document::DesiredDocument, next: Config, what: String) -> Done {
        let config = Config {
            daemon: self.config.daemon.clone(),
            ha: self.config.ha.clone(),
            bgp: self.config.bgp.clone(),
            timeouts: next.timeouts,
            services: next.services,
        };
        let old_document = std::mem::replace(&mut self.document, document);
        let old_config = std::mem::replace(&mut self.config, config);
        // Freeing them is not the loop's work: at 10,000 services it took
        // ~140 ms of an API edit's 0.8 s.
        std::thread::spawn(move || drop((old_document, old_config)));
        self.service_index = index_services(&self.config);
        self.lifecycle.retain(&self.config);
        self.sweeping.set_timeouts(&self.config.timeouts);
        self.fingerprinter.of(&self.config);
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
        self.apply(effective);
        self.next_hops.refresh();
        self.last_refresh = Instant::now();
        warn_without_forwarding(&self.config);
        self.done(what)
    }

    /// A change adopted: the next config version, logged.
    fn done(&mut self, what: String) -> Done {
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
}

/// Raises the soft limit on open files to the hard one, as systemd asks
/// of a program that needs many: the programmer keeps a descriptor per
/// scheduling table (to write it in place) within 5/8 of the soft limit,
/// which a shell leaves at 1,024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, for
    // this process.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn endpoint(address: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

/// A backend going down (or one more backend, a fallback) is written at
/// once; ramps up wait their turn.
fn weights_fell(new: &Service, old: &Service) -> bool {
    new.backends.len() != old.backends.len()
        || new
            .backends
            .iter()
            .zip(&old.backends)
            .any(|(n, o)| n.weight == 0 && o.weight != 0)
}

/// Each service's place in `config.services`, by name.
fn index_services(config: &Config) -> HashMap<String, usize> {
    config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect()
}

/// [`index_services`] after `name` was inserted at `at`: those after it
/// move up one.
fn index_added(index: &mut HashMap<String, usize>, name: &str, at: usize) {
    for i in index.values_mut().filter(|i| **i >= at) {
        *i += 1;
    }
    index.insert(name.to_string(), at);
}

/// [`index_services`] after `name` was removed from `at`: those after it
/// move down one.
fn index_removed(index: &mut HashMap<String, usize>, name: &str, at: usize) {
    index.remove(name);
    for i in index.values_mut().filter(|i| **i > at) {
        *i -= 1;
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

/// What an apply wrote, or why it could not.
fn log_written(written: Result<ApplyReport, pnlb_dataplane::DataplaneError>) {
    match written {
        Ok(report) => log_report(&report),
        Err(err) => warning!("programming the data plane: {err}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_shifted_by_an_edit_is_the_index_built_again() {
        let names = |list: &[&str]| -> HashMap<String, usize> {
            list.iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), i))
                .collect()
        };
        let mut index = names(&["a", "b", "c"]);
        index_added(&mut index, "d", 3);
        assert_eq!(index, names(&["a", "b", "c", "d"]));
        index_added(&mut index, "x", 1);
        assert_eq!(index, names(&["a", "x", "b", "c", "d"]));
        index_removed(&mut index, "a", 0);
        assert_eq!(index, names(&["x", "b", "c", "d"]));
        index_removed(&mut index, "c", 2);
        assert_eq!(index, names(&["x", "b", "d"]));
        index_removed(&mut index, "d", 2);
        assert_eq!(index, names(&["x", "b"]));
    }
}
