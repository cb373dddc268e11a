//! Connection expiry on a thread of its own: a pass over the tables walks
//! every entry (a second or more at a million), and the daemon loop — API
//! calls, health, role changes and the failover watchdog's heartbeat — must
//! not wait for it. The loop takes each pass's report when it comes (the
//! flows that ended, for failover sync) and gives the thread the timeouts
//! a reload sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pnlb_core::config::Timeouts;
use pnlb_dataplane::conntrack::{SweepReport, Sweeper};

/// How often idle connections are expired (timeouts hold to within this).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How soon the thread notices a stop.
const NAP: Duration = Duration::from_millis(100);

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
            std::thread::spawn(move || {
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(NAP);
                    if last.elapsed() < SWEEP_EVERY {
                        continue;
                    }
                    last = Instant::now();
                    let timeouts = match timeouts.lock() {
                        Ok(timeouts) => *timeouts,
                        Err(poisoned) => *poisoned.into_inner(),
                    };
                    let report = sweeper
                        .sweep_connections(&timeouts)
                        .map_err(|err| err.to_string());
                    if sender.send(report).is_err() {
                        return;
                    }
                }
            })
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
