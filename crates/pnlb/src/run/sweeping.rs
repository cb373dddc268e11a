//! Connection expiry on a thread of its own: a pass over the tables walks
//! every entry (a second or more of CPU at a million), and the daemon loop
//! — API calls, health, role changes and the failover watchdog's heartbeat
//! — must not wait for it. The pass is spread over its period in steps
//! (one every STEP, each a share of the entries the last pass saw), so it
//! takes a little CPU all the time rather than a core in bursts, which the
//! traffic would feel as latency spikes. The loop takes each pass's report
//! when it comes (the flows that ended, for failover sync) and gives the
//! thread the timeouts a reload sets.
//!
//! The thread runs in the kernel's idle scheduling class (SCHED_IDLE):
//! a process the traffic wakes (a server, a proxy on the same host) takes
//! the core from it at once, where a normal thread keeps it to the end of
//! its slice. Steps of 1-4 ms on end were the daemon's share of the c=1
//! latency tail (docs/benchmarks.md). A pass that runs past twice its
//! period (the cores busy with other work) finishes in the normal class,
//! so expiry never starves.
//!
//! The period is 5 s while the tables are small. A large table of flows
//! that mostly go on is walked at WALK_PER_SECOND (so the daemon's CPU
//! stops growing with the table), in up to 30 s; a table more than half
//! full or whose flows end fast is walked every 5 s again (as the kernel's
//! conntrack collector scans faster when it finds much to expire).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnlb_core::config::Timeouts;
use pnlb_dataplane::conntrack::{monotonic_ns, SweepPass, SweepReport, Sweeper};

use crate::log::info;

/// How often idle connections are expired at most (timeouts hold to
/// within this while the tables are small, full or churning).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often they are expired at least (timeouts hold to within this).
const SWEEP_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// Entries a second a pass walks when it need not hurry: ~40 ms of CPU a
/// second at ~0.4 us an entry (the batch reads' copy). Up to 500,000
/// entries that is a pass every 5 s, as before.
const WALK_PER_SECOND: usize = 100_000;
/// A step of a pass every STEP (and how soon the thread notices a stop).
const STEP: Duration = Duration::from_millis(100);
/// Entries a step walks at least (one batch).
const MIN_STEP: usize = 4096;

pub struct Sweeping {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    timeouts: Arc<Mutex<Timeouts>>,
    /// One report per pass (or why it failed).
    pub reports: mpsc::Receiver<Result<SweepReport, String>>,
}

impl Drop for Sweeping {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Sweeping {
    pub fn start(sweeper: Sweeper, timeouts: Timeouts) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let timeouts = Arc::new(Mutex::new(timeouts));
        let (sender, reports) = mpsc::channel();
        let thread = {
            let (stop, timeouts) = (stop.clone(), timeouts.clone());
            std::thread::Builder::new()
                .name("pnlb-sweep".into())
                .spawn(move || sweep_in_steps(&sweeper, &stop, &timeouts, &sender))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            timeouts,
            reports,
        })
    }

    /// The timeouts of the next passes.
    pub fn set_timeouts(&self, timeouts: &Timeouts) {
        if let Ok(mut current) = self.timeouts.lock() {
            *current = *timeouts;
        }
    }
}

/// A pass every SWEEP_EVERY, walked a step every STEP, each report sent
/// on; until `stop` or the daemon stops listening.
fn sweep_in_steps(
    sweeper: &Sweeper,
    stop: &AtomicBool,
    timeouts: &Mutex<Timeouts>,
    reports: &mpsc::Sender<Result<SweepReport, String>>,
) {
    let capacity = sweeper.established_capacity();
    let mut period = SWEEP_EVERY;
    let mut began = Instant::now();
    let mut pass: Option<SweepPass> = None;
    let mut idle_class = enter_idle_class(true);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEP);
        if idle_class
            && pass.is_some()
            && overdue(began.elapsed(), period)
            && enter_idle_class(false)
        {
            idle_class = false;
            info!("expiry is behind (the CPUs are busy): this pass goes on at normal priority");
        }
        if pass.is_none() && began.elapsed() >= period {
            began = Instant::now();
            match sweeper.begin_pass() {
                Ok(started) => pass = Some(started),
                Err(err) => {
                    if reports.send(Err(err.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
        let Some(current) = pass.as_mut() else {
            continue;
        };
        // The pass in as many steps as its period has.
        let steps = (period.as_millis() / STEP.as_millis()).max(1) as usize;
        let step = (current.expected_entries() / steps).max(MIN_STEP);
        let timeouts = *timeouts.lock().unwrap_or_else(PoisonError::into_inner);
        let done = match sweeper.step(current, &timeouts, monotonic_ns(), step) {
            Ok(None) => continue,
            Ok(Some(report)) => {
                period = next_period(&report, capacity);
                Ok(report)
            }
            Err(err) => Err(err.to_string()),
        };
        pass = None;
        if !idle_class {
            idle_class = enter_idle_class(true);
        }
        if reports.send(done).is_err() {
            return;
        }
    }
}

/// Whether a pass begun `elapsed` ago runs too late for its `period`.
fn overdue(elapsed: Duration, period: Duration) -> bool {
    elapsed > period * 2
}

/// Moves the calling thread into the idle scheduling class (`true`) or
/// the normal one; whether it took.
fn enter_idle_class(idle: bool) -> bool {
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; param is a valid sched_param
    // (priority 0, as both classes require).
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// The period until the next pass, from what the last one saw: every 5 s
/// while it walked few entries, found many ended (an eighth of what it
/// walked) or left the established table more than half full (a slower
/// sweep must never be why admission, at fifteen sixteenths, refuses new
/// flows); otherwise its entries at WALK_PER_SECOND, up to 30 s.
fn next_period(last: &SweepReport, established_capacity: usize) -> Duration {
    let walked = last.established + last.new + last.expired;
    let churning = last.expired * 8 > walked;
    let filling = last.established * 2 > established_capacity;
    if churning || filling {
        return SWEEP_EVERY;
    }
    let unhurried = Duration::from_secs_f64(walked as f64 / WALK_PER_SECOND as f64);
    unhurried.clamp(SWEEP_EVERY, SWEEP_AT_LEAST_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(established: usize, new: usize, expired: usize) -> SweepReport {
        SweepReport {
            established,
            new,
            expired,
            ..SweepReport::default()
        }
    }

    #[test]
    fn a_large_quiet_table_is_walked_at_a_steady_rate() {
        let capacity = 4 << 20;
        // Up to 500,000 entries: every 5 s, as always.
        assert_eq!(
            next_period(&report(10_000, 500, 100), capacity),
            SWEEP_EVERY
        );
        assert_eq!(next_period(&report(500_000, 0, 0), capacity), SWEEP_EVERY);
        // Two million established entries: 100,000 a second, in 20 s.
        assert_eq!(
            next_period(&report(2_000_000, 0, 1_000), capacity),
            Duration::from_secs_f64(20.01)
        );
        // Never longer than 30 s.
        assert_eq!(
            next_period(&report(2_000_000, 1_000_000, 0), 8 << 20),
            SWEEP_AT_LEAST_EVERY
        );
    }

    #[test]
    fn a_pass_past_twice_its_period_is_overdue() {
        let period = Duration::from_secs(5);
        assert!(!overdue(Duration::from_secs(9), period));
        assert!(!overdue(Duration::from_secs(10), period));
        assert!(overdue(Duration::from_millis(10_100), period));
    }

    #[test]
    fn a_table_that_churns_or_fills_is_walked_every_five_seconds() {
        let capacity = 4 << 20;
        // An eighth of what was walked had ended.
        assert_eq!(
            next_period(&report(1_500_000, 100_000, 300_000), capacity),
            SWEEP_EVERY
        );
        // More than half of the established table in use.
        assert_eq!(next_period(&report(2_200_000, 0, 0), capacity), SWEEP_EVERY);
    }
}
