//! The kernel's word on next hops as it changes: neighbour (ARP / NDP),
//! route and link events from rtnetlink, and a way to make the kernel
//! re-verify a neighbour.
//!
//! Backend MACs are published in the backend map (nexthop.rs), so the XDP
//! program does no lookups; these events keep them true. A neighbour that
//! announces a new MAC (a gratuitous ARP or unsolicited neighbour
//! advertisement, as VRRP routers and Linux with arp_notify / ndisc_notify
//! send on a MAC change) shows up here at once. One that changes without a
//! word is caught by re-verification: packets that XDP forwards never
//! confirm the kernel's entries, so without it an entry stays STALE with
//! its old MAC forever; [`NetWatch::confirm`] asks the kernel to probe it
//! (NTF_USE), as if the kernel had a packet for it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::rtnetlink::neighbours::{
    parse_neighbour_entry, stale_neighbours, NeighbourEntry, NDA_DST, NDMSG_LEN,
};
use crate::rtnetlink::{
    family_and_octets, message, messages, route_socket, NLM_F_REQUEST, RTM_DELLINK, RTM_DELNEIGH,
    RTM_DELROUTE, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE,
};

const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

const NTF_USE: u8 = 0x01;
/// NUD_REACHABLE | STALE | DELAY | PROBE | NOARP | PERMANENT: the entry
/// has a usable MAC.
const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetEvent {
    /// A neighbour entry with a usable MAC: new, or its MAC or state moved.
    Neighbour {
        ifindex: u32,
        address: IpAddr,
        mac: [u8; 6],
    },
    /// A neighbour is gone or failed to answer.
    NeighbourLost { ifindex: u32, address: IpAddr },
    /// A route or link changed: next hops may be elsewhere now.
    Topology,
}

/// An rtnetlink socket subscribed to neighbour, route and link events.
pub struct NetWatch {
    socket: OwnedFd,
    /// Where datagrams are read into, reused.
    buffer: Vec<u8>,
}

impl NetWatch {
    /// Subscribes in the calling thread's network namespace.
    pub fn subscribe() -> io::Result<Self> {
        let socket = route_socket()?;
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        address.nl_groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        // SAFETY: address is a valid sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            socket,
            buffer: vec![0u8; 64 * 1024],
        })
    }

    /// The events that arrive within `timeout` (none if it passes first).
    /// An overrun of the socket's buffer (events lost) reads as Topology:
    /// the caller then asks the kernel about everything again.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<Vec<NetEvent>> {
        let mut ready = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut ready, 1, millis) } <= 0 {
            return Ok(Vec::new());
        }
        let mut events = Vec::new();
        loop {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    self.buffer.as_mut_ptr().cast(),
                    self.buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(events),
                    Some(libc::ENOBUFS) => events.push(NetEvent::Topology),
                    Some(libc::EINTR) => continue,
                    _ => return Err(err),
                }
                continue;
            }
            events.extend(parse_messages(&self.buffer[..n as usize]));
        }
    }

    /// Re-verifies those of `hops` (ifindex, address) whose entries are
    /// STALE ([`Self::confirm`] each); returns how many. Only those: the
    /// kernel takes the request's state for the entry's, so a confirmed
    /// PERMANENT entry (an operator's static ARP or neighbour entry)
    /// became INCOMPLETE, and then FAILED where nothing answers.
    pub fn reverify(&self, hops: &[(u32, IpAddr)]) -> usize {
        if hops.is_empty() {
            return 0;
        }
        let stale = stale_neighbours().unwrap_or_default();
        hops.iter()
            .filter(|hop| stale.contains(hop))
            .filter(|(ifindex, address)| self.confirm(*ifindex, *address).is_ok())
            .count()
    }

    /// Asks the kernel to verify its neighbour entry for `address` on
    /// `ifindex` (a STALE entry is probed, by unicast first); the answer
    /// comes back as an event. For STALE entries only ([`Self::reverify`]
    /// picks them): the entry takes the request's state.
    pub fn confirm(&self, ifindex: u32, address: IpAddr) -> io::Result<()> {
        let request = confirm_request(ifindex, address);
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: the request and address are valid for the sizes given.
        let n = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// RTM_NEWNEIGH with NTF_USE for an existing entry: the kernel's
/// neigh_event_send, as if it had a packet for the neighbour.
fn confirm_request(ifindex: u32, address: IpAddr) -> Vec<u8> {
    let (family, octets) = family_and_octets(address);
    let mut header = [0u8; NDMSG_LEN];
    header[0] = family;
    header[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // state 0: unchanged
    header[10] = NTF_USE;
    message(
        RTM_NEWNEIGH,
        NLM_F_REQUEST,
        0,
        &header,
        &[(NDA_DST, &octets)],
    )
}

/// The events in one datagram of netlink messages; what does not parse is
/// skipped.
fn parse_messages(bytes: &[u8]) -> Vec<NetEvent> {
    let mut events = Vec::new();
    for (kind, body) in messages(bytes) {
        match kind {
            RTM_NEWNEIGH | RTM_DELNEIGH => events.extend(parse_neighbour(kind, body)),
            RTM_NEWROUTE | RTM_DELROUTE | RTM_NEWLINK | RTM_DELLINK => {
                events.push(NetEvent::Topology)
            }
            _ => {}
        }
    }
    events
}

fn parse_neighbour(kind: u16, body: &[u8]) -> Option<NetEvent> {
    let NeighbourEntry {
        ifindex,
        address,
        state,
        mac,
    } = parse_neighbour_entry(body)?;
    match (kind, mac) {
        (RTM_NEWNEIGH, Some(mac)) if state & NUD_VALID != 0 => Some(NetEvent::Neighbour {
            ifindex,
            address,
            mac,
        }),
        _ => Some(NetEvent::NeighbourLost { ifindex, address }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtnetlink::neighbours::NDA_LLADDR;
    use crate::rtnetlink::NLMSG_HDRLEN;
    use std::net::Ipv6Addr;

    fn neighbour_message(kind: u16, state: u16, dst: &[u8], mac: Option<[u8; 6]>) -> Vec<u8> {
        let family = if dst.len() == 4 {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let mut body = vec![family, 0, 0, 0];
        body.extend_from_slice(&7i32.to_ne_bytes());
        body.extend_from_slice(&state.to_ne_bytes());
        body.extend_from_slice(&[0, 1]);
        body.extend_from_slice(&((4 + dst.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&NDA_DST.to_ne_bytes());
        body.extend_from_slice(dst);
        if let Some(mac) = mac {
            body.extend_from_slice(&10u16.to_ne_bytes());
            body.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
            body.extend_from_slice(&mac);
            body.extend_from_slice(&[0, 0]);
        }
        let mut message = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        message.extend_from_slice(&kind.to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&body);
        message
    }

    #[test]
    fn neighbour_events_parse_with_address_mac_and_state() {
        let mac = [2, 0, 0, 0, 0, 9];
        let mut bytes = neighbour_message(RTM_NEWNEIGH, 0x04, &[10, 77, 1, 11], Some(mac));
        bytes.extend(neighbour_message(RTM_NEWNEIGH, 0x20, &[0xfd; 16], None));
        bytes.extend(neighbour_message(RTM_NEWROUTE, 0, &[1, 2, 3, 4], None));
        assert_eq!(
            parse_messages(&bytes),
            vec![
                NetEvent::Neighbour {
                    ifindex: 7,
                    address: "10.77.1.11".parse().unwrap(),
                    mac
                },
                NetEvent::NeighbourLost {
                    ifindex: 7,
                    address: IpAddr::V6(Ipv6Addr::from([0xfd; 16]))
                },
                NetEvent::Topology,
            ]
        );
    }

    #[test]
    fn truncated_and_lying_messages_are_skipped_without_a_panic() {
        let whole = neighbour_message(RTM_NEWNEIGH, 0x02, &[10, 0, 0, 1], Some([1; 6]));
        for cut in 0..whole.len() {
            let _ = parse_messages(&whole[..cut]);
        }
        let mut lying = whole.clone();
        lying[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse_messages(&lying).is_empty());
        let mut attribute_lies = whole;
        attribute_lies[NLMSG_HDRLEN + NDMSG_LEN..NLMSG_HDRLEN + NDMSG_LEN + 2]
            .copy_from_slice(&200u16.to_ne_bytes());
        assert!(parse_messages(&attribute_lies).is_empty());
    }
}
