//! A data plane that outlives its daemon: maps and XDP links pinned in a
//! bpffs directory, as Katran and Cilium keep theirs. While no daemon runs
//! the program goes on forwarding with the maps as they were (connection
//! tables, translations, rr/lc pins, backends); the next `pnlb run` reuses
//! the maps (libbpf opens the pinned ones instead of creating new) and swaps
//! its program in through each link (one atomic replacement: a packet sees
//! the old program or the new, with the same maps), even after `kill -9`.
//! `pnlb down` removes it all.
//!
//! The directory holds one pinned map per map of the program, the links
//! (`link-IFNAME`) and `pnlb_meta` with the ABI version (a pnlb of another
//! version refuses to adopt, naming the command that clears the way), the
//! hash seed (kept across restarts when none is configured) and the next
//! backend generation.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Xdp, XdpFlags};

use crate::abi::{self, MetaSlot};
use crate::loader::{Dataplane, DataplaneError};

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// What a pinned data plane says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinnedMeta {
    pub abi_version: u32,
    pub hash_seed: u32,
    pub next_generation: u32,
}

/// Whether `dir` (or the nearest existing parent) is on a bpffs.
pub fn on_bpffs(dir: &Path) -> bool {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            return false;
        }
    }
    let Ok(path) = std::ffi::CString::new(probe.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; zeroed is valid.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid statfs buffer.
    if unsafe { libc::statfs(path.as_ptr(), &mut fs) } != 0 {
        return false;
    }
    fs.f_type as i64 == BPF_FS_MAGIC
}

/// This network namespace's own directory under `base`: daemons in other
/// namespaces (and their pins) never meet.
pub fn instance_dir(base: &Path) -> PathBuf {
    let namespace = std::fs::metadata("/proc/self/ns/net")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap_or(0);
    base.join(format!("net-{namespace}"))
}

fn meta_path(dir: &Path) -> PathBuf {
    dir.join("pnlb_meta")
}

fn link_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link-{interface}"))
}

/// The meta of the data plane pinned in `dir`, if one is.
pub fn pinned_meta(dir: &Path) -> Result<Option<PinnedMeta>, DataplaneError> {
    let path = meta_path(dir);
    if !path.exists() {
        return Ok(None);
    }
    let map = MapHandle::from_pinned_path(&path).map_err(|source| DataplaneError::Map {
        map: "pnlb_meta",
        source,
    })?;
    Ok(Some(PinnedMeta {
        abi_version: meta_slot(&map, MetaSlot::PNLB_META_ABI_VERSION),
        hash_seed: meta_slot(&map, MetaSlot::PNLB_META_HASH_SEED),
        next_generation: meta_slot(&map, MetaSlot::PNLB_META_NEXT_GENERATION),
    }))
}

/// One slot of a pnlb_meta map (0 if unreadable).
fn meta_slot(map: &dyn MapCore, slot: MetaSlot) -> u32 {
    map.lookup(&slot.0.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| v.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// Before loading: refuses a data plane of another ABI in `dir`.
pub(crate) fn check_compatible(dir: &Path) -> Result<bool, DataplaneError> {
    match pinned_meta(dir)? {
        None => Ok(false),
        Some(meta) if meta.abi_version == abi::ABI_VERSION => Ok(true),
        Some(meta) => Err(DataplaneError::Incompatible {
            dir: dir.to_path_buf(),
            reason: format!(
                "its maps are of ABI version {}, this pnlb's are {}",
                meta.abi_version,
                abi::ABI_VERSION
            ),
        }),
    }
}

impl Dataplane {
    /// Entries in the established and the new-flow table, counted by
    /// walking them (for the adoption's log line).
    pub fn entries(&self) -> (usize, usize) {
        (
            self.maps().pnlb_conns.keys().count(),
            self.maps().pnlb_conns_new.keys().count(),
        )
    }

    /// A daemon tends the data plane: it takes new flows until `limit`
    /// from now without another tick (daemon.unattended_limit; None: with
    /// no end).
    pub fn mark_tended(&self, limit: Option<std::time::Duration>) -> Result<(), DataplaneError> {
        self.mark_tended_at(crate::conntrack::monotonic_ns(), limit)
    }

    /// As [`Self::mark_tended`], "now" given (the kernel's monotonic clock).
    pub fn mark_tended_at(
        &self,
        now_ns: u64,
        limit: Option<std::time::Duration>,
    ) -> Result<(), DataplaneError> {
        let after = limit.map_or(0, |limit| {
            u32::try_from(now_ns / 1_000_000_000 + limit.as_secs()).unwrap_or(u32::MAX)
        });
        self.set_meta(MetaSlot::PNLB_META_UNATTENDED_AFTER, after)
    }

    /// One slot of pnlb_meta (0 if unreadable).
    pub(crate) fn meta(&self, slot: MetaSlot) -> u32 {
        meta_slot(&self.maps().pnlb_meta, slot)
    }

    /// Writes one slot of pnlb_meta.
    pub(crate) fn set_meta(&self, slot: MetaSlot, value: u32) -> Result<(), DataplaneError> {
        self.maps()
            .pnlb_meta
            .update(&slot.0.to_ne_bytes(), &value.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_meta",
                source,
            })
    }

    /// Attaches through a pinned BPF link in `dir`: an existing one (a
    /// data plane left running) gets this program swapped in atomically; a
    /// new one is created and pinned. Native mode (links have no generic
    /// fallback flag here).
    pub(crate) fn attach_pinned(
        &self,
        dir: &Path,
        interface: &str,
        ifindex: u32,
    ) -> Result<(Link, bool), DataplaneError> {
        let path = link_path(dir, interface);
        let failed = |reason: String| DataplaneError::Attach {
            interface: interface.to_string(),
            mode: "native",
            reason,
        };
        if path.exists() {
            // A link whose interface went away (and came back) is defunct,
            // and one that cannot be opened or updated is of no use:
            // either is replaced by a new one.
            if let Ok(mut link) = Link::open(&path) {
                if link.update_prog(self.program()).is_ok() && self.attached_to(ifindex) {
                    return Ok((link, true));
                }
            }
            std::fs::remove_file(&path).map_err(|err| {
                failed(format!("removing the stale link {}: {err}", path.display()))
            })?;
        }
        let mut link = self.program().attach_xdp(ifindex as i32).map_err(|err| {
            failed(format!(
                "{err}; if another XDP program is attached (see `ip link show {interface}`), remove it with `ip link set dev {interface} xdp off`"
            ))
        })?;
        link.pin(&path)
            .map_err(|err| failed(format!("pinning the link at {}: {err}", path.display())))?;
        Ok((link, false))
    }

    /// Whether this program is the one attached to `ifindex`.
    fn attached_to(&self, ifindex: u32) -> bool {
        let Ok(ours) = libbpf_rs::Program::id_from_fd(self.program().as_fd()) else {
            return false;
        };
        Xdp::new(self.program().as_fd())
            .query_id(ifindex as i32, XdpFlags::empty())
            .is_ok_and(|id| id == ours)
    }
}

/// Detaches the links in `dir` to interfaces not in `keep` (a config that
/// no longer lists them); returns their names.
pub fn remove_other_links(dir: &Path, keep: &[String]) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        if let Some(interface) = name.strip_prefix("link-") {
            if !keep.iter().any(|k| k == interface) {
                std::fs::remove_file(&path)?;
                removed.push(interface.to_string());
            }
        }
    }
    Ok(removed)
}

/// Removes the data plane pinned in `dir`: links first (each detaches its
/// program), then the maps. Returns what was removed.
pub fn remove(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    // Links before maps: traffic stops reaching the program first.
    entries.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
    });
    for path in entries {
        std::fs::remove_file(&path)?;
        removed.push(
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        );
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}
