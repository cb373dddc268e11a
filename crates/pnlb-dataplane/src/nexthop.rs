//! Where a backend is reached: egress interface, next-hop MAC and our own
//! MAC on that interface, read from the kernel's routing, link and
//! neighbour tables over rtnetlink (rtnetlink/).
//!
//! The answer is looked up by the control plane and published in the
//! backend map, so the XDP program does no route or neighbour lookups.
//! All backends are resolved together: their routes asked in groups, the
//! links and neighbours in one dump each, whatever their number;
//! unresolved neighbours are probed with one empty UDP datagram each
//! (port 9, discard), which makes the kernel resolve them, and waited for
//! once.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::rtnetlink::links::{links, Link};
use crate::rtnetlink::neighbours::neighbours;
use crate::rtnetlink::routes::routes_to;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The interface to send on: for a VLAN device, its parent (XDP runs
    /// there, and a VLAN device cannot be redirected to).
    pub ifindex: u32,
    /// The 802.1Q VLAN id of the route's interface, 0 = untagged.
    pub vlan: u16,
    /// The route's interface itself (the VLAN device, or `ifindex`): where
    /// the kernel keeps the neighbour entry, and its events name.
    pub device: u32,
    pub mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Set when the backend is not on-link but behind this router.
    pub gateway: Option<IpAddr>,
    /// Our address on the route to the backend (its preferred source):
    /// the outer source of tun packets unless the service names one.
    pub source: Option<IpAddr>,
}

/// The next hop of each backend, or why it has none.
pub type Resolution = HashMap<IpAddr, Result<NextHop, String>>;

/// Finds the next hops of backend addresses.
pub trait Resolver {
    /// Resolves every address given; each one gets an answer. The
    /// addresses are every backend there is (a resolver that keeps them
    /// may forget the others).
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution;

    /// Resolves some backends among others that stay (a change to a few
    /// services): a resolver that keeps them forgets none.
    fn resolve_some(&mut self, backends: &[IpAddr]) -> Resolution {
        self.resolve(backends)
    }
}

/// The host's kernel tables, in the calling thread's network namespace.
pub struct KernelResolver {
    /// How long to wait for neighbours to resolve after probing them (zero:
    /// probe, and answer with what is known now).
    pub probe_wait: Duration,
}

impl Default for KernelResolver {
    fn default() -> Self {
        Self {
            probe_wait: Duration::from_millis(1500),
        }
    }
}

/// An 802.1Q VLAN device: (its ifindex, its parent's, its VLAN id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VlanDevice {
    pub ifindex: u32,
    pub parent_ifindex: u32,
    pub vid: u16,
}

/// Every 802.1Q VLAN device of this network namespace (for replies the FIB
/// routes out of one: the data plane sends them on the parent, tagged).
/// None if the kernel could not be asked.
pub fn vlan_devices() -> Option<Vec<VlanDevice>> {
    Some(vlan_devices_of(&links().ok()?))
}

fn vlan_devices_of(links: &[Link]) -> Vec<VlanDevice> {
    links
        .iter()
        .filter_map(|link| {
            let (parent_ifindex, vid) = link.vlan?;
            Some(VlanDevice {
                ifindex: link.ifindex,
                parent_ifindex,
                vid,
            })
        })
        .collect()
}

impl Resolver for KernelResolver {
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution {
        self.try_resolve(backends).unwrap_or_else(|err| {
            backends
                .iter()
                .map(|&backend| (backend, Err(err.clone())))
                .collect()
        })
    }
}

impl KernelResolver {
    /// Every backend's next hop or why it has none; Err when the kernel's
    /// tables could not be read at all (an rtnetlink failure), which says
    /// nothing about any backend: a caller that knows their last next
    /// hops should keep them rather than take this for "no route".
    pub fn try_resolve(&mut self, backends: &[IpAddr]) -> Result<Resolution, String> {
        let mut answers = Resolution::new();
        if backends.is_empty() {
            return Ok(answers);
        }
        let (routes, links) = routes_to(backends)
            .and_then(|routes| Ok((routes, links()?)))
            .map_err(|err| format!("cannot read the kernel's routes and links: {err}"))?;
        let links: HashMap<u32, Link> = links.into_iter().map(|l| (l.ifindex, l)).collect();
        let hops: BTreeSet<(IpAddr, u32)> = routes
            .iter()
            .map(|(&backend, r)| (r.gateway.unwrap_or(backend), r.oif))
            .collect();

        let deadline = Instant::now() + self.probe_wait;
        let mut probed = false;
        let neighbours = loop {
            let neighbours = neighbour_macs(&hops)
                .map_err(|err| format!("cannot read the kernel's neighbours: {err}"))?;
            let missing: Vec<&(IpAddr, u32)> = hops
                .iter()
                .filter(|h| !neighbours.contains_key(h))
                .collect();
            if missing.is_empty() {
                break neighbours;
            }
            if !probed {
                missing.iter().for_each(|&&(hop, oif)| probe(oif, hop));
                probed = true;
            }
            if Instant::now() >= deadline {
                break neighbours;
            }
            sleep(Duration::from_millis(50));
        };

        for &backend in backends {
            let answer = match routes.get(&backend) {
                None => Err(format!("no route to {backend}")),
                Some(route) => {
                    let hop = route.gateway.unwrap_or(backend);
                    match links.get(&route.oif) {
                        None => Err(format!("interface {} is gone", route.oif)),
                        Some(Link {
                            name, mac: None, ..
                        }) => Err(format!("interface {name} has no MAC address")),
                        Some(device @ Link { mac: Some(mac), .. }) => {
                            match neighbours.get(&(hop, route.oif)) {
                                None => Err(format!(
                                    "{hop} does not answer ARP/neighbour discovery on {}",
                                    device.name
                                )),
                                Some(&next_mac) => Ok(NextHop {
                                    // A VLAN device sends on its parent, tagged.
                                    ifindex: device.vlan.map_or(route.oif, |(parent, _)| parent),
                                    vlan: device.vlan.map_or(0, |(_, vid)| vid),
                                    device: route.oif,
                                    mac: next_mac,
                                    src_mac: *mac,
                                    gateway: route.gateway,
                                    source: route.source,
                                }),
                            }
                        }
                    }
                }
            };
            answers.insert(backend, answer);
        }
        Ok(answers)
    }
}

/// The MACs of those `hops` (address, interface) the kernel has one for
/// now. One dump of the whole table, matched here (the kernel filters
/// neighbour dumps by device only).
fn neighbour_macs(
    hops: &BTreeSet<(IpAddr, u32)>,
) -> std::io::Result<HashMap<(IpAddr, u32), [u8; 6]>> {
    Ok(neighbours()?
        .into_iter()
        .filter_map(|entry| {
            let hop = (entry.address, entry.ifindex);
            let mac = entry.usable_mac()?;
            hops.contains(&hop).then_some((hop, mac))
        })
        .collect())
}

/// Probes those of `hops` (interface, neighbour) the kernel has no usable
/// entry for (none, INCOMPLETE or FAILED); returns how many. For next hops
/// the data plane needs before anything else on this host sends to them:
/// a node that takes over has never sent to its default router, and the
/// replies it translates can then only go to the kernel, which refuses
/// them while the VIPs they come from are its own addresses (a martian
/// source), until the router happens to ask for us.
pub fn probe_unresolved(hops: &[(u32, IpAddr)]) -> usize {
    if hops.is_empty() {
        return 0;
    }
    let wanted: BTreeSet<(IpAddr, u32)> = hops.iter().map(|&(i, a)| (a, i)).collect();
    // Unread: nothing is known to be missing.
    let Ok(resolved) = neighbour_macs(&wanted) else {
        return 0;
    };
    wanted
        .iter()
        .filter(|hop| !resolved.contains_key(hop))
        .inspect(|&&(address, ifindex)| probe(ifindex, address))
        .count()
}

/// One empty datagram to `hop` on interface `ifindex`: enough for the
/// kernel to resolve the neighbour. A link-local IPv6 hop (an IPv6 router
/// as router advertisements name it) is sent to on that interface: without
/// a scope the kernel picks one itself, which on a host with several need
/// not be the router's.
fn probe(ifindex: u32, hop: IpAddr) {
    let (bind, to) = match hop {
        IpAddr::V4(_) => (SocketAddr::from(([0, 0, 0, 0], 0)), SocketAddr::new(hop, 9)),
        IpAddr::V6(v6) => {
            let scope = if v6.is_unicast_link_local() {
                ifindex
            } else {
                0
            };
            (
                SocketAddr::from(([0u16; 8], 0)),
                SocketAddr::V6(SocketAddrV6::new(v6, 9, 0, scope)),
            )
        }
    };
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], to);
    }
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_devices_are_the_links_with_a_vlan() {
        let links = [
            Link {
                ifindex: 5,
                name: "eth0.100".into(),
                mac: Some([2; 6]),
                vlan: Some((2, 100)),
            },
            Link {
                ifindex: 2,
                name: "eth0".into(),
                mac: Some([2; 6]),
                vlan: None,
            },
        ];
        assert_eq!(
            vlan_devices_of(&links),
            vec![VlanDevice {
                ifindex: 5,
                parent_ifindex: 2,
                vid: 100
            }]
        );
    }

    #[test]
    fn macs_parse_only_when_well_formed() {
        assert_eq!(
            parse_mac("02:00:0a:4d:01:0b"),
            Some([2, 0, 0x0a, 0x4d, 1, 0x0b])
        );
        assert_eq!(parse_mac("02:00:0a:4d:01"), None);
        assert_eq!(parse_mac("02:00:0a:4d:01:0b:00"), None);
        assert_eq!(parse_mac("zz:00:0a:4d:01:0b"), None);
    }
}
