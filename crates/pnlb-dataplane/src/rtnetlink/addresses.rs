//! The addresses configured on this network namespace's interfaces: read
//! (`pnlb decap`'s own addresses, the HA node's own), and the host
//! addresses that change hands with HA mastership added and removed.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use super::{
    address_of, ask, attributes, dump, family_and_octets, message, u32_at, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_EXCL, NLM_F_REQUEST, RTM_DELADDR, RTM_GETADDR, RTM_NEWADDR,
};

/// struct ifaddrmsg: family, prefixlen, flags, scope, index (u32).
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
/// RT_SCOPE_UNIVERSE: what `ip addr` lists as "scope global".
pub const SCOPE_GLOBAL: u8 = 0;

/// One address of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub ifindex: u32,
    /// IFA_LOCAL, or where there is none IFA_ADDRESS (on a point-to-point
    /// link IFA_ADDRESS is the peer's): `ip addr`'s "local".
    pub address: IpAddr,
    pub prefix_len: u8,
    pub scope: u8,
}

/// Every address of every interface here, IPv4 and IPv6.
pub fn interface_addresses() -> io::Result<Vec<InterfaceAddress>> {
    dump(
        RTM_GETADDR,
        &[0u8; IFADDRMSG_LEN],
        RTM_NEWADDR,
        parse_address,
    )
}

/// Every address configured here, IPv4 and IPv6.
pub fn local_addresses() -> io::Result<BTreeSet<IpAddr>> {
    Ok(interface_addresses()?
        .into_iter()
        .map(|a| a.address)
        .collect())
}

/// Puts `address` on interface `ifindex` as a host address (/32, /128;
/// IPv6 without duplicate address detection, as a VIP that moves between
/// nodes must be usable at once). One already there is fine.
pub fn add_host_address(ifindex: u32, address: IpAddr) -> io::Result<()> {
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    match ask(&host_address_request(RTM_NEWADDR, flags, ifindex, address)) {
        Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Takes host address `address` off interface `ifindex`. One not there is
/// fine.
pub fn remove_host_address(ifindex: u32, address: IpAddr) -> io::Result<()> {
    let flags = NLM_F_REQUEST | NLM_F_ACK;
    match ask(&host_address_request(RTM_DELADDR, flags, ifindex, address)) {
        Err(err) if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
        other => other,
    }
}

fn host_address_request(kind: u16, flags: u16, ifindex: u32, address: IpAddr) -> Vec<u8> {
    let (family, octets) = family_and_octets(address);
    let mut header = [0u8; IFADDRMSG_LEN];
    header[0] = family;
    header[1] = (octets.len() * 8) as u8;
    if address.is_ipv6() {
        header[2] = IFA_F_NODAD;
    }
    header[3] = SCOPE_GLOBAL;
    header[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    message(
        kind,
        flags,
        1,
        &header,
        &[(IFA_LOCAL, &octets), (IFA_ADDRESS, &octets)],
    )
}

fn parse_address(body: &[u8]) -> Option<InterfaceAddress> {
    let header = body.get(..IFADDRMSG_LEN)?;
    let family = header[0];
    let (mut local, mut address) = (None, None);
    for (attribute, value) in attributes(&body[IFADDRMSG_LEN..]) {
        match attribute {
            IFA_LOCAL => local = address_of(family, value),
            IFA_ADDRESS => address = address_of(family, value),
            _ => {}
        }
    }
    Some(InterfaceAddress {
        ifindex: u32_at(header, 4)?,
        address: local.or(address)?,
        prefix_len: header[1],
        scope: header[3],
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::attribute;
    use super::*;

    #[test]
    fn the_local_address_wins_over_a_peers() {
        let mut point_to_point = vec![libc::AF_INET as u8, 32, 0, 0, 3, 0, 0, 0];
        point_to_point.extend(attribute(IFA_ADDRESS, &[10, 0, 0, 2]));
        point_to_point.extend(attribute(IFA_LOCAL, &[10, 0, 0, 1]));
        assert_eq!(
            parse_address(&point_to_point),
            Some(InterfaceAddress {
                ifindex: 3,
                address: "10.0.0.1".parse().unwrap(),
                prefix_len: 32,
                scope: SCOPE_GLOBAL,
            })
        );
        let mut v6 = vec![libc::AF_INET6 as u8, 64, 0, 253, 3, 0, 0, 0];
        v6.extend(attribute(IFA_ADDRESS, &[0xfd; 16]));
        let parsed = parse_address(&v6).unwrap();
        assert_eq!(
            (parsed.address, parsed.scope),
            (IpAddr::from([0xfd; 16]), 253)
        );
        for cut in 0..point_to_point.len() {
            let _ = parse_address(&point_to_point[..cut]);
        }
    }

    #[test]
    fn a_host_address_request_names_the_interface_prefix_and_address() {
        let v6: IpAddr = "fd77:1::254".parse().unwrap();
        let request = host_address_request(RTM_NEWADDR, NLM_F_REQUEST, 7, v6);
        let body = &request[super::super::NLMSG_HDRLEN..];
        assert_eq!(&body[..4], &[libc::AF_INET6 as u8, 128, IFA_F_NODAD, 0]);
        assert_eq!(u32_at(body, 4), Some(7));
        let parsed = parse_address(body).unwrap();
        assert_eq!((parsed.address, parsed.prefix_len), (v6, 128));
    }
}
