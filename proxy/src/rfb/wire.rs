//! Incremental parsing over a private byte buffer.
//!
//! Parsers take everything received so far and either finish one unit, ask for more
//! (consuming nothing and changing no state), or fail.

use super::error::Error;

/// Why a parser stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The buffer ends before the unit does; retry with more bytes.
    More,
    /// The input is bad.
    Bad(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Bad(e)
    }
}

pub(crate) type PResult<T> = std::result::Result<T, Stop>;

/// Turns an internal result into the public "done, need more, or error" shape.
pub(crate) fn finish<T>(r: PResult<T>) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Stop::More) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

/// A cursor over bytes we own (never over peer-shared memory).
pub(crate) struct Rd<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Rd<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Rd { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize) -> PResult<&'a [u8]> {
        if self.remaining() < n {
            return Err(Stop::More);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(crate) fn skip(&mut self, n: usize) -> PResult<()> {
        self.bytes(n).map(|_| ())
    }

    pub(crate) fn u8(&mut self) -> PResult<u8> {
        Ok(self.bytes(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> PResult<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> PResult<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn i32(&mut self) -> PResult<i32> {
        Ok(self.u32()? as i32)
    }

    /// Tight's 1-3 byte length: 7 bits per byte, the third byte contributes 8.
    pub(crate) fn compact_len(&mut self) -> PResult<usize> {
        let b0 = self.u8()?;
        let mut len = usize::from(b0 & 0x7f);
        if b0 & 0x80 != 0 {
            let b1 = self.u8()?;
            len |= usize::from(b1 & 0x7f) << 7;
            if b1 & 0x80 != 0 {
                let b2 = self.u8()?;
                len |= usize::from(b2) << 14;
            }
        }
        Ok(len)
    }
}

/// Writes Tight's compact length; `len` must be below 2^22.
pub(crate) fn put_compact_len(out: &mut Vec<u8>, len: usize) {
    debug_assert!(len < 1 << 22);
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x4000 {
        out.push((len as u8 & 0x7f) | 0x80);
        out.push((len >> 7) as u8);
    } else {
        out.push((len as u8 & 0x7f) | 0x80);
        out.push(((len >> 7) as u8 & 0x7f) | 0x80);
        out.push((len >> 14) as u8);
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_i32(out: &mut Vec<u8>, v: i32) {
    out.extend_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_len_round_trip_and_partial() {
        for len in [0usize, 1, 127, 128, 16383, 16384, (1 << 22) - 1] {
            let mut v = Vec::new();
            put_compact_len(&mut v, len);
            for cut in 0..v.len() {
                assert!(matches!(Rd::new(&v[..cut]).compact_len(), Err(Stop::More)));
            }
            let mut r = Rd::new(&v);
            assert_eq!(r.compact_len().ok(), Some(len));
            assert_eq!(r.pos(), v.len());
        }
    }

    #[test]
    fn short_reads_ask_for_more() {
        assert!(matches!(Rd::new(&[1, 2, 3]).u32(), Err(Stop::More)));
        assert!(matches!(finish(Rd::new(&[1]).u16()), Ok(None)));
    }
}
