//! Backend lifecycle: health state per checked backend, and the config the
//! data plane should see because of it.
//!
//! - up (or not yet judged: backends start in service, as in keepalived
//!   without `alpha`): the configured weight, ramped by `slow_start` after
//!   a recovery;
//! - down: weight 0, so it leaves the scheduling table at once while its
//!   established flows stay (`on_backend_down = "keep"`) or are flushed by
//!   the daemon (`"reset"`);
//! - draining: a configured weight of 0, which this leaves alone;
//! - every backend of a service down: its `fallback`, if any, takes new flows.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Instant;

use pnlb_core::config::{Config, HealthCheck, Service};
use pnlb_core::health::{slow_start_weight, Health, HealthTracker, Transition};

use super::monitor::BackendKey;

struct BackendHealth {
    tracker: HealthTracker,
    up_since: Option<Instant>,
}

#[derive(Default)]
pub struct Lifecycle {
    backends: HashMap<BackendKey, BackendHealth>,
}

/// A transition to log once and act on.
pub struct Event {
    pub key: BackendKey,
    pub transition: Transition,
    pub transitions: u64,
    pub detail: String,
}

impl Lifecycle {
    /// Records one check result; returns the transition it caused, if any.
    pub fn observe(
        &mut self,
        key: BackendKey,
        check: &HealthCheck,
        result: Result<(), String>,
        now: Instant,
    ) -> Option<Event> {
        let entry = self
            .backends
            .entry(key.clone())
            .or_insert_with(|| BackendHealth {
                tracker: HealthTracker::new(check.rise, check.fall),
                up_since: None,
            });
        let was = entry.tracker.state();
        let transition = entry.tracker.observe(result.is_ok())?;
        let detail = match (transition, &result) {
            (Transition::Down, Err(why)) => {
                format!("{} failed check(s) in a row, last: {why}", check.fall)
            }
            _ => format!("{} successful check(s) in a row", check.rise),
        };
        // Recovering from down ramps up; the first verdict at startup does not.
        entry.up_since = (transition == Transition::Up && was == Health::Down).then_some(now);
        Some(Event {
            key,
            transition,
            transitions: entry.tracker.transitions,
            detail,
        })
    }

    /// Forgets backends that are no longer configured.
    pub fn retain(&mut self, config: &Config) {
        if self.backends.is_empty() {
            return;
        }
        // A set first: a scan of the config per checked backend was
        // quadratic (100,000 checked backends of 10,000 services).
        let configured: HashSet<(&str, IpAddr, u16)> = config
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(move |b| (s.name.as_str(), b.address, b.port))
            })
            .collect();
        self.backends.retain(|(service, address, port), _| {
            configured.contains(&(service.as_str(), *address, *port))
        });
    }

    /// Forgets the backends of service `name` that `service` (what it is
    /// now; `None` once removed) no longer has: a pass over the checked
    /// backends, without the set of every configured one [`Self::retain`]
    /// builds.
    pub fn retain_service(&mut self, name: &str, service: Option<&Service>) {
        self.backends.retain(|(of, address, port), _| {
            of != name
                || service.is_some_and(|s| {
                    s.backends
                        .iter()
                        .any(|b| b.address == *address && b.port == *port)
                })
        });
    }

    /// A backend's health and how many times it has changed.
    pub fn health(&self, key: &BackendKey) -> (Health, u64) {
        self.backends.get(key).map_or((Health::Unknown, 0), |b| {
            (b.tracker.state(), b.tracker.transitions)
        })
    }

    #[cfg(test)]
    pub fn state(&self, key: &BackendKey) -> Health {
        self.backends
            .get(key)
            .map_or(Health::Unknown, |b| b.tracker.state())
    }

    /// `config` as the data plane should see it now.
    pub fn effective(&self, config: &Config, now: Instant) -> Config {
        let mut effective = config.clone();
        for service in &mut effective.services {
            self.effective_service(service, now);
        }
        effective
    }

    /// One service of the config made as the data plane should see it now.
    pub fn effective_service(&self, service: &mut Service, now: Instant) {
        for backend in &mut service.backends {
            let key = (service.name.clone(), backend.address, backend.port);
            let Some(health) = self.backends.get(&key) else {
                continue;
            };
            backend.weight = match health.tracker.state() {
                Health::Down => 0,
                Health::Up | Health::Unknown => match health.up_since {
                    Some(since) => slow_start_weight(
                        backend.weight,
                        now.duration_since(since),
                        service.slow_start,
                    ),
                    None => backend.weight,
                },
            };
        }
        if service.backends.iter().all(|b| b.weight == 0) {
            if let Some(fallback) = service.fallback.clone() {
                let weight = fallback.weight.max(1);
                service
                    .backends
                    .push(pnlb_core::config::Backend { weight, ..fallback });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const CONFIG: &str = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "web"
vip = "10.77.100.1"
port = 80
slow_start = "10s"
[service.health]
kind = "tcp"
rise = 1
fall = 1
[service.fallback]
address = "10.77.1.99"
[[service.backend]]
address = "10.77.1.11"
weight = 10
[[service.backend]]
address = "10.77.1.12"
weight = 10
"#;

    fn key(last: u8) -> BackendKey {
        ("web".into(), format!("10.77.1.{last}").parse().unwrap(), 80)
    }

    fn weights(config: &Config) -> Vec<(String, u32)> {
        config.services[0]
            .backends
            .iter()
            .map(|b| (b.address.to_string(), b.weight))
            .collect()
    }

    #[test]
    fn down_backends_get_weight_zero_and_recover_with_slow_start() {
        let config = pnlb_core::config::parse(Path::new("t.toml"), CONFIG).unwrap();
        let check = config.services[0].backends[0].health.clone().unwrap();
        let mut life = Lifecycle::default();
        let t0 = Instant::now();
        assert_eq!(
            weights(&life.effective(&config, t0)),
            [("10.77.1.11".into(), 10), ("10.77.1.12".into(), 10)]
        );

        let event = life
            .observe(key(11), &check, Err("refused".into()), t0)
            .unwrap();
        assert_eq!(event.transition, Transition::Down);
        assert!(event.detail.contains("refused"));
        assert_eq!(weights(&life.effective(&config, t0))[0].1, 0);

        assert_eq!(
            life.observe(key(11), &check, Ok(()), t0)
                .unwrap()
                .transition,
            Transition::Up
        );
        assert_eq!(
            weights(&life.effective(&config, t0))[0].1,
            1,
            "slow start begins at a tenth"
        );
        assert_eq!(
            weights(&life.effective(&config, t0 + Duration::from_secs(5)))[0].1,
            5
        );
        assert_eq!(
            weights(&life.effective(&config, t0 + Duration::from_secs(11)))[0].1,
            10
        );
    }

    #[test]
    fn the_fallback_takes_over_only_when_every_backend_is_down() {
        let config = pnlb_core::config::parse(Path::new("t.toml"), CONFIG).unwrap();
        let check = config.services[0].backends[0].health.clone().unwrap();
        let mut life = Lifecycle::default();
        let now = Instant::now();
        life.observe(key(11), &check, Err("x".into()), now);
        assert_eq!(
            life.effective(&config, now).services[0].backends.len(),
            2,
            "one is still up"
        );
        life.observe(key(12), &check, Err("x".into()), now);
        let effective = life.effective(&config, now);
        assert_eq!(
            weights(&effective).last().unwrap(),
            &("10.77.1.99".to_string(), 1)
        );
    }

    #[test]
    fn removed_backends_are_forgotten() {
        let config = pnlb_core::config::parse(Path::new("t.toml"), CONFIG).unwrap();
        let check = config.services[0].backends[0].health.clone().unwrap();
        let mut life = Lifecycle::default();
        life.observe(key(11), &check, Err("x".into()), Instant::now());
        let smaller = pnlb_core::config::parse(
            Path::new("t.toml"),
            &CONFIG.replace("address = \"10.77.1.11\"", "address = \"10.77.1.13\""),
        )
        .unwrap();
        life.retain(&smaller);
        assert_eq!(life.state(&key(11)), Health::Unknown);
    }
}
