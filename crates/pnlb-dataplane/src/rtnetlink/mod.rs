//! The kernel's routing, neighbour, link and address tables, read over
//! rtnetlink in this process, in the calling thread's network namespace.
//!
//! The daemon asks them something every few seconds (STALE neighbours,
//! default routers) and resolves every backend's next hop every 30 s and
//! on each change; running `ip` for that cost a fork and an exec each time
//! (~1.5-2 ms of CPU on end here), which a server or client process woken
//! on that core waited for (docs/benchmarks.md). Here a question is one
//! request and its answers, in tens of microseconds.
//!
//! - [`neighbours`]: the ARP / NDP table;
//! - [`routes`]: default routers, and the route to each of a set of hosts;
//! - [`links`]: interfaces, their MACs and VLANs;
//! - [`addresses`]: the addresses configured here, and the host addresses
//!   that change hands with HA mastership.

pub mod addresses;
pub mod links;
pub mod neighbours;
pub mod routes;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub(crate) const RTM_NEWLINK: u16 = 16;
pub(crate) const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
pub(crate) const RTM_NEWROUTE: u16 = 24;
pub(crate) const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
pub(crate) const RTM_NEWNEIGH: u16 = 28;
pub(crate) const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

/// The attribute type without NLA_F_NESTED and NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How long a question may take before it is given up (the kernel answers
/// in microseconds; this only bounds a wedged socket).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
pub(crate) fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One netlink message: header (length, `kind`, `flags`, `sequence`, port
/// 0: the kernel fills it), the fixed `header` of its family, then
/// `attributes` as (type, value).
pub(crate) fn message(
    kind: u16,
    flags: u16,
    sequence: u32,
    header: &[u8],
    attributes: &[(u16, &[u8])],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + header.len() + 32);
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, below
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(header);
    for (kind, value) in attributes {
        out.resize(align4(out.len()), 0);
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
    }
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

/// Sends a dump request (`kind`, its family's fixed `header`) and parses
/// every answer of type `answer` with `parse` until the kernel says done;
/// what does not parse is left out.
fn dump<T>(
    kind: u16,
    header: &[u8],
    answer: u16,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> io::Result<Vec<T>> {
    let socket = query_socket()?;
    let request = message(kind, NLM_F_REQUEST | NLM_F_DUMP, 1, header, &[]);
    send(&socket, &request)?;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut parsed = Vec::new();
    loop {
        let Some(datagram) = receive(&socket, &mut buffer)? else {
            return Ok(parsed);
        };
        for (message, body) in messages(datagram) {
            match message {
                NLMSG_DONE => return Ok(parsed),
                NLMSG_ERROR => {
                    return match error_of(body) {
                        0 => Ok(parsed),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                message if message == answer => parsed.extend(parse(body)),
                _ => {}
            }
        }
    }
}

/// Sends `requests` (netlink messages, each answered by exactly one
/// message: an answer or an error) and hands every answer's (type, body)
/// to `each`, errors included, until all are answered.
fn ask_each(requests: &[Vec<u8>], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    // Sent in groups whose answers fit the socket's receive buffer: the
    // kernel builds each answer in a buffer of a page or so and drops what
    // does not fit (ENOBUFS: here 1,000 route requests at once did, 256
    // did not). 1,000 routes take ~9 ms in groups of 16.
    const GROUP: usize = 16;
    let socket = query_socket()?;
    let mut buffer = vec![0u8; 64 * 1024];
    for group in requests.chunks(GROUP) {
        send(&socket, &datagram_of(group))?;
        let mut answered = 0;
        while answered < group.len() {
            let Some(datagram) = receive(&socket, &mut buffer)? else {
                return Err(io::ErrorKind::UnexpectedEof.into());
            };
            for (message, body) in messages(datagram) {
                answered += 1;
                each(message, body);
            }
        }
    }
    Ok(())
}

/// Requests as one datagram: each starts 4-byte aligned, where the kernel
/// looks for the next (NLMSG_ALIGN of the one before).
fn datagram_of(requests: &[Vec<u8>]) -> Vec<u8> {
    let mut datagram = Vec::new();
    for request in requests {
        datagram.resize(align4(datagram.len()), 0);
        datagram.extend_from_slice(request);
    }
    datagram
}

/// Sends one request that asks for an acknowledgement (NLM_F_ACK) and
/// waits for it: Ok, or the error the kernel answered with.
fn ask(request: &[u8]) -> io::Result<()> {
    let mut errno = None;
    ask_each(&[request.to_vec()], |kind, body| {
        if kind == NLMSG_ERROR {
            errno = Some(error_of(body));
        }
    })?;
    match errno {
        Some(0) => Ok(()),
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Err(io::Error::other(
            "the kernel answered without an acknowledgement",
        )),
    }
}

/// The (negative) errno an NLMSG_ERROR body carries, as a positive one; 0
/// is an acknowledgement.
fn error_of(body: &[u8]) -> i32 {
    u32_at(body, 0).map_or(0, |errno| (errno as i32).saturating_neg())
}

/// A NETLINK_ROUTE socket whose reads give up after ANSWER_TIMEOUT.
fn query_socket() -> io::Result<OwnedFd> {
    let socket = route_socket()?;
    let limit = libc::timeval {
        tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: limit is a valid timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&limit as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

fn send(socket: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: the bytes are valid for their length; the socket is
    // connected to nothing, so the kernel (port 0) gets them.
    let sent = unsafe { libc::send(socket.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram into `buffer`; None when the socket is closed.
fn receive<'a>(socket: &OwnedFd, buffer: &'a mut [u8]) -> io::Result<Option<&'a [u8]>> {
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok((n > 0).then(|| &buffer[..n as usize]));
    }
}

pub(crate) fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The (type, body) of each netlink message in one datagram; stops at the
/// first whose length does not fit.
pub(crate) fn messages(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32_at(bytes, 0)? as usize;
        if len < NLMSG_HDRLEN || len > bytes.len() {
            return None;
        }
        let kind = u16_at(bytes, 4)?;
        let body = &bytes[NLMSG_HDRLEN..len];
        bytes = &bytes[align4(len).min(bytes.len())..];
        Some((kind, body))
    })
}

/// The (type, value) attributes of a netlink message's tail (or of a
/// nested attribute's value); stops at the first that does not fit.
pub(crate) fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(bytes, 0)?);
        let kind = u16_at(bytes, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let value = &bytes[4..len];
        bytes = &bytes[align4(len).min(bytes.len())..];
        Some((kind, value))
    })
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An address attribute's value in `family`; None if its length is not
/// that family's.
pub(crate) fn address_of(family: u8, value: &[u8]) -> Option<IpAddr> {
    match i32::from(family) {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(value).ok()?,
        ))),
        _ => None,
    }
}

/// (family, the address's bytes) as requests carry them.
pub(crate) fn family_and_octets(address: IpAddr) -> (u8, Vec<u8>) {
    match address {
        IpAddr::V4(v4) => (libc::AF_INET as u8, v4.octets().to_vec()),
        IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets().to_vec()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One attribute as the kernel writes it, padded.
    pub(crate) fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(align4(out.len()), 0);
        out
    }

    #[test]
    fn a_built_message_walks_back_to_its_parts() {
        let built = message(
            RTM_GETROUTE,
            NLM_F_REQUEST,
            7,
            &[2, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[(1, &[10, 0, 0, 1]), (4, &[1, 2])],
        );
        assert_eq!(u32_at(&built, 0), Some(built.len() as u32));
        assert_eq!(u32_at(&built, 8), Some(7));
        let walked: Vec<(u16, &[u8])> = messages(&built).collect();
        assert_eq!(walked.len(), 1);
        assert_eq!(walked[0].0, RTM_GETROUTE);
        let attrs: Vec<(u16, &[u8])> = attributes(&walked[0].1[12..]).collect();
        assert_eq!(attrs, vec![(1, &[10, 0, 0, 1][..]), (4, &[1, 2][..])]);
    }

    #[test]
    fn requests_of_odd_lengths_go_out_aligned_and_walk_back_whole() {
        let mac = [2u8, 0, 0, 0, 0, 1];
        let odd = message(RTM_NEWNEIGH, NLM_F_REQUEST, 1, &[0; 12], &[(2, &mac)]);
        assert_eq!(odd.len() % 4, 2, "a 6-byte attribute leaves it unaligned");
        let next = message(RTM_GETROUTE, NLM_F_REQUEST, 2, &[0; 12], &[]);
        let datagram = datagram_of(&[odd, next]);
        let kinds: Vec<u16> = messages(&datagram).map(|(kind, _)| kind).collect();
        assert_eq!(kinds, vec![RTM_NEWNEIGH, RTM_GETROUTE]);
    }

    #[test]
    fn nested_flags_are_not_part_of_an_attributes_type() {
        let nested = attribute(18 | 0x8000, &attribute(1, b"vlan\0"));
        let walked: Vec<(u16, &[u8])> = attributes(&nested).collect();
        assert_eq!(walked[0].0, 18);
        assert_eq!(attributes(walked[0].1).next(), Some((1, &b"vlan\0"[..])));
    }

    #[test]
    fn errors_read_as_positive_errnos() {
        assert_eq!(
            error_of(&(-libc::ENETUNREACH).to_ne_bytes()),
            libc::ENETUNREACH
        );
        assert_eq!(error_of(&0i32.to_ne_bytes()), 0);
        assert_eq!(error_of(&[1]), 0);
    }
}
