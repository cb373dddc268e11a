//! Loading the XDP program and attaching it to interfaces.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenObject, Xdp, XdpFlags};
use pnlb_core::config::XdpMode;

use crate::abi::MetaSlot;
use crate::address_filter::AddressFilter;
use crate::conntrack::{SweepTally, Sweeper};
use crate::service_copies::ServiceCopies;
use crate::skel::{LbMaps, LbSkel, LbSkelBuilder};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP program failed: {0}; pnlb needs root (CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) and a kernel with BTF")]
    Load(libbpf_rs::Error),
    #[error("interface {0:?} does not exist here; check daemon.interfaces against `ip link`")]
    NoSuchInterface(String),
    #[error("cannot attach XDP to {interface} in {mode} mode: {reason}")]
    Attach {
        interface: String,
        mode: &'static str,
        reason: String,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: libbpf_rs::Error,
    },
    #[error("{what}: the data plane holds at most {limit}")]
    Full { what: &'static str, limit: u32 },
    #[error("the data plane pinned in {} cannot be adopted: {reason}; `pnlb down --pin-dir {}` removes it (its flows are lost), or run the pnlb that made it", dir.display(), dir.parent().map_or_else(|| dir.display().to_string(), |p| p.display().to_string()))]
    Incompatible {
        dir: std::path::PathBuf,
        reason: String,
    },
}

/// The loaded XDP program and its maps. Dropping it (after its
/// attachments) unloads everything.
pub struct Dataplane {
    skel: LbSkel<'static>,
    tables: TableSizes,
    limits: Limits,
    hash_seed: u32,
    /// Where its maps and links are pinned, when it outlives the process.
    pin_dir: Option<PathBuf>,
    /// Whether it took over maps a previous process left pinned.
    adopted: bool,
    pub(crate) tally: Arc<SweepTally>,
    /// The sweeper tests and tools run on the loader's thread; its handle
    /// on the connection tables is the data plane's too.
    pub(crate) sweeper: Sweeper,
    /// pnlb_vip_filter and pnlb_backend_filter, mapped.
    pub(crate) vip_filter: AddressFilter,
    pub(crate) backend_filter: AddressFilter,
    /// pnlb_service_copies and pnlb_service_live_copy, mapped.
    pub(crate) service_copies: ServiceCopies,
}

/// How the program is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Entries of the established table (nat/snat flows take two).
    pub conn_table_size: u32,
    /// Report flows for failover sync ([`crate::sync`]).
    pub conn_sync: bool,
    /// Seed of every flow hash: a per-deployment secret, the same on every
    /// node that must pick alike.
    pub hash_seed: u32,
    /// A bpffs directory to pin the maps (and links) in, reusing those a
    /// previous process left there ([`crate::pinning`]); None = the data
    /// plane ends with the process.
    pub pin_dir: Option<PathBuf>,
    /// Services and backends its maps are sized for.
    pub limits: Limits,
}

/// Services and backends the data plane holds (daemon.max_services,
/// daemon.max_backends): the maps indexed by their slots are sized at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: u32,
    pub backends: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            services: pnlb_core::config::DEFAULT_MAX_SERVICES,
            backends: pnlb_core::config::DEFAULT_MAX_BACKENDS,
        }
    }
}

impl Limits {
    /// The limits a config asks for.
    pub fn of(daemon: &pnlb_core::config::Daemon) -> Self {
        Self {
            services: daemon.max_services,
            backends: daemon.max_backends,
        }
    }
}

impl LoadOptions {
    /// Tests and benchmarks: no sync, the public test seed.
    pub fn for_tests(conn_table_size: u32) -> Self {
        Self {
            conn_table_size,
            conn_sync: false,
            hash_seed: crate::abi::TEST_HASH_SEED,
            pin_dir: None,
            limits: Limits::default(),
        }
    }
}

/// Entries each connection map holds (docs/conntrack.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    /// pnlb_conns: established flows, never evicted (daemon.conn_table_size).
    pub established: u32,
    /// pnlb_conns_new: flows not yet established, an LRU.
    pub new: u32,
    /// pnlb_snat_rest: SNAT keys resting after their flow ended, an LRU.
    pub snat_rest: u32,
}

impl TableSizes {
    /// The maps for a connection table of `conn_table_size` entries: the
    /// new-flow table takes a quarter as much (at least 1024); it holds the
    /// handshakes in flight (new flows/s x handshake time, two entries each
    /// for nat/snat), and a flood beyond that only evicts its own kind.
    pub fn for_size(conn_table_size: u32) -> Self {
        Self {
            established: conn_table_size,
            new: (conn_table_size / 4).max(1024),
            snat_rest: conn_table_size,
        }
    }
}

impl Dataplane {
    /// Loads the program for tests and benchmarks (the public test seed)
    /// with a connection table of `conn_table_size` entries.
    pub fn load(conn_table_size: u32) -> Result<Self, DataplaneError> {
        Self::load_with(LoadOptions::for_tests(conn_table_size))
    }

    pub fn load_with(options: LoadOptions) -> Result<Self, DataplaneError> {
        let LoadOptions {
            conn_table_size,
            conn_sync,
            hash_seed,
            pin_dir,
            limits,
        } = options;
        let adopted = match &pin_dir {
            Some(dir) => crate::pinning::check_compatible(dir)?,
            None => false,
        };
        // The skeleton borrows its object storage for as long as it lives; a
        // data plane lives for the process, so the few bytes are leaked.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = LbSkelBuilder::default()
            .open(storage)
            .map_err(DataplaneError::Load)?;
        let tables = TableSizes::for_size(conn_table_size);
        let (services, backends) = (limits.services, limits.backends);
        let maps = &mut open.maps;
        for (map, entries) in [
            (&mut maps.pnlb_conns, tables.established),
            (&mut maps.pnlb_conns_new, tables.new),
            (&mut maps.pnlb_snat_rest, tables.snat_rest),
            // Indexed by service slot.
            (&mut maps.pnlb_services, services),
            (&mut maps.pnlb_vips, services),
            (&mut maps.pnlb_tables, services),
            (&mut maps.pnlb_rates, services),
            (&mut maps.pnlb_service_stats, services),
            (&mut maps.pnlb_sched_cursors, services),
            (&mut maps.pnlb_service_live_copy, services),
            (&mut maps.pnlb_service_copies, 2 * services),
            (
                &mut maps.pnlb_snat_addrs,
                services * crate::abi::MAX_SNAT_ADDRS,
            ),
            // Indexed by backend slot (two copies each in pnlb_backends).
            (&mut maps.pnlb_backends, 2 * backends),
            (&mut maps.pnlb_live_copy, backends),
            (&mut maps.pnlb_backend_addrs, backends),
            (&mut maps.pnlb_backend_conns, backends),
            (&mut maps.pnlb_backend_load, backends),
            (&mut maps.pnlb_backend_stats, backends),
        ] {
            map.set_max_entries(entries).map_err(DataplaneError::Load)?;
        }
        if let Some(rodata) = open.maps.rodata_data.as_deref_mut() {
            rodata.pnlb_conn_sync = u32::from(conn_sync);
            rodata.pnlb_conns_capacity = tables.established;
            rodata.pnlb_hash_seed = hash_seed;
        }
        // For developers: with LIBBPF_LOG_LEVEL=debug too, libbpf prints
        // the verifier's statistics (instructions processed of 1,000,000,
        // stack depth per function).
        if std::env::var_os("PNLB_VERIFIER_STATS").is_some() {
            open.progs.pnlb_xdp.set_log_level(4);
        }
        if let Some(dir) = &pin_dir {
            std::fs::create_dir_all(dir).map_err(|err| DataplaneError::Incompatible {
                dir: dir.clone(),
                reason: format!("cannot create it: {err}"),
            })?;
            for mut map in open.open_object_mut().maps_mut() {
                let name = map.name().to_string_lossy().into_owned();
                // .rodata and friends are the program's own constants.
                if name.contains('.') {
                    continue;
                }
                map.set_pin_path(dir.join(&name))
                    .map_err(DataplaneError::Load)?;
            }
        }
        let skel = open.load().map_err(|err| match &pin_dir {
            Some(dir) if adopted => DataplaneError::Incompatible {
                dir: dir.clone(),
                reason: format!(
                    "its maps do not fit this config (daemon.conn_table_size, max_services or max_backends changed?): {err}"
                ),
            },
            _ => DataplaneError::Load(err),
        })?;
        let tally = Arc::new(SweepTally::default());
        let sweeper = Sweeper::open(&skel.maps, tally.clone())?;
        let filter = |map: &libbpf_rs::Map, name: &'static str| {
            AddressFilter::map(map).map_err(|err| DataplaneError::Map {
                map: name,
                source: libbpf_rs::Error::from(err),
            })
        };
        let vip_filter = filter(&skel.maps.pnlb_vip_filter, "pnlb_vip_filter")?;
        let backend_filter = filter(&skel.maps.pnlb_backend_filter, "pnlb_backend_filter")?;
        let service_copies = ServiceCopies::map(
            &skel.maps.pnlb_service_copies,
            &skel.maps.pnlb_service_live_copy,
            services,
        )
        .map_err(|err| DataplaneError::Map {
            map: "pnlb_service_copies",
            source: libbpf_rs::Error::from(err),
        })?;
        let dataplane = Self {
            sweeper,
            vip_filter,
            backend_filter,
            service_copies,
            skel,
            tables,
            limits,
            hash_seed,
            pin_dir,
            adopted,
            tally,
        };
        if dataplane.pin_dir.is_some() {
            dataplane.set_meta(MetaSlot::PNLB_META_ABI_VERSION, crate::abi::ABI_VERSION)?;
            dataplane.set_meta(MetaSlot::PNLB_META_HASH_SEED, hash_seed)?;
        }
        Ok(dataplane)
    }

    /// Where the data plane is pinned, if it outlives the process.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Whether it took over the maps of a data plane left running.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The seed the program hashes flows with.
    pub fn hash_seed(&self) -> u32 {
        self.hash_seed
    }

    pub(crate) fn maps(&self) -> &LbMaps<'static> {
        &self.skel.maps
    }

    /// The services and backends its maps hold.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The sizes the connection maps were loaded with.
    pub fn table_sizes(&self) -> TableSizes {
        self.tables
    }

    /// The XDP entry program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &libbpf_rs::ProgramMut<'static> {
        &self.skel.progs.pnlb_xdp
    }

    /// Attaches the program to `interface`. A pinned data plane in native
    /// mode attaches through a pinned link, taking over one left running,
    /// and stays attached after the returned [`Attachment`] is dropped (and
    /// the process ends); otherwise dropping it detaches.
    pub fn attach(&self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        if let (Some(dir), XdpMode::Native) = (&self.pin_dir, mode) {
            let ifindex = ifindex_of(interface)?;
            let (link, took_over) = self.attach_pinned(dir, interface, ifindex)?;
            return Ok(Attachment {
                interface: interface.to_string(),
                ifindex: ifindex as i32,
                how: How::Pinned {
                    _link: link,
                    took_over,
                },
            });
        }
        attach_program(self.program().as_fd().try_clone_to_owned(), interface, mode)
    }
}

/// An XDP program attached to one interface.
pub struct Attachment {
    interface: String,
    ifindex: i32,
    how: How,
}

enum How {
    /// Attached through netlink; detached on drop.
    Netlink {
        /// The mode flag it was attached with; detach must name the same mode.
        mode_bits: u32,
        program: OwnedFd,
    },
    /// Through a pinned link, which keeps it attached without us.
    Pinned {
        _link: libbpf_rs::Link,
        took_over: bool,
    },
}

impl Attachment {
    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex as u32
    }

    /// Whether it replaced the program of a data plane left running.
    pub fn took_over(&self) -> bool {
        matches!(
            self.how,
            How::Pinned {
                took_over: true,
                ..
            }
        )
    }

    /// Whether it stays attached when dropped (a pinned link).
    pub fn outlives_the_process(&self) -> bool {
        matches!(self.how, How::Pinned { .. })
    }

    /// Leaves the program attached after this handle is gone. For
    /// interfaces in another network namespace, whose ifindex means nothing
    /// here: they are cleaned up with their namespace.
    pub fn leave_attached(self) {
        std::mem::forget(self);
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let How::Netlink { mode_bits, program } = &self.how {
            // Best effort: the interface may already be gone (namespace deleted).
            let _ = Xdp::new(program.as_fd())
                .detach(self.ifindex, XdpFlags::from_bits_retain(*mode_bits));
        }
    }
}

pub(crate) fn attach_program(
    program: std::io::Result<OwnedFd>,
    interface: &str,
    mode: XdpMode,
) -> Result<Attachment, DataplaneError> {
    let (mode_flag, mode_name) = match mode {
        XdpMode::Native => (XdpFlags::DRV_MODE, "native"),
        XdpMode::Generic => (XdpFlags::SKB_MODE, "generic"),
    };
    let attach_error = |reason: String| DataplaneError::Attach {
        interface: interface.to_string(),
        mode: mode_name,
        reason,
    };
    let program =
        program.map_err(|err| attach_error(format!("cannot duplicate the program fd: {err}")))?;
    let ifindex = ifindex_of(interface)?;
    let mode_bits = mode_flag.bits();
    let flags = mode_flag | XdpFlags::UPDATE_IF_NOEXIST;
    Xdp::new(program.as_fd()).attach(ifindex as i32, flags).map_err(|err| {
        let reason = match err.kind() {
            libbpf_rs::ErrorKind::Unsupported if mode == XdpMode::Native => {
                "its driver has no native XDP; set daemon.xdp_mode = \"generic\"".to_string()
            }
            libbpf_rs::ErrorKind::AlreadyExists => format!(
                "another XDP program is attached; see `ip link show {interface}` and remove it with `ip link set dev {interface} xdp off`"
            ),
            _ => err.to_string(),
        };
        attach_error(reason)
    })?;
    Ok(Attachment {
        interface: interface.to_string(),
        ifindex: ifindex as i32,
        how: How::Netlink { mode_bits, program },
    })
}

/// The interface index of `name` in this thread's network namespace.
pub fn ifindex_of(name: &str) -> Result<u32, DataplaneError> {
    let c_name =
        CString::new(name).map_err(|_| DataplaneError::NoSuchInterface(name.to_string()))?;
    // SAFETY: c_name is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(DataplaneError::NoSuchInterface(name.to_string()));
    }
    Ok(index)
}
