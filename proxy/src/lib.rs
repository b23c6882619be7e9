//! The console-and-desktop VNC proxy.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its final
//! shape. The binary refuses to run rather than pretend to work.

/// Why the binary cannot run yet.
pub const NOT_YET: &str = "xenvt-proxy is not implemented yet";
