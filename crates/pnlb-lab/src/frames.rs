//! Whole Ethernet frames, built by hand and sent on a lab interface through
//! an AF_PACKET socket: what a switch trunk delivers that the lab's own
//! kernel cannot build (the CI kernel has no 802.1Q devices, so 802.1Q- and
//! QinQ-tagged traffic to the LB is written this way). Only frames between
//! lab addresses (10.77.0.0/16, fd77::/16) are sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netns::in_netns;
use crate::LabError;

/// An 802.1Q-tagged (`tags`: outermost first, each (TPID, TCI)) UDP
/// datagram from `src` to `dst`, checksums computed.
pub fn tagged_udp(
    macs: ([u8; 6], [u8; 6]),
    tags: &[(u16, u16)],
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let (src_mac, dst_mac) = macs;
    let mut frame = dst_mac.to_vec();
    frame.extend_from_slice(&src_mac);
    for (tpid, tci) in tags {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&tci.to_be_bytes());
    }
    let udp_len = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(udp_len as usize);
    udp.extend_from_slice(&src.1.to_be_bytes());
    udp.extend_from_slice(&dst.1.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = 20 + udp_len;
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let check = !fold(sum(&ip));
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            let pseudo = sum(&s.octets()) + sum(&d.octets()) + 17 + u32::from(udp_len);
            let check = !fold(pseudo + sum(&udp));
            udp[6..8].copy_from_slice(&(if check == 0 { 0xffff } else { check }).to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&udp_len.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let pseudo = sum(&s.octets()) + sum(&d.octets()) + 17 + u32::from(udp_len);
            let check = !fold(pseudo + sum(&udp));
            udp[6..8].copy_from_slice(&(if check == 0 { 0xffff } else { check }).to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        _ => {}
    }
    frame.extend_from_slice(&udp);
    frame
}

fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IP addresses a frame carries, past any VLAN tags.
fn addresses(frame: &[u8]) -> Option<(IpAddr, IpAddr)> {
    let mut at = 12;
    loop {
        let ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
        match ethertype {
            0x8100 | 0x88a8 => at += 4,
            0x0800 => {
                let ip = frame.get(at + 2..at + 22)?;
                let s: [u8; 4] = ip[12..16].try_into().ok()?;
                let d: [u8; 4] = ip[16..20].try_into().ok()?;
                return Some((Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into()));
            }
            0x86dd => {
                let ip = frame.get(at + 2..at + 42)?;
                let s: [u8; 16] = ip[8..24].try_into().ok()?;
                let d: [u8; 16] = ip[24..40].try_into().ok()?;
                return Some((Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into()));
            }
            _ => return None,
        }
    }
}

fn in_lab(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.octets()[..2] == [10, 77],
        IpAddr::V6(v6) => v6.segments()[0] == 0xfd77,
    }
}

/// Sends each frame once on `dev` in namespace `ns`; returns how many went.
pub fn send(ns: &str, dev: &str, frames: Vec<Vec<u8>>) -> Result<usize, LabError> {
    for frame in &frames {
        match addresses(frame) {
            Some((s, d)) if in_lab(s) && in_lab(d) => {}
            _ => {
                return Err(LabError::Setup(
                    "raw frames are for lab addresses (10.77.0.0/16, fd77::/16) only".into(),
                ))
            }
        }
    }
    let dev = dev.to_string();
    in_netns(ns, move || send_here(&dev, &frames))?
}

fn send_here(dev: &str, frames: &[Vec<u8>]) -> Result<usize, LabError> {
    let failed = |what: &str| LabError::Command {
        command: format!("AF_PACKET {what} on {dev}"),
        reason: std::io::Error::last_os_error().to_string(),
    };
    let name = std::ffi::CString::new(dev).map_err(|_| failed("device name"))?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(failed("if_nametoindex"));
    }
    // SAFETY: plain socket(2); owned below. Protocol 0: send only.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(failed("socket"));
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sent = 0;
    for frame in frames {
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the frame and address are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(failed("sendto"));
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_to_or_from_outside_the_lab_are_refused() {
        let frame = |src: &str, dst: &str| {
            tagged_udp(
                ([2; 6], [4; 6]),
                &[(0x8100, 100)],
                (src.parse().unwrap(), 1000),
                (dst.parse().unwrap(), 7001),
                b"x",
            )
        };
        assert!(addresses(&frame("10.77.0.2", "10.77.100.1"))
            .is_some_and(|(s, d)| in_lab(s) && in_lab(d)));
        assert!(send("nowhere", "eth0", vec![frame("10.77.0.2", "8.8.8.8")]).is_err());
        assert!(send("nowhere", "eth0", vec![frame("fd77::2", "2001:db8::1")]).is_err());
        assert!(send("nowhere", "eth0", vec![vec![0; 10]]).is_err());
    }
}
