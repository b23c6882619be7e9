//! The one error type of the RFB layer.

/// Everything that can go wrong while speaking RFB with one peer.
///
/// Any of these ends the session with that peer only; none is a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The protocol version string is not one we speak.
    #[error("unsupported protocol version {0:?}")]
    Version(String),
    /// No security type both sides accept.
    #[error("no acceptable security type")]
    NoSecurity,
    /// The peer refused us, or we refused the peer; the reason is the peer's text.
    #[error("security handshake failed: {0}")]
    AuthFailed(String),
    /// A pixel format we cannot use safely.
    #[error("invalid pixel format: {0}")]
    PixelFormat(&'static str),
    /// A message type we do not know; the stream cannot be resynchronised.
    #[error("unknown message type {0}")]
    UnknownMessage(u8),
    /// A length or count field above its limit, refused before allocating.
    #[error("{what} of {len} exceeds the limit of {limit}")]
    TooLarge {
        /// Which field.
        what: &'static str,
        /// The value the peer sent.
        len: u64,
        /// Our limit.
        limit: u64,
    },
    /// A rectangle that does not fit in the framebuffer.
    #[error("rectangle {x},{y} {w}x{h} is outside the {fb_w}x{fb_h} framebuffer")]
    RectOutside {
        /// Left edge.
        x: u16,
        /// Top edge.
        y: u16,
        /// Width.
        w: u16,
        /// Height.
        h: u16,
        /// Framebuffer width.
        fb_w: u16,
        /// Framebuffer height.
        fb_h: u16,
    },
    /// An encoding we did not ask for or do not implement.
    #[error("unsupported encoding {0}")]
    UnsupportedEncoding(i32),
    /// A structurally invalid message or rectangle.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The zlib stream is corrupt or inflates past its bound.
    #[error("zlib: {0}")]
    Zlib(&'static str),
    /// JPEG data could not be encoded or decoded.
    #[error("jpeg: {0}")]
    Jpeg(String),
}

/// Shorthand for results of this layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
