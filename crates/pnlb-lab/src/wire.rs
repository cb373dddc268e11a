//! What the lab's hand-built packets share: the Internet checksum and the
//! rule that they stay between lab addresses.

use std::net::IpAddr;

/// The Internet checksum (RFC 1071) of `bytes`.
pub(crate) use pnlb_dataplane::checksum::internet as checksum;

/// Whether `address` is one of the lab's (10.77.0.0/16, fd77::/16).
pub(crate) fn in_lab(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.octets()[..2] == [10, 77],
        IpAddr::V6(v6) => v6.segments()[0] == 0xfd77,
    }
}
