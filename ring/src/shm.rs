//! Bounds-checked access to memory the peer can write.
//!
//! A [`ShmView`] is a raw pointer and a length. It never hands out a `&[u8]` or
//! `&mut [u8]` over the shared bytes: the peer may change them at any moment, and a
//! Rust reference would promise the compiler that they do not. Words are accessed
//! with atomics at explicit orderings; bulk data is copied with raw-pointer copies
//! straight into or out of private memory, after the offsets were checked against
//! private (never shared) bounds.

use std::ptr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU8, Ordering};

use crate::platform::Pages;
use crate::{Error, Result};

/// A window on shared memory: `len` bytes from `ptr`.
///
/// Copyable and cheap. It does not own the mapping: whoever builds one promises the
/// mapping outlives every use (the channel keeps the `Pages` next to its views).
#[derive(Clone, Copy, Debug)]
pub struct ShmView {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a view is only an address range; all access through it is atomic or a raw
// copy whose races the peer can cause anyway, so sharing it across threads adds none.
unsafe impl Send for ShmView {}
// SAFETY: as above: no method hands out references, so `&ShmView` from many threads
// is no different from many copies of the pointer.
unsafe impl Sync for ShmView {}

fn oob(off: usize, n: usize, len: usize) -> Error {
    Error::Invalid(format!(
        "shared access {off}+{n} outside view of {len} bytes"
    ))
}

impl ShmView {
    /// Builds a view over `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be mapped, readable (and writable, if any store or
    /// copy-in is done) and stay so for as long as the view or a copy of it is used.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Self {
        Self { ptr, len }
    }

    /// A view over a whole mapping. The caller keeps `pages` alive as long as the view.
    pub fn of(pages: &dyn Pages) -> Self {
        // SAFETY: `Pages` promises `as_ptr()` is valid for `len()` bytes while it
        // lives; the channel keeps the `Pages` for as long as it uses its views.
        unsafe { Self::new(pages.as_ptr(), pages.len()) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Raw start of the view, for handing ranges to the kernel (readv/writev).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// A sub-view of `len` bytes at `off`.
    pub fn sub(&self, off: usize, len: usize) -> Result<ShmView> {
        self.check(off, len, 1)?;
        // SAFETY: `off + len <= self.len` was just checked, so the range lies inside
        // this view, which the constructor's caller guaranteed to be valid.
        Ok(unsafe { ShmView::new(self.ptr.add(off), len) })
    }

    /// Checks `off..off+n` is in bounds and `off` is `align`-aligned in the address space.
    fn check(&self, off: usize, n: usize, align: usize) -> Result<*mut u8> {
        let end = off.checked_add(n).ok_or_else(|| oob(off, n, self.len))?;
        if end > self.len {
            return Err(oob(off, n, self.len));
        }
        // `wrapping_add` keeps this free of unsafe; `off < len` makes it in-bounds anyway.
        let p = self.ptr.wrapping_add(off);
        if (p as usize) % align != 0 {
            return Err(Error::Invalid(format!("misaligned shared access at {off}")));
        }
        Ok(p)
    }

    /// Atomic byte at `off`.
    fn atomic_u8(&self, off: usize) -> Result<&AtomicU8> {
        let p = self.check(off, 1, 1)?;
        // SAFETY: `p` is in bounds and valid (checked above, constructor contract).
        // An atomic type is an `UnsafeCell`: a shared reference to it does not claim
        // the bytes are unchanging, so a peer writing them concurrently is allowed.
        // The reference only lives for one atomic operation in the caller.
        Ok(unsafe { AtomicU8::from_ptr(p) })
    }

    fn atomic_u16(&self, off: usize) -> Result<&AtomicU16> {
        let p = self.check(off, 2, 2)?;
        // SAFETY: in bounds and 2-aligned (checked above); see `atomic_u8` on why an
        // atomic reference over peer-writable memory is sound.
        Ok(unsafe { AtomicU16::from_ptr(p.cast()) })
    }

    fn atomic_u32(&self, off: usize) -> Result<&AtomicU32> {
        let p = self.check(off, 4, 4)?;
        // SAFETY: in bounds and 4-aligned (checked above); see `atomic_u8` on why an
        // atomic reference over peer-writable memory is sound.
        Ok(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// Loads the byte at `off`.
    pub fn load_u8(&self, off: usize, o: Ordering) -> Result<u8> {
        Ok(self.atomic_u8(off)?.load(o))
    }

    /// Stores the byte at `off`.
    pub fn store_u8(&self, off: usize, v: u8, o: Ordering) -> Result<()> {
        self.atomic_u8(off)?.store(v, o);
        Ok(())
    }

    /// Ors `v` into the byte at `off`, returning the previous value.
    pub fn fetch_or_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8> {
        Ok(self.atomic_u8(off)?.fetch_or(v, o))
    }

    /// Ands `v` into the byte at `off`, returning the previous value.
    pub fn fetch_and_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8> {
        Ok(self.atomic_u8(off)?.fetch_and(v, o))
    }

    /// Loads the u16 at `off` (must be 2-aligned).
    pub fn load_u16(&self, off: usize, o: Ordering) -> Result<u16> {
        Ok(self.atomic_u16(off)?.load(o))
    }

    /// Stores the u16 at `off` (must be 2-aligned).
    pub fn store_u16(&self, off: usize, v: u16, o: Ordering) -> Result<()> {
        self.atomic_u16(off)?.store(v, o);
        Ok(())
    }

    /// Loads the u32 at `off` (must be 4-aligned).
    pub fn load_u32(&self, off: usize, o: Ordering) -> Result<u32> {
        Ok(self.atomic_u32(off)?.load(o))
    }

    /// Stores the u32 at `off` (must be 4-aligned).
    pub fn store_u32(&self, off: usize, v: u32, o: Ordering) -> Result<()> {
        self.atomic_u32(off)?.store(v, o);
        Ok(())
    }

    /// Copies `src` into the shared bytes at `off`.
    pub fn copy_in(&self, off: usize, src: &[u8]) -> Result<()> {
        let p = self.check(off, src.len(), 1)?;
        // SAFETY: the destination range is in bounds (checked above) and valid; the
        // source is private memory that cannot overlap a shared mapping. A raw copy
        // forms no reference to the shared bytes; a peer racing us can only garble
        // what it later reads, which it could do by writing the bytes itself.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        Ok(())
    }

    /// Copies shared bytes at `off` into `dst`.
    pub fn copy_out(&self, off: usize, dst: &mut [u8]) -> Result<()> {
        let p = self.check(off, dst.len(), 1)?;
        // SAFETY: the source range is in bounds (checked above) and valid; the
        // destination is private. The bytes are copied once and used only from the
        // private copy, so a racing peer can change what we get but never make us
        // read twice or out of bounds.
        unsafe { ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    /// Fills `n` bytes at `off` with `v` (used to zero a fresh control page).
    pub fn fill(&self, off: usize, n: usize, v: u8) -> Result<()> {
        let p = self.check(off, n, 1)?;
        // SAFETY: in bounds (checked above); a raw write forms no reference.
        unsafe { ptr::write_bytes(p, v, n) };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> Vec<u64> {
        vec![0u64; 512]
    }

    #[test]
    fn bounds_and_alignment_are_checked() {
        let mut b = buf();
        // SAFETY: the vector outlives the view and is only touched through it.
        let v = unsafe { ShmView::new(b.as_mut_ptr().cast(), 4096) };
        assert!(v.load_u32(4092, Ordering::Relaxed).is_ok());
        assert!(v.load_u32(4093, Ordering::Relaxed).is_err());
        assert!(v.load_u32(4096, Ordering::Relaxed).is_err());
        assert!(v.load_u32(usize::MAX - 1, Ordering::Relaxed).is_err());
        assert!(v.load_u8(4096, Ordering::Relaxed).is_err());
        assert!(v.copy_in(4000, &[0; 97]).is_err());
        assert!(v.copy_in(4000, &[0; 96]).is_ok());
        assert!(v.sub(4000, 97).is_err());
        let s = v.sub(1024, 1024).unwrap();
        assert!(s.copy_out(1, &mut [0; 1024]).is_err());
    }

    #[test]
    fn atomics_and_copies_round_trip() {
        let mut b = buf();
        // SAFETY: the vector outlives the view and is only touched through it.
        let v = unsafe { ShmView::new(b.as_mut_ptr().cast(), 4096) };
        v.store_u32(8, 0xdead_beef, Ordering::Release).unwrap();
        assert_eq!(v.load_u32(8, Ordering::Acquire).unwrap(), 0xdead_beef);
        assert_eq!(v.load_u8(8, Ordering::Relaxed).unwrap(), 0xef); // little endian
        v.store_u8(22, 0b01, Ordering::Relaxed).unwrap();
        assert_eq!(v.fetch_or_u8(22, 0b10, Ordering::AcqRel).unwrap(), 0b01);
        assert_eq!(v.fetch_and_u8(22, !0b01, Ordering::AcqRel).unwrap(), 0b11);
        assert_eq!(v.load_u8(22, Ordering::Relaxed).unwrap(), 0b10);
        v.store_u16(16, 12, Ordering::Relaxed).unwrap();
        assert_eq!(v.load_u16(16, Ordering::Relaxed).unwrap(), 12);
        v.copy_in(100, b"hello").unwrap();
        let mut out = [0u8; 5];
        v.sub(98, 10).unwrap().copy_out(2, &mut out).unwrap();
        assert_eq!(&out, b"hello");
    }
}
