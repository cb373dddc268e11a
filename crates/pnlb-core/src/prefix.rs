//! An IP prefix ("10.77.1.0/24", "fd77:1::/64"; a bare address is the
//! prefix of that one address), as `pnlb decap --from` takes them.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The longest prefix length of the address's family.
    fn max_len(address: IpAddr) -> u8 {
        if address.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// `address` with every bit past the first `len` cleared.
    fn masked(address: IpAddr, len: u8) -> IpAddr {
        match address {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| {
            format!("{text:?} is not an IP prefix (e.g. 10.77.1.0/24, fd77:1::/64)")
        })?;
        let max = Self::max_len(address);
        let len = match len {
            None => max,
            Some(len) => len
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?,
        };
        let network = Self::masked(address, len);
        if network != address {
            return Err(format!(
                "{text:?} has bits set past its length: did you mean {network}/{len}?"
            ));
        }
        Ok(Self { address, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_print() {
        assert_eq!(p("10.77.1.0/24").to_string(), "10.77.1.0/24");
        assert_eq!(p("10.77.1.2").to_string(), "10.77.1.2/32");
        assert_eq!(p("fd77:1::/64").to_string(), "fd77:1::/64");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(p("::/0").to_string(), "::/0");
    }

    #[test]
    fn bad_prefixes_say_what_is_wrong() {
        let err = |text: &str| text.parse::<Prefix>().unwrap_err();
        assert!(err("10.77.1.1/24").contains("did you mean 10.77.1.0/24"));
        assert!(err("10.77.1.0/33").contains("0..=32"));
        assert!(err("fd77::/129").contains("0..=128"));
        assert!(err("lb.example/24").contains("not an IP prefix"));
        assert!(err("10.77.1.0/x").contains("prefix length"));
    }
}
