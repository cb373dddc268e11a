//! Bulk transfers that prove byte-exactness: the server streams a
//! deterministic pseudo-random pattern and ends with the checksum of what
//! it sent; the client checksums what it received. Equal checksums at both
//! ends, and the right length, mean every byte arrived unchanged.

use std::io::{self, Read, Write};
use std::net::TcpStream;

pub const BULK_PORT: u16 = 7001;

/// The byte pattern: xorshift64*, 8 bytes per step.
pub struct Pattern {
    state: u64,
    pending: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed | 1,
            pending: [0; 8],
            used: 8,
        }
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.pending = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *byte = self.pending[self.used];
            self.used += 1;
        }
    }
}

/// FNV-1a, 64 bit: order-sensitive, chunking-independent.
pub struct Checksum(u64);

impl Default for Checksum {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Checksum {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Server side: reads (length, seed), streams the pattern, then the checksum.
pub fn serve(stream: &mut TcpStream) -> io::Result<()> {
    let mut request = [0u8; 16];
    stream.read_exact(&mut request)?;
    let length = u64::from_be_bytes(request[..8].try_into().expect("8 bytes"));
    let seed = u64::from_be_bytes(request[8..].try_into().expect("8 bytes"));
    let mut pattern = Pattern::new(seed);
    let mut checksum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = length;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        checksum.update(&buf[..n]);
        stream.write_all(&buf[..n])?;
        left -= n as u64;
    }
    stream.write_all(&checksum.value().to_be_bytes())
}

/// What a download saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Download {
    pub received: u64,
    pub client_checksum: u64,
    pub server_checksum: u64,
}

/// Client side: asks for `length` bytes and checksums them as they come.
pub fn download(stream: &mut TcpStream, length: u64, seed: u64) -> io::Result<Download> {
    download_at(stream, length, seed, None)
}

/// [`download`] reading at most `rate` bytes a second (None: as fast as
/// they come), so that a transfer lasts through what a test does meanwhile.
pub fn download_at(
    stream: &mut TcpStream,
    length: u64,
    seed: u64,
    rate: Option<u64>,
) -> io::Result<Download> {
    let started = std::time::Instant::now();
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&length.to_be_bytes());
    request[8..].copy_from_slice(&seed.to_be_bytes());
    stream.write_all(&request)?;
    let mut checksum = Checksum::default();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    while received < length {
        let want = (length - received).min(buf.len() as u64) as usize;
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("closed after {received} bytes"),
            ));
        }
        checksum.update(&buf[..n]);
        received += n as u64;
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(received as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let mut trailer = [0u8; 8];
    stream.read_exact(&mut trailer)?;
    Ok(Download {
        received,
        client_checksum: checksum.value(),
        server_checksum: u64::from_be_bytes(trailer),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_does_not_depend_on_chunking() {
        let mut data = vec![0u8; 10_000];
        Pattern::new(7).fill(&mut data);
        let mut whole = Checksum::default();
        whole.update(&data);
        let mut pieces = Checksum::default();
        for chunk in data.chunks(333) {
            pieces.update(chunk);
        }
        assert_eq!(whole.value(), pieces.value());
    }

    #[test]
    fn the_pattern_does_not_depend_on_chunking() {
        let mut whole = vec![0u8; 1000];
        Pattern::new(9).fill(&mut whole);
        let mut pattern = Pattern::new(9);
        let mut pieces = vec![0u8; 1000];
        for chunk in pieces.chunks_mut(7) {
            pattern.fill(chunk);
        }
        assert_eq!(whole, pieces);
    }
}
