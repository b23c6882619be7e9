//! The crate's one error type.

use std::io;

/// Everything that can go wrong in the channel library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer broke the ring protocol (bad index, bad order, bad grant list...).
    /// The channel must be closed; nothing it says can be trusted any more.
    #[error("peer violated the channel protocol: {0}")]
    Protocol(String),
    /// The peer went away (its live byte was cleared or the domain died).
    #[error("peer closed the channel")]
    PeerClosed,
    /// A platform operation (grant, map, event channel, xenstore) failed.
    #[error("{op}: {source}")]
    Platform {
        /// What we were doing, for the log line.
        op: &'static str,
        /// The underlying OS or daemon error.
        #[source]
        source: io::Error,
    },
    /// A caller asked for something that cannot be done (bad order, too many pages...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A xenstore operation failed.
    #[error("xenstore {op} {path}: {source}")]
    Xenstore {
        /// The operation (read, write, watch...).
        op: &'static str,
        /// The node.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The peer refused a stream (it answered our REQUEST with RST).
    #[error("peer refused stream to service {0:?}")]
    Refused(String),
    /// A configured bound (streams per channel...) was reached.
    #[error("limit reached: {0}")]
    Limit(String),
    /// The stream multiplexer is finished; no new streams.
    #[error("multiplexer closed: {0}")]
    MuxClosed(crate::mux::CloseReason),
    /// Plain I/O on a socket or fd.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an OS error from a platform call.
    pub fn platform(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Platform {
            op,
            source: source.into(),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        match e {
            Error::Io(e) => e,
            Error::PeerClosed => io::Error::new(io::ErrorKind::BrokenPipe, e),
            Error::Protocol(_) => io::Error::new(io::ErrorKind::InvalidData, e),
            Error::Invalid(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            other => io::Error::other(other),
        }
    }
}
