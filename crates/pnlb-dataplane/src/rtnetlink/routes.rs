//! The routing table: the default routers, and the route the kernel picks
//! for each of a set of hosts (`ip route get`, many at a time).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use super::{
    address_of, ask_each, attributes, dump, error_of, family_and_octets, message, u16_at, u32_at,
    NLMSG_ERROR, NLM_F_REQUEST, RTM_GETROUTE, RTM_NEWROUTE,
};

/// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
/// type, flags (u32).
const RTMSG_LEN: usize = 12;
const RT_TABLE_MAIN: u32 = 254;
const RTN_UNICAST: u8 = 1;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_MULTIPATH: u16 = 9;
/// struct rtnexthop: len (u16), flags, hops, ifindex (i32); its own
/// attributes (the router: RTA_GATEWAY) follow, up to len.
const RTNH_LEN: usize = 8;
const RTA_TABLE: u16 = 15;

/// The route to one host, as the kernel picks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The interface it leaves by.
    pub oif: u32,
    /// The router it goes through; None when the host is on-link.
    pub gateway: Option<IpAddr>,
    /// Our preferred source address toward it.
    pub source: Option<IpAddr>,
}

/// An RTM_NEWROUTE message's fields that pnlb reads.
#[derive(Default)]
struct RouteMessage {
    dst_len: u8,
    table: u32,
    kind: u8,
    dst: Option<IpAddr>,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    /// A multipath route's (interface, router) pairs.
    nexthops: Vec<(u32, IpAddr)>,
}

fn parse_route(body: &[u8]) -> Option<RouteMessage> {
    let header = body.get(..RTMSG_LEN)?;
    let family = header[0];
    let mut route = RouteMessage {
        dst_len: header[1],
        table: u32::from(header[4]),
        kind: header[7],
        ..Default::default()
    };
    for (attribute, value) in attributes(&body[RTMSG_LEN..]) {
        match attribute {
            RTA_DST => route.dst = address_of(family, value),
            RTA_OIF => route.oif = u32_at(value, 0),
            RTA_GATEWAY => route.gateway = address_of(family, value),
            RTA_PREFSRC => route.source = address_of(family, value),
            // The whole table id, where the header's byte holds 255.
            RTA_TABLE => route.table = u32_at(value, 0).unwrap_or(route.table),
            RTA_MULTIPATH => route.nexthops = nexthops(family, value),
            _ => {}
        }
    }
    Some(route)
}

/// The (interface, router) of each of an RTA_MULTIPATH's rtnexthops that
/// names one; a malformed one ends the list.
fn nexthops(family: u8, mut bytes: &[u8]) -> Vec<(u32, IpAddr)> {
    let mut hops = Vec::new();
    while let (Some(len), Some(ifindex)) = (u16_at(bytes, 0), u32_at(bytes, 4)) {
        let len = usize::from(len);
        if len < RTNH_LEN || len > bytes.len() {
            break;
        }
        let router = attributes(&bytes[RTNH_LEN..len])
            .find(|&(attribute, _)| attribute == RTA_GATEWAY)
            .and_then(|(_, value)| address_of(family, value));
        hops.extend(router.map(|router| (ifindex, router)));
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
    }
    hops
}

/// The routers of the main table's default routes, IPv4 and IPv6, with
/// their interface (as `ip route show default` lists them; each router of
/// a multipath one).
pub fn default_gateways() -> io::Result<Vec<(u32, IpAddr)>> {
    let mut gateways = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut request = [0u8; RTMSG_LEN];
        request[0] = family as u8;
        gateways.extend(
            dump(RTM_GETROUTE, &request, RTM_NEWROUTE, parse_default_route)?
                .into_iter()
                .flatten(),
        );
    }
    Ok(gateways)
}

/// The (ifindex, router) pairs of a default route of the main table, if
/// `body` (an RTM_NEWROUTE message's) is one: one, or a multipath route's
/// each.
fn parse_default_route(body: &[u8]) -> Option<Vec<(u32, IpAddr)>> {
    let route = parse_route(body)?;
    let default = route.dst_len == 0 && route.kind == RTN_UNICAST && route.table == RT_TABLE_MAIN;
    if !default {
        return None;
    }
    if !route.nexthops.is_empty() {
        return Some(route.nexthops);
    }
    Some(vec![(route.oif?, route.gateway?)])
}

/// The route to each of `hosts` (`ip route get` of each, asked together);
/// a host without one (unreachable, prohibited) is left out.
pub fn routes_to(hosts: &[IpAddr]) -> io::Result<HashMap<IpAddr, Route>> {
    let requests: Vec<Vec<u8>> = hosts
        .iter()
        .enumerate()
        .map(|(i, &host)| {
            let (family, octets) = family_and_octets(host);
            let mut header = [0u8; RTMSG_LEN];
            header[0] = family;
            header[1] = (octets.len() * 8) as u8;
            message(
                RTM_GETROUTE,
                NLM_F_REQUEST,
                i as u32,
                &header,
                &[(RTA_DST, &octets)],
            )
        })
        .collect();
    let mut routes = HashMap::with_capacity(hosts.len());
    let mut failure = None;
    ask_each(&requests, |kind, body| match kind {
        RTM_NEWROUTE => {
            if let Some((host, route)) = parse_route_answer(body) {
                routes.insert(host, route);
            }
        }
        // An unreachable host is answered with an error; the socket
        // dropping answers (ENOBUFS) is a failure of the whole question.
        NLMSG_ERROR if error_of(body) == libc::ENOBUFS => {
            failure = Some(io::Error::from_raw_os_error(libc::ENOBUFS))
        }
        _ => {}
    })?;
    match failure {
        Some(err) => Err(err),
        None => Ok(routes),
    }
}

/// (host, route) of a `route get` answer.
fn parse_route_answer(body: &[u8]) -> Option<(IpAddr, Route)> {
    let route = parse_route(body)?;
    Some((
        route.dst?,
        Route {
            oif: route.oif?,
            gateway: route.gateway,
            source: route.source,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::attribute;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

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
            RT_TABLE_MAIN as u8,
            RTN_UNICAST,
            &[
                attribute(RTA_GATEWAY, &[10, 77, 1, 1]),
                attribute(RTA_OIF, &2u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_default_route(&v4),
            Some(vec![(2, IpAddr::V4(Ipv4Addr::new(10, 77, 1, 1)))])
        );
        let router6: Ipv6Addr = "fd77:1::1".parse().unwrap();
        let v6 = route(
            libc::AF_INET6 as u8,
            0,
            0,
            RTN_UNICAST,
            &[
                attribute(RTA_TABLE, &RT_TABLE_MAIN.to_ne_bytes()),
                attribute(RTA_OIF, &3u32.to_ne_bytes()),
                attribute(RTA_GATEWAY, &router6.octets()),
            ],
        );
        assert_eq!(
            parse_default_route(&v6),
            Some(vec![(3, IpAddr::V6(router6))])
        );
    }

    /// struct rtnexthop with its attributes.
    fn nexthop(ifindex: u32, attributes: &[Vec<u8>]) -> Vec<u8> {
        let len: usize = RTNH_LEN + attributes.iter().map(Vec::len).sum::<usize>();
        let mut out = (len as u16).to_ne_bytes().to_vec();
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&ifindex.to_ne_bytes());
        for a in attributes {
            out.extend_from_slice(a);
        }
        out
    }

    #[test]
    fn a_multipath_default_route_gives_each_router_with_its_interface() {
        let first: Ipv6Addr = "fe80::1".parse().unwrap();
        let second: Ipv6Addr = "fe80::2".parse().unwrap();
        let mut hops = nexthop(4, &[attribute(RTA_GATEWAY, &first.octets())]);
        // One without a router (a device route) is no router.
        hops.extend(nexthop(6, &[]));
        hops.extend(nexthop(5, &[attribute(RTA_GATEWAY, &second.octets())]));
        let v6 = route(
            libc::AF_INET6 as u8,
            0,
            RT_TABLE_MAIN as u8,
            RTN_UNICAST,
            &[attribute(RTA_MULTIPATH, &hops)],
        );
        assert_eq!(
            parse_default_route(&v6),
            Some(vec![(4, IpAddr::V6(first)), (5, IpAddr::V6(second))])
        );
        // Cut anywhere, or with a length that lies: no panic, no router
        // that was not there.
        for cut in 0..hops.len() {
            let found = nexthops(libc::AF_INET6 as u8, &hops[..cut]);
            assert!(found.len() <= 2, "{found:?}");
        }
        let mut lying = hops.clone();
        lying[0] = 0xff;
        assert!(nexthops(libc::AF_INET6 as u8, &lying).is_empty());
        lying[0] = 2;
        assert!(nexthops(libc::AF_INET6 as u8, &lying).is_empty());
    }

    #[test]
    fn other_routes_and_broken_messages_give_nothing() {
        let gateway = attribute(RTA_GATEWAY, &[10, 0, 0, 1]);
        let oif = attribute(RTA_OIF, &2u32.to_ne_bytes());
        let v4 = libc::AF_INET as u8;
        let main = RT_TABLE_MAIN as u8;
        let cases = [
            route(v4, 24, main, RTN_UNICAST, &[gateway.clone(), oif.clone()]),
            route(v4, 0, 100, RTN_UNICAST, &[gateway.clone(), oif.clone()]),
            route(v4, 0, main, 2, &[gateway.clone(), oif.clone()]),
            route(v4, 0, main, RTN_UNICAST, std::slice::from_ref(&oif)),
            route(
                v4,
                0,
                main,
                RTN_UNICAST,
                &[attribute(RTA_GATEWAY, &[10, 0])],
            ),
            // Table 254 + 256 is not the main table.
            route(
                v4,
                0,
                main,
                RTN_UNICAST,
                &[
                    gateway.clone(),
                    oif.clone(),
                    attribute(RTA_TABLE, &(RT_TABLE_MAIN + 256).to_ne_bytes()),
                ],
            ),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(parse_default_route(case), None, "case {i}");
        }
        let whole = route(v4, 0, main, RTN_UNICAST, &[gateway, oif]);
        for cut in 0..whole.len() {
            let _ = parse_default_route(&whole[..cut]);
        }
        let mut lying = whole.clone();
        lying[RTMSG_LEN] = 0xff;
        let _ = parse_default_route(&lying);
    }

    #[test]
    fn a_route_answer_names_its_host_interface_router_and_source() {
        let v6 = libc::AF_INET6 as u8;
        let host: Ipv6Addr = "fd77:2::11".parse().unwrap();
        let router: Ipv6Addr = "fd77:1::1".parse().unwrap();
        let source: Ipv6Addr = "fd77:1::2".parse().unwrap();
        let answer = route(
            v6,
            128,
            RT_TABLE_MAIN as u8,
            RTN_UNICAST,
            &[
                attribute(RTA_DST, &host.octets()),
                attribute(RTA_OIF, &5u32.to_ne_bytes()),
                attribute(RTA_GATEWAY, &router.octets()),
                attribute(RTA_PREFSRC, &source.octets()),
            ],
        );
        assert_eq!(
            parse_route_answer(&answer),
            Some((
                IpAddr::V6(host),
                Route {
                    oif: 5,
                    gateway: Some(IpAddr::V6(router)),
                    source: Some(IpAddr::V6(source)),
                }
            ))
        );
        let on_link = route(
            libc::AF_INET as u8,
            32,
            RT_TABLE_MAIN as u8,
            RTN_UNICAST,
            &[
                attribute(RTA_DST, &[10, 77, 1, 11]),
                attribute(RTA_OIF, &2u32.to_ne_bytes()),
            ],
        );
        assert_eq!(
            parse_route_answer(&on_link).map(|(_, r)| r.gateway),
            Some(None)
        );
        let no_interface = route(
            libc::AF_INET as u8,
            32,
            0,
            RTN_UNICAST,
            &[attribute(RTA_DST, &[10, 77, 1, 11])],
        );
        assert_eq!(parse_route_answer(&no_interface), None);
        for cut in 0..answer.len() {
            let _ = parse_route_answer(&answer[..cut]);
        }
    }
}
