//! The daemon's one error type.

/// Everything that can go wrong in the daemon outside the RFB layer's own errors.
///
/// Errors tied to one peer end that peer's session only; configuration errors stop the
/// daemon at startup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unreadable or invalid: file, line, problem and fix.
    #[error(transparent)]
    Config(#[from] xenvt_ring::config::ConfigError),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A peer broke the RFB protocol or the connection failed.
    #[error("rfb: {0}")]
    Rfb(#[from] crate::rfb::Error),
    /// A delivered connection had a bad PROXY v2 header.
    #[error("PROXY header: {0}")]
    Origin(#[from] xenvt_ring::Error),
    /// A delivered connection was for a service we do not serve.
    #[error("unexpected service {0:?} (want \"vnc\")")]
    Service(String),
    /// A delivered connection named a domain we are not configured to serve.
    #[error("domain {0} is not served here")]
    UnknownDomain(u16),
    /// A console setting is out of range.
    #[error("console config: {0}")]
    ConsoleConfig(&'static str),
    /// The guest side closed the console (it may come back: a reboot reopens it).
    #[error("console closed")]
    ConsoleClosed,
    /// The xenstore client failed.
    #[error("xenstore: {0}")]
    Xenstore(String),
    /// A peer sent something that is valid RFB but not acceptable here.
    #[error("refused: {0}")]
    Refused(&'static str),
}

impl Error {
    /// An I/O error with what we were doing.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Shorthand for results of the daemon.
pub type Result<T, E = Error> = std::result::Result<T, E>;
