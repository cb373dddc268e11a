//! What changes hands with mastership: the VIPs and `floating` addresses
//! on ha.interface, announced to the segment at once (a gratuitous ARP
//! for IPv4, an unsolicited neighbour advertisement for IPv6), so
//! neighbours switch to the new active node without waiting for their
//! caches to expire.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use pnlb_dataplane::loader::ifindex_of;
use pnlb_dataplane::rtnetlink::addresses::{
    add_host_address, interface_addresses, remove_host_address, SCOPE_GLOBAL,
};

/// This node's own (first global) address of the family on `interface`.
pub fn own_address(interface: &str, v6: bool) -> Result<IpAddr> {
    let ifindex = ifindex_of(interface)?;
    interface_addresses()
        .with_context(|| format!("ha.interface {interface}: cannot read its addresses"))?
        .into_iter()
        .filter(|a| a.ifindex == ifindex && a.scope == SCOPE_GLOBAL)
        // Host routes (/32, /128) are floating addresses, not ours.
        .filter(|a| !matches!(a.prefix_len, 32 | 128))
        .map(|a| a.address)
        .find(|a| a.is_ipv6() == v6)
        .with_context(|| format!("ha.interface {interface} has no address to advertise from"))
}

/// Puts the addresses on the interface (over rtnetlink: a takeover forks
/// no process) and announces them.
pub fn claim(interface: &str, addresses: &[IpAddr]) -> Result<()> {
    let ifindex = ifindex_of(interface)?;
    for &address in addresses {
        add_host_address(ifindex, address)
            .with_context(|| format!("adding {address} to {interface}"))?;
    }
    announce(interface, addresses)
}

/// Tells the segment each address is here now: a gratuitous ARP for an
/// IPv4 one, an unsolicited neighbour advertisement for an IPv6 one (the
/// kernel sends none for an address added without DAD).
pub fn announce(interface: &str, addresses: &[IpAddr]) -> Result<()> {
    for &address in addresses {
        match address {
            IpAddr::V4(v4) => gratuitous_arp(interface, v4)
                .with_context(|| format!("announcing {v4} on {interface}"))?,
            IpAddr::V6(v6) => unsolicited_na(interface, v6)
                .with_context(|| format!("announcing {v6} on {interface}"))?,
        }
    }
    Ok(())
}

/// Takes the addresses off the interface.
pub fn release(interface: &str, addresses: &[IpAddr]) -> Result<()> {
    let ifindex = ifindex_of(interface)?;
    for &address in addresses {
        remove_host_address(ifindex, address)
            .with_context(|| format!("removing {address} from {interface}"))?;
    }
    Ok(())
}

/// One ARP request for `address` from `address` (a gratuitous ARP), sent
/// to the broadcast address: every neighbour updates its entry.
fn gratuitous_arp(interface: &str, address: Ipv4Addr) -> Result<()> {
    let mac = own_mac(interface)?;
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());
    send_frame(interface, libc::ETH_P_ARP as u16, &frame).context("sending a gratuitous ARP")
}

/// All nodes on the link (ff02::1) and its Ethernet multicast address.
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// An unsolicited neighbour advertisement of `address` (RFC 4861 7.2.6:
/// to all nodes, override set, our MAC as the target's link-layer
/// address): every neighbour holding an entry for it takes the new MAC.
fn unsolicited_na(interface: &str, address: Ipv6Addr) -> Result<()> {
    let mac = own_mac(interface)?;
    let frame = neighbour_advertisement(mac, address);
    send_frame(interface, libc::ETH_P_IPV6 as u16, &frame)
        .context("sending a neighbour advertisement")
}

/// The whole frame of an unsolicited neighbour advertisement.
fn neighbour_advertisement(mac: [u8; 6], address: Ipv6Addr) -> Vec<u8> {
    let mut icmp = Vec::with_capacity(32);
    icmp.extend_from_slice(&[136, 0, 0, 0]); // type, code, checksum
    icmp.extend_from_slice(&[0x20, 0, 0, 0]); // override; not a router, not solicited
    icmp.extend_from_slice(&address.octets());
    icmp.extend_from_slice(&[2, 1]); // target link-layer address, 8 bytes
    icmp.extend_from_slice(&mac);
    let checksum = icmpv6_checksum(address, ALL_NODES, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + 40 + icmp.len());
    frame.extend_from_slice(&ALL_NODES_MAC);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]); // version 6
    frame.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[58, 255]); // ICMPv6; hop limit 255, as NDP requires
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&ALL_NODES.octets());
    frame.extend_from_slice(&icmp);
    frame
}

/// The ICMPv6 checksum of `message` (its checksum field zero) from `src`
/// to `dst`, over the IPv6 pseudo-header.
fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + message.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(message);
    pnlb_dataplane::checksum::internet(&pseudo)
}

fn own_mac(interface: &str) -> Result<[u8; 6]> {
    pnlb_dataplane::own_macs::mac_of(interface)
        .with_context(|| format!("reading {interface}'s MAC address"))
}

/// Sends `frame` (Ethernet header included) out of `interface`.
fn send_frame(interface: &str, ethertype: u16, frame: &[u8]) -> Result<()> {
    let ifindex = pnlb_dataplane::loader::ifindex_of(interface)?;
    let protocol = ethertype.to_be();
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a packet socket");
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = protocol;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and to are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&to as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if sent < 0 {
        return Err(error.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_neighbour_advertisement_is_one_a_neighbour_takes() {
        let mac = [0x02, 0x4c, 0x42, 0, 0, 9];
        let address: Ipv6Addr = "fd77:1::254".parse().expect("address");
        let frame = neighbour_advertisement(mac, address);
        assert_eq!(frame.len(), 14 + 40 + 32);
        assert_eq!(&frame[..6], &ALL_NODES_MAC, "to all nodes");
        assert_eq!(&frame[6..12], &mac);
        assert_eq!((frame[20], frame[21]), (58, 255), "ICMPv6, hop limit 255");
        let icmp = &frame[54..];
        assert_eq!(
            (icmp[0], icmp[1], icmp[4]),
            (136, 0, 0x20),
            "NA, override only"
        );
        assert_eq!(&icmp[8..24], &address.octets(), "the target");
        assert_eq!(&icmp[24..], &[2, 1, 0x02, 0x4c, 0x42, 0, 0, 9], "our MAC");
        // A checksum that is right sums, with itself, to zero.
        assert_eq!(icmpv6_checksum(address, ALL_NODES, icmp), 0);
    }
}
