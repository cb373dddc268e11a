//! The Internet checksum (RFC 1071), for the frames built by hand outside
//! the XDP program: a takeover's announcements, the lab's packets.

/// The one's-complement checksum of `bytes` (an odd last byte padded with
/// zero). Over bytes that hold their own right checksum it is 0.
pub fn internet(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
