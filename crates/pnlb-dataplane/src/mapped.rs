//! A BPF_F_MMAPABLE array mapped shared into this process: its elements
//! written with plain (atomic) stores, where a map update per element is a
//! syscall each. Programs read the same memory concurrently, hence the
//! atomics.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64};

/// An array keeps each value in an 8-byte element (values are rounded up
/// to 8 bytes): a u32 value is its element's first 4 bytes.
pub(crate) const ELEMENT: usize = 8;

/// The first `elements` elements of an mmapable array, mapped shared
/// (unmapped on drop).
pub(crate) struct Mapped {
    at: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, only ever accessed through
// atomics (or copied over before any reader exists); it lives until drop.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    pub(crate) fn new(map: BorrowedFd<'_>, elements: usize) -> std::io::Result<Self> {
        let len = elements * ELEMENT;
        // SAFETY: a shared mapping of the map's own pages, `len` bytes (the
        // map holds at least `elements` elements of 8 bytes).
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { at, len })
    }

    /// Elements mapped.
    pub(crate) fn elements(&self) -> usize {
        self.len / ELEMENT
    }

    /// Element `i` as a u32 value.
    pub(crate) fn u32_at(&self, i: usize) -> &AtomicU32 {
        // SAFETY: element i starts i * 8 bytes into the page-aligned
        // mapping (so 8-byte aligned), inside it (checked by element()).
        unsafe { &*self.element(i).cast::<AtomicU32>() }
    }

    /// Element `i` as a u64 value.
    pub(crate) fn u64_at(&self, i: usize) -> &AtomicU64 {
        // SAFETY: as in u32_at.
        unsafe { &*self.element(i).cast::<AtomicU64>() }
    }

    fn element(&self, i: usize) -> *mut u8 {
        assert!(
            (i + 1) * ELEMENT <= self.len,
            "element {i} outside the mapping"
        );
        // SAFETY: inside the mapping (asserted).
        unsafe { self.at.cast::<u8>().add(i * ELEMENT) }
    }

    /// Copies `bytes` over the elements from `first` on, which no
    /// program run reads (the caller's guarantee).
    pub(crate) fn write_from(&self, first: usize, bytes: &[u8]) {
        assert!(
            first * ELEMENT + bytes.len() <= self.len,
            "{} bytes at element {first} outside the mapping",
            bytes.len()
        );
        // SAFETY: inside the mapping (asserted).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.element(first), bytes.len()) };
    }

    /// `len` bytes from element `first` on, as they are now (a copy no
    /// program run writes).
    pub(crate) fn read_from(&self, first: usize, len: usize) -> Vec<u8> {
        assert!(
            first * ELEMENT + len <= self.len,
            "{len} bytes at element {first} outside the mapping"
        );
        let mut bytes = vec![0u8; len];
        // SAFETY: inside the mapping (asserted).
        unsafe { std::ptr::copy_nonoverlapping(self.element(first), bytes.as_mut_ptr(), len) };
        bytes
    }

    /// Copies `bytes` over the start of the mapping (no reader yet).
    pub(crate) fn fill(&self, bytes: &[u8]) {
        let len = bytes.len().min(self.len);
        // SAFETY: `len` bytes at `at` are inside the mapping.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.at.cast::<u8>(), len) };
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new, not used after.
        unsafe { libc::munmap(self.at, self.len) };
    }
}
