//! Where a backend is reached: egress interface, next-hop MAC and our own
//! MAC on that interface, read from the kernel's routing and neighbour
//! tables through iproute2's JSON output (every host running pnlb has it).
//!
//! The answer is looked up by the control plane and published in the
//! backend map, so the XDP program does no route or neighbour lookups.
//! All backends are resolved together, in a handful of `ip -batch` runs
//! whatever their number; unresolved neighbours are probed with one empty
//! UDP datagram each (port 9, discard), which makes the kernel resolve
//! them, and waited for once.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::loader::ifindex_of;

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

#[derive(Deserialize)]
struct RouteJson {
    dst: Option<String>,
    dev: Option<String>,
    gateway: Option<String>,
    prefsrc: Option<String>,
}

#[derive(Deserialize)]
struct NeighJson {
    dst: Option<String>,
    dev: Option<String>,
    lladdr: Option<String>,
    #[serde(default)]
    state: Vec<String>,
}

#[derive(Deserialize)]
struct LinkJson {
    ifname: Option<String>,
    address: Option<String>,
    ifindex: Option<u32>,
    /// The parent of a VLAN device.
    link: Option<String>,
    linkinfo: Option<LinkInfoJson>,
}

#[derive(Deserialize)]
struct LinkInfoJson {
    info_kind: Option<String>,
    info_data: Option<VlanJson>,
}

#[derive(Deserialize)]
struct VlanJson {
    protocol: Option<String>,
    id: Option<u16>,
}

/// A device as routes name it: its MAC, and for an 802.1Q VLAN device
/// the parent it sends on and its id.
#[derive(Clone, Debug)]
struct Device {
    mac: [u8; 6],
    vlan: Option<(String, u16)>,
}

impl LinkJson {
    fn vlan(&self) -> Option<(String, u16)> {
        let info = self.linkinfo.as_ref()?;
        let data = info.info_data.as_ref()?;
        if info.info_kind.as_deref() != Some("vlan") || data.protocol.as_deref() != Some("802.1Q") {
            return None;
        }
        Some((self.link.clone()?, data.id?))
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
pub fn vlan_devices() -> Vec<VlanDevice> {
    let links = ip_batch::<LinkJson>(&["-d"], &["link show type vlan".to_string()]);
    vlan_devices_of(&links.unwrap_or_default(), |name| ifindex_of(name).ok())
}

/// The VLAN devices among `links` (`ip -d -j link show`); `parent_index`
/// names a parent's ifindex.
fn vlan_devices_of(
    links: &[LinkJson],
    parent_index: impl Fn(&str) -> Option<u32>,
) -> Vec<VlanDevice> {
    links
        .iter()
        .filter_map(|link| {
            let (parent, vid) = link.vlan()?;
            Some(VlanDevice {
                ifindex: link.ifindex?,
                parent_ifindex: parent_index(&parent)?,
                vid,
            })
        })
        .collect()
}

struct Route {
    dev: String,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
}

impl Resolver for KernelResolver {
    fn resolve(&mut self, backends: &[IpAddr]) -> Resolution {
        let mut answers = Resolution::new();
        if backends.is_empty() {
            return answers;
        }
        let routes = match routes_to(backends) {
            Ok(routes) => routes,
            Err(err) => return backends.iter().map(|&b| (b, Err(err.clone()))).collect(),
        };
        let devices: BTreeSet<&str> = routes.values().map(|r| r.dev.as_str()).collect();
        let links = link_devices(&devices).unwrap_or_default();
        let hops: BTreeSet<(IpAddr, String)> = routes
            .iter()
            .map(|(&backend, r)| (r.gateway.unwrap_or(backend), r.dev.clone()))
            .collect();

        let deadline = Instant::now() + self.probe_wait;
        let mut probed = false;
        let neighbours = loop {
            let neighbours = neighbour_macs(&hops).unwrap_or_default();
            let missing: Vec<IpAddr> = hops
                .iter()
                .filter(|h| !neighbours.contains_key(h))
                .map(|(ip, _)| *ip)
                .collect();
            if missing.is_empty() {
                break neighbours;
            }
            if !probed {
                missing.iter().for_each(|&hop| probe(hop));
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
                    let device = links.get(&route.dev);
                    // A VLAN device sends on its parent, tagged.
                    let sends_on = device
                        .and_then(|d| d.vlan.as_ref())
                        .map_or(route.dev.as_str(), |(parent, _)| parent.as_str());
                    match (
                        ifindex_of(sends_on),
                        ifindex_of(&route.dev),
                        device,
                        neighbours.get(&(hop, route.dev.clone())),
                    ) {
                        (Err(err), _, _, _) | (_, Err(err), _, _) => Err(err.to_string()),
                        (_, _, None, _) => {
                            Err(format!("interface {} has no MAC address", route.dev))
                        }
                        (_, _, _, None) => Err(format!(
                            "{hop} does not answer ARP/neighbour discovery on {}",
                            route.dev
                        )),
                        (Ok(ifindex), Ok(route_device), Some(device), Some(&mac)) => Ok(NextHop {
                            ifindex,
                            vlan: device.vlan.as_ref().map_or(0, |(_, vid)| *vid),
                            device: route_device,
                            mac,
                            src_mac: device.mac,
                            gateway: route.gateway,
                            source: route.source,
                        }),
                    }
                }
            };
            answers.insert(backend, answer);
        }
        answers
    }
}

fn routes_to(backends: &[IpAddr]) -> Result<HashMap<IpAddr, Route>, String> {
    let commands: Vec<String> = backends.iter().map(|b| format!("route get {b}")).collect();
    let mut routes = HashMap::new();
    for route in ip_batch::<RouteJson>(&[], &commands)? {
        let Some(dst) = route.dst.as_deref().and_then(|d| d.parse::<IpAddr>().ok()) else {
            continue;
        };
        let Some(dev) = route.dev else { continue };
        let gateway = route.gateway.as_deref().and_then(|g| g.parse().ok());
        let source = route.prefsrc.as_deref().and_then(|s| s.parse().ok());
        routes.insert(
            dst,
            Route {
                dev,
                gateway,
                source,
            },
        );
    }
    Ok(routes)
}

fn link_devices(devices: &BTreeSet<&str>) -> Result<HashMap<String, Device>, String> {
    let commands: Vec<String> = devices
        .iter()
        .map(|d| format!("link show dev {d}"))
        .collect();
    Ok(ip_batch::<LinkJson>(&["-d"], &commands)?
        .into_iter()
        .filter_map(|link| {
            let device = Device {
                mac: parse_mac(link.address.as_deref()?)?,
                vlan: link.vlan(),
            };
            Some((link.ifname?, device))
        })
        .collect())
}

fn neighbour_macs(
    hops: &BTreeSet<(IpAddr, String)>,
) -> Result<HashMap<(IpAddr, String), [u8; 6]>, String> {
    // One dump of the whole table, matched here: a `neigh show to X` per
    // hop dumps the whole table each time (the kernel filters neighbour
    // dumps by device only), which for 1,000 backends was a million
    // entries serialized per refresh.
    Ok(ip_batch::<NeighJson>(&[], &["neigh show".to_string()])?
        .into_iter()
        .filter(|n| !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .filter_map(|n| {
            let hop = (n.dst?.parse().ok()?, n.dev?);
            let mac = parse_mac(n.lladdr.as_deref()?)?;
            hops.contains(&hop).then_some((hop, mac))
        })
        .collect())
}

/// One empty datagram: enough for the kernel to resolve the neighbour.
fn probe(hop: IpAddr) {
    let bind: SocketAddr = match hop {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], SocketAddr::new(hop, 9));
    }
}

/// Runs `ip -j [options] -force -batch -` with one command per line and
/// collects the entries of every JSON array it prints. Commands that fail
/// (no route) print nothing; callers match answers by their content.
fn ip_batch<T: for<'de> Deserialize<'de>>(
    options: &[&str],
    commands: &[String],
) -> Result<Vec<T>, String> {
    if commands.is_empty() {
        return Ok(Vec::new());
    }
    let mut child = Command::new("ip")
        .arg("-j")
        .args(options)
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|err| format!("cannot run `ip` (install iproute2): {err}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(commands.join("\n").as_bytes())
            .map_err(|err| format!("feeding `ip -batch`: {err}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|err| format!("running `ip -batch`: {err}"))?;
    let mut entries = Vec::new();
    for array in serde_json::Deserializer::from_slice(&output.stdout).into_iter::<Vec<T>>() {
        entries.extend(array.map_err(|err| format!("unexpected `ip -j` output: {err}"))?);
    }
    Ok(entries)
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
    fn vlan_devices_are_read_from_iproute2_details() {
        let json = br#"[{"ifindex":5,"link":"eth0","ifname":"eth0.100","mtu":1500,
            "address":"52:54:00:12:34:56","linkinfo":{"info_kind":"vlan",
            "info_data":{"protocol":"802.1Q","id":100,"flags":["REORDER_HDR"]}}},
            {"ifindex":6,"link":"eth0","ifname":"eth0.7","address":"52:54:00:12:34:56",
            "linkinfo":{"info_kind":"vlan","info_data":{"protocol":"802.1ad","id":7}}},
            {"ifindex":7,"ifname":"br0","address":"52:54:00:12:34:57",
            "linkinfo":{"info_kind":"bridge","info_data":{}}}]"#;
        let links: Vec<LinkJson> = serde_json::from_slice(json).unwrap();
        let devices = vlan_devices_of(&links, |name| (name == "eth0").then_some(2));
        assert_eq!(
            devices,
            vec![VlanDevice {
                ifindex: 5,
                parent_ifindex: 2,
                vid: 100
            }],
            "802.1ad devices and other kinds are not ours"
        );
        let garbage: Vec<LinkJson> = serde_json::from_slice(b"not json").unwrap_or_default();
        assert!(vlan_devices_of(&garbage, |_| Some(1)).is_empty());
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
