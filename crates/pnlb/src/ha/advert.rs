//! The failover advert on the wire (UDP, port [`ADVERT_PORT`]), 64 bytes:
//!
//! ```text
//!  0..4   "PNHA"            4      version (1)
//!  5      group             6      priority (0 = resigning)
//!  7      flags (bit 0: the sender is master)
//!  8..24  sender address (16 bytes, IPv4-mapped for IPv4)
//! 24..32  sequence (u64, big endian): strictly increasing per sender
//! 32..64  HMAC-SHA256 over bytes 0..32 with the group's shared key
//! ```
//!
//! An advert counts only if its HMAC verifies (a stray or forged packet
//! cannot take the VIPs) and its sequence is newer than the last one seen
//! from that sender (a recorded advert cannot be replayed).

use std::net::{IpAddr, Ipv6Addr};

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

pub const ADVERT_PORT: u16 = 8112;
pub const ADVERT_LEN: usize = 64;
const MAGIC: &[u8; 4] = b"PNHA";
const VERSION: u8 = 1;
const SIGNED: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advert {
    pub group: u8,
    pub priority: u8,
    pub master: bool,
    pub sender: IpAddr,
    pub sequence: u64,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdvertError {
    #[error("not a pnlb advert ({0} bytes)")]
    NotAnAdvert(usize),
    #[error("advert version {0} is not understood")]
    Version(u8),
    #[error("bad authentication (wrong key, or forged)")]
    Authentication,
}

/// HMAC-SHA256 of `data` under `key` (adverts and sync messages); None if
/// OpenSSL fails.
pub fn hmac(key: &[u8], data: &[u8]) -> Option<[u8; 32]> {
    let computed = PKey::hmac(key)
        .and_then(|pkey| {
            let mut signer = Signer::new(MessageDigest::sha256(), &pkey)?;
            signer.update(data)?;
            signer.sign_to_vec()
        })
        .ok()?;
    computed.try_into().ok()
}

/// The tag to send with `data`. If it cannot be computed the message goes
/// out with a zero tag, which every receiver refuses ([`verify`] fails
/// closed).
pub fn sign(key: &[u8], data: &[u8]) -> [u8; 32] {
    hmac(key, data).unwrap_or([0; 32])
}

/// Whether `tag` authenticates `data` under `key`; false when the HMAC
/// cannot be computed, so a failing OpenSSL lets nothing in.
pub fn verify(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    hmac(key, data).is_some_and(|expected| openssl::memcmp::eq(&expected, tag))
}

impl Advert {
    pub fn emit(&self, key: &[u8]) -> [u8; ADVERT_LEN] {
        let mut out = [0u8; ADVERT_LEN];
        out[0..4].copy_from_slice(MAGIC);
        out[4] = VERSION;
        out[5] = self.group;
        out[6] = self.priority;
        out[7] = u8::from(self.master);
        let sender = match self.sender {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        out[8..24].copy_from_slice(&sender.octets());
        out[24..32].copy_from_slice(&self.sequence.to_be_bytes());
        let tag = sign(key, &out[..SIGNED]);
        out[SIGNED..].copy_from_slice(&tag);
        out
    }

    pub fn parse(bytes: &[u8], key: &[u8]) -> Result<Self, AdvertError> {
        if bytes.len() != ADVERT_LEN || &bytes[0..4] != MAGIC {
            return Err(AdvertError::NotAnAdvert(bytes.len()));
        }
        if bytes[4] != VERSION {
            return Err(AdvertError::Version(bytes[4]));
        }
        if !verify(key, &bytes[..SIGNED], &bytes[SIGNED..]) {
            return Err(AdvertError::Authentication);
        }
        let mut address = [0u8; 16];
        address.copy_from_slice(&bytes[8..24]);
        let v6 = Ipv6Addr::from(address);
        let sender = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&bytes[24..32]);
        Ok(Self {
            group: bytes[5],
            priority: bytes[6],
            master: bytes[7] & 1 == 1,
            sender,
            sequence: u64::from_be_bytes(sequence),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> Advert {
        Advert {
            group: 7,
            priority: 150,
            master: true,
            sender: "10.77.1.2".parse().unwrap(),
            sequence: 42,
        }
    }

    #[test]
    fn hmac_is_hmac_sha256_and_a_zero_tag_never_verifies() {
        // RFC 4231, test case 2.
        let tag = hmac(b"Jefe", b"what do ya want for nothing?").unwrap();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &tag));
        // What a node that cannot compute its HMAC sends, and what a
        // forger without the key might try: refused.
        let unsigned = advert().emit(b"secret");
        let mut zeroed = unsigned;
        zeroed[SIGNED..].fill(0);
        assert_eq!(
            Advert::parse(&zeroed, b"secret"),
            Err(AdvertError::Authentication)
        );
    }

    #[test]
    fn an_advert_round_trips_with_the_right_key() {
        let bytes = advert().emit(b"secret");
        assert_eq!(Advert::parse(&bytes, b"secret"), Ok(advert()));
        let v6 = Advert {
            sender: "fd77:1::2".parse().unwrap(),
            ..advert()
        };
        assert_eq!(Advert::parse(&v6.emit(b"k"), b"k"), Ok(v6));
    }

    #[test]
    fn a_wrong_key_or_any_changed_byte_is_refused() {
        let bytes = advert().emit(b"secret");
        assert_eq!(
            Advert::parse(&bytes, b"other"),
            Err(AdvertError::Authentication)
        );
        for i in 5..ADVERT_LEN {
            let mut tampered = bytes;
            tampered[i] ^= 1;
            assert_eq!(
                Advert::parse(&tampered, b"secret"),
                Err(AdvertError::Authentication),
                "byte {i}"
            );
        }
        assert_eq!(
            Advert::parse(&bytes[..10], b"secret"),
            Err(AdvertError::NotAnAdvert(10))
        );
    }
}
