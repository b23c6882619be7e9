//! The console-and-desktop VNC proxy.
//!
//! The RFB protocol layer lives in [`rfb`]. The daemon is not implemented yet: the binary
//! refuses to run rather than pretend to work.

pub mod console;
pub mod rfb;

/// Why the binary cannot run yet.
pub const NOT_YET: &str = "xenvt-proxy is not implemented yet";
