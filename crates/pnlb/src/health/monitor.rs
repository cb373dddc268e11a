//! One checking thread per distinct probe: backends of several services
//! on the same server with the same check share one (10,000 services over
//! 1,000 servers are 1,000 probes, not 100,000 threads), and its result is
//! reported for each of them. Each thread waits its interval with up to
//! ±10% jitter (and a random first delay) so checks do not align, probes,
//! and reports the result to the daemon's loop. A reload replaces the
//! monitor; the old threads are woken at once and end (a probe under way
//! first runs to its timeout). An API edit of one service changes only
//! its backends' probes: a probe that loses its last backend ends, a new
//! one starts, the rest go on (restarting 5,500 probes per edit was what
//! an edit at 10,000 services would have cost). Threads sleep until their
//! next probe: a wake-up every 50 ms to look for a stop cost 110,000
//! wake-ups a second with 5,500 probes. A result the same as the last `max(rise, fall)` is
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

use pnlb_core::config::{CheckKind, Config, HealthCheck, Service};

use super::exec::{identity_of, Identity};
use super::probe::probe;

/// A backend of a service: (service name, address, port).
pub type BackendKey = (String, IpAddr, u16);

pub struct Report {
    pub key: BackendKey,
    pub result: Result<(), String>,
}

pub struct Monitor {
    probes: HashMap<ProbeKey, Arc<Probe>>,
    exec_as: Result<Option<Identity>, String>,
    sender: Sender<Report>,
    /// False in tests of the bookkeeping: no thread, no packet.
    checking: bool,
    pub reports: Receiver<Report>,
}

/// A probe depends on the address and the check alone (the check holds
/// the port it probes and its rise and fall).
type ProbeKey = (IpAddr, HealthCheck);

/// What a checking thread shares with the monitor: its stop, and the
/// backends its result is reported for.
#[derive(Default)]
struct Probe {
    stop: Stop,
    judged: Mutex<Judged>,
}

#[derive(Default)]
struct Judged {
    keys: Vec<BackendKey>,
    /// Backends were added since the last report: they need every result
    /// until a streak is long enough, as at the start.
    added: bool,
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
        Self::with(config, true)
    }

    fn with(config: &Config, checking: bool) -> Self {
        let (sender, reports) = channel();
        let exec_as = match config.daemon.exec_check_user.as_deref().map(identity_of) {
            None => Ok(None),
            Some(Ok(identity)) => Ok(Some(identity)),
            Some(Err(err)) => Err(err),
        };
        let mut monitor = Self {
            probes: HashMap::new(),
            exec_as,
            sender,
            checking,
            reports,
        };
        for (probe, keys) in probes(config.services.iter()) {
            monitor.start_probe(probe, keys);
        }
        monitor
    }

    /// One service changed (`before` -> `after`; `None` where it was added
    /// or removed): its backends' probes follow, the others are untouched.
    pub fn change_service(&mut self, before: Option<&Service>, after: Option<&Service>) {
        let before = probes(before.into_iter());
        let after = probes(after.into_iter());
        for (probe, keys) in &before {
            let kept: &[BackendKey] = after.get(probe).map_or(&[], Vec::as_slice);
            let Some(running) = self.probes.get(probe) else {
                continue;
            };
            let mut judged = running
                .judged
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            judged
                .keys
                .retain(|key| !keys.contains(key) || kept.contains(key));
            if judged.keys.is_empty() {
                drop(judged);
                running.stop.stop();
                self.probes.remove(probe);
            }
        }
        for (probe, keys) in after {
            let had: &[BackendKey] = before.get(&probe).map_or(&[], Vec::as_slice);
            let new: Vec<BackendKey> = keys.into_iter().filter(|k| !had.contains(k)).collect();
            if new.is_empty() {
                continue;
            }
            match self.probes.get(&probe) {
                Some(running) => {
                    let mut judged = running
                        .judged
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    judged.keys.extend(new);
                    judged.added = true;
                }
                None => self.start_probe(probe, new),
            }
        }
    }

    fn start_probe(&mut self, key: ProbeKey, keys: Vec<BackendKey>) {
        let probe = Arc::new(Probe {
            stop: Stop::default(),
            judged: Mutex::new(Judged { keys, added: false }),
        });
        if self.checking {
            let (address, check) = key.clone();
            let (shared, sender, exec_as) =
                (probe.clone(), self.sender.clone(), self.exec_as.clone());
            std::thread::spawn(move || check_loop(address, check, exec_as, &shared, &sender));
        }
        self.probes.insert(key, probe);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for probe in self.probes.values() {
            probe.stop.stop();
        }
    }
}

/// The distinct probes of `services`, each with the backends it judges.
fn probes<'a>(services: impl Iterator<Item = &'a Service>) -> HashMap<ProbeKey, Vec<BackendKey>> {
    let mut probes: HashMap<ProbeKey, Vec<BackendKey>> = HashMap::new();
    for service in services {
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
    check: HealthCheck,
    exec_as: Result<Option<Identity>, String>,
    shared: &Probe,
    sender: &Sender<Report>,
) {
    let mut jitter = Jitter::seeded(&(address, &check));
    let mut next = Instant::now() + check.interval.mul_f64(jitter.unit());
    let enough = check.rise.max(check.fall);
    let mut streak = Streak::new(enough);
    loop {
        if shared.stop.wait_until(next) {
            return;
        }
        let result = match (&check.kind, &exec_as) {
            (CheckKind::Exec { .. }, Err(err)) => Err(err.clone()),
            (_, exec_as) => probe(&check, address, exec_as.clone().ok().flatten()),
        };
        if shared.stop.is_stopped() {
            return;
        }
        let mut judged = shared.judged.lock().unwrap_or_else(PoisonError::into_inner);
        if std::mem::take(&mut judged.added) {
            streak = Streak::new(enough);
        }
        if streak.news(result.is_ok()) {
            for key in &judged.keys {
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
    fn seeded(key: &impl Hash) -> Self {
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

    const SHARED: &str = r#"
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

    #[test]
    fn services_on_the_same_server_with_the_same_check_share_one_probe() {
        let config = pnlb_core::config::parse(Path::new("t.toml"), SHARED).unwrap();
        let probes = probes(config.services.iter());
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

    /// (server's last byte, probed port, services judged), sorted.
    fn roster(monitor: &Monitor) -> Vec<(u8, u16, Vec<String>)> {
        let mut roster: Vec<(u8, u16, Vec<String>)> = monitor
            .probes
            .iter()
            .map(|((address, check), probe)| {
                let judged = probe.judged.lock().unwrap();
                let mut services: Vec<String> = judged.keys.iter().map(|k| k.0.clone()).collect();
                services.sort();
                let last = match address {
                    IpAddr::V4(v4) => v4.octets()[3],
                    IpAddr::V6(v6) => v6.octets()[15],
                };
                (last, check.port, services)
            })
            .collect();
        roster.sort();
        roster
    }

    #[test]
    fn a_changed_service_moves_only_its_own_backends_between_probes() {
        let config = pnlb_core::config::parse(Path::new("t.toml"), SHARED).unwrap();
        let mut monitor = Monitor::with(&config, false);
        let [a, b, _] = &config.services[..] else {
            panic!("three services")
        };
        let shared =
            monitor.probes[&(a.backends[0].address, a.backends[0].health.clone().unwrap())].clone();
        // a loses 10.77.1.11: the probe it shared with b goes on for b.
        let mut a2 = a.clone();
        a2.backends.remove(0);
        monitor.change_service(Some(a), Some(&a2));
        assert_eq!(
            roster(&monitor),
            vec![
                (11, 80, vec!["b".into()]),
                (11, 8080, vec!["c".into()]),
                (12, 80, vec!["a".into()]),
            ]
        );
        assert!(!shared.stop.is_stopped(), "b's probe was not restarted");
        // b removed: the probe has no backend left and ends.
        monitor.change_service(Some(b), None);
        assert!(shared.stop.is_stopped());
        assert_eq!(roster(&monitor).len(), 2);
        // a takes 10.77.1.12 on port 8080's check's server: joins c's probe,
        // which reports every result again until a streak is long enough.
        let mut a3 = a2.clone();
        a3.backends[0].address = IpAddr::from([10, 77, 1, 11]);
        a3.backends[0].health = config.services[2].backends[0].health.clone();
        monitor.change_service(Some(&a2), Some(&a3));
        assert_eq!(
            roster(&monitor),
            vec![(11, 8080, vec!["a".into(), "c".into()])]
        );
        let joined = &monitor.probes.values().next().unwrap().judged;
        assert!(joined.lock().unwrap().added);
        // The same service again changes nothing.
        monitor.change_service(Some(&a3), Some(&a3));
        assert_eq!(
            roster(&monitor),
            vec![(11, 8080, vec!["a".into(), "c".into()])]
        );
    }
}
