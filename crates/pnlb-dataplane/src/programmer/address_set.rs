//! The address sets the data plane checks before anything else: the VIPs
//! (pnlb_vips) and the backends whose replies it translates
//! (pnlb_backend_addrs), each address with the number of services that
//! need it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags};

use super::map_err;
use crate::abi::{self, bytes_of};
use crate::loader::DataplaneError;

/// An address -> count map (pnlb_vips, pnlb_backend_addrs) as last
/// written, so that an apply writes only the addresses whose count changed.
#[derive(Default)]
pub(super) struct AddressSet {
    /// None: not known (never written, adopted, or a write failed); the
    /// next sync reads the map.
    written: Option<BTreeMap<IpAddr, u32>>,
}

impl AddressSet {
    /// Makes the map hold exactly `addresses`, counted.
    pub(super) fn sync(
        &mut self,
        map: &dyn MapCore,
        name: &'static str,
        addresses: impl Iterator<Item = IpAddr>,
    ) -> Result<(), DataplaneError> {
        let mut counts: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for address in addresses {
            *counts.entry(address).or_default() += 1;
        }
        let key = |address: &IpAddr| bytes_of(&abi::addr(*address)).to_vec();
        match self.written.take() {
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
        self.written = Some(counts);
        Ok(())
    }
}
