//! Offset arithmetic over the (up to two) raw ring segments a channel callback
//! hands out, so frames can straddle the ring's wrap point.
//!
//! No reference to ring memory is ever formed: bytes move with raw copies into or
//! out of private memory, or the kernel moves them (`readv`/`sendmsg` iovecs).

use std::ptr;

use crate::ring::Segments;

/// The segments of one `read_with`/`write_with` callback.
#[derive(Clone, Copy)]
pub(crate) struct Segs {
    segs: Segments,
}

impl Segs {
    /// # Safety
    /// `segs` must be the ranges a channel passed to its callback, and the value
    /// must only be used inside that callback, while they are valid.
    pub(crate) unsafe fn new(segs: Segments) -> Self {
        Self { segs }
    }

    /// Total bytes.
    pub(crate) fn len(&self) -> usize {
        self.segs[0].1 + self.segs[1].1
    }

    /// Up to two (ptr, len) pieces covering `off..off+len`, clipped to the segments.
    pub(crate) fn range(&self, off: usize, len: usize) -> [(*mut u8, usize); 2] {
        let mut out = [(ptr::null_mut(), 0usize); 2];
        let mut n = 0;
        let mut off = off;
        let mut left = len;
        for &(p, l) in &self.segs {
            if left == 0 {
                break;
            }
            if off >= l {
                off -= l;
                continue;
            }
            let take = (l - off).min(left);
            // wrapping_add: `off < l`, so this stays inside the segment.
            out[n] = (p.wrapping_add(off), take);
            n += 1;
            left -= take;
            off = 0;
        }
        out
    }

    /// iovecs for `off..off+len` (fewer bytes if the segments are shorter) and
    /// how many of the two are in use.
    pub(crate) fn iovecs(&self, off: usize, len: usize) -> ([libc::iovec; 2], usize) {
        let r = self.range(off, len);
        let iov = r.map(|(p, l)| libc::iovec {
            iov_base: p.cast(),
            iov_len: l,
        });
        let cnt = r.iter().filter(|(_, l)| *l > 0).count();
        (iov, cnt)
    }

    /// Copies ring bytes at `off` into `dst`. Returns false if out of range.
    pub(crate) fn copy_out(&self, off: usize, dst: &mut [u8]) -> bool {
        if off.checked_add(dst.len()).is_none_or(|e| e > self.len()) {
            return false;
        }
        let mut done = 0;
        for (p, l) in self.range(off, dst.len()) {
            if l == 0 {
                continue;
            }
            // SAFETY: `range` clipped (p, l) to a segment that is valid for this
            // callback (constructor contract); `dst[done..done+l]` is private and in
            // bounds because the pieces sum to dst.len(). A raw copy forms no
            // reference to the peer-writable bytes.
            unsafe { ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(done), l) };
            done += l;
        }
        true
    }

    /// Copies ring bytes at `off..off+n` onto the end of `dst`. False if out of range.
    pub(crate) fn append_to(&self, off: usize, n: usize, dst: &mut Vec<u8>) -> bool {
        if off.checked_add(n).is_none_or(|e| e > self.len()) {
            return false;
        }
        dst.reserve(n);
        for (p, l) in self.range(off, n) {
            if l == 0 {
                continue;
            }
            let spare = dst.spare_capacity_mut();
            // SAFETY: (p, l) is inside a valid segment (see `copy_out`); `reserve`
            // made room for all `n` bytes, so `spare` holds at least `l`. Source and
            // destination cannot overlap (private vs shared memory).
            unsafe { ptr::copy_nonoverlapping(p, spare.as_mut_ptr().cast::<u8>(), l) };
            let len = dst.len();
            // SAFETY: the `l` bytes after `len` were just initialised by the copy.
            unsafe { dst.set_len(len + l) };
        }
        true
    }

    /// Copies private bytes into the ring at `off`. False if out of range.
    pub(crate) fn copy_in(&self, off: usize, src: &[u8]) -> bool {
        if off.checked_add(src.len()).is_none_or(|e| e > self.len()) {
            return false;
        }
        let mut done = 0;
        for (p, l) in self.range(off, src.len()) {
            if l == 0 {
                continue;
            }
            // SAFETY: (p, l) is inside a valid, writable free-space segment of this
            // callback; `src[done..done+l]` is private and in bounds.
            unsafe { ptr::copy_nonoverlapping(src.as_ptr().add(done), p, l) };
            done += l;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straddling_copies() {
        let mut a = vec![0u8; 5];
        let mut b = vec![0u8; 7];
        let segs = [(a.as_mut_ptr(), 5), (b.as_mut_ptr(), 7)];
        // SAFETY: both vectors outlive `s` and are not otherwise touched meanwhile.
        let s = unsafe { Segs::new(segs) };
        assert_eq!(s.len(), 12);
        assert!(s.copy_in(3, b"abcdef"));
        assert!(!s.copy_in(8, b"abcde"));
        let mut out = [0u8; 6];
        assert!(s.copy_out(3, &mut out));
        assert_eq!(&out, b"abcdef");
        assert!(!s.copy_out(7, &mut out));
        let mut v = b"x".to_vec();
        assert!(s.append_to(4, 3, &mut v));
        assert_eq!(v, b"xbcd");
        let (_, cnt) = s.iovecs(3, 6);
        assert_eq!(cnt, 2);
        let (iov, cnt) = s.iovecs(6, 100);
        assert_eq!((cnt, iov[0].iov_len), (1, 6));
        let (_, cnt) = s.iovecs(12, 1);
        assert_eq!(cnt, 0);
        assert_eq!(&a[3..], b"ab");
        assert_eq!(&b[..4], b"cdef");
    }
}
