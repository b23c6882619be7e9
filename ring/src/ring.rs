//! The single-producer single-consumer byte ring.
//!
//! Indices are free-running `u32`s; the byte position is `index & (size - 1)`. Each
//! side keeps its own index privately and only ever publishes it: it never reads it
//! back from shared memory, where the peer could have changed it. The peer's index
//! is read once per operation (Acquire), checked with wrapping arithmetic
//! (`prod - cons <= size`), and a violation is [`Error::Protocol`]: never a panic,
//! never a copy outside the ring.
//!
//! The ring is generic over [`SharedMem`] so the same code runs on real mappings
//! ([`ShmView`]) and under the loom model checker (`tests/loom.rs`).

use std::sync::atomic::Ordering;

use crate::shm::ShmView;
use crate::{Error, Result};

/// The operations the ring and the notify protocol need from shared memory.
pub trait SharedMem: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the memory is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Atomic u32 load.
    fn load_u32(&self, off: usize, o: Ordering) -> Result<u32>;
    /// Atomic u32 store.
    fn store_u32(&self, off: usize, v: u32, o: Ordering) -> Result<()>;
    /// Atomic byte load.
    fn load_u8(&self, off: usize, o: Ordering) -> Result<u8>;
    /// Atomic byte store.
    fn store_u8(&self, off: usize, v: u8, o: Ordering) -> Result<()>;
    /// Atomic byte or; returns the previous value.
    fn fetch_or_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8>;
    /// Atomic byte and; returns the previous value.
    fn fetch_and_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8>;
    /// A memory fence.
    fn fence(&self, o: Ordering);
    /// Copies private bytes in.
    fn copy_in(&self, off: usize, src: &[u8]) -> Result<()>;
    /// Copies shared bytes out.
    fn copy_out(&self, off: usize, dst: &mut [u8]) -> Result<()>;
}

impl SharedMem for ShmView {
    fn len(&self) -> usize {
        ShmView::len(self)
    }
    fn load_u32(&self, off: usize, o: Ordering) -> Result<u32> {
        ShmView::load_u32(self, off, o)
    }
    fn store_u32(&self, off: usize, v: u32, o: Ordering) -> Result<()> {
        ShmView::store_u32(self, off, v, o)
    }
    fn load_u8(&self, off: usize, o: Ordering) -> Result<u8> {
        ShmView::load_u8(self, off, o)
    }
    fn store_u8(&self, off: usize, v: u8, o: Ordering) -> Result<()> {
        ShmView::store_u8(self, off, v, o)
    }
    fn fetch_or_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8> {
        ShmView::fetch_or_u8(self, off, v, o)
    }
    fn fetch_and_u8(&self, off: usize, v: u8, o: Ordering) -> Result<u8> {
        ShmView::fetch_and_u8(self, off, v, o)
    }
    fn fence(&self, o: Ordering) {
        std::sync::atomic::fence(o)
    }
    fn copy_in(&self, off: usize, src: &[u8]) -> Result<()> {
        ShmView::copy_in(self, off, src)
    }
    fn copy_out(&self, off: usize, dst: &mut [u8]) -> Result<()> {
        ShmView::copy_out(self, off, dst)
    }
}

/// Offset of `cons` within a `ring_shared`.
const CONS: usize = crate::layout::CONS;
/// Offset of `prod` within a `ring_shared`.
const PROD: usize = crate::layout::PROD;

/// Up to two `(pointer, length)` ranges of ring memory, in ring order. The second
/// is empty unless the range wraps.
pub type Segments = [(*mut u8, usize); 2];

fn check_size<M: SharedMem>(data: &M, size: u32) -> Result<()> {
    if !size.is_power_of_two() || size as usize > data.len() || size > 1 << 30 {
        return Err(Error::Invalid(format!(
            "ring size {size} not a power of two within {} bytes",
            data.len()
        )));
    }
    Ok(())
}

/// Splits `n` bytes starting at free-running index `idx` into at most two
/// in-ring `(offset, len)` pieces.
fn split(idx: u32, n: u32, size: u32) -> [(usize, usize); 2] {
    let pos = idx & (size - 1);
    let first = n.min(size - pos);
    [(pos as usize, first as usize), (0, (n - first) as usize)]
}

/// The writing end of one ring.
#[derive(Debug)]
pub struct Producer<M> {
    ctrl: M,
    shared: usize,
    data: M,
    size: u32,
    /// Our index: the truth. Never read back from shared memory.
    prod: u32,
    /// Free space seen by the last validated look at the consumer's index.
    space: u32,
}

impl<M: SharedMem> Producer<M> {
    /// A producer for the ring whose `ring_shared` sits at `shared` in `ctrl` and
    /// whose bytes are the first `size` of `data`, starting at index `prod`.
    pub fn new(ctrl: M, shared: usize, data: M, size: u32, prod: u32) -> Result<Self> {
        check_size(&data, size)?;
        Ok(Self {
            ctrl,
            shared,
            data,
            size,
            prod,
            space: 0,
        })
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Our producer index.
    pub fn index(&self) -> u32 {
        self.prod
    }

    /// Reads the consumer's index once and returns the free space.
    pub fn writable(&mut self) -> Result<u32> {
        let cons = self.ctrl.load_u32(self.shared + CONS, Ordering::Acquire)?;
        let used = self.prod.wrapping_sub(cons);
        if used > self.size {
            self.space = 0;
            return Err(Error::Protocol(format!(
                "consumer index {cons} inconsistent with producer {} (size {})",
                self.prod, self.size
            )));
        }
        self.space = self.size - used;
        Ok(self.space)
    }

    /// Copies as much of `buf` as fits and publishes it. Returns the bytes written.
    pub fn write(&mut self, buf: &[u8]) -> Result<usize> {
        let n = self
            .writable()?
            .min(u32::try_from(buf.len()).unwrap_or(u32::MAX));
        if n == 0 {
            return Ok(0);
        }
        let mut done = 0;
        for (off, len) in split(self.prod, n, self.size) {
            self.data.copy_in(off, &buf[done..done + len])?;
            done += len;
        }
        self.commit(n as usize)?;
        Ok(done)
    }

    /// Publishes `n` bytes written into the space last reported by
    /// [`Producer::writable`] (or [`Producer::free_segments`]).
    pub fn commit(&mut self, n: usize) -> Result<()> {
        let n = u32::try_from(n)
            .ok()
            .filter(|&n| n <= self.space)
            .ok_or_else(|| Error::Invalid(format!("commit of {n} > space {}", self.space)))?;
        self.prod = self.prod.wrapping_add(n);
        self.space -= n;
        // Release: the data copied above is visible before the new index.
        self.ctrl
            .store_u32(self.shared + PROD, self.prod, Ordering::Release)
    }
}

impl Producer<ShmView> {
    /// The free space as up to two raw ranges, for `readv(2)` straight into the
    /// ring. Write into them, then [`Producer::commit`] what was written.
    pub fn free_segments(&mut self) -> Result<Segments> {
        let n = self.writable()?;
        Ok(self.segments(self.prod, n))
    }

    fn segments(&self, idx: u32, n: u32) -> Segments {
        let base = self.data.as_ptr();
        // wrapping_add avoids unsafe; offsets are < size <= data.len().
        split(idx, n, self.size).map(|(off, len)| (base.wrapping_add(off), len))
    }
}

/// The reading end of one ring.
#[derive(Debug)]
pub struct Consumer<M> {
    ctrl: M,
    shared: usize,
    data: M,
    size: u32,
    /// Our index: the truth. Never read back from shared memory.
    cons: u32,
    /// Data seen by the last validated look at the producer's index.
    ready: u32,
}

impl<M: SharedMem> Consumer<M> {
    /// A consumer for the ring whose `ring_shared` sits at `shared` in `ctrl` and
    /// whose bytes are the first `size` of `data`, starting at index `cons`.
    pub fn new(ctrl: M, shared: usize, data: M, size: u32, cons: u32) -> Result<Self> {
        check_size(&data, size)?;
        Ok(Self {
            ctrl,
            shared,
            data,
            size,
            cons,
            ready: 0,
        })
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Our consumer index.
    pub fn index(&self) -> u32 {
        self.cons
    }

    /// Reads the producer's index once and returns the bytes ready.
    pub fn readable(&mut self) -> Result<u32> {
        let prod = self.ctrl.load_u32(self.shared + PROD, Ordering::Acquire)?;
        let ready = prod.wrapping_sub(self.cons);
        if ready > self.size {
            self.ready = 0;
            return Err(Error::Protocol(format!(
                "producer index {prod} inconsistent with consumer {} (size {})",
                self.cons, self.size
            )));
        }
        self.ready = ready;
        Ok(ready)
    }

    /// Copies up to `buf.len()` ready bytes out and releases their space.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let n = self
            .readable()?
            .min(u32::try_from(buf.len()).unwrap_or(u32::MAX));
        if n == 0 {
            return Ok(0);
        }
        let mut done = 0;
        for (off, len) in split(self.cons, n, self.size) {
            self.data.copy_out(off, &mut buf[done..done + len])?;
            done += len;
        }
        self.consume(n as usize)?;
        Ok(done)
    }

    /// Releases `n` bytes of the data last reported by [`Consumer::readable`]
    /// (or [`Consumer::data_segments`]).
    pub fn consume(&mut self, n: usize) -> Result<()> {
        let n = u32::try_from(n)
            .ok()
            .filter(|&n| n <= self.ready)
            .ok_or_else(|| Error::Invalid(format!("consume of {n} > ready {}", self.ready)))?;
        self.cons = self.cons.wrapping_add(n);
        self.ready -= n;
        // Release: our reads of the data are done before the producer may reuse it.
        self.ctrl
            .store_u32(self.shared + CONS, self.cons, Ordering::Release)
    }
}

impl Consumer<ShmView> {
    /// The ready data as up to two raw ranges, for `writev(2)` straight from the
    /// ring. Then [`Consumer::consume`] what was taken.
    pub fn data_segments(&mut self) -> Result<Segments> {
        let n = self.readable()?;
        let base = self.data.as_ptr();
        Ok(split(self.cons, n, self.size).map(|(off, len)| (base.wrapping_add(off), len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Mem {
        _buf: Vec<u64>,
        ctrl: ShmView,
        data: ShmView,
    }

    fn mem(size: usize) -> Mem {
        let mut buf = vec![0u64; (64 + size) / 8];
        // SAFETY: the buffer lives in the returned struct as long as the views.
        let all = unsafe { ShmView::new(buf.as_mut_ptr().cast(), 64 + size) };
        Mem {
            ctrl: all.sub(0, 64).unwrap(),
            data: all.sub(64, size).unwrap(),
            _buf: buf,
        }
    }

    fn pair(m: &Mem, size: u32, start: u32) -> (Producer<ShmView>, Consumer<ShmView>) {
        m.ctrl.store_u32(CONS, start, Ordering::Relaxed).unwrap();
        m.ctrl.store_u32(PROD, start, Ordering::Relaxed).unwrap();
        (
            Producer::new(m.ctrl, 0, m.data, size, start).unwrap(),
            Consumer::new(m.ctrl, 0, m.data, size, start).unwrap(),
        )
    }

    #[test]
    fn write_read_across_wrap_and_index_overflow() {
        let m = mem(16);
        let (mut p, mut c) = pair(&m, 16, u32::MAX - 5);
        let mut got = Vec::new();
        let mut next = 0u8;
        for round in 0..50 {
            let chunk: Vec<u8> = (0..(round % 13))
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            let n = p.write(&chunk).unwrap();
            assert!(n <= chunk.len());
            next = next.wrapping_sub((chunk.len() - n) as u8);
            let mut b = [0u8; 7];
            let r = c.read(&mut b).unwrap();
            got.extend_from_slice(&b[..r]);
        }
        let mut b = [0u8; 16];
        let r = c.read(&mut b).unwrap();
        got.extend_from_slice(&b[..r]);
        let want: Vec<u8> = (1..=got.len()).map(|i| i as u8).collect();
        assert_eq!(got, want);
        assert!(got.len() > 100);
    }

    #[test]
    fn full_and_empty() {
        let m = mem(16);
        let (mut p, mut c) = pair(&m, 16, 0);
        assert_eq!(p.write(&[1; 20]).unwrap(), 16);
        assert_eq!(p.write(&[1; 20]).unwrap(), 0);
        assert_eq!(c.read(&mut [0; 40]).unwrap(), 16);
        assert_eq!(c.read(&mut [0; 40]).unwrap(), 0);
    }

    #[test]
    fn hostile_consumer_index_is_a_protocol_error() {
        let m = mem(16);
        let (mut p, _c) = pair(&m, 16, 0);
        p.write(&[1; 4]).unwrap();
        // Consumer claims to have read past what we produced.
        m.ctrl.store_u32(CONS, 5, Ordering::Relaxed).unwrap();
        assert!(matches!(p.write(&[1]), Err(Error::Protocol(_))));
        // Far behind: prod - cons = 4 - (4 - 17) = 17 > 16.
        m.ctrl
            .store_u32(CONS, 4u32.wrapping_sub(17), Ordering::Relaxed)
            .unwrap();
        assert!(matches!(p.writable(), Err(Error::Protocol(_))));
        // Exactly full is fine.
        m.ctrl
            .store_u32(CONS, 4u32.wrapping_sub(16), Ordering::Relaxed)
            .unwrap();
        assert_eq!(p.writable().unwrap(), 0);
        // Our own index is not taken from shared memory.
        m.ctrl.store_u32(PROD, 1000, Ordering::Relaxed).unwrap();
        assert_eq!(p.index(), 4);
    }

    #[test]
    fn hostile_producer_index_is_a_protocol_error() {
        let m = mem(16);
        let (_p, mut c) = pair(&m, 16, 0);
        m.ctrl.store_u32(PROD, 17, Ordering::Relaxed).unwrap();
        assert!(matches!(c.read(&mut [0; 4]), Err(Error::Protocol(_))));
        m.ctrl.store_u32(PROD, u32::MAX, Ordering::Relaxed).unwrap();
        assert!(matches!(c.readable(), Err(Error::Protocol(_))));
        m.ctrl.store_u32(PROD, 16, Ordering::Relaxed).unwrap();
        assert_eq!(c.readable().unwrap(), 16);
        // A commit beyond what was validated is refused.
        assert!(c.consume(17).is_err());
        m.ctrl.store_u32(PROD, 17, Ordering::Relaxed).unwrap();
        assert!(c.readable().is_err());
        assert!(
            c.consume(1).is_err(),
            "a failed check leaves nothing to consume"
        );
    }

    #[test]
    fn segments_split_at_the_wrap() {
        let m = mem(16);
        let (mut p, mut c) = pair(&m, 16, 10);
        let [(a, al), (b, bl)] = p.free_segments().unwrap();
        assert_eq!((al, bl), (6, 10));
        assert_eq!(a, m.data.as_ptr().wrapping_add(10));
        assert_eq!(b, m.data.as_ptr());
        assert!(p.commit(17).is_err());
        m.data.copy_in(10, b"abcdef").unwrap();
        m.data.copy_in(0, b"gh").unwrap();
        p.commit(8).unwrap();
        let [(a, al), (b, bl)] = c.data_segments().unwrap();
        assert_eq!((al, bl), (6, 2));
        assert_eq!((a, b), (m.data.as_ptr().wrapping_add(10), m.data.as_ptr()));
        c.consume(7).unwrap();
        let mut out = [0u8; 4];
        assert_eq!(c.read(&mut out).unwrap(), 1);
        assert_eq!(out[0], b'h');
    }

    #[test]
    fn bad_sizes_rejected() {
        let m = mem(16);
        assert!(Producer::new(m.ctrl, 0, m.data, 12, 0).is_err());
        assert!(Producer::new(m.ctrl, 0, m.data, 32, 0).is_err());
        assert!(Consumer::new(m.ctrl, 0, m.data, 0, 0).is_err());
    }
}
