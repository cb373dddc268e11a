//! The flow-hash seed (bpf/lib/sched.h): which backend a flow lands on,
//! which SNAT port it draws. A public seed would let a client aim its flows
//! at one Maglev slot, so it is a secret: daemon.hash_seed_file, else the
//! [ha] group's key (the nodes of a group must pick alike), else the seed
//! of the data plane left running (a restart must not move flows), else
//! random. Only its source is logged, never its value.

use anyhow::{bail, Context, Result};
use pnlb_core::config::Config;

/// What a secret is turned into a seed with (HMAC-SHA256, first 4 bytes):
/// the same secret always gives the same seed, on every node.
const LABEL: &[u8] = b"pnlb flow hash seed";

pub struct HashSeed {
    pub value: u32,
    /// For the log: where the seed came from.
    pub source: String,
}

pub fn choose(config: &Config, left_running: Option<u32>) -> Result<HashSeed> {
    if let Some(path) = &config.daemon.hash_seed_file {
        let secret = crate::secret::read(path, "daemon.hash_seed_file")?;
        return Ok(HashSeed {
            value: from_secret(secret.as_bytes())?,
            source: format!("daemon.hash_seed_file {}", path.display()),
        });
    }
    if let Some(ha) = &config.ha {
        let key = crate::ha::read_key(&ha.key_file)?;
        return Ok(HashSeed {
            value: from_secret(&key)?,
            source: format!("the [ha] group key {}", ha.key_file.display()),
        });
    }
    if let Some(value) = left_running {
        return Ok(HashSeed {
            value,
            source: "kept from the data plane left running".to_string(),
        });
    }
    Ok(HashSeed {
        value: crate::secret::random_u32()
            .context("reading /dev/urandom for the flow-hash seed")?,
        source: "random at this start (set daemon.hash_seed_file to keep picks across restarts and nodes)".to_string(),
    })
}

fn from_secret(secret: &[u8]) -> Result<u32> {
    let Some(tag) = crate::ha::advert::hmac(secret, LABEL) else {
        bail!("deriving the flow-hash seed: HMAC-SHA256 failed (OpenSSL)");
    };
    Ok(u32::from_be_bytes([tag[0], tag[1], tag[2], tag[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_gives_the_same_seed_every_time_and_another_secret_another() {
        let a = from_secret(b"0123456789abcdef-group-one").unwrap();
        assert_eq!(a, from_secret(b"0123456789abcdef-group-one").unwrap());
        assert_ne!(a, from_secret(b"0123456789abcdef-group-two").unwrap());
    }
}
