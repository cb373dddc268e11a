//! Reading a whole map in batches (BPF_MAP_LOOKUP_BATCH). A hash map's
//! batch ends at a bucket boundary, so a batch may come back short while
//! entries remain: only ENOENT ends the walk. libbpf-rs 0.27's iterator
//! takes a short batch for the last one, and so saw a few thousand flows of
//! a table of half a million (sweeps, census and failover dumps all stopped
//! early). A bucket with more entries than the batch holds gives ENOSPC:
//! the batch grows and the call is repeated.

use std::os::fd::{AsRawFd, BorrowedFd};

use libbpf_rs::{MapCore, MapFlags};

use crate::abi::{from_bytes, Plain};

/// Entries a walk of a hash map asks each call for. The kernel walks a
/// hash map's buckets for a whole call without a break (no resched point,
/// under RCU), ~0.5 us an entry here: 4,096 held a CPU for 2-2.5 ms every
/// call of a sweep, time in which a server or client process woken on
/// that CPU waited (a c=1 latency tail). 256 hold it ~0.15 ms, for one
/// system call more per 256 entries. (Array maps' batches stop to
/// reschedule between elements.)
pub(crate) const HASH_BATCH: usize = 256;

/// The expiry sweep's batch, smaller again: the sweep runs all the time,
/// and its thread, though in SCHED_IDLE, keeps a CPU a woken process
/// wants until the call returns (preempt=none). With 256 a woken server or
/// client waited 0.1-0.4 ms for it 42-81 times in 10 s of c=1 requests;
/// with 64, 0-2 times (docs/benchmarks.md).
pub(crate) const SWEEP_BATCH: usize = 64;

/// Every (key, value) of a map, as bytes.
pub(crate) struct Entries<'map> {
    fd: BorrowedFd<'map>,
    key_size: usize,
    value_size: usize,
    /// Entries a call asks for.
    count: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
    /// Where the next call starts (None: at the beginning).
    token: Option<Vec<u8>>,
    /// Entries the last call returned, and how many were handed out.
    filled: usize,
    at: usize,
    /// The last call reached the end.
    last: bool,
    /// The errno that ended the walk early, if one did.
    failed: Option<i32>,
}

/// Writes `count` entries, their keys and values back to back, in one
/// BPF_MAP_UPDATE_BATCH; on a kernel without batch updates for this kind
/// of map, one update each.
pub(crate) fn update_all<M: MapCore + ?Sized>(
    map: &M,
    keys: &[u8],
    values: &[u8],
    count: usize,
) -> Result<(), libbpf_rs::Error> {
    match map.update_batch(keys, values, count as u32, MapFlags::ANY, MapFlags::ANY) {
        Err(err)
            if matches!(
                err.kind(),
                libbpf_rs::ErrorKind::Unsupported | libbpf_rs::ErrorKind::InvalidInput
            ) =>
        {
            keys.chunks_exact(map.key_size() as usize)
                .zip(values.chunks_exact(map.value_size() as usize))
                .try_for_each(|(key, value)| map.update(key, value, MapFlags::ANY))
        }
        done => done,
    }
}

/// Walks `map`, `batch` entries per call.
pub(crate) fn entries<M: MapCore + ?Sized>(map: &M, batch: usize) -> Entries<'_> {
    entries_from(map, batch, Resume::Start)
}

/// Where a walk starts: at the beginning, or where an earlier one stopped
/// at the end of a batch ([`Entries::stopped`]).
#[derive(Clone, Debug, Default)]
pub(crate) enum Resume {
    #[default]
    Start,
    At(Vec<u8>),
    /// The earlier walk had reached the end.
    Done,
}

/// Walks `map` from `resume`.
pub(crate) fn entries_from<M: MapCore + ?Sized>(
    map: &M,
    batch: usize,
    resume: Resume,
) -> Entries<'_> {
    let key_size = map.key_size() as usize;
    let value_size = map.value_size() as usize;
    Entries {
        fd: map.as_fd(),
        key_size,
        value_size,
        count: batch.max(1),
        keys: Vec::new(),
        values: Vec::new(),
        last: matches!(resume, Resume::Done),
        token: match resume {
            Resume::At(token) => Some(token),
            _ => None,
        },
        filled: 0,
        at: 0,
        failed: None,
    }
}

/// Every value of an array map, by index (a slot the read missed stays
/// at its default).
pub(crate) fn array_values<T: Plain, M: MapCore + ?Sized>(map: &M) -> Vec<T> {
    let mut values = vec![T::default(); map.max_entries() as usize];
    for (key, value) in entries(map, 4096) {
        if let (Some(index), Some(value)) = (from_bytes::<u32>(&key), from_bytes::<T>(&value)) {
            if let Some(slot) = values.get_mut(index as usize) {
                *slot = value;
            }
        }
    }
    values
}

/// Every value of a per-CPU array map, by index: each CPU's copy.
pub(crate) fn per_cpu_array_values<T: Plain, M: MapCore + ?Sized>(map: &M) -> Vec<Vec<T>> {
    let Ok(cpus) = libbpf_rs::num_possible_cpus() else {
        return Vec::new();
    };
    // The kernel lays out each CPU's copy 8-byte aligned.
    let stride = (map.value_size() as usize).next_multiple_of(8);
    let mut walk = entries(map, 4096);
    walk.value_size = stride * cpus;
    let mut values = vec![Vec::new(); map.max_entries() as usize];
    for (key, value) in walk {
        if let (Some(index), true) = (from_bytes::<u32>(&key), value.len() == stride * cpus) {
            if let Some(slot) = values.get_mut(index as usize) {
                *slot = value
                    .chunks_exact(stride)
                    .filter_map(from_bytes::<T>)
                    .collect();
            }
        }
    }
    values
}

/// A hash map's batch token is a bucket index (u32); other maps use a key.
fn token_size(key_size: usize) -> usize {
    key_size.max(8)
}

impl Entries<'_> {
    /// Whether every entry fetched so far has been handed out: a walk
    /// stopped here can resume with [`Self::stopped`] and miss nothing.
    /// Why the walk ended before the end of the map, if it did (walks
    /// that must see everything check it).
    pub(crate) fn error(&self) -> Option<std::io::Error> {
        self.failed.map(std::io::Error::from_raw_os_error)
    }

    pub(crate) fn at_batch_end(&self) -> bool {
        self.at >= self.filled
    }

    /// Where to resume a walk stopped at a batch end.
    pub(crate) fn stopped(&self) -> Resume {
        match (&self.token, self.last) {
            (_, true) => Resume::Done,
            (Some(token), false) => Resume::At(token.clone()),
            (None, false) => Resume::Start,
        }
    }

    /// The next call's entries; false when there are none.
    fn fetch(&mut self) -> bool {
        while !self.last {
            self.keys.resize(self.count * self.key_size, 0);
            self.values.resize(self.count * self.value_size, 0);
            let mut next = vec![0u8; token_size(self.key_size)];
            let mut count = self.count as u32;
            let opts = libbpf_rs::libbpf_sys::bpf_map_batch_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_batch_opts>() as _,
                ..Default::default()
            };
            let start = self
                .token
                .as_mut()
                .map_or(std::ptr::null_mut(), |t| t.as_mut_ptr());
            // SAFETY: the buffers hold `count` keys and values of the map's
            // sizes, and the tokens a bucket index or a key.
            let rc = unsafe {
                libbpf_rs::libbpf_sys::bpf_map_lookup_batch(
                    self.fd.as_raw_fd(),
                    start.cast(),
                    next.as_mut_ptr().cast(),
                    self.keys.as_mut_ptr().cast(),
                    self.values.as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            let errno = if rc < 0 {
                std::io::Error::last_os_error().raw_os_error()
            } else {
                None
            };
            match errno {
                None => {}
                Some(libc::ENOENT) => self.last = true,
                Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // One bucket holds more than a batch: a bigger batch.
                Some(libc::ENOSPC) if self.count < (1 << 20) => {
                    self.count *= 2;
                    continue;
                }
                Some(errno) => {
                    self.last = true;
                    self.failed = Some(errno);
                    count = 0;
                }
            }
            self.token = Some(next);
            self.filled = count as usize;
            self.at = 0;
            if self.filled > 0 {
                return true;
            }
        }
        false
    }
}

impl Entries<'_> {
    /// The next entry, borrowed from the batch (no copy: a sweep of a
    /// million entries would otherwise allocate two million buffers).
    pub(crate) fn next_borrowed(&mut self) -> Option<(&[u8], &[u8])> {
        if self.at >= self.filled && !self.fetch() {
            return None;
        }
        let i = self.at;
        self.at += 1;
        Some((
            &self.keys[i * self.key_size..(i + 1) * self.key_size],
            &self.values[i * self.value_size..(i + 1) * self.value_size],
        ))
    }
}

impl Iterator for Entries<'_> {
    type Item = (Vec<u8>, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_borrowed()
            .map(|(key, value)| (key.to_vec(), value.to_vec()))
    }
}
