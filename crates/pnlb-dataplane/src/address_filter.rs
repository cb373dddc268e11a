//! The address filters in front of the data plane's two address sets
//! (pnlb_vip_filter before pnlb_vips, pnlb_backend_filter before
//! pnlb_backend_addrs): a bit per hash of an address, set while its set
//! may hold an address of that hash. Every packet asks "is the destination
//! a VIP?" and most that are not ask "is the source a nat backend?"; a
//! clear bit answers no from one word of an array, without a hash lookup.
//!
//! The one rule that keeps it correct: a bit is set before an address of
//! its hash enters the set, and cleared only after the last one left, so
//! a packet never finds the bit clear for an address the set holds.
//! Extra bits (two addresses of one hash, a write that failed midway) only
//! cost that lookup.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use crate::abi::{self, Addr};
use crate::mapped::Mapped;

/// Bits of each filter (pnlb_address_filter_limits): 32 KiB, so that
/// 10,000 VIPs leave ~4% of other addresses a lookup to make.
pub const BITS: u32 = abi::AddressFilterLimits::PNLB_ADDRESS_FILTER_BITS.0;
/// Its 64-bit words.
pub const WORDS: usize = abi::AddressFilterLimits::PNLB_ADDRESS_FILTER_WORDS.0 as usize;

/// The bit of `address` (the hash pnlb_abi.h spells out; parse.h's
/// pnlb_address_filter_bit).
pub fn bit_of(address: &Addr) -> u32 {
    let [w0, w1, w2, w3] = address.words;
    let mut h = w0 ^ w1 ^ w2 ^ w3;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7feb_352d);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846c_a68b);
    h ^= h >> 16;
    h % BITS
}

/// The filter of exactly `addresses`, word by word (what a filter should
/// read, for checks).
pub fn words_of(addresses: impl IntoIterator<Item = IpAddr>) -> Vec<u64> {
    words_with(
        addresses
            .into_iter()
            .map(|address| bit_of(&abi::addr(address))),
    )
}

/// The filter words with exactly `bits` set.
fn words_with(bits: impl IntoIterator<Item = u32>) -> Vec<u64> {
    let mut words = vec![0u64; WORDS];
    for bit in bits {
        words[bit as usize / 64] |= 1 << (bit % 64);
    }
    words
}

/// A filter map, mapped shared.
pub(crate) struct AddressFilter {
    words: Mapped,
}

impl AddressFilter {
    pub(crate) fn map(map: &impl AsFd) -> std::io::Result<Self> {
        Ok(Self {
            words: Mapped::new(map.as_fd(), WORDS)?,
        })
    }

    /// The filter as packets read it now.
    pub(crate) fn read(&self) -> Vec<u64> {
        (0..self.words.elements())
            .map(|i| self.words.u64_at(i).load(Ordering::Relaxed))
            .collect()
    }

    fn set(&self, bit: u32) {
        self.words
            .u64_at(bit as usize / 64)
            .fetch_or(1 << (bit % 64), Ordering::SeqCst);
    }

    fn clear(&self, bit: u32) {
        self.words
            .u64_at(bit as usize / 64)
            .fetch_and(!(1 << (bit % 64)), Ordering::SeqCst);
    }

    /// Before a set is written whole: every bit of `words` is set, the
    /// others left as they are (the set still holds their addresses).
    pub(crate) fn include(&self, words: &[u64]) {
        for (i, word) in words.iter().enumerate() {
            if *word != 0 {
                self.words.u64_at(i).fetch_or(*word, Ordering::SeqCst);
            }
        }
    }

    /// After a set was written whole: exactly `words`.
    pub(crate) fn store(&self, words: &[u64]) {
        for (i, word) in words.iter().enumerate() {
            let at = self.words.u64_at(i);
            if at.load(Ordering::Relaxed) != *word {
                at.store(*word, Ordering::SeqCst);
            }
        }
    }
}

/// The bits of a set's addresses, each with the number of addresses on
/// it: a bit is cleared when its last address leaves.
#[derive(Default)]
pub(crate) struct FilterBits {
    addresses_on: HashMap<u32, u32>,
}

impl FilterBits {
    /// The bits of exactly `addresses` (as the set is to hold them).
    pub(crate) fn of<'a>(addresses: impl IntoIterator<Item = &'a IpAddr>) -> Self {
        let mut bits = Self::default();
        for address in addresses {
            *bits
                .addresses_on
                .entry(bit_of(&abi::addr(*address)))
                .or_default() += 1;
        }
        bits
    }

    /// Before `address` enters the set: its bit is set.
    pub(crate) fn entering(&mut self, filter: &AddressFilter, address: IpAddr) {
        if let Some(bit) = self.count_in(address) {
            filter.set(bit);
        }
    }

    /// After `address` left the set: its bit is cleared if it was the
    /// last of it.
    pub(crate) fn left(&mut self, filter: &AddressFilter, address: IpAddr) {
        if let Some(bit) = self.count_out(address) {
            filter.clear(bit);
        }
    }

    /// Counts `address` in; its bit when it is the bit's first.
    fn count_in(&mut self, address: IpAddr) -> Option<u32> {
        let bit = bit_of(&abi::addr(address));
        let on = self.addresses_on.entry(bit).or_default();
        *on += 1;
        (*on == 1).then_some(bit)
    }

    /// Counts `address` out; its bit when no address is left on it.
    fn count_out(&mut self, address: IpAddr) -> Option<u32> {
        let bit = bit_of(&abi::addr(address));
        let on = self.addresses_on.get_mut(&bit)?;
        *on -= 1;
        if *on > 0 {
            return None;
        }
        self.addresses_on.remove(&bit);
        Some(bit)
    }

    /// The filter words of the counted addresses.
    pub(crate) fn words(&self) -> Vec<u64> {
        words_with(self.addresses_on.keys().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bit_is_the_hash_pnlb_abi_h_spells_out() {
        // Worked by hand from the formula for 10.0.0.1 (::ffff:10.0.0.1,
        // words as stored on a little-endian host).
        let address = abi::addr("10.0.0.1".parse().unwrap());
        let mut h = 0u32;
        for w in address.words {
            h ^= w;
        }
        assert_eq!(h, 0xffff_0000 ^ 0x0100_000a);
        assert!(bit_of(&address) < BITS);
        // Neighbouring addresses spread over the filter.
        let bits: std::collections::HashSet<u32> = (1..=250u8)
            .map(|i| bit_of(&abi::addr(IpAddr::from([10, 200, 0, i]))))
            .collect();
        assert!(bits.len() >= 245, "{} distinct bits of 250", bits.len());
    }

    #[test]
    fn a_bit_is_cleared_only_when_its_last_address_leaves() {
        // Two addresses on one bit: find a pair.
        let first: IpAddr = "10.0.0.1".parse().unwrap();
        let bit = bit_of(&abi::addr(first));
        let second = (0..=u32::MAX)
            .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n)))
            .find(|a| *a != first && bit_of(&abi::addr(*a)) == bit)
            .expect("some address shares the bit");
        let mut bits = FilterBits::default();
        assert_eq!(
            bits.count_in(first),
            Some(bit),
            "set before the first enters"
        );
        assert_eq!(bits.count_in(second), None, "already set");
        assert_eq!(bits.words(), words_of([first]));
        assert_eq!(bits.count_out(first), None, "the second is still in");
        assert_eq!(
            bits.count_out(second),
            Some(bit),
            "cleared after the last left"
        );
        assert_eq!(bits.words(), vec![0; WORDS]);
        assert_eq!(bits.count_out(second), None, "an address never counted in");
    }
}
