//! Connection expiry on a thread of its own: a pass over the tables walks
//! every entry (a second or more of CPU at a million), and the daemon loop
//! — API calls, health, role changes and the failover watchdog's heartbeat
//! — must not wait for it. The pass is spread over its period in steps
//! (one every STEP, each a share of the entries the last pass saw), so it
//! takes a little CPU all the time rather than a core in bursts, which the
//! traffic would feel as latency spikes. The loop takes each pass's report
//! when it comes (the flows that ended, for failover sync) and gives the
//! thread the timeouts a reload sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnlb_core::config::Timeouts;
use pnlb_dataplane::conntrack::{monotonic_ns, SweepPass, SweepReport, Sweeper};

/// How often idle connections are expired (timeouts hold to within this).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
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
    pub fn start(sweeper: Sweeper, timeouts: Timeouts) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let timeouts = Arc::new(Mutex::new(timeouts));
        let (sender, reports) = mpsc::channel();
        let thread = {
            let (stop, timeouts) = (stop.clone(), timeouts.clone());
            std::thread::spawn(move || sweep_in_steps(&sweeper, &stop, &timeouts, &sender))
        };
        Self {
            stop,
            thread: Some(thread),
            timeouts,
            reports,
        }
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
    let steps = (SWEEP_EVERY.as_millis() / STEP.as_millis()).max(1) as usize;
    let mut began = Instant::now();
    let mut pass: Option<SweepPass> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(STEP);
        if pass.is_none() && began.elapsed() >= SWEEP_EVERY {
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
        // The pass in as many steps as a period has.
        let step = (current.expected_entries() / steps).max(MIN_STEP);
        let timeouts = *timeouts.lock().unwrap_or_else(PoisonError::into_inner);
        let done = match sweeper.step(current, &timeouts, monotonic_ns(), step) {
            Ok(None) => continue,
            Ok(Some(report)) => Ok(report),
            Err(err) => Err(err.to_string()),
        };
        pass = None;
        if reports.send(done).is_err() {
            return;
        }
    }
}
