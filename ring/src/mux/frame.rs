//! The frame codec: a fixed 24-byte little-endian header, then `len` payload bytes.
//!
//! Parsing works on a private copy of the header bytes (the caller copies them out
//! of the ring once); every field is checked here, so the driver only ever sees a
//! [`Header`] whose op, flags, stream id and length are consistent with each other.
//! See docs/protocol.md for the wire format.

use std::fmt;

/// Header size in bytes.
pub const HDR_LEN: usize = 24;
/// Protocol version spoken by this implementation.
pub const VERSION: u16 = 1;
/// First bytes of a HELLO payload.
pub const HELLO_MAGIC: [u8; 4] = *b"XVTM";
/// HELLO payload length in version 1.
pub const HELLO_LEN: u32 = 12;
/// Longest HELLO payload a future version may send (we still read its version).
pub const HELLO_MAX: u32 = 256;
/// Longest service name in a REQUEST.
pub const MAX_SERVICE: u32 = 64;
/// Largest RW payload on the wire. Bounds how much one frame can ask us to buffer.
pub const MAX_PAYLOAD: u32 = 1 << 20;

/// SHUTDOWN flag: the sender will not read any more (data to it is discarded).
pub const SHUT_RCV: u8 = 1;
/// SHUTDOWN flag: the sender will not send any more data (its socket hit EOF).
pub const SHUT_SEND: u8 = 2;

/// Frame operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Version and limits; the first frame each way, stream 0.
    Hello = 1,
    /// Opens a stream; payload is the service name.
    Request = 2,
    /// Accepts a REQUEST.
    Response = 3,
    /// Aborts a stream (or refuses a REQUEST).
    Rst = 4,
    /// Half-close; flags say which directions.
    Shutdown = 5,
    /// Stream data.
    Rw = 6,
    /// Announces freed receive space (`fwd_cnt`).
    CreditUpdate = 7,
    /// Asks the peer for a CREDIT_UPDATE.
    CreditRequest = 8,
}

impl Op {
    /// Decodes an op byte.
    pub fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Hello,
            2 => Op::Request,
            3 => Op::Response,
            4 => Op::Rst,
            5 => Op::Shutdown,
            6 => Op::Rw,
            7 => Op::CreditUpdate,
            8 => Op::CreditRequest,
            _ => return None,
        })
    }

    /// Whether this op's `buf_alloc`/`fwd_cnt` fields carry credit.
    pub fn carries_credit(self) -> bool {
        matches!(
            self,
            Op::Request | Op::Response | Op::Rw | Op::CreditUpdate | Op::CreditRequest
        )
    }
}

/// A validated frame header, in private memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Operation.
    pub op: Op,
    /// Op-specific flags (SHUTDOWN only).
    pub flags: u8,
    /// Stream id; 0 only for HELLO.
    pub stream: u32,
    /// Payload length.
    pub len: u32,
    /// Sender's receive buffer for this stream.
    pub buf_alloc: u32,
    /// Bytes the sender has forwarded out of that buffer (free-running).
    pub fwd_cnt: u32,
}

/// How a peer broke the framing rules. Any of these closes the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Op byte not known.
    UnknownOp(u8),
    /// A reserved field was not zero.
    Reserved,
    /// Flags not allowed for the op.
    BadFlags {
        /// Op.
        op: Op,
        /// Flags seen.
        flags: u8,
    },
    /// Stream id not allowed for the op (0 on a stream op, non-zero on HELLO).
    BadStreamId {
        /// Op.
        op: Op,
        /// Id seen.
        stream: u32,
    },
    /// Payload length not allowed for the op.
    BadLength {
        /// Op.
        op: Op,
        /// Length claimed.
        len: u32,
    },
    /// The frame claims more bytes than the ring holds (frames are committed whole).
    Truncated {
        /// Bytes the frame needs.
        need: u64,
        /// Bytes readable.
        have: u64,
    },
    /// Service name not printable ASCII.
    BadService,
    /// HELLO payload malformed.
    BadHello,
    /// The first frame was not HELLO.
    NotHello,
    /// A second HELLO.
    UnexpectedHello,
    /// A REQUEST with an id of our parity.
    WrongParity(u32),
    /// The peer asked for more control replies than it drains.
    ControlFlood,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnknownOp(o) => write!(f, "unknown op {o}"),
            Violation::Reserved => write!(f, "reserved field not zero"),
            Violation::BadFlags { op, flags } => write!(f, "flags {flags:#x} on {op:?}"),
            Violation::BadStreamId { op, stream } => write!(f, "stream id {stream} on {op:?}"),
            Violation::BadLength { op, len } => write!(f, "length {len} on {op:?}"),
            Violation::Truncated { need, have } => {
                write!(f, "frame needs {need} bytes, ring holds {have}")
            }
            Violation::BadService => write!(f, "service name not printable ASCII"),
            Violation::BadHello => write!(f, "malformed HELLO"),
            Violation::NotHello => write!(f, "first frame is not HELLO"),
            Violation::UnexpectedHello => write!(f, "HELLO after the first frame"),
            Violation::WrongParity(id) => write!(f, "REQUEST with our stream id parity ({id})"),
            Violation::ControlFlood => write!(f, "peer does not drain our control replies"),
        }
    }
}

fn u32_at(b: &[u8; HDR_LEN], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl Header {
    /// A header with zero credit fields.
    pub fn new(op: Op, flags: u8, stream: u32, len: u32) -> Header {
        Header {
            op,
            flags,
            stream,
            len,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    /// Encodes to wire bytes.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0] = self.op as u8;
        b[1] = self.flags;
        b[4..8].copy_from_slice(&self.stream.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[16..20].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Decodes and validates header bytes already copied into private memory.
    pub fn parse(b: &[u8; HDR_LEN]) -> Result<Header, Violation> {
        let op = Op::from_u8(b[0]).ok_or(Violation::UnknownOp(b[0]))?;
        let flags = b[1];
        if b[2] != 0 || b[3] != 0 || u32_at(b, 20) != 0 {
            return Err(Violation::Reserved);
        }
        let h = Header {
            op,
            flags,
            stream: u32_at(b, 4),
            len: u32_at(b, 8),
            buf_alloc: u32_at(b, 12),
            fwd_cnt: u32_at(b, 16),
        };
        let flags_ok = match op {
            Op::Shutdown => flags != 0 && flags & !(SHUT_RCV | SHUT_SEND) == 0,
            _ => flags == 0,
        };
        if !flags_ok {
            return Err(Violation::BadFlags { op, flags });
        }
        if (op == Op::Hello) != (h.stream == 0) {
            return Err(Violation::BadStreamId {
                op,
                stream: h.stream,
            });
        }
        let len_ok = match op {
            Op::Hello => (8..=HELLO_MAX).contains(&h.len),
            Op::Request => (1..=MAX_SERVICE).contains(&h.len),
            Op::Rw => (1..=MAX_PAYLOAD).contains(&h.len),
            _ => h.len == 0,
        };
        if !len_ok {
            return Err(Violation::BadLength { op, len: h.len });
        }
        Ok(h)
    }

    /// Whole frame size.
    pub fn frame_len(&self) -> usize {
        HDR_LEN + self.len as usize
    }
}

/// Checks a service name: 1..=[`MAX_SERVICE`] bytes of printable, non-space ASCII.
pub fn valid_service(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE as usize
        && name.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// The HELLO payload of this version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u16,
    /// Streams the sender is willing to carry (advisory).
    pub max_streams: u32,
}

impl Hello {
    /// Encodes the version-1 payload.
    pub fn encode(&self) -> [u8; HELLO_LEN as usize] {
        let mut b = [0u8; HELLO_LEN as usize];
        b[..4].copy_from_slice(&HELLO_MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.max_streams.to_le_bytes());
        b
    }

    /// Decodes a HELLO payload. A different version is returned as such (the
    /// caller reports the mismatch); only the version-1 layout is checked further.
    pub fn parse(p: &[u8]) -> Result<Hello, Violation> {
        if p.len() < 8 || p[..4] != HELLO_MAGIC {
            return Err(Violation::BadHello);
        }
        let version = u16::from_le_bytes([p[4], p[5]]);
        if version != VERSION {
            return Ok(Hello {
                version,
                max_streams: 0,
            });
        }
        if p.len() != HELLO_LEN as usize || p[6] != 0 || p[7] != 0 {
            return Err(Violation::BadHello);
        }
        Ok(Hello {
            version,
            max_streams: u32::from_le_bytes([p[8], p[9], p[10], p[11]]),
        })
    }
}

/// Walks whole frames in a private byte buffer: the same checks the driver does on
/// the ring, for the fuzz target and tests. Stops at the first violation.
pub fn parse_all(mut buf: &[u8]) -> Result<Vec<(Header, &[u8])>, Violation> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Some(hb) = buf.get(..HDR_LEN) else {
            return Err(Violation::Truncated {
                need: HDR_LEN as u64,
                have: buf.len() as u64,
            });
        };
        let mut hdr = [0u8; HDR_LEN];
        hdr.copy_from_slice(hb);
        let h = Header::parse(&hdr)?;
        let Some(p) = buf.get(HDR_LEN..h.frame_len()) else {
            return Err(Violation::Truncated {
                need: h.frame_len() as u64,
                have: buf.len() as u64,
            });
        };
        match h.op {
            Op::Request if !valid_service(p) => return Err(Violation::BadService),
            Op::Hello => {
                Hello::parse(p)?;
            }
            _ => {}
        }
        out.push((h, p));
        buf = &buf[h.frame_len()..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any 24 bytes either parse into a header that encodes back to exactly
        /// those bytes, or are refused; nothing in between, never a panic.
        #[test]
        fn parse_is_exact(b in proptest::array::uniform24(any::<u8>())) {
            if let Ok(h) = Header::parse(&b) {
                prop_assert_eq!(h.encode(), b);
                prop_assert!(h.frame_len() <= HDR_LEN + MAX_PAYLOAD as usize);
            }
        }

        /// Near-valid headers (known op, zero reserved bytes) exercise every
        /// per-op rule: what is accepted round-trips and obeys the op's limits.
        #[test]
        fn near_valid_headers(
            op in 1u8..=8, flags in 0u8..4, stream in prop_oneof![Just(0u32), 1u32..5, any::<u32>()],
            len in prop_oneof![0u32..80, Just(MAX_PAYLOAD), Just(MAX_PAYLOAD + 1)],
            ba in any::<u32>(), fc in any::<u32>(),
        ) {
            let mut b = [0u8; HDR_LEN];
            b[0] = op;
            b[1] = flags;
            b[4..8].copy_from_slice(&stream.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..16].copy_from_slice(&ba.to_le_bytes());
            b[16..20].copy_from_slice(&fc.to_le_bytes());
            if let Ok(h) = Header::parse(&b) {
                prop_assert_eq!(h.encode(), b);
                prop_assert_eq!(h.stream == 0, h.op == Op::Hello);
                prop_assert!(h.flags == 0 || h.op == Op::Shutdown);
                match h.op {
                    Op::Rw => prop_assert!(h.len >= 1 && h.len <= MAX_PAYLOAD),
                    Op::Request => prop_assert!(h.len >= 1 && h.len <= MAX_SERVICE),
                    Op::Hello => prop_assert!(h.len >= 8 && h.len <= HELLO_MAX),
                    _ => prop_assert_eq!(h.len, 0),
                }
            }
        }

        /// Arbitrary byte streams never make the walker read out of bounds.
        #[test]
        fn parse_all_never_overruns(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(frames) = parse_all(&b) {
                let total: usize = frames.iter().map(|(h, _)| h.frame_len()).sum();
                prop_assert_eq!(total, b.len());
            }
        }
    }

    fn enc(h: Header) -> [u8; HDR_LEN] {
        h.encode()
    }

    #[test]
    fn round_trip() {
        let h = Header {
            op: Op::Rw,
            flags: 0,
            stream: 0x0102_0304,
            len: 77,
            buf_alloc: 262_144,
            fwd_cnt: u32::MAX,
        };
        let b = enc(h);
        assert_eq!(b[0], 6);
        assert_eq!(&b[4..8], &[4, 3, 2, 1], "little endian");
        assert_eq!(Header::parse(&b).unwrap(), h);
        let s = Header::new(Op::Shutdown, SHUT_SEND | SHUT_RCV, 3, 0);
        assert_eq!(Header::parse(&enc(s)).unwrap(), s);
    }

    #[test]
    fn rejects_bad_headers() {
        let ok = Header::new(Op::Rw, 0, 5, 10);
        let mut b = enc(ok);
        b[0] = 0;
        assert_eq!(Header::parse(&b), Err(Violation::UnknownOp(0)));
        b[0] = 99;
        assert_eq!(Header::parse(&b), Err(Violation::UnknownOp(99)));
        let mut b = enc(ok);
        b[3] = 1;
        assert_eq!(Header::parse(&b), Err(Violation::Reserved));
        let mut b = enc(ok);
        b[23] = 1;
        assert_eq!(Header::parse(&b), Err(Violation::Reserved));
        let mut b = enc(ok);
        b[1] = 1;
        assert!(matches!(Header::parse(&b), Err(Violation::BadFlags { .. })));
        for f in [0u8, 4, 0x80] {
            let b = enc(Header::new(Op::Shutdown, f, 1, 0));
            assert!(matches!(Header::parse(&b), Err(Violation::BadFlags { .. })));
        }
        let b = enc(Header::new(Op::Rw, 0, 0, 10));
        assert!(matches!(
            Header::parse(&b),
            Err(Violation::BadStreamId { .. })
        ));
        let b = enc(Header::new(Op::Hello, 0, 1, HELLO_LEN));
        assert!(matches!(
            Header::parse(&b),
            Err(Violation::BadStreamId { .. })
        ));
        for (op, len) in [
            (Op::Rw, 0),
            (Op::Rw, MAX_PAYLOAD + 1),
            (Op::Rw, u32::MAX),
            (Op::Request, 0),
            (Op::Request, MAX_SERVICE + 1),
            (Op::Rst, 1),
            (Op::CreditUpdate, 4),
            (Op::Response, 8),
        ] {
            let b = enc(Header::new(op, 0, 2, len));
            assert!(
                matches!(Header::parse(&b), Err(Violation::BadLength { .. })),
                "{op:?} {len}"
            );
        }
    }

    #[test]
    fn services() {
        assert!(valid_service(b"vnc"));
        assert!(valid_service(&[b'a'; 64]));
        assert!(!valid_service(&[b'a'; 65]));
        assert!(!valid_service(b""));
        assert!(!valid_service(b"a b"));
        assert!(!valid_service(b"a\0"));
        assert!(!valid_service("é".as_bytes()));
    }

    #[test]
    fn hello() {
        let h = Hello {
            version: VERSION,
            max_streams: 256,
        };
        assert_eq!(Hello::parse(&h.encode()).unwrap(), h);
        let mut b = h.encode();
        b[4] = 9;
        assert_eq!(Hello::parse(&b).unwrap().version, 9);
        // A future version may be longer; we still read its version.
        let mut long = b.to_vec();
        long.extend_from_slice(&[1; 20]);
        assert_eq!(Hello::parse(&long).unwrap().version, 9);
        let mut b = h.encode();
        b[0] = b'Y';
        assert_eq!(Hello::parse(&b), Err(Violation::BadHello));
        assert_eq!(Hello::parse(&b[..7]), Err(Violation::BadHello));
        let mut long = h.encode().to_vec();
        long.push(0);
        assert_eq!(Hello::parse(&long), Err(Violation::BadHello));
    }

    #[test]
    fn parse_all_walks_and_stops() {
        let mut buf = Vec::new();
        let hello = Hello {
            version: VERSION,
            max_streams: 1,
        }
        .encode();
        buf.extend_from_slice(&enc(Header::new(Op::Hello, 0, 0, HELLO_LEN)));
        buf.extend_from_slice(&hello);
        buf.extend_from_slice(&enc(Header::new(Op::Request, 0, 1, 3)));
        buf.extend_from_slice(b"vnc");
        buf.extend_from_slice(&enc(Header::new(Op::Rw, 0, 1, 2)));
        buf.extend_from_slice(b"hi");
        let frames = parse_all(&buf).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].1, b"hi");
        assert!(matches!(
            parse_all(&buf[..buf.len() - 1]),
            Err(Violation::Truncated { .. })
        ));
        assert!(matches!(
            parse_all(&buf[..10]),
            Err(Violation::Truncated { .. })
        ));
        let mut bad = enc(Header::new(Op::Request, 0, 1, 3)).to_vec();
        bad.extend_from_slice(b"v c");
        assert_eq!(parse_all(&bad), Err(Violation::BadService));
    }
}
