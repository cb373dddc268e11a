//! One checking thread per distinct probe: backends of several services
//! on the same server with the same check share one (10,000 services over
//! 1,000 servers are 1,000 probes, not 100,000 threads), and its result is
//! reported for each of them. Each thread waits its interval with up to
//! ±10% jitter (and a random first delay) so checks do not align, probes,
//! and reports the result to the daemon's loop. A reload replaces the
//! monitor; the old threads are woken at once and end (a probe under way
//! first runs to its timeout). Threads sleep until their next probe: a
//! wake-up every 50 ms to look for a stop cost 110,000 wake-ups a second
//! with 5,500 probes. A result the same as the last `max(rise, fall)` is
//! not reported: the daemon judges by streaks that long, so it would
//! change nothing (100,000 checked backends reported 50,000 results a
//! second to the daemon's loop, every one a repeat).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use pnlb_core::config::{CheckKind, Config, HealthCheck};

use super::exec::{identity_of, Identity};
use super::probe::probe;

/// A backend of a service: (service name, address, port).
pub type BackendKey = (String, IpAddr, u16);

pub struct Report {
    pub key: BackendKey,
    pub result: Result<(), String>,
}

pub struct Monitor {
    stop: Arc<Stop>,
    pub reports: Receiver<Report>,
}

/// Tells the checking threads to end, waking the ones asleep.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    signal: Condvar,
}

impl Stop {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.signal.notify_all();
    }

    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps until `deadline`; true if told to stop first.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = self
                .signal
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Monitor {
    /// Starts checking every backend of `config` that has a check. Exec
    /// checks run as daemon.exec_check_user (`pnlb run` has checked at
    /// start that it exists; one removed since fails the checks, logged).
    pub fn start(config: &Config) -> Self {
        let stop = Arc::new(Stop::default());
        let (sender, reports) = channel();
        let exec_as = match config.daemon.exec_check_user.as_deref().map(identity_of) {
            None => Ok(None),
            Some(Ok(identity)) => Ok(Some(identity)),
            Some(Err(err)) => Err(err),
        };
        for ((address, check), keys) in probes(config) {
            let (stop, sender, exec_as) = (stop.clone(), sender.clone(), exec_as.clone());
            std::thread::spawn(move || check_loop(address, keys, check, exec_as, &stop, &sender));
        }
        Self { stop, reports }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// The distinct probes of `config`, each with the backends it judges: a
/// probe depends on the address and the check alone (the check holds the
/// port it probes and its rise and fall).
fn probes(config: &Config) -> HashMap<(IpAddr, HealthCheck), Vec<BackendKey>> {
    let mut probes: HashMap<(IpAddr, HealthCheck), Vec<BackendKey>> = HashMap::new();
    for service in &config.services {
        for backend in &service.backends {
            let Some(check) = backend.health.clone() else {
                continue;
            };
            probes.entry((backend.address, check)).or_default().push((
                service.name.clone(),
                backend.address,
                backend.port,
            ));
        }
    }
    probes
}

fn check_loop(
    address: IpAddr,
    keys: Vec<BackendKey>,
    check: HealthCheck,
    exec_as: Result<Option<Identity>, String>,
    stop: &Stop,
    sender: &Sender<Report>,
) {
    let mut jitter = Jitter::seeded(&keys);
    let mut next = Instant::now() + check.interval.mul_f64(jitter.unit());
    let mut streak = Streak::new(check.rise.max(check.fall));
    loop {
        if stop.wait_until(next) {
            return;
        }
        let result = match (&check.kind, &exec_as) {
            (CheckKind::Exec { .. }, Err(err)) => Err(err.clone()),
            (_, exec_as) => probe(&check, address, exec_as.clone().ok().flatten()),
        };
        if stop.is_stopped() {
            return;
        }
        if streak.news(result.is_ok()) {
            for key in &keys {
                let report = Report {
                    key: key.clone(),
                    result: result.clone(),
                };
                if sender.send(report).is_err() {
                    return;
                }
            }
        }
        next += check.interval.mul_f64(0.9 + 0.2 * jitter.unit());
        next = next.max(Instant::now());
    }
}

/// Which results the daemon needs: every one until the same result has come
/// `max(rise, fall)` times in a row (enough for any verdict), then none
/// until it changes.
struct Streak {
    enough: u32,
    last: Option<bool>,
    length: u32,
}

impl Streak {
    fn new(enough: u32) -> Self {
        Self {
            enough,
            last: None,
            length: 0,
        }
    }

    /// Records a result; whether it is worth reporting.
    fn news(&mut self, ok: bool) -> bool {
        if self.last == Some(ok) {
            self.length = self.length.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.length = 1;
        }
        self.length <= self.enough
    }
}

/// xorshift64: enough randomness to keep checks from aligning.
struct Jitter(u64);

impl Jitter {
    fn seeded(key: &[BackendKey]) -> Self {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        SystemTime::now().hash(&mut hasher);
        Self(hasher.finish() | 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_result_is_reported_until_a_streak_is_long_enough_for_any_verdict() {
        // rise 2, fall 3
        let mut streak = Streak::new(3);
        let reported: Vec<bool> = [
            false, false, false, false, false, true, true, true, true, false, true,
        ]
        .iter()
        .map(|ok| streak.news(*ok))
        .collect();
        assert_eq!(
            reported,
            [true, true, true, false, false, true, true, true, false, true, true]
        );
    }

    #[test]
    fn a_sleeping_checker_wakes_at_once_when_stopped() {
        let stop = Arc::new(Stop::default());
        let far = Instant::now() + std::time::Duration::from_secs(60);
        let sleeper = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait_until(far))
        };
        assert!(!stop.wait_until(Instant::now() + std::time::Duration::from_millis(20)));
        stop.stop();
        assert!(
            sleeper.join().unwrap(),
            "woken by the stop, not the deadline"
        );
        assert!(stop.wait_until(far), "once stopped, no more sleeping");
    }

    #[test]
    fn services_on_the_same_server_with_the_same_check_share_one_probe() {
        let text = r#"
[daemon]
interfaces = ["eth0"]
[[service]]
name = "a"
vip = "10.77.100.1"
port = 80
[service.health]
kind = "tcp"
[[service.backend]]
address = "10.77.1.11"
[[service.backend]]
address = "10.77.1.12"
[[service]]
name = "b"
vip = "10.77.100.2"
port = 80
[service.health]
kind = "tcp"
[[service.backend]]
address = "10.77.1.11"
[[service]]
name = "c"
vip = "10.77.100.3"
port = 80
[service.health]
kind = "tcp"
port = 8080
[[service.backend]]
address = "10.77.1.11"
"#;
        let config = pnlb_core::config::parse(Path::new("t.toml"), text).unwrap();
        let probes = probes(&config);
        let mut judged: Vec<(IpAddr, u16, Vec<String>)> = probes
            .iter()
            .map(|((address, check), keys)| {
                let mut services: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
                services.sort();
                (*address, check.port, services)
            })
            .collect();
        judged.sort();
        let server = |last: u8| IpAddr::from([10, 77, 1, last]);
        assert_eq!(
            judged,
            vec![
                (server(11), 80, vec!["a".into(), "b".into()]),
                (server(11), 8080, vec!["c".into()]),
                (server(12), 80, vec!["a".into()]),
            ]
        );
    }
}
