//! The xenstore wire format: a 16-byte header `{type, req_id, tx_id, len}` in
//! host byte order, then `len` payload bytes (at most [`PAYLOAD_MAX`]).
//!
//! The decoder is incremental and never trusts `len` before checking it, so a
//! peer cannot make us allocate more than one maximal frame.

/// Largest payload either side may send; a peer exceeding it is disconnected.
pub const PAYLOAD_MAX: usize = 4096;
/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Longest absolute path xenstored accepts.
pub const ABS_PATH_MAX: usize = 3072;
/// Longest path below a domain's home that xenstored accepts.
pub const REL_PATH_MAX: usize = 2048;

/// Message types, numbered as in Xen's public `io/xs_wire.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    Restrict = 20,
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// Maps a wire value to a known type; `None` for anything else.
    pub fn from_u32(v: u32) -> Option<Self> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            20 => Restrict,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }
}

/// The error names xenstored sends (the `xsd_errors` table of `xs_wire.h`).
/// Anything outside this table is sent as `EINVAL`, as xenstored does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    Inval,
    Acces,
    Exist,
    IsDir,
    NoEnt,
    NoMem,
    NoSpc,
    Io,
    NotEmpty,
    NoSys,
    RoFs,
    Busy,
    Again,
    IsConn,
    TooBig,
}

impl Errno {
    /// The name put on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Errno::Inval => "EINVAL",
            Errno::Acces => "EACCES",
            Errno::Exist => "EEXIST",
            Errno::IsDir => "EISDIR",
            Errno::NoEnt => "ENOENT",
            Errno::NoMem => "ENOMEM",
            Errno::NoSpc => "ENOSPC",
            Errno::Io => "EIO",
            Errno::NotEmpty => "ENOTEMPTY",
            Errno::NoSys => "ENOSYS",
            Errno::RoFs => "EROFS",
            Errno::Busy => "EBUSY",
            Errno::Again => "EAGAIN",
            Errno::IsConn => "EISCONN",
            Errno::TooBig => "E2BIG",
        }
    }
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub ty: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

impl Header {
    /// Parses a header from exactly [`HEADER_LEN`] bytes.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Self {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }
}

/// Builds one frame. Callers keep `payload` within [`PAYLOAD_MAX`]
/// (replies that would not fit become `E2BIG` first).
pub fn encode(ty: MsgType, req_id: u32, tx_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(ty as u32).to_ne_bytes());
    out.extend_from_slice(&req_id.to_ne_bytes());
    out.extend_from_slice(&tx_id.to_ne_bytes());
    // Payloads are bounded by PAYLOAD_MAX, so this never truncates.
    out.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

/// A complete request as read from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Why a byte stream cannot be decoded any further.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header announced more than [`PAYLOAD_MAX`] bytes.
    TooLong(u32),
}

/// Incremental decoder: feed it bytes, take complete frames out.
/// Holds at most one header plus one maximal payload.
#[derive(Default)]
pub struct Decoder {
    hdr: [u8; HEADER_LEN],
    hdr_used: usize,
    header: Option<Header>,
    payload: Vec<u8>,
}

impl Decoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes bytes from `input` until one frame is complete or `input` is
    /// used up. Returns how many bytes were used and the frame, if any.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, Option<Frame>), DecodeError> {
        let mut used = 0;
        if self.header.is_none() {
            let take = (HEADER_LEN - self.hdr_used).min(input.len());
            self.hdr[self.hdr_used..self.hdr_used + take].copy_from_slice(&input[..take]);
            self.hdr_used += take;
            used += take;
            if self.hdr_used < HEADER_LEN {
                return Ok((used, None));
            }
            let h = Header::parse(&self.hdr);
            if h.len as usize > PAYLOAD_MAX {
                return Err(DecodeError::TooLong(h.len));
            }
            self.payload = Vec::with_capacity(h.len as usize);
            self.header = Some(h);
        }
        let Some(h) = self.header else {
            return Ok((used, None));
        };
        let want = h.len as usize - self.payload.len();
        let take = want.min(input.len() - used);
        self.payload.extend_from_slice(&input[used..used + take]);
        used += take;
        if self.payload.len() < h.len as usize {
            return Ok((used, None));
        }
        self.header = None;
        self.hdr_used = 0;
        Ok((
            used,
            Some(Frame {
                header: h,
                payload: std::mem::take(&mut self.payload),
            }),
        ))
    }

    /// Whether the decoder sits between frames (nothing partial buffered).
    pub fn is_idle(&self) -> bool {
        self.header.is_none() && self.hdr_used == 0
    }
}

/// Splits a payload into its NUL-terminated strings. Bytes after the last NUL
/// are ignored, as xenstored's `get_strings` does.
pub fn strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(pos) = rest.iter().position(|&b| b == 0) {
        out.push(&rest[..pos]);
        rest = &rest[pos + 1..];
    }
    out
}

/// The single argument of a one-argument request: the payload must be exactly
/// one string with its NUL at the very end.
pub fn one_arg(payload: &[u8]) -> Option<&str> {
    let (last, body) = payload.split_last()?;
    if *last != 0 || body.contains(&0) {
        return None;
    }
    std::str::from_utf8(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_in_pieces() {
        let f = encode(MsgType::Write, 7, 3, b"/a\0xyz");
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for chunk in f.chunks(5) {
            let mut off = 0;
            while off < chunk.len() {
                let (n, fr) = d.feed(&chunk[off..]).unwrap();
                off += n;
                frames.extend(fr);
            }
        }
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].header.ty, MsgType::Write as u32);
        assert_eq!(frames[0].header.req_id, 7);
        assert_eq!(frames[0].header.tx_id, 3);
        assert_eq!(frames[0].payload, b"/a\0xyz");
        assert!(d.is_idle());
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let mut buf = encode(MsgType::Read, 1, 0, b"/a\0");
        buf.extend(encode(MsgType::Read, 2, 0, b""));
        let mut d = Decoder::new();
        let (n, f1) = d.feed(&buf).unwrap();
        assert_eq!(f1.unwrap().header.req_id, 1);
        let (n2, f2) = d.feed(&buf[n..]).unwrap();
        assert_eq!(n + n2, buf.len());
        let f2 = f2.unwrap();
        assert_eq!(f2.header.req_id, 2);
        assert!(f2.payload.is_empty());
    }

    #[test]
    fn oversized_length_is_rejected_before_allocation() {
        let mut h = encode(MsgType::Read, 1, 0, b"");
        h[12..16].copy_from_slice(&(PAYLOAD_MAX as u32 + 1).to_ne_bytes());
        assert_eq!(
            Decoder::new().feed(&h),
            Err(DecodeError::TooLong(PAYLOAD_MAX as u32 + 1))
        );
        h[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(Decoder::new().feed(&h).is_err());
    }

    #[test]
    fn exact_max_payload_is_accepted() {
        let f = encode(MsgType::Write, 1, 0, &vec![b'a'; PAYLOAD_MAX]);
        let (n, fr) = Decoder::new().feed(&f).unwrap();
        assert_eq!(n, f.len());
        assert_eq!(fr.unwrap().payload.len(), PAYLOAD_MAX);
    }

    #[test]
    fn string_splitting() {
        assert_eq!(strings(b"a\0bc\0"), vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(strings(b"a\0tail"), vec![&b"a"[..]]);
        assert!(strings(b"").is_empty());
        assert_eq!(one_arg(b"/x\0"), Some("/x"));
        assert_eq!(one_arg(b"/x"), None);
        assert_eq!(one_arg(b"/x\0\0"), None);
        assert_eq!(one_arg(b""), None);
    }

    #[test]
    fn unknown_types() {
        assert_eq!(MsgType::from_u32(22), Some(MsgType::DirectoryPart));
        assert_eq!(MsgType::from_u32(23), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..9000)) {
            let mut d = Decoder::new();
            let mut off = 0;
            while off < bytes.len() {
                match d.feed(&bytes[off..]) {
                    Ok((n, _)) => { proptest::prop_assert!(n > 0); off += n; }
                    Err(_) => break,
                }
            }
            let _ = strings(&bytes);
            let _ = one_arg(&bytes);
        }
    }
}
