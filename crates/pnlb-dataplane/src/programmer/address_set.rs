//! The address sets the data plane checks before anything else: the VIPs
//! (pnlb_vips) and the backends whose replies it translates
//! (pnlb_backend_addrs), each address with the number of services that
//! need it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags};

use super::map_err;
use crate::abi::{self, bytes_of};
use crate::address_filter::{AddressFilter, FilterBits};
use crate::loader::{Dataplane, DataplaneError};

/// An address -> count map (pnlb_vips, pnlb_backend_addrs) as last
/// written, so that an apply writes only the addresses whose count changed,
/// and the filter in front of it (crate::address_filter).
#[derive(Default)]
pub(super) struct AddressSet {
    /// None: not known (never written, adopted, or a write failed); the
    /// next sync reads the map and writes the filter whole.
    written: Option<Written>,
}

struct Written {
    counts: BTreeMap<IpAddr, u32>,
    bits: FilterBits,
}

/// A set's map and the filter in front of it.
pub(super) struct SetMaps<'a> {
    pub(super) map: &'a dyn MapCore,
    pub(super) name: &'static str,
    pub(super) filter: &'a AddressFilter,
}

impl AddressSet {
    /// Makes the map hold exactly `addresses`, counted, and the filter
    /// exactly their bits.
    pub(super) fn sync(
        &mut self,
        set: SetMaps<'_>,
        addresses: impl Iterator<Item = IpAddr>,
    ) -> Result<(), DataplaneError> {
        let SetMaps { map, name, filter } = set;
        let mut counts: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for address in addresses {
            *counts.entry(address).or_default() += 1;
        }
        let bits = FilterBits::of(counts.keys());
        let words = bits.words();
        // The bits of what is to be in before it is: what is in keeps its own.
        filter.include(&words);
        let key = |address: &IpAddr| bytes_of(&abi::addr(*address)).to_vec();
        match self.written.take().map(|w| w.counts) {
            Some(written) => {
                for address in written.keys().filter(|a| !counts.contains_key(a)) {
                    map.delete(&key(address)).map_err(map_err(name))?;
                }
                for (address, count) in &counts {
                    if written.get(address) != Some(count) {
                        map.update(&key(address), &count.to_ne_bytes(), MapFlags::ANY)
                            .map_err(map_err(name))?;
                    }
                }
            }
            None => {
                let wanted: BTreeSet<Vec<u8>> = counts.keys().map(key).collect();
                let present: Vec<Vec<u8>> = map.keys().collect();
                for present in present {
                    if !wanted.contains(&present) {
                        map.delete(&present).map_err(map_err(name))?;
                    }
                }
                for (address, count) in &counts {
                    map.update(&key(address), &count.to_ne_bytes(), MapFlags::ANY)
                        .map_err(map_err(name))?;
                }
            }
        }
        // Only what is in now: the bits of addresses gone are cleared.
        filter.store(&words);
        self.written = Some(Written { counts, bits });
        Ok(())
    }

    /// Counts `gone` down and `new` up (an address once per service or
    /// backend that needs it) and writes the addresses whose count changed.
    /// False when the map as written is not known: [`Self::sync`] it.
    pub(super) fn count(
        &mut self,
        set: SetMaps<'_>,
        gone: &[IpAddr],
        new: &[IpAddr],
    ) -> Result<bool, DataplaneError> {
        let SetMaps { map, name, filter } = set;
        let Some(Written {
            mut counts,
            mut bits,
        }) = self.written.take()
        else {
            return Ok(false);
        };
        let mut was: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for address in gone.iter().chain(new) {
            was.entry(*address)
                .or_insert_with(|| counts.get(address).copied().unwrap_or(0));
        }
        for address in gone {
            if let Some(count) = counts.get_mut(address) {
                *count = count.saturating_sub(1);
            }
        }
        for address in new {
            *counts.entry(*address).or_default() += 1;
        }
        let key = |address: &IpAddr| bytes_of(&abi::addr(*address)).to_vec();
        for (address, before) in was {
            let now = counts.get(&address).copied().unwrap_or(0);
            if now == before {
                continue;
            }
            // Left unknown (None) if a write fails: the next apply syncs.
            if now == 0 {
                counts.remove(&address);
                map.delete(&key(&address)).map_err(map_err(name))?;
                bits.left(filter, address);
            } else {
                if before == 0 {
                    bits.entering(filter, address);
                }
                map.update(&key(&address), &now.to_ne_bytes(), MapFlags::ANY)
                    .map_err(map_err(name))?;
            }
        }
        self.written = Some(Written { counts, bits });
        Ok(true)
    }
}

/// An address set as the data plane holds it: address -> count.
pub type AddressCounts = BTreeMap<IpAddr, u32>;

impl Dataplane {
    /// pnlb_vips and pnlb_backend_addrs as they are now (for checks).
    pub fn address_sets(&self) -> Result<(AddressCounts, AddressCounts), DataplaneError> {
        let read = |map: &dyn MapCore,
                    name: &'static str|
         -> Result<AddressCounts, DataplaneError> {
            let mut counts = AddressCounts::new();
            for key in map.keys() {
                let Some(value) = map.lookup(&key, MapFlags::ANY).map_err(map_err(name))? else {
                    continue;
                };
                let (Some(address), Some(count)) = (
                    abi::from_bytes::<abi::Addr>(&key),
                    abi::from_bytes::<u32>(&value),
                ) else {
                    continue;
                };
                counts.insert(abi::ip_of(&address), count);
            }
            Ok(counts)
        };
        let maps = self.maps();
        Ok((
            read(&maps.pnlb_vips, "pnlb_vips")?,
            read(&maps.pnlb_backend_addrs, "pnlb_backend_addrs")?,
        ))
    }

    /// pnlb_vip_filter and pnlb_backend_filter as packets read them now
    /// (for checks: [`crate::address_filter::words_of`] the sets).
    pub fn address_filters(&self) -> (Vec<u64>, Vec<u64>) {
        (self.vip_filter.read(), self.backend_filter.read())
    }
}
