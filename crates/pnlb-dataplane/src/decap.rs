//! The real-server side of tun (bpf/decap.bpf.c): strips IPIP / IP6IP6 /
//! GUE addressed to this host, for kernels without ipip/fou, when it comes
//! from a load balancer's prefix (`--from`) and holds a packet for this
//! host or a `--vip`. `pnlb decap` loads it, keeps its list of local
//! addresses current and attaches it.

use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::AsFd;

use libbpf_rs::query::{ProgInfoIter, ProgInfoQueryOptions};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, OpenObject};
use pnlb_core::config::XdpMode;
use pnlb_core::prefix::Prefix;

use crate::abi::{self, bytes_of, from_bytes, DecapCounter};
use crate::decap_skel::{DecapSkel, DecapSkelBuilder};
use crate::loader::{attach_program, Attachment, DataplaneError};

/// The default GUE port, as design.md's config contract names it.
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// What the program accepts.
#[derive(Clone, Debug)]
pub struct DecapOptions {
    /// GUE is stripped on this UDP port.
    pub gue_port: u16,
    /// Tunnels are accepted only from these prefixes (the load balancers');
    /// empty: from anywhere.
    pub from: Vec<Prefix>,
    /// Inner destinations accepted besides this host's own addresses.
    pub vips: Vec<IpAddr>,
}

impl DecapOptions {
    /// GUE on `gue_port`, from anywhere, to this host's addresses.
    pub fn on_port(gue_port: u16) -> Self {
        Self {
            gue_port,
            from: Vec::new(),
            vips: Vec::new(),
        }
    }
}

pub struct Decap {
    skel: DecapSkel<'static>,
    addresses: BTreeSet<IpAddr>,
}

/// What the program did, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapCounters {
    pub ipip: u64,
    pub gue: u64,
    pub passed_other: u64,
    pub passed_not_local: u64,
    pub passed_malformed: u64,
    pub failed: u64,
    /// Tunnels from outside `--from`.
    pub passed_foreign: u64,
    /// Inner packets neither for this host nor a `--vip`.
    pub passed_not_ours: u64,
}

fn map_err(source: libbpf_rs::Error) -> DataplaneError {
    DataplaneError::Map {
        map: "pnlb_decap",
        source,
    }
}

impl Decap {
    /// Loads the program with `options`.
    pub fn load(options: &DecapOptions) -> Result<Self, DataplaneError> {
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = DecapSkelBuilder::default()
            .open(storage)
            .map_err(DataplaneError::Load)?;
        let rodata = open.maps.rodata_data.as_deref_mut().ok_or_else(|| {
            DataplaneError::Load(libbpf_rs::Error::from_raw_os_error(libc::EINVAL))
        })?;
        rodata.gue_port = options.gue_port.to_be();
        rodata.filter_sources = u8::from(!options.from.is_empty());
        let skel = open.load().map_err(DataplaneError::Load)?;
        for prefix in &options.from {
            // struct pnlb_decap_prefix: the length (host order), then the
            // address (IPv4-mapped: 96 bits more).
            let mapped = if prefix.address.is_ipv4() { 96 } else { 0 };
            let mut key = (u32::from(prefix.len) + mapped).to_ne_bytes().to_vec();
            key.extend_from_slice(bytes_of(&abi::addr(prefix.address)));
            skel.maps
                .pnlb_decap_from
                .update(&key, &[1], MapFlags::ANY)
                .map_err(map_err)?;
        }
        for vip in &options.vips {
            skel.maps
                .pnlb_decap_vips
                .update(bytes_of(&abi::addr(*vip)), &[1], MapFlags::ANY)
                .map_err(map_err)?;
        }
        Ok(Self {
            skel,
            addresses: BTreeSet::new(),
        })
    }

    /// The program, e.g. for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &libbpf_rs::ProgramMut<'static> {
        &self.skel.progs.pnlb_decap
    }

    pub fn attach(&self, interface: &str, mode: XdpMode) -> Result<Attachment, DataplaneError> {
        attach_program(self.program().as_fd().try_clone_to_owned(), interface, mode)
    }

    /// Makes the program's set of "this host" addresses exactly `addresses`.
    /// Returns whether anything changed.
    pub fn set_local_addresses(
        &mut self,
        addresses: &BTreeSet<IpAddr>,
    ) -> Result<bool, DataplaneError> {
        if *addresses == self.addresses {
            return Ok(false);
        }
        let map = &self.skel.maps.pnlb_decap_addrs;
        for gone in self.addresses.difference(addresses) {
            match map.delete(bytes_of(&abi::addr(*gone))) {
                Ok(()) => {}
                Err(err) if err.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(err) => return Err(map_err(err)),
            }
        }
        for new in addresses.difference(&self.addresses) {
            map.update(bytes_of(&abi::addr(*new)), &[1], MapFlags::ANY)
                .map_err(map_err)?;
        }
        self.addresses = addresses.clone();
        Ok(true)
    }

    pub fn counters(&self) -> Result<DecapCounters, DataplaneError> {
        let mut totals = [0u64; abi::DECAP_COUNTERS];
        for (index, total) in totals.iter_mut().enumerate() {
            let per_cpu = self
                .skel
                .maps
                .pnlb_decap_stats
                .lookup_percpu(&(index as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err)?
                .unwrap_or_default();
            *total = per_cpu
                .iter()
                .filter_map(|bytes| from_bytes::<u64>(bytes))
                .sum();
        }
        let at = |counter: DecapCounter| totals[counter.0 as usize];
        Ok(DecapCounters {
            ipip: at(DecapCounter::PNLB_DECAP_IPIP),
            gue: at(DecapCounter::PNLB_DECAP_GUE),
            passed_other: at(DecapCounter::PNLB_DECAP_PASS_OTHER),
            passed_not_local: at(DecapCounter::PNLB_DECAP_PASS_NOT_LOCAL),
            passed_malformed: at(DecapCounter::PNLB_DECAP_PASS_MALFORMED),
            failed: at(DecapCounter::PNLB_DECAP_FAILED),
            passed_foreign: at(DecapCounter::PNLB_DECAP_PASS_FOREIGN),
            passed_not_ours: at(DecapCounter::PNLB_DECAP_PASS_NOT_OURS),
        })
    }
}

/// What a running decap program (kernel id `program`) was given: how many
/// `--from` prefixes and `--vip` addresses; None if it cannot be read.
pub fn running_options(program: u32) -> Option<(usize, usize)> {
    let query = ProgInfoQueryOptions::default().include_map_ids(true);
    let info = ProgInfoIter::with_query_opts(query).find(|info| info.id == program)?;
    let entries = |name: &str| {
        info.map_ids
            .iter()
            .filter_map(|id| MapHandle::from_map_id(*id).ok())
            .find(|map| map.name() == name)
            .map(|map| map.keys().count())
    };
    Some((entries("pnlb_decap_from")?, entries("pnlb_decap_vips")?))
}
