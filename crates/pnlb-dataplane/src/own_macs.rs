//! The MAC of each interface the program is attached to (pnlb_abi.h's
//! `pnlb_own_macs`): a unicast frame for another MAC (flooded by a bridge,
//! taken by a port in promiscuous mode) is left to the kernel, which drops
//! it, rather than forwarded a second time beside its real recipient.

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, bytes_of};
use crate::loader::{ifindex_of, Dataplane, DataplaneError};
use crate::nexthop::parse_mac;

/// An interface's own MAC, as the kernel reports it now.
pub fn mac_of(interface: &str) -> std::io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))?;
    parse_mac(text.trim()).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{interface}'s MAC address {text:?}"),
        )
    })
}

impl Dataplane {
    /// Publishes the own MAC of each of `interfaces`, as the kernel
    /// reports it now; one whose MAC cannot be read is left unchecked.
    pub fn set_own_macs(&self, interfaces: &[String]) -> Result<(), DataplaneError> {
        let own: Vec<(u32, [u8; 6])> = interfaces
            .iter()
            .filter_map(|interface| Some((ifindex_of(interface).ok()?, mac_of(interface).ok()?)))
            .collect();
        self.set_own_mac_entries(&own)
    }

    /// Publishes (ifindex, MAC) pairs, the first PNLB_MAX_OWN_MACS.
    pub fn set_own_mac_entries(&self, own: &[(u32, [u8; 6])]) -> Result<(), DataplaneError> {
        let mut value = abi::OwnMacs::default();
        for (entry, (ifindex, mac)) in value.entries.iter_mut().zip(own) {
            entry.ifindex = *ifindex;
            entry.mac = *mac;
        }
        value.count = own.len().min(value.entries.len()) as u32;
        self.maps()
            .pnlb_own_macs
            .update(&0u32.to_ne_bytes(), bytes_of(&value), MapFlags::ANY)
            .map_err(|source| DataplaneError::Map {
                map: "pnlb_own_macs",
                source,
            })
    }
}
