//! The addresses configured on this network namespace's interfaces.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use super::{address_of, attributes, dump, RTM_GETADDR, RTM_NEWADDR};

/// struct ifaddrmsg: family, prefixlen, flags, scope, index (u32).
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

/// Every address configured here, IPv4 and IPv6 (`ip addr`'s "local").
pub fn local_addresses() -> io::Result<BTreeSet<IpAddr>> {
    let mut addresses = BTreeSet::new();
    dump(RTM_GETADDR, &[0u8; IFADDRMSG_LEN], |kind, body| {
        if kind == RTM_NEWADDR {
            addresses.extend(parse_local_address(body));
        }
    })?;
    Ok(addresses)
}

/// The address an RTM_NEWADDR message configures: IFA_LOCAL, or where
/// there is none IFA_ADDRESS (on a point-to-point link IFA_ADDRESS is the
/// peer's).
fn parse_local_address(body: &[u8]) -> Option<IpAddr> {
    let family = *body.get(..IFADDRMSG_LEN)?.first()?;
    let (mut local, mut address) = (None, None);
    for (attribute, value) in attributes(&body[IFADDRMSG_LEN..]) {
        match attribute {
            IFA_LOCAL => local = address_of(family, value),
            IFA_ADDRESS => address = address_of(family, value),
            _ => {}
        }
    }
    local.or(address)
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
            parse_local_address(&point_to_point),
            Some("10.0.0.1".parse().unwrap())
        );
        let mut v6 = vec![libc::AF_INET6 as u8, 64, 0, 0, 3, 0, 0, 0];
        v6.extend(attribute(IFA_ADDRESS, &[0xfd; 16]));
        assert_eq!(parse_local_address(&v6), Some(IpAddr::from([0xfd; 16])));
        for cut in 0..point_to_point.len() {
            let _ = parse_local_address(&point_to_point[..cut]);
        }
    }
}
