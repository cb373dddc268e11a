//! Shared secrets read from files (the API token, the failover key): one
//! line, surrounding whitespace ignored, long enough to mean something;
//! and random numbers drawn from the kernel (seeds, epochs).

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The secret in `path`; `key` names the config key in errors.
pub fn read(path: &Path, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{key} {}: cannot read it", path.display()))?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        bail!(
            "{key} {}: the secret is shorter than 16 characters; write a long random one, e.g. `openssl rand -hex 32 > {}`",
            path.display(),
            path.display()
        );
    }
    Ok(secret)
}

/// 32 random bits from the kernel (/dev/urandom).
pub fn random_u32() -> std::io::Result<u32> {
    use std::io::Read;
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u32::from_ne_bytes(bytes))
}
