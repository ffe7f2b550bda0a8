//! Arrays in memory advised for 2 MiB pages: weights laid out once at load and read end to end
//! on every step, and the KV rows decode reads back on every step.
//!
//! A small model's matrices (and a sequence's cache rows per layer) are each far smaller than a
//! huge page, so one allocation apiece would never get one: streamed through 4 KiB pages, tens
//! of MiB miss the TLB on every page, which under a hypervisor's nested page tables is a long
//! walk. Here arrays are carved one after another from 32 MiB chunks mapped fresh from the
//! kernel (zero-filled, untouched until written), so they lie in huge pages wherever Linux
//! grants them (transparent huge pages in `madvise` mode). A chunk is unmapped with the last
//! array carved from it; an array's own pages are handed back when it drops, so a chunk shared
//! by a dropped array and a live one holds only the live one's memory.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, Weak};

/// 2 MiB: a transparent huge page on x86-64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Chunks shared by the arrays carved from them; an array above a quarter of this gets a chunk
/// of its own.
const CHUNK: usize = 16 * HUGE_PAGE;

/// Where arrays start within a chunk: a cache line (and a 64-byte vector).
const ALIGN: usize = 64;

/// Ask Linux to back `v`'s memory with 2 MiB pages where it can: the whole-aligned 2 MiB
/// stretches inside it. Advice only: nothing changes where the kernel declines, and contents
/// are untouched.
pub fn advise_huge_pages<T>(v: &[T]) {
    advise(v.as_ptr() as usize, std::mem::size_of_val(v), Advice::Huge);
}

#[derive(Clone, Copy)]
enum Advice {
    /// Back with huge pages (whole 2 MiB stretches only).
    Huge,
    /// Hand the pages back (whole 4 KiB pages only); they read as zeros if touched again.
    Release,
}

/// Give `advice` for the `bytes` bytes of one live allocation from `start`.
fn advise(start: usize, bytes: usize, advice: Advice) {
    #[cfg(target_os = "linux")]
    {
        let (unit, flag) = match advice {
            Advice::Huge => (HUGE_PAGE, libc::MADV_HUGEPAGE),
            Advice::Release => (4096, libc::MADV_DONTNEED),
        };
        let (from, to) = (start.next_multiple_of(unit), start.saturating_add(bytes) / unit * unit);
        if from < to {
            // SAFETY: the range lies inside one live allocation that nothing else uses; the
            // advice either changes no contents or drops pages nobody reads again.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, flag) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, bytes, advice);
}

/// Types for which all-zero bytes are a value.
///
/// # Safety
/// Every bit pattern of zeros must be a valid value of the type.
pub unsafe trait Zeroable: Copy {}
// SAFETY (each): integers and IEEE floats are valid as zeros.
unsafe impl Zeroable for u8 {}
unsafe impl Zeroable for u16 {}
unsafe impl Zeroable for u64 {}
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for half::f16 {}

/// Zero-filled memory aligned to a huge page, from the kernel, given back on drop.
struct Chunk {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: a chunk is plain memory; every array owns a disjoint range of it.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    /// At least `bytes` (rounded up to huge pages, advised for them as far as `bytes` reach),
    /// or `None` when refused.
    fn new(bytes: usize) -> Option<Self> {
        let size = bytes.max(1).checked_next_multiple_of(HUGE_PAGE)?;
        #[cfg(unix)]
        {
            // Map a huge page more than asked, then unmap what lies outside the aligned range.
            let span = size.checked_add(HUGE_PAGE)?;
            // SAFETY: an anonymous private mapping at an address of the kernel's choice.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            let start = (base as usize).next_multiple_of(HUGE_PAGE);
            let (head, tail) = (start - base as usize, base as usize + span - (start + size));
            // SAFETY (each): the ranges lie inside the mapping just made and outside the kept one.
            unsafe {
                if head > 0 {
                    libc::munmap(base, head);
                }
                if tail > 0 {
                    libc::munmap((start + size) as *mut libc::c_void, tail);
                }
            }
            // Only whole huge pages of what was asked for: a tail page past `bytes`, once
            // touched, would be a whole 2 MiB resident for a few KiB used.
            advise(start, bytes, Advice::Huge);
            Some(Self {
                ptr: NonNull::new(start as *mut u8)?,
                size,
            })
        }
        #[cfg(not(unix))]
        {
            let layout = std::alloc::Layout::from_size_align(size, HUGE_PAGE).ok()?;
            // SAFETY: the layout's size is non-zero.
            let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
            Some(Self { ptr, size })
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: the range was mapped in `Chunk::new` and nothing refers to it any more.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.size);
        }
        #[cfg(not(unix))]
        // SAFETY: allocated with this layout in `Chunk::new`.
        unsafe {
            std::alloc::dealloc(
                self.ptr.as_ptr(),
                std::alloc::Layout::from_size_align_unchecked(self.size, HUGE_PAGE),
            )
        };
    }
}

/// The chunk small arrays are carved from now, and how many of its bytes are taken. Held
/// weakly: a chunk whose arrays have all dropped is unmapped, not kept for later arrays.
static CURRENT: Mutex<Option<(Weak<Chunk>, usize)>> = Mutex::new(None);

/// A fixed-length array carved from a chunk (see the module's text). Its bytes were never
/// handed to anything else, so a new array reads as zeros.
pub struct HugeArray<T: Zeroable> {
    chunk: Arc<Chunk>,
    /// Byte offset of the first element in the chunk (a multiple of [`ALIGN`]).
    at: usize,
    len: usize,
    _elem: PhantomData<T>,
}

impl<T: Zeroable> HugeArray<T> {
    /// `len` zeros, in memory not yet touched; `None` when the size overflows or the memory is
    /// refused.
    pub fn zeroed(len: usize) -> Option<Self> {
        const { assert!(std::mem::align_of::<T>() <= ALIGN) };
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        let (chunk, at) = if bytes > CHUNK / 4 {
            (Arc::new(Chunk::new(bytes)?), 0)
        } else {
            let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
            let live = current.as_ref().and_then(|(c, used)| Some((c.upgrade()?, *used)));
            let (chunk, at) = match live {
                Some((c, used)) if used.next_multiple_of(ALIGN) + bytes <= c.size => (c, used.next_multiple_of(ALIGN)),
                _ => (Arc::new(Chunk::new(CHUNK)?), 0),
            };
            *current = Some((Arc::downgrade(&chunk), at + bytes));
            (chunk, at)
        };
        Some(Self {
            chunk,
            at,
            len,
            _elem: PhantomData,
        })
    }

    /// `len` copies of `fill`.
    pub fn filled(len: usize, fill: T) -> Option<Self> {
        let mut array = Self::zeroed(len)?;
        array.fill(fill);
        Some(array)
    }

    fn base(&self) -> *mut T {
        // SAFETY: `at` lies inside the chunk.
        unsafe { self.chunk.ptr.as_ptr().add(self.at).cast() }
    }
}

impl<T: Zeroable> std::ops::Deref for HugeArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the range holds `len` elements (zeros or written since) that only this array
        // reaches, aligned to ALIGN.
        unsafe { std::slice::from_raw_parts(self.base(), self.len) }
    }
}

impl<T: Zeroable> std::ops::DerefMut for HugeArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for `deref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.base(), self.len) }
    }
}

impl<T: Zeroable> Drop for HugeArray<T> {
    fn drop(&mut self) {
        // The pages wholly inside this array go back now (the chunk may outlive it).
        advise(
            self.base() as usize,
            self.len * std::mem::size_of::<T>(),
            Advice::Release,
        );
    }
}

impl<T: Zeroable> std::fmt::Debug for HugeArray<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeArray").field("len", &self.len).finish()
    }
}

/// A growable vector on [`HugeArray`]s: room for `capacity` elements, the first `len` in use.
/// Growing past the room moves the values to an array twice as large.
pub struct HugeVec<T: Zeroable> {
    buf: Option<HugeArray<T>>,
    len: usize,
}

impl<T: Zeroable> Default for HugeVec<T> {
    fn default() -> Self {
        Self { buf: None, len: 0 }
    }
}

impl<T: Zeroable> HugeVec<T> {
    /// Empty, with room for `capacity` elements (none when the memory is refused: it is asked
    /// for again, with an error then, when values arrive).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: if capacity > 0 {
                HugeArray::zeroed(capacity)
            } else {
                None
            },
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    /// Make room for `extra` more elements; `false` when the memory is refused (nothing
    /// changes then).
    #[must_use]
    pub fn reserve(&mut self, extra: usize) -> bool {
        let Some(need) = self.len.checked_add(extra) else {
            return false;
        };
        if need <= self.capacity() {
            return true;
        }
        let Some(mut grown) = HugeArray::zeroed(need.max(2 * self.capacity())) else {
            return false;
        };
        grown[..self.len].copy_from_slice(self);
        self.buf = Some(grown);
        true
    }

    /// Append `extra` zeros and return them to be written; `None` when the memory is refused.
    pub fn grow_zeroed(&mut self, extra: usize) -> Option<&mut [T]> {
        if !self.reserve(extra) {
            return None;
        }
        let start = self.len;
        self.len += extra;
        let tail = &mut self[start..];
        // Rows truncated away earlier were written: clear them again.
        // SAFETY: zeros are a value of `T` (`Zeroable`).
        tail.fill(unsafe { std::mem::zeroed() });
        Some(tail)
    }

    /// Append `values`; `false` when the memory is refused (nothing changes then).
    #[must_use]
    pub fn extend_from_slice(&mut self, values: &[T]) -> bool {
        if !self.reserve(values.len()) {
            return false;
        }
        let start = self.len;
        self.len += values.len();
        // Written once: no clearing first, as `grow_zeroed` does for its caller.
        self[start..].copy_from_slice(values);
        true
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

impl<T: Zeroable> std::ops::Deref for HugeVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.buf {
            Some(b) => &b[..self.len],
            None => &[],
        }
    }
}

impl<T: Zeroable> std::ops::DerefMut for HugeVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.buf {
            Some(b) => &mut b[..self.len],
            None => &mut [],
        }
    }
}

impl<T: Zeroable> Clone for HugeVec<T> {
    /// A copy with the same room (a cache cloned mid-sequence keeps its reservation).
    fn clone(&self) -> Self {
        let mut copy = Self::with_capacity(self.capacity());
        // Memory refused for the copy: an empty vector would lose rows, so fail loudly as
        // `Vec` does when allocation fails.
        assert!(
            copy.extend_from_slice(self),
            "out of memory copying {} values",
            self.len
        );
        copy
    }
}

impl<T: Zeroable + std::fmt::Debug> std::fmt::Debug for HugeVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeVec")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_start_zeroed_aligned_and_never_overlap() {
        let arrays: Vec<HugeArray<u16>> = (0..200)
            .map(|i| HugeArray::zeroed(1000 + 37 * i).expect("memory"))
            .collect();
        let mut ranges: Vec<(usize, usize)> = arrays
            .iter()
            .map(|a| (a.as_ptr() as usize, a.as_ptr() as usize + 2 * a.len()))
            .collect();
        for a in &arrays {
            assert!(a.iter().all(|&v| v == 0));
            assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        }
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "{w:?} overlap");
        }
    }

    #[test]
    fn dropped_arrays_leave_live_ones_intact_and_new_ones_zeroed() {
        let mut keep = Vec::new();
        for round in 0..50u64 {
            let mut a = HugeArray::<u64>::filled(70_000, round + 1).expect("memory");
            let b = HugeArray::<u64>::zeroed(70_000).expect("memory");
            assert!(b.iter().all(|&v| v == 0));
            a[69_999] ^= 1;
            if round % 3 == 0 {
                keep.push((round, a));
            }
        }
        for (round, a) in &keep {
            assert!(a[..69_999].iter().all(|&v| v == round + 1));
            assert_eq!(a[69_999], (round + 1) ^ 1);
        }
        // An array larger than a shared chunk's quarter gets its own chunk.
        let big = HugeArray::<u8>::filled(CHUNK + 5, 7).expect("memory");
        assert_eq!(big.len(), CHUNK + 5);
        assert!(big.iter().all(|&v| v == 7));
    }

    #[test]
    fn vectors_grow_truncate_and_clone_like_vec() {
        let mut v = HugeVec::<f32>::with_capacity(3);
        let mut reference = Vec::new();
        for i in 0..5000 {
            let values: Vec<f32> = (0..(i % 7)).map(|j| (i * 10 + j) as f32).collect();
            assert!(v.extend_from_slice(&values));
            reference.extend_from_slice(&values);
            if i % 97 == 0 {
                let keep = reference.len() / 2;
                v.truncate(keep);
                reference.truncate(keep);
            }
            assert_eq!(&v[..], &reference[..]);
        }
        let copy = v.clone();
        assert_eq!(&copy[..], &reference[..]);
        assert_eq!(copy.capacity(), v.capacity());
        // Truncated rows come back as zeros, not as what they held.
        let n = v.len();
        v.truncate(n - 5);
        assert!(v.grow_zeroed(5).expect("memory").iter().all(|&x| x == 0.0));
        assert!(HugeVec::<u8>::default().is_empty());
        assert!(!HugeVec::<u64>::default().reserve(usize::MAX));
    }
}
