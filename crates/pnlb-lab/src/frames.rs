//! Whole Ethernet frames, built by hand and sent on a lab interface through
//! an AF_PACKET socket: what a switch trunk delivers that the lab's own
//! kernel cannot build (the CI kernel has no 802.1Q devices, so 802.1Q- and
//! QinQ-tagged traffic to the LB is written this way). Only frames between
//! lab addresses (10.77.0.0/16, fd77::/16) are sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netns::in_netns;
use crate::wire::{checksum, in_lab};
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
    let (ethertype, mut ip, addresses) = match (src.0, dst.0) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            (
                0x0800u16,
                ip,
                [s.octets().to_vec(), d.octets().to_vec()].concat(),
            )
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&udp_len.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            (
                0x86ddu16,
                ip,
                [s.octets().to_vec(), d.octets().to_vec()].concat(),
            )
        }
        _ => return frame,
    };
    if ethertype == 0x0800 {
        let check = checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());
    }
    // The pseudo-header (addresses, protocol, length) and the datagram.
    let mut pseudo = addresses;
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    let check = match checksum(&pseudo) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
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
