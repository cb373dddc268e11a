//! Exec health checks: a command run per backend, which says healthy by
//! exiting 0. It runs as `daemon.exec_check_user` when that is set (the
//! daemon keeps its own privileges to itself), in a process group of its
//! own, so that a check cut off at its timeout takes everything it started
//! with it.

use std::ffi::CString;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Who checks run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// The user `name` as the system knows it.
pub fn identity_of(name: &str) -> Result<Identity, String> {
    let c_name = CString::new(name).map_err(|_| format!("{name:?} is not a user name"))?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: valid pointers to a NUL-terminated name, an entry, a buffer of
    // the given length and the result pointer, all living past the call.
    let err = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if err != 0 || found.is_null() {
        return Err(format!(
            "daemon.exec_check_user: no user {name:?} on this host; create it (`useradd --system --no-create-home {name}`) or name another, e.g. \"nobody\""
        ));
    }
    Ok(Identity {
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

/// daemon.exec_check_dir must be root's and writable by no one else:
/// otherwise whoever may write there chooses what the checks run.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|err| {
        format!(
            "daemon.exec_check_dir {}: {err}; create it: `install -d -o root -m 755 {}`",
            dir.display(),
            dir.display()
        )
    })?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "daemon.exec_check_dir {}: not a directory owned by root and writable by root alone (owner {}, mode {:04o}); `chown root: {} && chmod 755 {}`",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            dir.display(),
            dir.display()
        ));
    }
    Ok(())
}

/// Runs `command` for the backend at `address:port`; Ok if it exits 0
/// within `timeout`. Past it, the check's whole process group is killed.
pub fn run(
    command: &[String],
    address: IpAddr,
    port: u16,
    timeout: Duration,
    identity: Option<Identity>,
) -> Result<(), String> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| "empty command".to_string())?;
    let mut builder = Command::new(program);
    builder
        .args(args)
        .env("PNLB_BACKEND_ADDRESS", address.to_string())
        .env("PNLB_BACKEND_PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(identity) = identity {
        // std drops the supplementary groups too when root changes uid.
        builder.uid(identity.uid).gid(identity.gid);
    }
    let mut child = builder
        .spawn()
        .map_err(|err| format!("exec {program}: {err}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{program} exited with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                // The group is our own child's (its id is the child's PID):
                // the check and whatever it started.
                // SAFETY: plain killpg on our child's process group.
                unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!("{program} did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(format!("waiting for {program}: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn a_timed_out_check_takes_what_it_started_with_it() {
        let pid_file = std::env::temp_dir().join(format!("pnlb-exec-{}", std::process::id()));
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let result = run(&sh(&script), LOCAL, 80, Duration::from_millis(300), None);
        assert!(result.unwrap_err().contains("did not finish"));
        assert!(started.elapsed() < Duration::from_secs(2));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let _ = std::fs::remove_file(&pid_file);
        let gone = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            // A killed process no longer runs: gone, or a zombie for init.
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map_or(true, |stat| stat.contains(") Z "))
        });
        assert!(
            gone,
            "the check's background sleep {} outlived it",
            pid.trim()
        );
    }

    #[test]
    fn a_check_runs_as_the_configured_user() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return;
        }
        let nobody = identity_of("nobody").expect("nobody exists");
        let script = format!("test \"$(id -u):$(id -g)\" = {}:{}", nobody.uid, nobody.gid);
        assert_eq!(
            run(
                &sh(&script),
                LOCAL,
                80,
                Duration::from_secs(2),
                Some(nobody)
            ),
            Ok(())
        );
        assert!(identity_of("no-such-user-pnlb")
            .unwrap_err()
            .contains("useradd"));
    }

    #[test]
    fn the_check_directory_must_be_roots_alone() {
        let dir = std::env::temp_dir().join(format!("pnlb-checks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_dir(&dir).unwrap_err();
        assert!(err.contains("chmod 755"), "{err}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            assert_eq!(check_dir(&dir), Ok(()));
        }
        let _ = std::fs::remove_dir(&dir);
        assert!(check_dir(&dir).unwrap_err().contains("install -d"));
    }
}
