//! Processes the lab starts inside its namespaces: output captured line by
//! line, ended by their own PID when the handle is dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::LabError;

pub struct LabProcess {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl LabProcess {
    /// Starts `program args...` inside namespace `ns`.
    pub fn spawn(ns: &str, name: &str, program: &str, args: &[&str]) -> Result<Self, LabError> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| LabError::Command {
                command: format!("{program} in {ns}"),
                reason: err.to_string(),
            })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(capture(out, lines.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(capture(err, lines.clone()));
        }
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
            readers,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything it printed so far (stdout and stderr, interleaved by line).
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits until a printed line contains `needle`; fails if the process
    /// exits first or time runs out.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().find(|l| l.contains(needle)) {
                return Ok(line);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                sleep(Duration::from_millis(100));
                return Err(LabError::Process {
                    name: self.name.clone(),
                    reason: format!(
                        "exited ({status}) before printing {needle:?}; output:\n{}",
                        self.output().join("\n")
                    ),
                });
            }
            if Instant::now() > deadline {
                return Err(LabError::Process {
                    name: self.name.clone(),
                    reason: format!(
                        "did not print {needle:?} within {timeout:?}; output:\n{}",
                        self.output().join("\n")
                    ),
                });
            }
            sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on our own child's PID.
        unsafe {
            libc::kill(self.pid(), signal);
        }
    }

    /// Sends SIGTERM and waits (up to `timeout`, then SIGKILL). Returns the
    /// exit status and the complete output.
    pub fn stop(mut self, timeout: Duration) -> (Option<ExitStatus>, Vec<String>) {
        let status = self.terminate(timeout);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        (status, self.output())
    }

    fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

fn capture(
    stream: impl Read + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut all) = lines.lock() {
                all.push(line);
            }
        }
    })
}
