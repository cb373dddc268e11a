//! The neighbour (ARP / NDP) table.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;

use super::{address_of, attributes, dump, u16_at, u32_at, RTM_GETNEIGH, RTM_NEWNEIGH};

pub(crate) const NDA_DST: u16 = 1;
pub(crate) const NDA_LLADDR: u16 = 2;
/// struct ndmsg: family, pad (3), ifindex (i32), state (u16), flags, type.
pub(crate) const NDMSG_LEN: usize = 12;

pub(crate) const NUD_INCOMPLETE: u16 = 0x01;
pub(crate) const NUD_STALE: u16 = 0x04;
pub(crate) const NUD_FAILED: u16 = 0x20;

/// A neighbour entry as an RTM_NEWNEIGH / RTM_DELNEIGH message gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NeighbourEntry {
    pub ifindex: u32,
    pub address: IpAddr,
    /// NUD_* bits.
    pub state: u16,
    pub mac: Option<[u8; 6]>,
}

impl NeighbourEntry {
    /// The MAC the entry names, unless the kernel is still asking for one
    /// or gave up (`ip neigh` lists those as INCOMPLETE and FAILED).
    pub fn usable_mac(&self) -> Option<[u8; 6]> {
        (self.state & (NUD_INCOMPLETE | NUD_FAILED) == 0)
            .then_some(self.mac)
            .flatten()
    }
}

/// Every neighbour entry, IPv4 and IPv6, of every interface.
pub fn neighbours() -> io::Result<Vec<NeighbourEntry>> {
    // struct ndmsg, all zero: every family, every interface.
    dump(
        RTM_GETNEIGH,
        &[0u8; NDMSG_LEN],
        RTM_NEWNEIGH,
        parse_neighbour_entry,
    )
}

/// The entries in state STALE, as (ifindex, address): the ones worth
/// re-verifying (see NetWatch::reverify).
pub fn stale_neighbours() -> io::Result<HashSet<(u32, IpAddr)>> {
    Ok(neighbours()?
        .into_iter()
        .filter(|entry| entry.state == NUD_STALE)
        .map(|entry| (entry.ifindex, entry.address))
        .collect())
}

/// An ndmsg body (and its attributes) as an entry; None without an address.
pub(crate) fn parse_neighbour_entry(body: &[u8]) -> Option<NeighbourEntry> {
    if body.len() < NDMSG_LEN {
        return None;
    }
    let family = body[0];
    let ifindex = u32_at(body, 4)?;
    let state = u16_at(body, 8)?;
    let mut address = None;
    let mut mac = None;
    for (kind, value) in attributes(&body[NDMSG_LEN..]) {
        match kind {
            NDA_DST => address = address_of(family, value),
            NDA_LLADDR => mac = <[u8; 6]>::try_from(value).ok(),
            _ => {}
        }
    }
    Some(NeighbourEntry {
        ifindex,
        address: address?,
        state,
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_that_name_a_mac_and_are_not_incomplete_or_failed_are_usable() {
        let entry = |state, mac| NeighbourEntry {
            ifindex: 2,
            address: "10.0.0.1".parse().unwrap(),
            state,
            mac,
        };
        let mac = Some([2, 0, 0, 0, 0, 1]);
        assert_eq!(entry(0x02, mac).usable_mac(), mac, "REACHABLE");
        assert_eq!(entry(NUD_STALE, mac).usable_mac(), mac);
        assert_eq!(entry(0x80, mac).usable_mac(), mac, "PERMANENT");
        assert_eq!(entry(NUD_FAILED, mac).usable_mac(), None);
        assert_eq!(entry(NUD_INCOMPLETE, None).usable_mac(), None);
        assert_eq!(entry(0x02, None).usable_mac(), None);
    }
}
