//! `[bgp]`: this node announces the VIPs it can serve through BIRD, which
//! speaks BGP (and BFD) to the routers; the routers spread flows over every
//! node that announces a VIP (ECMP). pnlb decides what is announced
//! (docs/scale-out.md):
//!
//! - a VIP while one of its services has a usable backend (up, not
//!   drained, or its fallback), the data plane's maps are readable and the
//!   daemon loop turns (a watchdog here, on its own thread: a loop stalled
//!   for 2 s withdraws everything);
//! - nothing while the node is drained (`pnlb ctl drain-node`) and from
//!   the moment it stops.
//!
//! With connection sync, what the daemon wants reaches BIRD a second
//! after the other nodes hear of it (run/node.rs, `hand_off`).
//!
//! The announcer runs on a thread of its own, so a slow BIRD never holds
//! the daemon loop; a change BIRD refused or could not be told about is
//! tried again every second.

pub mod bird;
pub mod drain;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnlb_core::config::{Bgp, Config};

use crate::ha::{monotonic_ms, Heartbeat};
use crate::log::{info, warning};

/// How often the announcer looks at what is wanted.
const TURN: Duration = Duration::from_millis(50);
/// A failed change is tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the daemon wants announced: the VIPs, and why each other one is not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub vips: BTreeSet<IpAddr>,
    pub withdrawn: BTreeMap<IpAddr, String>,
}

impl Wanted {
    /// From the effective config (down and drained backends at weight 0,
    /// a fallback in when every backend is down): a VIP is wanted while
    /// one of its services has a backend with weight.
    pub fn of(effective: &Config) -> Self {
        let mut wanted = Wanted::default();
        let mut idle: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
        for service in &effective.services {
            if service.backends.iter().any(|b| b.weight > 0) {
                wanted.vips.insert(service.vip);
            } else {
                idle.entry(service.vip).or_default().push(&service.name);
            }
        }
        for (vip, services) in idle {
            if !wanted.vips.contains(&vip) {
                let reason = format!(
                    "no usable backend in service {} (down, drained or weight 0)",
                    services.join(", ")
                );
                wanted.withdrawn.insert(vip, reason);
            }
        }
        wanted
    }

    /// Every VIP withdrawn, for `reason`.
    pub fn none(effective: &Config, reason: &str) -> Self {
        let withdrawn = effective
            .services
            .iter()
            .map(|s| (s.vip, reason.to_string()))
            .collect();
        Wanted {
            vips: BTreeSet::new(),
            withdrawn,
        }
    }
}

/// What is announced now, for the API.
#[derive(Clone, Debug, Default)]
pub struct Announced {
    pub vips: BTreeSet<IpAddr>,
    pub withdrawn: BTreeMap<IpAddr, String>,
    /// The last change BIRD refused or could not be told about, until one
    /// goes through.
    pub error: Option<String>,
}

struct Shared {
    wanted: Mutex<Option<Wanted>>,
    announced: Mutex<Announced>,
    heartbeat: Heartbeat,
    stop: AtomicBool,
}

/// The announcer thread; dropping it withdraws every VIP and stops it.
pub struct Announcer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Announcer {
    /// Starts announcing through BIRD as `bgp` says; nothing is announced
    /// before the first [`Self::want`].
    pub fn start(bgp: &Bgp) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            wanted: Mutex::new(None),
            announced: Mutex::new(Announced::default()),
            heartbeat: Heartbeat::new(monotonic_ms()),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            let bgp = bgp.clone();
            std::thread::Builder::new()
                .name("pnlb-bgp".into())
                .spawn(move || announce(&bgp, &shared))?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// What the daemon wants announced now; also its loop's heartbeat.
    pub fn want(&self, wanted: Wanted) {
        self.shared.heartbeat.beat(monotonic_ms());
        if let Ok(mut slot) = self.shared.wanted.lock() {
            *slot = Some(wanted);
        }
    }

    /// What is announced now.
    pub fn announced(&self) -> Announced {
        self.shared
            .announced
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

/// The thread: publishes what is wanted whenever it differs from what BIRD
/// was last given; withdraws everything when the loop stalls and at stop.
fn announce(bgp: &Bgp, shared: &Shared) {
    let mut given: Option<BTreeSet<IpAddr>> = None;
    let mut failed_at: Option<Instant> = None;
    let mut last_error = String::new();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(TURN);
        let Some(mut wanted) = shared.wanted.lock().ok().and_then(|w| w.clone()) else {
            continue;
        };
        if !shared.heartbeat.alive(monotonic_ms()) {
            let reason = "the daemon loop stalled (watchdog)".to_string();
            wanted
                .withdrawn
                .extend(wanted.vips.iter().map(|vip| (*vip, reason.clone())));
            wanted.vips.clear();
        }
        let retry_due = failed_at.is_some_and(|at| at.elapsed() >= RETRY_EVERY);
        if given.as_ref() == Some(&wanted.vips) && !retry_due {
            if let Ok(mut announced) = shared.announced.lock() {
                announced.withdrawn = wanted.withdrawn;
            }
            continue;
        }
        if failed_at.is_some() && !retry_due {
            continue;
        }
        match publish(bgp, &wanted.vips) {
            Ok(()) => {
                log_change(given.as_ref(), &wanted);
                given = Some(wanted.vips.clone());
                failed_at = None;
                last_error.clear();
                if let Ok(mut announced) = shared.announced.lock() {
                    *announced = Announced {
                        vips: wanted.vips,
                        withdrawn: wanted.withdrawn,
                        error: None,
                    };
                }
            }
            Err(err) => {
                if err != last_error {
                    warning!("bgp: {err}; trying again every second");
                    last_error = err.clone();
                }
                failed_at = Some(Instant::now());
                if let Ok(mut announced) = shared.announced.lock() {
                    announced.error = Some(err);
                }
            }
        }
    }
    if given.as_ref().is_some_and(|vips| !vips.is_empty()) {
        match publish(bgp, &BTreeSet::new()) {
            Ok(()) => info!("bgp: stopping: every VIP withdrawn"),
            Err(err) => warning!("bgp: stopping: could not withdraw the VIPs: {err}"),
        }
    }
}

/// Writes the routes file for `vips` and has BIRD read it.
fn publish(bgp: &Bgp, vips: &BTreeSet<IpAddr>) -> Result<(), String> {
    bird::write_routes(&bgp.routes_file, &bird::routes_file(vips))?;
    bird::configure(&bgp.bird_socket).map(|_| ())
}

fn log_change(before: Option<&BTreeSet<IpAddr>>, now: &Wanted) {
    let empty = BTreeSet::new();
    let before = before.unwrap_or(&empty);
    let list = |vips: Vec<&IpAddr>| {
        vips.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let added: Vec<&IpAddr> = now.vips.difference(before).collect();
    if !added.is_empty() {
        info!("bgp: announcing {}", list(added));
    }
    for vip in before.difference(&now.vips) {
        let reason = now
            .withdrawn
            .get(vip)
            .map_or("no service has it", String::as_str);
        info!("bgp: withdrawing {vip}: {reason}");
    }
}
