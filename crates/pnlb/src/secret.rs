//! Shared secrets read from files (the API token, the failover key): one
//! line, surrounding whitespace ignored, long enough to mean something, in
//! a file no one but its owner may read; and random numbers drawn from the
//! kernel (seeds, epochs).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The secret in `path`; `key` names the config key in errors. A file that
/// its group or others may read is refused: the secret is as good as
/// shared with them.
pub fn read(path: &Path, key: &str) -> Result<String> {
    check_private(path, key)?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{key} {}: cannot read it", path.display()))?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        bail!(
            "{key} {}: the secret is shorter than 16 characters; write a long random one, e.g. `(umask 077; openssl rand -hex 32 > {})`",
            path.display(),
            path.display()
        );
    }
    Ok(secret)
}

/// Refuses a file (a secret, a private key) its group or others may read
/// or write, naming the chmod that fixes it.
pub fn check_private(path: &Path, key: &str) -> Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("{key} {}: cannot read it", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "{key} {}: its group or others may read or write it (mode {:04o}); `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

/// 32 random bits from the kernel (/dev/urandom).
pub fn random_u32() -> std::io::Result<u32> {
    use std::io::Read;
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u32::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn secret_file(name: &str, mode: u32, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("pnlb-secret-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        // The umask may have taken bits away: set exactly `mode`.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_others_may_read_is_refused_with_the_chmod_that_fixes_it() {
        let long = "0123456789abcdef0123\n";
        let private = secret_file("private", 0o600, long);
        assert_eq!(read(&private, "ha.key_file").unwrap(), long.trim());
        for mode in [0o644, 0o640, 0o604, 0o620] {
            let shared = secret_file(&format!("shared{mode:o}"), mode, long);
            let err = read(&shared, "ha.key_file").unwrap_err().to_string();
            assert!(err.contains(&format!("(mode {mode:04o})")), "{err}");
            assert!(
                err.contains(&format!("`chmod 600 {}`", shared.display())),
                "{err}"
            );
            let _ = std::fs::remove_file(shared);
        }
        let short = secret_file("short", 0o400, "short\n");
        assert!(read(&short, "x")
            .unwrap_err()
            .to_string()
            .contains("shorter than 16"));
        let _ = std::fs::remove_file(private);
        let _ = std::fs::remove_file(short);
    }
}
