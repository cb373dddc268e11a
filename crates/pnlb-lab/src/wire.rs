//! What the lab's hand-built packets share: the Internet checksum and the
//! rule that they stay between lab addresses.

use std::net::IpAddr;

/// The Internet checksum (RFC 1071) of `bytes`.
pub(crate) fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `address` is one of the lab's (10.77.0.0/16, fd77::/16).
pub(crate) fn in_lab(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.octets()[..2] == [10, 77],
        IpAddr::V6(v6) => v6.segments()[0] == 0xfd77,
    }
}
