//! What changes hands with mastership: the VIPs and `floating` addresses
//! on ha.interface, announced to the segment at once (gratuitous ARP for
//! IPv4; for IPv6 the kernel sends unsolicited neighbour advertisements
//! when an address is added with ndisc_notify on), so neighbours switch to
//! the new active node without waiting for their caches to expire.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    let err = String::from_utf8_lossy(&out.stderr);
    // Adding what is there, or removing what is gone, is fine.
    if !out.status.success() && !err.contains("File exists") && !err.contains("Cannot assign") {
        bail!("ip {}: {}", args.join(" "), err.trim());
    }
    Ok(())
}

fn prefix(address: IpAddr) -> String {
    match address {
        IpAddr::V4(_) => format!("{address}/32"),
        IpAddr::V6(_) => format!("{address}/128"),
    }
}

/// This node's own (first global) address of the family on `interface`.
pub fn own_address(interface: &str, v6: bool) -> Result<IpAddr> {
    #[derive(serde::Deserialize)]
    struct Link {
        #[serde(default)]
        addr_info: Vec<Info>,
    }
    #[derive(serde::Deserialize)]
    struct Info {
        local: Option<String>,
        scope: Option<String>,
        prefixlen: Option<u8>,
    }
    let out = Command::new("ip")
        .args(["-j", "addr", "show", "dev", interface])
        .output()
        .context("running ip")?;
    let links: Vec<Link> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("ha.interface {interface}: cannot read its addresses"))?;
    links
        .iter()
        .flat_map(|l| &l.addr_info)
        .filter(|i| i.scope.as_deref() == Some("global"))
        // Host routes (/32, /128) are floating addresses, not ours.
        .filter(|i| !matches!(i.prefixlen, Some(32) | Some(128)))
        .filter_map(|i| i.local.as_deref()?.parse::<IpAddr>().ok())
        .find(|a| a.is_ipv6() == v6)
        .with_context(|| format!("ha.interface {interface} has no address to advertise from"))
}

/// Puts the addresses on the interface and announces them.
pub fn claim(interface: &str, addresses: &[IpAddr]) -> Result<()> {
    let sysctl = format!("/proc/sys/net/ipv6/conf/{interface}/ndisc_notify");
    let _ = std::fs::write(sysctl, "1");
    for &address in addresses {
        let family = if address.is_ipv6() { "-6" } else { "-4" };
        let prefix_text = prefix(address);
        let mut args = vec![family, "addr", "add", &prefix_text, "dev", interface];
        if address.is_ipv6() {
            args.push("nodad");
        }
        ip(&args)?;
    }
    announce(interface, addresses)
}

/// A gratuitous ARP for each IPv4 address (the kernel announces IPv6 ones
/// as they are added).
pub fn announce(interface: &str, addresses: &[IpAddr]) -> Result<()> {
    for &address in addresses {
        if let IpAddr::V4(v4) = address {
            gratuitous_arp(interface, v4)
                .with_context(|| format!("announcing {v4} on {interface}"))?;
        }
    }
    Ok(())
}

/// Takes the addresses off the interface.
pub fn release(interface: &str, addresses: &[IpAddr]) -> Result<()> {
    for &address in addresses {
        let family = if address.is_ipv6() { "-6" } else { "-4" };
        ip(&[family, "addr", "del", &prefix(address), "dev", interface])?;
    }
    Ok(())
}

/// One ARP request for `address` from `address` (a gratuitous ARP), sent
/// to the broadcast address: every neighbour updates its entry.
fn gratuitous_arp(interface: &str, address: Ipv4Addr) -> Result<()> {
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))
        .with_context(|| format!("reading {interface}'s MAC address"))?;
    let mac = pnlb_dataplane::nexthop::parse_mac(mac_text.trim())
        .with_context(|| format!("{interface}'s MAC address {mac_text:?}"))?;
    let ifindex = pnlb_dataplane::loader::ifindex_of(interface)?;
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    frame.extend_from_slice(&mac);
    frame.extend_from_slice(&address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&address.octets());

    let protocol = (libc::ETH_P_ARP as u16).to_be();
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
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
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
        return Err(error).context("sending a gratuitous ARP");
    }
    Ok(())
}
