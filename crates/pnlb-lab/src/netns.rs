//! Network namespaces: create, run commands in, run Rust code in, delete.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

use crate::LabError;

/// Runs a command and turns a failure into an error that shows it.
pub fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: err.to_string(),
        })?;
    if !output.status.success() {
        return Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// `ip -n NS ARGS...`
pub fn ip(ns: &str, args: &[&str]) -> Result<Output, LabError> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// `ip netns exec NS PROGRAM ARGS...`
pub fn exec(ns: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", &all)
}

pub fn add(ns: &str) -> Result<(), LabError> {
    run("ip", &["netns", "add", ns])?;
    // No duplicate address detection: the lab's addresses are unique, and
    // while a fresh interface's link-local address is tentative (about a
    // second) the first IPv6 packets to a new neighbour are lost.
    exec(
        ns,
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ],
    )?;
    ip(ns, &["link", "set", "lo", "up"])?;
    Ok(())
}

pub fn delete(ns: &str) {
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

pub fn exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}

/// Namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// PIDs of the processes living in a namespace.
pub fn pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a thread that has entered namespace `ns`. Sockets created
/// there stay in `ns` and can be used from any thread afterwards.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    spawn_in_netns(ns, f)?
        .join()
        .map_err(|_| LabError::Command {
            command: "thread in namespace".into(),
            reason: "panicked".into(),
        })?
}

/// Starts `f` on a thread that has entered namespace `ns` and returns at
/// once: for work that must stay in the namespace for a while (holding an
/// XDP attachment, whose interface index only means something there).
pub fn spawn_in_netns<T, F>(
    ns: &str,
    f: F,
) -> Result<std::thread::JoinHandle<Result<T, LabError>>, LabError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|err| LabError::Command {
        command: format!("open {path}"),
        reason: err.to_string(),
    })?;
    Ok(std::thread::spawn(move || {
        // SAFETY: setns on this thread only; the fd is valid for the call.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(LabError::Command {
                command: format!("setns {path}"),
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(f())
    }))
}
