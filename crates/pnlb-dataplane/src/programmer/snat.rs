//! Step 3 of applying a service: its SNAT source addresses, written before
//! the service entry that says how many there are.

use libbpf_rs::{MapCore, MapFlags};
use pnlb_core::config::Snat;

use super::map_err;
use crate::abi::{self, bytes_of};
use crate::loader::{Dataplane, DataplaneError};

pub(super) fn write_snat_addresses(
    dataplane: &Dataplane,
    service_id: u32,
    snat: &Snat,
) -> Result<(), DataplaneError> {
    for (i, address) in snat.addresses.iter().enumerate() {
        let index = service_id * abi::MAX_SNAT_ADDRS + i as u32;
        dataplane
            .maps()
            .pnlb_snat_addrs
            .update(
                &index.to_ne_bytes(),
                bytes_of(&abi::addr(*address)),
                MapFlags::ANY,
            )
            .map_err(map_err("pnlb_snat_addrs"))?;
    }
    Ok(())
}
