//! What the data-plane benchmarks share.

use std::net::IpAddr;

use pnlb_dataplane::nexthop::{NextHop, Resolution, Resolver};

/// Every backend behind one next hop, as a flat L2 network would have it.
pub struct Static;

impl Resolver for Static {
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution {
        let hop = NextHop {
            ifindex: 1,
            vlan: 0,
            device: 1,
            mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            gateway: None,
            source: Some(IpAddr::from([10, 77, 1, 2])),
        };
        backends.iter().map(|&b| (b, Ok(hop))).collect()
    }
}
