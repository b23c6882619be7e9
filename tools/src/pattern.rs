//! Checked test traffic: a pseudo-random block of prime length, repeated.
//!
//! Every received byte is compared with the byte expected at its stream offset, so
//! a lost, repeated or reordered chunk is caught where it happens, not only in a
//! final checksum. The prime length keeps the block out of step with every
//! power-of-two ring and write size.

use sha2::{Digest, Sha256};

/// Length of the repeated block (a prime just above 64 KiB).
pub const BLOCK: usize = 65_537;

/// The repeated block for `seed`.
pub fn block(seed: u64) -> Vec<u8> {
    // xorshift64*: cheap, deterministic, and never all-zero for a non-zero state.
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    if x == 0 {
        x = 1;
    }
    (0..BLOCK)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Produces the stream: `fill` writes the next bytes into a buffer.
pub struct Source {
    block: Vec<u8>,
    offset: u64,
}

impl Source {
    /// A source for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            block: block(seed),
            offset: 0,
        }
    }

    /// Fills `buf` with the next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let at = (self.offset % BLOCK as u64) as usize;
            let n = (BLOCK - at).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&self.block[at..at + n]);
            done += n;
            self.offset += n as u64;
        }
    }
}

/// Checks a received stream byte by byte and hashes it.
pub struct Checker {
    block: Vec<u8>,
    offset: u64,
    hash: Option<Sha256>,
}

/// Where a received stream first differed from the expected one.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream corrupted at byte {offset}: expected {expected:#04x}, got {got:#04x}")]
pub struct Mismatch {
    /// Stream offset of the first bad byte.
    pub offset: u64,
    /// The byte that should have arrived.
    pub expected: u8,
    /// The byte that did.
    pub got: u8,
}

impl Checker {
    /// A checker for `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            block: block(seed),
            offset: 0,
            hash: Some(Sha256::new()),
        }
    }

    /// A checker that compares every byte but keeps no digest: under emulation
    /// (the real-Xen lab's TCG) hashing costs more than moving the bytes, and a
    /// benchmark must measure the transport.
    pub fn without_digest(seed: u64) -> Self {
        Self {
            hash: None,
            ..Self::new(seed)
        }
    }

    /// Checks the next received bytes.
    pub fn check(&mut self, data: &[u8]) -> Result<(), Mismatch> {
        if let Some(h) = &mut self.hash {
            h.update(data);
        }
        let mut done = 0;
        while done < data.len() {
            let at = (self.offset % BLOCK as u64) as usize;
            let n = (BLOCK - at).min(data.len() - done);
            let want = &self.block[at..at + n];
            let got = &data[done..done + n];
            if want != got {
                let i = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
                return Err(Mismatch {
                    offset: self.offset + i as u64,
                    expected: want[i],
                    got: got[i],
                });
            }
            done += n;
            self.offset += n as u64;
        }
        Ok(())
    }

    /// Bytes checked so far.
    pub fn count(&self) -> u64 {
        self.offset
    }

    /// The sha256 of everything checked, in hex; empty without a digest.
    pub fn sha256(self) -> String {
        self.hash.map(|h| hex(&h.finalize())).unwrap_or_default()
    }
}

/// The sha256 of the first `len` bytes of the stream for `seed`, in hex.
pub fn expected_sha256(seed: u64, len: u64) -> String {
    let mut src = Source::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        src.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    hex(&hash.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_checker_agree_across_odd_chunking() {
        let mut src = Source::new(7);
        let mut chk = Checker::new(7);
        let mut buf = vec![0u8; 100_003];
        for n in [1, 65_536, 3, 100_003, 65_537, 17] {
            src.fill(&mut buf[..n]);
            chk.check(&buf[..n]).unwrap();
        }
        let total = chk.count();
        assert_eq!(chk.sha256(), expected_sha256(7, total));
    }

    #[test]
    fn a_dropped_chunk_is_caught_where_it_happens() {
        let mut src = Source::new(1);
        let mut chk = Checker::new(1);
        let mut buf = vec![0u8; 4096];
        src.fill(&mut buf);
        chk.check(&buf).unwrap();
        src.fill(&mut buf); // lost in transit
        src.fill(&mut buf);
        let err = chk.check(&buf).unwrap_err();
        assert!(err.offset >= 4096 && err.offset < 8192, "{err}");
    }

    #[test]
    fn seeds_differ() {
        assert_ne!(block(1), block(2));
    }
}
