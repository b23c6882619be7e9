//! The domU agent: accepts local connections (the X server's reverse VNC connection) and carries them over the shared-memory channel to dom0.
//!
//! Not implemented yet: this crate is a placeholder so the workspace has its final
//! shape. The binary refuses to run rather than pretend to work.

/// Why the binary cannot run yet.
pub const NOT_YET: &str = "xenvt-agent is not implemented yet";
