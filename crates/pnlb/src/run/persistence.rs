//! Whether, and where, this daemon's data plane outlives it
//! (pnlb_dataplane::pinning): pinned in this network namespace's directory
//! under daemon.pin_dir (default /sys/fs/bpf/pnlb, which systemd mounts),
//! so that a restart, an upgrade or a crash keeps every flow. Not with
//! [ha] (the failover moves flows between nodes instead) nor generic XDP.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use pnlb_core::config::{Config, XdpMode, DEFAULT_PIN_DIR};
use pnlb_dataplane::pinning;

use crate::log::{info, warning};

/// The directory to pin in, or None for a data plane that ends with us.
pub fn pin_dir(config: &Config) -> Result<Option<PathBuf>> {
    if config.ha.is_some() {
        info!("data plane: not pinned with [ha] (the failover carries flows over, not a restart)");
        return Ok(None);
    }
    if config.daemon.xdp_mode == XdpMode::Generic {
        info!("data plane: not pinned in generic XDP mode; it ends with this process");
        return Ok(None);
    }
    let base = config
        .daemon
        .pin_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    if !pinning::on_bpffs(&base) {
        if config.daemon.pin_dir.is_some() {
            bail!(
                "daemon.pin_dir {}: not on a bpffs; mount one there (`mount -t bpf bpf {}`) or remove pin_dir",
                base.display(),
                base.display()
            );
        }
        warning!(
            "data plane: no bpffs at {DEFAULT_PIN_DIR}, so it ends with this process (a restart drops nat/snat translations and rr/lc pins); mount one (`mount -t bpf bpf /sys/fs/bpf`, as systemd does) or set daemon.pin_dir"
        );
        return Ok(None);
    }
    Ok(Some(pinning::instance_dir(&base)))
}

/// Held for the daemon's life where its data plane is pinned: a second
/// `pnlb run` in the same network namespace would otherwise take the first
/// one's data plane over under it. An abstract socket belongs to its
/// network namespace and goes with its process, even after `kill -9`.
pub struct Claim {
    _listener: std::os::unix::net::UnixListener,
}

pub fn claim_instance() -> Result<Claim> {
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(b"pnlb-run")?;
    match std::os::unix::net::UnixListener::bind_addr(&address) {
        Ok(listener) => Ok(Claim {
            _listener: listener,
        }),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "another `pnlb run` is running in this network namespace (it holds the data plane); stop it first"
        ),
        Err(err) => Err(err.into()),
    }
}

/// `pnlb down`: removes the data plane pinned for this network namespace
/// under `base` (its links first, so XDP detaches, then its maps).
pub fn down(base: &Path) -> Result<()> {
    let dir = pinning::instance_dir(base);
    if !dir.exists() {
        println!("no data plane pinned in {}", dir.display());
        return Ok(());
    }
    let removed = pinning::remove(&dir)?;
    let links = removed.iter().filter(|n| n.starts_with("link-")).count();
    println!(
        "removed the data plane in {}: {links} link(s) (XDP detached), {} map(s)",
        dir.display(),
        removed.len() - links
    );
    Ok(())
}
