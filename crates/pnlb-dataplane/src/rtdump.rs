//! The kernel's neighbour and route tables, read over rtnetlink in this
//! process. The daemon asks for the STALE neighbours and the default
//! routers every few seconds; running `ip` for that cost a fork and an exec
//! each time (~1.5-2 ms of CPU on end here), which a server or client
//! process woken on that core waited for (docs/benchmarks.md).

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use crate::netwatch::{
    attributes, messages, parse_neighbour_entry, route_socket, u32_at, NLMSG_HDRLEN, NLM_F_REQUEST,
    RTM_NEWNEIGH, RTM_NEWROUTE,
};

const RTM_GETROUTE: u16 = 26;
const RTM_GETNEIGH: u16 = 30;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;

const NUD_STALE: u16 = 0x04;

/// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
/// type, flags (u32).
const RTMSG_LEN: usize = 12;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;

/// How long a dump may take before it is given up (the kernel answers in
/// microseconds; this only bounds a wedged socket).
const DUMP_TIMEOUT: Duration = Duration::from_secs(2);

/// The neighbour entries in state STALE, as (ifindex, address): the ones
/// worth re-verifying (see NetWatch::reverify).
pub fn stale_neighbours() -> io::Result<HashSet<(u32, IpAddr)>> {
    let mut stale = HashSet::new();
    // struct ndmsg, all zero: every family, every interface.
    dump(RTM_GETNEIGH, &[0u8; 12], |kind, body| {
        if kind != RTM_NEWNEIGH {
            return;
        }
        if let Some(entry) = parse_neighbour_entry(body) {
            if entry.state == NUD_STALE {
                stale.insert((entry.ifindex, entry.address));
            }
        }
    })?;
    Ok(stale)
}

/// The routers of the main table's default routes, IPv4 and IPv6, with
/// their interface (as `ip route show default` lists them; a multipath
/// default route names no single router and is left out).
pub fn default_gateways() -> io::Result<Vec<(u32, IpAddr)>> {
    let mut gateways = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut request = [0u8; RTMSG_LEN];
        request[0] = family as u8;
        dump(RTM_GETROUTE, &request, |kind, body| {
            if kind == RTM_NEWROUTE {
                gateways.extend(parse_default_route(body));
            }
        })?;
    }
    Ok(gateways)
}

/// (ifindex, router) of a default route of the main table, if `body` (an
/// RTM_NEWROUTE message's) is one.
fn parse_default_route(body: &[u8]) -> Option<(u32, IpAddr)> {
    let header = body.get(..RTMSG_LEN)?;
    let (family, dst_len, mut table, kind) = (header[0], header[1], header[4], header[7]);
    if dst_len != 0 || kind != RTN_UNICAST {
        return None;
    }
    let (mut oif, mut gateway) = (None, None);
    for (attribute, value) in attributes(&body[RTMSG_LEN..]) {
        match (attribute, i32::from(family), value.len()) {
            (RTA_OIF, _, 4) => oif = Some(u32::from_ne_bytes(value.try_into().ok()?)),
            (RTA_TABLE, _, 4) => table = u32::from_ne_bytes(value.try_into().ok()?).min(255) as u8,
            (RTA_GATEWAY, libc::AF_INET, 4) => {
                gateway = Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?)))
            }
            (RTA_GATEWAY, libc::AF_INET6, 16) => {
                gateway = Some(IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(value).ok()?,
                )))
            }
            _ => {}
        }
    }
    (table == RT_TABLE_MAIN).then_some((oif?, gateway?))
}

/// Sends one dump request (`kind`, its fixed header `header`) and hands
/// every answer's (type, body) to `each` until the kernel says done.
fn dump(kind: u16, header: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let socket = open_socket()?;
    let total = NLMSG_HDRLEN + header.len();
    let mut request = Vec::with_capacity(total);
    request.extend_from_slice(&(total as u32).to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    request.extend_from_slice(header);
    // SAFETY: the request is valid for its length; the socket is connected
    // to nothing, so the kernel (port 0) gets it.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 * 1024];
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
        if n == 0 {
            return Ok(());
        }
        for (message, body) in messages(&buffer[..n as usize]) {
            match message {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    return match u32_at(body, 0).map_or(0, |errno| errno as i32) {
                        0 => Ok(()),
                        errno => Err(io::Error::from_raw_os_error(-errno)),
                    };
                }
                message => each(message, body),
            }
        }
    }
}

/// A NETLINK_ROUTE socket whose reads give up after DUMP_TIMEOUT.
fn open_socket() -> io::Result<OwnedFd> {
    let socket = route_socket()?;
    let limit = libc::timeval {
        tv_sec: DUMP_TIMEOUT.as_secs() as libc::time_t,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn route(family: u8, dst_len: u8, table: u8, kind: u8, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![family, dst_len, 0, 0, table, 3, 0, kind, 0, 0, 0, 0];
        for a in attributes {
            body.extend_from_slice(a);
        }
        body
    }

    #[test]
    fn default_routes_of_the_main_table_give_their_router_and_interface() {
        let v4 = route(
            libc::AF_INET as u8,
            0,
            RT_TABLE_MAIN,
            RTN_UNICAST,
            &[
                attribute(RTA_GATEWAY, &[10, 77, 1, 1]),
                attribute(RTA_OIF, &2u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_default_route(&v4),
            Some((2, IpAddr::V4(Ipv4Addr::new(10, 77, 1, 1))))
        );
        let router6: Ipv6Addr = "fd77:1::1".parse().unwrap();
        let v6 = route(
            libc::AF_INET6 as u8,
            0,
            0,
            RTN_UNICAST,
            &[
                attribute(RTA_TABLE, &u32::from(RT_TABLE_MAIN).to_ne_bytes()),
                attribute(RTA_OIF, &3u32.to_ne_bytes()),
                attribute(RTA_GATEWAY, &router6.octets()),
            ],
        );
        assert_eq!(parse_default_route(&v6), Some((3, IpAddr::V6(router6))));
    }

    #[test]
    fn other_routes_and_broken_messages_give_nothing() {
        let gateway = attribute(RTA_GATEWAY, &[10, 0, 0, 1]);
        let oif = attribute(RTA_OIF, &2u32.to_ne_bytes());
        let v4 = libc::AF_INET as u8;
        let cases = [
            route(
                v4,
                24,
                RT_TABLE_MAIN,
                RTN_UNICAST,
                &[gateway.clone(), oif.clone()],
            ),
            route(v4, 0, 100, RTN_UNICAST, &[gateway.clone(), oif.clone()]),
            route(v4, 0, RT_TABLE_MAIN, 2, &[gateway.clone(), oif.clone()]),
            route(
                v4,
                0,
                RT_TABLE_MAIN,
                RTN_UNICAST,
                std::slice::from_ref(&oif),
            ),
            route(
                v4,
                0,
                RT_TABLE_MAIN,
                RTN_UNICAST,
                &[attribute(RTA_GATEWAY, &[10, 0])],
            ),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(parse_default_route(case), None, "case {i}");
        }
        let whole = route(v4, 0, RT_TABLE_MAIN, RTN_UNICAST, &[gateway, oif]);
        for cut in 0..whole.len() {
            let _ = parse_default_route(&whole[..cut]);
        }
        let mut lying = whole.clone();
        lying[RTMSG_LEN] = 0xff;
        let _ = parse_default_route(&lying);
    }
}
