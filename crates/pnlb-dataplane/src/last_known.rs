//! The MACs of the next hops we forward to, as the kernel last held them
//! usable (bpf/lib/route.h, pnlb_last_known_neighbours). A translated
//! reply is routed by the kernel's FIB; when the kernel has no entry for
//! the next hop (garbage-collected between two of our probes, or never
//! made) the program uses the MAC kept here rather than hand the packet to
//! the kernel, which refuses it while the VIP it comes from is a local
//! address. An entry the kernel gave up on (FAILED: asked, and nobody
//! answered) is taken out: the neighbour is gone, not merely forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{self, bytes_of, Neighbour, NeighbourKey};
use crate::loader::{Dataplane, DataplaneError};
use crate::rtnetlink::links::links;
use crate::rtnetlink::neighbours::{neighbours, NeighbourEntry, NUD_FAILED};

/// One next hop's last usable MAC, and ours on its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastKnownNeighbour {
    pub ifindex: u32,
    pub address: IpAddr,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// What the kernel said of the watched next hops, kept across its lapses.
#[derive(Debug, Default)]
pub struct LastKnownNeighbours {
    /// (ifindex, address) -> (its MAC, ours).
    known: BTreeMap<(u32, IpAddr), ([u8; 6], [u8; 6])>,
    /// The hops of the last look: the ones to keep.
    hops: Vec<(u32, IpAddr)>,
    /// Our MAC on each interface, as last read.
    link_macs: HashMap<u32, [u8; 6]>,
}

impl LastKnownNeighbours {
    /// One look at the kernel's neighbour and link tables for `hops`
    /// (interface, next hop); true when what is known changed. Err when
    /// the tables cannot be read: nothing changes then.
    pub fn look(&mut self, hops: &[(u32, IpAddr)]) -> io::Result<bool> {
        let entries = neighbours()?;
        self.link_macs = links()?
            .into_iter()
            .filter_map(|link| Some((link.ifindex, link.mac?)))
            .collect();
        Ok(self.take(hops, &entries))
    }

    /// `entries` (the kernel's neighbour table) for `hops`: a usable MAC is
    /// kept, a FAILED entry forgets its hop, no entry (or INCOMPLETE, being
    /// asked) keeps what was known; hops no longer asked about are
    /// forgotten. True when anything changed.
    fn take(&mut self, hops: &[(u32, IpAddr)], entries: &[NeighbourEntry]) -> bool {
        let before = self.known.clone();
        self.hops = hops.to_vec();
        self.known.retain(|hop, _| hops.contains(hop));
        for entry in entries {
            let hop = (entry.ifindex, entry.address);
            if !hops.contains(&hop) {
                continue;
            }
            if entry.state & NUD_FAILED != 0 {
                self.known.remove(&hop);
            } else if let Some(mac) = entry.usable_mac() {
                self.learn_hop(hop, mac);
            }
        }
        self.known != before
    }

    /// A usable MAC the kernel announced (a neighbour event) for one of
    /// the hops of the last look; true when it is new or moved.
    pub fn learn(&mut self, ifindex: u32, address: IpAddr, mac: [u8; 6]) -> bool {
        let hop = (ifindex, address);
        self.hops.contains(&hop) && self.learn_hop(hop, mac)
    }

    fn learn_hop(&mut self, hop: (u32, IpAddr), mac: [u8; 6]) -> bool {
        let Some(&src_mac) = self.link_macs.get(&hop.0) else {
            return false;
        };
        self.known.insert(hop, (mac, src_mac)) != Some((mac, src_mac))
    }

    /// Every hop known, in (interface, address) order.
    pub fn entries(&self) -> Vec<LastKnownNeighbour> {
        self.known
            .iter()
            .map(
                |(&(ifindex, address), &(mac, src_mac))| LastKnownNeighbour {
                    ifindex,
                    address,
                    mac,
                    src_mac,
                },
            )
            .collect()
    }

    /// Our MAC on `ifindex`, as if read from the kernel.
    #[cfg(test)]
    fn with_link_mac(mut self, ifindex: u32, mac: [u8; 6]) -> Self {
        self.link_macs.insert(ifindex, mac);
        self
    }
}

impl Dataplane {
    /// Makes the program's table of last known neighbours exactly
    /// `neighbours` (at most PNLB_MAX_LAST_KNOWN; the rest are left out).
    pub fn set_last_known_neighbours(
        &self,
        neighbours: &[LastKnownNeighbour],
    ) -> Result<(), DataplaneError> {
        let map = &self.maps().pnlb_last_known_neighbours;
        let failed = |source| DataplaneError::Map {
            map: "pnlb_last_known_neighbours",
            source,
        };
        let wanted: Vec<(NeighbourKey, Neighbour)> = neighbours
            .iter()
            .take(abi::MAX_LAST_KNOWN as usize)
            .map(|n| {
                let key = NeighbourKey {
                    ifindex: n.ifindex,
                    addr: abi::addr(n.address),
                };
                let value = Neighbour {
                    mac: n.mac,
                    src_mac: n.src_mac,
                };
                (key, value)
            })
            .collect();
        let keys: HashSet<&[u8]> = wanted.iter().map(|(key, _)| bytes_of(key)).collect();
        let stale: Vec<Vec<u8>> = map
            .keys()
            .filter(|key| !keys.contains(key.as_slice()))
            .collect();
        for key in stale {
            map.delete(&key).map_err(failed)?;
        }
        for (key, value) in &wanted {
            map.update(bytes_of(key), bytes_of(value), MapFlags::ANY)
                .map_err(failed)?;
        }
        Ok(())
    }

    /// Packets sent to a last known MAC since the program was loaded.
    pub fn last_known_sent(&self) -> Result<u64, DataplaneError> {
        Ok(crate::stats::per_cpu::<u64>(
            &self.maps().pnlb_last_known_sent,
            0,
            "pnlb_last_known_sent",
        )?
        .iter()
        .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnetlink::neighbours::NUD_INCOMPLETE;

    const REACHABLE: u16 = 0x02;
    const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn entry(address: IpAddr, state: u16, mac: Option<[u8; 6]>) -> NeighbourEntry {
        NeighbourEntry {
            ifindex: 2,
            address,
            state,
            mac,
        }
    }

    #[test]
    fn a_next_hop_the_kernel_forgets_is_kept_and_one_it_gave_up_on_is_not() {
        let router: IpAddr = "10.77.1.1".parse().unwrap();
        let other: IpAddr = "10.77.1.9".parse().unwrap();
        let hops = [(2, router)];
        let mut known = LastKnownNeighbours::default().with_link_mac(2, OUR_MAC);
        let usable = entry(router, REACHABLE, Some(ROUTER_MAC));
        let not_ours = entry(other, REACHABLE, Some([2, 0, 0, 0, 0, 7]));
        assert!(known.take(&hops, &[usable.clone(), not_ours]));
        let expected = vec![LastKnownNeighbour {
            ifindex: 2,
            address: router,
            mac: ROUTER_MAC,
            src_mac: OUR_MAC,
        }];
        assert_eq!(known.entries(), expected, "a hop not watched is not kept");
        assert!(!known.take(&hops, &[usable]), "the same again is no change");

        // Garbage-collected, then being asked again: still known; the
        // answer announced.
        assert!(!known.take(&hops, &[]));
        assert!(!known.take(&hops, &[entry(router, NUD_INCOMPLETE, None)]));
        assert_eq!(known.entries(), expected);
        assert!(
            !known.learn(2, router, ROUTER_MAC),
            "the same MAC is no change"
        );

        // Forgotten while unwatched, learned from an event once watched.
        assert!(known.take(&[], &[]));
        assert!(!known.learn(2, router, ROUTER_MAC), "not watched");
        assert!(!known.take(&hops, &[]));
        assert!(known.learn(2, router, ROUTER_MAC));
        assert_eq!(known.entries(), expected);

        // Garbage-collected again: still known.
        assert!(!known.take(&hops, &[]));
        assert!(!known.take(&hops, &[entry(router, NUD_INCOMPLETE, None)]));
        assert_eq!(known.entries(), expected);

        // A new MAC announced, then the kernel's asking went unanswered.
        assert!(known.learn(2, router, [2, 0, 0, 0, 0, 3]));
        assert!(!known.learn(2, other, [2, 0, 0, 0, 0, 3]), "not ours");
        assert_eq!(known.entries()[0].mac, [2, 0, 0, 0, 0, 3]);
        assert!(known.take(&hops, &[entry(router, NUD_FAILED, None)]));
        assert!(known.entries().is_empty());
    }

    #[test]
    fn a_next_hop_no_longer_watched_is_forgotten_and_one_without_our_mac_is_not_kept() {
        let router: IpAddr = "fd77:1::1".parse().unwrap();
        let mut known = LastKnownNeighbours::default().with_link_mac(2, OUR_MAC);
        let usable = entry(router, REACHABLE, Some(ROUTER_MAC));
        assert!(known.take(&[(2, router)], std::slice::from_ref(&usable)));
        assert!(known.take(&[], std::slice::from_ref(&usable)));
        assert!(known.entries().is_empty());

        let mut no_link_mac = LastKnownNeighbours::default();
        assert!(!no_link_mac.take(&[(2, router)], &[usable]));
        assert!(no_link_mac.entries().is_empty());
    }
}
