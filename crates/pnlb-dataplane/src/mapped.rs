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
/// (unmapped on drop, unless a [`MappingArena`] owns the address space).
pub(crate) struct Mapped {
    at: *mut libc::c_void,
    len: usize,
    owned: bool,
}

// SAFETY: the mapping is plain shared memory, only ever accessed through
// atomics (or copied over before any reader exists); it lives until drop.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    pub(crate) fn new(map: BorrowedFd<'_>, elements: usize) -> std::io::Result<Self> {
        let len = elements * ELEMENT;
        // SAFETY: no fixed address (the kernel picks one); the map holds at
        // least `elements` elements of 8 bytes.
        let at = unsafe { map_shared(map, std::ptr::null_mut(), len, 0)? };
        Ok(Self {
            at,
            len,
            owned: true,
        })
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
}

/// Maps `len` bytes of `map`'s pages shared, readable and writable, at
/// `at` (with MAP_FIXED in `flags`) or where the kernel picks (null).
///
/// # Safety
/// `len` must not exceed the map's mmapable size; with MAP_FIXED, `at..at
/// + len` must be address space the caller owns and nothing else uses.
unsafe fn map_shared(
    map: BorrowedFd<'_>,
    at: *mut libc::c_void,
    len: usize,
    flags: libc::c_int,
) -> std::io::Result<*mut libc::c_void> {
    // SAFETY: the caller's contract above.
    let mapped = unsafe {
        libc::mmap(
            at,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | flags,
            map.as_raw_fd(),
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(mapped)
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: the mapping made in new, not used after.
            unsafe { libc::munmap(self.at, self.len) };
        }
    }
}

/// Address space reserved for many short-lived mappings side by side, all
/// given back by one munmap per chunk when the arena is dropped. Each
/// munmap interrupts every other CPU this process runs on to flush its
/// TLB: one per table was ~12% of a 10,000-service start (perf), while the
/// other thread built Maglev tables.
#[derive(Default)]
pub(crate) struct MappingArena {
    chunks: Vec<(*mut libc::c_void, usize)>,
    /// Bytes of the last chunk already mapped over.
    used: usize,
}

// SAFETY: the chunks are address space only this arena maps into and
// unmaps; it hands out no pointer that outlives a call.
unsafe impl Send for MappingArena {}

/// Address space reserved at a time: 4,096 pages, ~1,300 tables of 1,031
/// slots.
const ARENA_CHUNK: usize = 16 << 20;

impl MappingArena {
    /// Maps the first `elements` elements of the mmapable array `map`
    /// into the arena and hands the mapping to `write`. The mapping stays
    /// until the arena is dropped (it holds a reference to the map).
    pub(crate) fn with_mapping<T>(
        &mut self,
        map: BorrowedFd<'_>,
        elements: usize,
        write: impl FnOnce(&Mapped) -> T,
    ) -> std::io::Result<T> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = elements * ELEMENT;
        let span = len.div_ceil(page) * page;
        let at = self.room(span)?;
        // SAFETY: `at` is `span` bytes of this arena's reserved address
        // space that nothing else maps (MAP_FIXED replaces only the
        // reservation there); `span` is the map's own size in pages.
        let mapped = unsafe { map_shared(map, at, span, libc::MAP_FIXED)? };
        let view = Mapped {
            at: mapped,
            len,
            owned: false,
        };
        Ok(write(&view))
    }

    /// `span` bytes of reserved address space not mapped over yet.
    fn room(&mut self, span: usize) -> std::io::Result<*mut libc::c_void> {
        let fits = self
            .chunks
            .last()
            .is_some_and(|(_, len)| self.used + span <= *len);
        if !fits {
            let len = span.max(ARENA_CHUNK);
            // SAFETY: a new private reservation, no access, no memory
            // committed; only this arena maps into it.
            let at = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if at == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            self.chunks.push((at, len));
            self.used = 0;
        }
        let Some((at, _)) = self.chunks.last() else {
            return Err(std::io::Error::other("no chunk reserved"));
        };
        // SAFETY: within the chunk (checked above).
        let room = unsafe { at.cast::<u8>().add(self.used) };
        self.used += span;
        Ok(room.cast())
    }
}

impl Drop for MappingArena {
    fn drop(&mut self) {
        for (at, len) in &self.chunks {
            // SAFETY: a chunk reserved in room(), with whatever was mapped
            // over it; no Mapped of it outlives with_mapping.
            unsafe { libc::munmap(*at, *len) };
        }
    }
}
